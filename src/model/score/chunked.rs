//! Scoring for the editor's overlay, where a one-character edit must not mean scoring the file again.
//!
//! The text is cut at line starts into content-defined chunks (a line whose hash hits a fixed
//! pattern starts a chunk, between a minimum and a maximum size, like rsync's rolling boundaries),
//! so an edit moves at most the boundaries next to it. Each chunk is tokenized on its own and scored
//! in one forward after the last tokens of the chunk before it (a fixed number, its context). A
//! chunk's scores therefore depend only on its own text and those context tokens: they are cached
//! under the two, and after an edit only the edited chunk is computed again, plus the one after it
//! when the edit reached the edited chunk's last tokens, whatever the file's size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{D, Tensor};

use super::TokenScore;
use crate::hash::fnv1a;
use crate::model::Model;
use crate::model::llama::KvCache;

/// One line in this many starts a chunk (once past the minimum size).
const PATTERN: u64 = 8;

/// How big chunks are, and how much of the chunk before one is its context. Smaller chunks refresh
/// faster, while each token's left context is the context tokens and its chunk's start: the sizes
/// follow the model's context (about 3 bytes a token), up to what a 512-token one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// A chunk ends at the first line start past this many bytes whose line hash hits the
    /// pattern...
    pub min_bytes: usize,
    /// ...or at the first line start past this many bytes.
    pub max_bytes: usize,
    /// A chunk is scored after this many of the previous chunk's last tokens.
    pub context_tokens: usize,
}

impl ChunkSizes {
    pub fn for_context(tokens: usize) -> Self {
        let c = tokens.clamp(64, 512);
        Self {
            min_bytes: c * 3 / 4,
            max_bytes: c * 4,
            context_tokens: c / 4,
        }
    }
}

/// Byte ranges of the chunks of `text`; they tile it.
pub fn chunk_bounds(text: &str, sizes: ChunkSizes) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let size = at - start;
        // FNV's low bits follow the bytes' low bits; mix, then take the top bits.
        let mixed = fnv1a(line.as_bytes()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        if size >= sizes.max_bytes || (size >= sizes.min_bytes && mixed.is_multiple_of(PATTERN)) {
            out.push((start, at));
            start = at;
        }
        at += line.len();
    }
    if at > start || out.is_empty() {
        out.push((start, at));
    }
    out
}

