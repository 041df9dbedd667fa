//! Memory kept on disk between runs, so that reopening a repository is instant.
//!
//! A store is a folder in infill's cache for one set of repository roots. It holds the index
//! (`index.bin`: each file's path and content hash, then the token and suffix tables) under the
//! tokenizer that made it, and the weights fitted for each model (`weights.json`). Nothing in it is
//! needed: a store that is missing, truncated, corrupt or for another tokenizer is rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rayon::prelude::*;

use super::documents::Base;
use super::{Change, Documents, File, Index, Weights};
use crate::hash::fnv1a;
use crate::model::{Model, Tokenizer};

const MAGIC: &[u8; 14] = b"infill-memory\n";
const VERSION: u32 = 1;

/// A repository's memory on disk.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A stable key for a tokenizer: the hash of its JSON.
pub(super) fn tokenizer_key(tokenizer: &Tokenizer) -> u64 {
    fnv1a(tokenizer.to_json().unwrap_or_default().as_bytes())
}

/// A key for the model the weights are fitted to: its tokenizer and the probabilities it gives a
/// short probe text, so a model retrained in place gets weights of its own.
pub(super) fn model_key(model: &mut Model, tokenizer: u64) -> u64 {
    const PROBE: &str = "def area(width, height):\n    return width * height\n";
    let probs: String = super::probe(model, PROBE)
        .map(|probs| probs.iter().map(|p| format!("{:.2},", p.ln())).collect())
        .unwrap_or_else(|_| model.name.clone());
    fnv1a(format!("{tokenizer:016x}{probs}").as_bytes())
}

/// What to change in `stored` to make it hold `files`: the files that are new or changed (by
/// content hash), tokenized, and the stored files that are gone. Also how many were unchanged.
pub(super) fn changes(
    stored: &Documents,
    files: &[File],
    tokenizer: &Tokenizer,
) -> (Vec<(PathBuf, Change)>, usize) {
    let known: HashMap<&Path, u64> = stored.hashes().collect();
    let changed: Vec<&File> = files
        .iter()
        .filter(|f| known.get(f.path) != Some(&fnv1a(f.text.as_bytes())))
        .collect();
    let current: std::collections::HashSet<&Path> = files.iter().map(|f| f.path).collect();
    let mut out: Vec<(PathBuf, Change)> = changed
        .par_iter()
        .map(|f| super::change(tokenizer, f.path, f.text))
        .collect();
    out.extend(
        known
            .keys()
            .filter(|p| !current.contains(*p))
            .map(|p| (p.to_path_buf(), None)),
    );
    (out, files.len() - changed.len())
}

