//! Finding and loading a model: a local directory, a Hugging Face hub id, or the embedded default.
//!
//! Everything a user can get wrong here (a missing or pickled weight file, a truncated safetensors
//! file, a config that does not match its weights, a tokenizer without FIM tokens) becomes a
//! [`LoadError`] that names the file and, where there is one, the tensor. Safetensors headers are
//! checked before any weight is mapped, so a truncated download is reported as such and never reaches
//! candle.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::bf16_linear::Backing;
use super::config::{ConfigError, LlamaConfig, ModelConfig};
use super::llama::{InPlace, Kernels, Llama};
use super::network::Network;
use super::tokenizer::{Tokenizer, TokenizerError};
use super::{Model, embedded};

/// Why a model could not be loaded. Every variant names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{0}: no such directory or GGUF file, and not a Hugging Face repo id (like \
         Qwen/Qwen2.5-Coder-0.5B, or Qwen/Qwen2.5-Coder-0.5B-GGUF:qwen2.5-coder-0.5b-q8_0.gguf)"
    )]
    NotFound(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error("{}: {source}", path.display())]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
    #[error("{}: missing {file}; a model directory needs config.json, tokenizer.json and *.safetensors", dir.display())]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error(
        "{}: only pickle weights ({file}); infill refuses them because loading a pickle can run code. \
         Convert them to safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)` in transformers)",
        dir.display()
    )]
    Pickle { dir: PathBuf, file: String },
    #[error("{}: {why}; the file is damaged or incomplete, download it again", path.display())]
    Safetensors { path: PathBuf, why: String },
    #[error("{}: no tensor \"{tensor}\"; are the weights from the model config.json describes?", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error(
        "{}: tensor \"{tensor}\" has shape {got:?} but config.json implies {expected:?}; \
         does config.json belong to these weights?",
        path.display()
    )]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{}: {why}", path.display())]
    Weights { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    Gguf { path: PathBuf, why: String },
    #[error(
        "{0} is a GGUF file; this needs a model directory in Hugging Face layout (config.json, \
         tokenizer.json, *.safetensors)"
    )]
    NeedsDirectory(String),
    #[error("{id}: {why}")]
    Hub { id: String, why: String },
    #[error(
        "{family} models compute in f32 on the CPU (candle's {dtype} path for them is missing or \
         inaccurate); leave out --dtype or pass --dtype f32"
    )]
    Precision { family: &'static str, dtype: String },
    #[error(
        "no default model is built into this binary yet; pass --model with a model directory or a \
         Hugging Face repo id (e.g. --model Qwen/Qwen2.5-Coder-0.5B)"
    )]
    NoDefaultModel,
}

/// Where a model comes from, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Embedded,
    Dir(PathBuf),
    Hub(String),
    /// A GGUF file on disk.
    Gguf(PathBuf),
    /// A GGUF file of a hub repository: `org/name:file.gguf`.
    HubGguf {
        id: String,
        file: String,
    },
}

impl ModelSource {
    /// Reads `--model`: nothing is the embedded default, an existing path a directory or a GGUF
    /// file, `org/name` a hub id and `org/name:file.gguf` a GGUF file of a hub repository.
    pub fn parse(spec: Option<&str>) -> Result<Self, LoadError> {
        let Some(spec) = spec else {
            return Ok(Self::Embedded);
        };
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            return if super::gguf::is_gguf(path) {
                Ok(Self::Gguf(path.to_path_buf()))
            } else {
                Err(LoadError::Gguf {
                    path: path.to_path_buf(),
                    why: "is a file but not a GGUF file; --model takes a model directory, a \
                          .gguf file or a Hugging Face repo id"
                        .into(),
                })
            };
        }
        if let Some((id, file)) = spec.split_once(':')
            && file.ends_with(".gguf")
            && !file.contains("..")
            && !file.starts_with('/')
            && let Self::Hub(id) = Self::parse(Some(id))?
        {
            return Ok(Self::HubGguf {
                id,
                file: file.to_string(),
            });
        }
        let parts: Vec<&str> = spec.split('/').collect();
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match parts.as_slice() {
            [org, name] if valid(org) && valid(name) => Ok(Self::Hub(spec.to_string())),
            _ => Err(LoadError::NotFound(spec.to_string())),
        }
    }
}

