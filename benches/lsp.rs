//! What the language server adds to a completion: request -> response through `infill lsp`
//! (framing, JSON, the document store, the worker thread, the reply) against the same completion
//! computed in-process with `complete::complete`, at the same places of the same file, with the
//! built-in model on both sides. The two alternate at every place; figures are printed, never
//! asserted. On a machine this noisy the paired difference of two model runs is dominated by the
//! model's own variation, so the server's share is also measured directly: the client's time less
//! the model time the worker reports for the same request (`data.modelMs` of the item).
//!
//!     cargo bench --bench lsp            # INFILL_BENCH_ROUNDS places (40)

#![allow(clippy::string_slice, clippy::expect_used, clippy::unwrap_used)]

mod machine;

use machine::{cpu, percentile};

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use infill::complete::{self, Settings};
use infill::model::generate::{Flow, Sampling};
use infill::model::{LoadOptions, Model, ModelSource};
use infill::syntax::Registry;
use infill::text::Cursor;
use serde_json::{Value, json};

fn send(stdin: &mut impl Write, message: &Value) {
    let body = serde_json::to_vec(message).unwrap();
    write!(stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
    stdin.write_all(&body).unwrap();
    stdin.flush().unwrap();
}

fn receive(out: &mut impl BufRead) -> Value {
    let mut length = 0;
    loop {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("Content-Length: ") {
            length = n.parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    out.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Reads messages until the response to `id`.
fn response(out: &mut impl BufRead, id: u64) -> Value {
    loop {
        let m = receive(out);
        if m["id"] == json!(id) && m.get("method").is_none() {
            return m;
        }
    }
}

fn main() {
    let places: usize = std::env::var("INFILL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/make_fixtures.py"
    );
    let text = std::fs::read_to_string(path).expect("the fixture script");
    let language = Registry::builtin().unwrap().by_name("python").ok();
    // Places at the ends of lines with code, spread over the file.
    let ends: Vec<(usize, u32, u32)> = text
        .split_inclusive('\n')
        .scan(0usize, |start, line| {
            let at = *start;
            *start += line.len();
            Some((at, line))
        })
        .enumerate()
        .filter(|(_, (_, l))| l.trim().len() > 10)
        .map(|(n, (at, l))| {
            let body = l.trim_end_matches('\n');
            (
                at + body.len(),
                n as u32,
                body.encode_utf16().count() as u32,
            )
        })
        .collect();
    let step = (ends.len() / places).max(1);
    let chosen: Vec<&(usize, u32, u32)> = ends.iter().step_by(step).take(places).collect();

    let mut model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default())
        .expect("the built-in model");
    let settings = Settings::interactive(Sampling::default(), 48, 0.0);
    // Both sides compute every prompt exactly (no keys and values reused out of place, so no
    // refreshing them while idle): the same work, so the difference is the server's own.
    model.network.set_shift_reuse(false);
    let config = std::env::temp_dir().join(format!("infill-bench-lsp-{}.toml", std::process::id()));
    std::fs::write(&config, "[editor]\nexact_cache = true\n").expect("a config file");

    let mut server = Command::new(env!("CARGO_BIN_EXE_infill"))
        .args(["lsp", "--config"])
        .arg(&config)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("infill lsp");
    let mut stdin = server.stdin.take().unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    send(
        &mut stdin,
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "capabilities": {}, "initializationOptions": {"completionWaitMs": 600_000},
        }}),
    );
    response(&mut out, 0);
    let uri = "file:///bench/make_fixtures.py";
    send(
        &mut stdin,
        &json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text,
        }}}),
    );

    let (mut direct, mut served, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut server_own = Vec::new();
    let mut same = 0;
    for (i, &&(byte, line, character)) in chosen.iter().enumerate() {
        let mut run_direct = || {
            let cursor = Cursor::from_byte(&text, byte).unwrap();
            let started = Instant::now();
            let c = complete::complete(
                &mut model,
                &text,
                cursor,
                language,
                &settings,
                None,
                |_, _| Flow::Continue,
            )
            .expect("a completion");
            (started.elapsed().as_secs_f64() * 1e3, c.text)
        };
        let mut run_served = || {
            let id = i as u64 + 1;
            let started = Instant::now();
            send(
                &mut stdin,
                &json!({"jsonrpc": "2.0", "id": id, "method": "textDocument/completion",
                    "params": {"textDocument": {"uri": uri},
                        "position": {"line": line, "character": character}}}),
            );
            let r = response(&mut out, id);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let item = &r["result"]["items"][0];
            let text = item["textEdit"]["newText"].as_str().unwrap_or_default();
            let model_ms = item["data"]["modelMs"].as_f64().unwrap_or(ms);
            (ms, text.to_owned(), ms - model_ms)
        };
        let ((d, dt), (s, st, own)) = if i % 2 == 0 {
            let d = run_direct();
            (d, run_served())
        } else {
            let s = run_served();
            (run_direct(), s)
        };
        same += usize::from(dt.trim() == st.trim() || st.ends_with(dt.trim()));
        direct.push(d);
        served.push(s);
        added.push(s - d);
        server_own.push(own);
    }
    send(
        &mut stdin,
        &json!({"jsonrpc": "2.0", "id": 9999, "method": "shutdown"}),
    );
    response(&mut out, 9999);
    send(&mut stdin, &json!({"jsonrpc": "2.0", "method": "exit"}));
    let _ = server.wait();
    let _ = std::fs::remove_file(&config);

    println!("cpu: {}", cpu());
    println!(
        "{} places of {path}, built-in model, 48 tokens at most; the same proposal both ways at {same}",
        chosen.len()
    );
    println!(
        "in-process complete: p50 {:.1} ms, p90 {:.1} ms",
        percentile(&mut direct, 0.5),
        percentile(&mut direct, 0.9)
    );
    println!(
        "through infill lsp:  p50 {:.1} ms, p90 {:.1} ms",
        percentile(&mut served, 0.5),
        percentile(&mut served, 0.9)
    );
    println!(
        "added by the server, paired with in-process: p50 {:.2} ms, p90 {:.2} ms",
        percentile(&mut added, 0.5),
        percentile(&mut added, 0.9)
    );
    println!(
        "added by the server, client time less the worker's model time: p50 {:.2} ms, p90 {:.2} ms",
        percentile(&mut server_own, 0.5),
        percentile(&mut server_own, 0.9)
    );
}
