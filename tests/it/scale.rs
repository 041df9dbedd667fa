//! The infill side of scale-out training: `infill train --export` (the dataset the scale/ package
//! trains on) and LoRA adapters coming back (`infill models import`, `--adapter`). The Python side
//! and the whole loop are tested by scale/tests (pytest), which `.ci/run` runs.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use infill::model::adapter::Adapter;
use infill::train::dataset::{self, Manifest};

use crate::{fixture, infill_cmd, open, succeeded};

/// A repository of a few Rust and Python files.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..16 {
        let body: String = (0..8)
            .map(|j| format!("pub fn f_{i}_{j}(x: u32) -> u32 {{\n    x * {j} + {i}\n}}\n\n"))
            .collect();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join(format!("src/m{i}.rs")), body).unwrap();
        let py: String = (0..6)
            .map(|j| format!("def g_{i}_{j}(v):\n    return [x + {j} for x in v]\n\n"))
            .collect();
        std::fs::write(dir.path().join(format!("g{i}.py")), py).unwrap();
    }
    dir
}

fn export(repo: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture("qwen2");
    let mut cmd = infill_cmd();
    cmd.args(["train", "--export"])
        .arg(out)
        .arg("--repo")
        .arg(repo)
        .arg("--init")
        .arg(&model)
        .args(["--seq-len", "64", "--held-out", "0.2"])
        .args(extra);
    cmd.output().unwrap()
}

/// The texts of the repository's files.
fn walk_texts(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["", "src"] {
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                out.push(std::fs::read_to_string(path).unwrap());
            }
        }
    }
    out
}

