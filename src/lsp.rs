//! `infill lsp`: the completion pipeline and the probability overlay behind the Language Server
//! Protocol, for the editors people already use.
//!
//! One thread reads frames from the client, the model runs on the [`Worker`] thread as it does
//! for the editor, and this loop owns everything else: the open documents, the requests waiting
//! for proposals, the overlay's scores. Both other threads only send it [`Event`]s, so no state is
//! shared. Protocol types stay inside this module; the worker and the pipeline know nothing of
//! them.
//!
//! What it serves:
//! - `textDocument/inlineCompletion` (LSP 3.18) and `textDocument/completion` ([`proposals`]);
//! - document sync: open, incremental change (UTF-16 positions, or UTF-8 when the client offers
//!   it), save, close ([`document`]);
//! - the probability overlay as Hint diagnostics, off until asked for ([`overlay`]);
//! - `$/cancelRequest`, `$/progress` while the model loads, `window/showMessage` when it cannot.
//!
//! Bad input from a client never ends the server: a malformed frame gets a parse error, an
//! unknown method `MethodNotFound`, a request on a document that is not open `InvalidParams`, and
//! a change to a document that is not open is ignored.

mod document;
mod overlay;
mod proposals;
pub mod transport;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use lsp_types::error_codes::SERVER_NOT_INITIALIZED;
use lsp_types::{
    DidChangeTextDocumentParams, DidCloseTextDocumentParams, DidOpenTextDocumentParams,
    DidSaveTextDocumentParams, InlineCompletionParams, InlineCompletionTriggerKind,
    TextDocumentPositionParams,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use document::{Encoding, TextDocument};
use proposals::{Ask, Kind, Proposals};
use transport::{Frame, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, Incoming, Output};

use crate::memory::Memory;
use crate::model::Model;
use crate::model::load::{Download, Downloads};
use crate::syntax::{Language, Registry};
use crate::worker::{Job, Loader, MemoryRequest, Reply, Worker, WorkerOptions};

/// The command that turns the overlay on or off (`workspace/executeCommand`; an argument `true` or
/// `false` sets it, none toggles it).
pub const OVERLAY_COMMAND: &str = "infill.overlay";

/// How the server completes, from the config file, the command line and the client's
/// `initializationOptions` (which win).
#[derive(Debug, Clone)]
pub struct Options {
    pub max_tokens: usize,
    /// Cut proposals before a token less probable than this (0: never).
    pub min_confidence: f32,
    /// Reuse keys and values out of place after a change (see [`WorkerOptions::shift_reuse`]).
    pub shift_reuse: bool,
    /// How long `textDocument/completion` waits before answering with the proposal so far: the
    /// client's other completion sources are not held up by a slow model.
    pub completion_wait: Duration,
    /// Publish the probability overlay as diagnostics.
    pub overlay: bool,
    /// The overlay marks tokens outside the model's top this-many (10, 100 or 1000: GLTR's
    /// buckets).
    pub overlay_min_rank: usize,
    /// Index the workspace folders' code as repository memory for every proposal.
    pub memory: bool,
    /// Where the memory is kept between runs (infill's cache folder; none: built every time).
    pub cache: Option<std::path::PathBuf>,
    /// Also put the memory's most relevant code before the prompt (models trained with
    /// repository-level prompts).
    pub memory_prompt: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_tokens: 48,
            min_confidence: 0.0,
            shift_reuse: true,
            completion_wait: Duration::from_millis(800),
            overlay: false,
            overlay_min_rank: 100,
            memory: true,
            cache: None,
            memory_prompt: false,
        }
    }
}

impl Options {
    /// Applies the client's `initializationOptions` (unknown keys are ignored, as settings for
    /// another version of infill may be).
    fn apply_client(&mut self, o: &Value) {
        if let Some(v) = o.get("maxTokens").and_then(Value::as_u64) {
            self.max_tokens = usize::try_from(v).unwrap_or(usize::MAX).max(1);
        }
        if let Some(v) = o.get("minConfidence").and_then(Value::as_f64) {
            self.min_confidence = v.clamp(0.0, 1.0) as f32;
        }
        if let Some(v) = o.get("completionWaitMs").and_then(Value::as_u64) {
            self.completion_wait = Duration::from_millis(v);
        }
        if let Some(v) = o.get("overlay").and_then(Value::as_bool) {
            self.overlay = v;
        }
        if let Some(v) = o.get("memory").and_then(Value::as_bool) {
            self.memory = v;
        }
        if let Some(v) = o.get("memoryPrompt").and_then(Value::as_bool) {
            self.memory_prompt = v;
        }
        if let Some(v) = o.get("overlayMinRank").and_then(Value::as_u64) {
            self.overlay_min_rank = usize::try_from(v).unwrap_or(usize::MAX).max(1);
        }
    }
}

