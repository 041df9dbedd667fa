use candle_core::quantized::{GgmlDType, QStorage, QTensor};

use super::*;

/// Q8_0 rows of random blocks, extreme values included (-127 and 127 in every block).
fn matrix(out_dim: usize, in_dim: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut bytes = Vec::new();
    for _ in 0..out_dim * in_dim / BLOCK {
        let d = half::f16::from_f32(0.001 + rng.next_f64() as f32 * 0.01);
        bytes.extend(d.to_le_bytes());
        for i in 0..BLOCK {
            let q = match i {
                0 => -127,
                1 => 127,
                _ => (rng.next_f64() * 254.0 - 127.0).round() as i8,
            };
            bytes.push(q as u8);
        }
    }
    bytes
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32 * 3.0)
        .collect()
}

/// The file's rows dequantized by candle: the reference for every product and lookup.
fn reference(rows: &[u8], shape: (usize, usize)) -> Tensor {
    let storage = QStorage::from_data(
        std::borrow::Cow::Borrowed(rows),
        &Device::Cpu,
        GgmlDType::Q8_0,
    )
    .unwrap();
    QTensor::new(storage, shape)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

/// Each kernel this processor runs gives the exact integer dot product of each block, scaled:
/// the same as f64 arithmetic on the quantized values within f32 rounding, for row counts
/// that do not fill a tile and for one block or many.
#[test]
fn every_kernel_equals_the_quantized_arithmetic() {
    for (out_dim, in_dim) in [(1, 32), (7, 96), (16, 64), (40, 896)] {
        let rows = matrix(out_dim, in_dim, out_dim as u64);
        let layer = Q8Linear::from_rows(&rows, (out_dim, in_dim), None).unwrap();
        let x = randn(in_dim, 9);
        let a = Activations::quantize(&x);
        let rb = in_dim / BLOCK * BLOCK_BYTES;
        let want: Vec<f64> = (0..out_dim)
            .map(|o| {
                rows[o * rb..(o + 1) * rb]
                    .chunks_exact(BLOCK_BYTES)
                    .enumerate()
                    .map(|(b, block)| {
                        let dot: f64 = block[2..]
                            .iter()
                            .zip(&a.q[b * BLOCK..])
                            .map(|(&q, &x)| f64::from(q as i8) * f64::from(x))
                            .sum();
                        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f64();
                        dot * d * f64::from(a.d[b])
                    })
                    .sum()
            })
            .collect();
        let t = &*layer.tiles;
        for level in levels() {
            let mut got = vec![0f32; out_dim.next_multiple_of(TILE)];
            dots(
                level, t.format, &t.values, &t.scales, t.blocks, &a, &mut got,
            );
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "{level:?} {out_dim}x{in_dim}: {g} vs {e}"
                );
            }
            assert!(
                got[out_dim..].iter().all(|&v| v == 0.0),
                "padding rows are zero"
            );
        }
    }
}

/// Activations are quantized as llama.cpp quantizes them: each value within half a step of
/// its block's scale, the largest magnitude at exactly 127; the offset cancels 128 per value.
#[test]
fn activations_round_to_their_blocks_scale() {
    let x = randn(96, 3);
    let a = Activations::quantize(&x);
    for (b, values) in x.chunks_exact(BLOCK).enumerate() {
        let q = &a.q[b * BLOCK..(b + 1) * BLOCK];
        assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        for (v, &q) in values.iter().zip(q) {
            assert!((v - a.d[b] * f32::from(q)).abs() <= a.d[b] * 0.5 + 1e-6);
        }
        let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
        assert_eq!(a.offset[b], -128 * sum);
    }
    let zeros = Activations::quantize(&[0.0; 32]);
    assert!(zeros.q.iter().all(|&q| q == 0) && zeros.d[0] == 0.0);
}

