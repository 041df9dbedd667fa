//! `infill train --export DIR`: the training data of `infill train` as a dataset directory for a
//! trainer elsewhere (the `scale/` package: Hugging Face transformers on GPUs). The walk, filters,
//! dedup, licence filter, held-out split, FIM examples and tokens are infill's own, for the target
//! model's tokenizer and FIM tokens, so the other trainer learns the task the editor sets.
//!
//! ```text
//! DIR/manifest.json          what follows, the settings, and a check of each file
//! DIR/tokenizer.json         the target model's tokenizer, as infill read it
//! DIR/train/e{K}.s{I}.u16    shard I of epoch K: packed FIM examples (u32 when the vocabulary
//!                            is over 65,536 tokens), little-endian
//! DIR/held/tokens.u16        the held-out files one after another, read left to right (no FIM)
//! DIR/held/bytes.u16         the bytes each of those tokens stands for (0 for special tokens)
//! ```
//!
//! Every epoch draws fresh holes; a shard packs every `shards`th training file, so the shards
//! of an epoch pack side by side on the cores. The output is reproducible from the seed: the same
//! repositories and settings give the same bytes. It is resumable: the manifest is rewritten after
//! each shard, and a second run with the same settings over the same files keeps the shards
//! already written (after checking their hashes) and writes the rest.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::export::{ShardSpec, pack_shard};
use super::fim::FimSettings;
use super::{CorpusChoice, Survey, corpus};
use crate::model::Tokenizer;

/// What [`FORMAT`] names in a manifest; a reader refuses other formats.
pub const FORMAT: &str = "infill-dataset";
/// Raised when a reader of an older version would misread the directory.
pub const VERSION: u32 = 1;

pub use crate::model::tokenizer::PROBE;

/// How `infill train --export` was asked to write the dataset.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub repos: Vec<PathBuf>,
    pub out: PathBuf,
    /// The target model as the user named it (`--init`; `None`: the built-in model).
    pub model: Option<String>,
    pub corpus: CorpusChoice,
    pub held_out: f64,
    /// Tokens per window the trainer is expected to use: FIM examples are cut to fit it. `None`:
    /// the model's context, at most [`DEFAULT_SEQ_LEN`].
    pub seq_len: Option<usize>,
    pub fim: FimSettings,
    pub seed: u64,
    pub epochs: u64,
    /// Shards per epoch (`None`: one per [`SHARD_BYTES`] of training text).
    pub shards: Option<usize>,
    /// Replace a dataset of other settings already in `out`.
    pub overwrite: bool,
    pub explain: bool,
}

/// The window length of a dataset unless asked: long enough for real code, short enough for
/// a GPU's memory at a useful batch.
pub const DEFAULT_SEQ_LEN: usize = 1024;

/// Training text per shard by default.
pub const SHARD_BYTES: usize = 32 << 20;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Whether every shard of every epoch is written.
    pub complete: bool,
    pub settings: Settings,
    pub tokenizer: TokenizerInfo,
    pub corpus: CorpusInfo,
    /// The shards written so far, by epoch then shard.
    pub train: Vec<ShardInfo>,
    pub held: HeldInfo,
}

/// Everything the bytes depend on besides the files and the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The target model as named to infill.
    pub model: String,
    pub seq_len: usize,
    pub fim_rate: f64,
    pub spm_rate: f64,
    pub seed: u64,
    pub epochs: u64,
    pub shards: usize,
    pub held_out: f64,
    pub permissive_only: bool,
    pub package_cap_bytes: Option<usize>,
    /// `u16` or `u32`: the width of every token file.
    pub dtype: String,
}

/// The tokenizer the tokens are ids of, and how a trainer checks its model has the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub file: String,
    /// Of `file`'s bytes.
    pub sha256: String,
    /// The model's vocabulary (its embedding rows): every id is below it.
    pub vocab_size: usize,
    pub fim: FimIds,
    /// [`PROBE`] and its ids: a model whose tokenizer file differs must still encode it so.
    pub probe: String,
    pub probe_ids: Vec<u32>,
}