impl Store {
    /// The store for `roots` under `cache` (infill's cache folder), named by a hash of their
    /// absolute paths and the first one's name, to help a person who looks in the folder.
    pub fn new(cache: &Path, roots: &[PathBuf]) -> Self {
        let mut absolute: Vec<PathBuf> = roots
            .iter()
            .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
            .collect();
        absolute.sort();
        let key: Vec<u8> = absolute
            .iter()
            .flat_map(|p| {
                let mut b = p.as_os_str().as_encoded_bytes().to_vec();
                b.push(0);
                b
            })
            .collect();
        let name = absolute
            .first()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            dir: cache
                .join("memory")
                .join(format!("{:016x}-{name}", fnv1a(&key))),
        }
    }

    /// infill's cache folder: `$XDG_CACHE_HOME/infill` or `~/.cache/infill`.
    pub fn cache_dir() -> Option<PathBuf> {
        crate::files::xdg_dir("XDG_CACHE_HOME", ".cache")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.bin")
    }

    fn weights_path(&self) -> PathBuf {
        self.dir.join("weights.json")
    }

    /// Writes `documents` (compacted first if they have changes) as made by `tokenizer`.
    pub fn save(&self, documents: &Documents, tokenizer: u64) -> anyhow::Result<()> {
        let compacted;
        let documents = if documents.changed_tokens() > 0 {
            compacted = documents.compact();
            &compacted
        } else {
            documents
        };
        let base = documents.base();
        let (tokens, suffixes) = base.index.parts();
        let mut out = Vec::with_capacity(64 + 8 * tokens.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&tokenizer.to_le_bytes());
        out.extend_from_slice(&(base.paths.len() as u64).to_le_bytes());
        for (path, hash) in base.paths.iter().zip(&base.hashes) {
            let path = path.as_os_str().as_encoded_bytes();
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&(path.len() as u64).to_le_bytes());
            out.extend_from_slice(path);
        }
        out.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        for table in [tokens, suffixes] {
            for t in table {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        out.extend_from_slice(&checksum(tokens, suffixes).to_le_bytes());
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        crate::files::write_atomic(&self.index_path(), &out)
    }

    /// The stored documents, if there are any for `tokenizer`.
    pub fn load(&self, tokenizer: u64) -> anyhow::Result<Option<Documents>> {
        let path = self.index_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let bad = |why: &str| anyhow::anyhow!("{}: {why}", path.display());
        let mut r = Reader { bytes: &bytes };
        if r.take(MAGIC.len()) != Some(MAGIC) {
            return Err(bad("not an infill memory file"));
        }
        if r.u32() != Some(VERSION) {
            return Err(bad("written by another version of infill"));
        }
        if r.u64().ok_or_else(|| bad("truncated"))? != tokenizer {
            return Ok(None);
        }
        let files = r.u64().ok_or_else(|| bad("truncated"))? as usize;
        let (mut paths, mut hashes) = (Vec::new(), Vec::new());
        for _ in 0..files {
            let hash = r.u64().ok_or_else(|| bad("truncated"))?;
            let len = r.u64().ok_or_else(|| bad("truncated"))? as usize;
            let path = r.take(len).ok_or_else(|| bad("truncated"))?;
            let path = std::str::from_utf8(path).map_err(|_| bad("a path is not UTF-8"))?;
            paths.push(PathBuf::from(path));
            hashes.push(hash);
        }
        let n = r.u64().ok_or_else(|| bad("truncated"))? as usize;
        let tokens = r.u32s(n).ok_or_else(|| bad("truncated"))?;
        let suffixes = r.u32s(n).ok_or_else(|| bad("truncated"))?;
        if r.u64() != Some(checksum(&tokens, &suffixes)) || !r.bytes.is_empty() {
            return Err(bad("corrupt (its checksum does not match)"));
        }
        let index = Index::from_parts(tokens, suffixes).map_err(bad)?;
        if index.documents() != paths.len() {
            return Err(bad("its file table does not match its index"));
        }
        Ok(Some(Documents::from_base(Base::new(index, paths, hashes))))
    }

    /// The weights stored for the model `model` ([`model_key`]).
    pub fn weights(&self, model: u64) -> Option<Weights> {
        let text = std::fs::read_to_string(self.weights_path()).ok()?;
        let all: BTreeMap<String, Vec<f32>> = serde_json::from_str(&text).ok()?;
        Weights::from_slice(all.get(&format!("{model:016x}"))?)
    }

    /// Stores `weights` for the model `model`, beside those of other models.
    pub fn save_weights(&self, model: u64, weights: &Weights) -> anyhow::Result<()> {
        let mut all: BTreeMap<String, Vec<f32>> = std::fs::read_to_string(self.weights_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        all.insert(format!("{model:016x}"), weights.by_length().to_vec());
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        crate::files::write_atomic(
            &self.weights_path(),
            serde_json::to_string(&all)?.as_bytes(),
        )
    }
}

/// A word-at-a-time FNV-1a over both tables: cheap enough for hundreds of MB.
fn checksum(tokens: &[u32], suffixes: &[u32]) -> u64 {
    tokens
        .iter()
        .chain(suffixes)
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &w| {
            (h ^ u64::from(w)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Little-endian fields from the front of a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32s(&mut self, n: usize) -> Option<Vec<u32>> {
        let bytes = self.take(n.checked_mul(4)?)?;
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::memory::Document;

    fn sample() -> Documents {
        Documents::build(vec![
            Document {
                path: "/repo/a.py".into(),
                hash: 1,
                tokens: vec![1, 2, 3, 4],
            },
            Document {
                path: "/repo/b.py".into(),
                hash: 2,
                tokens: vec![2, 3, 5],
            },
        ])
    }

    #[test]
    fn a_stored_index_answers_as_the_one_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), &[PathBuf::from("/repo")]);
        assert!(store.load(7).unwrap().is_none(), "nothing stored yet");
        let docs = sample();
        store.save(&docs, 7).unwrap();
        let loaded = store.load(7).unwrap().unwrap();
        for context in [&[1u32, 2, 3][..], &[2, 3], &[9, 3], &[5]] {
            assert_eq!(loaded.longest_match(context), docs.longest_match(context));
        }
        let hashes: Vec<(&Path, u64)> = loaded.hashes().collect();
        assert_eq!(
            hashes,
            [(Path::new("/repo/a.py"), 1), (Path::new("/repo/b.py"), 2)]
        );
        // Another tokenizer's index is not used.
        assert!(store.load(8).unwrap().is_none());
        // Changes are folded in before writing.
        let edited = docs.with_changes([(PathBuf::from("/repo/b.py"), None)]);
        store.save(&edited, 7).unwrap();
        assert_eq!(store.load(7).unwrap().unwrap().files(), 1);
    }

    #[test]
    fn a_damaged_store_is_an_error_never_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), &[PathBuf::from("/repo")]);
        store.save(&sample(), 7).unwrap();
        let path = store.index_path();
        let good = std::fs::read(&path).unwrap();
        // Cut anywhere, or with one byte of the tables changed.
        for cut in [3, 20, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(store.load(7).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        let at = good.len() - 12;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = store.load(7).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        std::fs::write(&path, b"hello").unwrap();
        assert!(store.load(7).is_err());
    }

    #[test]
    fn weights_are_kept_per_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), &[PathBuf::from("/repo")]);
        assert_eq!(store.weights(1), None);
        store.save_weights(1, &Weights::constant(0.25)).unwrap();
        store.save_weights(2, &Weights::constant(0.5)).unwrap();
        assert_eq!(store.weights(1), Some(Weights::constant(0.25)));
        assert_eq!(store.weights(2), Some(Weights::constant(0.5)));
        // Two sets of roots never share a store.
        let other = Store::new(dir.path(), &[PathBuf::from("/elsewhere/repo")]);
        assert_ne!(other.dir(), store.dir());
        assert_eq!(other.weights(1), None);
    }

    #[test]
    fn reopening_tokenizes_only_what_changed() {
        let tokenizer = crate::train::fim::tests::tokenizer();
        let stored = crate::memory::documents(
            &tokenizer,
            &[
                File {
                    path: Path::new("/r/a.py"),
                    text: "x = 1\n",
                },
                File {
                    path: Path::new("/r/b.py"),
                    text: "y = 2\n",
                },
            ],
        );
        let now = [
            File {
                path: Path::new("/r/a.py"),
                text: "x = 1\n",
            },
            File {
                path: Path::new("/r/c.py"),
                text: "z = 3\n",
            },
        ];
        let (changes, reused) = changes(&stored, &now, &tokenizer);
        assert_eq!(reused, 1);
        let mut paths: Vec<(String, bool)> = changes
            .iter()
            .map(|(p, c)| (p.display().to_string(), c.is_some()))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [("/r/b.py".to_owned(), false), ("/r/c.py".to_owned(), true)]
        );
    }
}
