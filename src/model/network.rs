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

/// Tokens between the shared prefix and a reusable segment: what one burst of typing changes.
const SHIFT_MAX_TAIL: usize = 64;
/// Segments shorter than this are recomputed rather than reused out of place.
const SHIFT_MIN_SEGMENT: usize = 16;
/// Reuses out of place before the cache is recomputed exactly, whatever the pauses.
const SHIFT_MAX_REUSES: usize = 32;

/// Cached tokens `from..from + len` serve the request's `at..at + len`, keys rotated by `at - from`.
#[derive(Debug, Clone, Copy)]
struct Reuse {
    at: usize,
    from: usize,
    len: usize,
}

/// A causal language model and the tokens its cache holds.
pub struct Network {
    inner: Inner,
    cached: Vec<u32>,
    /// How many leading cached tokens were computed exactly: after them come keys and values
    /// reused out of place (see [`Network::logits_after`]) and what followed them.
    exact: usize,
    /// Reuses out of place since the cache was last exact.
    shifted: usize,
    /// Whether a request may reuse keys and values out of place.
    shift_reuse: bool,
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
    /// Tokens not computed: the shared prefix, and a segment reused out of place.
    pub reused: usize,
    pub computed: usize,
    /// Of `reused`, the tokens reused out of place (0: the request is computed exactly).
    pub shifted: usize,
}

impl Network {
    /// An empty cache over `inner`.
    fn with(inner: Inner, context_length: usize, device: Device, dtype: DType) -> Self {
        Self {
            inner,
            cached: Vec::new(),
            exact: 0,
            shifted: 0,
            shift_reuse: true,
            context_length,
            device,
            dtype,
        }
    }

    pub fn llama(model: Llama) -> Self {
        let cache = model.new_cache();
        let context_length = model.config().max_position_embeddings;
        let device = model.device().clone();
        Self::with(
            Inner::Llama {
                model: Box::new(model),
                cache,
            },
            context_length,
            device,
            DType::F32,
        )
    }

    pub fn starcoder2(
        config: &starcoder2::Config,
        vb: VarBuilder<'static>,
        context_length: usize,
    ) -> candle_core::Result<Self> {
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let model = starcoder2::Model::new(config, vb)?;
        Ok(Self::with(
            Inner::Starcoder2(Box::new(model)),
            context_length,
            device,
            dtype,
        ))
    }

