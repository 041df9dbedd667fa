//! An open document, kept byte for byte as the client has it, and the protocol's positions.
//!
//! A position is a line and a character offset into it, counted in the negotiated encoding: UTF-16
//! code units unless the client offered UTF-8 (or UTF-32). Lines end at `\n`, `\r\n` or a lone
//! `\r`, as the protocol says. A character past the end of its line means the end of the line, a
//! line past the end of the document means its end, and an offset inside a character (half a
//! surrogate pair) means that character's start: a client's stale or sloppy position lands
//! somewhere sensible instead of failing.
//!
//! The model sees `\n` breaks only; what it proposes goes back with the document's own breaks.

use lsp_types::{Position, TextDocumentContentChangeEvent};

use crate::complete::{PREFIX_BYTES, SUFFIX_BYTES};
use crate::syntax::Language;

/// How positions count characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16,
    Utf32,
}

impl Encoding {
    /// The encoding the server chooses from the client's offer: UTF-8 (no conversion) when
    /// offered, else UTF-32, else the protocol's mandatory UTF-16.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Self {
        let offered: Vec<&str> = offered.into_iter().collect();
        if offered.contains(&"utf-8") {
            Self::Utf8
        } else if offered.contains(&"utf-32") {
            Self::Utf32
        } else {
            Self::Utf16
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Utf8 => "utf-8",
            Self::Utf16 => "utf-16",
            Self::Utf32 => "utf-32",
        }
    }

    fn units(self, c: char) -> usize {
        match self {
            Self::Utf8 => c.len_utf8(),
            Self::Utf16 => c.len_utf16(),
            Self::Utf32 => 1,
        }
    }

    /// Units in `text`.
    fn count(self, text: &str) -> usize {
        match self {
            Self::Utf8 => text.len(),
            Self::Utf16 => text.chars().map(char::len_utf16).sum(),
            Self::Utf32 => text.chars().count(),
        }
    }
}

/// One document the client has open.
#[derive(Debug, Clone)]
pub struct TextDocument {
    text: String,
    /// The client's version number of this text.
    pub version: i32,
    /// `None`: no grammar (trimmed by the indentation and bracket rules).
    pub language: Option<&'static Language>,
}

