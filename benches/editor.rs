//! Editor benchmark: keystroke-to-draw latency, and keystroke-to-first-ghost-token latency with a
//! real model on the worker thread, with and without KV-cache prefix reuse.
//!
//! A recorded typing session (a Python function typed character by character, with a typo fixed by
//! Backspace) is replayed into the real `App` drawing on ratatui's `TestBackend` (120x40):
//! - draw: time from a key event to a finished frame (handle + draw), in `src/tui/app.rs` (Rust,
//!   highlighted) and in a generated 300,000-line Python file; plus the time to open and first draw
//!   a file of about 100 MB;
//! - ghost: after each keystroke the request goes to the worker at once (the debounce, 75 ms by
//!   default, comes on top), and we time until the first non-empty ghost text is drawn, with the
//!   `tiny-python` fixture model; and the worker's time to the first generated token for a random
//!   model of the default model's intended shape (7M parameters, 8 layers), where trimming leaves
//!   nothing to show.
//!
//! - overlay: scoring throughput of a 2,000-line Python file, and the time to refresh the scores
//!   after a one-character edit at five places in its middle and after the next key at each (the
//!   chunks an edit touched are scored again, the rest come from the cache), medians, both models.
//!
//! Run with `cargo bench --bench editor` (`INFILL_BENCH=overlay,forward,ghost` for some sections only).
//! The default model is the built-in one when this build has it, else random weights in its shape.
//! Figures are printed, never asserted.

mod machine;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use infill::model::config::ModelConfig;
use infill::model::llama::{Kernels, Llama};
use infill::model::{Model, Network, Tokenizer};
use infill::syntax::Registry;
use infill::tui::{App, Config, Event, FileInfo};
use infill::worker::{Reply, Worker, WorkerOptions};
use machine::percentile;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// The recorded session: typed at the cursor; `\u{8}` is Backspace.
const SESSION: &str = "def mean(values):\n    total = 0\n    for v in valuse\u{8}\u{8}\u{8}es:\n        total += v\n    return total / len(values)\n";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn key(c: char) -> Event {
    let code = match c {
        '\n' => KeyCode::Enter,
        '\u{8}' => KeyCode::Backspace,
        c => KeyCode::Char(c),
    };
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn app_for(text: &str, path: &Path) -> App {
    let info = FileInfo {
        path: path.to_path_buf(),
        language: Registry::builtin().ok().and_then(|r| r.for_path(path)),
        disk: None,
        recovery: None,
    };
    let mut cfg = Config::parse("", false).unwrap_or_default();
    cfg.completions = true;
    App::new(text, info, cfg, None)
}

/// Keystroke-to-draw in `text` with the cursor at `line`: p50, p99, max in ms.
fn draw_latency(name: &str, text: &str, path: &str, line: usize) {
    let mut app = app_for(text, Path::new(path));
    let Ok(mut term) = Terminal::new(TestBackend::new(120, 40));
    let now = Instant::now();
    app.handle(
        Event::Worker(Reply::Ready {
            model: "bench".into(),
        }),
        now,
    );
    for _ in 0..line {
        app.handle(
            Event::Key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE)),
            now,
        );
    }
    frame(&mut term, &mut app);
    let mut times = Vec::new();
    for round in 0..4 {
        for c in SESSION.chars() {
            let t = Instant::now();
            app.handle(key(c), now);
            let _ = app.take_requests();
            frame(&mut term, &mut app);
            if round > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let n = times.len();
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "| {name} | {n} | {:.3} | {:.3} | {:.3} |",
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
        max
    );
}

