//! The training loop, readable top to bottom as in nanoGPT: learning rate from a pure function,
//! held-out evaluation every N steps, forward, backward, clip, step, log; checkpoints carry all
//! that resuming needs (weights, optimizer moments, step, data position), written atomically.

use std::collections::HashMap;

use anyhow::Context;
use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, AdamWParams, grad_norm};
use super::schedule::learning_rate;
use crate::model::Tokenizer;
use crate::model::config::LlamaConfig;
use crate::model::llama::{Kernels, Llama};
use crate::rng::Rng;

mod checkpoint;
mod data;
mod held_out;

pub use checkpoint::{Checkpoint, CheckpointState};
pub use data::DataPosition;
use data::{Data, PackKey, windows};
use held_out::HeldOutSet;
pub use held_out::{HeldOut, LanguageHeldOut, plain_tokens};

/// Training hyper-parameters: defaults in one place, as nanoGPT keeps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps in all (the schedule's length).
    pub steps: usize,
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
    pub eval_every: usize,
    /// Held-out windows evaluated each time (all when there are fewer).
    pub eval_windows: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    pub fim_rate: f64,
    pub spm_rate: f64,
}

impl TrainSettings {
    /// The defaults of a new run, in one place: a fine-tune starts from a trained model and moves
    /// it gently (a lower peak learning rate) towards the editor's prompts (more FIM examples);
    /// a run from scratch learns plain text first. A resumed run keeps its own settings; the
    /// command line only overrides.
    pub fn new_run(fine_tune: bool) -> Self {
        let lr = if fine_tune { 3e-4 } else { 1e-3 };
        Self {
            seq_len: 256,
            batch_size: 4,
            grad_accum: 1,
            steps: 300,
            max_lr: lr,
            min_lr: lr / 10.0,
            warmup: 20,
            weight_decay: 0.1,
            clip: 1.0,
            eval_every: 50,
            eval_windows: 32,
            checkpoint_every: 100,
            seed: 0,
            fim_rate: if fine_tune { 0.9 } else { 0.5 },
            spm_rate: 0.5,
        }
    }
}

impl Default for TrainSettings {
    /// A fine-tune's defaults.
    fn default() -> Self {
        Self::new_run(true)
    }
}

/// A document for training or evaluation.
#[derive(Debug, Clone)]
pub struct Doc {
    pub text: String,
    pub language: Option<String>,
}

/// One line of the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_seen: u64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOut>,
}

/// The model being trained, its optimizer and data.
pub struct Trainer {
    pub config: LlamaConfig,
    pub tied: bool,
    pub settings: TrainSettings,
    pub varmap: VarMap,
    model: Llama,
    opt: AdamW,
    data: Data,
    held: HeldOutSet,
    pub step: usize,
    pub tokens_seen: u64,
    pub log: Vec<LogEntry>,
    /// How the run began (e.g. "from scratch (Small)"); kept across `--resume`.
    pub origin: String,
    /// Wall-clock seconds of the run's earlier sessions, before this process resumed it.
    pub earlier_seconds: f64,
    /// When this session began (the caller may set it earlier than `new`, e.g. before the corpus
    /// was read).
    pub session_start: std::time::Instant,
}

impl Trainer {
    /// Wall-clock seconds of the whole run: earlier sessions and this one so far.
    pub fn wall_seconds(&self) -> f64 {
        self.earlier_seconds + self.session_start.elapsed().as_secs_f64()
    }
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("tokens_seen", &self.tokens_seen)
            .finish()
    }
}