/// The layer against candle's f32 matmul on the dequantized weights, for decoding rows (our
/// kernels, off by the activations' 8-bit rounding) and prompt rows (dequantized GEMM, exact
/// to f32 rounding), with a bias; embedding rows and the whole matrix equal candle's
/// dequantization exactly.
#[test]
fn the_layer_matches_a_matmul_on_the_dequantized_weights() {
    let dev = Device::Cpu;
    let (out_dim, in_dim) = (70, 160);
    let rows = matrix(out_dim, in_dim, 5);
    let reference = reference(&rows, (out_dim, in_dim));
    let bias = Tensor::new(randn(out_dim, 4).as_slice(), &dev).unwrap();
    let layer = Q8Linear::from_rows(&rows, (out_dim, in_dim), Some(&bias)).unwrap();
    // A prompt's rows run on the integer kernels too where the processor has VNNI, else on
    // the dequantized GEMM (exact to f32 rounding).
    let prompt = match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => 0.02,
        _ => 1e-5,
    };
    for (count, tolerance) in [(1, 0.02), (3, 0.02), (GEMM_ROWS + 1, prompt)] {
        let x = Tensor::new(randn(count * in_dim, count as u64), &dev)
            .unwrap()
            .reshape((1, count, in_dim))
            .unwrap();
        let want = x
            .broadcast_matmul(&reference.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let got = layer.forward(&x).unwrap();
        assert_eq!(got.dims(), [1, count, out_dim]);
        let scale = crate::model::max_abs(&want);
        let diff = crate::model::max_abs(&(got - want).unwrap());
        assert!(diff <= tolerance * scale, "{count} rows: {diff} of {scale}");
    }
    let ids = [3u32, 0, 69];
    let looked_up = layer.rows(&ids, &dev).unwrap();
    let want = reference
        .index_select(&Tensor::new(&ids, &dev).unwrap(), 0)
        .unwrap();
    assert_eq!(crate::model::max_abs(&(looked_up - want).unwrap()), 0.0);
    assert!(layer.rows(&[70], &dev).is_err());
    let whole = layer.dequantize(&dev).unwrap();
    assert_eq!(crate::model::max_abs(&(whole - &reference).unwrap()), 0.0);
}

/// The layer against a matmul on `reference`, its weights dequantized, for decoding rows and a
/// prompt's: within the activations' 8-bit rounding.
fn matches_the_matmul(layer: &Q8Linear, reference: &Tensor) {
    let in_dim = layer.in_dim;
    for count in [1, 3, GEMM_ROWS + 1] {
        let x = Tensor::new(randn(count * in_dim, count as u64), &Device::Cpu)
            .unwrap()
            .reshape((count, in_dim))
            .unwrap();
        let want = x.matmul(&reference.t().unwrap()).unwrap();
        let got = layer.forward(&x).unwrap();
        let scale = crate::model::max_abs(&want);
        let diff = crate::model::max_abs(&(got - want).unwrap());
        assert!(diff <= 0.02 * scale, "{count} rows: {diff} of {scale}");
    }
}

/// Q5_0 rows of random blocks (every fifth bit pattern, 0 and 31 in every block), as GGUF
/// stores them, and the same values as Q8_0 rows (exact: 5 bits fit in 8).
fn q5_matrix(out_dim: usize, in_dim: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = crate::rng::Rng::new(seed);
    let (mut q5, mut q8) = (Vec::new(), Vec::new());
    for _ in 0..out_dim * in_dim / BLOCK {
        let d = half::f16::from_f32(0.001 + rng.next_f64() as f32 * 0.01);
        let q: [u8; BLOCK] = std::array::from_fn(|i| match i {
            0 => 0,
            1 => 31,
            _ => (rng.next_f64() * 32.0) as u8 % 32,
        });
        q5.extend(d.to_le_bytes());
        let high = (0..BLOCK).fold(0u32, |h, i| h | u32::from(q[i] >> 4) << i);
        q5.extend(high.to_le_bytes());
        q5.extend((0..16).map(|j| (q[j] & 15) | (q[j + 16] & 15) << 4));
        q8.extend(d.to_le_bytes());
        q8.extend(q.iter().map(|&v| (v as i8 - 16) as u8));
    }
    (q5, q8)
}

fn q5_layer(rows: &[u8], shape: (usize, usize)) -> Q8Linear {
    layer(Format::Q5, rows, shape)
}

