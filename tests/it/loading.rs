//! Loading: sharded weights, the hf-hub cache, and every kind of bad model directory.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use infill::model::load::{self, Downloads, LoadError, ModelSource};
use infill::model::{LoadOptions, config::ConfigError, tokenizer::TokenizerError};

use crate::{fixture, golden, logits_all, max_abs, max_abs_diff, open, scratch_copy};

fn load_err(dir: &Path) -> LoadError {
    match load::locate_dir(dir).and_then(|files| load::load(&files, &LoadOptions::default())) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn last_logits(model: &mut infill::model::Model, ids: &[u32]) -> Tensor {
    model.network.logits_after(ids).unwrap().0
}

#[test]
fn sharded_weights_with_an_index_load_like_one_file() {
    let tmp = scratch_copy("llama");
    let all = tensors(tmp.path());
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), file.into());
        if i % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    candle_core::safetensors::save(&a, tmp.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, tmp.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let g = golden("llama");
    let mut sharded = open(tmp.path());
    let mut whole = open(&fixture("llama"));
    let ids = &g.ids[..g.prompt_len];
    assert!(
        max_abs_diff(
            &last_logits(&mut sharded, ids),
            &last_logits(&mut whole, ids)
        ) < 1e-6
    );
}

/// Lays out `files` the way hf-hub caches a download: blobs behind snapshot paths and a ref.
pub fn hub_cache(root: &Path, repo: &str, files: &[(&str, &Path)]) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    for (i, (name, src)) in files.iter().enumerate() {
        let blob = repo_dir.join("blobs").join(format!("etag{i}"));
        std::fs::copy(src, &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(name)).unwrap();
    }
}

#[test]
fn hub_ids_resolve_from_a_local_hf_hub_cache_offline() {
    let cache_dir = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    hub_cache(
        cache_dir.path(),
        "infill-test/tiny-qwen2",
        &[
            ("config.json", &src.join("config.json")),
            ("tokenizer.json", &src.join("tokenizer.json")),
            ("model.safetensors", &src.join("model.safetensors")),
        ],
    );
    let cache = hf_hub::Cache::new(cache_dir.path().to_path_buf());
    let files = load::locate_hub(
        "infill-test/tiny-qwen2",
        &cache,
        false,
        &Downloads::default(),
    )
    .unwrap();
    let mut model = load::load(&files, &LoadOptions::default()).unwrap();
    assert_eq!(model.name, "infill-test/tiny-qwen2");
    let g = golden("qwen2");
    let want = g.logits.get(g.prompt_len - 1).unwrap();
    assert!(max_abs_diff(&last_logits(&mut model, &g.ids[..g.prompt_len]), &want) < 1e-4);

    // Not cached and offline: one line that says what to do.
    let err = load::locate_hub("infill-test/absent", &cache, false, &Downloads::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("infill-test/absent")
            && err.contains("HF_HUB_OFFLINE")
            && err.contains("--model"),
        "{err}"
    );
}

#[test]
fn hub_cache_with_only_pickle_weights_is_refused() {
    let cache_dir = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let pickle = cache_dir.path().join("fake.bin");
    std::fs::write(&pickle, b"\x80\x04not really a pickle").unwrap();
    hub_cache(
        cache_dir.path(),
        "infill-test/pickled",
        &[
            ("config.json", &src.join("config.json")),
            ("pytorch_model.bin", &pickle),
        ],
    );
    let cache = hf_hub::Cache::new(cache_dir.path().to_path_buf());
    let err =
        load::locate_hub("infill-test/pickled", &cache, false, &Downloads::default()).unwrap_err();
    assert!(matches!(err, LoadError::Pickle { .. }), "{err}");
}

