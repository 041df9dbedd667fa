//! Ctrl-F: incremental search, smart case, wrapping. Ctrl-G: go to a line.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::{App, Buffer, Mode};
use crate::text::Pos;

impl App {
    pub(super) fn find_key(&mut self, k: KeyEvent) {
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
            KeyCode::Enter | KeyCode::Down => {
                self.buffer.search(&query, self.buffer.cursor, true, true)
            }
            KeyCode::Char('f') if ctrl => {
                self.buffer.search(&query, self.buffer.cursor, true, true)
            }
            KeyCode::Up => self.buffer.search(&query, self.buffer.cursor, false, true),
            KeyCode::Backspace => {
                query.pop();
                self.buffer.search(&query, origin, true, false)
            }
            KeyCode::Char(c) if !ctrl => {
                query.push(c);
                self.buffer.search(&query, origin, true, false)
            }
            _ => None,
        };
        if let Some((a, b)) = from {
            self.buffer.select(a, b);
            self.message = None;
        } else if !query.is_empty() && !matches!(k.code, KeyCode::Char('f')) {
            self.warn(format!("no match for {query:?}"));
        }
        self.mode = Mode::Find { query, origin };
    }

    /// Ctrl-G: digits build the line number, Enter goes there (first non-blank), Esc cancels.
    pub(super) fn go_to_line_key(&mut self, k: KeyEvent) {
        let Mode::GoToLine(input) = &mut self.mode else {
            return;
        };
        match k.code {
            KeyCode::Char(c) if c.is_ascii_digit() && input.len() < 12 => input.push(c),
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Enter => {
                let line = input
                    .parse::<usize>()
                    .unwrap_or(1)
                    .clamp(1, self.buffer.doc.line_count());
                let text = self.buffer.doc.line(line - 1);
                let indent = text.len() - text.trim_start().len();
                self.buffer.go_to(Pos::new(line - 1, indent));
                self.mode = Mode::Normal;
            }
            KeyCode::Esc => self.mode = Mode::Normal,
            _ => {}
        }
    }
}

impl Buffer {
    /// The next (or previous) match of `query` from `from`; `skip`: not the match at `from`.
    /// Lowercase queries ignore case.
    pub fn search(&self, query: &str, from: Pos, forward: bool, skip: bool) -> Option<(Pos, Pos)> {
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
}
