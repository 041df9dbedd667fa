//! `train.log`: one JSON object per line, what a run reports as it goes. The same lines go to
//! stderr with `infill train --plain` (or when stderr is not a terminal), feed the live dashboard,
//! and are what `infill train --watch RUN_DIR` reads to draw a run going on in another process.
//!
//! Every line has an `event` and a `step`:
//! - `start`: a session begins (a new run, or a `--resume`), with its plan and the held-out figure
//!   at that point;
//! - `step`: one optimizer step: loss, learning rate, gradient norm, tokens seen and per second,
//!   the run's wall-clock seconds, the planned last step, the held-out figure when it was measured,
//!   and `checkpoint: true` when a checkpoint was written after it;
//! - `end`: the session ended (finished or stopped), with the final held-out figure.
//!
//! Fields are only ever added, never renamed; readers ignore fields they do not know. Logs from
//! before the `event` field hold step lines alone, and read as such.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::trainer::{HeldOut, LogEntry};

/// One line of `train.log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    Start(Start),
    Step(Step),
    End(End),
}

/// A session of the run begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The step the session starts from (0 for a new run).
    pub step: usize,
    /// The planned last step (with `--minutes`, replanned as the steps are timed).
    pub steps: usize,
    pub tokens_seen: u64,
    /// The run's wall-clock seconds so far, earlier sessions included.
    pub elapsed_s: f64,
    /// How the run began, e.g. "from scratch (Small)".
    pub origin: String,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// A checkpoint is also written once this many seconds passed since the last.
    pub checkpoint_interval_s: f64,
    /// The held-out figure before this session's first step.
    pub held_out: HeldOut,
}

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    #[serde(flatten)]
    pub entry: LogEntry,
    /// The planned last step; 0 where an older log did not record it.
    #[serde(default)]
    pub steps: usize,
    /// The run's wall-clock seconds after this step; 0 where an older log did not record it.
    #[serde(default)]
    pub elapsed_s: f64,
    /// A checkpoint was written after this step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint: bool,
}

/// The session ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub step: usize,
    pub steps: usize,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    /// Stopped (Ctrl-C, q, or a signal) before the planned last step.
    pub interrupted: bool,
    pub held_out: HeldOut,
}

impl Line {
    pub fn step(&self) -> usize {
        match self {
            Line::Start(s) => s.step,
            Line::Step(s) => s.entry.step,
            Line::End(e) => e.step,
        }
    }

    /// The line as `train.log` holds it (no newline).
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A line of `train.log`: any event, or a step line of a log written before events were
    /// named. `None` for anything else (a line cut short by a crash, say).
    pub fn parse(text: &str) -> Option<Line> {
        serde_json::from_str::<Line>(text).ok().or_else(|| {
            serde_json::from_str::<LogEntry>(text).ok().map(|entry| {
                Line::Step(Step {
                    entry,
                    steps: 0,
                    elapsed_s: 0.0,
                    checkpoint: false,
                })
            })
        })
    }
}

/// Keeps the lines of `train.log` up to `step`: a resumed run goes on from its checkpoint, and
/// the steps logged after it were lost with the process that made them.
pub fn truncate(path: &Path, step: usize) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| Line::parse(line).is_some_and(|l| l.step() <= step))
        .map(|line| format!("{line}\n"))
        .collect();
    if kept.len() != text.len() {
        crate::files::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::train::trainer::LanguageHeldOut;

    fn held(bpb: f64) -> HeldOut {
        HeldOut {
            loss: bpb * 2.0,
            bits_per_byte: bpb,
            tokens: 100,
            by_language: vec![LanguageHeldOut {
                language: "rust".into(),
                bits_per_byte: bpb,
                tokens: 100,
            }],
        }
    }

    fn step(n: usize, checkpoint: bool) -> Line {
        Line::Step(Step {
            entry: LogEntry {
                step: n,
                loss: 2.5,
                lr: 1e-3,
                grad_norm: 0.5,
                tokens_seen: 1024 * n as u64,
                tokens_per_s: 900.0,
                held_out: (n == 2).then(|| held(1.5)),
            },
            steps: 10,
            elapsed_s: n as f64,
            checkpoint,
        })
    }

    /// The plain mode's and the log's lines are stable: these exact keys in this order, which
    /// scripts reading `--plain` rely on.
    #[test]
    fn lines_are_stable_json() {
        assert_eq!(
            step(1, true).to_json(),
            r#"{"event":"step","step":1,"loss":2.5,"lr":0.001,"grad_norm":0.5,"tokens_seen":1024,"tokens_per_s":900.0,"steps":10,"elapsed_s":1.0,"checkpoint":true}"#
        );
        let start = Line::Start(Start {
            step: 0,
            steps: 10,
            tokens_seen: 0,
            elapsed_s: 0.0,
            origin: "from scratch (Tiny)".into(),
            eval_every: 5,
            checkpoint_every: 5,
            checkpoint_interval_s: 120.0,
            held_out: held(3.0),
        });
        assert_eq!(
            start.to_json(),
            r#"{"event":"start","step":0,"steps":10,"tokens_seen":0,"elapsed_s":0.0,"origin":"from scratch (Tiny)","eval_every":5,"checkpoint_every":5,"checkpoint_interval_s":120.0,"held_out":{"loss":6.0,"bits_per_byte":3.0,"tokens":100,"by_language":[{"language":"rust","bits_per_byte":3.0,"tokens":100}]}}"#
        );
        for line in [start, step(1, true), step(2, false)] {
            assert_eq!(Line::parse(&line.to_json()), Some(line));
        }
    }

    #[test]
    fn an_older_logs_step_lines_still_read() {
        let old = r#"{"step":3,"loss":2.0,"lr":0.001,"grad_norm":1.0,"tokens_seen":30,"tokens_per_s":5.0}"#;
        let Some(Line::Step(s)) = Line::parse(old) else {
            panic!("not read as a step");
        };
        assert_eq!((s.entry.step, s.steps, s.checkpoint), (3, 0, false));
        assert_eq!(Line::parse(r#"{"step":4,"loss":"#), None);
    }

    #[test]
    fn truncation_keeps_the_lines_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.log");
        let lines: Vec<String> = (1..=4).map(|n| step(n, false).to_json()).collect();
        std::fs::write(&path, format!("{}\n{{\"step\":", lines.join("\n"))).unwrap();
        truncate(&path, 2).unwrap();
        let kept: Vec<usize> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| Line::parse(l).unwrap().step())
            .collect();
        assert_eq!(kept, [1, 2]);
    }
}