#[test]
fn pickle_weights_are_refused_with_a_reason() {
    let tmp = scratch_copy("qwen2");
    std::fs::rename(
        tmp.path().join("model.safetensors"),
        tmp.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let err = load_err(tmp.path());
    let msg = err.to_string();
    assert!(
        matches!(err, LoadError::Pickle { .. })
            && msg.contains("pytorch_model.bin")
            && msg.contains("safetensors"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors_names_the_file_and_tensor() {
    let tmp = scratch_copy("qwen2");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(tmp.path()).to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated") && msg.contains("tensor \""),
        "{msg}"
    );
    // Garbage from the first byte.
    std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
    assert!(matches!(
        load_err(tmp.path()),
        LoadError::Safetensors { .. }
    ));
}

#[test]
fn a_missing_tensor_is_named() {
    let tmp = scratch_copy("qwen2");
    let mut all = tensors(tmp.path());
    all.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&all, tmp.path().join("model.safetensors")).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(&err, LoadError::MissingTensor { tensor, .. } if tensor == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn a_config_that_does_not_match_the_weights_names_the_tensor_and_shapes() {
    let tmp = scratch_copy("llama");
    let cfg = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    json["intermediate_size"] = 40.into();
    std::fs::write(tmp.path().join("config.json"), json.to_string()).unwrap();
    let err = load_err(tmp.path());
    let msg = err.to_string();
    assert!(
        matches!(err, LoadError::Shape { .. }) && msg.contains("mlp") && msg.contains("[40, 32]"),
        "{msg}"
    );
}

#[test]
fn a_tokenizer_without_fim_tokens_or_with_a_bigger_vocabulary_is_refused() {
    let tmp = scratch_copy("qwen2");
    let path = tmp.path().join("tokenizer.json");
    let tok = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, tok.replace("fim_", "fxm_")).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(
            err,
            LoadError::Tokenizer {
                source: TokenizerError::NoFimTokens,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer.json"));

    let tmp = scratch_copy("qwen2");
    let cfg = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    json["vocab_size"] = 100.into();
    std::fs::write(tmp.path().join("config.json"), json.to_string()).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(
            err,
            LoadError::Tokenizer {
                source: TokenizerError::VocabMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_families_and_broken_configs_are_clear_errors() {
    let tmp = scratch_copy("qwen2");
    let path = tmp.path().join("config.json");
    std::fs::write(&path, r#"{"model_type": "mamba"}"#).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(&err, LoadError::Config { source: ConfigError::UnsupportedModelType(t), .. } if t == "mamba")
    );
    assert!(
        err.to_string()
            .contains("qwen2, llama, starcoder2, gpt_bigcode")
    );
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(
        load_err(tmp.path()),
        LoadError::Config {
            source: ConfigError::Json(_),
            ..
        }
    ));
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    assert!(matches!(
        load_err(tmp.path()),
        LoadError::MissingFile {
            file: "tokenizer.json",
            ..
        }
    ));
}

/// StarCoder2 and GPT-BigCode are refused in half precision with a line that says what to pass,
/// rather than failing inside candle (GPT-BigCode) or running off by most of a nat (StarCoder2).
#[test]
fn half_precision_is_refused_for_the_families_that_compute_in_f32() {
    for (family, name) in [("starcoder2", "StarCoder2"), ("gpt_bigcode", "GPT-BigCode")] {
        for dtype in [DType::BF16, DType::F16] {
            let files = load::locate_dir(&fixture(family)).unwrap();
            let opts = LoadOptions {
                dtype: Some(dtype),
                ..LoadOptions::default()
            };
            let Err(err) = load::load(&files, &opts) else {
                panic!("{family} loaded in {dtype:?}");
            };
            assert!(matches!(err, LoadError::Precision { .. }), "{err}");
            let line = err.to_string();
            assert!(
                line.starts_with(name) && line.contains("--dtype f32") && !line.contains('\n'),
                "{line}"
            );
        }
        let files = load::locate_dir(&fixture(family)).unwrap();
        assert!(load::load(&files, &LoadOptions::default()).is_ok());
    }
}

/// The built-in default loads offline and proposes something, or, in a build without one, the
/// error says to pass --model.
#[test]
fn the_built_in_default_loads_or_says_to_pass_a_model() {
    match infill::model::embedded::files() {
        Some(_) => {
            let mut model =
                infill::model::Model::open(&ModelSource::Embedded, false, &LoadOptions::default())
                    .unwrap();
            assert_eq!(model.name, infill::model::embedded::NAME);
            let text = "def add(a, b):\n    return a + b\n";
            let scores =
                infill::model::score::score(&mut model, text, usize::MAX, None, 0).unwrap();
            assert_eq!(scores.last().map(|t| t.end), Some(text.len()));
            // The card travels with it: how it was trained and what it measured.
            let card: serde_json::Value =
                serde_json::from_str(infill::model::embedded::training().unwrap()).unwrap();
            assert!(card["held_out_after"]["bits_per_byte"].as_f64().unwrap() > 0.0);
        }
        None => {
            let err =
                load::locate(&ModelSource::Embedded, false, &Downloads::default()).unwrap_err();
            assert!(matches!(err, LoadError::NoDefaultModel));
            assert!(err.to_string().contains("--model"));
        }
    }
}

/// `infill models export` stores the weights in bf16 at half the size, the copy computes what the
/// original does up to bf16 rounding, and `infill models` lists it with its training summary.
#[test]
fn models_export_writes_a_bf16_copy_that_models_lists() {
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("infill/models/tiny-bf16");
    let infill = |args: &[&std::ffi::OsStr]| {
        crate::infill_cmd()
            .args(args)
            .env("XDG_DATA_HOME", data.path())
            .output()
            .unwrap()
    };
    let source = fixture("tiny-python");
    let export = [
        "models".as_ref(),
        "export".as_ref(),
        "--model".as_ref(),
        source.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--context".as_ref(),
        "64".as_ref(),
        "--fim-order".as_ref(),
        "spm".as_ref(),
    ];
    let done = infill(&export);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("(bf16,"));
    let size = |p: &Path| {
        std::fs::metadata(p.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size(&out) * 2 < size(&source) + 4096,
        "bf16 halves the weights"
    );

    let ids: Vec<u32> = (1..40).collect();
    let a = logits_all(&open(&source), &ids);
    let b = logits_all(&open(&out), &ids).to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(
        diff > 0.0 && diff < 0.05 * max_abs(&a),
        "bf16 rounding only: {diff} of {}",
        max_abs(&a)
    );

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["max_position_embeddings"], 64);
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["infill_fim_order"], "spm");
    assert_eq!(open(&out).config.fim_order(), infill::model::FimOrder::Spm);

    // The copy keeps the training summary but not the per-step curve.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    assert!(report.get("loss_curve").is_none());
    assert!(report["held_out_after"]["bits_per_byte"].as_f64().is_some());

    let listed = infill(&["models".as_ref()]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!("{}: llama", out.display()))
            || listed.contains(&format!("{}: qwen2", out.display())),
        "{listed}"
    );
    assert!(listed.contains("bits/byte"), "{listed}");
    assert!(listed.contains("FIM order spm"), "{listed}");

    // Exporting over a model refuses, in one line, and leaves it alone.
    let again = infill(&export);
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already holds a model"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
}