/// The special tokens the examples are made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FimIds {
    pub style: String,
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    pub eos: Option<u32>,
    pub file_sep: Option<u32>,
    /// Put before every document (a BOS), if the tokenizer has one.
    pub lead: Vec<u32>,
    /// Each id with the text it stands for, so a trainer can look them up in its own vocabulary.
    pub names: Vec<(u32, String)>,
}

/// Which files the dataset was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub repos: Vec<String>,
    /// Hash of every file's path and content hash, in order: a resume over changed files is
    /// refused rather than mixing two corpora.
    pub fingerprint: String,
    pub files_trained: usize,
    pub files_held_out: usize,
    pub files_skipped: usize,
    pub bytes_trained: usize,
    /// Training files and bytes per language, most bytes first.
    pub languages: Vec<LanguageInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageInfo {
    pub language: String,
    pub files: usize,
    pub bytes: usize,
}

/// One written shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub epoch: u64,
    pub shard: usize,
    /// Relative to the dataset directory.
    pub file: String,
    pub tokens: usize,
    pub sha256: String,
}

/// The held-out files: their tokens one after another, each file's slice told by `docs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldInfo {
    pub tokens_file: String,
    pub tokens_sha256: String,
    pub bytes_file: String,
    pub bytes_sha256: String,
    pub docs: Vec<HeldDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldDoc {
    pub path: String,
    pub language: String,
    pub tokens: usize,
    /// The bytes of the file (the sum of its tokens' bytes).
    pub bytes: usize,
}

impl Manifest {
    /// Reads `dir/manifest.json`; `None` when there is none.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join("manifest.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        let manifest: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not an infill dataset manifest (rewrite it with infill train --export --overwrite)",
                path.display()
            )
        })?;
        if manifest.format != FORMAT || manifest.version > VERSION {
            anyhow::bail!(
                "{}: a {} manifest of version {}, this infill reads {FORMAT} up to version {VERSION}",
                path.display(),
                manifest.format,
                manifest.version
            );
        }
        Ok(Some(manifest))
    }

    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        crate::files::write_atomic(
            &dir.join("manifest.json"),
            &serde_json::to_vec_pretty(self)?,
        )
    }

    /// Whether `other` describes the same dataset (shards written or not), perhaps with more or
    /// fewer epochs: an export can be given more epochs later, each packed from the same seed.
    fn same_dataset(&self, other: &Self) -> bool {
        let epochless = |m: &Self| Settings {
            epochs: 0,
            ..m.settings.clone()
        };
        epochless(self) == epochless(other)
            && self.tokenizer == other.tokenizer
            && self.corpus.fingerprint == other.corpus.fingerprint
    }

    /// Tokens in the shards written.
    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(|s| s.tokens).sum()
    }
}

/// What an export did.
#[derive(Debug)]
pub struct Exported {
    pub manifest: Manifest,
    /// Shards found written by an earlier run and kept.
    pub kept: usize,
    pub written: usize,
}

