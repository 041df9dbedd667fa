//! Evaluation: run the editor's own pipeline (prompt -> generate -> trim) on held-out tasks and
//! score what comes out, raw and trimmed, next to the empty-middle floor and an optional baseline.

pub mod metrics;
pub mod tasks;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use wait_timeout::ChildExt;

use crate::complete::{self, Settings};
use crate::model::Model;
use crate::model::generate::Flow;
use crate::model::generate::Limits;
use crate::syntax::{Registry, Trimmer};
use crate::text::Cursor;
use metrics::{
    accepted_chars, edit_similarity, exact_match, first_line_match, is_punctuation_only,
};
use tasks::{Task, TaskKind};

/// Set by Ctrl-C: the runner stops and the report covers the tasks done.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Scores of one prediction.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Score {
    pub exact: bool,
    pub edit_similarity: f64,
    pub first_line: bool,
    /// No more parse errors than the reference insertion (None: unknown language).
    pub syntax_valid: Option<bool>,
    pub accepted_chars: usize,
    /// The task's tests pass (None: not run).
    pub passed: Option<bool>,
}

/// What one model did on one task.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub task: String,
    pub raw: String,
    pub trimmed: String,
    pub raw_score: Score,
    pub trimmed_score: Score,
    pub empty_score: Score,
    pub tokens: usize,
    pub latency_ms: f64,
    /// Tokens and milliseconds until the editor would have stopped: it stops generating once the
    /// trimmer knows the proposal is closed (the whole raw generation when it never is).
    pub shown_tokens: usize,
    pub shown_latency_ms: f64,
    /// Milliseconds to the first generated token, and its probability (what the editor's
    /// confidence cut and colours rest on).
    pub first_token_ms: f64,
    pub first_token_prob: f32,
    pub tokens_per_s: f64,
    /// Prompt tokens computed, and those reused out of place from the previous prompt's cache
    /// (with `typed`).
    pub prompt_tokens_computed: usize,
    pub shifted_tokens: usize,
}

/// How predictions are checked by running them.
#[derive(Debug, Clone)]
pub struct Exec {
    /// The interpreter, e.g. `python3`.
    pub program: String,
    pub timeout: Duration,
}

/// Parse errors of `text` in `language` (None when the language is unknown).
fn parse_errors(text: &str, language: Option<&str>) -> Option<usize> {
    crate::syntax::parse(text, language).map(|tree| crate::syntax::error_count(&tree))
}

/// Runs a task's tests with the completed program in a temporary directory; false on failure or
/// timeout.
fn run_tests(task: &Task, prediction: &str, exec: &Exec) -> Option<bool> {
    let (test, entry) = (task.test.as_ref()?, task.entry_point.as_ref()?);
    let dir = tempfile::tempdir().ok()?;
    let program = format!(
        "{}{}{}\n\n{test}\n\ncheck({entry})\n",
        task.prefix, prediction, task.suffix
    );
    let path = dir.path().join("task.py");
    std::fs::write(&path, program).ok()?;
    let mut child = std::process::Command::new(&exec.program)
        .arg(&path)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    match child.wait_timeout(exec.timeout) {
        Ok(Some(status)) => Some(status.success()),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Some(false)
        }
    }
}

fn score(
    task: &Task,
    prediction: &str,
    reference_errors: Option<usize>,
    exec: Option<&Exec>,
) -> Score {
    let syntax_valid = reference_errors.and_then(|reference| {
        let text = format!("{}{}{}", task.prefix, prediction, task.suffix);
        parse_errors(&text, task.language.as_deref()).map(|e| e <= reference)
    });
    Score {
        exact: exact_match(prediction, &task.middle),
        edit_similarity: edit_similarity(prediction, &task.middle),
        first_line: first_line_match(prediction, &task.middle),
        syntax_valid,
        accepted_chars: accepted_chars(prediction, &task.middle),
        passed: exec.and_then(|e| run_tests(task, prediction, e)),
    }
}

