//! The model on its own thread, so the editor never waits for it.
//!
//! The editor and the language server send [`Request`]s; each carries an id and a cancel flag.
//! The newest request wins: requests still queued behind a newer one are skipped, and the sender
//! sets the cancel flag of the one in flight as soon as the text changes, which stops generation
//! at the next token. Replies carry the request id, so a reply for text that has changed since is
//! dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::complete::{self, LineScore, Settings};
use crate::memory::{self, Memory};
use crate::model::Model;
use crate::model::generate::{Flow, GeneratedToken, StopReason};
use crate::model::score::TokenScore;
use crate::model::score::chunked::ChunkScorer;
use crate::syntax::{Language, Trimmer};
use crate::text::Cursor;

/// A completion to compute: the text around the cursor and how to complete it.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u64,
    /// Text before the cursor (already cut to what the prompt can use).
    pub prefix: String,
    /// Text after the cursor.
    pub suffix: String,
    pub language: Option<&'static Language>,
    pub settings: Settings,
    /// What is sent while the proposal streams.
    pub preview: Preview,
    /// Set by the editor when this request is no longer wanted.
    pub cancel: Arc<AtomicBool>,
}

/// What the worker sends ([`Reply::Partial`]) while a proposal streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preview {
    /// The proposal so far trimmed, each time that changes: the editor's ghost text as it grows
    /// (a parse per token).
    Trimmed,
    /// The raw text so far, for a caller that trims it only if it needs it (the language server
    /// answers with it only when a request's deadline passes first).
    Raw,
}

impl Request {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Scores for the probability overlay: every token of `text` (chunks unchanged since an earlier
/// request come from the worker's cache, see [`ChunkScorer`]).
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub id: u64,
    pub text: String,
    pub cancel: Arc<AtomicBool>,
}

/// The lines of `text` the model finds most surprising between the code around them, and what it
/// would have written in their place.
#[derive(Debug, Clone)]
pub struct LinesRequest {
    pub id: u64,
    pub text: String,
    pub language: Option<&'static Language>,
    /// Tokens of context around each line.
    pub budget: usize,
    /// How many of the most surprising lines get the model's own version.
    pub suggest: usize,
    pub cancel: Arc<AtomicBool>,
}

/// A scored line, with what the model would have written there (when it differs).
#[derive(Debug, Clone)]
pub struct SurprisingLine {
    pub score: LineScore,
    /// Byte range of the line's text (without its break) in the request's text.
    pub start: usize,
    pub end: usize,
    pub instead: Option<String>,
}

/// Repository memory for the model: the files under `roots` indexed under its tokenizer, with
/// weights fitted by its own probabilities (see [`crate::memory`]).
#[derive(Debug, Clone)]
pub struct MemoryRequest {
    pub id: u64,
    pub roots: Vec<std::path::PathBuf>,
    /// infill's cache folder, where the memory is kept between runs (none: built every time).
    pub cache: Option<std::path::PathBuf>,
    /// The memory of these roots before (a refresh after a save): only what changed since is
    /// indexed again.
    pub previous: Option<Arc<Memory>>,
    /// Walk the roots for files changed on disk (false: only `texts` change `previous`).
    pub walk: bool,
    /// Open buffers' text (absolute paths), which counts instead of the files on disk.
    pub texts: Vec<(std::path::PathBuf, String)>,
    pub cancel: Arc<AtomicBool>,
}

/// A LoRA adapter to apply to the model at run time, in place of the one before (`None`: the
/// base model alone). Proposals and scores after it are the adapted model's.
#[derive(Debug, Clone)]
pub struct AdapterRequest {
    pub id: u64,
    /// The adapter's folder (peft's `adapter_config.json` and `adapter_model.safetensors`).
    pub dir: Option<std::path::PathBuf>,
}

/// Work for the model thread.
#[derive(Debug, Clone)]
pub enum Job {
    Complete(Request),
    Score(ScoreRequest),
    Lines(LinesRequest),
    Memory(MemoryRequest),
    Adapter(AdapterRequest),
}

impl Job {
    pub fn id(&self) -> u64 {
        match self {
            Self::Complete(r) => r.id,
            Self::Score(r) => r.id,
            Self::Lines(r) => r.id,
            Self::Memory(r) => r.id,
            Self::Adapter(r) => r.id,
        }
    }

