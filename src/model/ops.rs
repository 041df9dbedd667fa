//! Fused CPU ops with their own backward, for training.
//!
//! Composed from primitives, a softmax is five passes over its input forward and about ten backward,
//! each allocating a fresh tensor; cross-entropy over a vocabulary of logits is worse. These ops do
//! one or two passes each way, in parallel over rows, and candle's autograd calls their `bwd`. Each is
//! checked against the composed version (values and gradients) in the tests below.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => data
            .get(start..end)
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: bad layout"))),
        None => candle_core::bail!("{op}: expects a contiguous input"),
    }
}

fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

/// Applies `f(out_row, in_row)` to every row (last dimension) of a contiguous f32 input, in parallel.
fn map_rows(
    op: &str,
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(&mut [f32], &[f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous_f32(storage, layout, op)?;
    let n = last_dim(layout);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(o, row)| f(o, row));
    Ok((CpuStorage::F32(out), layout.shape().clone()))
}

/// Applies `f(out_row, a_row, b_row)` to the rows of two contiguous f32 inputs of one shape.
fn map_rows2(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (a, b) = (contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?);
    if a.len() != b.len() {
        candle_core::bail!("{op}: inputs of different sizes");
    }
    let n = last_dim(l1);
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(n)
        .zip(a.par_chunks(n).zip(b.par_chunks(n)))
        .for_each(|(o, (ar, br))| f(o, ar, br));
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// Applies `f(out_row, a_row, b_row, c_row)` to the rows of three contiguous f32 inputs of one shape.
fn map_rows3(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    f: impl Fn(&mut [f32], &[f32], &[f32], &[f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (a, b, c) = (
        contiguous_f32(s1, l1, op)?,
        contiguous_f32(s2, l2, op)?,
        contiguous_f32(s3, l3, op)?,
    );
    if a.len() != b.len() || a.len() != c.len() {
        candle_core::bail!("{op}: inputs of different sizes");
    }
    let n = last_dim(l1);
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(n)
        .zip(a.par_chunks(n).zip(b.par_chunks(n).zip(c.par_chunks(n))))
        .for_each(|(o, (ar, (br, cr)))| f(o, ar, br, cr));
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// The logistic function in arithmetic that vectorizes (no call to libm's `expf`):
/// `e = e^-|x|` is in `(0, 1]`, and `sigmoid(x)` is `1 / (1 + e)` for `x >= 0`, `e / (1 + e)`
/// below, so the exponent never overflows. Within a few ulps of `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

/// `out = silu(gate) * up`, one row, and d/d gate `grad * up * sigmoid(g) * (1 + g * (1 -
/// sigmoid(g)))`: a kernel for each instruction set, chosen at run time ([`swiglu_kernels`]).
#[derive(Clone, Copy)]
struct SwiGluKernels {
    /// `(out, gate, up)`.
    forward: fn(&mut [f32], &[f32], &[f32]),
    /// `(out, gate, up, grad)`.
    grad_gate: GradGate,
}

type GradGate = fn(&mut [f32], &[f32], &[f32], &[f32]);

macro_rules! swiglu_kernels {
    ($forward:ident, $grad_gate:ident $(, #[$attr:meta])?) => {
        $(#[$attr])?
        fn $forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        }

        $(#[$attr])?
        fn $grad_gate(out: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) {
            for (((o, &g), &u), &d) in out.iter_mut().zip(gate).zip(up).zip(grad) {
                let s = sigmoid(g);
                *o = d * u * s * (1.0 + g * (1.0 - s));
            }
        }
    };
}

swiglu_kernels!(swiglu_portable, swiglu_grad_gate_portable);
#[cfg(target_arch = "x86_64")]
swiglu_kernels!(swiglu_avx2_body, swiglu_grad_gate_avx2_body, #[target_feature(enable = "avx2,fma")]);

#[cfg(target_arch = "x86_64")]
fn swiglu_avx2(out: &mut [f32], gate: &[f32], up: &[f32]) {
    // SAFETY: chosen by `swiglu_kernels` only where the processor has AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        swiglu_avx2_body(out, gate, up)
    }
}

#[cfg(target_arch = "x86_64")]
fn swiglu_grad_gate_avx2(out: &mut [f32], gate: &[f32], up: &[f32], grad: &[f32]) {
    // SAFETY: chosen by `swiglu_kernels` only where the processor has AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        swiglu_grad_gate_avx2_body(out, gate, up, grad)
    }
}

/// The SwiGLU kernels for this processor: AVX2 where it has it, else portable.
fn swiglu_kernels() -> SwiGluKernels {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return SwiGluKernels {
            forward: swiglu_avx2,
            grad_gate: swiglu_grad_gate_avx2,
        };
    }
    SwiGluKernels {
        forward: swiglu_portable,
        grad_gate: swiglu_grad_gate_portable,
    }
}

/// The MLP's activation `silu(gate) * up`. Composed, the product and silu's backward are about a
/// dozen passes over an (tokens, intermediate) tensor per layer, each allocating; fused, one pass
/// forward and two backward.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "infill-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // Inference's op computes the same, on any evenly strided rows.
        SiluMul.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gate, up, grad) = (gate.contiguous()?, up.contiguous()?, grad.contiguous()?);
        let d_gate = gate.apply_op3_no_bwd(&up, &grad, &SwiGluGradGate)?;
        // d/d up is `grad * silu(gate)`: this op's own forward.
        let d_up = gate.apply_op2_no_bwd(&grad, &SwiGlu)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// d/d gate: `grad * up * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`.
struct SwiGluGradGate;

impl candle_core::CustomOp3 for SwiGluGradGate {
    fn name(&self) -> &'static str {
        "infill-swiglu-grad-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_rows3(
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
            swiglu_kernels().grad_gate,
        )
    }
}

/// `silu(gate) * up`, differentiable, in one pass each way.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Where the rows of an f32 view lie: `rows` rows of `n` values, row `r` at `start + r * stride`.
/// `None` unless the last dimension is contiguous and the others fold into one evenly strided
/// dimension (a contiguous tensor, or a `narrow` of its last dimension).
fn strided_rows(layout: &Layout) -> Option<(usize, usize, usize, usize)> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let (&n, lead) = dims.split_last()?;
    if n > 1 && strides.last() != Some(&1) {
        return None;
    }
    let rows = lead.iter().product::<usize>();
    // The stride of the innermost leading dimension that is longer than 1 is the row stride;
    // each one further out must step over all the rows inside it.
    let mut stride = None;
    let mut inner_rows = 1;
    for (&dim, &step) in lead.iter().zip(strides).rev() {
        if dim == 1 {
            continue;
        }
        match stride {
            None => stride = Some(step),
            Some(s) if step == s * inner_rows => {}
            Some(_) => return None,
        }
        inner_rows *= dim;
    }
    Some((layout.start_offset(), stride.unwrap_or(n), rows, n))
}

/// Inference's `silu(gate) * up` (no backward): gate and up may be `narrow`s of one joint
/// product (the two halves of each row), read in place.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "infill-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(gate), CpuStorage::F32(up)) = (s1, s2) else {
            candle_core::bail!("{}: expects f32", self.name())
        };
        let view = |data: &[f32], layout: &Layout| -> Result<(usize, usize)> {
            let (start, stride, rows, n) = strided_rows(layout).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: rows not evenly strided", self.name()))
            })?;
            let end = start + rows.saturating_sub(1) * stride + n;
            if rows > 0 && end > data.len() {
                candle_core::bail!("{}: bad layout", self.name());
            }
            Ok((start, stride))
        };
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: gate and up of different shapes", self.name());
        }
        let ((g0, gs), (u0, us)) = (view(gate, l1)?, view(up, l2)?);
        let n = last_dim(l1);
        let forward = swiglu_kernels().forward;
        let mut out = vec![0f32; l1.shape().elem_count()];
        out.par_chunks_mut(n).enumerate().for_each(|(r, o)| {
            forward(o, &gate[g0 + r * gs..][..n], &up[u0 + r * us..][..n]);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `silu(gate) * up` for inference on the CPU, in one pass, reading two halves of a joint
/// gate-up product where they lie (f32 only).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.apply_op2_no_bwd(up, &SiluMul)
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "infill-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_rows(self.name(), storage, layout, |out, row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        res.contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)
            .map(Some)
    }
}

