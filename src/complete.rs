//! The completion pipeline: (document, cursor) -> FIM prompt -> generation -> completion.
//!
//! Every caller (the `complete` command, the editor's worker, the evaluation) goes through
//! [`complete`], so what `infill eval` measures is what a person sees. The prompt keeps the text
//! nearest the cursor: about three quarters of the window for the prefix and one quarter for the
//! suffix, a side that needs less lends the rest to the other, and cuts fall on line boundaries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::model::generate::StopReason;
use crate::model::generate::{self, Flow, GeneratedToken, Generation, Limits, Prior, Sampling};
use crate::model::tokenizer::{FimOrder, TokenizerError};
use crate::model::{Model, Tokenizer};
use crate::syntax::{Language, Reason, Trimmer};
use crate::text::Cursor;

/// How a completion is asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sampling: Sampling,
    pub limits: Limits,
    /// Order of prefix and suffix in the prompt; `None`: the model's own ([`ModelConfig::fim_order`]).
    ///
    /// [`ModelConfig::fim_order`]: crate::model::ModelConfig::fim_order
    pub order: Option<FimOrder>,
    /// Prompt plus generation never exceeds this many tokens (capped by the model's context).
    pub context_tokens: Option<usize>,
    /// Trim the proposal to a syntactic boundary (and stop generating once it is closed).
    pub trim: bool,
    /// Cut the proposal before its first token less probable than this (0: never).
    pub min_confidence: f32,
    /// Token healing: the prefix's last token leaves the prompt and generation starts by
    /// producing it again, so the cursor need not fall on a token boundary the model knows.
    pub heal: bool,
    /// A next-token prior mixed into the model's distribution (the repository's memory).
    pub prior: Option<Arc<dyn Prior>>,
    /// Other files' code before the prompt, for models trained with repository-level prompts.
    pub repository: Option<RepositoryPrompt>,
}

/// Where a repository-level prompt's code comes from, and the names it shows.
#[derive(Debug, Clone)]
pub struct RepositoryPrompt {
    /// The repository's code (its memory), asked for snippets relevant to the text so far.
    pub source: Arc<dyn Prior>,
    /// The repository's name, and the completed file's path in it.
    pub name: String,
    pub path: String,
    /// The folder the snippets' paths are shown relative to.
    pub root: PathBuf,
}

impl RepositoryPrompt {
    /// The prompt for the file at `path` in the repository at `root` (named by its folder);
    /// `None` when the file is not inside it.
    pub fn for_file(source: Arc<dyn Prior>, root: PathBuf, path: &Path) -> Option<Self> {
        Some(Self {
            source,
            name: root.file_name()?.to_string_lossy().into_owned(),
            path: path
                .strip_prefix(&root)
                .ok()?
                .to_string_lossy()
                .into_owned(),
            root,
        })
    }
}

/// Tokens of other files' code a repository-level prompt holds at most: enough for a few
/// snippets, few enough that the prompt stays quick to compute.
pub const REPOSITORY_TOKENS: usize = 1024;

impl Default for Settings {
    fn default() -> Self {
        Self {
            sampling: Sampling::default(),
            limits: Limits::default(),
            order: None,
            context_tokens: None,
            trim: true,
            min_confidence: 0.0,
            heal: true,
            prior: None,
            repository: None,
        }
    }
}

/// Bytes of text before and after the cursor an interactive front end (the editor, the language
/// server) sends with a request; the prompt builder cuts them to tokens.
pub const PREFIX_BYTES: usize = 24 * 1024;
pub const SUFFIX_BYTES: usize = 8 * 1024;

impl Settings {
    /// What a person waiting at the cursor gets: the editor's and the language server's requests.
    /// `sampling` is greedy for the first proposal, sampled for alternatives.
    pub fn interactive(sampling: Sampling, max_tokens: usize, min_confidence: f32) -> Self {
        Self {
            sampling,
            limits: Limits {
                max_tokens,
                time_budget: Some(std::time::Duration::from_secs(10)),
                top_alternatives: 0,
                ..Limits::default()
            },
            context_tokens: Some(1024),
            min_confidence,
            ..Self::default()
        }
    }
}