    fn is_cancelled(&self) -> bool {
        match self {
            Self::Complete(r) => r.is_cancelled(),
            Self::Score(r) => r.cancel.load(Ordering::Relaxed),
            Self::Lines(r) => r.cancel.load(Ordering::Relaxed),
            Self::Memory(r) => r.cancel.load(Ordering::Relaxed),
            Self::Adapter(_) => false,
        }
    }
}

/// A finished proposal and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The trimmed text to show.
    pub text: String,
    pub tokens: usize,
    /// From receiving the request to the first generated token.
    pub first_token_ms: f64,
    pub total_ms: f64,
    pub tokens_per_second: f64,
    pub stop: StopReason,
    /// Per generated token inside `text`: (byte where it ends in `text`, its probability).
    pub confidence: Vec<(usize, f32)>,
    /// The prompt's tokens, those served from the cache, and of those the ones reused out of
    /// place (keys rotated to new positions after a change before them).
    pub cache: CacheUse,
    /// How much of the proposal repository memory gave: the mean share of its tokens'
    /// probability that came from it (0 without memory).
    pub from_memory: f32,
    /// Where a proposal that came mostly from memory was found.
    pub source: Option<Source>,
}

/// A place in the repository: a file and a line (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: std::path::PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// How a proposal's prompt used the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub shifted_tokens: usize,
}

/// What the worker tells the editor.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The model is loaded and answers requests.
    Ready {
        model: String,
    },
    /// No model could be loaded; the editor works without completions.
    Unavailable {
        message: String,
    },
    /// The proposal so far (trimmed), while generation goes on.
    Partial {
        id: u64,
        text: String,
    },
    Done {
        id: u64,
        proposal: Proposal,
    },
    /// Scores of tokens `from..from + tokens.len()` of a score request's text; the first reply of a
    /// request says (by `from`) how many of the kept tokens stay valid.
    Scored {
        id: u64,
        from: usize,
        tokens: Vec<TokenScore>,
    },
    /// A score request is complete.
    ScoreDone {
        id: u64,
        tokens_per_second: f64,
        ms: f64,
    },
    /// A lines request's result: every scored line, the most surprising first.
    Lines {
        id: u64,
        lines: Vec<SurprisingLine>,
    },
    /// A memory request's result: the memory, the files it holds and how long it took.
    Memory {
        id: u64,
        memory: Arc<Memory>,
        files: usize,
        seconds: f64,
    },
    /// An adapter request is done: the model is the adapted one (or the base) from now on.
    Adapter {
        id: u64,
    },
    Failed {
        id: u64,
        message: String,
    },
}

/// Where the model comes from: loading runs on the worker thread, so the editor opens at once.
pub type Loader = Box<dyn FnOnce() -> anyhow::Result<Model> + Send>;

/// The handle the editor keeps.
#[derive(Debug)]
pub struct Worker {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// How the worker uses its KV cache.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// Keep the KV cache between requests that share a token prefix (the default).
    pub reuse_cache: bool,
    /// Reuse cached keys and values out of place after a change, as a keystroke in a PSM prompt
    /// needs (the default; off with the editor's `exact_cache`).
    pub shift_reuse: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            reuse_cache: true,
            shift_reuse: true,
        }
    }
}