/// Writes (or completes) the dataset; `progress` gets a line per shard.
pub fn export(
    opts: &ExportOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Exported> {
    let survey = Survey::new(&opts.repos, &opts.corpus, opts.held_out)?;
    if opts.explain {
        eprint!("{}", survey.explain());
    }
    let files = &survey.corpus.files;
    let train: Vec<&corpus::SourceFile> = survey
        .split
        .train
        .iter()
        .filter_map(|&i| files.get(i))
        .collect();
    let held: Vec<&corpus::SourceFile> = survey
        .split
        .held
        .iter()
        .filter_map(|&i| files.get(i))
        .collect();
    if train.is_empty() {
        anyhow::bail!(
            "only {} source file(s) found: at least two are needed (one to train on, one held out)",
            files.len()
        );
    }
    write(opts, &train, &held, survey.corpus.skipped.len(), progress)
}

/// Writes (or completes) the dataset of `train` and `held` files, already walked, filtered and
/// split (by [`export`] from repositories, or read from bundles), as `opts` says; its `repos`,
/// `corpus` and `held_out` are recorded, not applied. `skipped` is what the walk left out.
pub fn write(
    opts: &ExportOptions,
    train: &[&corpus::SourceFile],
    held: &[&corpus::SourceFile],
    skipped: usize,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Exported> {
    let (tokenizer, tokenizer_json, vocab_size, context, name) = target(opts.model.as_deref())?;
    let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let dtype = if width == 2 { "u16" } else { "u32" };
    let bytes_trained: usize = train.iter().map(|f| f.text.len()).sum();
    let settings = Settings {
        model: name,
        seq_len: opts.seq_len.unwrap_or(context.min(DEFAULT_SEQ_LEN)),
        fim_rate: opts.fim.fim_rate,
        spm_rate: opts.fim.spm_rate,
        seed: opts.seed,
        epochs: opts.epochs,
        shards: opts
            .shards
            .unwrap_or_else(|| bytes_trained.div_ceil(SHARD_BYTES))
            .clamp(1, train.len()),
        held_out: opts.held_out,
        permissive_only: opts.corpus.filters.permissive_only,
        package_cap_bytes: opts.corpus.package_cap_bytes,
        dtype: dtype.to_string(),
    };
    if settings.seq_len < 8 {
        anyhow::bail!("--seq-len must be at least 8 (got {})", settings.seq_len);
    }
    let fingerprint = {
        let mut h = Sha256::new();
        for (what, docs) in [("train", train), ("held", held)] {
            for f in docs.iter() {
                h.update(format!(
                    "{what}\0{}\0{}\0",
                    f.path,
                    hex(&Sha256::digest(&f.text))
                ));
            }
        }
        hex(&h.finalize())
    };
    let languages = corpus::by_language(train.iter().copied())
        .into_iter()
        .map(|(language, files, bytes)| LanguageInfo {
            language: language.to_string(),
            files,
            bytes,
        })
        .collect();
    let fim = tokenizer.fim();
    let mut named: Vec<u32> = [fim.prefix, fim.suffix, fim.middle]
        .into_iter()
        .chain(fim.eos)
        .chain(fim.file_sep)
        .chain(fim.lead.iter().copied())
        .collect();
    named.dedup();
    let mut manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        complete: false,
        settings,
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".to_string(),
            sha256: hex(&Sha256::digest(&tokenizer_json)),
            vocab_size,
            fim: FimIds {
                style: fim.style.to_string(),
                prefix: fim.prefix,
                suffix: fim.suffix,
                middle: fim.middle,
                eos: fim.eos,
                file_sep: fim.file_sep,
                lead: fim.lead.clone(),
                names: named
                    .iter()
                    .map(|&id| (id, tokenizer.token_text(id)))
                    .collect(),
            },
            probe: PROBE.to_string(),
            probe_ids: tokenizer.encode(PROBE)?,
        },
        corpus: CorpusInfo {
            // Absolute, so `infill eval --dataset` finds them from anywhere.
            repos: opts
                .repos
                .iter()
                .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
                .map(|r| r.display().to_string())
                .collect(),
            fingerprint,
            files_trained: train.len(),
            files_held_out: held.len(),
            files_skipped: skipped,
            bytes_trained,
            languages,
        },
        train: Vec::new(),
        held: HeldInfo {
            tokens_file: format!("held/tokens.{dtype}"),
            tokens_sha256: String::new(),
            bytes_file: "held/bytes.u16".to_string(),
            bytes_sha256: String::new(),
            docs: Vec::new(),
        },
    };
    let dir = &opts.out;
    let kept = claim(dir, &mut manifest, opts.overwrite)?;
    if manifest.complete {
        return Ok(Exported {
            manifest,
            kept,
            written: 0,
        });
    }
    std::fs::create_dir_all(dir.join("train"))
        .and_then(|()| std::fs::create_dir_all(dir.join("held")))
        .with_context(|| format!("{}: cannot create the dataset folders", dir.display()))?;
    crate::files::write_atomic(&dir.join("tokenizer.json"), &tokenizer_json)?;
    if manifest.held.docs.is_empty() {
        write_held(dir, &tokenizer, held, width, &mut manifest.held)?;
    }
    manifest.write(dir)?;

    let docs: Vec<(String, String)> = train
        .iter()
        .map(|f| (f.language.clone(), f.text.clone()))
        .collect();
    let settings = manifest.settings.clone();
    let todo: Vec<(u64, usize)> = (0..settings.epochs)
        .flat_map(|epoch| (0..settings.shards).map(move |shard| (epoch, shard)))
        .filter(|&(epoch, shard)| {
            !manifest
                .train
                .iter()
                .any(|s| s.epoch == epoch && s.shard == shard)
        })
        .collect();
    let written = todo.len();
    let shared = Mutex::new((manifest, progress));
    // An epoch's shards side by side, the epochs in order: a trainer following the export
    // starts on each epoch as soon as it is whole.
    for epoch in 0..settings.epochs {
        let shards: Vec<usize> = todo
            .iter()
            .filter(|(e, _)| *e == epoch)
            .map(|&(_, shard)| shard)
            .collect();
        shards.par_iter().try_for_each(|&shard| {
            write_shard(
                dir, &tokenizer, &docs, &settings, width, epoch, shard, &shared,
            )
        })?;
    }
    let (mut manifest, _) = shared
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a shard writer failed"))?;
    manifest.complete = true;
    manifest.write(dir)?;
    Ok(Exported {
        manifest,
        kept,
        written,
    })
}

