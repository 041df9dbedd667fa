//! Completion requests: one generation on the worker at a time, the requests waiting for it, and
//! what each gets back.
//!
//! A request at the place the last generation was made for (or further along it, after typing
//! what it proposed) is answered from that generation; any other starts a new one and ends the
//! old. `textDocument/completion` waits at most [`Options::completion_wait`]: then it gets what is
//! generated so far, marked incomplete, and generation goes on so the next keystroke's request is
//! served from it. Inline completion waits for the whole proposal; an explicit request (the
//! person asked) also gets sampled alternatives.
//!
//! [`Options::completion_wait`]: super::Options::completion_wait

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use lsp_types::error_codes::{CONTENT_MODIFIED, REQUEST_CANCELLED};
use lsp_types::{
    CompletionItem, CompletionItemKind, CompletionList, CompletionTextEdit, Documentation,
    InlineCompletionItem, InlineCompletionList, InsertTextFormat, MarkupContent, MarkupKind,
    Position, Range, TextEdit,
};
use serde_json::Value;

use super::document::{Encoding, TextDocument, with_breaks};
use super::{Answer, RpcError};
use crate::complete::Settings;
use crate::model::generate::Sampling;
use crate::syntax::Trimmer;
use crate::worker::{Job, Preview, Proposal, Request, Worker};

/// Sampled alternatives an explicit inline request asks for besides the greedy proposal (fewer
/// come back when samples repeat it).
const ALTERNATIVES: usize = 2;

/// Which request is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `textDocument/inlineCompletion`; `invoked`: the person asked (alternatives too).
    Inline { invoked: bool },
    /// `textDocument/completion`: answered by its deadline.
    Completion { deadline: Instant },
}

/// A request waiting for a generation.
#[derive(Debug, Clone)]
struct Waiting {
    id: Value,
    kind: Kind,
    /// What its items replace: the identifier before the cursor (clients filter on it).
    range: Range,
    word: String,
    /// What the document's proposals are written with.
    line_break: &'static str,
    /// Text typed since the generation's place: proposals are shown without it.
    typed: String,
}

/// One place being completed.
#[derive(Debug)]
struct Generation {
    uri: String,
    /// The document's text before and after the place (typing through a proposal keeps them).
    before: String,
    after: String,
    request: Request,
    in_flight: Option<(u64, Arc<AtomicBool>)>,
    /// The raw proposal so far, while the greedy one streams.
    partial: String,
    /// Finished proposals: the greedy one first, then distinct sampled ones.
    proposals: Vec<String>,
    greedy: Option<Proposal>,
    samples_tried: usize,
    waiting: Vec<Waiting>,
}

impl Generation {
    fn wants_alternatives(&self) -> bool {
        self.waiting
            .iter()
            .any(|w| w.kind == Kind::Inline { invoked: true })
    }

    fn is_finished(&self) -> bool {
        self.in_flight.is_none()
    }
}

/// The completion side of the server.
#[derive(Debug, Default)]
pub struct Proposals {
    generation: Option<Generation>,
}

/// Where a request asks, and what the server knows to answer it.
#[derive(Debug)]
pub struct Ask<'a> {
    pub id: Value,
    pub kind: Kind,
    pub uri: &'a str,
    pub doc: &'a TextDocument,
    pub position: Position,
    pub encoding: Encoding,
    pub max_tokens: usize,
    pub min_confidence: f32,
    /// Repository memory, once the workspace is indexed.
    pub prior: Option<Arc<dyn crate::model::generate::Prior>>,
    /// Its most relevant code before the prompt (`memoryPrompt`).
    pub repository: Option<crate::complete::RepositoryPrompt>,
}

