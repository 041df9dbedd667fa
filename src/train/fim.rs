//! Fill-in-the-middle training examples and the packed token streams built from them.
//!
//! Following Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the Middle"): a
//! document becomes a FIM example with probability `fim_rate` (0.5 from scratch, 0.9 when
//! fine-tuning), in PSM or SPM order with equal odds; the loss covers every token including the
//! end-of-text that closes the middle. Split points come in four kinds, so the model sees the holes
//! the editor makes: random characters, the rest of a line, a span inside a line (neither of them
//! empty), and a whole syntactic block (tree-sitter, when the language is known). Documents are
//! joined with `<|file_sep|>`, each ends with end-of-text, and the stream is cut into fixed-length
//! windows. Everything is drawn from one seeded generator.
//!
//! A document longer than a window is first cut (at line ends) into fragments that fit one, and
//! each fragment becomes its own example: Bavarian et al.'s context-level FIM. Without this, a
//! file of a few thousand tokens trained in 256-token windows puts its prefix, suffix and middle in
//! different windows, and the model never sees the three together: it learns to ignore the prompt.

use crate::model::tokenizer::TokenizerError;
use crate::model::{FimOrder, Tokenizer};
use crate::rng::Rng;

/// The kinds of hole a FIM example can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    RandomChars,
    RestOfLine,
    InsideLine,
    Block,
}

/// A document split around its middle (byte offsets on character boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub start: usize,
    pub end: usize,
    pub kind: SpanKind,
}

fn below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

fn char_boundaries(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect()
}

/// Chooses a hole in `text` (in `language`, if known).
pub fn choose_split(text: &str, language: Option<&str>, rng: &mut Rng) -> Split {
    let kind = match below(rng, 4) {
        0 => SpanKind::RandomChars,
        1 => SpanKind::RestOfLine,
        2 => SpanKind::InsideLine,
        _ => SpanKind::Block,
    };
    let random = |rng: &mut Rng| {
        let b = char_boundaries(text);
        let (mut x, mut y) = (b[below(rng, b.len())], b[below(rng, b.len())]);
        if x > y {
            std::mem::swap(&mut x, &mut y);
        }
        Split {
            start: x,
            end: y,
            kind: SpanKind::RandomChars,
        }
    };
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .scan(0, |at, l| {
            let start = *at;
            *at += l.len();
            Some((start, l.strip_suffix('\n').unwrap_or(l)))
        })
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    match kind {
        // A line's hole is never empty (the lines kept have a character that is not a space).
        // An empty middle teaches the model that a hole often needs nothing. While line holes
        // could be empty (half of those inside a line were), one FIM example in eight was, and
        // the model trained on them ended its proposal at once at 4-7% of held-out eval tasks
        // (27 of 400, 20 of 500), mostly at the start of a line it should have written. The
        // editor's holes are rarely empty; a random-character hole still can be.
        SpanKind::RestOfLine | SpanKind::InsideLine if !lines.is_empty() => {
            let (at, line) = lines[below(rng, lines.len())];
            let b = char_boundaries(line);
            let (x, end) = if kind == SpanKind::RestOfLine {
                (b[below(rng, b.len() - 1)], line.len())
            } else {
                let (i, j) = (below(rng, b.len()), below(rng, b.len() - 1));
                // j skips i: two distinct boundaries, each pair equally likely.
                let j = if j >= i { j + 1 } else { j };
                (b[i.min(j)], b[i.max(j)])
            };
            Split {
                start: at + x,
                end: at + end,
                kind,
            }
        }
        SpanKind::Block => block_split(text, language, rng).unwrap_or_else(|| random(rng)),
        _ => random(rng),
    }
}

/// A random multi-line named node (a function body, a loop, a class) from the parse of `text`.
fn block_split(text: &str, language: Option<&str>, rng: &mut Rng) -> Option<Split> {
    let tree = crate::syntax::parse(text, language)?;
    let mut blocks = Vec::new();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        let lines = node.end_position().row - node.start_position().row;
        if node.is_named()
            && !node.is_error()
            && (1..=40).contains(&lines)
            && node.parent().is_some()
        {
            blocks.push((node.start_byte(), node.end_byte()));
        }
        let mut walk = node.walk();
        stack.extend(node.children(&mut walk));
    }
    if blocks.is_empty() {
        return None;
    }
    let (start, end) = blocks[below(rng, blocks.len())];
    Some(Split {
        start,
        end,
        kind: SpanKind::Block,
    })
}

