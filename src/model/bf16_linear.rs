//! A linear layer with bf16 weights and our own CPU kernel, for inference.
//!
//! Decoding one token is bound by memory bandwidth: every weight is read once per token. Candle's CPU
//! matmul has no bf16 kernel (it widens both operands to f32 on every call), so halving the bytes
//! needs a kernel of our own. Weights stay in the checkpoint's `(out, in)` row-major layout as bf16
//! bits; activations stay f32. bf16 -> f32 is a 16-bit shift, which vectorises well.
//!
//! Two paths: for one or two activation rows (decoding) the conversion is fused into the dot
//! product; for more rows (prefill) each block of four weight rows is widened once into a scratch
//! buffer and reused for every activation row. Output rows are split across rayon's threads. On
//! x86-64 with AVX2 and FMA (checked at run time) the same code is compiled with those features
//! enabled; elsewhere it runs as portable Rust.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Weight rows per work item handed to a thread.
const ROWS_PER_TASK: usize = 16;

/// From this many activation rows on (prefill), widening the weights once and running candle's f32
/// gemm beats our dot-product kernel: the conversion is amortised over the rows, and gemm's blocking
/// uses the FMA units far better.
const GEMM_ROWS: usize = 8;

/// `y = x W^T + b` with `W` held as bf16.
#[derive(Debug, Clone)]
pub struct Bf16Linear {
    weight: Vec<u16>,
    bias: Option<Vec<f32>>,
    in_dim: usize,
    out_dim: usize,
}

fn to_bf16_bits(t: &Tensor) -> Result<Vec<u16>> {
    let v: Vec<half::bf16> = t.to_dtype(DType::BF16)?.flatten_all()?.to_vec1()?;
    Ok(v.into_iter().map(half::bf16::to_bits).collect())
}

#[inline(always)]
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

impl Bf16Linear {
    /// Converts a `(out, in)` weight and optional `(out,)` bias.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        Ok(Self {
            weight: to_bf16_bits(weight)?,
            bias,
            in_dim,
            out_dim,
        })
    }

    /// `x` of shape `(..., in)` in any float dtype; returns `(..., out)` in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&last, lead)) = dims.split_last() else {
            candle_core::bail!("bf16 linear on a scalar")
        };
        if last != self.in_dim {
            candle_core::bail!("bf16 linear expects {} inputs, got {last}", self.in_dim);
        }
        let rows = lead.iter().product::<usize>();
        if rows >= GEMM_ROWS {
            return self.forward_gemm(x);
        }
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut out_t = vec![0f32; self.out_dim * rows];
        out_t
            .par_chunks_mut(ROWS_PER_TASK * rows)
            .enumerate()
            .for_each(|(task, chunk)| {
                let first = task * ROWS_PER_TASK;
                let n = chunk.len() / rows.max(1);
                let w = &self.weight[first * self.in_dim..(first + n) * self.in_dim];
                compute(w, &xs, chunk, self.in_dim, rows);
            });
        // out_t is (out, rows); the caller wants (rows, out).
        let mut out = if rows == 1 {
            out_t
        } else {
            let mut t = vec![0f32; rows * self.out_dim];
            for (o, col) in out_t.chunks_exact(rows).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    t[r * self.out_dim + o] = v;
                }
            }
            t
        };
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(self.out_dim) {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
        let mut shape = lead.to_vec();
        shape.push(self.out_dim);
        Tensor::from_vec(out, shape, x.device())
    }
}

impl Bf16Linear {
    fn forward_gemm(&self, x: &Tensor) -> Result<Tensor> {
        let mut w = vec![0f32; self.weight.len()];
        w.par_chunks_mut(1 << 16)
            .zip(self.weight.par_chunks(1 << 16))
            .for_each(|(dst, src)| {
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d = widen(s));
            });
        let w = Tensor::from_vec(w, (self.out_dim, self.in_dim), x.device())?;
        let y = x.to_dtype(DType::F32)?.broadcast_matmul(&w.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&Tensor::new(b.as_slice(), x.device())?),
            None => Ok(y),
        }
    }
}

