//! `infill train` and `infill tokenizer train`.

use std::io::IsTerminal;

use crate::cli::{TokenizerTrainArgs, TrainArgs};
use crate::train::trainer::TrainSettings;
use crate::train::{self, Start, TrainOptions};
use crate::tui::dashboard::Live;

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal() && !args.plain;
    if let Some(dir) = &args.watch {
        return crate::tui::dashboard::watch(dir, !terminal);
    }
    if !(0.0..1.0).contains(&args.held_out) {
        anyhow::bail!("--held-out must be in [0, 1) (got {})", args.held_out);
    }
    if args
        .package_cap_mb
        .is_some_and(|mb| mb.is_nan() || mb <= 0.0)
    {
        anyhow::bail!("--package-cap-mb must be a positive number of megabytes");
    }
    if let Some(dir) = &args.export {
        return export(args, dir);
    }
    let Some(out) = args.out.clone().filter(|_| !args.dry_run) else {
        let survey = train::Survey::new(&args.repo, &corpus_options(args), args.held_out)?;
        match args.explain {
            true => crate::out!("{}", survey.explain())?,
            false => crate::out!("{}", survey.summary())?,
        }
        return Ok(());
    };
    train::tune_process();
    let start = if args.resume {
        Start::Resume {
            steps: args.steps,
            batch_size: args.batch_size,
            seq_len: args.seq_len,
            lr: args.lr,
            fim_rate: args.fim_rate,
            spm_rate: args.spm_rate,
        }
    } else if args.from_scratch {
        Start::FromScratch {
            preset: args.preset,
            tokenizer: args.tokenizer.clone(),
        }
    } else {
        Start::FineTune(args.init.clone())
    };
    if args.minutes.is_some_and(|m| m.is_nan() || m <= 0.0) || args.steps == Some(0) {
        anyhow::bail!("--minutes and --steps must be positive");
    }
    if let Some(lr) = args
        .lr
        .filter(|lr| !(lr.is_finite() && *lr > 0.0 && *lr < 1.0))
    {
        anyhow::bail!(
            "--lr must be above 0 and below 1 (got {lr}); 1e-3 trains from scratch, 3e-4 fine-tunes"
        );
    }
    if !(args.checkpoint_minutes.is_finite() && args.checkpoint_minutes > 0.0) {
        anyhow::bail!(
            "--checkpoint-minutes must be a positive number (got {})",
            args.checkpoint_minutes
        );
    }
    if args.eval_every == Some(0) || args.checkpoint_every == Some(0) {
        anyhow::bail!("--eval-every and --checkpoint-every must be at least 1");
    }
    if args.seq_len.is_some_and(|n| n < 8)
        || args.batch_size == Some(0)
        || args.grad_accum == Some(0)
    {
        anyhow::bail!("--seq-len must be at least 8, --batch-size and --grad-accum at least 1");
    }
    let fine_tune = matches!(start, Start::FineTune(_));
    for (name, rate) in [
        ("--fim-rate", args.fim_rate.unwrap_or(0.5)),
        ("--spm-rate", args.spm_rate.unwrap_or(0.5)),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            anyhow::bail!("{name} must be between 0 and 1 (got {rate})");
        }
    }
    let defaults = TrainSettings::new_run(fine_tune);
    let lr = args.lr.unwrap_or(defaults.max_lr);
    let settings = TrainSettings {
        seq_len: args.seq_len.unwrap_or(defaults.seq_len),
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        grad_accum: args.grad_accum.unwrap_or(defaults.grad_accum),
        // With --minutes this is only an upper bound until the first steps are timed.
        steps: args.steps.unwrap_or(if args.minutes.is_some() {
            train::UNBOUNDED_STEPS
        } else {
            defaults.steps
        }),
        max_lr: lr,
        min_lr: lr / 10.0,
        eval_every: args.eval_every.unwrap_or(defaults.eval_every),
        checkpoint_every: args.checkpoint_every.unwrap_or(defaults.checkpoint_every),
        seed: args.seed,
        fim_rate: args.fim_rate.unwrap_or(defaults.fim_rate),
        spm_rate: args.spm_rate.unwrap_or(defaults.spm_rate),
        ..defaults
    };
    let opts = TrainOptions {
        repos: args.repo.clone(),
        out: out.clone(),
        start,
        settings,
        minutes: args.minutes,
        held_out: args.held_out,
        corpus: corpus_options(args),
        explain: args.explain,
        overwrite: args.overwrite,
        checkpoint_interval: std::time::Duration::from_secs_f64(args.checkpoint_minutes * 60.0),
        device: args.device.open()?,
    };
    ctrlc::set_handler(|| train::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed))
        .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    let report = train::run(&opts, &mut progress(terminal, &out))?;
    crate::outln!(
        "trained {} steps on {} files ({} tokens, {:.0} s); held-out loss {:.3} -> {:.3}, bits/byte {:.3} -> {:.3}",
        report.steps,
        report.files_trained,
        report.tokens_seen,
        report.wall_seconds,
        report.held_out_before.loss,
        report.held_out_after.loss,
        report.held_out_before.bits_per_byte,
        report.held_out_after.bits_per_byte
    )?;
    let (before, after) = (&report.held_out_before, &report.held_out_after);
    if !after.by_language.is_empty() {
        let by_language: Vec<String> = after
            .by_language
            .iter()
            .map(|a| {
                let was = before.by_language.iter().find(|b| b.language == a.language);
                match was {
                    Some(b) => format!(
                        "{} {:.3} -> {:.3}",
                        a.language, b.bits_per_byte, a.bits_per_byte
                    ),
                    None => format!("{} {:.3}", a.language, a.bits_per_byte),
                }
            })
            .collect();
        crate::outln!("held-out bits/byte by language: {}", by_language.join(", "))?;
    }
    crate::outln!(
        "model written to {} (use it with --model {})",
        out.display(),
        out.display()
    )?;
    Ok(())
}

