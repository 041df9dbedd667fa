//! Token generation: sampling with an explicit seed, stop conditions, and a record of every token.
//!
//! Each generated token carries its exact bytes, its probability under the model (temperature 1, so
//! the figure means the same whatever the sampling settings), its rank among all tokens and the top-k
//! alternatives: the probability overlay and the evaluation read these. Streaming hands out text only
//! up to the last complete UTF-8 character, so a character split across tokens is never shown broken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use serde::Serialize;

use super::network::Network;
use super::tokenizer::Tokenizer;
use crate::rng::Rng;

/// How the next token is chosen. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// Keep only the `top_k` most probable tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// An alternative proposal: sampled (temperature 0.8, nucleus 0.95) with its own seed.
    pub fn alternative(seed: u64) -> Self {
        Self {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            seed,
        }
    }
}

/// When generation stops, besides the model's own end tokens.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_tokens: usize,
    pub time_budget: Option<Duration>,
    /// How many alternatives to record per token.
    pub top_alternatives: usize,
    /// The model's end tokens are passed over until the text holds a character other than
    /// whitespace: an empty proposal shows nothing, and a small model often ends at once where
    /// its next choice is right.
    pub text_before_end: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            time_budget: None,
            top_alternatives: 5,
            text_before_end: true,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model emitted an end-of-middle, end-of-text or file-separator token.
    EndToken,
    MaxTokens,
    TimeBudget,
    Cancelled,
    /// The caller's callback asked to stop.
    Caller,
    /// The trimmer saw the syntactic unit close: later tokens would be cut anyway.
    UnitClosed,
    /// The context window is full.
    Context,
}

/// One alternative the model considered at a position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alternative {
    pub text: String,
    pub id: u32,
    pub prob: f32,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedToken {
    /// The token's bytes as text (an incomplete character shows as U+FFFD here, never in the completion).
    pub text: String,
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub id: u32,
    /// Probability under the model at temperature 1.
    pub prob: f32,
    /// 1 for the most probable token.
    pub rank: usize,
    pub top: Vec<Alternative>,
    /// The share of its probability that came from a prior (repository memory): 0 without one.
    #[serde(skip_serializing_if = "is_zero")]
    pub from_prior: f32,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

impl GeneratedToken {
    /// A token with these bytes and probability, for tests of what consumes generations.
    #[cfg(test)]
    pub(crate) fn for_test(text: &str, prob: f32) -> Self {
        Self {
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            id: 0,
            prob,
            rank: 1,
            top: Vec::new(),
            from_prior: 0.0,
        }
    }
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    /// Prompt tokens served from the KV cache.
    pub reused_tokens: usize,
    /// Of those, the tokens reused out of place (keys rotated to new positions; approximate).
    pub shifted_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub tokens_per_s: f64,
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<GeneratedToken>,
    pub stop: StopReason,
    pub timings: Timings,
}

/// What a streaming callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Softmax of `logits` at temperature 1, computed in f64 for stable small probabilities.
pub fn probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Picks a token id from `logits` (one vocabulary row).
pub fn choose(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let scaled: Vec<f32> = logits.iter().map(|l| l / s.temperature).collect();
    let probs = probabilities(&scaled);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    if s.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = order
            .iter()
            .position(|&i| {
                mass += probs[i];
                mass >= f64::from(s.top_p)
            })
            .map_or(order.len(), |p| p + 1);
        order.truncate(keep.max(1));
    }
    let total: f64 = order.iter().map(|&i| probs[i]).sum();
    let mut target = rng.next_f64() * total;
    for &i in &order {
        target -= probs[i];
        if target <= 0.0 {
            return i as u32;
        }
    }
    order.first().map_or_else(argmax, |&i| i as u32)
}

/// Generates after `prompt` until a stop, calling `on_token` with each token and the completion text
/// so far (complete characters only).
pub fn generate(
    network: &mut Network,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    sampling: &Sampling,
    limits: &Limits,
    cancel: Option<&AtomicBool>,
    on_token: impl FnMut(&GeneratedToken, &str) -> Flow,
) -> candle_core::Result<Generation> {
    let request = Request {
        prompt,
        heal: &[],
        sampling,
        limits,
        prior: None,
    };
    generate_request(network, tokenizer, &request, cancel, on_token)
}

/// A next-token distribution from outside the model (the repository's own code), mixed into the
/// model's at every step. It sees the document's tokens before the next one, never the prompt's
/// markers or the text after the cursor.
pub trait Prior: Send + Sync + std::fmt::Debug {
    /// What may come next and how much to trust it, or `None` when it has nothing to say.
    fn next(&self, context: &[u32]) -> Option<PriorGuess>;

