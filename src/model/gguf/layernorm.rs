//! The LayerNorm families from GGUF: StarCoder2 (`starcoder2`) and GPT-BigCode (`starcoder`, as
//! llama.cpp names it), in the layout llama.cpp's converter writes (no Q/K permutation; GPT-BigCode's
//! fused `attn_qkv` and learned `position_embd`). They run on candle-transformers' models, which
//! compute in f32: every weight is dequantized to f32 as it is read, so a quantized file takes
//! f32's memory (four bytes a weight), unlike the `qwen2` and `llama` architectures, whose
//! matrices stay quantized.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::json;

use super::GgufFile;
use crate::model::config::ModelConfig;
use crate::model::load::{LoadError, LoadOptions};
use crate::model::{Model, Network};

/// Whether `arch` is one of the families this module loads.
pub(super) fn handles(arch: &str) -> bool {
    matches!(arch, "starcoder2" | "starcoder")
}

/// llama.cpp's tensor names within a block, with the transformers names (after the block's
/// prefix) they stand for, per architecture.
fn block_names(arch: &str) -> &'static [(&'static str, &'static str)] {
    match arch {
        "starcoder2" => &[
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_up", "mlp.c_fc"),
            ("ffn_down", "mlp.c_proj"),
        ],
        _ => &[
            ("attn_norm", "ln_1"),
            ("attn_qkv", "attn.c_attn"),
            ("attn_output", "attn.c_proj"),
            ("ffn_norm", "ln_2"),
            ("ffn_up", "mlp.c_fc"),
            ("ffn_down", "mlp.c_proj"),
        ],
    }
}

/// The transformers name of a GGUF tensor of `arch`, `None` for one the model does not use.
fn hf_name(arch: &str, gguf: &str) -> Option<String> {
    let (stem, kind) = gguf.rsplit_once('.')?;
    let (root, block) = match arch {
        "starcoder2" => ("model", "model.layers"),
        _ => ("transformer", "transformer.h"),
    };
    let name = match stem {
        "token_embd" if arch == "starcoder2" => "model.embed_tokens".to_string(),
        "token_embd" => "transformer.wte".to_string(),
        "position_embd" if arch == "starcoder" => "transformer.wpe".to_string(),
        "output_norm" if arch == "starcoder2" => format!("{root}.norm"),
        "output_norm" => format!("{root}.ln_f"),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = block_names(arch)
                .iter()
                .find(|(g, _)| *g == part)
                .map(|(_, h)| *h)?;
            format!("{block}.{layer}.{hf}")
        }
    };
    Some(format!("{name}.{kind}"))
}

/// The `config.json` transformers would have for the file, from its `<arch>.*` metadata.
fn config(file: &GgufFile, arch: &str, vocab_size: usize) -> Result<serde_json::Value, LoadError> {
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.usize(&key("embedding_length"))?;
    let heads = file.usize(&key("attention.head_count"))?;
    let kv_heads = file
        .opt_usize(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
        return Err(file.err(format!(
            "{heads} attention heads do not divide the width {hidden} or group into {kv_heads} \
             key/value heads"
        )));
    }
    let eps = file
        .opt_f64(&key("attention.layer_norm_epsilon"))?
        .unwrap_or(1e-5);
    let layers = file.usize(&key("block_count"))?;
    let context = file.usize(&key("context_length"))?;
    let inner = file.usize(&key("feed_forward_length"))?;
    let tied = !file.has("output.weight");
    Ok(match arch {
        "starcoder2" => json!({
            "model_type": "starcoder2",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": inner,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "hidden_act": "gelu_pytorch_tanh",
            "max_position_embeddings": context,
            "norm_epsilon": eps,
            "rope_theta": file.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            "use_bias": file.has("blk.0.attn_q.bias"),
            "sliding_window": null,
            "tie_word_embeddings": tied,
        }),
        _ => {
            if kv_heads != 1 && kv_heads != heads {
                return Err(file.err(format!(
                    "{kv_heads} key/value heads: GPT-BigCode has one (multi-query) or one per head"
                )));
            }
            json!({
                "model_type": "gpt_bigcode",
                "vocab_size": vocab_size,
                "n_embd": hidden,
                "n_inner": inner,
                "n_layer": layers,
                "n_head": heads,
                "n_positions": context,
                "layer_norm_epsilon": eps,
                "multi_query": kv_heads == 1,
                "tie_word_embeddings": tied,
            })
        }
    })
}

