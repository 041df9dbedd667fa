//! Repository memory through the whole pipeline: a line the repository already holds is proposed
//! from the index, and `infill eval --memory index` compares with the same model without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

use infill::complete::{self, Settings};
use infill::memory::{self, Memory, Weights};
use infill::model::generate::Flow;
use infill::model::{LoadOptions, Model, ModelSource};
use infill::text::Cursor;
use infill::worker::{Job, MemoryRequest, Preview, Reply, Request, Worker, WorkerOptions};

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

/// The repository's files as if under `/repo`.
fn named_repository() -> Vec<(PathBuf, String)> {
    repository()
        .into_iter()
        .enumerate()
        .map(|(i, text)| (PathBuf::from(format!("/repo/handlers_{i}.py")), text))
        .collect()
}

/// Paths and texts as the files memory takes.
fn as_files(named: &[(PathBuf, String)]) -> Vec<memory::File<'_>> {
    named
        .iter()
        .map(|(path, text)| memory::File { path, text })
        .collect()
}

#[test]
fn a_line_the_repository_holds_is_proposed_from_the_index() {
    let mut model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default()).unwrap();
    let named = named_repository();
    let files = as_files(&named);
    let memory = Memory::new(
        memory::documents(&model.tokenizer, &files),
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
    let dir = repository_on_disk();
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

/// A repository of handler files on disk.
fn repository_on_disk() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in repository().iter().enumerate() {
        std::fs::write(dir.path().join(format!("handlers_{i}.py")), text).unwrap();
    }
    dir
}

fn files_of(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn reopening_a_repository_reads_the_stored_index_and_tokenizes_only_what_changed() {
    let mut model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default()).unwrap();
    let repo = repository_on_disk();
    let cache = tempfile::tempdir().unwrap();
    let store = memory::Store::new(cache.path(), &[repo.path().to_path_buf()]);
    let open = |model: &mut Model, previous: Option<&Memory>| {
        let named = files_of(repo.path());
        let files = as_files(&named);
        memory::open(model, &files, Some(&store), previous, 512).unwrap()
    };
    let first = open(&mut model, None);
    assert_eq!((first.reused, first.tokenized, first.fitted), (0, 6, true));
    assert!(store.dir().join("index.bin").exists());
    // Reopened with one file changed: the stored index and weights serve, that file alone is
    // tokenized, and the answers are those of a fresh build.
    let changed = repo.path().join("handlers_2.py");
    std::fs::write(&changed, "def other():\n    return unusual_name(1)\n").unwrap();
    let again = open(&mut model, None);
    assert_eq!((again.reused, again.tokenized, again.fitted), (5, 1, false));
    assert!(again.unsaved);
    assert_eq!(again.memory.weights(), first.memory.weights());
    let fresh = {
        let named = files_of(repo.path());
        let files = as_files(&named);
        memory::documents(&model.tokenizer, &files)
    };
    let probe = model.tokenizer.encode("    return unusual_").unwrap();
    assert_eq!(
        again.memory.documents().longest_match(&probe),
        fresh.longest_match(&probe)
    );
    assert!(again.memory.documents().longest_match(&probe).0 >= probe.len() - 1);
    // A refresh from the memory in hand: nothing changed, nothing tokenized.
    let refreshed = open(&mut model, Some(&again.memory));
    assert_eq!((refreshed.reused, refreshed.tokenized), (6, 0));
    // A damaged store is rebuilt, never trusted.
    std::fs::write(store.dir().join("index.bin"), b"infill-memory\n\x01").unwrap();
    let rebuilt = open(&mut model, None);
    assert_eq!(rebuilt.tokenized, 6);
}

