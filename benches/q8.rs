//! Quantized decoding kernels: one token's matrix-vector products over Qwen2.5-Coder-0.5B's
//! matrices (24 layers of q, k, v, o, gate, up, down, and the 151,936-row head; 529 MB of Q8_0
//! blocks of random values), through infill's kernel and through candle's quantized matmul on the
//! same bytes, interleaved. Prints tokens/s and the weight bytes each turns into products per
//! second. The K types run -1.5B's matrices (28 layers; 0.5B's rows are not whole super-blocks),
//! as Q8_0 does with `INFILL_BENCH_SHAPE=1.5b`.
//!
//!     cargo bench --bench q8                      # the best kernel this processor runs
//!     INFILL_KERNELS=avx2 cargo bench --bench q8  # capped at AVX2, as on processors without
//!                                                 # AVX-512 VNNI
//!     INFILL_BENCH_CACHED=1 cargo bench --bench q8  # one small matrix that stays in cache:
//!                                                   # the kernels' arithmetic alone
//!     INFILL_BENCH_TYPE=q6k cargo bench --bench q8  # Q6_K (or q4k, q5_0) tiles against
//!                                                   # candle's kernel for the type
//!     INFILL_BENCH_ROWS=256 cargo bench --bench q8  # a prompt's 256 tokens at a time (the
//!                                                   # prompt kernels)

use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use infill::model::q8_linear::{Format, Q8Linear};

mod machine;
use machine::percentile;

fn main() -> candle_core::Result<()> {
    let format = match std::env::var("INFILL_BENCH_TYPE").as_deref() {
        Ok("q6k") => Format::Q6K,
        Ok("q4k") => Format::Q4K,
        Ok("q5_0") => Format::Q5,
        _ => Format::Q8,
    };
    let large = matches!(format, Format::Q4K | Format::Q6K)
        || std::env::var("INFILL_BENCH_SHAPE").as_deref() == Ok("1.5b");
    let (h, i, kv, vocab, layers) = match large {
        false => (896, 4864, 128, 151_936, 24),
        true => (1536, 8960, 256, 151_936, 28),
    };
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
    // Where each unit's f16 factors lie: random bits elsewhere are valid values of every type.
    let factors: &[usize] = match format {
        Format::Q8 | Format::Q5 => &[0],
        Format::Q4K => &[0, 2],
        _ => &[208],
    };
    for &(n, k) in &shapes {
        let units = n * k / format.unit();
        let mut bytes = vec![0u8; units * format.unit_bytes()];
        for unit in bytes.chunks_exact_mut(format.unit_bytes()) {
            for b in unit.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = (seed % 255) as u8 ^ 0x80;
            }
            for &at in factors {
                unit[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        total += bytes.len();
        let bytes: Arc<[u8]> = bytes.into();
        let row_bytes = format.row_bytes(k);
        let ours = Q8Linear::read_format(&[n], k, format, |_, first, buf| {
            buf.copy_from_slice(&bytes[first * row_bytes..][..buf.len()]);
            Ok(())
        })?
        .remove(0);
        let storage = QStorage::from_data(
            std::borrow::Cow::Borrowed(&bytes),
            &Device::Cpu,
            format.file_type(),
        )?;
        let theirs = QMatMul::from_qtensor(QTensor::new(storage, (n, k))?)?;
        matrices.push((ours, theirs, k));
    }
    println!(
        "{} matrices, {:.0} MB of {:?}; {}",
        matrices.len(),
        total as f64 / 1e6,
        format.file_type(),
        machine::cpu()
    );
    let rows: usize = std::env::var("INFILL_BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let inputs: Vec<Tensor> = [h, i]
        .iter()
        .map(|&k| Tensor::randn(0f32, 1.0, (1, rows, k), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    let input = |k: usize| if k == h { &inputs[0] } else { &inputs[1] };
    let tokens = (if cached { 20_000 } else { 10 }) / rows.min(10);
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
            rates[which].push((tokens * rows) as f64 / s);
            println!(
                "round {round} {name:>6}: {:.1} tokens/s, {:.1} GB/s of weights",
                (tokens * rows) as f64 / s,
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
