//! Training: against PyTorch for the first steps, loss going down, exact resume, FIM examples that
//! rebuild their document, and `infill train` on bad input.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use infill::model::Tokenizer;
use infill::model::config::ModelConfig;
use infill::rng::Rng;
use infill::train::fim::{self, FimSettings};
use infill::train::trainer::{Doc, TrainSettings, Trainer};

use crate::{fixture, succeeded};

/// Source files to train on in the command tests.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture_parts(
    name: &str,
) -> (
    infill::model::config::LlamaConfig,
    Tokenizer,
    HashMap<String, Tensor>,
) {
    let dir = fixture(name);
    let ModelConfig::Llama(config) =
        ModelConfig::parse(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    else {
        panic!("not llama-like")
    };
    let tokenizer = Tokenizer::from_bytes(
        &std::fs::read(dir.join("tokenizer.json")).unwrap(),
        config.vocab_size,
    )
    .unwrap();
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    (config, tokenizer, weights)
}

fn docs() -> Vec<Doc> {
    let texts = [
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n",
        "import os\nimport sys\n\nif __name__ == '__main__':\n    print(sys.argv)\n",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    ];
    texts
        .iter()
        .map(|t| Doc {
            text: t.repeat(3),
            language: Some("python".into()),
        })
        .collect()
}

/// The first five losses equal PyTorch's (tests/fixtures/train_reference.py) on the same model,
/// windows and AdamW settings: the cheapest test that catches a broken loss, mask or optimizer.
#[test]
fn training_matches_pytorch_for_the_first_steps() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::fixture("..").join("train_golden.json")).unwrap(),
    )
    .unwrap();
    let windows: Vec<Vec<u32>> = golden["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let (config, tokenizer, weights) = fixture_parts("qwen2");
    let lr = golden["lr"].as_f64().unwrap();
    let settings = TrainSettings {
        max_lr: lr,
        min_lr: lr,
        warmup: 0,
        steps: 1000,
        clip: 1.0,
        weight_decay: 0.1,
        seq_len: 24,
        ..TrainSettings::default()
    };
    let mut trainer = Trainer::new(
        &config,
        true,
        Some(weights),
        settings,
        &tokenizer,
        docs(),
        &docs()[..1],
        &Device::Cpu,
    )
    .unwrap();
    let want: Vec<f64> = golden["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let norms: Vec<f64> = golden["grad_norms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (i, (w, n)) in want.iter().zip(&norms).enumerate() {
        let entry = trainer
            .train_step_on(std::slice::from_ref(&windows))
            .unwrap();
        eprintln!(
            "step {i}: loss {:.6} (PyTorch {w:.6}), grad norm {:.5} (PyTorch {n:.5})",
            entry.loss, entry.grad_norm
        );
        assert!(
            (entry.loss - w).abs() < 2e-4,
            "step {i}: {} vs {w}",
            entry.loss
        );
        assert!(
            (entry.grad_norm - n).abs() < 1e-3 * n.max(1.0),
            "step {i}: grad norm {} vs {n}",
            entry.grad_norm
        );
    }
}

#[test]
fn loss_goes_down_from_scratch_on_a_tiny_corpus() {
    let json = infill::train::tokenizer::train(docs().iter().map(|d| d.text.clone()), 300).unwrap();
    let tokenizer = Tokenizer::from_bytes(json.as_bytes(), 300).unwrap();
    let config = infill::train::Preset::Tiny.config(tokenizer.vocab_size(), 128);
    let settings = TrainSettings {
        seq_len: 64,
        batch_size: 4,
        steps: 60,
        warmup: 5,
        max_lr: 3e-3,
        min_lr: 3e-4,
        ..TrainSettings::default()
    };
    let mut trainer = Trainer::new(
        &config,
        true,
        None,
        settings,
        &tokenizer,
        docs(),
        &docs()[..1],
        &Device::Cpu,
    )
    .unwrap();
    let before = trainer.evaluate().unwrap();
    let mut losses = Vec::new();
    for _ in 0..60 {
        losses.push(trainer.train_step(&tokenizer).unwrap().loss);
    }
    let after = trainer.evaluate().unwrap();
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(last < first * 0.7, "training loss {first:.3} -> {last:.3}");
    assert!(
        after.loss < before.loss,
        "held-out {:.3} -> {:.3}",
        before.loss,
        after.loss
    );
    assert!(after.bits_per_byte > 0.0 && after.bits_per_byte < before.bits_per_byte);
}

/// Stopping (as after Ctrl-C or kill -9 past a checkpoint) and resuming gives exactly the weights of
/// a run that never stopped, also past the first epoch; the resumed run packs (tokenizes the
/// corpus for) only the epoch it continues in, once.
#[test]
fn interrupted_and_resumed_training_equals_an_uninterrupted_run() {
    let (config, tokenizer, weights) = fixture_parts("llama");
    let settings = TrainSettings {
        seq_len: 32,
        batch_size: 2,
        steps: 400,
        warmup: 2,
        ..TrainSettings::default()
    };
    let make = || {
        Trainer::new(
            &config,
            false,
            Some(weights.clone()),
            settings.clone(),
            &tokenizer,
            docs(),
            &docs()[..1],
            &Device::Cpu,
        )
        .unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut first = make();
    assert_eq!(
        first.packs(),
        0,
        "nothing is packed before a batch is drawn"
    );
    while first.data_position().epoch == 0 {
        assert!(
            first.step < 100,
            "the fixture corpus should last a few steps"
        );
        first.train_step(&tokenizer).unwrap();
    }
    first.train_step(&tokenizer).unwrap();
    let stop = first.step;
    let at = first.data_position();
    assert!(
        at.epoch == 1 && at.next > 0 && at.windows > at.next,
        "{at:?}"
    );
    assert_eq!(first.packs(), 2);
    first.save_checkpoint(tmp.path()).unwrap();
    // A half-written checkpoint of a later step (a crash mid-save) must not be picked up.
    let torn = tmp.path().join(format!(".step-{:08}.tmp", stop + 1));
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("model.safetensors"), b"garbage").unwrap();
    drop(first);

    let mut straight = make();
    for _ in 0..stop + 3 {
        straight.train_step(&tokenizer).unwrap();
    }
    let mut resumed = make();
    resumed.load_checkpoint(tmp.path()).unwrap();
    assert_eq!((resumed.step, resumed.data_position()), (stop, at));
    for _ in 0..3 {
        resumed.train_step(&tokenizer).unwrap();
    }
    assert_eq!(resumed.data_position(), straight.data_position());
    assert_eq!(resumed.data_position().epoch, 1);
    assert_eq!(resumed.packs(), 1, "only epoch 1 is packed on resume");
    assert!(
        resumed.packing_seconds() > 0.0,
        "packing is timed, so a --minutes run can leave it out of its pace"
    );
    let (a, b) = (straight.weights().unwrap(), resumed.weights().unwrap());
    for (name, t) in &a {
        let diff = crate::max_abs_diff(t, &b[name]);
        assert!(diff < 1e-6, "{name} differs by {diff}");
    }
    assert_eq!(straight.tokens_seen, resumed.tokens_seen);

    // Longer sequences from the same checkpoint: the epoch is packed once, at the new length, and
    // the run continues the same share of the way through it.
    let mut longer = make();
    longer.load_checkpoint(tmp.path()).unwrap();
    let to = |seq_len| infill::train::trainer::Reshape {
        seq_len: Some(seq_len),
        ..Default::default()
    };
    longer.reshape(&tokenizer, to(64)).unwrap();
    assert_eq!(longer.packs(), 1);
    let now = longer.data_position();
    assert_eq!(now.epoch, 1);
    assert!(now.windows < at.windows, "{now:?} vs {at:?}");
    let share = |p: infill::train::trainer::DataPosition| p.next as f64 / p.windows as f64;
    assert!(
        (share(now) - share(at)).abs() <= 1.0 / now.windows as f64,
        "{now:?} vs {at:?}"
    );
    longer.train_step(&tokenizer).unwrap();
    assert_eq!(longer.packs(), 1);

    // Only FIM examples, all in SPM order, from the same checkpoint: one pack, the same share of
    // the epoch, the held-out windows untouched, and the new shares are the run's own from then
    // on (a later resume keeps them).
    let mut spm = make();
    spm.load_checkpoint(tmp.path()).unwrap();
    let held_before = spm.evaluate().unwrap();
    let all_spm = infill::train::trainer::Reshape {
        fim_rate: Some(1.0),
        spm_rate: Some(1.0),
        ..Default::default()
    };
    spm.reshape(&tokenizer, all_spm).unwrap();
    assert_eq!(spm.packs(), 1);
    let now = spm.data_position();
    assert_eq!(now.epoch, 1);
    assert!(
        (share(now) - share(at)).abs() <= 1.0 / now.windows as f64,
        "{now:?} vs {at:?}"
    );
    assert_eq!(spm.evaluate().unwrap(), held_before);
    spm.reshape(&tokenizer, all_spm).unwrap();
    assert_eq!(spm.packs(), 1, "no change, no pack");
    spm.train_step(&tokenizer).unwrap();
    let later = tempfile::tempdir().unwrap();
    spm.save_checkpoint(later.path()).unwrap();
    let mut again = make();
    again.load_checkpoint(later.path()).unwrap();
    assert_eq!(
        (again.settings.fim_rate, again.settings.spm_rate),
        (1.0, 1.0)
    );
    assert_eq!(again.settings.seq_len, 32);
    let bad = infill::train::trainer::Reshape {
        spm_rate: Some(1.5),
        ..Default::default()
    };
    let err = again.reshape(&tokenizer, bad).unwrap_err().to_string();
    assert!(err.contains("--spm-rate"), "{err}");
    let err = again
        .reshape(&tokenizer, to(10_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("positions"), "{err}");
}

/// A micro-batch split into shards that run on different threads (see `infill::train::tune_process`)
/// trains exactly like one thread taking it whole: shards of unequal sizes weigh by their positions.
#[test]
fn sharded_steps_equal_one_thread_taking_the_whole_batch() {
    let (config, tokenizer, weights) = fixture_parts("qwen2");
    let settings = TrainSettings {
        seq_len: 24,
        warmup: 0,
        ..TrainSettings::default()
    };
    // Five windows over two or three threads: shards of 3 + 2 and 2 + 2 + 1 windows.
    let ids: Vec<u32> = (0..200).map(|i| (i * 37 + 11) % 300).collect();
    let windows: Vec<Vec<u32>> = (0..5).map(|w| ids[w * 30..w * 30 + 25].to_vec()).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut trainer = Trainer::new(
                &config,
                true,
                Some(weights.clone()),
                settings.clone(),
                &tokenizer,
                docs(),
                &docs()[..1],
                &Device::Cpu,
            )
            .unwrap();
            let losses: Vec<f64> = (0..2)
                .map(|_| {
                    trainer
                        .train_step_on(&[windows.clone(), windows[1..].to_vec()])
                        .unwrap()
                        .loss
                })
                .collect();
            (losses, trainer.weights().unwrap())
        })
    };
    let (want_losses, want) = run(1);
    for threads in [2, 3] {
        let (losses, got) = run(threads);
        for (a, b) in want_losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-5, "{threads} threads: loss {b} vs {a}");
        }
        for (name, t) in &want {
            let diff = crate::max_abs_diff(t, &got[name]);
            assert!(diff < 1e-6, "{threads} threads: {name} differs by {diff}");
        }
    }
}

