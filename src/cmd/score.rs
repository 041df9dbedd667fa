//! `infill score`: every token of a file coloured by its rank among the model's predictions, as
//! GLTR does (Strobelt et al., "GLTR: Statistical Detection and Visualization of Generated Text"):
//! top 10 green, top 100 yellow, top 1000 red, beyond violet; then the totals and the most
//! surprising lines.

use std::io::{IsTerminal, Write};

use crate::cli::ScoreArgs;
use crate::model::score::{self, TokenScore};

/// The ANSI colour of a rank's bucket.
fn colour(rank: usize) -> &'static str {
    ["\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[35m"][score::gltr_bucket(rank)]
}

pub fn run(args: &ScoreArgs) -> anyhow::Result<()> {
    if args.window < 2 {
        anyhow::bail!(
            "--window must be at least 2 tokens (got {}): a token is scored from the ones before it",
            args.window
        );
    }
    if let Some(stride) = args.stride.filter(|&s| s == 0 || s >= args.window) {
        anyhow::bail!(
            "--stride must be at least 1 and less than --window ({}) (got {stride})",
            args.window
        );
    }
    if (args.fim || args.html.is_some()) && args.fim_context < 16 {
        anyhow::bail!(
            "--fim-context must be at least 16 tokens (got {})",
            args.fim_context
        );
    }
    let text = crate::files::read_source(&args.file)?;
    let mut model = super::open_model(&args.model)?;
    if args.fim {
        return fim(args, &text, &mut model);
    }
    let bar = crate::progress::bar("scoring", None);
    bar.set_message(format!("tokenizing {} KB", text.len() / 1024));
    let scores = score::score_with_progress(
        &mut model,
        &text,
        args.window,
        args.stride,
        args.top_k,
        |done, total| {
            crate::progress::set_total(&bar, total as u64);
            bar.set_message("tokens");
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let summary = score::summarize(&text, &scores, 10);
    if let Some(html) = &args.html {
        return page(args, html, &text, &scores, &summary, &mut model);
    }
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

/// `--html`: the page, with each line scored between the code around it for the margin.
fn page(
    args: &ScoreArgs,
    html: &std::path::Path,
    text: &str,
    scores: &[TokenScore],
    summary: &score::ScoreSummary,
    model: &mut crate::model::Model,
) -> anyhow::Result<()> {
    let lines = score_lines(args, text, model)?;
    let name = args.file.display().to_string();
    let page = crate::report::gltr_page(&name, text, scores, summary, &lines);
    crate::files::write_atomic(html, page.as_bytes())?;
    eprintln!(
        "wrote {} ({} tokens, {:.2} bits per token, {} lines in the margin)",
        html.display(),
        summary.tokens,
        summary.bits_per_token,
        lines.len()
    );
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

/// Every line scored as the middle between the code around it, with a progress bar.
fn score_lines(
    args: &ScoreArgs,
    text: &str,
    model: &mut crate::model::Model,
) -> anyhow::Result<Vec<crate::complete::LineScore>> {
    let bar = crate::progress::bar("scoring lines", Some(0));
    let lines = crate::complete::score_lines_fim(model, text, args.fim_context, None, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    Ok(lines)
}

/// `--fim`: every line scored between the rest of the file; the most surprising lines first.
fn fim(args: &ScoreArgs, text: &str, model: &mut crate::model::Model) -> anyhow::Result<()> {
    let lines = score_lines(args, text, model)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "lines": lines }))?;
        writeln!(out)?;
        return Ok(());
    }
    let mut ranked: Vec<&crate::complete::LineScore> = lines.iter().collect();
    ranked.sort_by(|a, b| b.bits_per_token.total_cmp(&a.bits_per_token));
    let bits: f64 = lines.iter().map(|l| l.bits).sum();
    let tokens: usize = lines.iter().map(|l| l.tokens).sum();
    writeln!(
        out,
        "{} lines scored between their prefix and suffix: {:.2} bits/token on average",
        lines.len(),
        bits / tokens.max(1) as f64
    )?;
    writeln!(out, "most surprising lines (bits/token, bits):")?;
    for l in ranked.iter().take(10) {
        writeln!(
            out,
            "{:>6}  {:>6.2}  {:>7.1}  {}",
            l.line,
            l.bits_per_token,
            l.bits,
            l.text.trim()
        )?;
    }
    out.flush()?;
    Ok(())
}
