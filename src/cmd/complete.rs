//! `infill complete`: one completion at a position of a file, as text or JSON.

use std::io::Write;

use serde::Serialize;

use crate::cli::CompleteArgs;
use crate::complete::{self, Completion};
use crate::model::generate::{Flow, GeneratedToken, StopReason, Timings};
use crate::text::Cursor;

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct CompleteReport<'a> {
    pub completion: &'a str,
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
    let text = super::read_source(&args.file)?;
    let cursor = Cursor::from_line_column(&text, args.line, args.column)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let settings = super::settings(&args.sampling)?;
    let mut model = super::open_model(&args.model)?;
    let completion = complete::complete(
        &mut model,
        &text,
        cursor,
        &settings,
        None,
        |_: &GeneratedToken, _: &str| Flow::Continue,
    )?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = report(&model, &completion);
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

pub fn report<'a>(model: &'a crate::model::Model, c: &'a Completion) -> CompleteReport<'a> {
    CompleteReport {
        completion: &c.text,
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
