//! `infill eval`: build or read tasks, run the model (and a baseline), print the report.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use std::sync::Arc;

use crate::cli::{EvalArgs, MemoryMode, ModelArgs};
use crate::complete::{RepositoryPrompt, Settings};
use crate::eval::{self, Exec, tasks};
use crate::memory::{self, Memory};
use crate::model::generate::Limits;
use crate::model::generate::Prior;
use crate::train::{corpus, split};

/// A held-out file: path, language, text.
type HeldFile = (String, Option<String>, String);

/// The manifest of `--dataset`, if given.
fn dataset(args: &EvalArgs) -> anyhow::Result<Option<crate::train::dataset::Manifest>> {
    let Some(dir) = &args.dataset else {
        return Ok(None);
    };
    let manifest = crate::train::dataset::Manifest::read(dir)?.with_context(|| {
        format!(
            "{}: no manifest.json; --dataset takes a folder infill train --export wrote",
            dir.display()
        )
    })?;
    Ok(Some(manifest))
}

/// The repositories the tasks come from: `--repo`'s, or those `--dataset` was made from.
fn repositories(
    args: &EvalArgs,
    dataset: Option<&crate::train::dataset::Manifest>,
) -> Vec<std::path::PathBuf> {
    match dataset {
        Some(m) => m
            .corpus
            .repos
            .iter()
            .map(std::path::PathBuf::from)
            .collect(),
        None => args.repo.clone(),
    }
}

/// A training file: path and text.
type TrainFile = (String, String);

/// The tasks, the held-out files they came from and the files to train on (none for a task
/// file).
fn build_tasks(
    args: &EvalArgs,
) -> anyhow::Result<(Vec<tasks::Task>, Vec<HeldFile>, Vec<TrainFile>)> {
    let mut held_files = Vec::new();
    let mut train_files = Vec::new();
    let mut all = match &args.tasks_file {
        Some(path) => {
            let text = crate::files::read_source(path)?;
            let registry =
                crate::syntax::Registry::builtin().map_err(|e| anyhow::anyhow!("{e}"))?;
            let known: Vec<&str> = registry
                .languages()
                .iter()
                .map(|l| l.name.as_str())
                .collect();
            let file_name = path.file_name().and_then(|n| n.to_str());
            let language = tasks::TaskLanguage {
                flag: args.tasks_language.as_deref(),
                file_name,
            };
            tasks::read_task_file(&text, &language, &known)
                .with_context(|| path.display().to_string())?
        }
        None => {
            let dataset = dataset(args)?;
            let (repos, held_out, permissive_only) = match &dataset {
                Some(m) => (
                    repositories(args, Some(m)),
                    m.settings.held_out,
                    m.settings.permissive_only,
                ),
                None => (args.repo.clone(), args.held_out, args.permissive_only),
            };
            let options = corpus::Options { permissive_only };
            let corpus = corpus::collect(&repos, options)?;
            let paths: Vec<&str> = corpus.files.iter().map(|f| f.path.as_str()).collect();
            let split = split::split(&paths, held_out);
            if let Some(m) = &dataset {
                let now: std::collections::BTreeSet<&str> = split
                    .held
                    .iter()
                    .filter_map(|&i| paths.get(i).copied())
                    .collect();
                let then: std::collections::BTreeSet<&str> =
                    m.held.docs.iter().map(|d| d.path.as_str()).collect();
                if now != then {
                    eprintln!(
                        "note: the held-out files differ from the dataset's ({} now, {} then, {} in both): the repositories changed since the export",
                        now.len(),
                        then.len(),
                        now.intersection(&then).count()
                    );
                }
            }
            if let Some(&first) = split.shadowed.first() {
                eprintln!(
                    "note: {} held-out files are not evaluated: another version of each is a training file (e.g. {})",
                    split.shadowed.len(),
                    paths[first]
                );
            }
            held_files = split
                .held
                .iter()
                .filter_map(|&i| corpus.files.get(i))
                .map(|f| (f.path.clone(), Some(f.language.clone()), f.text.clone()))
                .collect();
            train_files = split
                .train
                .iter()
                .filter_map(|&i| corpus.files.get(i))
                .map(|f| (f.path.clone(), f.text.clone()))
                .collect();
            tasks::build(&held_files, args.tasks, args.seed, args.spread)
        }
    };
    if let Some(filter) = &args.filter {
        all.retain(|t| t.id.contains(filter.as_str()));
    }
    if let Some(limit) = args.limit {
        all.truncate(limit);
    }
    if all.is_empty() {
        anyhow::bail!("no tasks to run (check --repo, --tasks-file, --filter and --limit)");
    }
    Ok((all, held_files, train_files))
}