impl Proposals {
    /// A completion request: answered now (from the current generation) or later.
    pub fn ask(&mut self, ask: Ask<'_>, worker: &Worker, ids: &mut u64) -> Vec<Answer> {
        let text = ask.doc.text();
        let offset = ask.doc.offset(ask.position, ask.encoding);
        let start = ask.doc.word_start(offset);
        let waiting = |typed: String| Waiting {
            id: ask.id.clone(),
            kind: ask.kind,
            range: Range::new(ask.doc.position(start, ask.encoding), ask.position),
            word: crate::text::split_around(text, start, offset)
                .map(|(_, w, _)| w.replace("\r\n", "\n"))
                .unwrap_or_default(),
            line_break: ask.doc.line_break(),
            typed,
        };
        // The same place, or further along the current proposal after typing its start.
        if let Some(g) = self.generation.as_mut()
            && g.uri == ask.uri
            && let Some(typed) = typed_through(g, text, offset)
        {
            // A finished proposal typed to its end is done with: the next one is asked for.
            let served = !g.is_finished()
                || typed.is_empty()
                || g.proposals.first().is_some_and(|p| p.len() > typed.len());
            if served {
                g.waiting.push(waiting(typed));
                return self.answer_ready(worker, ids);
            }
        }
        let mut answers = self.end_generation(|_| None);
        let (before, after) = ask.doc.context(offset);
        *ids += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let request = Request {
            id: *ids,
            prefix: before,
            suffix: after,
            language: ask.doc.language,
            settings: Settings {
                prior: ask.prior.clone(),
                repository: ask.repository.clone(),
                ..Settings::interactive(Sampling::default(), ask.max_tokens, ask.min_confidence)
            },
            preview: Preview::Raw,
            cancel: Arc::clone(&cancel),
        };
        worker.submit(Job::Complete(request.clone()));
        self.generation = Some(Generation {
            uri: ask.uri.to_owned(),
            before: crate::text::before(text, offset).to_owned(),
            after: crate::text::from(text, offset).to_owned(),
            request,
            in_flight: Some((*ids, cancel)),
            partial: String::new(),
            proposals: Vec::new(),
            greedy: None,
            samples_tried: 0,
            waiting: vec![waiting(String::new())],
        });
        answers.extend(self.answer_ready(worker, ids));
        answers
    }

    /// Whether a proposal is being generated (the overlay waits).
    pub fn busy(&self) -> bool {
        self.generation.as_ref().is_some_and(|g| !g.is_finished())
    }

    /// The worker's proposal so far.
    pub fn partial(&mut self, job: u64, text: String) {
        if let Some(g) = self.generation.as_mut()
            && g.in_flight.as_ref().is_some_and(|(id, _)| *id == job)
            && g.greedy.is_none()
        {
            g.partial = text;
        }
    }

    /// A finished proposal: the answers it completes.
    pub fn done(
        &mut self,
        job: u64,
        proposal: Proposal,
        worker: &Worker,
        ids: &mut u64,
    ) -> Vec<Answer> {
        let Some(g) = self.generation.as_mut() else {
            return Vec::new();
        };
        if g.in_flight.as_ref().is_none_or(|(id, _)| *id != job) {
            return Vec::new();
        }
        g.in_flight = None;
        if g.greedy.is_none() {
            g.proposals.push(proposal.text.clone());
            g.greedy = Some(proposal);
        } else if !proposal.text.trim().is_empty() && !g.proposals.contains(&proposal.text) {
            g.proposals.push(proposal.text);
        }
        self.answer_ready(worker, ids)
    }

    /// A generation that failed: its requests get the reason.
    pub fn failed(&mut self, job: u64, message: &str) -> Vec<Answer> {
        let current = self
            .generation
            .as_ref()
            .and_then(|g| g.in_flight.as_ref())
            .is_some_and(|(id, _)| *id == job);
        if !current {
            return Vec::new();
        }
        let error = RpcError::internal(format!("completion failed: {message}"));
        self.end_generation(|_| Some(Err(error.clone())))
    }

    /// The document changed or closed: requests waiting on its old text are told so, and its
    /// generation stops (a finished one stays, for typing through it).
    pub fn invalidate(&mut self, uri: &str) -> Vec<Answer> {
        let Some(g) = self.generation.as_mut().filter(|g| g.uri == uri) else {
            return Vec::new();
        };
        let answers: Vec<Answer> = g
            .waiting
            .drain(..)
            .map(|w| {
                (
                    w.id,
                    Err(RpcError::new(
                        CONTENT_MODIFIED,
                        "the document changed before the proposal was ready",
                    )),
                )
            })
            .collect();
        if !g.is_finished() {
            self.end_generation(|_| None);
        }
        answers
    }

