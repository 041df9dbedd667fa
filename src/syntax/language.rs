//! The language registry, read from `grammars/languages.toml` (compiled in) with serde.
//!
//! Configuration is data, as in helix's `languages.toml`: adding a language is an entry there, a
//! grammar crate in Cargo.toml, one arm in `grammar`, and its queries in `grammars/<name>/`.

use std::path::Path;
use std::sync::OnceLock;

use serde::Deserialize;

const LANGUAGES_TOML: &str = include_str!("../../grammars/languages.toml");

/// One language as `languages.toml` describes it, with its grammar and queries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Language {
    pub name: String,
    pub extensions: Vec<String>,
    #[serde(default)]
    pub line_comment: Option<String>,
    #[serde(default)]
    pub block_comment: Option<(String, String)>,
    /// The grammar crate (`tree-sitter-rust`), or crate/dialect (`tree-sitter-typescript/tsx`).
    pub grammar: String,
    #[serde(default)]
    pub trim: TrimSettings,
}

/// What the trimmer needs to know about a language.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrimSettings {
    /// Blocks are delimited by indentation (Python) rather than braces.
    #[serde(default)]
    pub indent_blocks: bool,
    /// Node kinds of string literals: a cursor inside one keeps the proposal on its line.
    #[serde(default)]
    pub string_kinds: Vec<String>,
    /// Node kinds of comments: likewise.
    #[serde(default)]
    pub comment_kinds: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LanguagesFile {
    language: Vec<Language>,
}

/// Why the language configuration is unusable (a build-time mistake; tests catch it).
#[derive(Debug, thiserror::Error)]
pub enum LanguageError {
    #[error("grammars/languages.toml: {0}")]
    Toml(String),
    #[error(
        "grammars/languages.toml: language {language:?} names grammar {grammar:?}, which infill does not link"
    )]
    UnknownGrammar { language: String, grammar: String },
    #[error("unknown language {0:?}; known: {1}")]
    Unknown(String, String),
}

impl Language {
    /// The tree-sitter grammar.
    pub fn grammar(&self) -> tree_sitter::Language {
        // The registry only holds languages whose grammar resolved (checked in `parse_registry`).
        grammar(&self.grammar).unwrap_or_else(|| tree_sitter_rust::LANGUAGE.into())
    }

    /// The highlight query source for this language (may be empty).
    pub fn highlights_query(&self) -> &'static str {
        queries(&self.name).highlights
    }

    pub fn is_string_kind(&self, kind: &str) -> bool {
        self.trim.string_kinds.iter().any(|k| k == kind)
    }

    pub fn is_comment_kind(&self, kind: &str) -> bool {
        self.trim.comment_kinds.iter().any(|k| k == kind)
    }
}

/// The grammar crates infill links, by the name `languages.toml` uses.
fn grammar(name: &str) -> Option<tree_sitter::Language> {
    Some(match name {
        "tree-sitter-rust" => tree_sitter_rust::LANGUAGE.into(),
        "tree-sitter-python" => tree_sitter_python::LANGUAGE.into(),
        "tree-sitter-javascript" => tree_sitter_javascript::LANGUAGE.into(),
        "tree-sitter-typescript" => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
        "tree-sitter-typescript/tsx" => tree_sitter_typescript::LANGUAGE_TSX.into(),
        "tree-sitter-go" => tree_sitter_go::LANGUAGE.into(),
        "tree-sitter-c" => tree_sitter_c::LANGUAGE.into(),
        "tree-sitter-cpp" => tree_sitter_cpp::LANGUAGE.into(),
        "tree-sitter-java" => tree_sitter_java::LANGUAGE.into(),
        _ => return None,
    })
}

/// Query sources of one language, compiled in.
pub struct Queries {
    pub highlights: &'static str,
}

/// The queries under `grammars/<name>/`.
pub fn queries(name: &str) -> Queries {
    macro_rules! q {
        ($lang:literal) => {
            Queries {
                highlights: include_str!(concat!("../../grammars/", $lang, "/highlights.scm")),
            }
        };
    }
    match name {
        "rust" => q!("rust"),
        "python" => q!("python"),
        "javascript" => q!("javascript"),
        // TSX is TypeScript plus JSX; the TypeScript queries compile against both grammars.
        "typescript" | "tsx" => q!("typescript"),
        "go" => q!("go"),
        "c" => q!("c"),
        "cpp" => q!("cpp"),
        "java" => q!("java"),
        _ => Queries { highlights: "" },
    }
}

/// Every known language.
#[derive(Debug)]
pub struct Registry {
    languages: Vec<Language>,
}

fn parse_registry(text: &str) -> Result<Registry, LanguageError> {
    let file: LanguagesFile =
        toml::from_str(text).map_err(|e| LanguageError::Toml(e.to_string()))?;
    for lang in &file.language {
        if grammar(&lang.grammar).is_none() {
            return Err(LanguageError::UnknownGrammar {
                language: lang.name.clone(),
                grammar: lang.grammar.clone(),
            });
        }
    }
    Ok(Registry {
        languages: file.language,
    })
}

