//! The document an editor changes: lines, their line endings, edits as values, undo and redo.
//!
//! Lines are stored without their endings; the text the rest of infill sees joins them with `\n`.
//! Each line remembers whether its break was CRLF, so a CRLF file (or a mixed one) is written back
//! byte for byte as it was read, and a missing final newline stays missing: the last line never has
//! a break. Every change is an [`Edit`] value that can be inverted, which is all undo needs.

/// A place in the document: a line (0-based) and a byte offset into that line's text, always on a
/// character boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub fn new(line: usize, col: usize) -> Self {
        Self { line, col }
    }
}

/// One change: at `at`, the text `removed` was replaced by `inserted` (both use `\n` for breaks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub at: Pos,
    pub removed: String,
    pub inserted: String,
    /// Whether each break in `removed` was CRLF, so undo restores a mixed file exactly.
    pub removed_crlf: Vec<bool>,
    /// The same for `inserted`; breaks not listed take the file's dominant ending.
    pub inserted_crlf: Vec<bool>,
}

impl Edit {
    /// The edit that undoes this one.
    pub fn inverse(&self) -> Self {
        Self {
            at: self.at,
            removed: self.inserted.clone(),
            inserted: self.removed.clone(),
            removed_crlf: self.inserted_crlf.clone(),
            inserted_crlf: self.removed_crlf.clone(),
        }
    }
}

/// How an edit joins the undo history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Typing one character: runs of typed word characters undo together.
    Typing,
    /// Anything else is its own undo step.
    Single,
}

#[derive(Debug, Clone)]
struct Step {
    edits: Vec<Edit>,
    typing: bool,
    /// Cursor before the step (where undo puts it back).
    cursor_before: Pos,
    /// Content state before and after, so "modified" survives undo back to the saved text.
    state_before: u64,
    state_after: u64,
}

/// The text of an open file, with undo and redo.
#[derive(Debug, Clone)]
pub struct Document {
    lines: Vec<String>,
    /// `crlf[i]`: the break after line `i` is `\r\n`. The last entry is unused (no break).
    crlf: Vec<bool>,
    /// Breaks typed by the user use the file's dominant ending.
    new_line_crlf: bool,
    /// Saving ends non-empty text with a line break: the file's convention when it had text,
    /// POSIX's (a text file's lines end in a newline) for a new or empty file.
    final_newline: bool,
    undo: Vec<Step>,
    redo: Vec<Step>,
    /// Identifies the content; every change gets a fresh value, undo restores the old one.
    state: u64,
    next_state: u64,
    saved_state: u64,
    /// Counts every change (undo and redo included); requests to the model carry it.
    version: u64,
    /// A typing run is open: the next typed character may join the last undo step.
    open_typing: bool,
    /// The earliest place changed since [`Self::take_changed_from`] was last called.
    changed_from: Option<Pos>,
}

impl Default for Document {
    fn default() -> Self {
        Self::from_text("")
    }
}

impl Document {
    /// A document from file text; `\r\n` and `\n` breaks are both remembered as they were.
    pub fn from_text(text: &str) -> Self {
        let mut lines = Vec::new();
        let mut crlf = Vec::new();
        for piece in text.split('\n') {
            lines.push(piece.to_owned());
            crlf.push(false);
        }
        // Every line but the last was followed by '\n': a '\r' just before it belongs to the break.
        let n = lines.len();
        for (line, flag) in lines.iter_mut().zip(crlf.iter_mut()).take(n - 1) {
            if line.ends_with('\r') {
                line.pop();
                *flag = true;
            }
        }
        let breaks = n - 1;
        let crlf_breaks = crlf.iter().filter(|&&c| c).count();
        Self {
            lines,
            crlf,
            new_line_crlf: breaks > 0 && crlf_breaks * 2 > breaks,
            final_newline: text.is_empty() || text.ends_with('\n'),
            undo: Vec::new(),
            redo: Vec::new(),
            state: 0,
            next_state: 1,
            saved_state: 0,
            version: 0,
            open_typing: false,
            changed_from: None,
        }
    }

