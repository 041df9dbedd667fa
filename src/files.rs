//! Reading and writing the user's files safely: text only, and never a half-written file.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// infill's folder in an XDG base directory: `$VAR/infill` when `VAR` is set, else
/// `$HOME/<fallback>/infill` (e.g. `XDG_CONFIG_HOME` and `.config`).
pub fn xdg_dir(var: &str, fallback: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(fallback)))
        .map(|d| d.join("infill"))
}

/// Reads a source file as UTF-8 text, refusing binary files with a message that says so.
pub fn read_source(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    source_text(path, bytes)
}

/// Checks that `bytes` (read from `path`) are text infill may edit, and turns them into a `String`.
pub fn source_text(path: &Path, bytes: Vec<u8>) -> anyhow::Result<String> {
    if bytes.contains(&0) {
        anyhow::bail!(
            "{}: looks like a binary file (it contains NUL bytes); infill completes text files",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not valid UTF-8 (first bad byte at offset {}); convert the file to UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory is written,
/// flushed to disk and renamed over the original, which keeps its permissions. Any failure leaves
/// the original untouched and removes the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.infill-tmp{}", std::process::id()));
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(p) = &permissions {
            f.set_permissions(p.clone())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!(
            "{}: cannot write ({e}); the file on disk is unchanged",
            path.display()
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_invalid_utf8_are_refused_by_name() {
        let p = Path::new("x.bin");
        let err = source_text(p, b"ab\0cd".to_vec()).unwrap_err().to_string();
        assert!(err.contains("x.bin") && err.contains("binary"), "{err}");
        let err = source_text(p, b"ok\xffno".to_vec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("offset 2") && err.contains("UTF-8"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_keeps_permissions_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sh");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_original_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.py");
        std::fs::write(&path, "keep me").unwrap();
        // A directory where the temporary file must go makes the write fail, even for root (who
        // ignores a read-only directory's permissions).
        let blocker = dir
            .path()
            .join(format!(".a.py.infill-tmp{}", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let err = write_atomic(&path, b"lost").unwrap_err().to_string();
        assert!(err.contains("a.py") && err.contains("unchanged"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
