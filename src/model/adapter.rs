//! LoRA adapters as peft writes them (`adapter_config.json`, `adapter_model.safetensors`): read,
//! checked against a base model, and merged into its weights (`W + alpha/r * B A`, computed in
//! f32), for `infill models import` and `--adapter`; or applied at run time, so that the editor
//! switches adapters without loading the base again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::load::{self, Blob, Downloads, ModelFiles, ModelSource};

/// A LoRA adapter, ready to merge.
#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    /// The base model peft recorded (`base_model_name_or_path`), if any.
    pub base: Option<String>,
    /// `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    scale: f64,
    /// Base weight name, A (r x in), B (out x r).
    pairs: Vec<(String, Tensor, Tensor)>,
    /// Whole weights the adapter replaces (peft's `modules_to_save`).
    replaced: Vec<(String, Tensor)>,
    /// `fan_in_fan_out`: the base stores its weights transposed (GPT-2's Conv1D).
    transposed: bool,
}

/// peft's prefix before a base model's own tensor names.
const PREFIX: &str = "base_model.model.";

impl Adapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`; refuses what a plain
    /// merge would compute wrongly (DoRA, per-module ranks, biases), naming it.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "{}: cannot read; --adapter takes the adapter/ folder of a LoRA run (peft's save_pretrained)",
                config_path.display()
            )
        })?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", config_path.display()))?;
        let field = |name: &str| config.get(name).filter(|v| !v.is_null());
        let kind = field("peft_type").and_then(Value::as_str).unwrap_or("");
        if kind != "LORA" {
            anyhow::bail!(
                "{}: a {kind:?} adapter; infill merges LoRA adapters only",
                config_path.display()
            );
        }
        let flag = |name: &str| field(name).and_then(Value::as_bool).unwrap_or(false);
        let nonempty = |name: &str| {
            field(name)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        };
        for (unsupported, yes) in [
            ("use_dora", flag("use_dora")),
            ("lora_bias", flag("lora_bias")),
            ("rank_pattern", nonempty("rank_pattern")),
            ("alpha_pattern", nonempty("alpha_pattern")),
            (
                "bias",
                field("bias").and_then(Value::as_str).unwrap_or("none") != "none",
            ),
        ] {
            if yes {
                anyhow::bail!(
                    "{}: {unsupported} is set; infill merges plain LoRA adapters (train with infill_scale's defaults)",
                    config_path.display()
                );
            }
        }
        let r = field("r")
            .and_then(Value::as_f64)
            .filter(|&r| r >= 1.0)
            .with_context(|| format!("{}: no rank r", config_path.display()))?;
        let alpha = field("lora_alpha").and_then(Value::as_f64).unwrap_or(r);
        let scale = match flag("use_rslora") {
            true => alpha / r.sqrt(),
            false => alpha / r,
        };
        let weights_path = dir.join("adapter_model.safetensors");
        let tensors =
            candle_core::safetensors::load(&weights_path, &Device::Cpu).with_context(|| {
                format!(
                    "{}: cannot read the adapter's weights",
                    weights_path.display()
                )
            })?;
        let mut a: HashMap<String, Tensor> = HashMap::new();
        let mut b: HashMap<String, Tensor> = HashMap::new();
        let mut replaced = Vec::new();
        for (name, t) in tensors {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                anyhow::bail!(
                    "{}: tensor {name} is not a peft LoRA tensor",
                    weights_path.display()
                );
            };
            if let Some(module) = rest.strip_suffix(".lora_A.weight") {
                a.insert(format!("{module}.weight"), t.to_dtype(DType::F32)?);
            } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
                b.insert(format!("{module}.weight"), t.to_dtype(DType::F32)?);
            } else {
                replaced.push((rest.replace(".modules_to_save.default", ""), t));
            }
        }
        let mut pairs = Vec::new();
        for (name, a_t) in a {
            let b_t = b.remove(&name).with_context(|| {
                format!(
                    "{}: {name} has lora_A but no lora_B",
                    weights_path.display()
                )
            })?;
            pairs.push((name, a_t, b_t));
        }
        if let Some(name) = b.keys().next() {
            anyhow::bail!(
                "{}: {name} has lora_B but no lora_A",
                weights_path.display()
            );
        }
        pairs.sort_by(|x, y| x.0.cmp(&y.0));
        Ok(Self {
            dir: dir.to_path_buf(),
            base: field("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            scale,
            pairs,
            replaced,
            transposed: flag("fan_in_fan_out"),
        })
    }

    /// Modules the adapter changes.
    pub fn modules(&self) -> usize {
        self.pairs.len() + self.replaced.len()
    }

    /// Applies the adapter to `network` at run time, in place of the one applied before (see
    /// [`Llama::set_lora`](super::llama::Llama::set_lora)); the base's weights stay as they are.
    /// Only infill's own decoder takes one, and only an adapter of low-rank updates: one that
    /// replaces whole weights (peft's `modules_to_save`) is merged instead (`infill models
    /// import`).
    pub fn apply(&self, network: &mut super::Network) -> anyhow::Result<()> {
        if let Some((name, _)) = self.replaced.first() {
            anyhow::bail!(
                "{}: the adapter replaces {name} whole, which only a merge applies: `infill models import`",
                self.dir.display()
            );
        }
        if self.transposed {
            anyhow::bail!(
                "{}: fan_in_fan_out is set (GPT-2 style weights), which infill's decoder does not have",
                self.dir.display()
            );
        }
        let updates = self.pairs.iter().map(|(n, a, b)| (n.as_str(), a, b));
        network
            .set_lora(updates, self.scale)
            .with_context(|| format!("{}", self.dir.display()))
    }

    /// Adds the adapter into `weights` (the base model's, by name), each merged weight kept in
    /// its stored type. Every module the adapter names must be there, with the adapter's shape.
    pub fn merge(&self, weights: &mut HashMap<String, Tensor>) -> anyhow::Result<()> {
        let missing = |name: &str| {
            anyhow::anyhow!(
                "{}: the adapter changes {name}, which the base model does not have: is it the adapter of another model?",
                self.dir.display()
            )
        };
        for (name, a, b) in &self.pairs {
            let w = weights.get(name).ok_or_else(|| missing(name))?;
            let mut delta = (b.matmul(a)? * self.scale)?;
            if self.transposed {
                delta = delta.t()?;
            }
            if delta.dims() != w.dims() {
                anyhow::bail!(
                    "{}: {name} is {:?} in the base model but {:?} in the adapter: is it the adapter of another model?",
                    self.dir.display(),
                    w.dims(),
                    delta.dims()
                );
            }
            let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
            weights.insert(name.clone(), merged);
        }
        for (name, t) in &self.replaced {
            let w = weights.get(name).ok_or_else(|| missing(name))?;
            if t.dims() != w.dims() {
                anyhow::bail!(
                    "{}: {name} is {:?} in the base model but {:?} in the adapter",
                    self.dir.display(),
                    w.dims(),
                    t.dims()
                );
            }
            weights.insert(name.clone(), t.to_dtype(w.dtype())?);
        }
        Ok(())
    }
}

