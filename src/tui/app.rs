//! The editor's state and what every key does. Nothing here touches a terminal or a model: keys and
//! worker replies come in as [`Event`]s, requests for the model go out through
//! [`App::take_requests`], and [`App::draw`](super::view) paints a ratatui frame. That is what lets
//! tests drive the whole editor with a `TestBackend` and fake replies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

mod edit;
mod file;
mod find;
pub mod overlay;

use super::config::{Action, Config};
use crate::complete::Settings;
use crate::model::generate::{Limits, Sampling};
use crate::syntax::Language;
use crate::text::display;
use crate::text::{Document, Group, Pos};
use crate::worker::{Job, Proposal, Reply, Request};

/// Everything the editor reacts to.
#[derive(Debug, Clone)]
pub enum Event {
    Key(KeyEvent),
    /// Bracketed paste: the text arrives at once.
    Paste(String),
    Resize,
    Worker(Reply),
    /// SIGTERM or SIGHUP: write the recovery file and leave.
    Terminate,
}

/// When the file on disk was last seen, to notice changes made by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStamp {
    pub modified: Option<SystemTime>,
    pub len: u64,
}

impl DiskStamp {
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: m.modified().ok(),
            len: m.len(),
        })
    }
}

/// The file being edited.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: PathBuf,
    pub language: Option<&'static Language>,
    /// `None`: a new file, not on disk yet.
    pub disk: Option<DiskStamp>,
    /// Where unsaved text goes if the editor is killed.
    pub recovery: Option<PathBuf>,
}

/// A recovery file found when the file was opened.
#[derive(Debug, Clone)]
pub struct RecoveryOffer {
    pub path: PathBuf,
    pub text: String,
    pub written: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ModelState {
    Loading,
    Ready(String),
    Unavailable(String),
}

/// Proposals shown at the cursor, never part of the document until accepted.
#[derive(Debug, Clone)]
pub(super) struct Ghost {
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
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Mode {
    Normal,
    Find {
        query: String,
        origin: Pos,
    },
    /// Ctrl-G: the line number typed so far.
    GoToLine(String),
    ConfirmQuit,
    ConfirmOverwrite,
    Help,
    Recover(RecoveryOffer),
}

impl PartialEq for RecoveryOffer {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

#[derive(Debug, Clone)]
pub(super) struct Message {
    pub text: String,
    pub error: bool,
}

/// The editor.
pub struct App {
    pub(super) doc: Document,
    pub(super) cursor: Pos,
    /// The other end of the selection, when there is one.
    pub(super) anchor: Option<Pos>,
    /// Screen column kept while moving up and down through shorter lines.
    goal_col: Option<usize>,
    pub(super) top: usize,
    pub(super) left: usize,
    /// Size of the text area at the last draw (rows, columns).
    pub(super) view: (usize, usize),
    pub(super) file: FileInfo,
    pub(super) config: Config,
    pub(super) ghost: Option<Ghost>,
    in_flight: Option<InFlight>,
    due: Option<Instant>,
    next_id: u64,
    pub(super) mode: Mode,
    pub(super) message: Option<Message>,
    clipboard: String,
    /// Copied text for the terminal's clipboard (OSC 52), taken by the event loop.
    copied: Option<String>,
    pub(super) model: ModelState,
    pub(super) last: Option<Proposal>,
    requests: Vec<Job>,
    /// A signal ended the editor (not the user's own quit).
    terminated: bool,
    pub(super) overlay: overlay::Overlay,
    quit: bool,
    pub(super) highlight: super::view::HighlightCache,
}

/// Bytes of text around the cursor sent with a request; the prompt builder cuts it to tokens.
const PREFIX_BYTES: usize = 24 * 1024;
const SUFFIX_BYTES: usize = 8 * 1024;

impl App {
    pub fn new(
        text: &str,
        file: FileInfo,
        config: Config,
        recovery: Option<RecoveryOffer>,
    ) -> Self {
        let mode = recovery.map_or(Mode::Normal, Mode::Recover);
        Self {
            doc: Document::from_text(text),
            cursor: Pos::default(),
            anchor: None,
            goal_col: None,
            top: 0,
            left: 0,
            view: (24, 80),
            file,
            config,
            ghost: None,
            in_flight: None,
            due: None,
            next_id: 1,
            mode,
            message: None,
            clipboard: String::new(),
            copied: None,
            model: ModelState::Loading,
            last: None,
            requests: Vec::new(),
            terminated: false,
            overlay: overlay::Overlay::default(),
            quit: false,
            highlight: super::view::HighlightCache::default(),
        }
    }

