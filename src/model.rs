//! The language model: configuration, our Llama/Qwen2 decoder, other families through
//! candle-transformers, loading (directory, hf-hub cache, embedded default), the tokenizer with its
//! FIM template, and generation.
//!
//! Nothing here knows about the editor or the terminal; the pipeline in `complete` and the commands
//! drive it.

pub mod adapter;
pub mod bf16_linear;
pub mod config;
pub mod device;
pub mod embedded;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod load;
pub mod network;
pub mod ops;
pub mod q8_linear;
pub mod score;
pub mod tokenizer;

pub use config::{Family, ModelConfig};
pub use device::DeviceSpec;
pub use load::{LoadError, LoadOptions, ModelSource};
pub use network::Network;
pub use tokenizer::{FimOrder, Tokenizer};

/// Keeps memory that is freed in glibc's heap for reuse, instead of each large allocation getting
/// its own mapping that is returned on free. A forward pass allocates and frees tensors of tens
/// of megabytes (a long prompt's MLP activations, attention scores) layer after layer; fresh
/// mappings cost a page fault and the zeroing of every page each time: three million faults, a
/// sixth of a 2,048-token prompt's time with a 1.5B model. glibc maps anything above 32 MB
/// afresh whatever its threshold is set to, and a thread's own arena maps what does not fit its
/// 64 MB heaps even with mappings turned off, so: no mappings, one arena (the main heap, which
/// grows in place), and freed memory kept up to 1 GB. The process's memory stays near its peak,
/// which it reaches anyway. Call first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation settings, and any value is valid (it
    // returns 0 when it refuses one).
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The largest absolute value in `t` (tests compare tensors with it).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A loaded model: its network, tokenizer and configuration.
#[derive(Debug)]
pub struct Model {
    /// The directory, hub id or embedded name it came from.
    pub name: String,
    pub network: Network,
    pub tokenizer: Tokenizer,
    pub config: ModelConfig,
}

impl Model {
    /// Locates and loads `source` (`online` allows hub downloads).
    pub fn open(source: &ModelSource, online: bool, opts: &LoadOptions) -> Result<Self, LoadError> {
        match source {
            ModelSource::Gguf(path) => gguf::load(path, opts),
            ModelSource::HubGguf { id, file } => {
                let cache = hf_hub::Cache::from_env();
                let path = load::locate_hub_file(id, file, &cache, online, &opts.downloads)?;
                gguf::load(&path, opts)
            }
            _ => load::load(&load::locate(source, online, &opts.downloads)?, opts),
        }
    }
}
