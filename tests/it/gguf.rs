//! GGUF files: logits equal to the Hugging Face fixtures', the tokenizer rebuilt from metadata, the
//! quantized kernels against llama.cpp's own dequantisation, and every kind of bad file.
//!
//! The fixtures under tests/fixtures/gguf are written by tests/fixtures/make_gguf.py with llama.cpp's
//! `gguf` Python library from the Hugging Face fixtures (whose golden logits come from transformers).

use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{Device, Module};
use infill::model::llama::Kernels;
use infill::model::load::{Downloads, LoadError, ModelSource};
use infill::model::tokenizer::Tokenizer;
use infill::model::{LoadOptions, Model, gguf, load};

use crate::{fixture, golden, infill_cmd, logits_all, max_abs, max_abs_diff, open, succeeded};

fn gguf_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn open_gguf(path: &Path) -> Model {
    gguf::load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn gguf_err(path: &Path) -> String {
    match gguf::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The largest difference from transformers' logits over the whole golden sequence.
fn golden_gap(model: &Model, name: &str) -> f32 {
    let g = golden(name);
    max_abs_diff(&logits_all(model, &g.ids), &g.logits)
}

#[test]
fn f32_files_compute_what_transformers_computes() {
    for name in ["qwen2", "llama"] {
        let gap = golden_gap(&open_gguf(&gguf_fixture(&format!("{name}-f32.gguf"))), name);
        assert!(gap < 1e-4, "{name}: {gap}");
    }
}

/// StarCoder2 and GPT-BigCode files (architectures `starcoder2` and `starcoder`) run on
/// candle-transformers' models: token by token through the cache, each step's logits are
/// transformers' (F32 file) or the dequantized file's (Q8_0, widened to f32 as read, so exact).
#[test]
fn starcoder2_and_gpt_bigcode_files_compute_what_transformers_computes() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["starcoder2", "gpt_bigcode"] {
        let g = golden(name);
        let steps = |path: &Path| -> Vec<candle_core::Tensor> {
            let mut model = open_gguf(path);
            (g.prompt_len..=g.ids.len())
                .map(|end| model.network.logits_after(&g.ids[..end]).unwrap().0)
                .collect()
        };
        let f32_file = steps(&gguf_fixture(&format!("{name}-f32.gguf")));
        for (i, logits) in f32_file.iter().enumerate() {
            let want = g.logits.get(g.prompt_len + i - 1).unwrap();
            let gap = max_abs_diff(logits, &want);
            assert!(gap < 1e-4, "{name} f32, step {i}: {gap}");
        }
        let q8 = gguf_fixture(&format!("{name}-q8_0.gguf"));
        let reference = steps(&dequantized_copy(&q8, tmp.path()));
        for (a, b) in steps(&q8).iter().zip(&reference) {
            assert!(max_abs_diff(a, b) < 1e-5, "{name} q8_0");
        }
        // The tokenizer and FIM template come from the metadata as for the other families.
        let model = open_gguf(&q8);
        let hf = crate::open(&crate::fixture(name));
        assert_eq!(model.tokenizer.fim(), hf.tokenizer.fim(), "{name}");
        assert_eq!(
            model
                .tokenizer
                .encode("def f(x):\n    return x  # é")
                .unwrap(),
            hf.tokenizer.encode("def f(x):\n    return x  # é").unwrap()
        );
        // They run, but infill fine-tunes qwen2 and llama models only, and says so.
        let err = gguf::dequantized(&q8).unwrap_err().to_string();
        assert!(err.contains("qwen2 and llama models only"), "{err}");
    }
    // --dtype other than f32 is refused with the reason.
    let bf16 = LoadOptions {
        dtype: Some(candle_core::DType::BF16),
        ..LoadOptions::default()
    };
    let err = gguf::load(&gguf_fixture("starcoder2-q8_0.gguf"), &bf16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("run in f32"), "{err}");
}

/// A copy of `src` with every tensor dequantized to F32: the model a quantized file stands for.
fn dequantized_copy(src: &Path, dir: &Path) -> PathBuf {
    converted_copy(src, dir, GgmlDType::F32, "dequantized.gguf")
}

/// A copy of `src` with every matrix in `dtype` (vectors, and rows that are not whole blocks of
/// it, in F32).
fn converted_copy(src: &Path, dir: &Path, dtype: GgmlDType, file: &str) -> PathBuf {
    let mut reader = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut reader, name, &Device::Cpu).unwrap();
        let f = t.dequantize(&Device::Cpu).unwrap();
        let whole_blocks = f
            .dims()
            .last()
            .is_some_and(|&k| k % dtype.block_size() == 0);
        let ty = if f.rank() == 2 && whole_blocks {
            dtype
        } else {
            GgmlDType::F32
        };
        tensors.push((name.clone(), QTensor::quantize(&f, ty).unwrap()));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let out = dir.join(file);
    let mut w = std::fs::File::create(&out).unwrap();
    gguf_file::write(&mut w, &metadata, &tensors).unwrap();
    out
}