    /// The earliest place any change touched since the last call (text before it is unchanged).
    pub fn take_changed_from(&mut self) -> Option<Pos> {
        self.changed_from.take()
    }

    /// Byte offset of `pos` in [`Self::text`] (linear in the line number).
    pub fn byte_of(&self, pos: Pos) -> usize {
        let pos = self.clamp(pos);
        self.lines
            .iter()
            .take(pos.line)
            .map(|l| l.len() + 1)
            .sum::<usize>()
            + pos.col
    }

    /// The position of byte `byte` of [`Self::text`] (rounded down to a character boundary).
    pub fn pos_of_byte(&self, byte: usize) -> Pos {
        let mut rest = byte;
        for (i, l) in self.lines.iter().enumerate() {
            if rest <= l.len() {
                return self.clamp(Pos::new(i, rest));
            }
            rest -= l.len() + 1;
        }
        self.end()
    }

    /// The bytes to write to disk: [`Self::to_bytes`], and a final break after text that lacks
    /// one when the file ended in one (or is new).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut out = self.to_bytes();
        let last = self.lines.len() - 1;
        if self.final_newline && !self.line(last).is_empty() {
            if self.new_line_crlf {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        out
    }

    /// The text exactly as it is: each line with the break it was read (or typed) with. What a
    /// recovery file holds, so restoring it gives back this very text.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_bytes() + self.lines.len() + 2);
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(line.as_bytes());
            if i < last {
                if self.crlf.get(i).copied().unwrap_or(false) {
                    out.push(b'\r');
                }
                out.push(b'\n');
            }
        }
        out
    }

    /// The whole text with `\n` breaks.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Length of [`Self::text`] in bytes.
    pub fn len_bytes(&self) -> usize {
        self.lines.iter().map(|l| l.len() + 1).sum::<usize>() - 1
    }

    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// The text of line `i` (without its break); empty past the end.
    pub fn line(&self, i: usize) -> &str {
        self.lines.get(i).map_or("", String::as_str)
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether breaks typed here are CRLF (the file's dominant ending).
    pub fn uses_crlf(&self) -> bool {
        self.new_line_crlf
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_modified(&self) -> bool {
        self.state != self.saved_state
    }

    /// The current content is what is on disk now.
    pub fn mark_saved(&mut self) {
        self.saved_state = self.state;
    }

    /// The last position of the document.
    pub fn end(&self) -> Pos {
        let line = self.lines.len() - 1;
        Pos::new(line, self.line(line).len())
    }

    /// `pos` moved into the document and onto a character boundary (rounding down).
    pub fn clamp(&self, pos: Pos) -> Pos {
        if pos.line >= self.lines.len() {
            return self.end();
        }
        let text = self.line(pos.line);
        let mut col = pos.col.min(text.len());
        while !text.is_char_boundary(col) {
            col -= 1;
        }
        Pos::new(pos.line, col)
    }

    /// The text between two positions (in either order), with `\n` breaks.
    pub fn slice(&self, a: Pos, b: Pos) -> String {
        let (a, b) = (self.clamp(a.min(b)), self.clamp(a.max(b)));
        if a.line == b.line {
            return self.line(a.line).get(a.col..b.col).unwrap_or("").to_owned();
        }
        let mut out = self.line(a.line).get(a.col..).unwrap_or("").to_owned();
        for i in a.line + 1..b.line {
            out.push('\n');
            out.push_str(self.line(i));
        }
        out.push('\n');
        out.push_str(self.line(b.line).get(..b.col).unwrap_or(""));
        out
    }

    /// Up to about `max_bytes` of text just before `pos` (whole lines where possible): the prefix a
    /// completion needs, without copying a large file.
    pub fn text_before(&self, pos: Pos, max_bytes: usize) -> String {
        let pos = self.clamp(pos);
        let mut parts = vec![self.line(pos.line).get(..pos.col).unwrap_or("")];
        let mut size = pos.col;
        let mut line = pos.line;
        while line > 0 && size < max_bytes {
            line -= 1;
            parts.push(self.line(line));
            size += self.line(line).len() + 1;
        }
        parts.reverse();
        let text = parts.join("\n");
        super::tail_lines(&text, max_bytes).to_owned()
    }

    /// Up to about `max_bytes` of text just after `pos` (whole lines where possible).
    pub fn text_after(&self, pos: Pos, max_bytes: usize) -> String {
        let pos = self.clamp(pos);
        let mut parts = vec![self.line(pos.line).get(pos.col..).unwrap_or("")];
        let mut size = parts.first().map_or(0, |p| p.len());
        let mut line = pos.line + 1;
        while line < self.lines.len() && size < max_bytes {
            parts.push(self.line(line));
            size += self.line(line).len() + 1;
            line += 1;
        }
        let text = parts.join("\n");
        super::head_lines(&text, max_bytes).to_owned()
    }

    /// Where the text `inserted` ends when it is inserted at `at`.
    pub fn end_of_insert(at: Pos, inserted: &str) -> Pos {
        match inserted.rfind('\n') {
            Some(nl) => Pos::new(
                at.line + inserted.matches('\n').count(),
                inserted.len() - nl - 1,
            ),
            None => Pos::new(at.line, at.col + inserted.len()),
        }
    }

    /// Replaces the text between `a` and `b` with `text` as one undo step (or part of a typing
    /// run), and returns where the new text ends.
    pub fn replace(&mut self, a: Pos, b: Pos, text: &str, group: Group, cursor_before: Pos) -> Pos {
        let (a, b) = (self.clamp(a.min(b)), self.clamp(a.max(b)));
        let edit = Edit {
            at: a,
            removed: self.slice(a, b),
            inserted: text.replace("\r\n", "\n").replace('\r', "\n"),
            removed_crlf: self.crlf.get(a.line..b.line).unwrap_or_default().to_vec(),
            inserted_crlf: Vec::new(),
        };
        if edit.removed.is_empty() && edit.inserted.is_empty() {
            return a;
        }
        let end = self.apply(&edit);
        let state_before = self.state;
        self.state = self.next_state;
        self.next_state += 1;
        self.redo.clear();
        let joins = group == Group::Typing
            && self.open_typing
            && edit.removed.is_empty()
            && self.undo.last().is_some_and(|s| {
                s.typing
                    && s.edits
                        .last()
                        .is_some_and(|l| Self::end_of_insert(l.at, &l.inserted) == edit.at)
                    && !edit.inserted.starts_with(char::is_whitespace)
            });
        match self.undo.last_mut() {
            Some(step) if joins => {
                step.edits.push(edit);
                step.state_after = self.state;
            }
            _ => self.undo.push(Step {
                edits: vec![edit],
                typing: group == Group::Typing,
                cursor_before,
                state_before,
                state_after: self.state,
            }),
        }
        self.open_typing = group == Group::Typing;
        end
    }

    /// Ends the current typing run: the next typed character starts a new undo step.
    pub fn seal(&mut self) {
        self.open_typing = false;
    }

    /// Undoes the last step; returns where the cursor goes.
    pub fn undo(&mut self) -> Option<Pos> {
        let step = self.undo.pop()?;
        for edit in step.edits.iter().rev() {
            self.apply(&edit.inverse());
        }
        self.state = step.state_before;
        self.open_typing = false;
        let cursor = step.cursor_before;
        self.redo.push(step);
        Some(self.clamp(cursor))
    }

    /// Redoes the last undone step; returns where the cursor goes (the end of its last edit).
    pub fn redo(&mut self) -> Option<Pos> {
        let step = self.redo.pop()?;
        let mut end = step.cursor_before;
        for edit in &step.edits {
            end = self.apply(edit);
        }
        self.state = step.state_after;
        self.open_typing = false;
        self.undo.push(step);
        Some(end)
    }

    /// Applies an edit whose `removed` text is what the document holds at `at`.
    fn apply(&mut self, edit: &Edit) -> Pos {
        self.version += 1;
        let start = edit.at;
        self.changed_from = Some(self.changed_from.map_or(start, |c| c.min(start)));
        let end = Self::end_of_insert(start, &edit.removed);
        let head = self
            .line(start.line)
            .get(..start.col)
            .unwrap_or("")
            .to_owned();
        let tail = self.line(end.line).get(end.col..).unwrap_or("").to_owned();
        // The joined line keeps the break of the last line the edit touched.
        let tail_crlf = self.crlf.get(end.line).copied().unwrap_or(false);
        let mut new_lines: Vec<String> = edit.inserted.split('\n').map(str::to_owned).collect();
        let count = new_lines.len();
        if let Some(first) = new_lines.first_mut() {
            first.insert_str(0, &head);
        }
        if let Some(last) = new_lines.last_mut() {
            last.push_str(&tail);
        }
        let mut new_crlf: Vec<bool> = (0..count)
            .map(|i| {
                edit.inserted_crlf
                    .get(i)
                    .copied()
                    .unwrap_or(self.new_line_crlf)
            })
            .collect();
        if let Some(last) = new_crlf.last_mut() {
            *last = tail_crlf;
        }
        let range = start.line..=end.line.min(self.lines.len() - 1);
        self.lines.splice(range.clone(), new_lines);
        self.crlf.splice(range, new_crlf);
        Self::end_of_insert(start, &edit.inserted)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[allow(clippy::string_slice)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn typed(doc: &mut Document, at: Pos, s: &str) -> Pos {
        let mut p = at;
        for c in s.chars() {
            p = doc.replace(p, p, &c.to_string(), Group::Typing, p);
        }
        p
    }

    #[test]
    fn crlf_mixed_endings_and_a_missing_final_newline_survive_a_round_trip() {
        for text in ["a\r\nb\r\nc", "a\nb\r\nc\n", "", "\n", "x\r\n", "one line"] {
            let doc = Document::from_text(text);
            assert_eq!(doc.to_file_bytes(), text.as_bytes(), "{text:?}");
        }
        let doc = Document::from_text("a\r\nb\r\n");
        assert_eq!(doc.text(), "a\nb\n");
        assert!(doc.uses_crlf());
    }

    #[test]
    fn saving_follows_the_files_final_newline_and_a_new_file_gets_one() {
        let typed_into = |text: &str, s: &str| {
            let mut doc = Document::from_text(text);
            let end = doc.end();
            doc.replace(end, end, s, Group::Single, end);
            doc.to_file_bytes()
        };
        // A new (or empty) file is a POSIX text file: its last line ends in a break.
        assert_eq!(typed_into("", "fn main() {}"), b"fn main() {}\n");
        assert_eq!(typed_into("", "a\n"), b"a\n");
        // A file that ended in a break keeps ending in one, with its own kind of break.
        assert_eq!(typed_into("x\n", "y"), b"x\ny\n");
        assert_eq!(typed_into("x\r\n", "y"), b"x\r\ny\r\n");
        // A file that had none keeps having none.
        assert_eq!(typed_into("x", "y"), b"xy");
    }

    #[test]
    fn a_break_typed_in_a_crlf_file_is_crlf() {
        let mut doc = Document::from_text("ab\r\ncd\r\n");
        doc.replace(
            Pos::new(0, 1),
            Pos::new(0, 1),
            "\n",
            Group::Single,
            Pos::default(),
        );
        assert_eq!(doc.to_file_bytes(), b"a\r\nb\r\ncd\r\n");
    }

    #[test]
    fn typing_a_word_undoes_as_one_step_and_modified_follows_undo() {
        let mut doc = Document::from_text("x");
        let p = typed(&mut doc, Pos::new(0, 1), "foo");
        assert!(doc.is_modified());
        typed(&mut doc, p, " bar");
        assert_eq!(doc.text(), "xfoo bar");
        assert_eq!(doc.undo(), Some(Pos::new(0, 4)));
        assert_eq!(doc.text(), "xfoo");
        assert_eq!(doc.undo(), Some(Pos::new(0, 1)));
        assert_eq!(doc.text(), "x");
        assert!(!doc.is_modified());
        assert_eq!(doc.redo(), Some(Pos::new(0, 4)));
        assert_eq!(doc.text(), "xfoo");
        assert!(doc.is_modified());
    }

    #[test]
    fn byte_offsets_and_the_earliest_change_are_tracked() {
        let mut doc = Document::from_text("ab\ncd\r\nef");
        assert_eq!(doc.byte_of(Pos::new(2, 1)), 7);
        assert_eq!(doc.pos_of_byte(7), Pos::new(2, 1));
        assert_eq!(doc.pos_of_byte(2), Pos::new(0, 2));
        assert_eq!(doc.take_changed_from(), None);
        doc.replace(
            Pos::new(2, 0),
            Pos::new(2, 0),
            "x",
            Group::Single,
            Pos::default(),
        );
        doc.replace(
            Pos::new(1, 1),
            Pos::new(1, 2),
            "",
            Group::Single,
            Pos::default(),
        );
        assert_eq!(doc.take_changed_from(), Some(Pos::new(1, 1)));
        assert_eq!(doc.take_changed_from(), None);
        doc.undo();
        assert_eq!(doc.take_changed_from(), Some(Pos::new(1, 1)));
    }

    #[test]
    fn sealing_splits_a_typing_run() {
        let mut doc = Document::default();
        let p = typed(&mut doc, Pos::default(), "ab");
        doc.seal();
        typed(&mut doc, p, "cd");
        doc.undo();
        assert_eq!(doc.text(), "ab");
    }

    #[test]
    fn windows_around_the_cursor_are_bounded_and_line_aligned() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let doc = Document::from_text(&text);
        let at = Pos::new(500, 3);
        let before = doc.text_before(at, 100);
        let after = doc.text_after(at, 100);
        assert!(
            before.len() <= 100 && before.ends_with("\nlin"),
            "{before:?}"
        );
        assert!(before.starts_with("line "));
        assert!(
            after.len() <= 100 && after.starts_with("e 500\n"),
            "{after:?}"
        );
        assert!(after.ends_with('\n'));
        assert_eq!(doc.text_before(Pos::new(1, 0), 1 << 20), "line 0\n");
    }

    proptest! {
        /// Any sequence of edits undone in full gives back the original bytes; redone in full gives
        /// the edited bytes; the document always equals a plain string edited the same way.
        #[test]
        fn edits_match_a_plain_string_and_undo_restores_it(
            start in "[a-c\\n\\r]{0,12}",
            ops in proptest::collection::vec((0usize..20, 0usize..4, "[x\\né]{0,3}"), 1..12),
        ) {
            let mut doc = Document::from_text(&start);
            let original = doc.to_file_bytes();
            let mut model = doc.text();
            for (at, len, ins) in ops {
                let chars: Vec<usize> = model.char_indices().map(|(i, _)| i).chain([model.len()]).collect();
                let a = chars[at % chars.len()];
                let b = chars[(at + len).min(chars.len() - 1)];
                let to_pos = |byte: usize| {
                    let before = &model[..byte];
                    let line = before.matches('\n').count();
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1);
                    Pos::new(line, col)
                };
                doc.replace(to_pos(a), to_pos(b), &ins, Group::Single, Pos::default());
                model.replace_range(a..b, &ins);
                prop_assert_eq!(doc.text(), model.clone());
            }
            let edited = doc.text();
            while doc.undo().is_some() {}
            prop_assert_eq!(doc.to_file_bytes(), original);
            prop_assert!(!doc.is_modified());
            while doc.redo().is_some() {}
            prop_assert_eq!(doc.text(), edited);
        }
    }
}