/// d softmax: `y * (g - sum(g * y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "infill-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_rows2(self.name(), (s1, l1), (s2, l2), |out, yr, gr| {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &gv) in out.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        })
    }
}

/// Softmax over the last dimension of an f32 tensor, differentiable, in one pass each way.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// `e^x` for `x <= 0` (softmax's exponents after the maximum is subtracted) in plain arithmetic
/// that vectorizes, where libm's `expf` is a call per value: `2^n * e^f` with `n` whole, the bits
/// of `2^n` built directly, `f = x - n ln 2` taken in two parts (Cody and Waite's split of ln 2,
/// so `f` keeps its precision for large `n`) and `e^f` (`|f| <= ln 2 / 2`) from its Taylor
/// polynomial to the 7th power: within 2 ulps of `expf`. Below -87 it gives `e^-87` (1.6e-38),
/// which no softmax can tell from 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    // Rounds x / ln 2 to the nearest whole number (truncation moves toward zero, and x <= 0).
    let n = (x * std::f32::consts::LOG2_E - 0.5) as i32;
    let f = (x - n as f32 * LN2_HI) - n as f32 * LN2_LO;
    let p = 1.0
        + f * (1.0
            + f * (1.0 / 2.0
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f / 5040.0))))));
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// `out[i] = e^(scale * (row[i] - max(row)))`; returns their sum.
type ExpKernel = fn(&[f32], f32, &mut [f32]) -> f32;

macro_rules! exp_kernel {
    ($name:ident $(, #[$attr:meta])?) => {
        $(#[$attr])?
        fn $name(row: &[f32], scale: f32, out: &mut [f32]) -> f32 {
            // Eight running maxima and sums: one in order would keep each loop from vectorizing.
            let mut lanes = [f32::NEG_INFINITY; 8];
            let chunks = row.chunks_exact(8);
            let tail = chunks.remainder();
            for c in chunks {
                for (m, &v) in lanes.iter_mut().zip(c) {
                    *m = if v > *m { v } else { *m };
                }
            }
            let max = tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max) * scale;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = exp_nonpositive(v * scale - max);
            }
            let mut sums = [0f32; 8];
            let chunks = out.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for (s, &v) in sums.iter_mut().zip(c) {
                    *s += v;
                }
            }
            sums.iter().sum::<f32>() + tail
        }
    };
}

