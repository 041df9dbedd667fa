//! `infill eval` on a repository and on a HumanEval-infilling task file.

use crate::fixture;

fn infill(args: &[&str]) -> std::process::Output {
    crate::infill_cmd().args(args).output().unwrap()
}

#[test]
fn eval_on_a_repository_reports_every_kind_raw_trimmed_and_the_empty_floor() {
    let model = fixture("qwen2");
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = infill(&[
        "eval",
        "--repo",
        concat!(env!("CARGO_MANIFEST_DIR"), "/src"),
        "--model",
        model.to_str().unwrap(),
        "--baseline",
        model.to_str().unwrap(),
        "--tasks",
        "10",
        "--max-tokens",
        "8",
        "--held-out",
        "0.2",
        "--json",
        json.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "all (10 tasks)",
        "rest of line",
        "whole line",
        "multi-line",
        "syntax node",
        "random span",
        "edit similarity",
        "empty middle",
        "baseline trimmed",
        "95% CI",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from\n{stdout}");
    }
    // The same model as its own baseline differs by exactly nothing.
    assert!(
        stdout.contains("trimmed edit similarity: +0.000 (95% CI +0.000 .. +0.000)"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    assert_eq!(doc["tasks"].as_array().unwrap().len(), 10);
    assert_eq!(doc["model"].as_array().unwrap().len(), 10);
    // Where the editor would have stopped generating is never past the raw generation's end.
    assert!(stdout.contains("the editor stops after"), "{stdout}");
    for o in doc["model"].as_array().unwrap() {
        let (shown, all) = (o["shown_tokens"].as_u64(), o["tokens"].as_u64());
        assert!(shown.is_some() && shown <= all, "{o}");
        assert!(
            o["shown_latency_ms"].as_f64() <= o["latency_ms"].as_f64(),
            "{o}"
        );
    }
    // Per kind, how often trimming turned an exact raw proposal into a miss, and the reverse,
    // as the outcomes say.
    let exact = |o: &serde_json::Value, which: &str| o[which]["exact"].as_bool().unwrap();
    let outcomes = doc["model"].as_array().unwrap();
    let lost = outcomes
        .iter()
        .filter(|o| exact(o, "raw_score") && !exact(o, "trimmed_score"))
        .count();
    let won = outcomes
        .iter()
        .filter(|o| !exact(o, "raw_score") && exact(o, "trimmed_score"))
        .count();
    let lost_line = outcomes
        .iter()
        .filter(|o| {
            o["raw_score"]["first_line"].as_bool().unwrap()
                && !o["trimmed_score"]["first_line"].as_bool().unwrap()
        })
        .count();
    let all = doc["report"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "all")
        .unwrap();
    assert_eq!(all["model"]["trim_lost_exact"], lost);
    assert_eq!(all["model"]["trim_won_exact"], won);
    assert_eq!(all["model"]["trim_lost_first_line"], lost_line);
    assert!(
        stdout.contains(&format!(
            "trimming turned {lost} exact raw proposals into misses and {won} misses into exact matches; it lost {lost_line} right first lines"
        )),
        "{stdout}"
    );
    // Held-out files only: every task comes from a file the split holds out.
    for t in doc["tasks"].as_array().unwrap() {
        let path = t["id"].as_str().unwrap().split(':').next().unwrap();
        assert!(
            infill::train::split::is_held_out(path, 0.2),
            "{path} is a training file"
        );
    }
    // Bits per byte of the held-out Rust files, the same for the model and itself as baseline.
    assert!(stdout.contains("held-out bits per byte"), "{stdout}");
    let bits = &doc["bits_per_byte"];
    assert_eq!(bits["model"][0]["language"], "rust");
    assert!(bits["model"][0]["bits_per_byte"].as_f64().unwrap() > 0.0);
    assert_eq!(bits["model"], bits["baseline"]);
    // Per language and scope: single-line counts rest-of-line and whole-line tasks, multi-line
    // its own kind, and "all kinds" every task; the baseline (the same model) scores the same.
    assert!(stdout.contains("per language, trimmed"), "{stdout}");
    let rows = doc["languages"].as_array().unwrap();
    let count = |kinds: &[&str]| {
        doc["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| kinds.contains(&t["kind"].as_str().unwrap()))
            .count() as u64
    };
    let tasks_of = |scope: &str| {
        rows.iter()
            .find(|r| r["language"] == "rust" && r["scope"] == scope)
            .map_or(0, |r| r["trimmed"]["tasks"].as_u64().unwrap())
    };
    assert_eq!(
        tasks_of("single-line"),
        count(&["rest_of_line", "whole_line"])
    );
    assert_eq!(tasks_of("multi-line"), count(&["multi_line"]));
    assert_eq!(tasks_of("all kinds"), 10);
    for r in rows {
        assert_eq!(r["trimmed"], r["baseline_trimmed"]);
        assert_eq!(r["empty"]["edit_similarity"], 0.0);
    }
}

/// Bits per byte per language is what scoring the same text token by token gives, within the
/// per-language byte budget, cut at a line end.
#[test]
fn bits_per_byte_per_language_adds_up_the_token_scores() {
    let mut model = crate::open(&fixture("tiny-python"));
    let py = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n".to_string();
    let files = vec![
        ("a.py".to_string(), Some("python".to_string()), py.clone()),
        (
            "b.py".to_string(),
            Some("python".to_string()),
            py.repeat(40),
        ),
        ("notes".to_string(), None, "no language".to_string()),
    ];
    let budget = py.len() + 100;
    let bits = infill::eval::bits_per_byte(&mut model, &files, budget).unwrap();
    assert_eq!(bits.len(), 1, "files of no known language are left out");
    assert_eq!(bits[0].language, "python");
    assert_eq!(bits[0].files, 2);
    // The second file is cut at the last line end within the 100 bytes left.
    let second = &py.repeat(40)[..py.repeat(40)[..100].rfind('\n').unwrap() + 1];
    assert_eq!(bits[0].bytes, py.len() + second.len());
    let total: f64 = [py.as_str(), second]
        .iter()
        .map(|t| {
            infill::model::score::score(&mut model, t, usize::MAX, None, 0)
                .unwrap()
                .iter()
                .map(|s| -f64::from(s.logprob) / std::f64::consts::LN_2)
                .sum::<f64>()
        })
        .sum();
    let expected = total / bits[0].bytes as f64;
    assert!((bits[0].bits_per_byte - expected).abs() < 1e-9);
    assert!(expected > 0.0);
}

#[test]
fn eval_on_a_task_file_runs_the_tests_and_counts_the_empty_middle() {
    let tasks = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    let lines = [
        // An empty middle passes this one: the floor is not zero.
        r##"{"task_id": "t/0", "prompt": "def f():\n    return 1\n", "suffix": "\n", "canonical_solution": "# nothing\n", "entry_point": "f", "test": "def check(c):\n    assert c() == 1\n"}"##,
        r#"{"task_id": "t/1", "prompt": "def g(x):\n    return ", "suffix": "\n", "canonical_solution": "x + 1", "entry_point": "g", "test": "def check(c):\n    assert c(1) == 2\n"}"#,
    ];
    std::fs::write(tasks.path(), lines.join("\n")).unwrap();
    let model = fixture("qwen2");
    let out = infill(&[
        "eval",
        "--tasks-file",
        tasks.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--exec",
        "python3",
        "--max-tokens",
        "4",
        "--markdown",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| pass@1 |"), "{stdout}");
    let pass_row = stdout.lines().find(|l| l.starts_with("| pass@1")).unwrap();
    assert!(
        pass_row.trim_end().ends_with("| 50.0% |"),
        "the empty middle passes 1 of 2: {pass_row}"
    );

    std::fs::write(tasks.path(), format!("{}\n{{\"task_id\": 1}}\n", lines[0])).unwrap();
    let bad = infill(&[
        "eval",
        "--tasks-file",
        tasks.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2"));
}

/// `--exec` that cannot run the tests, a language infill does not know, and `--exec` on tasks
/// that are not Python are one-line errors, not a report without a pass@1 row.
#[test]
fn eval_refuses_what_it_cannot_run_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("tasks.jsonl");
    std::fs::write(
        &python,
        r#"{"task_id": "t/0", "prompt": "def g(x):\n    return ", "suffix": "\n", "canonical_solution": "x + 1", "entry_point": "g", "test": "def check(c):\n    assert c(1) == 2\n", "single_line": true}"#,
    )
    .unwrap();
    let rust = dir.path().join("humaneval-rust-lines.jsonl");
    std::fs::write(
        &rust,
        r#"{"task_id": "r/0", "prompt": "fn g(x: i32) -> i32 {\n", "suffix": "}\n", "canonical_solution": "    x + 1\n"}"#,
    )
    .unwrap();
    let model = fixture("qwen2");
    let eval = |file: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--tasks-file",
            file.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--max-tokens",
            "2",
        ];
        args.extend(extra);
        infill(&args)
    };
    for (file, extra, needle) in [
        (
            &python,
            &["--exec", "/nonexistent/python9"][..],
            "/nonexistent/python9 not found",
        ),
        (
            &python,
            &["--tasks-language", "klingon"][..],
            "unknown language \"klingon\"",
        ),
        (&rust, &["--exec", "python3"][..], "is rust"),
    ] {
        let out = eval(file, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // The Rust file's name says its language (and a task's unknown field is no error).
    let json = dir.path().join("report.json");
    let out = eval(&rust, &["--json", json.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["tasks"][0]["language"], "rust");
    assert!(eval(&python, &[]).status.success());
}