/// How examples are made.
#[derive(Debug, Clone, Copy)]
pub struct FimSettings {
    pub fim_rate: f64,
    /// Share of FIM examples in SPM order.
    pub spm_rate: f64,
}

impl FimSettings {
    pub fn from_scratch() -> Self {
        Self {
            fim_rate: 0.5,
            spm_rate: 0.5,
        }
    }

    pub fn fine_tune() -> Self {
        Self {
            fim_rate: 0.9,
            spm_rate: 0.5,
        }
    }
}

/// The tokens of one training example for `text`, ending with end-of-text.
pub fn example(
    tokenizer: &Tokenizer,
    text: &str,
    language: Option<&str>,
    settings: FimSettings,
    rng: &mut Rng,
) -> Result<Vec<u32>, TokenizerError> {
    let eos = tokenizer.fim().eos;
    let mut out = if rng.next_f64() < settings.fim_rate {
        let split = choose_split(text, language, rng);
        let (p, rest) = text.split_at_checked(split.start).unwrap_or((text, ""));
        let (m, s) = rest
            .split_at_checked(split.end - split.start)
            .unwrap_or((rest, ""));
        let order = if rng.next_f64() < settings.spm_rate {
            FimOrder::Spm
        } else {
            FimOrder::Psm
        };
        // Suffix and middle continue other text: no SentencePiece leading space (as at inference).
        let (p, s) = (tokenizer.encode(p)?, tokenizer.encode_continuation(s)?);
        let mut ids = tokenizer.fim_prompt(&p, &s, order);
        ids.extend(tokenizer.encode_continuation(m)?);
        ids
    } else {
        let mut ids = tokenizer.fim().lead.clone();
        ids.extend(tokenizer.encode(text)?);
        ids
    };
    out.extend(eos);
    Ok(out)
}

/// Rebuilds the document from an example's tokens (the inverse of [`example`]; tests use it).
pub fn reassemble(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let text = reassemble_raw(tokenizer, ids);
    // The one leading space a SentencePiece tokenizer put before the first segment.
    match tokenizer.prepends_space() {
        true => text.strip_prefix(' ').map(str::to_string).unwrap_or(text),
        false => text,
    }
}

fn reassemble_raw(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let f = tokenizer.fim();
    let ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| Some(*id) != f.eos && !f.lead.contains(id))
        .collect();
    let pos = |t: u32| ids.iter().position(|&i| i == t);
    let (Some(pre), Some(suf), Some(mid)) = (pos(f.prefix), pos(f.suffix), pos(f.middle)) else {
        return tokenizer.decode(&ids);
    };
    let part = |a: usize, b: usize| tokenizer.decode(ids.get(a..b).unwrap_or_default());
    if suf == pre + 1 {
        // SPM: <pre><suf> S <mid> P M (P and M are adjacent: their text is prefix + middle).
        let s = part(suf + 1, mid);
        format!("{}{s}", part(mid + 1, ids.len()))
    } else {
        let (p, s, m) = (
            part(pre + 1, suf),
            part(suf + 1, mid),
            part(mid + 1, ids.len()),
        );
        format!("{p}{m}{s}")
    }
}

/// Documents to token stream: examples joined by the file separator, each document cut into
/// fragments of at most about `window` tokens first.
pub fn pack<'a>(
    tokenizer: &Tokenizer,
    docs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    settings: FimSettings,
    window: usize,
    rng: &mut Rng,
) -> Result<Vec<u32>, TokenizerError> {
    let sep = tokenizer.fim().file_sep;
    // Room for the FIM markers, end-of-text and the separator.
    let budget = window.saturating_sub(tokenizer.fim().lead.len() + 6).max(8);
    let mut stream = Vec::new();
    for (i, (text, language)) in docs.into_iter().enumerate() {
        if i > 0 {
            stream.extend(sep);
        }
        for (j, piece) in fragments(tokenizer, text, budget)?.into_iter().enumerate() {
            if j > 0 {
                stream.extend(sep);
            }
            stream.extend(example(tokenizer, piece, language, settings, rng)?);
        }
    }
    Ok(stream)
}

