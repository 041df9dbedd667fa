//! Training: the corpus walk and its filters, the held-out split, FIM examples, tokenizer training,
//! the optimizer and schedule, and the loop with checkpoints. [`run`] ties them together for
//! `infill train`.
//!
//! The pipeline: `repo walk -> filters -> dedupe -> split (hash of the path) -> FIM examples ->
//! tokens -> packed windows -> AdamW steps`, seeded throughout.

pub mod corpus;
pub mod dataset;
pub mod dedup;
pub mod export;
pub mod fim;
pub mod licence;
pub mod log;
pub mod optim;
pub mod schedule;
pub mod split;
pub mod tokenizer;
pub mod trainer;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::model::config::{Family, LlamaConfig, ModelConfig};
use crate::model::load::{self, Blob, ModelSource};
use crate::model::{FimOrder, Tokenizer};
use trainer::{Doc, HeldOut, LogEntry, TrainSettings, Trainer};

/// Process settings that make training faster on CPUs; call first thing, before any thread exists.
/// What each gained is in docs/benchmarks.md and docs/design.md.
///
/// - Data parallel across cores: the trainer splits every micro-batch into one shard per thread of
///   rayon's pool and runs the shards side by side, and candle runs each op of a shard on the
///   thread that called it (`RAYON_NUM_THREADS=1` is what candle reads for its matrix products; the
///   pool is then built with every core, or the `RAYON_NUM_THREADS` the user gave). Splitting each
///   op across the cores instead pays a barrier per op and leaves candle's elementwise ops on one
///   core.
/// - candle's worker threads spin before parking; on a step of many small ops the spinning thread
///   takes a core from the ones computing.
/// - glibc gives every large allocation its own mapping and returns it on free, so each of candle's
///   per-op tensors would cost page faults and zeroing: freed memory stays in the heap for reuse
///   (memory stays at its peak, which training reaches anyway), and all threads share one arena,
///   since other threads' arenas map anything over 64 MB (a shard's logits) afresh.
/// - candle's elementwise ops run on one thread (`CANDLE_NUM_THREADS=1`): splitting a few hundred
///   kilobytes across two cores costs more in barriers than it saves. The environment still wins
///   when it says otherwise.
pub fn tune_process() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    for (name, value, always) in [
        ("RAYON_NUM_THREADS", "1", true),
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0", false),
        ("CANDLE_NUM_THREADS", "1", false),
    ] {
        if always || std::env::var_os(name).is_none() {
            // SAFETY: called before any thread (rayon's and candle's pools, the Ctrl-C handler)
            // exists, so nothing can read the environment concurrently.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var(name, value)
            };
        }
    }
    crate::model::keep_freed_memory();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation settings; it is called before other threads
    // allocate, and any value is valid (it returns 0 when it refuses one).
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // Fails only when the pool already exists (a second call): it keeps its threads.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}

/// Model shapes for `--from-scratch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ~0.1M parameters: tests and smoke runs.
    Tiny,
    /// ~3M parameters (vocabulary 4096): half the default's size, for scaling sweeps.
    Mini,
    /// ~7M parameters (vocabulary 4096): the default model's size.
    Small,
    /// ~14M parameters (vocabulary 4096): twice the default's size.
    Medium,
}

impl Preset {
    pub fn vocab_size(self) -> usize {
        match self {
            Self::Tiny => 512,
            Self::Mini | Self::Small | Self::Medium => 4096,
        }
    }

    pub fn config(self, vocab_size: usize, context: usize) -> LlamaConfig {
        // Heads of 32 dimensions throughout.
        let (hidden, layers, heads, kv, inter) = match self {
            Self::Tiny => (64, 2, 4, 2, 192),
            Self::Mini => (192, 6, 6, 2, 512),
            Self::Small => (256, 8, 8, 2, 768),
            Self::Medium => (384, 8, 12, 4, 1024),
        };
        LlamaConfig {
            family: Family::Qwen2,
            vocab_size,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            max_position_embeddings: context,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling_factor: 1.0,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: Some(0),
            // A small model trained on both orders completes far better in SPM, where the prefix
            // runs straight into the middle: the step-8,603 default model scored 3.5% trimmed
            // exact match in SPM against 0.0% in PSM on 200 held-out corpus tasks.
            fim_order: Some(FimOrder::Spm),
        }
    }
}

