//! The training data of `infill train` for another trainer (`examples/torch/train.py`: PyTorch, on
//! a GPU or on CPUs): the same corpus, split, FIM examples and tokens, computed by infill's own code
//! so that the two trainers learn the same task.
//!
//! ```text
//! corpus_export bundle OUT_DIR [--held-out 0.05] [--permissive-only] [--package-cap-mb MB] REPO...
//! corpus_export pack BUNDLE MODEL_DIR OUT --epoch K [--shard I --shards N] [--fim-rate 0.9]
//!            [--spm-rate 0.8] [--seq-len 512] [--seed 7]
//! ```
//!
//! `bundle` runs `infill train`'s corpus walk, filters and held-out split and writes the documents
//! to train on (`train.bundle`) and the held-out ones (`held.bundle`); `pack` writes one shard of
//! one epoch of a bundle as a u16 token stream. The formats are `infill::train::export`'s.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use infill::model::Tokenizer;
use infill::train::export::{self, ShardSpec};
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
    /// Writes one shard of one epoch of a bundle as a u16 token stream.
    Pack {
        bundle: PathBuf,
        /// The model folder whose tokenizer.json (and config.json's vocab_size) to use.
        model_dir: PathBuf,
        out: PathBuf,
        #[arg(long)]
        epoch: u64,
        #[arg(long, default_value_t = 0)]
        shard: usize,
        #[arg(long, default_value_t = 1)]
        shards: usize,
        #[arg(long, default_value_t = 0.9)]
        fim_rate: f64,
        #[arg(long, default_value_t = 0.8)]
        spm_rate: f64,
        #[arg(long, default_value_t = 512)]
        seq_len: usize,
        #[arg(long, default_value_t = 7)]
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
        Command::Pack {
            bundle,
            model_dir,
            out,
            epoch,
            shard,
            shards,
            fim_rate,
            spm_rate,
            seq_len,
            seed,
        } => {
            let spec = ShardSpec {
                epoch,
                shard,
                shards,
                seed,
                fim: FimSettings { fim_rate, spm_rate },
                seq_len,
            };
            pack(&bundle, &model_dir, &out, spec)
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

fn pack(bundle: &Path, model: &Path, out: &Path, spec: ShardSpec) -> anyhow::Result<()> {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json"))?)?;
    let vocab = config["vocab_size"]
        .as_u64()
        .context("config.json: no vocab_size")? as usize;
    let tokenizer = Tokenizer::from_bytes(&std::fs::read(model.join("tokenizer.json"))?, vocab)?;
    let bytes = std::fs::read(bundle)
        .with_context(|| format!("{}: cannot read the bundle", bundle.display()))?;
    let docs = export::read_bundle(&bytes).with_context(|| format!("{}", bundle.display()))?;
    let stream = export::pack_shard(&tokenizer, &docs, spec)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    export::write_u16(&mut w, &stream)?;
    w.flush()?;
    eprintln!("{}: {} tokens", out.display(), stream.len());
    Ok(())
}
