//! Text positions: 1-based line and character column to byte offsets and back.
//!
//! A [`Cursor`] can only be made from a position that exists in the text, so it always sits on a
//! character boundary; code that slices the text at a cursor cannot split a multi-byte character.

pub mod display;
pub mod document;

pub use document::{Document, Edit, Group, Pos};

/// Why a line/column pair does not name a place in the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("line {line} is out of range: the file has {lines} line(s)")]
    Line { line: usize, lines: usize },
    #[error("column {column} is out of range: line {line} has {chars} character(s), so columns run 1..={}", chars + 1)]
    Column {
        line: usize,
        column: usize,
        chars: usize,
    },
    #[error("lines and columns start at 1")]
    Zero,
}

/// A byte offset into a text that is known to be a character boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(usize);

impl Cursor {
    /// The cursor at `line`, `column` (both 1-based, column counted in characters; the column one
    /// past the last character is the end of the line).
    pub fn from_line_column(text: &str, line: usize, column: usize) -> Result<Self, PositionError> {
        if line == 0 || column == 0 {
            return Err(PositionError::Zero);
        }
        let mut start = 0;
        let mut lines = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            lines = i + 1;
            if lines == line {
                let body = l.strip_suffix('\n').unwrap_or(l);
                let body = body.strip_suffix('\r').unwrap_or(body);
                let chars = body.chars().count();
                return match body
                    .char_indices()
                    .map(|(b, _)| b)
                    .chain([body.len()])
                    .nth(column - 1)
                {
                    Some(b) => Ok(Self(start + b)),
                    None => Err(PositionError::Column {
                        line,
                        column,
                        chars,
                    }),
                };
            }
            start += l.len();
        }
        // A text ending in a newline (or an empty text) has one more, empty line.
        if text.is_empty() || text.ends_with('\n') {
            lines += 1;
            if lines == line {
                return if column == 1 {
                    Ok(Self(text.len()))
                } else {
                    Err(PositionError::Column {
                        line,
                        column,
                        chars: 0,
                    })
                };
            }
        }
        Err(PositionError::Line { line, lines })
    }

    /// The cursor at byte `offset`, if that is a character boundary of `text`.
    pub fn from_byte(text: &str, offset: usize) -> Option<Self> {
        text.is_char_boundary(offset).then_some(Self(offset))
    }

    pub fn byte(self) -> usize {
        self.0
    }

    /// Splits `text` into the part before and the part after the cursor.
    pub fn split(self, text: &str) -> (&str, &str) {
        // The constructors guarantee a boundary of this text; fall back to "all prefix" otherwise.
        text.split_at_checked(self.0).unwrap_or((text, ""))
    }
}

/// `text` split into before, between and after the byte range `start..end` (`None` when the range
/// is out of order, out of bounds or not on character boundaries).
pub fn split_around(text: &str, start: usize, end: usize) -> Option<(&str, &str, &str)> {
    Some((text.get(..start)?, text.get(start..end)?, text.get(end..)?))
}

/// `text` before byte `end`, which the caller has found on a character boundary within it. A
/// violation is a bug: loud in tests and debug builds, an empty string in a release (a proposal
/// not shown, never a crash in the editor).
pub fn before(text: &str, end: usize) -> &str {
    debug_assert!(
        text.is_char_boundary(end),
        "byte {end} is not a character boundary of {text:?}"
    );
    text.get(..end).unwrap_or_default()
}

/// `text` from byte `start` on; the same contract as [`before`].
pub fn from(text: &str, start: usize) -> &str {
    debug_assert!(
        text.is_char_boundary(start),
        "byte {start} is not a character boundary of {text:?}"
    );
    text.get(start..).unwrap_or_default()
}

/// The end of `text`, at most `max_bytes` long, starting at a line start when one falls in range
/// (else at a character boundary): the part of a long prefix nearest the cursor.
pub fn tail_lines(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut cut = text.len() - max_bytes;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let rest = from(text, cut);
    match rest.find('\n') {
        Some(nl) if nl + 1 < rest.len() => rest.get(nl + 1..).unwrap_or(rest),
        _ => rest,
    }
}

/// The start of `text`, at most `max_bytes` long, ending after a line break when one falls in range
/// (else at a character boundary): the part of a long suffix nearest the cursor.
pub fn head_lines(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = before(text, cut);
    match head.rfind('\n') {
        Some(nl) if nl > 0 => head.get(..=nl).unwrap_or(head),
        _ => head,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "fn é() {\n    x€y\n}";
        let c = Cursor::from_line_column(text, 2, 7).unwrap();
        assert_eq!(c.split(text), ("fn é() {\n    x€", "y\n}"));
        let end = Cursor::from_line_column(text, 1, 9).unwrap();
        assert_eq!(end.split(text).1, "\n    x€y\n}");
    }

    #[test]
    fn out_of_range_positions_are_errors() {
        let text = "ab\ncd\n";
        assert_eq!(Cursor::from_line_column(text, 3, 1).unwrap().byte(), 6);
        assert_eq!(
            Cursor::from_line_column(text, 4, 1),
            Err(PositionError::Line { line: 4, lines: 3 })
        );
        assert!(matches!(
            Cursor::from_line_column(text, 1, 4),
            Err(PositionError::Column { chars: 2, .. })
        ));
        assert_eq!(
            Cursor::from_line_column(text, 0, 1),
            Err(PositionError::Zero)
        );
        assert_eq!(Cursor::from_line_column("", 1, 1).unwrap().byte(), 0);
        assert_eq!(Cursor::from_line_column("a\r\nb", 1, 2).unwrap().byte(), 1);
        assert!(Cursor::from_line_column("a\r\nb", 1, 3).is_err());
    }

    #[test]
    fn long_texts_are_cut_to_whole_lines_near_the_cursor() {
        let text = "aaaa\nbbbb\ncccc\n";
        assert_eq!(tail_lines(text, 7), "cccc\n");
        assert_eq!(head_lines(text, 7), "aaaa\n");
        assert_eq!(tail_lines(text, 100), text);
        assert_eq!(tail_lines("ééééé", 3), "é", "never inside a character");
        assert_eq!(head_lines("ééééé", 3), "é");
    }

    #[test]
    fn byte_cursors_must_sit_on_character_boundaries() {
        assert!(Cursor::from_byte("é", 1).is_none());
        assert_eq!(Cursor::from_byte("é", 2).map(Cursor::byte), Some(2));
    }
}
