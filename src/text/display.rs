//! Where text lands on a terminal: grapheme clusters, tab stops, wide and combining characters.
//!
//! A cursor moves by grapheme cluster (so `e` + combining accent is one step and one cell), a tab
//! reaches the next tab stop, a wide (CJK, emoji) character takes two cells, and a control character
//! is shown as `^X` in two cells. The screen column of every byte follows from these rules alone.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// One grapheme cluster of a line as it is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell<'a> {
    /// Byte range in the line.
    pub start: usize,
    pub end: usize,
    pub text: &'a str,
    /// Screen column (0-based, before horizontal scrolling) and width in cells.
    pub col: usize,
    pub width: usize,
}

impl Cell<'_> {
    /// What to draw: tabs become spaces, control characters `^X`.
    pub fn glyph(&self) -> std::borrow::Cow<'_, str> {
        match self.text.chars().next() {
            Some('\t') => " ".repeat(self.width).into(),
            Some(c) if c.is_control() => {
                let shown = char::from_u32((c as u32) ^ 0x40).unwrap_or('?');
                format!("^{shown}").into()
            }
            _ => self.text.into(),
        }
    }
}

/// The cells of `line` starting at screen column `start_col` (a ghost text continues the line it
/// sits in, so its tab stops depend on where it starts).
pub fn cells_from(
    line: &str,
    tab_width: usize,
    start_col: usize,
) -> impl Iterator<Item = Cell<'_>> {
    let tab_width = tab_width.max(1);
    let mut col = start_col;
    line.grapheme_indices(true).map(move |(start, g)| {
        let width = match g.chars().next() {
            Some('\t') => tab_width - col % tab_width,
            Some(c) if c.is_control() => 2,
            _ => g.width().max(1),
        };
        let cell = Cell {
            start,
            end: start + g.len(),
            text: g,
            col,
            width,
        };
        col += width;
        cell
    })
}

pub fn cells(line: &str, tab_width: usize) -> impl Iterator<Item = Cell<'_>> {
    cells_from(line, tab_width, 0)
}

/// Screen column of byte `byte` of `line`.
pub fn column_of(line: &str, byte: usize, tab_width: usize) -> usize {
    let mut col = 0;
    for c in cells(line, tab_width) {
        if c.start >= byte {
            return c.col;
        }
        col = c.col + c.width;
    }
    col
}

/// Screen width of a whole line.
pub fn width(line: &str, tab_width: usize) -> usize {
    column_of(line, line.len(), tab_width)
}

/// The byte of `line` whose cell covers screen column `col` (the end of the line past its width):
/// where the cursor lands when it moves up or down into this line.
pub fn byte_at_column(line: &str, col: usize, tab_width: usize) -> usize {
    for c in cells(line, tab_width) {
        if col < c.col + c.width {
            return c.start;
        }
    }
    line.len()
}

/// The grapheme boundary before `byte` (0 at the start).
pub fn prev_boundary(line: &str, byte: usize) -> usize {
    line.grapheme_indices(true)
        .map(|(i, _)| i)
        .take_while(|&i| i < byte)
        .last()
        .unwrap_or(0)
}

/// The grapheme boundary after `byte` (the line's end at the end).
pub fn next_boundary(line: &str, byte: usize) -> usize {
    line.grapheme_indices(true)
        .map(|(i, g)| i + g.len())
        .find(|&e| e > byte)
        .unwrap_or(line.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Space,
    Word,
    Punct,
}

fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else {
        Class::Punct
    }
}

/// Where Ctrl-Right goes from `byte`: past the whitespace, then past one run of word characters
/// (or of punctuation).
pub fn word_end(text: &str, byte: usize) -> usize {
    let rest = text.get(byte..).unwrap_or("");
    let mut it = rest.char_indices().peekable();
    while it.next_if(|&(_, c)| class(c) == Class::Space).is_some() {}
    let Some(&(_, first)) = it.peek() else {
        return text.len();
    };
    let k = class(first);
    while it.next_if(|&(_, c)| class(c) == k).is_some() {}
    byte + it.peek().map_or(rest.len(), |&(i, _)| i)
}

/// Where Ctrl-Left goes from `byte`: back over whitespace, then over one run of the same class.
pub fn word_start(text: &str, byte: usize) -> usize {
    let head = text.get(..byte).unwrap_or("");
    let mut it = head.char_indices().rev().peekable();
    while it.next_if(|&(_, c)| class(c) == Class::Space).is_some() {}
    let Some(&(_, first)) = it.peek() else {
        return 0;
    };
    let k = class(first);
    let mut start = byte;
    while let Some((i, _)) = it.next_if(|&(_, c)| class(c) == k) {
        start = i;
    }
    start
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tabs_wide_and_combining_characters_get_their_cells() {
        let line = "\tx日e\u{301}z";
        let cols: Vec<(usize, usize)> = cells(line, 4).map(|c| (c.col, c.width)).collect();
        // tab to 4, x, 日 two cells, e+accent one cell, z
        assert_eq!(cols, vec![(0, 4), (4, 1), (5, 2), (7, 1), (8, 1)]);
        assert_eq!(column_of(line, line.len(), 4), 9);
        let z = line.find('z').unwrap();
        assert_eq!(column_of(line, z, 4), 8);
        // Column 6 is the second cell of 日: the cursor lands on 日.
        assert_eq!(byte_at_column(line, 6, 4), line.find('日').unwrap());
        assert_eq!(byte_at_column(line, 99, 4), line.len());
        // A tab after two characters reaches the next stop.
        assert_eq!(cells("ab\tc", 4).nth(2).unwrap().width, 2);
    }

    #[test]
    fn cursor_steps_over_a_combining_sequence_at_once() {
        let line = "ae\u{301}b";
        assert_eq!(next_boundary(line, 1), 4);
        assert_eq!(prev_boundary(line, 4), 1);
        assert_eq!(prev_boundary(line, 0), 0);
        assert_eq!(next_boundary(line, line.len()), line.len());
    }

    #[test]
    fn control_characters_are_shown_as_caret_letters() {
        let c = cells("a\u{1b}", 4).nth(1).unwrap();
        assert_eq!((c.glyph().as_ref(), c.width), ("^[", 2));
    }

    #[test]
    fn words_are_runs_of_one_class() {
        let s = "    let foo_bar = x.y();";
        assert_eq!(word_end(s, 0), 7);
        assert_eq!(word_end(s, 7), 15);
        assert_eq!(word_end(s, 15), 17);
        assert_eq!(word_start(s, 15), 8);
        assert_eq!(word_start(s, 8), 4);
        assert_eq!(word_start(s, 3), 0);
        assert_eq!(word_end("ab", 2), 2);
    }
}