/// Bytes or files of one model, found but not yet loaded.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// How the model is named in messages and `--json` output.
    pub name: String,
    pub config: Blob,
    pub tokenizer: Blob,
    pub weights: Vec<Blob>,
}

/// A file on disk or a file embedded in the binary.
#[derive(Debug, Clone)]
pub enum Blob {
    File(PathBuf),
    Static {
        label: &'static str,
        bytes: &'static [u8],
    },
}

impl Blob {
    pub fn label(&self) -> PathBuf {
        match self {
            Self::File(p) => p.clone(),
            Self::Static { label, .. } => PathBuf::from(label),
        }
    }

    pub fn read(&self) -> Result<std::borrow::Cow<'static, [u8]>, LoadError> {
        match self {
            Self::File(p) => std::fs::read(p)
                .map(Into::into)
                .map_err(|source| LoadError::Io {
                    path: p.clone(),
                    source,
                }),
            Self::Static { bytes, .. } => Ok((*bytes).into()),
        }
    }
}

/// Whether hub downloads are allowed: not when `HF_HUB_OFFLINE` is set (as hf-hub and transformers
/// read it).
pub fn online_allowed() -> bool {
    std::env::var("HF_HUB_OFFLINE").map_or(true, |v| v.is_empty() || v == "0")
}

/// Finds the files of `source`, downloading from the hub when `online` and not cached.
pub fn locate(
    source: &ModelSource,
    online: bool,
    downloads: &Downloads,
) -> Result<ModelFiles, LoadError> {
    match source {
        ModelSource::Embedded => embedded::files().ok_or(LoadError::NoDefaultModel),
        ModelSource::Dir(dir) => locate_dir(dir),
        ModelSource::Hub(id) => locate_hub(id, &hf_hub::Cache::from_env(), online, downloads),
        ModelSource::Gguf(path) => Err(LoadError::NeedsDirectory(path.display().to_string())),
        ModelSource::HubGguf { id, file } => Err(LoadError::NeedsDirectory(format!("{id}:{file}"))),
    }
}