exp_kernel!(exps_portable);
#[cfg(target_arch = "x86_64")]
exp_kernel!(exps_avx2_body, #[target_feature(enable = "avx2,fma")]);

#[cfg(target_arch = "x86_64")]
fn exps_avx2(row: &[f32], scale: f32, out: &mut [f32]) -> f32 {
    // SAFETY: chosen by `exp_kernel` only where the processor has AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        exps_avx2_body(row, scale, out)
    }
}

/// The exponent kernel for this processor: AVX2 where it has it (8 values at a time), else
/// portable.
fn exp_kernel() -> ExpKernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return exps_avx2;
    }
    exps_portable
}

/// Causal attention weights from raw scores: `softmax(scale * x)` over the keys a query may see.
/// Rows are queries in blocks of `t` (query `i` of a block sees keys `0..=i + offset`, the rest get
/// weight 0), the last dimension is the keys. One op instead of a scale, a broadcast mask add and a
/// softmax, each allocating a tensor the size of the attention scores, forward and backward.
struct CausalSoftmax {
    scale: f32,
    t: usize,
    offset: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "infill-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let n = last_dim(layout);
        // Every element is written below, once: a zeroed allocation would write a long prompt's
        // scores (hundreds of megabytes a layer) one more time, on one thread.
        let mut out: Vec<f32> = Vec::with_capacity(x.len());
        let exps = exp_kernel();
        out.spare_capacity_mut()
            .par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (r, (o, row))| {
                let visible = (r % self.t.max(1) + self.offset + 1).min(n);
                scratch.resize(visible, 0.0);
                let sum = exps(&row[..visible], self.scale, scratch);
                let inv = 1.0 / sum;
                let (shown, masked) = o.split_at_mut(visible);
                for (o, &e) in shown.iter_mut().zip(scratch.iter()) {
                    o.write(e * inv);
                }
                for o in masked {
                    o.write(0.0);
                }
            });
        // SAFETY: the loop above wrote every one of the `x.len()` elements (each row's visible
        // part and the rest), and the capacity is `x.len()`.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(x.len())
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // Masked weights are 0, so their gradient is 0 too.
        let g = res
            .contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?;
        (g * f64::from(self.scale)).map(Some)
    }
}

/// Differentiable causal attention weights: `softmax(scale * scores + causal mask)`, where `scores`
/// is `(..., rows, keys)` with rows in blocks of `t` queries and query `i` seeing keys
/// `0..=i + offset` (`offset` = keys already cached before these queries).
pub fn causal_softmax(scores: &Tensor, scale: f64, t: usize, offset: usize) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
        t,
        offset,
    })
}

/// A decoded token's attention, in one pass over the keys and values: `q` is `(batch, kv_heads,
/// rows, d)` (the query heads that share a KV head, folded into rows, as the model folds them),
/// `k` and `v` are `(batch, kv_heads, keys, d)` in any layout whose `d` values lie together (the
/// KV cache's views of its buffers), all f32, and every row sees every key. Two matrix products
/// of a few rows and a softmax over the same keys made a 0.5B model 1,000 tokens deep decode 36
/// tokens/s; this, 46.
struct DecodeAttention {
    scale: f32,
}

/// Where one head's keys (or values) lie: position `j`'s `d` values at `start + j * stride`.
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
    d: usize,
}

impl<'a> HeadRows<'a> {
    #[inline(always)]
    fn row(&self, j: usize) -> &'a [f32] {
        &self.data[self.start + j * self.stride..][..self.d]
    }
}

/// Head `(b, h)` of a 4-D f32 tensor, after checking that its last dimension is contiguous and
/// every row its layout addresses lies inside the storage.
fn heads_4d<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<impl Fn(usize, usize) -> HeadRows<'a> + Sync> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32")
    };
    let (dims, stride, start) = (layout.dims(), layout.stride(), layout.start_offset());
    if dims.len() != 4 || stride[3] != 1 || dims.contains(&0) {
        candle_core::bail!("{op}: expects 4 non-empty dimensions, the last contiguous");
    }
    let last = start + (0..3).map(|i| (dims[i] - 1) * stride[i]).sum::<usize>() + dims[3];
    if last > data.len() {
        candle_core::bail!("{op}: a layout past its storage");
    }
    let (s0, s1, s2, d) = (stride[0], stride[1], stride[2], dims[3]);
    let data: &'a [f32] = data;
    Ok(move |b: usize, h: usize| HeadRows {
        data,
        start: start + b * s0 + h * s1,
        stride: s2,
        d,
    })
}

