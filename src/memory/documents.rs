//! The files a memory knows, kept up to date without rebuilding its index.
//!
//! A suffix array cannot take an edit in place, so the files are held in layers, as a log-structured
//! store holds records: a base index built once (or loaded from disk), an index of the files that
//! changed since (their current tokens), and an index of the base's copies of those files. Counts
//! are additive, so any pattern occurs `base + added - removed` times among the current files, and
//! what followed it likewise: the answers are exactly those of an index rebuilt from scratch. An
//! edit rebuilds only the two small layers; [`Documents::compact`] folds them into a new base once
//! they grow.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Continuation, Index};

/// A file to index: where it is, a hash of its text (to notice when it changes), its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub path: PathBuf,
    pub hash: u64,
    pub tokens: Vec<u32>,
}

/// The base layer: an index and the files it was built from, in its document order.
#[derive(Debug, Default)]
pub(super) struct Base {
    pub(super) index: Index,
    pub(super) paths: Vec<PathBuf>,
    pub(super) hashes: Vec<u64>,
    by_path: HashMap<PathBuf, usize>,
}

impl Base {
    pub(super) fn new(index: Index, paths: Vec<PathBuf>, hashes: Vec<u64>) -> Self {
        let by_path = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        Self {
            index,
            paths,
            hashes,
            by_path,
        }
    }
}

/// A changed file's text now: its content hash and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub hash: u64,
    pub tokens: Arc<[u32]>,
}

/// What a file is now, where it differs from the base: its text, or `None` where it is gone.
pub type Change = Option<Current>;

/// The current files: a base and the changes on top of it.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    base: Arc<Base>,
    changes: BTreeMap<PathBuf, Change>,
    /// The changed files' current tokens, in the order of `changes`.
    added: Arc<Index>,
    added_paths: Arc<[PathBuf]>,
    /// The base's copies of the changed files.
    removed: Arc<Index>,
}

/// Where a sequence of tokens occurs: a file and the token offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub offset: usize,
}

impl Documents {
    /// Indexes `documents` (a path given twice keeps its last copy).
    pub fn build(documents: Vec<Document>) -> Self {
        let mut by_path: BTreeMap<PathBuf, (u64, Vec<u32>)> = BTreeMap::new();
        for d in documents {
            by_path.insert(d.path, (d.hash, d.tokens));
        }
        let tokens: Vec<&[u32]> = by_path.values().map(|(_, t)| t.as_slice()).collect();
        let index = Index::build(&tokens);
        let (paths, hashes) = by_path.iter().map(|(p, (h, _))| (p.clone(), *h)).unzip();
        Self::from_base(Base::new(index, paths, hashes))
    }

    pub(super) fn from_base(base: Base) -> Self {
        Self {
            base: Arc::new(base),
            ..Self::default()
        }
    }

    pub(super) fn base(&self) -> &Base {
        &self.base
    }

    /// Unnamed documents (for tests and benchmarks): `0`, `1`, ... with no hash.
    pub fn unnamed<D: AsRef<[u32]>>(documents: &[D]) -> Self {
        Self::build(
            documents
                .iter()
                .enumerate()
                .map(|(i, d)| Document {
                    path: PathBuf::from(i.to_string()),
                    hash: 0,
                    tokens: d.as_ref().to_vec(),
                })
                .collect(),
        )
    }

    /// The documents with `changes` applied: each path's new tokens, or `None` where the file is
    /// gone (or must not count, as the file being completed must not). Only the changed files are
    /// indexed again.
    pub fn with_changes(&self, changes: impl IntoIterator<Item = (PathBuf, Change)>) -> Self {
        let mut all = self.changes.clone();
        for (path, change) in changes {
            let base = self
                .base
                .by_path
                .get(&path)
                .map(|&d| self.base.index.document(d));
            match (&change, base) {
                // Back to what the base holds: no change at all.
                (Some(now), Some(base)) if *now.tokens == *base => {
                    all.remove(&path);
                }
                // Gone, and never in the base.
                (None, None) => {
                    all.remove(&path);
                }
                _ => {
                    all.insert(path, change);
                }
            }
        }
        let added_paths: Vec<PathBuf> = all
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        let added: Vec<&[u32]> = all
            .values()
            .filter_map(|c| c.as_ref().map(|c| &*c.tokens))
            .collect();
        let removed: Vec<&[u32]> = all
            .keys()
            .filter_map(|p| self.base.by_path.get(p))
            .map(|&d| self.base.index.document(d))
            .collect();
        Self {
            base: Arc::clone(&self.base),
            added: Arc::new(Index::build(&added)),
            added_paths: added_paths.into(),
            removed: Arc::new(Index::build(&removed)),
            changes: all,
        }
    }

    /// The documents without `path` (its own text must not predict itself).
    pub fn without(&self, path: &Path) -> Self {
        if !self.contains(path) {
            return self.clone();
        }
        self.with_changes([(path.to_path_buf(), None)])
    }

