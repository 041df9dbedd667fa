//! The probability overlay (F2): every token coloured by the rank the model gave it, GLTR's buckets
//! (Strobelt et al.): top 10, top 100, top 1000, beyond. Scores come from the worker in the
//! background, chunk by chunk in text order; after an edit the worker computes only the chunks the
//! edit touched (the rest come from its cache), and until the reply comes the text from the edit on
//! shows no scores at all (never stale ones).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::App;
use crate::model::score::TokenScore;
use crate::worker::{Job, Reply, ScoreRequest};

/// Files above this many bytes are not scored (the status line says so).
pub const MAX_OVERLAY_BYTES: usize = 512 * 1024;

pub use crate::model::score::gltr_bucket as bucket;

#[derive(Debug, Default)]
pub(in crate::tui) struct Overlay {
    pub on: bool,
    /// Scores of the leading tokens of the text, in order.
    pub scores: Vec<TokenScore>,
    /// Bytes of the current text the scores still describe (text after it changed since).
    pub valid_until: usize,
    in_flight: Option<(u64, Arc<AtomicBool>)>,
    /// The first reply of the request in flight has come (it says which kept tokens stay).
    got_first: bool,
    due: Option<Instant>,
    /// Tokens/s and milliseconds of the last finished refresh (the status line shows the time).
    pub last: Option<(f64, f64)>,
}

impl Overlay {
    /// The valid scores: tokens that end before the first change since they were computed.
    pub fn valid(&self) -> &[TokenScore] {
        let n = self.scores.partition_point(|s| s.end <= self.valid_until);
        self.scores.get(..n).unwrap_or_default()
    }

    pub fn is_scoring(&self) -> bool {
        self.in_flight.is_some()
    }

    fn cancel(&mut self) {
        if let Some((_, c)) = self.in_flight.take() {
            c.store(true, Ordering::Relaxed);
        }
    }

    /// The model changed (another adapter): no score stands, and all are asked for again.
    pub fn model_changed(&mut self, now: Instant) {
        self.cancel();
        self.valid_until = 0;
        self.scores.clear();
        if self.on {
            self.due = Some(now);
        }
    }

    /// A completion is about to be asked for: scoring in flight steps aside (the worker runs one job
    /// at a time) and resumes once the completion is done, from its cache.
    pub fn yield_to_completion(&mut self) {
        if self.in_flight.is_some() {
            self.cancel();
            self.due = Some(Instant::now());
        }
    }
}

impl App {
    /// F2.
    pub(super) fn toggle_overlay(&mut self, now: Instant) {
        let o = &mut self.overlay;
        o.on = !o.on;
        if !o.on {
            o.cancel();
            o.due = None;
            self.say("overlay off");
            return;
        }
        if self.buffer.doc.len_bytes() > MAX_OVERLAY_BYTES {
            self.overlay.on = false;
            return self.warn(format!(
                "overlay: this file is larger than {} KB; infill scores files up to that size",
                MAX_OVERLAY_BYTES / 1024
            ));
        }
        if !self.completions_possible() {
            self.overlay.on = false;
            return self.warn("overlay: no model to score with");
        }
        self.overlay.due = Some(now);
        self.say("overlay on: colours are the rank the model gave each token (F3 / Shift-F3: next / previous surprising token)");
    }

    /// After every event: text that changed loses its scores, and a refresh is scheduled.
    pub(super) fn overlay_after_event(&mut self, now: Instant) {
        let Some(changed) = self.buffer.doc.take_changed_from() else {
            return;
        };
        if !self.overlay.on {
            return;
        }
        let byte = self.buffer.doc.byte_of(changed);
        let o = &mut self.overlay;
        o.valid_until = o.valid_until.min(byte);
        o.cancel();
        o.due = Some(now + Duration::from_millis(self.config.debounce_ms.max(1) * 2));
    }

