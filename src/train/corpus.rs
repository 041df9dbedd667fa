//! The training corpus: which files of a repository to learn from, and why the others are skipped.
//!
//! The walk respects `.gitignore` and `.ignore`, lists hidden files and folders as skipped
//! (`.git` aside) without reading them, and never follows symlinks (no loops).
//! A file is kept only when infill knows its language and it is real, hand-written source: not
//! binary, not over 1 MB, not minified or generated, not vendored, not a duplicate or a near-duplicate
//! of a file kept before it, and above all not
//! a secret. Secrets are refused by name (`.env*`, keys, credentials) and by content (private-key
//! blocks, known token formats such as `sk-`, `ghp_`, `AKIA`, `AIza` and JWTs, a high-entropy
//! string assigned to a password/secret/token/key name, a random-looking key assigned to any name).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use super::dedup;
use super::licence::{Licence, Licences};
use crate::syntax::Registry;

/// Largest file considered.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a file was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    UnknownLanguage,
    TooLarge,
    Binary,
    NotUtf8,
    Unreadable(String),
    /// Minified or generated code: very long lines or a "generated" header.
    Generated(String),
    Vendored,
    Duplicate,
    /// Most of its distinctive lines are in this file, kept before it (see [`super::dedup`]).
    NearDuplicate(String),
    /// A secret by file name or content; what matched (never the secret itself).
    Secret(String),
    /// With `permissive_only`: the licence its package declares is not permissive, is one
    /// infill cannot read, or none is declared (see [`super::licence`]).
    Licence(String),
    Empty,
    /// A hidden file or folder (its name starts with a dot): configuration, caches, tools.
    Hidden,
}

impl Skip {
    /// The reason without its particulars, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownLanguage => "of no language infill knows",
            Self::TooLarge => "over 1 MB",
            Self::Binary => "binary",
            Self::NotUtf8 => "not UTF-8",
            Self::Unreadable(_) => "unreadable",
            Self::Generated(_) => "generated or minified",
            Self::Vendored => "vendored",
            Self::Duplicate => "exact duplicates",
            Self::NearDuplicate(_) => "near-duplicates",
            Self::Secret(_) => "that may hold a secret",
            Self::Licence(_) => "not permissively licensed",
            Self::Empty => "empty",
            Self::Hidden => "hidden",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownLanguage => write!(f, "not a language infill knows"),
            Self::TooLarge => write!(f, "larger than 1 MB"),
            Self::Binary => write!(f, "binary (contains NUL bytes)"),
            Self::NotUtf8 => write!(f, "not valid UTF-8"),
            Self::Unreadable(e) => write!(f, "unreadable: {e}"),
            Self::Generated(why) => write!(f, "generated or minified: {why}"),
            Self::Vendored => write!(f, "in a vendored or dependency folder"),
            Self::Duplicate => write!(f, "exact duplicate of another file"),
            Self::NearDuplicate(of) => write!(f, "nearly the same as {of}"),
            Self::Secret(why) => write!(f, "may hold a secret: {why}"),
            Self::Licence(why) => write!(f, "not permissively licensed: {why}"),
            Self::Empty => write!(f, "empty"),
            Self::Hidden => write!(f, "hidden (its name or a folder's starts with a dot)"),
        }
    }
}

/// One file kept for training.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the repository root, with `/` separators.
    pub path: String,
    pub language: String,
    pub text: String,
}

/// The result of walking a repository.
#[derive(Debug, Default)]
pub struct Corpus {
    pub files: Vec<SourceFile>,
    pub skipped: Vec<(String, Skip)>,
}

impl Corpus {
    pub fn bytes(&self) -> usize {
        self.files.iter().map(|f| f.text.len()).sum()
    }

    /// Two lines: files and megabytes kept per language (most bytes first), and how many files
    /// were skipped for each reason (most first).
    pub fn summary(&self) -> String {
        let kept: Vec<String> = by_language(&self.files)
            .iter()
            .map(|(l, n, b)| format!("{l} {n} ({:.1} MB)", *b as f64 / 1e6))
            .collect();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, why) in &self.skipped {
            *reasons.entry(why.kind()).or_default() += 1;
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let skipped: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!(
            "kept {} files ({:.1} MB): {}\nskipped {} files: {}",
            self.files.len(),
            self.bytes() as f64 / 1e6,
            kept.join(", "),
            self.skipped.len(),
            match skipped.is_empty() {
                true => "none".to_string(),
                false => skipped.join(", "),
            }
        )
    }
}

