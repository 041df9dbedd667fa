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

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Weight rows per work item handed to a thread.
const ROWS_PER_TASK: usize = 16;

/// From this many activation rows on (prefill), widening the weights once and running candle's f32
/// gemm beats our dot-product kernel: the conversion is amortised over the rows, and gemm's blocking
/// uses the FMA units far better.
const GEMM_ROWS: usize = 8;

/// Bytes that outlive the weights pointing into them: a mapped checkpoint file, or the binary's own.
pub enum Backing {
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
}

impl Backing {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Static(b) => b,
        }
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backing({} bytes)", self.bytes().len())
    }
}

/// The bf16 bits of a weight matrix: owned, or read in place from a checkpoint (no copy: the
/// pages are the file's, shared with the page cache and never duplicated in memory).
#[derive(Debug, Clone)]
enum Bits {
    Owned(Arc<[u16]>),
    InPlace {
        backing: Arc<Backing>,
        range: Range<usize>,
    },
}

impl Bits {
    fn get(&self) -> &[u16] {
        match self {
            Self::Owned(v) => v,
            // The range was checked to cast when this was made (`Bf16Linear::in_place`), and the
            // backing bytes never change.
            Self::InPlace { backing, range } => backing
                .bytes()
                .get(range.clone())
                .and_then(|b| bytemuck::try_cast_slice(b).ok())
                .unwrap_or_default(),
        }
    }
}

/// `y = x W^T + b` with `W` held as bf16.
#[derive(Debug, Clone)]
pub struct Bf16Linear {
    weight: Bits,
    bias: Option<Vec<f32>>,
    in_dim: usize,
    out_dim: usize,
}

pub(crate) fn to_bf16_bits(t: &Tensor) -> Result<Vec<u16>> {
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
            weight: Bits::Owned(to_bf16_bits(weight)?.into()),
            bias,
            in_dim,
            out_dim,
        })
    }

    /// A layer over bf16 bits already in memory (shared, not copied): `(out_dim, in_dim)` row-major.
    pub fn from_bits(
        bits: Arc<[u16]>,
        (out_dim, in_dim): (usize, usize),
        bias: Option<&Tensor>,
    ) -> Result<Self> {
        if bits.len() != out_dim * in_dim {
            candle_core::bail!(
                "{} bf16 values for a ({out_dim}, {in_dim}) matrix",
                bits.len()
            );
        }
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        Ok(Self {
            weight: Bits::Owned(bits),
            bias,
            in_dim,
            out_dim,
        })
    }

    /// A layer whose `(out_dim, in_dim)` little-endian bf16 weights are `backing[range]`, read in
    /// place; `None` when they cannot be (a length that does not match, bytes not aligned for
    /// `u16`, a big-endian machine), and the caller copies them instead.
    pub fn in_place(
        backing: &Arc<Backing>,
        range: Range<usize>,
        (out_dim, in_dim): (usize, usize),
        bias: Option<&Tensor>,
    ) -> Result<Option<Self>> {
        let fits = cfg!(target_endian = "little")
            && backing
                .bytes()
                .get(range.clone())
                .and_then(|b| bytemuck::try_cast_slice::<u8, u16>(b).ok())
                .is_some_and(|w| w.len() == out_dim * in_dim);
        if !fits {
            return Ok(None);
        }
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        Ok(Some(Self {
            weight: Bits::InPlace {
                backing: Arc::clone(backing),
                range,
            },
            bias,
            in_dim,
            out_dim,
        }))
    }

    /// Rows `ids` of the weight matrix widened to f32, `(ids.len(), in_dim)`: the lookup of an
    /// embedding table that shares its storage with the tied head.
    pub fn rows(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        let w = self.weight.get();
        let mut out = Vec::with_capacity(ids.len() * self.in_dim);
        for &id in ids {
            let start = id as usize * self.in_dim;
            let Some(row) = w.get(start..start + self.in_dim) else {
                candle_core::bail!("token id {id} is outside the {} rows", self.out_dim);
            };
            out.extend(row.iter().map(|&b| widen(b)));
        }
        Tensor::from_vec(out, (ids.len(), self.in_dim), device)
    }

    /// `x` of shape `(..., in)` in any float dtype; returns `(..., out)` in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (lead, rows) = input_rows(x, self.in_dim, "bf16")?;
        if rows >= GEMM_ROWS {
            return self.forward_gemm(x);
        }
        let mut out_t = vec![0f32; self.out_dim * rows];
        with_values(x, |xs| {
            out_t
                .par_chunks_mut(ROWS_PER_TASK * rows)
                .enumerate()
                .for_each(|(task, chunk)| {
                    let first = task * ROWS_PER_TASK;
                    let n = chunk.len() / rows.max(1);
                    let w = &self.weight.get()[first * self.in_dim..(first + n) * self.in_dim];
                    compute(w, xs, chunk, self.in_dim, rows);
                })
        })?;
        // out_t is (out, rows); the caller wants (rows, out).
        let out = if rows == 1 {
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
        output(out, self.bias.as_deref(), &lead, self.out_dim, x.device())
    }
}