#[test]
fn f16_and_q8_0_files_compute_their_dequantized_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama"] {
        let g = golden(name);
        let range = max_abs(&g.logits);
        // F16 weights are widened exactly. Q8_0 products also round the activations to 8 bits (as
        // llama.cpp does), which moves the logits of these tiny models with their large random
        // weights (range ±7) by up to half a unit; a misread tensor moves them by several.
        let f32 = LoadOptions {
            dtype: Some(candle_core::DType::F32),
            ..LoadOptions::default()
        };
        // F16 weights widened to f32 (--dtype f32) are exact; on the bf16 kernel (the default)
        // they lose what bf16 cannot hold (3 bits of mantissa): 3% of these logits' range, which
        // the tiny models' large random weights amplify.
        for (kind, opts, tolerance, drift_bound) in [
            ("f16", &f32, 1e-5, 0.01),
            ("f16", &LoadOptions::default(), 0.05, 0.06),
            ("q8_0", &LoadOptions::default(), 0.1, 0.2),
        ] {
            let path = gguf_fixture(&format!("{name}-{kind}.gguf"));
            let reference = open_gguf(&dequantized_copy(&path, tmp.path()));
            let model = gguf::load(&path, opts).unwrap();
            let gap = max_abs_diff(&logits_all(&model, &g.ids), &logits_all(&reference, &g.ids));
            assert!(gap <= tolerance * range, "{name} {kind}: {gap}");
            // And the file is the fixture model, up to storing its weights in 16 or 8 bits.
            let drift = golden_gap(&model, name);
            assert!(drift < drift_bound * range, "{name} {kind}: {drift}");
        }
    }
}

/// Q5_0 (llama.cpp's fallback where K blocks do not divide a row) runs on infill's integer
/// kernels: kept in five bits where the processor has VNNI, else requantized to Q8_0, in both
/// cases read into joint tiles (a layer's q, k and v together; a `llama` file's Q and K rows
/// permuted back as they are read): its logits equal the Q5_0 file's dequantized weights' within
/// the 8-bit rounding of the activations (and of the weights, where requantized), for a prompt
/// and for decoding steps.
#[test]
fn q5_0_files_run_on_the_integer_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama"] {
        let g = golden(name);
        let f32_file = gguf_fixture(&format!("{name}-f32.gguf"));
        let q5 = converted_copy(
            &f32_file,
            tmp.path(),
            GgmlDType::Q5_0,
            &format!("{name}-q5_0.gguf"),
        );
        let model = open_gguf(&q5);
        let reference = open_gguf(&dequantized_copy(&q5, tmp.path()));
        let all = logits_all(&model, &g.ids);
        let range = max_abs(&g.logits);
        let gap = max_abs_diff(&all, &logits_all(&reference, &g.ids));
        assert!(gap <= 0.1 * range, "{name}: {gap} of {range}");
        assert!(
            relative_error(&stepwise(&model, &g.ids), &all) < 0.05,
            "{name}"
        );
    }
}

/// The logits of `ids` decoded one token at a time through the KV cache.
fn stepwise(model: &Model, ids: &[u32]) -> candle_core::Tensor {
    let llama = model.network.as_llama().unwrap();
    let mut cache = llama.new_cache();
    let rows: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(pos, &id)| {
            let input = candle_core::Tensor::new(&[id], llama.device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let out = llama.forward_all(&input, pos, Some(&mut cache)).unwrap();
            out.squeeze(0).unwrap()
        })
        .collect();
    candle_core::Tensor::cat(&rows, 0).unwrap()
}

