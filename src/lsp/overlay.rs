//! The probability overlay for any editor: Hint diagnostics the client's own theme colours.
//!
//! Two kinds, as `infill score` prints them:
//! - every token outside the model's top N predictions (GLTR's buckets: top 10, 100, 1000,
//!   beyond), scored from the text before it;
//! - the most surprising lines, each scored between the code on both sides of it (`infill score
//!   --fim`), with what the model would have written in its place.
//!
//! A document is scored when it opens or is saved, and a second after the last change while it is
//! edited. A proposal someone waits for comes first: the overlay's work in flight is cancelled and
//! starts again after it. Diagnostics carry the version they were computed for; a result for text
//! that has changed since is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::document::{Encoding, TextDocument};
use crate::model::score::TokenScore;
use crate::worker::{Job, LinesRequest, ScoreRequest, SurprisingLine, Worker};

/// Quiet time after a change before a document is scored again.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// Tokens of context on each side of a line scored in place.
const LINE_CONTEXT: usize = 256;
/// Lines marked as the most surprising (each with the model's own version).
const LINES: usize = 3;
/// Token hints per document at most (the least probable tokens are kept).
const MAX_TOKEN_HINTS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Tokens,
    Lines,
}

/// A document being scored.
#[derive(Debug)]
struct Running {
    uri: String,
    version: i32,
    stage: Stage,
    id: u64,
    cancel: Arc<AtomicBool>,
    min_rank: usize,
    language: Option<&'static crate::syntax::Language>,
    /// The text the model scored (`\n` breaks) and where its breaks were `\r\n`.
    text: String,
    dropped: Vec<usize>,
    tokens: Vec<TokenScore>,
}

impl Running {
    fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The overlay's state: which documents wait to be scored, the one being scored, and which have
/// diagnostics on screen.
#[derive(Debug, Default)]
pub struct Overlay {
    due: HashMap<String, Instant>,
    running: Option<Running>,
    published: HashSet<String>,
    /// The model cannot score (said once): nothing more is asked of it.
    broken: bool,
}

impl Overlay {
    /// The document changed (`at_once`: opened or saved; otherwise after the debounce).
    pub fn changed(&mut self, uri: &str, now: Instant, at_once: bool) {
        if self.broken {
            return;
        }
        let when = if at_once { now } else { now + DEBOUNCE };
        self.due.insert(uri.to_owned(), when);
        if self.running.as_ref().is_some_and(|r| r.uri == uri) {
            self.cancel_running();
        }
    }

    /// The document closed: the diagnostics to clear, if it had any.
    pub fn closed(&mut self, uri: &str) -> Option<Value> {
        self.due.remove(uri);
        if self.running.as_ref().is_some_and(|r| r.uri == uri) {
            self.cancel_running();
        }
        self.published.remove(uri).then(|| clear(uri))
    }

    /// No more scoring (shutdown, no model).
    pub fn stop(&mut self) {
        self.cancel_running();
        self.due.clear();
    }

    /// The overlay was turned off: the diagnostics to clear.
    pub fn clear_all(&mut self) -> Vec<Value> {
        self.stop();
        self.published.drain().map(|uri| clear(&uri)).collect()
    }

    /// A proposal is wanted: the work in flight stops and is done again afterwards.
    pub fn yield_to_completion(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
            self.due.insert(r.uri, Instant::now());
        }
    }

    fn cancel_running(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }

    /// When the next document is due (none while one is being scored).
    pub fn deadline(&self) -> Option<Instant> {
        if self.running.is_some() {
            return None;
        }
        self.due.values().min().copied()
    }