/// A layer over a GGUF file's rows in `format`.
fn layer(format: Format, rows: &[u8], shape: (usize, usize)) -> Q8Linear {
    let row_bytes = format.row_bytes(shape.1);
    let mut layers = Q8Linear::read_format(&[shape.0], shape.1, format, |_, first, buf| {
        buf.copy_from_slice(&rows[first * row_bytes..][..buf.len()]);
        Ok(())
    })
    .unwrap();
    layers.pop().unwrap()
}

/// Five-bit tiles hold the file's Q5_0 values exactly: every kernel gives what the same
/// values in Q8_0 tiles give (the same integer sums), the rows and the whole matrix
/// dequantize to candle's reading of the Q5_0 bytes, and the layer matches the matmul.
#[test]
fn q5_tiles_compute_what_the_same_values_in_q8_tiles_compute() {
    let dev = Device::Cpu;
    for (out_dim, in_dim) in [(1, 32), (7, 96), (16, 64), (40, 896)] {
        let (q5, q8) = q5_matrix(out_dim, in_dim, 11 + out_dim as u64);
        let five = q5_layer(&q5, (out_dim, in_dim));
        let eight = Q8Linear::from_rows(&q8, (out_dim, in_dim), None).unwrap();
        let storage =
            QStorage::from_data(std::borrow::Cow::Borrowed(&q5[..]), &dev, GgmlDType::Q5_0)
                .unwrap();
        let reference = QTensor::new(storage, (out_dim, in_dim))
            .unwrap()
            .dequantize(&dev)
            .unwrap();
        assert_eq!(
            crate::model::max_abs(&(five.dequantize(&dev).unwrap() - &reference).unwrap()),
            0.0
        );
        let ids: Vec<u32> = (0..out_dim as u32).rev().collect();
        let want = eight.rows(&ids, &dev).unwrap();
        let got = five.rows(&ids, &dev).unwrap();
        assert_eq!(crate::model::max_abs(&(got - want).unwrap()), 0.0);
        let a = Activations::quantize(&randn(in_dim, 3));
        let (t5, t8) = (&*five.tiles, &*eight.tiles);
        for level in levels() {
            // The same integer sums; scaled and added up block by block as the Q8 kernel of
            // the level does (the same instructions on VNNI, so the same bits there).
            let mut want = vec![0f32; out_dim.next_multiple_of(TILE)];
            dots(
                level,
                Format::Q8,
                &t8.values,
                &t8.scales,
                t8.blocks,
                &a,
                &mut want,
            );
            let mut got = vec![0f32; want.len()];
            dots(
                level,
                Format::Q5,
                &t5.values,
                &t5.scales,
                t5.blocks,
                &a,
                &mut got,
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{level:?} {out_dim}x{in_dim}: {g} vs {w}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if level == Level::Avx512Vnni {
                assert_eq!(got, want, "{out_dim}x{in_dim}");
            }
        }
        matches_the_matmul(&five, &reference);
    }
}

#[test]
fn a_matrix_of_the_wrong_size_is_refused() {
    let bytes = vec![0u8; 34 * 3];
    assert!(Q8Linear::from_rows(&bytes, (1, 96), None).is_ok());
    assert!(Q8Linear::from_rows(&bytes, (2, 96), None).is_err());
    assert!(Q8Linear::from_rows(&bytes, (3, 33), None).is_err());
}

/// Q4_K rows of random super-blocks as GGUF stores them: random packed 6-bit scales and mins
/// (every bit pattern is a valid block), 0 and 15 among the nibbles, the first block's scale and
/// min at their largest (63).
fn q4k_matrix(out_dim: usize, in_dim: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut byte = || (rng.next_f64() * 256.0) as u8;
    let mut bytes = Vec::new();
    for _ in 0..out_dim * in_dim / 256 {
        let d = half::f16::from_f32(0.001 + f32::from(byte()) * 4e-5);
        let dmin = half::f16::from_f32(0.0005 + f32::from(byte()) * 2e-5);
        bytes.extend(d.to_le_bytes());
        bytes.extend(dmin.to_le_bytes());
        let mut packed: [u8; 12] = std::array::from_fn(|_| byte());
        packed[0] |= 63;
        packed[4] |= 63;
        bytes.extend(packed);
        bytes.extend((0..128).map(|i| match i {
            0 => 0xF0,
            1 => 0x0F,
            _ => byte(),
        }));
    }
    bytes
}

/// Q6_K rows of random super-blocks as GGUF stores them: random bits, signed scales of both
/// signs including -128 and 127, and 0 and 63 among the first block's values.
fn q6k_matrix(out_dim: usize, in_dim: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut byte = || (rng.next_f64() * 256.0) as u8;
    let mut bytes = Vec::new();
    for _ in 0..out_dim * in_dim / 256 {
        let mut block: Vec<u8> = (0..208).map(|_| byte()).collect();
        // Value l of the first 32 (l < 32): low nibble of byte l, top bits 0..2 of byte 128 + l.
        for l in 0..32 {
            let v = (l * 2 + l / 16) as u8 % 64;
            block[l] = (block[l] & 0xF0) | (v & 15);
            block[128 + l] = (block[128 + l] & !3) | (v >> 4);
        }
        block[192] = 0x80;
        block[193] = 0x7F;
        let d = half::f16::from_f32(0.0005 + f32::from(byte()) * 2e-5);
        block.extend(d.to_le_bytes());
        bytes.extend(block);
    }
    bytes
}

/// Candle's reading of `rows` in `dtype`: the reference for the tiles' values.
fn dequantized(dtype: GgmlDType, rows: &[u8], shape: (usize, usize)) -> Tensor {
    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(rows), &Device::Cpu, dtype);
    QTensor::new(storage.unwrap(), shape)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

/// K tiles (Q4_K's four bits, Q6_K's six) hold the file's values and scales exactly: rows and
/// the whole matrix dequantize to candle's reading of the bytes; every kernel this processor runs
/// gives each row's product with the quantized activations to f32 rounding; the layer matches
/// the matmul.
#[test]
fn k_tiles_hold_the_files_values_and_every_kernel_computes_their_products() {
    let dev = Device::Cpu;
    type Matrix = fn(usize, usize, u64) -> Vec<u8>;
    let formats: [(Format, Matrix); 2] = [(Format::Q4K, q4k_matrix), (Format::Q6K, q6k_matrix)];
    for ((out_dim, in_dim), (format, matrix)) in [(1, 256), (7, 512), (16, 256), (40, 1536)]
        .into_iter()
        .flat_map(|shape| formats.map(|f| (shape, f)))
    {
        let bytes = matrix(out_dim, in_dim, 21 + out_dim as u64);
        let four = layer(format, &bytes, (out_dim, in_dim));
        let reference = dequantized(format.file_type(), &bytes, (out_dim, in_dim));
        let whole = four.dequantize(&dev).unwrap();
        assert_eq!(crate::model::max_abs(&(whole - &reference).unwrap()), 0.0);
        let ids: Vec<u32> = (0..out_dim as u32).rev().collect();
        let want = reference
            .index_select(&Tensor::new(ids.as_slice(), &dev).unwrap(), 0)
            .unwrap();
        let got = four.rows(&ids, &dev).unwrap();
        assert_eq!(crate::model::max_abs(&(got - want).unwrap()), 0.0);

        let a = Activations::quantize(&randn(in_dim, 5));
        let w: Vec<Vec<f32>> = reference.to_vec2().unwrap();
        let t = &*four.tiles;
        for level in levels() {
            let mut got = vec![0f32; out_dim.next_multiple_of(TILE)];
            dots(
                level, t.format, &t.values, &t.scales, t.blocks, &a, &mut got,
            );
            for (row, g) in w.iter().zip(&got) {
                let terms = row
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| f64::from(w) * f64::from(a.d[i / BLOCK]) * f64::from(a.q[i]));
                let (e, size) = terms.fold((0.0, 0.0), |(s, m), v: f64| (s + v, m + v.abs()));
                assert!(
                    (f64::from(*g) - e).abs() <= 1e-5 * (1.0 + size),
                    "{format:?} {level:?} {out_dim}x{in_dim}: {g} vs {e}"
                );
            }
            assert!(
                got[out_dim..].iter().all(|&v| v == 0.0),
                "padding rows are zero"
            );
        }
        matches_the_matmul(&four, &reference);
    }
}