/// Without infill's CPU kernels (`cpu_kernels: false`) a model runs candle's ops only, with its
/// matrices in their stored types on candle's quantized kernels: what `--device cuda` and
/// `--device metal` run. On the CPU that route computes what infill's kernels compute, within the
/// rounding that tells them apart (the 16-bit matrices run in bf16 on infill's kernel, exact on
/// candle's; both round Q8_0 products' activations to 8 bits, each off the dequantized weights'
/// logits by up to a tenth of their range, as above), for a prompt and for cached decoding steps.
#[test]
fn candles_own_kernels_compute_what_infills_compute() {
    let candle = LoadOptions {
        cpu_kernels: false,
        ..LoadOptions::default()
    };
    for name in ["qwen2", "llama"] {
        let g = golden(name);
        let range = max_abs(&g.logits);
        for (kind, tolerance) in [("hf", 1e-5), ("f32", 1e-5), ("f16", 0.05), ("q8_0", 0.1)] {
            let load = |opts: &LoadOptions| match kind {
                "hf" => load::load(&load::locate_dir(&fixture(name)).unwrap(), opts).unwrap(),
                _ => gguf::load(&gguf_fixture(&format!("{name}-{kind}.gguf")), opts).unwrap(),
            };
            let (ours, theirs) = (load(&LoadOptions::default()), load(&candle));
            let (fused, portable) = (
                ours.network.as_llama().unwrap().kernels(),
                theirs.network.as_llama().unwrap().kernels(),
            );
            assert_eq!((fused, portable), (Kernels::Fused, Kernels::Portable));
            let all = logits_all(&theirs, &g.ids);
            let gap = max_abs_diff(&all, &logits_all(&ours, &g.ids));
            assert!(gap <= tolerance * range, "{name} {kind}: {gap} of {range}");
            let steps = stepwise(&theirs, &g.ids);
            assert!(relative_error(&steps, &all) < 1e-3, "{name} {kind}");
        }
    }
}

#[test]
fn the_tokenizer_and_fim_template_come_from_the_metadata() {
    for name in ["qwen2", "llama"] {
        let hf = open(&fixture(name));
        let model = open_gguf(&gguf_fixture(&format!("{name}-f32.gguf")));
        let (a, b) = (&hf.tokenizer, &model.tokenizer);
        assert_eq!(a.fim(), b.fim(), "{name}");
        assert_eq!(a.prepends_space(), b.prepends_space(), "{name}");
        for id in 0..a.vocab_size() as u32 {
            assert_eq!(a.token_bytes(id), b.token_bytes(id), "{name} token {id}");
            assert_eq!(a.is_special(id), b.is_special(id), "{name} token {id}");
        }
        // The prompt transformers' golden run used.
        let g = golden(name);
        let prefix = b.encode(&g.prefix).unwrap();
        let suffix = b.encode_continuation(&g.suffix).unwrap();
        let prompt = b.fim_prompt(&prefix, &suffix, infill::model::FimOrder::Psm);
        assert_eq!(prompt, g.ids[..g.prompt_len], "{name}");
    }
}

/// About 1 MB of mixed text: this crate's sources and test files, and lines in other scripts.
fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src",
        "src/model",
        "src/tui",
        "tests/it",
        "tests/trim",
        "docs",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                files.push(text);
            }
        }
    }
    files.push(
        "中文注释：计算斐波那契数列 😀 emoji, 한국어 주석,日本語のコメント, Ελληνικά, русский \
         текст, عربى, हिन्दी\r\n\ttab\u{a0}nbsp  two  spaces 12345 3.14e-10 it's we'll I'd"
            .repeat(50),
    );
    files
}

#[test]
fn each_pre_tokenizer_splits_as_its_tokenizer_json_does() {
    let sample = corpus();
    let bytes: usize = sample.iter().map(String::len).sum();
    assert!(bytes > 500_000, "corpus of {bytes} bytes");
    for pre in ["qwen2", "deepseek-coder", "starcoder", "gpt-2", "llama"] {
        let json = std::fs::read(gguf_fixture(&format!("vocab-{pre}.json"))).unwrap();
        let reference = Tokenizer::from_bytes(&json, 1 << 20).unwrap();
        let file = gguf::GgufFile::open(&gguf_fixture(&format!("vocab-{pre}.gguf"))).unwrap();
        let built = file.tokenizer(1 << 20).unwrap();
        for text in &sample {
            assert_eq!(
                reference.encode_continuation(text).unwrap(),
                built.encode_continuation(text).unwrap(),
                "{pre}: {:?}",
                text.chars().take(80).collect::<String>()
            );
        }
    }
}