    /// Where the last `tail` tokens of `context` (a proposal, after the document before it) were
    /// found, if the prior can say.
    fn source(&self, _context: &[u32], _tail: usize) -> Option<PriorSource> {
        None
    }

    /// Code from other files worth showing the model before a document whose text so far is
    /// `context`: at most `budget` tokens in all, the most relevant first.
    fn snippets(&self, _context: &[u32], _budget: usize) -> Vec<PriorSnippet> {
        Vec::new()
    }
}

/// A run of another file's tokens, for a repository-level prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorSnippet {
    pub path: std::path::PathBuf,
    pub tokens: Vec<u32>,
}

/// A place a prior found a run of tokens: a file, and that file's tokens before the place (from
/// which its line follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorSource {
    pub path: std::path::PathBuf,
    pub before: Vec<u32>,
}

/// A prior's distribution over next tokens (sparse; the probabilities sum to 1) and its weight in
/// the mixture, in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct PriorGuess {
    pub weight: f32,
    pub probs: Vec<(u32, f32)>,
}

/// Turns `logits` into the log-probabilities of the mixture
/// `(1 - weight) * softmax(logits) + weight * guess` (tokens ruled out stay ruled out only where
/// the guess gives them nothing).
pub fn mix(logits: &mut [f32], guess: &PriorGuess) {
    let w = guess.weight.clamp(0.0, 1.0);
    if w == 0.0 || guess.probs.is_empty() {
        return;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    for p in &mut probs {
        *p = if total > 0.0 { *p / total } else { 0.0 } * f64::from(1.0 - w);
    }
    for &(id, q) in &guess.probs {
        if let Some(p) = probs.get_mut(id as usize) {
            *p += f64::from(w) * f64::from(q);
        }
    }
    for (l, p) in logits.iter_mut().zip(probs) {
        *l = if p > 0.0 {
            p.ln() as f32
        } else {
            f32::NEG_INFINITY
        };
    }
}

/// The share of token `id`'s probability in the mixed `log_probs` that the prior's guess gave.
fn prior_share(guess: &PriorGuess, log_probs: &[f32], id: u32) -> f32 {
    let q = guess
        .probs
        .iter()
        .find(|(t, _)| *t == id)
        .map_or(0.0, |(_, q)| *q);
    let mixed = log_probs.get(id as usize).map_or(0.0, |l| l.exp());
    if mixed > 0.0 {
        (guess.weight.clamp(0.0, 1.0) * q / mixed).min(1.0)
    } else {
        0.0
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub prompt: &'a [u32],
    /// Text the prompt left out at its end (token healing): generation must begin by producing
    /// these bytes, which are not part of the result. A prompt cut inside what is one token in
    /// training (eight spaces then `let`, seen as seven spaces and ` let`) otherwise ends on a
    /// boundary the model never saw, and it proposes what follows such a token, not the text.
    pub heal: &'a [u8],
    pub sampling: &'a Sampling,
    pub limits: &'a Limits,
    /// A prior mixed into every step, with the document's tokens before the cursor (the prompt's
    /// prefix part).
    pub prior: Option<(&'a dyn Prior, &'a [u32])>,
}

/// [`generate`] for a [`Request`].
pub fn generate_request(
    network: &mut Network,
    tokenizer: &Tokenizer,
    request: &Request,
    cancel: Option<&AtomicBool>,
    mut on_token: impl FnMut(&GeneratedToken, &str) -> Flow,
) -> candle_core::Result<Generation> {
    let Request {
        prompt,
        sampling,
        limits,
        ..
    } = *request;
    let started = Instant::now();
    let mut rng = Rng::new(sampling.seed);
    let mut context: Vec<u32> = prompt.to_vec();
    // The document before the next token, as the prior sees it.
    let mut document: Vec<u32> = request.prior.map(|(_, d)| d.to_vec()).unwrap_or_default();
    let (mut logits, prefill) = network.logits_after(&context)?;
    let prefill_ms = started.elapsed().as_secs_f64() * 1e3;
    let decode_start = Instant::now();
    let mut tokens = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut pending = request.heal;
    // Healed indentation is the person's: once it is written again, the proposal starts at the
    // cursor's column, not with more spaces (see `keep_healing`).
    let heal_ends_blank = matches!(request.heal.last(), Some(b' ' | b'\t'));
    let stop = loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            break StopReason::Cancelled;
        }
        if tokens.len() >= limits.max_tokens {
            break StopReason::MaxTokens;
        }
        if limits.time_budget.is_some_and(|b| started.elapsed() >= b) {
            break StopReason::TimeBudget;
        }
        let mut row: Vec<f32> = logits.to_vec1()?;
        let guess = request.prior.and_then(|(prior, _)| prior.next(&document));
        if let Some(g) = &guess {
            mix(&mut row, g);
        }
        // A small model sometimes puts its mass on a prompt marker (`<|fim_suffix|>` where a line
        // should end); no middle can hold one, so the choice is among the tokens that can be
        // text (docs/design.md has what each choice measured). The token's probability stays the
        // model's own.
        let mut textual = row.clone();
        rule_out(&mut textual, tokenizer.fim().markers());
        let healing = !pending.is_empty();
        if healing && !keep_healing(tokenizer, &mut textual, pending) {
            break StopReason::EndToken;
        }
        if heal_ends_blank && !healing && bytes.is_empty() {
            rule_out_blank_starts(tokenizer, &mut textual);
        }
        if limits.text_before_end && !healing && bytes.iter().all(u8::is_ascii_whitespace) {
            pass_over_ends(&tokenizer.fim().stops, &mut textual);
        }
        let id = choose(&textual, sampling, &mut rng);
        if tokenizer.fim().stops.contains(&id) {
            break StopReason::EndToken;
        }
        context.push(id);
        if request.prior.is_some() {
            document.push(id);
        }
        // While healing, a token is as probable as the model finds it among those that can write
        // the healed text (its plain probability would be tiny: the rest of the vocabulary is out).
        let scores = if healing { &textual } else { &row };
        let mut token = describe(tokenizer, scores, id, limits.top_alternatives);
        if let Some(g) = &guess {
            token.from_prior = prior_share(g, &row, id);
        }
        let healed = pending.len().min(token.bytes.len());
        pending = pending.get(healed..).unwrap_or_default();
        if healed == token.bytes.len() {
            // Entirely text the prompt already holds: nothing to show yet.
            if context.len() >= network.context_length() {
                break StopReason::Context;
            }
            logits = next_logits(network, &context)?;
            continue;
        }
        if healed > 0 {
            token.bytes.drain(..healed);
            token.text = String::from_utf8_lossy(&token.bytes).into_owned();
        }
        bytes.extend_from_slice(&token.bytes);
        let flow = on_token(&token, complete_prefix(&bytes));
        tokens.push(token);
        if flow == Flow::Stop {
            break StopReason::Caller;
        }
        if context.len() >= network.context_length() {
            break StopReason::Context;
        }
        logits = next_logits(network, &context)?;
    };
    let decode_ms = decode_start.elapsed().as_secs_f64() * 1e3;
    // Generation can stop inside a character (max tokens, the time budget, a cancel): the
    // proposal is the whole characters written, never a replacement character for the rest.
    let text = complete_prefix(&bytes).to_owned();
    let tokens_per_s = if decode_ms > 0.0 {
        tokens.len() as f64 / (decode_ms / 1e3)
    } else {
        0.0
    };
    let timings = Timings {
        prompt_tokens: prompt.len(),
        reused_tokens: prefill.reused,
        shifted_tokens: prefill.shifted,
        prefill_ms,
        decode_ms,
        tokens_per_s,
    };
    Ok(Generation {
        text,
        tokens,
        stop,
        timings,
    })
}