#[test]
fn a_q4k_row_that_is_not_whole_super_blocks_is_refused() {
    let read = |in_dim| {
        Q8Linear::read_format(&[1], in_dim, Format::Q4K, |_, _, buf| {
            buf.fill(0);
            Ok(())
        })
    };
    assert!(read(256).is_ok());
    let err = read(96).unwrap_err().to_string();
    assert!(err.contains("not whole blocks of 256"), "{err}");
}

/// Each prompt kernel, several activation rows per pass over the weights (VNNI's for every
/// format, AVX2's for the K formats), gives each row exactly what the decoding kernel of its
/// level gives it: the same integer sums, scaled the same way.
#[cfg(target_arch = "x86_64")]
#[test]
fn every_prompt_kernel_equals_its_decoding_kernel_row_by_row() {
    let out_dim = 48;
    let q8 = Q8Linear::from_rows(&matrix(out_dim, 192, 2), (out_dim, 192), None).unwrap();
    let q5 = q5_layer(&q5_matrix(out_dim, 192, 4).0, (out_dim, 192));
    let q4k = layer(Format::Q4K, &q4k_matrix(out_dim, 512, 6), (out_dim, 512));
    let q6k = layer(Format::Q6K, &q6k_matrix(out_dim, 512, 8), (out_dim, 512));
    let kernels: [(Level, &Q8Linear, RowsKernel); 6] = [
        (Level::Avx512Vnni, &q8, x86::rows_avx512),
        (Level::Avx512Vnni, &q5, x86::rows_q5_avx512),
        (Level::Avx512Vnni, &q4k, x86::rows_q4k_avx512),
        (Level::Avx512Vnni, &q6k, x86::rows_q6k_avx512),
        (Level::Avx2, &q4k, x86::rows_q4k_avx2),
        (Level::Avx2, &q6k, x86::rows_q6k_avx2),
    ];
    let available = levels();
    for (level, layer, kernel) in kernels {
        if !available.contains(&level) {
            continue;
        }
        let t = &*layer.tiles;
        for rows in [2, 4, 7, 9] {
            let acts: Vec<Activations> = (0..rows)
                .map(|r| Activations::quantize(&randn(layer.in_dim, 100 + r as u64)))
                .collect();
            let mut together = vec![0f32; rows * out_dim];
            // SAFETY: the processor has the level's features (checked above).
            #[allow(unsafe_code)]
            unsafe {
                kernel(&t.values, &t.scales, t.blocks, &acts, &mut together)
            };
            for (a, want) in acts.iter().zip(together.chunks_exact(out_dim)) {
                let mut got = vec![0f32; out_dim];
                let (v, s) = (&t.values, &t.scales);
                dots(level, t.format, v, s, t.blocks, a, &mut got);
                assert_eq!(got, want, "{level:?} {:?}, {rows} rows", t.format);
            }
        }
    }
}