    /// Whether `path` is among the current documents.
    pub fn contains(&self, path: &Path) -> bool {
        match self.changes.get(path) {
            Some(change) => change.is_some(),
            None => self.base.by_path.contains_key(path),
        }
    }

    /// Tokens held by changes: when they are a large share of the base, [`Documents::compact`].
    pub fn changed_tokens(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// One base index of the current documents, with no changes on top.
    pub fn compact(&self) -> Self {
        let mut documents: Vec<Document> = self
            .base
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| !self.changes.contains_key(*p))
            .map(|(d, p)| Document {
                path: p.clone(),
                hash: self.base.hashes[d],
                tokens: self.base.index.document(d).to_vec(),
            })
            .collect();
        documents.extend(self.changes.iter().filter_map(|(p, c)| {
            c.as_ref().map(|c| Document {
                path: p.clone(),
                hash: c.hash,
                tokens: c.tokens.to_vec(),
            })
        }));
        Self::build(documents)
    }

    /// Current files.
    pub fn files(&self) -> usize {
        self.base.paths.len() + self.added.documents() - self.removed.documents()
    }

    /// Current tokens (each file's end counted as one).
    pub fn len(&self) -> usize {
        self.base.index.len() + self.added.len() - self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the layers hold.
    pub fn heap_bytes(&self) -> usize {
        self.base.index.heap_bytes() + self.added.heap_bytes() + self.removed.heap_bytes()
    }

    /// How many times `pattern` occurs among the current files.
    pub fn count(&self, pattern: &[u32]) -> usize {
        (self.base.index.find(pattern).count() + self.added.find(pattern).count())
            .saturating_sub(self.removed.find(pattern).count())
    }

    /// The longest suffix of `context` that occurs among the current files, and the tokens that
    /// followed it there, most frequent first (the longest match may have none, at a file's end).
    pub fn longest_match(&self, context: &[u32]) -> (usize, Vec<Continuation>) {
        let len = if self.changes.is_empty() {
            self.base.index.longest_match(context).len
        } else {
            // Counts never grow as a pattern does, so the longest one that occurs is found by
            // binary search on its length.
            let (mut lo, mut hi, mut found) = (1, context.len(), 0);
            while lo <= hi {
                let mid = lo + (hi - lo) / 2;
                if self.count(&context[context.len() - mid..]) > 0 {
                    found = mid;
                    lo = mid + 1;
                } else {
                    hi = mid - 1;
                }
            }
            found
        };
        if len == 0 {
            return (0, Vec::new());
        }
        let pattern = &context[context.len() - len..];
        let base = self
            .base
            .index
            .continuations(&self.base.index.find(pattern));
        if self.changes.is_empty() {
            return (len, base);
        }
        let mut counts: BTreeMap<u32, isize> = BTreeMap::new();
        let layers = [(&*self.added, 1), (&*self.removed, -1)];
        let changed = layers.iter().flat_map(|&(index, sign)| {
            index
                .continuations(&index.find(pattern))
                .into_iter()
                .map(move |c| (c, sign))
        });
        for (c, sign) in base.into_iter().map(|c| (c, 1)).chain(changed) {
            *counts.entry(c.token).or_insert(0) += sign * c.count as isize;
        }
        let mut out: Vec<Continuation> = counts
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(token, count)| Continuation {
                token,
                count: count as usize,
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.token.cmp(&b.token)));
        (len, out)
    }

    /// A place among the current files where `pattern` occurs (a changed file's current text
    /// first, then the base in path order).
    pub fn locate(&self, pattern: &[u32]) -> Option<Location> {
        self.locations(pattern, 1).pop()
    }

    /// Up to `limit` places among the current files where `pattern` occurs (changed files'
    /// current text first, then the base in path order).
    pub fn locations(&self, pattern: &[u32], limit: usize) -> Vec<Location> {
        let added = self.added.find(pattern);
        let mut out: Vec<Location> = self
            .added
            .occurrences(&added, limit)
            .into_iter()
            .map(|o| Location {
                path: self.added_paths[o.document].clone(),
                offset: o.offset,
            })
            .collect();
        let base = self.base.index.find(pattern);
        // Occurrences in changed files are skipped, so more may be needed than are kept; a
        // pattern worth locating is long and occurs in few places.
        let more = self
            .base
            .index
            .occurrences(&base, usize::MAX)
            .into_iter()
            .filter(|o| !self.changes.contains_key(&self.base.paths[o.document]))
            .map(|o| Location {
                path: self.base.paths[o.document].clone(),
                offset: o.offset,
            });
        out.extend(more.take(limit.saturating_sub(out.len())));
        out
    }

    /// The current tokens of `path`.
    pub fn tokens(&self, path: &Path) -> Option<&[u32]> {
        match self.changes.get(path) {
            Some(change) => change.as_ref().map(|c| &*c.tokens),
            None => self
                .base
                .by_path
                .get(path)
                .map(|&d| self.base.index.document(d)),
        }
    }

