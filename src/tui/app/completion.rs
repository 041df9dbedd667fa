//! Proposals: when the editor asks the model, what comes back, and what the completion keys do with
//! it. Tab on a shown proposal goes [`App::completion_action`] → [`App::accept`]; typing what the
//! proposal shows keeps the rest of it ([`App::type_through`]); any other edit or move voids it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::App;
use crate::complete::{PREFIX_BYTES, RepositoryPrompt, SUFFIX_BYTES, Settings};
use crate::memory::{Memory, Store};
use crate::model::generate::Prior;
use crate::model::generate::Sampling;
use crate::text::{Group, Pos, display};
use crate::tui::config::Action;
use crate::worker::{Job, MemoryRequest, Preview, Proposal, Reply, Request, Source};

#[derive(Debug, Clone, PartialEq)]
pub(in crate::tui) enum ModelState {
    Loading,
    Ready(String),
    Unavailable(String),
}

/// Proposals shown at the cursor, never part of the document until accepted.
#[derive(Debug, Clone)]
pub(in crate::tui) struct Ghost {
    /// The cursor position and document version it belongs to.
    pub anchor: Pos,
    pub version: u64,
    /// The greedy proposal first, then alternatives sampled on demand.
    pub proposals: Vec<String>,
    /// Per proposal: (end byte, probability) of its tokens (empty while it streams).
    pub confidence: Vec<Vec<(usize, f32)>>,
    pub index: usize,
    /// What the user typed (or accepted word by word) of the current proposal since it was shown.
    pub typed: String,
}

impl Ghost {
    /// One proposal (empty while it streams in) at the buffer's cursor and version.
    fn at(buffer: &super::Buffer, text: String, confidence: Vec<(usize, f32)>) -> Self {
        Self {
            anchor: buffer.cursor,
            version: buffer.doc.version(),
            proposals: vec![text],
            confidence: vec![confidence],
            index: 0,
            typed: String::new(),
        }
    }