/// The leading dimensions of a linear layer's input `x` (`(..., in_dim)`) and their product, the
/// rows to compute; an error names the layer (`what`) when the last dimension is not `in_dim`.
pub(crate) fn input_rows(x: &Tensor, in_dim: usize, what: &str) -> Result<(Vec<usize>, usize)> {
    let dims = x.dims();
    let Some((&last, lead)) = dims.split_last() else {
        candle_core::bail!("{what} linear on a scalar")
    };
    if last != in_dim {
        candle_core::bail!("{what} linear expects {in_dim} inputs, got {last}");
    }
    Ok((lead.to_vec(), lead.iter().product()))
}

/// Calls `f` with `x`'s values as one f32 slice, in place where `x` is a contiguous f32 tensor in
/// memory (a layer's input usually is; a long prompt's MLP input is tens of megabytes), else on a
/// copy.
pub(crate) fn with_values<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if x.dtype() == DType::F32 {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[a..b]));
        }
    }
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&xs))
}

/// A linear layer's `(rows, out_dim)` products with `bias` added, shaped `(...lead, out_dim)`.
pub(crate) fn output(
    mut out: Vec<f32>,
    bias: Option<&[f32]>,
    lead: &[usize],
    out_dim: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(out_dim) {
            row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
    }
    let mut shape = lead.to_vec();
    shape.push(out_dim);
    Tensor::from_vec(out, shape, device)
}

impl Bf16Linear {
    fn forward_gemm(&self, x: &Tensor) -> Result<Tensor> {
        let bits = self.weight.get();
        let mut w = vec![0f32; bits.len()];
        w.par_chunks_mut(1 << 16)
            .zip(bits.par_chunks(1 << 16))
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

/// Whether `INFILL_KERNELS` (`avx2` or `portable`, as for the quantized kernels) leaves this
/// instruction-set level to the kernels, read once: for comparing kernels on one machine.
#[cfg(target_arch = "x86_64")]
fn allowed(level: &str) -> bool {
    static CAP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let cap = CAP.get_or_init(|| std::env::var("INFILL_KERNELS").unwrap_or_default());
    match cap.as_str() {
        "portable" => false,
        "avx2" => level == "avx2",
        _ => true,
    }
}

/// Fills `out` (`n` weight rows x `rows` activation rows) with dot products.
fn compute(w: &[u16], xs: &[f32], out: &mut [f32], in_dim: usize, rows: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if allowed("avx512")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            if rows <= 2 {
                // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
                #[allow(unsafe_code)]
                unsafe {
                    decode_avx512(w, xs, out, in_dim, rows)
                };
                return;
            }
            // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above), which is the
            // only requirement `compute_avx512` adds to the portable version.
            #[allow(unsafe_code)]
            unsafe {
                compute_avx512(w, xs, out, in_dim, rows)
            };
            return;
        }
        if allowed("avx2")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            if rows <= 2 {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                #[allow(unsafe_code)]
                unsafe {
                    decode_avx2(w, xs, out, in_dim, rows)
                };
                return;
            }
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

/// Weights (bf16 values) a row's stream is prefetched ahead of its loads: the hardware's
/// prefetchers alone, on four interleaved streams, left decoding well short of the bandwidth.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 512;

/// Decoding (one or two activation rows) with AVX-512: four weight rows at a time, each activation
/// vector loaded once for the four, two accumulators a row (eight FMA chains in flight where one
/// would wait on its latency), and each row's weights prefetched 1 KB ahead.
///
/// # Safety
/// The processor must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn decode_avx512(w: &[u16], xs: &[f32], out: &mut [f32], in_dim: usize, rows: usize) {
    use std::arch::x86_64::*;
    let n = w.len() / in_dim;
    assert!(xs.len() >= rows * in_dim && out.len() >= n * rows && w.len() >= n * in_dim);
    let whole = in_dim - in_dim % 32;
    // 16 bf16 values from `at` widened to f32: a zero-extension and a 16-bit shift.
    // SAFETY (for each use below): `at` points at 16 values inside `w`.
    let widen16 = |at: *const u16| unsafe {
        let bits = _mm256_loadu_si256(at.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    };
    let mut o = 0;
    while o < n {
        let block = (n - o).min(4);
        // Rows past the matrix's last repeat it; their sums are not stored.
        let rows_at: [usize; 4] = std::array::from_fn(|b| (o + b.min(block - 1)) * in_dim);
        for r in 0..rows {
            let x = &xs[r * in_dim..(r + 1) * in_dim];
            // SAFETY: every load below is inside `w` (rows of `in_dim`, `i + 32 <= whole`) or
            // `x`; the prefetched addresses are only hints and are never dereferenced.
            let sums = unsafe {
                let mut acc = [[_mm512_setzero_ps(); 2]; 4];
                let mut i = 0;
                while i < whole {
                    let xa = _mm512_loadu_ps(x.as_ptr().add(i));
                    let xb = _mm512_loadu_ps(x.as_ptr().add(i + 16));
                    for (acc, &at) in acc.iter_mut().zip(&rows_at) {
                        let p = w.as_ptr().add(at + i);
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD).cast());
                        acc[0] = _mm512_fmadd_ps(widen16(p), xa, acc[0]);
                        acc[1] = _mm512_fmadd_ps(widen16(p.add(16)), xb, acc[1]);
                    }
                    i += 32;
                }
                acc.map(|[a, b]| _mm512_reduce_add_ps(_mm512_add_ps(a, b)))
            };
            for (b, &at) in rows_at.iter().enumerate().take(block) {
                let tail = w[at + whole..at + in_dim].iter().zip(&x[whole..]);
                let sum = tail.fold(sums[b], |s, (&w, &x)| widen(w).mul_add(x, s));
                out[(o + b) * rows + r] = sum;
            }
        }
        o += block;
    }
}