/// One file of a hub repository (a GGUF file): from the local hf-hub cache first, downloaded
/// (with progress) otherwise.
pub fn locate_hub_file(
    id: &str,
    file: &str,
    cache: &hf_hub::Cache,
    online: bool,
    downloads: &Downloads,
) -> Result<PathBuf, LoadError> {
    let hub_err = |why: String| LoadError::Hub {
        id: id.to_string(),
        why,
    };
    if let Some(path) = cache.model(id.to_string()).get(file) {
        return Ok(path);
    }
    if !online {
        return Err(hub_err(format!(
            "{file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; download it \
             once online (or pass --model path/to/{file})",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(true)
        .build()
        .map_err(|e| hub_err(format!("cannot reach the Hugging Face hub ({e})")))?;
    downloads
        .fetch(cache, &api.model(id.to_string()), id, file)
        .map_err(|e| hub_err(format!("downloading {file} failed ({e})")))
}

/// The files of a model directory in Hugging Face layout.
pub fn locate_dir(dir: &Path) -> Result<ModelFiles, LoadError> {
    let need = |file: &'static str| {
        let p = dir.join(file);
        if p.is_file() {
            Ok(p)
        } else {
            Err(LoadError::MissingFile {
                dir: dir.to_path_buf(),
                file,
            })
        }
    };
    let config = need("config.json")?;
    let tokenizer = need("tokenizer.json")?;
    // Only the canonical names: other safetensors files (adapters, our golden test data) are not weights.
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let weights: Vec<PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_names(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        if let Some(pickle) = read_dir_sorted(dir)?.into_iter().find(|p| is_pickle(p)) {
            let file = pickle
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(LoadError::Pickle {
                dir: dir.to_path_buf(),
                file,
            });
        }
        return Err(LoadError::MissingFile {
            dir: dir.to_path_buf(),
            file: "model.safetensors",
        });
    };
    for w in &weights {
        if !w.is_file() {
            return Err(LoadError::Safetensors {
                path: w.clone(),
                why: "listed in the index but missing".into(),
            });
        }
    }
    Ok(ModelFiles {
        name: dir.display().to_string(),
        config: Blob::File(config),
        tokenizer: Blob::File(tokenizer),
        weights: weights.into_iter().map(Blob::File).collect(),
    })
}

/// The files of a hub model: from the local hf-hub cache first, downloaded (with progress) otherwise.
pub fn locate_hub(
    id: &str,
    cache: &hf_hub::Cache,
    online: bool,
    downloads: &Downloads,
) -> Result<ModelFiles, LoadError> {
    let hub_err = |why: String| LoadError::Hub {
        id: id.to_string(),
        why,
    };
    let cached = cache.model(id.to_string());
    let from_cache = |file: &str| cached.get(file);
    let complete_in_cache = || -> Option<ModelFiles> {
        let config = from_cache("config.json")?;
        let tokenizer = from_cache("tokenizer.json")?;
        let weights = match from_cache("model.safetensors") {
            Some(w) => vec![w],
            None => {
                let index = from_cache("model.safetensors.index.json")?;
                let shards = shard_names(&index).ok()?;
                shards
                    .iter()
                    .map(|s| from_cache(s))
                    .collect::<Option<Vec<_>>>()?
            }
        };
        Some(hub_files(id, config, tokenizer, weights))
    };
    if let Some(files) = complete_in_cache() {
        return Ok(files);
    }
    if from_cache("config.json").is_some() && from_cache("pytorch_model.bin").is_some() {
        let dir = from_cache("config.json")
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        return Err(LoadError::Pickle {
            dir,
            file: "pytorch_model.bin".into(),
        });
    }
    if !online {
        return Err(hub_err(format!(
            "not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; download it once online \
             (or copy the model directory here) and pass --model DIR",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(true)
        .build()
        .map_err(|e| hub_err(format!("cannot reach the Hugging Face hub ({e})")))?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(|e| {
        hub_err(format!(
            "not in the local cache and the hub could not be asked ({e}); connect to the network, or \
             download the model elsewhere and pass --model DIR"
        ))
    })?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let fetch = |file: &str| {
        downloads
            .fetch(cache, &repo, id, file)
            .map_err(|e| hub_err(format!("downloading {file} failed ({e})")))
    };
    let weights = if names.contains(&"model.safetensors") {
        vec![fetch("model.safetensors")?]
    } else if names.contains(&"model.safetensors.index.json") {
        let index = fetch("model.safetensors.index.json")?;
        shard_names(&index)?
            .iter()
            .map(|s| fetch(s))
            .collect::<Result<Vec<_>, _>>()?
    } else if let Some(pickle) = names.iter().find(|n| is_pickle(Path::new(n))) {
        return Err(LoadError::Pickle {
            dir: PathBuf::from(id),
            file: (*pickle).to_string(),
        });
    } else {
        return Err(hub_err("the repository has no safetensors weights".into()));
    };
    if !names.contains(&"tokenizer.json") {
        return Err(hub_err(
            "the repository has no tokenizer.json (infill needs the fast tokenizer file)".into(),
        ));
    }
    Ok(hub_files(
        id,
        fetch("config.json")?,
        fetch("tokenizer.json")?,
        weights,
    ))
}

fn hub_files(id: &str, config: PathBuf, tokenizer: PathBuf, weights: Vec<PathBuf>) -> ModelFiles {
    ModelFiles {
        name: id.to_string(),
        config: Blob::File(config),
        tokenizer: Blob::File(tokenizer),
        weights: weights.into_iter().map(Blob::File).collect(),
    }
}

fn is_pickle(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth" || e == "ckpt")
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    out.sort();
    Ok(out)
}

/// The distinct shard files named by a `model.safetensors.index.json`, in order.
fn shard_names(index: &Path) -> Result<Vec<String>, LoadError> {
    let bad = |why: String| LoadError::Weights {
        path: index.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("has no \"weight_map\"".into()))?;
    let mut files: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map value {file} is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad(format!(
                "shard name {file:?} points outside the model directory"
            )));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    if files.is_empty() {
        return Err(bad("lists no shards".into()));
    }
    Ok(files)
}

/// The shape and dtype of one tensor, as its file's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Where its data lies in the file, in bytes from the start.
    pub bytes: std::ops::Range<u64>,
}

/// Reads only the header of a safetensors file (not its data) and checks it against the file's length.
pub fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, LoadError> {
    use std::io::Read;
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let mut head = vec![0u8; 8.min(total as usize)];
    file.read_exact(&mut head).map_err(io)?;
    if let Ok(len) = <[u8; 8]>::try_from(head.as_slice()) {
        let want = u64::from_le_bytes(len)
            .min(total.saturating_sub(8))
            .min(100_000_000) as usize;
        let mut header = vec![0u8; want];
        file.read_exact(&mut header).map_err(io)?;
        head.extend_from_slice(&header);
    }
    safetensors_header(path, &head, total)
}

/// Checks a safetensors header (`bytes` holds at least the header) against the file's real length
/// `total`: a file cut short by an interrupted download or damaged on disk fails here with the tensor
/// it cannot hold. Written here, not the `safetensors` crate's `read_metadata`: that one wants the
/// whole file in memory, and this reads a header of a few kilobytes from a multi-gigabyte file.
pub fn safetensors_header(
    path: &Path,
    bytes: &[u8],
    total: u64,
) -> Result<BTreeMap<String, TensorInfo>, LoadError> {
    let bad = |why: String| LoadError::Safetensors {
        path: path.to_path_buf(),
        why,
    };
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            bad(format!(
                "only {} bytes long, shorter than a safetensors header",
                bytes.len()
            ))
        })?;
    let header_len = u64::from_le_bytes(len_bytes);
    let data_start = 8u64.saturating_add(header_len);
    if header_len > 100_000_000 || data_start > total || data_start > bytes.len() as u64 {
        return Err(bad(format!(
            "declares a {header_len}-byte header but the file has {total} bytes"
        )));
    }
    let header = bytes
        .get(8..data_start as usize)
        .ok_or_else(|| bad("header out of range".into()))?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| bad(format!("header is not valid JSON ({e})")))?;
    let data_len = total - data_start;
    let mut out = BTreeMap::new();
    for (name, entry) in json {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_string();
        let shape: Option<Vec<usize>> =
            entry
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                });
        let offsets: Option<Vec<u64>> = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.iter().map(|x| x.as_u64()).collect());
        let (Some(shape), Some(&[begin, end])) = (shape, offsets.as_deref()) else {
            return Err(bad(format!(
                "tensor \"{name}\" has a malformed header entry"
            )));
        };
        let width = match dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            other => {
                return Err(bad(format!(
                    "tensor \"{name}\" has unsupported dtype {other:?}"
                )));
            }
        };
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        if end < begin || end - begin != numel * width {
            return Err(bad(format!(
                "tensor \"{name}\" has {} data bytes for shape {shape:?} {dtype}",
                end.saturating_sub(begin)
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "truncated: tensor \"{name}\" ends at byte {} but the file has {}",
                data_start + end,
                total
            )));
        }
        let bytes = data_start + begin..data_start + end;
        out.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                bytes,
            },
        );
    }
    Ok(out)
}

