//! Command-line arguments (clap derive). Each subcommand turns its raw arguments into validated
//! settings in `cmd/` before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::eval::tasks::Spread;
use crate::model::{DeviceSpec, FimOrder};
use crate::train::Preset;

/// Command-line names for choices the domain types make: the types themselves know nothing of
/// clap.
macro_rules! value_enum {
    ($ty:ty { $($variant:ident => $name:literal: $help:literal,)* }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Self::$variant),*]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(match self {
                    $(Self::$variant => clap::builder::PossibleValue::new($name).help($help),)*
                })
            }
        }
    };
}

value_enum!(FimOrder {
    Psm => "psm": "prefix, suffix, middle",
    Spm => "spm": "suffix, prefix, middle",
});

value_enum!(Preset {
    Tiny => "tiny": "~0.1M parameters: tests and smoke runs",
    Mini => "mini": "~3M parameters (vocabulary 4096): half the default's size",
    Small => "small": "~7M parameters (vocabulary 4096): the default model's size",
    Medium => "medium": "~14M parameters (vocabulary 4096): twice the default's size",
});

value_enum!(Spread {
    Files => "files": "every file alike: the tasks follow the corpus's mix of languages",
    Languages => "languages": "the languages in turn: about as many tasks per language",
});

#[derive(Debug, Parser)]
#[command(
    name = "infill",
    version,
    long_version = crate::model::embedded::LONG_VERSION,
    about = "Code completion in the terminal with a local fill-in-the-middle model"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// What goes to the log file ($XDG_STATE_HOME/infill/infill.log): what the model worker did
    /// for each proposal at debug, loading and saving at info.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn level(self) -> Option<tracing::Level> {
        match self {
            Self::Off => None,
            Self::Error => Some(tracing::Level::ERROR),
            Self::Warn => Some(tracing::Level::WARN),
            Self::Info => Some(tracing::Level::INFO),
            Self::Debug => Some(tracing::Level::DEBUG),
            Self::Trace => Some(tracing::Level::TRACE),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Edit a file with completions as you type (also: `infill FILE`).
    Edit(EditArgs),
    /// Serve completions and the probability overlay to an editor over the Language Server
    /// Protocol (stdio).
    Lsp(LspArgs),
    /// Print the text the model proposes to insert at a position of a file.
    Complete(CompleteArgs),
    /// Trim a proposal (from a file or stdin) to a syntactic boundary at a position of a file.
    Trim(TrimArgs),
    /// Fine-tune a model on your repositories (or train one from scratch).
    Train(TrainArgs),
    /// Show how probable the model finds every token of a file (GLTR-style colours) and the most
    /// surprising lines.
    Score(ScoreArgs),
    /// Measure completion quality on held-out code (or a task file), raw and trimmed.
    Eval(EvalArgs),
    /// Show the built-in default model and the models you trained, or export one (e.g. to bf16).
    Models {
        #[command(subcommand)]
        command: Option<ModelsCommand>,
    },
    /// Tokenizer tools.
    Tokenizer {
        #[command(subcommand)]
        command: TokenizerCommand,
    },
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The file to edit (created on the first save if it does not exist).
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Settings file (default: $XDG_CONFIG_HOME/infill/config.toml, if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Idle time in milliseconds before the model is asked (overrides the config).
    #[arg(long, value_name = "MS")]
    pub debounce_ms: Option<u64>,
    /// Edit without a model: no proposals.
    #[arg(long)]
    pub no_completions: bool,
}

#[derive(Debug, Args)]
pub struct LspArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Settings file; its [editor] max_tokens, min_confidence, exact_cache and memory apply
    /// (default: $XDG_CONFIG_HOME/infill/config.toml, if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Turn the probability overlay on from the start (the client can toggle it with the
    /// infill.overlay command).
    #[arg(long)]
    pub overlay: bool,
    /// Talk over standard input and output (the only transport; accepted because many clients
    /// pass it).
    #[arg(long)]
    pub stdio: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Write a copy of a model directory with its weights stored in another precision (bf16
    /// halves the size without changing what infill computes from them), or as one GGUF file for
    /// llama.cpp, ollama and LM Studio.
    Export(ExportArgs),
    /// Bring a run of the scale-out trainer (scale/, infill_scale) back as a model directory:
    /// its LoRA adapter merged into the base model, or its fully trained model, checked to load.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The run directory (infill_scale's --out), or a LoRA adapter folder (peft's).
    pub run: PathBuf,
    /// Where to write the model: a new or empty directory.
    #[arg(long)]
    pub out: PathBuf,
    /// The base model of a LoRA adapter (default: the one the run recorded).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub base: Option<String>,
    /// Storage precision of the weights (default: as the base stores them).
    #[arg(long, value_enum)]
    pub dtype: Option<StorageDtype>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model directory to copy.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Where to write the copy: a new or empty directory, or a file for --format gguf.
    #[arg(long)]
    pub out: PathBuf,
    /// The format of the copy (default: gguf when --out ends in .gguf, else hf).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Storage precision of the copy's weights (default: bf16 for hf, q8_0 for gguf).
    #[arg(long, value_enum)]
    pub dtype: Option<StorageDtype>,
    /// The context (tokens) the copy declares: the length it was trained at, when its config
    /// says more (prompts longer than that make a model worse).
    #[arg(long, value_name = "TOKENS")]
    pub context: Option<usize>,
    /// The prompt order the copy records as the one it completes best in (`infill_fim_order` in
    /// config.json; compare both with `infill eval --fim-order`).
    #[arg(long, value_enum)]
    pub fim_order: Option<FimOrder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageDtype {
    F32,
    F16,
    Bf16,
    /// GGUF only: 8-bit blocks (llama.cpp's Q8_0).
    #[value(name = "q8_0")]
    Q8_0,
    /// GGUF only: 4-bit blocks (Q4_0).
    #[value(name = "q4_0")]
    Q4_0,
    /// GGUF only: llama.cpp's Q4_K_M mix (Q4_K, with Q6_K where it matters most).
    #[value(name = "q4_k")]
    Q4K,
    /// GGUF only: llama.cpp's Q5_K_M mix.
    #[value(name = "q5_k")]
    Q5K,
    /// GGUF only: Q6_K.
    #[value(name = "q6_k")]
    Q6K,
}

/// The file format `infill models export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A Hugging Face directory (config.json, tokenizer.json, model.safetensors).
    Hf,
    /// One GGUF file, for llama.cpp, ollama and LM Studio.
    Gguf,
}

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer with the FIM special tokens.
    Train(TokenizerTrainArgs),
}