impl Worker {
    /// Starts the thread: it loads the model, then answers requests until the handle is dropped.
    pub fn spawn(
        load: Loader,
        options: WorkerOptions,
        reply: impl Fn(Reply) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("infill-model".into())
            .spawn(move || serve(load, options, &inbox, &reply))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues a job; a newer one of the same kind submitted before this starts replaces it.
    pub fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // A dead worker already said why (Unavailable or Failed); nothing more to do here.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None;
        // Generation stops at the next token once the editor cancels; don't wait for a long load.
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// Idle time after which the worker starts recomputing keys and values reused out of place.
const REFRESH_AFTER: Duration = Duration::from_millis(300);
/// Tokens recomputed per refresh step: about 0.1-0.3 s for a 0.5B model on two cores.
const REFRESH_CHUNK: usize = 32;

fn serve(load: Loader, options: WorkerOptions, inbox: &Receiver<Job>, reply: &dyn Fn(Reply)) {
    // A loader that panics (a bug, a corrupt file candle trips on) must still leave a reason.
    let loaded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|panic| {
            Err(anyhow::anyhow!(
                "internal error while loading: {}",
                panic_text(&*panic)
            ))
        });
    let mut model = match loaded {
        Ok(m) => m,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            tracing::warn!("no model: {}", chain.join(": "));
            reply(Reply::Unavailable {
                message: chain.join(": "),
            });
            return;
        }
    };
    model.network.set_shift_reuse(options.shift_reuse);
    reply(Reply::Ready {
        model: model.name.clone(),
    });
    let mut scorer = ChunkScorer::default();
    // Adapters read once, for switching back and forth.
    let mut adapters = Adapters::default();
    // The newest job of each kind wins; a completion (someone is waiting at the cursor) goes first.
    let mut queue = Queue::default();
    // Set once typing has paused long enough to start refreshing the cache.
    let mut refreshing = false;
    loop {
        if queue.is_empty() {
            if model.network.needs_refresh() {
                // Keys and values reused out of place are recomputed exactly while nobody types,
                // a chunk at a time so the next keystroke waits for one chunk at most.
                let pause = if refreshing {
                    Duration::ZERO
                } else {
                    REFRESH_AFTER
                };
                match inbox.recv_timeout(pause) {
                    Ok(job) => {
                        refreshing = false;
                        queue.keep_newest(job);
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        refreshing = true;
                        if let Err(e) = model.network.refresh_step(REFRESH_CHUNK) {
                            tracing::warn!("refreshing the cache: {e}");
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                refreshing = false;
                match inbox.recv() {
                    Ok(job) => queue.keep_newest(job),
                    Err(_) => return,
                }
            }
        }
        while let Ok(job) = inbox.try_recv() {
            queue.keep_newest(job);
        }
        let Some(job) = queue.next() else {
            continue;
        };
        if job.is_cancelled() {
            continue;
        }
        let id = job.id();
        if !options.reuse_cache
            && let Err(e) = model.network.reset()
        {
            reply(Reply::Failed {
                id,
                message: e.to_string(),
            });
            continue;
        }
        // A bug in generation must not take the editor down: report it and start clean.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job {
            Job::Complete(r) => run(&mut model, r, reply),
            Job::Score(r) => run_score(&model, &mut scorer, r, reply),
            Job::Lines(r) => run_lines(&mut model, r, reply),
            Job::Memory(r) => run_memory(&mut model, r, reply),
            Job::Adapter(r) => {
                // Scores kept from the model before are not the adapted model's.
                scorer = ChunkScorer::default();
                adapters.apply(&mut model, r, reply);
            }
        }));
        if let Err(panic) = outcome {
            let what = panic_text(&*panic);
            tracing::error!("job {id}: the model worker panicked: {what}");
            let _ = model.network.reset();
            reply(Reply::Failed {
                id,
                message: format!("internal error in the model worker: {what}"),
            });
        }
    }
}

/// The message a panic carried.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Adapters by folder, read the first time they are asked for.
#[derive(Default)]
struct Adapters {
    read: std::collections::HashMap<std::path::PathBuf, crate::model::adapter::Adapter>,
}