    /// Each current file's path and content hash.
    pub fn hashes(&self) -> impl Iterator<Item = (&Path, u64)> {
        let base = self
            .base
            .paths
            .iter()
            .zip(&self.base.hashes)
            .filter(|(p, _)| !self.changes.contains_key(*p))
            .map(|(p, &h)| (p.as_path(), h));
        let changed = self
            .changes
            .iter()
            .filter_map(|(p, c)| c.as_ref().map(|c| (p.as_path(), c.hash)));
        base.chain(changed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn now(tokens: &[u32]) -> Change {
        Some(Current {
            hash: 9,
            tokens: tokens.into(),
        })
    }

    fn doc(name: &str, tokens: &[u32]) -> Document {
        Document {
            path: PathBuf::from(name),
            hash: tokens.len() as u64,
            tokens: tokens.to_vec(),
        }
    }

    #[test]
    fn a_change_is_seen_at_once_and_the_old_text_is_forgotten() {
        let docs = Documents::build(vec![doc("a", &[1, 2, 3]), doc("b", &[1, 2, 4])]);
        assert_eq!(docs.longest_match(&[1, 2]).1.len(), 2);
        let edited = docs.with_changes([(PathBuf::from("b"), now(&[1, 2, 5, 6]))]);
        let next: Vec<u32> = edited
            .longest_match(&[1, 2])
            .1
            .iter()
            .map(|c| c.token)
            .collect();
        assert_eq!(next, [3, 5]);
        assert_eq!(edited.count(&[2, 4]), 0);
        assert_eq!(
            edited.locate(&[5, 6]),
            Some(Location {
                path: "b".into(),
                offset: 2
            })
        );
        assert_eq!((edited.files(), docs.files()), (2, 2));
        // The file being completed does not count; the original is untouched.
        let without = edited.without(Path::new("a"));
        assert_eq!(without.count(&[3]), 0);
        assert_eq!(without.files(), 1);
        assert_eq!(edited.count(&[3]), 1);
        // Saving the original text back is no change at all.
        let back = edited.with_changes([(PathBuf::from("b"), now(&[1, 2, 4]))]);
        assert_eq!(back.changed_tokens(), 0);
        // A new file, and a file that is gone.
        let more = docs.with_changes([
            (PathBuf::from("c"), now(&[7, 8])),
            (PathBuf::from("a"), None),
        ]);
        assert_eq!(
            (more.files(), more.count(&[7, 8]), more.count(&[3])),
            (2, 1, 0)
        );
        assert_eq!(more.tokens(Path::new("c")), Some(&[7, 8][..]));
        assert_eq!(more.tokens(Path::new("a")), None);
        let paths: Vec<&Path> = more.hashes().map(|(p, _)| p).collect();
        assert_eq!(paths, [Path::new("b"), Path::new("c")]);
    }

    /// Files as token lists over a small alphabet, so that patterns repeat.
    fn files() -> impl Strategy<Value = Vec<Vec<u32>>> {
        prop::collection::vec(prop::collection::vec(0u32..4, 0..30), 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Changed layers answer exactly as an index rebuilt from the current files does.
        #[test]
        fn changes_answer_as_a_rebuild_does(
            before in files(),
            after in prop::collection::vec(prop::option::of(prop::collection::vec(0u32..4, 0..30)), 1..8),
            context in prop::collection::vec(0u32..4, 0..10),
        ) {
            let named = |i: usize| PathBuf::from(format!("f{i}"));
            let docs = Documents::build(
                before.iter().enumerate().map(|(i, t)| Document { path: named(i), hash: 0, tokens: t.clone() }).collect(),
            );
            let changed = docs.with_changes(
                after.iter().enumerate().map(|(i, t)| (named(i), t.as_deref().and_then(now))),
            );
            // The files as they are now, indexed from scratch.
            let mut now: BTreeMap<PathBuf, Vec<u32>> =
                before.iter().enumerate().map(|(i, t)| (named(i), t.clone())).collect();
            for (i, t) in after.iter().enumerate() {
                match t {
                    Some(t) => { now.insert(named(i), t.clone()); }
                    None => { now.remove(&named(i)); }
                }
            }
            let rebuilt = Documents::build(
                now.iter().map(|(p, t)| Document { path: p.clone(), hash: 0, tokens: t.clone() }).collect(),
            );
            prop_assert_eq!(changed.longest_match(&context), rebuilt.longest_match(&context));
            prop_assert_eq!(changed.files(), now.len());
            prop_assert_eq!(changed.len(), rebuilt.len());
            let compacted = changed.compact();
            prop_assert_eq!(compacted.changed_tokens(), 0);
            prop_assert_eq!(compacted.longest_match(&context), rebuilt.longest_match(&context));
            let (len, _) = changed.longest_match(&context);
            if len > 0 {
                let pattern = &context[context.len() - len..];
                let at = changed.locate(pattern).unwrap();
                prop_assert!(now[&at.path][at.offset..].starts_with(pattern));
            }
        }
    }
}