/// Replays the session into an app whose requests go to a real worker; returns per-keystroke
/// (ms to the first non-empty ghost text drawn, worker ms to first generated token).
fn ghost_latency(model: Model, reuse: bool) -> (Vec<f64>, Vec<f64>) {
    let (tx, rx) = mpsc::channel();
    let worker = match Worker::spawn(
        Box::new(move || Ok(model)),
        WorkerOptions {
            reuse_cache: reuse,
            ..WorkerOptions::default()
        },
        move |r| {
            let _ = tx.send(r);
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return (Vec::new(), Vec::new());
        }
    };
    let Ok(ready) = rx.recv() else {
        return (Vec::new(), Vec::new());
    };
    let path = Path::new("bench.py");
    let context = "import math\n\n\ndef add(a, b):\n    return a + b\n\n\n".repeat(8);
    let mut app = app_for(&format!("{context}\n"), path);
    let Ok(mut term) = Terminal::new(TestBackend::new(120, 40));
    app.handle(
        Event::Key(KeyEvent::new(KeyCode::End, KeyModifiers::CONTROL)),
        Instant::now(),
    );
    app.handle(Event::Worker(ready), Instant::now());
    let (mut visible, mut first_token) = (Vec::new(), Vec::new());
    for c in SESSION.chars() {
        app.handle(key(c), Instant::now());
        // Skip the debounce: ask now, as if the user had paused after this key.
        app.tick(Instant::now() + Duration::from_secs(1));
        let requests = app.take_requests();
        let Some(id) = requests.last().map(infill::worker::Job::id) else {
            continue;
        };
        let t = Instant::now();
        for r in requests {
            worker.submit(r);
        }
        let mut seen = false;
        while let Ok(reply) = rx.recv_timeout(Duration::from_secs(30)) {
            let finished = match &reply {
                Reply::Done { id: i, proposal } if *i == id => {
                    first_token.push(proposal.first_token_ms);
                    true
                }
                Reply::Failed { id: i, .. } if *i == id => true,
                _ => false,
            };
            app.handle(Event::Worker(reply), Instant::now());
            if !seen && !app.ghost_text().is_empty() {
                frame(&mut term, &mut app);
                visible.push(t.elapsed().as_secs_f64() * 1e3);
                seen = true;
            }
            if finished {
                break;
            }
        }
        // Leave the proposal unaccepted: the next key types over it, as a user would.
        app.handle(
            Event::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            Instant::now(),
        );
    }
    (visible, first_token)
}

fn default_name() -> String {
    if infill::model::embedded::files().is_some() {
        "default model (built in)".into()
    } else {
        "default shape, random".into()
    }
}

fn tiny_python() -> Option<Model> {
    let dir = root().join("tests/fixtures/models/tiny-python");
    let files = infill::model::load::locate_dir(&dir).ok()?;
    infill::model::load::load(&files, &infill::model::LoadOptions::default()).ok()
}

/// The built-in default model, or random weights in its shape when this build has none.
fn default_model() -> Option<Model> {
    if infill::model::embedded::files().is_some() {
        let source = infill::model::ModelSource::Embedded;
        return Model::open(&source, false, &infill::model::LoadOptions::default()).ok();
    }
    default_shape()
}

/// Random weights in the default model's shape (context 512, the length it is trained at), with
/// the tiny model's tokenizer.
fn default_shape() -> Option<Model> {
    let tok_path = root().join("tests/fixtures/models/tiny-python/tokenizer.json");
    let tokenizer = Tokenizer::from_bytes(&std::fs::read(tok_path).ok()?, 4096).ok()?;
    // Exactly the shape `infill train --from-scratch --preset small` trains.
    let cfg = infill::train::Preset::Small.config(4096, 512);
    let varmap = VarMap::new();
    Llama::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        true,
        Kernels::Fused,
    )
    .ok()?;
    let weights: HashMap<_, _> = varmap
        .data()
        .lock()
        .ok()?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let llama = Llama::new(&cfg, vb, true, Kernels::Fused).ok()?;
    Some(Model {
        name: "default-shape (random weights)".into(),
        network: Network::llama(llama),
        tokenizer,
        config: ModelConfig::Llama(cfg),
    })
}