    /// `$/cancelRequest`: the request gets `RequestCancelled`; a generation nobody waits for stops.
    pub fn cancel(&mut self, id: &Value) -> Vec<Answer> {
        let Some(g) = self.generation.as_mut() else {
            return Vec::new();
        };
        let Some(i) = g.waiting.iter().position(|w| w.id == *id) else {
            return Vec::new();
        };
        let w = g.waiting.remove(i);
        if g.waiting.is_empty() && !g.is_finished() {
            self.end_generation(|_| None);
        }
        vec![(
            w.id,
            Err(RpcError::new(REQUEST_CANCELLED, "cancelled by the client")),
        )]
    }

    /// The model cannot answer: every waiting request gets an empty answer.
    pub fn unavailable(&mut self) -> Vec<Answer> {
        self.end_generation(|w| Some(Ok(empty(w.kind))))
    }

    /// The earliest deadline of a waiting `textDocument/completion`.
    pub fn deadline(&self) -> Option<Instant> {
        self.generation
            .as_ref()?
            .waiting
            .iter()
            .filter_map(|w| match w.kind {
                Kind::Completion { deadline } => Some(deadline),
                Kind::Inline { .. } => None,
            })
            .min()
    }

    /// Completion requests whose deadline has passed get what is generated so far.
    pub fn tick(&mut self, now: Instant) -> Vec<Answer> {
        let Some(g) = self.generation.as_mut() else {
            return Vec::new();
        };
        let (due, rest): (Vec<Waiting>, Vec<Waiting>) = g
            .waiting
            .drain(..)
            .partition(|w| matches!(w.kind, Kind::Completion { deadline } if deadline <= now));
        g.waiting = rest;
        if due.is_empty() {
            return Vec::new();
        }
        // The raw text so far, trimmed as the finished proposal will be.
        let r = &g.request;
        let trimmed = Trimmer::new(&r.prefix, &r.suffix, r.language)
            .trim(&g.partial)
            .text;
        let partial = std::slice::from_ref(&trimmed);
        due.iter()
            .map(|w| (w.id.clone(), Ok(result(w, partial, None, true))))
            .collect()
    }

    /// Answers the waiting requests the current generation can answer, and asks for the next
    /// alternative when an explicit inline request wants more.
    fn answer_ready(&mut self, worker: &Worker, ids: &mut u64) -> Vec<Answer> {
        let Some(g) = self.generation.as_mut() else {
            return Vec::new();
        };
        if !g.is_finished() {
            return Vec::new();
        }
        if g.wants_alternatives() && g.samples_tried < ALTERNATIVES {
            g.samples_tried += 1;
            *ids += 1;
            let cancel = Arc::new(AtomicBool::new(false));
            let mut request = g.request.clone();
            request.id = *ids;
            request.settings.sampling = Sampling::alternative(*ids);
            request.cancel = Arc::clone(&cancel);
            worker.submit(Job::Complete(request));
            g.in_flight = Some((*ids, cancel));
            // Requests that do not want alternatives need not wait for them.
            let (ready, rest): (Vec<Waiting>, Vec<Waiting>) = g
                .waiting
                .drain(..)
                .partition(|w| w.kind != Kind::Inline { invoked: true });
            g.waiting = rest;
            let first = g.proposals.get(..1).unwrap_or_default();
            return ready
                .iter()
                .map(|w| (w.id.clone(), Ok(result(w, first, g.greedy.as_ref(), false))))
                .collect();
        }
        g.waiting
            .drain(..)
            .map(|w| {
                let all = if w.kind == (Kind::Inline { invoked: true }) {
                    &g.proposals[..]
                } else {
                    g.proposals.get(..1).unwrap_or_default()
                };
                (w.id.clone(), Ok(result(&w, all, g.greedy.as_ref(), false)))
            })
            .collect()
    }

