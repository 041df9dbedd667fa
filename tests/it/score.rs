//! `infill score`: per-token probabilities, sliding windows, and the command's output.

use candle_core::D;
use infill::model::score;

use crate::{fixture, open};

const TEXT: &str = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n# café €\n";

/// Log-probabilities at every position of one plain forward over `seq`: the reference.
fn log_probs(model: &infill::model::Model, seq: &[u32]) -> Vec<Vec<f32>> {
    candle_nn::ops::log_softmax(&crate::logits_all(model, seq), D::Minus1)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// The per-token log-probabilities add up to the log-likelihood of the sequence computed
/// independently from one forward pass.
#[test]
fn token_logprobs_sum_to_the_sequence_log_likelihood() {
    let mut model = open(&fixture("qwen2"));
    let scores = score::score(&mut model, TEXT, 1024, None, 3).unwrap();
    let ids = model.tokenizer.encode(TEXT).unwrap();
    assert_eq!(scores.len(), ids.len());
    let mut seq = vec![score::document_start(&model.tokenizer)];
    seq.extend(&ids);
    let rows = log_probs(&model, &seq);
    let want: f32 = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| rows[p][id as usize])
        .sum();
    let got: f32 = scores.iter().map(|s| s.logprob).sum();
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    for s in &scores {
        assert!(s.rank >= 1 && s.logprob <= 0.0 && s.entropy_bits >= 0.0);
        assert_eq!(s.top.len(), 3);
        assert_eq!(s.rank == 1, s.top[0].id == s.id);
    }
}

/// With a window shorter than the text, every token is scored once and the byte ranges tile the
/// text exactly; the first window's tokens score as in a single pass.
#[test]
fn sliding_windows_cover_the_text_once() {
    let mut model = open(&fixture("qwen2"));
    let long = TEXT.repeat(4);
    let full = score::score(&mut model, &long, 1024, None, 1).unwrap();
    let slid = score::score(&mut model, &long, 16, Some(8), 1).unwrap();
    assert_eq!(slid.len(), full.len());
    let mut at = 0;
    for s in &slid {
        assert_eq!(s.start, at, "ranges are contiguous");
        at = s.end;
    }
    assert_eq!(at, long.len());
    let joined: String = slid.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(joined, long);
    for (a, b) in full.iter().zip(&slid).take(15) {
        assert!(
            (a.logprob - b.logprob).abs() < 1e-4,
            "the first window has all the context there is"
        );
    }
}