/// One KV head's attention: `q` its query rows of `d` values, `k` and `v` its `keys` positions;
/// `scratch` for the scores and weights; `out` its rows' results.
#[inline(always)]
fn head_attention(
    q: &[f32],
    (k, v): (HeadRows, HeadRows),
    keys: usize,
    (scale, exps): (f32, ExpKernel),
    scratch: &mut (Vec<f32>, Vec<f32>),
    out: &mut [f32],
) {
    let d = k.d;
    let rows = q.len() / d;
    let (scores, probs) = scratch;
    scores.resize(rows * keys, 0.0);
    probs.resize(rows * keys, 0.0);
    let whole = d - d % 8;
    // Scores: each key loaded once for up to eight query rows, whose eight sums a row are
    // independent chains (one chain a row waited on each addition's latency).
    for first in (0..rows).step_by(8) {
        let n = (rows - first).min(8);
        // Rows past the last repeat it; their sums are not stored.
        let q_rows: [&[f32]; 8] = std::array::from_fn(|r| &q[(first + r.min(n - 1)) * d..][..d]);
        for j in 0..keys {
            let key = k.row(j);
            let mut lanes = [[0f32; 8]; 8];
            for c in (0..whole).step_by(8) {
                let kc = &key[c..c + 8];
                for (lanes, q) in lanes.iter_mut().zip(&q_rows) {
                    let qc = &q[c..c + 8];
                    for l in 0..8 {
                        lanes[l] += qc[l] * kc[l];
                    }
                }
            }
            for (r, (lanes, q)) in lanes.iter().zip(&q_rows).enumerate().take(n) {
                let rest: f32 = q[whole..]
                    .iter()
                    .zip(&key[whole..])
                    .map(|(a, b)| a * b)
                    .sum();
                scores[(first + r) * keys + j] = lanes.iter().sum::<f32>() + rest;
            }
        }
    }
    for (r, out) in out.chunks_exact_mut(d).enumerate() {
        let probs = &mut probs[r * keys..][..keys];
        let inv = 1.0 / exps(&scores[r * keys..][..keys], scale, probs);
        // The weighted sum of the values, 32 of a row's outputs at a time in four independent
        // chains held in registers across the keys.
        for c in (0..whole).step_by(32) {
            let width = (whole - c).min(32);
            let mut acc = [0f32; 32];
            for (j, &p) in probs.iter().enumerate() {
                let value = &v.row(j)[c..c + width];
                for (a, &x) in acc.iter_mut().zip(value) {
                    *a += p * x;
                }
            }
            for (o, a) in out[c..c + width].iter_mut().zip(acc) {
                *o = a * inv;
            }
        }
        for (i, o) in out.iter_mut().enumerate().skip(whole) {
            *o = probs
                .iter()
                .enumerate()
                .map(|(j, &p)| p * v.row(j)[i])
                .sum::<f32>()
                * inv;
        }
    }
}

/// [`head_attention`] compiled for this processor's vector instructions.
type AttentionKernel = fn(
    &[f32],
    (HeadRows, HeadRows),
    usize,
    (f32, ExpKernel),
    &mut (Vec<f32>, Vec<f32>),
    &mut [f32],
);

macro_rules! attention_kernel {
    ($name:ident $(, #[$attr:meta])?) => {
        $(#[$attr])?
        fn $name(
            q: &[f32],
            kv: (HeadRows, HeadRows),
            keys: usize,
            softmax: (f32, ExpKernel),
            scratch: &mut (Vec<f32>, Vec<f32>),
            out: &mut [f32],
        ) {
            head_attention(q, kv, keys, softmax, scratch, out)
        }
    };
}

attention_kernel!(attention_portable);
#[cfg(target_arch = "x86_64")]
attention_kernel!(attention_avx2_body, #[target_feature(enable = "avx2,fma")]);

#[cfg(target_arch = "x86_64")]
fn attention_avx2(
    q: &[f32],
    kv: (HeadRows, HeadRows),
    keys: usize,
    softmax: (f32, ExpKernel),
    scratch: &mut (Vec<f32>, Vec<f32>),
    out: &mut [f32],
) {
    // SAFETY: chosen by `attention_kernel` only where the processor has AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        attention_avx2_body(q, kv, keys, softmax, scratch, out)
    }
}

fn attention_kernel() -> AttentionKernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return attention_avx2;
    }
    attention_portable
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "infill-decode-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let q = contiguous_f32(s1, l1, op)?;
        let (b, heads, rows, d) = l1.shape().dims4()?;
        let (kb, kh, keys, kd) = l2.shape().dims4()?;
        if (kb, kh, kd) != (b, heads, d) || l3.shape() != l2.shape() || rows * d == 0 {
            candle_core::bail!(
                "{op}: queries {:?}, keys {:?}, values {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (k, v) = (heads_4d(s2, l2, op)?, heads_4d(s3, l3, op)?);
        let (kernel, softmax) = (attention_kernel(), (self.scale, exp_kernel()));
        let mut out = vec![0f32; b * heads * rows * d];
        out.par_chunks_mut(rows * d)
            .zip(q.par_chunks(rows * d))
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |scratch, (i, (o, q))| {
                    let (bi, h) = (i / heads, i % heads);
                    kernel(q, (k(bi, h), v(bi, h)), keys, softmax, scratch, o);
                },
            );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// A decoded token's attention output (see [`DecodeAttention`]): `softmax(scale * q k^T) v` for
/// each KV head, `(batch, kv_heads, rows, d)`.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(
        k,
        v,
        &DecodeAttention {
            scale: scale as f32,
        },
    )
}