    pub fn document(&self) -> &Document {
        &self.doc
    }

    pub fn cursor(&self) -> Pos {
        self.cursor
    }

    /// The ghost text shown at the cursor now (empty when none).
    pub fn ghost_text(&self) -> &str {
        self.visible_ghost().map_or("", Ghost::shown)
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// A signal (SIGTERM, SIGHUP) ended the editor, rather than the user quitting.
    pub fn was_terminated(&self) -> bool {
        self.terminated
    }

    /// Requests for the model made since the last call.
    pub fn take_requests(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.requests)
    }

    /// When [`Self::tick`] should run next (the debounce deadline, or the overlay's refresh).
    pub fn deadline(&self) -> Option<Instant> {
        match (self.due, self.overlay_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Text copied or cut since the last call, for the system clipboard.
    pub fn take_copied(&mut self) -> Option<String> {
        self.copied.take()
    }

    fn copy(&mut self) {
        self.clipboard = self.selection_or_line();
        self.copied = Some(self.clipboard.clone());
    }

    /// The status line's message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.text.as_str())
    }

    /// Whether a generation is running.
    pub fn is_thinking(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The recovery file to write if the editor must stop with unsaved changes.
    pub fn recovery_path(&self) -> Option<&Path> {
        self.file.recovery.as_deref()
    }

    /// Fires the debounce deadline if it has passed.
    pub fn tick(&mut self, now: Instant) {
        if self.due.is_some_and(|d| d <= now) {
            self.due = None;
            self.request(RequestKind::Proposal);
        }
        self.overlay_tick(now);
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Key(k) if k.kind != KeyEventKind::Release => self.key(k, now),
            Event::Key(_) | Event::Resize => {}
            Event::Paste(text) => {
                if self.mode == Mode::Normal {
                    self.insert(&text, Group::Single, now);
                }
            }
            Event::Worker(reply) => self.reply(reply),
            Event::Terminate => {
                self.quit = true;
                self.terminated = true;
            }
        }
        self.overlay_after_event(now);
    }

    pub(super) fn visible_ghost(&self) -> Option<&Ghost> {
        self.ghost.as_ref().filter(|g| {
            g.anchor == self.cursor && g.version == self.doc.version() && self.anchor.is_none()
        })
    }

    fn say(&mut self, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            error: false,
        });
    }

    fn warn(&mut self, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            error: true,
        });
    }

    // ----- the model -------------------------------------------------------------------------

    fn completions_possible(&self) -> bool {
        self.config.completions && !matches!(self.model, ModelState::Unavailable(_))
    }

