//! infill's log file: what the model worker, the model loader and the commands did, so that a
//! person can report why a proposal was wrong or slow. It goes to
//! `$XDG_STATE_HOME/infill/infill.log` (`~/.local/state/infill/infill.log`), never to the
//! terminal, which the editor draws on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Past this size the log is moved to `infill.log.1` (replacing the one before) when a command
/// starts.
const ROTATE_BYTES: u64 = 8 << 20;

/// Where the log goes.
pub fn path() -> Option<PathBuf> {
    Some(crate::files::xdg_dir("XDG_STATE_HOME", ".local/state")?.join("infill.log"))
}

/// Sends `tracing` events at `level` and above to the log file; `None` logs nothing. Returns the
/// file's path, or `None` when there is no state directory or it cannot be written (infill then
/// runs without a log: a log is never a reason to fail).
pub fn init(level: Option<tracing::Level>) -> Option<PathBuf> {
    let level = level?;
    let path = path()?;
    std::fs::create_dir_all(path.parent()?).ok()?;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(&path, path.with_extension("log.1"));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ok()?;
    let _ = writeln!(file);
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_max_level(level)
        .with_thread_names(true)
        .finish();
    tracing::subscriber::set_global_default(subscriber).ok()?;
    Some(path)
}
