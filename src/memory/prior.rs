//! The index as a next-token prior: what followed the longest match of the document so far,
//! trusted as much as matches that long have earned on held-out text.
//!
//! The weight is not chosen by hand: [`Weights::fit`] finds, for each range of match lengths, the
//! mixture weight under which held-out text is most probable (EM on the two-component mixture of
//! the model and the index), so a model that already knows the code trusts the index less, and a
//! long unambiguous match is trusted more than a two-token one.

use super::{Change, Documents, Location};
use crate::model::generate::{Prior, PriorGuess, PriorSnippet, PriorSource};
use std::path::{Path, PathBuf};

/// Match lengths are grouped by powers of two: 1, 2-3, 4-7, ..., 128 and more.
const BUCKETS: usize = 8;
/// The longest context looked up (a match this long is as good as a longer one).
const MAX_QUERY: usize = 256;
/// Continuations kept per guess (the most frequent).
const MAX_CONTINUATIONS: usize = 64;
/// How far back the document's own text is searched for an earlier occurrence of its end.
const OWN_WINDOW: usize = 4096;

/// The longest suffix of `context` that also ends earlier in it, and what followed it there
/// (token, times): a brute-force search, as the window is short.
fn own_match(context: &[u32]) -> Option<(usize, Vec<(u32, usize)>)> {
    let n = context.len();
    let mut best = 0;
    let mut next: Vec<(u32, usize)> = Vec::new();
    for j in 1..n {
        let l = context[..j]
            .iter()
            .rev()
            .zip(context.iter().rev())
            .take(MAX_QUERY)
            .take_while(|(a, b)| a == b)
            .count();
        if l == 0 || l < best {
            continue;
        }
        if l > best {
            best = l;
            next.clear();
        }
        let token = context[j];
        match next.iter_mut().find(|(t, _)| *t == token) {
            Some(c) => c.1 += 1,
            None => next.push((token, 1)),
        }
    }
    (best > 0).then_some((best, next))
}

fn bucket(len: usize) -> usize {
    (len.max(1).ilog2() as usize).min(BUCKETS - 1)
}

/// Mixture weights by match length.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    by_length: [f32; BUCKETS],
}

impl Weights {
    /// The same weight for every match length.
    pub fn constant(weight: f32) -> Self {
        Self {
            by_length: [weight.clamp(0.0, 1.0); BUCKETS],
        }
    }

    /// Weights by match length as [`Weights::by_length`] gives them (`None` for another count).
    pub fn from_slice(by_length: &[f32]) -> Option<Self> {
        let mut w = Self::constant(0.0);
        if by_length.len() != BUCKETS {
            return None;
        }
        for (to, from) in w.by_length.iter_mut().zip(by_length) {
            *to = from.clamp(0.0, 1.0);
        }
        Some(w)
    }

    /// The weight for a match of `len` tokens.
    pub fn for_length(&self, len: usize) -> f32 {
        self.by_length[bucket(len)]
    }

    /// The weights under which `samples` are most probable: per bucket, the maximum-likelihood
    /// weight of `(1 - w) * model + w * index` (EM). A bucket without samples takes the weight
    /// of the next shorter one (0 for the shortest): a longer match is no less to be trusted, and
    /// a small repository may have no match of 64 tokens among its tuning files.
    pub fn fit(samples: &[Sample]) -> Self {
        let mut by_length = [0.0f32; BUCKETS];
        for b in 0..BUCKETS {
            let of: Vec<&Sample> = samples.iter().filter(|s| bucket(s.len) == b).collect();
            if of.is_empty() {
                by_length[b] = if b > 0 { by_length[b - 1] } else { 0.0 };
                continue;
            }
            let weight = &mut by_length[b];
            let mut w = 0.5f64;
            for _ in 0..200 {
                // The share of each sample the index explains, averaged, is the next weight.
                let next = of
                    .iter()
                    .map(|s| {
                        let from_index = w * s.index;
                        let all = (1.0 - w) * s.model + from_index;
                        if all > 0.0 { from_index / all } else { 0.0 }
                    })
                    .sum::<f64>()
                    / of.len() as f64;
                let done = (next - w).abs() < 1e-7;
                w = next;
                if done {
                    break;
                }
            }
            *weight = w as f32;
        }
        Self { by_length }
    }

    pub fn by_length(&self) -> &[f32] {
        &self.by_length
    }
}

/// One held-out token: the length of the longest match before it, and the probability the model
/// and the index gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub len: usize,
    pub model: f64,
    pub index: f64,
}

/// The repository's files and the weights their index has earned.
#[derive(Debug, Clone)]
pub struct Memory {
    documents: Documents,
    weights: Weights,
}

impl Memory {
    pub fn new(documents: Documents, weights: Weights) -> Self {
        Self { documents, weights }
    }

    pub fn documents(&self) -> &Documents {
        &self.documents
    }

    /// The memory with `changes` to its files (see [`Documents::with_changes`]).
    pub fn with_changes(&self, changes: impl IntoIterator<Item = (PathBuf, Change)>) -> Self {
        Self::new(self.documents.with_changes(changes), self.weights.clone())
    }

