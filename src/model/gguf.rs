//! GGUF files, the format of llama.cpp, ollama and LM Studio: one file holding the weights (in any
//! of llama.cpp's types, quantized or not), the hyperparameters and the tokenizer.
//!
//! A file is read in the layout llama.cpp's `convert_hf_to_gguf.py` writes: its tensor names, its
//! metadata keys, and for the `llama` architecture Q and K rows permuted into GGML's interleaved RoPE
//! order, which we permute back so the model is the same decoder as a Hugging Face directory's.
//! Quantized matrices stay quantized in memory and run on candle's quantized kernels (AVX2 /
//! AVX-512 VNNI where the processor has them, chosen at run time); F32, F16 and BF16 matrices are
//! widened to f32. Norms and biases are f32 in every file. The tokenizer is rebuilt from the
//! metadata as the `tokenizer.json` the model's family publishes, so everything downstream (FIM
//! template, exact token bytes, trimming) is the same code for both formats.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value as Json;

use super::config::{Family, LlamaConfig, ModelConfig};
use super::llama::{Llama, Quantized};
use super::load::{LoadError, LoadOptions};
use super::q8_linear::{self, Q8Linear};
use super::tokenizer::{FimOrder, Tokenizer};
use super::{Model, Network};

pub mod export;
mod layernorm;
mod vocab;

use vocab::{TOKEN_NORMAL, byte_level_json, byte_level_pre_tokenizer, sentencepiece_json};

/// The metadata key where infill records the FIM prompt order a model completes best in (as
/// `infill_fim_order` in a config.json).
pub const FIM_ORDER_KEY: &str = "infill.fim_order";

/// The architectures (`general.architecture`) infill runs from a GGUF file.
pub const SUPPORTED_ARCHITECTURES: &str = "qwen2, llama, starcoder2, starcoder (GPT-BigCode)";

