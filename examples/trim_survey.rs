//! How trimming changes real raw proposals: runs the completion pipeline without trimming at many
//! positions of real files, trims each proposal, and tallies what changed and why.
//!
//! `cargo run --release --example trim_survey -- MODEL_DIR FILE...` (positions: every 7th line,
//! at the line end and in the middle of the line).

#![allow(clippy::string_slice)]

use std::collections::BTreeMap;

use infill::complete::{self, Settings};
use infill::model::generate::{Flow, Limits};
use infill::model::{LoadOptions, Model, ModelSource};
use infill::syntax::{Registry, trim};
use infill::text::Cursor;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: trim_survey MODEL_DIR FILE..."))?;
    let mut model = Model::open(
        &ModelSource::parse(Some(&model_dir))?,
        false,
        &LoadOptions::default(),
    )?;
    let registry = Registry::builtin().map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = Settings {
        trim: false,
        limits: Limits {
            max_tokens: 48,
            ..Limits::default()
        },
        ..Settings::default()
    };
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut total, mut changed, mut raw_chars, mut kept_chars) = (0usize, 0usize, 0usize, 0usize);
    let mut examples = Vec::new();
    for file in args {
        let text = std::fs::read_to_string(&file)?;
        let lang = registry.for_path(std::path::Path::new(&file));
        for (i, line) in text.lines().enumerate().step_by(7) {
            let chars = line.chars().count();
            for column in [chars + 1, chars / 2 + 1] {
                let Ok(cursor) = Cursor::from_line_column(&text, i + 1, column) else {
                    continue;
                };
                let c = complete::complete(
                    &mut model,
                    &text,
                    cursor,
                    lang,
                    &settings,
                    None,
                    |_, _| Flow::Continue,
                )?;
                let (prefix, suffix) = cursor.split(&text);
                let t = trim(prefix, &c.text, suffix, lang);
                total += 1;
                raw_chars += c.text.chars().count();
                kept_chars += t.text.chars().count();
                if t.text != c.text {
                    changed += 1;
                    if examples.len() < 6 {
                        examples.push(format!(
                            "{file}:{}:{column} {:?}\n  raw     {:?}\n  trimmed {:?}",
                            i + 1,
                            t.reason,
                            c.text,
                            t.text
                        ));
                    }
                }
                *reasons.entry(format!("{:?}", t.reason)).or_default() += 1;
            }
        }
    }
    println!(
        "proposals: {total}, changed by trimming: {changed} ({:.0}%)",
        100.0 * changed as f64 / total.max(1) as f64
    );
    println!(
        "characters kept: {kept_chars} of {raw_chars} ({:.0}%)",
        100.0 * kept_chars as f64 / raw_chars.max(1) as f64
    );
    for (reason, n) in &reasons {
        println!("  {reason:<14} {n}");
    }
    for e in examples {
        println!("{e}");
    }
    Ok(())
}