/// The prompt sent to the model and how much of the document it kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prompt {
    #[serde(skip)]
    pub ids: Vec<u32>,
    pub order: FimOrder,
    pub prefix_tokens: usize,
    pub suffix_tokens: usize,
    /// Tokens of other files' code put before the FIM prompt (repository-level prompts).
    pub repository_tokens: usize,
    /// Bytes of the document before the cursor left out of the prompt (whole lines from the top).
    pub prefix_dropped_bytes: usize,
    /// Bytes after the cursor left out (whole lines from the bottom).
    pub suffix_dropped_bytes: usize,
    /// The prefix's last token, left out for generation to produce again (token healing).
    pub healed: String,
}

impl Prompt {
    /// The prompt's tokens of the text before the cursor (after healing, without the healed
    /// token).
    pub fn prefix_ids(&self, tokenizer: &Tokenizer) -> &[u32] {
        let range = match self.order {
            FimOrder::Psm => {
                // After the lead, the repository's code and the prefix marker.
                let start = tokenizer.fim().lead.len() + self.repository_tokens + 1;
                start..start + self.prefix_tokens
            }
            FimOrder::Spm => self.ids.len() - self.prefix_tokens..self.ids.len(),
        };
        self.ids.get(range).unwrap_or_default()
    }

    /// Takes the prefix's last token out of the prompt for token healing; returns its bytes.
    pub fn heal(&mut self, tokenizer: &Tokenizer) -> Vec<u8> {
        if self.prefix_tokens == 0 || !self.healed.is_empty() {
            return Vec::new();
        }
        let at = match self.order {
            FimOrder::Psm => {
                tokenizer.fim().lead.len() + self.repository_tokens + self.prefix_tokens
            }
            FimOrder::Spm => self.ids.len() - 1,
        };
        let id = self.ids.remove(at);
        self.prefix_tokens -= 1;
        let bytes = tokenizer.token_bytes(id).to_vec();
        self.healed = String::from_utf8_lossy(&bytes).into_owned();
        bytes
    }
}

/// A finished completion.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// What to show: the trimmed proposal (or the raw one without trimming).
    pub text: String,
    /// Why trimming cut where it did; `None` when trimming was off.
    pub trim_reason: Option<Reason>,
    pub generation: Generation,
    pub prompt: Prompt,
}

#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error(
        "the context window of {window} tokens leaves no room for a prompt after {max_tokens} new tokens; lower --max-tokens"
    )]
    NoRoom { window: usize, max_tokens: usize },
    #[error("tokenizing the document failed: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("the model failed: {0}")]
    Model(#[from] candle_core::Error),
}

/// Generous bound on bytes per token, for cutting text before tokenizing it.
const BYTES_PER_TOKEN_BOUND: usize = 32;

/// Builds the FIM prompt for `prefix` and `suffix` within `budget` content tokens.
pub fn build_prompt(
    tokenizer: &Tokenizer,
    prefix: &str,
    suffix: &str,
    budget: usize,
    order: FimOrder,
) -> Result<Prompt, TokenizerError> {
    // Tokenize only what can matter: a token covers at most a few dozen bytes in practice, so a big
    // file is cut by bytes first (at line boundaries) and never tokenized whole.
    let (full_prefix, full_suffix) = (prefix, suffix);
    let prefix = crate::text::tail_lines(prefix, budget.saturating_mul(BYTES_PER_TOKEN_BOUND));
    let suffix = crate::text::head_lines(suffix, budget.saturating_mul(BYTES_PER_TOKEN_BOUND));
    let (p_ids, p_offsets) = tokenizer.encode_with_offsets(prefix)?;
    // The suffix continues the text (no SentencePiece leading space), as CodeLlama's format wants.
    let (s_ids, s_offsets) = tokenizer.encode_continuation_with_offsets(suffix)?;
    let suffix_share = budget / 4;
    let prefix_budget = (budget - suffix_share.min(s_ids.len())).min(budget);
    let (p_ids, p_start) = keep_tail(tokenizer, prefix, p_ids, &p_offsets, prefix_budget)?;
    let suffix_budget = budget - p_ids.len();
    let (s_ids, s_end) = keep_head(tokenizer, suffix, s_ids, &s_offsets, suffix_budget)?;
    Ok(Prompt {
        ids: tokenizer.fim_prompt(&p_ids, &s_ids, order),
        order,
        prefix_tokens: p_ids.len(),
        suffix_tokens: s_ids.len(),
        repository_tokens: 0,
        prefix_dropped_bytes: full_prefix.len() - prefix.len() + p_start,
        suffix_dropped_bytes: full_suffix.len() - s_end,
        healed: String::new(),
    })
}