#[derive(Debug, Args)]
pub struct TokenizerTrainArgs {
    /// Folders of source code to learn from (the training corpus filters apply).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Keep only files whose package declares a permissive licence (as `infill train`).
    #[arg(long)]
    pub permissive_only: bool,
    /// Where to write tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Repositories to learn from (repeatable).
    #[arg(long, required_unless_present = "watch", num_args = 1..)]
    pub repo: Vec<PathBuf>,
    /// Draw the run going on in RUN_DIR (the --out of an `infill train` in another terminal, or
    /// a folder another machine's run writes) instead of training; q stops watching, not the run.
    /// With --plain or no terminal, prints its train.log lines as they come until the run ends.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "dry_run", "resume"])]
    pub watch: Option<PathBuf>,
    /// Report progress as train.log's JSON lines on stderr instead of the dashboard (the default
    /// when stderr is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// Output model directory (Hugging Face layout; pass it to --model).
    #[arg(long, required_unless_present_any = ["dry_run", "watch", "export"])]
    pub out: Option<PathBuf>,
    /// Instead of training, write what training would learn from (the same files, split, FIM
    /// examples and tokens, for --init's tokenizer) to DIR as token shards and a manifest, for
    /// the scale-out trainer (scale/: transformers on GPUs). Run again, it finishes an export that
    /// was cut short.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "watch", "resume", "from_scratch", "dry_run"])]
    pub export: Option<PathBuf>,
    /// With --export: epochs to write, each with fresh FIM holes (default 1).
    #[arg(long, requires = "export")]
    pub epochs: Option<u64>,
    /// With --export: shards per epoch, packed side by side (default: one per 32 MiB of text).
    #[arg(long, requires = "export")]
    pub shards: Option<usize>,
    /// Read and filter the repositories, say what training would use (file by file with
    /// --explain), and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after about this many minutes: the learning-rate schedule is planned to end then,
    /// from the measured step time (with --resume: this many minutes from now).
    #[arg(long, conflicts_with = "steps")]
    pub minutes: Option<f64>,
    /// Optimizer steps (default 300 when --minutes is not given; with --resume, the run's new total).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Model to fine-tune: a directory or hub id (default: the built-in model).
    #[arg(long, value_name = "DIR|HUB_ID", conflicts_with_all = ["from_scratch", "resume"])]
    pub init: Option<String>,
    /// Train a new model and tokenizer instead of fine-tuning.
    #[arg(long, conflicts_with = "resume")]
    pub from_scratch: bool,
    /// Model shape for --from-scratch.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    /// With --from-scratch: use this tokenizer.json instead of training one (for example the
    /// default model's, to compare model sizes on one vocabulary).
    #[arg(long, value_name = "FILE", requires = "from_scratch")]
    pub tokenizer: Option<PathBuf>,
    /// Continue the run checkpointed in --out.
    #[arg(long)]
    pub resume: bool,
    /// Replace the model or run already in --out (its checkpoints and log go too), or the
    /// dataset of other settings in --export.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// List the files used and skipped, and why.
    #[arg(long)]
    pub explain: bool,
    /// Keep only files whose package declares a permissive licence (MIT, Apache-2.0, BSD, ISC,
    /// PSF, ...: a Cargo.toml, package.json, Python dist-info or LICENSE file says so); for a
    /// model that will be shipped. Files with no declaration are left out.
    #[arg(long)]
    pub permissive_only: bool,
    /// Train on at most this many MB of each package (a repository's top-level folder, or a
    /// file at its top), spread over its files: keeps a few large packages from making up most
    /// of the corpus. Held-out files are not affected.
    #[arg(long, value_name = "MB")]
    pub package_cap_mb: Option<f64>,
    /// Tokens per training sequence, the context the model learns (default 256; with --resume,
    /// the run's own unless given, at most the model's positions; with --export, the model's
    /// context up to 1,024).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences per step (default 4; with --resume, the run's own unless given). Each step
    /// splits its sequences across the cores, so a batch of at least one per core uses them all.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 1).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate; the schedule decays to a tenth of it (default 3e-4 fine-tuning, 1e-3
    /// from scratch; with --resume, the run's own unless given: a lower one cools a long run down).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of files held out for evaluation (by a hash of the path).
    #[arg(long, default_value_t = 0.05)]
    pub held_out: f64,
    /// Share of documents made into FIM examples (default 0.9 fine-tuning, 0.5 from scratch;
    /// with --resume, the run's own unless given).
    #[arg(long)]
    pub fim_rate: Option<f64>,
    /// Share of FIM examples in SPM order, the rest PSM (default 0.5; with --resume, the run's
    /// own unless given). infill prompts a model trained by infill in SPM order.
    #[arg(long)]
    pub spm_rate: Option<f64>,
    /// Held-out evaluation every this many steps (default 50).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// A checkpoint every this many steps (default 100).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Also checkpoint whenever this many minutes passed since the last checkpoint.
    #[arg(long, default_value_t = 2.0, value_name = "MINUTES")]
    pub checkpoint_minutes: f64,
    /// Where to train: cpu, cuda, cuda:N or metal (a GPU needs infill built with
    /// `--features cuda` or `metal`). Bigger models train on scale/'s trainer instead.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]|metal")]
    pub device: DeviceSpec,
}