/// Every segment is encoded exactly: byte-level BPE (Qwen, StarCoder) as is, SentencePiece with a
/// prepended `▁` (the llama fixture) with suffix and middle encoded as continuations.
#[test]
fn fim_examples_rebuild_their_document() {
    for name in ["qwen2", "starcoder2", "gpt_bigcode", "llama"] {
        let dir = fixture(name);
        let vocab = ModelConfig::parse(&std::fs::read_to_string(dir.join("config.json")).unwrap())
            .unwrap()
            .vocab_size();
        let tokenizer =
            Tokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap(), vocab)
                .unwrap();
        let mut rng = Rng::new(7);
        let text = "def f(x):\n    # café €\n    return [i * 2 for i in range(x)]\n";
        let (mut fim_count, mut spm) = (0, 0);
        for _ in 0..60 {
            let ids = fim::example(
                &tokenizer,
                text,
                Some("python"),
                FimSettings {
                    fim_rate: 0.8,
                    spm_rate: 0.5,
                },
                &mut rng,
            )
            .unwrap();
            assert_eq!(fim::reassemble(&tokenizer, &ids), text, "{name}");
            let f = tokenizer.fim();
            if ids.contains(&f.middle) {
                fim_count += 1;
                spm += usize::from(ids.windows(2).any(|w| w == [f.prefix, f.suffix]));
            }
            if let Some(eos) = f.eos {
                assert_eq!(
                    ids.last(),
                    Some(&eos),
                    "every example ends with end-of-text"
                );
            }
        }
        assert!(
            (30..60).contains(&fim_count),
            "{name}: about 80% FIM, got {fim_count}/60"
        );
        assert!(
            spm > 5 && spm < fim_count - 5,
            "{name}: PSM and SPM both occur ({spm}/{fim_count})"
        );
    }
}