impl TextDocument {
    pub fn new(text: String, version: i32, language: Option<&'static Language>) -> Self {
        Self {
            text,
            version,
            language,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte range of line `line`'s text (without its break); `None` past the last line.
    fn line(&self, line: u32) -> Option<(usize, usize)> {
        let b = self.text.as_bytes();
        let mut start = 0;
        let mut n = 0;
        loop {
            let end = b
                .get(start..)
                .and_then(|rest| rest.iter().position(|&c| c == b'\n' || c == b'\r'))
                .map_or(b.len(), |p| start + p);
            if n == line {
                return Some((start, end));
            }
            if end == b.len() {
                return None;
            }
            start = end + break_len(b, end);
            n += 1;
        }
    }

    /// The byte offset of a position (see the module's rules for positions out of range).
    pub fn offset(&self, pos: Position, encoding: Encoding) -> usize {
        let Some((start, end)) = self.line(pos.line) else {
            return self.text.len();
        };
        let line = self.text.get(start..end).unwrap_or_default();
        let want = pos.character as usize;
        let mut units = 0;
        for (i, c) in line.char_indices() {
            let next = units + encoding.units(c);
            if next > want {
                return start + i;
            }
            units = next;
        }
        end
    }

    /// The position of a byte offset (on a character boundary; a break counts as its line's end).
    pub fn position(&self, offset: usize, encoding: Encoding) -> Position {
        let b = self.text.as_bytes();
        let offset = offset.min(b.len());
        let mut line = 0u32;
        let mut start = 0;
        let mut i = 0;
        while i < offset {
            match b.get(i) {
                Some(b'\n' | b'\r') => {
                    let len = break_len(b, i);
                    if i + len > offset {
                        break;
                    }
                    i += len;
                    line += 1;
                    start = i;
                }
                _ => i += 1,
            }
        }
        let end = i.min(offset);
        let col = encoding.count(self.text.get(start..end).unwrap_or_default());
        Position::new(line, u32::try_from(col).unwrap_or(u32::MAX))
    }

    /// Applies the client's changes in order (each to the text the previous one left) and takes
    /// their version. A change without a range replaces the whole text.
    pub fn apply(
        &mut self,
        changes: &[TextDocumentContentChangeEvent],
        version: i32,
        encoding: Encoding,
    ) {
        for change in changes {
            match change.range {
                None => change.text.clone_into(&mut self.text),
                Some(range) => {
                    let a = self.offset(range.start, encoding);
                    let b = self.offset(range.end, encoding);
                    self.text.replace_range(a.min(b)..a.max(b), &change.text);
                }
            }
        }
        self.version = version;
    }

    /// The text around `offset` a completion needs (as much as the prompt can use, cut at line
    /// boundaries), with `\n` breaks.
    pub fn context(&self, offset: usize) -> (String, String) {
        let before = crate::text::before(&self.text, offset);
        let after = crate::text::from(&self.text, offset);
        (
            normalize_breaks(crate::text::tail_lines(before, PREFIX_BYTES)),
            normalize_breaks(crate::text::head_lines(after, SUFFIX_BYTES)),
        )
    }

    /// The whole text with `\n` breaks, and the offsets in it of the `\n`s that were `\r\n` (to map
    /// offsets back).
    pub fn model_text(&self) -> (String, Vec<usize>) {
        if !self.text.contains('\r') {
            return (self.text.clone(), Vec::new());
        }
        let mut text = String::with_capacity(self.text.len());
        let mut dropped = Vec::new();
        let mut rest = self.text.as_str();
        while let Some(i) = rest.find('\r') {
            text.push_str(crate::text::before(rest, i));
            if rest.get(i + 1..).is_some_and(|r| r.starts_with('\n')) {
                dropped.push(text.len());
                rest = crate::text::from(rest, i + 1);
            } else {
                text.push('\n');
                rest = crate::text::from(rest, i + 1);
            }
        }
        text.push_str(rest);
        (text, dropped)
    }

    /// Where the identifier the cursor ends starts (the cursor itself after anything else): what a
    /// client filters completion items against as the person types.
    pub fn word_start(&self, offset: usize) -> usize {
        let before = crate::text::before(&self.text, offset);
        before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
            .last()
            .map_or(before.len(), |(i, _)| i)
    }

    /// The document's own line break: `\r\n` when most of its breaks are, else `\n`.
    pub fn line_break(&self) -> &'static str {
        let lf = self.text.matches('\n').count();
        let crlf = self.text.matches("\r\n").count();
        if lf > 0 && crlf * 2 > lf {
            "\r\n"
        } else {
            "\n"
        }
    }
}

/// Bytes of the line break at `i` (`\r\n` is one break).
fn break_len(b: &[u8], i: usize) -> usize {
    if b.get(i) == Some(&b'\r') && b.get(i + 1) == Some(&b'\n') {
        2
    } else {
        1
    }
}

/// `text` with every `\r\n` and lone `\r` as `\n`.
fn normalize_breaks(text: &str) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text.to_owned()
    }
}

