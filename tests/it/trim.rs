//! The trimming corpus: `tests/trim/<language>.txt`, cases that read as prefix█suffix, proposal,
//! expected result (and optionally the reason), plus a property test on arbitrary input.
//!
//! Format: `### case: NAME` starts a case and is followed by the document with `█` at the cursor;
//! `### proposal`, `### expected` and optional `### reason: REASON` follow. A section's text is its
//! lines joined by newlines; an empty line before the next `###` makes the text end with a newline.

use std::path::Path;

use infill::syntax::{Registry, trim};
use proptest::prelude::*;

const CURSOR: char = '█';

struct Case {
    name: String,
    document: String,
    proposal: String,
    expected: String,
    reason: Option<String>,
}

fn parse_corpus(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    let flush = |sections: &mut Vec<(String, Vec<&str>)>, cases: &mut Vec<Case>| {
        if sections.is_empty() {
            return;
        }
        let get = |key: &str| sections.iter().find(|(h, _)| h.starts_with(key));
        let (head, doc) = get("case:").expect("a case header");
        let body = |key: &str| {
            get(key)
                .map(|(_, lines)| lines.join("\n"))
                .unwrap_or_else(|| panic!("{head}: no {key}"))
        };
        cases.push(Case {
            name: head.trim_start_matches("case:").trim().to_string(),
            document: doc.join("\n"),
            proposal: body("proposal"),
            expected: body("expected"),
            reason: get("reason:").map(|(h, _)| h.trim_start_matches("reason:").trim().to_string()),
        });
        sections.clear();
    };
    for line in text.split('\n') {
        if let Some(head) = line.strip_prefix("### ") {
            if head.starts_with("case:") {
                flush(&mut sections, &mut cases);
            }
            sections.push((head.to_string(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(line);
        }
    }
    // The file's own final newline is not part of the last section.
    if let Some((_, lines)) = sections.last_mut()
        && lines.last() == Some(&"")
    {
        lines.pop();
    }
    flush(&mut sections, &mut cases);
    cases
}

fn run_corpus(language: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/trim")
        .join(format!("{language}.txt"));
    let text = std::fs::read_to_string(&path).unwrap();
    let cases = parse_corpus(&text);
    assert!(cases.len() >= 25, "{language}: only {} cases", cases.len());
    let lang = Registry::builtin().unwrap().by_name(language).unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let (prefix, suffix) = case
            .document
            .split_once(CURSOR)
            .unwrap_or_else(|| panic!("{}: no cursor", case.name));
        let got = trim(prefix, &case.proposal, suffix, Some(lang));
        let reason = serde_json::to_value(got.reason)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        if got.text != case.expected || case.reason.as_ref().is_some_and(|r| *r != reason) {
            failures.push(format!(
                "--- {language}: {}\nexpected ({}): {:?}\n     got ({reason}): {:?}",
                case.name,
                case.reason.as_deref().unwrap_or("any reason"),
                case.expected,
                got.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_python() {
    run_corpus("python");
}

#[test]
fn corpus_rust() {
    run_corpus("rust");
}

#[test]
fn corpus_javascript() {
    run_corpus("javascript");
}

#[test]
fn corpus_typescript() {
    run_corpus("typescript");
}

#[test]
fn corpus_go() {
    run_corpus("go");
}

#[test]
fn corpus_c() {
    run_corpus("c");
}

#[test]
fn corpus_cpp() {
    run_corpus("cpp");
}

#[test]
fn corpus_java() {
    run_corpus("java");
}

/// The reindented proposal: the trimmer's output is always a prefix of it, plus at most the
/// newline of a whole-line hole.
fn is_prefix_modulo_indentation(out: &str, proposal: &str) -> bool {
    let out = out.strip_suffix('\n').unwrap_or(out);
    if proposal.starts_with(out) {
        return true;
    }
    // Indentation may be converted between tabs and spaces; compare with leading blanks removed.
    let squash = |s: &str| {
        s.split('\n')
            .map(|l| l.trim_start_matches([' ', '\t']).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    squash(proposal).starts_with(&squash(out))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Never panics, whatever the text, cursor, proposal and language; the result is a prefix of
    /// the (re-indented) proposal.
    #[test]
    fn trimming_never_panics_and_returns_a_prefix(
        doc in "(\\PC|[\\n\\t {}()\\[\\]\"'#/:;]){0,200}",
        proposal in "(\\PC|[\\n\\t {}()\\[\\]\"'#/:;]){0,120}",
        at in 0usize..400,
        lang_index in 0usize..10,
    ) {
        let registry = Registry::builtin().unwrap();
        let langs = registry.languages();
        let lang = langs.get(lang_index);
        let mut cut = at.min(doc.len());
        while !doc.is_char_boundary(cut) {
            cut -= 1;
        }
        let (prefix, suffix) = doc.split_at(cut);
        let out = trim(prefix, &proposal, suffix, lang);
        prop_assert!(is_prefix_modulo_indentation(&out.text, &proposal), "{:?} not a prefix of {:?}", out.text, proposal);
    }
}

#[test]
fn edge_cases_do_not_panic() {
    let lang = Registry::builtin().unwrap().by_name("rust").ok();
    for (p, prop, s) in [
        ("", "", ""),
        ("", "fn main() {}", ""),
        ("fn f() {", "", "}"),
        ("x", "\n\n\n", "y"),
    ] {
        let _ = trim(p, prop, s, lang);
    }
    let huge: String = "let x = 1;\n".repeat(5000);
    let out = trim("fn f() {\n    ", &huge, "\n}\n", lang);
    assert!(huge.starts_with(&out.text));
}