#[test]
fn train_command_reports_bad_input_in_one_line() {
    let run = |args: &[&str]| crate::infill_cmd().args(args).output().unwrap();
    let check = |out: std::process::Output, needle: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    };
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("m");
    let o = o.to_str().unwrap();
    check(
        run(&[
            "train",
            "--repo",
            empty.path().to_str().unwrap(),
            "--out",
            o,
            "--from-scratch",
        ]),
        "no source files",
    );
    std::fs::write(empty.path().join("notes.txt"), "hello").unwrap();
    check(
        run(&[
            "train",
            "--repo",
            empty.path().to_str().unwrap(),
            "--out",
            o,
            "--from-scratch",
        ]),
        "--explain",
    );
    check(
        run(&[
            "train",
            "--repo",
            "/no/such/repo",
            "--out",
            o,
            "--from-scratch",
        ]),
        "/no/such/repo",
    );
    let cargo_toml = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    for (tokenizer, needle) in [
        (
            "/no/such/tokenizer.json",
            "/no/such/tokenizer.json: cannot read the tokenizer",
        ),
        (cargo_toml, "Cargo.toml: not a usable tokenizer.json"),
    ] {
        check(
            run(&[
                "train",
                "--repo",
                FIXTURES,
                "--out",
                o,
                "--from-scratch",
                "--tokenizer",
                tokenizer,
            ]),
            needle,
        );
    }
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    check(
        run(&[
            "train",
            "--repo",
            src,
            "--out",
            "/proc/infill-test",
            "--from-scratch",
        ]),
        "/proc/infill-test",
    );
    check(
        run(&["train", "--repo", src, "--out", o, "--resume"]),
        "no checkpoint to resume from",
    );
    check(
        run(&["train", "--repo", src, "--out", o, "--lr", "0"]),
        "--lr must be above 0",
    );
    check(
        run(&["train", "--repo", src, "--out", o, "--init", "/no/model"]),
        "/no/model",
    );
}