/// [`decode_avx512`] with AVX2: the same four rows and eight chains, 8 lanes wide.
///
/// # Safety
/// The processor must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_avx2(w: &[u16], xs: &[f32], out: &mut [f32], in_dim: usize, rows: usize) {
    use std::arch::x86_64::*;
    let n = w.len() / in_dim;
    assert!(xs.len() >= rows * in_dim && out.len() >= n * rows && w.len() >= n * in_dim);
    let whole = in_dim - in_dim % 16;
    // 8 bf16 values from `at` widened to f32.
    // SAFETY (for each use below): `at` points at 8 values inside `w`.
    let widen8 = |at: *const u16| unsafe {
        let bits = _mm_loadu_si128(at.cast());
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    };
    let mut o = 0;
    while o < n {
        let block = (n - o).min(4);
        // Rows past the matrix's last repeat it; their sums are not stored.
        let rows_at: [usize; 4] = std::array::from_fn(|b| (o + b.min(block - 1)) * in_dim);
        for r in 0..rows {
            let x = &xs[r * in_dim..(r + 1) * in_dim];
            // SAFETY: every load below is inside `w` (rows of `in_dim`, `i + 16 <= whole`) or
            // `x`; the prefetched addresses are only hints and are never dereferenced.
            let sums = unsafe {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                let mut i = 0;
                while i < whole {
                    let xa = _mm256_loadu_ps(x.as_ptr().add(i));
                    let xb = _mm256_loadu_ps(x.as_ptr().add(i + 8));
                    for (acc, &at) in acc.iter_mut().zip(&rows_at) {
                        let p = w.as_ptr().add(at + i);
                        if i % 32 == 0 {
                            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD).cast());
                        }
                        acc[0] = _mm256_fmadd_ps(widen8(p), xa, acc[0]);
                        acc[1] = _mm256_fmadd_ps(widen8(p.add(8)), xb, acc[1]);
                    }
                    i += 16;
                }
                acc.map(|[a, b]| {
                    let v = _mm256_add_ps(a, b);
                    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
                    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
                })
            };
            for (b, &at) in rows_at.iter().enumerate().take(block) {
                let tail = w[at + whole..at + in_dim].iter().zip(&x[whole..]);
                let sum = tail.fold(sums[b], |s, (&w, &x)| widen(w).mul_add(x, s));
                out[(o + b) * rows + r] = sum;
            }
        }
        o += block;
    }
}