/// Leaves in `logits` only the tokens that go on producing `pending` (they start with it, or it
/// starts with them); false when there is none.
///
/// The healed text is the person's, not the model's: where it ends in spaces or tabs (the
/// indentation typed after Enter), a token may not carry on with more of them, or the proposal
/// would start by indenting the line again (`\n` then eight spaces where four were typed).
fn keep_healing(tokenizer: &Tokenizer, logits: &mut [f32], pending: &[u8]) -> bool {
    let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    let ends_blank = blank(pending.last());
    let mut any = false;
    for (id, logit) in logits.iter_mut().enumerate() {
        let id = id as u32;
        let b = tokenizer.token_bytes(id);
        let extends = b.starts_with(pending) && !(ends_blank && blank(b.get(pending.len())));
        let fits =
            !b.is_empty() && !tokenizer.is_special(id) && (extends || pending.starts_with(b));
        if fits {
            any |= logit.is_finite();
        } else {
            *logit = f32::NEG_INFINITY;
        }
    }
    any
}

/// Takes out of `logits` the tokens that start with a space or a tab, unless nothing else is
/// left to choose.
fn rule_out_blank_starts(tokenizer: &Tokenizer, logits: &mut [f32]) {
    rule_out_unless_alone(logits, |id| {
        matches!(tokenizer.token_bytes(id).first(), Some(b' ' | b'\t'))
    });
}

/// Takes the end tokens (`stops`) out of `logits` unless nothing else is left to choose.
fn pass_over_ends(stops: &[u32], logits: &mut [f32]) {
    rule_out_unless_alone(logits, |id| stops.contains(&id));
}