/// A JSON file `infill train` wrote.
fn json_file(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One command fine-tunes a model on a source tree and writes a directory `--model` accepts.
#[test]
fn train_command_writes_a_model_directory_that_loads() {
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("infill/models/fine-tuned");
    let o = out.to_str().unwrap();
    let run = succeeded(
        crate::infill_cmd()
            .args(["train", "--repo", FIXTURES, "--out", o])
            .args(["--init", fixture("qwen2").to_str().unwrap()])
            .args(["--steps", "3", "--seq-len", "32", "--eval-every", "2"]),
    );
    let report = json_file(&out.as_path().join("training.json"));
    assert_eq!(report["steps"], 3);
    assert!(report["held_out_after"]["bits_per_byte"].as_f64().unwrap() > 0.0);
    // Each held-out language's figure, before and after, in the report and on the last line.
    let stdout = String::from_utf8_lossy(&run.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("held-out bits/byte by language: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let languages = report["held_out_after"]["by_language"].as_array().unwrap();
    assert!(!languages.is_empty());
    for l in languages {
        let name = l["language"].as_str().unwrap();
        assert!(l["bits_per_byte"].as_f64().unwrap() > 0.0);
        assert!(
            line.contains(&format!("{name} ")) && line.contains(" -> "),
            "{line}"
        );
    }
    // `infill models` lists it with the figures by language.
    let listed = succeeded(
        crate::infill_cmd()
            .arg("models")
            .env("XDG_DATA_HOME", data.path()),
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    let first = languages[0]["language"].as_str().unwrap();
    assert!(listed.contains(&format!("bits/byte ({first} ")), "{listed}");
    let origin = report["start"].clone();
    let mut model = crate::open(out.as_path());
    assert!(model.network.logits_after(&[1, 2, 3]).is_ok());

    // --resume --steps gives a finished run a longer schedule, and it continues from step 3.
    succeeded(crate::infill_cmd().args([
        "train", "--resume", "--steps", "5", "--out", o, "--repo", FIXTURES,
    ]));
    let report = json_file(&out.as_path().join("training.json"));
    assert_eq!(report["steps"], 5);
    // The report describes the whole run: how it began and the time of both sessions.
    assert_eq!(report["start"], origin);
    assert!(report["wall_seconds"].as_f64() > report["session_seconds"].as_f64());
    assert_eq!(logged_steps(out.as_path()), [1, 2, 3, 4, 5]);

    // --resume --minutes goes on from a finished run for that long, not zero steps, and
    // --batch-size changes the sequences per step from there.
    succeeded(
        crate::infill_cmd()
            .args([
                "train",
                "--resume",
                "--minutes",
                "0.01",
                "--batch-size",
                "2",
            ])
            .args(["--out", o, "--repo", FIXTURES]),
    );
    let report = json_file(&out.as_path().join("training.json"));
    assert!(report["steps"].as_u64().unwrap() > 5, "{report}");
    assert_eq!(report["settings"]["batch_size"], 2);
}

/// Trains the tiny preset from scratch on the fixtures for two steps of 48 tokens, with `extra`
/// arguments; returns the output directory.
fn train_tiny_from_scratch(extra: &[&std::ffi::OsStr]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    succeeded(
        crate::infill_cmd()
            .args(["train", "--from-scratch", "--preset", "tiny", "--out"])
            .arg(out.path())
            .args(["--repo", FIXTURES])
            .args(["--steps", "2", "--seq-len", "48", "--eval-every", "2"])
            .args(extra),
    );
    out
}

/// A model trained from scratch declares the context it was trained at, not the preset's room:
/// longer prompts would reach rotary positions it never saw.
#[test]
fn a_model_trained_from_scratch_declares_its_training_context() {
    let out = train_tiny_from_scratch(&[]);
    let config = json_file(&out.path().join("config.json"));
    assert_eq!(config["max_position_embeddings"], 48);
    let report = json_file(&out.path().join("training.json"));
    assert_eq!(report["start"], "from scratch (Tiny)");
}

/// `--tokenizer` trains a new model on an existing vocabulary (a scaling sweep keeps one); the
/// config names that tokenizer's end of text (`</s>`, id 2, in the llama fixture; a tokenizer
/// infill trains puts it at 0).
#[test]
fn a_model_trained_from_scratch_can_keep_a_given_tokenizer() {
    let tokenizer = crate::fixture("llama").join("tokenizer.json");
    let out = train_tiny_from_scratch(&["--tokenizer".as_ref(), tokenizer.as_os_str()]);
    let config = json_file(&out.path().join("config.json"));
    assert_eq!(config["vocab_size"], 556);
    assert_eq!(config["eos_token_id"], 2);
    assert_eq!(
        std::fs::read(out.path().join("tokenizer.json")).unwrap(),
        std::fs::read(&tokenizer).unwrap()
    );
}

/// `--resume --seq-len` goes on with longer sequences (up to the preset's positions, 512) and the
/// model then declares the longer context; `--resume --lr` lowers the peak and floor of the rest of
/// the run (a cool-down); `--fim-rate` and `--spm-rate` replace the run's shares of FIM and SPM examples.
/// A length past the model's positions is refused in one line.
#[test]
fn a_resumed_run_can_learn_a_longer_context_and_cool_down() {
    let out = train_tiny_from_scratch(&[]);
    let resume = |extra: &[&str]| {
        crate::infill_cmd()
            .args(["train", "--resume", "--out"])
            .arg(out.path())
            .args(["--repo", FIXTURES])
            .args(extra)
            .output()
            .unwrap()
    };
    let longer = resume(&[
        "--steps",
        "3",
        "--seq-len",
        "96",
        "--lr",
        "1e-4",
        "--fim-rate",
        "0.9",
        "--spm-rate",
        "0.8",
    ]);
    assert!(
        longer.status.success(),
        "{}",
        String::from_utf8_lossy(&longer.stderr)
    );
    let said = String::from_utf8_lossy(&longer.stderr);
    assert!(
        said.contains("90% of documents are FIM examples, 80% of those in SPM order"),
        "{said}"
    );
    let config = json_file(&out.path().join("config.json"));
    assert_eq!(config["max_position_embeddings"], 96);
    let report = json_file(&out.path().join("training.json"));
    assert_eq!(report["steps"], 3);
    assert_eq!(report["settings"]["seq_len"], 96);
    assert_eq!(report["settings"]["max_lr"], 1e-4);
    assert_eq!(report["settings"]["fim_rate"], 0.9);
    assert_eq!(report["settings"]["spm_rate"], 0.8);
    assert!((report["settings"]["min_lr"].as_f64().unwrap() - 1e-5).abs() < 1e-12);
    let log = log_lines(out.path());
    let last = log.iter().rfind(|l| l["event"] == "step").unwrap();
    assert!(last["lr"].as_f64().unwrap() <= 1e-4, "{last}");

    let too_long = resume(&["--steps", "4", "--seq-len", "1024"]);
    assert!(!too_long.status.success());
    let err = String::from_utf8_lossy(&too_long.stderr);
    assert!(
        err.contains("--seq-len 1024") && err.contains("512"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Held-out evaluation samples windows evenly over all held-out files: with eight windows to
/// measure, files after the first eight windows count too (the first windows alone would give the
/// same loss whatever follows them).
#[test]
fn held_out_windows_are_sampled_across_all_files() {
    let (config, tokenizer, weights) = fixture_parts("llama");
    let settings = TrainSettings {
        seq_len: 16,
        batch_size: 2,
        eval_windows: 8,
        ..TrainSettings::default()
    };
    let held_loss = |held: &[Doc]| {
        Trainer::new(
            &config,
            false,
            Some(weights.clone()),
            settings.clone(),
            &tokenizer,
            docs(),
            held,
            &Device::Cpu,
        )
        .unwrap()
        .evaluate()
        .unwrap()
    };
    let all = docs();
    let first: Vec<Doc> = std::iter::repeat_n(all[0].clone(), 4).collect();
    let mut then_others = first.clone();
    then_others.extend(all[1..].iter().cycle().take(12).cloned());
    let (alone, spread) = (held_loss(&first), held_loss(&then_others));
    assert_eq!(
        alone.tokens,
        8 * 16,
        "eight full windows from the first file alone"
    );
    assert!(
        (alone.loss - spread.loss).abs() > 1e-3,
        "{} vs {}",
        alone.loss,
        spread.loss
    );
}

/// Bits per byte divides by the bytes the targets stand for: every token of each held-out file
/// after its first is a target exactly once, whatever the window length, and a new length (cut
/// again from the tokens kept) measures the same bytes.
#[test]
fn held_out_bits_per_byte_count_each_byte_once_at_any_length() {
    let (config, tokenizer, weights) = fixture_parts("llama");
    let held = docs()[..2].to_vec();
    let expected: usize = held
        .iter()
        .map(|doc| {
            let mut ids = tokenizer.fim().lead.clone();
            ids.extend(tokenizer.encode(&doc.text).unwrap());
            ids.extend(tokenizer.fim().eos);
            ids[1..]
                .iter()
                .filter(|&&id| !tokenizer.is_special(id))
                .map(|&id| tokenizer.token_bytes(id).len())
                .sum::<usize>()
        })
        .sum();
    let settings = TrainSettings {
        seq_len: 16,
        eval_windows: usize::MAX,
        ..TrainSettings::default()
    };
    let mut trainer = Trainer::new(
        &config,
        false,
        Some(weights),
        settings,
        &tokenizer,
        docs(),
        &held,
        &Device::Cpu,
    )
    .unwrap();
    let bytes = |h: &infill::train::trainer::HeldOut| {
        h.loss * h.tokens as f64 / std::f64::consts::LN_2 / h.bits_per_byte
    };
    let short = trainer.evaluate().unwrap();
    assert!((bytes(&short) - expected as f64).abs() < 1e-6 * expected as f64);
    let longer = infill::train::trainer::Reshape {
        seq_len: Some(40),
        ..Default::default()
    };
    trainer.reshape(&tokenizer, longer).unwrap();
    let long = trainer.evaluate().unwrap();
    assert_eq!(long.tokens, short.tokens, "the same targets");
    assert!((bytes(&long) - expected as f64).abs() < 1e-6 * expected as f64);
}

/// Held-out figures by language: a language the evenly spaced sample misses still gets its own
/// windows (up to four), which count only for it, so the overall figure stays the sample's.
#[test]
fn held_out_figures_by_language_top_up_a_small_language() {
    let (config, tokenizer, weights) = fixture_parts("llama");
    let mut held: Vec<Doc> = std::iter::repeat_n(docs(), 4).flatten().collect();
    let rust = "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n".repeat(6);
    held.push(Doc {
        text: rust,
        language: Some("rust".into()),
    });
    let settings = TrainSettings {
        seq_len: 16,
        eval_windows: 4,
        ..TrainSettings::default()
    };
    let trainer = |held: &[Doc]| {
        Trainer::new(
            &config,
            false,
            Some(weights.clone()),
            settings.clone(),
            &tokenizer,
            docs(),
            held,
            &Device::Cpu,
        )
        .unwrap()
    };
    let both = trainer(&held).evaluate().unwrap();
    let python_only = trainer(&held[..held.len() - 1]).evaluate().unwrap();
    assert_eq!(
        both.tokens,
        4 * 16,
        "the overall figure reads the sample only"
    );
    let names: Vec<&str> = both
        .by_language
        .iter()
        .map(|l| l.language.as_str())
        .collect();
    assert_eq!(names, ["python", "rust"]);
    let rust = &both.by_language[1];
    assert_eq!(rust.tokens, 4 * 16, "four windows of its own");
    assert!(rust.bits_per_byte > 0.0);
    // With one language, its figure is the overall one.
    assert_eq!(python_only.by_language.len(), 1);
    assert!((python_only.by_language[0].bits_per_byte - python_only.bits_per_byte).abs() < 1e-12);
}

/// `--dry-run` says what training would use without an output folder or a model; with
/// `--explain`, file by file, each file once.
#[test]
fn a_dry_run_describes_the_corpus_and_trains_nothing() {
    let out = succeeded(crate::infill_cmd().args(["train", "--dry-run", "--repo", FIXTURES]));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("kept ") && lines[0].contains("python"),
        "{text}"
    );
    assert!(lines[1].starts_with("skipped "), "{text}");
    assert!(
        lines[2].starts_with("split: ") && lines[2].contains("held out"),
        "{text}"
    );

    let out = succeeded(crate::infill_cmd().args([
        "train",
        "--dry-run",
        "--explain",
        "--repo",
        FIXTURES,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let kept: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("kept "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a kept line");
    let listed = text
        .lines()
        .filter(|l| {
            ["train ", "held-out ", "shadowed "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count();
    assert_eq!(listed, kept, "{text}");
    assert!(text.lines().any(|l| l.starts_with("held-out ")), "{text}");

    // A package cap leaves training files out and says so; a cap that is not positive is refused.
    let out = succeeded(crate::infill_cmd().args([
        "train",
        "--dry-run",
        "--package-cap-mb",
        "0.001",
        "--repo",
        FIXTURES,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("over their package's cap"), "{text}");
    for bad in ["0", "-1", "NaN"] {
        let out = crate::infill_cmd()
            .args(["train", "--dry-run", "--repo", FIXTURES])
            .arg(format!("--package-cap-mb={bad}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--package-cap-mb"),
            "{bad}: {err}"
        );
    }
    // The fixtures declare no licence: --permissive-only keeps none of them, and says why.
    let out = crate::infill_cmd()
        .args([
            "train",
            "--dry-run",
            "--permissive-only",
            "--repo",
            FIXTURES,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no source files"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Without --dry-run, --out is still required.
    let out = crate::infill_cmd()
        .args(["train", "--repo", FIXTURES])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
}

/// Headers a Debian package installed declare no licence next to them: `--permissive-only` reads
/// the package's `copyright` file, found through dpkg's file lists (here a system at `DPKG_ROOT`).
#[test]
fn permissive_only_reads_the_licence_of_the_debian_package_that_installed_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let write = |rel: &str, text: &str| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let header = |name: &str| {
        format!(
            "#ifndef {name}_H\n#define {name}_H\n\nstruct {name}_point {{\n    int x;\n    int y;\n}};\n\nint {name}_distance(const struct {name}_point *a, const struct {name}_point *b);\n\n#endif\n"
        )
    };
    write("usr/include/zlib.h", &header("zlib"));
    write("usr/include/readline/readline.h", &header("readline"));
    write("usr/include/mine.h", &header("mine"));
    write(
        "var/lib/dpkg/info/zlib1g-dev:amd64.list",
        "/usr/include/zlib.h\n",
    );
    write(
        "var/lib/dpkg/info/libreadline-dev:amd64.list",
        "/usr/include/readline\n/usr/include/readline/readline.h\n",
    );
    let dep5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n";
    write(
        "usr/share/doc/zlib1g-dev/copyright",
        &format!("{dep5}Files: *\nLicense: Zlib\n\nFiles: debian/*\nLicense: GPL-2+\n"),
    );
    write(
        "usr/share/doc/libreadline-dev/copyright",
        &format!("{dep5}Files: *\nLicense: GPL-3+\n"),
    );
    let out = crate::infill_cmd()
        .args([
            "train",
            "--dry-run",
            "--explain",
            "--permissive-only",
            "--repo",
        ])
        .arg(r.join("usr/include"))
        .env("DPKG_ROOT", r)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |file: &str| {
        text.lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file}: {text}"))
            .to_string()
    };
    let zlib = line("zlib.h");
    assert!(
        zlib.starts_with("train") || zlib.starts_with("held"),
        "{zlib}"
    );
    let readline = line("readline.h");
    assert!(readline.contains("libreadline-dev: GPL-3+"), "{readline}");
    assert!(line("mine.h").contains("no licence declared"), "{text}");
}

/// A `.h` is C or C++ by what it holds, in the corpus as in the editor.
#[test]
fn a_cpp_header_is_learnt_as_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| std::fs::write(tmp.path().join(rel), text).unwrap();
    write(
        "shape.h",
        "#include <vector>\n\nnamespace geometry {\n\nclass Shape {\npublic:\n    virtual double area() const = 0;\n};\n\n}  // namespace geometry\n",
    );
    write(
        "point.h",
        "#ifndef POINT_H\n#define POINT_H\n\nstruct point {\n    int x;\n    int y;\n};\n\nint point_distance(const struct point *a, const struct point *b);\n\n#endif\n",
    );
    let out = succeeded(
        crate::infill_cmd()
            .args(["train", "--dry-run", "--explain", "--repo"])
            .arg(tmp.path()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.ends_with("shape.h (cpp)")), "{text}");
    assert!(text.lines().any(|l| l.ends_with("point.h (c)")), "{text}");
}

/// No text to fill one window is a one-line error at the first step, after one pass over the
/// corpus, not two.
#[test]
fn too_little_text_to_fill_a_window_is_an_error_after_one_pack() {
    let (config, tokenizer, weights) = fixture_parts("llama");
    let settings = TrainSettings {
        seq_len: 32,
        batch_size: 2,
        ..TrainSettings::default()
    };
    let tiny: Vec<Doc> = Vec::new();
    let mut trainer = Trainer::new(
        &config,
        false,
        Some(weights),
        settings,
        &tokenizer,
        tiny,
        &docs()[..1],
        &Device::Cpu,
    )
    .unwrap();
    let err = trainer.train_step(&tokenizer).unwrap_err().to_string();
    assert!(err.contains("too few tokens"), "{err}");
    assert_eq!(trainer.packs(), 1);
}

/// A new run never replaces a model or run in `--out` unless asked: it says which flag to pass,
/// and `--overwrite` starts afresh (the old run's log and checkpoints go with it).
#[test]
fn a_new_run_does_not_replace_a_trained_model_without_being_asked() {
    let out = train_tiny_from_scratch(&[]);
    let weights = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let again = |extra: &[&str]| {
        crate::infill_cmd()
            .args(["train", "--from-scratch", "--preset", "tiny", "--out"])
            .arg(out.path())
            .args(["--repo", FIXTURES, "--steps", "3", "--seq-len", "48"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = again(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--resume")
            && err.contains("--overwrite")
            && err.contains("model.safetensors"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read(out.path().join("model.safetensors")).unwrap(),
        weights,
        "the trained model is untouched"
    );
    let replaced = again(&["--overwrite"]);
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert_eq!(logged_steps(out.path()), [1, 2, 3]);
}

/// The lines of `train.log`, parsed.
fn log_lines(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("train.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The steps `train.log` holds, in order.
fn logged_steps(out: &std::path::Path) -> Vec<u64> {
    log_lines(out)
        .iter()
        .filter(|l| l["event"] == "step")
        .map(|l| l["step"].as_u64().unwrap())
        .collect()
}

/// Not on a terminal, a run reports its progress as train.log's own JSON lines on stderr: a
/// `start` line with the held-out figure before the first step, a line per step, and an `end`
/// line with the final figure; `--watch` on the run's folder prints the same lines and returns
/// at the end. A resumed session adds its own start and end.
#[test]
fn progress_off_a_terminal_is_the_logs_json_lines_and_watch_follows_them() {
    let out = tempfile::tempdir().unwrap();
    let run = succeeded(
        crate::infill_cmd()
            .args([
                "train",
                "--from-scratch",
                "--preset",
                "tiny",
                "--plain",
                "--out",
            ])
            .arg(out.path())
            .args(["--repo", FIXTURES])
            .args(["--steps", "3", "--seq-len", "48", "--eval-every", "2"])
            .args(["--checkpoint-every", "2"]),
    );
    let log = std::fs::read_to_string(out.path().join("train.log")).unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let reported: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(reported, log.lines().collect::<Vec<_>>(), "{stderr}");
    let lines = log_lines(out.path());
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["start", "step", "step", "step", "end"]);
    let (start, end) = (&lines[0], &lines[4]);
    assert_eq!(
        (start["step"].as_u64(), start["steps"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(start["held_out"]["bits_per_byte"].as_f64().unwrap() > 0.0);
    assert_eq!(end["interrupted"], false);
    assert!(
        end["held_out"]["bits_per_byte"].as_f64() < start["held_out"]["bits_per_byte"].as_f64()
    );
    // Held-out figures where they were measured; the checkpoint where it was written.
    assert!(lines[2]["held_out"]["bits_per_byte"].as_f64().is_some());
    assert!(lines[1].get("held_out").is_none());
    assert_eq!(lines[2]["checkpoint"], true);
    assert!(lines[1].get("checkpoint").is_none());
    for step in &lines[1..4] {
        assert!(step["elapsed_s"].as_f64().unwrap() > 0.0);
        assert!(step["tokens_per_s"].as_f64().unwrap() > 0.0);
    }

    let watched = succeeded(
        crate::infill_cmd()
            .arg("train")
            .arg("--watch")
            .arg(out.path()),
    );
    assert_eq!(String::from_utf8_lossy(&watched.stdout), log);

    succeeded(
        crate::infill_cmd()
            .args(["train", "--resume", "--steps", "4", "--out"])
            .arg(out.path())
            .args(["--repo", FIXTURES]),
    );
    let events: Vec<String> = log_lines(out.path())
        .iter()
        .map(|l| format!("{}{}", l["event"].as_str().unwrap(), l["step"]))
        .collect();
    assert_eq!(
        events,
        [
            "start0", "step1", "step2", "step3", "end3", "start3", "step4", "end4"
        ]
    );

    let missing = crate::infill_cmd()
        .args(["train", "--watch", "/no/such/run"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("/no/such/run") && err.contains("--out"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A run killed with SIGKILL long before its step checkpoint keeps the work of its last minutes:
/// it checkpoints by time too, `--resume` goes on from there, and the log does not repeat the
/// steps logged after the checkpoint.
#[test]
fn a_killed_run_resumes_from_its_last_timed_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let mut child = crate::infill_cmd()
        .args(["train", "--from-scratch", "--preset", "tiny", "--out"])
        .arg(out.path())
        .args(["--repo", FIXTURES, "--steps", "100000", "--seq-len", "48"])
        .args(["--eval-every", "100000", "--checkpoint-every", "100000"])
        .args(["--checkpoint-minutes", "0.002"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = out.path().join("checkpoints/latest");
    let started = std::time::Instant::now();
    // Two checkpoints at least, so that steps were logged after the one resumed from.
    while std::fs::read_to_string(&latest).map_or(true, |l| l.trim() < "step-00000002") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no timed checkpoint"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    child.kill().unwrap();
    child.wait().unwrap();
    let name = std::fs::read_to_string(&latest).unwrap();
    let at: u64 = name.trim().trim_start_matches("step-").parse().unwrap();
    let total = (at + 2).to_string();
    succeeded(
        crate::infill_cmd()
            .args(["train", "--resume", "--steps", &total, "--out"])
            .arg(out.path())
            .args(["--repo", FIXTURES]),
    );
    let steps = logged_steps(out.path());
    assert_eq!(steps, (1..=at + 2).collect::<Vec<_>>());
}