/// Loads a StarCoder2 or GPT-BigCode GGUF file.
pub(super) fn load(
    mut file: GgufFile,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Model, LoadError> {
    let arch = file.architecture()?.to_string();
    if matches!(opts.dtype, Some(d) if d != DType::F32) {
        return Err(file.err(
            "StarCoder2 and GPT-BigCode run in f32: their GGUF weights are widened to f32 as they \
             are read (leave --dtype out)",
        ));
    }
    let embed_rows = file
        .shape("token_embd.weight")
        .and_then(|s| s.first().copied())
        .ok_or_else(|| file.err("no tensor \"token_embd.weight\"; is the file complete?"))?;
    let vocab_size = file
        .opt_usize(&format!("{arch}.vocab_size"))?
        .unwrap_or(embed_rows);
    let config_json = config(&file, &arch, vocab_size)?;
    let config = ModelConfig::parse(&config_json.to_string())
        .map_err(|e| file.err(format!("its metadata makes no valid configuration: {e}")))?;
    let tokenizer = file.tokenizer(vocab_size)?;
    let names: Vec<String> = file.content.tensor_infos.keys().cloned().collect();
    let mut tensors = HashMap::new();
    for name in names {
        let Some(hf) = hf_name(&arch, &name) else {
            return Err(file.err(format!(
                "tensor \"{name}\" is not one a {arch} model has; was the file made by llama.cpp's converter?"
            )));
        };
        let t = file.tensor(&name)?;
        let values: Tensor = t
            .dequantize(&Device::Cpu)
            .and_then(|v| v.to_dtype(DType::F32))
            .and_then(|v| v.to_device(&opts.device))
            .map_err(|e| file.err(format!("tensor \"{name}\": {e}")))?;
        tensors.insert(hf, values);
    }
    // A tied head reads the embedding, as transformers' checkpoints of these families do.
    if !tensors.contains_key("lm_head.weight") {
        let embed = if arch == "starcoder2" {
            "model.embed_tokens.weight"
        } else {
            "transformer.wte.weight"
        };
        if let Some(t) = tensors.get(embed).cloned() {
            tensors.insert("lm_head.weight".to_string(), t);
        }
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &opts.device);
    let network = match &config {
        ModelConfig::Starcoder2 {
            raw,
            max_position_embeddings,
            ..
        } => {
            let c: candle_transformers::models::starcoder2::Config =
                serde_json::from_value(raw.clone())
                    .map_err(|e| file.err(format!("configuration: {e}")))?;
            Network::starcoder2(&c, vb, *max_position_embeddings)
        }
        ModelConfig::GptBigCode(c) => Network::bigcode(*c, vb),
        ModelConfig::Llama(_) => return Err(file.err("not a LayerNorm family")),
    }
    .map_err(|e| file.err(e.to_string()))?;
    Ok(Model {
        name: path.display().to_string(),
        network,
        tokenizer,
        config,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_the_transformers_names_of_each_family() {
        for (arch, gguf, hf) in [
            (
                "starcoder2",
                "token_embd.weight",
                "model.embed_tokens.weight",
            ),
            (
                "starcoder2",
                "blk.3.ffn_up.bias",
                "model.layers.3.mlp.c_fc.bias",
            ),
            ("starcoder2", "output_norm.bias", "model.norm.bias"),
            (
                "starcoder",
                "position_embd.weight",
                "transformer.wpe.weight",
            ),
            (
                "starcoder",
                "blk.0.attn_qkv.weight",
                "transformer.h.0.attn.c_attn.weight",
            ),
            (
                "starcoder",
                "blk.11.ffn_norm.weight",
                "transformer.h.11.ln_2.weight",
            ),
            ("starcoder", "output_norm.weight", "transformer.ln_f.weight"),
            ("starcoder", "output.weight", "lm_head.weight"),
        ] {
            assert_eq!(hf_name(arch, gguf).as_deref(), Some(hf), "{arch} {gguf}");
        }
        assert_eq!(hf_name("starcoder2", "blk.0.ffn_gate.weight"), None);
        assert_eq!(hf_name("starcoder2", "position_embd.weight"), None);
    }
}