#[test]
fn score_command_prints_the_text_and_summary_or_json() {
    let file = tempfile::Builder::new().suffix(".py").tempfile().unwrap();
    std::fs::write(file.path(), TEXT).unwrap();
    let model = fixture("qwen2");
    let run = |extra: &[&str]| {
        crate::infill_cmd()
            .args([
                "score",
                file.path().to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let plain = run(&[]);
    let stdout = String::from_utf8(plain.stdout).unwrap();
    assert!(
        stdout.starts_with(TEXT),
        "the text itself, uncoloured with NO_COLOR"
    );
    assert!(
        stdout.contains("bits/byte") && stdout.contains("most surprising lines: "),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_slice(&run(&["--json"]).stdout).unwrap();
    let tokens = json["tokens"].as_array().unwrap();
    assert!(tokens.len() > 10);
    assert!(json["summary"]["bits_per_byte"].as_f64().unwrap() > 0.0);
    // The page: one coloured span per token (those that are not just line breaks), one row per
    // line, one margin bar per line scored between the code around it.
    let page = tempfile::Builder::new().suffix(".html").tempfile().unwrap();
    let out = run(&["--html", page.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(page.path()).unwrap();
    let visible = tokens
        .iter()
        .filter(|t| {
            t["text"]
                .as_str()
                .unwrap()
                .split('\n')
                .any(|p| !p.is_empty())
        })
        .count();
    let spans = html.matches("<span class=\"t").count();
    assert!(spans >= visible, "{spans} spans for {visible} tokens");
    assert_eq!(html.matches("<tr id=\"L").count(), TEXT.lines().count() + 1);
    let scored = TEXT.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(html.matches("<rect").count(), scored, "{html}");
    let other = crate::infill_cmd()
        .args([
            "score",
            file.path().to_str().unwrap(),
            "--model",
            fixture("gpt_bigcode").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("scoring needs"));
}

/// The overlay's chunked scoring: after an edit only the chunks it touched are computed again, and
/// the result is exactly what scoring the new text with an empty cache gives.
#[test]
fn chunked_rescoring_after_an_edit_computes_little_and_equals_a_fresh_scoring() {
    use infill::model::score::chunked::ChunkScorer;
    let model = open(&fixture("tiny-python"));
    let old: String = (0..400)
        .map(|i| format!("def f{i}(a, b):\n    return a + b * {i}\n\n"))
        .collect();
    let new = old.replacen("return a + b * 200\n", "return a - b * 200\n", 1);
    assert_ne!(new, old);
    let collect = |scorer: &mut ChunkScorer, text: &str| {
        let mut all = Vec::new();
        let computed = scorer
            .score(&model, text, 2, None, |from, tokens| {
                assert_eq!(from, all.len(), "chunks arrive in order");
                all.extend_from_slice(tokens);
            })
            .unwrap()
            .unwrap();
        (all, computed)
    };
    let mut warm = ChunkScorer::default();
    let (first, computed_first) = collect(&mut warm, &old);
    assert_eq!(
        computed_first,
        first.len(),
        "a cold cache scores everything"
    );
    assert_eq!(first.first().unwrap().start, 0);
    assert_eq!(first.last().unwrap().end, old.len());
    assert!(
        first.windows(2).all(|w| w[0].end == w[1].start),
        "token ranges tile the text"
    );
    let (again, computed) = collect(&mut warm, &new);
    assert!(
        computed * 8 < again.len() && computed > 0,
        "{computed} of {} tokens computed again",
        again.len()
    );
    let (fresh, _) = collect(&mut ChunkScorer::default(), &new);
    assert_eq!(again.len(), fresh.len());
    for (a, f) in again.iter().zip(&fresh) {
        assert_eq!(
            (a.start, a.end, a.id, a.rank),
            (f.start, f.end, f.id, f.rank)
        );
        assert!((a.logprob - f.logprob).abs() < 1e-5);
    }
    // Independently: a chunk's scores are one forward over the last tokens of the previous chunk
    // and itself.
    use infill::model::score::chunked::{ChunkSizes, chunk_bounds};
    let context = model
        .network
        .as_llama()
        .unwrap()
        .config()
        .max_position_embeddings;
    let sizes = ChunkSizes::for_context(context);
    let bounds = chunk_bounds(&new, sizes);
    let (a, b) = bounds[1];
    let prev = model
        .tokenizer
        .encode(&new[bounds[0].0..bounds[0].1])
        .unwrap();
    let ids = model.tokenizer.encode(&new[a..b]).unwrap();
    let tail = &prev[prev.len() - sizes.context_tokens..];
    let mut seq = tail.to_vec();
    seq.extend(&ids);
    let rows = log_probs(&model, &seq);
    let first = fresh.iter().position(|t| t.start == a).unwrap();
    for (k, &id) in ids.iter().enumerate() {
        let want = rows[tail.len() + k - 1][id as usize];
        let got = fresh[first + k].logprob;
        assert!((want - got).abs() < 1e-4, "token {k}: {got} vs {want}");
    }

    // An edit away from a chunk's last tokens leaves the next chunk's context as it was: only the
    // edited chunk is computed again.
    let old_bounds = chunk_bounds(&old, sizes);
    let (c0, c1) = old_bounds[old_bounds.len() / 2];
    let second_line = c0 + old[c0..].find('\n').unwrap() + 1;
    let digit = second_line
        + old[second_line..c1]
            .find(|c: char| c.is_ascii_digit())
            .unwrap();
    let mut edited = old.clone();
    edited.replace_range(digit..digit + 1, "7");
    assert_eq!(
        chunk_bounds(&edited, sizes),
        old_bounds,
        "no boundary moved"
    );
    let mut scorer = ChunkScorer::default();
    collect(&mut scorer, &old);
    let (_, computed) = collect(&mut scorer, &edited);
    let chunk_tokens = model.tokenizer.encode(&edited[c0..c1]).unwrap().len();
    assert_eq!(computed, chunk_tokens);

    // A chunk longer than the model's window (512 tokens here: one 3,000-character line) is scored
    // in windows, and the tokens still tile the text.
    let long = format!(
        "x = [{}]\n",
        (0..600)
            .map(|i| (i % 10).to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let (tiles, _) = collect(&mut ChunkScorer::default(), &long);
    assert!(tiles.len() > 512, "{} tokens", tiles.len());
    assert_eq!((tiles[0].start, tiles.last().unwrap().end), (0, long.len()));
    assert!(tiles.windows(2).all(|w| w[0].end == w[1].start));
    assert!(tiles.iter().all(|t| t.logprob.is_finite()));
    // A set cancel flag stops before the first chunk.
    let cancel = std::sync::atomic::AtomicBool::new(true);
    assert!(
        warm.score(&model, &new, 2, Some(&cancel), |_, _| {})
            .unwrap()
            .is_none()
    );
}

const CLEAN: &str = "def add(left, right):\n    return left + right\n\n\nclass Point:\n    def __init__(self, x, y, width):\n        self.x = x\n        self.y = y\n        self.width = width\n\n    def get_x(self):\n        return self.x\n\n\ndef total(values):\n    result = 0\n    for value in values:\n        result += value\n    return result\n";

/// `--fim` scores each line between its prefix and suffix: a line corrupted on purpose ranks first,
/// with the `tiny-python` model trained on code of this shape (the file itself is not in its
/// training corpus).
#[test]
fn fim_line_scores_put_a_corrupted_line_on_top() {
    let mut model = open(&fixture("tiny-python"));
    let corrupted = CLEAN.replace("        result += value\n", "        result -= values\n");
    let score = |model: &mut infill::model::Model, text: &str| {
        infill::complete::score_lines_fim(model, text, 256, None, |_, _| {}).unwrap()
    };
    let clean = score(&mut model, CLEAN);
    let bad = score(&mut model, &corrupted);
    assert_eq!(bad.len(), 14, "blank lines are skipped");
    let top = bad
        .iter()
        .max_by(|a, b| a.bits_per_token.total_cmp(&b.bits_per_token))
        .unwrap();
    assert_eq!(
        (top.line, top.text.as_str()),
        (18, "        result -= values")
    );
    let before = clean.iter().find(|l| l.line == 18).unwrap();
    assert!(
        top.bits > 2.0 * before.bits,
        "{} bits vs {} clean",
        top.bits,
        before.bits
    );
    // Lines far from the change score as before (their context barely changed).
    let first = |v: &[infill::complete::LineScore]| v.iter().find(|l| l.line == 1).unwrap().bits;
    assert!((first(&bad) - first(&clean)).abs() < 1.0);
}

#[test]
fn score_fim_command_lists_the_most_surprising_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.py");
    std::fs::write(
        &file,
        CLEAN.replace("        result += value\n", "        result -= values\n"),
    )
    .unwrap();
    let out = crate::succeeded(
        crate::infill_cmd()
            .args(["score", "--fim", "--model"])
            .arg(fixture("tiny-python"))
            .arg(&file),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first = stdout.lines().nth(2).unwrap();
    assert!(
        first.trim_start().starts_with("18 ") && first.ends_with("result -= values"),
        "{stdout}"
    );
    let json = crate::infill_cmd()
        .args(["score", "--fim", "--json", "--model"])
        .arg(fixture("tiny-python"))
        .arg(&file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["lines"].as_array().unwrap().len(), 14);
}

/// The `tiny-python` fixture declaring a shorter context (rotary positions: the weights fit any).
fn tiny_python_with_context(tokens: usize) -> (tempfile::TempDir, infill::model::Model) {
    let dir = crate::scratch_copy("tiny-python");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "\"max_position_embeddings\": 512",
            &format!("\"max_position_embeddings\": {tokens}"),
        ),
    )
    .unwrap();
    let model = open(dir.path());
    (dir, model)
}

/// With a short context, chunks and their context shrink with it: a chunk is scored after the last
/// quarter-window of tokens of the chunk before it (their keys and values then cached).
#[test]
fn with_a_short_context_a_chunk_is_scored_after_the_end_of_the_one_before() {
    use infill::model::score::chunked::{ChunkScorer, ChunkSizes, chunk_bounds};
    let (_dir, model) = tiny_python_with_context(64);
    let source: String = (0..60)
        .map(|i| format!("def f{i}(a, b):\n    return a + b * {i}\n\n"))
        .collect();
    let mut all = Vec::new();
    ChunkScorer::default()
        .score(&model, &source, 0, None, |_, t| all.extend_from_slice(t))
        .unwrap()
        .unwrap();
    let sizes = ChunkSizes::for_context(64);
    assert_eq!(sizes.context_tokens, 16);
    let bounds = chunk_bounds(&source, sizes);
    let mut cut = 0;
    for pair in bounds.windows(2) {
        let [(p0, p1), (a, b)] = [pair[0], pair[1]];
        let prev = model.tokenizer.encode(&source[p0..p1]).unwrap();
        let ids = model.tokenizer.encode(&source[a..b]).unwrap();
        if ids.len() > 64 - 16 {
            continue;
        }
        let tail = &prev[prev.len().saturating_sub(16)..];
        cut += usize::from(tail.len() < prev.len());
        let mut seq = tail.to_vec();
        seq.extend(&ids);
        let rows = log_probs(&model, &seq);
        let first = all.iter().position(|t| t.start == a).unwrap();
        for (k, &id) in ids.iter().enumerate() {
            let want = rows[tail.len() + k - 1][id as usize];
            assert!(
                (want - all[first + k].logprob).abs() < 1e-4,
                "chunk at {a}, token {k}"
            );
        }
    }
    assert!(cut > 0, "no chunk needed the end of its context only");
}

/// With a model whose context is shorter than the requested FIM prompt, each line's prompt gets
/// what the context leaves beside it; a line longer than the whole context is skipped.
#[test]
fn fim_line_scores_fit_a_short_context() {
    let (_dir, mut model) = tiny_python_with_context(64);
    let long_line = format!("x = [{}]\n", "1, ".repeat(80));
    let source = format!("{}{long_line}{}", CLEAN.repeat(3), CLEAN);
    let lines =
        infill::complete::score_lines_fim(&mut model, &source, 256, None, |_, _| {}).unwrap();
    assert_eq!(
        lines.len(),
        4 * 14,
        "every line but the blank ones and the long one"
    );
    assert!(lines.iter().all(|l| l.text != long_line.trim_end()));
    assert!(lines.iter().all(|l| l.bits.is_finite() && l.bits > 0.0));
}
