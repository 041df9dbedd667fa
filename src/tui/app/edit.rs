//! Editing and moving: what typing, Enter, Tab, Backspace, undo and the arrow keys do.

use std::time::Instant;

use crossterm::event::KeyCode;

use super::App;
use crate::text::display;
use crate::text::{Document, Group, Pos};

impl App {
    pub(in crate::tui) fn selection(&self) -> Option<(Pos, Pos)> {
        let a = self.anchor?;
        (a != self.cursor).then(|| (a.min(self.cursor), a.max(self.cursor)))
    }

    pub(super) fn line_range(&self) -> (Pos, Pos) {
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

    pub(super) fn selection_or_line(&self) -> String {
        match self.selection() {
            Some((a, b)) => self.doc.slice(a, b),
            None => format!("{}\n", self.doc.line(self.cursor.line)),
        }
    }

    pub(super) fn replace_range(&mut self, a: Pos, b: Pos, text: &str, group: Group, now: Instant) {
        let before = self.cursor;
        self.cursor = self.doc.replace(a, b, text, group, before);
        self.anchor = None;
        self.goal_col = None;
        self.invalidate();
        self.schedule(now);
    }

    /// Inserts at the cursor (over the selection): the one path for typed and pasted text.
    pub(super) fn insert(&mut self, text: &str, group: Group, now: Instant) {
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

    pub(super) fn type_char(&mut self, c: char, now: Instant) {
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
    pub(super) fn indent_unit(&self) -> String {
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

    pub(super) fn enter(&mut self, now: Instant) {
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

    pub(super) fn tab(&mut self, now: Instant) {
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

    pub(super) fn dedent(&mut self, now: Instant) {
        let (a, b) = self.selection().unwrap_or((self.cursor, self.cursor));
        self.indent_lines(a.line, b.line, false, now);
    }

    /// Indents (or dedents) lines `first..=last` by one unit, as one undo step.
    pub(super) fn indent_lines(&mut self, first: usize, last: usize, deeper: bool, now: Instant) {
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
                    l.trim_start_matches([' ', '\t']).to_owned()
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
        // Positions on the changed lines move with their text.
        let doc = &self.doc;
        let shift = |p: Pos| {
            let i = p.line.wrapping_sub(first);
            match (old.get(i), new.get(i)) {
                (Some(o), Some(n)) => {
                    doc.clamp(Pos::new(p.line, (p.col + n.len()).saturating_sub(o.len())))
                }
                _ => p,
            }
        };
        let moved = (shift(cursor), anchor.map(shift));
        (self.cursor, self.anchor) = moved;
        self.invalidate();
        self.schedule(now);
    }

    pub(super) fn backspace(&mut self, word: bool, now: Instant) {
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

    pub(super) fn delete(&mut self, word: bool, now: Instant) {
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

    pub(super) fn undo(&mut self) {
        self.invalidate();
        self.anchor = None;
        match self.doc.undo() {
            Some(p) => self.cursor = p,
            None => self.say("nothing to undo"),
        }
    }

    pub(super) fn redo(&mut self) {
        self.invalidate();
        self.anchor = None;
        match self.doc.redo() {
            Some(p) => self.cursor = p,
            None => self.say("nothing to redo"),
        }
    }

    // ----- motion ----------------------------------------------------------------------------

    pub(super) fn motion(&mut self, code: KeyCode, ctrl: bool, shift: bool) {
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

    pub(super) fn after_motion(&mut self) {
        self.goal_col = None;
        if self.anchor == Some(self.cursor) {
            self.anchor = None;
        }
        self.doc.seal();
        self.invalidate();
    }
}
