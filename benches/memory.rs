//! The repository index: build time, bytes per token, lookup time, and what keeping it up to date
//! costs (an edit, the view without the file being completed, storing and reopening).
//!
//!     INFILL_BENCH_REPOS=~/.cargo/registry/src/index.crates.io-xxxx cargo bench --bench memory
//!
//! `INFILL_BENCH_REPOS` (paths separated by `:`, default this repository) are walked with the
//! training corpus's walk and filters until `INFILL_BENCH_LINES` lines (200,000) are taken, then
//! tokenized with the built-in model's tokenizer (on all cores) and indexed. Lookups: 2,000
//! contexts of 64 tokens ending at random places of the indexed files, each a longest match and
//! its continuations, on the base alone and with one file edited and another left out (each
//! going first half the time). An edit is
//! a line added to a file of median size: tokenizing it and re-indexing the changed layers. The
//! store is written to and read from a temporary folder. Figures are printed, never asserted.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod machine;

use machine::{cpu, percentile};

use std::path::{Path, PathBuf};
use std::time::Instant;

use infill::memory::{self, Documents, Store};
use infill::model::{LoadOptions, Model, ModelSource};
use infill::rng::Rng;
use infill::train::corpus::{self, Options};

fn main() {
    let repos: Vec<PathBuf> = std::env::var("INFILL_BENCH_REPOS")
        .map(|s| s.split(':').map(PathBuf::from).collect())
        .unwrap_or_else(|_| vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))]);
    let max_lines: usize = std::env::var("INFILL_BENCH_LINES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let started = Instant::now();
    let corpus = corpus::collect(&repos, Options::default()).expect("a corpus");
    let mut lines = 0;
    let taken: Vec<(PathBuf, &str)> = corpus
        .files
        .iter()
        .take_while(|f| {
            let more = lines < max_lines;
            lines += f.text.lines().count();
            more
        })
        .map(|f| (PathBuf::from("/bench").join(&f.path), f.text.as_str()))
        .collect();
    let files: Vec<memory::File> = taken
        .iter()
        .map(|(path, text)| memory::File { path, text })
        .collect();
    let walk_s = started.elapsed().as_secs_f64();
    let model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default())
        .expect("the built-in model");
    let started = Instant::now();
    let tokenized = memory::tokenize(&model.tokenizer, files.iter().map(|f| f.text));
    let tokenize_s = started.elapsed().as_secs_f64();
    let tokens: usize = tokenized.iter().map(Vec::len).sum();
    let documents: Vec<memory::Document> = files
        .iter()
        .zip(&tokenized)
        .map(|(f, t)| memory::Document {
            path: f.path.to_path_buf(),
            hash: infill::hash::fnv1a(f.text.as_bytes()),
            tokens: t.clone(),
        })
        .collect();
    let started = Instant::now();
    let base = Documents::build(documents);
    let build_s = started.elapsed().as_secs_f64();

    // An edit: a line added to a file of median size, then the view without another file.
    let mut by_size: Vec<&memory::File> = files.iter().collect();
    by_size.sort_by_key(|f| f.text.len());
    let edited = by_size[by_size.len() / 2];
    let left_out = by_size[by_size.len() / 2 + 1];
    let new_text = format!("{}\nlet added = edited_line(1, 2);\n", edited.text);
    let started = Instant::now();
    let change = memory::change(&model.tokenizer, edited.path, &new_text);
    let edit_tokenize_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let changed = base.with_changes([change]);
    let edit_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let view = changed.without(left_out.path);
    let view_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut rng = Rng::new(7);
    let (mut base_us, mut view_us) = (Vec::new(), Vec::new());
    let candidates: Vec<&Vec<u32>> = tokenized.iter().filter(|d| d.len() > 64).collect();
    for i in 0..2000 {
        let d = candidates[(rng.next_u64() % candidates.len() as u64) as usize];
        let end = 64 + (rng.next_u64() % (d.len() - 64) as u64) as usize;
        let context = &d[end - 64..end];
        // Each goes first half the time: the second finds the first's pages in the cache.
        let mut both = [(&base, &mut base_us), (&view, &mut view_us)];
        if i % 2 == 1 {
            both.reverse();
        }
        for (documents, times) in both {
            let started = Instant::now();
            let found = documents.longest_match(context);
            times.push(started.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(found);
        }
    }

    let cache = tempfile::tempdir().unwrap();
    let store = Store::new(cache.path(), &[PathBuf::from("/bench")]);
    let key = memory::tokenizer_key(&model.tokenizer);
    let started = Instant::now();
    store.save(&base, key).unwrap();
    let save_s = started.elapsed().as_secs_f64();
    let stored_bytes = std::fs::metadata(store.dir().join("index.bin"))
        .unwrap()
        .len();
    let started = Instant::now();
    let loaded = store.load(key).unwrap().unwrap();
    let load_s = started.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), base.len());
    let started = Instant::now();
    let compacted = changed.compact();
    let compact_s = started.elapsed().as_secs_f64();
    std::hint::black_box(compacted);

    println!("cpu: {}", cpu());
    println!(
        "{} files, {lines} lines, {tokens} tokens (walk {walk_s:.1} s, tokenize {tokenize_s:.2} s)",
        files.len()
    );
    println!(
        "build: {build_s:.2} s ({:.2} s per 100k lines), {:.2} bytes per token",
        build_s * 100_000.0 / lines.max(1) as f64,
        base.heap_bytes() as f64 / tokens.max(1) as f64
    );
    println!(
        "lookup (longest match of 64 tokens + continuations): p50 {:.1} us, p99 {:.1} us; \
         with one file edited and one left out: p50 {:.1} us, p99 {:.1} us",
        percentile(&mut base_us, 0.5),
        percentile(&mut base_us, 0.99),
        percentile(&mut view_us, 0.5),
        percentile(&mut view_us, 0.99)
    );
    println!(
        "edit of {} ({} lines): tokenize {edit_tokenize_ms:.1} ms + index the changed layers {edit_ms:.1} ms; \
         leave out {}: {view_ms:.1} ms; fold the changes into a new base: {compact_s:.2} s",
        short(edited.path),
        edited.text.lines().count(),
        short(left_out.path),
    );
    println!(
        "store: write {save_s:.2} s, read {load_s:.2} s ({:.1} MB on disk, vs tokenize + build {:.2} s)",
        stored_bytes as f64 / 1e6,
        tokenize_s + build_s
    );
}

fn short(path: &Path) -> String {
    path.strip_prefix("/bench")
        .unwrap_or(path)
        .display()
        .to_string()
}