/// A cursor in a file, shared by the commands that work at one.
#[derive(Debug, Clone, Args)]
pub struct PositionArgs {
    /// The file.
    #[arg(long)]
    pub file: PathBuf,
    /// 1-based line of the cursor.
    #[arg(long)]
    pub line: usize,
    /// 1-based column of the cursor, in characters.
    #[arg(long)]
    pub column: usize,
    /// The file's language (default: from its extension; see grammars/languages.toml).
    #[arg(long)]
    pub language: Option<String>,
}

/// Which model to run, shared by every subcommand that runs one.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model directory in Hugging Face layout, or a hub repo id (e.g. Qwen/Qwen2.5-Coder-0.5B).
    /// Without it the default model built into infill is used.
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,
    /// A LoRA adapter for --model (the adapter/ folder of an infill_scale run, or any peft LoRA
    /// adapter): merged into a copy of the model in infill's cache the first time, then loaded
    /// from there. The editor applies it at run time instead, and takes several: F7 switches
    /// between them and the base model without loading it again.
    #[arg(long, value_name = "DIR")]
    pub adapter: Vec<PathBuf>,
    /// Precision of the weights in memory. auto: bf16 when a Qwen2/Llama-family checkpoint stores
    /// bf16 weights (lossless, about twice as fast to decode on CPU), f32 otherwise. StarCoder2
    /// and GPT-BigCode run in f32 only. A GGUF file's quantized weights run in their own type, its
    /// 16-bit ones in bf16 unless f32 is asked for.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub dtype: Precision,
    /// Where the model runs: cpu, cuda, cuda:N (the N-th GPU) or metal. A GPU needs infill built
    /// with `--features cuda` (or `metal`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]|metal")]
    pub device: DeviceSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    Auto,
    F32,
    F16,
    Bf16,
}

