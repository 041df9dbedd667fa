//! The `infill` binary: output formats, exit codes and one-line errors.

use std::process::Output;

use crate::fixture;

fn infill(args: &[&str]) -> Output {
    crate::infill_cmd().args(args).output().unwrap()
}

fn source_file(text: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".py").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn complete_json_reports_tokens_timings_and_model() {
    // The golden prompt, which the fixture continues for 10 tokens without stopping.
    let g = crate::golden("qwen2");
    let src = source_file(format!("{}{}", g.prefix, g.suffix).as_bytes());
    let (line, column) = (
        g.prefix.lines().count(),
        g.prefix.lines().last().unwrap().chars().count() + 1,
    );
    let (line, column) = (line.to_string(), column.to_string());
    let model = fixture("qwen2");
    let out = infill(&[
        "complete",
        "--file",
        src.path().to_str().unwrap(),
        "--line",
        &line,
        "--column",
        &column,
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--max-tokens",
        "6",
        "--no-trim",
        "--no-heal",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = json["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let want: Vec<u64> = g.ids[g.prompt_len..g.prompt_len + 6]
        .iter()
        .map(|&i| u64::from(i))
        .collect();
    assert_eq!(
        ids, want,
        "the CLI runs the same pipeline as the golden test"
    );
    // The completion is the whole characters the tokens wrote: a cut or invalid character
    // ends it (the tokens' own texts show U+FFFD for theirs).
    let joined: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    let completion = json["completion"].as_str().unwrap();
    assert!(
        joined.starts_with(completion),
        "{joined:?} / {completion:?}"
    );
    assert!(!completion.contains('\u{FFFD}'), "{completion:?}");
    for t in tokens {
        let p = t["prob"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0 && t["rank"].as_u64().unwrap() >= 1);
        assert_eq!(t["top"].as_array().unwrap().len(), 5);
    }
    for key in ["prompt_tokens", "prefill_ms", "decode_ms", "tokens_per_s"] {
        assert!(json["timings"][key].is_number(), "timings.{key}");
    }
    assert_eq!(json["model"]["family"], "qwen2");
    assert_eq!(json["model"]["fim_template"], "qwen");
    assert_eq!(
        json["raw"], json["completion"],
        "--no-trim shows the raw proposal"
    );
    assert!(json["trim_reason"].is_null());

    // Trimmed by default: the same raw proposal, a prefix of it shown, and the reason.
    let trimmed = infill(&[
        "complete",
        "--file",
        src.path().to_str().unwrap(),
        "--line",
        &line,
        "--column",
        &column,
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--max-tokens",
        "6",
        "--no-heal",
    ]);
    let t: serde_json::Value = serde_json::from_slice(&trimmed.stdout).unwrap();
    assert_eq!(t["language"], "python");
    assert!(t["trim_reason"].is_string());
    let (raw, shown) = (
        t["raw"].as_str().unwrap(),
        t["completion"].as_str().unwrap(),
    );
    assert!(
        json["raw"].as_str().unwrap().starts_with(raw),
        "early stop only shortens the raw text"
    );
    assert!(raw.starts_with(shown));

    // Plain output is the completion itself (plus a final newline when it lacks one).
    let plain = infill(&[
        "complete",
        "--file",
        src.path().to_str().unwrap(),
        "--line",
        &line,
        "--column",
        &column,
        "--model",
        model.to_str().unwrap(),
        "--max-tokens",
        "6",
        "--no-trim",
        "--no-heal",
    ]);
    let text = String::from_utf8(plain.stdout).unwrap();
    assert_eq!(
        text.trim_end_matches('\n'),
        json["completion"].as_str().unwrap().trim_end_matches('\n')
    );
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn bad_input_gets_one_line_and_exit_code_2() {
    let model = fixture("qwen2");
    let m = model.to_str().unwrap();
    let ok = source_file(b"x = 1\n");
    let p = ok.path().to_str().unwrap();
    assert_one_line_error(
        &infill(&[
            "complete", "--file", p, "--line", "9", "--column", "1", "--model", m,
        ]),
        "line 9 is out of range",
    );
    assert_one_line_error(
        &infill(&[
            "complete", "--file", p, "--line", "1", "--column", "99", "--model", m,
        ]),
        "column 99",
    );
    let binary = source_file(b"\x7fELF\x00\x00\x01");
    let b = binary.path().to_str().unwrap();
    assert_one_line_error(
        &infill(&[
            "complete", "--file", b, "--line", "1", "--column", "1", "--model", m,
        ]),
        "binary",
    );
    let latin1 = source_file(b"caf\xe9 = 1\n");
    let l = latin1.path().to_str().unwrap();
    assert_one_line_error(
        &infill(&[
            "complete", "--file", l, "--line", "1", "--column", "1", "--model", m,
        ]),
        "UTF-8",
    );
    assert_one_line_error(
        &infill(&[
            "complete",
            "--file",
            "/no/such/file.py",
            "--line",
            "1",
            "--column",
            "1",
            "--model",
            m,
        ]),
        "/no/such/file.py",
    );
    assert_one_line_error(
        &infill(&[
            "complete",
            "--file",
            p,
            "--line",
            "1",
            "--column",
            "1",
            "--model",
            "/no/such/model",
        ]),
        "/no/such/model",
    );
    assert_one_line_error(
        &infill(&[
            "complete",
            "--file",
            p,
            "--line",
            "1",
            "--column",
            "1",
            "--model",
            "nobody/absent-model",
        ]),
        "HF_HUB_OFFLINE",
    );
    let broken = crate::scratch_copy("qwen2");
    std::fs::write(
        broken.path().join("model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    let bm = broken.path().to_str().unwrap();
    let out = infill(&[
        "complete", "--file", p, "--line", "1", "--column", "1", "--model", bm,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let bare = infill(&["complete", "--file", p, "--line", "1", "--column", "1"]);
    if infill::model::embedded::files().is_none() {
        assert_one_line_error(&bare, "no default model");
    } else {
        assert!(
            bare.status.success(),
            "{}",
            String::from_utf8_lossy(&bare.stderr)
        );
    }
}

#[test]
fn trim_command_reads_the_proposal_from_a_file_or_stdin() {
    let src = source_file(b"def f(a, b):\n    \n\nprint(f(1, 2))\n");
    let proposal = source_file(b"return a + b\n\ndef g():\n    pass\n");
    let p = src.path().to_str().unwrap();
    let out = infill(&[
        "trim",
        "--file",
        p,
        "--line",
        "2",
        "--column",
        "5",
        "--proposal-file",
        proposal.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "return a + b");

    let mut child = crate::infill_cmd()
        .args([
            "trim", "--file", p, "--line", "2", "--column", "5", "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"return a + b\n}")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["trimmed"], "return a + b");
    assert_eq!(json["language"], "python");
    assert!(json["reason"].is_string());

    assert_one_line_error(
        &infill(&[
            "trim",
            "--file",
            p,
            "--line",
            "1",
            "--column",
            "1",
            "--language",
            "cobol",
        ]),
        "cobol",
    );
}

#[test]
fn version_says_which_default_model_is_built_in_and_a_bare_file_means_edit() {
    let out = infill(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("infill "), "{text}");
    let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/model/model.safetensors")
        .exists();
    assert_eq!(infill::model::embedded::files().is_some(), built_in);
    if built_in {
        assert!(text.contains("default model: built in"), "{text}");
        let models = infill(&["models"]);
        let listed = String::from_utf8_lossy(&models.stdout);
        assert!(listed.starts_with("default (built in): qwen2"), "{listed}");
        assert!(listed.contains("bits/byte"), "{listed}");
    } else {
        assert!(text.contains("default model: none built in"), "{text}");
    }
    // `infill FILE` is `infill edit FILE`: a binary file is refused before the terminal changes.
    let bin = source_file(b"\x00\x01\x02");
    let out = infill(&[bin.path().to_str().unwrap()]);
    assert_one_line_error(&out, "binary");
}

/// Counts for options that take one: zero, one, the extremes, a spread in between, and now and
/// then something that is not a count at all.
fn count() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        4 => Just("0".to_string()),
        4 => Just("1".to_string()),
        4 => Just(u64::MAX.to_string()),
        2 => Just(u32::MAX.to_string()),
        8 => (0u64..100_000).prop_map(|n| n.to_string()),
        4 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just("-1".to_string()),
    ]
}

/// Real numbers for options that take one, the non-finite ones included.
fn real() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        2 => Just("0".to_string()),
        2 => Just("1".to_string()),
        1 => Just("-1".to_string()),
        1 => Just("1e309".to_string()),
        1 => Just("NaN".to_string()),
        1 => Just("inf".to_string()),
        8 => (0.0f64..2.0).prop_map(|x| format!("{x}")),
    ]
}

use proptest::prelude::prop_oneof;

/// Parses `args` as the command line and runs `complete` or `score` in process: false when it
/// panics (arguments clap refuses, and errors the command reports, are fine).
fn runs_without_panic(args: &[String]) -> bool {
    use clap::Parser;
    use infill::cli::{Cli, Command};
    let Ok(cli) = Cli::try_parse_from(args) else {
        return true;
    };
    std::panic::catch_unwind(|| match &cli.command {
        Command::Complete(c) => infill::cmd::complete::run(c),
        Command::Score(s) => infill::cmd::score::run(s),
        _ => Ok(()),
    })
    .is_ok()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]

    /// No number given to `complete`'s options makes it panic: each is used or refused with a
    /// message. (`--max-tokens 18446744073709551615` once overflowed the prompt budget.)
    #[test]
    fn complete_never_panics_on_numeric_arguments(
        line in prop_oneof![4 => 1usize..6, 1 => 0usize..2],
        column in prop_oneof![4 => 1usize..8, 1 => 0usize..100],
        counts in proptest::collection::vec(count(), 5),
        reals in proptest::collection::vec(real(), 2),
    ) {
        let src = source_file(b"def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n");
        let model = fixture("qwen2");
        let mut args = vec![
            "infill".to_string(), "complete".into(),
            "--file".into(), src.path().display().to_string(),
            "--model".into(), model.display().to_string(),
            format!("--line={line}"), format!("--column={column}"),
        ];
        // A huge token budget would run for minutes on a real model; the fixture's context is
        // small, so generation stops there.
        let counted = [
            "--max-tokens", "--context", "--top-k", "--time-budget-ms", "--top-alternatives",
        ];
        for (option, value) in counted.iter().zip(&counts) {
            args.push(format!("{option}={value}"));
        }
        for (option, value) in ["--top-p", "--temperature"].iter().zip(&reals) {
            args.push(format!("{option}={value}"));
        }
        proptest::prop_assert!(runs_without_panic(&args), "{args:?} panicked");
    }

    /// The same for `score`.
    #[test]
    fn score_never_panics_on_numeric_arguments(
        counts in proptest::collection::vec(count(), 4),
        fim in proptest::bool::ANY,
    ) {
        let src = source_file(b"def add(a, b):\n    return a + b\n");
        let model = fixture("qwen2");
        let mut args = vec![
            "infill".to_string(), "score".into(), src.path().display().to_string(),
            "--model".into(), model.display().to_string(),
        ];
        if fim {
            args.push("--fim".into());
        }
        let counted = ["--window", "--stride", "--top-k", "--fim-context"];
        for (option, value) in counted.iter().zip(&counts) {
            args.push(format!("{option}={value}"));
        }
        proptest::prop_assert!(runs_without_panic(&args), "{args:?} panicked");
    }
}

/// Output into a pipe closed early ends quietly with success, JSON or plain, as ripgrep's does.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let src = source_file(b"def add(a, b):\n    return a + b\n");
    let model = fixture("qwen2");
    for json in [true, false] {
        let mut cmd = crate::infill_cmd();
        cmd.args(["complete", "--file", src.path().to_str().unwrap()])
            .args(["--line", "2", "--column", "5", "--max-tokens", "4"])
            .args([
                "--model",
                model.to_str().unwrap(),
                "--top-alternatives",
                "3000",
            ]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then close the pipe as `head -c 1` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        let _ = stdout.read(&mut byte);
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "json {json}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A broken config.json says its cause once; `score --window 0` is refused instead of scoring
/// with another window than asked.
#[test]
fn bad_model_files_and_score_arguments_are_said_once_in_one_line() {
    let tmp = crate::scratch_copy("qwen2");
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let src = source_file(b"x = 1\n");
    let out = infill(&[
        "score",
        src.path().to_str().unwrap(),
        "--model",
        tmp.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("is not valid JSON").count(), 1, "{err}");
    let model = fixture("qwen2");
    for (flag, value) in [("--window", "0"), ("--window", "1"), ("--stride", "0")] {
        let out = infill(&[
            "score",
            src.path().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            flag,
            value,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{err}");
    }
}

/// What a command did goes to the log file in the state directory, never to the terminal; the
/// level decides how much, and `off` writes nothing.
#[test]
fn commands_log_to_the_state_directory_not_the_terminal() {
    let state = tempfile::tempdir().unwrap();
    let src = source_file(b"def add(a, b):\n    return a + b\n");
    let model = fixture("qwen2");
    let run = |level: &str| {
        crate::succeeded(
            crate::infill_cmd()
                .env("XDG_STATE_HOME", state.path())
                .args(["complete", "--file", src.path().to_str().unwrap()])
                .args(["--line", "2", "--column", "5", "--max-tokens", "2"])
                .args(["--model", model.to_str().unwrap(), "--log-level", level]),
        )
    };
    let out = run("off");
    let log = state.path().join("infill/infill.log");
    assert!(!log.exists());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("info");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("INFO") && text.contains("complete --file"),
        "{text}"
    );
    assert!(
        text.contains("loaded ") && text.contains("(qwen2, context"),
        "{text}"
    );
    // An error is logged as well as said.
    let bad = crate::infill_cmd()
        .env("XDG_STATE_HOME", state.path())
        .args([
            "complete",
            "--file",
            "/no/such.py",
            "--line",
            "1",
            "--column",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ERROR") && text.contains("/no/such.py: cannot read"),
        "{text}"
    );
}

#[test]
fn a_device_not_built_in_or_not_a_device_is_said_in_one_line() {
    let model = fixture("qwen2");
    let m = model.to_str().unwrap();
    let src = source_file(b"x = 1\n");
    let p = src.path().to_str().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("run");
    let o = out.to_str().unwrap();
    let at = ["--file", p, "--line", "1", "--column", "1", "--model", m];
    let commands: [Vec<&str>; 4] = [
        [&["complete"][..], &at].concat(),
        vec!["score", p, "--model", m],
        vec!["edit", p, "--model", m],
        vec!["train", "--repo", p, "--out", o, "--init", m],
    ];
    for command in &commands {
        let with = |device: &str| infill(&[&command[..], &["--device", device]].concat());
        // A name that is not a device is a usage error, said by clap on its first line.
        for (name, needle) in [("tpu", "not a device"), ("cuda:x", "cuda:N")] {
            let out = with(name);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.lines().next().unwrap().contains(needle), "{stderr}");
        }
        if !candle_core::utils::cuda_is_available() {
            assert_one_line_error(&with("cuda:1"), "--features cuda");
        }
        if !candle_core::utils::metal_is_available() {
            assert_one_line_error(&with("metal"), "--features metal");
        }
    }
    // Nothing was trained, and the terminal was never taken.
    assert!(!out.exists());
}

#[test]
fn adapters_that_cannot_apply_are_said_before_the_editor_starts() {
    let src = source_file(b"x = 1\n");
    let p = src.path().to_str().unwrap();
    let m = fixture("qwen2");
    let m = m.to_str().unwrap();
    // The editor reads every adapter before it takes the terminal.
    assert_one_line_error(
        &infill(&["edit", p, "--model", m, "--adapter", "/no/such/adapter"]),
        "/no/such/adapter",
    );
    // Only the editor switches between several.
    let at = ["--file", p, "--line", "1", "--column", "1", "--model", m];
    let two = ["--adapter", "/a", "--adapter", "/b"];
    assert_one_line_error(
        &infill(&[&["complete"][..], &at, &two].concat()),
        "only the editor switches",
    );
}