impl Adapters {
    fn apply(&mut self, model: &mut Model, request: &AdapterRequest, reply: &dyn Fn(Reply)) {
        let id = request.id;
        let outcome = match &request.dir {
            None => model.network.clear_lora().map_err(anyhow::Error::from),
            Some(dir) => {
                let adapter = match self.read.entry(dir.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        crate::model::adapter::Adapter::read(dir).map(|a| e.insert(a))
                    }
                };
                adapter.and_then(|a| a.apply(&mut model.network))
            }
        };
        match outcome {
            Ok(()) => {
                tracing::info!(
                    "adapter: {}",
                    request
                        .dir
                        .as_ref()
                        .map_or("none (the base model)".into(), |d| d.display().to_string())
                );
                reply(Reply::Adapter { id });
            }
            Err(e) => reply(Reply::Failed {
                id,
                message: format!("{e:#}"),
            }),
        }
    }
}

/// The newest job of each kind, waiting for the model.
#[derive(Default)]
struct Queue {
    /// Before anything else: every job after it is for the adapted model.
    adapter: Option<AdapterRequest>,
    complete: Option<Request>,
    score: Option<ScoreRequest>,
    lines: Option<LinesRequest>,
    memory: Option<MemoryRequest>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.adapter.is_none()
            && self.complete.is_none()
            && self.score.is_none()
            && self.lines.is_none()
            && self.memory.is_none()
    }

    fn keep_newest(&mut self, job: Job) {
        match job {
            Job::Adapter(r) => self.adapter = Some(r),
            Job::Complete(r) => self.complete = Some(r),
            Job::Score(r) => self.score = Some(r),
            Job::Lines(r) => self.lines = Some(r),
            // A walk still to do is not dropped for a newer request that only brings
            // buffers' text: the newer one walks too.
            Job::Memory(mut r) => {
                r.walk |= self.memory.as_ref().is_some_and(|old| old.walk);
                self.memory = Some(r);
            }
        }
    }

    /// An adapter first (what follows is for the adapted model), then a completion (someone
    /// waits at the cursor), then the overlay's scores, then lines.
    fn next(&mut self) -> Option<Job> {
        self.adapter
            .take()
            .map(Job::Adapter)
            .or_else(|| self.complete.take().map(Job::Complete))
            .or_else(|| self.score.take().map(Job::Score))
            .or_else(|| self.lines.take().map(Job::Lines))
            .or_else(|| self.memory.take().map(Job::Memory))
    }
}

/// Source indexed at most (in path order): about 20M tokens, an index of about 160 MB.
const MEMORY_MAX_BYTES: usize = 64 << 20;

/// Tokens of the repository's files scored to fit the memory's weights: enough to fit the short
/// matches well, few enough that a large model is not kept from completing for long.
const MEMORY_FIT_TOKENS: usize = 2048;

