//! A suffix array over the token ids of many documents, for longest-match queries.
//!
//! The documents are laid end to end, each followed by a separator id no tokenizer produces, so a
//! match never runs from one document into the next. The suffix array lists every position in the
//! order of the token sequence that starts there; all occurrences of a pattern are then one range
//! of it, found by binary search, and because the range is sorted by what follows the pattern, the
//! tokens that continued it come in runs whose lengths are their counts. At rest the index holds
//! the tokens and the array: 8 bytes per token.
//!
//! Construction is prefix doubling with counting sorts (Manber and Myers): after round k the
//! positions are sorted by their first 2^k tokens, so a repository whose longest repeated run is R
//! tokens takes about log2(R) rounds of linear work.

use std::ops::Range;

/// The id that ends every document (never a token).
const SEPARATOR: u32 = u32::MAX;

/// An index over documents' token ids.
#[derive(Debug, Clone, Default)]
pub struct Index {
    tokens: Vec<u32>,
    /// Positions in `tokens`, sorted by the token sequence starting there.
    suffixes: Vec<u32>,
    /// Where each document starts in `tokens`, in order.
    starts: Vec<u32>,
}

/// The longest suffix of a context found in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Tokens matched (0: not even the last token occurs).
    pub len: usize,
    /// Its occurrences, as a range of the suffix array.
    range: Range<usize>,
}

impl Match {
    /// How many times it occurs.
    pub fn count(&self) -> usize {
        self.range.len()
    }
}

/// A token that followed a match, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    pub token: u32,
    pub count: usize,
}

/// Where a match occurs: a document (its index among those built from) and the token offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Occurrence {
    pub document: usize,
    pub offset: usize,
}

impl Index {
    /// Indexes `documents` (token ids; [`u32::MAX`] is not a token). Panics on more than 2^32 - 2
    /// tokens in all, far beyond a repository.
    pub fn build<D: AsRef<[u32]>>(documents: &[D]) -> Self {
        let total: usize = documents.iter().map(|d| d.as_ref().len() + 1).sum();
        assert!(total < SEPARATOR as usize, "too many tokens for one index");
        let mut tokens = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(documents.len());
        for d in documents {
            starts.push(tokens.len() as u32);
            tokens.extend(d.as_ref().iter().map(|&t| t.min(SEPARATOR - 1)));
            tokens.push(SEPARATOR);
        }
        let suffixes = suffix_array(&tokens);
        Self {
            tokens,
            suffixes,
            starts,
        }
    }

    /// Tokens indexed (separators included).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Bytes the index holds.
    pub fn heap_bytes(&self) -> usize {
        4 * (self.tokens.capacity() + self.suffixes.capacity() + self.starts.capacity())
    }

    /// Documents indexed.
    pub fn documents(&self) -> usize {
        self.starts.len()
    }

    /// Document `d`'s tokens.
    pub fn document(&self, d: usize) -> &[u32] {
        let start = self.starts[d] as usize;
        let end = self
            .starts
            .get(d + 1)
            .map_or(self.tokens.len(), |&s| s as usize);
        // Each document ends with its separator.
        &self.tokens[start..end - 1]
    }

    /// The occurrences of exactly `pattern` (empty when it does not occur).
    pub fn find(&self, pattern: &[u32]) -> Match {
        Match {
            len: pattern.len(),
            range: if pattern.is_empty() {
                0..0
            } else {
                self.range(pattern)
            },
        }
    }

    /// The range of suffixes that start with `pattern`.
    fn range(&self, pattern: &[u32]) -> Range<usize> {
        let suffix = |i: usize| {
            let at = self.suffixes[i] as usize;
            let end = (at + pattern.len()).min(self.tokens.len());
            &self.tokens[at..end]
        };
        // Suffixes sort by their first len(pattern) tokens here; a shorter one (at the very end)
        // sorts before the pattern when it is a prefix of it.
        let lo = partition_point(self.suffixes.len(), |i| suffix(i) < pattern);
        let hi = partition_point(self.suffixes.len(), |i| suffix(i) <= pattern);
        lo..hi
    }