/// How tokens are chosen and when generation stops.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// 0 is greedy (the most probable token every time).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most probable tokens (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only among the most probable tokens whose probabilities add up to P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many generated tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Stop after this many milliseconds (prompt included).
    #[arg(long, value_name = "MS")]
    pub time_budget_ms: Option<u64>,
    /// Prompt plus completion stay within this many tokens (default: the model's context).
    #[arg(long, value_name = "TOKENS")]
    pub context: Option<usize>,
    /// Order of prefix and suffix in the prompt (default: the one the model's config.json records
    /// as `infill_fim_order`, else psm).
    #[arg(long, value_enum)]
    pub fim_order: Option<FimOrder>,
    /// Alternatives recorded per generated token (--json).
    #[arg(long, default_value_t = 5)]
    pub top_alternatives: usize,
    /// Leave token healing off: the prompt ends exactly at the cursor instead of one token
    /// earlier, with generation made to begin by writing that token again.
    #[arg(long)]
    pub no_heal: bool,
    /// Let the model end its proposal before it has written anything but whitespace (by
    /// default its end tokens are passed over until then).
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    /// Print the completion, every token with its probability, and timings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show the model's raw proposal, not trimmed to a syntactic boundary.
    #[arg(long)]
    pub no_trim: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Args)]
