//! Saving (atomic, never over a file changed on disk without asking) and recovery.

use crossterm::event::{KeyCode, KeyEvent};

use super::{App, DiskStamp, Mode};
use crate::text::{Group, Pos};

impl App {
    pub(super) fn save(&mut self) {
        let on_disk = DiskStamp::of(&self.file.path);
        if self.file.disk.is_some() && on_disk != self.file.disk {
            self.mode = Mode::ConfirmOverwrite;
            self.warn(format!(
                "{} changed on disk since it was opened: Ctrl-S again overwrites it, any other key cancels",
                self.file.path.display()
            ));
            return;
        }
        // Renaming over a file ignores its write bits; ask, as other editors do.
        if std::fs::metadata(&self.file.path).is_ok_and(|m| m.permissions().readonly()) {
            self.mode = Mode::ConfirmOverwrite;
            self.warn(format!(
                "{} is read-only: Ctrl-S again writes it anyway (keeping its permissions), any other key cancels",
                self.file.path.display()
            ));
            return;
        }
        self.write();
    }

    pub(super) fn write(&mut self) {
        match crate::files::write_atomic(&self.file.path, &self.buffer.doc.to_file_bytes()) {
            Ok(()) => {
                tracing::info!("saved {}", self.file.path.display());
                self.buffer.doc.mark_saved();
                self.file.disk = DiskStamp::of(&self.file.path);
                if let Some(r) = &self.file.recovery {
                    let _ = std::fs::remove_file(r);
                }
                self.refresh_memory();
                let lines = self.buffer.doc.line_count();
                self.say(format!(
                    "saved {} ({lines} lines)",
                    self.file.path.display()
                ));
            }
            Err(e) => {
                tracing::warn!("{}: not saved: {e:#}", self.file.path.display());
                self.warn(format!("not saved: {e}"));
            }
        }
    }

    pub(super) fn recover_key(&mut self, k: KeyEvent) {
        let Mode::Recover(offer) = std::mem::replace(&mut self.mode, Mode::Normal) else {
            return;
        };
        match k.code {
            KeyCode::Char('r') => {
                let end = self.buffer.doc.end();
                self.buffer.doc.replace(
                    Pos::default(),
                    end,
                    &offer.text,
                    Group::Single,
                    Pos::default(),
                );
                self.buffer.cursor = Pos::default();
                self.completion.invalidate();
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