/// The repository-level prompt's opening, in the format Qwen2.5-Coder and StarCoder2 were trained
/// with: the repository's name, then each snippet as a file (its path on the first line), then
/// the completed file's path, all within `room` tokens. Snippets are asked for with the document's
/// tokens up to its last line break, so they stay the same while a line is typed and the cache
/// keeps serving the prompt's start; each is cut to whole lines.
fn repository_preamble(
    tokenizer: &Tokenizer,
    repository: &RepositoryPrompt,
    prefix_ids: &[u32],
    room: usize,
) -> Result<Vec<u32>, TokenizerError> {
    let fim = tokenizer.fim();
    let (Some(repo_name), Some(file_sep)) = (fim.repo_name, fim.file_sep) else {
        return Ok(Vec::new());
    };
    let mut out = vec![repo_name];
    out.extend(tokenizer.encode_continuation(&format!("{}\n", repository.name))?);
    let mut closing = vec![file_sep];
    closing.extend(tokenizer.encode_continuation(&format!("{}\n", repository.path))?);
    if out.len() + closing.len() > room {
        return Ok(Vec::new());
    }
    let line_end = prefix_ids
        .iter()
        .rposition(|&id| tokenizer.token_bytes(id).contains(&b'\n'))
        .map_or(0, |i| i + 1);
    let budget = room - out.len() - closing.len();
    for snippet in repository.source.snippets(&prefix_ids[..line_end], budget) {
        let text = tokenizer.decode(&snippet.tokens);
        // Whole lines: from after the first break to the last one.
        let (Some(first), Some(last)) = (text.find('\n'), text.rfind('\n')) else {
            continue;
        };
        if first >= last {
            continue;
        }
        let path = snippet
            .path
            .strip_prefix(&repository.root)
            .unwrap_or(&snippet.path);
        let path = path.to_string_lossy();
        let mut ids = vec![file_sep];
        let lines = text.get(first + 1..=last).unwrap_or_default();
        ids.extend(tokenizer.encode_continuation(&format!("{path}\n{lines}"))?);
        if out.len() + ids.len() + closing.len() > room {
            break;
        }
        out.extend(ids);
    }
    out.extend(closing);
    Ok(out)
}

/// Keeps at most `budget` tokens from the end of `text`, starting at a line start when there is one.
/// Returns the tokens and the byte where the kept text starts.
fn keep_tail(
    tokenizer: &Tokenizer,
    text: &str,
    mut ids: Vec<u32>,
    offsets: &[usize],
    budget: usize,
) -> Result<(Vec<u32>, usize), TokenizerError> {
    let mut start = 0;
    let mut first_token = ids.len().saturating_sub(budget);
    while ids.len() > budget {
        let cut = offsets
            .get(first_token)
            .copied()
            .unwrap_or(text.len())
            .max(start);
        // The next line start at or after the token cut; inside one giant line, the token cut itself.
        let line_start = text
            .get(cut..)
            .and_then(|rest| rest.find('\n'))
            .map(|i| cut + i + 1);
        start = match line_start {
            Some(s) if s < text.len() => s,
            _ => ceil_char_boundary(text, cut),
        };
        ids = tokenizer.encode(crate::text::from(text, start))?;
        first_token += 1;
        if ids.len() > budget && line_start.is_none() {
            // Re-encoding a mid-line cut can still be long by a token or two: cut by tokens.
            ids.drain(..ids.len() - budget);
        }
    }
    Ok((ids, start))
}

/// Keeps at most `budget` tokens from the start of `text`, ending at a line end when there is one.
/// Returns the tokens and the byte where the kept text ends.
fn keep_head(
    tokenizer: &Tokenizer,
    text: &str,
    mut ids: Vec<u32>,
    offsets: &[usize],
    budget: usize,
) -> Result<(Vec<u32>, usize), TokenizerError> {
    let mut end = text.len();
    let mut limit = budget;
    while ids.len() > budget {
        let cut = offsets.get(limit).copied().unwrap_or(text.len()).min(end);
        let line_end = text
            .get(..cut)
            .and_then(|head| head.rfind('\n'))
            .map(|i| i + 1);
        end = match line_end {
            Some(e) if e > 0 => e,
            _ => floor_char_boundary(text, cut),
        };
        ids = tokenizer.encode_continuation(crate::text::before(text, end))?;
        limit = limit.saturating_sub(1);
        if ids.len() > budget && line_end.is_none() {
            ids.truncate(budget);
        }
    }
    Ok((ids, end))
}

