//! The terminal editor: `infill edit FILE`.
//!
//! Threads: the input thread reads keys, the worker thread runs the model, signal handlers report
//! SIGTERM/SIGHUP; all of them send [`Event`]s into one channel that the UI loop reads, drawing after
//! every batch. The UI never waits for the model. A panic or a signal restores the terminal and writes
//! unsaved text to a recovery file (never over the original), which the next `infill edit` of that
//! file offers to restore.

pub mod app;
pub mod config;
pub mod dashboard;
pub mod input;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use anyhow::Context;
use ratatui::Terminal;
use ratatui::backend::Backend;

pub use app::{App, DiskStamp, Event, FileInfo, RecoveryOffer};
pub use config::Config;

use crate::syntax::Registry;
use crate::worker::{Job, Loader, Worker, WorkerOptions};

/// Runs the editor loop until the app quits or the event source closes: draw, wait for an event or
/// the debounce deadline, update, hand new requests to `submit` and copied text to `copy`. Generic
/// over the backend, so tests run it on a `TestBackend`.
pub fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    events: &Receiver<Event>,
    submit: &mut dyn FnMut(Job),
    copy: &mut dyn FnMut(&str),
) -> anyhow::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    loop {
        let size = terminal.size()?;
        app.layout(size.width, size.height);
        terminal.draw(|f| app.draw(f))?;
        if app.should_quit() {
            return Ok(());
        }
        let first = match app.deadline() {
            Some(due) => match events.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            },
            None => match events.recv() {
                Ok(e) => Some(e),
                Err(_) => return Ok(()),
            },
        };
        // Handle everything already waiting (a fast typist, a paste), then draw once.
        for event in first
            .into_iter()
            .chain(std::iter::from_fn(|| events.try_recv().ok()))
        {
            app.handle(event, Instant::now());
            if app.should_quit() {
                break;
            }
        }
        app.tick(Instant::now());
        for job in app.take_requests() {
            submit(job);
        }
        if let Some(text) = app.take_copied() {
            copy(&text);
        }
    }
}

/// Where infill keeps state between runs: `$XDG_STATE_HOME/infill` or `~/.local/state/infill`.
pub fn state_dir() -> Option<PathBuf> {
    crate::files::xdg_dir("XDG_STATE_HOME", ".local/state")
}

/// The recovery file for `path`: named by a hash of the absolute path, plus the file name to help a
/// person who looks in the folder.
pub fn recovery_path(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let hash = crate::hash::fnv1a(absolute.as_os_str().as_encoded_bytes());
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some(
        state_dir()?
            .join("recovery")
            .join(format!("{hash:016x}-{name}")),
    )
}

/// Reads the file to edit (a new file when it does not exist) and finds any recovery file for it.
pub fn open(path: &Path, config: Config) -> anyhow::Result<App> {
    let (text, disk) = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            anyhow::bail!("{}: is a directory; give a file to edit", path.display())
        }
        Ok(_) => (crate::files::read_source(path)?, DiskStamp::of(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => anyhow::bail!("{}: cannot open ({e})", path.display()),
    };
    let registry = Registry::builtin().map_err(|e| anyhow::anyhow!("{e}"))?;
    let recovery = recovery_path(path);
    let offer = recovery.as_deref().and_then(|r| {
        let saved = std::fs::read(r).ok()?;
        if saved == text.as_bytes() {
            let _ = std::fs::remove_file(r);
            return None;
        }
        Some(RecoveryOffer {
            path: r.to_path_buf(),
            text: String::from_utf8_lossy(&saved).into_owned(),
            written: std::fs::metadata(r).and_then(|m| m.modified()).ok(),
        })
    });
    let file = FileInfo {
        path: path.to_path_buf(),
        language: registry.for_source(path, &text),
        disk,
        recovery,
    };
    Ok(App::new(&text, file, config, offer))
}

/// Writes the unsaved text to the recovery file; says where, or why it could not.
pub fn write_recovery(app: &App) -> Option<String> {
    if !app.document().is_modified() {
        return None;
    }
    let Some(path) = app.recovery_path() else {
        return Some(
            "unsaved changes were lost: no state directory (set HOME or XDG_STATE_HOME)".into(),
        );
    };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::files::write_atomic(path, &app.document().to_bytes()));
    Some(match written {
        Ok(()) => format!(
            "unsaved changes were written to {}; `infill edit` of the file offers to restore them",
            path.display()
        ),
        Err(e) => format!("unsaved changes could not be saved: {e}"),
    })
}

/// Runs `body` on the app; if it panics, the panic is caught and the unsaved text written to the
/// recovery file. Returns the error to show.
pub fn guarded(
    app: &mut App,
    body: impl FnOnce(&mut App) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(app)));
    // Quitting on purpose (Ctrl-Q twice) drops the changes; a signal keeps them.
    let terminated = app.was_terminated() && app.document().is_modified();
    match result {
        Ok(Ok(())) if !terminated => Ok(()),
        Ok(Ok(())) => {
            let note = write_recovery(app).unwrap_or_default();
            anyhow::bail!("stopped by a signal; {note}")
        }
        Ok(Err(e)) => {
            let note = write_recovery(app)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            Err(e.context(format!("the editor stopped{note}")))
        }
        Err(panic) => {
            let what = crate::worker::panic_text(&*panic);
            let note = write_recovery(app)
                .map(|n| format!("; {n}"))
                .unwrap_or_default();
            anyhow::bail!("internal error: {what}{note}")
        }
    }
}

