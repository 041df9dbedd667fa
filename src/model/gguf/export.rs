//! Writing a model as a GGUF file that llama.cpp, ollama and LM Studio load: the layout of
//! llama.cpp's `convert_hf_to_gguf.py` (tensor names, metadata keys and types, Q/K rows of `llama`
//! models in GGML's interleaved RoPE order, 1-D tensors in F32), quantized by candle's
//! implementation of GGML's block formats.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::vocab::{Vocabulary, from_tokenizer_json};
use crate::model::config::{Family, LlamaConfig};
use crate::model::tokenizer::FimTemplate;

/// The weight type of an exported file; K types mix as llama.cpp's `_M` files do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    /// Q4_K_M: Q4_K, with the embeddings, the head and some layers' `attn_v` / `ffn_down` in Q6_K.
    Q4K,
    /// Q5_K_M: as Q4_K_M with Q5_K.
    Q5K,
    Q6K,
}

impl WeightType {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Bf16 => GgmlDType::BF16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// llama.cpp's `llama_ftype` for `general.file_type`.
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4K => 15,
            Self::Q5K => 17,
            Self::Q6K => 18,
            Self::Bf16 => 32,
        }
    }
}

/// The type one tensor is stored in: 1-D tensors in F32; the embeddings, the head and (as
/// llama.cpp's `use_more_bits`) the first and last eighth and every third other layer's `attn_v`
/// and `ffn_down` in Q6_K for the mixed K types; where K blocks do not divide the rows, Q4_K falls
/// back to Q5_0, Q5_K to Q5_1 and Q6_K to Q8_0 (as llama.cpp's quantizer does), and any type to
/// F16 where its blocks do not fit either.
fn tensor_type(name: &str, shape: &[usize], want: WeightType, layers: usize) -> GgmlDType {
    if shape.len() < 2 || want == WeightType::F32 {
        return GgmlDType::F32;
    }
    let mut ty = want.ggml();
    if matches!(want, WeightType::Q4K | WeightType::Q5K) {
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let more_bits =
            |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
        let sensitive = name.contains("attn_v") || name.contains("ffn_down");
        if name == "token_embd.weight"
            || name == "output.weight"
            || (sensitive && layer.is_some_and(more_bits))
        {
            ty = GgmlDType::Q6K;
        }
    }
    let cols = shape[shape.len() - 1];
    if !cols.is_multiple_of(ty.block_size()) {
        // llama.cpp's fallbacks for rows that K blocks (256 values) do not divide, as in
        // Qwen2.5-Coder-0.5B's 896.
        ty = match ty {
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            _ => GgmlDType::Q8_0,
        };
    }
    if !cols.is_multiple_of(ty.block_size()) {
        ty = GgmlDType::F16;
    }
    ty
}

/// The converter's Q/K permutation: transformers' row `j * head_dim / 2 + i` of each head becomes
/// GGUF row `2i + j`.
fn permute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let rows = t.dim(0)?;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut index = Vec::with_capacity(rows);
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                index.push((h * head_dim + j * half + i) as u32);
            }
        }
    }
    let index = Tensor::new(index, t.device())?;
    t.index_select(&index, 0)
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub tensors: usize,
    pub bytes: u64,
    /// How many tensors each type holds, by GGML's name.
    pub types: Vec<(String, usize)>,
}