/// Per-row cross-entropy of `(rows, vocab)` logits against fixed targets.
struct CrossEntropy {
    targets: Arc<Vec<u32>>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "infill-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let v = last_dim(layout);
        let rows = x.len() / v;
        if rows != self.targets.len() {
            candle_core::bail!(
                "cross-entropy: {rows} rows but {} targets",
                self.targets.len()
            );
        }
        let mut loss = vec![0f32; rows];
        loss.par_iter_mut()
            .zip(x.par_chunks(v))
            .zip(self.targets.par_iter())
            .for_each(|((l, row), &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&z| (z - max).exp()).sum();
                *l = max + sum.ln() - row.get(t as usize).copied().unwrap_or(0.0);
            });
        Ok((CpuStorage::F32(loss), Shape::from(rows)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = CrossEntropyGrad {
            targets: self.targets.clone(),
        };
        arg.contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &grad)
            .map(Some)
    }
}

/// d loss_r / d logits_r = (softmax(logits_r) - onehot(t_r)) * g_r.
struct CrossEntropyGrad {
    targets: Arc<Vec<u32>>,
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "infill-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        let v = last_dim(l1);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(g.par_iter().zip(self.targets.par_iter()))
            .for_each(|((out, row), (&gr, &t))| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &z) in out.iter_mut().zip(row) {
                    *o = (z - max).exp();
                    sum += *o;
                }
                let scale = gr / sum;
                out.iter_mut().for_each(|o| *o *= scale);
                if let Some(o) = out.get_mut(t as usize) {
                    *o -= gr;
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Mean cross-entropy of `(rows, vocab)` f32 logits against `targets`, differentiable; the same value
/// as `candle_nn::loss::cross_entropy` without materialising the log-softmax.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let op = CrossEntropy {
        targets: Arc::new(targets.to_vec()),
    };
    logits.contiguous()?.apply_op1(op)?.mean_all()
}

/// Rotary embedding in the rotate-half convention on `(batch, heads, seq, head_dim)`, with `cos` and
/// `sin` of shape `(seq, head_dim / 2)` for the positions at hand. The rotation is orthogonal, so its
/// backward is the same op with `sin` negated.
struct Rope {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    inverse: bool,
}

impl Rope {
    fn apply(&self, x: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        let (d, t) = match dims {
            [_, _, t, d] => (*d, *t),
            _ => candle_core::bail!("rope: expects (batch, heads, seq, head_dim)"),
        };
        let half = d / 2;
        if self.cos.len() != t * half || self.sin.len() != t * half {
            candle_core::bail!("rope: tables do not match {t} positions of {d} dimensions");
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t * d)
            .zip(x.par_chunks(t * d))
            .for_each(|(o, xs)| {
                for (pos, (orow, xrow)) in o.chunks_exact_mut(d).zip(xs.chunks_exact(d)).enumerate()
                {
                    let (cos, sin) = (
                        &self.cos[pos * half..(pos + 1) * half],
                        &self.sin[pos * half..(pos + 1) * half],
                    );
                    let (x1, x2) = xrow.split_at(half);
                    let (o1, o2) = orow.split_at_mut(half);
                    for i in 0..half {
                        let s = sign * sin[i];
                        o1[i] = x1[i] * cos[i] - x2[i] * s;
                        o2[i] = x2[i] * cos[i] + x1[i] * s;
                    }
                }
            });
        Ok(out)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "infill-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        Ok((
            CpuStorage::F32(self.apply(x, layout.dims())?),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        };
        grad_res.contiguous()?.apply_op1(inverse).map(Some)
    }
}

/// Differentiable rotary embedding of an f32 `(batch, heads, seq, head_dim)` tensor.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos: Vec<f32> = cos
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let sin: Vec<f32> = sin
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    x.contiguous()?.apply_op1(Rope {
        cos: Arc::new(cos),
        sin: Arc::new(sin),
        inverse: false,
    })
}

/// RMS normalisation without the weight: `x / sqrt(mean(x^2) + eps)` per row, differentiable.
struct RmsNormalize {
    eps: f32,
}

impl CustomOp1 for RmsNormalize {
    fn name(&self) -> &'static str {
        "infill-rms-normalize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_rows(self.name(), storage, layout, |out, row| {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let r = 1.0 / (ms + self.eps).sqrt();
            out.iter_mut().zip(row).for_each(|(o, &v)| *o = v * r);
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        arg.contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &RmsNormalizeGrad { eps: self.eps })
            .map(Some)
    }
}

/// d (x r) / dx applied to g: `r * (g - xhat * mean(g * xhat))`.
struct RmsNormalizeGrad {
    eps: f32,
}

impl CustomOp2 for RmsNormalizeGrad {
    fn name(&self) -> &'static str {
        "infill-rms-normalize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_rows2(self.name(), (s1, l1), (s2, l2), |out, xr, gr| {
            let n = xr.len() as f32;
            let ms: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n;
            let r = 1.0 / (ms + self.eps).sqrt();
            let dot: f32 = xr.iter().zip(gr).map(|(a, b)| a * r * b).sum::<f32>() / n;
            for ((o, &xv), &gv) in out.iter_mut().zip(xr).zip(gr) {
                *o = r * (gv - xv * r * dot);
            }
        })
    }
}