/// Runs `model` on every task (in order) with `settings` (trimming is applied to the raw output, so
/// one generation gives both figures). `typed`: each task is the keystroke after its prefix less
/// its last character, which runs first (to its first token) and leaves its cache, as typing in
/// the editor does. `progress` is called after each task with (done, total).
pub fn run(
    model: &mut Model,
    tasks: &[Task],
    settings: &Settings,
    exec: Option<&Exec>,
    typed: bool,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<Outcome>> {
    let registry = Registry::builtin().ok();
    // Raw: the model's own proposal, neither trimmed nor cut by confidence.
    let raw_settings = Settings {
        trim: false,
        min_confidence: 0.0,
        ..settings.clone()
    };
    let mut out = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let text = format!("{}{}", task.prefix, task.suffix);
        let cursor = Cursor::from_byte(&text, task.prefix.len())
            .ok_or_else(|| anyhow::anyhow!("{}: bad cursor", task.id))?;
        let lang = task
            .language
            .as_deref()
            .and_then(|l| registry.and_then(|r| r.by_name(l).ok()));
        // A repository-level prompt names the task's file.
        let for_task;
        let raw_settings = match &raw_settings.repository {
            Some(r) => {
                for_task = Settings {
                    repository: Some(complete::RepositoryPrompt {
                        path: task.path().to_owned(),
                        ..r.clone()
                    }),
                    ..raw_settings.clone()
                };
                &for_task
            }
            None => &raw_settings,
        };
        if typed
            && let Some((cut, _)) = task.prefix.char_indices().next_back()
            && let Some(shorter) = task.prefix.get(..cut)
        {
            let before = format!("{shorter}{}", task.suffix);
            let cursor = Cursor::from_byte(&before, cut)
                .ok_or_else(|| anyhow::anyhow!("{}: bad cursor", task.id))?;
            let keystroke_before = Settings {
                limits: Limits {
                    max_tokens: 1,
                    ..raw_settings.limits
                },
                ..raw_settings.clone()
            };
            complete::complete(
                model,
                &before,
                cursor,
                lang,
                &keystroke_before,
                None,
                |_, _| Flow::Continue,
            )?;
        }
        // The raw proposal runs to its end; where the editor would have stopped is noted on the way.
        let mut closer = Trimmer::new(&task.prefix, &task.suffix, lang);
        let mut shown: Option<(usize, f64)> = None;
        let mut seen = 0;
        let mut first_token_ms = None;
        let started = Instant::now();
        let c = complete::complete(
            model,
            &text,
            cursor,
            lang,
            raw_settings,
            None,
            |_, so_far| {
                seen += 1;
                first_token_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
                if shown.is_none() && closer.is_closed(so_far) {
                    shown = Some((seen, started.elapsed().as_secs_f64() * 1e3));
                }
                Flow::Continue
            },
        )?;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let (shown_tokens, shown_latency_ms) =
            shown.unwrap_or((c.generation.tokens.len(), latency_ms));
        // What the editor shows: trimmed (by the trimmer that watched it, as in the editor), then
        // cut by confidence when that is asked for.
        let trimmed = closer.trim(&c.text).text;
        let trimmed = complete::cut_below(trimmed, &c.generation.tokens, settings.min_confidence);
        let reference_errors = parse_errors(
            &format!("{}{}{}", task.prefix, task.middle, task.suffix),
            task.language.as_deref(),
        );
        out.push(Outcome {
            task: task.id.clone(),
            raw_score: score(task, &c.text, reference_errors, exec),
            trimmed_score: score(task, &trimmed, reference_errors, exec),
            empty_score: score(task, "", reference_errors, exec),
            raw: c.text,
            trimmed,
            tokens: c.generation.tokens.len(),
            latency_ms,
            shown_tokens,
            shown_latency_ms,
            first_token_ms: first_token_ms.unwrap_or(latency_ms),
            first_token_prob: c.generation.tokens.first().map_or(0.0, |t| t.prob),
            tokens_per_s: c.generation.timings.tokens_per_s,
            prompt_tokens_computed: c.generation.timings.prompt_tokens
                - c.generation.timings.reused_tokens,
            shifted_tokens: c.generation.timings.shifted_tokens,
        });
        progress(i + 1, tasks.len());
    }
    Ok(out)
}

/// Held-out bits per byte of the files of one language, read left to right.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageBits {
    pub language: String,
    pub files: usize,
    pub bytes: usize,
    pub bits_per_byte: f64,
}

