//! infill's integration tests, one binary: fixtures and helpers here, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::string_slice)]

mod cli;
mod editor;
mod engine;
mod eval;
mod fuzz;
mod gguf;
mod loading;
mod lsp;
mod memory;
mod scale;
mod score;
mod train;
mod trim;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use infill::model::{LoadOptions, Model, load};

/// The tiny models made by `tests/fixtures/make_fixtures.py` (transformers is the reference).
pub const FAMILIES: [&str; 4] = ["qwen2", "llama", "starcoder2", "gpt_bigcode"];

/// The `infill` binary, offline, and with `RUST_BACKTRACE` set, since errors must stay one line even
/// when a user asked Rust for backtraces; its state and cache directories are under target/. Add arguments, then `.output()` or [`succeeded`].
pub fn infill_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infill"));
    cmd.env("HF_HUB_OFFLINE", "1").env("RUST_BACKTRACE", "1");
    // Its log file and repository memory go under target/, not into the state and cache
    // directories of whoever runs the tests.
    cmd.env("XDG_STATE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// Runs `cmd`, which must succeed (its stderr is the failure message), and returns its output.
pub fn succeeded(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The whole characters at the start of `bytes`: what a proposal may hold of the bytes a model
/// wrote (never a replacement character for a cut or invalid one).
pub fn whole_chars(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap(),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

pub fn open(dir: &Path) -> Model {
    let files = load::locate_dir(dir).unwrap_or_else(|e| panic!("{e}"));
    load::load(&files, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// What transformers computed for a fixture.
pub struct Golden {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    /// `(n, vocab)` logits for every position of `ids`.
    pub logits: Tensor,
    pub prefix: String,
    pub suffix: String,
}

pub fn golden(name: &str) -> Golden {
    let dir = fixture(name);
    let tensors =
        candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<i64> = tensors["input_ids"].to_vec1().unwrap();
    let prompt_len: Vec<i64> = tensors["prompt_len"].to_vec1().unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    Golden {
        ids: ids.into_iter().map(|i| i as u32).collect(),
        prompt_len: prompt_len[0] as usize,
        logits: tensors["logits"].clone(),
        prefix: meta["prefix"].as_str().unwrap().to_string(),
        suffix: meta["suffix"].as_str().unwrap().to_string(),
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `(n, vocab)` logits of one plain forward of our decoder over `ids`: the reference the cached,
/// chunked and windowed paths are checked against.
pub fn logits_all(model: &Model, ids: &[u32]) -> Tensor {
    let llama = model.network.as_llama().expect("our decoder");
    let input = Tensor::new(ids, llama.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    llama
        .forward_all(&input, 0, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

/// Copies a fixture model into a fresh temporary directory, for tests that damage it.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}
