//! What part of the text the screen shows: its size, the scroll position that keeps the cursor in
//! view, and the syntax colours of the lines around it. Updated before each frame
//! (`App::layout`), so that drawing only reads.

use crate::syntax::Language;
use crate::syntax::highlight::{HighlightKind, Highlighter};
use crate::text::{Document, Pos, display};

/// The most text parsed for highlighting at once.
const MAX_HIGHLIGHT_BYTES: usize = 256 * 1024;

/// Lines above the view parsed for highlighting, so constructs that start above it colour right.
const CONTEXT_LINES: usize = 200;

/// Screens smaller than this are left blank.
pub const MIN_SIZE: (u16, u16) = (10, 3);

#[derive(Debug)]
pub(in crate::tui) struct Viewport {
    /// The terminal's size (columns, rows), once known.
    screen: Option<(u16, u16)>,
    /// The first line shown, and the first screen column.
    pub top: usize,
    pub left: usize,
    /// Rows and columns of text, and the width of the line numbers before it.
    pub rows: usize,
    pub width: usize,
    pub gutter: usize,
    highlight: HighlightCache,
}

impl Default for Viewport {
    fn default() -> Self {
        Self {
            screen: None,
            top: 0,
            left: 0,
            rows: 24,
            width: 80,
            gutter: 3,
            highlight: HighlightCache::default(),
        }
    }
}

/// Highlight spans of the lines around the view, recomputed when the text or the view moves.
#[derive(Default)]
struct HighlightCache {
    key: Option<(u64, usize, usize)>,
    first: usize,
    /// Per line from `first`: (start byte, end byte, kind).
    lines: Vec<Vec<(usize, usize, HighlightKind)>>,
    highlighter: Highlighter,
}

impl std::fmt::Debug for HighlightCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HighlightCache")
            .field("key", &self.key)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl Viewport {
    pub fn resize(&mut self, width: u16, height: u16) {
        self.screen = Some((width, height));
    }

    /// Lines a page key moves.
    pub fn page(&self) -> usize {
        self.rows.max(2) - 1
    }

    /// Page Up / Page Down scroll the view by a page as well as moving the cursor.
    pub fn scroll_page(&mut self, up: bool) {
        let page = self.page();
        self.top = if up {
            self.top.saturating_sub(page)
        } else {
            self.top + page
        };
    }

    /// Fits the view to the text and the cursor before a frame: the gutter for the number of
    /// lines, the scroll that shows the cursor, and the colours of the lines in view.
    pub fn settle(&mut self, doc: &Document, cursor: Pos, tab: usize, lang: Option<&Language>) {
        if let Some((w, h)) = self.screen
            && w >= MIN_SIZE.0
            && h >= MIN_SIZE.1
        {
            self.gutter = digits(doc.line_count()) + 2;
            self.rows = h as usize - 2;
            self.width = (w as usize).saturating_sub(self.gutter).max(1);
        }
        self.follow(doc, cursor, tab);
        if let Some(lang) = lang {
            self.highlight(doc, lang);
        }
    }

    fn follow(&mut self, doc: &Document, c: Pos, tab: usize) {
        if c.line < self.top {
            self.top = c.line;
        } else if c.line >= self.top + self.rows {
            self.top = c.line + 1 - self.rows;
        }
        self.top = self.top.min(doc.line_count().saturating_sub(1));
        let col = display::column_of(doc.line(c.line), c.col, tab);
        if col < self.left {
            self.left = col;
        } else if col >= self.left + self.width {
            self.left = col + 1 - self.width;
        }
    }

    /// Syntax spans of `line` (bytes of the line), when it is around the view.
    pub fn spans(&self, line: usize) -> &[(usize, usize, HighlightKind)] {
        let h = &self.highlight;
        line.checked_sub(h.first)
            .and_then(|i| h.lines.get(i))
            .map_or(&[], Vec::as_slice)
    }

    fn highlight(&mut self, doc: &Document, lang: &Language) {
        let bottom = (self.top + self.rows + 1).min(doc.line_count());
        // Start parsing at an unindented line above the view: the start of a top-level item.
        let mut first = self.top.saturating_sub(CONTEXT_LINES);
        while first > 0 && first + 4 * CONTEXT_LINES > self.top {
            let l = doc.line(first);
            if !l.is_empty() && !l.starts_with([' ', '\t']) {
                break;
            }
            first -= 1;
        }
        let cache = &mut self.highlight;
        let key = (doc.version(), first, bottom);
        if cache.key == Some(key) {
            return;
        }
        let lines = doc.lines().get(first..bottom).unwrap_or_default();
        // Minified or generated files with huge lines: parsing them on every key would stall the
        // editor, so they go without colours.
        let size: usize = lines.iter().map(|l| l.len() + 1).sum();
        if size > MAX_HIGHLIGHT_BYTES {
            cache.key = Some(key);
            cache.lines.clear();
            return;
        }
        let text = lines.join("\n");
        let spans = cache.highlighter.highlight(&text, lang);
        let mut per_line: Vec<Vec<(usize, usize, HighlightKind)>> = vec![Vec::new(); lines.len()];
        let mut start = 0;
        let mut starts = Vec::with_capacity(lines.len());
        for l in lines {
            starts.push(start);
            start += l.len() + 1;
        }
        for s in spans {
            // A span may cross lines (block comments, strings): give each line its piece.
            let first_line = starts.partition_point(|&b| b <= s.start).saturating_sub(1);
            for (i, &ls) in starts.iter().enumerate().skip(first_line) {
                let len = lines.get(i).map_or(0, String::len);
                if ls >= s.end {
                    break;
                }
                let a = s.start.max(ls) - ls;
                let b = (s.end.min(ls + len)).saturating_sub(ls);
                if a < b
                    && let Some(v) = per_line.get_mut(i)
                {
                    v.push((a, b, s.kind));
                }
            }
        }
        cache.key = Some(key);
        cache.first = first;
        cache.lines = per_line;
    }
}

fn digits(n: usize) -> usize {
    n.max(1).ilog10() as usize + 1
}