/// `text` (a prefix of the generated text) cut before the first token less probable than `min`
/// (0 keeps everything).
pub fn cut_below(mut text: String, tokens: &[GeneratedToken], min: f32) -> String {
    let mut start = 0;
    for t in tokens {
        if start >= text.len() {
            break;
        }
        if t.prob < min {
            text.truncate(floor_char_boundary(&text, start));
            break;
        }
        start += t.bytes.len();
    }
    text
}

fn ceil_char_boundary(text: &str, mut i: usize) -> usize {
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i.min(text.len())
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Completes `text` at `cursor` in `language` (`None`: unknown, trimmed by the fallback rules).
/// `on_token` sees each token and the raw text so far; returning [`Flow::Stop`] ends generation.
pub fn complete(
    model: &mut Model,
    text: &str,
    cursor: Cursor,
    language: Option<&Language>,
    settings: &Settings,
    cancel: Option<&AtomicBool>,
    mut on_token: impl FnMut(&GeneratedToken, &str) -> Flow,
) -> Result<Completion, CompleteError> {
    let (prefix, suffix) = cursor.split(text);
    let window = settings
        .context_tokens
        .unwrap_or(usize::MAX)
        .min(model.network.context_length());
    let overhead = model.tokenizer.fim().lead.len() + 3;
    let max_tokens = settings.limits.max_tokens;
    let budget = window
        .checked_sub(max_tokens.saturating_add(overhead))
        .filter(|&b| b > 0)
        .ok_or(CompleteError::NoRoom { window, max_tokens })?;
    let order = settings.order.unwrap_or_else(|| model.config.fim_order());
    let repository = settings.repository.as_ref().filter(|_| {
        let fim = model.tokenizer.fim();
        fim.repo_name.is_some() && fim.file_sep.is_some()
    });
    // Other files' code gets what the document leaves, and at least a third of the window.
    let fim_budget = match repository {
        Some(_) => budget - budget / 3,
        None => budget,
    };
    let mut prompt = build_prompt(&model.tokenizer, prefix, suffix, fim_budget, order)?;
    if let Some(repository) = repository {
        let room = (budget - prompt.prefix_tokens - prompt.suffix_tokens).min(REPOSITORY_TOKENS);
        let preamble = repository_preamble(
            &model.tokenizer,
            repository,
            prompt.prefix_ids(&model.tokenizer),
            room,
        )?;
        let lead = model.tokenizer.fim().lead.len();
        prompt.repository_tokens = preamble.len();
        prompt.ids.splice(lead..lead, preamble);
    }
    let heal = match settings.heal {
        true => prompt.heal(&model.tokenizer),
        false => Vec::new(),
    };
    let mut trimmer = settings
        .trim
        .then(|| Trimmer::new(prefix, suffix, language));
    let mut closed = false;
    let request = generate::Request {
        prompt: &prompt.ids,
        heal: &heal,
        sampling: &settings.sampling,
        limits: &settings.limits,
        prior: settings
            .prior
            .as_deref()
            .map(|p| (p, prompt.prefix_ids(&model.tokenizer))),
    };
    let mut generation = generate::generate_request(
        &mut model.network,
        &model.tokenizer,
        &request,
        cancel,
        |token, so_far| {
            if on_token(token, so_far) == Flow::Stop {
                return Flow::Stop;
            }
            // Stop paying for tokens the trimmer will cut anyway.
            closed = trimmer.as_mut().is_some_and(|t| t.is_closed(so_far));
            if closed { Flow::Stop } else { Flow::Continue }
        },
    )?;
    if closed && generation.stop == StopReason::Caller {
        generation.stop = StopReason::UnitClosed;
    }
    let (shown, trim_reason) = match trimmer.as_mut() {
        Some(t) => {
            let trimmed = t.trim(&generation.text);
            (trimmed.text, Some(trimmed.reason))
        }
        None => (generation.text.clone(), None),
    };
    let shown = cut_below(shown, &generation.tokens, settings.min_confidence);
    Ok(Completion {
        text: shown,
        trim_reason,
        generation,
        prompt,
    })
}

/// One line scored as the middle between the text before and after it.
#[derive(Debug, Clone, Serialize)]
pub struct LineScore {
    /// 1-based.
    pub line: usize,
    pub text: String,
    /// Tokens of the line, its line break and the end-of-middle token.
    pub tokens: usize,
    /// Surprisal of the whole line, in bits.
    pub bits: f64,
    pub bits_per_token: f64,
    /// The most surprising token's surprisal.
    pub max_token_bits: f64,
    /// Surprisal beyond what the model expected: per token, its surprisal less the entropy of the
    /// model's prediction there, summed. High where the model was sure and the line disagrees.
    pub excess_bits: f64,
}

impl LineScore {
    /// How surprising the line is, for ranking lines.
    pub fn surprise(&self) -> f64 {
        self.bits_per_token
    }
}

/// Scores every non-blank line of `text` as the middle of a FIM prompt made of the rest of the file
/// (the same prompt builder completions use, `budget` tokens of context): how surprising the model
/// finds the line *given the code on both sides*, closing end-of-middle token included. A line that
/// does not fit where it stands scores high even when it looks fine after its prefix alone.
pub fn score_lines_fim(
    model: &mut Model,
    text: &str,
    budget: usize,
    cancel: Option<&AtomicBool>,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<LineScore>> {
    let Some(llama) = model.network.as_llama() else {
        anyhow::bail!(
            "{}: --fim scoring needs logits for every position, which infill's own qwen2/llama decoder gives",
            model.name
        );
    };
    let tok = &model.tokenizer;
    let eos = tok.fim().eos;
    let order = model.config.fim_order();
    let lines: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut start = 0;
        for l in text.split_inclusive('\n') {
            v.push((start, start + l.len()));
            start += l.len();
        }
        v
    };
    let mut out = Vec::new();
    for (i, &(start, end)) in lines.iter().enumerate() {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            break;
        }
        progress(i + 1, lines.len());
        let Some((prefix, middle, suffix)) = crate::text::split_around(text, start, end) else {
            continue;
        };
        if middle.trim().is_empty() {
            continue;
        }
        let mut target = tok.encode_continuation(middle)?;
        target.extend(eos);
        // The prompt gets what the model's context leaves beside the line and the FIM markers; a
        // line longer than that cannot be scored in place.
        let overhead = tok.fim().lead.len() + 3;
        let room = llama
            .config()
            .max_position_embeddings
            .saturating_sub(target.len() + overhead);
        if room == 0 {
            continue;
        }
        let prompt = build_prompt(tok, prefix, suffix, budget.min(room), order)?;
        let mut seq = prompt.ids.clone();
        seq.extend(&target);
        let input = candle_core::Tensor::new(seq.as_slice(), llama.device())?.unsqueeze(0)?;
        let logits = llama.forward_all(&input, 0, None)?.squeeze(0)?;
        let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
        let rows: Vec<Vec<f32>> = logp.to_vec2()?;
        let first = prompt.ids.len() - 1;
        let (mut nats, mut max_nats, mut excess) = (0.0f64, 0.0f64, 0.0f64);
        for (k, &id) in target.iter().enumerate() {
            let Some(row) = rows.get(first + k) else {
                continue;
            };
            let surprisal = row.get(id as usize).map_or(0.0, |&v| -f64::from(v));
            let entropy: f64 = row
                .iter()
                .map(|&lp| {
                    let lp = f64::from(lp);
                    -lp.exp() * lp
                })
                .filter(|h| h.is_finite())
                .sum();
            nats += surprisal;
            max_nats = max_nats.max(surprisal);
            excess += surprisal - entropy;
        }
        let bits = nats / std::f64::consts::LN_2;
        out.push(LineScore {
            line: i + 1,
            text: middle.trim_end_matches(['\n', '\r']).to_owned(),
            tokens: target.len(),
            bits,
            bits_per_token: bits / target.len().max(1) as f64,
            max_token_bits: max_nats / std::f64::consts::LN_2,
            excess_bits: excess / std::f64::consts::LN_2,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use GeneratedToken as T;

    #[test]
    fn the_confidence_cut_stops_before_the_first_unlikely_token() {
        let tokens = [
            T::for_test("foo", 0.9),
            T::for_test("(", 0.3),
            T::for_test("bar", 0.1),
            T::for_test(")", 0.6),
        ];
        assert_eq!(cut_below("foo(bar)".into(), &tokens, 0.2), "foo(");
        assert_eq!(cut_below("foo(bar)".into(), &tokens, 0.0), "foo(bar)");
        assert_eq!(cut_below("foo(bar)".into(), &tokens, 0.95), "");
        // Tokens past the trimmed text do not matter.
        assert_eq!(cut_below("foo".into(), &tokens, 0.2), "foo");
    }
}
