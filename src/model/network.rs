//! One interface over every family's network, with a KV cache keyed by tokens.
//!
//! [`Network::logits_after`] is the only way generation reaches a model: it keeps the tokens whose
//! keys and values are cached, reuses the longest shared token prefix with the new request, and
//! computes only what is new. Our own decoder truncates its cache to any length; StarCoder2 can only
//! clear it, and candle-transformers' GPT-BigCode cannot even do that, so it is rebuilt from the
//! (memory-mapped) weights when a request diverges from the cached tokens.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bigcode, starcoder2};

use super::config::BigCodeConfig;
use super::llama::{KvCache, Llama};

enum Inner {
    Llama {
        model: Box<Llama>,
        cache: KvCache,
    },
    Starcoder2(Box<starcoder2::Model>),
    BigCode {
        model: Box<bigcode::GPTBigCode>,
        vb: VarBuilder<'static>,
        config: BigCodeConfig,
    },
}

/// candle's `bigcode::Config` is neither `Clone` nor `Deserialize`: rebuild it from ours.
fn build_bigcode(
    c: BigCodeConfig,
    vb: VarBuilder<'static>,
) -> candle_core::Result<bigcode::GPTBigCode> {
    let cfg = bigcode::Config {
        vocab_size: c.vocab_size,
        max_position_embeddings: c.n_positions,
        num_hidden_layers: c.n_layer,
        hidden_size: c.n_embd,
        layer_norm_epsilon: c.layer_norm_epsilon,
        n_inner: c.n_inner,
        num_attention_heads: c.n_head,
        multi_query: c.multi_query,
        use_cache: true,
    };
    bigcode::GPTBigCode::load(vb, cfg)
}

/// A causal language model and the tokens its cache holds.
pub struct Network {
    inner: Inner,
    cached: Vec<u32>,
    context_length: usize,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("cached", &self.cached.len())
            .field("context", &self.context_length)
            .finish()
    }
}

/// How much of a request was served from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefill {
    pub reused: usize,
    pub computed: usize,
}

impl Network {
    pub fn llama(model: Llama) -> Self {
        let cache = model.new_cache();
        let context_length = model.config().max_position_embeddings;
        let device = model.device().clone();
        Self {
            inner: Inner::Llama {
                model: Box::new(model),
                cache,
            },
            cached: Vec::new(),
            context_length,
            device,
            dtype: DType::F32,
        }
    }

    pub fn starcoder2(
        config: &starcoder2::Config,
        vb: VarBuilder<'static>,
        context_length: usize,
    ) -> candle_core::Result<Self> {
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let model = starcoder2::Model::new(config, vb)?;
        Ok(Self {
            inner: Inner::Starcoder2(Box::new(model)),
            cached: Vec::new(),
            context_length,
            device,
            dtype,
        })
    }

    pub(crate) fn bigcode(
        config: BigCodeConfig,
        vb: VarBuilder<'static>,
    ) -> candle_core::Result<Self> {
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let model = Box::new(build_bigcode(config, vb.clone())?);
        let context_length = config.n_positions;
        Ok(Self {
            inner: Inner::BigCode { model, vb, config },
            cached: Vec::new(),
            context_length,
            device,
            dtype,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Our own decoder, when this network is one (scoring and training need all-position logits).
    pub fn as_llama(&self) -> Option<&Llama> {
        match &self.inner {
            Inner::Llama { model, .. } => Some(model.as_ref()),
            _ => None,
        }
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) -> candle_core::Result<()> {
        self.truncate(0)
    }

    fn truncate(&mut self, keep: usize) -> candle_core::Result<()> {
        if keep >= self.cached.len() {
            return Ok(());
        }
        match &mut self.inner {
            Inner::Llama { cache, .. } => {
                cache.truncate(keep)?;
                self.cached.truncate(keep);
            }
            // These caches cannot be cut; start over and recompute the shared part.
            Inner::Starcoder2(model) => {
                model.clear_kv_cache();
                self.cached.clear();
            }
            Inner::BigCode { model, vb, config } => {
                **model = build_bigcode(*config, vb.clone())?;
                self.cached.clear();
            }
        }
        Ok(())
    }

    fn run(&mut self, new: &[u32], start: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(new, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.inner {
            Inner::Llama { model, cache } => model.forward_last(&input, start, Some(cache))?,
            Inner::Starcoder2(model) => model.forward(&input, start)?.squeeze(1)?,
            Inner::BigCode { model, .. } => model.forward(&input, start)?,
        };
        logits.squeeze(0)?.to_dtype(DType::F32)
    }

    /// Empties every cache whatever `cached` says.
    fn truncate_all(&mut self) -> candle_core::Result<()> {
        match &mut self.inner {
            Inner::Llama { cache, .. } => cache.clear(),
            Inner::Starcoder2(model) => model.clear_kv_cache(),
            Inner::BigCode { model, vb, config } => **model = build_bigcode(*config, vb.clone())?,
        }
        Ok(())
    }

    /// Next-token logits (f32, one row of the vocabulary) after `tokens`, computing only the tokens
    /// not already in the cache.
    pub fn logits_after(&mut self, tokens: &[u32]) -> candle_core::Result<(Tensor, Prefill)> {
        if tokens.is_empty() {
            candle_core::bail!("cannot predict after an empty sequence");
        }
        if tokens.len() > self.context_length {
            candle_core::bail!(
                "{} tokens exceed the model's context of {}",
                tokens.len(),
                self.context_length
            );
        }
        let shared = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token must run to produce logits.
        let keep = shared.min(tokens.len() - 1);
        self.truncate(keep)?;
        let start = self.cached.len();
        let new = tokens.get(start..).unwrap_or_default();
        let logits = match self.run(new, start) {
            Ok(logits) => logits,
            Err(e) => {
                // A failed forward may have appended to some layers' caches only: start over.
                self.cached.clear();
                let _ = self.truncate_all();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(new);
        Ok((
            logits,
            Prefill {
                reused: start,
                computed: new.len(),
            },
        ))
    }
}