impl Registry {
    /// The registry built into infill.
    pub fn builtin() -> Result<&'static Self, &'static LanguageError> {
        static REGISTRY: OnceLock<Result<Registry, LanguageError>> = OnceLock::new();
        REGISTRY
            .get_or_init(|| parse_registry(LANGUAGES_TOML))
            .as_ref()
    }

    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    pub fn by_name(&self, name: &str) -> Result<&Language, LanguageError> {
        self.languages
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let known: Vec<&str> = self.languages.iter().map(|l| l.name.as_str()).collect();
                LanguageError::Unknown(name.to_string(), known.join(", "))
            })
    }

    /// The language of a file, by extension; `None` for unknown files (trimmed by the fallback rules).
    pub fn for_path(&self, path: &Path) -> Option<&Language> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        self.languages.iter().find(|l| l.extensions.contains(&ext))
    }

    /// The language of a file by extension and, where C and C++ share one (`.h`), by its text: a
    /// header with C++ in it (LLVM's, ICU's) is C++, so it is parsed with the grammar that knows
    /// classes and namespaces.
    pub fn for_source(&self, path: &Path, text: &str) -> Option<&Language> {
        let language = self.for_path(path)?;
        let header = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("h"));
        if language.name == "c" && header && looks_like_cpp(text) {
            return self.by_name("cpp").ok().or(Some(language));
        }
        Some(language)
    }
}

/// Whether a header holds C++: two lines or more, outside comments, that C has no way to write
/// (a namespace, a template, a class, an access label, a `::`, a `using`, a standard header
/// without `.h`). One is not enough: a C header may wrap itself for C++ in a line or two.
fn looks_like_cpp(text: &str) -> bool {
    let mut in_comment = false;
    let mut signals = 0;
    for line in text.lines() {
        let mut code = line.trim();
        if in_comment {
            match code.split_once("*/") {
                Some((_, after)) => {
                    code = after.trim_start();
                    in_comment = false;
                }
                None => continue,
            }
        }
        if let Some((before, _)) = code.split_once("//") {
            code = before;
        }
        if let Some((before, comment)) = code.split_once("/*") {
            in_comment = !comment.contains("*/");
            code = before;
        }
        let code = code.trim();
        let include = code
            .strip_prefix("#include <")
            .and_then(|rest| rest.split_once('>'))
            .map(|(name, _)| name);
        let cpp = ["namespace ", "template<", "template <", "class ", "using "]
            .iter()
            .any(|p| code.starts_with(p))
            || matches!(code, "public:" | "private:" | "protected:")
            || code.contains("::")
            || include.is_some_and(|name| !name.contains('.'));
        if cpp {
            signals += 1;
            if signals >= 2 {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_a_grammar_and_compiling_queries() {
        let reg = Registry::builtin().unwrap();
        for name in [
            "rust",
            "python",
            "javascript",
            "typescript",
            "tsx",
            "go",
            "c",
            "cpp",
            "java",
        ] {
            let lang = reg.by_name(name).unwrap();
            let query = tree_sitter::Query::new(&lang.grammar(), lang.highlights_query());
            assert!(query.is_ok(), "{name}: {:?}", query.err());
            assert!(!lang.highlights_query().is_empty());
        }
    }

    #[test]
    fn languages_are_found_by_extension_and_unknown_keys_are_rejected() {
        let reg = Registry::builtin().unwrap();
        assert_eq!(reg.for_path(Path::new("src/main.RS")).unwrap().name, "rust");
        assert_eq!(reg.for_path(Path::new("a/b.tsx")).unwrap().name, "tsx");
        assert_eq!(reg.for_path(Path::new("x.hpp")).unwrap().name, "cpp");
        assert!(reg.for_path(Path::new("notes.txt")).is_none());
    }

    #[test]
    fn a_header_with_cpp_in_it_is_cpp() {
        let reg = Registry::builtin().unwrap();
        let name =
            |path: &str, text: &str| reg.for_source(Path::new(path), text).unwrap().name.clone();
        let llvm = "//===- Function.h ---===//\n#include <string>\n#include \"llvm/IR/Value.h\"\n\nnamespace llvm {\n\nclass Function : public Value {\npublic:\n  unsigned size() const;\n};\n\n} // namespace llvm\n";
        assert_eq!(name("include/llvm/IR/Function.h", llvm), "cpp");
        let c = "/* zlib.h -- interface, see zlib::deflate in the C++ docs\n   using the namespace of ... */\n#include <stddef.h>\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\nint deflate(z_streamp strm, int flush); // not a::b\n\n#ifdef __cplusplus\n}\n#endif\n";
        assert_eq!(
            name("zlib.h", c),
            "c",
            "C++ words in comments and an extern \"C\" wrapper"
        );
        assert_eq!(
            name("one.h", "class Forward;\nint f(void);\n"),
            "c",
            "one sign is not enough"
        );
        assert_eq!(name("lib.c", llvm), "c", "only headers are read for it");
        assert_eq!(name("x.hpp", "int f(void);\n"), "cpp");
        assert!(
            reg.by_name("cobol")
                .unwrap_err()
                .to_string()
                .contains("rust")
        );
        let bad = "[[language]]\nname='x'\nextensions=[]\ngrammar='tree-sitter-c'\ncolour='red'\n";
        assert!(matches!(parse_registry(bad), Err(LanguageError::Toml(_))));
        let unknown = "[[language]]\nname='x'\nextensions=[]\ngrammar='tree-sitter-cobol'\n";
        assert!(matches!(
            parse_registry(unknown),
            Err(LanguageError::UnknownGrammar { .. })
        ));
    }
}