/// The manifest being written and where progress goes, shared by the shard writers.
type Shared<'p> = Mutex<(Manifest, &'p mut (dyn FnMut(&str) + Send))>;

/// Packs and writes one shard, and records it in the manifest.
#[allow(clippy::too_many_arguments)]
fn write_shard(
    dir: &Path,
    tokenizer: &Tokenizer,
    docs: &[(String, String)],
    settings: &Settings,
    width: usize,
    epoch: u64,
    shard: usize,
    shared: &Shared<'_>,
) -> anyhow::Result<()> {
    let spec = ShardSpec {
        epoch,
        shard,
        shards: settings.shards,
        seed: settings.seed,
        fim: FimSettings {
            fim_rate: settings.fim_rate,
            spm_rate: settings.spm_rate,
        },
        seq_len: settings.seq_len,
    };
    let stream = pack_shard(tokenizer, docs, spec)?;
    let file = format!("train/e{epoch}.s{shard}.{}", settings.dtype);
    let bytes = encode(&stream, width)?;
    crate::files::write_atomic(&dir.join(&file), &bytes)?;
    let info = ShardInfo {
        epoch,
        shard,
        file,
        tokens: stream.len(),
        sha256: hex(&Sha256::digest(&bytes)),
    };
    let mut guard = shared
        .lock()
        .map_err(|_| anyhow::anyhow!("a shard writer failed"))?;
    let (manifest, progress) = &mut *guard;
    progress(&format!(
        "epoch {}/{}, shard {}/{}: {} tokens",
        epoch + 1,
        settings.epochs,
        shard + 1,
        settings.shards,
        info.tokens
    ));
    manifest.train.push(info);
    manifest.train.sort_by_key(|s| (s.epoch, s.shard));
    manifest.write(dir)
}

/// The target model's tokenizer, its JSON, vocabulary, context and name.
fn target(spec: Option<&str>) -> anyhow::Result<(Tokenizer, Vec<u8>, usize, usize, String)> {
    use crate::model::config::ModelConfig;
    use crate::model::load::{self, LoadError, ModelSource};
    let source = ModelSource::parse(spec)?;
    if matches!(source, ModelSource::Gguf(_) | ModelSource::HubGguf { .. }) {
        anyhow::bail!(
            "--init names a GGUF file: a dataset is for a trainer that loads Hugging Face models; \
             export for the Hugging Face model the file was made from"
        );
    }
    let files = load::locate(&source, load::online_allowed(), &load::Downloads::default())
        .map_err(|e| match e {
            LoadError::NoDefaultModel => anyhow::anyhow!(
                "no default model is built into this binary; pass --init DIR|HUB_ID to name the model to train"
            ),
            other => other.into(),
        })?;
    let config = files.config.read()?;
    let config = ModelConfig::parse(
        std::str::from_utf8(&config)
            .with_context(|| format!("{}: not UTF-8", files.config.label().display()))?,
    )?;
    let json = files.tokenizer.read()?.into_owned();
    let tokenizer = Tokenizer::from_bytes(&json, config.vocab_size())
        .with_context(|| format!("{}", files.tokenizer.label().display()))?;
    Ok((
        tokenizer,
        json,
        config.vocab_size(),
        config.context_length(),
        spec.map_or_else(|| files.name.clone(), str::to_string),
    ))
}