pub struct TrimArgs {
    #[command(flatten)]
    pub position: PositionArgs,
    /// File holding the raw proposal (default: standard input).
    #[arg(long)]
    pub proposal_file: Option<PathBuf>,
    /// Print {trimmed, raw, reason, language} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Repositories whose held-out files (the training split) become tasks.
    #[arg(long, num_args = 1.., required_unless_present_any = ["tasks_file", "dataset"])]
    pub repo: Vec<PathBuf>,
    /// The held-out files of a dataset `infill train --export` wrote: its repositories, held-out
    /// share and licence filter, so a model trained on it (by scale/) is measured on exactly the
    /// files it never saw.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tasks_file", "repo", "held_out", "permissive_only"])]
    pub dataset: Option<PathBuf>,
    /// HumanEval-infilling JSONL tasks instead of repository tasks.
    #[arg(long, conflicts_with = "repo")]
    pub tasks_file: Option<PathBuf>,
    /// Language of the task file's code (for trimming and syntax checks). Default: each task's
    /// `language` field, else a language the file's name gives (`humaneval-rust.jsonl`), else
    /// python.
    #[arg(long, value_name = "LANGUAGE", requires = "tasks_file")]
    pub tasks_language: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// A second model to compare with (directory or hub id).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub baseline: Option<String>,
    /// How many repository tasks to build.
    #[arg(long, default_value_t = 500)]
    pub tasks: usize,
    /// How repository tasks are spread over the held-out files.
    #[arg(long, value_enum, default_value_t = Spread::Files)]
    pub spread: Spread,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of files held out (must match training's).
    #[arg(long, default_value_t = 0.05)]
    pub held_out: f64,
    /// The corpus filter of a model trained with --permissive-only (must match training's).
    #[arg(long, conflicts_with = "tasks_file")]
    pub permissive_only: bool,
    /// Run each task's tests with this interpreter (e.g. python3) and report pass@1.
    #[arg(long, value_name = "PROGRAM")]
    pub exec: Option<String>,
    /// Seconds before a task's test run is killed.
    #[arg(long, default_value_t = 10.0)]
    pub exec_timeout: f64,
    /// Use only the first N tasks.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only tasks whose id contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Kilobytes of held-out files per language read left to right for bits per byte, the
    /// measure most sensitive to a fine-tune (0: skip).
    #[arg(long, value_name = "KB", default_value_t = 64)]
    pub score_kb: usize,
    /// Write every task and result here as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the results as a self-contained HTML page with charts: exact match and edit
    /// similarity per task kind with 95% intervals (and the baseline), raw against trimmed, the
    /// first token's calibration, latency histograms and the worst proposals.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print the report as Markdown.
    #[arg(long)]
    pub markdown: bool,
    /// Stop each completion after this many tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Cut trimmed proposals before their first token less probable than this (the editor's
    /// `min_confidence`; 0 keeps everything), to measure whether the cut helps.
    #[arg(long, default_value_t = 0.0)]
    pub min_confidence: f32,
    /// Order of prefix and suffix in the prompts (default: the model's, as for `complete`).
    #[arg(long, value_enum)]
    pub fim_order: Option<FimOrder>,
    /// Leave token healing off (the prompt then ends exactly at the cursor), to measure what it
    /// brings.
    #[arg(long)]
    pub no_heal: bool,
    /// Let the model end a proposal before it has written anything but whitespace, to measure
    /// what passing over those early end tokens brings.
    #[arg(long)]
    pub allow_empty: bool,
    /// Run each task as the keystroke after its prefix less its last character, on the cache
    /// that prompt left: what the editor does as someone types.
    #[arg(long)]
    pub typed: bool,
    /// Compute every prompt exactly: never reuse the keys and values after a change out of place
    /// (rotated to their new positions), as a keystroke in a PSM prompt otherwise does.
    #[arg(long)]
    pub exact_cache: bool,
    /// Compare with the same model (or --baseline's) computing every prompt exactly, to measure
    /// what reusing keys and values out of place costs (with --typed).
    #[arg(long)]
    pub baseline_exact_cache: bool,
    /// Repository memory, from an index of the training split's files (never a held-out one),
    /// compared with the same model without it (unless --baseline names another).
    #[arg(long, value_enum, default_value_t = MemoryMode::Off, conflicts_with = "tasks_file")]
    pub memory: MemoryMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryMode {
    Off,
    /// Mix what followed the longest match in the index into every generated token (weights
    /// fitted on a slice of the files).
    Index,
    /// Put the most relevant code of other files before the prompt, in the repository-level
    /// format (for models whose vocabulary has `<|repo_name|>` and `<|file_sep|>`).
    Prompt,
    /// Both.
    Both,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The file to score.
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Every token with byte range, text, id, logprob, rank, entropy and alternatives, as JSON.
    #[arg(long)]
    pub json: bool,
    /// Tokens per forward pass (capped by the model's context).
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Tokens the window advances by (default: half a window, so every token keeps at least half a
    /// window of left context).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Alternatives recorded per token (--json, --html).
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Score each line as the middle between the rest of the file (prefix and suffix): per-line
    /// surprisal that accounts for the code after it.
    #[arg(long)]
    pub fim: bool,
    /// Tokens of context around each line with --fim.
    #[arg(long, default_value_t = 256, value_name = "TOKENS")]
    pub fim_context: usize,
    /// Write the view as a self-contained HTML page to send to someone: each token coloured by
    /// rank, its probability, rank, entropy and alternatives on hover, each line's --fim
    /// surprisal as a bar in the margin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "fim"])]
    pub html: Option<PathBuf>,
}
