//! The text being edited: the document, the cursor and the selection, and what typing, Enter, Tab,
//! Backspace, undo and the arrow keys do to them. Nothing here knows of proposals or the screen; the
//! app calls these and then voids or schedules proposals.

use crossterm::event::KeyCode;

use crate::text::display;
use crate::text::{Document, Group, Pos};

#[derive(Debug)]
pub(in crate::tui) struct Buffer {
    pub doc: Document,
    pub cursor: Pos,
    /// The other end of the selection, when there is one.
    pub anchor: Option<Pos>,
    /// Screen column kept while moving up and down through shorter lines.
    goal_col: Option<usize>,
    /// What Ctrl-C / Ctrl-X copied, for Ctrl-V.
    clipboard: String,
}

/// What a key did to the text.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::tui) enum Edit {
    Changed,
    Unchanged,
    /// Insert this text at the cursor (the app's one path for inserted text, which may type
    /// through a proposal).
    Insert(String),
}

impl Buffer {
    pub fn new(text: &str) -> Self {
        Self {
            doc: Document::from_text(text),
            cursor: Pos::default(),
            anchor: None,
            goal_col: None,
            clipboard: String::new(),
        }
    }

    pub fn selection(&self) -> Option<(Pos, Pos)> {
        let a = self.anchor?;
        (a != self.cursor).then(|| (a.min(self.cursor), a.max(self.cursor)))
    }

    /// The cursor's line with its line break (the line before's break on the last line).
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

    /// Ctrl-C: the selection, or the cursor's line. Returns the copied text.
    pub fn copy(&mut self) -> String {
        self.clipboard = self.selection_or_line();
        self.clipboard.clone()
    }

    /// Ctrl-X: copies, then removes the selection or the line. Returns the copied text.
    pub fn cut(&mut self) -> String {
        let copied = self.copy();
        let (a, b) = self.selection().unwrap_or_else(|| self.line_range());
        self.replace(a, b, "", Group::Single);
        copied
    }

    pub fn clipboard(&self) -> &str {
        &self.clipboard
    }

    pub fn select_all(&mut self) {
        self.anchor = Some(Pos::default());
        self.cursor = self.doc.end();
    }

    /// Replaces `a..b`; the cursor goes to the end of the new text and the selection ends.
    pub fn replace(&mut self, a: Pos, b: Pos, text: &str, group: Group) {
        let before = self.cursor;
        self.cursor = self.doc.replace(a, b, text, group, before);
        self.anchor = None;
        self.goal_col = None;
    }

    /// Inserts at the cursor, keeping the selection's absence (typing through a proposal).
    pub fn insert_at_cursor(&mut self, text: &str, group: Group) {
        let at = self.cursor;
        self.cursor = self.doc.replace(at, at, text, group, at);
        self.goal_col = None;
    }

    /// Inserts over the selection, or at the cursor.
    pub fn insert(&mut self, text: &str, group: Group) {
        match self.selection() {
            Some((a, b)) => {
                self.doc.seal();
                self.replace(a, b, text, Group::Single);
            }
            None => {
                let at = self.cursor;
                self.replace(at, at, text, group);
            }
        }
    }

    /// Typed characters of one word undo together; anything else is its own step.
    pub fn group_for(&mut self, c: char) -> Group {
        if c.is_alphanumeric() || c == '_' {
            Group::Typing
        } else {
            self.doc.seal();
            Group::Single
        }
    }

