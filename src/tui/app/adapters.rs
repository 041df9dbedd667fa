//! LoRA adapters applied at run time (`infill edit --adapter A --adapter B`): the first once the
//! model is ready, then F7 goes to the next, and after the last to the base model, without loading
//! the model again. A switch voids what the model before proposed or scored.

use std::path::PathBuf;
use std::time::Instant;

use super::App;
use crate::worker::{AdapterRequest, Job, Reply};

#[derive(Debug, Default)]
pub(in crate::tui) struct Adapters {
    dirs: Vec<PathBuf>,
    /// The adapter applied now (an index into `dirs`); `None`: the base model alone.
    active: Option<usize>,
    /// The switch asked for and not yet done: its request and where it goes.
    pending: Option<(u64, Option<usize>)>,
}

impl Adapters {
    /// The short name of adapter `i`: the run's folder for the `adapter/` folder of a training
    /// run, else the adapter's own folder.
    fn name(&self, i: usize) -> String {
        let Some(dir) = self.dirs.get(i) else {
            return String::new();
        };
        let own = |p: &std::path::Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
        };
        let named = match own(dir) {
            Some(n) if n == "adapter" => dir.parent().and_then(own),
            other => other,
        };
        named.unwrap_or_else(|| dir.display().to_string())
    }

    /// The name of the adapter applied now, if one is.
    pub fn active_name(&self) -> Option<String> {
        self.active.map(|i| self.name(i))
    }

    /// What the status line says of a switch in flight.
    pub fn switching(&self) -> bool {
        self.pending.is_some()
    }
}

impl App {
    /// The adapters F7 switches between (none: F7 says how to give some).
    pub fn set_adapters(&mut self, dirs: Vec<PathBuf>) {
        self.adapters = Adapters {
            dirs,
            ..Adapters::default()
        };
    }

    /// The model is ready: the first adapter goes on before anything is proposed.
    pub(super) fn apply_first_adapter(&mut self) {
        if !self.adapters.dirs.is_empty() {
            self.switch_adapter(Some(0));
        }
    }

    /// F7: the next adapter, and after the last the base model.
    pub(super) fn next_adapter(&mut self) {
        let n = self.adapters.dirs.len();
        if n == 0 {
            return self.say("F7: no adapters; start infill edit with --adapter DIR");
        }
        if !self.completions_possible() {
            return self.warn("no model to apply an adapter to");
        }
        // From the switch in flight, if there is one: F7 pressed twice goes two steps.
        let from = self
            .adapters
            .pending
            .map_or(self.adapters.active, |(_, to)| to);
        let next = match from {
            None => Some(0),
            Some(i) if i + 1 < n => Some(i + 1),
            Some(_) => None,
        };
        self.switch_adapter(next);
    }

    fn switch_adapter(&mut self, to: Option<usize>) {
        let id = self.new_id();
        self.requests.push(Job::Adapter(AdapterRequest {
            id,
            dir: to.and_then(|i| self.adapters.dirs.get(i).cloned()),
        }));
        self.adapters.pending = Some((id, to));
        // Whatever is in flight is for the model before the switch.
        self.completion.invalidate();
        let name = to.map_or_else(|| "the base model".to_owned(), |i| self.adapters.name(i));
        self.say(format!("switching to {name}…"));
    }

    /// A reply about an adapter switch; `Some` when it is about something else.
    pub(super) fn adapter_reply(&mut self, reply: Reply, now: Instant) -> Option<Reply> {
        let pending = self.adapters.pending;
        match reply {
            Reply::Adapter { id } if pending.is_some_and(|(p, _)| p == id) => {
                let to = pending.and_then(|(_, to)| to);
                self.adapters.pending = None;
                self.adapters.active = to;
                // Proposals remembered and scores shown were the model before's.
                self.completion.forget();
                self.overlay.model_changed(now);
                let n = self.adapters.dirs.len();
                self.say(match to {
                    Some(i) => format!(
                        "adapter {} ({}/{n}) · F7 next",
                        self.adapters.name(i),
                        i + 1
                    ),
                    None => "the base model, no adapter · F7 next".to_owned(),
                });
                self.ask_now();
                None
            }
            Reply::Failed { id, message } if pending.is_some_and(|(p, _)| p == id) => {
                let to = pending.and_then(|(_, to)| to);
                self.adapters.pending = None;
                let name =
                    to.map_or_else(|| "the base model".to_owned(), |i| self.adapters.name(i));
                self.warn(format!("adapter {name} not applied: {message}"));
                None
            }
            // A switch that a newer one replaced before it ran.
            Reply::Adapter { .. } => None,
            other => Some(other),
        }
    }
}
