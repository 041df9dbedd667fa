//! The editor's state and what every key does. Nothing here touches a terminal or a model: keys and
//! worker replies come in as [`Event`]s, requests for the model go out through
//! [`App::take_requests`], and the view (`super::view`) draws the state as a ratatui widget. That is
//! what lets tests drive the whole editor with a `TestBackend` and fake replies.
//!
//! The state has four parts, each in its own file: the text being edited (`Buffer`), proposals
//! and the requests for them (`Completion`; Tab and the other completion keys live there too),
//! the probability overlay (`overlay`), and what part of the text is in view (`Viewport`). This
//! file routes keys between them; `file` and `find` hold saving, recovery, search and go-to-line.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

mod adapters;
mod buffer;
mod completion;
mod file;
mod find;
pub mod overlay;
pub mod viewport;

use super::config::Config;
use crate::syntax::Language;
use crate::text::{Document, Group, Pos};
use crate::worker::{Job, Reply};
pub(super) use buffer::Buffer;
use buffer::Edit;
pub(super) use completion::{Completion, Ghost, MemoryState, ModelState};
pub(super) use viewport::Viewport;

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

/// The editor: its parts, and what the person is doing (the mode, the message shown).
pub struct App {
    pub(super) buffer: Buffer,
    pub(super) completion: Completion,
    pub(super) adapters: adapters::Adapters,
    pub(super) overlay: overlay::Overlay,
    pub(super) viewport: Viewport,
    pub(super) file: FileInfo,
    pub(super) config: Config,
    pub(super) mode: Mode,
    pub(super) message: Option<Message>,
    /// Requests for the worker, taken by the event loop.
    requests: Vec<Job>,
    next_id: u64,
    /// Copied text for the terminal's clipboard (OSC 52), taken by the event loop.
    copied: Option<String>,
    /// A signal ended the editor (not the user's own quit).
    terminated: bool,
    quit: bool,
}

impl App {
    pub fn new(
        text: &str,
        file: FileInfo,
        config: Config,
        recovery: Option<RecoveryOffer>,
    ) -> Self {
        let mode = recovery.map_or(Mode::Normal, Mode::Recover);
        Self {
            buffer: Buffer::new(text),
            completion: Completion::default(),
            adapters: adapters::Adapters::default(),
            overlay: overlay::Overlay::default(),
            viewport: Viewport::default(),
            file,
            config,
            mode,
            message: None,
            requests: Vec::new(),
            next_id: 1,
            copied: None,
            terminated: false,
            quit: false,
        }
    }

    pub fn document(&self) -> &Document {
        &self.buffer.doc
    }