/// Bits per byte per language of `files` (path, language, text), each read left to right in
/// windows of the model's context with half a window of stride (as `infill score` does). Files
/// are taken in the order given until a language has `budget` bytes; a file longer than what is
/// left is cut at a line end. Files of no known language are left out.
pub fn bits_per_byte(
    model: &mut Model,
    files: &[(String, Option<String>, String)],
    budget: usize,
) -> anyhow::Result<Vec<LanguageBits>> {
    let mut per: BTreeMap<String, (usize, usize, f64)> = BTreeMap::new();
    for (_, language, text) in files {
        let Some(language) = language else { continue };
        let (count, bytes, _) = per.get(language).copied().unwrap_or_default();
        if bytes >= budget || INTERRUPTED.load(Ordering::Relaxed) {
            continue;
        }
        let text = crate::text::head_lines(text, budget - bytes);
        if text.trim().is_empty() {
            continue;
        }
        let scores = crate::model::score::score(model, text, usize::MAX, None, 0)?;
        let bits: f64 = scores
            .iter()
            .map(|t| -f64::from(t.logprob) / std::f64::consts::LN_2)
            .sum();
        let entry = per.entry(language.clone()).or_default();
        *entry = (count + 1, bytes + text.len(), entry.2 + bits);
    }
    Ok(per
        .into_iter()
        .map(|(language, (files, bytes, bits))| LanguageBits {
            language,
            files,
            bytes,
            bits_per_byte: bits / bytes.max(1) as f64,
        })
        .collect())
}

/// The bits-per-byte table: one row per language, a column per model; text or Markdown.
pub fn render_bits(
    model: &[LanguageBits],
    baseline: Option<&[LanguageBits]>,
    markdown: bool,
) -> String {
    let title = "held-out bits per byte (files read left to right)";
    let mut header = vec!["language", "files", "bytes", "model"];
    if baseline.is_some() {
        header.push("baseline");
    }
    let rows: Vec<Vec<String>> = model
        .iter()
        .map(|m| {
            let mut row = vec![
                m.language.clone(),
                m.files.to_string(),
                m.bytes.to_string(),
                format!("{:.3}", m.bits_per_byte),
            ];
            if let Some(b) = baseline {
                row.push(
                    b.iter()
                        .find(|b| b.language == m.language)
                        .map_or("-".into(), |b| format!("{:.3}", b.bits_per_byte)),
                );
            }
            row
        })
        .collect();
    render_table(title, &header, &rows, markdown)
}

/// A titled table: Markdown, or text with the first column left-aligned and the rest right.
fn render_table(title: &str, header: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    if markdown {
        let mut out = format!(
            "### {title}\n\n| {} |\n|{}\n",
            header.join(" | "),
            "---|".repeat(header.len())
        );
        for row in rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        return out;
    }
    let first = rows
        .iter()
        .map(|r| r.first().map_or(0, String::len))
        .chain(header.first().map(|h| h.len()))
        .max()
        .unwrap_or(0)
        .max(10)
        + 2;
    let widths: Vec<usize> = (1..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i).map(String::len))
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
                .max(8)
                + 2
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut l = format!("  {:<first$}", cells.first().copied().unwrap_or_default());
        for (cell, w) in cells.iter().skip(1).zip(&widths) {
            l.push_str(&format!("{cell:>w$}"));
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = format!("{title}:\n");
    out.push_str(&line(header));
    for row in rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

/// Trimmed figures of one language on one scope of tasks, next to the empty-middle floor.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageReport {
    pub language: String,
    /// `single-line` (rest-of-line and whole-line tasks), `multi-line`, or `all kinds`.
    pub scope: &'static str,
    pub trimmed: Summary,
    pub empty: Summary,
    pub baseline_trimmed: Option<Summary>,
}

/// [`LanguageReport`]s for every language of the tasks: single-line, multi-line and all kinds.
pub fn report_by_language(
    tasks: &[Task],
    model: &[Outcome],
    baseline: Option<&[Outcome]>,
) -> Vec<LanguageReport> {
    let n = model
        .len()
        .min(baseline.map_or(usize::MAX, <[Outcome]>::len));
    let mut groups: BTreeMap<(String, u8), Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().take(n).enumerate() {
        let language = t.language.clone().unwrap_or_else(|| "unknown".into());
        let scope = match t.kind {
            TaskKind::RestOfLine | TaskKind::WholeLine => Some(0),
            TaskKind::MultiLine => Some(1),
            _ => None,
        };
        for s in scope.into_iter().chain([2]) {
            groups.entry((language.clone(), s)).or_default().push(i);
        }
    }
    groups
        .into_iter()
        .map(|((language, s), idx)| {
            let ts: Vec<&Task> = idx.iter().filter_map(|&i| tasks.get(i)).collect();
            let scores = |outcomes: &[Outcome], f: fn(&Outcome) -> Score| -> Vec<Score> {
                idx.iter().filter_map(|&i| outcomes.get(i)).map(f).collect()
            };
            LanguageReport {
                language,
                scope: ["single-line", "multi-line", "all kinds"][usize::from(s)],
                trimmed: summarize(&ts, &scores(model, |o| o.trimmed_score)),
                empty: summarize(&ts, &scores(model, |o| o.empty_score)),
                baseline_trimmed: baseline.map(|b| summarize(&ts, &scores(b, |o| o.trimmed_score))),
            }
        })
        .collect()
}