/// RMSNorm with weight, differentiable: the normalisation and the weight are one fused op each.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let normalized = x
        .contiguous()?
        .apply_op1(RmsNormalize { eps: eps as f32 })?;
    scale_rows(&normalized, weight)
}

/// The vector of a row-broadcast op, checked against the rows it applies to.
fn row_vector<'a>(op: &str, (s, l): (&'a CpuStorage, &Layout), rows: &Layout) -> Result<&'a [f32]> {
    let v = contiguous_f32(s, l, op)?;
    if v.len() != last_dim(rows) {
        candle_core::bail!(
            "{op}: a vector of {} for rows of {}",
            v.len(),
            last_dim(rows)
        );
    }
    Ok(v)
}

/// A row-vector op: `x * v` (an RMSNorm's weight) or `x + v` (a projection's bias) for a vector
/// `v` over the last dimension. One pass forward; backward, the rows' gradient and the vector's as
/// column sums. candle's broadcast multiply and add cost a broadcast pass forward and a generic
/// reduction backward: 6% and 10% of a training step of the default model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowOp {
    Scale,
    Shift,
}

impl CustomOp2 for RowOp {
    fn name(&self) -> &'static str {
        match self {
            Self::Scale => "infill-scale-rows",
            Self::Shift => "infill-shift-rows",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = row_vector(self.name(), (s2, l2), l1)?;
        map_rows(self.name(), s1, l1, |out, row| {
            let pairs = out.iter_mut().zip(row).zip(v);
            match self {
                Self::Scale => pairs.for_each(|((o, &x), &v)| *o = x * v),
                Self::Shift => pairs.for_each(|((o, &x), &v)| *o = x + v),
            }
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (d_x, d_v) = match self {
            Self::Scale => (
                grad.apply_op2_no_bwd(&v.contiguous()?, self)?,
                grad.apply_op2_no_bwd(&x.contiguous()?, &ColumnSums)?,
            ),
            Self::Shift => (grad.clone(), grad.apply_op2_no_bwd(&grad, &ColumnSums)?),
        };
        Ok((Some(d_x), Some(d_v.reshape(v.shape())?)))
    }
}

/// `x * w` for a vector `w` over the last dimension of a contiguous f32 `x`, differentiable.
pub fn scale_rows(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RowOp::Scale)
}

/// `x + b` for a vector `b` over the last dimension of a contiguous f32 `x`, differentiable.
pub fn shift_rows(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, RowOp::Shift)
}

/// Column sums over every row of `a`, each element weighted by `b`'s: `(.., n), (.., n) -> (n)`.
/// Given the same tensor twice it sums `a` itself (the bias gradient needs no product).
struct ColumnSums;