/// A file coming from the hub, as it downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub file: String,
    pub done: u64,
    pub total: u64,
}

/// Where hub downloads report (the language server turns them into `$/progress`); without a
/// watcher, hf-hub draws its bar on standard error when that is a terminal.
#[derive(Clone, Default)]
pub struct Downloads(Option<WatchFn>);

type WatchFn = Arc<dyn Fn(&Download) + Send + Sync>;

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Downloads(watched)"
        } else {
            "Downloads(bar)"
        })
    }
}

impl Downloads {
    pub fn watched(watch: impl Fn(&Download) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(watch)))
    }

    /// Tells the watcher (if any) how a download stands.
    pub fn report(&self, download: &Download) {
        if let Some(watch) = &self.0 {
            watch(download);
        }
    }

    /// `file` of `repo`: from the cache, else downloaded.
    fn fetch(
        &self,
        cache: &hf_hub::Cache,
        repo: &hf_hub::api::sync::ApiRepo,
        id: &str,
        file: &str,
    ) -> Result<PathBuf, hf_hub::api::sync::ApiError> {
        match &self.0 {
            None => repo.get(file),
            Some(watch) => match cache.model(id.to_owned()).get(file) {
                Some(path) => Ok(path),
                None => repo.download_with_progress(
                    file,
                    Watch {
                        watch: Arc::clone(watch),
                        download: Download {
                            file: file.to_owned(),
                            done: 0,
                            total: 0,
                        },
                        reported: None,
                    },
                ),
            },
        }
    }
}

