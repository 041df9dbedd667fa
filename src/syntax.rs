//! Syntax: the language registry (`grammars/languages.toml`), tree-sitter parsing, trimming of
//! proposals to syntactic boundaries, and highlight spans for the editor.
//!
//! Nothing here knows about models or terminals: the trimmer is a pure function of text.

pub mod highlight;
pub mod language;
pub mod trim;

pub use language::{Language, Registry};
pub use trim::{Reason, Trimmed, Trimmer, trim};
