//! Typing benchmark: a line typed one character at a time in a PSM prompt, each keystroke's time
//! to the first proposed token, with the suffix's keys and values reused out of place (the
//! default) and with every prompt computed exactly. (A keystroke that only extends the prefix's
//! last token costs little either way: token healing drops that token from the prompt.) The window is 1,100 tokens of prefix and 400 of suffix from this repository's own
//! source, as an editor holding a larger file sends.
//!
//!     INFILL_BENCH_MODEL=path/to/model-or.gguf cargo bench --bench typing
//!
//! Without `INFILL_BENCH_MODEL` the built-in model runs (its context is shorter: the window is
//! scaled to it). `INFILL_BENCH_ROUNDS` sets the rounds (5). The two ways alternate within each
//! round; figures are printed, never asserted. `INFILL_BENCH_WINDOW=FILE` also writes the window
//! and the typed text as JSON (`prefix`, `suffix`, `typed`), which `benches/llama_server_typing.py`
//! replays against llama-server.

#![allow(clippy::string_slice, clippy::expect_used)]

use std::time::Instant;

use infill::complete::{self, Settings};
use infill::model::generate::{Flow, Limits};
use infill::model::{FimOrder, LoadOptions, Model, ModelSource};
use infill::text::Cursor;

fn repo_source() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    ["src/tui/app.rs", "src/model/network.rs", "src/complete.rs"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("{root}/{f}")).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A byte offset at a line start with about `want` tokens before it.
fn cursor_after_tokens(model: &Model, text: &str, want: usize) -> usize {
    let mut at = 0;
    for (i, _) in text.match_indices('\n') {
        let n = model
            .tokenizer
            .encode(&text[..i + 1])
            .map_or(0, |t| t.len());
        if n > want {
            break;
        }
        at = i + 1;
    }
    at
}

fn first_token_ms(model: &mut Model, text: &str, byte: usize, settings: &Settings) -> (f64, usize) {
    let cursor = Cursor::from_byte(text, byte).expect("a cursor in the text");
    let started = Instant::now();
    let c = complete::complete(model, text, cursor, None, settings, None, |_, _| {
        Flow::Continue
    })
    .expect("a completion");
    let t = &c.generation.timings;
    if std::env::var_os("INFILL_BENCH_VERBOSE").is_some() {
        println!(
            "  {} prompt tokens, {} reused ({} out of place)",
            t.prompt_tokens, t.reused_tokens, t.shifted_tokens
        );
    }
    (started.elapsed().as_secs_f64() * 1e3, t.shifted_tokens)
}

/// Typed one character at a time at the cursor, each keystroke a request.
const TYPED: &str = "let total = values.len();";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let spec = std::env::var("INFILL_BENCH_MODEL").ok();
    let source = ModelSource::parse(spec.as_deref()).expect("INFILL_BENCH_MODEL names a model");
    let mut model = Model::open(&source, false, &LoadOptions::default()).expect("the model loads");
    let rounds: usize = std::env::var("INFILL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let context = model.network.context_length().min(1600);
    let (prefix_tokens, suffix_tokens) = (context * 11 / 16, context / 4);
    let text = repo_source();
    let byte = cursor_after_tokens(&model, &text, prefix_tokens);
    let suffix_end = byte + cursor_after_tokens(&model, &text[byte..], suffix_tokens);
    let text = &text[..suffix_end];
    if let Ok(path) = std::env::var("INFILL_BENCH_WINDOW") {
        let window = serde_json::json!({
            "prefix": &text[..byte],
            "suffix": &text[byte..],
            "typed": TYPED,
        });
        std::fs::write(&path, window.to_string()).expect("the window file is written");
    }
    let settings = Settings {
        limits: Limits {
            max_tokens: 1,
            ..Limits::default()
        },
        order: Some(FimOrder::Psm),
        context_tokens: Some(context),
        trim: false,
        ..Settings::default()
    };
    println!(
        "model {}: window {context} tokens, cursor after {prefix_tokens} tokens of prefix with {suffix_tokens} of suffix; typing {TYPED:?}; {rounds} rounds",
        model.name
    );
    // (cold prompt ms, per-keystroke ms, tokens reused out of place) for each way.
    let mut figures = [
        (Vec::new(), Vec::new(), 0usize),
        (Vec::new(), Vec::new(), 0usize),
    ];
    for _ in 0..rounds {
        for (way, (cold, typing, shifted)) in figures.iter_mut().enumerate() {
            model.network.set_shift_reuse(way == 0);
            model.network.reset().expect("a reset");
            let mut doc = text.to_string();
            let mut at = byte;
            cold.push(first_token_ms(&mut model, &doc, at, &settings).0);
            for c in TYPED.chars() {
                doc.insert(at, c);
                at += c.len_utf8();
                let (ms, s) = first_token_ms(&mut model, &doc, at, &settings);
                typing.push(ms);
                *shifted += s;
            }
        }
    }
    for (way, (cold, typing, shifted)) in figures.iter_mut().enumerate() {
        let n = typing.len();
        let mean = typing.iter().sum::<f64>() / n as f64;
        typing.sort_by(f64::total_cmp);
        println!(
            "{:<20} cold prompt {:>6.0} ms; a keystroke to the first token: p50 {:>5.0} ms, p90 {:>5.0} ms, mean {:>5.0} ms ({} tokens reused out of place per keystroke)",
            if way == 0 {
                "reused out of place"
            } else {
                "exact"
            },
            median(cold),
            typing[n / 2],
            typing[n * 9 / 10],
            mean,
            *shifted / n
        );
    }
}
