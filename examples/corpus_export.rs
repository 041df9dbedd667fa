//! The corpus of `infill train` as bundles, for a machine that has neither the repositories nor
//! a Rust toolchain (a GPU machine training with the scale/ package): the bundles and this binary
//! travel, and there it writes the dataset `infill train --export` would, an epoch at a time,
//! while `python -m infill_scale.train --follow` trains on each epoch once it is written.
//!
//! ```text
//! corpus_export bundle OUT_DIR [--held-out 0.05] [--permissive-only] [--package-cap-mb MB] REPO...
//! corpus_export dataset BUNDLE_DIR MODEL_DIR OUT [--epochs 1] [--shards N] [--fim-rate 0.9]
//!            [--spm-rate 0.5] [--seq-len 512] [--seed 0]
//! ```
//!
//! `bundle` runs `infill train`'s corpus walk, filters and held-out split and writes the documents
//! to train on (`train.bundle`) and the held-out ones (`held.bundle`); `dataset` writes the
//! dataset directory of `infill::train::dataset` from them, for MODEL_DIR's tokenizer (run again,
//! it finishes a dataset cut short).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use infill::train::corpus::SourceFile;
use infill::train::dataset::{self, ExportOptions};
use infill::train::export;
use infill::train::fim::FimSettings;
use infill::train::{CorpusChoice, Survey};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes OUT_DIR/train.bundle and OUT_DIR/held.bundle from the repositories.
    Bundle {
        out_dir: PathBuf,
        #[arg(required = true)]
        repos: Vec<PathBuf>,
        /// As `infill train --held-out`.
        #[arg(long, default_value_t = 0.05)]
        held_out: f64,
        /// As `infill train --permissive-only`.
        #[arg(long)]
        permissive_only: bool,
        /// As `infill train --package-cap-mb`.
        #[arg(long)]
        package_cap_mb: Option<f64>,
    },
    /// Writes the dataset of BUNDLE_DIR's train.bundle and held.bundle for MODEL_DIR's tokenizer.
    Dataset {
        bundle_dir: PathBuf,
        /// The model folder whose tokenizer.json (and config.json's vocab_size) to use.
        model_dir: PathBuf,
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        epochs: u64,
        /// Shards per epoch (default: one per 32 MiB of text).
        #[arg(long)]
        shards: Option<usize>,
        #[arg(long, default_value_t = 0.9)]
        fim_rate: f64,
        #[arg(long, default_value_t = 0.5)]
        spm_rate: f64,
        #[arg(long, default_value_t = 512)]
        seq_len: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bundle {
            out_dir,
            repos,
            held_out,
            permissive_only,
            package_cap_mb,
        } => {
            let choice = CorpusChoice::from_flags(permissive_only, package_cap_mb);
            bundle(&out_dir, &repos, &choice, held_out)
        }
        Command::Dataset {
            bundle_dir,
            model_dir,
            out,
            epochs,
            shards,
            fim_rate,
            spm_rate,
            seq_len,
            seed,
        } => {
            let opts = ExportOptions {
                repos: vec![bundle_dir.clone()],
                out,
                model: Some(model_dir.display().to_string()),
                corpus: CorpusChoice::default(),
                held_out: 0.0,
                seq_len: Some(seq_len),
                fim: FimSettings { fim_rate, spm_rate },
                seed,
                epochs,
                shards,
                overwrite: false,
                explain: false,
            };
            dataset(&bundle_dir, &opts)
        }
    }
}

fn bundle(
    out: &Path,
    repos: &[PathBuf],
    choice: &CorpusChoice,
    held_out: f64,
) -> anyhow::Result<()> {
    let survey = Survey::new(repos, choice, held_out)?;
    eprint!("{}", survey.summary());
    std::fs::create_dir_all(out)?;
    for (name, idx) in [
        ("train.bundle", &survey.split.train),
        ("held.bundle", &survey.split.held),
    ] {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out.join(name))?);
        let docs = idx.iter().filter_map(|&i| survey.corpus.files.get(i));
        export::write_bundle(&mut w, docs.map(|f| (f.language.as_str(), f.text.as_str())))?;
        w.flush()?;
        eprintln!("{}: {} documents", out.join(name).display(), idx.len());
    }
    Ok(())
}

fn dataset(bundles: &Path, opts: &ExportOptions) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<Vec<SourceFile>> {
        let path = bundles.join(name);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read the bundle", path.display()))?;
        let docs = export::read_bundle(&bytes).with_context(|| format!("{}", path.display()))?;
        Ok(docs
            .into_iter()
            .enumerate()
            .map(|(i, (language, text))| SourceFile {
                path: format!("{name}#{i}"),
                language,
                text,
            })
            .collect())
    };
    let (train, held) = (read("train.bundle")?, read("held.bundle")?);
    let train: Vec<&SourceFile> = train.iter().collect();
    let held: Vec<&SourceFile> = held.iter().collect();
    let done = dataset::write(opts, &train, &held, 0, &mut |line: &str| {
        eprintln!("{line}")
    })?;
    eprintln!(
        "{}: {} epoch(s), {} tokens",
        opts.out.display(),
        done.manifest.settings.epochs,
        done.manifest.train_tokens()
    );
    Ok(())
}