/// Makes the tokens for which `unwanted` holds impossible choices, unless no other token is
/// possible.
fn rule_out_unless_alone(logits: &mut [f32], unwanted: impl Fn(u32) -> bool) {
    let other = logits
        .iter()
        .enumerate()
        .any(|(id, l)| l.is_finite() && !unwanted(id as u32));
    if other {
        for (id, logit) in logits.iter_mut().enumerate() {
            if unwanted(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
}

/// Makes the tokens `ids` impossible choices.
fn rule_out(logits: &mut [f32], ids: impl IntoIterator<Item = u32>) {
    for id in ids {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit = f32::NEG_INFINITY;
        }
    }
}

fn next_logits(network: &mut Network, context: &[u32]) -> candle_core::Result<Tensor> {
    network.logits_after(context).map(|(logits, _)| logits)
}

/// The longest prefix of `bytes` that is whole UTF-8 characters: a trailing partial character is
/// held back, and text stops before bytes that can never be UTF-8 (a model can write any byte).
fn complete_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default())
            .unwrap_or_default(),
    }
}

/// Rank of `id` among `scores` (logits or log-probabilities: any score monotone in probability);
/// 1 for the highest.
pub(crate) fn rank_of(scores: &[f32], id: u32) -> usize {
    let chosen = scores
        .get(id as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    1 + scores.iter().filter(|&&v| v > chosen).count()
}

/// The `k` highest-scoring tokens, most probable first, with `prob(i)` as their probability.
pub(crate) fn alternatives(
    tokenizer: &Tokenizer,
    scores: &[f32],
    k: usize,
    prob: impl Fn(usize) -> f32,
) -> Vec<Alternative> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| scores[b].total_cmp(&scores[a]));
    }
    order.truncate(k);
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
        .into_iter()
        .map(|i| Alternative {
            text: tokenizer.token_text(i as u32),
            id: i as u32,
            prob: prob(i),
        })
        .collect()
}

fn describe(tokenizer: &Tokenizer, logits: &[f32], id: u32, top: usize) -> GeneratedToken {
    let probs = probabilities(logits);
    let rank = rank_of(logits, id);
    let top = alternatives(tokenizer, logits, top, |i| probs[i] as f32);
    GeneratedToken {
        text: tokenizer.token_text(id),
        bytes: tokenizer.token_bytes(id).to_vec(),
        id,
        prob: probs.get(id as usize).copied().unwrap_or(0.0) as f32,
        rank,
        top,
        from_prior: 0.0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn end_tokens_are_passed_over_unless_nothing_else_is_left() {
        let stops = [3, 4];
        let mut logits = [0.1, 2.0, -1.0, 5.0, 4.0];
        pass_over_ends(&stops, &mut logits);
        assert_eq!(choose(&logits, &Sampling::default(), &mut Rng::new(0)), 1);
        assert_eq!(
            logits[..3],
            [0.1, 2.0, -1.0],
            "the others keep their scores"
        );
        let mut only_ends = [
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            1.0,
            2.0,
        ];
        pass_over_ends(&stops, &mut only_ends);
        assert_eq!(
            choose(&only_ends, &Sampling::default(), &mut Rng::new(0)),
            4
        );
    }

    #[test]
    fn greedy_picks_the_argmax_and_sampling_is_seeded() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        let mut rng = Rng::new(1);
        assert_eq!(choose(&logits, &Sampling::default(), &mut rng), 1);
        let hot = Sampling {
            temperature: 1.0,
            seed: 7,
            ..Sampling::default()
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..32)
                .map(|_| choose(&logits, &hot, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(
            draw(7).contains(&2),
            "temperature 1 must sometimes pick the runner-up"
        );
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0, 4.0, 0.0, -1.0];
        let mut rng = Rng::new(3);
        let k1 = Sampling {
            temperature: 5.0,
            top_k: 1,
            ..Sampling::default()
        };
        assert!((0..50).all(|_| choose(&logits, &k1, &mut rng) == 0));
        let p = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            ..Sampling::default()
        };
        assert!((0..200).all(|_| choose(&logits, &p, &mut rng) < 2));
    }

    #[test]
    fn partial_characters_are_held_back_until_complete() {
        let euro = "€".as_bytes();
        assert_eq!(complete_prefix(&[b'a', euro[0], euro[1]]), "a");
        assert_eq!(complete_prefix(&[b'a', euro[0], euro[1], euro[2]]), "a€");
        // Bytes that are never UTF-8 end the text instead of blanking all of it.
        assert_eq!(complete_prefix(&[b'a', 0xFF, b'b']), "a");
    }
}
