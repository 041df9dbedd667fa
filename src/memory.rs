//! Repository memory: what the user's own code says comes next.
//!
//! [`Index`] is an unbounded n-gram index (a suffix array, as infini-gram builds) over the token
//! ids of a set of documents: for any context it finds the longest suffix that occurs in them and
//! counts what followed each occurrence. [`Memory`] turns that into a next-token prior that
//! generation mixes into the model's distribution, with weights fitted on held-out text. It lives
//! on token ids, so it works for every model infill loads; the model knows it only through the
//! `Prior` trait.

mod documents;
mod index;
mod prior;
mod store;

pub use documents::{Change, Current, Document, Documents, Location};
pub use index::{Continuation, Index, Match, Occurrence};
pub use prior::{Memory, Sample, Weights};
pub use store::Store;

use std::path::PathBuf;

use rayon::prelude::*;

use crate::hash::fnv1a;
use crate::model::{Model, Tokenizer};

/// A file to remember: where it is and its text.
#[derive(Debug, Clone, Copy)]
pub struct File<'a> {
    pub path: &'a std::path::Path,
    pub text: &'a str,
}

/// `files` tokenized (on all cores) and indexed.
pub fn documents(tokenizer: &Tokenizer, files: &[File]) -> Documents {
    let tokens = tokenize(tokenizer, files.iter().map(|f| f.text));
    Documents::build(
        files
            .iter()
            .zip(tokens)
            .map(|(f, tokens)| Document {
                path: f.path.to_path_buf(),
                hash: fnv1a(f.text.as_bytes()),
                tokens,
            })
            .collect(),
    )
}

/// Every text's token ids, on all cores (a text the tokenizer refuses is empty).
pub fn tokenize<'a>(
    tokenizer: &Tokenizer,
    texts: impl IntoIterator<Item = &'a str>,
) -> Vec<Vec<u32>> {
    let texts: Vec<&str> = texts.into_iter().collect();
    texts
        .par_iter()
        .map(|text| tokenizer.encode(text).unwrap_or_default())
        .collect()
}

/// Weights for `memory` fitted on `texts`, which its index must not hold: each is scored by the
/// model left to right (at most `budget` tokens in all), and every token becomes a [`Sample`].
/// Returns the weights and how many samples they rest on.
pub fn fit_weights(
    model: &mut Model,
    memory: &Memory,
    texts: &[&str],
    budget: usize,
) -> anyhow::Result<(Weights, usize)> {
    // Token-at-a-time scoring costs a decoding step per token: fewer of them.
    let budget = match model.network.as_llama() {
        Some(_) => budget,
        None => budget.min(STEPWISE_FIT_TOKENS),
    };
    let mut samples = Vec::new();
    let mut scored = 0;
    for text in texts {
        if scored >= budget {
            break;
        }
        let (ids, probs) = token_probs(model, text, budget - scored)?;
        scored += ids.len();
        samples.extend(memory.samples(&ids, &probs));
    }
    Ok((Weights::fit(&samples), samples.len()))
}

/// At most this many tokens are scored to fit weights for a model scored one token at a time.
const STEPWISE_FIT_TOKENS: usize = 512;

/// The first `limit` tokens of `text` and the probability the model gives each after the ones
/// before: every position in one pass where the decoder gives all positions' logits (infill's
/// own), else one token at a time through the cache, as generation runs (StarCoder2, GPT-BigCode),
/// within one context window.
fn token_probs(
    model: &mut Model,
    text: &str,
    limit: usize,
) -> anyhow::Result<(Vec<u32>, Vec<f64>)> {
    if model.network.as_llama().is_some() {
        let window = model.network.context_length();
        let scores = crate::model::score::score(model, text, window, None, 0)?;
        let take = scores.len().min(limit);
        return Ok((
            scores[..take].iter().map(|s| s.id).collect(),
            scores[..take]
                .iter()
                .map(|s| f64::from(s.logprob).exp())
                .collect(),
        ));
    }
    let mut seq = vec![crate::model::score::document_start(&model.tokenizer)];
    seq.extend(model.tokenizer.encode(text)?);
    seq.truncate(limit.saturating_add(1).min(model.network.context_length()));
    let mut probs = Vec::with_capacity(seq.len());
    for t in 1..seq.len() {
        let (logits, _) = model.network.logits_after(&seq[..t])?;
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let p = logits
            .get(seq[t] as usize)
            .map_or(0.0, |&l| f64::from(l - max).exp() / total);
        probs.push(p);
    }
    Ok((seq[1..].to_vec(), probs))
}

/// The probabilities the model gives `text` (see [`token_probs`]), for keying stored weights.
pub(crate) fn probe(model: &mut Model, text: &str) -> anyhow::Result<Vec<f64>> {
    Ok(token_probs(model, text, usize::MAX)?.1)
}

/// How a memory's weights were fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Files the weights were fitted on (every k-th: a fifth of a small repository, a twentieth
    /// of a large one), with the index of the others.
    pub files: usize,
    /// Tokens of theirs the fit rests on.
    pub samples: usize,
}

/// Weights for `documents` (which hold `files`), fitted on a slice of the files with the others
/// as the index (at most `fit_tokens` scored).
pub fn fit(
    model: &mut Model,
    documents: &Documents,
    files: &[File],
    fit_tokens: usize,
) -> anyhow::Result<(Weights, Fit)> {
    if files.len() < 2 {
        anyhow::bail!(
            "repository memory needs two files or more (one to index, one to fit on); there are {}",
            files.len()
        );
    }
    let every = (files.len() / 5).clamp(2, 20);
    let tuning: Vec<File> = files
        .iter()
        .skip(every - 1)
        .step_by(every)
        .copied()
        .collect();
    fit_on(model, documents, &tuning, fit_tokens)
}

