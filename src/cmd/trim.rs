//! `infill trim`: the trimmer alone, for tests and editor plugins.

use std::io::{Read, Write};

use anyhow::Context;
use serde::Serialize;

use crate::cli::TrimArgs;
use crate::syntax::{Reason, trim};

#[derive(Debug, Serialize)]
struct TrimReport<'a> {
    trimmed: &'a str,
    raw: &'a str,
    reason: Reason,
    language: Option<&'a str>,
}

pub fn run(args: &TrimArgs) -> anyhow::Result<()> {
    let pos = super::position(&args.position)?;
    let raw = match &args.proposal_file {
        Some(path) => crate::files::read_source(path)?,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the proposal from standard input")?;
            s
        }
    };
    let (prefix, suffix) = pos.cursor.split(&pos.text);
    let trimmed = trim(prefix, &raw, suffix, pos.language);
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = TrimReport {
            trimmed: &trimmed.text,
            raw: &raw,
            reason: trimmed.reason,
            language: pos.language.map(|l| l.name.as_str()),
        };
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", trimmed.text)?;
    }
    out.flush()?;
    Ok(())
}