/// Scores the tokens `ids` of `chunk` (token `k` starts at byte `offsets[k]`) after `context`
/// (whose hash is `context.0`). A chunk that fits beside its context is scored in one forward
/// after it (the context's keys and values cached); a longer one in windows of half the model's
/// window, each with the tokens before it (the context's, then its own) filling the rest.
fn score_chunk(
    model: &Model,
    context: (u64, &[u32]),
    contexts: &mut Contexts,
    ids: &[u32],
    offsets: &[usize],
    chunk: &str,
    top_k: usize,
) -> anyhow::Result<Vec<TokenScore>> {
    let (context_key, context) = context;
    let Some(llama) = model.network.as_llama() else {
        anyhow::bail!(
            "{}: the overlay needs infill's own qwen2/llama decoder",
            model.name
        );
    };
    let tok = &model.tokenizer;
    let max_len = llama.config().max_position_embeddings.max(4);
    let step = max_len / 2;
    let mut out = Vec::with_capacity(ids.len());
    let score_row = |out: &mut Vec<TokenScore>, k: usize, row: &[f32]| {
        let Some(&id) = ids.get(k) else {
            return;
        };
        let range = super::token_range(offsets, k, chunk.len());
        out.push(TokenScore::from_row(tok, row, id, chunk, range, top_k));
    };
    if context.len() + ids.len() <= max_len {
        // The context's keys and values are cached: editing a chunk again only runs its own tokens.
        let (mut kv, last_row) = match contexts.get(context_key) {
            Some(hit) => hit,
            None => {
                let mut kv = llama.new_cache();
                let input = Tensor::new(context, llama.device())?.unsqueeze(0)?;
                let last = llama.forward_last(&input, 0, Some(&mut kv))?;
                let row: Vec<f32> = candle_nn::ops::log_softmax(&last, D::Minus1)?
                    .squeeze(0)?
                    .to_vec1()?;
                contexts.put(context_key, kv.clone(), row.clone());
                (kv, row)
            }
        };
        if ids.is_empty() {
            return Ok(out);
        }
        let input = Tensor::new(ids, llama.device())?.unsqueeze(0)?;
        let logits = llama
            .forward_all(&input, context.len(), Some(&mut kv))?
            .squeeze(0)?;
        let rows: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2()?;
        for k in 0..ids.len() {
            // Token 0 is predicted by the context's last position, token k by this chunk's k-1.
            let row = if k == 0 {
                Some(last_row.as_slice())
            } else {
                rows.get(k - 1).map(Vec::as_slice)
            };
            if let Some(row) = row {
                score_row(&mut out, k, row);
            }
        }
        return Ok(out);
    }
    let mut from = 0;
    while from < ids.len() {
        let until = (from + step).min(ids.len());
        // Left context: everything before `from`, as much as fits beside this window's tokens.
        let room = max_len - (until - from);
        let before: Vec<u32> = context
            .iter()
            .chain(ids.get(..from).unwrap_or_default())
            .copied()
            .collect();
        let left = before
            .get(before.len().saturating_sub(room)..)
            .unwrap_or_default();
        let mut seq = left.to_vec();
        seq.extend(ids.get(from..until).unwrap_or_default());
        let input = Tensor::new(seq.as_slice(), llama.device())?.unsqueeze(0)?;
        let logits = llama.forward_all(&input, 0, None)?.squeeze(0)?;
        let rows: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2()?;
        for k in from..until {
            // Token k sits at position left.len() + (k - from); the row before predicts it.
            if let Some(row) = rows.get(left.len() + (k - from) - 1) {
                score_row(&mut out, k, row);
            }
        }
        from = until;
    }
    Ok(out)
}

/// Keys, values and last-position log-probabilities of recently used contexts (the last tokens of
/// a chunk, alone), by the hash of those tokens, most recent first. Scoring a file leaves every chunk's context here while they fit in the budget, so the
/// first key in any place of a file of a few thousand lines costs what the next one does.
#[derive(Debug, Default)]
struct Contexts {
    recent: std::collections::VecDeque<(u64, KvCache, Vec<f32>)>,
    bytes: usize,
}

impl Contexts {
    /// Memory for cached contexts: about 150 contexts of 100 tokens for the default model.
    const BUDGET: usize = 64 << 20;

    fn size(kv: &KvCache, row: &[f32]) -> usize {
        kv.bytes() + std::mem::size_of_val(row)
    }

    fn get(&mut self, key: u64) -> Option<(KvCache, Vec<f32>)> {
        let i = self.recent.iter().position(|(k, _, _)| *k == key)?;
        let hit = self.recent.remove(i)?;
        let out = (hit.1.clone(), hit.2.clone());
        self.recent.push_front(hit);
        Some(out)
    }

    fn put(&mut self, key: u64, kv: KvCache, row: Vec<f32>) {
        self.bytes += Self::size(&kv, &row);
        self.recent.push_front((key, kv, row));
        while self.bytes > Self::BUDGET && self.recent.len() > 1 {
            if let Some((_, kv, row)) = self.recent.pop_back() {
                self.bytes -= Self::size(&kv, &row);
            }
        }
    }
}

/// Scores texts chunk by chunk, remembering chunks it has scored.
#[derive(Debug, Default)]
pub struct ChunkScorer {
    /// (hash of the context tokens, hash of the chunk's text) -> scores, with byte ranges relative
    /// to the chunk's start.
    cache: HashMap<(u64, u64), Vec<TokenScore>>,
    contexts: Contexts,
}