/// Sorted (name, var) pairs: a stable order for the optimizer and checkpoints.
fn named_vars(varmap: &VarMap) -> anyhow::Result<Vec<(String, candle_core::Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the parameter map lock is poisoned"))?;
    let mut vars: Vec<(String, candle_core::Var)> =
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

impl Trainer {
    /// A trainer over `train` documents with `held` documents for evaluation, on `device`. `init`
    /// holds starting weights by name (from a model directory); `None` starts from random weights.
    #[allow(clippy::too_many_arguments)] // each is one thing the run is made of
    pub fn new(
        config: &LlamaConfig,
        tied: bool,
        init: Option<HashMap<String, Tensor>>,
        settings: TrainSettings,
        tokenizer: &Tokenizer,
        train: Vec<Doc>,
        held: &[Doc],
        device: &Device,
    ) -> anyhow::Result<Self> {
        let device = device.clone();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = Llama::new(config, vb, tied, Kernels::Differentiable)?;
        if let Some(init) = init {
            let vars = named_vars(&varmap)?;
            for (name, var) in &vars {
                let t = init
                    .get(name)
                    .with_context(|| format!("the initial weights have no tensor {name:?}"))?;
                var.set(
                    &t.to_dtype(DType::F32)?
                        .reshape(var.shape())?
                        .to_device(&device)?,
                )?;
            }
        } else {
            // Seeded initialisation: normal(0, 0.02) for matrices, as transformers initialises.
            let mut rng = Rng::new(settings.seed ^ 0x5EED);
            for (name, var) in named_vars(&varmap)? {
                if var.rank() >= 2 {
                    let n = var.elem_count();
                    let values: Vec<f32> = (0..n).map(|_| 0.02 * normal(&mut rng)).collect();
                    var.set(&Tensor::from_vec(values, var.shape(), &device)?)?;
                } else if name.ends_with("norm.weight") {
                    var.set(&Tensor::ones(var.shape(), DType::F32, &device)?)?;
                } else {
                    var.set(&Tensor::zeros(var.shape(), DType::F32, &device)?)?;
                }
            }
        }
        let opt = AdamW::new(
            named_vars(&varmap)?,
            AdamWParams {
                weight_decay: settings.weight_decay,
                ..AdamWParams::default()
            },
        )?;
        // The first epoch is packed when the first batch is drawn: a resume continues elsewhere.
        let data = Data {
            docs: train,
            windows: Vec::new(),
            order: Vec::new(),
            packed: None,
            packs: 0,
            pack_seconds: 0.0,
            pos: DataPosition::default(),
        };
        let held = HeldOutSet::new(tokenizer, held, settings.seq_len)?;
        Ok(Self {
            config: config.clone(),
            tied,
            settings,
            varmap,
            model,
            opt,
            data,
            held,
            step: 0,
            tokens_seen: 0,
            log: Vec::new(),
            origin: String::new(),
            earlier_seconds: 0.0,
            session_start: std::time::Instant::now(),
        })
    }

    /// Runs one optimizer step on the next batches of the data stream.
    pub fn train_step(&mut self, tokenizer: &Tokenizer) -> anyhow::Result<LogEntry> {
        let s = self.settings.clone();
        let batches = (0..s.grad_accum)
            .map(|_| self.data.next_batch(tokenizer, &s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.train_step_on(&batches)
    }

    /// Runs one optimizer step on the given micro-batches (one per accumulation step) of windows.
    pub fn train_step_on(&mut self, batches: &[Vec<Vec<u32>>]) -> anyhow::Result<LogEntry> {
        let started = std::time::Instant::now();
        let s = self.settings.clone();
        let mut grads: Option<GradStore> = None;
        let mut loss_sum = 0f64;
        let mut tokens = 0u64;
        let accum = batches.len().max(1);
        for batch in batches {
            let (loss, n, shards) = self.micro_batch_gradients(batch, accum)?;
            tokens += n as u64;
            loss_sum += loss;
            grads = Some(sum_gradients(&self.opt.vars, grads, shards)?);
        }
        let grads = grads.context("no gradient was computed")?;
        let (grad_norm, clip) = grad_norm(&grads, &self.opt.vars, s.clip)?;
        let lr = learning_rate(self.step, s.steps, s.warmup, s.max_lr, s.min_lr);
        self.opt.step(&grads, lr, clip)?;
        self.step += 1;
        self.tokens_seen += tokens;
        let entry = LogEntry {
            step: self.step,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
            tokens_seen: self.tokens_seen,
            tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            held_out: None,
        };
        self.log.push(entry.clone());
        Ok(entry)
    }

    /// Mean loss, positions and gradients (one store per shard) of one micro-batch scaled by
    /// `1 / accum`. The windows split into one shard per worker thread and the shards run side by
    /// side, each single-threaded: see [`super::tune_process`].
    fn micro_batch_gradients(
        &self,
        batch: &[Vec<u32>],
        accum: usize,
    ) -> anyhow::Result<(f64, usize, Vec<GradStore>)> {
        let workers = rayon::current_num_threads().clamp(1, batch.len().max(1));
        let shard_len = batch.len().div_ceil(workers).max(1);
        let total: usize = batch.chunks(shard_len).map(positions).sum();
        let shards = batch
            .par_chunks(shard_len)
            .map(|windows| {
                let (loss, n) = self.batch_loss(windows)?;
                // The mean over the micro-batch is the shards' means weighted by their positions.
                let weight = n as f64 / total.max(1) as f64;
                let value = f64::from(loss.to_scalar::<f32>()?) * weight;
                Ok((value, (loss * (weight / accum as f64))?.backward()?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let loss = shards.iter().map(|(value, _)| value).sum();
        Ok((loss, total, shards.into_iter().map(|(_, g)| g).collect()))
    }

    /// Mean cross-entropy over a batch of windows (inputs are all but the last token of each).
    fn batch_loss(&self, batch: &[Vec<u32>]) -> anyhow::Result<(Tensor, usize)> {
        let t = positions(batch) / batch.len().max(1);
        if t == 0 {
            anyhow::bail!("empty training window");
        }
        let inputs: Vec<u32> = batch.iter().flat_map(|w| w[..t].iter().copied()).collect();
        let targets: Vec<u32> = batch
            .iter()
            .flat_map(|w| w[1..=t].iter().copied())
            .collect();
        let b = batch.len();
        let device = self.model.device();
        let inputs = Tensor::from_vec(inputs, (b, t), device)?;
        let logits = self.model.forward_all(&inputs, 0, None)?;
        let v = logits.dim(D::Minus1)?;
        let logits = logits.reshape((b * t, v))?;
        let loss = if device.is_cpu() {
            crate::model::ops::cross_entropy(&logits, &targets)?
        } else {
            candle_nn::loss::cross_entropy(&logits, &Tensor::new(targets, device)?)?
        };
        Ok((loss, b * t))
    }

    /// The current weights by name (what `model.safetensors` holds).
    pub fn weights(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        Ok(named_vars(&self.varmap)?
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect())
    }

    /// Where the data stream stands: the epoch, and the next window in it.
    pub fn data_position(&self) -> DataPosition {
        self.data.pos
    }

    /// How many epochs this trainer has packed: each is a pass that tokenizes the whole corpus.
    pub fn packs(&self) -> usize {
        self.data.packs
    }

    /// Seconds this process has spent packing epochs (tokenizing the corpus into windows).
    pub fn packing_seconds(&self) -> f64 {
        self.data.pack_seconds
    }

    /// Continue with windows made another way (`change`): longer or shorter sequences (at most
    /// the model's positions), or another share of FIM or SPM examples. The current epoch is
    /// packed again, once, and resumes the same share of the way through it. A new length also
    /// cuts the held-out windows again (from the tokens of the held-out files, tokenized once),
    /// so held-out figures from before and after it measure different contexts; the FIM shares
    /// leave them alone (they are read left to right).
    pub fn reshape(&mut self, tokenizer: &Tokenizer, change: Reshape) -> anyhow::Result<()> {
        let mut next = self.settings.clone();
        next.seq_len = change.seq_len.unwrap_or(next.seq_len);
        next.fim_rate = change.fim_rate.unwrap_or(next.fim_rate);
        next.spm_rate = change.spm_rate.unwrap_or(next.spm_rate);
        let positions = self.config.max_position_embeddings;
        if next.seq_len > positions {
            anyhow::bail!(
                "--seq-len {}: the model has positions for {positions} tokens; give at most {positions}",
                next.seq_len
            );
        }
        for (name, rate) in [("--fim-rate", next.fim_rate), ("--spm-rate", next.spm_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{name} must be between 0 and 1 (got {rate})");
            }
        }
        if PackKey::new(0, &next) == PackKey::new(0, &self.settings) {
            return Ok(());
        }
        // A checkpoint records its epoch's size; only an older one needs a pack the old way.
        if self.data.pos.windows == 0 {
            self.data.ensure_packed(tokenizer, &self.settings)?;
        }
        let seen = self.data.pos.next as f64 / self.data.pos.windows.max(1) as f64;
        self.settings = next;
        self.data.ensure_packed(tokenizer, &self.settings)?;
        self.data.pos.next = (seen * self.data.order.len() as f64).round() as usize;
        self.held.cut(self.settings.seq_len);
        Ok(())
    }
}

/// How a resumed run's windows change; `None` keeps the run's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reshape {
    pub seq_len: Option<usize>,
    pub fim_rate: Option<f64>,
    pub spm_rate: Option<f64>,
}

/// Positions a batch of windows trains on: each window cut to the shortest, less its last token.
fn positions(windows: &[Vec<u32>]) -> usize {
    let t = windows.iter().map(|w| w.len().saturating_sub(1)).min();
    t.unwrap_or(0) * windows.len()
}

/// Adds the gradients in `stores` to `acc` (or to the first store), one variable per task. Each sum
/// runs in a fixed order, so the result does not depend on how the tasks were scheduled.
fn sum_gradients(
    vars: &[(String, Var)],
    acc: Option<GradStore>,
    stores: Vec<GradStore>,
) -> anyhow::Result<GradStore> {
    let mut stores = stores.into_iter();
    let mut acc = match acc {
        Some(acc) => acc,
        None => stores.next().context("no gradient was computed")?,
    };
    let rest: Vec<GradStore> = stores.collect();
    if rest.is_empty() {
        return Ok(acc);
    }
    let sums = vars
        .par_iter()
        .map(|(_, var)| {
            let mut sum = acc.get(var.as_tensor()).cloned();
            for new in rest.iter().filter_map(|g| g.get(var.as_tensor())) {
                sum = Some(match sum {
                    Some(old) => (old + new)?,
                    None => new.clone(),
                });
            }
            Ok(sum.map(|sum| (var.as_tensor(), sum)))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    for (var, sum) in sums.into_iter().flatten() {
        acc.insert(var, sum);
    }
    Ok(acc)
}

/// A standard normal draw (Box-Muller) from the seeded generator.
fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.next_f64().max(1e-12);
    let u2 = rng.next_f64();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_one_target_token() {
        let w = windows(&[1, 2, 3, 4, 5, 6, 7], 3);
        assert_eq!(
            w,
            vec![vec![1, 2, 3, 4], vec![4, 5, 6, 7], vec![7]]
                .into_iter()
                .filter(|w| w.len() >= 2)
                .collect::<Vec<_>>()
        );
    }
}
