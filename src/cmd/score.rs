//! `infill score`: every token of a file coloured by its rank among the model's predictions, as
//! GLTR does (Strobelt et al., "GLTR: Statistical Detection and Visualization of Generated Text"):
//! top 10 green, top 100 yellow, top 1000 red, beyond violet; then the totals and the most
//! surprising lines.

use std::io::{IsTerminal, Write};

use crate::cli::ScoreArgs;
use crate::model::score::{self, TokenScore};

/// The ANSI colour of a rank bucket.
fn colour(rank: usize) -> &'static str {
    match rank {
        0..=10 => "\x1b[32m",
        11..=100 => "\x1b[33m",
        101..=1000 => "\x1b[31m",
        _ => "\x1b[35m",
    }
}

pub fn run(args: &ScoreArgs) -> anyhow::Result<()> {
    let text = crate::files::read_source(&args.file)?;
    let mut model = super::open_model(&args.model)?;
    let scores = score::score(&mut model, &text, args.window, args.stride, args.top_k)?;
    let summary = score::summarize(&text, &scores, 10);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({ "tokens": scores, "summary": summary }),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    let colour_on = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    write_coloured(&mut out, &text, &scores, colour_on)?;
    writeln!(
        out,
        "\n-- {} tokens, {:.2} bits/token, {:.3} bits/byte, perplexity {:.1}{}",
        summary.tokens,
        summary.bits_per_token,
        summary.bits_per_byte,
        summary.perplexity,
        if colour_on {
            "  (rank: \x1b[32m<=10\x1b[0m \x1b[33m<=100\x1b[0m \x1b[31m<=1000\x1b[0m \x1b[35m>1000\x1b[0m)"
        } else {
            ""
        }
    )?;
    let lines: Vec<String> = summary
        .surprising_lines
        .iter()
        .map(|(l, b)| format!("{l} ({b:.1} bits/token)"))
        .collect();
    writeln!(out, "-- most surprising lines: {}", lines.join(", "))?;
    out.flush()?;
    Ok(())
}

fn write_coloured(
    out: &mut impl Write,
    text: &str,
    scores: &[TokenScore],
    colour_on: bool,
) -> std::io::Result<()> {
    if !colour_on {
        return write!(out, "{text}");
    }
    for s in scores {
        write!(
            out,
            "{}{}\x1b[0m",
            colour(s.rank),
            text.get(s.start..s.end).unwrap_or_default()
        )?;
    }
    Ok(())
}
