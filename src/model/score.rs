//! Scoring a text: the probability the model gives every token, from one forward per window.
//!
//! Files longer than the window are scored with a sliding window: each window after the first
//! scores only its second half, so every token sees at least half a window of left context
//! (`stride` = window / 2 by default). The byte ranges of the tokens cover the text exactly, once.
//! Only our own decoder exposes logits for every position, so scoring needs a qwen2/llama model.

pub mod chunked;

use candle_core::{D, Tensor};
use serde::Serialize;

use super::Model;
use super::generate::{Alternative, alternatives, rank_of};

/// GLTR's buckets of a token's rank among the model's predictions: 0 (top 10), 1 (top 100), 2
/// (top 1000), 3 (beyond).
pub fn gltr_bucket(rank: usize) -> usize {
    match rank {
        0..=10 => 0,
        11..=100 => 1,
        101..=1000 => 2,
        _ => 3,
    }
}

/// One scored token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenScore {
    /// Byte range in the text.
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub id: u32,
    /// Natural log of the token's probability given everything before it.
    pub logprob: f32,
    /// 1 for the model's most probable token.
    pub rank: usize,
    /// Entropy of the model's distribution at this position, in bits.
    pub entropy_bits: f32,
    pub top: Vec<Alternative>,
}

impl TokenScore {
    /// The score of token `id` spanning `range` of `text`, from the log-probabilities `row` the
    /// model gave at the position before it.
    pub(crate) fn from_row(
        tok: &crate::model::Tokenizer,
        row: &[f32],
        id: u32,
        text: &str,
        range: std::ops::Range<usize>,
        top_k: usize,
    ) -> Self {
        Self {
            text: text.get(range.clone()).unwrap_or_default().to_owned(),
            start: range.start,
            end: range.end,
            id,
            logprob: row.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY),
            rank: rank_of(row, id),
            entropy_bits: -row
                .iter()
                .map(|&v| if v.is_finite() { v.exp() * v } else { 0.0 })
                .sum::<f32>()
                / std::f32::consts::LN_2,
            top: alternatives(tok, row, top_k, |i| row[i].exp()),
        }
    }
}

/// The token a scored document follows, so its first token is scored too: the tokenizer's
/// beginning-of-text when its format has one; else the file separator, which precedes every
/// document in infill's training stream; else end-of-text.
pub fn document_start(tok: &crate::model::Tokenizer) -> u32 {
    let f = tok.fim();
    f.lead
        .first()
        .copied()
        .or(f.file_sep)
        .or(f.eos)
        .unwrap_or(0)
}

/// Scores every token of `text`; `window` tokens per forward (capped by the model's context).
pub fn score(
    model: &mut Model,
    text: &str,
    window: usize,
    stride: Option<usize>,
    top_k: usize,
) -> anyhow::Result<Vec<TokenScore>> {
    score_with_progress(model, text, window, stride, top_k, |_, _| {})
}

/// [`score`], calling `progress(scored, total)` with the tokens done after each window.
pub fn score_with_progress(
    model: &mut Model,
    text: &str,
    window: usize,
    stride: Option<usize>,
    top_k: usize,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<TokenScore>> {
    let Some(llama) = model.network.as_llama() else {
        anyhow::bail!(
            "{}: scoring needs logits for every position, which infill's own qwen2/llama decoder gives; \
             this is a {} model",
            model.name,
            model.config.family().model_type()
        );
    };
    let tok = &model.tokenizer;
    let (ids, starts) = tok.encode_with_offsets(text)?;
    let mut out = Vec::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(out);
    }
    let mut seq = vec![document_start(tok)];
    seq.extend_from_slice(&ids);
    let window = window.clamp(2, llama.config().max_position_embeddings);
    let stride = stride.unwrap_or(window / 2).clamp(1, window - 1);
    // Window k covers seq[k*stride ..][..window]; window 0 scores tokens [0, window-1), window
    // k >= 1 scores [(k-1)*stride + window-1, k*stride + window-1): every token exactly once.
    let mut begin = 0;
    loop {
        let end = (begin + window).min(seq.len());
        let chunk = seq.get(begin..end).unwrap_or_default();
        let input = Tensor::new(chunk, llama.device())?.unsqueeze(0)?;
        let logits = llama.forward_all(&input, 0, None)?.squeeze(0)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let rows: Vec<Vec<f32>> = logp.to_vec2()?;
        // Position p of the chunk predicts seq[begin + p + 1], i.e. ids[begin + p].
        for p in 0..chunk.len().saturating_sub(1) {
            let target = begin + p;
            if target < out.len() {
                continue;
            }
            let (Some(row), Some(&id)) = (rows.get(p), ids.get(target)) else {
                continue;
            };
            let range = token_range(&starts, target, text.len());
            out.push(TokenScore::from_row(tok, row, id, text, range, top_k));
        }
        progress(out.len(), ids.len());
        if end == seq.len() {
            return Ok(out);
        }
        begin += stride;
    }
}

/// The bytes of token `k` of a text of `len` bytes whose tokens start at `starts`. Offsets of a
/// byte-level tokenizer can start inside a character; the first token starts the text so the
/// ranges tile it.
pub(crate) fn token_range(starts: &[usize], k: usize, len: usize) -> std::ops::Range<usize> {
    let start = if k == 0 {
        0
    } else {
        starts.get(k).copied().unwrap_or(len)
    };
    start..starts.get(k + 1).copied().unwrap_or(len)
}

/// Totals over a scored text.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreSummary {
    pub tokens: usize,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
    pub perplexity: f64,
    /// (1-based line, mean bits per token) of the most surprising lines, most surprising first.
    pub surprising_lines: Vec<(usize, f64)>,
}

pub fn summarize(text: &str, scores: &[TokenScore], lines: usize) -> ScoreSummary {
    let nats: f64 = scores.iter().map(|s| -f64::from(s.logprob)).sum();
    let n = scores.len().max(1) as f64;
    let mut per_line: std::collections::BTreeMap<usize, (f64, usize)> =
        std::collections::BTreeMap::new();
    // Scores come in text order: count line breaks as we go.
    let (mut line, mut counted) = (1, 0);
    for s in scores {
        let upto = s.start.min(text.len());
        line += text
            .get(counted..upto)
            .map_or(0, |t| t.matches('\n').count());
        counted = counted.max(upto);
        let e = per_line.entry(line).or_default();
        e.0 += -f64::from(s.logprob) / std::f64::consts::LN_2;
        e.1 += 1;
    }
    let mut ranked: Vec<(usize, f64)> = per_line
        .into_iter()
        .map(|(l, (bits, k))| (l, bits / k as f64))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(lines);
    ScoreSummary {
        tokens: scores.len(),
        bits_per_token: nats / n / std::f64::consts::LN_2,
        bits_per_byte: nats / std::f64::consts::LN_2 / text.len().max(1) as f64,
        perplexity: (nats / n).exp(),
        surprising_lines: ranked,
    }
}