    /// Starts scoring the next due document that is open.
    pub fn run(
        &mut self,
        docs: &HashMap<String, TextDocument>,
        min_rank: usize,
        now: Instant,
        worker: &Worker,
        ids: &mut u64,
    ) {
        if self.running.is_some() {
            return;
        }
        self.due.retain(|uri, _| docs.contains_key(uri));
        let Some(uri) = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(_, at)| **at)
            .map(|(uri, _)| uri.clone())
        else {
            return;
        };
        self.due.remove(&uri);
        let Some(doc) = docs.get(&uri) else {
            return;
        };
        let (text, dropped) = doc.model_text();
        *ids += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        worker.submit(Job::Score(ScoreRequest {
            id: *ids,
            text: text.clone(),
            cancel: Arc::clone(&cancel),
        }));
        self.running = Some(Running {
            uri,
            version: doc.version,
            stage: Stage::Tokens,
            id: *ids,
            cancel,
            min_rank,
            language: doc.language,
            text,
            dropped,
            tokens: Vec::new(),
        });
    }

    fn current(&mut self, id: u64, stage: Stage) -> Option<&mut Running> {
        self.running
            .as_mut()
            .filter(|r| r.id == id && r.stage == stage)
    }

    /// Token scores `from..` of the document being scored.
    pub fn scored(&mut self, id: u64, from: usize, tokens: Vec<TokenScore>) {
        if let Some(r) = self.current(id, Stage::Tokens) {
            r.tokens.truncate(from);
            r.tokens.extend(tokens);
        }
    }

    /// The tokens are scored: the lines come next.
    pub fn score_done(&mut self, id: u64, worker: &Worker, ids: &mut u64) {
        let Some(r) = self.current(id, Stage::Tokens) else {
            return;
        };
        *ids += 1;
        r.id = *ids;
        r.stage = Stage::Lines;
        worker.submit(Job::Lines(LinesRequest {
            id: *ids,
            text: r.text.clone(),
            language: r.language,
            budget: LINE_CONTEXT,
            suggest: LINES,
            cancel: Arc::clone(&r.cancel),
        }));
    }

    /// The model could not score (a family without logits for every position): the overlay
    /// stops rather than asking again; the reason, to show once.
    pub fn failed(&mut self, id: u64, message: &str) -> Option<String> {
        let r = self.running.as_ref()?;
        if r.id != id {
            return None;
        }
        self.stop();
        self.broken = true;
        Some(format!("infill: the probability overlay is off: {message}"))
    }

    /// The lines are scored: the document's diagnostics (`textDocument/publishDiagnostics`
    /// parameters), unless it changed meanwhile.
    pub fn lines(
        &mut self,
        id: u64,
        lines: Vec<SurprisingLine>,
        docs: &HashMap<String, TextDocument>,
        encoding: Encoding,
    ) -> Option<Value> {
        self.current(id, Stage::Lines)?;
        let r = self.running.take()?;
        let doc = docs.get(&r.uri)?;
        if doc.version != r.version || doc.model_text().0 != r.text {
            self.due.insert(r.uri, Instant::now());
            return None;
        }
        let range = |start: usize, end: usize| {
            let raw = |o: usize| o + r.dropped.partition_point(|&d| d < o);
            json!({
                "start": doc.position(raw(start), encoding),
                "end": doc.position(raw(end), encoding),
            })
        };
        let mut diagnostics = Vec::new();
        let total = lines.len();
        for (i, l) in lines.iter().take(LINES).enumerate() {
            let text = r.text.get(l.start..l.end).unwrap_or_default();
            let indent = text.len() - text.trim_start().len();
            let instead = l.instead.as_ref().map_or_else(
                || "; the model would have written it the same way".to_owned(),
                |s| format!("; the model would have written `{}` here", s.trim()),
            );
            diagnostics.push(json!({
                "range": range(l.start + indent, l.end),
                "severity": 4,
                "source": "infill",
                "code": "surprising-line",
                "message": format!(
                    "surprising line #{} of {total}: {:.1} bits/token (p={:.1e}){instead}",
                    i + 1,
                    l.score.surprise(),
                    (-l.score.bits).exp2(),
                ),
            }));
        }
        let mut rare: Vec<&TokenScore> = r
            .tokens
            .iter()
            .filter(|t| t.rank > r.min_rank && !t.text.trim().is_empty())
            .collect();
        rare.sort_by_key(|t| std::cmp::Reverse(t.rank));
        rare.truncate(MAX_TOKEN_HINTS);
        rare.sort_by_key(|t| t.start);
        for t in rare {
            let expected = t
                .top
                .first()
                .map(|a| format!("; it expected {:?}", a.text))
                .unwrap_or_default();
            diagnostics.push(json!({
                "range": range(t.start, t.end),
                "severity": 4,
                "source": "infill",
                "code": bucket(t.rank),
                "message": format!(
                    "the model ranked this token {} ({}, p={:.1e}){expected}",
                    t.rank,
                    bucket(t.rank),
                    f64::from(t.logprob).exp(),
                ),
            }));
        }
        self.published.insert(r.uri.clone());
        Some(json!({ "uri": r.uri, "version": r.version, "diagnostics": diagnostics }))
    }
}

/// GLTR's bucket of a rank, as a diagnostic's code.
fn bucket(rank: usize) -> &'static str {
    ["top-10", "top-100", "top-1000", "beyond-1000"][crate::model::score::gltr_bucket(rank)]
}

/// Parameters that clear a document's diagnostics.
fn clear(uri: &str) -> Value {
    json!({ "uri": uri, "diagnostics": [] })
}
