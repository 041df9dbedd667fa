//! Repository memory through the whole pipeline: a line the repository already holds is proposed
//! from the index, and `infill eval --memory index` compares with the same model without it.

use std::sync::Arc;

use infill::complete::{self, Settings};
use infill::memory::{self, Memory, Weights};
use infill::model::generate::Flow;
use infill::model::{LoadOptions, Model, ModelSource};
use infill::text::Cursor;

/// Files that all end in the same unusual call, as a project's own helpers do.
fn repository() -> Vec<String> {
    (0..6)
        .map(|i| {
            format!(
                "def handler_{i}(request):\n    data = request.json()\n    return frobnicate_widget(data, retries=7, backoff=0.25)\n"
            )
        })
        .collect()
}

#[test]
fn a_line_the_repository_holds_is_proposed_from_the_index() {
    let mut model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default()).unwrap();
    let files = repository();
    let texts: Vec<&str> = files.iter().map(String::as_str).collect();
    let memory = Memory::new(
        memory::index_files(&model.tokenizer, &texts),
        Weights::constant(0.9),
    );
    let doc = "def handler_9(request):\n    data = request.json()\n    return frobnicate_";
    let cursor = Cursor::from_byte(doc, doc.len()).unwrap();
    let language = infill::syntax::Registry::builtin()
        .unwrap()
        .by_name("python")
        .ok();
    let mut run = |prior: Option<Arc<Memory>>| {
        let settings = Settings {
            prior: prior.map(|m| m as Arc<dyn infill::model::generate::Prior>),
            ..Settings::default()
        };
        let c = complete::complete(
            &mut model,
            doc,
            cursor,
            language,
            &settings,
            None,
            |_, _| Flow::Continue,
        )
        .unwrap();
        let shares: Vec<f32> = c.generation.tokens.iter().map(|t| t.from_prior).collect();
        (c.text, shares)
    };
    let (without, no_shares) = run(None);
    let (with, shares) = run(Some(Arc::new(memory)));
    assert_eq!(
        with, "widget(data, retries=7, backoff=0.25)",
        "without: {without:?}"
    );
    assert_ne!(
        without, with,
        "the built-in model alone does not know this call"
    );
    // Each token records how much of it the memory gave: most of it here, nothing without.
    assert!(no_shares.iter().all(|&s| s == 0.0));
    let mean = shares.iter().sum::<f32>() / shares.len() as f32;
    assert!(
        mean > 0.5 && shares.iter().all(|s| (0.0..=1.0).contains(s)),
        "{shares:?}"
    );
}

#[test]
fn eval_with_memory_reports_the_index_the_weights_and_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in repository().iter().enumerate() {
        std::fs::write(dir.path().join(format!("handlers_{i}.py")), text).unwrap();
    }
    let out = crate::infill_cmd()
        .args(["eval", "--repo"])
        .arg(dir.path())
        .args([
            "--memory",
            "index",
            "--tasks",
            "6",
            "--max-tokens",
            "16",
            "--held-out",
            "0.3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("memory: ") && stderr.contains("weights by match length"),
        "{stderr}"
    );
    assert!(stdout.contains("baseline trimmed"), "{stdout}");
}