/// hf-hub's progress calls, passed on at most every 200 ms.
struct Watch {
    watch: WatchFn,
    download: Download,
    reported: Option<std::time::Instant>,
}

impl hf_hub::api::Progress for Watch {
    fn init(&mut self, size: usize, _filename: &str) {
        self.download.total = size as u64;
        (self.watch)(&self.download);
        self.reported = Some(std::time::Instant::now());
    }

    fn update(&mut self, size: usize) {
        self.download.done += size as u64;
        if self
            .reported
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(200))
        {
            (self.watch)(&self.download);
            self.reported = Some(std::time::Instant::now());
        }
    }

    fn finish(&mut self) {
        self.download.done = self.download.total;
        (self.watch)(&self.download);
    }
}

/// Settings for turning files into a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Precision of the weights in memory; `None` chooses: bf16 (our kernel, half the memory
    /// traffic) when the checkpoint stores its projections in bf16, so nothing is lost, else f32.
    pub dtype: Option<DType>,
    /// Where hub downloads report.
    pub downloads: Downloads,
    /// Whether infill's own CPU kernels run where the device is the CPU (bf16 and quantized
    /// products, attention); `false` runs candle's ops only, as on a GPU, which checks the one
    /// against the other.
    pub cpu_kernels: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            downloads: Downloads::default(),
            cpu_kernels: true,
        }
    }
}

impl LoadOptions {
    /// Whether infill's CPU kernels and their layouts of the weights are used.
    pub fn host_kernels(&self) -> bool {
        self.cpu_kernels && self.device.is_cpu()
    }

    /// The kernels an inference model runs.
    pub fn inference_kernels(&self) -> Kernels {
        if self.host_kernels() {
            Kernels::Fused
        } else {
            Kernels::Portable
        }
    }
}

