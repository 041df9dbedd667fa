//! Checkpoints: weights, optimizer moments, step, data position and settings, written to a
//! temporary folder, synced, renamed, then `latest` switched atomically, so a crash at any moment
//! leaves the previous checkpoint whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{DataPosition, LogEntry, TrainSettings, Trainer};

impl Trainer {
    /// Writes a checkpoint under `dir` and points `dir/latest` at it, atomically.
    pub fn save_checkpoint(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the checkpoint folder", dir.display()))?;
        let name = format!("step-{:08}", self.step);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        candle_core::safetensors::save(&self.weights()?, tmp.join("model.safetensors"))?;
        let mut moments = HashMap::new();
        for (i, (name, _)) in self.opt.vars.iter().enumerate() {
            if let (Some(m), Some(v)) = (self.opt.m.get(i), self.opt.v.get(i)) {
                moments.insert(format!("m.{name}"), m.clone());
                moments.insert(format!("v.{name}"), v.clone());
            }
        }
        candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
        let state = CheckpointState {
            step: self.step,
            adam_t: self.opt.t,
            tokens_seen: self.tokens_seen,
            data: self.data.pos,
            settings: self.settings.clone(),
            config: self.config.to_hf_json(),
            tied: self.tied,
            log: self.log.clone(),
            origin: self.origin.clone(),
            seconds: self.wall_seconds(),
        };
        std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(&state)?)?;
        for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            std::fs::File::open(tmp.join(f))?.sync_all()?;
        }
        let final_dir = dir.join(&name);
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir)?;
        sync_dir(dir);
        crate::files::write_atomic(&dir.join("latest"), name.as_bytes())?;
        // Keep the two newest checkpoints.
        let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            })
            .collect();
        old.sort();
        for p in old.iter().rev().skip(2) {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(final_dir)
    }

    /// Restores the latest checkpoint under `dir` (see [`Checkpoint::latest`]).
    pub fn load_checkpoint(&mut self, dir: &Path) -> anyhow::Result<()> {
        let checkpoint = Checkpoint::latest(dir)?
            .with_context(|| format!("{}: no checkpoint to resume from", dir.display()))?;
        self.restore(checkpoint)
    }

    /// Restores a checkpoint written by [`save_checkpoint`](Self::save_checkpoint) into this trainer
    /// (built with the same config and data).
    pub fn restore(&mut self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        let Checkpoint { dir: ckpt, state } = checkpoint;
        let weights = candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu)?;
        let moments =
            candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &Device::Cpu)?;
        for (i, (name, var)) in self.opt.vars.iter().enumerate() {
            let w = weights
                .get(name)
                .with_context(|| format!("checkpoint lacks {name}"))?;
            var.set(&w.to_device(var.device())?)?;
            if let (Some(m), Some(v)) = (
                moments.get(&format!("m.{name}")),
                moments.get(&format!("v.{name}")),
            ) {
                if let Some(slot) = self.opt.m.get_mut(i) {
                    *slot = m.to_device(var.device())?;
                }
                if let Some(slot) = self.opt.v.get_mut(i) {
                    *slot = v.to_device(var.device())?;
                }
            }
        }
        self.opt.t = state.adam_t;
        self.step = state.step;
        self.tokens_seen = state.tokens_seen;
        self.log = state.log;
        self.origin = state.origin;
        self.earlier_seconds = state.seconds;
        self.settings = state.settings;
        // The windows are packed for this position when the next batch is drawn.
        self.data.pos = state.data;
        Ok(())
    }
}

/// A checkpoint on disk: its folder and its state, read once.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: CheckpointState,
}

impl Checkpoint {
    /// The checkpoint `dir/latest` points at; `None` when there is none yet.
    pub fn latest(dir: &Path) -> anyhow::Result<Option<Self>> {
        let Ok(name) = std::fs::read_to_string(dir.join("latest")) else {
            return Ok(None);
        };
        let ckpt = dir.join(name.trim());
        let bytes = std::fs::read(ckpt.join("state.json"))
            .with_context(|| format!("{}: the checkpoint has no state.json", ckpt.display()))?;
        let state = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: damaged state.json", ckpt.display()))?;
        Ok(Some(Self { dir: ckpt, state }))
    }
}

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    pub adam_t: usize,
    pub tokens_seen: u64,
    pub data: DataPosition,
    pub settings: TrainSettings,
    pub config: serde_json::Value,
    pub tied: bool,
    pub log: Vec<LogEntry>,
    /// How the run began; empty in checkpoints written before it was recorded.
    #[serde(default)]
    pub origin: String,
    /// Wall-clock seconds of the whole run up to this checkpoint (0 in older checkpoints).
    #[serde(default)]
    pub seconds: f64,
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
