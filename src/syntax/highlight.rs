//! Highlight spans for a text, from the language's `grammars/<lang>/highlights.scm`.

use std::collections::HashMap;

use serde::Serialize;
use streaming_iterator::StreamingIterator;
use tree_sitter::{Parser, Query, QueryCursor};

use super::language::Language;

/// What a span of text is, for colouring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HighlightKind {
    Comment,
    String,
    Number,
    Constant,
    Keyword,
    Function,
    Type,
}

impl HighlightKind {
    fn from_capture(name: &str) -> Option<Self> {
        Some(match name {
            "comment" => Self::Comment,
            "string" => Self::String,
            "number" => Self::Number,
            "constant" => Self::Constant,
            "keyword" => Self::Keyword,
            "function" => Self::Function,
            "type" => Self::Type,
            _ => return None,
        })
    }
}

/// A highlighted byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: HighlightKind,
}

/// Compiled highlight queries, one per language, reused across calls.
#[derive(Default)]
pub struct Highlighter {
    queries: HashMap<String, Query>,
}

impl std::fmt::Debug for Highlighter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Highlighter")
            .field("languages", &self.queries.len())
            .finish()
    }
}

impl Highlighter {
    /// Non-overlapping spans in text order; the first capture wins where patterns overlap.
    pub fn highlight(&mut self, text: &str, lang: &Language) -> Vec<Span> {
        let grammar = lang.grammar();
        let query = match self.queries.entry(lang.name.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match Query::new(&grammar, lang.highlights_query()) {
                    Ok(q) => v.insert(q),
                    Err(_) => return Vec::new(),
                }
            }
        };
        let mut parser = Parser::new();
        if parser.set_language(&grammar).is_err() {
            return Vec::new();
        }
        let Some(tree) = parser.parse(text, None) else {
            return Vec::new();
        };
        let names = query.capture_names();
        let mut spans: Vec<Span> = Vec::new();
        let mut cursor = QueryCursor::new();
        let mut captures = cursor.captures(query, tree.root_node(), text.as_bytes());
        while let Some((m, i)) = captures.next() {
            let Some(c) = m.captures().get(*i) else {
                continue;
            };
            let Some(kind) = names
                .get(c.index as usize)
                .and_then(|n| HighlightKind::from_capture(n))
            else {
                continue;
            };
            spans.push(Span {
                start: c.node.start_byte(),
                end: c.node.end_byte(),
                kind,
            });
        }
        spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
        let mut out: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            if out.last().is_none_or(|l| s.start >= l.end) {
                out.push(s);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::syntax::Registry;

    #[test]
    fn rust_keywords_strings_and_comments_are_spanned() {
        let lang = Registry::builtin().unwrap().by_name("rust").unwrap();
        let text = "fn main() { let s = \"hi\"; // done\n}";
        let spans = Highlighter::default().highlight(text, lang);
        let kind_of = |needle: &str| {
            let at = text.find(needle).unwrap();
            spans.iter().find(|s| s.start == at).map(|s| s.kind)
        };
        assert_eq!(kind_of("fn"), Some(HighlightKind::Keyword));
        assert_eq!(kind_of("main"), Some(HighlightKind::Function));
        assert_eq!(kind_of("\"hi\""), Some(HighlightKind::String));
        assert_eq!(kind_of("// done"), Some(HighlightKind::Comment));
        assert!(spans.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
