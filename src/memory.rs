//! Repository memory: what the user's own code says comes next.
//!
//! [`Index`] is an unbounded n-gram index (a suffix array, as infini-gram builds) over the token
//! ids of a set of documents: for any context it finds the longest suffix that occurs in them and
//! counts what followed each occurrence. [`Memory`] turns that into a next-token prior that
//! generation mixes into the model's distribution, with weights fitted on held-out text. It lives
//! on token ids, so it works for every model infill loads; the model knows it only through the
//! `Prior` trait.

mod index;
mod prior;

pub use index::{Continuation, Index, Match, Occurrence};
pub use prior::{Memory, Sample, Weights};

use rayon::prelude::*;

use crate::model::{Model, Tokenizer};

/// An index of `files` under `tokenizer` (tokenized on all cores).
pub fn index_files(tokenizer: &Tokenizer, files: &[&str]) -> Index {
    Index::build(&tokenize(tokenizer, files))
}

/// Every file's token ids, on all cores (a file the tokenizer refuses is empty).
fn tokenize(tokenizer: &Tokenizer, files: &[&str]) -> Vec<Vec<u32>> {
    files
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
    let mut samples = Vec::new();
    let mut scored = 0;
    for text in texts {
        if scored >= budget {
            break;
        }
        let window = model.network.context_length();
        let scores = crate::model::score::score(model, text, window, None, 0)?;
        let take = scores.len().min(budget - scored);
        scored += take;
        let ids: Vec<u32> = scores[..take].iter().map(|s| s.id).collect();
        let probs: Vec<f64> = scores[..take]
            .iter()
            .map(|s| f64::from(s.logprob).exp())
            .collect();
        samples.extend(memory.samples(&ids, &probs));
    }
    Ok((Weights::fit(&samples), samples.len()))
}

/// How a memory's weights were fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Files the weights were fitted on (every k-th: a fifth of a small repository, a twentieth
    /// of a large one), with the index built from the others.
    pub files: usize,
    /// Tokens of theirs the fit rests on.
    pub samples: usize,
}

/// Memory of `texts` (a repository's files): weights fitted on a slice of them with the index
/// built from the rest (at most `fit_tokens` scored), then every file indexed.
pub fn build(
    model: &mut Model,
    texts: &[&str],
    fit_tokens: usize,
) -> anyhow::Result<(Memory, Fit)> {
    if texts.len() < 2 {
        anyhow::bail!(
            "repository memory needs two files or more (one to index, one to fit on); there are {}",
            texts.len()
        );
    }
    let every = (texts.len() / 5).clamp(2, 20);
    let is_tuning = |i: usize| i % every == every - 1;
    // Each file is tokenized once, for both indexes.
    let documents = tokenize(&model.tokenizer, texts);
    let rest: Vec<&[u32]> = documents
        .iter()
        .enumerate()
        .filter(|(i, _)| !is_tuning(*i))
        .map(|(_, d)| d.as_slice())
        .collect();
    let tuning: Vec<&str> = texts
        .iter()
        .enumerate()
        .filter(|(i, _)| is_tuning(*i))
        .map(|(_, t)| *t)
        .collect();
    let without = Memory::new(Index::build(&rest), Weights::constant(0.0));
    let (weights, samples) = fit_weights(model, &without, &tuning, fit_tokens)?;
    let memory = Memory::new(Index::build(&documents), weights);
    Ok((
        memory,
        Fit {
            files: tuning.len(),
            samples,
        },
    ))
}