/// Where the starting model comes from.
#[derive(Debug, Clone)]
pub enum Start {
    /// Fine-tune this model (`None`: the built-in default).
    FineTune(Option<String>),
    /// A new model of this shape, with the given tokenizer.json or one trained on the corpus.
    FromScratch {
        preset: Preset,
        tokenizer: Option<PathBuf>,
    },
    /// Continue the run whose checkpoints are in the output directory. Each setting given
    /// replaces the run's own from here on: `steps` the total (the cosine schedule then decays
    /// towards the new end), `batch_size` the sequences per step, `seq_len` their length, `lr`
    /// the peak learning rate (the floor is a tenth of it), and `fim_rate` and `spm_rate` the
    /// shares of FIM and of SPM examples (for example, more of the prompts the editor makes
    /// towards the end of a run).
    Resume {
        steps: Option<usize>,
        batch_size: Option<usize>,
        seq_len: Option<usize>,
        lr: Option<f64>,
        fim_rate: Option<f64>,
        spm_rate: Option<f64>,
    },
}

/// Everything `infill train` decided from its arguments.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub repos: Vec<PathBuf>,
    pub out: PathBuf,
    pub start: Start,
    pub settings: TrainSettings,
    /// Wall-clock budget; fixes the number of steps after timing the first ones.
    pub minutes: Option<f64>,
    pub held_out: f64,
    pub corpus: CorpusChoice,
    pub explain: bool,
    /// Replace a model or run already in `out` (without it, and without resuming, such an `out`
    /// is refused: nothing a person trained is lost by mistake).
    pub overwrite: bool,
    /// Checkpoint at least this often, besides every `checkpoint_every` steps: a slow run
    /// killed before its first step checkpoint would lose everything.
    pub checkpoint_interval: std::time::Duration,
    /// Where the model trains.
    pub device: Device,
}

/// Files of a model directory or a training run: an `--out` holding any of them is not new.
const RUN_FILES: [&str; 6] = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "training.json",
    "train.log",
    "checkpoints",
];

