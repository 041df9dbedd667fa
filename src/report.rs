//! Pages to share: self-contained HTML (inline CSS and SVG, no scripts, nothing fetched), light or
//! dark as the reader's system prefers.
//!
//! [`eval_page`] is `infill eval --report`: exact match and edit similarity per task kind with
//! their 95% intervals (and the baseline's), raw against trimmed, the first token's calibration,
//! latency histograms and the worst proposals. [`gltr_page`] is `infill score FILE --html`: every token of a file coloured by the rank the
//! model gave it (GLTR's buckets: top 10, 100, 1000, beyond), its probability, rank, entropy and
//! the model's top alternatives on hover, and each line's surprisal between the code around it
//! (`score --fim`) as a bar in the margin.

use std::fmt::Write;

use crate::complete::LineScore;
use crate::eval::tasks::Task;
use crate::eval::{KindReport, Outcome, metrics};
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
h2 { font-size: 1.05em; margin: 1.6em 0 .4em; }
svg.chart text { fill: var(--fg); font: 12px system-ui, sans-serif; }
svg.chart .model { fill: #4f8ad9; } svg.chart .baseline { fill: #9aa0a6; }
svg.chart .raw { fill: #c9a227; } svg.chart .whisker, svg.chart .ideal { stroke: var(--fg); }
svg.chart .ideal { stroke-dasharray: 4 3; opacity: .5; }
table.worst { border-collapse: collapse; font-size: 13px; }
table.worst td, table.worst th { border-top: 1px solid var(--muted); padding: .3em .6em; vertical-align: top; text-align: left; }
table.worst pre { margin: 0; font: 12px/1.4 ui-monospace, monospace; white-space: pre-wrap; }
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

/// Width in pixels of a bar chart's plotting area, and of its labels.
pub const CHART_WIDTH: f64 = 400.0;
const LABEL_WIDTH: f64 = 150.0;
const ROW: f64 = 18.0;

/// One bar: a share in [0, 1], its 95% interval, and its series (a CSS class).
struct Bar {
    label: String,
    value: f64,
    interval: Option<(f64, f64)>,
    class: &'static str,
}

/// A horizontal bar chart of shares: bars scaled to [`CHART_WIDTH`], whiskers for intervals.
fn bar_chart(bars: &[Bar]) -> String {
    let height = ROW * bars.len() as f64 + 4.0;
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{}\" height=\"{height}\" role=\"img\">",
        LABEL_WIDTH + CHART_WIDTH + 60.0
    );
    for (i, b) in bars.iter().enumerate() {
        let y = ROW * i as f64 + 2.0;
        let w = CHART_WIDTH * b.value.clamp(0.0, 1.0);
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar {}\" x=\"{LABEL_WIDTH}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\"><title>{} {:.1}%</title></rect>",
            LABEL_WIDTH - 6.0,
            y + 12.0,
            escape(&b.label),
            b.class,
            ROW - 4.0,
            escape(&b.label),
            100.0 * b.value
        );
        if let Some((lo, hi)) = b.interval {
            let (x0, x1) = (
                LABEL_WIDTH + CHART_WIDTH * lo.clamp(0.0, 1.0),
                LABEL_WIDTH + CHART_WIDTH * hi.clamp(0.0, 1.0),
            );
            let mid = y + (ROW - 4.0) / 2.0;
            let _ = write!(
                svg,
                "<line class=\"whisker\" x1=\"{x0:.1}\" x2=\"{x1:.1}\" y1=\"{mid:.1}\" y2=\"{mid:.1}\"/>"
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.1}%</text>",
            LABEL_WIDTH + CHART_WIDTH + 4.0,
            y + 12.0,
            100.0 * b.value
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The mean of `values` (each 0 or 1, or a similarity) and its bootstrap 95% interval.
fn mean_interval(values: &[f64], seed: u64) -> (f64, (f64, f64)) {
    let zeros = vec![0.0; values.len()];
    let (mean, lo, hi) = metrics::bootstrap_difference(values, &zeros, 2000, seed);
    (mean, (lo, hi))
}

/// Calibration: proposals grouped by the first token's probability (tenths), each bar the share
/// of them that were right (trimmed exact match), with the diagonal a calibrated model would
/// follow. Returns the chart and the (count, share right) of each tenth.
fn calibration_chart(outcomes: &[Outcome]) -> (String, Vec<(usize, f64)>) {
    let mut bins = [(0usize, 0usize); 10];
    for o in outcomes {
        let b = ((f64::from(o.first_token_prob) * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += usize::from(o.trimmed_score.exact);
    }
    let (w, h) = (CHART_WIDTH, 160.0);
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{}\" height=\"{}\" role=\"img\">\
         <line class=\"ideal\" x1=\"40\" y1=\"{h}\" x2=\"{}\" y2=\"0\"/>",
        w + 50.0,
        h + 30.0,
        40.0 + w
    );
    let mut shares = Vec::new();
    for (i, &(n, right)) in bins.iter().enumerate() {
        let share = if n > 0 { right as f64 / n as f64 } else { 0.0 };
        shares.push((n, share));
        let x = 40.0 + w * i as f64 / 10.0;
        if n > 0 {
            let bh = h * share;
            let _ = write!(
                svg,
                "<rect class=\"bar model\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>p {:.1}-{:.1}: {right} of {n} right</title></rect>",
                x + 2.0,
                h - bh,
                w / 10.0 - 4.0,
                i as f64 / 10.0,
                (i + 1) as f64 / 10.0
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>",
            x + w / 20.0,
            h + 14.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">first token's probability (0 to 1; proposals per tenth)</text></svg>",
        40.0 + w / 2.0,
        h + 28.0
    );
    (svg, shares)
}

/// A histogram of milliseconds on a log scale (bins of equal ratio), bars scaled to the fullest.
/// Returns the chart and the count in each bin.
fn latency_histogram(ms: &[f64], bins: usize) -> (String, Vec<usize>) {
    let (w, h) = (CHART_WIDTH, 100.0);
    let positive: Vec<f64> = ms.iter().map(|m| m.max(0.1)).collect();
    let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = positive.iter().copied().fold(0.0f64, f64::max);
    let mut counts = vec![0usize; bins];
    if positive.is_empty() {
        return (String::new(), counts);
    }
    let span = (hi / lo).ln().max(1e-9);
    for m in &positive {
        let b = (((m / lo).ln() / span) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{}\" height=\"{}\" role=\"img\">",
        w + 20.0,
        h + 30.0
    );
    for (i, &n) in counts.iter().enumerate() {
        let bh = h * n as f64 / most as f64;
        let from = lo * (span * i as f64 / bins as f64).exp();
        let to = lo * (span * (i + 1) as f64 / bins as f64).exp();
        let _ = write!(
            svg,
            "<rect class=\"bar model\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{from:.0}-{to:.0} ms: {n}</title></rect>",
            10.0 + w * i as f64 / bins as f64 + 1.0,
            h - bh,
            w / bins as f64 - 2.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"10\" y=\"{:.1}\">{lo:.0} ms</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{hi:.0} ms</text></svg>",
        h + 16.0,
        w + 10.0,
        h + 16.0
    );
    (svg, counts)
}

/// `infill eval --report`: the evaluation of `model` (and `baseline`, on the same tasks) as a page.
pub fn eval_page(
    title: &str,
    tasks: &[Task],
    reports: &[KindReport],
    model: &[Outcome],
    baseline: Option<&[Outcome]>,
    seed: u64,
) -> String {
    let mut page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n<title>infill eval: {t}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    let all = reports.iter().find(|r| r.kind == "all");
    if let Some(r) = all {
        let _ = writeln!(
            page,
            "<p class=\"summary\">{} tasks · trimmed exact match {:.1}% · edit similarity {:.3} · latency p50 {:.0} ms, to where the editor stops p50 {:.0} ms{}</p>",
            r.model.trimmed.tasks,
            100.0 * r.model.trimmed.exact_match,
            r.model.trimmed.edit_similarity,
            r.model.latency_p50_ms,
            r.model.shown_latency_p50_ms,
            if baseline.is_some() {
                " · grey: the baseline"
            } else {
                ""
            }
        );
    }
    // Per kind: the model's and the baseline's trimmed figures with their intervals.
    let kinds: Vec<&str> = reports.iter().map(|r| r.kind.as_str()).collect();
    let of_kind = |outcomes: &[Outcome], kind: &str, f: &dyn Fn(&Outcome) -> f64| -> Vec<f64> {
        tasks
            .iter()
            .zip(outcomes)
            .filter(|(t, _)| kind == "all" || t.kind.name() == kind)
            .map(|(_, o)| f(o))
            .collect()
    };
    for (heading, f) in [
        (
            "Exact match (trimmed), 95% intervals",
            &(|o: &Outcome| f64::from(u8::from(o.trimmed_score.exact))) as &dyn Fn(&Outcome) -> f64,
        ),
        (
            "Edit similarity (trimmed), 95% intervals",
            &|o: &Outcome| o.trimmed_score.edit_similarity,
        ),
    ] {
        let mut bars = Vec::new();
        for kind in &kinds {
            let series = [
                Some((model, "model", "")),
                baseline.map(|b| (b, "baseline", " (baseline)")),
            ];
            for (outcomes, class, suffix) in series.into_iter().flatten() {
                let (value, interval) = mean_interval(&of_kind(outcomes, kind, f), seed);
                bars.push(Bar {
                    label: format!("{kind}{suffix}"),
                    value,
                    interval: Some(interval),
                    class,
                });
            }
        }
        let _ = write!(page, "<h2>{heading}</h2>\n{}\n", bar_chart(&bars));
    }
    // Raw against trimmed: what trimming does to the model's own proposals.
    let mut bars = Vec::new();
    for r in reports {
        bars.push(Bar {
            label: format!("{} raw", r.kind),
            value: r.model.raw.exact_match,
            interval: None,
            class: "raw",
        });
        bars.push(Bar {
            label: format!("{} trimmed", r.kind),
            value: r.model.trimmed.exact_match,
            interval: None,
            class: "model",
        });
    }
    let _ = write!(
        page,
        "<h2>Exact match, raw and trimmed</h2>\n{}\n",
        bar_chart(&bars)
    );
    let (calibration, _) = calibration_chart(model);
    let _ = write!(
        page,
        "<h2>Calibration: how often a proposal was right, by its first token's probability</h2>\n{calibration}\n"
    );
    let first: Vec<f64> = model.iter().map(|o| o.first_token_ms).collect();
    let shown: Vec<f64> = model.iter().map(|o| o.shown_latency_ms).collect();
    let _ = write!(
        page,
        "<h2>Latency to the first token</h2>\n{}\n<h2>Latency to where the editor stops</h2>\n{}\n",
        latency_histogram(&first, 20).0,
        latency_histogram(&shown, 20).0
    );
    // The worst proposals, with the lines before the hole.
    let mut worst: Vec<(&Task, &Outcome)> = tasks.iter().zip(model).collect();
    worst.sort_by(|a, b| {
        a.1.trimmed_score
            .edit_similarity
            .total_cmp(&b.1.trimmed_score.edit_similarity)
    });
    page.push_str(
        "<h2>The worst proposals (lowest edit similarity)</h2>\n<table class=\"worst\">\n\
         <tr><th>task</th><th>before the hole</th><th>expected</th><th>proposed</th><th>similarity</th></tr>\n",
    );
    for (task, o) in worst.iter().take(10) {
        let context: Vec<&str> = task.prefix.lines().rev().take(3).collect();
        let context: Vec<&str> = context.into_iter().rev().collect();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{:.2}</td></tr>",
            escape(&task.id),
            escape(&context.join("\n")),
            escape(&task.middle),
            escape(&o.trimmed),
            o.trimmed_score.edit_similarity
        );
    }
    page.push_str("</table>\n</body>\n</html>\n");
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

    /// Ten rest-of-line tasks: the first `right` exact; first-token probabilities 0.05, 0.15, ...
    fn outcomes(right: usize) -> (Vec<Task>, Vec<Outcome>) {
        let tasks: Vec<Task> = (0..10)
            .map(|i| Task {
                id: format!("f.py:{i}-{}", i + 1),
                kind: crate::eval::tasks::TaskKind::RestOfLine,
                language: Some("python".into()),
                prefix: format!("def f():\n    x = <{i}>\n    return "),
                middle: "x\n".into(),
                suffix: String::new(),
                test: None,
                entry_point: None,
            })
            .collect();
        let outcomes = (0..10)
            .map(|i| {
                let exact = i < right;
                let score = crate::eval::Score {
                    exact,
                    edit_similarity: if exact { 1.0 } else { 0.25 },
                    ..Default::default()
                };
                Outcome {
                    task: tasks[i].id.clone(),
                    raw: "x & y".into(),
                    trimmed: if exact { "x\n".into() } else { "y <z>".into() },
                    raw_score: crate::eval::Score::default(),
                    trimmed_score: score,
                    empty_score: crate::eval::Score::default(),
                    tokens: 3,
                    latency_ms: 100.0,
                    shown_tokens: 2,
                    shown_latency_ms: 10.0 * (i + 1) as f64,
                    first_token_ms: 5.0 * (i + 1) as f64,
                    first_token_prob: 0.05 + 0.1 * i as f32,
                    tokens_per_s: 30.0,
                    prompt_tokens_computed: 10,
                    shifted_tokens: 0,
                }
            })
            .collect();
        (tasks, outcomes)
    }

    #[test]
    fn the_eval_page_plots_the_figures_it_was_given() {
        let (tasks, model) = outcomes(4);
        let (_, baseline) = outcomes(2);
        let reports = crate::eval::report(&tasks, &model, Some(&baseline), 7);
        let page = eval_page("repo", &tasks, &reports, &model, Some(&baseline), 7);
        // Exact match: 40% of the plotting width for the model, 20% for the baseline, on both
        // rows (the kind and all).
        let model_bar = format!("width=\"{:.1}\"", 0.4 * CHART_WIDTH);
        let baseline_bar = format!("width=\"{:.1}\"", 0.2 * CHART_WIDTH);
        assert!(page.matches(&model_bar).count() >= 2, "{page}");
        assert!(page.matches(&baseline_bar).count() >= 2, "{page}");
        // Whiskers: one per bar of the two interval charts (2 kinds x 2 series x 2 charts).
        assert_eq!(page.matches("class=\"whisker\"").count(), 8);
        // Calibration: one proposal per tenth, the first four right.
        let (_, shares) = calibration_chart(&model);
        let expected: Vec<(usize, f64)> = (0..10)
            .map(|i| (1, if i < 4 { 1.0 } else { 0.0 }))
            .collect();
        assert_eq!(shares, expected);
        assert!(page.contains("p 0.3-0.4: 1 of 1 right"), "{page}");
        // Latency: 5, 10, ..., 50 ms in 20 bins of equal ratio from 5 to 50 ms: 5k ms falls in
        // bin floor(20 log10 k), the last bin holding 45 and 50.
        let (_, counts) = latency_histogram(
            &model.iter().map(|o| o.first_token_ms).collect::<Vec<_>>(),
            20,
        );
        let mut expected = vec![0usize; 20];
        for b in [0, 6, 9, 12, 13, 15, 16, 18, 19, 19] {
            expected[b] += 1;
        }
        assert_eq!(counts, expected);
        // The worst proposals, escaped, worst first.
        assert_eq!(page.matches("<tr><td>f.py:").count(), 10);
        assert!(page.contains("y &lt;z&gt;") && !page.contains("y <z>"));
        assert!(page.find("f.py:9-10").unwrap() < page.find("f.py:0-1").unwrap());
        assert!(!page.contains("<script"));
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