/// The terminal in raw mode on the alternate screen; restored on drop (and by the panic hook).
/// The editor draws on stdout; a command whose stdout is its result (`infill train`'s dashboard)
/// draws on stderr.
pub(crate) struct TerminalGuard {
    screen: Screen,
}

/// The stream a full-screen view is drawn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Screen {
    Stdout,
    Stderr,
}

impl Screen {
    pub(crate) fn writer(self) -> Box<dyn std::io::Write + Send> {
        match self {
            Screen::Stdout => Box::new(std::io::stdout()),
            Screen::Stderr => Box::new(std::io::stderr()),
        }
    }
}

impl TerminalGuard {
    pub(crate) fn enter(screen: Screen) -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode().context("cannot switch the terminal to raw mode")?;
        let guard = Self { screen };
        crossterm::execute!(
            screen.writer(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::event::EnableBracketedPaste
        )?;
        Ok(guard)
    }

    /// Leaves raw mode and the alternate screen on `screen`; harmless when already left.
    pub(crate) fn restore(screen: Screen) {
        let _ = crossterm::execute!(
            screen.writer(),
            crossterm::event::DisableBracketedPaste,
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        Self::restore(self.screen);
    }
}

/// What the editor is asked to do: the file, the settings, and how to load its model.
pub struct EditOptions {
    pub file: PathBuf,
    pub config: Config,
    /// Loads the model on the worker thread (the editor is drawn and usable while it loads).
    pub model: Loader,
    /// LoRA adapters to apply at run time: the first once the model is ready, then F7 goes
    /// through the others and the base model.
    pub adapters: Vec<PathBuf>,
}

impl std::fmt::Debug for EditOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditOptions")
            .field("file", &self.file)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The editor on `options.file` until the person quits.
pub fn run(options: EditOptions) -> anyhow::Result<()> {
    let EditOptions {
        file,
        config,
        model,
        adapters,
    } = options;
    let completions = config.completions;
    let worker_options = WorkerOptions {
        shift_reuse: !config.exact_cache,
        ..WorkerOptions::default()
    };
    let mut app = open(&file, config)?;
    app.set_adapters(adapters);
    tracing::info!("editing {}", file.display());

    let (tx, rx) = mpsc::channel::<Event>();
    let signals = tx.clone();
    // SIGTERM and SIGHUP (and SIGINT, which raw mode turns into a key) end the editor cleanly.
    let _ = ctrlc::set_handler(move || {
        let _ = signals.send(Event::Terminate);
    });
    let replies = tx.clone();
    let worker = if completions {
        Some(Worker::spawn(model, worker_options, move |r| {
            let _ = replies.send(Event::Worker(r));
        })?)
    } else {
        None
    };

    // Panics on the UI thread restore the terminal first, then print one line (no backtrace).
    std::panic::set_hook(Box::new(|info| {
        if std::thread::current().name() == Some("main") {
            TerminalGuard::restore(Screen::Stdout);
        }
        let _ = info;
    }));
    let guard = TerminalGuard::enter(Screen::Stdout)?;
    // The input thread starts after the terminal is set up: it would swallow the replies to the
    // terminal queries made while setting up.
    let mut terminal = Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    std::thread::Builder::new()
        .name("infill-input".into())
        .spawn(move || input::read_input(&tx))?;
    let result = guarded(&mut app, |app| {
        event_loop(
            &mut terminal,
            app,
            &rx,
            &mut |r| {
                if let Some(w) = &worker {
                    w.submit(r);
                }
            },
            &mut |text| {
                if let Some(copy) = clipboard(text) {
                    let _ = crossterm::execute!(std::io::stdout(), copy);
                }
            },
        )
    });
    drop(guard);
    result
}

/// Base64 bytes terminals accept in one OSC 52 sequence (xterm's limit; others are as strict).
const CLIPBOARD_MAX_ENCODED: usize = 74_994;

/// The command that puts `text` on the terminal's clipboard (OSC 52, which works over SSH in
/// terminals that allow it); `None` when it is too long for terminals to accept.
pub fn clipboard(text: &str) -> Option<crossterm::clipboard::CopyToClipboard<&str>> {
    (text.len().div_ceil(3) * 4 <= CLIPBOARD_MAX_ENCODED)
        .then(|| crossterm::clipboard::CopyToClipboard::to_clipboard_from(text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_clipboard_gets_base64_text_up_to_what_terminals_accept() {
        use crossterm::Command;
        let mut seq = String::new();
        clipboard("é\n").unwrap().write_ansi(&mut seq).unwrap();
        assert_eq!(seq, "\x1b]52;c;w6kK\x1b\\");
        assert!(clipboard(&"x".repeat(56_244)).is_some());
        assert!(clipboard(&"x".repeat(56_245)).is_none());
    }
}