/// Refuses to start a new run over a model or run in `out` unless asked to replace it; with
/// `overwrite`, clears the old run's log and checkpoints so they cannot mix with the new one.
fn claim_out(out: &Path, start: &Start, overwrite: bool) -> anyhow::Result<()> {
    if matches!(start, Start::Resume { .. }) {
        return Ok(());
    }
    let found: Vec<&str> = RUN_FILES
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        anyhow::bail!(
            "{} already holds a model or training run ({}); pass --resume to continue that run, --overwrite to replace it, or choose another --out",
            out.display(),
            found.join(", ")
        );
    }
    for old in ["train.log", "training.json", "checkpoints"] {
        let path = out.join(old);
        let removed = match path.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("{}: cannot replace it", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What `training.json` records.
#[derive(Debug, Serialize)]
pub struct TrainingReport {
    pub repos: Vec<String>,
    pub files_trained: usize,
    pub files_held_out: usize,
    /// The share of files held out (by a hash of the path): files held out at this share were
    /// never trained on.
    pub held_out_share: f64,
    pub files_skipped: usize,
    pub bytes_trained: usize,
    pub start: String,
    pub steps: usize,
    pub tokens_seen: u64,
    /// The whole run, all sessions of `--resume` included.
    pub wall_seconds: f64,
    /// This process alone.
    pub session_seconds: f64,
    pub held_out_before: HeldOut,
    pub held_out_after: HeldOut,
    pub settings: TrainSettings,
    pub loss_curve: Vec<LogEntry>,
    pub interrupted: bool,
}

/// Set by Ctrl-C; the loop checkpoints and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How a from-scratch run's origin starts (`Trainer::origin`, `training.json`'s `start`).
const FROM_SCRATCH: &str = "from scratch";

/// With `--minutes`, how often (in steps) the end of the schedule is planned again.
const REPLAN_EVERY: usize = 25;

/// Steps a `--minutes` run may take before its first timing plans the real end.
pub const UNBOUNDED_STEPS: usize = 1_000_000;

/// Where a `--minutes` run's schedule should end, at `step`, having done `done` steps in
/// `elapsed` of `budget` seconds, `packing` of them spent packing epochs: `Some(step)` once the
/// time is up, a new end at the first timing and every [`REPLAN_EVERY`] steps after, `None` in
/// between. The pace leaves the packing out: an epoch is packed when its first batch is drawn,
/// minutes at once, and counted as step time it would end a run after a few steps.
fn planned_end(step: usize, done: usize, elapsed: f64, packing: f64, budget: f64) -> Option<usize> {
    if elapsed >= budget {
        return Some(step);
    }
    if done < 3 || (done > 3 && !done.is_multiple_of(REPLAN_EVERY)) {
        return None;
    }
    let per_step = (elapsed - packing).max(1e-3) / done as f64;
    let left = ((budget - elapsed) / per_step) as usize;
    Some(step + left.max(1))
}

/// The starting weights and configuration of a fine-tune.
fn load_start(
    spec: Option<&str>,
) -> anyhow::Result<(LlamaConfig, Tokenizer, HashMap<String, Tensor>, String)> {
    let source = ModelSource::parse(spec)?;
    let online = crate::model::load::online_allowed();
    let gguf = match &source {
        ModelSource::Gguf(path) => Some(path.clone()),
        ModelSource::HubGguf { id, file } => Some(load::locate_hub_file(
            id,
            file,
            &hf_hub::Cache::from_env(),
            online,
            &load::Downloads::default(),
        )?),
        _ => None,
    };
    if let Some(path) = gguf {
        // Quantized weights are dequantized: training runs in f32 whatever the file stores.
        let (config, tokenizer, weights) = crate::model::gguf::dequantized(&path)?;
        return Ok((config, tokenizer, weights, path.display().to_string()));
    }
    let files = load::locate(&source, online, &load::Downloads::default()).map_err(|e| match e {
        load::LoadError::NoDefaultModel => anyhow::anyhow!(
            "no default model is built into this binary yet; pass --init DIR|HUB_ID to fine-tune a model, \
             or --from-scratch --preset small"
        ),
        other => other.into(),
    })?;
    let read = |b: &Blob| -> anyhow::Result<Vec<u8>> {
        Ok(match b {
            Blob::File(p) => {
                std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?
            }
            Blob::Static { bytes, .. } => bytes.to_vec(),
        })
    };
    let config = ModelConfig::parse(std::str::from_utf8(&read(&files.config)?)?)?;
    let ModelConfig::Llama(config) = config else {
        anyhow::bail!(
            "{}: fine-tuning needs a qwen2 or llama model, not {}",
            files.name,
            config.family().model_type()
        );
    };
    let tokenizer = Tokenizer::from_bytes(&read(&files.tokenizer)?, config.vocab_size)?;
    let mut weights = HashMap::new();
    for blob in &files.weights {
        weights.extend(candle_core::safetensors::load_buffer(
            &read(blob)?,
            &Device::Cpu,
        )?);
    }
    Ok((config, tokenizer, weights, files.name))
}

/// Which files of the repositories to use.
#[derive(Debug, Clone, Default)]
pub struct CorpusChoice {
    pub filters: corpus::Options,
    /// Train on at most this many bytes of each package ([`split::Split::cap`]).
    pub package_cap_bytes: Option<usize>,
}

impl CorpusChoice {
    /// From the command line's `--permissive-only` and `--package-cap-mb` (megabytes of 10^6 bytes).
    pub fn from_flags(permissive_only: bool, package_cap_mb: Option<f64>) -> Self {
        Self {
            filters: corpus::Options { permissive_only },
            package_cap_bytes: package_cap_mb.map(|mb| (mb * 1e6) as usize),
        }
    }
}

/// The corpus of `repos` and its split into training and held-out files.
#[derive(Debug)]
pub struct Survey {
    pub corpus: corpus::Corpus,
    pub split: split::Split,
}

impl Survey {
    pub fn new(repos: &[PathBuf], choice: &CorpusChoice, held_out: f64) -> anyhow::Result<Self> {
        let corpus = corpus::collect(repos, choice.filters)?;
        let paths: Vec<&str> = corpus.files.iter().map(|f| f.path.as_str()).collect();
        let mut split = split::split(&paths, held_out);
        if let Some(cap) = choice.package_cap_bytes {
            let sizes: Vec<usize> = corpus.files.iter().map(|f| f.text.len()).collect();
            split.cap(&paths, &sizes, cap);
        }
        Ok(Self { corpus, split })
    }

    /// Every file with what happens to it, then the summary: one line each.
    pub fn explain(&self) -> String {
        let files = &self.corpus.files;
        let mut out = String::new();
        let mut line = |what: &str, i: usize| {
            if let Some(f) = files.get(i) {
                out.push_str(&format!("{what:<9} {} ({})\n", f.path, f.language));
            }
        };
        for &i in &self.split.train {
            line("train", i);
        }
        for &i in &self.split.held {
            line("held-out", i);
        }
        for &i in &self.split.shadowed {
            line("shadowed", i);
        }
        for &i in &self.split.capped {
            line("capped", i);
        }
        for (p, why) in &self.corpus.skipped {
            out.push_str(&format!("skip      {p}: {why}\n"));
        }
        out + &self.summary()
    }

    /// What the corpus holds and how it is split, in three lines.
    pub fn summary(&self) -> String {
        let bytes = |idx: &[usize]| -> usize {
            idx.iter()
                .filter_map(|&i| self.corpus.files.get(i))
                .map(|f| f.text.len())
                .sum()
        };
        let s = &self.split;
        let capped = match s.capped.is_empty() {
            true => String::new(),
            false => format!(
                ", {} over their package's cap ({:.1} MB) not trained on",
                s.capped.len(),
                bytes(&s.capped) as f64 / 1e6
            ),
        };
        let trained = s.train.iter().filter_map(|&i| self.corpus.files.get(i));
        let trained: Vec<String> = corpus::by_language(trained)
            .iter()
            .map(|(l, _, b)| format!("{l} {:.1} MB", *b as f64 / 1e6))
            .collect();
        format!(
            "{}\nsplit: {} files to train on ({:.1} MB: {}), {} held out ({:.1} MB), {} shadowed (held out, but another version of each is trained on: neither trained on nor evaluated){capped}\n",
            self.corpus.summary(),
            s.train.len(),
            bytes(&s.train) as f64 / 1e6,
            trained.join(", "),
            s.held.len(),
            bytes(&s.held) as f64 / 1e6,
            s.shadowed.len()
        )
    }
}

/// What a run starts from: the model's shape, its tokenizer, the weights to start from (none: new
/// ones, or the checkpoint's), how it began, and its settings.
struct Beginning {
    config: LlamaConfig,
    tokenizer_json: String,
    init: Option<HashMap<String, Tensor>>,
    tied: bool,
    origin: String,
    settings: TrainSettings,
    /// The checkpoint a resumed run continues from.
    checkpoint: Option<trainer::Checkpoint>,
}

/// The beginning of a fine-tune (the model to start from), a run from scratch (a new tokenizer
/// unless one is given) or a resumed run (the checkpoint's config, tokenizer and settings).
fn begin(opts: &TrainOptions, ckpt_dir: &Path, train_docs: &[Doc]) -> anyhow::Result<Beginning> {
    Ok(match &opts.start {
        Start::FineTune(spec) => {
            let (config, tokenizer, weights, name) = load_start(spec.as_deref())?;
            let tied = !weights.contains_key("lm_head.weight");
            Beginning {
                config,
                tokenizer_json: tokenizer.to_json()?,
                init: Some(weights),
                tied,
                origin: name,
                settings: opts.settings.clone(),
                checkpoint: None,
            }
        }
        Start::FromScratch { preset, tokenizer } => {
            let json = match tokenizer {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read the tokenizer", path.display()))?,
                None => tokenizer::train(
                    train_docs.iter().map(|d| d.text.as_str()),
                    preset.vocab_size(),
                )?,
            };
            let probe = Tokenizer::from_bytes(json.as_bytes(), usize::MAX).with_context(|| {
                let path = tokenizer
                    .as_deref()
                    .unwrap_or(Path::new("the trained tokenizer"));
                format!("{}: not a usable tokenizer.json", path.display())
            })?;
            let mut config = preset.config(probe.vocab_size(), opts.settings.seq_len.max(512));
            config.eos_token_id = probe.fim().eos;
            let name = format!("{FROM_SCRATCH} ({preset:?})");
            Beginning {
                config,
                tokenizer_json: json,
                init: None,
                tied: true,
                origin: name,
                settings: opts.settings.clone(),
                checkpoint: None,
            }
        }
        Start::Resume { .. } => {
            let Some(checkpoint) = trainer::Checkpoint::latest(ckpt_dir)? else {
                anyhow::bail!(
                    "{}: no checkpoint to resume from (the run stopped before its first one); start it again without --resume",
                    opts.out.display()
                );
            };
            let state = &checkpoint.state;
            let ModelConfig::Llama(config) = ModelConfig::parse(&state.config.to_string())? else {
                anyhow::bail!("the checkpoint's config is not a qwen2/llama model");
            };
            let json =
                std::fs::read_to_string(ckpt_dir.join("tokenizer.json")).with_context(|| {
                    format!(
                        "{}: the checkpoint has no tokenizer.json",
                        ckpt_dir.display()
                    )
                })?;
            Beginning {
                config,
                tokenizer_json: json,
                init: None,
                tied: state.tied,
                origin: "resumed".to_string(),
                settings: state.settings.clone(),
                checkpoint: Some(checkpoint),
            }
        }
    })
}

/// Puts `trainer` where the checkpoint in `ckpt_dir` left its run, then applies what the resume
/// changes (`Start::Resume`'s settings, `minutes` of more time).
fn resume(
    trainer: &mut Trainer,
    tokenizer: &Tokenizer,
    opts: &TrainOptions,
    checkpoint: trainer::Checkpoint,
) -> anyhow::Result<()> {
    let Start::Resume {
        steps,
        batch_size,
        seq_len,
        lr,
        fim_rate,
        spm_rate,
    } = opts.start
    else {
        return Ok(());
    };
    trainer.restore(checkpoint)?;
    log::truncate(&opts.out.join("train.log"), trainer.step)?;
    if trainer.origin.is_empty() {
        trainer.origin = "resumed (an older checkpoint did not record how it began)".into();
    }
    if let Some(b) = batch_size {
        trainer.settings.batch_size = b;
    }
    let change = trainer::Reshape {
        seq_len,
        fim_rate,
        spm_rate,
    };
    trainer.reshape(tokenizer, change)?;
    if fim_rate.is_some() || spm_rate.is_some() {
        eprintln!(
            "from here on {:.0}% of documents are FIM examples, {:.0}% of those in SPM order",
            trainer.settings.fim_rate * 100.0,
            trainer.settings.spm_rate * 100.0
        );
    }
    if let Some(lr) = lr {
        trainer.settings.max_lr = lr;
        trainer.settings.min_lr = lr / 10.0;
    }
    match (steps, opts.minutes) {
        (Some(steps), _) => trainer.settings.steps = steps,
        // Until the first timed steps plan the end, the run's own pace so far estimates it:
        // keeping the old end would stop a finished run at once, and no end at all would
        // start it at the peak learning rate.
        (None, Some(minutes)) => {
            let s = &trainer.settings;
            let tokens_per_step = (s.batch_size * s.grad_accum * s.seq_len) as f64;
            let per_token = trainer.earlier_seconds / trainer.tokens_seen.max(1) as f64;
            let estimate = minutes * 60.0 / (per_token * tokens_per_step);
            trainer.settings.steps = trainer.step
                + match estimate.is_finite() {
                    true => (estimate as usize).max(1),
                    false => UNBOUNDED_STEPS,
                };
        }
        (None, None) => {}
    }
    eprintln!(
        "resuming at step {} of {}",
        trainer.step, trainer.settings.steps
    );
    Ok(())
}

/// Where a run's lines go: `train.log`, and the caller's observer (the dashboard, or stderr).
struct Reporter<'a> {
    file: std::fs::File,
    observer: &'a mut dyn FnMut(&log::Line),
}

impl Reporter<'_> {
    fn report(&mut self, line: log::Line) -> anyhow::Result<()> {
        writeln!(self.file, "{}", line.to_json())?;
        (self.observer)(&line);
        Ok(())
    }
}