/// Builds repository memory from every file of the roots (the training corpus's walk and
/// filters), as [`memory::open`] does: from the memory before or the store where they hold it.
fn run_memory(model: &mut Model, request: &MemoryRequest, reply: &dyn Fn(Reply)) {
    let started = Instant::now();
    let store = request
        .cache
        .as_deref()
        .map(|c| memory::Store::new(c, &request.roots));
    let built = (|| -> anyhow::Result<(Memory, usize)> {
        let memory = match (&request.previous, request.walk) {
            (Some(previous), false) => (**previous).clone(),
            _ => {
                let opened = open_memory(model, request, store.as_ref())?;
                // What the store gets is the files on disk, never a buffer's unsaved text.
                let worth_storing = request.previous.is_none()
                    || opened.memory.documents().changed_tokens() * 8
                        > opened.memory.documents().len();
                if let (true, true, Some(store)) = (opened.unsaved, worth_storing, store) {
                    let key = memory::tokenizer_key(&model.tokenizer);
                    let documents = opened.memory.documents().clone();
                    // Folding the changes into one index takes a while: a thread of its own,
                    // while the memory serves as it is.
                    std::thread::spawn(move || {
                        if let Err(e) = store.save(&documents, key) {
                            tracing::warn!("repository memory: not stored: {e:#}");
                        }
                    });
                }
                opened.memory
            }
        };
        // Open buffers' text as it is now, where it differs from what the memory holds.
        let known: std::collections::HashMap<&std::path::Path, u64> =
            memory.documents().hashes().collect();
        let changes: Vec<_> = request
            .texts
            .iter()
            .filter(|(path, text)| {
                known.get(path.as_path()) != Some(&crate::hash::fnv1a(text.as_bytes()))
            })
            .map(|(path, text)| memory::change(&model.tokenizer, path, text))
            .collect();
        let mut memory = if changes.is_empty() {
            memory
        } else {
            memory.with_changes(changes)
        };
        // Every change re-indexes all the changed files: once they are a quarter of the whole,
        // one new base costs less than carrying them on.
        if memory.documents().changed_tokens() * 4 > memory.documents().len() {
            memory = memory.compacted();
        }
        let files = memory.documents().files();
        Ok((memory, files))
    })();
    if request.cancel.load(Ordering::Relaxed) {
        return;
    }
    match built {
        Ok((memory, files)) => {
            let seconds = started.elapsed().as_secs_f64();
            reply(Reply::Memory {
                id: request.id,
                memory: Arc::new(memory),
                files,
                seconds,
            });
        }
        Err(e) => reply(Reply::Failed {
            id: request.id,
            message: format!("repository memory: {e}"),
        }),
    }
}

/// The roots' files walked (the training corpus's walk and filters) and remembered, from the
/// memory before or the store where they hold them.
fn open_memory(
    model: &mut Model,
    request: &MemoryRequest,
    store: Option<&memory::Store>,
) -> anyhow::Result<memory::Opened> {
    let started = Instant::now();
    let mut files: Vec<(std::path::PathBuf, String)> = Vec::new();
    let mut bytes = 0;
    'roots: for root in &request.roots {
        let root = std::path::absolute(root)?;
        let corpus =
            crate::train::corpus::collect(std::slice::from_ref(&root), Default::default())?;
        for f in corpus.files {
            bytes += f.text.len();
            if bytes > MEMORY_MAX_BYTES {
                break 'roots;
            }
            files.push((root.join(&f.path), f.text));
        }
    }
    let files: Vec<memory::File> = files
        .iter()
        .map(|(path, text)| memory::File { path, text })
        .collect();
    let opened = memory::open(
        model,
        &files,
        store,
        request.previous.as_deref(),
        MEMORY_FIT_TOKENS,
    )?;
    tracing::info!(
        "repository memory: {} files ({} unchanged, {} tokenized), {} tokens, in {:.2} s; weights {:?}{}",
        files.len(),
        opened.reused,
        opened.tokenized,
        opened.memory.documents().len(),
        started.elapsed().as_secs_f64(),
        opened.memory.weights(),
        if opened.fitted { " (fitted now)" } else { "" },
    );
    Ok(opened)
}