/// Checks that `--exec` can run the tasks' tests: the program exists, and the tasks are Python
/// tasks with tests (HumanEval's `check(entry_point)`), the only kind infill knows how to run.
fn exec_for(program: &str, timeout: f64, tasks: &[tasks::Task]) -> anyhow::Result<Exec> {
    if !(timeout.is_finite() && timeout > 0.0) {
        anyhow::bail!("--exec-timeout must be a positive number of seconds (got {timeout})");
    }
    if find_program(program).is_none() {
        anyhow::bail!(
            "--exec: {program} not found; give an interpreter on PATH (e.g. python3) or its path"
        );
    }
    if let Some(t) = tasks
        .iter()
        .find(|t| t.language.as_deref() != Some("python"))
    {
        anyhow::bail!(
            "--exec runs Python tests (HumanEval's check(entry_point)), but task {} is {}; leave --exec out",
            t.id,
            t.language.as_deref().unwrap_or("of no known language")
        );
    }
    if !tasks
        .iter()
        .any(|t| t.test.is_some() && t.entry_point.is_some())
    {
        anyhow::bail!(
            "--exec: no task has tests to run (the task file's test and entry_point fields)"
        );
    }
    Ok(Exec {
        program: program.to_string(),
        timeout: Duration::from_secs_f64(timeout),
    })
}

/// `program` as a path (when it has a separator) or found on PATH.
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(program);
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// How one model runs the tasks.
struct Run<'a> {
    settings: &'a Settings,
    exec: Option<&'a Exec>,
    typed: bool,
    exact_cache: bool,
}

