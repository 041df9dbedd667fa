//! Training throughput: tokens per second of full optimizer steps (forward, backward, clip, AdamW)
//! on one fixed configuration, the PyTorch comparison's too: a 6.8M-parameter Qwen2 (hidden 256,
//! 6 layers, 8 heads, intermediate 688, vocabulary 8192, tied), 4 sequences of 256 tokens per step.
//!
//! `cargo bench --bench train`; `INFILL_BENCH_TORCH=1 cargo bench --bench train` alternates it with
//! `benches/train_torch.py` (PyTorch on the same configuration) three times and prints the ratio.
//! PyTorch is not a dependency of infill, only of this comparison.

use std::time::Instant;

use candle_core::Device;
use infill::model::Tokenizer;
use infill::model::config::{Family, LlamaConfig};
use infill::rng::Rng;
use infill::train::trainer::{Doc, TrainSettings, Trainer};

fn main() -> anyhow::Result<()> {
    // The same process settings `infill train` uses.
    infill::train::tune_process();
    let config = LlamaConfig {
        family: Family::Qwen2,
        vocab_size: 8192,
        hidden_size: 256,
        intermediate_size: 688,
        num_hidden_layers: 6,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        head_dim: 32,
        max_position_embeddings: 512,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling_factor: 1.0,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: Some(0),
        fim_order: None,
    };
    // A throwaway tokenizer: the benchmark feeds random token windows directly.
    let texts = [
        "fn main() { println!(\"hi\"); }\n",
        "def f(x):\n    return x\n",
    ]
    .repeat(50);
    let json = infill::train::tokenizer::train(texts.iter(), 300)?;
    let tokenizer = Tokenizer::from_bytes(json.as_bytes(), config.vocab_size)?;
    let docs = vec![Doc {
        text: texts.concat(),
        language: None,
    }];
    // INFILL_BENCH_BATCH=16 measures bigger steps (the comparison with PyTorch uses 4).
    let batch_size: usize = std::env::var("INFILL_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(4);
    let settings = TrainSettings {
        seq_len: 256,
        batch_size,
        steps: 1000,
        ..TrainSettings::default()
    };
    let mut trainer = Trainer::new(
        &config,
        true,
        None,
        settings,
        &tokenizer,
        docs.clone(),
        &docs,
        &Device::Cpu,
    )?;
    let mut rng = Rng::new(1);
    let mut batch = || -> Vec<Vec<Vec<u32>>> {
        vec![
            (0..batch_size)
                .map(|_| (0..257).map(|_| (rng.next_u64() % 8192) as u32).collect())
                .collect(),
        ]
    };
    let params: usize = trainer.weights()?.values().map(|t| t.elem_count()).sum();
    for _ in 0..2 {
        trainer.train_step_on(&batch())?;
    }
    let steps = 40 / batch_size.max(1) + 2;
    // INFILL_BENCH_TORCH=1 runs PyTorch's side after each of our runs, INFILL_BENCH_ROUNDS times
    // (default 3 then, else 1), and prints both means and their ratio.
    let torch = std::env::var_os("INFILL_BENCH_TORCH").is_some();
    let rounds: usize = std::env::var("INFILL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if torch { 3 } else { 1 });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let mut loss = 0.0;
        for _ in 0..steps {
            loss = trainer.train_step_on(&batch())?.loss;
        }
        let secs = t.elapsed().as_secs_f64();
        let rate = (steps * batch_size * 256) as f64 / secs;
        ours.push(rate);
        println!(
            "infill  {:.2}M params, {batch_size}x256 tokens/step: {rate:.0} tokens/s ({:.0} ms/step, {} threads, final loss {loss:.3})",
            params as f64 / 1e6,
            secs * 1e3 / steps as f64,
            rayon::current_num_threads()
        );
        if torch {
            theirs.push(pytorch_tokens_per_s(batch_size)?);
        }
    }
    if torch {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "{rounds} alternating rounds: infill {:.0}, PyTorch {:.0} tokens/s on average: {:.2}x PyTorch's speed",
            mean(&ours),
            mean(&theirs),
            mean(&ours) / mean(&theirs)
        );
    }
    Ok(())
}

/// Runs `benches/train_torch.py` on the same shape and batch; returns its tokens per second.
fn pytorch_tokens_per_s(batch_size: usize) -> anyhow::Result<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/train_torch.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .env("INFILL_BENCH_BATCH", batch_size.to_string())
        .output()
        .map_err(|e| anyhow::anyhow!("python3: {e} (PyTorch's side needs python3 with torch)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        anyhow::bail!(
            "{script} failed (pip install torch==2.15.0 transformers==5.24.0): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    text.split("tokens/step: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{script}: no tokens/s figure in its output"))
}