/// Time of one forward over `n` tokens (with logits for all), median of 7: what a chunk costs.
fn forward_costs(name: &str, model: &Model) {
    let Some(llama) = model.network.as_llama() else {
        return;
    };
    let mut row = format!("| {name} |");
    let sizes: Vec<usize> = std::env::var("INFILL_BENCH_TOKENS")
        .ok()
        .map_or(vec![1, 16, 64, 128, 256], |v| {
            v.split(",").filter_map(|x| x.parse().ok()).collect()
        });
    for n in sizes {
        let ids: Vec<u32> = (0..n as u32).map(|i| 10 + i % 200).collect();
        let mut times = Vec::new();
        for _ in 0..std::env::var("INFILL_BENCH_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7)
        {
            let t = Instant::now();
            let ok = candle_core::Tensor::new(ids.as_slice(), llama.device())
                .and_then(|x| x.unsqueeze(0))
                .and_then(|x| llama.forward_all(&x, 0, None))
                .is_ok();
            if !ok {
                return;
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        row.push_str(&format!(" {:.1} ms |", percentile(&mut times, 0.5)));
    }
    println!("{row}");
}

fn overlay(name: &str, model: Model) {
    use infill::model::score::chunked::ChunkScorer;
    let text: String = (0..400)
        .map(|i| format!("def f{i}(a, b):\n    total = a + b * {i}\n    return total\n\n\n"))
        .collect();
    let lines = text.lines().count();
    let mut scorer = ChunkScorer::default();
    let mut tokens = 0;
    let t = Instant::now();
    let Ok(Some(_)) = scorer.score(&model, &text, 5, None, |_, s| tokens += s.len()) else {
        return println!("| {name} | scoring failed |");
    };
    let full = t.elapsed().as_secs_f64();
    // Five places in the middle of the file: a first key there (the context before the edited
    // chunk is not cached yet), then the next key in the same place (it is). Medians reported.
    let (mut first_edit, mut first_whole, mut next_edit, mut next_whole) =
        (vec![], vec![], vec![], vec![]);
    let mut current = text.clone();
    let mut computed = 0;
    for round in 0..5 {
        let middle = current.len() * (3 + round) / 10;
        let Some(at) = current
            .get(middle..)
            .and_then(|t| t.find("a + b"))
            .map(|i| middle + i + 2)
        else {
            continue;
        };
        for (edit_times, whole_times, offset) in [
            (&mut first_edit, &mut first_whole, 0),
            (&mut next_edit, &mut next_whole, 1),
        ] {
            current.insert(at + offset, '-');
            let t = Instant::now();
            let mut edited_at = None;
            let n = scorer
                .score(&model, &current, 5, None, |_, s| {
                    if edited_at.is_none() && s.last().is_some_and(|x| x.end > at) {
                        edited_at = Some(t.elapsed().as_secs_f64() * 1e3);
                    }
                })
                .ok()
                .flatten()
                .unwrap_or(0);
            let whole = t.elapsed().as_secs_f64() * 1e3;
            edit_times.push(edited_at.unwrap_or(whole));
            whole_times.push(whole);
            computed = computed.max(n);
        }
    }
    println!(
        "| {name} | {lines} lines, {tokens} tokens | {:.0} tok/s ({:.2} s) | {:.0} / {:.0} ms | {:.0} / {:.0} ms (up to {computed} tokens scored again) |",
        tokens as f64 / full,
        full,
        percentile(&mut first_edit, 0.5),
        percentile(&mut next_edit, 0.5),
        percentile(&mut first_whole, 0.5),
        percentile(&mut next_whole, 0.5),
    );
}

/// Whether `INFILL_BENCH` (a comma-separated list of draw, overlay, forward, ghost; all when unset) asks
/// for this section.
fn wants(section: &str) -> bool {
    std::env::var("INFILL_BENCH").map_or(true, |v| v.split(',').any(|s| s.trim() == section))
}

fn main() {
    println!("cpu: {}", machine::cpu());
    if wants("draw") {
        draw_section();
    }
    if wants("overlay") {
        overlay_section();
    }
    if wants("forward") {
        println!("\n## one forward over n tokens (median of 7)\n");
        println!("| model | 1 | 16 | 64 | 128 | 256 |\n|---|---|---|---|---|---|");
        if let Some(m) = default_model() {
            forward_costs(&default_name(), &m);
        }
        if infill::model::embedded::files().is_some() {
            // The same weights widened to f32 at load, against bf16 kept as stored.
            let opts = infill::model::LoadOptions {
                dtype: Some(DType::F32),
                ..infill::model::LoadOptions::default()
            };
            if let Ok(m) = Model::open(&infill::model::ModelSource::Embedded, false, &opts) {
                forward_costs("default model, f32 in memory", &m);
            }
        }
    }
    if wants("ghost") {
        ghost_section();
    }
}

fn draw_section() {
    println!("## keystroke to drawn frame (TestBackend 120x40, ms)\n");
    println!("| file | keys | p50 | p99 | max |\n|---|---|---|---|---|");
    let rust = std::fs::read_to_string(root().join("src/tui/app.rs")).unwrap_or_default();
    let lines = rust.lines().count();
    draw_latency(
        &format!("app.rs ({lines} lines, Rust)"),
        &rust,
        "x.rs",
        lines / 2,
    );
    let big: String = (0..100_000)
        .map(|i| format!("def f{i}(x):\n    return x * {i}\n\n"))
        .collect::<String>();
    let big_lines = big.lines().count();
    draw_latency(
        &format!("{big_lines} lines, {} MB (Python)", big.len() >> 20),
        &big,
        "x.py",
        big_lines / 2,
    );

    let huge: String = big.repeat(100usize.div_ceil((big.len() >> 20).max(1)));
    let t = Instant::now();
    let mut app = app_for(&huge, Path::new("huge.py"));
    let Ok(mut term) = Terminal::new(TestBackend::new(120, 40));
    frame(&mut term, &mut app);
    println!(
        "\nopen and first draw of a {} MB file: {:.0} ms",
        huge.len() >> 20,
        t.elapsed().as_secs_f64() * 1e3
    );
    // The line table is a vector: a line break in the middle of a huge file moves half of it.
    let middle = huge.lines().count() / 2;
    let now = Instant::now();
    app.handle(
        Event::Key(KeyEvent::new(KeyCode::Char('g'), KeyModifiers::CONTROL)),
        now,
    );
    for c in middle.to_string().chars().chain(['\n']) {
        app.handle(key(c), now);
    }
    let mut times = Vec::new();
    for c in "\nx = 1\n".chars() {
        let t = Instant::now();
        app.handle(key(c), now);
        frame(&mut term, &mut app);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "typing at line {} of it: keystroke to drawn frame p50 {:.1} ms, max {:.1} ms (Enter included)",
        app.cursor().line + 1,
        percentile(&mut times, 0.5),
        max
    );
    drop(app);
    drop(huge);
}

/// What chunking costs in accuracy: bits per byte of a real file scored chunk by chunk (each after
/// a quarter-window of the chunk before) against sliding windows (at least half a window before
/// every token).
fn chunking_cost(name: &str, model: &mut Model, path: &Path) {
    use infill::model::score::chunked::ChunkScorer;
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let bits = |scores: &[infill::model::score::TokenScore]| {
        scores
            .iter()
            .map(|t| -f64::from(t.logprob) / std::f64::consts::LN_2)
            .sum::<f64>()
            / text.len().max(1) as f64
    };
    let mut chunked = Vec::new();
    let done =
        ChunkScorer::default().score(model, &text, 0, None, |_, s| chunked.extend_from_slice(s));
    let Ok(sliding) = infill::model::score::score(model, &text, usize::MAX, None, 0) else {
        return;
    };
    if matches!(done, Ok(Some(_))) {
        println!(
            "| {name} | {} | {:.3} | {:.3} |",
            path.file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned()),
            bits(&chunked),
            bits(&sliding)
        );
    }
}

fn overlay_section() {
    println!(
        "\n## overlay scoring (chunked, each chunk after the last tokens of its predecessor)\n"
    );
    println!(
        "| model | file | full scoring | edit, then next key: edited text rescored | edit, then next key: whole refresh |"
    );
    println!("|---|---|---|---|---|");
    if let Some(m) = tiny_python() {
        overlay("tiny-python fixture", m);
    }
    if let Some(m) = default_model() {
        overlay(&default_name(), m);
    }
    println!(
        "\n| model | file | bits/byte, chunks | bits/byte, sliding windows |\n|---|---|---|---|"
    );
    if let Some(mut m) = default_model() {
        chunking_cost(&default_name(), &mut m, &root().join("src/complete.rs"));
    }
}

fn ghost_section() {
    println!("\n## keystroke to first ghost text (request sent at once; ms)\n");
    println!("| model | KV reuse | keys | first visible ghost p50 | p95 | first token p50 | p95 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, make) in [
        (
            "tiny-python fixture".to_string(),
            tiny_python as fn() -> Option<Model>,
        ),
        (default_name(), default_model),
    ] {
        for reuse in [true, false] {
            let Some(model) = make() else {
                println!("| {name} | cannot load |");
                continue;
            };
            let (mut visible, mut first) = ghost_latency(model, reuse);
            let shown = if visible.is_empty() {
                "nothing shown | -".to_owned()
            } else {
                format!(
                    "{:.1} ({} shown) | {:.1}",
                    percentile(&mut visible, 0.5),
                    visible.len(),
                    percentile(&mut visible, 0.95)
                )
            };
            println!(
                "| {name} | {} | {} | {shown} | {:.1} | {:.1} |",
                if reuse { "yes" } else { "no" },
                first.len(),
                percentile(&mut first, 0.5),
                percentile(&mut first, 0.95)
            );
        }
    }
}

/// One frame, as the editor's loop draws it: the view readied for the terminal's size, then drawn.
fn frame(term: &mut Terminal<TestBackend>, app: &mut App) {
    let Ok(size) = term.size();
    app.layout(size.width, size.height);
    let _ = term.draw(|f| app.draw(f));
}
