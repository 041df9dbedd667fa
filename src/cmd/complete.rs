//! `infill complete`: one completion at a position of a file, as text or JSON.

use std::io::Write;

use serde::Serialize;

use crate::cli::CompleteArgs;
use crate::complete::{self, Completion};
use crate::model::generate::{Flow, GeneratedToken, StopReason, Timings};
use crate::syntax::Reason;

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct CompleteReport<'a> {
    /// What to show (trimmed unless --no-trim).
    pub completion: &'a str,
    /// The model's proposal before trimming.
    pub raw: &'a str,
    pub trim_reason: Option<Reason>,
    pub language: Option<&'a str>,
    pub tokens: &'a [GeneratedToken],
    pub stop: StopReason,
    pub timings: Timings,
    pub prompt: &'a complete::Prompt,
    pub model: ModelInfo<'a>,
}

#[derive(Debug, Serialize)]
pub struct ModelInfo<'a> {
    pub name: &'a str,
    pub family: &'static str,
    pub fim_template: &'static str,
    pub context_length: usize,
}

pub fn run(args: &CompleteArgs) -> anyhow::Result<()> {
    let pos = super::position(&args.position)?;
    let mut settings = super::settings(&args.sampling)?;
    settings.trim = !args.no_trim;
    let mut model = super::open_model(&args.model)?;
    let completion = complete::complete(
        &mut model,
        &pos.text,
        pos.cursor,
        pos.language,
        &settings,
        None,
        |_: &GeneratedToken, _: &str| Flow::Continue,
    )?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = report(&model, &completion, pos.language.map(|l| l.name.as_str()));
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", completion.text)?;
        if !completion.text.ends_with('\n') {
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

pub fn report<'a>(
    model: &'a crate::model::Model,
    c: &'a Completion,
    language: Option<&'a str>,
) -> CompleteReport<'a> {
    CompleteReport {
        completion: &c.text,
        raw: &c.generation.text,
        trim_reason: c.trim_reason,
        language,
        tokens: &c.generation.tokens,
        stop: c.generation.stop,
        timings: c.generation.timings,
        prompt: &c.prompt,
        model: ModelInfo {
            name: &model.name,
            family: model.config.family().model_type(),
            fim_template: model.tokenizer.fim().style,
            context_length: model.network.context_length(),
        },
    }
}