/// `text` (with `\n` breaks) with the document's break.
pub fn with_breaks(text: &str, line_break: &str) -> String {
    if line_break == "\n" {
        text.to_owned()
    } else {
        text.replace('\n', line_break)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use lsp_types::Range;

    use super::*;

    fn doc(text: &str) -> TextDocument {
        TextDocument::new(text.to_owned(), 1, None)
    }

    fn pos(line: u32, character: u32) -> Position {
        Position::new(line, character)
    }

    #[test]
    fn utf16_positions_count_surrogate_pairs_twice_and_cjk_once() {
        // 😀 is two UTF-16 units and four bytes; 漢 is one unit and three bytes.
        let d = doc("a😀漢b\nx");
        assert_eq!(d.offset(pos(0, 1), Encoding::Utf16), 1);
        assert_eq!(d.offset(pos(0, 3), Encoding::Utf16), 5);
        assert_eq!(d.offset(pos(0, 4), Encoding::Utf16), 8);
        assert_eq!(d.offset(pos(0, 5), Encoding::Utf16), 9);
        // Half a surrogate pair: the emoji's start.
        assert_eq!(d.offset(pos(0, 2), Encoding::Utf16), 1);
        assert_eq!(d.offset(pos(0, 2), Encoding::Utf32), 5);
        assert_eq!(d.offset(pos(0, 5), Encoding::Utf8), 5);
        for (offset, utf16) in [(0, 0), (1, 1), (5, 3), (8, 4), (9, 5), (10, 0)] {
            let p = d.position(offset, Encoding::Utf16);
            assert_eq!(p.character, utf16, "offset {offset}");
            assert_eq!(d.offset(p, Encoding::Utf16), offset);
        }
        assert_eq!(d.position(10, Encoding::Utf16).line, 1);
    }

    #[test]
    fn positions_out_of_range_clamp_to_the_line_or_the_document() {
        let d = doc("ab\r\ncd\n");
        assert_eq!(d.offset(pos(0, 99), Encoding::Utf16), 2);
        assert_eq!(d.offset(pos(1, 0), Encoding::Utf16), 4);
        assert_eq!(d.offset(pos(2, 0), Encoding::Utf16), 7);
        assert_eq!(d.offset(pos(9, 9), Encoding::Utf16), 7);
        // The end of line 0 is before its \r\n, and the \n inside \r\n is not a position.
        assert_eq!(d.position(2, Encoding::Utf16), pos(0, 2));
        assert_eq!(d.position(3, Encoding::Utf16), pos(0, 2));
        assert_eq!(d.position(4, Encoding::Utf16), pos(1, 0));
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line() {
        let d = doc("a\rb\r\nc\nd");
        assert_eq!(d.offset(pos(1, 0), Encoding::Utf16), 2);
        assert_eq!(d.offset(pos(2, 0), Encoding::Utf16), 5);
        assert_eq!(d.offset(pos(3, 1), Encoding::Utf16), 8);
        assert_eq!(d.position(8, Encoding::Utf16), pos(3, 1));
    }

    #[test]
    fn incremental_changes_apply_in_order_on_multi_byte_crlf_text() {
        let mut d = doc("fn 漢() {\r\n    let 😀 = 1;\r\n}\r\n");
        let change = |range: Option<Range>, text: &str| TextDocumentContentChangeEvent {
            range,
            range_length: None,
            text: text.into(),
        };
        d.apply(
            &[
                // Replace the emoji (UTF-16 columns 8..10) by a name.
                change(Some(Range::new(pos(1, 8), pos(1, 10))), "x"),
                // Then, in the text that left, insert a line after line 1.
                change(Some(Range::new(pos(1, 14), pos(1, 14))), "\r\n    x += 1;"),
                // And join the function's first line with the next (a range across a break).
                change(Some(Range::new(pos(0, 8), pos(1, 4))), " "),
            ],
            7,
            Encoding::Utf16,
        );
        assert_eq!(d.text(), "fn 漢() { let x = 1;\r\n    x += 1;\r\n}\r\n");
        assert_eq!(d.version, 7);
        assert_eq!(d.line_break(), "\r\n");
        let (before, after) = d.context(d.offset(pos(1, 4), Encoding::Utf16));
        assert_eq!(before, "fn 漢() { let x = 1;\n    ");
        assert_eq!(after, "x += 1;\n}\n");
        d.apply(&[change(None, "all new")], 8, Encoding::Utf16);
        assert_eq!(d.text(), "all new");
    }

    #[test]
    fn model_text_has_lf_breaks_and_maps_back_to_the_crlf_text() {
        let d = doc("a\r\nbc\rd\r\n");
        let (text, dropped) = d.model_text();
        assert_eq!(text, "a\nbc\nd\n");
        assert_eq!(dropped, vec![1, 6]);
        let raw = |o: usize| o + dropped.partition_point(|&x| x < o);
        // "bc" is 2..4 in the model's text and 3..5 in the document's.
        assert_eq!((raw(2), raw(4)), (3, 5));
        assert_eq!(raw(7), 9);
        assert_eq!(doc("x\ny").model_text(), ("x\ny".into(), vec![]));
    }

    #[test]
    fn the_word_before_the_cursor_is_what_clients_filter_on() {
        let d = doc("    résumé_2(x.fo");
        assert_eq!(d.word_start(d.text().len()), 17);
        assert_eq!(d.word_start(14), 4);
        assert_eq!(d.word_start(15), 15);
        assert_eq!(d.word_start(0), 0);
    }

    #[test]
    fn the_encoding_is_utf8_when_offered() {
        assert_eq!(Encoding::negotiate(["utf-16", "utf-8"]), Encoding::Utf8);
        assert_eq!(Encoding::negotiate(["utf-32", "utf-16"]), Encoding::Utf32);
        assert_eq!(Encoding::negotiate([]), Encoding::Utf16);
    }
}
