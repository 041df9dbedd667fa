//! Fuzzing the parts that see every keystroke: the trimmer, the prompt builder and the document's
//! edits, each with 10^5 random inputs per run (arbitrary UTF-8, CRLF, the cursor anywhere), no
//! panic, and their invariants checked.
//!
//! The seed changes from run to run, so CI keeps exploring; a failure prints the seed, and
//! `INFILL_FUZZ_SEED=<seed> cargo test --test it fuzz::` replays it.

use infill::model::{FimOrder, Tokenizer};
use infill::rng::Rng;
use infill::syntax::{Registry, Trimmer};
use infill::text::{Document, Group, Pos};

/// Inputs per fuzzed part.
const INPUTS: usize = 100_000;

fn seed() -> u64 {
    std::env::var("INFILL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// Pieces that random code is made of: syntax, line breaks of every kind, indentation, and
/// characters of one to four bytes (a combining accent and a zero-width space among them).
const PIECES: &[&str] = &[
    "a", "x", "Z", "_", "0", "7", " ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\n\n", "(", ")",
    "[", "]", "{", "}", "<", ">", "\"", "'", "`", "#", "//", "/*", "*/", ";", ":", ",", ".", "=",
    "->", "+", "\\", "é", "€", "😀", "\u{301}", "\u{200B}", "ß", "fn ", "def ", "if ", "return ",
    "let ", "class ", "pass", "else", "for ", " in ", "while ", "import ",
];

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

fn text(rng: &mut Rng, max_pieces: usize) -> String {
    let n = below(rng, max_pieces + 1);
    (0..n).map(|_| PIECES[below(rng, PIECES.len())]).collect()
}

/// A character boundary of `s` near a random byte.
fn boundary(rng: &mut Rng, s: &str) -> usize {
    let mut at = below(rng, s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Runs `body` `INPUTS` times with one seeded generator; a panic or failed check names the seed
/// and the input's number.
fn fuzz(name: &str, mut body: impl FnMut(&mut Rng)) {
    let seed = seed();
    let mut rng = Rng::new(seed);
    for i in 0..INPUTS {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut rng)));
        if let Err(e) = result {
            let what = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: input {i} of seed {seed} failed: {what}");
        }
    }
}

/// The trimmed proposal holds only text the model wrote, plus at most the hole's newline: without
/// that newline it is a prefix of the proposal (indentation may change between tabs and spaces).
#[test]
fn fuzz_the_trimmer() {
    let registry = Registry::builtin().unwrap();
    let languages = registry.languages();
    let squash = |s: &str| {
        s.split('\n')
            .map(|l| l.trim_start_matches([' ', '\t']))
            .collect::<Vec<_>>()
            .join("\n")
    };
    fuzz("trimmer", |rng| {
        let doc = text(rng, 40);
        let at = boundary(rng, &doc);
        let (prefix, suffix) = doc.split_at(at);
        let proposal = text(rng, 24);
        let lang = languages.get(below(rng, languages.len() + 2));
        let mut trimmer = Trimmer::new(prefix, suffix, lang);
        // Generation asks whether to stop after each token: any prefix of the proposal.
        let partial = &proposal[..boundary(rng, &proposal)];
        let _ = trimmer.is_closed(partial);
        let out = trimmer.trim(&proposal).text;
        let body = out.strip_suffix('\n').unwrap_or(&out);
        assert!(
            proposal.starts_with(body) || squash(&proposal).starts_with(&squash(body)),
            "{out:?} is not a prefix of {proposal:?} (prefix {prefix:?}, suffix {suffix:?})"
        );
    });
}

/// The prompt keeps the text nearest the cursor within its budget, and every cut is on a
/// character boundary.
#[test]
fn fuzz_the_prompt_builder() {
    let json = std::fs::read(crate::fixture("qwen2").join("tokenizer.json")).unwrap();
    let tokenizer = Tokenizer::from_bytes(&json, usize::MAX).unwrap();
    fuzz("prompt", |rng| {
        let doc = text(rng, 30);
        let at = boundary(rng, &doc);
        let (prefix, suffix) = doc.split_at(at);
        let budget = 1 + below(rng, 40);
        let order = if below(rng, 2) == 0 {
            FimOrder::Psm
        } else {
            FimOrder::Spm
        };
        let mut prompt =
            infill::complete::build_prompt(&tokenizer, prefix, suffix, budget, order).unwrap();
        assert!(prompt.prefix_tokens + prompt.suffix_tokens <= budget);
        assert!(prefix.is_char_boundary(prompt.prefix_dropped_bytes));
        assert!(suffix.is_char_boundary(suffix.len() - prompt.suffix_dropped_bytes));
        let healed = prompt.heal(&tokenizer);
        assert!(
            prefix.as_bytes().ends_with(&healed),
            "{healed:?} ends {prefix:?}"
        );
    });
}

/// Edits anywhere (positions past the end included) leave every position on a character
/// boundary, and undoing them all gives back the original bytes, CRLF breaks and all.
#[test]
fn fuzz_the_documents_edits() {
    let mut doc = Document::default();
    let mut original = Vec::new();
    let mut edits = 0;
    fuzz("document", |rng| {
        if edits == 0 {
            let start = text(rng, 30);
            doc = Document::from_text(&start);
            original = doc.to_bytes();
            edits = 1 + below(rng, 12);
        }
        let pos = |rng: &mut Rng, doc: &Document| {
            let line = below(rng, doc.line_count() + 2);
            Pos::new(line, below(rng, doc.line(line).len() + 3))
        };
        let (a, b) = (pos(rng, &doc), pos(rng, &doc));
        let inserted = text(rng, 4);
        let group = if below(rng, 2) == 0 {
            Group::Typing
        } else {
            Group::Single
        };
        let end = doc.replace(a, b, &inserted, group, a);
        let t = doc.text();
        assert!(t.is_char_boundary(doc.byte_of(end)), "{end:?} in {t:?}");
        assert_eq!(doc.clamp(end), end);
        if below(rng, 8) == 0 {
            doc.undo();
            doc.redo();
        }
        edits -= 1;
        if edits == 0 {
            while doc.undo().is_some() {}
            assert_eq!(doc.to_bytes(), original);
            assert!(!doc.is_modified());
        }
    });
}