/// Every tensor of a model's safetensors files.
pub fn read_weights(files: &ModelFiles) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut weights = HashMap::new();
    for blob in &files.weights {
        let bytes = blob.read()?;
        weights.extend(
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                .with_context(|| format!("{}: cannot read the weights", blob.label().display()))?,
        );
    }
    Ok(weights)
}

/// Writes `base` with `adapter` merged into `out` as a model directory (config.json,
/// tokenizer.json, model.safetensors), the weights in `dtype` where given, else as stored.
pub fn write_merged(
    base: &ModelFiles,
    adapter: &Adapter,
    out: &Path,
    dtype: Option<DType>,
) -> anyhow::Result<()> {
    let tokenizer = base.tokenizer.read()?;
    if let Ok(own) = std::fs::read(adapter.dir.join("tokenizer.json"))
        && own != *tokenizer
    {
        let base_tok = super::Tokenizer::from_bytes(&tokenizer, usize::MAX)?;
        let own_tok = super::Tokenizer::from_bytes(&own, usize::MAX)?;
        let probe = super::tokenizer::PROBE;
        if base_tok.encode(probe)? != own_tok.encode(probe)? {
            anyhow::bail!(
                "{}: the adapter was trained for another tokenizer than {}'s; name its own base model",
                adapter.dir.display(),
                base.name
            );
        }
    }
    let mut weights = read_weights(base)?;
    adapter.merge(&mut weights)?;
    if let Some(dtype) = dtype {
        for t in weights.values_mut() {
            if t.dtype().is_float() {
                *t = t.to_dtype(dtype)?;
            }
        }
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the directory", out.display()))?;
    let tmp = out.join(".model.safetensors.tmp");
    candle_core::safetensors::save(&weights, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    let mut config: Value = serde_json::from_slice(&base.config.read()?)
        .with_context(|| format!("{}: not JSON", base.config.label().display()))?;
    if let (Some(dtype), Some(map)) = (dtype, config.as_object_mut()) {
        let name = match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        map.insert("torch_dtype".into(), Value::from(name));
    }
    crate::files::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    crate::files::write_atomic(&out.join("tokenizer.json"), &tokenizer)?;
    Ok(())
}

/// The files of `base` with `adapter` merged in: a model directory in infill's cache, made on
/// first use and kept (keyed by the base's files and the adapter's bytes), so `--adapter` costs
/// one merge per adapter, not one per start.
pub fn merged(
    base: &ModelSource,
    adapter_dir: &Path,
    online: bool,
    downloads: &Downloads,
) -> anyhow::Result<ModelFiles> {
    let adapter = Adapter::read(adapter_dir)?;
    let files = load::locate(base, online, downloads)?;
    let mut key = format!("{}\0", files.name);
    for blob in files
        .weights
        .iter()
        .chain([&files.config, &files.tokenizer])
    {
        match blob {
            Blob::File(p) => {
                let meta = std::fs::metadata(p)?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                key.push_str(&format!("{}\0{}\0{modified}\0", p.display(), meta.len()));
            }
            Blob::Static { bytes, .. } => key.push_str(&format!(
                "{:x}\0",
                crate::hash::fnv1a(&bytes[..bytes.len().min(1 << 20)])
            )),
        }
    }
    let mut hash = crate::hash::fnv1a(key.as_bytes());
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        let bytes = std::fs::read(adapter_dir.join(name))?;
        hash ^= crate::hash::fnv1a(&bytes).rotate_left(17);
    }
    let cache = crate::files::xdg_dir("XDG_CACHE_HOME", ".cache")
        .context("no cache folder: set XDG_CACHE_HOME or HOME")?
        .join("adapters")
        .join(format!("{hash:016x}"));
    if load::locate_dir(&cache).is_err() {
        tracing::info!(
            "merging {} into {} at {}",
            adapter_dir.display(),
            files.name,
            cache.display()
        );
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        write_merged(&files, &adapter, &tmp, None)?;
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::rename(&tmp, &cache)
            .with_context(|| format!("{}: cannot store the merged model", cache.display()))?;
    }
    let mut merged = load::locate_dir(&cache)?;
    merged.name = format!("{} + {}", files.name, adapter_dir.display());
    Ok(merged)
}
