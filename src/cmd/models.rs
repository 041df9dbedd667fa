//! `infill models`: what the built-in default model is and what it measured, the models trained
//! into the data directory, and `infill models export` to store a model's weights in bf16.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::DType;
use serde_json::Value;

use clap::ValueEnum;

use crate::cli::{ExportArgs, ExportFormat, ImportArgs, ModelsCommand, StorageDtype};
use crate::model::config::FIM_ORDER_FIELD;
use crate::model::embedded;
use crate::model::load::{
    Blob, ModelFiles, locate_dir, read_safetensors_header, safetensors_header,
};

pub fn run(command: Option<&ModelsCommand>) -> anyhow::Result<()> {
    match command {
        Some(ModelsCommand::Export(args)) => export(args),
        Some(ModelsCommand::Import(args)) => import(args),
        None => list(),
    }
}

/// Where `infill train --out` is suggested to write personal models.
fn data_dir() -> Option<PathBuf> {
    crate::files::xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("models"))
}

fn list() -> anyhow::Result<()> {
    match embedded::files() {
        Some(files) => {
            crate::outln!("default (built in): {}", describe(&files)?)?;
            if let Some(training) = embedded::training() {
                crate::outln!("  {}", training_summary(&serde_json::from_str(training)?))?;
            }
        }
        None => crate::outln!(
            "default: none built in; pass --model DIR|HUB_ID (assets/README.md says how to build one in)"
        )?,
    }
    let Some(dir) = data_dir() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        crate::outln!("no trained models in {}", dir.display())?;
        return Ok(());
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for path in dirs {
        // A folder that is not a model is named with the reason instead of stopping the list.
        match locate_dir(&path)
            .map_err(anyhow::Error::from)
            .and_then(|f| describe(&f))
        {
            Ok(text) => crate::outln!("{}: {text}", path.display())?,
            Err(e) => crate::outln!("{}: not a model ({e:#})", path.display())?,
        }
        if let Ok(text) = std::fs::read_to_string(path.join("training.json"))
            && let Ok(report) = serde_json::from_str::<Value>(&text)
        {
            crate::outln!("  {}", training_summary(&report))?;
        }
    }
    Ok(())
}

/// One line: architecture, parameters, storage, shape and context.
fn describe(files: &ModelFiles) -> anyhow::Result<String> {
    let config: Value = serde_json::from_slice(&files.config.read()?)
        .with_context(|| format!("{}: not JSON", files.config.label().display()))?;
    let mut params = 0usize;
    let mut bytes = 0usize;
    let mut dtypes = BTreeMap::new();
    for blob in &files.weights {
        // Headers only: describing a model does not read its weights.
        let (header, size) = match blob {
            Blob::File(path) => (
                read_safetensors_header(path)?,
                std::fs::metadata(path).map_or(0, |m| m.len()),
            ),
            Blob::Static { bytes, .. } => (
                safetensors_header(&blob.label(), bytes, bytes.len() as u64)?,
                bytes.len() as u64,
            ),
        };
        bytes += size as usize;
        for info in header.values() {
            let count: usize = info.shape.iter().product();
            params += count;
            *dtypes.entry(info.dtype.to_lowercase()).or_insert(0usize) += count;
        }
    }
    let dtype = dtypes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("?", |(d, _)| d.as_str());
    let field = |k: &str| config.get(k).and_then(Value::as_u64).map(|v| v.to_string());
    let layers = field("num_hidden_layers").or_else(|| field("n_layer"));
    let hidden = field("hidden_size").or_else(|| field("n_embd"));
    let context = field("max_position_embeddings").or_else(|| field("n_positions"));
    let order = config
        .get(FIM_ORDER_FIELD)
        .and_then(Value::as_str)
        .unwrap_or("psm");
    Ok(format!(
        "{}, {:.1}M parameters ({dtype}, {:.1} MB), {} layers, hidden {}, context {}, vocab {}, \
         FIM order {order}",
        config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        params as f64 / 1e6,
        bytes as f64 / 1e6,
        layers.as_deref().unwrap_or("?"),
        hidden.as_deref().unwrap_or("?"),
        context.as_deref().unwrap_or("?"),
        field("vocab_size").as_deref().unwrap_or("?"),
    ))
}