/// Fills `out` (`n` weight rows x `rows` activation rows) with dot products.
fn compute(w: &[u16], xs: &[f32], out: &mut [f32], in_dim: usize, rows: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), which is the only
            // requirement `compute_avx2` adds to the portable version.
            #[allow(unsafe_code)]
            unsafe {
                compute_avx2(w, xs, out, in_dim, rows)
            };
            return;
        }
    }
    compute_portable(w, xs, out, in_dim, rows);
}

macro_rules! kernels {
    ($name:ident, $fma:expr $(, #[$attr:meta])?) => {
        $(#[$attr])?
        fn $name(w: &[u16], xs: &[f32], out: &mut [f32], in_dim: usize, rows: usize) {
            let fma: fn(f32, f32, f32) -> f32 = $fma;
            let n = w.len() / in_dim;
            if rows <= 2 {
                // Decoding: fuse the widening into the dot product, one pass over the weights.
                for o in 0..n {
                    let wr = &w[o * in_dim..(o + 1) * in_dim];
                    for r in 0..rows {
                        let x = &xs[r * in_dim..(r + 1) * in_dim];
                        let mut acc = [0f32; 16];
                        let (wc, wt) = (wr.chunks_exact(16), wr.chunks_exact(16).remainder());
                        let (xc, xt) = (x.chunks_exact(16), x.chunks_exact(16).remainder());
                        for (a, b) in wc.zip(xc) {
                            for l in 0..16 {
                                acc[l] = fma(widen(a[l]), b[l], acc[l]);
                            }
                        }
                        let mut sum: f32 = acc.iter().sum();
                        for (a, b) in wt.iter().zip(xt) {
                            sum = fma(widen(*a), *b, sum);
                        }
                        out[o * rows + r] = sum;
                    }
                }
                return;
            }
            // Prefill: widen four weight rows once, then sweep every activation row.
            let mut scratch = vec![0f32; 4 * in_dim];
            let mut o = 0;
            while o < n {
                let block = (n - o).min(4);
                for (dst, &src) in scratch.iter_mut().zip(&w[o * in_dim..(o + block) * in_dim]) {
                    *dst = widen(src);
                }
                for r in 0..rows {
                    let x = &xs[r * in_dim..(r + 1) * in_dim];
                    let mut acc = [[0f32; 8]; 4];
                    for b in 0..block {
                        let wr = &scratch[b * in_dim..(b + 1) * in_dim];
                        for (a, c) in wr.chunks_exact(8).zip(x.chunks_exact(8)) {
                            for l in 0..8 {
                                acc[b][l] = fma(a[l], c[l], acc[b][l]);
                            }
                        }
                    }
                    let tail = in_dim - in_dim % 8;
                    for b in 0..block {
                        let wr = &scratch[b * in_dim..(b + 1) * in_dim];
                        let mut sum: f32 = acc[b].iter().sum();
                        for i in tail..in_dim {
                            sum = fma(wr[i], x[i], sum);
                        }
                        out[(o + b) * rows + r] = sum;
                    }
                }
                o += block;
            }
        }
    };
}

kernels!(compute_portable, |a, b, c| a * b + c);
#[cfg(target_arch = "x86_64")]
kernels!(compute_avx2, f32::mul_add, #[target_feature(enable = "avx2,fma")]);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_an_f32_matmul_on_bf16_rounded_weights() {
        let dev = Device::Cpu;
        for (rows, in_dim, out_dim) in [(1, 37, 21), (2, 64, 40), (7, 100, 9), (33, 19, 70)] {
            let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, rows, in_dim), &dev).unwrap();
            let lin = Bf16Linear::new(&w, Some(&b)).unwrap();
            let got = lin.forward(&x).unwrap();
            let w_rounded = w
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let want = x
                .broadcast_matmul(&w_rounded.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let diff = crate::model::max_abs(&(got - want).unwrap());
            assert!(diff < 1e-3, "{rows}x{in_dim}x{out_dim}");
            let portable = {
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut out = vec![0f32; out_dim * rows];
                compute_portable(&lin.weight, &xs, &mut out, in_dim, rows);
                out
            };
            let mut fast = vec![0f32; out_dim * rows];
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            compute(&lin.weight, &xs, &mut fast, in_dim, rows);
            for (a, b) in portable.iter().zip(&fast) {
                assert!((a - b).abs() < 1e-3);
            }
        }
    }
}
