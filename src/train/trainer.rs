//! The training loop, readable top to bottom as in nanoGPT: learning rate from a pure function,
//! held-out evaluation every N steps, forward, backward, clip, step, log; checkpoints carry all
//! that resuming needs (weights, optimizer moments, step, data position), written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::fim::{self, FimSettings};
use super::optim::{AdamW, AdamWParams, grad_norm};
use super::schedule::learning_rate;
use crate::model::Tokenizer;
use crate::model::config::LlamaConfig;
use crate::model::llama::{Kernels, Llama};
use crate::rng::Rng;

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

/// Where the data stream stands (saved in checkpoints).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub next: usize,
    /// Windows in this epoch at the run's sequence length, so a resume that changes the length
    /// knows how far through the epoch it is without packing it first (0 in older checkpoints).
    #[serde(default)]
    pub windows: usize,
}

/// Training windows, rebuilt per epoch with fresh FIM splits from the seed.
///
/// Packing an epoch tokenizes and parses the whole corpus (minutes for a large one), so it happens
/// only when a batch is drawn and the windows at hand are not the ones the position needs: a
/// resumed run packs once, for the epoch and length it continues with.
struct Data {
    docs: Vec<Doc>,
    windows: Vec<Vec<u32>>,
    order: Vec<usize>,
    /// What `windows` were packed for; `None` until the first pack.
    packed: Option<PackKey>,
    /// Epochs packed so far by this process.
    packs: usize,
    /// Seconds spent packing them.
    pack_seconds: f64,
    pos: DataPosition,
}

/// Everything an epoch's windows depend on besides the documents.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PackKey {
    epoch: u64,
    seq_len: usize,
    seed: u64,
    fim_rate: f64,
    spm_rate: f64,
}

impl PackKey {
    fn new(epoch: u64, s: &TrainSettings) -> Self {
        Self {
            epoch,
            seq_len: s.seq_len,
            seed: s.seed,
            fim_rate: s.fim_rate,
            spm_rate: s.spm_rate,
        }
    }
}

/// Windows of `seq_len + 1` tokens cut from `stream` (inputs and shifted targets).
fn windows(stream: &[u32], seq_len: usize) -> Vec<Vec<u32>> {
    if stream.len() < 2 {
        return Vec::new();
    }
    let mut out: Vec<Vec<u32>> = stream.chunks(seq_len).map(|c| c.to_vec()).collect();
    // Each window also needs the token after it as its last target.
    for i in 0..out.len() {
        let next = stream.get((i + 1) * seq_len).copied();
        if let (Some(w), Some(n)) = (out.get_mut(i), next) {
            w.push(n);
        }
    }
    out.retain(|w| w.len() >= 2);
    out
}

impl Data {
    /// Packs the windows of the position's epoch unless they are already at hand; the position
    /// within the epoch is kept.
    fn ensure_packed(&mut self, tokenizer: &Tokenizer, s: &TrainSettings) -> anyhow::Result<()> {
        let key = PackKey::new(self.pos.epoch, s);
        if self.packed == Some(key) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut rng = Rng::new(s.seed ^ key.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fim = FimSettings {
            fim_rate: s.fim_rate,
            spm_rate: s.spm_rate,
        };
        let docs = self
            .docs
            .iter()
            .map(|d| (d.text.as_str(), d.language.as_deref()));
        let stream = fim::pack(tokenizer, docs, fim, s.seq_len, &mut rng)?;
        self.windows = windows(&stream, s.seq_len);
        self.order = (0..self.windows.len()).collect();
        // Fisher-Yates with the same generator: the order is part of the seeded run.
        for i in (1..self.order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        self.packed = Some(key);
        self.packs += 1;
        self.pack_seconds += started.elapsed().as_secs_f64();
        self.pos.windows = self.order.len();
        Ok(())
    }

    fn next_batch(
        &mut self,
        tokenizer: &Tokenizer,
        s: &TrainSettings,
    ) -> anyhow::Result<Vec<Vec<u32>>> {
        self.ensure_packed(tokenizer, s)?;
        let mut batch = Vec::with_capacity(s.batch_size);
        while batch.len() < s.batch_size {
            // Checked before moving on: an empty epoch would otherwise pack the next one for nothing.
            if self.order.is_empty() {
                anyhow::bail!("the training files hold too few tokens to fill one sequence");
            }
            if self.pos.next >= self.order.len() {
                self.pos = DataPosition {
                    epoch: self.pos.epoch + 1,
                    next: 0,
                    windows: 0,
                };
                self.ensure_packed(tokenizer, s)?;
                continue;
            }
            let w = self
                .order
                .get(self.pos.next)
                .and_then(|&i| self.windows.get(i))
                .cloned()
                .unwrap_or_default();
            batch.push(w);
            self.pos.next += 1;
        }
        Ok(batch)
    }
}

/// Held-out loss and bits per byte.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeldOut {
    /// Mean cross-entropy per token (nats).
    pub loss: f64,
    pub bits_per_byte: f64,
    pub tokens: usize,
    /// The same by language (logs written before it was measured have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_language: Vec<LanguageHeldOut>,
}

/// Held-out bits per byte of one language's windows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LanguageHeldOut {
    pub language: String,
    pub bits_per_byte: f64,
    pub tokens: usize,
}

