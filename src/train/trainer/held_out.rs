//! Held-out figures: the held-out files read left to right (no FIM) in windows of the run's
//! length, a fixed evenly spaced sample of them, loss and bits per byte overall and by language.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Doc, Trainer, windows};
use crate::model::Tokenizer;

/// Held-out loss and bits per byte.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeldOut {
    /// Mean cross-entropy per token (nats).
    pub loss: f64,
    pub bits_per_byte: f64,
    pub tokens: usize,
    /// The same by language (logs written before it was measured have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_language: Vec<LanguageHeldOut>,
}

/// Held-out bits per byte of one language's windows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LanguageHeldOut {
    pub language: String,
    pub bits_per_byte: f64,
    pub tokens: usize,
}

/// Windows each language has in a held-out measurement at least (where it has that many): the
/// evenly spaced sample follows the held-out set's mix, which may give a small language one
/// window or none.
const MIN_WINDOWS_PER_LANGUAGE: usize = 4;

impl Trainer {
    /// Loss and bits per byte on the held-out windows: at most `eval_windows` of them, evenly
    /// spaced over all of them, so the sample spans the held-out files rather than the openings of
    /// the first few. By language, each language's windows in that sample, topped up with its own
    /// evenly spaced windows to `MIN_WINDOWS_PER_LANGUAGE` (those count only for it). The sample
    /// is the same at every call, so the figures of a run are comparable along it.
    pub fn evaluate(&self) -> anyhow::Result<HeldOut> {
        let held = &self.held.windows;
        let n = held.len().min(self.settings.eval_windows.max(1));
        let sample: Vec<usize> = (0..n).map(|i| i * held.len() / n).collect();
        let mut extra = Vec::new();
        for language in 0..self.held.languages.len() {
            let own: Vec<usize> = (0..held.len())
                .filter(|&i| held[i].language == language)
                .collect();
            let sampled = sample.iter().filter(|&&i| held[i].language == language);
            let want = MIN_WINDOWS_PER_LANGUAGE.min(own.len());
            let missing = want.saturating_sub(sampled.count());
            extra.extend(
                (0..want)
                    .map(|k| own[k * own.len() / want])
                    .filter(|i| !sample.contains(i))
                    .take(missing),
            );
        }
        // One window per task: a held-out pass runs on every core (see `micro_batch_gradients`).
        let scored = sample
            .iter()
            .chain(&extra)
            .collect::<Vec<_>>()
            .par_iter()
            .map(|&&i| {
                let w = &held[i];
                let (loss, n) = self.batch_loss(std::slice::from_ref(&w.ids))?;
                let nats = f64::from(loss.detach().to_scalar::<f32>()?) * n as f64;
                Ok(Scored {
                    nats,
                    tokens: n,
                    bytes: w.bytes,
                    language: w.language,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let Some(mut out) = Scored::held_out(&scored[..sample.len()]) else {
            return Ok(HeldOut::default());
        };
        for (index, language) in self.held.languages.iter().enumerate() {
            let own: Vec<Scored> = scored
                .iter()
                .filter(|s| s.language == index)
                .copied()
                .collect();
            if let Some(h) = Scored::held_out(&own) {
                out.by_language.push(LanguageHeldOut {
                    language: language.clone(),
                    bits_per_byte: h.bits_per_byte,
                    tokens: h.tokens,
                });
            }
        }
        Ok(out)
    }
}

/// Plain (non-FIM) windows of held-out documents, each with the bytes its targets cover.
/// The held-out files, tokenized once and read left to right (no FIM), cut into windows of the
/// run's length; a new length only cuts them again.
pub(super) struct HeldOutSet {
    /// Each file's tokens (the lead, its text, end-of-text), the bytes each token stands for
    /// (none for special tokens), for bits per byte, and its language (an index into `languages`).
    pub(super) docs: Vec<(Vec<u32>, Vec<usize>, usize)>,
    /// The files' languages, in order of first appearance ("text" for files of none).
    pub(super) languages: Vec<String>,
    pub(super) seq_len: usize,
    /// Windows as the training windows are cut.
    pub(super) windows: Vec<HeldWindow>,
}

pub(super) struct HeldWindow {
    pub(super) ids: Vec<u32>,
    /// The bytes its targets stand for.
    pub(super) bytes: usize,
    pub(super) language: usize,
}

/// One held-out window's score.
#[derive(Debug, Clone, Copy)]
struct Scored {
    nats: f64,
    tokens: usize,
    bytes: usize,
    language: usize,
}

impl Scored {
    fn held_out(scored: &[Scored]) -> Option<HeldOut> {
        let nats: f64 = scored.iter().map(|s| s.nats).sum();
        let tokens: usize = scored.iter().map(|s| s.tokens).sum();
        let bytes: usize = scored.iter().map(|s| s.bytes).sum();
        (tokens > 0).then(|| HeldOut {
            loss: nats / tokens as f64,
            bits_per_byte: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
            tokens,
            by_language: Vec::new(),
        })
    }
}

/// A held-out file as it is read for held-out figures: the lead, its text and end-of-text, with
/// the bytes each token stands for (none for special tokens), for bits per byte.
pub fn plain_tokens(
    tokenizer: &Tokenizer,
    text: &str,
) -> Result<(Vec<u32>, Vec<usize>), crate::model::tokenizer::TokenizerError> {
    let mut ids = tokenizer.fim().lead.clone();
    ids.extend(tokenizer.encode(text)?);
    ids.extend(tokenizer.fim().eos);
    let bytes = ids
        .iter()
        .map(|&id| match tokenizer.is_special(id) {
            true => 0,
            false => tokenizer.token_bytes(id).len(),
        })
        .collect();
    Ok((ids, bytes))
}

impl HeldOutSet {
    pub(super) fn new(tokenizer: &Tokenizer, docs: &[Doc], seq_len: usize) -> anyhow::Result<Self> {
        let mut tokens = Vec::with_capacity(docs.len());
        let mut languages: Vec<String> = Vec::new();
        for doc in docs {
            let language = doc.language.as_deref().unwrap_or("text");
            let index = match languages.iter().position(|l| l == language) {
                Some(i) => i,
                None => {
                    languages.push(language.to_string());
                    languages.len() - 1
                }
            };
            let (ids, bytes) = plain_tokens(tokenizer, &doc.text)?;
            tokens.push((ids, bytes, index));
        }
        let mut set = Self {
            docs: tokens,
            languages,
            seq_len: 0,
            windows: Vec::new(),
        };
        set.cut(seq_len);
        Ok(set)
    }

    pub(super) fn cut(&mut self, seq_len: usize) {
        if seq_len == self.seq_len {
            return;
        }
        self.seq_len = seq_len;
        self.windows = self
            .docs
            .iter()
            .flat_map(|(ids, bytes, language)| {
                // Window `i` starts at token `i * seq_len`; its targets are the tokens after the first.
                windows(ids, seq_len).into_iter().enumerate().map(|(i, w)| {
                    let first = i * seq_len + 1;
                    let targets = bytes.get(first..first + w.len() - 1).unwrap_or(&[]);
                    HeldWindow {
                        bytes: targets.iter().sum(),
                        ids: w,
                        language: *language,
                    }
                })
            })
            .collect();
    }
}