/// The per-language table: trimmed exact match (all answers, and answers with code in them), edit
/// similarity, and the empty middle's exact match, the floor a model must beat.
pub fn render_languages(rows: &[LanguageReport], markdown: bool) -> String {
    let baseline = rows.iter().any(|r| r.baseline_trimmed.is_some());
    let mut header = vec![
        "language",
        "tasks",
        "exact match",
        "exact (code)",
        "edit sim.",
        "empty exact",
    ];
    if baseline {
        header.extend(["baseline exact", "baseline edit sim."]);
    }
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                format!("{} {}", r.language, r.scope),
                r.trimmed.tasks.to_string(),
                pct(r.trimmed.exact_match),
                pct(r.trimmed.exact_match_code),
                format!("{:.3}", r.trimmed.edit_similarity),
                pct(r.empty.exact_match),
            ];
            if let Some(b) = &r.baseline_trimmed {
                row.extend([pct(b.exact_match), format!("{:.3}", b.edit_similarity)]);
            }
            row
        })
        .collect();
    render_table(
        "per language, trimmed (single-line: rest-of-line and whole-line tasks)",
        &header,
        &cells,
        markdown,
    )
}

/// Aggregate figures of one variant (raw, trimmed or empty) over a set of tasks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tasks: usize,
    pub exact_match: f64,
    /// Over tasks whose reference has a letter or digit.
    pub exact_match_code: f64,
    pub edit_similarity: f64,
    pub first_line_match: f64,
    pub syntax_valid: Option<f64>,
    pub accepted_chars: f64,
    pub pass_at_1: Option<f64>,
}

fn summarize(tasks: &[&Task], scores: &[Score]) -> Summary {
    let n = scores.len().max(1) as f64;
    let frac = |f: &dyn Fn(&Score) -> bool| scores.iter().filter(|s| f(s)).count() as f64 / n;
    let code: Vec<&Score> = tasks
        .iter()
        .zip(scores)
        .filter(|(t, _)| !is_punctuation_only(&t.middle))
        .map(|(_, s)| s)
        .collect();
    let opt = |vals: Vec<bool>| {
        (!vals.is_empty()).then(|| vals.iter().filter(|v| **v).count() as f64 / vals.len() as f64)
    };
    Summary {
        tasks: scores.len(),
        exact_match: frac(&|s| s.exact),
        exact_match_code: code.iter().filter(|s| s.exact).count() as f64 / code.len().max(1) as f64,
        edit_similarity: scores.iter().map(|s| s.edit_similarity).sum::<f64>() / n,
        first_line_match: frac(&|s| s.first_line),
        syntax_valid: opt(scores.iter().filter_map(|s| s.syntax_valid).collect()),
        accepted_chars: scores.iter().map(|s| s.accepted_chars as f64).sum::<f64>() / n,
        pass_at_1: opt(scores.iter().filter_map(|s| s.passed).collect()),
    }
}

/// The figures of one model on one kind of task.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    pub raw: Summary,
    pub trimmed: Summary,
    pub empty: Summary,
    pub mean_tokens: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    /// As the editor would see it: generation stopped where the trimmer closed the proposal.
    pub shown_mean_tokens: f64,
    pub shown_latency_p50_ms: f64,
    pub shown_latency_p95_ms: f64,
    pub tokens_per_s: f64,
    /// Tasks whose raw proposal was an exact match and whose trimmed one is not: what trimming
    /// broke (it should never).
    pub trim_lost_exact: usize,
    /// Tasks whose trimmed proposal is an exact match and whose raw one was not.
    pub trim_won_exact: usize,
    /// Tasks whose raw proposal had the right first line and whose trimmed one does not (a model
    /// that seldom stops writes few exact raw proposals, but often the right first line).
    pub trim_lost_first_line: usize,
}