/// One line from a `training.json`: how it was trained and the held-out figure it reached.
fn training_summary(report: &Value) -> String {
    let num = |k: &str| report.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let held = report
        .pointer("/held_out_after/bits_per_byte")
        .and_then(Value::as_f64);
    let by_language: Vec<String> = report
        .pointer("/held_out_after/by_language")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let bits = l.get("bits_per_byte").and_then(Value::as_f64)?;
            Some(format!("{} {bits:.3}", l.get("language")?.as_str()?))
        })
        .collect();
    let by_language = match by_language.is_empty() {
        true => String::new(),
        false => format!(" ({})", by_language.join(", ")),
    };
    format!(
        "trained {}: {} steps, {:.1}M tokens, {:.1} h, {} files; held-out {}",
        report.get("start").and_then(Value::as_str).unwrap_or("?"),
        num("steps"),
        num("tokens_seen") / 1e6,
        num("wall_seconds") / 3600.0,
        num("files_trained"),
        held.map_or("?".to_string(), |b| format!(
            "{b:.3} bits/byte{by_language}"
        )),
    )
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    if let Some(context) = args.context.filter(|&c| c < 16) {
        anyhow::bail!("--context must be at least 16 tokens (got {context})");
    }
    let format = args
        .format
        .unwrap_or(match args.out.extension().and_then(|e| e.to_str()) {
            Some("gguf") => ExportFormat::Gguf,
            _ => ExportFormat::Hf,
        });
    if format == ExportFormat::Gguf {
        return export_gguf(args);
    }
    let files = locate_dir(&args.model)?;
    let same = std::fs::canonicalize(&args.model).ok() == std::fs::canonicalize(&args.out).ok();
    if same {
        anyhow::bail!(
            "{}: --out must be another directory than --model",
            args.out.display()
        );
    }
    if args.out.join("model.safetensors").exists() {
        anyhow::bail!(
            "{}: already holds a model; choose a new or empty directory",
            args.out.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the directory", args.out.display()))?;
    let dtype = args.dtype.unwrap_or(StorageDtype::Bf16);
    let target = match dtype {
        StorageDtype::F32 => DType::F32,
        StorageDtype::F16 => DType::F16,
        StorageDtype::Bf16 => DType::BF16,
        quantized => anyhow::bail!(
            "--dtype {} is a GGUF type; pass --format gguf (or an --out ending in .gguf)",
            quantized
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string())
        ),
    };
    let mut tensors = std::collections::HashMap::new();
    for blob in &files.weights {
        let Blob::File(path) = blob else { continue };
        let loaded = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .with_context(|| format!("{}: cannot read the weights", path.display()))?;
        for (name, t) in loaded {
            let t = if t.dtype().is_float() {
                t.to_dtype(target)?
            } else {
                t
            };
            tensors.insert(name, t);
        }
    }
    let tmp = args.out.join(".model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, args.out.join("model.safetensors"))?;

    let mut config: Value = serde_json::from_slice(&files.config.read()?)?;
    if let Some(map) = config.as_object_mut() {
        let name = match target {
            DType::F32 => "float32",
            DType::F16 => "float16",
            _ => "bfloat16",
        };
        map.insert("torch_dtype".into(), Value::from(name));
        if let Some(context) = args.context {
            let key = if map.contains_key("n_positions") {
                "n_positions"
            } else {
                "max_position_embeddings"
            };
            map.insert(key.into(), Value::from(context));
        }
        if let Some(order) = args.fim_order {
            map.insert(FIM_ORDER_FIELD.into(), Value::from(order.name()));
        }
    }
    crate::files::write_atomic(
        &args.out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    crate::files::write_atomic(&args.out.join("tokenizer.json"), &files.tokenizer.read()?)?;
    if let Ok(text) = std::fs::read_to_string(args.model.join("training.json")) {
        // The summary travels with the weights; the per-step loss curve stays behind.
        let mut report: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: training.json is not JSON", args.model.display()))?;
        if let Some(map) = report.as_object_mut() {
            map.remove("loss_curve");
        }
        crate::files::write_atomic(
            &args.out.join("training.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
    }
    let written = locate_dir(&args.out)?;
    crate::outln!("{}: {}", args.out.display(), describe(&written)?)?;
    Ok(())
}

/// `infill models import RUN --out MODEL`.
fn import(args: &ImportArgs) -> anyhow::Result<()> {
    use crate::model::adapter::{self, Adapter};
    use crate::model::load::{self, ModelSource};
    if args.out.join("model.safetensors").exists() {
        anyhow::bail!(
            "{}: already holds a model; choose a new or empty directory",
            args.out.display()
        );
    }
    let dtype = match args.dtype {
        None => None,
        Some(StorageDtype::F32) => Some(DType::F32),
        Some(StorageDtype::F16) => Some(DType::F16),
        Some(StorageDtype::Bf16) => Some(DType::BF16),
        Some(_) => anyhow::bail!(
            "--dtype: a GGUF type; import to f32, f16 or bf16, then infill models export --format gguf"
        ),
    };
    let run: Option<Value> = match std::fs::read_to_string(args.run.join("run.json")) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{}: run.json is not JSON", args.run.display()))?,
        ),
        Err(_) => None,
    };
    let field = |name: &str| {
        run.as_ref()
            .and_then(|r| r.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (adapter_dir, model_dir) = match field("output").as_deref() {
        Some("model") => (None, Some(args.run.join("model"))),
        Some(_) => (Some(args.run.join("adapter")), None),
        None if args.run.join("adapter_config.json").exists() => (Some(args.run.clone()), None),
        None if args.run.join("checkpoints").is_dir() => anyhow::bail!(
            "{}: the run has not finished (no run.json); continue it with --resume, then import it",
            args.run.display()
        ),
        None => anyhow::bail!(
            "{}: neither an infill_scale run (run.json) nor a LoRA adapter (adapter_config.json)",
            args.run.display()
        ),
    };
    let summary = if let Some(dir) = model_dir {
        // A full fine-tune is a model directory already: copied, in the precision asked.
        let files = locate_dir(&dir)?;
        let mut weights = adapter::read_weights(&files)?;
        if let Some(dtype) = dtype {
            for t in weights.values_mut() {
                if t.dtype().is_float() {
                    *t = t.to_dtype(dtype)?;
                }
            }
        }
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("{}: cannot create the directory", args.out.display()))?;
        let tmp = args.out.join(".model.safetensors.tmp");
        candle_core::safetensors::save(&weights, &tmp)?;
        std::fs::rename(&tmp, args.out.join("model.safetensors"))?;
        crate::files::write_atomic(&args.out.join("config.json"), &files.config.read()?)?;
        crate::files::write_atomic(&args.out.join("tokenizer.json"), &files.tokenizer.read()?)?;
        format!("the fully trained model of {}", args.run.display())
    } else {
        let dir = adapter_dir.unwrap_or_else(|| args.run.clone());
        let adapter = Adapter::read(&dir)?;
        let base = args
            .base
            .clone()
            .or_else(|| field("base"))
            .or_else(|| adapter.base.clone())
            .with_context(|| {
                format!(
                    "{}: the run does not name its base model; pass --base DIR|HUB_ID",
                    args.run.display()
                )
            })?;
        let source = ModelSource::parse(Some(&base))?;
        let files = load::locate(&source, load::online_allowed(), &load::Downloads::default())?;
        adapter::write_merged(&files, &adapter, &args.out, dtype)?;
        format!(
            "{} with the LoRA adapter of {} merged into {} modules",
            files.name,
            dir.display(),
            adapter.modules()
        )
    };
    // Loading it is the check that infill runs what was written.
    let written = locate_dir(&args.out)?;
    crate::model::load::load(&written, &crate::model::LoadOptions::default())
        .with_context(|| format!("{}: the imported model does not load", args.out.display()))?;
    crate::outln!("{}: {summary}", args.out.display())?;
    crate::outln!("{}: {}", args.out.display(), describe(&written)?)?;
    Ok(())
}

/// `infill models export --format gguf`: one file in llama.cpp's layout, quantized as asked.
fn export_gguf(args: &ExportArgs) -> anyhow::Result<()> {
    use crate::model::ModelConfig;
    use crate::model::gguf::export::{self, WeightType};
    let files = locate_dir(&args.model)?;
    if args.out.is_dir() {
        anyhow::bail!(
            "{}: is a directory; --format gguf writes one file (e.g. --out model-q8_0.gguf)",
            args.out.display()
        );
    }
    if args.out.exists() {
        anyhow::bail!(
            "{}: already exists; choose a new file name",
            args.out.display()
        );
    }
    let want = match args.dtype.unwrap_or(StorageDtype::Q8_0) {
        StorageDtype::F32 => WeightType::F32,
        StorageDtype::F16 => WeightType::F16,
        StorageDtype::Bf16 => WeightType::Bf16,
        StorageDtype::Q8_0 => WeightType::Q8_0,
        StorageDtype::Q4_0 => WeightType::Q4_0,
        StorageDtype::Q4K => WeightType::Q4K,
        StorageDtype::Q5K => WeightType::Q5K,
        StorageDtype::Q6K => WeightType::Q6K,
    };
    let config_path = files.config.label();
    let mut config = match ModelConfig::parse(std::str::from_utf8(&files.config.read()?)?)
        .with_context(|| config_path.display().to_string())?
    {
        ModelConfig::Llama(c) => c,
        other => anyhow::bail!(
            "{}: {} models cannot be written as GGUF yet (qwen2 and llama can)",
            args.model.display(),
            other.family().model_type()
        ),
    };
    if let Some(context) = args.context {
        config.max_position_embeddings = context;
    }
    if let Some(order) = args.fim_order {
        config.fim_order = Some(order);
    }
    let tokenizer_bytes = files.tokenizer.read()?;
    let tokenizer = crate::model::Tokenizer::from_bytes(&tokenizer_bytes, config.vocab_size)
        .with_context(|| files.tokenizer.label().display().to_string())?;
    let tokenizer_json: Value = serde_json::from_slice(&tokenizer_bytes)?;
    let mut weights = std::collections::HashMap::new();
    for blob in &files.weights {
        let Blob::File(path) = blob else { continue };
        let loaded = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .with_context(|| format!("{}: cannot read the weights", path.display()))?;
        weights.extend(loaded);
    }
    let name = args
        .model
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let written = export::write(
        &config,
        &tokenizer_json,
        tokenizer.fim(),
        &weights,
        want,
        &name,
        &args.out,
    )
    .with_context(|| args.out.display().to_string())?;
    let types: Vec<String> = written
        .types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    crate::outln!(
        "{}: GGUF, {} tensors ({}), {:.1} MB",
        args.out.display(),
        written.tensors,
        types.join(", "),
        written.bytes as f64 / 1e6
    )?;
    Ok(())
}