/// Every file of a dataset directory with its bytes, by relative path.
fn contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for sub in ["", "train", "held"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn an_export_is_reproducible_resumable_and_holds_the_corpus() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args = ["--epochs", "2", "--shards", "3", "--seed", "5"];
    let out = export(repo.path(), &a, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 epoch(s) of 3 shard(s)"), "{stdout}");
    assert!(export(repo.path(), &b, &args).status.success());
    let first = contents(&a);
    assert_eq!(
        first,
        contents(&b),
        "the same settings write the same bytes"
    );

    let m = Manifest::read(&a).unwrap().unwrap();
    assert!(m.complete);
    assert_eq!(m.train.len(), 6);
    assert_eq!(m.tokenizer.vocab_size, 408);
    assert_eq!(m.settings.dtype, "u16");
    assert_eq!(
        m.corpus.files_trained + m.corpus.files_held_out,
        32,
        "every file is trained on or held out"
    );
    // The held-out files come back exactly: their tokens decode to the files.
    let tokenizer = open(&fixture("qwen2")).tokenizer;
    let ids = dataset::decode(&std::fs::read(a.join(&m.held.tokens_file)).unwrap(), 2);
    let mut at = 0;
    for doc in &m.held.docs {
        let text = std::fs::read_to_string(repo.path().join(&doc.path)).unwrap();
        let slice = &ids[at..at + doc.tokens];
        assert_eq!(tokenizer.decode(&slice[..slice.len() - 1]), text);
        assert_eq!(doc.bytes, text.len());
        at += doc.tokens;
    }
    assert_eq!(at, ids.len());
    // The first epoch holds every training file once, in FIM examples (or plain text) cut to
    // the window: the pieces put back together are the files' bytes.
    let sep = tokenizer.fim().file_sep.unwrap();
    let mut bytes = 0;
    let files: Vec<String> = walk_texts(repo.path());
    for shard in m.train.iter().filter(|s| s.epoch == 0) {
        let ids = dataset::decode(&std::fs::read(a.join(&shard.file)).unwrap(), 2);
        for example in ids.split(|&t| t == sep) {
            let piece = infill::train::fim::reassemble(&tokenizer, example);
            assert!(files.iter().any(|f| f.contains(&piece)), "{piece:?}");
            bytes += piece.len();
        }
    }
    assert_eq!(bytes, m.corpus.bytes_trained);
    // The probe lets a trainer check its model's tokenizer.
    assert_eq!(
        m.tokenizer.probe_ids,
        tokenizer.encode(dataset::PROBE).unwrap()
    );

    // A run cut short (a shard lost, the manifest not complete) is finished by the same
    // command, keeping what is whole, to the same bytes.
    std::fs::remove_file(a.join("train/e1.s2.u16")).unwrap();
    std::fs::write(a.join("train/e0.s1.u16"), b"damaged").unwrap();
    let out = export(repo.path(), &a, &args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 kept"));
    assert_eq!(first, contents(&a));
    // More epochs later: the first ones are kept.
    let out = export(
        repo.path(),
        &a,
        &["--epochs", "3", "--shards", "3", "--seed", "5"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 kept"));
    // Other settings are refused, and replaced with --overwrite.
    let out = export(repo.path(), &a, &["--shards", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("of other settings"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1);
    let out = export(repo.path(), &a, &["--shards", "2", "--overwrite"]);
    assert!(out.status.success());
    assert!(!a.join("train/e1.s0.u16").exists());
    // A folder holding something else is never written into.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let out = export(repo.path(), &other, &["--overwrite"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no infill dataset"));
}

#[test]
fn eval_on_a_dataset_takes_its_held_out_files() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    assert!(export(repo.path(), &data, &[]).status.success());
    let m = Manifest::read(&data).unwrap().unwrap();
    let held: Vec<&str> = m.held.docs.iter().map(|d| d.path.as_str()).collect();
    let json = tmp.path().join("eval.json");
    // From another folder: the manifest names the repositories by absolute path.
    let out = succeeded(
        infill_cmd()
            .current_dir(tmp.path())
            .args(["eval", "--dataset"])
            .arg(&data)
            .arg("--model")
            .arg(fixture("qwen2"))
            .args(["--tasks", "12", "--score-kb", "0", "--json"])
            .arg(&json),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("12 tasks"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for task in report["tasks"].as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        let file = id.rsplit_once(':').unwrap().0;
        assert!(
            held.contains(&file),
            "{id} is not from a held-out file {held:?}"
        );
    }
    // A changed repository is said to differ from the export.
    std::fs::write(
        repo.path().join("src/new_file.rs"),
        "pub fn n() {}\n".repeat(40),
    )
    .unwrap();
    for i in 0..20 {
        std::fs::write(
            repo.path().join(format!("extra{i}.py")),
            format!("x_{i} = {i}\n"),
        )
        .unwrap();
    }
    let out = succeeded(
        infill_cmd()
            .args(["eval", "--dataset"])
            .arg(&data)
            .arg("--model")
            .arg(fixture("qwen2"))
            .args(["--tasks", "4", "--score-kb", "0"]),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("differ from the dataset's"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A folder that is not a dataset gets one line.
    let out = infill_cmd()
        .args(["eval", "--dataset"])
        .arg(tmp.path())
        .arg("--model")
        .arg(fixture("qwen2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--dataset takes"),
        "{err}"
    );
}

#[test]
fn an_export_for_a_gguf_file_is_refused_with_the_reason() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/qwen2-f32.gguf");
    let out = infill_cmd()
        .args(["train", "--export"])
        .arg(tmp.path().join("d"))
        .arg("--repo")
        .arg(repo.path())
        .arg("--init")
        .arg(gguf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("GGUF"), "{err}");
}

/// A peft-style LoRA adapter for the qwen2 fixture: A and B of rank 2 on the q and down
/// projections of both layers.
pub(crate) fn write_adapter(dir: &Path, config: serde_json::Value) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    let mut seed = 1.0f32;
    for layer in 0..2 {
        for (module, out_dim, in_dim) in [("self_attn.q_proj", 32, 32), ("mlp.down_proj", 32, 64)] {
            let name = format!("base_model.model.model.layers.{layer}.{module}");
            let mut values = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| {
                        seed += 1.0;
                        ((i as f32 * 0.37 + seed).sin()) * 0.2
                    })
                    .collect()
            };
            let a = Tensor::from_vec(values(2 * in_dim), (2, in_dim), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(values(out_dim * 2), (out_dim, 2), &Device::Cpu).unwrap();
            tensors.insert(format!("{name}.lora_A.weight"), a);
            tensors.insert(format!("{name}.lora_B.weight"), b);
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    tensors
}

pub(crate) fn lora_config() -> serde_json::Value {
    serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "use_rslora": false,
        "bias": "none", "fan_in_fan_out": false, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": fixture("qwen2").display().to_string()})
}

#[test]
fn a_lora_adapter_merges_as_w_plus_alpha_over_r_b_a() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    let tensors = write_adapter(&adapter_dir, lora_config());
    let base =
        candle_core::safetensors::load(fixture("qwen2").join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut merged = base.clone();
    let adapter = Adapter::read(&adapter_dir).unwrap();
    assert_eq!(adapter.modules(), 4);
    adapter.merge(&mut merged).unwrap();
    for layer in 0..2 {
        for module in ["self_attn.q_proj", "mlp.down_proj"] {
            let name = format!("model.layers.{layer}.{module}.weight");
            let peft = format!("base_model.model.model.layers.{layer}.{module}");
            let a = &tensors[&format!("{peft}.lora_A.weight")];
            let b = &tensors[&format!("{peft}.lora_B.weight")];
            let want = (&base[&name] + (b.matmul(a).unwrap() * 4.0).unwrap()).unwrap();
            assert!(crate::max_abs_diff(&merged[&name], &want) < 1e-6, "{name}");
            assert!(crate::max_abs_diff(&merged[&name], &base[&name]) > 1e-3);
        }
    }
    // What the adapter does not touch stays as it was.
    let name = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(crate::max_abs_diff(&merged[name], &base[name]), 0.0);

    // `models import` writes that merge as a model directory; `--adapter` loads the same.
    let out = tmp.path().join("model");
    let imported = succeeded(
        infill_cmd()
            .args(["models", "import"])
            .arg(&adapter_dir)
            .arg("--out")
            .arg(&out),
    );
    assert!(String::from_utf8_lossy(&imported.stdout).contains("merged into 4 modules"));
    let written =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in &merged {
        assert_eq!(crate::max_abs_diff(&written[name], t), 0.0, "{name}");
    }
    let file = tmp.path().join("probe.py");
    std::fs::write(&file, "def g(v):\n    return [x + 1 for x in v]\n").unwrap();
    let score = |args: &[&std::ffi::OsStr]| -> Vec<f64> {
        let out = succeeded(
            infill_cmd()
                .arg("score")
                .arg(&file)
                .arg("--json")
                .args(args),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect()
    };
    let imported = score(&["--model".as_ref(), out.as_os_str()]);
    let adapted = score(&[
        "--model".as_ref(),
        fixture("qwen2").as_os_str(),
        "--adapter".as_ref(),
        adapter_dir.as_os_str(),
    ]);
    let plain = score(&["--model".as_ref(), fixture("qwen2").as_os_str()]);
    assert_eq!(imported, adapted);
    assert!(
        imported
            .iter()
            .zip(&plain)
            .any(|(a, b)| (a - b).abs() > 1e-3)
    );
    // The merged copy is kept in the cache for the next start.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("infill/adapters");
    assert!(std::fs::read_dir(&cache).unwrap().count() >= 1);
    // Importing over a model is refused.
    let again = infill_cmd()
        .args(["models", "import"])
        .arg(&adapter_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a model"));
}

/// An adapter applied at run time (the editor's way, which switches adapters without loading the
/// base again) computes what its merge computes, on a safetensors base and on a GGUF one (whose
/// Q8_0 q, k and v run as one product, the update added to q after it); decoding through the
/// cache agrees with the prompt; taking it off gives the base's logits exactly.
#[test]
fn an_adapter_applied_at_run_time_computes_its_merge_and_comes_off_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    write_adapter(&adapter_dir, lora_config());
    let adapter = Adapter::read(&adapter_dir).unwrap();
    let merged_dir = crate::scratch_copy("qwen2");
    let mut weights =
        candle_core::safetensors::load(fixture("qwen2").join("model.safetensors"), &Device::Cpu)
            .unwrap();
    adapter.merge(&mut weights).unwrap();
    candle_core::safetensors::save(&weights, merged_dir.path().join("model.safetensors")).unwrap();
    let g = crate::golden("qwen2");
    let merged = crate::logits_all(&open(merged_dir.path()), &g.ids);
    let range = crate::max_abs(&merged);
    let gguf = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gguf")
            .join(name);
        infill::model::gguf::load(&path, &infill::model::LoadOptions::default()).unwrap()
    };
    // The Q8_0 file is the fixture model up to its 8-bit rounding, which moves these logits by
    // up to a fifth of their range (see the GGUF tests); the adapter moves them by most of it.
    for (base, tolerance) in [
        (open(&fixture("qwen2")), 1e-5),
        (gguf("qwen2-f32.gguf"), 1e-5),
        (gguf("qwen2-q8_0.gguf"), 0.2),
    ] {
        let mut model = base;
        let plain = crate::logits_all(&model, &g.ids);
        adapter.apply(&mut model.network).unwrap();
        let adapted = crate::logits_all(&model, &g.ids);
        let gap = crate::max_abs_diff(&adapted, &merged);
        assert!(gap <= tolerance * range, "{}: {gap} of {range}", model.name);
        assert!(crate::max_abs_diff(&adapted, &plain) > 1e-2);
        // Through the cache, a token at a time.
        let llama = model.network.as_llama().unwrap();
        let mut cache = llama.new_cache();
        for (pos, &id) in g.ids.iter().enumerate() {
            let input = Tensor::new(&[id], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let step = llama.forward_all(&input, pos, Some(&mut cache)).unwrap();
            let want = adapted.narrow(0, pos, 1).unwrap();
            let gap = crate::max_abs_diff(&step.squeeze(0).unwrap(), &want);
            assert!(gap <= 1e-2 * range, "{} at {pos}: {gap}", model.name);
        }
        model.network.clear_lora().unwrap();
        assert_eq!(
            crate::max_abs_diff(&crate::logits_all(&model, &g.ids), &plain),
            0.0
        );
    }
    // An adapter of another model's shapes, or one that replaces whole weights, is refused by
    // name and leaves the model as it was.
    let mut model = open(&fixture("llama"));
    let plain = crate::logits_all(&model, &g.ids);
    let other = tmp.path().join("other");
    write_adapter(&other, lora_config());
    let tensors =
        candle_core::safetensors::load(other.join("adapter_model.safetensors"), &Device::Cpu);
    let mut tensors = tensors.unwrap();
    let wide = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight";
    let fits = tensors[wide].clone();
    tensors.insert(
        wide.into(),
        Tensor::zeros((2, 65), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, other.join("adapter_model.safetensors")).unwrap();
    let err = Adapter::read(&other)
        .unwrap()
        .apply(&mut model.network)
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("model.layers.0.mlp.down_proj") && err.contains("another model"),
        "{err}"
    );
    tensors.insert(
        "base_model.model.lm_head.modules_to_save.default.weight".into(),
        Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(wide.into(), fits);
    candle_core::safetensors::save(&tensors, other.join("adapter_model.safetensors")).unwrap();
    let err = Adapter::read(&other)
        .unwrap()
        .apply(&mut model.network)
        .unwrap_err();
    assert!(err.to_string().contains("models import"), "{err}");
    assert_eq!(
        crate::max_abs_diff(&crate::logits_all(&model, &g.ids), &plain),
        0.0
    );
}

#[test]
fn adapters_a_merge_would_get_wrong_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for (field, value, says) in [
        ("use_dora", serde_json::json!(true), "use_dora"),
        (
            "rank_pattern",
            serde_json::json!({"q_proj": 4}),
            "rank_pattern",
        ),
        ("peft_type", serde_json::json!("IA3"), "LoRA adapters only"),
    ] {
        let dir = tmp.path().join(field);
        let mut config = lora_config();
        config[field] = value;
        write_adapter(&dir, config);
        let err = Adapter::read(&dir).unwrap_err().to_string();
        assert!(err.contains(says), "{field}: {err}");
    }
    // An adapter of another model names what the base lacks.
    let dir = tmp.path().join("other");
    write_adapter(&dir, lora_config());
    let out = infill_cmd()
        .args(["models", "import"])
        .arg(&dir)
        .arg("--out")
        .arg(tmp.path().join("m"))
        .arg("--base")
        .arg(fixture("llama"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("another"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A run that has not finished says how to finish it.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    let out = infill_cmd()
        .args(["models", "import"])
        .arg(&run)
        .arg("--out")
        .arg(tmp.path().join("m2"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
}