/// Trains until the schedule's end, the time budget or Ctrl-C: a `step` line per step, held-out
/// figures every `eval_every` steps, checkpoints by steps and by time.
fn train_loop(
    trainer: &mut Trainer,
    tokenizer: &Tokenizer,
    opts: &TrainOptions,
    ckpt_dir: &Path,
    reporter: &mut Reporter,
) -> anyhow::Result<()> {
    let budget = opts
        .minutes
        .map(|m| std::time::Duration::from_secs_f64(m * 60.0));
    let loop_start = Instant::now();
    let packing_before = trainer.packing_seconds();
    let first_step = trainer.step;
    let mut last_checkpoint = Instant::now();
    while trainer.step < trainer.settings.steps {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let mut entry = trainer.train_step(tokenizer)?;
        if let Some(b) = budget {
            // The budget decides where the schedule ends. Step time drifts (evaluations,
            // checkpoints, other work on the machine), so the end is planned again every few
            // steps from the average so far, and the learning rate still reaches its floor
            // when the time is up.
            let elapsed = loop_start.elapsed().as_secs_f64();
            if let Some(end) = planned_end(
                trainer.step,
                trainer.step - first_step,
                elapsed,
                trainer.packing_seconds() - packing_before,
                b.as_secs_f64(),
            ) {
                trainer.settings.steps = end;
                if first_step == 0 {
                    trainer.settings.warmup =
                        trainer.settings.warmup.min(trainer.settings.steps / 10);
                }
            }
        }
        let s = &trainer.settings;
        if trainer.step.is_multiple_of(s.eval_every.max(1)) || trainer.step == s.steps {
            let held = trainer.evaluate()?;
            entry.held_out = Some(held.clone());
            if let Some(last) = trainer.log.last_mut() {
                last.held_out = Some(held);
            }
        }
        let s = &trainer.settings;
        let checkpoint = trainer.step.is_multiple_of(s.checkpoint_every.max(1))
            || last_checkpoint.elapsed() >= opts.checkpoint_interval;
        if checkpoint {
            let saved = trainer.save_checkpoint(ckpt_dir)?;
            tracing::info!("checkpoint {} (loss {:.3})", saved.display(), entry.loss);
            last_checkpoint = Instant::now();
        }
        reporter.report(log::Line::Step(log::Step {
            entry,
            steps: trainer.settings.steps,
            elapsed_s: trainer.wall_seconds(),
            checkpoint,
        }))?;
    }
    Ok(())
}