    /// The same memory with its changes folded into one index (see [`Documents::compact`]).
    pub fn compacted(&self) -> Self {
        Self::new(self.documents.compact(), self.weights.clone())
    }

    /// The memory for completing in `path`: that file's indexed copy does not count (its text
    /// before the cursor still does, as the document's own; its text after must never).
    pub fn without(&self, path: &Path) -> Self {
        Self::new(self.documents.without(path), self.weights.clone())
    }

    /// Where the end of `context` was found: the longest suffix of it among the files (at least
    /// `min_len` tokens), its length and a place it occurs.
    pub fn locate(&self, context: &[u32], min_len: usize) -> Option<(usize, Location)> {
        let query = &context[context.len().saturating_sub(MAX_QUERY)..];
        let (len, _) = self.documents.longest_match(query);
        if len < min_len.max(1) {
            return None;
        }
        let location = self.documents.locate(&query[query.len() - len..])?;
        Some((len, location))
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn set_weights(&mut self, weights: Weights) {
        self.weights = weights;
    }

    /// What followed the longest match of `context`, in the index or earlier in the context
    /// itself (the document's own text before the cursor counts; its text after never does):
    /// the match's length and the next tokens' probabilities (the most frequent, summing to 1).
    fn guess(&self, context: &[u32]) -> Option<(usize, Vec<(u32, f32)>)> {
        let query = &context[context.len().saturating_sub(MAX_QUERY)..];
        let (found, continuations) = self.documents.longest_match(query);
        let mut counts: Vec<(u32, usize)> =
            continuations.iter().map(|c| (c.token, c.count)).collect();
        let mut len = if counts.is_empty() { 0 } else { found };
        let own = &context[context.len().saturating_sub(OWN_WINDOW)..];
        if let Some((own_len, own_counts)) = own_match(own)
            && own_len >= len
        {
            if own_len > len {
                counts.clear();
                len = own_len;
            }
            for (token, n) in own_counts {
                match counts.iter_mut().find(|(t, _)| *t == token) {
                    Some(c) => c.1 += n,
                    None => counts.push((token, n)),
                }
            }
        }
        if len == 0 || counts.is_empty() {
            return None;
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts.truncate(MAX_CONTINUATIONS);
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let probs = counts
            .iter()
            .map(|&(token, n)| (token, n as f32 / total as f32))
            .collect();
        Some((len, probs))
    }

    /// Fitting samples from a text the index does not hold: at each of its tokens `ids`, the
    /// probability `model` gave it after the tokens before, and the index's.
    pub fn samples(&self, ids: &[u32], model: &[f64]) -> Vec<Sample> {
        (1..ids.len().min(model.len()))
            .filter_map(|t| {
                let (len, probs) = self.guess(&ids[..t])?;
                let index = probs
                    .iter()
                    .find(|(id, _)| *id == ids[t])
                    .map_or(0.0, |(_, p)| f64::from(*p));
                Some(Sample {
                    len,
                    model: model[t],
                    index,
                })
            })
            .collect()
    }
}

impl Prior for Memory {
    fn next(&self, context: &[u32]) -> Option<PriorGuess> {
        let (len, probs) = self.guess(context)?;
        let weight = self.weights.for_length(len);
        (weight > 0.0).then_some(PriorGuess { weight, probs })
    }

    /// The places where the end of the context, and its ends a few lines back, recur in other
    /// files (each vote weighed by the match's length; a match under 4 tokens, or in more than
    /// 32 places, is too common to say anything), as windows around the spot that corresponds
    /// to the cursor: a third before it, two thirds after, since what followed is what the model
    /// may copy.
    fn snippets(&self, context: &[u32], budget: usize) -> Vec<PriorSnippet> {
        const BACK: [usize; 6] = [0, 16, 32, 64, 96, 128];
        const MIN_LEN: usize = 4;
        const MAX_PLACES: usize = 32;
        // Windows are this long at most, so that several files can show.
        let window = (budget / 2).clamp(32, 256);
        let mut votes: Vec<(PathBuf, usize, usize)> = Vec::new();
        for back in BACK {
            let Some(end) = context.len().checked_sub(back).filter(|&e| e > 0) else {
                break;
            };
            let query = &context[end.saturating_sub(MAX_QUERY)..end];
            let (len, _) = self.documents.longest_match(query);
            let pattern = &query[query.len() - len..];
            if len < MIN_LEN || self.documents.count(pattern) > MAX_PLACES {
                continue;
            }
            for at in self.documents.locations(pattern, MAX_PLACES) {
                let cursor = at.offset + len + back;
                // Votes for nearby spots of one file add up.
                match votes
                    .iter_mut()
                    .find(|(p, c, _)| *p == at.path && c.abs_diff(cursor) < window / 2)
                {
                    Some(v) => v.2 += len,
                    None => votes.push((at.path, cursor, len)),
                }
            }
        }
        votes.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        let mut out = Vec::new();
        let mut left = budget;
        for (path, cursor, _) in votes {
            let Some(tokens) = self.documents.tokens(&path) else {
                continue;
            };
            let take = window.min(left);
            if take < MIN_LEN {
                break;
            }
            let cursor = cursor.min(tokens.len());
            let start = cursor.saturating_sub(take / 3);
            let end = (start + take).min(tokens.len());
            left -= end - start;
            out.push(PriorSnippet {
                path,
                tokens: tokens[start..end].to_vec(),
            });
        }
        out
    }

    /// The place the longest match of the context's end occurs, moved back to where the tail
    /// starts when the match covers it all (a match of fewer than 4 tokens, or of under half a
    /// short tail, says nothing).
    fn source(&self, context: &[u32], tail: usize) -> Option<PriorSource> {
        let (len, at) = self.locate(context, tail.div_ceil(2).min(4))?;
        let start = at.offset + len.saturating_sub(tail);
        let tokens = self.documents.tokens(&at.path)?;
        Some(PriorSource {
            before: tokens[..start.min(tokens.len())].to_vec(),
            path: at.path,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::generate::mix;

    #[test]
    fn fitting_recovers_the_weight_that_made_the_data() {
        // Tokens drawn from a 30/70 mixture: where the index is right the model is not, and the
        // other way round, so each sample says which component produced it.
        let mut samples = Vec::new();
        for i in 0..1000 {
            let from_index = i % 10 < 3;
            samples.push(Sample {
                len: 20,
                model: if from_index { 0.0 } else { 0.4 },
                index: if from_index { 0.9 } else { 0.0 },
            });
        }
        // Short matches that never help.
        samples.extend((0..100).map(|_| Sample {
            len: 1,
            model: 0.2,
            index: 0.0,
        }));
        let w = Weights::fit(&samples);
        assert!((w.for_length(20) - 0.3).abs() < 1e-3, "{w:?}");
        assert!(w.for_length(1) < 1e-3, "{w:?}");
        // Lengths never seen take the weight of the longest seen below them.
        assert!(w.for_length(3) < 1e-3, "{w:?}");
        assert!((w.for_length(1000) - 0.3).abs() < 1e-3, "{w:?}");
    }

    #[test]
    fn the_mixture_is_a_distribution_that_moves_towards_the_index() {
        let docs = [vec![1u32, 2, 3, 4], vec![1, 2, 3, 5], vec![1, 2, 3, 4]];
        let memory = Memory::new(Documents::unnamed(&docs), Weights::constant(0.5));
        let guess = memory.next(&[9, 1, 2, 3]).unwrap();
        assert_eq!(guess.weight, 0.5);
        let sum: f32 = guess.probs.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(guess.probs[0].0, 4);
        assert!((guess.probs[0].1 - 2.0 / 3.0).abs() < 1e-6);
        // A model sure of token 0.
        let mut logits = vec![5.0f32, 0.0, 0.0, 0.0, 0.0, 0.0];
        mix(&mut logits, &guess);
        let probs: Vec<f32> = logits.iter().map(|l| l.exp()).collect();
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{probs:?}");
        assert!(probs[4] > 0.33 && probs[5] > 0.16, "{probs:?}");
        assert!(probs[0] < 0.5, "{probs:?}");
        // Nothing matches: nothing to say.
        assert!(memory.next(&[7]).is_none());
        assert!(
            Memory::new(Documents::unnamed(&docs), Weights::constant(0.0))
                .next(&[1, 2, 3])
                .is_none()
        );
    }

    #[test]
    fn the_documents_own_earlier_text_counts_and_its_longer_match_wins() {
        // The index knows `1 2 -> 3`; the document itself wrote `7 1 2 -> 8` earlier.
        let memory = Memory::new(
            Documents::unnamed(&[vec![1u32, 2, 3]]),
            Weights::constant(0.5),
        );
        let guess = memory.next(&[7, 1, 2, 8, 9, 7, 1, 2]).unwrap();
        assert_eq!(guess.probs, [(8, 1.0)]);
        // Equally long matches in both: their counts add up.
        let guess = memory.next(&[1, 2, 4, 1, 2]).unwrap();
        assert_eq!(guess.probs, [(3, 0.5), (4, 0.5)]);
        assert_eq!(own_match(&[5, 6, 5, 6]), Some((2, vec![(5, 1)])));
        assert_eq!(own_match(&[5, 6]), None);
    }

    #[test]
    fn samples_pair_each_token_with_both_probabilities() {
        let memory = Memory::new(
            Documents::unnamed(&[vec![1u32, 2, 3]]),
            Weights::constant(0.5),
        );
        let samples = memory.samples(&[1, 2, 4], &[0.1, 0.2, 0.3]);
        assert_eq!(
            samples,
            [
                Sample {
                    len: 1,
                    model: 0.2,
                    index: 1.0
                },
                Sample {
                    len: 2,
                    model: 0.3,
                    index: 0.0
                },
            ]
        );
    }
}