    fn cancel_in_flight(&mut self) {
        if let Some(f) = self.in_flight.take() {
            f.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The text changed or the cursor moved: old proposals and requests are void.
    fn invalidate(&mut self) {
        self.cancel_in_flight();
        self.ghost = None;
        self.due = None;
    }

    fn schedule(&mut self, now: Instant) {
        if self.completions_possible() {
            self.due = Some(now + Duration::from_millis(self.config.debounce_ms));
        }
    }

    fn request(&mut self, kind: RequestKind) {
        if !self.completions_possible() {
            return;
        }
        self.cancel_in_flight();
        self.overlay.yield_to_completion();
        let id = self.next_id;
        self.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let sampling = match kind {
            RequestKind::Proposal => Sampling::default(),
            RequestKind::Alternative => Sampling {
                temperature: 0.8,
                top_k: 0,
                top_p: 0.95,
                seed: id,
            },
        };
        let settings = Settings {
            sampling,
            limits: Limits {
                max_tokens: self.config.max_tokens,
                time_budget: Some(Duration::from_secs(10)),
                top_alternatives: 0,
                ..Limits::default()
            },
            context_tokens: Some(1024),
            min_confidence: self.config.min_confidence,
            ..Settings::default()
        };
        self.requests.push(Job::Complete(Request {
            id,
            prefix: self.doc.text_before(self.cursor, PREFIX_BYTES),
            suffix: self.doc.text_after(self.cursor, SUFFIX_BYTES),
            language: self.file.language,
            settings,
            cancel: Arc::clone(&cancel),
        }));
        self.in_flight = Some(InFlight { id, kind, cancel });
        if kind == RequestKind::Proposal {
            self.ghost = Some(Ghost {
                anchor: self.cursor,
                version: self.doc.version(),
                proposals: vec![String::new()],
                confidence: vec![Vec::new()],
                index: 0,
                typed: String::new(),
            });
        }
    }

    fn reply(&mut self, reply: Reply) {
        match reply {
            Reply::Ready { model } => self.model = ModelState::Ready(model),
            Reply::Unavailable { message } => {
                self.invalidate();
                self.warn(format!("no completions: {message}"));
                self.model = ModelState::Unavailable(message);
            }
            Reply::Partial { id, text } => {
                if let Some(kind) = self.current(id)
                    && kind == RequestKind::Proposal
                    && let Some(g) = self.ghost.as_mut()
                    && let Some(p) = g.proposals.get_mut(0)
                {
                    *p = text;
                }
            }
            Reply::Done { id, mut proposal } => {
                let Some(kind) = self.current(id) else {
                    return;
                };
                self.in_flight = None;
                // The text goes to the ghost; the figures stay for the status line.
                let text = std::mem::take(&mut proposal.text);
                let confidence = std::mem::take(&mut proposal.confidence);
                self.last = Some(proposal);
                let Some(g) = self.ghost.as_mut() else {
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
                            self.ghost = None;
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
            Reply::Scored { id, from, tokens } => self.overlay_scored(id, from, tokens),
            Reply::ScoreDone {
                id,
                tokens_per_second,
                ms,
            } => self.overlay_done(id, tokens_per_second, ms),
            Reply::Failed { id, message } => {
                if self.overlay_failed(id) {
                    self.warn(format!("overlay off: {message}"));
                } else if self.current(id).is_some() {
                    self.in_flight = None;
                    self.warn(format!("completion failed: {message}"));
                }
            }
        }
    }

    /// The kind of request `id`, if it is the one in flight.
    fn current(&self, id: u64) -> Option<RequestKind> {
        self.in_flight
            .as_ref()
            .filter(|f| f.id == id)
            .map(|f| f.kind)
    }

    // ----- keys ------------------------------------------------------------------------------

    fn key(&mut self, k: KeyEvent, now: Instant) {
        match &self.mode {
            Mode::Normal => {}
            Mode::Help => {
                self.mode = Mode::Normal;
                return;
            }
            Mode::Find { .. } => return self.find_key(k),
            Mode::GoToLine(_) => return self.go_to_line_key(k),
            Mode::Recover(_) => return self.recover_key(k),
            Mode::ConfirmQuit => {
                self.mode = Mode::Normal;
                self.message = None;
                if is_ctrl(&k, 'q') {
                    self.quit = true;
                    return;
                }
            }
            Mode::ConfirmOverwrite => {
                self.mode = Mode::Normal;
                self.message = None;
                if is_ctrl(&k, 's') {
                    self.write();
                    return;
                }
            }
        }
        self.message = None;
        if self.visible_ghost().is_some() || self.in_flight.is_some() {
            if let Some(action) = self.config.keymap.action(&k)
                && self.completion_action(action, now)
            {
                return;
            }
        } else if self.config.keymap.action(&k) == Some(Action::Trigger) {
            self.due = None;
            self.request(RequestKind::Proposal);
            return;
        }
        let shift = k.modifiers.contains(KeyModifiers::SHIFT);
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        match k.code {
            KeyCode::Char(c) if ctrl && !alt => self.control(c.to_ascii_lowercase(), shift, now),
            // An Alt chord that is not bound is not text (AltGr characters come without Alt on
            // Unix terminals, and as Ctrl+Alt on Windows, which stays text).
            KeyCode::Char(_) if alt && !ctrl => {}
            KeyCode::Char(c) => self.type_char(c, now),
            KeyCode::Enter => self.enter(now),
            KeyCode::Tab => self.tab(now),
            KeyCode::BackTab => self.dedent(now),
            KeyCode::Backspace => self.backspace(ctrl, now),
            KeyCode::Delete => self.delete(ctrl, now),
            KeyCode::F(1) => self.mode = Mode::Help,
            KeyCode::F(2) => self.toggle_overlay(now),
            KeyCode::F(3) => self.jump_to_surprise(!shift),
            KeyCode::F(4) => {
                self.config.confidence_colours = !self.config.confidence_colours;
                self.say(if self.config.confidence_colours {
                    "proposals coloured by confidence: dim p >= 0.5, yellow 0.2-0.5, red < 0.2 (F4 off)"
                } else {
                    "proposal confidence colours off"
                });
            }
            KeyCode::Left
            | KeyCode::Right
            | KeyCode::Up
            | KeyCode::Down
            | KeyCode::Home
            | KeyCode::End
            | KeyCode::PageUp
            | KeyCode::PageDown => self.motion(k.code, ctrl, shift),
            KeyCode::Esc => {
                self.invalidate();
                self.anchor = None;
            }
            _ => {}
        }
    }

    /// Runs a completion key; false when it does not apply (the key then does its usual job).
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
            Action::Dismiss => self.invalidate(),
            Action::NextAlternative => self.cycle(true),
            Action::PreviousAlternative => self.cycle(false),
            Action::Trigger => {
                self.due = None;
                self.request(RequestKind::Proposal);
            }
            _ => return false,
        }
        true
    }

    /// Inserts part of the proposal; the rest stays shown (like typing it).
    fn accept(&mut self, part: &str, now: Instant) {
        let at = self.cursor;
        self.doc.seal();
        self.cursor = self.doc.replace(at, at, part, Group::Single, at);
        self.doc.seal();
        self.goal_col = None;
        if let Some(g) = self.ghost.as_mut() {
            g.typed.push_str(part);
            g.anchor = self.cursor;
            g.version = self.doc.version();
            if g.shown().is_empty() && self.in_flight.is_none() {
                self.ghost = None;
                self.schedule(now);
            }
        }
    }

    fn cycle(&mut self, forward: bool) {
        let Some(g) = self.ghost.as_mut() else {
            return;
        };
        if self.in_flight.is_some() {
            return;
        }
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

    fn control(&mut self, c: char, shift: bool, now: Instant) {
        match c {
            's' => self.save(),
            'q' => {
                if self.doc.is_modified() {
                    self.mode = Mode::ConfirmQuit;
                    self.warn("unsaved changes: Ctrl-Q again quits without saving, Ctrl-S saves");
                } else {
                    self.quit = true;
                }
            }
            'z' if shift => self.redo(),
            'z' => self.undo(),
            'y' => self.redo(),
            'c' => self.copy(),
            'x' => {
                self.copy();
                let (a, b) = self.selection().unwrap_or_else(|| self.line_range());
                self.replace_range(a, b, "", Group::Single, now);
            }
            'v' => {
                let text = self.clipboard.clone();
                self.insert(&text, Group::Single, now);
            }
            'a' => {
                self.invalidate();
                self.anchor = Some(Pos::default());
                self.cursor = self.doc.end();
            }
            'f' => {
                self.invalidate();
                self.mode = Mode::Find {
                    query: String::new(),
                    origin: self.cursor,
                };
            }
            'g' => {
                self.invalidate();
                self.mode = Mode::GoToLine(String::new());
            }
            ' ' => {
                self.due = None;
                self.request(RequestKind::Proposal);
            }
            _ => {}
        }
    }
}

fn is_ctrl(k: &KeyEvent, c: char) -> bool {
    k.modifiers.contains(KeyModifiers::CONTROL)
        && matches!(k.code, KeyCode::Char(x) if x.eq_ignore_ascii_case(&c))
}