/// Runs `infill train` end to end; each line of `train.log` also goes to `observer` as it is
/// written. Returns the report written to `training.json`.
pub fn run(
    opts: &TrainOptions,
    observer: &mut dyn FnMut(&log::Line),
) -> anyhow::Result<TrainingReport> {
    let started = Instant::now();
    claim_out(&opts.out, &opts.start, opts.overwrite)?;
    let Survey {
        corpus,
        split:
            split::Split {
                train: train_idx,
                held: held_idx,
                ..
            },
    } = {
        let survey = Survey::new(&opts.repos, &opts.corpus, opts.held_out)?;
        if opts.explain {
            eprint!("{}", survey.explain());
        }
        survey
    };
    let doc = |i: &usize| {
        corpus.files.get(*i).map(|f| Doc {
            text: f.text.clone(),
            language: Some(f.language.clone()),
        })
    };
    let train_docs: Vec<Doc> = train_idx.iter().filter_map(doc).collect();
    let held_docs: Vec<Doc> = held_idx.iter().filter_map(doc).collect();
    if train_docs.is_empty() {
        anyhow::bail!(
            "only {} source file(s) found: at least two are needed (one to train on, one held out)",
            corpus.files.len()
        );
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create the output folder", opts.out.display()))?;
    let probe = opts.out.join(".infill-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("{}: the output folder is not writable", opts.out.display()))?;
    let _ = std::fs::remove_file(probe);
    let ckpt_dir = opts.out.join("checkpoints");

    let Beginning {
        config,
        tokenizer_json,
        init,
        tied,
        origin,
        mut settings,
        checkpoint,
    } = begin(opts, &ckpt_dir, &train_docs)?;
    let tokenizer = Tokenizer::from_bytes(tokenizer_json.as_bytes(), config.vocab_size)?;
    // A window's inputs are `seq_len` tokens: positions 0..seq_len.
    if settings.seq_len > config.max_position_embeddings {
        eprintln!(
            "note: the model has positions for {} tokens, so its sequences are {} tokens, not {}",
            config.max_position_embeddings, config.max_position_embeddings, settings.seq_len
        );
        settings.seq_len = config.max_position_embeddings;
    }
    let mut trainer = Trainer::new(
        &config,
        tied,
        init,
        settings,
        &tokenizer,
        train_docs,
        &held_docs,
        &opts.device,
    )?;
    trainer.origin = origin;
    trainer.session_start = started;
    std::fs::create_dir_all(&ckpt_dir)?;
    if let Some(checkpoint) = checkpoint {
        resume(&mut trainer, &tokenizer, opts, checkpoint)?;
    } else {
        crate::files::write_atomic(&ckpt_dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    }
    let before = trainer.evaluate()?;
    let mut reporter = Reporter {
        file: std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.out.join("train.log"))?,
        observer,
    };
    reporter.report(log::Line::Start(log::Start {
        step: trainer.step,
        steps: trainer.settings.steps,
        tokens_seen: trainer.tokens_seen,
        elapsed_s: trainer.wall_seconds(),
        origin: trainer.origin.clone(),
        eval_every: trainer.settings.eval_every,
        checkpoint_every: trainer.settings.checkpoint_every,
        checkpoint_interval_s: opts.checkpoint_interval.as_secs_f64(),
        held_out: before.clone(),
    }))?;
    train_loop(&mut trainer, &tokenizer, opts, &ckpt_dir, &mut reporter)?;
    let interrupted = trainer.step < trainer.settings.steps;
    trainer.save_checkpoint(&ckpt_dir)?;
    let after = trainer.evaluate()?;
    reporter.report(log::Line::End(log::End {
        step: trainer.step,
        steps: trainer.settings.steps,
        tokens_seen: trainer.tokens_seen,
        elapsed_s: trainer.wall_seconds(),
        interrupted,
        held_out: after.clone(),
    }))?;
    if interrupted {
        eprintln!(
            "stopped at step {}; continue with: infill train --resume --out {} --repo ...",
            trainer.step,
            opts.out.display()
        );
    }
    write_model_dir(&opts.out, &trainer, &tokenizer_json)?;
    let report = TrainingReport {
        repos: opts.repos.iter().map(|r| r.display().to_string()).collect(),
        files_trained: train_idx.len(),
        files_held_out: held_idx.len(),
        held_out_share: opts.held_out,
        files_skipped: corpus.skipped.len(),
        bytes_trained: train_idx
            .iter()
            .filter_map(|&i| corpus.files.get(i))
            .map(|f| f.text.len())
            .sum(),
        start: trainer.origin.clone(),
        steps: trainer.step,
        tokens_seen: trainer.tokens_seen,
        wall_seconds: trainer.wall_seconds(),
        session_seconds: started.elapsed().as_secs_f64(),
        held_out_before: before,
        held_out_after: after,
        settings: trainer.settings.clone(),
        loss_curve: trainer.log.clone(),
        interrupted,
    };
    crate::files::write_atomic(
        &opts.out.join("training.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}

/// Writes the model in Hugging Face layout: config.json, tokenizer.json, model.safetensors.
///
/// A model trained from scratch declares the context it was trained at: rotary positions it never
/// saw make it worse, not better. A fine-tune keeps its model's.
pub fn write_model_dir(out: &Path, trainer: &Trainer, tokenizer_json: &str) -> anyhow::Result<()> {
    let mut config = trainer.config.clone();
    config.tie_word_embeddings = trainer.tied;
    if trainer.origin.starts_with(FROM_SCRATCH) {
        config.max_position_embeddings =
            config.max_position_embeddings.min(trainer.settings.seq_len);
    }
    crate::files::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config.to_hf_json())?.as_bytes(),
    )?;
    crate::files::write_atomic(&out.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    let tmp = out.join(".model.safetensors.tmp");
    candle_core::safetensors::save(&trainer.weights()?, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::planned_end;

    #[test]
    fn a_minutes_budget_plans_the_end_from_the_measured_step_time() {
        // A resumed run at step 1000, 3 steps in 6 s of a 60 s budget: 27 more steps.
        assert_eq!(planned_end(1003, 3, 6.0, 0.0, 60.0), Some(1030));
        // Between planning points the end stays where it is.
        assert_eq!(planned_end(1004, 4, 8.0, 0.0, 60.0), None);
        // Slower steps since (evaluations, a busy machine) pull the end in.
        assert_eq!(planned_end(1025, 25, 50.0, 0.0, 60.0), Some(1030));
        // Once the time is up the run ends at this step, whatever the plan said.
        assert_eq!(planned_end(1026, 26, 60.5, 0.0, 60.0), Some(1026));
        // With almost no time left there is still one more step to reach the floor.
        assert_eq!(planned_end(1050, 50, 59.9, 0.0, 60.0), Some(1051));
        // Three minutes packing the epoch in the first step are not the pace: 3 steps of 2 s
        // leave 567 more in a 22-minute cool-down, not 18.
        assert_eq!(planned_end(1003, 3, 186.0, 180.0, 1320.0), Some(1570));
    }
}
