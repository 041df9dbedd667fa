//! The model thread with a real model (`tiny-python`): replies, ordering, cancellation, scoring.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use infill::complete::Settings;
use infill::worker::{
    AdapterRequest, Job, Preview, Reply, Request, ScoreRequest, Worker, WorkerOptions,
};

use crate::{fixture, open};

const PREFIX: &str = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    ";

fn start() -> (Worker, Receiver<Reply>) {
    start_with("tiny-python")
}

fn start_with(model: &'static str) -> (Worker, Receiver<Reply>) {
    let (tx, rx) = mpsc::channel();
    let worker = Worker::spawn(
        Box::new(move || Ok(open(&fixture(model)))),
        WorkerOptions::default(),
        move |r| {
            let _ = tx.send(r);
        },
    )
    .unwrap();
    (worker, rx)
}

fn next(rx: &Receiver<Reply>) -> Reply {
    rx.recv_timeout(Duration::from_secs(60)).expect("a reply")
}

fn request(id: u64, prefix: &str) -> Request {
    Request {
        id,
        prefix: prefix.into(),
        suffix: String::new(),
        language: infill::syntax::Registry::builtin()
            .unwrap()
            .by_name("python")
            .ok(),
        settings: Settings::default(),
        preview: Preview::Trimmed,
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

#[test]
fn a_completion_streams_then_finishes_with_its_confidence() {
    let (worker, rx) = start();
    assert!(matches!(next(&rx), Reply::Ready { model } if model.contains("tiny-python")));
    worker.submit(Job::Complete(request(1, PREFIX)));
    let mut partial = None;
    let proposal = loop {
        match next(&rx) {
            Reply::Partial { id, text } => {
                assert_eq!(id, 1);
                partial = Some(text);
            }
            Reply::Done { id, proposal } => {
                assert_eq!(id, 1);
                break proposal;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(!proposal.text.is_empty(), "the fixture proposes code here");
    assert!(partial.is_some(), "partial text came before the end");
    let ends: Vec<usize> = proposal.confidence.iter().map(|c| c.0).collect();
    assert_eq!(
        ends.last(),
        Some(&proposal.text.len()),
        "confidence covers the text"
    );
    assert!(ends.windows(2).all(|w| w[0] < w[1]));
    assert!(
        proposal
            .confidence
            .iter()
            .all(|c| (0.0..=1.0).contains(&c.1))
    );
    assert!(proposal.first_token_ms <= proposal.total_ms);
}

#[test]
fn cancelled_requests_get_no_reply_and_scoring_tiles_the_text() {
    let (worker, rx) = start();
    assert!(matches!(next(&rx), Reply::Ready { .. }));
    let stale = request(1, PREFIX);
    stale.cancel();
    worker.submit(Job::Complete(stale));
    let text = format!("{PREFIX}return a - b\n");
    worker.submit(Job::Score(ScoreRequest {
        id: 2,
        text: text.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
    }));
    let mut tokens = Vec::new();
    loop {
        match next(&rx) {
            Reply::Scored {
                id,
                from,
                tokens: t,
            } => {
                assert_eq!((id, from), (2, tokens.len()));
                tokens.extend(t);
            }
            Reply::ScoreDone { id, .. } => {
                assert_eq!(id, 2);
                break;
            }
            other => panic!("the cancelled request must not answer: {other:?}"),
        }
    }
    assert_eq!(tokens.first().map(|t| t.start), Some(0));
    assert_eq!(tokens.last().map(|t| t.end), Some(text.len()));
    assert!(tokens.windows(2).all(|w| w[0].end == w[1].start));
}

#[test]
fn a_model_that_cannot_load_leaves_a_reason() {
    let (tx, rx) = mpsc::channel();
    let _worker = Worker::spawn(
        Box::new(|| {
            Err(anyhow::anyhow!(
                "no default model is built into this infill"
            ))
        }),
        WorkerOptions::default(),
        move |r| {
            let _ = tx.send(r);
        },
    )
    .unwrap();
    match next(&rx) {
        Reply::Unavailable { message } => assert!(message.contains("no default model")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_loader_that_panics_still_leaves_a_reason() {
    let (tx, rx) = mpsc::channel();
    let _worker = Worker::spawn(
        Box::new(|| panic!("corrupt tensor")),
        WorkerOptions::default(),
        move |r| {
            let _ = tx.send(r);
        },
    )
    .unwrap();
    match next(&rx) {
        Reply::Unavailable { message } => assert!(message.contains("corrupt tensor"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Typing in a PSM prompt reuses the suffix out of place; a pause lets the worker recompute its
/// cache exactly, which shows as the count of reuses starting over: after 32 reuses without a
/// pause a request is computed exactly, after a pause 32 more are allowed.
#[test]
fn typing_reuses_the_suffix_and_a_pause_refreshes_the_cache() {
    let (worker, rx) = start();
    assert!(matches!(next(&rx), Reply::Ready { .. }));
    let suffix = "\n\n\ndef mul(a, b):\n    return a * b\n\n\ndef div(a, b):\n    return a / b\n";
    let mut id = 0;
    let mut keystroke = |typed: &str| {
        id += 1;
        let mut r = request(id, &format!("{PREFIX}{typed}"));
        r.suffix = suffix.into();
        r.settings.order = Some(infill::model::FimOrder::Psm);
        r.settings.limits.max_tokens = 2;
        worker.submit(Job::Complete(r));
        loop {
            if let Reply::Done { id: done, proposal } = next(&rx) {
                assert_eq!(done, id);
                break proposal.cache;
            }
        }
    };
    // Keystrokes that only extend the prompt's last token reuse the prefix (token healing leaves
    // that token out); the others reuse the suffix out of place, or are computed exactly.
    let text = "result = [a - b if a > b else b - a for (a, b) in zip(left, right)] + [x * y for x in range(10) for y in range(3)] + sorted(set(values), key=len)";
    let mut chars = text.chars();
    let mut typed = String::new();
    let mut type_until =
        |splices: usize, keystroke: &mut dyn FnMut(&str) -> infill::worker::CacheUse| {
            let (mut seen, mut exact) = (0, 0);
            while seen < splices {
                typed.push(chars.next().expect("text enough to type"));
                let cache = keystroke(&typed);
                if cache.shifted_tokens > 0 {
                    seen += 1;
                } else if cache.reused_tokens + 4 < cache.prompt_tokens {
                    exact += 1;
                }
            }
            exact
        };
    keystroke("");
    assert_eq!(
        type_until(20, &mut keystroke),
        0,
        "20 reuses in a row are allowed"
    );
    // A pause: the worker recomputes what it reused (after 300 ms idle, 32 tokens a step), and
    // the count starts over: 20 more are allowed, where 12 would be without the refresh.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(type_until(20, &mut keystroke), 0, "the count started over");
    // Without a pause it runs out: the 33rd reuse in a row is computed exactly instead.
    assert!(
        type_until(13, &mut keystroke) >= 1,
        "a request is computed exactly"
    );
}

/// Every token's log-probability of `text`, scored by the worker.
fn scores(worker: &Worker, rx: &Receiver<Reply>, id: u64, text: &str) -> Vec<f32> {
    worker.submit(Job::Score(ScoreRequest {
        id,
        text: text.into(),
        cancel: Arc::new(AtomicBool::new(false)),
    }));
    let mut out = Vec::new();
    loop {
        match next(rx) {
            Reply::Scored { tokens, .. } => out.extend(tokens.iter().map(|t| t.logprob)),
            Reply::ScoreDone { .. } => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// An adapter applied by the worker changes what the model computes, the worker's own score
/// cache included; taking it off gives the base's scores exactly; one that cannot be read
/// fails with its reason and leaves the model as it was.
#[test]
fn the_worker_switches_adapters_on_the_model_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    crate::scale::write_adapter(&adapter, crate::scale::lora_config());
    let (worker, rx) = start_with("qwen2");
    assert!(matches!(next(&rx), Reply::Ready { .. }));
    let text = format!("{PREFIX}return a - b\n");
    let base = scores(&worker, &rx, 1, &text);
    let switch = |id: u64, dir: Option<&std::path::Path>| {
        worker.submit(Job::Adapter(AdapterRequest {
            id,
            dir: dir.map(std::path::Path::to_path_buf),
        }));
        next(&rx)
    };
    assert!(matches!(
        switch(2, Some(&adapter)),
        Reply::Adapter { id: 2 }
    ));
    let adapted = scores(&worker, &rx, 3, &text);
    assert_eq!(adapted.len(), base.len());
    assert!(adapted.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3));
    match switch(4, Some(&tmp.path().join("missing"))) {
        Reply::Failed { id: 4, message } => assert!(message.contains("missing"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(scores(&worker, &rx, 5, &text), adapted);
    assert!(matches!(switch(6, None), Reply::Adapter { id: 6 }));
    assert_eq!(scores(&worker, &rx, 7, &text), base);
}
