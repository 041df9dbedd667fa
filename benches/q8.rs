//! Q8_0 decoding kernels: one token's matrix-vector products over Qwen2.5-Coder-0.5B's matrices
//! (24 layers of q, k, v, o, gate, up, down, and the 151,936-row head; 529 MB of Q8_0 blocks of
//! random values), through infill's kernel and through candle's quantized matmul on the same
//! bytes, interleaved. Prints tokens/s and the weight bytes each turns into products per second.
//!
//!     cargo bench --bench q8                      # the best kernel this processor runs
//!     INFILL_KERNELS=avx2 cargo bench --bench q8  # capped at AVX2, as on processors without
//!                                                 # AVX-512 VNNI
//!     INFILL_BENCH_CACHED=1 cargo bench --bench q8  # one small matrix that stays in cache:
//!                                                   # the kernels' arithmetic alone

use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use infill::model::q8_linear::{BLOCK, BLOCK_BYTES, Q8Linear};

mod machine;
use machine::percentile;

fn main() -> candle_core::Result<()> {
    let (h, i, kv, vocab, layers) = (896, 4864, 128, 151_936, 24);
    let mut shapes = Vec::new();
    let cached = std::env::var_os("INFILL_BENCH_CACHED").is_some();
    for _ in 0..layers * usize::from(!cached) {
        shapes.extend([(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]);
    }
    if cached {
        shapes = vec![(512, h)];
    } else {
        shapes.push((vocab, h));
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut matrices = Vec::new();
    let mut total = 0usize;
    for &(n, k) in &shapes {
        let blocks = n * k / BLOCK;
        let mut bytes = vec![0u8; blocks * BLOCK_BYTES];
        for block in bytes.chunks_exact_mut(BLOCK_BYTES) {
            block[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            for b in &mut block[2..] {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = (seed % 255) as u8 ^ 0x80;
            }
        }
        total += bytes.len();
        let bytes: Arc<[u8]> = bytes.into();
        let ours = Q8Linear::from_rows(&bytes, (n, k), None)?;
        let storage = QStorage::from_data(
            std::borrow::Cow::Borrowed(&bytes),
            &Device::Cpu,
            GgmlDType::Q8_0,
        )?;
        let theirs = QMatMul::from_qtensor(QTensor::new(storage, (n, k))?)?;
        matrices.push((ours, theirs, k));
    }
    println!(
        "{} matrices, {:.0} MB of Q8_0; {}",
        matrices.len(),
        total as f64 / 1e6,
        machine::cpu()
    );
    let inputs: Vec<Tensor> = [h, i]
        .iter()
        .map(|&k| Tensor::randn(0f32, 1.0, (1, 1, k), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    let input = |k: usize| if k == h { &inputs[0] } else { &inputs[1] };
    let tokens = if cached { 20_000 } else { 10 };
    let mut rates: [Vec<f64>; 2] = Default::default();
    for round in 1..=5 {
        for (which, name) in ["infill", "candle"].into_iter().enumerate() {
            let start = Instant::now();
            for _ in 0..tokens {
                for (ours, theirs, k) in &matrices {
                    let y = match which {
                        0 => ours.forward(input(*k))?,
                        _ => theirs.forward(input(*k))?,
                    };
                    std::hint::black_box(y);
                }
            }
            let s = start.elapsed().as_secs_f64();
            rates[which].push(tokens as f64 / s);
            println!(
                "round {round} {name:>6}: {:.1} tokens/s, {:.1} GB/s of weights",
                tokens as f64 / s,
                (total * tokens) as f64 / s / 1e9
            );
        }
    }
    let [mut ours, mut theirs] = rates;
    let (ours, theirs) = (percentile(&mut ours, 0.5), percentile(&mut theirs, 0.5));
    println!(
        "median: infill {ours:.1} tokens/s, candle {theirs:.1} tokens/s ({:.2}x)",
        ours / theirs
    );
    Ok(())
}