fn run_model(
    spec: &ModelArgs,
    tasks: &[tasks::Task],
    run: &Run,
    label: &str,
    held: &[HeldFile],
    score_bytes: usize,
) -> anyhow::Result<(Vec<eval::Outcome>, Option<Vec<eval::LanguageBits>>)> {
    let mut model = super::open_model(spec)?;
    model.network.set_shift_reuse(!run.exact_cache);
    let bits = if held.is_empty() || score_bytes == 0 {
        None
    } else if model.network.as_llama().is_none() {
        eprintln!("{label}: bits per byte needs infill's own qwen2/llama decoder; skipped");
        None
    } else {
        let bar = crate::progress::bar(label, None);
        bar.set_message("scoring held-out files for bits per byte");
        let bits = eval::bits_per_byte(&mut model, held, score_bytes);
        bar.finish_and_clear();
        Some(bits?)
    };
    let bar = crate::progress::bar(label, Some(tasks.len() as u64));
    bar.set_message("tasks");
    let outcomes = eval::run(
        &mut model,
        tasks,
        run.settings,
        run.exec,
        run.typed,
        |done, _| {
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    outcomes.map(|outcomes| (outcomes, bits))
}

/// Tokens scored to fit the memory's weights (see [`memory::build`]).
const FIT_TOKENS: usize = 20_000;

/// The repository's memory for `--memory index`: the training split's files, never a held-out
/// one.
fn repository_memory(spec: &ModelArgs, train: &[TrainFile]) -> anyhow::Result<Memory> {
    let mut model = super::open_model(spec)?;
    let bar = crate::progress::bar("memory", None);
    bar.set_message(format!(
        "indexing {} files and fitting weights",
        train.len()
    ));
    let started = Instant::now();
    let files: Vec<memory::File> = train
        .iter()
        .map(|(path, text)| memory::File {
            path: Path::new(path),
            text,
        })
        .collect();
    // A model infill fine-tuned says which files it held out: those of them here are fitted on,
    // as the model never learnt them.
    let unseen: Vec<memory::File> = trained_held_out(spec)
        .map(|share| {
            files
                .iter()
                .filter(|f| split::is_held_out(&f.path.to_string_lossy(), share))
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let tuning = (unseen.len() >= 2).then_some(unseen.as_slice());
    let (memory, fit) =
        memory::build(&mut model, &files, tuning, FIT_TOKENS).context("--memory index")?;
    bar.finish_and_clear();
    eprintln!(
        "memory: {} files, {} tokens, in {:.1} s; weights by match length (1, 2-3, 4-7, ..., 128+) fitted on {} tokens of {} of them{} (indexing the others): {:.3?}",
        train.len(),
        memory.documents().len(),
        started.elapsed().as_secs_f64(),
        fit.samples,
        fit.files,
        if tuning.is_some() {
            ", which the model held out in training"
        } else {
            ""
        },
        memory.weights().by_length()
    );
    Ok(memory)
}

/// The share of files a model infill trained held out (its `training.json`), if it says.
fn trained_held_out(spec: &ModelArgs) -> Option<f64> {
    let dir = Path::new(spec.model.as_deref()?);
    let text = std::fs::read_to_string(dir.join("training.json")).ok()?;
    let report: serde_json::Value = serde_json::from_str(&text).ok()?;
    report["held_out_share"].as_f64()
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let (tasks, held, train) = build_tasks(args)?;
    let score_bytes = args.score_kb.saturating_mul(1024);
    if !(0.0..1.0).contains(&args.min_confidence) {
        anyhow::bail!(
            "--min-confidence must be in [0, 1) (got {})",
            args.min_confidence
        );
    }
    if args.max_tokens == 0 {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    let settings = Settings {
        limits: Limits {
            max_tokens: args.max_tokens,
            text_before_end: !args.allow_empty,
            ..Limits::default()
        },
        min_confidence: args.min_confidence,
        order: args.fim_order,
        heal: !args.no_heal,
        ..Settings::default()
    };
    let exec = match &args.exec {
        Some(program) => Some(exec_for(program, args.exec_timeout, &tasks)?),
        None => None,
    };
    ctrlc::set_handler(|| eval::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed))
        .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    let started = Instant::now();
    let with_memory = match args.memory {
        MemoryMode::Off => None,
        mode => {
            let memory: Arc<Memory> = Arc::new(repository_memory(&args.model, &train)?);
            let repos = repositories(args, dataset(args)?.as_ref());
            let name = repos
                .first()
                .and_then(|r| std::path::absolute(r).ok())
                .and_then(|r| r.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let mixed = matches!(mode, MemoryMode::Index | MemoryMode::Both);
            let prompted = matches!(mode, MemoryMode::Prompt | MemoryMode::Both);
            Some(Settings {
                prior: mixed.then(|| Arc::clone(&memory) as Arc<dyn Prior>),
                // Each task's path is filled in as it runs.
                repository: prompted.then(|| RepositoryPrompt {
                    source: memory as Arc<dyn Prior>,
                    name,
                    path: String::new(),
                    root: Default::default(),
                }),
                ..settings.clone()
            })
        }
    };
    let run = Run {
        settings: with_memory.as_ref().unwrap_or(&settings),
        exec: exec.as_ref(),
        typed: args.typed,
        exact_cache: args.exact_cache,
    };
    let (model, model_bits) = run_model(&args.model, &tasks, &run, "model", &held, score_bytes)?;
    let interrupted = || eval::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
    let baseline_spec = match &args.baseline {
        Some(b) => Some(ModelArgs {
            model: Some(b.clone()),
            adapter: Vec::new(),
            ..args.model.clone()
        }),
        None if args.baseline_exact_cache || with_memory.is_some() => Some(args.model.clone()),
        None => None,
    };
    let baseline = match baseline_spec {
        Some(spec) if !interrupted() => {
            let run = Run {
                settings: &settings,
                exact_cache: args.exact_cache || args.baseline_exact_cache,
                ..run
            };
            Some(run_model(
                &spec,
                &tasks[..model.len()],
                &run,
                "baseline",
                &held,
                score_bytes,
            )?)
        }
        _ => None,
    };
    let (baseline, baseline_bits) = match baseline {
        Some((outcomes, bits)) => (Some(outcomes), bits),
        None => (None, None),
    };
    if model.len() < tasks.len() {
        eprintln!(
            "interrupted: the report covers {} of {} tasks",
            model.len(),
            tasks.len()
        );
    }
    let reports = eval::report(&tasks, &model, baseline.as_deref(), args.seed);
    crate::out!("{}", eval::render(&reports, args.markdown))?;
    let languages = eval::report_by_language(&tasks, &model, baseline.as_deref());
    crate::outln!("{}", eval::render_languages(&languages, args.markdown))?;
    if let Some(bits) = &model_bits {
        crate::outln!(
            "{}",
            eval::render_bits(bits, baseline_bits.as_deref(), args.markdown)
        )?;
    }
    crate::outln!(
        "{} tasks in {:.1} s",
        model.len(),
        started.elapsed().as_secs_f64()
    )?;
    if let Some(path) = &args.report {
        let title: Vec<String> = match &args.tasks_file {
            Some(file) => vec![file.display().to_string()],
            None => repositories(args, dataset(args)?.as_ref())
                .iter()
                .map(|r| r.display().to_string())
                .collect(),
        };
        let page = crate::report::eval_page(
            &title.join(", "),
            &tasks[..model.len()],
            &reports,
            &model,
            baseline.as_deref(),
            args.seed,
        );
        crate::files::write_atomic(path, page.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        eval::write_json(
            path,
            &tasks[..model.len()],
            &model,
            baseline.as_deref(),
            &reports,
            &languages,
            &serde_json::json!({ "model": model_bits, "baseline": baseline_bits }),
        )?;
    }
    Ok(())
}