/// Scores every line between the code around it, then asks the model for its own version of the
/// most surprising ones.
fn run_lines(model: &mut Model, request: &LinesRequest, reply: &dyn Fn(Reply)) {
    let cancel = Some(request.cancel.as_ref());
    let text = &request.text;
    let scored = match complete::score_lines_fim(model, text, request.budget, cancel, |_, _| {}) {
        Ok(lines) => lines,
        Err(e) => {
            reply(Reply::Failed {
                id: request.id,
                message: format!("scoring lines failed: {e}"),
            });
            return;
        }
    };
    let starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut lines: Vec<SurprisingLine> = scored
        .into_iter()
        .filter_map(|score| {
            let start = *starts.get(score.line - 1)?;
            let end = starts.get(score.line).map_or(text.len(), |next| next - 1);
            Some(SurprisingLine {
                score,
                start,
                end,
                instead: None,
            })
        })
        .collect();
    lines.sort_by(|a, b| b.score.surprise().total_cmp(&a.score.surprise()));
    let settings = Settings::interactive(crate::model::generate::Sampling::default(), 32, 0.0);
    for line in lines.iter_mut().take(request.suggest) {
        if request.cancel.load(Ordering::Relaxed) {
            return;
        }
        let own = text.get(line.start..line.end).unwrap_or_default();
        let at = line.start + (own.len() - own.trim_start().len());
        let written = text.get(at..line.end).unwrap_or_default();
        let mut rest = String::with_capacity(text.len());
        rest.push_str(crate::text::before(text, at));
        rest.push_str(crate::text::from(text, line.end));
        let Some(cursor) = Cursor::from_byte(&rest, at) else {
            continue;
        };
        let proposal = complete::complete(
            model,
            &rest,
            cursor,
            request.language,
            &settings,
            cancel,
            |_: &GeneratedToken, _: &str| Flow::Continue,
        );
        if let Ok(c) = proposal {
            let first = c.text.lines().next().unwrap_or_default().trim_end();
            if !first.trim().is_empty() && first != written.trim_end() {
                line.instead = Some(first.to_owned());
            }
        }
    }
    if !request.cancel.load(Ordering::Relaxed) {
        reply(Reply::Lines {
            id: request.id,
            lines,
        });
    }
}

fn run_score(
    model: &Model,
    scorer: &mut ChunkScorer,
    request: &ScoreRequest,
    reply: &dyn Fn(Reply),
) {
    let started = Instant::now();
    let result = scorer.score(
        model,
        &request.text,
        5,
        Some(&request.cancel),
        |from, tokens| {
            reply(Reply::Scored {
                id: request.id,
                from,
                tokens: tokens.to_vec(),
            });
        },
    );
    match result {
        Ok(Some(computed)) => {
            let s = started.elapsed().as_secs_f64();
            reply(Reply::ScoreDone {
                id: request.id,
                tokens_per_second: if s > 0.0 { computed as f64 / s } else { 0.0 },
                ms: s * 1e3,
            });
        }
        Ok(None) => {}
        Err(e) => reply(Reply::Failed {
            id: request.id,
            message: format!("scoring failed: {e}"),
        }),
    }
}

fn run(model: &mut Model, request: &Request, reply: &dyn Fn(Reply)) {
    let started = Instant::now();
    let mut text = String::with_capacity(request.prefix.len() + request.suffix.len());
    text.push_str(&request.prefix);
    text.push_str(&request.suffix);
    let Some(cursor) = Cursor::from_byte(&text, request.prefix.len()) else {
        return;
    };
    let mut first_token: Option<f64> = None;
    let mut preview = Trimmer::new(&request.prefix, &request.suffix, request.language);
    let mut shown = String::new();
    let result = complete::complete(
        model,
        &text,
        cursor,
        request.language,
        &request.settings,
        Some(&request.cancel),
        |_: &GeneratedToken, so_far: &str| {
            first_token.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
            if request.settings.trim && request.preview == Preview::Trimmed {
                let trimmed = preview.trim(so_far).text;
                if trimmed != shown {
                    shown = trimmed;
                    reply(Reply::Partial {
                        id: request.id,
                        text: shown.clone(),
                    });
                }
            } else if so_far != shown {
                so_far.clone_into(&mut shown);
                reply(Reply::Partial {
                    id: request.id,
                    text: shown.clone(),
                });
            }
            Flow::Continue
        },
    );
    if request.is_cancelled() {
        return;
    }
    match result {
        Ok(c) => {
            let total_ms = started.elapsed().as_secs_f64() * 1e3;
            let tokens = c.generation.tokens.len();
            let t = &c.generation.timings;
            tracing::debug!(
                "job {}: {} prompt tokens ({} reused, {} of them shifted; prefill {:.1} ms), {tokens} generated ({:?}, {:.1} tok/s), trimmed {:?} to {:?}, {total_ms:.1} ms",
                request.id,
                t.prompt_tokens,
                t.reused_tokens,
                t.shifted_tokens,
                t.prefill_ms,
                c.generation.stop,
                t.tokens_per_s,
                c.trim_reason,
                c.text
            );
            let from_memory = from_memory(&c.generation.tokens, c.text.len());
            let source = if from_memory >= 0.5 {
                memory_source(model, &request.settings, &c)
            } else {
                None
            };
            reply(Reply::Done {
                id: request.id,
                proposal: Proposal {
                    confidence: confidence(&c.generation.tokens, c.text.len()),
                    from_memory,
                    source,
                    text: c.text,
                    tokens,
                    first_token_ms: first_token.unwrap_or(total_ms),
                    total_ms,
                    tokens_per_second: c.generation.timings.tokens_per_s,
                    stop: c.generation.stop,
                    cache: CacheUse {
                        prompt_tokens: t.prompt_tokens,
                        reused_tokens: t.reused_tokens,
                        shifted_tokens: t.shifted_tokens,
                    },
                },
            });
        }
        Err(e) => {
            tracing::warn!("job {}: {e}", request.id);
            reply(Reply::Failed {
                id: request.id,
                message: e.to_string(),
            });
        }
    }
}