/// Windows each language has in a held-out measurement at least (where it has that many): the
/// evenly spaced sample follows the held-out set's mix, which may give a small language one
/// window or none.
const MIN_WINDOWS_PER_LANGUAGE: usize = 4;

/// One line of the loss curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// A trainer over `train` documents with `held` documents for evaluation. `init` holds starting
    /// weights by name (from a model directory); `None` starts from random weights.
    pub fn new(
        config: &LlamaConfig,
        tied: bool,
        init: Option<HashMap<String, Tensor>>,
        settings: TrainSettings,
        tokenizer: &Tokenizer,
        train: Vec<Doc>,
        held: &[Doc],
    ) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = Llama::new(config, vb, tied, Kernels::Differentiable)?;
        if let Some(init) = init {
            let vars = named_vars(&varmap)?;
            for (name, var) in &vars {
                let t = init
                    .get(name)
                    .with_context(|| format!("the initial weights have no tensor {name:?}"))?;
                var.set(&t.to_dtype(DType::F32)?.reshape(var.shape())?)?;
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
        let device = Device::Cpu;
        let inputs = Tensor::from_vec(inputs, (b, t), &device)?;
        let logits = self.model.forward_all(&inputs, 0, None)?;
        let v = logits.dim(D::Minus1)?;
        let loss = crate::model::ops::cross_entropy(&logits.reshape((b * t, v))?, &targets)?;
        Ok((loss, b * t))
    }

    /// Loss and bits per byte on the held-out windows: at most `eval_windows` of them, evenly
    /// spaced over all of them, so the sample spans the held-out files rather than the openings of
    /// the first few. By language, each language's windows in that sample, topped up with its own
    /// evenly spaced windows to [`MIN_WINDOWS_PER_LANGUAGE`] (those count only for it). The sample
    /// is the same at every call, so the figures of a run are comparable along it.
    pub fn evaluate(&self) -> anyhow::Result<HeldOut> {
        let held = &self.held.windows;
        let n = held.len().min(self.settings.eval_windows.max(1));
        let sample: Vec<usize> = (0..n).map(|i| i * held.len() / n).collect();
        let mut extra = Vec::new();
        for language in 0..self.held.languages.len() {
            let own: Vec<usize> = (0..held.len())
                .filter(|&i| held[i].language == language)
                .collect();
            let sampled = sample.iter().filter(|&&i| held[i].language == language);
            let want = MIN_WINDOWS_PER_LANGUAGE.min(own.len());
            let missing = want.saturating_sub(sampled.count());
            extra.extend(
                (0..want)
                    .map(|k| own[k * own.len() / want])
                    .filter(|i| !sample.contains(i))
                    .take(missing),
            );
        }
        // One window per task: a held-out pass runs on every core (see `micro_batch_gradients`).
        let scored = sample
            .iter()
            .chain(&extra)
            .collect::<Vec<_>>()
            .par_iter()
            .map(|&&i| {
                let w = &held[i];
                let (loss, n) = self.batch_loss(std::slice::from_ref(&w.ids))?;
                let nats = f64::from(loss.detach().to_scalar::<f32>()?) * n as f64;
                Ok(Scored {
                    nats,
                    tokens: n,
                    bytes: w.bytes,
                    language: w.language,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let Some(mut out) = Scored::held_out(&scored[..sample.len()]) else {
            return Ok(HeldOut::default());
        };
        for (index, language) in self.held.languages.iter().enumerate() {
            let own: Vec<Scored> = scored
                .iter()
                .filter(|s| s.language == index)
                .copied()
                .collect();
            if let Some(h) = Scored::held_out(&own) {
                out.by_language.push(LanguageHeldOut {
                    language: language.clone(),
                    bits_per_byte: h.bits_per_byte,
                    tokens: h.tokens,
                });
            }
        }
        Ok(out)
    }

    /// The current weights by name (what `model.safetensors` holds).
    pub fn weights(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        Ok(named_vars(&self.varmap)?
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect())
    }

    /// Writes a checkpoint under `dir` and points `dir/latest` at it, atomically.
    pub fn save_checkpoint(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the checkpoint folder", dir.display()))?;
        let name = format!("step-{:08}", self.step);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        candle_core::safetensors::save(&self.weights()?, tmp.join("model.safetensors"))?;
        let mut moments = HashMap::new();
        for (i, (name, _)) in self.opt.vars.iter().enumerate() {
            if let (Some(m), Some(v)) = (self.opt.m.get(i), self.opt.v.get(i)) {
                moments.insert(format!("m.{name}"), m.clone());
                moments.insert(format!("v.{name}"), v.clone());
            }
        }
        candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
        let state = CheckpointState {
            step: self.step,
            adam_t: self.opt.t,
            tokens_seen: self.tokens_seen,
            data: self.data.pos,
            settings: self.settings.clone(),
            config: self.config.to_hf_json(),
            tied: self.tied,
            log: self.log.clone(),
            origin: self.origin.clone(),
            seconds: self.wall_seconds(),
        };
        std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(&state)?)?;
        for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            std::fs::File::open(tmp.join(f))?.sync_all()?;
        }
        let final_dir = dir.join(&name);
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir)?;
        sync_dir(dir);
        crate::files::write_atomic(&dir.join("latest"), name.as_bytes())?;
        // Keep the two newest checkpoints.
        let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            })
            .collect();
        old.sort();
        for p in old.iter().rev().skip(2) {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(final_dir)
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

    /// Restores a checkpoint written by [`save_checkpoint`](Self::save_checkpoint) into this trainer
    /// (built with the same config and data).
    pub fn load_checkpoint(&mut self, dir: &Path) -> anyhow::Result<()> {
        let name = std::fs::read_to_string(dir.join("latest"))
            .with_context(|| format!("{}: no checkpoint to resume from", dir.display()))?;
        let ckpt = dir.join(name.trim());
        let state: CheckpointState =
            serde_json::from_slice(&std::fs::read(ckpt.join("state.json"))?)
                .with_context(|| format!("{}: damaged state.json", ckpt.display()))?;
        let weights = candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu)?;
        let moments =
            candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &Device::Cpu)?;
        for (i, (name, var)) in self.opt.vars.iter().enumerate() {
            let w = weights
                .get(name)
                .with_context(|| format!("checkpoint lacks {name}"))?;
            var.set(w)?;
            if let (Some(m), Some(v)) = (
                moments.get(&format!("m.{name}")),
                moments.get(&format!("v.{name}")),
            ) {
                if let Some(slot) = self.opt.m.get_mut(i) {
                    *slot = m.clone();
                }
                if let Some(slot) = self.opt.v.get_mut(i) {
                    *slot = v.clone();
                }
            }
        }
        self.opt.t = state.adam_t;
        self.step = state.step;
        self.tokens_seen = state.tokens_seen;
        self.log = state.log;
        self.origin = state.origin;
        self.earlier_seconds = state.seconds;
        self.settings = state.settings;
        // The windows are packed for this position when the next batch is drawn.
        self.data.pos = state.data;
        Ok(())
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

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    pub adam_t: usize,
    pub tokens_seen: u64,
    pub data: DataPosition,
    pub settings: TrainSettings,
    pub config: serde_json::Value,
    pub tied: bool,
    pub log: Vec<LogEntry>,
    /// How the run began; empty in checkpoints written before it was recorded.
    #[serde(default)]
    pub origin: String,
    /// Wall-clock seconds of the whole run up to this checkpoint (0 in older checkpoints).
    #[serde(default)]
    pub seconds: f64,
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

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Plain (non-FIM) windows of held-out documents, each with the bytes its targets cover.
/// The held-out files, tokenized once and read left to right (no FIM), cut into windows of the
/// run's length; a new length only cuts them again.
struct HeldOutSet {
    /// Each file's tokens (the lead, its text, end-of-text), the bytes each token stands for
    /// (none for special tokens), for bits per byte, and its language (an index into `languages`).
    docs: Vec<(Vec<u32>, Vec<usize>, usize)>,
    /// The files' languages, in order of first appearance ("text" for files of none).
    languages: Vec<String>,
    seq_len: usize,
    /// Windows as the training windows are cut.
    windows: Vec<HeldWindow>,
}

struct HeldWindow {
    ids: Vec<u32>,
    /// The bytes its targets stand for.
    bytes: usize,
    language: usize,
}

/// One held-out window's score.
#[derive(Debug, Clone, Copy)]
struct Scored {
    nats: f64,
    tokens: usize,
    bytes: usize,
    language: usize,
}

impl Scored {
    fn held_out(scored: &[Scored]) -> Option<HeldOut> {
        let nats: f64 = scored.iter().map(|s| s.nats).sum();
        let tokens: usize = scored.iter().map(|s| s.tokens).sum();
        let bytes: usize = scored.iter().map(|s| s.bytes).sum();
        (tokens > 0).then(|| HeldOut {
            loss: nats / tokens as f64,
            bits_per_byte: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
            tokens,
            by_language: Vec::new(),
        })
    }
}

impl HeldOutSet {
    fn new(tokenizer: &Tokenizer, docs: &[Doc], seq_len: usize) -> anyhow::Result<Self> {
        let mut tokens = Vec::with_capacity(docs.len());
        let mut languages: Vec<String> = Vec::new();
        for doc in docs {
            let language = doc.language.as_deref().unwrap_or("text");
            let index = match languages.iter().position(|l| l == language) {
                Some(i) => i,
                None => {
                    languages.push(language.to_string());
                    languages.len() - 1
                }
            };
            let mut ids = tokenizer.fim().lead.clone();
            ids.extend(tokenizer.encode(&doc.text)?);
            ids.extend(tokenizer.fim().eos);
            let bytes = ids
                .iter()
                .map(|&id| match tokenizer.is_special(id) {
                    true => 0,
                    false => tokenizer.token_bytes(id).len(),
                })
                .collect();
            tokens.push((ids, bytes, index));
        }
        let mut set = Self {
            docs: tokens,
            languages,
            seq_len: 0,
            windows: Vec::new(),
        };
        set.cut(seq_len);
        Ok(set)
    }

    fn cut(&mut self, seq_len: usize) {
        if seq_len == self.seq_len {
            return;
        }
        self.seq_len = seq_len;
        self.windows = self
            .docs
            .iter()
            .flat_map(|(ids, bytes, language)| {
                // Window `i` starts at token `i * seq_len`; its targets are the tokens after the first.
                windows(ids, seq_len).into_iter().enumerate().map(|(i, w)| {
                    let first = i * seq_len + 1;
                    let targets = bytes.get(first..first + w.len() - 1).unwrap_or(&[]);
                    HeldWindow {
                        bytes: targets.iter().sum(),
                        ids: w,
                        language: *language,
                    }
                })
            })
            .collect();
    }
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
