//! The model thread with a real model (`tiny-python`): replies, ordering, cancellation, scoring.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use infill::complete::Settings;
use infill::worker::{Job, Reply, Request, ScoreRequest, Worker, WorkerOptions};

use crate::{fixture, open};

const PREFIX: &str = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    ";

fn start() -> (Worker, Receiver<Reply>) {
    let (tx, rx) = mpsc::channel();
    let worker = Worker::spawn(
        Box::new(|| Ok(open(&fixture("tiny-python")))),
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