/// Whether `path` is a GGUF file, by its magic bytes.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// An open GGUF file: its metadata and tensor directory, the data read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| gguf_error(path, &e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    fn err(&self, why: impl Into<String>) -> LoadError {
        gguf_error(&self.path, &why.into())
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<&str, LoadError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.err(format!("metadata \"{key}\" is not a string"))),
            None => Err(self.err(format!("metadata \"{key}\" is missing"))),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, LoadError> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::U8(v)) => u64::from(*v),
            Some(Value::U16(v)) => u64::from(*v),
            Some(Value::U32(v)) => u64::from(*v),
            Some(Value::U64(v)) => *v,
            Some(Value::I8(v)) if *v >= 0 => *v as u64,
            Some(Value::I16(v)) if *v >= 0 => *v as u64,
            Some(Value::I32(v)) if *v >= 0 => *v as u64,
            Some(Value::I64(v)) if *v >= 0 => *v as u64,
            Some(_) => {
                return Err(self.err(format!("metadata \"{key}\" is not a non-negative integer")));
            }
        };
        Ok(Some(v))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        self.opt_u64(key).map(|v| v.map(|v| v as usize))
    }

    fn usize(&self, key: &str) -> Result<usize, LoadError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("metadata \"{key}\" is missing")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(f64::from(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(_) => Err(self.err(format!("metadata \"{key}\" is not a number"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(_) => Err(self.err(format!("metadata \"{key}\" is not a boolean"))),
        }
    }

    fn opt_token(&self, key: &str) -> Result<Option<u32>, LoadError> {
        self.opt_u64(key).map(|v| v.map(|v| v as u32))
    }

    fn array(&self, key: &str) -> Result<&[Value], LoadError> {
        match self.get(key) {
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(self.err(format!("metadata \"{key}\" is not an array"))),
            None => Err(self.err(format!("metadata \"{key}\" is missing"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>, LoadError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.err(format!("metadata \"{key}\" holds a non-string"))),
            })
            .collect()
    }

    fn numbers(&self, key: &str) -> Result<Vec<f64>, LoadError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                Value::I32(x) => Ok(f64::from(*x)),
                Value::U32(x) => Ok(f64::from(*x)),
                Value::I8(x) => Ok(f64::from(*x)),
                Value::U8(x) => Ok(f64::from(*x)),
                _ => Err(self.err(format!("metadata \"{key}\" holds a non-number"))),
            })
            .collect()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, LoadError> {
        self.string("general.architecture")
    }

    /// The shape of a tensor as (rows, columns, ...), if the file has it.
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims())
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Q8_0 matrices read into one set of tiles for our kernels (see [`Q8Linear::joint`]), their
    /// rows read from the file a tile at a time, so no copy of the file's bytes is held. Each is
    /// `(name, head_dim)`: `head_dim` where the converter permuted a `llama` file's Q or K rows,
    /// which are read back in transformers' order. `None` unless every one is a matrix of one
    /// width in a type these kernels run (as it is, or requantized to Q8_0), and for a group that
    /// mixes Q4_K with other types (its matrices are then read one at a time).
    fn q8(&mut self, group: &[(&str, Option<usize>)]) -> Result<Option<Vec<Q8Linear>>, LoadError> {
        use std::io::{Read, Seek, SeekFrom};
        // Where each matrix's Q8_0 rows come from: the file, or (for a type requantized to
        // Q8_0) a copy of this one matrix, permuted already.
        enum Rows {
            File { start: u64, head_dim: Option<usize> },
            Requantized(Vec<u8>),
        }
        let mut parts: Vec<(usize, Rows)> = Vec::new();
        let mut width = None;
        // Q5_0, Q4_K and Q6_K matrices stay in their own bits where the kernels have those
        // forms, when the whole group is of the type (a group shares one set of tiles, so one
        // format); a group that mixes a K type with another type is read a matrix at a time, so
        // that its K matrices keep their bits.
        let dtypes: Vec<Option<GgmlDType>> = group
            .iter()
            .map(|(name, _)| self.content.tensor_infos.get(*name).map(|i| i.ggml_dtype))
            .collect();
        let all = |t: GgmlDType| dtypes.iter().all(|d| *d == Some(t));
        let format = if all(GgmlDType::Q5_0) && q8_linear::q5_tiles() {
            q8_linear::Format::Q5
        } else if all(GgmlDType::Q4K) && q8_linear::q4k_tiles() {
            q8_linear::Format::Q4K
        } else if all(GgmlDType::Q6K) && q8_linear::q6k_tiles() {
            q8_linear::Format::Q6K
        } else if (dtypes.contains(&Some(GgmlDType::Q4K)) && q8_linear::q4k_tiles())
            || (dtypes.contains(&Some(GgmlDType::Q6K)) && q8_linear::q6k_tiles())
        {
            return Ok(None);
        } else {
            q8_linear::Format::Q8
        };
        for &(name, head_dim) in group {
            let Some(info) = self.content.tensor_infos.get(name) else {
                return Err(self.err(format!("no tensor \"{name}\"; is the file complete?")));
            };
            let (&[rows, cols], dtype) = (info.shape.dims(), info.ggml_dtype) else {
                return Ok(None);
            };
            if *width.get_or_insert(cols) != cols {
                return Ok(None);
            }
            let source = match dtype {
                GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q4K | GgmlDType::Q6K
                    if format.file_type() == dtype =>
                {
                    Rows::File {
                        start: self.content.tensor_data_offset + info.offset,
                        head_dim,
                    }
                }
                dtype if requantized(dtype) => {
                    let mut t = self.tensor(name)?;
                    if let Some(head_dim) = head_dim {
                        t = unpermute_rows(&t, rows / head_dim, head_dim)
                            .map_err(|e| self.err(e.to_string()))?;
                    }
                    let q8 = by_rows(&t, |part| {
                        QTensor::quantize(part, GgmlDType::Q8_0)?
                            .data()
                            .map(|d| d.into_owned())
                    })
                    .map_err(|e| self.err(format!("tensor \"{name}\": {e}")))?;
                    Rows::Requantized(q8)
                }
                _ => return Ok(None),
            };
            parts.push((rows, source));
        }
        let Some(cols) = width else {
            return Ok(None);
        };
        let row_bytes = format.row_bytes(cols);
        let reader = &mut self.reader;
        let rows: Vec<usize> = parts.iter().map(|p| p.0).collect();
        let layers = Q8Linear::read_format(&rows, cols, format, |part, first, buf| {
            match &parts[part].1 {
                Rows::Requantized(bytes) => {
                    buf.copy_from_slice(&bytes[first * row_bytes..][..buf.len()]);
                }
                &Rows::File { start, head_dim } => {
                    let at = |row: usize| start + (row * row_bytes) as u64;
                    match head_dim {
                        None => {
                            reader.seek(SeekFrom::Start(at(first)))?;
                            reader.read_exact(buf)?;
                        }
                        Some(head_dim) => {
                            for (i, row) in buf.chunks_exact_mut(row_bytes).enumerate() {
                                reader
                                    .seek(SeekFrom::Start(at(unpermuted(first + i, head_dim))))?;
                                reader.read_exact(row)?;
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        let names: Vec<&str> = group.iter().map(|g| g.0).collect();
        layers.map(Some).map_err(|e| {
            gguf_error(
                &self.path,
                &format!("tensor \"{}\": {e}", names.join("\", \"")),
            )
        })
    }

    fn tensor(&mut self, name: &str) -> Result<QTensor, LoadError> {
        if !self.has(name) {
            return Err(self.err(format!("no tensor \"{name}\"; is the file complete?")));
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| gguf_error(&self.path, &format!("tensor \"{name}\": {e}")))
    }

    /// The decoder's configuration from `<arch>.*` metadata.
    pub fn llama_config(&self) -> Result<LlamaConfig, LoadError> {
        let arch = self.architecture()?;
        let family = match arch {
            "qwen2" => Family::Qwen2,
            "llama" => Family::Llama,
            other if layernorm::handles(other) => {
                return Err(self.err(format!(
                    "architecture \"{other}\" runs from GGUF, but infill fine-tunes and exports \
                     qwen2 and llama models only"
                )));
            }
            other => {
                return Err(self.err(format!(
                    "architecture \"{other}\" is not supported from GGUF (supported: \
                     {SUPPORTED_ARCHITECTURES})"
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let rope_scaling_factor = match self.get(&key("rope.scaling.type")) {
            None => 1.0,
            Some(Value::String(kind)) if kind == "none" => 1.0,
            Some(Value::String(kind)) if kind == "linear" => self
                .opt_f64(&key("rope.scaling.factor"))?
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| self.err("linear RoPE scaling without a positive factor"))?,
            Some(kind) => {
                return Err(self.err(format!(
                    "RoPE scaling {kind:?} is not supported (only plain RoPE with a frequency \
                     base, or linear scaling)"
                )));
            }
        };
        let hidden_size = self.usize(&key("embedding_length"))?;
        let num_attention_heads = self.usize(&key("attention.head_count"))?;
        let num_key_value_heads = self
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(self.err(format!(
                "{num_attention_heads} attention heads do not group into {num_key_value_heads} \
                 key/value heads"
            )));
        }
        let head_dim = match self.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => return Err(self.err("the head size is neither given nor implied")),
        };
        if head_dim % 2 != 0 {
            return Err(self.err(format!("head size {head_dim} is odd; RoPE needs pairs")));
        }
        let embed_rows = self
            .shape("token_embd.weight")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| self.err("no tensor \"token_embd.weight\"; is the file complete?"))?;
        let vocab_size = self.opt_usize(&key("vocab_size"))?.unwrap_or(embed_rows);
        let has_bias = |t: &str| self.has(&format!("blk.0.{t}.bias"));
        Ok(LlamaConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: self.usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: self.usize(&key("context_length"))?,
            rms_norm_eps: self
                .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta: self.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling_factor,
            qkv_bias: has_bias("attn_q"),
            o_bias: has_bias("attn_output"),
            mlp_bias: has_bias("ffn_up"),
            tie_word_embeddings: !self.has("output.weight"),
            bos_token_id: self.opt_token("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.opt_token("tokenizer.ggml.eos_token_id")?,
            fim_order: match self.get(FIM_ORDER_KEY) {
                Some(Value::String(o)) if o == "spm" => Some(FimOrder::Spm),
                Some(Value::String(o)) if o == "psm" => Some(FimOrder::Psm),
                _ => None,
            },
        })
    }

    /// The `tokenizer.json` the metadata describes, as the model family publishes it.
    pub fn tokenizer_json(&self) -> Result<Json, LoadError> {
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type") {
            Some(_) => self
                .numbers("tokenizer.ggml.token_type")?
                .into_iter()
                .map(|t| t as i64)
                .collect(),
            None => vec![TOKEN_NORMAL; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(self.err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let model = self.string("tokenizer.ggml.model")?;
        let add_bos = self.opt_bool("tokenizer.ggml.add_bos_token")?;
        let bos = self.opt_token("tokenizer.ggml.bos_token_id")?;
        match model {
            "gpt2" => {
                let merges = self.strings("tokenizer.ggml.merges")?;
                let pre = match self.get("tokenizer.ggml.pre") {
                    Some(Value::String(p)) => p.as_str(),
                    _ => "default",
                };
                let (normalizer, pre_tokenizer) =
                    byte_level_pre_tokenizer(pre).ok_or_else(|| {
                        self.err(format!(
                            "pre-tokenizer \"{pre}\" is not supported (supported: {})",
                            vocab::SUPPORTED_PRE
                        ))
                    })?;
                let bos = bos.filter(|_| add_bos == Some(true));
                Ok(byte_level_json(
                    &tokens,
                    &types,
                    &merges,
                    normalizer,
                    pre_tokenizer,
                    bos,
                ))
            }
            "llama" => {
                let scores = self.numbers("tokenizer.ggml.scores")?;
                if scores.len() != tokens.len() {
                    return Err(self.err(format!(
                        "{} token scores for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                let prefix_space = self
                    .opt_bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                let bos = bos.filter(|_| add_bos != Some(false));
                Ok(sentencepiece_json(
                    &tokens,
                    &types,
                    &scores,
                    prefix_space,
                    bos,
                ))
            }
            other => Err(self.err(format!(
                "tokenizer model \"{other}\" is not supported (supported: gpt2 byte-level BPE, \
                 llama SentencePiece)"
            ))),
        }
    }

    /// The prefix, suffix and middle ids the metadata names, if it names all three.
    fn fim_ids(&self) -> Result<Option<[u32; 3]>, LoadError> {
        let pick = |a: &str, b: &str| -> Result<Option<u32>, LoadError> {
            Ok(self
                .opt_token(&format!("tokenizer.ggml.{a}"))?
                .or(self.opt_token(&format!("tokenizer.ggml.{b}"))?))
        };
        Ok(
            match (
                pick("fim_pre_token_id", "prefix_token_id")?,
                pick("fim_suf_token_id", "suffix_token_id")?,
                pick("fim_mid_token_id", "middle_token_id")?,
            ) {
                (Some(p), Some(s), Some(m)) => Some([p, s, m]),
                _ => None,
            },
        )
    }

    /// The tokenizer, checked against the model's `vocab_size`.
    pub fn tokenizer(&self, vocab_size: usize) -> Result<Tokenizer, LoadError> {
        let json = self.tokenizer_json()?;
        let bytes = serde_json::to_vec(&json).map_err(|e| self.err(e.to_string()))?;
        Tokenizer::from_bytes_with_fim(&bytes, vocab_size, self.fim_ids()?).map_err(|source| {
            LoadError::Tokenizer {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Reads every tensor of the decoder under its transformers name: matrices as they are
    /// stored (Q and K rows of `llama` files put back in transformers' order), 1-D tensors as
    /// f32 for a var builder.
    fn decoder_tensors(
        &mut self,
        c: &LlamaConfig,
        sixteen_bits_as_bf16: bool,
        tiles: bool,
    ) -> Result<(Quantized, HashMap<String, Tensor>), LoadError> {
        let permute = self.architecture()? == "llama";
        // Every weight the decoder needs must be there (a missing one is named when read); a
        // bias or the untied head only where the file has it.
        let names: Vec<(String, String)> = tensor_names(c.num_hidden_layers)
            .into_iter()
            .filter(|(gguf, hf)| {
                required(hf) || (hf == "lm_head.weight" && !c.tie_word_embeddings) || self.has(gguf)
            })
            .collect();
        let mut quantized = Quantized::default();
        let mut small = HashMap::new();
        let heads = |hf: &str| {
            if hf.contains(".q_proj.") {
                Some(c.num_attention_heads)
            } else if hf.contains(".k_proj.") {
                Some(c.num_key_value_heads)
            } else {
                None
            }
        };
        // Q8_0 matrices of one input are read together, so each group runs as one product.
        let mut groups: Vec<Vec<(String, String)>> = Vec::new();
        for (gguf, hf) in &names {
            let key = group_of(hf);
            match groups
                .iter_mut()
                .find(|g| key.is_some() && group_of(&g[0].1) == key)
            {
                Some(group) => group.push((gguf.clone(), hf.clone())),
                None => groups.push(vec![(gguf.clone(), hf.clone())]),
            }
        }
        for group in groups.into_iter().filter(|_| tiles) {
            let members: Vec<(&str, Option<usize>)> = group
                .iter()
                .map(|(gguf, hf)| {
                    (
                        gguf.as_str(),
                        heads(hf).filter(|_| permute).map(|_| c.head_dim),
                    )
                })
                .collect();
            let Some(layers) = self.q8(&members)? else {
                continue;
            };
            for ((_, hf), layer) in group.iter().zip(layers) {
                quantized.q8.insert(hf.clone(), layer);
            }
        }
        for (gguf, hf) in names {
            if quantized.q8.contains_key(&hf) {
                continue;
            }
            let heads = heads(&hf);
            // A matrix whose group mixes types: alone, from the file or requantized.
            let head_dim = heads.filter(|_| permute).map(|_| c.head_dim);
            if tiles && let Some(mut layer) = self.q8(&[(gguf.as_str(), head_dim)])? {
                if let Some(layer) = layer.pop() {
                    quantized.q8.insert(hf, layer);
                }
                continue;
            }
            let mut t = self.tensor(&gguf)?;
            if let (true, Some(heads)) = (permute, heads) {
                t = unpermute_rows(&t, heads, c.head_dim).map_err(|e| self.err(e.to_string()))?;
            }
            if t.rank() == 1 {
                let f = t
                    .dequantize(&Device::Cpu)
                    .map_err(|e| self.err(e.to_string()))?;
                small.insert(hf, f);
            } else if sixteen_bits_as_bf16 && matches!(t.dtype(), GgmlDType::F16 | GgmlDType::BF16)
            {
                // Converted as it is read, so the 16-bit copy never outlives this tensor.
                let bits =
                    bf16_bits(&t).map_err(|e| self.err(format!("tensor \"{gguf}\": {e}")))?;
                quantized.bf16.insert(hf, bits);
            } else {
                quantized.tensors.insert(hf, Arc::new(t));
            }
        }
        Ok((quantized, small))
    }
}

/// Loads a GGUF file into a ready model.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, LoadError> {
    let mut file = GgufFile::open(path)?;
    if layernorm::handles(file.architecture()?) {
        return layernorm::load(file, path, opts);
    }
    let config = file.llama_config()?;
    let tokenizer = file.tokenizer(config.vocab_size)?;
    // 16-bit matrices run on our bf16 kernel unless f32 is asked for; quantized ones always run
    // in their own type.
    let sixteen_bits_as_bf16 = match opts.dtype {
        None | Some(DType::BF16) => true,
        Some(DType::F32) => false,
        Some(other) => {
            return Err(file.err(format!(
                "--dtype {} does not apply to a GGUF file: its quantized weights run in their \
                 own type, its 16-bit ones in bf16 (or f32 with --dtype f32)",
                format!("{other:?}").to_lowercase()
            )));
        }
    };
    check_shapes(&file, &config)?;
    // Off the CPU (or with candle's kernels asked for) every matrix is a tensor in its stored
    // type for candle's quantized kernels, on the device.
    let host = opts.host_kernels();
    let (mut quantized, small) =
        file.decoder_tensors(&config, sixteen_bits_as_bf16 && host, host)?;
    if !opts.device.is_cpu() {
        quantized = quantized
            .to_device(&opts.device)
            .map_err(|e| file.err(e.to_string()))?;
    }
    let vb = VarBuilder::from_tensors(small, DType::F32, &opts.device);
    let model = Llama::new_quantized(&config, vb, &quantized, opts.inference_kernels())
        .map_err(|e| file.err(e.to_string()))?;
    let name = path.display().to_string();
    Ok(Model {
        name,
        network: Network::llama(model),
        tokenizer,
        config: ModelConfig::Llama(config),
    })
}

/// A GGUF file as the start of a fine-tune: its configuration, its tokenizer and every weight
/// dequantized to f32 under its transformers name (what a Hugging Face directory holds).
pub fn dequantized(
    path: &Path,
) -> Result<(LlamaConfig, Tokenizer, HashMap<String, Tensor>), LoadError> {
    let mut file = GgufFile::open(path)?;
    let config = file.llama_config()?;
    let tokenizer = file.tokenizer(config.vocab_size)?;
    check_shapes(&file, &config)?;
    // Straight from the stored types: no tiles (a type the tiles requantize would lose bits).
    let (quantized, mut weights) = file.decoder_tensors(&config, false, false)?;
    for (name, layer) in quantized.q8 {
        let values = layer
            .dequantize(&Device::Cpu)
            .map_err(|e| file.err(format!("tensor \"{name}\": {e}")))?;
        weights.insert(name, values);
    }
    for (name, t) in quantized.tensors {
        let values = t
            .dequantize(&Device::Cpu)
            .map_err(|e| file.err(format!("tensor \"{name}\": {e}")))?;
        weights.insert(name, values);
    }
    Ok((config, tokenizer, weights))
}

/// Every matrix has the shape the metadata implies, so a mismatch is named, not a matmul error.
fn check_shapes(file: &GgufFile, c: &LlamaConfig) -> Result<(), LoadError> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let mut want = vec![("token_embd.weight".to_string(), vec![c.vocab_size, h])];
    if !c.tie_word_embeddings {
        want.push(("output.weight".into(), vec![c.vocab_size, h]));
    }
    for l in 0..c.num_hidden_layers {
        for (t, shape) in [
            ("attn_q", [q, h]),
            ("attn_k", [kv, h]),
            ("attn_v", [kv, h]),
            ("attn_output", [h, q]),
            ("ffn_gate", [i, h]),
            ("ffn_up", [i, h]),
            ("ffn_down", [h, i]),
        ] {
            want.push((format!("blk.{l}.{t}.weight"), shape.to_vec()));
        }
    }
    for (name, expected) in want {
        match file.shape(&name) {
            None => return Err(file.err(format!("no tensor \"{name}\"; is the file complete?"))),
            Some(got) if got != expected.as_slice() => {
                return Err(file.err(format!(
                    "tensor \"{name}\" has shape {got:?} but the metadata implies {expected:?}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Every tensor a decoder with `layers` blocks can hold, biases and the untied head included:
/// (llama.cpp's name, transformers' name), in the order llama.cpp's converter writes them.
fn tensor_names(layers: usize) -> Vec<(String, String)> {
    let mut names = vec![(
        "token_embd.weight".to_string(),
        "model.embed_tokens.weight".to_string(),
    )];
    for layer in 0..layers {
        for (gguf, hf) in LAYER_NAMES {
            for kind in ["weight", "bias"] {
                names.push((
                    format!("blk.{layer}.{gguf}.{kind}"),
                    format!("model.layers.{layer}.{hf}.{kind}"),
                ));
            }
        }
    }
    names.push(("output_norm.weight".into(), "model.norm.weight".into()));
    names.push(("output.weight".into(), "lm_head.weight".into()));
    names
}

/// Whether every decoder has the tensor: all weights but the head's (tied heads have none).
fn required(hf: &str) -> bool {
    hf.ends_with(".weight") && hf != "lm_head.weight"
}

/// llama.cpp's tensor names within a block, with the transformers names they stand for.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Undoes the converter's Q/K permutation: within each head, GGUF row `2i + j` is transformers'
/// row `j * head_dim / 2 + i`. Rows are whole blocks in every type, so quantized rows move as bytes.
fn unpermute_rows(t: &QTensor, heads: usize, head_dim: usize) -> candle_core::Result<QTensor> {
    let dims = t.shape().dims().to_vec();
    let rows = dims[0];
    if rows != heads * head_dim {
        candle_core::bail!("{rows} rows are not {heads} heads of {head_dim}");
    }
    let data = t.data()?;
    let row_bytes = data.len() / rows;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * head_dim + 2 * i + j;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, t.dtype())?;
    QTensor::new(storage, dims)
}

/// The matrices read together (see [`GgufFile::q8`]): a layer's q, k and v; its gate and up.
fn group_of(hf: &str) -> Option<(&str, &'static str)> {
    let layer = hf.strip_prefix("model.layers.")?.split('.').next()?;
    match hf.rsplit('.').nth(1)? {
        "q_proj" | "k_proj" | "v_proj" => Some((layer, "qkv")),
        "gate_proj" | "up_proj" => Some((layer, "gate_up")),
        _ => None,
    }
}

/// The GGUF row of a `llama` file's Q or K matrix that holds transformers' row `row`: within each
/// head, transformers' row `j * head_dim / 2 + i` is GGUF row `2i + j` (see [`unpermute_rows`]).
fn unpermuted(row: usize, head_dim: usize) -> usize {
    let (head, within) = (row / head_dim, row % head_dim);
    let half = head_dim / 2;
    head * head_dim + 2 * (within % half) + within / half
}

/// Whether matrices of `dtype` run as Q8_0 on infill's kernels rather than in their own type on
/// candle's: Q4_1, Q5_0 and Q5_1 always (llama.cpp's fallbacks where K blocks do not divide a
/// row, as in Qwen2.5-Coder-0.5B's Q4_K_M file; candle has no SIMD product for them), and the K
/// types where the processor has AVX-512 VNNI, on which infill's Q8_0 kernels decode a 1.5B
/// Q4_K_M file 1.2x and prompt it 1.8x faster than candle's own K kernels (which also keep a
/// repacked second copy). Requantizing moves each value by at most half an 8-bit step of its
/// block; the cost is memory, 8.5 bits a weight. Where the AVX2 or VNNI kernels run, groups of
/// Q5_0, Q4_K and Q6_K matrices are not requantized but kept in their own bits
/// ([`q8_linear::Format`]), which leaves the rarer K types to this.
fn requantized(dtype: GgmlDType) -> bool {
    match dtype {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => true,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
            q8_linear::vnni()
        }
        _ => false,
    }
}

/// A 16-bit matrix as bf16 bits (exact for BF16; F16 values rounded to bf16's 8-bit mantissa).
fn bf16_bits(t: &QTensor) -> candle_core::Result<Arc<[u16]>> {
    by_rows(t, super::bf16_linear::to_bf16_bits).map(Into::into)
}

/// Rows of a matrix dequantized at a time while it is converted: whole, a 151,936-word
/// embedding's f32 copy would take 0.9 GB, the largest allocation of a load by far.
const CONVERT_ROWS: usize = 1024;

/// `convert` applied to `t`'s rows dequantized [`CONVERT_ROWS`] at a time, the results joined in
/// order: a matrix converted without an f32 copy of the whole of it.
fn by_rows<T>(
    t: &QTensor,
    mut convert: impl FnMut(&Tensor) -> candle_core::Result<Vec<T>>,
) -> candle_core::Result<Vec<T>> {
    let dims = t.shape().dims();
    let Some((&rows, rest)) = dims.split_first().filter(|(rows, _)| **rows > 0) else {
        return convert(&t.dequantize(&Device::Cpu)?);
    };
    let data = t.data()?;
    let row_bytes = data.len() / rows;
    let mut out = Vec::new();
    for first in (0..rows).step_by(CONVERT_ROWS) {
        let count = CONVERT_ROWS.min(rows - first);
        let bytes = &data[first * row_bytes..][..count * row_bytes];
        let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, t.dtype())?;
        let shape: Vec<usize> = std::iter::once(count).chain(rest.iter().copied()).collect();
        out.extend(convert(
            &QTensor::new(storage, shape)?.dequantize(&Device::Cpu)?,
        )?);
    }
    Ok(out)
}

/// A one-line reason from candle's GGUF reader (without the backtrace candle appends when
/// `RUST_BACKTRACE` is set), with the weight type named where it is one we cannot run.
fn gguf_error(path: &Path, why: &str) -> LoadError {
    let why = why.lines().next().unwrap_or_default();
    let why = match why
        .rsplit_once("unknown dtype for tensor ")
        .and_then(|(_, id)| id.trim().parse::<u32>().ok())
    {
        Some(id) => format!(
            "weight type {} is not supported (infill reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
             Q5_1, Q8_0 and Q2_K to Q6_K); use a Q4_K_M, Q5_K_M, Q6_K or Q8_0 file",
            ggml_type_name(id)
        ),
        None if why.contains("failed to fill whole buffer")
            || why.contains("remaining")
            || why.contains("exceeds") =>
        {
            format!("{why}; the file is damaged or incomplete, download it again")
        }
        None if why.contains("magic") => {
            "is not a GGUF file (no GGUF magic at its start)".to_string()
        }
        None => why.to_string(),
    };
    LoadError::Gguf {
        path: path.to_path_buf(),
        why,
    }
}

/// GGML's names for its type ids (ggml.h), for messages.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("{id}"),
    };
    name.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Converting a matrix a chunk of rows at a time gives exactly what converting it whole
    /// gives (requantized to Q8_0, or narrowed to bf16), for fewer rows than a chunk, a chunk,
    /// and more.
    #[test]
    fn a_matrix_converted_by_rows_equals_it_converted_whole() {
        let q8 = |t: &Tensor| -> candle_core::Result<Vec<u8>> {
            QTensor::quantize(t, GgmlDType::Q8_0)?
                .data()
                .map(|d| d.into_owned())
        };
        for rows in [1, CONVERT_ROWS, CONVERT_ROWS + 3] {
            let x = Tensor::randn(0f32, 1.0, (rows, 256), &Device::Cpu).unwrap();
            for dtype in [GgmlDType::Q6K, GgmlDType::F16] {
                let t = QTensor::quantize(&x, dtype).unwrap();
                let whole = t.dequantize(&Device::Cpu).unwrap();
                assert_eq!(by_rows(&t, q8).unwrap(), q8(&whole).unwrap(), "{rows} rows");
                let narrowed = super::super::bf16_linear::to_bf16_bits(&whole).unwrap();
                assert_eq!(&*bf16_bits(&t).unwrap(), &narrowed[..], "{rows} rows");
            }
        }
    }
}