    /// (end byte in [`Self::shown`], probability) of the tokens still shown.
    pub fn shown_confidence(&self) -> Vec<(usize, f32)> {
        let typed = self.typed.len();
        self.confidence
            .get(self.index)
            .map(|c| {
                c.iter()
                    .filter(|(end, _)| *end > typed)
                    .map(|&(end, p)| (end - typed, p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The part still to show.
    pub fn shown(&self) -> &str {
        self.proposals
            .get(self.index)
            .and_then(|p| p.strip_prefix(self.typed.as_str()))
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Proposal,
    Alternative,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    kind: RequestKind,
    cancel: Arc<AtomicBool>,
    /// The text around the cursor it was asked for (see [`context_key`]).
    key: u64,
}

/// Proposals remembered per text around the cursor: typing a character, deleting it and typing it
/// again (or undoing back to where a proposal was shown) shows that proposal at once, with no
/// request. Greedy generation on the same prompt gives the same proposal, so nothing is stale.
#[derive(Debug, Default)]
struct Recent {
    /// Newest last.
    entries: std::collections::VecDeque<Remembered>,
}

/// A proposal and its token confidences, for the text around the cursor with this key.
#[derive(Debug)]
struct Remembered {
    key: u64,
    text: String,
    confidence: Vec<(usize, f32)>,
}

/// Proposals remembered.
const RECENT: usize = 64;

impl Recent {
    fn get(&self, key: u64) -> Option<&Remembered> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    fn insert(&mut self, key: u64, text: String, confidence: Vec<(usize, f32)>) {
        self.entries.retain(|e| e.key != key);
        if self.entries.len() == RECENT {
            self.entries.pop_front();
        }
        self.entries.push_back(Remembered {
            key,
            text,
            confidence,
        });
    }
}

/// The prompt text a request is made of, hashed: equal keys, equal requests.
fn context_key(prefix: &str, suffix: &str) -> u64 {
    let p = crate::hash::fnv1a(prefix.as_bytes());
    let s = crate::hash::fnv1a(suffix.as_bytes());
    p ^ s.rotate_left(29) ^ (prefix.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The completion state: the model's state, the request in flight, the proposal shown.
#[derive(Debug)]
pub(in crate::tui) struct Completion {
    pub model: ModelState,
    pub ghost: Option<Ghost>,
    in_flight: Option<InFlight>,
    /// When to ask (the debounce after typing).
    due: Option<Instant>,
    /// The last finished proposal's figures, for the status line.
    pub last: Option<Proposal>,
    recent: Recent,
    /// Repository memory: the file's git repository, indexed once the model is ready.
    pub memory: MemoryState,
}

/// Where the repository memory stands.
#[derive(Debug, Clone, Default)]
pub(in crate::tui) enum MemoryState {
    /// Not asked for (no git repository, or turned off).
    #[default]
    Off,
    Building {
        job: u64,
    },
    Ready {
        /// The repository's files.
        memory: Arc<Memory>,
        /// The same without this file, whose indexed copy must not predict it: what proposals
        /// use (the text before the cursor counts as the document's own).
        view: Arc<Memory>,
        files: usize,
        /// A refresh in flight (after a save).
        refresh: Option<u64>,
    },
}

impl Default for Completion {
    fn default() -> Self {
        Self {
            model: ModelState::Loading,
            ghost: None,
            in_flight: None,
            due: None,
            last: None,
            recent: Recent::default(),
            memory: MemoryState::Off,
        }
    }
}

impl Completion {
    pub fn is_thinking(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    fn cancel_in_flight(&mut self) {
        if let Some(f) = self.in_flight.take() {
            f.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// The text changed or the cursor moved: old proposals and requests are void.
    pub fn invalidate(&mut self) {
        self.cancel_in_flight();
        self.ghost = None;
        self.due = None;
    }

    /// The model changed (another adapter): nothing it proposed before is shown or remembered.
    pub fn forget(&mut self) {
        self.invalidate();
        self.recent = Recent::default();
        self.last = None;
    }

    /// The kind of request `id`, if it is the one in flight.
    fn current(&self, id: u64) -> Option<RequestKind> {
        self.in_flight
            .as_ref()
            .filter(|f| f.id == id)
            .map(|f| f.kind)
    }
}

impl App {
    /// The proposal shown now: made for this cursor and this text, and no selection.
    pub(in crate::tui) fn visible_ghost(&self) -> Option<&Ghost> {
        let b = &self.buffer;
        self.completion
            .ghost
            .as_ref()
            .filter(|g| g.anchor == b.cursor && g.version == b.doc.version() && b.anchor.is_none())
    }

    pub(super) fn completions_possible(&self) -> bool {
        self.config.completions && !matches!(self.completion.model, ModelState::Unavailable(_))
    }

    /// The text changed: old proposals are void, and a new one is asked for after the debounce,
    /// unless one made for this very text is remembered (then it shows at once).
    pub(super) fn changed(&mut self, now: Instant) {
        self.completion.invalidate();
        if !self.show_remembered() {
            self.schedule(now);
        }
    }

    /// Shows the proposal remembered for the text around the cursor, if there is one.
    pub(super) fn show_remembered(&mut self) -> bool {
        if !self.completions_possible() || self.completion.recent.entries.is_empty() {
            return false;
        }
        let (prefix, suffix) = self.context();
        let Some(r) = self.completion.recent.get(context_key(&prefix, &suffix)) else {
            return false;
        };
        let (text, confidence) = (r.text.clone(), r.confidence.clone());
        self.completion.ghost = Some(Ghost::at(&self.buffer, text, confidence));
        true
    }

    /// The text before and after the cursor that a request sends.
    fn context(&self) -> (String, String) {
        let (doc, cursor) = (&self.buffer.doc, self.buffer.cursor);
        (
            doc.text_before(cursor, PREFIX_BYTES),
            doc.text_after(cursor, SUFFIX_BYTES),
        )
    }

    fn schedule(&mut self, now: Instant) {
        if self.completions_possible() {
            self.completion.due = Some(now + Duration::from_millis(self.config.debounce_ms));
        }
    }

    /// Fires the debounce deadline if it has passed.
    pub(super) fn completion_tick(&mut self, now: Instant) {
        if self.completion.due.is_some_and(|d| d <= now) {
            self.completion.due = None;
            self.request(RequestKind::Proposal);
        }
    }

    /// Asks the worker to index the file's git repository (the nearest folder above it with a
    /// `.git`); nothing outside a repository is indexed. Kept in infill's cache, so reopening
    /// indexes only the files that changed.
    fn build_memory(&mut self) {
        if !self.config.memory || !self.config.completions {
            return;
        }
        let Some(root) = self.repository() else {
            return;
        };
        let job = self.new_id();
        self.completion.memory = MemoryState::Building { job };
        self.requests.push(Job::Memory(MemoryRequest {
            id: job,
            roots: vec![root],
            cache: Store::cache_dir(),
            previous: None,
            walk: true,
            texts: Vec::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        }));
    }

    /// After a save: the memory catches up with the repository's files (this one and any that
    /// changed meanwhile), indexing only what changed.
    pub(super) fn refresh_memory(&mut self) {
        let Some(root) = self.repository() else {
            return;
        };
        let job = self.new_id();
        let MemoryState::Ready {
            memory, refresh, ..
        } = &mut self.completion.memory
        else {
            return;
        };
        *refresh = Some(job);
        let previous = Some(Arc::clone(memory));
        self.requests.push(Job::Memory(MemoryRequest {
            id: job,
            roots: vec![root],
            cache: Store::cache_dir(),
            previous,
            walk: true,
            texts: Vec::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        }));
    }

    /// F6: opens the file the last proposal from memory was found in, at its line, with the
    /// model and the memory kept. This file must be saved first: nothing unsaved is left behind.
    pub(super) fn go_to_source(&mut self) {
        let Some(source) = self.completion.last.as_ref().and_then(|p| p.source.clone()) else {
            self.warn("no proposal from repository memory to go to (F6 follows one)");
            return;
        };
        if self.absolute_path().as_deref() == Some(source.path.as_path()) {
            self.buffer
                .go_to(Pos::new(source.line.saturating_sub(1), 0));
            return;
        }
        if self.buffer.doc.is_modified() {
            self.warn(format!(
                "unsaved changes: save (Ctrl-S) before going to {}",
                self.short_source(&source)
            ));
            return;
        }
        let mut next = match crate::tui::open(&source.path, self.config.clone()) {
            Ok(next) => next,
            Err(e) => {
                self.warn(format!(
                    "cannot go to {}: {e:#}",
                    self.short_source(&source)
                ));
                return;
            }
        };
        self.completion.invalidate();
        // The ids go on from here, so a late reply to this file's requests is never taken for one
        // of the next file's.
        next.next_id = self.next_id;
        next.completion.model = self.completion.model.clone();
        if let MemoryState::Ready {
            memory,
            files,
            refresh,
            ..
        } = &self.completion.memory
        {
            let view = match next.absolute_path() {
                Some(path) => Arc::new(memory.without(&path)),
                None => Arc::clone(memory),
            };
            next.completion.memory = MemoryState::Ready {
                memory: Arc::clone(memory),
                view,
                files: *files,
                refresh: *refresh,
            };
        }
        let line = source.line.clamp(1, next.buffer.doc.line_count());
        let text = next.buffer.doc.line(line - 1);
        let indent = text.len() - text.trim_start().len();
        next.buffer.go_to(Pos::new(line - 1, indent));
        let from = self.file.path.display().to_string();
        *self = next;
        self.say(format!("{}:{line} (from {from})", self.file.path.display()));
    }

    /// `source` as the status line shows it: relative to the repository, or this file's line.
    pub(in crate::tui) fn short_source(&self, source: &Source) -> String {
        if self.absolute_path().as_deref() == Some(source.path.as_path()) {
            return format!("line {}", source.line);
        }
        let path = self
            .repository()
            .and_then(|root| source.path.strip_prefix(root).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| source.path.clone());
        format!("{}:{}", path.display(), source.line)
    }

    /// The file's absolute path, as the memory names files.
    fn absolute_path(&self) -> Option<PathBuf> {
        std::path::absolute(&self.file.path).ok()
    }

    /// The git repository the file is in.
    fn repository(&self) -> Option<PathBuf> {
        self.absolute_path()?
            .ancestors()
            .skip(1)
            .find(|d| d.join(".git").exists())
            .map(std::path::Path::to_path_buf)
    }

    /// Ctrl-Space, or the trigger key: ask now.
    pub(super) fn ask_now(&mut self) {
        self.completion.due = None;
        self.request(RequestKind::Proposal);
    }

    fn request(&mut self, kind: RequestKind) {
        if !self.completions_possible() {
            return;
        }
        self.completion.cancel_in_flight();
        self.overlay.yield_to_completion();
        let id = self.new_id();
        let cancel = Arc::new(AtomicBool::new(false));
        let sampling = match kind {
            RequestKind::Proposal => Sampling::default(),
            RequestKind::Alternative => Sampling::alternative(id),
        };
        let prior = match &self.completion.memory {
            MemoryState::Ready { view, .. } => Some(Arc::clone(view) as Arc<dyn Prior>),
            _ => None,
        };
        let repository = prior
            .as_ref()
            .filter(|_| self.config.memory_prompt)
            .and_then(|source| {
                RepositoryPrompt::for_file(
                    Arc::clone(source),
                    self.repository()?,
                    &self.absolute_path()?,
                )
            });
        let settings = Settings {
            prior,
            repository,
            ..Settings::interactive(sampling, self.config.max_tokens, self.config.min_confidence)
        };
        let (prefix, suffix) = self.context();
        let key = context_key(&prefix, &suffix);
        self.requests.push(Job::Complete(Request {
            id,
            prefix,
            suffix,
            language: self.file.language,
            settings,
            preview: Preview::Trimmed,
            cancel: Arc::clone(&cancel),
        }));
        self.completion.in_flight = Some(InFlight {
            id,
            kind,
            cancel,
            key,
        });
        if kind == RequestKind::Proposal {
            self.completion.ghost = Some(Ghost::at(&self.buffer, String::new(), Vec::new()));
        }
    }

    /// A reply about the model or a proposal; false when it is not one (the overlay's replies).
    pub(super) fn completion_reply(&mut self, reply: Reply) -> Option<Reply> {
        let c = &mut self.completion;
        match reply {
            Reply::Ready { model } => {
                c.model = ModelState::Ready(model);
                self.apply_first_adapter();
                self.build_memory();
            }
            Reply::Memory {
                id, memory, files, ..
            } => {
                let ours = match c.memory {
                    MemoryState::Building { job } => job == id,
                    MemoryState::Ready { refresh, .. } => refresh == Some(id),
                    MemoryState::Off => false,
                };
                if ours {
                    let view = match self.absolute_path() {
                        Some(path) => Arc::new(memory.without(&path)),
                        None => Arc::clone(&memory),
                    };
                    self.completion.memory = MemoryState::Ready {
                        memory,
                        view,
                        files,
                        refresh: None,
                    };
                }
            }
            Reply::Failed { id, ref message } if matches!(c.memory, MemoryState::Building { job } if job == id) =>
            {
                c.memory = MemoryState::Off;
                self.warn(format!("no repository memory: {message}"));
            }
            Reply::Failed { id, ref message } if matches!(c.memory, MemoryState::Ready { refresh, .. } if refresh == Some(id)) =>
            {
                if let MemoryState::Ready { refresh, .. } = &mut c.memory {
                    *refresh = None;
                }
                self.warn(format!("repository memory not updated: {message}"));
            }
            Reply::Unavailable { message } => {
                c.invalidate();
                self.warn(format!("no completions: {message}"));
                self.completion.model = ModelState::Unavailable(message);
            }
            Reply::Partial { id, text } => {
                if c.current(id) == Some(RequestKind::Proposal)
                    && let Some(g) = c.ghost.as_mut()
                    && let Some(p) = g.proposals.get_mut(0)
                {
                    *p = text;
                }
            }
            Reply::Done { id, proposal } => self.done(id, proposal),
            Reply::Failed { id, ref message } if c.current(id).is_some() => {
                c.in_flight = None;
                self.warn(format!("completion failed: {message}"));
            }
            other => return Some(other),
        }
        None
    }

    fn done(&mut self, id: u64, mut proposal: Proposal) {
        let c = &mut self.completion;
        let Some(kind) = c.current(id) else {
            return;
        };
        let key = c.in_flight.take().map_or(0, |f| f.key);
        // The text goes to the ghost; the figures stay for the status line.
        let text = std::mem::take(&mut proposal.text);
        let confidence = std::mem::take(&mut proposal.confidence);
        if kind == RequestKind::Proposal && !text.is_empty() {
            c.recent.insert(key, text.clone(), confidence.clone());
        }
        c.last = Some(proposal);
        let Some(g) = c.ghost.as_mut() else {
            return;
        };
        match kind {
            RequestKind::Proposal => {
                if let Some(p) = g.proposals.get_mut(0) {
                    *p = text;
                }
                if let Some(c) = g.confidence.get_mut(0) {
                    *c = confidence;
                }
                if g.shown().is_empty() {
                    c.ghost = None;
                }
            }
            RequestKind::Alternative => {
                let fresh = !text.trim().is_empty()
                    && text.starts_with(g.typed.as_str())
                    && !g.proposals.contains(&text);
                if fresh {
                    g.proposals.push(text);
                    g.confidence.push(confidence);
                    g.index = g.proposals.len() - 1;
                } else {
                    self.say("no other proposal");
                }
            }
        }
    }

    /// A key in normal mode while a proposal is shown or coming: true when it was a completion key
    /// that applied (otherwise the key does its usual job).
    pub(super) fn completion_key(&mut self, action: Option<Action>, now: Instant) -> bool {
        if self.visible_ghost().is_some() || self.completion.is_thinking() {
            return action.is_some_and(|a| self.completion_action(a, now));
        }
        if action == Some(Action::Trigger) {
            self.ask_now();
            return true;
        }
        false
    }

    /// Runs a completion key; false when it does not apply.
    fn completion_action(&mut self, action: Action, now: Instant) -> bool {
        let shown = self.ghost_text().to_owned();
        match action {
            Action::Accept if !shown.is_empty() => self.accept(&shown, now),
            Action::AcceptWord if !shown.is_empty() => {
                let end = display::word_end(&shown, 0);
                self.accept(shown.get(..end).unwrap_or(&shown), now);
            }
            Action::AcceptLine if !shown.is_empty() => {
                let end = match shown.find('\n') {
                    // A proposal that starts on a new line: take that next line.
                    Some(0) => shown
                        .get(1..)
                        .and_then(|r| r.find('\n'))
                        .map_or(shown.len(), |i| i + 1),
                    Some(i) => i,
                    None => shown.len(),
                };
                self.accept(shown.get(..end).unwrap_or(&shown), now);
            }
            Action::Dismiss => self.completion.invalidate(),
            Action::NextAlternative => self.cycle(true),
            Action::PreviousAlternative => self.cycle(false),
            Action::Trigger => self.ask_now(),
            _ => return false,
        }
        true
    }

    /// Inserts part of the proposal as one undo step; the rest stays shown (like typing it).
    fn accept(&mut self, part: &str, now: Instant) {
        self.buffer.doc.seal();
        self.buffer.insert_at_cursor(part, Group::Single);
        self.buffer.doc.seal();
        self.took(part, now);
    }

    /// Typed text that matches the start of the proposal keeps the rest of it, with no new
    /// request; false when it does not match (the app then inserts it as an ordinary edit).
    pub(super) fn type_through(&mut self, text: &str, group: Group, now: Instant) -> bool {
        let matches = self
            .visible_ghost()
            .is_some_and(|g| !text.is_empty() && g.shown().starts_with(text));
        if matches {
            self.buffer.insert_at_cursor(text, group);
            self.took(text, now);
        }
        matches
    }

    /// `part` of the proposal is now text: the ghost follows the cursor; once all of it is taken,
    /// the next proposal is asked for.
    fn took(&mut self, part: &str, now: Instant) {
        let (cursor, version) = (self.buffer.cursor, self.buffer.doc.version());
        let thinking = self.completion.is_thinking();
        let Some(g) = self.completion.ghost.as_mut() else {
            return;
        };
        g.typed.push_str(part);
        g.anchor = cursor;
        g.version = version;
        if g.shown().is_empty() && !thinking {
            self.completion.ghost = None;
            self.schedule(now);
        }
    }

    fn cycle(&mut self, forward: bool) {
        if self.completion.is_thinking() {
            return;
        }
        let Some(g) = self.completion.ghost.as_mut() else {
            return;
        };
        if forward {
            if g.index + 1 < g.proposals.len() {
                g.index += 1;
            } else {
                self.request(RequestKind::Alternative);
                self.say("sampling another proposal…");
            }
        } else {
            g.index = g.index.checked_sub(1).unwrap_or(g.proposals.len() - 1);
        }
    }
}
