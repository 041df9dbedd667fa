//! Model configuration read from a Hugging Face `config.json`.
//!
//! `model_type` picks the family; each family gets a validated config of its own. Field names follow
//! transformers' `LlamaConfig`, `Qwen2Config`, `Starcoder2Config` and `GPTBigCodeConfig`, so a directory
//! written by transformers loads here unchanged and the directories we write load in transformers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FimOrder;

/// The `config.json` key where a model records the FIM prompt order it completes best in.
pub const FIM_ORDER_FIELD: &str = "infill_fim_order";

/// The model families infill can run, named by their `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen2 / Qwen2.5(-Coder): our own decoder, q/k/v bias.
    Qwen2,
    /// Llama, CodeLlama, DeepSeek-Coder: our own decoder.
    Llama,
    /// StarCoder2, through candle-transformers (inference only).
    Starcoder2,
    /// GPT-BigCode (SantaCoder, StarCoderBase, tiny_starcoder), through candle-transformers.
    GptBigCode,
}

/// Every `model_type` we accept, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str = "qwen2, llama, starcoder2, gpt_bigcode";

impl Family {
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen2" => Some(Self::Qwen2),
            "llama" => Some(Self::Llama),
            "starcoder2" => Some(Self::Starcoder2),
            "gpt_bigcode" => Some(Self::GptBigCode),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
            Self::Starcoder2 => "starcoder2",
            Self::GptBigCode => "gpt_bigcode",
        }
    }
}

/// Why a `config.json` could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("is not valid JSON: {0}")]
    Json(String),
    #[error("has no \"model_type\"; add the family's model_type ({SUPPORTED_MODEL_TYPES})")]
    MissingModelType,
    #[error(
        "has model_type \"{0}\", which infill does not support (supported: {SUPPORTED_MODEL_TYPES})"
    )]
    UnsupportedModelType(String),
    #[error("lacks the field \"{0}\"")]
    MissingField(&'static str),
    #[error("has an invalid \"{field}\": {why}")]
    Invalid { field: &'static str, why: String },
}

/// The decoder configuration shared by the Llama and Qwen2 families.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Linear RoPE scaling: positions are divided by this before rotating (1: none). DeepSeek-Coder
    /// uses 4 to stretch a 4k-trained model to 16k.
    pub rope_scaling_factor: f64,
    /// Bias on the q, k and v projections (always on for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias` only).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// What the config says; the loader trusts the checkpoint (a present `lm_head.weight` wins).
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// The prompt order the model completes best in (`infill_fim_order`), when known. infill's own
    /// models train on both orders and record the one that measured better; for the others the
    /// order is that of the family's published FIM format.
    pub fim_order: Option<FimOrder>,
}

/// GPT-BigCode's configuration (transformers' `GPTBigCodeConfig` field names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BigCodeConfig {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub layer_norm_epsilon: f64,
    pub multi_query: bool,
}

/// The `config.json` of any supported family.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    Llama(LlamaConfig),
    Starcoder2 {
        raw: Value,
        max_position_embeddings: usize,
        vocab_size: usize,
    },
    GptBigCode(BigCodeConfig),
}

impl ModelConfig {
    /// Parses the text of a `config.json`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or(ConfigError::MissingModelType)?;
        let family = Family::from_model_type(model_type)
            .ok_or_else(|| ConfigError::UnsupportedModelType(model_type.to_string()))?;
        let fields = Fields(&raw);
        match family {
            Family::Qwen2 | Family::Llama => {
                LlamaConfig::from_fields(family, &fields).map(Self::Llama)
            }
            Family::Starcoder2 => {
                // candle-transformers deserialises the rest itself; check what we rely on here.
                let max_position_embeddings = fields.usize("max_position_embeddings")?;
                let vocab_size = fields.usize("vocab_size")?;
                for field in ["hidden_size", "num_hidden_layers", "num_attention_heads"] {
                    fields.usize(field)?;
                }
                // candle-transformers reads the transformers 4 layout: lift rope_theta to the top.
                let mut raw = raw.clone();
                let theta = fields.rope_theta()?.unwrap_or(10_000.0);
                if let Some(obj) = raw.as_object_mut() {
                    obj.insert("rope_theta".into(), theta.into());
                }
                Ok(Self::Starcoder2 {
                    raw,
                    max_position_embeddings,
                    vocab_size,
                })
            }
            Family::GptBigCode => {
                let n_embd = fields.usize_any(&["n_embd", "hidden_size"], "n_embd")?;
                let n_head = fields.usize_any(&["n_head", "num_attention_heads"], "n_head")?;
                if n_head == 0 || n_embd % n_head != 0 {
                    return Err(ConfigError::Invalid {
                        field: "n_head",
                        why: format!("n_embd {n_embd} is not a multiple of n_head {n_head}"),
                    });
                }
                Ok(Self::GptBigCode(BigCodeConfig {
                    vocab_size: fields.usize("vocab_size")?,
                    n_positions: fields
                        .usize_any(&["n_positions", "max_position_embeddings"], "n_positions")?,
                    n_layer: fields.usize_any(&["n_layer", "num_hidden_layers"], "n_layer")?,
                    n_embd,
                    n_head,
                    n_inner: fields.opt_usize("n_inner")?,
                    layer_norm_epsilon: fields.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
                    multi_query: fields.opt_bool("multi_query")?.unwrap_or(true),
                }))
            }
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Self::Llama(c) => c.family,
            Self::Starcoder2 { .. } => Family::Starcoder2,
            Self::GptBigCode(_) => Family::GptBigCode,
        }
    }

    /// The longest sequence the model can attend over.
    pub fn context_length(&self) -> usize {
        match self {
            Self::Llama(c) => c.max_position_embeddings,
            Self::Starcoder2 {
                max_position_embeddings,
                ..
            } => *max_position_embeddings,
            Self::GptBigCode(c) => c.n_positions,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(c) => c.vocab_size,
            Self::Starcoder2 { vocab_size, .. } => *vocab_size,
            Self::GptBigCode(c) => c.vocab_size,
        }
    }

    /// The prompt order the model completes best in: what its config records, else PSM, the order
    /// of every supported family's published FIM format.
    pub fn fim_order(&self) -> FimOrder {
        match self {
            Self::Llama(c) => c.fim_order.unwrap_or_default(),
            _ => FimOrder::Psm,
        }
    }
}