    pub(crate) fn bigcode(
        config: BigCodeConfig,
        vb: VarBuilder<'static>,
    ) -> candle_core::Result<Self> {
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let model = Box::new(build_bigcode(config, vb.clone())?);
        let context_length = config.n_positions;
        Ok(Self::with(
            Inner::BigCode { model, vb, config },
            context_length,
            device,
            dtype,
        ))
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

    /// Applies a LoRA adapter's updates at run time (see [`Llama::set_lora`]). The cache,
    /// computed without them, is forgotten.
    pub fn set_lora<'a>(
        &mut self,
        updates: impl IntoIterator<Item = (&'a str, &'a Tensor, &'a Tensor)>,
        scale: f64,
    ) -> candle_core::Result<()> {
        let Inner::Llama { model, .. } = &mut self.inner else {
            candle_core::bail!(
                "adapters apply at run time to qwen2 and llama models only (merge it with `infill models import`)"
            )
        };
        model.set_lora(updates, scale)?;
        self.reset()
    }

    /// Back to the base model alone, and an empty cache.
    pub fn clear_lora(&mut self) -> candle_core::Result<()> {
        if let Inner::Llama { model, .. } = &mut self.inner {
            model.clear_lora();
        }
        self.reset()
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) -> candle_core::Result<()> {
        self.truncate(0)
    }

    /// Allows or forbids reusing keys and values out of place (on by default; off, every request
    /// is computed exactly, as transformers would).
    pub fn set_shift_reuse(&mut self, on: bool) {
        self.shift_reuse = on;
    }

    /// Whether part of the cache was reused out of place and could be recomputed exactly.
    pub fn needs_refresh(&self) -> bool {
        self.exact < self.cached.len()
    }

    /// Recomputes up to `chunk` of the cached tokens that follow the exact part, exactly,
    /// keeping the rest as it was: a cache that is usable between any two steps, so an idle
    /// worker can refresh it a step at a time and still answer the next keystroke at once.
    pub fn refresh_step(&mut self, chunk: usize) -> candle_core::Result<()> {
        let Inner::Llama { model, cache } = &mut self.inner else {
            self.exact = self.cached.len();
            return Ok(());
        };
        let (start, len) = (self.exact, self.cached.len());
        let end = (start + chunk.max(1)).min(len);
        if start >= end {
            return Ok(());
        }
        let mut step = || -> candle_core::Result<()> {
            let rest = cache.segment(end..len)?;
            cache.truncate(start)?;
            let ids = Tensor::new(&self.cached[start..end], &self.device)?.unsqueeze(0)?;
            model.forward_hidden(&ids, start, Some(cache))?;
            model.append_shifted(cache, &rest, 0)
        };
        if let Err(e) = step() {
            self.start_over();
            return Err(e);
        }
        self.exact = end;
        if self.exact == len {
            self.shifted = 0;
        }
        Ok(())
    }

    /// Where a request can reuse cached keys and values out of place: runs of its tokens (after
    /// the shared prefix, before its last token) that stand elsewhere in the cache, each found
    /// within [`SHIFT_MAX_TAIL`] tokens of where the previous one ended. A keystroke in a PSM
    /// prompt leaves the suffix there, a few positions off; a prompt window that moved by a line
    /// leaves most of the prefix there too. Empty: compute the request exactly.
    fn shift_plan(&self, tokens: &[u32], shared: usize) -> Vec<Reuse> {
        let mut plan = Vec::new();
        if !self.shift_reuse
            || self.shifted >= SHIFT_MAX_REUSES
            || !matches!(self.inner, Inner::Llama { .. })
        {
            return plan;
        }
        // The last token always runs, to give the logits.
        let Some(end) = tokens.len().checked_sub(1) else {
            return plan;
        };
        let mut p = shared;
        while p + SHIFT_MIN_SEGMENT <= end {
            let best = (p..=(p + SHIFT_MAX_TAIL).min(end - SHIFT_MIN_SEGMENT))
                .filter_map(|at| {
                    let (from, len) = self.longest_run(&tokens[at..end])?;
                    Some(Reuse { at, from, len })
                })
                .find(|r| r.len >= SHIFT_MIN_SEGMENT);
            let Some(r) = best else { break };
            p = r.at + r.len;
            plan.push(r);
        }
        plan
    }

    /// The longest run of the cached tokens that `want` starts with: (where, how long).
    fn longest_run(&self, want: &[u32]) -> Option<(usize, usize)> {
        let first = *want.first()?;
        self.cached
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == first)
            .map(|(i, _)| {
                let len = self.cached[i..]
                    .iter()
                    .zip(want)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, len)
            })
            .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)))
    }

    /// Serves `tokens` by `plan`: the shared prefix from the cache, each reused run put back with
    /// its keys rotated to its new positions, the tokens between and after them computed.
    fn splice(
        &mut self,
        tokens: &[u32],
        shared: usize,
        plan: &[Reuse],
    ) -> candle_core::Result<(Tensor, Prefill)> {
        let Inner::Llama { model, cache } = &mut self.inner else {
            candle_core::bail!("only our own decoder reuses keys out of place");
        };
        let segments = plan
            .iter()
            .map(|r| cache.segment(r.from..r.from + r.len))
            .collect::<candle_core::Result<Vec<_>>>()?;
        cache.truncate(shared)?;
        self.cached.truncate(shared);
        let mut p = shared;
        for (r, segment) in plan.iter().zip(&segments) {
            if r.at > p {
                let between = Tensor::new(&tokens[p..r.at], &self.device)?.unsqueeze(0)?;
                model.forward_hidden(&between, p, Some(cache))?;
            }
            model.append_shifted(cache, segment, r.at as i64 - r.from as i64)?;
            p = r.at + r.len;
        }
        let rest = Tensor::new(&tokens[p..], &self.device)?.unsqueeze(0)?;
        let logits = model
            .forward_last(&rest, p, Some(cache))?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        self.cached.extend_from_slice(&tokens[shared..]);
        // What comes before the first reused run is exact when what it follows is.
        if shared <= self.exact
            && let Some(first) = plan.first()
        {
            self.exact = first.at;
        }
        self.shifted += 1;
        let shifted: usize = plan.iter().map(|r| r.len).sum();
        Ok((
            logits,
            Prefill {
                reused: shared + shifted,
                computed: tokens.len() - shared - shifted,
                shifted,
            },
        ))
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

    /// Forgets everything after a failure that may have left the caches anywhere.
    fn start_over(&mut self) {
        self.cached.clear();
        self.exact = 0;
        self.shifted = 0;
        let _ = self.truncate_all();
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
        let plan = self.shift_plan(tokens, shared);
        if !plan.is_empty() {
            // A failed splice may have left the cache anywhere.
            return self
                .splice(tokens, shared, &plan)
                .inspect_err(|_| self.start_over());
        }
        // At least one token must run to produce logits.
        let keep = shared.min(tokens.len() - 1);
        self.truncate(keep)?;
        let start = self.cached.len();
        let new = tokens.get(start..).unwrap_or_default();
        let logits = match self.run(new, start) {
            Ok(logits) => logits,
            Err(e) => {
                // A failed forward may have appended to some layers' caches only.
                self.start_over();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(new);
        // New tokens computed after an exact prefix are exact.
        if start <= self.exact {
            self.exact = self.cached.len();
            self.shifted = 0;
        }
        Ok((
            logits,
            Prefill {
                reused: start,
                computed: new.len(),
                shifted: 0,
            },
        ))
    }
}