/// A JSON-RPC error for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
}

/// A request id and what it gets.
pub type Answer = (Value, Result<Value, RpcError>);

/// What reaches the server's loop.
#[derive(Debug)]
enum Event {
    Frame(Frame),
    /// The client's side of the connection closed (or broke).
    Closed(Option<std::io::Error>),
    Worker(Reply),
    /// A model file coming from the hub.
    Download(Download),
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit` after `shutdown`, as the protocol asks.
    Clean,
    /// `exit` without `shutdown`, or the input closed.
    Abrupt,
}

#[derive(Debug, Clone, PartialEq)]
enum ModelState {
    Loading,
    Ready(String),
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Uninitialized,
    Running,
    ShuttingDown,
}

/// Opens the model on the worker thread, reporting hub downloads to the given watcher.
pub type Open = Box<dyn FnOnce(Downloads) -> anyhow::Result<Model> + Send>;

/// Serves one client until it exits or closes the connection.
pub fn serve(
    input: impl BufRead + Send + 'static,
    output: impl Write,
    open: Open,
    options: Options,
) -> anyhow::Result<Exit> {
    let (events, inbox) = mpsc::channel();
    let frames = events.clone();
    std::thread::Builder::new()
        .name("infill-lsp-reader".into())
        .spawn(move || {
            let mut input = input;
            loop {
                let event = match transport::read(&mut input) {
                    Ok(Some(frame)) => Event::Frame(frame),
                    Ok(None) => Event::Closed(None),
                    Err(e) => Event::Closed(Some(e)),
                };
                let last = matches!(event, Event::Closed(_));
                if frames.send(event).is_err() || last {
                    return;
                }
            }
        })?;
    let downloads = {
        let events = events.clone();
        Downloads::watched(move |d| {
            let _ = events.send(Event::Download(d.clone()));
        })
    };
    let load: Loader = Box::new(move || open(downloads));
    let worker = Worker::spawn(
        load,
        WorkerOptions {
            reuse_cache: true,
            shift_reuse: options.shift_reuse,
        },
        move |reply| {
            let _ = events.send(Event::Worker(reply));
        },
    )?;
    let mut server = Server {
        out: Output::new(output),
        worker,
        options,
        encoding: Encoding::Utf16,
        phase: Phase::Uninitialized,
        docs: HashMap::new(),
        folders: Vec::new(),
        model: ModelState::Loading,
        said_unavailable: false,
        client_progress: false,
        client_watches: false,
        progress: Progress::None,
        ids: 0,
        proposals: Proposals::default(),
        overlay: overlay::Overlay::default(),
        memory: None,
        memory_job: None,
        memory_roots: Vec::new(),
        memory_stale: false,
        memory_views: HashMap::new(),
        unsaved: HashMap::new(),
        unsaved_sent: HashMap::new(),
    };
    loop {
        let deadline = [server.proposals.deadline(), server.overlay.deadline()]
            .into_iter()
            .flatten()
            .min();
        let event = match deadline {
            Some(d) => match inbox.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(Exit::Abrupt),
            },
            None => match inbox.recv() {
                Ok(e) => Some(e),
                Err(_) => return Ok(Exit::Abrupt),
            },
        };
        match event {
            None => server.tick(Instant::now())?,
            Some(Event::Frame(frame)) => {
                if let Some(exit) = server.frame(frame)? {
                    return Ok(exit);
                }
            }
            Some(Event::Worker(reply)) => server.worker_reply(reply)?,
            Some(Event::Download(d)) => server.download(&d)?,
            Some(Event::Closed(error)) => {
                if let Some(e) = error {
                    tracing::warn!("lsp: the connection broke: {e}");
                }
                return Ok(Exit::Abrupt);
            }
        }
    }
}

/// The `$/progress` report of the model's loading.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    None,
    /// `window/workDoneProgress/create` sent with this request id; begins when the client agrees.
    Asked {
        request: Value,
    },
    Begun,
}

/// The token of the loading report.
const PROGRESS_TOKEN: &str = "infill/model";

struct Server<W: Write> {
    out: Output<W>,
    worker: Worker,
    options: Options,
    encoding: Encoding,
    phase: Phase,
    docs: HashMap<String, TextDocument>,
    folders: Vec<String>,
    model: ModelState,
    said_unavailable: bool,
    client_progress: bool,
    /// The client can watch files for the server (`workspace/didChangeWatchedFiles`).
    client_watches: bool,
    progress: Progress,
    /// The last worker job id handed out.
    ids: u64,
    proposals: Proposals,
    overlay: overlay::Overlay,
    /// The workspace's code, once indexed, and the job indexing it.
    memory: Option<std::sync::Arc<Memory>>,
    memory_job: Option<u64>,
    /// The folders the memory (or the job) holds, and whether a file was saved since it began.
    memory_roots: Vec<std::path::PathBuf>,
    memory_stale: bool,
    /// The memory as each document's proposals see it: without the document's own file.
    memory_views: HashMap<std::path::PathBuf, std::sync::Arc<Memory>>,
    /// Open documents changed since they were opened or saved (their version), and the versions
    /// the memory was last sent.
    unsaved: HashMap<String, i32>,
    unsaved_sent: HashMap<String, i32>,
}

impl<W: Write> Server<W> {
    fn frame(&mut self, frame: Frame) -> std::io::Result<Option<Exit>> {
        match frame {
            Frame::Unparsable(why) => {
                tracing::warn!("lsp: unparsable frame: {why}");
                self.out.error(Value::Null, transport::PARSE_ERROR, &why)?;
            }
            Frame::Invalid { id, why } => {
                tracing::warn!("lsp: invalid message: {why}");
                self.out.error(id, INVALID_REQUEST, &why)?;
            }
            Frame::Message(Incoming::Request { id, method, params }) => {
                self.request(id, &method, params)?;
            }
            Frame::Message(Incoming::Notification { method, params }) => {
                if method == "exit" {
                    return Ok(Some(if self.phase == Phase::ShuttingDown {
                        Exit::Clean
                    } else {
                        Exit::Abrupt
                    }));
                }
                self.notification(&method, params)?;
            }
            Frame::Message(Incoming::Response { id, error }) => self.response(&id, error)?,
        }
        Ok(None)
    }

    fn answer(&mut self, answers: Vec<Answer>) -> std::io::Result<()> {
        for (id, result) in answers {
            match result {
                Ok(value) => self.out.reply(id, value)?,
                Err(e) => self.out.error(id, e.code, &e.message)?,
            }
        }
        Ok(())
    }

    fn request(&mut self, id: Value, method: &str, params: Value) -> std::io::Result<()> {
        let result = match (self.phase, method) {
            (Phase::Uninitialized, "initialize") => Ok(Some(self.initialize(&params))),
            (Phase::Uninitialized, _) => Err(RpcError::new(
                SERVER_NOT_INITIALIZED,
                "the server is not initialized yet: send initialize first",
            )),
            (Phase::ShuttingDown, _) => Err(RpcError::new(
                INVALID_REQUEST,
                "the server is shutting down: only exit is accepted",
            )),
            (Phase::Running, "initialize") => Err(RpcError::new(
                INVALID_REQUEST,
                "initialize was already sent",
            )),
            (Phase::Running, "shutdown") => {
                self.phase = Phase::ShuttingDown;
                let answers = self.proposals.unavailable();
                self.answer(answers)?;
                self.overlay.stop();
                Ok(Some(Value::Null))
            }
            (Phase::Running, "textDocument/completion") => self.complete(id.clone(), params, None),
            (Phase::Running, "textDocument/inlineCompletion") => {
                parse::<InlineCompletionParams>(params).and_then(|p| {
                    let invoked = p.context.trigger_kind == InlineCompletionTriggerKind::Invoked;
                    let position =
                        serde_json::to_value(p.text_document_position).unwrap_or_default();
                    self.complete(id.clone(), position, Some(invoked))
                })
            }
            (Phase::Running, "workspace/executeCommand") => self.execute(&params).map(Some),
            (Phase::Running, _) => Err(RpcError::new(
                transport::METHOD_NOT_FOUND,
                format!("infill does not serve {method}"),
            )),
        };
        match result {
            Ok(Some(value)) => self.out.reply(id, value),
            Ok(None) => Ok(()),
            Err(e) => self.out.error(id, e.code, &e.message),
        }
    }

    fn initialize(&mut self, params: &Value) -> Value {
        let caps = &params["capabilities"];
        self.encoding = Encoding::negotiate(
            caps["general"]["positionEncodings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
        self.client_progress = caps["window"]["workDoneProgress"].as_bool() == Some(true);
        self.client_watches = caps["workspace"]["didChangeWatchedFiles"]["dynamicRegistration"]
            .as_bool()
            == Some(true);
        self.options.apply_client(&params["initializationOptions"]);
        self.folders = params["workspaceFolders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["uri"].as_str().map(str::to_owned))
            .chain(params["rootUri"].as_str().map(str::to_owned))
            .collect();
        self.folders.dedup();
        self.phase = Phase::Running;
        tracing::info!(
            "lsp: initialized by {} ({} positions, {} workspace folders)",
            params["clientInfo"]["name"].as_str().unwrap_or("a client"),
            self.encoding.name(),
            self.folders.len()
        );
        json!({
            "capabilities": {
                "positionEncoding": self.encoding.name(),
                "textDocumentSync": {
                    "openClose": true,
                    "change": 2,
                    "save": { "includeText": false },
                },
                "completionProvider": {
                    "resolveProvider": false,
                    "triggerCharacters": [".", "(", ",", ":", "=", " "],
                },
                "inlineCompletionProvider": {},
                "executeCommandProvider": { "commands": [OVERLAY_COMMAND] },
                "workspace": {
                    "workspaceFolders": { "supported": true, "changeNotifications": true },
                },
            },
            "serverInfo": { "name": "infill", "version": env!("CARGO_PKG_VERSION") },
        })
    }

    fn notification(&mut self, method: &str, params: Value) -> std::io::Result<()> {
        if self.phase == Phase::Uninitialized {
            return Ok(());
        }
        match method {
            "initialized" => {
                self.begin_progress()?;
                self.say_unavailable()?;
                self.build_memory();
                self.watch_files()?;
            }
            "workspace/didChangeWatchedFiles" => {
                // A checkout, a pull, another editor: files changed on disk are indexed again.
                let changed = params["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| file_path(c["uri"].as_str()?))
                    .any(|path| self.memory_holds(&path));
                if changed {
                    self.refresh_memory();
                }
            }
            "$/cancelRequest" => {
                let answers = self.proposals.cancel(&params["id"]);
                self.answer(answers)?;
            }
            "textDocument/didOpen" => {
                if let Ok(p) = parse::<DidOpenTextDocumentParams>(params) {
                    let d = p.text_document;
                    let uri = d.uri.as_str().to_owned();
                    let language = language_of(&d.language_id, &uri, &d.text);
                    self.docs
                        .insert(uri.clone(), TextDocument::new(d.text, d.version, language));
                    let answers = self.proposals.invalidate(&uri);
                    self.answer(answers)?;
                    self.overlay_changed(&uri, true)?;
                }
            }
            "textDocument/didChange" => {
                if let Ok(p) = parse::<DidChangeTextDocumentParams>(params) {
                    let uri = p.text_document.uri.as_str().to_owned();
                    // A change to a document that is not open has nothing to apply to.
                    if let Some(doc) = self.docs.get_mut(&uri) {
                        doc.apply(&p.content_changes, p.text_document.version, self.encoding);
                        self.unsaved.insert(uri.clone(), p.text_document.version);
                        let answers = self.proposals.invalidate(&uri);
                        self.answer(answers)?;
                        self.overlay_changed(&uri, false)?;
                    }
                }
            }
            "textDocument/didSave" => {
                if let Ok(p) = parse::<DidSaveTextDocumentParams>(params) {
                    self.overlay_changed(p.text_document.uri.as_str(), true)?;
                    self.unsaved.remove(p.text_document.uri.as_str());
                    self.refresh_memory();
                }
            }
            "textDocument/didClose" => {
                if let Ok(p) = parse::<DidCloseTextDocumentParams>(params) {
                    let uri = p.text_document.uri.as_str();
                    self.docs.remove(uri);
                    // Unsaved text closed unsaved: the file on disk counts again.
                    if self.unsaved.remove(uri).is_some() {
                        self.refresh_memory();
                    }
                    let answers = self.proposals.invalidate(uri);
                    self.answer(answers)?;
                    if let Some(clear) = self.overlay.closed(uri) {
                        self.out.notify("textDocument/publishDiagnostics", clear)?;
                    }
                }
            }
            "workspace/didChangeWorkspaceFolders" => {
                let event = &params["event"];
                let uris = |key: &str| -> Vec<String> {
                    event[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["uri"].as_str().map(str::to_owned))
                        .collect()
                };
                let removed = uris("removed");
                self.folders.retain(|f| !removed.contains(f));
                self.folders.extend(uris("added"));
                // The memory follows the workspace (the old one serves until the new is built).
                self.build_memory();
            }
            // Other notifications (`$/setTrace`, configuration changes) need nothing from us.
            _ => {}
        }
        Ok(())
    }

    /// The client's answer to a request the server sent.
    fn response(&mut self, id: &Value, error: Option<Value>) -> std::io::Result<()> {
        if let Progress::Asked { request } = &self.progress
            && request == id
        {
            if error.is_some() || self.model != ModelState::Loading {
                self.progress = Progress::None;
                return Ok(());
            }
            self.progress = Progress::Begun;
            self.out.notify(
                "$/progress",
                json!({
                    "token": PROGRESS_TOKEN,
                    "value": {
                        "kind": "begin",
                        "title": "infill",
                        "message": "loading the model",
                        "cancellable": false,
                        "percentage": 0,
                    },
                }),
            )?;
        }
        Ok(())
    }

    /// Starts the loading report (`$/progress` where the client takes it, a log line otherwise).
    fn begin_progress(&mut self) -> std::io::Result<()> {
        if self.model != ModelState::Loading {
            return Ok(());
        }
        if self.client_progress {
            let request = self.out.request(
                "window/workDoneProgress/create",
                json!({ "token": PROGRESS_TOKEN }),
            )?;
            self.progress = Progress::Asked { request };
            Ok(())
        } else {
            self.log(3, "infill: loading the model")
        }
    }

    /// Asks the worker to index the workspace folders (after any proposal someone waits for):
    /// from infill's cache where it holds them, tokenizing only the files changed since.
    fn build_memory(&mut self) {
        let roots: Vec<std::path::PathBuf> =
            self.folders.iter().filter_map(|f| file_path(f)).collect();
        if !self.options.memory || roots.is_empty() {
            self.memory = None;
            self.memory_job = None;
            self.memory_views.clear();
            return;
        }
        let previous = self.memory.clone().filter(|_| self.memory_roots == roots);
        self.memory_stale = false;
        self.memory_roots = roots;
        self.submit_memory(previous, true);
    }

    /// A memory job for the folders: `walk` them for changed files, or only bring `previous` the
    /// open documents' unsaved text (which a walk brings too).
    fn submit_memory(&mut self, previous: Option<std::sync::Arc<Memory>>, walk: bool) {
        self.ids += 1;
        self.memory_job = Some(self.ids);
        let texts = self.unsaved_texts();
        self.worker.submit(Job::Memory(MemoryRequest {
            id: self.ids,
            roots: self.memory_roots.clone(),
            cache: self.options.cache.clone(),
            previous,
            walk,
            texts,
            cancel: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }));
    }

    /// The text of every open document changed since it was opened or saved, as the memory
    /// should count it (noting the versions sent).
    fn unsaved_texts(&mut self) -> Vec<(std::path::PathBuf, String)> {
        self.unsaved_sent = self.unsaved.clone();
        self.unsaved
            .keys()
            .filter_map(|uri| Some((file_path(uri)?, self.docs.get(uri)?.text().to_owned())))
            .filter(|(path, _)| self.memory_roots.iter().any(|r| path.starts_with(r)))
            .collect()
    }

    /// Before a proposal in `uri`: other open documents edited since the memory last heard of
    /// them are sent to it (only those changes are indexed; the document itself never counts
    /// for its own proposals, so its own typing sends nothing).
    fn sync_unsaved(&mut self, uri: &str) {
        let Some(memory) = self.memory.clone() else {
            return;
        };
        let behind = self
            .unsaved
            .iter()
            .any(|(u, v)| u != uri && self.unsaved_sent.get(u) != Some(v));
        if behind && self.memory_job.is_none() {
            self.submit_memory(Some(memory), false);
        }
    }

    /// Asks the client to report files changed on disk (when it can), so that the memory follows
    /// a checkout or a pull as it follows a save.
    fn watch_files(&mut self) -> std::io::Result<()> {
        if !self.client_watches || !self.options.memory || self.folders.is_empty() {
            return Ok(());
        }
        self.out.request(
            "client/registerCapability",
            json!({ "registrations": [{
                "id": "infill-memory",
                "method": "workspace/didChangeWatchedFiles",
                "registerOptions": { "watchers": [{ "globPattern": "**/*" }] },
            }]}),
        )?;
        Ok(())
    }

    /// Whether a change to `path` may change the memory: a file it holds, or a source file (in a
    /// language infill knows) inside the folders. Build outputs and the like are not worth a walk.
    fn memory_holds(&self, path: &std::path::Path) -> bool {
        let Some(memory) = &self.memory else {
            return false;
        };
        memory.documents().contains(path)
            || (self.memory_roots.iter().any(|r| path.starts_with(r))
                && crate::syntax::Registry::builtin()
                    .ok()
                    .and_then(|r| r.for_path(path))
                    .is_some())
    }

    /// After a save: the memory catches up with the folders' files, indexing only what changed
    /// (once the job in flight, if any, is done).
    fn refresh_memory(&mut self) {
        if self.memory_job.is_some() {
            self.memory_stale = true;
        } else if self.memory.is_some() {
            self.build_memory();
        }
    }

    /// With `memoryPrompt`, the repository-level prompt for `uri`: the workspace folder holding it
    /// names the repository and the paths.
    fn repository_prompt(
        &self,
        uri: &str,
        memory: Option<&std::sync::Arc<Memory>>,
    ) -> Option<crate::complete::RepositoryPrompt> {
        let memory = memory.filter(|_| self.options.memory_prompt)?;
        let path = file_path(uri)?;
        let root = self
            .memory_roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())?
            .clone();
        crate::complete::RepositoryPrompt::for_file(
            std::sync::Arc::clone(memory) as std::sync::Arc<dyn crate::model::generate::Prior>,
            root,
            &path,
        )
    }

    /// The memory for proposals in `uri`: without that file's own indexed copy.
    fn memory_for(&mut self, uri: &str) -> Option<std::sync::Arc<Memory>> {
        let memory = self.memory.as_ref()?;
        let Some(path) = file_path(uri) else {
            return Some(std::sync::Arc::clone(memory));
        };
        let view = self
            .memory_views
            .entry(path)
            .or_insert_with_key(|path| std::sync::Arc::new(memory.without(path)));
        Some(std::sync::Arc::clone(view))
    }

    /// Says, once and only after initialization, that there is no model; requests get empty
    /// answers from then on, and the server still runs.
    fn say_unavailable(&mut self) -> std::io::Result<()> {
        if let ModelState::Unavailable(message) = &self.model
            && self.phase != Phase::Uninitialized
            && !self.said_unavailable
        {
            self.said_unavailable = true;
            let text = format!("infill: no model, so no completions: {message}");
            self.out
                .notify("window/showMessage", json!({ "type": 1, "message": text }))?;
        }
        Ok(())
    }

    fn log(&mut self, kind: u8, message: &str) -> std::io::Result<()> {
        self.out.notify(
            "window/logMessage",
            json!({ "type": kind, "message": message }),
        )
    }

    fn worker_reply(&mut self, reply: Reply) -> std::io::Result<()> {
        match reply {
            Reply::Ready { model } => {
                tracing::info!("lsp: model {model} ready");
                self.finish_progress(&format!("{model} ready"))?;
                if self.phase != Phase::Uninitialized {
                    self.log(3, &format!("infill: {model} ready"))?;
                }
                self.model = ModelState::Ready(model);
                self.run_overlay()?;
            }
            Reply::Unavailable { message } => {
                self.finish_progress("no model")?;
                self.model = ModelState::Unavailable(message);
                self.say_unavailable()?;
                let answers = self.proposals.unavailable();
                self.answer(answers)?;
                self.overlay.stop();
            }
            Reply::Partial { id, text } => self.proposals.partial(id, text),
            Reply::Done { id, proposal } => {
                let answers = self
                    .proposals
                    .done(id, proposal, &self.worker, &mut self.ids);
                self.answer(answers)?;
                self.run_overlay()?;
            }
            Reply::Memory {
                id,
                memory,
                files,
                seconds,
            } if self.memory_job == Some(id) => {
                let tokens = memory.documents().len();
                self.memory = Some(memory);
                self.memory_job = None;
                self.memory_views.clear();
                if self.memory_stale {
                    self.build_memory();
                }
                self.log(
                    3,
                    &format!(
                        "infill: repository memory: {files} files, {tokens} tokens, in {seconds:.1} s"
                    ),
                )?;
            }
            // The server asks for no adapter (it serves --adapter merged).
            Reply::Memory { .. } | Reply::Adapter { .. } => {}
            Reply::Failed { id, message } if self.memory_job == Some(id) => {
                self.memory_job = None;
                self.memory_stale = false;
                self.log(2, &format!("infill: no repository memory: {message}"))?;
            }
            Reply::Failed { id, message } => {
                let answers = self.proposals.failed(id, &message);
                self.answer(answers)?;
                if let Some(said) = self.overlay.failed(id, &message) {
                    self.out
                        .notify("window/showMessage", json!({ "type": 2, "message": said }))?;
                }
                self.run_overlay()?;
            }
            Reply::Scored { id, from, tokens } => self.overlay.scored(id, from, tokens),
            Reply::ScoreDone { id, .. } => {
                self.overlay.score_done(id, &self.worker, &mut self.ids);
            }
            Reply::Lines { id, lines } => {
                if let Some(publish) = self.overlay.lines(id, lines, &self.docs, self.encoding) {
                    self.out
                        .notify("textDocument/publishDiagnostics", publish)?;
                }
                self.run_overlay()?;
            }
        }
        Ok(())
    }

    /// A hub download's progress, in the loading report.
    fn download(&mut self, d: &Download) -> std::io::Result<()> {
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let message = format!(
            "downloading {} ({:.0} of {:.0} MB)",
            d.file,
            mb(d.done),
            mb(d.total)
        );
        match self.progress {
            Progress::Begun => {
                let percentage = (d.done * 100).checked_div(d.total).unwrap_or(0).min(100);
                self.out.notify(
                    "$/progress",
                    json!({
                        "token": PROGRESS_TOKEN,
                        "value": { "kind": "report", "message": message, "percentage": percentage },
                    }),
                )
            }
            // Without a progress report, the start and the end of each file.
            _ if self.phase == Phase::Running && (d.done == 0 || d.done == d.total) => {
                self.log(3, &format!("infill: {message}"))
            }
            _ => Ok(()),
        }
    }

    fn finish_progress(&mut self, message: &str) -> std::io::Result<()> {
        if std::mem::replace(&mut self.progress, Progress::None) == Progress::Begun {
            self.out.notify(
                "$/progress",
                json!({
                    "token": PROGRESS_TOKEN,
                    "value": { "kind": "end", "message": message },
                }),
            )?;
        }
        Ok(())
    }

    /// A completion request of either kind (`inline`: whether the person invoked it).
    fn complete(
        &mut self,
        id: Value,
        params: Value,
        inline: Option<bool>,
    ) -> Result<Option<Value>, RpcError> {
        let p = parse::<TextDocumentPositionParams>(params)?;
        let uri = p.text_document.uri.as_str();
        self.sync_unsaved(uri);
        let prior = self.memory_for(uri);
        let repository = self.repository_prompt(uri, prior.as_ref());
        let Some(doc) = self.docs.get(uri) else {
            return Err(RpcError::params(format!(
                "{uri} is not open: send textDocument/didOpen first"
            )));
        };
        let kind = match inline {
            Some(invoked) => Kind::Inline { invoked },
            None => Kind::Completion {
                deadline: Instant::now() + self.options.completion_wait,
            },
        };
        if let ModelState::Unavailable(_) = self.model {
            return Ok(Some(match kind {
                Kind::Inline { .. } => json!({ "items": [] }),
                Kind::Completion { .. } => json!({ "isIncomplete": false, "items": [] }),
            }));
        }
        let answers = self.proposals.ask(
            Ask {
                id,
                kind,
                uri,
                doc,
                position: p.position,
                encoding: self.encoding,
                max_tokens: self.options.max_tokens,
                min_confidence: self.options.min_confidence,
                prior: prior.map(|m| m as std::sync::Arc<dyn crate::model::generate::Prior>),
                repository,
            },
            &self.worker,
            &mut self.ids,
        );
        if self.proposals.busy() {
            // A person waits at the cursor: the overlay's work in flight stops for them.
            self.overlay.yield_to_completion();
        }
        self.answer(answers)
            .map_err(|e| RpcError::internal(e.to_string()))?;
        Ok(None)
    }

    /// `workspace/executeCommand`.
    fn execute(&mut self, params: &Value) -> Result<Value, RpcError> {
        let command = params["command"].as_str().unwrap_or_default();
        if command != OVERLAY_COMMAND {
            return Err(RpcError::params(format!(
                "unknown command {command:?}; infill has {OVERLAY_COMMAND}"
            )));
        }
        let on = params["arguments"][0]
            .as_bool()
            .unwrap_or(!self.options.overlay);
        self.options.overlay = on;
        let io = |e: std::io::Error| RpcError::internal(e.to_string());
        if on {
            for uri in self.docs.keys() {
                self.overlay.changed(uri, Instant::now(), true);
            }
            self.run_overlay().map_err(io)?;
        } else {
            for clear in self.overlay.clear_all() {
                self.out
                    .notify("textDocument/publishDiagnostics", clear)
                    .map_err(io)?;
            }
        }
        Ok(json!({ "overlay": on }))
    }

    /// A document to score again, when the overlay is on.
    fn overlay_changed(&mut self, uri: &str, at_once: bool) -> std::io::Result<()> {
        if self.options.overlay {
            self.overlay.changed(uri, Instant::now(), at_once);
            self.run_overlay()?;
        }
        Ok(())
    }

    /// Starts the overlay's next piece of work when it is on, the model is ready and no person is
    /// waiting for a proposal.
    fn run_overlay(&mut self) -> std::io::Result<()> {
        if self.options.overlay
            && matches!(self.model, ModelState::Ready(_))
            && self.phase == Phase::Running
            && !self.proposals.busy()
        {
            self.overlay.run(
                &self.docs,
                self.options.overlay_min_rank,
                Instant::now(),
                &self.worker,
                &mut self.ids,
            );
        }
        Ok(())
    }

    fn tick(&mut self, now: Instant) -> std::io::Result<()> {
        let answers = self.proposals.tick(now);
        self.answer(answers)?;
        self.run_overlay()
    }
}

/// The local path of a `file:` URI (percent-escapes decoded); `None` for other schemes.
fn file_path(uri: &str) -> Option<std::path::PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(std::path::PathBuf::from(String::from_utf8(out).ok()?))
}

/// The `file:` URI of an absolute path (bytes other than letters, digits, `/` and `-._~`
/// percent-escaped).
fn file_uri(path: &std::path::Path) -> String {
    let mut uri = String::from("file://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// Parses a request's parameters.
fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::params(format!("bad parameters: {e}")))
}

/// The document's language: the client's language id where infill has a grammar for it, else the
/// file's extension.
fn language_of(language_id: &str, uri: &str, text: &str) -> Option<&'static Language> {
    let registry = Registry::builtin().ok()?;
    let id = match language_id {
        "typescriptreact" => "tsx",
        "javascriptreact" => "javascript",
        "c++" => "cpp",
        other => other,
    };
    registry.by_name(id).ok().or_else(|| {
        let path = uri.split(['?', '#']).next().unwrap_or(uri);
        registry.for_source(std::path::Path::new(path), text)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_become_paths() {
        assert_eq!(
            file_path("file:///home/a%20b/caf%C3%A9?x#y"),
            Some("/home/a b/café".into())
        );
        assert_eq!(file_path("untitled:Untitled-1"), None);
        let path = std::path::Path::new("/home/a b/café#1.rs");
        assert_eq!(file_uri(path), "file:///home/a%20b/caf%C3%A9%231.rs");
        assert_eq!(file_path(&file_uri(path)).as_deref(), Some(path));
    }
}