/// Where the prior found the proposal: its tokens after the document's before the cursor, looked
/// up in the prior; the line is counted in the file's tokens before the place.
fn memory_source(
    model: &Model,
    settings: &complete::Settings,
    c: &complete::Completion,
) -> Option<Source> {
    let prior = settings.prior.as_deref()?;
    let mut context = c.prompt.prefix_ids(&model.tokenizer).to_vec();
    let proposal: Vec<u32> = inside(&c.generation.tokens, c.text.len())
        .map(|t| t.id)
        .collect();
    context.extend(&proposal);
    let found = prior.source(&context, proposal.len())?;
    let line = model.tokenizer.decode(&found.before).matches('\n').count() + 1;
    Some(Source {
        path: found.path,
        line,
    })
}

/// The mean share of memory in the tokens that start inside the first `len` bytes.
fn from_memory(tokens: &[GeneratedToken], len: usize) -> f32 {
    let shares: Vec<f32> = inside(tokens, len).map(|t| t.from_prior).collect();
    if shares.is_empty() {
        0.0
    } else {
        shares.iter().sum::<f32>() / shares.len() as f32
    }
}

/// The generated tokens that start inside the first `len` bytes (the trimmed proposal is a
/// prefix of what was generated).
fn inside(tokens: &[GeneratedToken], len: usize) -> impl Iterator<Item = &GeneratedToken> {
    let mut end = 0;
    tokens.iter().take_while(move |t| {
        let starts_inside = end < len;
        end += t.bytes.len();
        starts_inside
    })
}

/// (end byte, probability) of the generated tokens that start inside the first `len` bytes (the
/// trimmed proposal is a prefix of what was generated).
fn confidence(tokens: &[GeneratedToken], len: usize) -> Vec<(usize, f32)> {
    let mut end = 0;
    inside(tokens, len)
        .map(|t| {
            end += t.bytes.len();
            (end.min(len), t.prob)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use GeneratedToken as T;

    #[test]
    fn confidence_covers_the_tokens_of_the_trimmed_text() {
        let tokens = [
            T::for_test("foo", 0.9),
            T::for_test("(x", 0.5),
            T::for_test(")\n", 0.2),
            T::for_test("bar", 0.1),
        ];
        // Trimming kept "foo(x)": the third token is cut in the middle, the fourth is gone.
        assert_eq!(confidence(&tokens, 6), vec![(3, 0.9), (5, 0.5), (6, 0.2)]);
        assert_eq!(confidence(&tokens, 0), Vec::new());
    }
}