    /// Sends the score request when it is due and no completion is in flight.
    pub(super) fn overlay_tick(&mut self, now: Instant) {
        if !self.overlay.on || self.is_thinking() || self.overlay.due.is_none_or(|d| d > now) {
            return;
        }
        if self.buffer.doc.len_bytes() > MAX_OVERLAY_BYTES {
            self.overlay.on = false;
            return self.warn("overlay off: the file grew past the size infill scores");
        }
        self.overlay.due = None;
        let id = self.new_id();
        let cancel = Arc::new(AtomicBool::new(false));
        self.requests.push(Job::Score(ScoreRequest {
            id,
            text: self.buffer.doc.text(),
            cancel: Arc::clone(&cancel),
        }));
        self.overlay.in_flight = Some((id, cancel));
        self.overlay.got_first = false;
    }

    pub(super) fn overlay_deadline(&self) -> Option<Instant> {
        self.overlay
            .due
            .filter(|_| self.overlay.on && !self.is_thinking())
    }

    /// The worker's replies about scoring.
    pub(super) fn overlay_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Scored { id, from, tokens } => self.overlay_scored(id, from, tokens),
            Reply::ScoreDone {
                id,
                tokens_per_second,
                ms,
            } => self.overlay_done(id, tokens_per_second, ms),
            Reply::Failed { id, message } if self.overlay_failed(id) => {
                self.warn(format!("overlay off: {message}"));
            }
            _ => {}
        }
    }

    fn overlay_scored(&mut self, id: u64, from: usize, tokens: Vec<TokenScore>) {
        let o = &mut self.overlay;
        if o.in_flight.as_ref().is_none_or(|(i, _)| *i != id) {
            return;
        }
        if !o.got_first {
            o.scores.truncate(from);
            o.got_first = true;
        }
        o.scores.extend(tokens);
        o.valid_until = o.scores.last().map_or(0, |s| s.end);
    }

    /// A score request failed: the overlay turns off (true), or `id` was not a score request.
    fn overlay_failed(&mut self, id: u64) -> bool {
        let o = &mut self.overlay;
        if o.in_flight.as_ref().is_some_and(|(i, _)| *i == id) {
            o.in_flight = None;
            o.on = false;
            return true;
        }
        false
    }

    fn overlay_done(&mut self, id: u64, tokens_per_second: f64, ms: f64) {
        let o = &mut self.overlay;
        if o.in_flight.as_ref().is_some_and(|(i, _)| *i == id) {
            o.in_flight = None;
            o.valid_until = usize::MAX;
            o.last = Some((tokens_per_second, ms));
        }
    }

    /// The scored token under the cursor (the inspector shows it).
    pub(in crate::tui) fn token_at_cursor(&self) -> Option<&TokenScore> {
        if !self.overlay.on {
            return None;
        }
        let byte = self.buffer.doc.byte_of(self.buffer.cursor);
        let valid = self.overlay.valid();
        let i = valid.partition_point(|s| s.end <= byte);
        valid.get(i).filter(|s| s.start <= byte)
    }

    /// F3 / Shift-F3: the next (previous) token outside the model's top 10.
    pub(super) fn jump_to_surprise(&mut self, forward: bool) {
        if !self.overlay.on {
            return self.say("F3 jumps between surprising tokens once the overlay is on (F2)");
        }
        let byte = self.buffer.doc.byte_of(self.buffer.cursor);
        let valid = self.overlay.valid();
        let found = if forward {
            valid.iter().find(|s| s.start > byte && bucket(s.rank) > 0)
        } else {
            valid
                .iter()
                .rev()
                .find(|s| s.start < byte && bucket(s.rank) > 0)
        };
        match found.map(|s| s.start) {
            Some(start) => {
                self.completion.invalidate();
                let pos = self.buffer.doc.pos_of_byte(start);
                self.buffer.go_to(pos);
            }
            None => self.say(if forward {
                "no surprising token (outside the top 10) after the cursor"
            } else {
                "no surprising token (outside the top 10) before the cursor"
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn gltr_buckets() {
        assert_eq!(
            [1, 10, 11, 100, 101, 1000, 1001].map(bucket),
            [0, 0, 1, 1, 2, 2, 3]
        );
    }
}
