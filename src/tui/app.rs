//! The editor's state and what every key does. Nothing here touches a terminal or a model: keys and
//! worker replies come in as [`Event`]s, requests for the model go out through
//! [`App::take_requests`], and [`App::draw`](super::view) paints a ratatui frame. That is what lets
//! tests drive the whole editor with a `TestBackend` and fake replies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::config::{Action, Config};
use crate::complete::Settings;
use crate::model::generate::{Limits, Sampling};
use crate::syntax::Language;
use crate::text::display;
use crate::text::{Document, Group, Pos};
use crate::worker::{Proposal, Reply, Request};

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
    pub index: usize,
    /// What the user typed (or accepted word by word) of the current proposal since it was shown.
    pub typed: String,
}

impl Ghost {
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
    Find { query: String, origin: Pos },
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
    pub(super) model: ModelState,
    pub(super) last: Option<Proposal>,
    requests: Vec<Request>,
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
            model: ModelState::Loading,
            last: None,
            requests: Vec::new(),
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

    /// Requests for the model made since the last call.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    /// When [`Self::tick`] should run next (the debounce deadline).
    pub fn deadline(&self) -> Option<Instant> {
        self.due
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
            Event::Terminate => self.quit = true,
        }
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
            },
            context_tokens: Some(1024),
            ..Settings::default()
        };
        self.requests.push(Request {
            id,
            prefix: self.doc.text_before(self.cursor, PREFIX_BYTES),
            suffix: self.doc.text_after(self.cursor, SUFFIX_BYTES),
            language: self.file.language,
            settings,
            cancel: Arc::clone(&cancel),
        });
        self.in_flight = Some(InFlight { id, kind, cancel });
        if kind == RequestKind::Proposal {
            self.ghost = Some(Ghost {
                anchor: self.cursor,
                version: self.doc.version(),
                proposals: vec![String::new()],
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
            Reply::Done { id, proposal } => {
                let Some(kind) = self.current(id) else {
                    return;
                };
                self.in_flight = None;
                let text = proposal.text.clone();
                self.last = Some(proposal);
                let Some(g) = self.ghost.as_mut() else {
                    return;
                };
                match kind {
                    RequestKind::Proposal => {
                        if let Some(p) = g.proposals.get_mut(0) {
                            *p = text;
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
                            g.index = g.proposals.len() - 1;
                        } else {
                            self.say("no other proposal");
                        }
                    }
                }
            }
            Reply::Failed { id, message } => {
                if self.current(id).is_some() {
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
            KeyCode::Char(c) => self.type_char(c, now),
            KeyCode::Enter => self.enter(now),
            KeyCode::Tab => self.tab(now),
            KeyCode::BackTab => self.dedent(now),
            KeyCode::Backspace => self.backspace(ctrl, now),
            KeyCode::Delete => self.delete(ctrl, now),
            KeyCode::F(1) => self.mode = Mode::Help,
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
            'c' => {
                self.clipboard = self.selection_or_line();
            }
            'x' => {
                self.clipboard = self.selection_or_line();
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
            ' ' => {
                self.due = None;
                self.request(RequestKind::Proposal);
            }
            _ => {}
        }
    }

    // ----- editing ---------------------------------------------------------------------------

    pub(super) fn selection(&self) -> Option<(Pos, Pos)> {
        let a = self.anchor?;
        (a != self.cursor).then(|| (a.min(self.cursor), a.max(self.cursor)))
    }

    fn line_range(&self) -> (Pos, Pos) {
        let line = self.cursor.line;
        if line + 1 < self.doc.line_count() {
            (Pos::new(line, 0), Pos::new(line + 1, 0))
        } else if line > 0 {
            (
                Pos::new(line - 1, self.doc.line(line - 1).len()),
                Pos::new(line, self.doc.line(line).len()),
            )
        } else {
            (Pos::new(0, 0), Pos::new(0, self.doc.line(0).len()))
        }
    }

    fn selection_or_line(&self) -> String {
        match self.selection() {
            Some((a, b)) => self.doc.slice(a, b),
            None => format!("{}\n", self.doc.line(self.cursor.line)),
        }
    }

    fn replace_range(&mut self, a: Pos, b: Pos, text: &str, group: Group, now: Instant) {
        let before = self.cursor;
        self.cursor = self.doc.replace(a, b, text, group, before);
        self.anchor = None;
        self.goal_col = None;
        self.invalidate();
        self.schedule(now);
    }

    /// Inserts at the cursor (over the selection): the one path for typed and pasted text.
    fn insert(&mut self, text: &str, group: Group, now: Instant) {
        if let Some((a, b)) = self.selection() {
            self.doc.seal();
            return self.replace_range(a, b, text, Group::Single, now);
        }
        // Type-through: text that matches the start of the ghost keeps the rest, no new request.
        if let Some(g) = self.visible_ghost()
            && !text.is_empty()
            && g.shown().starts_with(text)
        {
            let at = self.cursor;
            self.cursor = self.doc.replace(at, at, text, group, at);
            self.goal_col = None;
            if let Some(g) = self.ghost.as_mut() {
                g.typed.push_str(text);
                g.anchor = self.cursor;
                g.version = self.doc.version();
                if g.shown().is_empty() && self.in_flight.is_none() {
                    self.ghost = None;
                    self.schedule(now);
                }
            }
            return;
        }
        let at = self.cursor;
        self.replace_range(at, at, text, group, now);
    }

    fn type_char(&mut self, c: char, now: Instant) {
        let group = if c.is_alphanumeric() || c == '_' {
            Group::Typing
        } else {
            self.doc.seal();
            Group::Single
        };
        let mut buf = [0u8; 4];
        self.insert(c.encode_utf8(&mut buf), group, now);
    }

    /// The indentation one level deeper than `indent`, in the file's style.
    fn indent_unit(&self) -> String {
        let lines = self.doc.lines();
        let sample = lines.iter().take(2000);
        let (mut tabs, mut spaces) = (0, 0);
        let mut smallest = usize::MAX;
        for l in sample {
            if l.starts_with('\t') {
                tabs += 1;
            } else if l.starts_with(' ') && !l.trim().is_empty() {
                spaces += 1;
                smallest = smallest.min(l.len() - l.trim_start_matches(' ').len());
            }
        }
        if tabs > spaces {
            "\t".into()
        } else if (2..=8).contains(&smallest) {
            " ".repeat(smallest)
        } else {
            " ".repeat(self.config.tab_width)
        }
    }

    fn enter(&mut self, now: Instant) {
        let line = self.doc.line(self.cursor.line);
        let col = self.selection().map_or(self.cursor.col, |(a, _)| {
            if a.line == self.cursor.line {
                a.col
            } else {
                self.cursor.col
            }
        });
        let indent: String = line
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        let before = line.get(..col).unwrap_or("").trim_end();
        let after = line.get(col..).unwrap_or("").trim_start();
        let opens = before.ends_with(['{', '[', '(', ':']);
        let closes = after.starts_with(['}', ']', ')']);
        let mut text = format!("\n{indent}");
        if opens {
            text.push_str(&self.indent_unit());
        }
        self.doc.seal();
        if opens && closes && self.visible_ghost().is_none() {
            // `{|}` becomes an indented empty line with the brace below it.
            let at = self.cursor;
            self.doc
                .replace(at, at, &format!("{text}\n{indent}"), Group::Single, at);
            self.cursor = Document::end_of_insert(at, &text);
            self.anchor = None;
            self.invalidate();
            self.schedule(now);
            return;
        }
        self.insert(&text, Group::Single, now);
    }

    fn tab(&mut self, now: Instant) {
        if let Some((a, b)) = self.selection()
            && a.line != b.line
        {
            return self.indent_lines(a.line, b.line, true, now);
        }
        let unit = self.indent_unit();
        let text = if unit == "\t" {
            unit
        } else {
            let col = display::column_of(
                self.doc.line(self.cursor.line),
                self.cursor.col,
                self.config.tab_width,
            );
            " ".repeat(unit.len() - col % unit.len())
        };
        self.doc.seal();
        self.insert(&text, Group::Single, now);
    }

    fn dedent(&mut self, now: Instant) {
        let (a, b) = self.selection().unwrap_or((self.cursor, self.cursor));
        self.indent_lines(a.line, b.line, false, now);
    }

    /// Indents (or dedents) lines `first..=last` by one unit, as one undo step.
    fn indent_lines(&mut self, first: usize, last: usize, deeper: bool, now: Instant) {
        let unit = self.indent_unit();
        let last = if last > first && self.selection().is_some_and(|(_, b)| b.col == 0) {
            last - 1
        } else {
            last
        };
        let old: Vec<String> = (first..=last)
            .map(|i| self.doc.line(i).to_owned())
            .collect();
        let new: Vec<String> = old
            .iter()
            .map(|l| {
                if deeper {
                    if l.is_empty() {
                        l.clone()
                    } else {
                        format!("{unit}{l}")
                    }
                } else if let Some(rest) = l.strip_prefix(unit.as_str()) {
                    rest.to_owned()
                } else {
                    l.trim_start_matches(|c| c == ' ' || c == '\t').to_owned()
                }
            })
            .collect();
        if old == new {
            return;
        }
        let (cursor, anchor) = (self.cursor, self.anchor);
        let start = Pos::new(first, 0);
        let end = Pos::new(last, self.doc.line(last).len());
        self.doc.seal();
        self.doc
            .replace(start, end, &new.join("\n"), Group::Single, cursor);
        let shift = |p: Pos| {
            if (first..=last).contains(&p.line) {
                let i = p.line - first;
                let delta = new[i].len() as isize - old[i].len() as isize;
                self.doc
                    .clamp(Pos::new(p.line, (p.col as isize + delta).max(0) as usize))
            } else {
                p
            }
        };
        self.cursor = shift(cursor);
        self.anchor = anchor.map(shift);
        self.invalidate();
        self.schedule(now);
    }

    fn backspace(&mut self, word: bool, now: Instant) {
        if let Some((a, b)) = self.selection() {
            self.doc.seal();
            return self.replace_range(a, b, "", Group::Single, now);
        }
        let c = self.cursor;
        let start = if c.col > 0 {
            let line = self.doc.line(c.line);
            let col = if word {
                display::word_start(line, c.col)
            } else {
                display::prev_boundary(line, c.col)
            };
            Pos::new(c.line, col)
        } else if c.line > 0 {
            Pos::new(c.line - 1, self.doc.line(c.line - 1).len())
        } else {
            return;
        };
        self.doc.seal();
        self.replace_range(start, c, "", Group::Single, now);
    }

    fn delete(&mut self, word: bool, now: Instant) {
        if let Some((a, b)) = self.selection() {
            self.doc.seal();
            return self.replace_range(a, b, "", Group::Single, now);
        }
        let c = self.cursor;
        let line = self.doc.line(c.line);
        let end = if c.col < line.len() {
            let col = if word {
                display::word_end(line, c.col)
            } else {
                display::next_boundary(line, c.col)
            };
            Pos::new(c.line, col)
        } else if c.line + 1 < self.doc.line_count() {
            Pos::new(c.line + 1, 0)
        } else {
            return;
        };
        self.doc.seal();
        self.replace_range(c, end, "", Group::Single, now);
    }

    fn undo(&mut self) {
        self.invalidate();
        self.anchor = None;
        match self.doc.undo() {
            Some(p) => self.cursor = p,
            None => self.say("nothing to undo"),
        }
    }

    fn redo(&mut self) {
        self.invalidate();
        self.anchor = None;
        match self.doc.redo() {
            Some(p) => self.cursor = p,
            None => self.say("nothing to redo"),
        }
    }

    // ----- motion ----------------------------------------------------------------------------

    fn motion(&mut self, code: KeyCode, ctrl: bool, shift: bool) {
        if shift {
            self.anchor.get_or_insert(self.cursor);
        } else if let Some((a, b)) = self.selection() {
            // Left/Right on a selection go to its edge.
            self.anchor = None;
            if matches!(code, KeyCode::Left | KeyCode::Right) && !ctrl {
                self.cursor = if code == KeyCode::Left { a } else { b };
                self.after_motion();
                return;
            }
        } else {
            self.anchor = None;
        }
        let c = self.cursor;
        let line = self.doc.line(c.line);
        let tab = self.config.tab_width;
        let page = self.view.0.max(2) - 1;
        let col = self
            .goal_col
            .unwrap_or_else(|| display::column_of(line, c.col, tab));
        let vertical = |app: &Self, target: usize| {
            let target = target.min(app.doc.line_count() - 1);
            Pos::new(
                target,
                display::byte_at_column(app.doc.line(target), col, tab),
            )
        };
        self.cursor = match code {
            KeyCode::Left if ctrl => {
                if c.col == 0 && c.line > 0 {
                    Pos::new(c.line - 1, self.doc.line(c.line - 1).len())
                } else {
                    Pos::new(c.line, display::word_start(line, c.col))
                }
            }
            KeyCode::Right if ctrl => {
                if c.col == line.len() && c.line + 1 < self.doc.line_count() {
                    Pos::new(c.line + 1, 0)
                } else {
                    Pos::new(c.line, display::word_end(line, c.col))
                }
            }
            KeyCode::Left if c.col > 0 => Pos::new(c.line, display::prev_boundary(line, c.col)),
            KeyCode::Left if c.line > 0 => Pos::new(c.line - 1, self.doc.line(c.line - 1).len()),
            KeyCode::Right if c.col < line.len() => {
                Pos::new(c.line, display::next_boundary(line, c.col))
            }
            KeyCode::Right if c.line + 1 < self.doc.line_count() => Pos::new(c.line + 1, 0),
            KeyCode::Up if c.line > 0 => vertical(self, c.line - 1),
            KeyCode::Up => Pos::new(0, 0),
            KeyCode::Down if c.line + 1 < self.doc.line_count() => vertical(self, c.line + 1),
            KeyCode::Down => Pos::new(c.line, line.len()),
            KeyCode::PageUp => vertical(self, c.line.saturating_sub(page)),
            KeyCode::PageDown => vertical(self, c.line + page),
            KeyCode::Home if ctrl => Pos::default(),
            KeyCode::End if ctrl => self.doc.end(),
            KeyCode::Home => {
                // First non-blank, then column 0.
                let indent = line.len() - line.trim_start().len();
                Pos::new(c.line, if c.col == indent { 0 } else { indent })
            }
            KeyCode::End => Pos::new(c.line, line.len()),
            _ => c,
        };
        if matches!(code, KeyCode::PageUp | KeyCode::PageDown) {
            self.top = if code == KeyCode::PageUp {
                self.top.saturating_sub(page)
            } else {
                self.top + page
            };
        }
        self.after_motion();
        if matches!(
            code,
            KeyCode::Up | KeyCode::Down | KeyCode::PageUp | KeyCode::PageDown
        ) {
            self.goal_col = Some(col);
        }
    }

    fn after_motion(&mut self) {
        self.goal_col = None;
        if self.anchor == Some(self.cursor) {
            self.anchor = None;
        }
        self.doc.seal();
        self.invalidate();
    }

    // ----- find ------------------------------------------------------------------------------

    fn find_key(&mut self, k: KeyEvent) {
        let Mode::Find { query, origin } = &mut self.mode else {
            return;
        };
        let (mut query, origin) = (query.clone(), *origin);
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let from = match k.code {
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.message = None;
                return;
            }
            KeyCode::Enter | KeyCode::Down => self.search(&query, self.cursor, true, true),
            KeyCode::Char('f') if ctrl => self.search(&query, self.cursor, true, true),
            KeyCode::Up => self.search(&query, self.cursor, false, true),
            KeyCode::Backspace => {
                query.pop();
                self.search(&query, origin, true, false)
            }
            KeyCode::Char(c) if !ctrl => {
                query.push(c);
                self.search(&query, origin, true, false)
            }
            _ => None,
        };
        if let Some((a, b)) = from {
            self.anchor = Some(a);
            self.cursor = b;
            self.message = None;
        } else if !query.is_empty() && !matches!(k.code, KeyCode::Char('f')) {
            self.warn(format!("no match for {query:?}"));
        }
        self.mode = Mode::Find { query, origin };
    }

    /// The next (or previous) match of `query` from `from`; `skip`: not the match at `from`.
    /// Lowercase queries ignore case.
    fn search(&self, query: &str, from: Pos, forward: bool, skip: bool) -> Option<(Pos, Pos)> {
        if query.is_empty() {
            return None;
        }
        let fold = !query.chars().any(char::is_uppercase);
        let needle = if fold {
            query.to_lowercase()
        } else {
            query.to_owned()
        };
        let n = self.doc.line_count();
        let matches_in = |i: usize| -> Vec<usize> {
            let line = self.doc.line(i);
            // Case folding can change byte lengths; only fold lines where it doesn't.
            let hay = if fold {
                line.to_lowercase()
            } else {
                line.to_owned()
            };
            if hay.len() != line.len() {
                return line.match_indices(query).map(|(j, _)| j).collect();
            }
            hay.match_indices(needle.as_str()).map(|(j, _)| j).collect()
        };
        let selection_start = self.selection().map(|(a, _)| a).unwrap_or(from);
        for step in 0..=n {
            let i = if forward {
                (from.line + step) % n
            } else {
                (from.line + n - step % n) % n
            };
            let found = matches_in(i);
            let pick = if forward {
                found.into_iter().find(|&j| {
                    step > 0
                        || if skip {
                            Pos::new(i, j) > selection_start
                        } else {
                            Pos::new(i, j) >= from
                        }
                })
            } else {
                found
                    .into_iter()
                    .rev()
                    .find(|&j| step > 0 || Pos::new(i, j) < selection_start)
            };
            if let Some(j) = pick {
                return Some((
                    Pos::new(i, j),
                    Pos::new(i, j + needle.len().min(self.doc.line(i).len() - j)),
                ));
            }
        }
        None
    }

    // ----- files -----------------------------------------------------------------------------

    fn save(&mut self) {
        let on_disk = DiskStamp::of(&self.file.path);
        if self.file.disk.is_some() && on_disk != self.file.disk {
            self.mode = Mode::ConfirmOverwrite;
            self.warn(format!(
                "{} changed on disk since it was opened: Ctrl-S again overwrites it, any other key cancels",
                self.file.path.display()
            ));
            return;
        }
        self.write();
    }

    fn write(&mut self) {
        match crate::files::write_atomic(&self.file.path, &self.doc.to_file_bytes()) {
            Ok(()) => {
                self.doc.mark_saved();
                self.file.disk = DiskStamp::of(&self.file.path);
                if let Some(r) = &self.file.recovery {
                    let _ = std::fs::remove_file(r);
                }
                let lines = self.doc.line_count();
                self.say(format!(
                    "saved {} ({lines} lines)",
                    self.file.path.display()
                ));
            }
            Err(e) => self.warn(format!("not saved: {e}")),
        }
    }

    fn recover_key(&mut self, k: KeyEvent) {
        let Mode::Recover(offer) = std::mem::replace(&mut self.mode, Mode::Normal) else {
            return;
        };
        match k.code {
            KeyCode::Char('r') => {
                let end = self.doc.end();
                self.doc.replace(
                    Pos::default(),
                    end,
                    &offer.text,
                    Group::Single,
                    Pos::default(),
                );
                self.cursor = Pos::default();
                self.invalidate();
                self.say(format!(
                    "recovered unsaved text from {} (Ctrl-Z goes back to the file on disk)",
                    offer.path.display()
                ));
            }
            KeyCode::Char('d') => {
                let _ = std::fs::remove_file(&offer.path);
                self.say("recovery file discarded");
            }
            _ => self.say(format!("recovery file kept: {}", offer.path.display())),
        }
    }
}

fn is_ctrl(k: &KeyEvent, c: char) -> bool {
    k.modifiers.contains(KeyModifiers::CONTROL)
        && matches!(k.code, KeyCode::Char(x) if x.eq_ignore_ascii_case(&c))
}