/// Each weight type's product with a vector equals the product of llama.cpp's dequantisation of
/// the same blocks (numpy, float64) within the rounding of the vector to 8 bits, and candle's
/// dequantisation equals llama.cpp's exactly.
#[test]
fn quantized_products_equal_their_dequantized_reference() {
    let path = gguf_fixture("quants.gguf");
    let mut reader = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut read = |name: &str| content.tensor(&mut reader, name, &Device::Cpu).unwrap();
    let x = read("x").dequantize(&Device::Cpu).unwrap();
    let x_max = max_abs(&x);
    for kind in ["q4_0", "q8_0", "q4_k", "q5_k", "q6_k"] {
        let q = read(kind);
        let reference = read(&format!("{kind}.ref"))
            .dequantize(&Device::Cpu)
            .unwrap();
        let want = read(&format!("{kind}.y")).dequantize(&Device::Cpu).unwrap();
        let ours = q.dequantize(&Device::Cpu).unwrap();
        assert_eq!(
            max_abs_diff(&ours, &reference),
            0.0,
            "{kind} dequantisation"
        );
        let y = QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&x.unsqueeze(0).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        // Rounding x to 8 bits moves each element by at most x_max / 254 (per block it is less).
        let row_l1: Vec<f32> = reference.abs().unwrap().sum(1).unwrap().to_vec1().unwrap();
        let (y, want): (Vec<f32>, Vec<f32>) = (y.to_vec1().unwrap(), want.to_vec1().unwrap());
        for ((got, want), l1) in y.iter().zip(&want).zip(&row_l1) {
            let bound = l1 * x_max / 254.0 + 1e-4 * want.abs();
            assert!(
                (got - want).abs() <= bound,
                "{kind}: {got} vs {want} (bound {bound})"
            );
        }
        // The bound is not vacuous: the products are far larger than it.
        assert!(want.iter().any(|w| w.abs() > 0.5), "{kind}: {want:?}");
    }
}

#[test]
fn model_sources_name_gguf_files_and_hub_gguf_files() {
    let path = gguf_fixture("qwen2-q8_0.gguf");
    assert_eq!(
        ModelSource::parse(path.to_str()).unwrap(),
        ModelSource::Gguf(path.clone())
    );
    assert_eq!(
        ModelSource::parse(Some(
            "Qwen/Qwen2.5-Coder-0.5B-GGUF:qwen2.5-coder-0.5b-q8_0.gguf"
        ))
        .unwrap(),
        ModelSource::HubGguf {
            id: "Qwen/Qwen2.5-Coder-0.5B-GGUF".into(),
            file: "qwen2.5-coder-0.5b-q8_0.gguf".into()
        }
    );
    // A file that is not GGUF is named as such, not taken for a hub id.
    let cfg = fixture("qwen2").join("config.json");
    let err = ModelSource::parse(cfg.to_str()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("not a GGUF file"),
        "{err}"
    );
    // A GGUF file where a directory is needed (fine-tuning) says so.
    let err = infill::model::load::locate(&ModelSource::Gguf(path), false, &Downloads::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("GGUF") && err.contains("Hugging Face layout"),
        "{err}"
    );
}