/// Takes `dir` for `manifest`: keeps what an earlier run of the same dataset wrote (its shards
/// checked against their hashes) and returns how many shards were kept; refuses a directory
/// holding anything else unless `overwrite` (and then only a dataset is replaced).
fn claim(dir: &Path, manifest: &mut Manifest, overwrite: bool) -> anyhow::Result<usize> {
    let old = match Manifest::read(dir) {
        Ok(old) => old,
        Err(_) if overwrite => None,
        Err(e) => return Err(e),
    };
    match old {
        Some(old) if old.same_dataset(manifest) => {
            let kept: Vec<ShardInfo> = old
                .train
                .into_iter()
                .filter(|s| s.epoch < manifest.settings.epochs)
                .filter(|s| file_sha256(&dir.join(&s.file)).as_deref() == Some(s.sha256.as_str()))
                .collect();
            let held_ok = [
                (&old.held.tokens_file, &old.held.tokens_sha256),
                (&old.held.bytes_file, &old.held.bytes_sha256),
            ]
            .into_iter()
            .all(|(f, sha)| file_sha256(&dir.join(f)).as_ref() == Some(sha));
            if held_ok {
                manifest.held = old.held;
            }
            let wanted = manifest.settings.epochs as usize * manifest.settings.shards;
            manifest.complete = old.complete && held_ok && kept.len() == wanted;
            let count = kept.len();
            manifest.train = kept;
            Ok(count)
        }
        Some(_) | None if is_empty(dir) => Ok(0),
        Some(_) if overwrite => {
            for sub in ["train", "held"] {
                let path = dir.join(sub);
                if path.exists() {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("{}: cannot replace it", path.display()))?;
                }
            }
            Ok(0)
        }
        Some(old) => {
            let what = if old.corpus.fingerprint != manifest.corpus.fingerprint {
                "made from other files (the repositories changed since)"
            } else if old.tokenizer != manifest.tokenizer {
                "for another tokenizer"
            } else {
                "of other settings"
            };
            anyhow::bail!(
                "{} holds a dataset {what}; pass --overwrite to replace it, or choose another --export",
                dir.display()
            )
        }
        None => anyhow::bail!(
            "{} is not empty and holds no infill dataset; choose a new or empty folder for --export",
            dir.display()
        ),
    }
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| hex(&Sha256::digest(&b)))
}

/// Writes the held-out files' tokens and bytes, and fills `info`.
fn write_held(
    dir: &Path,
    tokenizer: &Tokenizer,
    held: &[&corpus::SourceFile],
    width: usize,
    info: &mut HeldInfo,
) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    let mut bytes = Vec::new();
    info.docs.clear();
    for f in held {
        let (ids, sizes) = super::trainer::plain_tokens(tokenizer, &f.text)?;
        info.docs.push(HeldDoc {
            path: f.path.clone(),
            language: f.language.clone(),
            tokens: ids.len(),
            bytes: sizes.iter().sum(),
        });
        tokens.extend(ids);
        bytes.extend(
            sizes
                .iter()
                .map(|&n| u16::try_from(n).unwrap_or(u16::MAX) as u32),
        );
    }
    let tokens = encode(&tokens, width)?;
    let bytes = encode(&bytes, 2)?;
    crate::files::write_atomic(&dir.join(&info.tokens_file), &tokens)?;
    crate::files::write_atomic(&dir.join(&info.bytes_file), &bytes)?;
    info.tokens_sha256 = hex(&Sha256::digest(&tokens));
    info.bytes_sha256 = hex(&Sha256::digest(&bytes));
    Ok(())
}

/// `ids` as little-endian integers of `width` bytes.
fn encode(ids: &[u32], width: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ids.len() * width);
    for &id in ids {
        match width {
            2 => out.extend(
                u16::try_from(id)
                    .map_err(|_| anyhow::anyhow!("token {id} does not fit u16"))?
                    .to_le_bytes(),
            ),
            _ => out.extend(id.to_le_bytes()),
        }
    }
    Ok(out)
}

/// Reads a token file of `width` bytes per id.
pub fn decode(bytes: &[u8], width: usize) -> Vec<u32> {
    match width {
        2 => bytes
            .chunks_exact(2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