/// A prompt's rows pass over each format's tiles a chunk at a time (a few rows each in tests):
/// every row of the layer's output is exactly that row's product alone, chunk edges included.
#[test]
fn a_prompt_in_chunks_computes_each_row_as_alone() {
    let dev = Device::Cpu;
    let out_dim = 40;
    let layers = [
        Q8Linear::from_rows(&matrix(out_dim, 192, 3), (out_dim, 192), None).unwrap(),
        q5_layer(&q5_matrix(out_dim, 192, 5).0, (out_dim, 192)),
        layer(Format::Q4K, &q4k_matrix(out_dim, 512, 7), (out_dim, 512)),
        layer(Format::Q6K, &q6k_matrix(out_dim, 512, 9), (out_dim, 512)),
    ];
    for layer in &layers {
        let rows = 13;
        assert!(rows > 2 * (CHUNK_BYTES / layer.in_dim), "several chunks");
        let x = Tensor::from_vec(
            randn(rows * layer.in_dim, 77),
            (1, rows, layer.in_dim),
            &dev,
        )
        .unwrap();
        let all = layer.forward(&x).unwrap();
        assert_eq!(all.dims(), [1, rows, out_dim]);
        for r in 0..rows {
            let alone = layer.forward(&x.narrow(1, r, 1).unwrap()).unwrap();
            let together = all.narrow(1, r, 1).unwrap();
            let gap = crate::model::max_abs(&(alone - together).unwrap());
            assert_eq!(gap, 0.0, "{:?}, row {r}", layer.tiles.format);
        }
    }
}