/// Writes `weights` (by transformers name, any float dtype) as a GGUF file at `out`, atomically.
pub fn write(
    config: &LlamaConfig,
    tokenizer_json: &serde_json::Value,
    fim: &FimTemplate,
    weights: &HashMap<String, Tensor>,
    want: WeightType,
    name: &str,
    out: &Path,
) -> anyhow::Result<Exported> {
    let arch = match config.family {
        Family::Qwen2 => "qwen2",
        Family::Llama => "llama",
        other => anyhow::bail!(
            "{} models cannot be written as GGUF yet",
            other.model_type()
        ),
    };
    let vocab = from_tokenizer_json(tokenizer_json, config.vocab_size)
        .map_err(|why| anyhow::anyhow!("the tokenizer cannot be written as GGUF: {why}"))?;
    let order: Vec<(String, String)> = super::tensor_names(config.num_hidden_layers)
        .into_iter()
        .filter(|(_, hf)| super::required(hf) || weights.contains_key(hf))
        .collect();
    let mut tensors = Vec::with_capacity(order.len());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (gguf, hf) in &order {
        let mut t = weights
            .get(hf)
            .ok_or_else(|| anyhow::anyhow!("the weights have no tensor \"{hf}\""))?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?;
        if arch == "llama" && hf.contains(".q_proj.") {
            t = permute_rows(&t, config.num_attention_heads)?;
        } else if arch == "llama" && hf.contains(".k_proj.") {
            t = permute_rows(&t, config.num_key_value_heads)?;
        }
        let ty = tensor_type(gguf, t.dims(), want, config.num_hidden_layers);
        *counts.entry(format!("{ty:?}")).or_default() += 1;
        tensors.push((gguf.clone(), QTensor::quantize(&t, ty)?));
    }
    let metadata = metadata(config, arch, &vocab, fim, want, name);
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let tmp = out.with_extension("gguf.tmp");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        gguf_file::write(&mut file, &metadata, &refs)?;
        use std::io::Write;
        file.flush()?;
        file.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    let mut types: Vec<(String, usize)> = counts.into_iter().collect();
    types.sort();
    Ok(Exported {
        tensors: tensors.len(),
        bytes: std::fs::metadata(out)?.len(),
        types,
    })
}

fn metadata(
    c: &LlamaConfig,
    arch: &str,
    vocab: &Vocabulary,
    fim: &FimTemplate,
    want: WeightType,
    name: &str,
) -> Vec<(String, Value)> {
    let u32v = |v: usize| Value::U32(v as u32);
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(want.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (key("context_length"), u32v(c.max_position_embeddings)),
        (key("embedding_length"), u32v(c.hidden_size)),
        (key("block_count"), u32v(c.num_hidden_layers)),
        (key("feed_forward_length"), u32v(c.intermediate_size)),
        (key("attention.head_count"), u32v(c.num_attention_heads)),
        (key("attention.head_count_kv"), u32v(c.num_key_value_heads)),
        (key("attention.key_length"), u32v(c.head_dim)),
        (key("attention.value_length"), u32v(c.head_dim)),
        (key("rope.dimension_count"), u32v(c.head_dim)),
        (key("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (key("vocab_size"), u32v(c.vocab_size)),
        (
            "tokenizer.ggml.model".into(),
            Value::String(vocab.model.into()),
        ),
        ("tokenizer.ggml.tokens".into(), strings(&vocab.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(vocab.bos.is_some()),
        ),
        (
            "tokenizer.ggml.fim_pre_token_id".into(),
            Value::U32(fim.prefix),
        ),
        (
            "tokenizer.ggml.fim_suf_token_id".into(),
            Value::U32(fim.suffix),
        ),
        (
            "tokenizer.ggml.fim_mid_token_id".into(),
            Value::U32(fim.middle),
        ),
    ];
    match vocab.pre {
        Some(pre) => {
            m.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
            m.push(("tokenizer.ggml.merges".into(), strings(&vocab.merges)));
        }
        None => {
            m.push(("tokenizer.ggml.pre".into(), Value::String("default".into())));
            m.push((
                "tokenizer.ggml.scores".into(),
                Value::Array(vocab.scores.iter().map(|&s| Value::F32(s)).collect()),
            ));
            m.push((
                "tokenizer.ggml.add_space_prefix".into(),
                Value::Bool(vocab.add_space_prefix),
            ));
        }
    }
    if c.rope_scaling_factor != 1.0 {
        m.push((key("rope.scaling.type"), Value::String("linear".into())));
        m.push((
            key("rope.scaling.factor"),
            Value::F32(c.rope_scaling_factor as f32),
        ));
    }
    let bos = vocab.bos.or(c.bos_token_id);
    if let Some(id) = bos {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(id)));
    }
    if let Some(id) = c.eos_token_id.or(fim.eos) {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(id)));
    }
    if let Some(id) = fim.file_sep {
        m.push(("tokenizer.ggml.fim_sep_token_id".into(), Value::U32(id)));
    }
    if let Some(order) = c.fim_order {
        m.push((
            super::FIM_ORDER_KEY.into(),
            Value::String(order.name().into()),
        ));
    }
    m
}
