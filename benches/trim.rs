//! Trimming speed on a 2,000-line file: the baseline parse (once per request; the editor can reuse
//! its own tree) and `trim` itself (incremental re-parses), for proposals that keep, cut back, or
//! reject. Run with `cargo bench --bench trim`; figures are printed, not asserted.

#![allow(clippy::string_slice, clippy::expect_used)]

use std::time::Instant;

use infill::syntax::{Registry, Trimmer};

fn rust_file(lines: usize) -> String {
    let mut out = String::new();
    let mut i = 0;
    while out.lines().count() < lines {
        out.push_str(&format!(
            "/// Adds {i}.\npub fn add_{i}(a: i64, b: i64) -> i64 {{\n    let c = a + b * {i};\n    if c > 100 {{\n        return c - {i};\n    }}\n    c\n}}\n\n"
        ));
        i += 1;
    }
    out
}

fn python_file(lines: usize) -> String {
    let mut out = String::new();
    let mut i = 0;
    while out.lines().count() < lines {
        out.push_str(&format!(
            "def add_{i}(a, b):\n    c = a + b * {i}\n    if c > 100:\n        return c - {i}\n    return c\n\n\n"
        ));
        i += 1;
    }
    out
}

fn main() {
    let registry = Registry::builtin().expect("built-in languages");
    let cases = [
        (
            "rust",
            rust_file(2000),
            "let d = c * 2;\n    println!(\"{d}\");\n}\n\npub fn extra() {}\n",
            "let d = c *\n",
        ),
        (
            "python",
            python_file(2000),
            "d = c * 2\n    return d\n\ndef extra():\n    pass\n",
            "d = c * (\n",
        ),
    ];
    for (name, file, good, bad) in cases {
        let lang = registry.by_name(name).ok();
        // The cursor on a new, empty line after `c = ...` in a function in the middle of the file.
        let mid = file.len() / 2;
        let at = file[mid..]
            .find("    let c")
            .or_else(|| file[mid..].find("    c ="))
            .map_or(mid, |i| mid + i);
        let line_end = at + file[at..].find('\n').unwrap_or(0);
        let prefix = format!("{}\n    ", &file[..line_end]);
        let suffix = &file[line_end..];
        let prefix = prefix.as_str();
        let runs = 20;
        let t = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(Trimmer::new(prefix, suffix, lang));
        }
        let parse_ms = t.elapsed().as_secs_f64() * 1e3 / runs as f64;
        let mut trimmer = Trimmer::new(prefix, suffix, lang);
        for (kind, proposal) in [
            ("keeps/cuts at block end", good),
            ("cut back to valid", bad),
            ("single line", "foo(1, 2)"),
        ] {
            let t = Instant::now();
            let mut out = None;
            for _ in 0..runs {
                out = Some(trimmer.trim(proposal));
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / runs as f64;
            let out = out.expect("ran");
            println!(
                "{name:<7} {} lines  baseline parse {parse_ms:>6.2} ms  trim ({kind:<23}) {ms:>6.2} ms  -> {:?} {:?}",
                file.lines().count(),
                out.reason,
                out.text
            );
        }
    }
}