/// Weights for `documents` fitted on `tuning` (files they hold), with the other files as the
/// index. The tuning files are taken out as a change, so no second index is built. They should be
/// files the model never trained on: on files it learnt, the model looks better than it will be,
/// and the index is trusted too little.
pub fn fit_on(
    model: &mut Model,
    documents: &Documents,
    tuning: &[File],
    fit_tokens: usize,
) -> anyhow::Result<(Weights, Fit)> {
    let without = documents.with_changes(tuning.iter().map(|f| (f.path.to_path_buf(), None)));
    let texts: Vec<&str> = tuning.iter().map(|f| f.text).collect();
    let (weights, samples) = fit_weights(
        model,
        &Memory::new(without, Weights::constant(0.0)),
        &texts,
        fit_tokens,
    )?;
    Ok((
        weights,
        Fit {
            files: tuning.len(),
            samples,
        },
    ))
}

/// Memory of `files` (a repository's): every file indexed, with weights fitted on `tuning` when
/// given (see [`fit_on`]), else as [`fit`] does.
pub fn build(
    model: &mut Model,
    files: &[File],
    tuning: Option<&[File]>,
    fit_tokens: usize,
) -> anyhow::Result<(Memory, Fit)> {
    let documents = documents(&model.tokenizer, files);
    let (weights, fit) = match tuning {
        Some(tuning) if !tuning.is_empty() => fit_on(model, &documents, tuning, fit_tokens)?,
        _ => fit(model, &documents, files, fit_tokens)?,
    };
    Ok((Memory::new(documents, weights), fit))
}

/// How [`open`] came by a memory.
#[derive(Debug)]
pub struct Opened {
    pub memory: Memory,
    /// Files taken unchanged (from the memory before, or the store), and files tokenized now.
    pub reused: usize,
    pub tokenized: usize,
    /// Whether the weights were fitted now (else they were the memory's before, or stored).
    pub fitted: bool,
    /// Whether the memory was served with changes on top, which the store does not have yet:
    /// [`Store::save`] folds them in, which is left to the caller, off the path to the next
    /// proposal.
    pub unsaved: bool,
}

/// Memory of `files`. What is already known is taken as it is, with the files that changed since
/// (by content hash) as changes on top: the memory `previous` (a refresh after a save), else an
/// index in `store` (reopening a repository). Either way only what changed is tokenized and no
/// index is built. Weights come from `previous`, else from the store when this model fitted them,
/// else they are fitted now. What is new is written back to the store.
pub fn open(
    model: &mut Model,
    files: &[File],
    store: Option<&Store>,
    previous: Option<&Memory>,
    fit_tokens: usize,
) -> anyhow::Result<Opened> {
    let tokenizer_key = store::tokenizer_key(&model.tokenizer);
    let known = previous.map(|m| m.documents().clone()).or_else(|| {
        store.and_then(|s| match s.load(tokenizer_key) {
            Ok(documents) => documents,
            Err(e) => {
                tracing::warn!("repository memory: {e:#}; indexing again");
                None
            }
        })
    });
    let (documents, reused, tokenized, unsaved) = match known {
        Some(known) => {
            let (changes, reused) = store::changes(&known, files, &model.tokenizer);
            let tokenized = changes.iter().filter(|(_, c)| c.is_some()).count();
            let documents = known.with_changes(changes);
            let unsaved = documents.changed_tokens() > 0;
            (documents, reused, tokenized, unsaved)
        }
        None => {
            let documents = documents(&model.tokenizer, files);
            if let Some(store) = store
                && let Err(e) = store.save(&documents, tokenizer_key)
            {
                tracing::warn!("repository memory: not stored: {e:#}");
            }
            (documents, 0, files.len(), false)
        }
    };
    // Stored weights are filed under the model that fitted them.
    let model_key = match (previous, store) {
        (None, Some(_)) => Some(store::model_key(model, tokenizer_key)),
        _ => None,
    };
    let known_weights = match previous {
        Some(m) => Some(m.weights().clone()),
        None => store.zip(model_key).and_then(|(s, key)| s.weights(key)),
    };
    let fitted = known_weights.is_none();
    let weights = match known_weights {
        Some(w) => w,
        None => {
            let (weights, _) = fit(model, &documents, files, fit_tokens)?;
            if let (Some(store), Some(key)) = (store, model_key)
                && let Err(e) = store.save_weights(key, &weights)
            {
                tracing::warn!("repository memory: weights not stored: {e:#}");
            }
            weights
        }
    };
    Ok(Opened {
        memory: Memory::new(documents, weights),
        reused,
        tokenized,
        fitted,
        unsaved,
    })
}

/// The change that a file's new `text` makes: its hash and tokens.
pub fn change(tokenizer: &Tokenizer, path: &std::path::Path, text: &str) -> (PathBuf, Change) {
    let tokens = tokenizer.encode(text).unwrap_or_default();
    (
        path.to_path_buf(),
        Some(Current {
            hash: fnv1a(text.as_bytes()),
            tokens: tokens.into(),
        }),
    )
}

/// The tokenizer key a store files an index under.
pub fn tokenizer_key(tokenizer: &Tokenizer) -> u64 {
    store::tokenizer_key(tokenizer)
}
