//! Pages to share: self-contained HTML (inline CSS and SVG, no scripts, nothing fetched), light or
//! dark as the reader's system prefers.
//!
//! [`gltr_page`] is `infill score FILE --html`: every token of a file coloured by the rank the
//! model gave it (GLTR's buckets: top 10, 100, 1000, beyond), its probability, rank, entropy and
//! the model's top alternatives on hover, and each line's surprisal between the code around it
//! (`score --fim`) as a bar in the margin.

use std::fmt::Write;

use crate::complete::LineScore;
use crate::model::score::{self, ScoreSummary, TokenScore};

/// Width in pixels of the margin's longest bar.
pub const BAR_WIDTH: f64 = 60.0;

/// `text` safe inside an HTML element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1d1d1f; --muted: #6e6e73;
  --b0: #c8efc5; --b1: #fbeea0; --b2: #f9c3bd; --b3: #e2cbf7; --bar: #d9534f; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #161618; --fg: #e6e6e6; --muted: #9a9aa0;
    --b0: #1e4a22; --b1: #5b4b0c; --b2: #6e2520; --b3: #4a2a6e; --bar: #ff7b72; }
}
body { background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; }
h1 { font-size: 1.2em; margin: 0 0 .3em; }
p.summary { color: var(--muted); margin: 0 0 1em; }
.legend span { padding: 0 .4em; margin-right: .4em; border-radius: 3px; }
table.code { border-collapse: collapse; font: 13px/1.5 ui-monospace, SFMono-Regular, Menlo, monospace; }
table.code td { padding: 0 .5em; vertical-align: top; }
td.ln { color: var(--muted); text-align: right; user-select: none; }
td.margin { white-space: nowrap; color: var(--muted); user-select: none; }
td.margin svg { vertical-align: middle; }
td.margin rect { fill: var(--bar); }
td.src { white-space: pre; }
.t0 { background: var(--b0); } .t1 { background: var(--b1); }
.t2 { background: var(--b2); } .t3 { background: var(--b3); }
";

/// What a token's hover says: its probability, rank, the entropy there and the alternatives.
fn token_title(s: &TokenScore) -> String {
    let mut title = format!(
        "p = {:.4} · rank {} · entropy {:.2} bits",
        f64::from(s.logprob).exp(),
        s.rank,
        s.entropy_bits
    );
    if !s.top.is_empty() {
        let top: Vec<String> = s
            .top
            .iter()
            .map(|a| format!("{:?} {:.3}", a.text, a.prob))
            .collect();
        let _ = write!(title, " · top: {}", top.join(", "));
    }
    title
}