impl ChunkScorer {
    /// Scores every token of `text`; `on_chunk(first_token_index, tokens)` receives each chunk's
    /// scores in order. Returns how many tokens were computed (not served from the cache), or
    /// `None` when `cancel` was set (chunks finished so far stay cached).
    pub fn score(
        &mut self,
        model: &Model,
        text: &str,
        top_k: usize,
        cancel: Option<&AtomicBool>,
        mut on_chunk: impl FnMut(usize, &[TokenScore]),
    ) -> anyhow::Result<Option<usize>> {
        if model.network.as_llama().is_none() {
            anyhow::bail!(
                "{}: the overlay needs logits for every position, which infill's own qwen2/llama decoder gives",
                model.name
            );
        }
        let tok = &model.tokenizer;
        let start_token = super::document_start(tok);
        let context = model
            .network
            .as_llama()
            .map_or(512, |l| l.config().max_position_embeddings);
        let sizes = ChunkSizes::for_context(context);
        let bounds = chunk_bounds(text, sizes);
        let mut used = HashMap::with_capacity(bounds.len());
        let (mut index, mut computed) = (0usize, 0usize);
        // The previous chunk's tokens; the start token before the first chunk.
        let mut prev: Vec<u32> = vec![start_token];
        for &(a, b) in &bounds {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                self.cache.extend(used);
                return Ok(None);
            }
            let chunk = crate::text::from(crate::text::before(text, b), a);
            let (ids, offsets) = tok.encode_with_offsets(chunk)?;
            let context = prev
                .get(prev.len().saturating_sub(sizes.context_tokens)..)
                .unwrap_or_default();
            let context_hash = fnv1a(
                &context
                    .iter()
                    .flat_map(|t| t.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
            let key = (context_hash, fnv1a(chunk.as_bytes()));
            let scores = match self.cache.remove(&key) {
                Some(s) => s,
                None => {
                    computed += ids.len();
                    score_chunk(
                        model,
                        (context_hash, context),
                        &mut self.contexts,
                        &ids,
                        &offsets,
                        chunk,
                        top_k,
                    )?
                }
            };
            let absolute: Vec<TokenScore> = scores
                .iter()
                .map(|t| TokenScore {
                    start: t.start + a,
                    end: t.end + a,
                    ..t.clone()
                })
                .collect();
            on_chunk(index, &absolute);
            index += absolute.len();
            used.insert(key, scores);
            if !ids.is_empty() {
                prev = ids;
            }
        }
        // Keep only what this text uses: the cache never outgrows the file.
        self.cache = used;
        Ok(Some(computed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_tile_the_text_and_an_edit_moves_only_nearby_boundaries() {
        let text: String = (0..400)
            .map(|i| format!("    let value_{i} = compute({i});\n"))
            .collect();
        let sizes = ChunkSizes::for_context(512);
        let a = chunk_bounds(&text, sizes);
        assert!(a.len() > 5);
        assert_eq!(a.first().map(|c| c.0), Some(0));
        assert_eq!(a.last().map(|c| c.1), Some(text.len()));
        assert!(a.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(a.iter().all(|&(s, e)| e - s <= sizes.max_bytes + 64));
        // Insert a line in the middle: boundaries after the next one shift by its length only.
        let at = text.len() / 2;
        let at = at + text.get(at..).and_then(|t| t.find('\n')).unwrap_or(0) + 1;
        let mut edited = text.clone();
        let added = "    let inserted = 1;\n";
        edited.insert_str(at, added);
        let b = chunk_bounds(&edited, sizes);
        let shifted: Vec<(usize, usize)> = a
            .iter()
            .filter(|c| c.0 > at + sizes.max_bytes)
            .map(|&(s, e)| (s + added.len(), e + added.len()))
            .collect();
        let tail = &b[b.len() - shifted.len()..];
        assert_eq!(tail, shifted.as_slice());
        assert_eq!(chunk_bounds("", sizes), vec![(0, 0)]);
        // A smaller context makes smaller chunks.
        let small = chunk_bounds(&text, ChunkSizes::for_context(256));
        assert!(
            small.len() > a.len() * 3 / 2,
            "{} vs {}",
            small.len(),
            a.len()
        );
    }
}
