//! `infill eval`: build or read tasks, run the model (and a baseline), print the report.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{EvalArgs, ModelArgs};
use crate::complete::Settings;
use crate::eval::{self, Exec, tasks};
use crate::model::generate::Limits;
use crate::train::{corpus, split};

/// A held-out file: path, language, text.
type HeldFile = (String, Option<String>, String);

/// The tasks, and the held-out files they came from (none for a task file).
fn build_tasks(args: &EvalArgs) -> anyhow::Result<(Vec<tasks::Task>, Vec<HeldFile>)> {
    let mut held_files = Vec::new();
    let mut all = match &args.tasks_file {
        Some(path) => {
            let text = crate::files::read_source(path)?;
            tasks::read_task_file(&text, Some(&args.tasks_language))
                .with_context(|| path.display().to_string())?
        }
        None => {
            let options = corpus::Options {
                permissive_only: args.permissive_only,
            };
            let corpus = corpus::collect(&args.repo, options)?;
            let paths: Vec<&str> = corpus.files.iter().map(|f| f.path.as_str()).collect();
            let split = split::split(&paths, args.held_out);
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
    Ok((all, held_files))
}

fn run_model(
    spec: &ModelArgs,
    tasks: &[tasks::Task],
    settings: &Settings,
    exec: Option<&Exec>,
    label: &str,
    held: &[HeldFile],
    score_bytes: usize,
) -> anyhow::Result<(Vec<eval::Outcome>, Option<Vec<eval::LanguageBits>>)> {
    let mut model = super::open_model(spec)?;
    let bits = if held.is_empty() || score_bytes == 0 {
        None
    } else if model.network.as_llama().is_none() {
        eprintln!("{label}: bits per byte needs infill's own qwen2/llama decoder; skipped");
        None
    } else {
        if std::io::stderr().is_terminal() {
            eprint!("\r{label}: scoring held-out files for bits per byte...");
        }
        Some(eval::bits_per_byte(&mut model, held, score_bytes)?)
    };
    let show = std::io::stderr().is_terminal();
    let started = Instant::now();
    eval::run(&mut model, tasks, settings, exec, |done, total| {
        if show {
            let per = started.elapsed().as_secs_f64() / done as f64;
            let eta = per * (total - done) as f64;
            eprint!(
                "\r{label}: {done}/{total} tasks, ETA {}m{:02}s   ",
                (eta / 60.0) as u64,
                (eta % 60.0) as u64
            );
        }
    })
    .inspect(|_| {
        if show {
            eprintln!();
        }
    })
    .map(|outcomes| (outcomes, bits))
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let (tasks, held) = build_tasks(args)?;
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
    let exec = args.exec.as_ref().map(|p| Exec {
        program: p.clone(),
        timeout: Duration::from_secs_f64(args.exec_timeout.max(0.1)),
    });
    ctrlc::set_handler(|| eval::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed))
        .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    let started = Instant::now();
    let (model, model_bits) = run_model(
        &args.model,
        &tasks,
        &settings,
        exec.as_ref(),
        "model",
        &held,
        score_bytes,
    )?;
    let baseline = match &args.baseline {
        Some(b) if !eval::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) => {
            let spec = ModelArgs {
                model: Some(b.clone()),
                ..args.model.clone()
            };
            Some(run_model(
                &spec,
                &tasks[..model.len()],
                &settings,
                exec.as_ref(),
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
    print!("{}", eval::render(&reports, args.markdown));
    let languages = eval::report_by_language(&tasks, &model, baseline.as_deref());
    println!("{}", eval::render_languages(&languages, args.markdown));
    if let Some(bits) = &model_bits {
        println!(
            "{}",
            eval::render_bits(bits, baseline_bits.as_deref(), args.markdown)
        );
    }
    println!(
        "{} tasks in {:.1} s",
        model.len(),
        started.elapsed().as_secs_f64()
    );
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
