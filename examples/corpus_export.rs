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

use anyhow::{Context, bail};
use infill::model::Tokenizer;
use infill::train::export::{self, ShardSpec};
use infill::train::fim::FimSettings;
use infill::train::{CorpusChoice, Survey, corpus};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bundle") => bundle(args.get(1..).unwrap_or_default()),
        Some("pack") => pack(args.get(1..).unwrap_or_default()),
        _ => bail!(
            "usage: corpus_export bundle OUT_DIR [options] REPO...\n       \
             corpus_export pack BUNDLE MODEL_DIR OUT --epoch K [options]"
        ),
    }
}

/// Flags (`--name value` or `--name`) and positional arguments.
struct Args {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

impl Args {
    fn parse(args: &[String], switches: &[&str]) -> Self {
        let (mut flags, mut positional) = (Vec::new(), Vec::new());
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.strip_prefix("--") {
                Some(name) if switches.contains(&name) => flags.push((name.to_string(), None)),
                Some(name) => flags.push((name.to_string(), it.next().cloned())),
                None => positional.push(a.clone()),
            }
        }
        Self { flags, positional }
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.flags.iter().rev().find(|(n, _)| n == name) {
            None => Ok(default),
            Some((_, value)) => value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("--{name} needs a value of the right kind")),
        }
    }
}

fn bundle(args: &[String]) -> anyhow::Result<()> {
    let a = Args::parse(args, &["permissive-only"]);
    let Some((out, repos)) = a.positional.split_first() else {
        bail!("usage: corpus_export bundle OUT_DIR [options] REPO...");
    };
    let choice = CorpusChoice {
        filters: corpus::Options {
            permissive_only: a.has("permissive-only"),
        },
        package_cap_bytes: match a.get("package-cap-mb", 0.0f64)? {
            mb if mb > 0.0 => Some((mb * 1e6) as usize),
            _ => None,
        },
    };
    let repos: Vec<PathBuf> = repos.iter().map(PathBuf::from).collect();
    let survey = Survey::new(&repos, &choice, a.get("held-out", 0.05)?)?;
    eprint!("{}", survey.summary());
    let out = Path::new(out);
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

fn read_bundle(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the bundle", path.display()))?;
    export::read_bundle(&bytes).with_context(|| format!("{}", path.display()))
}

fn pack(args: &[String]) -> anyhow::Result<()> {
    let a = Args::parse(args, &[]);
    let [bundle, model, out] = a.positional.as_slice() else {
        bail!("usage: corpus_export pack BUNDLE MODEL_DIR OUT --epoch K [options]");
    };
    let model = Path::new(model);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json"))?)?;
    let vocab = config["vocab_size"]
        .as_u64()
        .context("config.json: no vocab_size")? as usize;
    let tokenizer = Tokenizer::from_bytes(&std::fs::read(model.join("tokenizer.json"))?, vocab)?;
    let docs = read_bundle(Path::new(bundle))?;
    let spec = ShardSpec {
        epoch: a.get("epoch", 0)?,
        shard: a.get("shard", 0)?,
        shards: a.get("shards", 1)?,
        seed: a.get("seed", 7)?,
        fim: FimSettings {
            fim_rate: a.get("fim-rate", 0.9)?,
            spm_rate: a.get("spm-rate", 0.8)?,
        },
        seq_len: a.get("seq-len", 512)?,
    };
    let stream = export::pack_shard(&tokenizer, &docs, spec)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    export::write_u16(&mut w, &stream)?;
    w.flush()?;
    eprintln!("{out}: {} tokens", stream.len());
    Ok(())
}