/// The GLTR view of `text` (named `name`) as a page: `scores` cover the text in order; `lines`
/// (1-based, any subset) give the margin.
pub fn gltr_page(
    name: &str,
    text: &str,
    scores: &[TokenScore],
    summary: &ScoreSummary,
    lines: &[LineScore],
) -> String {
    let mut page = String::with_capacity(text.len() * 12 + 4096);
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n<title>infill score: {name}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{name}</h1>\n",
        name = escape(name)
    );
    let _ = writeln!(
        page,
        "<p class=\"summary\">{} tokens · {:.2} bits per token · {:.3} bits per byte · perplexity {:.1} · \
         <span class=\"legend\">rank <span class=\"t0\">top 10</span><span class=\"t1\">top 100</span>\
         <span class=\"t2\">top 1000</span><span class=\"t3\">beyond</span></span>{}</p>",
        summary.tokens,
        summary.bits_per_token,
        summary.bits_per_byte,
        summary.perplexity,
        if lines.is_empty() {
            ""
        } else {
            " · margin: each line's bits per token between the code around it"
        }
    );
    let longest = lines
        .iter()
        .map(|l| l.bits_per_token)
        .fold(0.0f64, f64::max);
    let margin = |line: usize| -> String {
        match lines.iter().find(|l| l.line == line) {
            Some(l) if longest > 0.0 => format!(
                "<td class=\"margin\" title=\"{:.2} bits per token, {:.1} bits in all\">\
                 <svg width=\"{BAR_WIDTH}\" height=\"10\"><rect class=\"bar\" x=\"0\" y=\"1\" width=\"{:.1}\" height=\"8\"/></svg> {:.1}</td>",
                l.bits_per_token,
                l.bits,
                BAR_WIDTH * l.bits_per_token / longest,
                l.bits_per_token
            ),
            _ => "<td class=\"margin\"></td>".to_owned(),
        }
    };
    page.push_str("<table class=\"code\">\n");
    let mut line = 1;
    let open_row = |page: &mut String, line: usize| {
        let _ = write!(
            page,
            "<tr id=\"L{line}\"><td class=\"ln\">{line}</td>{}<td class=\"src\">",
            margin(line)
        );
    };
    open_row(&mut page, line);
    // Text no token covers (there is none when the scores tile the text) is shown plain.
    let mut at = 0;
    let emit = |page: &mut String, piece: &str, class: Option<(usize, &str)>, line: &mut usize| {
        for (i, part) in piece.split('\n').enumerate() {
            if i > 0 {
                page.push_str("</td></tr>\n");
                *line += 1;
                open_row(page, *line);
            }
            if part.is_empty() {
                continue;
            }
            match class {
                Some((bucket, title)) => {
                    let _ = write!(
                        page,
                        "<span class=\"t{bucket}\" title=\"{title}\">{}</span>",
                        escape(part)
                    );
                }
                None => page.push_str(&escape(part)),
            }
        }
    };
    for s in scores {
        if s.start > at
            && let Some(gap) = text.get(at..s.start)
        {
            emit(&mut page, gap, None, &mut line);
        }
        let piece = text.get(s.start..s.end).unwrap_or_default();
        let title = escape(&token_title(s));
        emit(
            &mut page,
            piece,
            Some((score::gltr_bucket(s.rank), &title)),
            &mut line,
        );
        at = at.max(s.end);
    }
    if let Some(rest) = text.get(at..) {
        emit(&mut page, rest, None, &mut line);
    }
    page.push_str("</td></tr>\n</table>\n</body>\n</html>\n");
    page
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::generate::Alternative;

    fn token(text: &str, start: usize, rank: usize, p: f32) -> TokenScore {
        TokenScore {
            start,
            end: start + text.len(),
            text: text.into(),
            id: 0,
            logprob: p.ln(),
            rank,
            entropy_bits: 1.5,
            top: vec![Alternative {
                id: 1,
                text: "<b>".into(),
                prob: 0.5,
            }],
        }
    }

    fn line(n: usize, bits_per_token: f64) -> LineScore {
        LineScore {
            line: n,
            text: String::new(),
            tokens: 4,
            bits: bits_per_token * 4.0,
            bits_per_token,
            max_token_bits: 0.0,
            excess_bits: 0.0,
        }
    }

    #[test]
    fn each_token_gets_its_bucket_each_line_its_row_and_the_bars_their_share() {
        // `x < 1 && y` on line 1; a token running over the line break; line 2.
        let text = "x < 1 && y\n    z\n";
        let tokens = [
            token("x", 0, 1, 0.9),
            token(" <", 1, 50, 0.05),
            token(" 1", 3, 500, 0.004),
            token(" &&", 5, 5000, 0.0001),
            token(" y", 8, 3, 0.3),
            token("\n    ", 10, 2, 0.5),
            token("z", 15, 1, 0.8),
            token("\n", 16, 1, 0.9),
        ];
        let summary = score::summarize(text, &tokens, 3);
        let page = gltr_page(
            "a<b>.py",
            text,
            &tokens,
            &summary,
            &[line(1, 6.0), line(2, 1.5)],
        );
        let count = |needle: &str| page.matches(needle).count();
        // Spans by bucket: the token over the line break shows once (its part on line 2 is
        // indentation only).
        assert_eq!(count("class=\"t0\" title"), 4);
        assert_eq!(count("class=\"t1\" title"), 1);
        assert_eq!(count("class=\"t2\" title"), 1);
        assert_eq!(count("class=\"t3\" title"), 1);
        // Three lines: the two of text and the empty one after the last break.
        assert_eq!(count("<tr id=\"L"), 3);
        assert!(
            page.contains("&lt;") && page.contains("&amp;&amp;"),
            "escaped"
        );
        assert!(!page.contains("x < 1"), "nothing unescaped");
        assert!(page.contains("<title>infill score: a&lt;b&gt;.py</title>"));
        // The hover: probability, rank, entropy and the alternatives, escaped.
        assert!(
            page.contains("title=\"p = 0.0001 · rank 5000 · entropy 1.50 bits · top: &quot;&lt;b&gt;&quot; 0.500\""),
            "{page}"
        );
        // Bars: the most surprising line gets the whole width, the other its share.
        assert!(page.contains("width=\"60.0\" height=\"8\""), "{page}");
        assert!(page.contains("width=\"15.0\" height=\"8\""), "{page}");
        assert_eq!(count("<rect"), 2);
        assert!(page.contains("prefers-color-scheme: dark"));
        assert!(!page.contains("<script"));
    }
}
