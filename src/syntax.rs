//! Syntax: the language registry (`grammars/languages.toml`), tree-sitter parsing, trimming of
//! proposals to syntactic boundaries, and highlight spans for the editor.
//!
//! Nothing here knows about models or terminals: the trimmer is a pure function of text.

pub mod highlight;
pub mod language;
pub mod trim;

pub use language::{Language, Registry};
pub use trim::{Reason, Trimmed, Trimmer, trim};

/// Parses `text` as the language named `language` (`None` when the name is unknown or absent).
pub fn parse(text: &str, language: Option<&str>) -> Option<tree_sitter::Tree> {
    let lang = Registry::builtin().ok()?.by_name(language?).ok()?;
    let mut parser = tree_sitter::Parser::new();
    parser.set_language(&lang.grammar()).ok()?;
    parser.parse(text, None)
}

/// ERROR and MISSING nodes in `tree`, visiting only subtrees that hold an error.
pub fn error_count(tree: &tree_sitter::Tree) -> usize {
    let mut count = 0;
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        count += usize::from(node.is_error() || node.is_missing());
        if node.has_error() {
            let mut walk = node.walk();
            stack.extend(node.children(&mut walk));
        }
    }
    count
}