/// (language, files, bytes) of `files`, most bytes first.
pub fn by_language<'a>(
    files: impl IntoIterator<Item = &'a SourceFile>,
) -> Vec<(&'a str, usize, usize)> {
    let mut languages: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for f in files {
        let e = languages.entry(f.language.as_str()).or_default();
        e.0 += 1;
        e.1 += f.text.len();
    }
    let mut languages: Vec<_> = languages.into_iter().map(|(l, (n, b))| (l, n, b)).collect();
    languages.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    languages
}

/// Why a repository cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{path}: no source files infill can learn from ({skipped} skipped; run with --explain to see why)"
    )]
    Empty { path: PathBuf, skipped: usize },
}

/// Choices beyond the fixed filters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Keep only files whose package declares a permissive licence (for a corpus that ships).
    pub permissive_only: bool,
}

/// Walks `roots` and sorts every file into kept or skipped (sorted by path: deterministic).
pub fn collect(roots: &[PathBuf], options: Options) -> Result<Corpus, CorpusError> {
    let registry = Registry::builtin().ok();
    let mut corpus = Corpus::default();
    let mut seen = HashSet::new();
    let mut near = dedup::Index::default();
    for root in roots {
        if !root.is_dir() {
            return Err(CorpusError::NotADirectory(root.clone()));
        }
        let relative = |path: &Path| {
            path.strip_prefix(root)
                .unwrap_or(path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        };
        // Hidden folders are listed as skipped, not walked (a `.venv` holds thousands of
        // files); hidden files are walked so that --explain can say why each is left out.
        let hidden_dirs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
        let noted = std::sync::Arc::clone(&hidden_dirs);
        let mut entries: Vec<(String, PathBuf)> = ignore::WalkBuilder::new(root)
            .follow_links(false)
            .require_git(false)
            .hidden(false)
            .filter_entry(move |e| {
                let dir = e.file_type().is_some_and(|t| t.is_dir());
                if e.depth() == 0 || !dir || !is_hidden(e.file_name()) {
                    return true;
                }
                if e.file_name() != ".git"
                    && let Ok(mut dirs) = noted.lock()
                {
                    dirs.push(e.path().to_path_buf());
                }
                false
            })
            .build()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
            .map(|e| (relative(e.path()), e.path().to_path_buf()))
            .collect();
        entries.sort();
        let mut hidden: Vec<String> = hidden_dirs
            .lock()
            .map(|dirs| dirs.iter().map(|d| format!("{}/", relative(d))).collect())
            .unwrap_or_default();
        hidden.sort();
        corpus
            .skipped
            .extend(hidden.into_iter().map(|d| (d, Skip::Hidden)));
        let mut licences = options.permissive_only.then(|| Licences::scan(root));
        for (rel, path) in entries {
            let language = registry
                .and_then(|r| r.for_path(&path))
                .map(|l| l.name.clone());
            match classify(&rel, &path, language.is_some()) {
                Ok(text) => {
                    let licence = licences.as_mut().map(|l| l.of(&rel));
                    if let Some(why) = licence.and_then(|l| match l {
                        Licence::Permissive(_) => None,
                        Licence::NotPermissive(name) => Some(name),
                        Licence::Unrecognised(name) => {
                            Some(format!("{name}, a licence infill cannot read"))
                        }
                        Licence::Unknown => Some("no licence declared".into()),
                    }) {
                        corpus.skipped.push((rel, Skip::Licence(why)));
                        continue;
                    }
                    if !seen.insert(crate::hash::fnv1a(text.as_bytes())) {
                        corpus.skipped.push((rel, Skip::Duplicate));
                        continue;
                    }
                    let lines = dedup::fingerprint(&text);
                    if let Some(of) = near.original_of(&lines) {
                        let skip = Skip::NearDuplicate(of.to_string());
                        corpus.skipped.push((rel, skip));
                        continue;
                    }
                    near.add(&rel, lines);
                    // A `.h` may be C++: the text decides.
                    let language = registry
                        .and_then(|r| r.for_source(&path, &text))
                        .map(|l| l.name.clone())
                        .or(language)
                        .unwrap_or_default();
                    corpus.files.push(SourceFile {
                        path: rel,
                        language,
                        text,
                    });
                }
                Err(skip) => corpus.skipped.push((rel, skip)),
            }
        }
    }
    if corpus.files.is_empty() {
        let path = roots.first().cloned().unwrap_or_default();
        return Err(CorpusError::Empty {
            path,
            skipped: corpus.skipped.len(),
        });
    }
    Ok(corpus)
}

/// Decides about one file; the text when it is kept.
fn classify(rel: &str, path: &Path, known_language: bool) -> Result<String, Skip> {
    // Secrets by name first: such a file is never even read.
    if let Some(why) = secret_name(rel) {
        return Err(Skip::Secret(why));
    }
    if rel.split('/').any(|c| is_hidden(std::ffi::OsStr::new(c))) {
        return Err(Skip::Hidden);
    }
    if rel.split('/').any(|c| VENDORED.contains(&c)) {
        return Err(Skip::Vendored);
    }
    if !known_language {
        return Err(Skip::UnknownLanguage);
    }
    let meta = std::fs::metadata(path).map_err(|e| Skip::Unreadable(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Skip::TooLarge);
    }
    let bytes = std::fs::read(path).map_err(|e| Skip::Unreadable(e.to_string()))?;
    if bytes.contains(&0) {
        return Err(Skip::Binary);
    }
    let text = String::from_utf8(bytes).map_err(|_| Skip::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(Skip::Empty);
    }
    if let Some(why) = generated(&text) {
        return Err(Skip::Generated(why));
    }
    if let Some(why) = secret_content(&text) {
        return Err(Skip::Secret(why));
    }
    Ok(text)
}

/// A file or folder whose name starts with a dot (`.github`, `.env`, `.venv`).
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

const VENDORED: &[&str] = &[
    "vendor",
    "vendored",
    "third_party",
    "third-party",
    "node_modules",
    "_vendor",
    "_vendored",
    "site-packages",
    ".venv",
    "venv",
];

fn secret_name(rel: &str) -> Option<String> {
    let name = rel.rsplit('/').next().unwrap_or(rel).to_ascii_lowercase();
    let by_name = name.starts_with(".env")
        || name.starts_with("id_rsa")
        || name.starts_with("id_dsa")
        || name.starts_with("id_ecdsa")
        || name.starts_with("id_ed25519")
        || name.contains("credential")
        || name.contains("secret")
        || [
            ".pem",
            ".key",
            ".p12",
            ".pfx",
            ".keystore",
            ".jks",
            ".netrc",
            ".npmrc",
            ".pypirc",
            ".htpasswd",
        ]
        .iter()
        .any(|ext| name.ends_with(ext));
    by_name.then(|| format!("file name {name:?}"))
}

fn patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            (
                r"-----BEGIN [A-Z ]*PRIVATE KEY( BLOCK)?-----",
                "a private key block",
            ),
            (r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "an AWS access key id"),
            (r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", "a GitHub token"),
            (r"\bgithub_pat_[A-Za-z0-9_]{22,}\b", "a GitHub token"),
            (r"\bglpat-[A-Za-z0-9_\-]{20,}\b", "a GitLab token"),
            (r"\bxox[abposr]-[A-Za-z0-9\-]{10,}\b", "a Slack token"),
            (r"\b[sr]k_live_[A-Za-z0-9]{20,}\b", "a Stripe key"),
            (r"\bsk-ant-[A-Za-z0-9_\-]{20,}", "an Anthropic API key"),
            (
                r"\bsk-(proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
                "an OpenAI-style API key",
            ),
            (r"\bAIza[0-9A-Za-z_\-]{35}\b", "a Google API key"),
            (r"\bhf_[A-Za-z0-9]{30,}\b", "a Hugging Face token"),
            (r"\bnpm_[A-Za-z0-9]{36}\b", "an npm token"),
            (r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{20,}", "a PyPI token"),
            (
                r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",
                "a JSON web token",
            ),
        ]
        .into_iter()
        .filter_map(|(re, what)| Regex::new(re).ok().map(|r| (r, what)))
        .collect()
    })
}