impl LlamaConfig {
    fn from_fields(family: Family, f: &Fields) -> Result<Self, ConfigError> {
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(ConfigError::Invalid {
                field: "num_attention_heads",
                why: format!(
                    "hidden_size {hidden_size} is not a multiple of {num_attention_heads}"
                ),
            });
        }
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ConfigError::Invalid {
                field: "num_key_value_heads",
                why: format!(
                    "{num_attention_heads} attention heads are not a multiple of {num_key_value_heads}"
                ),
            });
        }
        let head_dim = f
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        if head_dim % 2 != 0 {
            return Err(ConfigError::Invalid {
                field: "head_dim",
                why: format!("{head_dim} is odd; RoPE needs pairs"),
            });
        }
        if let Some(hidden_act) = f.0.get("hidden_act").and_then(Value::as_str)
            && hidden_act != "silu"
        {
            return Err(ConfigError::Invalid {
                field: "hidden_act",
                why: format!(
                    "\"{hidden_act}\" is not supported; the Llama/Qwen2 decoder uses \"silu\""
                ),
            });
        }
        let mut rope_scaling_factor = 1.0;
        for field in ["rope_scaling", "rope_parameters"] {
            let Some(scaling) = f.0.get(field).filter(|s| !s.is_null()) else {
                continue;
            };
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str);
            match kind {
                None | Some("default") => {}
                Some("linear") => {
                    rope_scaling_factor = scaling
                        .get("factor")
                        .and_then(Value::as_f64)
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .ok_or_else(|| ConfigError::Invalid {
                            field,
                            why: format!("{scaling} has no positive \"factor\""),
                        })?;
                }
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        field,
                        why: format!(
                            "{scaling} is not supported (only plain RoPE with rope_theta, or \"linear\" scaling)"
                        ),
                    });
                }
            }
        }
        let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            // transformers' Qwen2Attention: bias on q, k, v; none on o_proj.
            Family::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let cfg = Self {
            family,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: f.usize("max_position_embeddings")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: f.rope_theta()?.unwrap_or(10_000.0),
            rope_scaling_factor,
            qkv_bias,
            o_bias,
            mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: f.opt_token_id("bos_token_id")?,
            eos_token_id: f.opt_token_id("eos_token_id")?,
            fim_order: f.opt_fim_order(FIM_ORDER_FIELD)?,
        };
        Ok(cfg)
    }

    /// The `config.json` that transformers reads back as this model.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::json!({
            "model_type": self.family.model_type(),
            "architectures": [match self.family { Family::Qwen2 => "Qwen2ForCausalLM", _ => "LlamaForCausalLM" }],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        });
        if self.family == Family::Llama {
            v["attention_bias"] = Value::Bool(self.qkv_bias);
            v["mlp_bias"] = Value::Bool(self.mlp_bias);
        }
        if self.rope_scaling_factor != 1.0 {
            v["rope_scaling"] =
                serde_json::json!({"type": "linear", "factor": self.rope_scaling_factor});
        }
        if let Some(id) = self.bos_token_id {
            v["bos_token_id"] = id.into();
        }
        if let Some(id) = self.eos_token_id {
            v["eos_token_id"] = id.into();
        }
        if let Some(order) = self.fim_order {
            v[FIM_ORDER_FIELD] = Value::from(order.name());
        }
        v
    }
}