/// Per task kind (and "all"): the model's figures, the baseline's, and trimmed edit similarity and
/// exact match differences with bootstrap 95% intervals.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub kind: String,
    pub model: ModelFigures,
    pub baseline: Option<ModelFigures>,
    /// (mean, low, high) of model - baseline, trimmed edit similarity.
    pub edit_similarity_diff: Option<(f64, f64, f64)>,
    pub exact_match_diff: Option<(f64, f64, f64)>,
}

fn figures(tasks: &[&Task], outcomes: &[&Outcome]) -> ModelFigures {
    let lat: Vec<f64> = outcomes.iter().map(|o| o.latency_ms).collect();
    let shown: Vec<f64> = outcomes.iter().map(|o| o.shown_latency_ms).collect();
    let get = |f: &dyn Fn(&Outcome) -> Score| outcomes.iter().map(|o| f(o)).collect::<Vec<_>>();
    ModelFigures {
        raw: summarize(tasks, &get(&|o| o.raw_score)),
        trimmed: summarize(tasks, &get(&|o| o.trimmed_score)),
        empty: summarize(tasks, &get(&|o| o.empty_score)),
        mean_tokens: metrics::mean(&outcomes.iter().map(|o| o.tokens as f64).collect::<Vec<_>>()),
        latency_p50_ms: metrics::quantile(&lat, 0.5),
        latency_p95_ms: metrics::quantile(&lat, 0.95),
        shown_mean_tokens: metrics::mean(
            &outcomes
                .iter()
                .map(|o| o.shown_tokens as f64)
                .collect::<Vec<_>>(),
        ),
        shown_latency_p50_ms: metrics::quantile(&shown, 0.5),
        shown_latency_p95_ms: metrics::quantile(&shown, 0.95),
        tokens_per_s: metrics::mean(&outcomes.iter().map(|o| o.tokens_per_s).collect::<Vec<_>>()),
        trim_lost_exact: outcomes
            .iter()
            .filter(|o| o.raw_score.exact && !o.trimmed_score.exact)
            .count(),
        trim_won_exact: outcomes
            .iter()
            .filter(|o| !o.raw_score.exact && o.trimmed_score.exact)
            .count(),
        trim_lost_first_line: outcomes
            .iter()
            .filter(|o| o.raw_score.first_line && !o.trimmed_score.first_line)
            .count(),
    }
}

/// Builds the report from the outcomes of the model (and the baseline, on the same tasks).
pub fn report(
    tasks: &[Task],
    model: &[Outcome],
    baseline: Option<&[Outcome]>,
    seed: u64,
) -> Vec<KindReport> {
    let n = model
        .len()
        .min(baseline.map_or(usize::MAX, <[Outcome]>::len));
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().take(n).enumerate() {
        groups.entry(t.kind.name().to_string()).or_default().push(i);
        groups.entry("all".to_string()).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|(kind, idx)| {
            let ts: Vec<&Task> = idx.iter().filter_map(|&i| tasks.get(i)).collect();
            let ms: Vec<&Outcome> = idx.iter().filter_map(|&i| model.get(i)).collect();
            let bs: Option<Vec<&Outcome>> =
                baseline.map(|b| idx.iter().filter_map(|&i| b.get(i)).collect());
            let diff = |f: fn(&Outcome) -> f64| {
                bs.as_ref().map(|bs| {
                    let a: Vec<f64> = ms.iter().map(|o| f(o)).collect();
                    let b: Vec<f64> = bs.iter().map(|o| f(o)).collect();
                    metrics::bootstrap_difference(&a, &b, 2000, seed)
                })
            };
            KindReport {
                model: figures(&ts, &ms),
                baseline: bs.as_ref().map(|bs| figures(&ts, bs)),
                edit_similarity_diff: diff(|o| o.trimmed_score.edit_similarity),
                exact_match_diff: diff(|o| f64::from(u8::from(o.trimmed_score.exact))),
                kind,
            }
        })
        .collect()
}