/// Loads located files into a ready model.
pub fn load(files: &ModelFiles, opts: &LoadOptions) -> Result<Model, LoadError> {
    let config_path = files.config.label();
    let config_text = files.config.read()?;
    let config_text = std::str::from_utf8(&config_text).map_err(|_| LoadError::Config {
        path: config_path.clone(),
        source: ConfigError::Json("not UTF-8".into()),
    })?;
    let config = ModelConfig::parse(config_text).map_err(|source| LoadError::Config {
        path: config_path.clone(),
        source,
    })?;
    let tokenizer_bytes = files.tokenizer.read()?;
    let tokenizer =
        Tokenizer::from_bytes(&tokenizer_bytes, config.vocab_size()).map_err(|source| {
            LoadError::Tokenizer {
                path: files.tokenizer.label(),
                source,
            }
        })?;

    // Check every header before mapping anything; remember which file holds which tensor.
    let mut owner: BTreeMap<String, (PathBuf, TensorInfo)> = BTreeMap::new();
    let mut blob_of: HashMap<PathBuf, &Blob> = HashMap::new();
    for blob in &files.weights {
        let path = blob.label();
        blob_of.insert(path.clone(), blob);
        let header = match blob {
            Blob::File(p) => read_safetensors_header(p)?,
            Blob::Static { bytes, .. } => safetensors_header(&path, bytes, bytes.len() as u64)?,
        };
        for (name, info) in header {
            owner.insert(name, (path.clone(), info));
        }
    }
    let first = files.weights.first().map(Blob::label).unwrap_or_default();
    // In bf16 our decoder reads its projections on the CPU straight into its own bf16 kernel
    // (candle's CPU matmul has none) and computes in f32; a GPU computes in bf16 itself. The
    // other families compute in f32 only.
    let stored_bf16 = owner
        .get("model.layers.0.mlp.up_proj.weight")
        .is_some_and(|(_, t)| t.dtype == "BF16");
    let dtype = opts.dtype.unwrap_or(
        if stored_bf16 && (opts.host_kernels() || !opts.device.is_cpu()) {
            DType::BF16
        } else {
            DType::F32
        },
    );
    // Candle's StarCoder2 and GPT-BigCode compute in the weights' dtype: GPT-BigCode cannot
    // upcast bf16 or f16, and StarCoder2's bf16 logits are off by up to 0.9 nats where
    // transformers' are off by 0.03. Refuse rather than run them wrong.
    let family = match &config {
        ModelConfig::Starcoder2 { .. } => Some("StarCoder2"),
        ModelConfig::GptBigCode(_) => Some("GPT-BigCode"),
        ModelConfig::Llama(_) => None,
    };
    if let Some(family) = family
        && dtype != DType::F32
        && opts.device.is_cpu()
    {
        return Err(LoadError::Precision {
            family,
            dtype: format!("{dtype:?}").to_lowercase(),
        });
    }
    let llama_bf16 =
        matches!(config, ModelConfig::Llama(_)) && dtype == DType::BF16 && opts.host_kernels();
    let vb = var_builder(files, dtype, &opts.device)?;
    let candle = |e: candle_core::Error| LoadError::Weights {
        path: first.clone(),
        why: e.to_string(),
    };
    let network = match &config {
        ModelConfig::Llama(c) => {
            check_llama_tensors(c, &owner, &first)?;
            let tie = !owner.contains_key("lm_head.weight");
            let model = if llama_bf16 {
                let in_place = in_place_bf16(&owner, &blob_of)?;
                Llama::new_bf16(c, vb, tie, &in_place)
            } else {
                Llama::new(c, vb, tie, opts.inference_kernels())
            };
            Network::llama(model.map_err(candle)?)
        }
        ModelConfig::Starcoder2 {
            raw,
            max_position_embeddings,
            ..
        } => {
            let c: candle_transformers::models::starcoder2::Config =
                serde_json::from_value(raw.clone()).map_err(|e| LoadError::Config {
                    path: config_path.clone(),
                    source: ConfigError::Json(e.to_string()),
                })?;
            Network::starcoder2(&c, vb, *max_position_embeddings).map_err(candle)?
        }
        ModelConfig::GptBigCode(c) => Network::bigcode(*c, vb).map_err(candle)?,
    };
    Ok(Model {
        name: files.name.clone(),
        network,
        tokenizer,
        config,
    })
}

/// The checkpoint's 2-D bf16 tensors, to be read where they lie: each file mapped once (or the
/// binary's own bytes), so the weights are never copied and memory holds them once.
fn in_place_bf16(
    owner: &BTreeMap<String, (PathBuf, TensorInfo)>,
    blobs: &HashMap<PathBuf, &Blob>,
) -> Result<InPlace, LoadError> {
    let mut backings: HashMap<&Path, Arc<Backing>> = HashMap::new();
    let mut in_place = InPlace::default();
    for (name, (path, info)) in owner {
        if info.dtype != "BF16" || info.shape.len() != 2 {
            continue;
        }
        let backing = match backings.get(path.as_path()) {
            Some(b) => Arc::clone(b),
            None => {
                let backing = match blobs.get(path) {
                    Some(Blob::Static { bytes, .. }) => Backing::Static(bytes),
                    _ => {
                        let file = std::fs::File::open(path).map_err(|source| LoadError::Io {
                            path: path.clone(),
                            source,
                        })?;
                        // SAFETY: mapped read-only, as candle maps the same files; modifying them
                        // while infill runs is undefined behaviour, the contract of every mmap
                        // loader (candle's, transformers', llama.cpp's).
                        #[allow(unsafe_code)]
                        let map = unsafe { memmap2::Mmap::map(&file) };
                        Backing::Mapped(map.map_err(|source| LoadError::Io {
                            path: path.clone(),
                            source,
                        })?)
                    }
                };
                let backing = Arc::new(backing);
                backings.insert(path.as_path(), Arc::clone(&backing));
                backing
            }
        };
        let range = info.bytes.start as usize..info.bytes.end as usize;
        in_place.tensors.insert(name.clone(), (backing, range));
    }
    Ok(in_place)
}