    /// The indentation one level deeper than `indent`, in the file's style.
    pub fn indent_unit(&self, tab_width: usize) -> String {
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
            " ".repeat(tab_width)
        }
    }

    /// Enter: a line break with the line's indentation, one level deeper after an opener. Between
    /// a pair (`{|}`) the closer goes to a line of its own, unless `split_pairs` is false (a
    /// proposal is shown: the break types through it).
    pub fn enter(&mut self, tab_width: usize, split_pairs: bool) -> Edit {
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
            text.push_str(&self.indent_unit(tab_width));
        }
        self.doc.seal();
        if opens && closes && split_pairs {
            // `{|}` becomes an indented empty line with the brace below it.
            let at = self.cursor;
            self.doc
                .replace(at, at, &format!("{text}\n{indent}"), Group::Single, at);
            self.cursor = Document::end_of_insert(at, &text);
            self.anchor = None;
            return Edit::Changed;
        }
        Edit::Insert(text)
    }

    /// Tab with no proposal shown: indents the selected lines, or inserts up to the next stop.
    pub fn tab(&mut self, tab_width: usize) -> Edit {
        if let Some((a, b)) = self.selection()
            && a.line != b.line
        {
            return self.indent_lines(a.line, b.line, true, tab_width);
        }
        let unit = self.indent_unit(tab_width);
        let text = if unit == "\t" {
            unit
        } else {
            let col =
                display::column_of(self.doc.line(self.cursor.line), self.cursor.col, tab_width);
            " ".repeat(unit.len() - col % unit.len())
        };
        self.doc.seal();
        Edit::Insert(text)
    }

    /// Shift-Tab: dedents the selected lines or the cursor's line.
    pub fn dedent(&mut self, tab_width: usize) -> Edit {
        let (a, b) = self.selection().unwrap_or((self.cursor, self.cursor));
        self.indent_lines(a.line, b.line, false, tab_width)
    }

    /// Indents (or dedents) lines `first..=last` by one unit, as one undo step.
    fn indent_lines(&mut self, first: usize, last: usize, deeper: bool, tab_width: usize) -> Edit {
        let unit = self.indent_unit(tab_width);
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
            return Edit::Unchanged;
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
        Edit::Changed
    }

    /// Backspace (Ctrl: a word): the selection, or what is before the cursor.
    pub fn backspace(&mut self, word: bool) -> Edit {
        if self.delete_selection() {
            return Edit::Changed;
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
            return Edit::Unchanged;
        };
        self.doc.seal();
        self.replace(start, c, "", Group::Single);
        Edit::Changed
    }

    /// Delete (Ctrl: a word): the selection, or what is after the cursor.
    pub fn delete(&mut self, word: bool) -> Edit {
        if self.delete_selection() {
            return Edit::Changed;
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
            return Edit::Unchanged;
        };
        self.doc.seal();
        self.replace(c, end, "", Group::Single);
        Edit::Changed
    }

    /// Removes the selection as one undo step; false when there is none.
    fn delete_selection(&mut self) -> bool {
        let Some((a, b)) = self.selection() else {
            return false;
        };
        self.doc.seal();
        self.replace(a, b, "", Group::Single);
        true
    }

    /// Undo; false when there is nothing to undo.
    pub fn undo(&mut self) -> bool {
        self.anchor = None;
        self.doc.undo().map(|p| self.cursor = p).is_some()
    }

    /// Redo; false when there is nothing to redo.
    pub fn redo(&mut self) -> bool {
        self.anchor = None;
        self.doc.redo().map(|p| self.cursor = p).is_some()
    }

    /// Puts the cursor at `pos`, ending the selection.
    pub fn go_to(&mut self, pos: Pos) {
        self.anchor = None;
        self.cursor = pos;
    }

    /// Selects `a..b`, the cursor at `b`.
    pub fn select(&mut self, a: Pos, b: Pos) {
        self.anchor = Some(a);
        self.cursor = b;
    }

    /// Moves the cursor for an arrow, Home/End or page key (Shift extends the selection, Ctrl
    /// moves by word or to the ends of the text); `page` is the number of lines a page moves.
    pub fn motion(&mut self, code: KeyCode, ctrl: bool, shift: bool, tab: usize, page: usize) {
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
        let col = self
            .goal_col
            .unwrap_or_else(|| display::column_of(line, c.col, tab));
        let vertical = |doc: &Document, target: usize| {
            let target = target.min(doc.line_count() - 1);
            Pos::new(target, display::byte_at_column(doc.line(target), col, tab))
        };
        let doc = &self.doc;
        self.cursor = match code {
            KeyCode::Left if ctrl => {
                if c.col == 0 && c.line > 0 {
                    Pos::new(c.line - 1, doc.line(c.line - 1).len())
                } else {
                    Pos::new(c.line, display::word_start(line, c.col))
                }
            }
            KeyCode::Right if ctrl => {
                if c.col == line.len() && c.line + 1 < doc.line_count() {
                    Pos::new(c.line + 1, 0)
                } else {
                    Pos::new(c.line, display::word_end(line, c.col))
                }
            }
            KeyCode::Left if c.col > 0 => Pos::new(c.line, display::prev_boundary(line, c.col)),
            KeyCode::Left if c.line > 0 => Pos::new(c.line - 1, doc.line(c.line - 1).len()),
            KeyCode::Right if c.col < line.len() => {
                Pos::new(c.line, display::next_boundary(line, c.col))
            }
            KeyCode::Right if c.line + 1 < doc.line_count() => Pos::new(c.line + 1, 0),
            KeyCode::Up if c.line > 0 => vertical(doc, c.line - 1),
            KeyCode::Up => Pos::new(0, 0),
            KeyCode::Down if c.line + 1 < doc.line_count() => vertical(doc, c.line + 1),
            KeyCode::Down => Pos::new(c.line, line.len()),
            KeyCode::PageUp => vertical(doc, c.line.saturating_sub(page)),
            KeyCode::PageDown => vertical(doc, c.line + page),
            KeyCode::Home if ctrl => Pos::default(),
            KeyCode::End if ctrl => doc.end(),
            KeyCode::Home => {
                // First non-blank, then column 0.
                let indent = line.len() - line.trim_start().len();
                Pos::new(c.line, if c.col == indent { 0 } else { indent })
            }
            KeyCode::End => Pos::new(c.line, line.len()),
            _ => c,
        };
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, line: usize, col: usize) -> Buffer {
        let mut b = Buffer::new(text);
        b.cursor = Pos::new(line, col);
        b
    }

    #[test]
    fn enter_between_a_pair_puts_the_closer_on_its_own_line_unless_a_proposal_is_shown() {
        let mut b = at("fn f() {}", 0, 8);
        assert_eq!(b.enter(4, true), Edit::Changed);
        assert_eq!(b.doc.text(), "fn f() {\n    \n}");
        assert_eq!(b.cursor, Pos::new(1, 4));
        let mut b = at("fn f() {}", 0, 8);
        assert_eq!(b.enter(4, false), Edit::Insert("\n    ".into()));
        assert_eq!(b.doc.text(), "fn f() {}");
    }

    #[test]
    fn indenting_lines_moves_the_cursor_and_selection_with_their_text() {
        let mut b = at("a\n  b\nc\n", 1, 3);
        b.anchor = Some(Pos::new(0, 1));
        assert_eq!(b.tab(4), Edit::Changed);
        assert_eq!(b.doc.text(), "  a\n    b\nc\n");
        assert_eq!((b.anchor, b.cursor), (Some(Pos::new(0, 3)), Pos::new(1, 5)));
        assert_eq!(b.dedent(4), Edit::Changed);
        assert_eq!(b.doc.text(), "a\n  b\nc\n");
        assert!(b.undo());
        assert_eq!(b.doc.text(), "  a\n    b\nc\n");
    }

    #[test]
    fn up_and_down_keep_the_column_through_shorter_lines() {
        let mut b = at("abcdef\nab\nabcdef", 0, 5);
        b.motion(KeyCode::Down, false, false, 4, 10);
        assert_eq!(b.cursor, Pos::new(1, 2));
        b.motion(KeyCode::Down, false, false, 4, 10);
        assert_eq!(b.cursor, Pos::new(2, 5));
        b.motion(KeyCode::Left, true, true, 4, 10);
        assert_eq!(b.selection(), Some((Pos::new(2, 0), Pos::new(2, 5))));
    }

    #[test]
    fn cut_without_a_selection_takes_the_line_and_paste_gets_it_back() {
        let mut b = at("one\ntwo\nthree", 1, 1);
        assert_eq!(b.cut(), "two\n");
        assert_eq!(b.doc.text(), "one\nthree");
        let text = b.clipboard().to_owned();
        b.insert(&text, Group::Single);
        assert_eq!(b.doc.text(), "one\ntwo\nthree");
    }
}