    /// Stops the current generation; `answer` says what each waiting request gets (`None`: an
    /// empty answer).
    fn end_generation(
        &mut self,
        answer: impl Fn(&Waiting) -> Option<Result<Value, RpcError>>,
    ) -> Vec<Answer> {
        let Some(g) = self.generation.take() else {
            return Vec::new();
        };
        if let Some((_, cancel)) = &g.in_flight {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        g.waiting
            .iter()
            .map(|w| {
                let a = answer(w).unwrap_or_else(|| Ok(empty(w.kind)));
                (w.id.clone(), a)
            })
            .collect()
    }
}

/// The text typed at the generation's place since it was made, when the document is otherwise the
/// same and it is the start of the proposal (or the generation is still running and nothing was
/// typed).
fn typed_through(g: &Generation, text: &str, offset: usize) -> Option<String> {
    let at = g.before.len();
    if offset < at
        || text.len() - offset != g.after.len()
        || !text.starts_with(&g.before)
        || !text.ends_with(&g.after)
    {
        return None;
    }
    let typed = crate::text::split_around(text, at, offset)?
        .1
        .replace("\r\n", "\n");
    if typed.is_empty() {
        return Some(typed);
    }
    g.proposals.first()?.starts_with(&typed).then_some(typed)
}

/// The answer with nothing in it.
fn empty(kind: Kind) -> Value {
    match kind {
        Kind::Inline { .. } => serde_json::json!({ "items": [] }),
        Kind::Completion { .. } => serde_json::json!({ "isIncomplete": true, "items": [] }),
    }
}

/// A request's answer from `proposals` (the part after what it typed through).
fn result(w: &Waiting, proposals: &[String], info: Option<&Proposal>, partial: bool) -> Value {
    let shown: Vec<&str> = proposals
        .iter()
        .filter_map(|p| p.strip_prefix(w.typed.as_str()))
        .filter(|p| !p.trim().is_empty())
        .collect();
    let value = match w.kind {
        Kind::Inline { .. } => serde_json::to_value(InlineCompletionList {
            items: shown
                .iter()
                .map(|p| InlineCompletionItem {
                    insert_text: with_breaks(&format!("{}{p}", w.word), w.line_break),
                    filter_text: None,
                    range: Some(w.range),
                    command: None,
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                })
                .collect(),
        }),
        Kind::Completion { .. } => serde_json::to_value(CompletionList {
            is_incomplete: true,
            items: shown
                .iter()
                .take(1)
                .map(|p| completion_item(w, p, info, partial))
                .collect(),
        }),
    };
    value.unwrap_or(Value::Null)
}

/// The proposal as an ordinary completion item: its first line as the label, the whole proposal
/// as the edit, and the proposal in the documentation so a multi-line one can be read first.
fn completion_item(w: &Waiting, p: &str, info: Option<&Proposal>, partial: bool) -> CompletionItem {
    let full = format!("{}{p}", w.word);
    let first = full.lines().next().unwrap_or_default();
    let more = full.trim_end().contains('\n');
    let detail = match info {
        _ if partial => "infill (still generating)".to_owned(),
        Some(i) if i.from_memory >= 0.05 => format!(
            "infill · {} tokens in {:.0} ms · {:.0}% from repository memory{}",
            i.tokens,
            i.total_ms,
            i.from_memory * 100.0,
            i.source
                .as_ref()
                .map(|s| format!(
                    " ({})",
                    s.path.file_name().map_or(s.to_string(), |n| format!(
                        "{}:{}",
                        n.to_string_lossy(),
                        s.line
                    ))
                ))
                .unwrap_or_default()
        ),
        Some(i) => format!("infill · {} tokens in {:.0} ms", i.tokens, i.total_ms),
        None => "infill".to_owned(),
    };
    CompletionItem {
        label: if more {
            format!("{} …", first.trim_end())
        } else {
            first.trim_end().to_owned()
        },
        kind: Some(CompletionItemKind::TEXT),
        detail: Some(detail),
        documentation: Some(Documentation::MarkupContent(MarkupContent {
            kind: MarkupKind::Markdown,
            value: match info.and_then(|i| i.source.as_ref()) {
                // Where it was copied from, as a link the client can follow.
                Some(s) if !partial => format!(
                    "```\n{full}\n```\n\nfound in [{s}]({}#L{})",
                    super::file_uri(&s.path),
                    s.line
                ),
                _ => format!("```\n{full}\n```"),
            },
        })),
        filter_text: Some(first.to_owned()),
        text_edit: Some(CompletionTextEdit::Edit(TextEdit::new(
            w.range,
            with_breaks(&full, w.line_break),
        ))),
        insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
        // What the model took, for clients' logs and the benchmark of what the server adds.
        data: info.map(|i| serde_json::json!({ "modelMs": i.total_ms, "tokens": i.tokens })),
        ..CompletionItem::default()
    }
}