#[test]
fn a_hub_gguf_file_resolves_from_a_local_hf_hub_cache_offline() {
    let cache_dir = tempfile::tempdir().unwrap();
    let src = gguf_fixture("qwen2-q8_0.gguf");
    crate::loading::hub_cache(
        cache_dir.path(),
        "infill-test/tiny-qwen2-GGUF",
        &[("tiny-q8_0.gguf", &src)],
    );
    let cache = hf_hub::Cache::new(cache_dir.path().to_path_buf());
    let path = infill::model::load::locate_hub_file(
        "infill-test/tiny-qwen2-GGUF",
        "tiny-q8_0.gguf",
        &cache,
        false,
        &Downloads::default(),
    )
    .unwrap();
    let model = open_gguf(&path);
    assert!(golden_gap(&model, "qwen2") < 1.0);
    let err = infill::model::load::locate_hub_file(
        "infill-test/tiny-qwen2-GGUF",
        "absent.gguf",
        &cache,
        false,
        &Downloads::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("absent.gguf") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

/// The bytes of a fixture with `edit` applied, written to a temporary file.
fn edited(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let mut bytes = std::fs::read(gguf_fixture(name)).unwrap();
    edit(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn bad_files_get_one_line_naming_the_file_and_the_fault() {
    // Cut short: every prefix of the file fails cleanly.
    let whole = std::fs::read(gguf_fixture("qwen2-q8_0.gguf")).unwrap();
    for cut in [3, 10, 100, 2_000, whole.len() / 2, whole.len() - 1] {
        let (_dir, path) = edited("qwen2-q8_0.gguf", |b| b.truncate(cut));
        let err = gguf_err(&path);
        assert!(
            err.contains("qwen2-q8_0.gguf") && !err.contains('\n'),
            "{cut}: {err}"
        );
    }
    let (_dir, path) = edited("qwen2-q8_0.gguf", |b| b.truncate(b.len() / 2));
    let err = gguf_err(&path);
    assert!(err.contains("damaged or incomplete"), "{err}");

    // An architecture infill has no decoder for (every qwen2 key renamed with it).
    let (_dir, path) = edited("qwen2-f32.gguf", |b| {
        while let Some(at) = b.windows(6).position(|w| w == b"qwen2\0" || w == b"qwen2.") {
            b[at + 4] = b'9';
        }
        let at = find(b, b"qwen2");
        b[at + 4] = b'9';
    });
    let err = gguf_err(&path);
    assert!(
        err.contains("\"qwen9\"") && err.contains("qwen2, llama"),
        "{err}"
    );

    // A weight type candle has no kernel for: IQ4_XS (23) in the first tensor's entry.
    let (_dir, path) = edited("qwen2-q8_0.gguf", |b| {
        let name = b"token_embd.weight";
        let at = find(b, name) + name.len();
        let dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let ty = at + 4 + 8 * dims;
        b[ty..ty + 4].copy_from_slice(&23u32.to_le_bytes());
    });
    let err = gguf_err(&path);
    assert!(err.contains("IQ4_XS") && err.contains("Q8_0"), "{err}");

    // Not GGUF at all.
    let (_dir, path) = edited("qwen2-f32.gguf", |b| b[..4].copy_from_slice(b"GGUX"));
    let err = gguf_err(&path);
    assert!(err.contains("not a GGUF file"), "{err}");

    // Through the binary: one line, non-zero exit.
    let (_dir, path) = edited("qwen2-q8_0.gguf", |b| b.truncate(b.len() / 2));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "def f():\n    return 1\n").unwrap();
    let out = infill_cmd()
        .args([
            "complete",
            "--file",
            file.path().to_str().unwrap(),
            "--line",
            "2",
        ])
        .args(["--column", "5", "--model", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("damaged or incomplete"), "{stderr}");
}

#[test]
fn complete_and_score_run_on_a_gguf_file() {
    let model = gguf_fixture("qwen2-q8_0.gguf");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "def add(a, b):\n    return a + b\n").unwrap();
    let (path, m) = (file.path().to_str().unwrap(), model.to_str().unwrap());
    let complete = |extra: &[&str]| {
        let mut cmd = infill_cmd();
        cmd.args(["complete", "--file", path, "--line", "2", "--column", "12"])
            .args(["--model", m])
            .args(extra);
        cmd
    };
    let out = succeeded(&mut complete(&["--json", "--max-tokens", "4"]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["model"]["family"], "qwen2");
    assert_eq!(json["model"]["fim_template"], "qwen");
    assert!(json["raw"].is_string());
    let out = succeeded(infill_cmd().args(["score", path, "--model", m, "--json"]));
    assert!(!out.stdout.is_empty());
    // --dtype f16 does not apply to a file whose weights have their own types.
    let out = complete(&["--dtype", "f16"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--dtype"),
        "{stderr}"
    );
}

#[test]
fn a_load_error_is_a_load_error() {
    // The error type stays the loader's, so callers can match on it.
    let (_dir, path) = edited("qwen2-f32.gguf", |b| b.truncate(64));
    assert!(matches!(
        gguf::load(&path, &LoadOptions::default()),
        Err(LoadError::Gguf { .. })
    ));
}

/// `infill models export --format gguf` into `dir`, returning the file.
fn export(model: &Path, dtype: &str, dir: &Path) -> PathBuf {
    let stem = model.file_name().unwrap().to_str().unwrap();
    let out = dir.join(format!("{stem}-{dtype}.gguf"));
    succeeded(
        infill_cmd()
            .args(["models", "export", "--model", model.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--dtype", dtype]),
    );
    out
}

#[test]
fn an_exported_file_is_the_model_in_llama_cpps_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama"] {
        let out = export(&fixture(name), "f32", tmp.path());
        // What transformers computes, and the same tokenizer.
        let model = open_gguf(&out);
        assert!(golden_gap(&model, name) < 1e-4, "{name}");
        assert_eq!(model.tokenizer.fim(), open(&fixture(name)).tokenizer.fim());
        // Tensor for tensor and key for key what llama.cpp's own library wrote in the
        // converter's layout (tests/fixtures/make_gguf.py).
        let read = |p: &Path| {
            let mut f = std::fs::File::open(p).unwrap();
            let c = gguf_file::Content::read(&mut f).unwrap();
            (c, f)
        };
        let (ours, mut ours_file) = read(&out);
        let (theirs, mut theirs_file) = read(&gguf_fixture(&format!("{name}-f32.gguf")));
        let mut names: Vec<&String> = theirs.tensor_infos.keys().collect();
        names.sort();
        let mut our_names: Vec<&String> = ours.tensor_infos.keys().collect();
        our_names.sort();
        assert_eq!(our_names, names, "{name}");
        for t in names {
            let a = ours.tensor(&mut ours_file, t, &Device::Cpu).unwrap();
            let b = theirs.tensor(&mut theirs_file, t, &Device::Cpu).unwrap();
            assert_eq!(a.shape(), b.shape(), "{name} {t}");
            assert_eq!(a.data().unwrap(), b.data().unwrap(), "{name} {t}");
        }
        for (key, value) in &theirs.metadata {
            if key == "general.name"
                || key.starts_with("tokenizer.ggml.") && key.ends_with("_id")
                || key == "tokenizer.ggml.add_bos_token"
                || key == "tokenizer.ggml.add_eos_token"
            {
                continue;
            }
            let ours = ours
                .metadata
                .get(key)
                .unwrap_or_else(|| panic!("{name}: no {key}"));
            assert_eq!(format!("{ours:?}"), format!("{value:?}"), "{name} {key}");
        }
    }
}

#[test]
fn quantized_exports_load_and_run_in_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    // The fixture's rows (32 values) take Q8_0 blocks; Q4_K falls back to Q5_0 there, as in
    // llama.cpp.
    let g = golden("qwen2");
    for (dtype, bound) in [("q8_0", 0.08), ("q4_k", 0.5)] {
        let out = export(&fixture("qwen2"), dtype, tmp.path());
        let model = open_gguf(&out);
        let error = relative_error(&logits_all(&model, &g.ids), &g.logits);
        assert!(error < bound, "{dtype}: {error}");
    }
    // A model with 256-value rows gets real K blocks, Q6_K where llama.cpp's Q4_K_M puts them.
    let wide = wide_model(tmp.path());
    let out = export(&wide, "q4_k", tmp.path());
    let mut f = std::fs::File::open(&out).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let ty = |n: &str| content.tensor_infos[n].ggml_dtype;
    assert_eq!(ty("blk.1.ffn_up.weight"), GgmlDType::Q4K);
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlDType::Q6K);
    assert_eq!(ty("token_embd.weight"), GgmlDType::Q6K);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlDType::F32);
    let hf = open(&wide);
    let q4 = open_gguf(&out);
    let ids = hf
        .tokenizer
        .encode("def fibonacci(n):\n    return fib")
        .unwrap();
    let (a, b) = (logits_all(&hf, &ids), logits_all(&q4, &ids));
    // The kernels compute the model the file stands for (up to 8-bit activations)...
    let deq = open_gguf(&dequantized_copy(&out, tmp.path()));
    let kernel = relative_error(&b, &logits_all(&deq, &ids));
    assert!(kernel < 0.06, "q4_k kernels: {kernel}");
    // ...which is the model, as near as 4 and 8 bits get: 0.33 and 0.044 of the logits' norm
    // here, where random weights amplify every rounding (a misread block gives 1 or more).
    let q8 = open_gguf(&export(&wide, "q8_0", tmp.path()));
    let (e4, e8) = (
        relative_error(&b, &a),
        relative_error(&logits_all(&q8, &ids), &a),
    );
    assert!(e8 < 0.08 && e4 < 0.5 && e8 < e4, "q8_0 {e8}, q4_k {e4}");
    // HF formats refuse GGUF types, and a directory is not a GGUF file name.
    let out = infill_cmd()
        .args([
            "models",
            "export",
            "--model",
            fixture("qwen2").to_str().unwrap(),
        ])
        .args([
            "--out",
            tmp.path().join("hf").to_str().unwrap(),
            "--dtype",
            "q4_k",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--format gguf"),
        "{stderr}"
    );
}

/// A random Qwen2 model with rows of 256 values (the K types' block), in `dir/wide`.
fn wide_model(dir: &Path) -> PathBuf {
    let src = fixture("qwen2");
    let out = dir.join("wide");
    std::fs::create_dir_all(&out).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = 256.into();
    config["intermediate_size"] = 512.into();
    config["num_attention_heads"] = 4.into();
    config["num_key_value_heads"] = 2.into();
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    let parsed = match infill::model::ModelConfig::parse(&config.to_string()).unwrap() {
        infill::model::ModelConfig::Llama(c) => c,
        _ => unreachable!(),
    };
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        infill::model::load::llama_tensor_shapes(&parsed, true)
            .into_iter()
            .map(|(name, shape)| {
                let t = if name.ends_with("norm.weight") {
                    candle_core::Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu)
                } else {
                    candle_core::Tensor::randn(0f32, 0.1, shape, &Device::Cpu)
                };
                (name, t.unwrap())
            })
            .collect();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    out
}

/// `|a - b| / |b|` over all elements (Euclidean norms).
fn relative_error(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let norm = |t: &candle_core::Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

/// A prompt runs on the dequantized GEMM and decoding on quantized vector products: both compute
/// the same model, one token at a time or all at once.
#[test]
fn prompt_and_decoding_paths_agree_on_a_quantized_file() {
    for name in ["qwen2", "llama"] {
        let model = open_gguf(&gguf_fixture(&format!("{name}-q8_0.gguf")));
        let g = golden(name);
        let all = logits_all(&model, &g.ids);
        let llama = model.network.as_llama().unwrap();
        let mut cache = llama.new_cache();
        let mut rows = Vec::new();
        for (pos, &id) in g.ids.iter().enumerate() {
            let input = candle_core::Tensor::new(&[id], llama.device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let out = llama.forward_all(&input, pos, Some(&mut cache)).unwrap();
            rows.push(out.squeeze(0).unwrap());
        }
        let stepwise = candle_core::Tensor::cat(&rows, 0).unwrap();
        let error = relative_error(&stepwise, &all);
        // The vector products round activations to 8 bits; the GEMM does not.
        assert!(error < 0.05, "{name}: {error}");
    }
}

/// A GGUF file starts a fine-tune: its weights dequantized under their transformers names equal
/// the Hugging Face directory's, and `infill train --init` takes it.
#[test]
fn a_gguf_file_starts_a_fine_tune() {
    for name in ["qwen2", "llama"] {
        let (_, _, weights) =
            gguf::dequantized(&gguf_fixture(&format!("{name}-f32.gguf"))).unwrap();
        let hf =
            candle_core::safetensors::load(fixture(name).join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        let mut want: Vec<&String> = hf.keys().collect();
        want.sort();
        assert_eq!(names, want, "{name}");
        for (n, t) in &hf {
            assert_eq!(max_abs_diff(&weights[n], t), 0.0, "{name} {n}");
        }
    }
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("tuned");
    succeeded(
        infill_cmd()
            .args([
                "train",
                "--repo",
                crate::train::FIXTURES,
                "--out",
                o.to_str().unwrap(),
            ])
            .args(["--init", gguf_fixture("qwen2-q8_0.gguf").to_str().unwrap()])
            .args(["--steps", "2", "--seq-len", "32", "--eval-every", "2"]),
    );
    let tuned = open(&o);
    assert_eq!(
        tuned.tokenizer.fim(),
        open(&fixture("qwen2")).tokenizer.fim()
    );
}