    /// The longest suffix of `context` that occurs in the index.
    pub fn longest_match(&self, context: &[u32]) -> Match {
        // No match crosses a separator, so none can reach back past one in the context.
        let context = &context[context
            .iter()
            .rposition(|&t| t == SEPARATOR)
            .map_or(0, |i| i + 1)..];
        // If a suffix of length L occurs, so do the shorter ones: binary search on L.
        let (mut found, mut range) = (0, 0..self.suffixes.len());
        let (mut lo, mut hi) = (1, context.len());
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.range(&context[context.len() - mid..]);
            if r.is_empty() {
                hi = mid - 1;
            } else {
                (found, range) = (mid, r);
                lo = mid + 1;
            }
        }
        Match { len: found, range }
    }

    /// The tokens that followed the match's occurrences, most frequent first (the end of a
    /// document is not a token and is left out).
    pub fn continuations(&self, m: &Match) -> Vec<Continuation> {
        let next = |i: usize| self.tokens[self.suffixes[i] as usize + m.len];
        let mut out = Vec::new();
        let mut i = m.range.start;
        while i < m.range.end {
            let token = next(i);
            // Within the range the next tokens are sorted: a run ends where a larger one starts.
            let end = i + partition_point(m.range.end - i, |k| next(i + k) <= token);
            if token != SEPARATOR {
                out.push(Continuation {
                    token,
                    count: end - i,
                });
            }
            i = end;
        }
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.token.cmp(&b.token)));
        out
    }

    /// Up to `limit` places the match occurs, in document order.
    pub fn occurrences(&self, m: &Match, limit: usize) -> Vec<Occurrence> {
        let mut out: Vec<Occurrence> = self.suffixes[m.range.clone()]
            .iter()
            .map(|&at| {
                let document = self.starts.partition_point(|&s| s <= at) - 1;
                Occurrence {
                    document,
                    offset: (at - self.starts[document]) as usize,
                }
            })
            .collect();
        out.sort_unstable();
        out.truncate(limit);
        out
    }
}

impl Index {
    /// The token sequence and suffix array, for writing to disk.
    pub(super) fn parts(&self) -> (&[u32], &[u32]) {
        (&self.tokens, &self.suffixes)
    }

    /// An index from parts that [`Index::parts`] gave, checked enough that no query can fail on
    /// them: as many suffixes as tokens, each position once, and a separator at the end.
    pub(super) fn from_parts(tokens: Vec<u32>, suffixes: Vec<u32>) -> Result<Self, &'static str> {
        if tokens.len() != suffixes.len() || tokens.last().is_some_and(|&t| t != SEPARATOR) {
            return Err("its token and suffix tables disagree");
        }
        let mut seen = vec![false; tokens.len()];
        for &p in &suffixes {
            match seen.get_mut(p as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err("its suffix table is not a permutation"),
            }
        }
        let mut starts = Vec::new();
        let mut at_start = true;
        for (i, &t) in tokens.iter().enumerate() {
            if at_start {
                starts.push(i as u32);
            }
            at_start = t == SEPARATOR;
        }
        Ok(Self {
            tokens,
            suffixes,
            starts,
        })
    }
}