/// The report as a table: text (aligned columns) or Markdown.
pub fn render(reports: &[KindReport], markdown: bool) -> String {
    let mut out = String::new();
    for r in reports {
        let mut cols: Vec<(String, &Summary)> = vec![
            ("raw".into(), &r.model.raw),
            ("trimmed".into(), &r.model.trimmed),
        ];
        if let Some(b) = &r.baseline {
            cols.push(("baseline raw".into(), &b.raw));
            cols.push(("baseline trimmed".into(), &b.trimmed));
        }
        cols.push(("empty middle".into(), &r.model.empty));
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let mut rows: Vec<(String, Vec<String>)> = vec![
            (
                "exact match".into(),
                cols.iter().map(|(_, s)| pct(s.exact_match)).collect(),
            ),
            (
                "exact match (no punctuation-only)".into(),
                cols.iter().map(|(_, s)| pct(s.exact_match_code)).collect(),
            ),
            (
                "edit similarity".into(),
                cols.iter()
                    .map(|(_, s)| format!("{:.3}", s.edit_similarity))
                    .collect(),
            ),
            (
                "first-line exact match".into(),
                cols.iter().map(|(_, s)| pct(s.first_line_match)).collect(),
            ),
            (
                "syntax-valid".into(),
                cols.iter()
                    .map(|(_, s)| s.syntax_valid.map_or("-".into(), pct))
                    .collect(),
            ),
            (
                "accepted characters".into(),
                cols.iter()
                    .map(|(_, s)| format!("{:.1}", s.accepted_chars))
                    .collect(),
            ),
        ];
        if cols.iter().any(|(_, s)| s.pass_at_1.is_some()) {
            rows.push((
                "pass@1".into(),
                cols.iter()
                    .map(|(_, s)| s.pass_at_1.map_or("-".into(), pct))
                    .collect(),
            ));
        }
        let header: Vec<String> = cols.iter().map(|(n, _)| n.clone()).collect();
        let title = format!(
            "{} ({} tasks): {:.1} tokens per completion, latency p50 {:.0} ms / p95 {:.0} ms, {:.1} tokens/s; the editor stops after {:.1} tokens, p50 {:.0} ms / p95 {:.0} ms",
            r.kind,
            r.model.raw.tasks,
            r.model.mean_tokens,
            r.model.latency_p50_ms,
            r.model.latency_p95_ms,
            r.model.tokens_per_s,
            r.model.shown_mean_tokens,
            r.model.shown_latency_p50_ms,
            r.model.shown_latency_p95_ms,
        );
        if markdown {
            out.push_str(&format!(
                "### {title}\n\n| metric | {} |\n|---|{}\n",
                header.join(" | "),
                "---|".repeat(header.len())
            ));
            for (name, vals) in &rows {
                out.push_str(&format!("| {name} | {} |\n", vals.join(" | ")));
            }
        } else {
            out.push_str(&format!(
                "{title}\n  {:<36}{}\n",
                "",
                header
                    .iter()
                    .map(|h| format!("{h:>18}"))
                    .collect::<String>()
            ));
            for (name, vals) in &rows {
                out.push_str(&format!(
                    "  {name:<36}{}\n",
                    vals.iter().map(|v| format!("{v:>18}")).collect::<String>()
                ));
            }
        }
        let trimming = format!(
            "trimming turned {} exact raw proposals into misses and {} misses into exact matches; it lost {} right first lines",
            r.model.trim_lost_exact, r.model.trim_won_exact, r.model.trim_lost_first_line
        );
        out.push_str(&if markdown {
            format!("\n{trimming}\n")
        } else {
            format!("  {trimming}\n")
        });
        for (label, d) in [
            ("edit similarity", r.edit_similarity_diff),
            ("exact match", r.exact_match_diff),
        ] {
            if let Some((m, lo, hi)) = d {
                let line = format!(
                    "model - baseline, trimmed {label}: {m:+.3} (95% CI {lo:+.3} .. {hi:+.3})"
                );
                out.push_str(&if markdown {
                    format!("\n{line}\n")
                } else {
                    format!("  {line}\n")
                });
            }
        }
        out.push('\n');
    }
    out
}

/// Writes every task and result as JSON.
pub fn write_json(
    path: &Path,
    tasks: &[Task],
    model: &[Outcome],
    baseline: Option<&[Outcome]>,
    reports: &[KindReport],
    languages: &[LanguageReport],
    bits: &serde_json::Value,
) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "tasks": tasks,
        "model": model,
        "baseline": baseline,
        "report": reports,
        "languages": languages,
        "bits_per_byte": bits,
    });
    crate::files::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())
}
