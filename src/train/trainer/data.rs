//! The training data stream: each epoch's documents packed into windows with fresh FIM splits,
//! drawn in a seeded order, and where the stream stands (saved in checkpoints).

use serde::{Deserialize, Serialize};

use super::{Doc, TrainSettings};
use crate::model::Tokenizer;
use crate::rng::Rng;
use crate::train::fim::{self, FimSettings};

/// Where the data stream stands (saved in checkpoints).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub next: usize,
    /// Windows in this epoch at the run's sequence length, so a resume that changes the length
    /// knows how far through the epoch it is without packing it first (0 in older checkpoints).
    #[serde(default)]
    pub windows: usize,
}

/// Training windows, rebuilt per epoch with fresh FIM splits from the seed.
///
/// Packing an epoch tokenizes and parses the whole corpus (minutes for a large one), so it happens
/// only when a batch is drawn and the windows at hand are not the ones the position needs: a
/// resumed run packs once, for the epoch and length it continues with.
pub(super) struct Data {
    pub(super) docs: Vec<Doc>,
    pub(super) windows: Vec<Vec<u32>>,
    pub(super) order: Vec<usize>,
    /// What `windows` were packed for; `None` until the first pack.
    pub(super) packed: Option<PackKey>,
    /// Epochs packed so far by this process.
    pub(super) packs: usize,
    /// Seconds spent packing them.
    pub(super) pack_seconds: f64,
    pub(super) pos: DataPosition,
}

/// Everything an epoch's windows depend on besides the documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PackKey {
    epoch: u64,
    seq_len: usize,
    seed: u64,
    fim_rate: f64,
    spm_rate: f64,
}

impl PackKey {
    pub(super) fn new(epoch: u64, s: &TrainSettings) -> Self {
        Self {
            epoch,
            seq_len: s.seq_len,
            seed: s.seed,
            fim_rate: s.fim_rate,
            spm_rate: s.spm_rate,
        }
    }
}

/// Windows of `seq_len + 1` tokens cut from `stream` (inputs and shifted targets).
pub(super) fn windows(stream: &[u32], seq_len: usize) -> Vec<Vec<u32>> {
    if stream.len() < 2 {
        return Vec::new();
    }
    let mut out: Vec<Vec<u32>> = stream.chunks(seq_len).map(|c| c.to_vec()).collect();
    // Each window also needs the token after it as its last target.
    for i in 0..out.len() {
        let next = stream.get((i + 1) * seq_len).copied();
        if let (Some(w), Some(n)) = (out.get_mut(i), next) {
            w.push(n);
        }
    }
    out.retain(|w| w.len() >= 2);
    out
}

impl Data {
    /// Packs the windows of the position's epoch unless they are already at hand; the position
    /// within the epoch is kept.
    pub(super) fn ensure_packed(
        &mut self,
        tokenizer: &Tokenizer,
        s: &TrainSettings,
    ) -> anyhow::Result<()> {
        let key = PackKey::new(self.pos.epoch, s);
        if self.packed == Some(key) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut rng = Rng::new(s.seed ^ key.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fim = FimSettings {
            fim_rate: s.fim_rate,
            spm_rate: s.spm_rate,
        };
        let docs = self
            .docs
            .iter()
            .map(|d| (d.text.as_str(), d.language.as_deref()));
        let stream = fim::pack(tokenizer, docs, fim, s.seq_len, &mut rng)?;
        self.windows = windows(&stream, s.seq_len);
        self.order = (0..self.windows.len()).collect();
        // Fisher-Yates with the same generator: the order is part of the seeded run.
        for i in (1..self.order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        self.packed = Some(key);
        self.packs += 1;
        self.pack_seconds += started.elapsed().as_secs_f64();
        self.pos.windows = self.order.len();
        Ok(())
    }

    pub(super) fn next_batch(
        &mut self,
        tokenizer: &Tokenizer,
        s: &TrainSettings,
    ) -> anyhow::Result<Vec<Vec<u32>>> {
        self.ensure_packed(tokenizer, s)?;
        let mut batch = Vec::with_capacity(s.batch_size);
        while batch.len() < s.batch_size {
            // Checked before moving on: an empty epoch would otherwise pack the next one for nothing.
            if self.order.is_empty() {
                anyhow::bail!("the training files hold too few tokens to fill one sequence");
            }
            if self.pos.next >= self.order.len() {
                self.pos = DataPosition {
                    epoch: self.pos.epoch + 1,
                    next: 0,
                    windows: 0,
                };
                self.ensure_packed(tokenizer, s)?;
                continue;
            }
            let w = self
                .order
                .get(self.pos.next)
                .and_then(|&i| self.windows.get(i))
                .cloned()
                .unwrap_or_default();
            batch.push(w);
            self.pos.next += 1;
        }
        Ok(batch)
    }
}