fn var_builder(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, LoadError> {
    match files.weights.as_slice() {
        [Blob::Static { label, bytes }] => VarBuilder::from_slice_safetensors(bytes, dtype, device)
            .map_err(|e| LoadError::Weights {
                path: PathBuf::from(label),
                why: e.to_string(),
            }),
        blobs => {
            let paths: Vec<PathBuf> = blobs.iter().map(Blob::label).collect();
            // SAFETY: the files are mapped read-only; as with every mmap, modifying them while infill
            // runs is undefined behaviour, the same contract as candle's and transformers' loaders.
            #[allow(unsafe_code)]
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&paths, dtype, device) };
            vb.map_err(|e| LoadError::Weights {
                path: paths.first().cloned().unwrap_or_default(),
                why: e.to_string(),
            })
        }
    }
}

/// Every tensor our decoder will ask for, with the shape the config implies.
pub fn llama_tensor_shapes(c: &LlamaConfig, tied: bool) -> Vec<(String, Vec<usize>)> {
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut add = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
        for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(&format!("self_attn.{proj}.weight"), vec![rows, h]);
            if c.qkv_bias {
                add(&format!("self_attn.{proj}.bias"), vec![rows]);
            }
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        if c.o_bias {
            add("self_attn.o_proj.bias", vec![h]);
        }
        for (proj, shape) in [
            ("gate_proj", vec![i, h]),
            ("up_proj", vec![i, h]),
            ("down_proj", vec![h, i]),
        ] {
            let rows = shape.first().copied().unwrap_or_default();
            add(&format!("mlp.{proj}.weight"), shape);
            if c.mlp_bias {
                add(&format!("mlp.{proj}.bias"), vec![rows]);
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !tied {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

fn check_llama_tensors(
    c: &LlamaConfig,
    owner: &BTreeMap<String, (PathBuf, TensorInfo)>,
    first: &Path,
) -> Result<(), LoadError> {
    let tied = !owner.contains_key("lm_head.weight");
    for (name, expected) in llama_tensor_shapes(c, tied) {
        match owner.get(&name) {
            None => {
                return Err(LoadError::MissingTensor {
                    path: first.to_path_buf(),
                    tensor: name,
                });
            }
            Some((path, info)) if info.shape != expected => {
                return Err(LoadError::Shape {
                    path: path.clone(),
                    tensor: name,
                    expected,
                    got: info.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn header_file(entries: &str, data: usize) -> Vec<u8> {
        let header = format!("{{{entries}}}");
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data));
        out
    }

    #[test]
    fn header_check_reports_truncation_with_the_tensor_name() {
        let entry = r#""w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}"#;
        let ok = header_file(entry, 24);
        let parsed = safetensors_header(Path::new("m.safetensors"), &ok, ok.len() as u64).unwrap();
        assert_eq!(parsed["w"].shape, vec![2, 3]);
        let short = header_file(entry, 20);
        let err = safetensors_header(Path::new("m.safetensors"), &short, short.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("\"w\"") && err.contains("m.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn header_check_rejects_garbage_without_panicking() {
        for bytes in [
            &b""[..],
            b"abc",
            &[255u8; 16],
            &[4, 0, 0, 0, 0, 0, 0, 0, b'{', b'x'],
        ] {
            assert!(
                safetensors_header(Path::new("x.safetensors"), bytes, bytes.len() as u64).is_err()
            );
        }
        let lying = header_file(
            r#""w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,8]}"#,
            8,
        );
        assert!(safetensors_header(Path::new("x"), &lying, lying.len() as u64).is_err());
    }

    #[test]
    fn model_source_tells_dirs_from_hub_ids() {
        assert_eq!(ModelSource::parse(None).unwrap(), ModelSource::Embedded);
        assert_eq!(
            ModelSource::parse(Some("Qwen/Qwen2.5-Coder-0.5B")).unwrap(),
            ModelSource::Hub("Qwen/Qwen2.5-Coder-0.5B".into())
        );
        let dir = std::env::temp_dir();
        assert_eq!(
            ModelSource::parse(dir.to_str()).unwrap(),
            ModelSource::Dir(dir.clone())
        );
        assert!(matches!(
            ModelSource::parse(Some("no/such/dir")),
            Err(LoadError::NotFound(_))
        ));
        assert!(matches!(
            ModelSource::parse(Some("../x")),
            Err(LoadError::NotFound(_))
        ));
    }
}
