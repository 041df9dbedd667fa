//! The repository index: build time, bytes per token and lookup time over real code.
//!
//!     INFILL_BENCH_REPOS=~/.cargo/registry/src/index.crates.io-xxxx cargo bench --bench memory
//!
//! `INFILL_BENCH_REPOS` (paths separated by `:`, default this repository) are walked with the
//! training corpus's walk and filters until `INFILL_BENCH_LINES` lines (200,000) are taken, then
//! tokenized with the built-in model's tokenizer (on all cores) and indexed. Lookups: 2,000
//! contexts of 64 tokens ending at random places of the indexed files, each a longest match and
//! its continuations. Figures are printed, never asserted.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod machine;

use machine::{cpu, percentile};

use std::path::PathBuf;
use std::time::Instant;

use infill::memory::Index;
use infill::model::{LoadOptions, Model, ModelSource};
use infill::rng::Rng;
use infill::train::corpus::{self, Options};
use rayon::prelude::*;

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
    let files: Vec<&str> = corpus
        .files
        .iter()
        .take_while(|f| {
            let more = lines < max_lines;
            lines += f.text.lines().count();
            more
        })
        .map(|f| f.text.as_str())
        .collect();
    let walk_s = started.elapsed().as_secs_f64();
    let model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default())
        .expect("the built-in model");
    let started = Instant::now();
    let documents: Vec<Vec<u32>> = files
        .par_iter()
        .map(|text| model.tokenizer.encode(text).unwrap_or_default())
        .collect();
    let tokenize_s = started.elapsed().as_secs_f64();
    let tokens: usize = documents.iter().map(Vec::len).sum();
    let started = Instant::now();
    let index = Index::build(&documents);
    let build_s = started.elapsed().as_secs_f64();

    let mut rng = Rng::new(7);
    let mut lookup_us = Vec::new();
    let candidates: Vec<&Vec<u32>> = documents.iter().filter(|d| d.len() > 64).collect();
    for _ in 0..2000 {
        let d = candidates[(rng.next_u64() % candidates.len() as u64) as usize];
        let end = 64 + (rng.next_u64() % (d.len() - 64) as u64) as usize;
        let context = &d[end - 64..end];
        let started = Instant::now();
        let m = index.longest_match(context);
        let next = index.continuations(&m);
        lookup_us.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(next);
    }
    println!("cpu: {}", cpu());
    println!(
        "{} files, {lines} lines, {tokens} tokens (walk {walk_s:.1} s, tokenize {tokenize_s:.2} s)",
        files.len()
    );
    println!(
        "build: {build_s:.2} s ({:.2} s per 100k lines), {:.2} bytes per token",
        build_s * 100_000.0 / lines.max(1) as f64,
        index.heap_bytes() as f64 / tokens.max(1) as f64
    );
    println!(
        "lookup (longest match of 64 tokens + continuations): p50 {:.1} us, p99 {:.1} us",
        percentile(&mut lookup_us, 0.5),
        percentile(&mut lookup_us, 0.99)
    );
}
