//! Subcommands: each validates its arguments into settings, then runs.

pub mod complete;
pub mod edit;
pub mod eval;
pub mod lsp;
pub mod models;
pub mod score;
pub mod train;
pub mod trim;

use crate::cli::{ModelArgs, PositionArgs, Precision, SamplingArgs};
use crate::complete::Settings;
use crate::model::generate::{Limits, Sampling};
use crate::model::load::Downloads;
use crate::model::{LoadOptions, Model, ModelSource};
use crate::syntax::{Language, Registry};
use crate::text::Cursor;

/// Loads the model `args` names. Hub downloads are allowed unless `HF_HUB_OFFLINE` is set.
pub fn open_model(args: &ModelArgs) -> anyhow::Result<Model> {
    open_model_reporting(args, Downloads::default())
}

/// [`open_model`], with hub downloads reported to `downloads`.
pub fn open_model_reporting(args: &ModelArgs, downloads: Downloads) -> anyhow::Result<Model> {
    load_model(args, args.device.open()?, downloads)
}

/// Loads the model `args` names onto `device` (opened before, so that a device that cannot be
/// opened is reported before a command starts its work).
pub fn load_model(
    args: &ModelArgs,
    device: candle_core::Device,
    downloads: Downloads,
) -> anyhow::Result<Model> {
    let source = ModelSource::parse(args.model.as_deref())?;
    let online = crate::model::load::online_allowed();
    let dtype = match args.dtype {
        Precision::Auto => None,
        Precision::F32 => Some(candle_core::DType::F32),
        Precision::F16 => Some(candle_core::DType::F16),
        Precision::Bf16 => Some(candle_core::DType::BF16),
    };
    let opts = LoadOptions {
        device,
        dtype,
        downloads,
        ..LoadOptions::default()
    };
    let started = std::time::Instant::now();
    let model = match args.adapter.as_slice() {
        [dir] => {
            let files = crate::model::adapter::merged(&source, dir, online, &opts.downloads)?;
            crate::model::load::load(&files, &opts)?
        }
        [] => Model::open(&source, online, &opts)?,
        [..] => anyhow::bail!(
            "--adapter is given {} times; only the editor switches between adapters (F7), other commands take one",
            args.adapter.len()
        ),
    };
    tracing::info!(
        "loaded {} ({}, context {}) in {:.0} ms",
        model.name,
        model.config.family().model_type(),
        model.network.context_length(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(model)
}

/// Checks sampling arguments and turns them into pipeline settings.
pub fn settings(args: &SamplingArgs) -> anyhow::Result<Settings> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        anyhow::bail!("--temperature must be 0 or more (got {})", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1] (got {})", args.top_p);
    }
    if args.max_tokens == 0 {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    Ok(Settings {
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        limits: Limits {
            max_tokens: args.max_tokens,
            time_budget: args.time_budget_ms.map(std::time::Duration::from_millis),
            top_alternatives: args.top_alternatives,
            text_before_end: !args.allow_empty,
        },
        order: args.fim_order,
        context_tokens: args.context,
        trim: true,
        min_confidence: 0.0,
        heal: !args.no_heal,
        prior: None,
        repository: None,
    })
}

/// A file read and a cursor placed in it, with the file's language.
#[derive(Debug)]
pub struct Position {
    pub text: String,
    pub cursor: Cursor,
    /// `None`: a language infill has no grammar for (trimmed by indentation and bracket rules).
    pub language: Option<&'static Language>,
}

/// Reads the file, checks the cursor and resolves the language.
pub fn position(args: &PositionArgs) -> anyhow::Result<Position> {
    let text = crate::files::read_source(&args.file)?;
    let cursor = Cursor::from_line_column(&text, args.line, args.column)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let registry = Registry::builtin().map_err(|e| anyhow::anyhow!("{e}"))?;
    let language = match &args.language {
        Some(name) => Some(
            registry
                .by_name(name)
                .map_err(|e| anyhow::anyhow!("--language: {e}"))?,
        ),
        None => registry.for_source(&args.file, &text),
    };
    Ok(Position {
        text,
        cursor,
        language,
    })
}