/// The first index in `0..n` where `before` turns false (it must be true, then false).
fn partition_point(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The suffix array of `s` by prefix doubling: each round sorts positions by (rank of their first
/// k tokens, rank of the k after), with two counting sorts, until every rank is distinct.
fn suffix_array(s: &[u32]) -> Vec<u32> {
    let n = s.len();
    if n == 0 {
        return Vec::new();
    }
    // Round 0: rank by the token itself.
    let mut sa: Vec<u32> = (0..n as u32).collect();
    sa.sort_unstable_by_key(|&i| s[i as usize]);
    let mut rank = vec![0u32; n];
    let mut classes = 0u32;
    for w in 0..n {
        if w > 0 && s[sa[w] as usize] != s[sa[w - 1] as usize] {
            classes += 1;
        }
        rank[sa[w] as usize] = classes;
    }
    let mut second = vec![0u32; n];
    let mut next_rank = vec![0u32; n];
    let mut count = vec![0u32; n + 1];
    let mut k = 1;
    while (classes as usize) + 1 < n {
        // Positions ordered by the rank of the k tokens after them: those with nothing after
        // come first, then the others in the current order.
        let mut w = 0;
        for i in n.saturating_sub(k)..n {
            second[w] = i as u32;
            w += 1;
        }
        for &p in &sa {
            if p as usize >= k {
                second[w] = p - k as u32;
                w += 1;
            }
        }
        // A stable counting sort of that order by the rank of the first k tokens.
        count[..=classes as usize].fill(0);
        for &r in &rank {
            count[r as usize + 1] += 1;
        }
        for c in 1..=classes as usize {
            count[c] += count[c - 1];
        }
        for &p in &second {
            let r = rank[p as usize] as usize;
            sa[count[r] as usize] = p;
            count[r] += 1;
        }
        // New ranks: equal pairs share one.
        let pair = |p: u32| {
            let p = p as usize;
            (rank[p], rank.get(p + k).map_or(-1, |&r| i64::from(r)))
        };
        classes = 0;
        next_rank[sa[0] as usize] = 0;
        for w in 1..n {
            if pair(sa[w]) != pair(sa[w - 1]) {
                classes += 1;
            }
            next_rank[sa[w] as usize] = classes;
        }
        std::mem::swap(&mut rank, &mut next_rank);
        k *= 2;
    }
    sa
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The longest suffix of `context` found inside one document, by looking everywhere.
    fn brute_longest(docs: &[Vec<u32>], context: &[u32]) -> usize {
        (1..=context.len())
            .rev()
            .find(|&l| {
                let pat = &context[context.len() - l..];
                docs.iter().any(|d| d.windows(l).any(|w| w == pat))
            })
            .unwrap_or(0)
    }

    fn brute_continuations(docs: &[Vec<u32>], pattern: &[u32]) -> Vec<Continuation> {
        let mut counts = std::collections::BTreeMap::new();
        for d in docs {
            for i in 0..d.len() {
                if d[i..].starts_with(pattern)
                    && let Some(&t) = d.get(i + pattern.len())
                {
                    *counts.entry(t).or_insert(0) += 1;
                }
            }
        }
        let mut out: Vec<Continuation> = counts
            .into_iter()
            .map(|(token, count)| Continuation { token, count })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.token.cmp(&b.token)));
        out
    }

    #[test]
    fn the_suffix_array_sorts_every_suffix() {
        let s = [3, 1, 3, 1, 3, 2, SEPARATOR, 1, 3, SEPARATOR];
        let sa = suffix_array(&s);
        for w in sa.windows(2) {
            assert!(s[w[0] as usize..] < s[w[1] as usize..], "{sa:?}");
        }
        assert_eq!(sa.len(), s.len());
    }

    #[test]
    fn a_long_match_proposes_what_followed_it() {
        let docs = vec![
            vec![10, 11, 12, 13, 14],
            vec![11, 12, 13, 15],
            vec![12, 13, 14],
        ];
        let index = Index::build(&docs);
        let m = index.longest_match(&[99, 10, 11, 12, 13]);
        assert_eq!((m.len, m.count()), (4, 1));
        assert_eq!(
            index.continuations(&m),
            [Continuation {
                token: 14,
                count: 1
            }]
        );
        // Only two tokens match here, three times: 14 twice, 15 once.
        let m = index.longest_match(&[7, 12, 13]);
        assert_eq!((m.len, m.count()), (2, 3));
        let next: Vec<(u32, usize)> = index
            .continuations(&m)
            .iter()
            .map(|c| (c.token, c.count))
            .collect();
        assert_eq!(next, [(14, 2), (15, 1)]);
        assert_eq!(
            index.occurrences(&m, 10),
            [
                Occurrence {
                    document: 0,
                    offset: 2
                },
                Occurrence {
                    document: 1,
                    offset: 1
                },
                Occurrence {
                    document: 2,
                    offset: 0
                },
            ]
        );
        // A match never runs into the next document, and a document's end is no continuation.
        let m = index.longest_match(&[13, 14, 11, 12]);
        assert_eq!(m.len, 2);
        assert!(index.continuations(&index.longest_match(&[15])).is_empty());
        assert_eq!(index.longest_match(&[98]).len, 0);
        assert_eq!(Index::build::<Vec<u32>>(&[]).longest_match(&[1]).len, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn queries_agree_with_a_brute_force_search(
            docs in prop::collection::vec(prop::collection::vec(0u32..4, 0..40), 0..6),
            context in prop::collection::vec(0u32..4, 0..12),
        ) {
            let index = Index::build(&docs);
            let m = index.longest_match(&context);
            prop_assert_eq!(m.len, brute_longest(&docs, &context));
            let pattern = &context[context.len() - m.len..];
            if m.len > 0 {
                prop_assert_eq!(index.continuations(&m), brute_continuations(&docs, pattern));
                let occurrences = index.occurrences(&m, usize::MAX);
                prop_assert_eq!(occurrences.len(), m.count());
                for o in occurrences {
                    prop_assert!(docs[o.document][o.offset..].starts_with(pattern));
                }
            }
        }
    }
}