/// `infill train --export DIR`.
fn export(args: &TrainArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let defaults = TrainSettings::new_run(true);
    let fim = train::fim::FimSettings {
        fim_rate: args.fim_rate.unwrap_or(defaults.fim_rate),
        spm_rate: args.spm_rate.unwrap_or(defaults.spm_rate),
    };
    for (name, rate) in [("--fim-rate", fim.fim_rate), ("--spm-rate", fim.spm_rate)] {
        if !(0.0..=1.0).contains(&rate) {
            anyhow::bail!("{name} must be between 0 and 1 (got {rate})");
        }
    }
    if args.epochs == Some(0) || args.shards == Some(0) {
        anyhow::bail!("--epochs and --shards must be at least 1");
    }
    let opts = train::dataset::ExportOptions {
        repos: args.repo.clone(),
        out: dir.to_path_buf(),
        model: args.init.clone(),
        corpus: corpus_options(args),
        held_out: args.held_out,
        seq_len: args.seq_len,
        fim,
        seed: args.seed,
        epochs: args.epochs.unwrap_or(1),
        shards: args.shards,
        overwrite: args.overwrite,
        explain: args.explain,
    };
    let done = train::dataset::export(&opts, &mut |line: &str| eprintln!("{line}"))?;
    let m = &done.manifest;
    let kept = match done.kept {
        0 => String::new(),
        n => format!(" ({n} kept from an earlier run)"),
    };
    crate::outln!(
        "dataset written to {}: {} files ({:.1} MB) in {} epoch(s) of {} shard(s), {} tokens{kept}; \
         {} held-out files; windows of {} tokens for {}",
        dir.display(),
        m.corpus.files_trained,
        m.corpus.bytes_trained as f64 / 1e6,
        m.settings.epochs,
        m.settings.shards,
        m.train_tokens(),
        m.corpus.files_held_out,
        m.settings.seq_len,
        m.settings.model,
    )?;
    Ok(())
}

pub fn tokenizer(args: &TokenizerTrainArgs) -> anyhow::Result<()> {
    let options = train::corpus::Options {
        permissive_only: args.permissive_only,
    };
    let corpus = train::corpus::collect(&args.corpus, options)?;
    let json = train::tokenizer::train(
        corpus.files.iter().map(|f| f.text.as_str()),
        args.vocab_size,
    )?;
    crate::files::write_atomic(&args.out, json.as_bytes())?;
    crate::outln!(
        "tokenizer with {} entries trained on {} files, written to {}",
        args.vocab_size,
        corpus.files.len(),
        args.out.display()
    )?;
    Ok(())
}

/// Where the run's lines go as they are written: the dashboard on stderr's terminal (opened at the
/// run's first line, so what is said before it stays readable, and closed at its last), or the
/// lines themselves on stderr.
fn progress(terminal: bool, out: &std::path::Path) -> impl FnMut(&train::log::Line) {
    let title = out.display().to_string();
    let mut dashboard: Option<Live> = None;
    let mut plain = !terminal;
    move |line| {
        if plain {
            eprintln!("{}", line.to_json());
            return;
        }
        if dashboard.is_none() {
            match Live::start(&title, &train::INTERRUPTED) {
                Ok(live) => dashboard = Some(live),
                Err(e) => {
                    tracing::warn!("no dashboard ({e:#}); progress goes to stderr as JSON lines");
                    plain = true;
                    eprintln!("{}", line.to_json());
                    return;
                }
            }
        }
        if let Some(live) = &mut dashboard {
            live.send(line);
            if matches!(line, train::log::Line::End(_)) {
                let _ = live.finish();
                dashboard = None;
            }
        }
    }
}

fn corpus_options(args: &TrainArgs) -> train::CorpusChoice {
    train::CorpusChoice::from_flags(args.permissive_only, args.package_cap_mb)
}