/// `text` cut into consecutive pieces of at most about `budget` tokens, at line ends where a line
/// end falls in the second half of a piece (else at a token boundary).
pub fn fragments<'t>(
    tokenizer: &Tokenizer,
    text: &'t str,
    budget: usize,
) -> Result<Vec<&'t str>, TokenizerError> {
    let (ids, offsets) = tokenizer.encode_with_offsets(text)?;
    if ids.len() <= budget {
        return Ok(vec![text]);
    }
    let mut pieces = Vec::new();
    let (mut start, mut first_token) = (0usize, 0usize);
    while first_token + budget < ids.len() {
        let limit = offsets
            .get(first_token + budget)
            .copied()
            .unwrap_or(text.len());
        let half = offsets
            .get(first_token + budget / 2)
            .copied()
            .unwrap_or(start);
        let window = text.get(start..limit).unwrap_or("");
        let cut = match window.rfind('\n') {
            Some(nl) if start + nl + 1 > half => start + nl + 1,
            _ => limit,
        };
        if cut <= start || !text.is_char_boundary(cut) {
            break;
        }
        pieces.extend(text.get(start..cut));
        start = cut;
        first_token = offsets.partition_point(|&o| o < cut);
    }
    pieces.extend(text.get(start..).filter(|rest| !rest.is_empty()));
    Ok(pieces)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// The qwen2 fixture's tokenizer (FIM tokens and a file separator); `export`'s tests use it too.
    pub(crate) fn tokenizer() -> Tokenizer {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen2");
        let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
        Tokenizer::from_bytes(&json, 1 << 20).unwrap()
    }

    #[test]
    fn long_documents_become_window_sized_fragments_that_cover_them_exactly() {
        let tok = tokenizer();
        let text: String = (0..200)
            .map(|i| format!("    let value_{i} = compute({i}, x);\n"))
            .collect();
        let budget = 64;
        let pieces = fragments(&tok, &text, budget).unwrap();
        assert!(pieces.len() > 5, "{}", pieces.len());
        assert_eq!(pieces.concat(), text);
        for p in &pieces {
            assert!(tok.encode(p).unwrap().len() <= budget + 2, "{p:?}");
            assert!(p.ends_with('\n'), "cut at line ends: {p:?}");
        }
        // One example per fragment, so every example fits a window with its FIM markers.
        let mut rng = Rng::new(1);
        let settings = FimSettings {
            fim_rate: 1.0,
            spm_rate: 0.5,
        };
        let stream = pack(
            &tok,
            [(text.as_str(), Some("rust"))],
            settings,
            80,
            &mut rng,
        )
        .unwrap();
        let eos = tok.fim().eos.unwrap();
        let examples = stream.split(|&t| t == eos).filter(|e| e.len() > 1).count();
        let in_pack = fragments(&tok, &text, 80 - tok.fim().lead.len() - 6).unwrap();
        assert_eq!(examples, in_pack.len());
        assert!(
            stream.split(|&t| t == eos).all(|e| e.len() <= 80),
            "an example longer than a window"
        );
    }

    #[test]
    fn splits_fall_on_character_boundaries_of_every_kind() {
        let text = "fn é() {\n    let x = \"€\";\n    x\n}\n";
        let mut rng = Rng::new(3);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..400 {
            let s = choose_split(text, Some("rust"), &mut rng);
            assert!(
                s.start <= s.end && text.is_char_boundary(s.start) && text.is_char_boundary(s.end)
            );
            kinds.insert(format!("{:?}", s.kind));
        }
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }

    #[test]
    fn line_holes_are_never_empty_and_reach_every_position() {
        let text = "fn f() {\n    let x = 1;\n\n    x\n}\n";
        let mut rng = Rng::new(11);
        let mut starts = std::collections::HashSet::new();
        let mut ends = std::collections::HashSet::new();
        for _ in 0..4000 {
            let s = choose_split(text, None, &mut rng);
            if matches!(s.kind, SpanKind::RestOfLine | SpanKind::InsideLine) {
                assert!(s.start < s.end, "an empty line hole: {s:?}");
                let bytes = text.as_bytes();
                let line_start = bytes[..s.start]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let line_end = line_start
                    + bytes[line_start..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .unwrap();
                assert!(s.end <= line_end, "a line hole crosses its line: {s:?}");
                if s.kind == SpanKind::RestOfLine {
                    assert_eq!(s.end, line_end, "{s:?}");
                }
                starts.insert(s.start);
                ends.insert(s.end);
            }
        }
        // Every character of the four non-blank lines starts some hole, and every place after
        // one ends some hole: 8 + 14 + 5 + 1 characters.
        assert_eq!(starts.len(), 28, "{starts:?}");
        assert_eq!(ends.len(), 28, "{ends:?}");
    }
}