    pub fn cursor(&self) -> Pos {
        self.buffer.cursor
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
        match (self.completion.due(), self.overlay_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Text copied or cut since the last call, for the system clipboard.
    pub fn take_copied(&mut self) -> Option<String> {
        self.copied.take()
    }

    /// The status line's message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.text.as_str())
    }

    /// Whether a generation is running.
    pub fn is_thinking(&self) -> bool {
        self.completion.is_thinking()
    }

    /// The recovery file to write if the editor must stop with unsaved changes.
    pub fn recovery_path(&self) -> Option<&Path> {
        self.file.recovery.as_deref()
    }

    /// Readies the view for a frame of `width` x `height` cells: its size, the scroll that shows
    /// the cursor, and the syntax colours of what is in view. Call it before every draw: once per
    /// batch of events, so a burst of keys is highlighted once, not once per key.
    pub fn layout(&mut self, width: u16, height: u16) {
        self.viewport.resize(width, height);
        let lang = self.file.language;
        let b = &self.buffer;
        self.viewport
            .settle(&b.doc, b.cursor, self.config.tab_width, lang);
    }

    /// Fires the debounce deadline or the overlay's refresh if it has passed.
    pub fn tick(&mut self, now: Instant) {
        self.completion_tick(now);
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
            Event::Worker(reply) => {
                if let Some(other) = self
                    .adapter_reply(reply, now)
                    .and_then(|r| self.completion_reply(r))
                {
                    self.overlay_reply(other);
                }
            }
            Event::Terminate => {
                self.quit = true;
                self.terminated = true;
            }
        }
        self.overlay_after_event(now);
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
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
        if self.completion_key(self.config.keymap.action(&k), now) {
            return;
        }
        let shift = k.modifiers.contains(KeyModifiers::SHIFT);
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        let tab = self.config.tab_width;
        match k.code {
            KeyCode::Char(c) if ctrl && !alt => self.control(c.to_ascii_lowercase(), shift, now),
            // An Alt chord that is not bound is not text (AltGr characters come without Alt on
            // Unix terminals, and as Ctrl+Alt on Windows, which stays text).
            KeyCode::Char(_) if alt && !ctrl => {}
            KeyCode::Char(c) => {
                let group = self.buffer.group_for(c);
                let mut bytes = [0u8; 4];
                self.insert(c.encode_utf8(&mut bytes), group, now);
            }
            KeyCode::Enter
            | KeyCode::Tab
            | KeyCode::BackTab
            | KeyCode::Backspace
            | KeyCode::Delete => {
                // Between a pair, Enter types through a shown proposal instead of splitting it.
                let split_pairs = self.visible_ghost().is_none();
                let edit = match k.code {
                    KeyCode::Enter => self.buffer.enter(tab, split_pairs),
                    KeyCode::Tab => self.buffer.tab(tab),
                    KeyCode::BackTab => self.buffer.dedent(tab),
                    KeyCode::Backspace => self.buffer.backspace(ctrl),
                    _ => self.buffer.delete(ctrl),
                };
                self.apply(edit, now);
            }
            KeyCode::F(1) => self.mode = Mode::Help,
            KeyCode::F(6) => self.go_to_source(),
            KeyCode::F(7) => self.next_adapter(),
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
            | KeyCode::PageDown => {
                let page = self.viewport.page();
                self.buffer.motion(k.code, ctrl, shift, tab, page);
                if matches!(k.code, KeyCode::PageUp | KeyCode::PageDown) {
                    self.viewport.scroll_page(k.code == KeyCode::PageUp);
                }
                self.completion.invalidate();
            }
            KeyCode::Esc => {
                self.completion.invalidate();
                self.buffer.anchor = None;
            }
            _ => {}
        }
    }

    /// Inserts at the cursor (over the selection): the one path for typed and pasted text.
    fn insert(&mut self, text: &str, group: Group, now: Instant) {
        if self.type_through(text, group, now) {
            return;
        }
        self.buffer.insert(text, group);
        self.changed(now);
    }

    fn apply(&mut self, edit: Edit, now: Instant) {
        match edit {
            Edit::Changed => self.changed(now),
            Edit::Unchanged => {}
            Edit::Insert(text) => self.insert(&text, Group::Single, now),
        }
    }

    fn control(&mut self, c: char, shift: bool, now: Instant) {
        match c {
            's' => self.save(),
            'q' => {
                if self.buffer.doc.is_modified() {
                    self.mode = Mode::ConfirmQuit;
                    self.warn("unsaved changes: Ctrl-Q again quits without saving, Ctrl-S saves");
                } else {
                    self.quit = true;
                }
            }
            'z' | 'y' => {
                self.completion.invalidate();
                let redo = c == 'y' || shift;
                let done = if redo {
                    self.buffer.redo()
                } else {
                    self.buffer.undo()
                };
                if done {
                    self.show_remembered();
                } else {
                    self.say(if redo {
                        "nothing to redo"
                    } else {
                        "nothing to undo"
                    });
                }
            }
            'c' => self.copied = Some(self.buffer.copy()),
            'x' => {
                self.copied = Some(self.buffer.cut());
                self.changed(now);
            }
            'v' => {
                let text = self.buffer.clipboard().to_owned();
                self.insert(&text, Group::Single, now);
            }
            'a' => {
                self.completion.invalidate();
                self.buffer.select_all();
            }
            'f' => {
                self.completion.invalidate();
                self.mode = Mode::Find {
                    query: String::new(),
                    origin: self.buffer.cursor,
                };
            }
            'g' => {
                self.completion.invalidate();
                self.mode = Mode::GoToLine(String::new());
            }
            ' ' => self.ask_now(),
            _ => {}
        }
    }
}

fn is_ctrl(k: &KeyEvent, c: char) -> bool {
    k.modifiers.contains(KeyModifiers::CONTROL)
        && matches!(k.code, KeyCode::Char(x) if x.eq_ignore_ascii_case(&c))
}