/// Typed access to the fields of a raw config, with errors that name the field.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn opt_usize(&self, field: &'static str) -> Result<Option<usize>, ConfigError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| ConfigError::Invalid {
                    field,
                    why: format!("{v} is not a non-negative integer"),
                }),
        }
    }

    fn usize(&self, field: &'static str) -> Result<usize, ConfigError> {
        let n = self
            .opt_usize(field)?
            .ok_or(ConfigError::MissingField(field))?;
        if n == 0 {
            return Err(ConfigError::Invalid {
                field,
                why: "must be positive".into(),
            });
        }
        Ok(n)
    }

    fn usize_any(
        &self,
        names: &[&'static str],
        canonical: &'static str,
    ) -> Result<usize, ConfigError> {
        for name in names {
            if self.opt_usize(name)?.is_some() {
                return self.usize(name);
            }
        }
        Err(ConfigError::MissingField(canonical))
    }

    fn opt_f64(&self, field: &'static str) -> Result<Option<f64>, ConfigError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(ConfigError::Invalid {
                    field,
                    why: format!("{v} is not a positive number"),
                }),
            },
        }
    }

    /// `rope_theta` at the top level (transformers 4) or in `rope_parameters` (transformers 5).
    fn rope_theta(&self) -> Result<Option<f64>, ConfigError> {
        if let Some(theta) = self.opt_f64("rope_theta")? {
            return Ok(Some(theta));
        }
        match self
            .0
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
        {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(ConfigError::Invalid {
                    field: "rope_parameters",
                    why: format!("rope_theta {v} is not a positive number"),
                }),
            },
        }
    }

    fn opt_fim_order(&self, field: &'static str) -> Result<Option<FimOrder>, ConfigError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_str() {
                Some("psm") => Ok(Some(FimOrder::Psm)),
                Some("spm") => Ok(Some(FimOrder::Spm)),
                _ => Err(ConfigError::Invalid {
                    field,
                    why: format!("{v} is not \"psm\" or \"spm\""),
                }),
            },
        }
    }

    fn opt_bool(&self, field: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| ConfigError::Invalid {
                field,
                why: format!("{v} is not true or false"),
            }),
        }
    }

    /// Token ids may be a number or a list of numbers (the first is kept).
    fn opt_token_id(&self, field: &'static str) -> Result<Option<u32>, ConfigError> {
        let v = match self.0.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => match items.first() {
                Some(first) => first,
                None => return Ok(None),
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid {
                field,
                why: format!("{v} is not a token id"),
            })
    }
}

/// Serialisable summary of a config, for `--json` output and `infill models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSummary {
    pub family: String,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl From<&ModelConfig> for ModelSummary {
    fn from(c: &ModelConfig) -> Self {
        Self {
            family: c.family().model_type().into(),
            context_length: c.context_length(),
            vocab_size: c.vocab_size(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The Llama-family configuration `text` parses to.
    fn llama(text: &str) -> LlamaConfig {
        match ModelConfig::parse(text).unwrap() {
            ModelConfig::Llama(c) => c,
            _ => panic!("not llama-like"),
        }
    }

    const QWEN: &str = r#"{"model_type":"qwen2","vocab_size":100,"hidden_size":32,"intermediate_size":64,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":128,
        "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true,"eos_token_id":[7, 8]}"#;

    #[test]
    fn qwen2_config_has_qkv_bias_and_derived_head_dim() {
        let c = llama(QWEN);
        assert_eq!(
            (c.qkv_bias, c.o_bias, c.head_dim, c.num_key_value_heads),
            (true, false, 8, 2)
        );
        assert_eq!(c.eos_token_id, Some(7));
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn config_round_trips_through_hf_json() {
        let c = llama(QWEN);
        let back = llama(&c.to_hf_json().to_string());
        assert_eq!(c, back);
    }

    #[test]
    fn rope_theta_is_read_from_transformers_5_rope_parameters() {
        let v5 = QWEN.replace(
            "\"rope_theta\":1000000.0",
            "\"rope_parameters\":{\"rope_theta\":5e5,\"rope_type\":\"default\"}",
        );
        let c = llama(&v5);
        assert_eq!(c.rope_theta, 5e5);
        let yarn = QWEN.replace(
            "\"rope_theta\":1000000.0",
            "\"rope_parameters\":{\"rope_theta\":5e5,\"rope_type\":\"yarn\"}",
        );
        assert!(matches!(
            ModelConfig::parse(&yarn),
            Err(ConfigError::Invalid {
                field: "rope_parameters",
                ..
            })
        ));
        // DeepSeek-Coder's linear scaling (transformers 4 layout), and back through to_hf_json.
        let linear = QWEN.replace(
            "\"rope_theta\":1000000.0",
            "\"rope_theta\":1e5,\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}",
        );
        let c = llama(&linear);
        assert_eq!(c.rope_scaling_factor, 4.0);
        let back = llama(&c.to_hf_json().to_string());
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_model_type_names_the_supported_ones() {
        let err = ModelConfig::parse(r#"{"model_type":"mamba"}"#).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("mamba") && msg.contains("qwen2") && msg.contains("gpt_bigcode"),
            "{msg}"
        );
    }

    #[test]
    fn inconsistent_heads_are_rejected_with_the_field_name() {
        let bad = QWEN.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3");
        let err = ModelConfig::parse(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "num_key_value_heads",
                    ..
                }
            ),
            "{err}"
        );
        let missing = QWEN.replace("\"vocab_size\":100,", "");
        assert_eq!(
            ModelConfig::parse(&missing).unwrap_err(),
            ConfigError::MissingField("vocab_size")
        );
    }
}