#[test]
fn the_worker_builds_memory_and_says_where_a_proposal_was_found() {
    let repo = repository_on_disk();
    let cache = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = Worker::spawn(
        Box::new(|| {
            Model::open(&ModelSource::Embedded, false, &LoadOptions::default()).map_err(Into::into)
        }),
        WorkerOptions::default(),
        move |r| {
            let _ = tx.send(r);
        },
    )
    .unwrap();
    let next = || rx.recv_timeout(Duration::from_secs(120)).expect("a reply");
    assert!(matches!(next(), Reply::Ready { .. }));
    worker.submit(Job::Memory(MemoryRequest {
        id: 1,
        roots: vec![repo.path().to_path_buf()],
        cache: Some(cache.path().to_path_buf()),
        previous: None,
        walk: true,
        texts: Vec::new(),
        cancel: Arc::new(AtomicBool::new(false)),
    }));
    let memory = match next() {
        Reply::Memory {
            id, memory, files, ..
        } => {
            assert_eq!((id, files), (1, 6));
            memory
        }
        other => panic!("unexpected {other:?}"),
    };
    // Completing in a new file of the repository: the call comes from the others, and the
    // proposal says which file and line.
    let editing = repo.path().join("handlers_new.py");
    let prefix = "def handler_9(request):\n    data = request.json()\n    return frobnicate_";
    worker.submit(Job::Complete(Request {
        id: 2,
        prefix: prefix.into(),
        suffix: "\n".into(),
        language: infill::syntax::Registry::builtin()
            .unwrap()
            .by_name("python")
            .ok(),
        settings: Settings {
            prior: Some(Arc::new(memory.without(&editing))),
            ..Settings::default()
        },
        preview: Preview::Trimmed,
        cancel: Arc::new(AtomicBool::new(false)),
    }));
    let proposal = loop {
        match next() {
            Reply::Done { proposal, .. } => break proposal,
            Reply::Partial { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(proposal.text, "widget(data, retries=7, backoff=0.25)");
    assert!(proposal.from_memory >= 0.5, "{}", proposal.from_memory);
    let source = proposal.source.expect("where it was found");
    assert!(
        source.path.starts_with(repo.path()) && source.path.to_string_lossy().contains("handlers_"),
        "{source}"
    );
    assert_eq!(source.line, 3, "{source}");
}

/// Families whose decoder gives only the last position's logits (StarCoder2, GPT-BigCode) are
/// scored one token at a time for the fit, so memory serves every model infill loads.
#[test]
fn weights_are_fitted_for_every_family() {
    let named = named_repository();
    let files = as_files(&named);
    for family in crate::FAMILIES {
        let mut model = crate::open(&crate::fixture(family));
        let (memory, fit) = memory::build(&mut model, &files, None, 256)
            .unwrap_or_else(|e| panic!("{family}: {e:#}"));
        assert!(fit.samples > 10, "{family}: {fit:?}");
        assert!(
            memory
                .weights()
                .by_length()
                .iter()
                .all(|w| (0.0..=1.0).contains(w)),
            "{family}: {:?}",
            memory.weights()
        );
        // The fixtures' weights are random: the index knows far better, and the fit says so.
        assert!(
            memory.weights().by_length().iter().any(|&w| w > 0.5),
            "{family}: {:?}",
            memory.weights()
        );
    }
}

/// A repository-level prompt: the repository's name, snippets of other files as files, then the
/// completed file's path, before the FIM prompt; the document's own tokens stay where the
/// pipeline finds them, in either order.
#[test]
fn a_repository_prompt_puts_other_files_first() {
    let mut model = Model::open(&ModelSource::Embedded, false, &LoadOptions::default()).unwrap();
    let named = named_repository();
    let files = as_files(&named);
    let memory: Arc<dyn infill::model::generate::Prior> = Arc::new(Memory::new(
        memory::documents(&model.tokenizer, &files),
        Weights::constant(0.0),
    ));
    let doc =
        "import json\n\n\ndef handler_9(request):\n    data = request.json()\n    return frob";
    let cursor = Cursor::from_byte(doc, doc.len()).unwrap();
    for order in [infill::model::FimOrder::Psm, infill::model::FimOrder::Spm] {
        let settings = Settings {
            repository: Some(complete::RepositoryPrompt {
                source: Arc::clone(&memory),
                name: "shop".into(),
                path: "api/new.py".into(),
                root: PathBuf::from("/repo"),
            }),
            order: Some(order),
            limits: infill::model::generate::Limits {
                max_tokens: 4,
                ..Default::default()
            },
            ..Settings::default()
        };
        let c = complete::complete(&mut model, doc, cursor, None, &settings, None, |_, _| {
            Flow::Continue
        })
        .unwrap();
        let fim = model.tokenizer.fim();
        let ids = &c.prompt.ids;
        let lead = fim.lead.len();
        assert!(c.prompt.repository_tokens > 0, "{order:?}");
        assert_eq!(ids[lead], fim.repo_name.unwrap());
        let preamble = &ids[lead..lead + c.prompt.repository_tokens];
        let seps: Vec<usize> = (0..preamble.len())
            .filter(|&i| Some(preamble[i]) == fim.file_sep)
            .collect();
        assert!(seps.len() >= 2, "a snippet, then the file: {seps:?}");
        let text = |range: &[u32]| model.tokenizer.decode(range);
        assert_eq!(text(&preamble[1..seps[0]]), "shop\n");
        let snippet = text(&preamble[seps[0] + 1..seps[1]]);
        assert!(
            snippet.starts_with("handlers_") && snippet.contains("frobnicate_widget(data"),
            "{snippet:?}"
        );
        assert_eq!(text(&preamble[*seps.last().unwrap() + 1..]), "api/new.py\n");
        // The prior still sees exactly the document before the cursor (less the healed token).
        let before = text(c.prompt.prefix_ids(&model.tokenizer));
        assert_eq!(format!("{before}{}", c.prompt.healed), doc, "{order:?}");
    }
}

/// `eval --memory` indexes the training split only: a held-out file's lines, found nowhere else,
/// are never proposed from the index (if they were indexed, the long matches would give them
/// whole).
#[test]
fn a_held_out_files_text_never_reaches_its_own_tasks() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..12u64 {
        let n = |k: u64| (i * 7919 + k * 104_729) % 100_000;
        let text = format!(
            "def handler_{i}(request):\n    value = request.get_{}(timeout={}, retries={})\n    return encode_{}(value, level={})\n",
            n(1),
            n(2),
            n(3),
            n(4),
            n(5)
        );
        std::fs::write(dir.path().join(format!("h{i}.py")), text).unwrap();
    }
    let out = crate::infill_cmd()
        .args(["eval", "--repo"])
        .arg(dir.path())
        .args([
            "--memory",
            "both",
            "--tasks",
            "12",
            "--max-tokens",
            "24",
            "--held-out",
            "0.3",
            "--score-kb",
            "0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("model - baseline, trimmed exact match"))
        .unwrap();
    let diff: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(diff <= 0.1, "{line}");
}