fn assignment() -> Option<&'static Regex> {
    static ASSIGN: OnceLock<Option<Regex>> = OnceLock::new();
    ASSIGN
        .get_or_init(|| {
            Regex::new(r#"(?i)(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|auth)[A-Za-z0-9_]*["']?\s*[:=]+\s*["']([^"'\s]{12,})["']"#).ok()
        })
        .as_ref()
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = s.chars().count() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A string literal of 20 characters or more, with no spaces, assigned to any name.
fn any_assignment() -> Option<&'static Regex> {
    static ASSIGN: OnceLock<Option<Regex>> = OnceLock::new();
    ASSIGN
        .get_or_init(|| {
            Regex::new(r#"([A-Za-z_][A-Za-z0-9_.]*)["']?\s*(?::\s*[A-Za-z_&'<>\[\] ]+)?\s*(?:=|:|:=|=>)\s*[a-z]?["']([A-Za-z0-9+/=_\-.~]{20,})["']"#).ok()
        })
        .as_ref()
}

/// Looks like a key or token: 20 characters or more that mix upper case, lower case and digits
/// (two of each at least: hex digests and identifiers do not), with the spread of a random
/// string (3.8 bits per character or more) and its restlessness: neighbours differ in kind
/// (case, digit) at least 40% of the time, where a random one does about 60% and words joined in
/// camel case (`ReleaseCandidate2024Build17`) under 30%.
fn random_token(value: &str) -> bool {
    let count = |f: fn(&char) -> bool| value.chars().filter(f).count();
    let kind = |c: char| {
        (
            c.is_ascii_uppercase(),
            c.is_ascii_lowercase(),
            c.is_ascii_digit(),
        )
    };
    let chars: Vec<char> = value.chars().collect();
    let changes = chars
        .windows(2)
        .filter(|w| kind(w[0]) != kind(w[1]))
        .count();
    value.len() >= 20
        && count(char::is_ascii_uppercase) >= 2
        && count(char::is_ascii_lowercase) >= 2
        && count(char::is_ascii_digit) >= 2
        && entropy(value) >= 3.8
        && changes * 10 >= (chars.len() - 1) * 4
}

fn secret_content(text: &str) -> Option<String> {
    for (re, what) in patterns() {
        if re.is_match(text) {
            return Some(format!("contains {what}"));
        }
    }
    if let Some(assign) = assignment() {
        for caps in assign.captures_iter(text) {
            let (Some(name), Some(value)) = (caps.get(1), caps.get(2)) else {
                continue;
            };
            if entropy(value.as_str()) >= 3.5 {
                return Some(format!(
                    "a high-entropy string assigned to {:?}",
                    name.as_str()
                ));
            }
        }
    }
    // Any name: a key is a key whatever the variable is called (`OPENAI = "..."`).
    for caps in any_assignment()?.captures_iter(text) {
        let (Some(name), Some(value)) = (caps.get(1), caps.get(2)) else {
            continue;
        };
        if random_token(value.as_str()) {
            return Some(format!(
                "a random-looking key assigned to {:?}",
                name.as_str()
            ));
        }
    }
    None
}

fn generated(text: &str) -> Option<String> {
    let head: String = text
        .lines()
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
        .to_ascii_lowercase();
    for marker in [
        "@generated",
        "do not edit",
        "auto-generated",
        "autogenerated",
        "generated by",
        "code generated",
    ] {
        if head.contains(marker) {
            return Some(format!("header says {marker:?}"));
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    if longest > 1000 {
        return Some(format!("a line of {longest} characters"));
    }
    let mean = text.len() / lines.len().max(1);
    if mean > 200 {
        return Some(format!("lines of {mean} characters on average"));
    }
    // Tables of numbers (the encodings/ files that once dominated a training run).
    let digits = text.bytes().filter(u8::is_ascii_hexdigit).count();
    let letters = text.bytes().filter(u8::is_ascii_alphabetic).count().max(1);
    let numeric_tokens = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| t.starts_with("0x") || t.parse::<f64>().is_ok())
        .count();
    let tokens = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .count()
        .max(1);
    if text.len() > 2000 && numeric_tokens * 2 > tokens && digits > letters {
        return Some("mostly numeric literals (a data table)".into());
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn filters_keep_source_and_refuse_secrets_generated_and_binary_files() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(
            r,
            "src/lib.rs",
            b"pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
        );
        write(r, "app/main.py", b"def main():\n    print('hi')\n");
        write(r, "README.md", b"# readme\n");
        write(r, ".env", b"DATABASE_URL=postgres://u:p@h/db\n");
        write(r, ".env.local", b"X=1\n");
        write(r, "certs/server.pem", b"not read\n");
        write(r, "keys/id_rsa", b"not read\n");
        write(r, "config/credentials.py", b"x = 1\n");
        write(
            r,
            "src/key.rs",
            b"const K: &str = \"-----BEGIN RSA PRIVATE KEY-----\\nMIIB\";\n",
        );
        write(r, "src/aws.py", b"KEY_ID = 'AKIAIOSFODNN7EXAMPLE'\n");
        write(
            r,
            "src/gh.js",
            b"const t = 'ghp_0123456789abcdefghijklmnopqrstuvwxyzAB';\n",
        );
        write(r, "src/gl.ts", b"const t = 'glpat-abcdefghij0123456789';\n");
        write(
            r,
            "src/slack.go",
            b"package x\nvar t = \"xoxb-1234567890-abcdefghij\"\n",
        );
        write(r, "src/settings.py", b"password = \"q8#Zr!v2Lm@9xT4k\"\n");
        // Keys by their shape, whatever the name they are assigned to.
        write(
            r,
            "src/anthropic.py",
            b"OPENAI = \"sk-ant-api03-Qx7vR2mK9pL4tW8nB3cD6fH1jY5zA0sE\"\n",
        );
        write(
            r,
            "src/openai.py",
            b"client = Client(\"sk-proj-4fGh7Jk2Lm9Np3Qr6St8Vw1Xy5Za0Bc\")\n",
        );
        write(
            r,
            "src/google.js",
            b"const maps = 'AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q';\n",
        );
        write(
            r,
            "src/jwt.ts",
            b"const t = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U';\n",
        );
        write(
            r,
            "src/any_name.rs",
            b"const UPSTREAM: &str = \"Zx8kQ2mN7pR4tV9wY3bC6dF1\";\n",
        );
        write(r, ".github/workflows/ci.py", b"print('ci')\n");
        // Long strings that are not keys: a hex digest, an identifier, a path.
        write(
            r,
            "src/plain_strings.py",
            b"DIGEST = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nNAME = \"get_user_account_name_by_id\"\nURL = \"https://example.com/api/v2/users\"\nTAG = \"ReleaseCandidate2024Build17\"\n",
        );
        write(
            r,
            "src/ok_settings.py",
            b"password = \"changeme\"\nname = \"aaaaaaaaaaaaaaaa\"\n",
        );
        write(
            r,
            "src/gen.rs",
            b"// @generated by build.rs, do not edit\npub const X: u8 = 1;\n",
        );
        write(
            r,
            "src/min.js",
            format!("var a={};\n", "1,".repeat(700)).as_bytes(),
        );
        write(r, "src/bin.c", b"int x;\0\0\0");
        write(r, "src/latin1.c", b"/* caf\xe9 */ int y;\n");
        write(r, "vendor/dep/lib.rs", b"pub fn dep() {}\n");
        write(
            r,
            "src/copy.rs",
            b"pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
        );
        write(r, "ignored/skip.rs", b"pub fn hidden() {}\n");
        // Two versions of one file: the later one (in path order) is left out.
        let body: String = (0..12)
            .map(|i| format!("pub fn function_{i}(x: u32) -> u32 {{ x + {i} }}\n"))
            .collect();
        write(r, "lib-1.0.0/src/big.rs", body.as_bytes());
        let edited = body.replace("x + 7", "x.wrapping_add(7)");
        write(r, "lib-1.1.0/src/big.rs", edited.as_bytes());
        write(r, ".gitignore", b"ignored/\n");
        let corpus = collect(&[r.to_path_buf()], Options::default()).unwrap();
        let kept: Vec<&str> = corpus.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            kept,
            [
                "app/main.py",
                "lib-1.0.0/src/big.rs",
                "src/copy.rs",
                "src/ok_settings.py",
                "src/plain_strings.py"
            ],
            "{:#?}",
            corpus.skipped
        );
        let why = |p: &str| {
            corpus
                .skipped
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, s)| s.clone())
        };
        // Hidden files are listed with why they are left out; hidden folders once, unwalked.
        assert!(matches!(why(".env"), Some(Skip::Secret(_))));
        assert!(matches!(why(".env.local"), Some(Skip::Secret(_))));
        assert_eq!(why(".gitignore"), Some(Skip::Hidden));
        assert_eq!(why(".github/"), Some(Skip::Hidden));
        assert!(
            !corpus
                .skipped
                .iter()
                .any(|(p, _)| p.starts_with(".github/w")),
            "a hidden folder is not walked"
        );
        assert!(secret_name(".env").is_some() && secret_name("app/.env.production").is_some());
        for secret in [
            "certs/server.pem",
            "keys/id_rsa",
            "config/credentials.py",
            "src/key.rs",
            "src/aws.py",
            "src/gh.js",
            "src/gl.ts",
            "src/slack.go",
            "src/settings.py",
            ".env",
            ".env.local",
            "src/openai.py",
            "src/anthropic.py",
            "src/google.js",
            "src/jwt.ts",
            "src/any_name.rs",
        ] {
            assert!(
                matches!(why(secret), Some(Skip::Secret(_))),
                "{secret}: {:?}",
                why(secret)
            );
        }
        assert!(matches!(why("src/gen.rs"), Some(Skip::Generated(_))));
        assert!(matches!(why("src/min.js"), Some(Skip::Generated(_))));
        assert_eq!(why("src/bin.c"), Some(Skip::Binary));
        assert_eq!(why("src/latin1.c"), Some(Skip::NotUtf8));
        assert_eq!(why("vendor/dep/lib.rs"), Some(Skip::Vendored));
        assert_eq!(why("src/lib.rs"), Some(Skip::Duplicate));
        assert_eq!(
            why("lib-1.1.0/src/big.rs"),
            Some(Skip::NearDuplicate("lib-1.0.0/src/big.rs".into()))
        );
        assert_eq!(why("README.md"), Some(Skip::UnknownLanguage));
        assert!(
            why("ignored/skip.rs").is_none() && !kept.contains(&"ignored/skip.rs"),
            "gitignored files are not even listed"
        );
        let summary = corpus.summary();
        assert!(
            summary.starts_with("kept 5 files (0.0 MB): rust 2 (0.0 MB), python 3 (0.0 MB)\n"),
            "{summary}"
        );
        assert!(
            summary.contains("16 that may hold a secret")
                && summary.contains("1 near-duplicates")
                && summary.contains("1 exact duplicates"),
            "{summary}"
        );
    }

    #[test]
    fn permissive_only_keeps_what_a_permissive_licence_covers() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(
            r,
            "krate/Cargo.toml",
            b"[package]\nname = \"krate\"\nlicense = \"MIT OR Apache-2.0\"\n",
        );
        write(r, "krate/src/lib.rs", b"pub fn f() -> u8 { 1 }\n");
        write(
            r,
            "krate/gpl/COPYING",
            b"GNU GENERAL PUBLIC LICENSE\nVersion 3\n",
        );
        write(r, "krate/gpl/x.c", b"int x = 1;\n");
        write(r, "loose/y.py", b"y = 2\n");
        write(
            r,
            "odd/Cargo.toml",
            b"[package]\nname = \"odd\"\nlicense = \"SEE LICENSE IN TERMS.txt\"\n",
        );
        write(r, "odd/src/lib.rs", b"pub fn g() -> u8 { 2 }\n");
        let all = collect(&[r.to_path_buf()], Options::default()).unwrap();
        assert_eq!(all.files.len(), 4);
        let options = Options {
            permissive_only: true,
        };
        let corpus = collect(&[r.to_path_buf()], options).unwrap();
        let kept: Vec<&str> = corpus.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(kept, ["krate/src/lib.rs"]);
        let why = |p: &str| {
            corpus
                .skipped
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, s)| s.to_string())
        };
        assert!(
            why("krate/gpl/x.c").is_some_and(|w| w.contains("COPYING")),
            "{:?}",
            corpus.skipped
        );
        assert!(why("loose/y.py").is_some_and(|w| w.contains("no licence declared")));
        assert_eq!(
            why("odd/src/lib.rs").as_deref(),
            Some(
                "not permissively licensed: SEE LICENSE IN TERMS.txt, a licence infill cannot read"
            ),
            "a declaration infill cannot read is named, not reported as missing"
        );
    }

    #[test]
    fn an_empty_repository_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "notes.txt", b"hello\n");
        let err = collect(&[tmp.path().to_path_buf()], Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no source files") && err.contains("--explain"),
            "{err}"
        );
        assert!(collect(&[tmp.path().join("missing")], Options::default()).is_err());
    }
}