kernels!(compute_portable, |a, b, c| a * b + c);
#[cfg(target_arch = "x86_64")]
kernels!(compute_avx2, f32::mul_add, #[target_feature(enable = "avx2,fma")]);
#[cfg(target_arch = "x86_64")]
kernels!(compute_avx512, f32::mul_add, #[target_feature(enable = "avx512f,avx2,fma")]);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Weights read in place from a checkpoint's bytes compute exactly what copied ones do, for
    /// decoding and prefill and as embedding rows; bytes that cannot be read as `u16` in place
    /// (odd offset, wrong length) are refused so the caller copies them.
    #[test]
    fn weights_read_in_place_equal_copied_ones() {
        let dev = Device::Cpu;
        let (out_dim, in_dim) = (24, 40);
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
        let bits = to_bf16_bits(&w).unwrap();
        // A header-like prefix of 8 bytes, then the matrix, then one stray byte.
        let mut file = vec![7u8; 8];
        file.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
        file.push(0);
        let file: &'static [u8] = Box::leak(file.into_boxed_slice());
        let backing = Arc::new(Backing::Static(file));
        let copied = Bf16Linear::new(&w, None).unwrap();
        let len = 2 * out_dim * in_dim;
        let mapped = Bf16Linear::in_place(&backing, 8..8 + len, (out_dim, in_dim), None)
            .unwrap()
            .expect("an aligned range of the right length is read in place");
        let values = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for rows in [1, 2, 9] {
            let x = Tensor::randn(0f32, 1.0, (rows, in_dim), &dev).unwrap();
            let (a, b) = (copied.forward(&x).unwrap(), mapped.forward(&x).unwrap());
            assert_eq!(values(a), values(b), "{rows} rows");
        }
        let ids = [3u32, 0, 23];
        let rows = |l: &Bf16Linear| values(l.rows(&ids, &dev).unwrap());
        assert_eq!(rows(&copied), rows(&mapped));
        assert!(mapped.rows(&[24], &dev).is_err(), "a row past the table");
        let refused = |range: Range<usize>| {
            Bf16Linear::in_place(&backing, range, (out_dim, in_dim), None)
                .unwrap()
                .is_none()
        };
        if (file.as_ptr() as usize).is_multiple_of(2) {
            assert!(refused(9..9 + len), "odd offset");
        }
        assert!(refused(8..8 + len - 2), "short");
        assert!(refused(8..file.len() + 2), "past the end");
    }

    #[test]
    fn matches_an_f32_matmul_on_bf16_rounded_weights() {
        let dev = Device::Cpu;
        for (rows, in_dim, out_dim) in [
            (1, 37, 21),
            (2, 64, 40),
            (1, 75, 5),
            (2, 300, 13),
            (7, 100, 9),
            (33, 19, 70),
        ] {
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
                compute_portable(lin.weight.get(), &xs, &mut out, in_dim, rows);
                out
            };
            let mut fast = vec![0f32; out_dim * rows];
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            compute(lin.weight.get(), &xs, &mut fast, in_dim, rows);
            for (a, b) in portable.iter().zip(&fast) {
                assert!((a - b).abs() < 1e-3);
            }
            // Each decoding kernel this processor runs, whichever `compute` chose.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            if rows <= 2 {
                use std::arch::is_x86_feature_detected as has;
                type Kernel = unsafe fn(&[u16], &[f32], &mut [f32], usize, usize);
                let mut kernels: Vec<Kernel> = Vec::new();
                if has!("avx2") && has!("fma") {
                    kernels.push(decode_avx2);
                }
                if has!("avx512f") && has!("avx2") && has!("fma") {
                    kernels.push(decode_avx512);
                }
                for kernel in kernels {
                    let mut got = vec![0f32; out_dim * rows];
                    // SAFETY: the processor has the kernel's features (checked above).
                    unsafe { kernel(lin.weight.get(), &xs, &mut got, in_dim, rows) };
                    for (a, b) in portable.iter().zip(&got) {
                        assert!(
                            (a - b).abs() < 1e-3,
                            "{rows}x{in_dim}x{out_dim}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
