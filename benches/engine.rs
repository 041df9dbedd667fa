//! Engine benchmark: prefill tokens/s, time to first token, decode ms/token and peak memory.
//!
//! Two shapes with random weights made at run time (no download): a ~7M-parameter Qwen2 like the
//! default model, and Qwen2.5-Coder-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
//! intermediate 4864, vocab 151936). Run with `cargo bench --bench engine`; set
//! `INFILL_BENCH=small` for the small model only, `INFILL_BENCH_DTYPES=f32,bf16` to compare
//! precisions, `INFILL_BENCH_LORA=16` to measure a rank-16 LoRA adapter on every projection
//! applied at run time (as the editor applies `--adapter`) against none, in alternating rounds on
//! one model. Figures are printed, never asserted: timings on shared machines are noisy.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use infill::model::Network;
use infill::model::config::{Family, LlamaConfig};
use infill::model::llama::{InPlace, Kernels, Llama};

fn shape(name: &str) -> LlamaConfig {
    let base = LlamaConfig {
        family: Family::Qwen2,
        vocab_size: 4096,
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 8,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 32,
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_scaling_factor: 1.0,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        fim_order: None,
    };
    match name {
        "qwen2.5-coder-0.5b-shape" => LlamaConfig {
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            head_dim: 64,
            max_position_embeddings: 4096,
            ..base
        },
        _ => base,
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn ids(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729) % vocab) as u32)
        .collect()
}

fn bench(name: &str, dtype: DType) -> candle_core::Result<()> {
    let cfg = shape(name);
    // bf16 means our bf16 kernel (as `--dtype bf16` does), built from f32 weights.
    let var_dtype = if dtype == DType::BF16 {
        DType::F32
    } else {
        dtype
    };
    // Random weights come from a VarMap, but a model built on `Var`s records a backprop graph on
    // every op; detach them so this measures inference as loaded from safetensors.
    let weights = {
        let varmap = VarMap::new();
        Llama::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, var_dtype, &Device::Cpu),
            true,
            Kernels::Fused,
        )?;
        let data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect::<HashMap<_, _>>()
    };
    let params: usize = weights.values().map(|t| t.elem_count()).sum();
    let model = if dtype == DType::BF16 {
        Llama::new_bf16(
            &cfg,
            VarBuilder::from_tensors(weights, DType::BF16, &Device::Cpu),
            true,
            &InPlace::default(),
        )?
    } else {
        Llama::new(
            &cfg,
            VarBuilder::from_tensors(weights, var_dtype, &Device::Cpu),
            true,
            Kernels::Fused,
        )?
    };
    let mut net = Network::llama(model);
    // Warm up (allocators, thread pool).
    net.logits_after(&ids(16, cfg.vocab_size, 9))?;
    net.reset()?;
    let rank: usize = std::env::var("INFILL_BENCH_LORA")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if rank == 0 {
        return measure(&mut net, &cfg, name, dtype, params, "");
    }
    let updates = lora(&cfg, rank)?;
    for round in 0..3 {
        for adapted in [false, true] {
            if adapted {
                let named = updates.iter().map(|(n, a, b)| (n.as_str(), a, b));
                net.set_lora(named, 2.0)?;
            } else {
                net.clear_lora()?;
            }
            let label = if adapted {
                format!(" round {round} LoRA r={rank}")
            } else {
                format!(" round {round} no adapter")
            };
            measure(&mut net, &cfg, name, dtype, params, &label)?;
        }
    }
    Ok(())
}

/// A random rank-`rank` LoRA update of every projection of every layer, as peft names them.
fn lora(
    cfg: &LlamaConfig,
    rank: usize,
) -> candle_core::Result<Vec<(String, candle_core::Tensor, candle_core::Tensor)>> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut out = Vec::new();
    for layer in 0..cfg.num_hidden_layers {
        for (module, fan_in, fan_out) in [
            ("self_attn.q_proj", h, q),
            ("self_attn.k_proj", h, kv),
            ("self_attn.v_proj", h, kv),
            ("self_attn.o_proj", q, h),
            ("mlp.gate_proj", h, i),
            ("mlp.up_proj", h, i),
            ("mlp.down_proj", i, h),
        ] {
            let a = candle_core::Tensor::randn(0f32, 0.02, (rank, fan_in), &Device::Cpu)?;
            let b = candle_core::Tensor::randn(0f32, 0.02, (fan_out, rank), &Device::Cpu)?;
            out.push((format!("model.layers.{layer}.{module}.weight"), a, b));
        }
    }
    Ok(out)
}

fn measure(
    net: &mut Network,
    cfg: &LlamaConfig,
    name: &str,
    dtype: DType,
    params: usize,
    label: &str,
) -> candle_core::Result<()> {
    let mut prefill = Vec::new();
    for &n in &[512usize, 1024] {
        net.reset()?;
        let prompt = ids(n, cfg.vocab_size, n);
        let t = Instant::now();
        net.logits_after(&prompt)?;
        prefill.push((
            n,
            n as f64 / t.elapsed().as_secs_f64(),
            t.elapsed().as_secs_f64() * 1e3,
        ));
    }
    // Decode after a 512-token prompt: the first token's latency and the steady per-token cost.
    net.reset()?;
    let mut seq = ids(512, cfg.vocab_size, 3);
    let t = Instant::now();
    net.logits_after(&seq)?;
    let ttft_ms = t.elapsed().as_secs_f64() * 1e3;
    let steps = 32;
    let t = Instant::now();
    for i in 0..steps {
        seq.push((i * 31 % cfg.vocab_size) as u32);
        net.logits_after(&seq)?;
    }
    let decode_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!(
        "{name:<26} {:>6.1}M {:<5} prefill@512 {:>7.1} tok/s  prefill@1024 {:>7.1} tok/s  TTFT@512 {:>7.0} ms  \
         decode {:>7.1} ms/tok ({:>5.1} tok/s)  peak RSS {:>6.0} MiB{label}",
        params as f64 / 1e6,
        format!("{dtype:?}").to_lowercase(),
        prefill[0].1,
        prefill[1].1,
        ttft_ms,
        decode_ms,
        1e3 / decode_ms,
        peak_rss_mib(),
    );
    Ok(())
}

fn main() {
    let which = std::env::var("INFILL_BENCH").unwrap_or_default();
    let dtypes: Vec<DType> = std::env::var("INFILL_BENCH_DTYPES")
        .unwrap_or_else(|_| "f32".into())
        .split(',')
        .filter_map(|d| match d.trim() {
            "f32" => Some(DType::F32),
            "f16" => Some(DType::F16),
            "bf16" => Some(DType::BF16),
            _ => None,
        })
        .collect();
    println!("threads: {}", candle_core::utils::get_num_threads());
    let mut shapes = vec!["small-7m"];
    if which != "small" {
        shapes.push("qwen2.5-coder-0.5b-shape");
    }
    for name in shapes {
        for &dtype in &dtypes {
            if let Err(e) = bench(name, dtype) {
                println!("{name} {dtype:?}: failed: {e}");
            }
        }
    }
}