impl CustomOp2 for ColumnSums {
    fn name(&self) -> &'static str {
        "infill-column-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
        );
        if a.len() != b.len() {
            candle_core::bail!("{}: inputs of different sizes", self.name());
        }
        let n = last_dim(l1);
        let mut out = vec![0f32; n];
        if std::ptr::eq(a, b) {
            for row in a.chunks_exact(n) {
                out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
            }
        } else {
            for (ra, rb) in a.chunks_exact(n).zip(b.chunks_exact(n)) {
                for ((o, &x), &y) in out.iter_mut().zip(ra).zip(rb) {
                    *o += x * y;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// The same normalisation from primitives (reference for tests).
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(weight)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    /// A decoded token's attention in one pass equals softmax(scale q k^T) v computed with
    /// candle's ops, for keys and values that are views of larger buffers (as the KV cache holds
    /// them) and for contiguous ones, with several KV heads and batch rows.
    #[test]
    fn decode_attention_equals_the_matrix_products() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        for (b, heads, rows, keys, d) in [(1, 2, 6, 37, 64), (2, 3, 1, 5, 20), (1, 1, 7, 130, 128)]
        {
            let q = Tensor::randn(0f32, 1.0, (b, heads, rows, d), &dev).unwrap();
            let buffer = |seed: f64| {
                Tensor::randn(seed as f32, 1.0, (b, heads, keys + 9, d), &dev)
                    .unwrap()
                    .narrow(2, 0, keys)
                    .unwrap()
            };
            let (k, v) = (buffer(0.0), buffer(0.5));
            let scale = 1.0 / (d as f64).sqrt();
            let want = candle_nn::ops::softmax_last_dim(
                &(q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap(),
            )
            .unwrap()
            .matmul(&v)
            .unwrap();
            for (k, v) in [
                (k.clone(), v.clone()),
                (k.contiguous().unwrap(), v.contiguous().unwrap()),
            ] {
                let got = super::decode_attention(&q, &k, &v, scale).unwrap();
                assert_eq!(got.dims(), want.dims());
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(
                    diff.to_scalar::<f32>().unwrap() < 1e-5,
                    "{b}x{heads}x{rows}x{keys}x{d}"
                );
            }
        }
    }

    /// The vectorizable exponent against libm's, over softmax's range of exponents.
    #[test]
    fn the_fast_exponent_is_within_two_ulps_of_libms() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -90.0 * i as f32 / 200_000.0;
            let (got, want) = (super::exp_nonpositive(x), x.exp());
            if x >= -87.0 {
                worst = worst.max(((got - want) / want).abs() as f64);
            } else {
                assert!(got <= 2e-38, "{x}: {got}");
            }
        }
        assert!(worst < 3e-7, "{worst}");
        assert_eq!(super::exp_nonpositive(0.0), 1.0);
    }

    /// The exponent kernel this processor runs gives the portable one's values and sum, for
    /// rows of every remainder past its vector width.
    #[test]
    fn the_exponent_kernel_equals_the_portable_one() {
        let kernel = super::exp_kernel();
        for n in [1usize, 7, 8, 9, 17, 33, 250] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
            let want_sum = super::exps_portable(&row, 0.7, &mut want);
            let sum = kernel(&row, 0.7, &mut got);
            assert_eq!(got, want, "{n} values");
            assert!((sum - want_sum).abs() <= 1e-6 * want_sum, "{n} values");
        }
    }

    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> bool {
        crate::model::max_abs(&(a - b).unwrap()) < tol
    }

    /// Value and gradient of `f` and `g` agree for a random input.
    fn same_function(
        f: impl Fn(&Tensor) -> Tensor,
        g: impl Fn(&Tensor) -> Tensor,
        shape: (usize, usize),
    ) {
        let x = Var::randn(0f32, 2.0, shape, &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let (a, b) = (f(x.as_tensor()), g(x.as_tensor()));
        assert!(close(&a, &b, 1e-5), "values differ");
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            close(
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
                1e-4
            ),
            "gradients differ"
        );
    }

    #[test]
    fn fused_softmax_matches_the_composed_one() {
        same_function(
            |x| softmax_last_dim(x).unwrap(),
            |x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
            (7, 33),
        );
    }

    #[test]
    fn causal_softmax_matches_scale_mask_and_softmax() {
        // Two blocks of t = 4 queries over 6 keys, 2 of them cached before (offset 2).
        let (t, offset, keys) = (4, 2, 6);
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..keys).map(move |j| {
                    if j <= i + offset {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, keys), &Device::Cpu).unwrap();
        same_function(
            |x| causal_softmax(x, 0.3, t, offset).unwrap(),
            |x| {
                let scaled = (x * 0.3).unwrap().reshape((2, t, keys)).unwrap();
                let masked = scaled
                    .broadcast_add(&mask)
                    .unwrap()
                    .reshape((2 * t, keys))
                    .unwrap();
                candle_nn::ops::softmax(&masked, D::Minus1).unwrap()
            },
            (2 * t, keys),
        );
    }

    /// `scale_rows` and `shift_rows` compute what broadcast multiply and add do, and so do their
    /// gradients for both the rows and the vector.
    #[test]
    fn row_vector_ops_match_broadcast_multiply_and_add() {
        type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let cases: [(Op, Op); 2] = [
            (scale_rows, |x, v| x.broadcast_mul(v)),
            (shift_rows, |x, v| x.broadcast_add(v)),
        ];
        for (fused, broadcast) in cases {
            let x = Var::randn(0f32, 2.0, (2, 3, 7), &Device::Cpu).unwrap();
            let v = Var::randn(0f32, 1.0, 7, &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (2, 3, 7), &Device::Cpu).unwrap();
            let grads = |op: Op| {
                let y = op(x.as_tensor(), v.as_tensor()).unwrap();
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let (gx, gv) = (g.get(x.as_tensor()).unwrap(), g.get(v.as_tensor()).unwrap());
                (y, gx.clone(), gv.clone())
            };
            let (a, b) = (grads(fused), grads(broadcast));
            assert!(close(&a.0, &b.0, 1e-6), "values differ");
            assert!(close(&a.1, &b.1, 1e-5), "row gradients differ");
            assert_eq!(a.2.dims(), [7]);
            assert!(close(&a.2, &b.2, 1e-4), "vector gradients differ");
        }
        // A vector that does not fit the rows is an error, not a panic.
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let v = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(scale_rows(&x, &v).is_err() && shift_rows(&x, &v).is_err());
    }

    #[test]
    fn fused_rms_normalisation_matches_the_composed_one() {
        let ones = Tensor::ones(19, candle_core::DType::F32, &Device::Cpu).unwrap();
        same_function(
            |x| rms_norm(x, &ones, 1e-6).unwrap(),
            |x| rms_norm_composed(x, &ones, 1e-6).unwrap(),
            (5, 19),
        );
    }

    #[test]
    fn fused_rope_matches_candle_nn_and_inverts_in_backward() {
        let (t, d) = (5, 8);
        let cos = Tensor::randn(0f32, 1.0, (t, d / 2), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (t, d / 2), &Device::Cpu).unwrap();
        let x = Var::randn(0f32, 1.0, (2, 3, t, d), &Device::Cpu).unwrap();
        let ours = rope(x.as_tensor(), &cos, &sin).unwrap();
        let theirs = candle_nn::rotary_emb::rope(x.as_tensor(), &cos, &sin).unwrap();
        assert!(close(&ours, &theirs, 1e-6));
        // Gradient against the composed rotate-half formula.
        let composed = |x: &Tensor| {
            let (c, s) = (
                Tensor::cat(&[&cos, &cos], D::Minus1).unwrap(),
                Tensor::cat(&[&sin, &sin], D::Minus1).unwrap(),
            );
            let (x1, x2) = (
                x.narrow(D::Minus1, 0, d / 2).unwrap(),
                x.narrow(D::Minus1, d / 2, d / 2).unwrap(),
            );
            let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            (x.broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap()
        };
        let w = Tensor::randn(0f32, 1.0, (2, 3, t, d), &Device::Cpu).unwrap();
        let ga = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (composed(x.as_tensor()) * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(close(
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
            1e-5
        ));
    }

    #[test]
    fn fused_swiglu_matches_silu_times_up_in_both_inputs() {
        let up = Var::randn(0f32, 1.5, (6, 37), &Device::Cpu).unwrap();
        // Gradient with respect to the gate...
        same_function(
            |g| swiglu(g, up.as_tensor()).unwrap(),
            |g| (g.silu().unwrap() * up.as_tensor()).unwrap(),
            (6, 37),
        );
        // ...and to up.
        let gate = Tensor::randn(0f32, 2.0, (6, 37), &Device::Cpu).unwrap();
        same_function(
            |u| swiglu(&gate, u).unwrap(),
            |u| (gate.silu().unwrap() * u).unwrap(),
            (6, 37),
        );
    }

    /// The vectorizable logistic function against libm's, over the whole range where it is not
    /// 0 or 1 in f32 and beyond, NaN included; and the SwiGLU kernel chosen for this processor
    /// against the portable one, bit for bit.
    #[test]
    fn the_sigmoid_is_within_a_few_ulps_and_every_kernel_computes_the_same() {
        let mut worst = 0f32;
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.01;
            let want = 1.0 / (1.0 + (-f64::from(x)).exp());
            let got = f64::from(sigmoid(x));
            if x >= -80.0 {
                worst = worst.max(((got - want) / want).abs() as f32);
            } else {
                // Below e^-87 the exponent stops; both are 0 to any product's rounding.
                assert!(got < 2e-35 && want < 2e-35, "{x}: {got} vs {want}");
            }
        }
        assert!(worst < 4.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(sigmoid(1e4), 1.0);
        assert!(sigmoid(-1e4) < 1e-37);
        let kernels = swiglu_kernels();
        let mut out = [0f32];
        (kernels.forward)(&mut out, &[f32::NAN], &[1.0]);
        assert!(out[0].is_nan(), "a NaN activation stays NaN");
        for n in [1usize, 7, 8, 9, 31, 250] {
            let gate: Vec<f32> = (0..n).map(|i| (i as f32 * 7.3) % 41.0 - 20.0).collect();
            let up: Vec<f32> = (0..n).map(|i| (i as f32 * 1.9) % 3.0 - 1.5).collect();
            let grad: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7) % 2.0 - 1.0).collect();
            let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
            swiglu_portable(&mut want, &gate, &up);
            (kernels.forward)(&mut got, &gate, &up);
            assert_eq!(got, want, "{n} values");
            swiglu_grad_gate_portable(&mut want, &gate, &up, &grad);
            (kernels.grad_gate)(&mut got, &gate, &up, &grad);
            assert_eq!(got, want, "{n} values");
        }
    }

    /// Inference's SiLU-times-up reads the two halves of a joint product where they lie (as the
    /// MLP's gate-up product leaves them) and computes what candle's `silu` and product do, also
    /// for contiguous inputs, several leading dimensions and a single row.
    #[test]
    fn silu_mul_reads_halves_of_a_joint_product_in_place() {
        for (lead, i) in [(vec![1, 9], 37), (vec![2, 3], 16), (vec![1, 1], 5)] {
            let mut shape = lead.clone();
            shape.push(2 * i);
            let both = Tensor::randn(0f32, 3.0, shape, &Device::Cpu).unwrap();
            let last = lead.len();
            let (gate, up) = (
                both.narrow(last, 0, i).unwrap(),
                both.narrow(last, i, i).unwrap(),
            );
            let want = (gate.silu().unwrap() * &up).unwrap();
            let got = silu_mul(&gate, &up).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(close(&got, &want, 1e-5));
            let got = silu_mul(&gate.contiguous().unwrap(), &up.contiguous().unwrap()).unwrap();
            assert!(close(&got, &want, 1e-5));
        }
        // A view whose rows are not evenly strided is refused, not misread.
        let x = Tensor::randn(0f32, 1.0, (4, 6, 8), &Device::Cpu).unwrap();
        let odd = x.narrow(1, 0, 5).unwrap();
        assert!(strided_rows(odd.layout()).is_none());
        assert!(silu_mul(&odd, &odd).is_err());
        assert_eq!(
            strided_rows(x.narrow(2, 2, 3).unwrap().layout()),
            Some((2, 8, 24, 3))
        );
        assert!(strided_rows(x.t().unwrap().layout()).is_none());
    }

    #[test]
    fn fused_cross_entropy_matches_candle_nn() {
        let x = Var::randn(0f32, 3.0, (6, 50), &Device::Cpu).unwrap();
        let targets = [3u32, 0, 49, 7, 7, 21];
        let t = Tensor::new(&targets, &Device::Cpu).unwrap();
        let a = cross_entropy(x.as_tensor(), &targets).unwrap();
        let b = candle_nn::loss::cross_entropy(x.as_tensor(), &t).unwrap();
        assert!(close(&a, &b, 1e-5));
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        assert!(close(
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
            1e-6
        ));
    }
}
