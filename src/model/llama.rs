//! Our decoder for the Llama / Qwen2 family, written once for inference and for training.
//!
//! The layout follows transformers' `modeling_llama.py` / `modeling_qwen2.py` (RMSNorm, RoPE with
//! `rope_theta` in the rotate-half convention, grouped-query attention, SwiGLU MLP, optional biases,
//! tied or untied head), and tensor names mirror the checkpoint's so a `VarBuilder` over a safetensors
//! file or over a `VarMap` builds the same model.
//!
//! Four kernel sets compute the same function (see [`Kernels`]): for inference, candle-nn's fast
//! `rms_norm`, `softmax_last_dim` and `rope`, which have no backward pass, with infill's own
//! attention kernels on the CPU; for training, ops that have one (infill's f32 ops on the CPU,
//! candle's primitives anywhere). Training must use the latter or the norms and embeddings
//! silently get no gradient (tested below). Off the CPU, only candle's ops run.

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::bf16_linear::{Backing, Bf16Linear};
use super::config::LlamaConfig;
use super::q8_linear::Q8Linear;

/// A projection: candle's `Linear` (f32/f16, differentiable), our bf16 inference kernel, a GGUF
/// matrix on our Q8_0 kernels, or one in its stored type on candle's quantized kernels.
#[derive(Debug, Clone)]
enum Proj {
    Candle(Linear),
    Bf16(Bf16Linear),
    Quant(QMatMul, Option<Tensor>),
    Q8(Q8Linear),
}

impl Proj {
    fn forward(&self, xs: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match self {
            // Training: the bias is one fused op whose gradient is a column sum.
            Self::Candle(l) if kernels == Kernels::Differentiable && xs.dtype() == DType::F32 => {
                let product = Linear::new(l.weight().clone(), None).forward(xs)?;
                match l.bias() {
                    Some(bias) => super::ops::shift_rows(&product, bias),
                    None => Ok(product),
                }
            }
            Self::Candle(l) => l.forward(xs),
            Self::Bf16(l) => l.forward(xs),
            Self::Q8(l) => l.forward(xs),
            Self::Quant(m, bias) => {
                let product = quantized_product(m, xs, kernels)?;
                match bias {
                    Some(bias) => product.broadcast_add(bias),
                    None => Ok(product),
                }
            }
        }
    }
}

/// Projections of one input as one Q8_0 product, where their weights lie together.
fn joint(projs: &[&Proj]) -> Option<Q8Linear> {
    let layers: Option<Vec<&Q8Linear>> = projs
        .iter()
        .map(|p| match p {
            Proj::Q8(l) => Some(l),
            _ => None,
        })
        .collect();
    Q8Linear::joint(&layers?)
}

/// Input rows from which a quantized projection runs as a GEMM over its dequantized weights
/// rather than as one quantized vector product per row: a prompt, not a decoding step.
const GEMM_ROWS: usize = 16;
/// Weight rows dequantized at a time, which bounds the f32 copy (a vocabulary-sized head is
/// never widened whole).
const GEMM_CHUNK: usize = 2048;

/// `xs` times the transpose of a GGUF matrix. Decoding steps use candle's quantized vector
/// products (which read the fewest bytes); prompts on the CPU dequantize the matrix a chunk of
/// rows at a time into candle's f32 GEMM, which batches where the vector products cannot.
fn quantized_product(m: &QMatMul, xs: &Tensor, kernels: Kernels) -> Result<Tensor> {
    let QMatMul::QTensor(q) = m else {
        return m.forward(xs);
    };
    let k = xs.dim(D::Minus1)?;
    let rows = xs.elem_count() / k.max(1);
    if rows < GEMM_ROWS || !kernels.cpu() {
        return m.forward(xs);
    }
    let (n, _) = q.shape().dims2()?;
    let data = q.data()?;
    let row_bytes = data.len() / n;
    let x = xs.reshape((rows, k))?;
    // One chunk widened at a time (so the f32 copy never exceeds a chunk), each multiplied on
    // candle's parallel GEMM.
    let parts = (0..n)
        .step_by(GEMM_CHUNK)
        .map(|start| {
            let len = GEMM_CHUNK.min(n - start);
            let bytes = &data[start * row_bytes..(start + len) * row_bytes];
            let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, q.dtype())?;
            let w = QTensor::new(storage, (len, k))?.dequantize(&Device::Cpu)?;
            x.matmul(&w.t()?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut dims = xs.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Tensor::cat(&parts, 1)?.reshape(dims)
}

/// How the projections are stored: as the var builder loads them (candle's matmul; training and
/// f32 inference), or in bf16 for our CPU kernel: read in place from the checkpoint where
/// [`InPlace`] has them, else read from the var builder into bf16.
#[derive(Debug, Clone, Copy)]
enum Projections<'a> {
    AsLoaded,
    Bf16(&'a InPlace),
    Quantized(&'a Quantized),
}

fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
    projections: Projections,
) -> Result<Proj> {
    match projections {
        Projections::AsLoaded => candle_nn::linear_b(in_dim, out_dim, bias, vb).map(Proj::Candle),
        Projections::Bf16(in_place) => {
            let bias = bias
                .then(|| vb.get_with_hints_dtype(out_dim, "bias", ZERO, DType::F32))
                .transpose()?;
            bf16_matrix(&vb, (out_dim, in_dim), bias.as_ref(), in_place).map(Proj::Bf16)
        }
        Projections::Quantized(q) => {
            let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
            if let Some(layer) = q.bf16_layer(&vb, (out_dim, in_dim), bias.as_ref())? {
                return Ok(Proj::Bf16(layer));
            }
            if let Some(layer) = q.q8_layer(&vb, (out_dim, in_dim), bias.as_ref())? {
                return Ok(Proj::Q8(layer));
            }
            let weight = q.matrix(&vb, (out_dim, in_dim))?;
            Ok(Proj::Quant(QMatMul::from_arc(weight)?, bias))
        }
    }
}

const ZERO: candle_nn::Init = candle_nn::Init::Const(0.0);

/// The matrix `vb`'s `weight` as a bf16 layer: in place when the checkpoint has it so, else copied.
fn bf16_matrix(
    vb: &VarBuilder,
    shape: (usize, usize),
    bias: Option<&Tensor>,
    in_place: &InPlace,
) -> Result<Bf16Linear> {
    let name = format!("{}.weight", vb.prefix());
    if let Some((backing, range)) = in_place.tensors.get(&name)
        && let Some(layer) = Bf16Linear::in_place(backing, range.clone(), shape, bias)?
    {
        return Ok(layer);
    }
    let weight = vb.get_with_hints_dtype(shape, "weight", ZERO, DType::BF16)?;
    Bf16Linear::new(&weight, bias)
}

/// The checkpoint's bf16 tensors that can be read where they lie, by name: a mapped file's bytes
/// or the binary's own. Empty: every weight is copied.
#[derive(Debug, Default)]
pub struct InPlace {
    pub tensors: HashMap<String, (Arc<Backing>, Range<usize>)>,
}

/// A GGUF file's matrices by transformers name (`model.layers.0.mlp.up_proj.weight`): quantized
/// ones in their stored types, and 16-bit ones as bf16 bits for our kernel (half the bytes of
/// f32 per token; exact for BF16, and for F16 values that bf16 holds, as in F16 files converted
/// from bf16 models).
#[derive(Debug, Default)]
pub struct Quantized {
    pub tensors: HashMap<String, Arc<QTensor>>,
    pub bf16: HashMap<String, Arc<[u16]>>,
    /// Q8_0 matrices (and those requantized to Q8_0), in tiles for our own kernels.
    pub q8: HashMap<String, Q8Linear>,
}

impl Quantized {
    /// Whether the file has this matrix, in any type.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
            || self.bf16.contains_key(name)
            || self.q8.contains_key(name)
    }

    /// The same matrices on `device`, for candle's quantized kernels there (infill's tiles and
    /// bf16 matrices are the CPU's own and are refused).
    pub fn to_device(self, device: &Device) -> Result<Self> {
        if !self.q8.is_empty() || !self.bf16.is_empty() {
            candle_core::bail!("infill's CPU layouts of the weights cannot move to {device:?}");
        }
        let tensors = self
            .tensors
            .into_iter()
            .map(|(name, t)| {
                let storage = QStorage::from_data(t.data()?, device, t.dtype())?;
                Ok((name, Arc::new(QTensor::new(storage, t.shape())?)))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            tensors,
            ..Self::default()
        })
    }

    /// `vb`'s `weight` as a Q8_0 layer with `bias`, if it is one of the Q8_0 matrices.
    fn q8_layer(
        &self,
        vb: &VarBuilder,
        shape: (usize, usize),
        bias: Option<&Tensor>,
    ) -> Result<Option<Q8Linear>> {
        let name = format!("{}.weight", vb.prefix());
        let Some(layer) = self.q8.get(&name) else {
            return Ok(None);
        };
        if layer.shape() != shape {
            candle_core::bail!(
                "tensor \"{name}\" has shape {:?}, expected {shape:?}",
                layer.shape()
            )
        }
        layer.with_bias(bias).map(Some)
    }

    /// `vb`'s `weight` as a bf16 layer, if it is one of the 16-bit matrices.
    fn bf16_layer(
        &self,
        vb: &VarBuilder,
        shape: (usize, usize),
        bias: Option<&Tensor>,
    ) -> Result<Option<Bf16Linear>> {
        let name = format!("{}.weight", vb.prefix());
        self.bf16
            .get(&name)
            .map(|bits| Bf16Linear::from_bits(Arc::clone(bits), shape, bias))
            .transpose()
    }

    /// `vb`'s `weight`, checked against the shape the config implies.
    fn matrix(&self, vb: &VarBuilder, shape: (usize, usize)) -> Result<Arc<QTensor>> {
        let name = format!("{}.weight", vb.prefix());
        let Some(t) = self.tensors.get(&name) else {
            candle_core::bail!("no tensor \"{name}\"")
        };
        if t.shape().dims() != [shape.0, shape.1] {
            candle_core::bail!(
                "tensor \"{name}\" has shape {:?}, expected {shape:?}",
                t.shape()
            )
        }
        Ok(Arc::clone(t))
    }
}

/// The token embeddings: candle's table, the rows of a bf16 matrix (shared with a tied head), or
/// rows of a GGUF matrix dequantized as they are looked up.
#[derive(Debug, Clone)]
enum Embed {
    Table(Embedding),
    Bf16(Bf16Linear),
    Quant(QMatMul),
    Q8(Q8Linear),
}

impl Embed {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Table(e) => e.forward(ids),
            Self::Bf16(m) => {
                let (b, t) = ids.dims2()?;
                let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                m.rows(&flat, ids.device())?.reshape((b, t, ()))
            }
            Self::Q8(m) => {
                let (b, t) = ids.dims2()?;
                let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                m.rows(&flat, ids.device())?.reshape((b, t, ()))
            }
            Self::Quant(m) => m.embedding(ids),
        }
    }
}

/// A LoRA adapter's update of one projection, applied at run time: `x Aᵀ (scale Bᵀ)` is added
/// to the projection's product, so adapters switch without touching the base's weights (which
/// may be quantized or mapped read-only).
#[derive(Debug, Clone)]
struct Lora {
    /// `Aᵀ`, `(in, r)`.
    a_t: Tensor,
    /// `scale * Bᵀ`, `(r, out)`.
    b_t: Tensor,
    /// `A` (`r` rows of `in`) and `scale * Bᵀ` (`r` rows of `out`), row-major f32, for a
    /// decoding step on the CPU (see [`Lora::add`]): both read along their rows.
    a: Arc<[f32]>,
    b_t_rows: Arc<[f32]>,
}

/// Rows up to which [`Lora::add`] computes on the CPU by itself: a decoding step's products are
/// a few thousand multiply-adds, far less than what candle's four ops for them cost to run
/// (3.5 ms a token for a 7M model's 56 updates, where its forward takes 3.5 ms).
const LORA_LOOP_ROWS: usize = 4;

impl Lora {
    /// `product` plus this update of `xs`, `(..., in)`.
    fn add(lora: Option<&Self>, product: Tensor, xs: &Tensor) -> Result<Tensor> {
        let Some(l) = lora else {
            return Ok(product);
        };
        let rank = l.a_t.dim(1)?;
        let fan_in = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / fan_in.max(1);
        if rows <= LORA_LOOP_ROWS
            && product.device().is_cpu()
            && product.dtype() == DType::F32
            && xs.dtype() == DType::F32
        {
            let mut out: Vec<f32> = product.flatten_all()?.to_vec1()?;
            let fan_out = out.len() / rows.max(1);
            let mut h = vec![0f32; rank];
            // Both halves of each product on rayon's threads (the forward runs on one), in
            // columns of the output: a few microseconds of work each, next to the forward's.
            use rayon::prelude::*;
            const COLUMNS: usize = 1024;
            super::bf16_linear::with_values(xs, |x| {
                for (x, out) in x.chunks_exact(fan_in).zip(out.chunks_exact_mut(fan_out)) {
                    h.par_iter_mut()
                        .zip(l.a.par_chunks_exact(fan_in))
                        .with_min_len(rank.div_ceil(2).max(1))
                        .for_each(|(h, a)| *h = dot(a, x));
                    out.par_chunks_mut(COLUMNS)
                        .enumerate()
                        .for_each(|(c, out)| {
                            let start = c * COLUMNS;
                            for (&h, b) in h.iter().zip(l.b_t_rows.chunks_exact(fan_out)) {
                                let b = b.get(start..start + out.len()).unwrap_or_default();
                                for (o, b) in out.iter_mut().zip(b) {
                                    *o += h * b;
                                }
                            }
                        });
                }
            })?;
            return Tensor::from_vec(out, product.shape(), product.device());
        }
        let update = xs.broadcast_matmul(&l.a_t)?.broadcast_matmul(&l.b_t)?;
        let update = update.to_dtype(product.dtype())?;
        product + update
    }
}

/// `a · b`, in eight independent sums (which the compiler keeps in vector registers).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a8.zip(b8) {
        for ((s, x), y) in sums.iter_mut().zip(a).zip(b) {
            *s += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// The projections of one layer that an adapter updates.
#[derive(Debug, Clone, Default)]
struct LayerLora {
    q: Option<Lora>,
    k: Option<Lora>,
    v: Option<Lora>,
    o: Option<Lora>,
    gate: Option<Lora>,
    up: Option<Lora>,
    down: Option<Lora>,
}

/// An adapter's updates, by layer, and of the head.
#[derive(Debug, Clone, Default)]
struct Loras {
    layers: Vec<LayerLora>,
    head: Option<Lora>,
}

/// Queries per block of a long prompt's attention (see `Attention::forward`); small in unit
/// tests, so that the tiny models' prompts take the blocked path.
#[cfg(not(test))]
const PROMPT_BLOCK: usize = 256;
#[cfg(test)]
const PROMPT_BLOCK: usize = 8;

/// Which implementation of norm, softmax, RoPE and attention a forward pass uses: for inference or
/// for training, with infill's CPU kernels or with candle's ops only (each of which has a CPU, a
/// CUDA and a Metal kernel). A model built off the CPU takes the candle-only set of its kind
/// ([`Kernels::on`]); on the CPU that set computes what a GPU would, to check the CPU kernels by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Inference on the CPU: candle-nn's fused norm, softmax and RoPE, infill's attention
    /// kernels (decoding in one pass over the keys, the causal mask inside the softmax, long
    /// prompts by blocks) and its quantized prompt products. No gradients.
    Fused,
    /// Inference on any device: candle-nn's fused ops and candle's attention (scores, an added
    /// causal mask, softmax). No gradients.
    Portable,
    /// Training on the CPU: infill's f32 ops, each with its backward.
    Differentiable,
    /// Training on any device: candle's primitive ops, each with a backward.
    Composed,
}

impl Kernels {
    /// This set where infill's CPU kernels can run (the model is on the CPU), else the set of
    /// candle's ops for the same purpose.
    pub fn on(self, device: &Device) -> Self {
        match self {
            Self::Fused if !device.is_cpu() => Self::Portable,
            Self::Differentiable if !device.is_cpu() => Self::Composed,
            kernels => kernels,
        }
    }

    /// Whether infill's own CPU kernels run.
    fn cpu(self) -> bool {
        matches!(self, Self::Fused | Self::Differentiable)
    }
}

/// Keys and values of every layer for the tokens seen so far.
///
/// Truncating keeps the first `len` positions, so a new prompt that shares a token prefix with the
/// previous one only computes its new tokens.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

/// One layer's keys and values, `(batch, kv_heads, capacity, head_dim)`, with room past the
/// cache's positions so that a decoded token is written in place instead of the whole cache
/// being copied for it (`Tensor::cat`): a 0.5B model 1,000 tokens deep decoded 32-37 tokens/s
/// with the copies and 38 without.
///
/// The buffers are shared by the cache's clones and the segments taken from it, so none of them
/// may write where another can look: `written` (shared too) marks the positions ever written,
/// and only a holder whose length is the mark appends in place, past it, moving it; any other
/// (a truncated cache, a clone that lost the race) copies its positions into new buffers first.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    written: Arc<std::sync::atomic::AtomicUsize>,
}

impl LayerKv {
    /// `k` and `v` appended after the first `len` positions, in place when this holder may
    /// write there; the keys and values of the `len + t` positions (views, no copy).
    fn append(
        slot: &mut Option<Self>,
        len: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        use std::sync::atomic::Ordering::SeqCst;
        let t = k.dim(2)?;
        let in_place = match slot.as_ref() {
            Some(l) if l.k.dim(2)? >= len + t => l
                .written
                .compare_exchange(len, len + t, SeqCst, SeqCst)
                .is_ok(),
            _ => false,
        };
        if !in_place {
            // Room for half as many positions again, so appends stay in place for a while.
            let capacity = (len + t + (len + t) / 2).next_multiple_of(64);
            let (b, heads, _, d) = k.dims4()?;
            let grown = |old: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
                let buf = Tensor::zeros((b, heads, capacity, d), new.dtype(), new.device())?;
                if let Some(old) = old.filter(|_| len > 0) {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let old = slot.as_ref();
            *slot = Some(Self {
                k: grown(old.map(|l| &l.k), k)?,
                v: grown(old.map(|l| &l.v), v)?,
                written: Arc::new((len + t).into()),
            });
        }
        let Some(l) = slot.as_ref() else {
            candle_core::bail!("a cache layer that was just filled is empty");
        };
        l.k.slice_set(&k.contiguous()?, 2, len)?;
        l.v.slice_set(&v.contiguous()?, 2, len)?;
        Ok((l.k.narrow(2, 0, len + t)?, l.v.narrow(2, 0, len + t)?))
    }
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the first `len` positions (no-op when `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        // The buffers stay: the next append copies the first `len` positions into new ones (see
        // `LayerKv`), since views of the positions cut may still be held.
        if len == 0 {
            self.layers.iter_mut().for_each(|l| *l = None);
        }
        self.len = len;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// The keys and values of positions `range`, layer by layer (views, no copy), to be put back
    /// with [`Llama::append_shifted`] after the cache is cut before them.
    pub fn segment(&self, range: Range<usize>) -> Result<KvSegment> {
        if range.end > self.len || range.start > range.end {
            candle_core::bail!("positions {range:?} are outside a cache of {}", self.len);
        }
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                layer
                    .as_ref()
                    .map(|l| {
                        Ok((
                            l.k.narrow(2, range.start, range.len())?,
                            l.v.narrow(2, range.start, range.len())?,
                        ))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvSegment {
            layers,
            len: range.len(),
        })
    }

    /// Memory the keys and values take (their buffers, room for more positions included).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let len = self.len;
        match self.layers.get_mut(layer) {
            Some(slot) => LayerKv::append(slot, len, &k, &v),
            None => candle_core::bail!("no layer {layer} in a cache of {}", self.layers.len()),
        }
    }
}

/// Keys and values of consecutive positions taken out of a [`KvCache`].
#[derive(Debug, Clone)]
pub struct KvSegment {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvSegment {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // Ones, as transformers initialises it; a checkpoint overrides it.
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    fn forward(&self, xs: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match kernels {
            Kernels::Fused | Kernels::Portable => {
                candle_nn::ops::rms_norm(xs, &self.weight, self.eps as f32)
            }
            Kernels::Differentiable if xs.dtype() == DType::F32 => {
                super::ops::rms_norm(xs, &self.weight, self.eps)
            }
            Kernels::Differentiable | Kernels::Composed => {
                // transformers computes the norm in f32, then casts back before the weight.
                let dtype = xs.dtype();
                let x = xs.to_dtype(DType::F32)?;
                let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
                    .sqrt()?
                    .recip()?;
                x.broadcast_mul(&inv)?
                    .to_dtype(dtype)?
                    .broadcast_mul(&self.weight)
            }
        }
    }
}

/// Cos and sin tables for every position, `(max_positions, head_dim / 2)`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = (Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?
            / cfg.rope_scaling_factor)?;
        let freqs = positions.matmul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates keys already rotated for their positions by `shift` more positions (negative: back),
    /// as if they had been computed `shift` positions later: RoPE's rotations compose by adding
    /// angles. `xs` is `(batch, heads, seq, head_dim)`.
    fn shift(&self, xs: &Tensor, shift: i64) -> Result<Tensor> {
        let seq = xs.dim(2)?;
        let at = shift.unsigned_abs() as usize;
        if at >= self.cos.dim(0)? {
            candle_core::bail!("a shift of {shift} positions exceeds the model's context");
        }
        let half = self.cos.dim(1)?;
        let cos = self.cos.narrow(0, at, 1)?.broadcast_as((seq, half))?;
        let sin = self.sin.narrow(0, at, 1)?;
        let sin = if shift < 0 { sin.neg()? } else { sin };
        let sin = sin.broadcast_as((seq, half))?;
        let dtype = xs.dtype();
        candle_nn::rotary_emb::rope(
            &xs.contiguous()?,
            &cos.to_dtype(dtype)?.contiguous()?,
            &sin.to_dtype(dtype)?.contiguous()?,
        )
    }

    /// Rotates `xs` of shape `(batch, heads, seq, head_dim)` for positions `offset..offset + seq`.
    fn apply(&self, xs: &Tensor, offset: usize, kernels: Kernels) -> Result<Tensor> {
        let seq = xs.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        match kernels {
            Kernels::Fused | Kernels::Portable => {
                candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)
            }
            Kernels::Differentiable if xs.dtype() == DType::F32 => super::ops::rope(xs, &cos, &sin),
            Kernels::Differentiable | Kernels::Composed => {
                let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
                let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
                let half = xs.dim(D::Minus1)? / 2;
                let x1 = xs.narrow(D::Minus1, 0, half)?;
                let x2 = xs.narrow(D::Minus1, half, half)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    /// q, k and v as one product, where their Q8_0 weights lie together.
    qkv: Option<Q8Linear>,
    o_proj: Proj,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &LlamaConfig, vb: VarBuilder, p: Projections) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let q_proj = linear(
            h,
            cfg.num_attention_heads * d,
            cfg.qkv_bias,
            vb.pp("q_proj"),
            p,
        )?;
        let k_proj = linear(
            h,
            cfg.num_key_value_heads * d,
            cfg.qkv_bias,
            vb.pp("k_proj"),
            p,
        )?;
        let v_proj = linear(
            h,
            cfg.num_key_value_heads * d,
            cfg.qkv_bias,
            vb.pp("v_proj"),
            p,
        )?;
        Ok(Self {
            qkv: joint(&[&q_proj, &k_proj, &v_proj]),
            q_proj,
            k_proj,
            v_proj,
            o_proj: linear(
                cfg.num_attention_heads * d,
                h,
                cfg.o_bias,
                vb.pp("o_proj"),
                p,
            )?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        })
    }

    fn forward(&self, xs: &Tensor, ctx: &mut StepContext, layer: usize) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let split = |x: Tensor, heads: usize| -> Result<Tensor> {
            x.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = match &self.qkv {
            Some(qkv) => {
                let all = qkv.forward(xs)?;
                let (q, kv) = (
                    self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                );
                (
                    all.narrow(D::Minus1, 0, q)?,
                    all.narrow(D::Minus1, q, kv)?,
                    all.narrow(D::Minus1, q + kv, kv)?,
                )
            }
            None => (
                self.q_proj.forward(xs, ctx.kernels)?,
                self.k_proj.forward(xs, ctx.kernels)?,
                self.v_proj.forward(xs, ctx.kernels)?,
            ),
        };
        let lora = ctx.lora.and_then(|l| l.layers.get(layer));
        let (q, k, v) = match lora {
            None => (q, k, v),
            Some(l) => (
                Lora::add(l.q.as_ref(), q, xs)?,
                Lora::add(l.k.as_ref(), k, xs)?,
                Lora::add(l.v.as_ref(), v, xs)?,
            ),
        };
        let q = split(q, self.num_heads)?;
        let k = split(k, self.num_kv_heads)?;
        let v = split(v, self.num_kv_heads)?;
        let q = ctx.rope.apply(&q, ctx.offset, ctx.kernels)?;
        let k = ctx.rope.apply(&k, ctx.offset, ctx.kernels)?;
        let (k, v) = match ctx.cache.as_deref_mut() {
            Some(cache) => cache.append(layer, k, v)?,
            None => (k, v),
        };
        // Grouped-query attention without copying keys and values n_rep times (transformers'
        // `repeat_kv`): query head i uses KV head i / n_rep, so the heads sharing a KV head are
        // adjacent and fold into the row dimension: (b, h, t, d) -> (b, kv_heads, n_rep * t, d).
        let (kv_heads, n_rep, d) = (
            self.num_kv_heads,
            self.num_heads / self.num_kv_heads,
            self.head_dim,
        );
        let total = k.dim(2)?;
        let heads = q;
        let q = heads.reshape((b, kv_heads, n_rep * t, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let cpu_f32 =
            ctx.kernels == Kernels::Fused && q.dtype() == DType::F32 && k.dtype() == DType::F32;
        let out = if cpu_f32 && t == 1 {
            // A decoded token sees every key: one pass over them (see `ops::decode_attention`).
            super::ops::decode_attention(&q, &k, &v, scale)?
        } else if cpu_f32 && t > PROMPT_BLOCK {
            // A long prompt's queries a block at a time, each against the keys it may see: the
            // products skip most of what the causal mask would zero (half of a whole prompt's
            // scores), and a block's scores are all that is held at once.
            let past = total - t;
            let mut blocks = Vec::with_capacity(t.div_ceil(PROMPT_BLOCK));
            for start in (0..t).step_by(PROMPT_BLOCK) {
                let len = PROMPT_BLOCK.min(t - start);
                let seen = past + start + len;
                let q = heads.narrow(2, start, len)?.contiguous()?;
                let q = q.reshape((b, kv_heads, n_rep * len, d))?;
                let raw = q.matmul(&k.narrow(2, 0, seen)?.t()?)?;
                let probs = super::ops::causal_softmax(&raw, scale, len, past + start)?;
                let out = probs.matmul(&v.narrow(2, 0, seen)?)?;
                blocks.push(out.reshape((b, self.num_heads, len, d))?);
            }
            Tensor::cat(&blocks, 2)?
        } else {
            let raw = q.matmul(&k.t()?)?;
            let probs = if masks_in_softmax(ctx.kernels, raw.dtype()) {
                // Scale, causal mask and softmax in one pass over the scores, masked keys skipped
                // (with its own backward for training). Separate ops would write the
                // `(rows, keys)` scores three more times: 126 MB a layer for a 1,500-token prompt of
                // a 0.5B model.
                super::ops::causal_softmax(&raw, scale, t, total - t)?
            } else {
                let mut scores = (raw * scale)?.to_dtype(DType::F32)?;
                match ctx.mask {
                    Some(mask) => {
                        scores = scores
                            .reshape((b, kv_heads, n_rep, t, total))?
                            .broadcast_add(mask)?
                            .reshape((b, kv_heads, n_rep * t, total))?;
                    }
                    None if t > 1 => candle_core::bail!("no causal mask for a {t}-token step"),
                    None => {}
                }
                match ctx.kernels {
                    Kernels::Fused | Kernels::Portable => {
                        candle_nn::ops::softmax_last_dim(&scores)?
                    }
                    Kernels::Differentiable => super::ops::softmax_last_dim(&scores)?,
                    Kernels::Composed => candle_nn::ops::softmax(&scores, D::Minus1)?,
                }
            };
            probs.to_dtype(v.dtype())?.matmul(&v)?
        };
        let out = out
            .reshape((b, self.num_heads, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, self.num_heads * d))?;
        let o = self.o_proj.forward(&out, ctx.kernels)?;
        Lora::add(lora.and_then(|l| l.o.as_ref()), o, &out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    /// gate and up as one product, where their Q8_0 weights lie together.
    gate_up: Option<Q8Linear>,
    down_proj: Proj,
}

impl Mlp {
    fn new(cfg: &LlamaConfig, vb: VarBuilder, p: Projections) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let gate_proj = linear(h, i, bias, vb.pp("gate_proj"), p)?;
        let up_proj = linear(h, i, bias, vb.pp("up_proj"), p)?;
        Ok(Self {
            gate_up: joint(&[&gate_proj, &up_proj]),
            gate_proj,
            up_proj,
            down_proj: linear(i, h, bias, vb.pp("down_proj"), p)?,
        })
    }

    fn forward(&self, xs: &Tensor, kernels: Kernels, lora: Option<&LayerLora>) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            Some(gate_up) => {
                let both = gate_up.forward(xs)?;
                let i = both.dim(D::Minus1)? / 2;
                (both.narrow(D::Minus1, 0, i)?, both.narrow(D::Minus1, i, i)?)
            }
            None => (
                self.gate_proj.forward(xs, kernels)?,
                self.up_proj.forward(xs, kernels)?,
            ),
        };
        let (gate, up) = match lora {
            None => (gate, up),
            Some(l) => (
                Lora::add(l.gate.as_ref(), gate, xs)?,
                Lora::add(l.up.as_ref(), up, xs)?,
            ),
        };
        let act = match kernels {
            Kernels::Differentiable if gate.dtype() == DType::F32 => {
                super::ops::swiglu(&gate, &up)?
            }
            Kernels::Fused if gate.dtype() == DType::F32 && up.dtype() == DType::F32 => {
                super::ops::silu_mul(&gate, &up)?
            }
            _ => (gate.silu()? * up)?,
        };
        let down = self.down_proj.forward(&act, kernels)?;
        Lora::add(lora.and_then(|l| l.down.as_ref()), down, &act)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn forward(&self, xs: &Tensor, ctx: &mut StepContext, layer: usize) -> Result<Tensor> {
        let h = self.input_layernorm.forward(xs, ctx.kernels)?;
        let xs = (xs + self.self_attn.forward(&h, ctx, layer)?)?;
        let h = self.post_attention_layernorm.forward(&xs, ctx.kernels)?;
        let lora = ctx.lora.and_then(|l| l.layers.get(layer));
        xs + self.mlp.forward(&h, ctx.kernels, lora)?
    }
}

/// What every layer of one forward pass shares.
struct StepContext<'a> {
    rope: &'a Rope,
    offset: usize,
    mask: Option<&'a Tensor>,
    cache: Option<&'a mut KvCache>,
    kernels: Kernels,
    lora: Option<&'a Loras>,
}

/// The decoder with its language-model head.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embed,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: Rope,
    config: LlamaConfig,
    kernels: Kernels,
    tied: bool,
    /// The adapter applied at run time, if any ([`Llama::set_lora`]).
    lora: Option<Arc<Loras>>,
}

impl Llama {
    /// Builds the model from `vb` (a checkpoint or a `VarMap`). `tie` reuses the embedding matrix as
    /// the head; the loader decides it from the checkpoint (is `lm_head.weight` present?).
    pub fn new(config: &LlamaConfig, vb: VarBuilder, tie: bool, kernels: Kernels) -> Result<Self> {
        Self::build(config, vb, tie, kernels, Projections::AsLoaded)
    }

    /// An inference model whose projections and head are bf16 for our CPU kernel (about half the
    /// memory traffic per token), read from the checkpoint straight into bf16: the weights are
    /// never all held in f32, so memory peaks near the bf16 size. The embedding matrix stays in
    /// the checkpoint's precision (rows are widened as they are looked up); norms are f32.
    pub fn new_bf16(
        config: &LlamaConfig,
        vb: VarBuilder,
        tie: bool,
        in_place: &InPlace,
    ) -> Result<Self> {
        Self::build(config, vb, tie, Kernels::Fused, Projections::Bf16(in_place))
    }

    /// An inference model over a GGUF file's matrices in their stored types (`quantized`); `vb`
    /// holds the norms and biases in f32. Ties the head when the file has no `lm_head.weight`.
    pub fn new_quantized(
        config: &LlamaConfig,
        vb: VarBuilder,
        quantized: &Quantized,
        kernels: Kernels,
    ) -> Result<Self> {
        let tie = !quantized.contains("lm_head.weight");
        Self::build(config, vb, tie, kernels, Projections::Quantized(quantized))
    }

    fn build(
        config: &LlamaConfig,
        vb: VarBuilder,
        tie: bool,
        kernels: Kernels,
        p: Projections,
    ) -> Result<Self> {
        let kernels = kernels.on(vb.device());
        // In bf16, everything but the projections, the embeddings and the head is f32.
        let vb = match p {
            Projections::AsLoaded | Projections::Quantized(_) => vb,
            Projections::Bf16(_) => vb.set_dtype(DType::F32),
        };
        let vb_m = vb.pp("model");
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed_tokens = match p {
            Projections::AsLoaded => {
                Embed::Table(candle_nn::embedding(v, h, vb_m.pp("embed_tokens"))?)
            }
            Projections::Bf16(in_place) => Embed::Bf16(bf16_matrix(
                &vb_m.pp("embed_tokens"),
                (v, h),
                None,
                in_place,
            )?),
            Projections::Quantized(q) => {
                let vb_e = vb_m.pp("embed_tokens");
                if let Some(layer) = q.bf16_layer(&vb_e, (v, h), None)? {
                    Embed::Bf16(layer)
                } else if let Some(layer) = q.q8_layer(&vb_e, (v, h), None)? {
                    Embed::Q8(layer)
                } else {
                    Embed::Quant(QMatMul::from_arc(q.matrix(&vb_e, (v, h))?)?)
                }
            }
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb_l = vb_m.pp("layers").pp(i);
                Ok(Block {
                    input_layernorm: RmsNorm::new(
                        config.hidden_size,
                        config.rms_norm_eps,
                        vb_l.pp("input_layernorm"),
                    )?,
                    self_attn: Attention::new(config, vb_l.pp("self_attn"), p)?,
                    post_attention_layernorm: RmsNorm::new(
                        config.hidden_size,
                        config.rms_norm_eps,
                        vb_l.pp("post_attention_layernorm"),
                    )?,
                    mlp: Mlp::new(config, vb_l.pp("mlp"), p)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(config.hidden_size, config.rms_norm_eps, vb_m.pp("norm"))?;
        let lm_head = match (tie, &embed_tokens) {
            (true, Embed::Table(e)) => Proj::Candle(Linear::new(e.embeddings().clone(), None)),
            // The same bits: a tied head costs no memory.
            (true, Embed::Bf16(m)) => Proj::Bf16(m.clone()),
            (true, Embed::Quant(m)) => Proj::Quant(m.clone(), None),
            (true, Embed::Q8(m)) => Proj::Q8(m.clone()),
            (false, _) => linear(h, v, false, vb.pp("lm_head"), p)?,
        };
        let rope = Rope::new(config, vb.dtype(), vb.device())?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            config: config.clone(),
            kernels,
            tied: tie,
            lora: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn is_tied(&self) -> bool {
        self.tied
    }

    /// The kernels this model's forwards run.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn device(&self) -> &Device {
        self.rope.cos.device()
    }

    /// The precision activations are computed in.
    pub fn dtype(&self) -> DType {
        self.rope.cos.dtype()
    }

    /// Appends `segment`, keys and values computed for other positions of this model, to
    /// `cache`, its keys rotated by `shift` positions to where they now stand. The values carry
    /// no position. Exact only for the positions: the segment's keys and values still reflect
    /// the context they were computed after.
    pub fn append_shifted(
        &self,
        cache: &mut KvCache,
        segment: &KvSegment,
        shift: i64,
    ) -> Result<()> {
        if segment.layers.len() != cache.layers.len() {
            candle_core::bail!("a segment of another model");
        }
        if cache.len + segment.len > self.config.max_position_embeddings {
            candle_core::bail!("the segment would run past the model's context");
        }
        for (i, layer) in segment.layers.iter().enumerate() {
            if let Some((k, v)) = layer {
                let k = if shift == 0 {
                    k.clone()
                } else {
                    self.rope.shift(k, shift)?
                };
                cache.append(i, k, v.clone())?;
            }
        }
        cache.len += segment.len;
        Ok(())
    }

    /// A cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Hidden states after the final norm, `(batch, seq, hidden)`, for `ids` of shape `(batch, seq)`
    /// at positions `offset..`. With a cache, `offset` must equal `cache.len()` and the new keys and
    /// values are appended.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if let Some(c) = cache.as_deref()
            && c.len() != offset
        {
            candle_core::bail!(
                "KV cache holds {} positions but the forward starts at {offset}",
                c.len()
            );
        }
        if offset + t > self.config.max_position_embeddings {
            candle_core::bail!(
                "{} positions exceed the model's context of {}",
                offset + t,
                self.config.max_position_embeddings
            );
        }
        // Only the attention that adds a mask to its scores needs one (a 2,048-token prompt's
        // is 16 MB); the f32 kernels mask inside their softmax.
        let mask = (t > 1 && !masks_in_softmax(self.kernels, self.dtype()))
            .then(|| causal_mask(t, offset, self.device()))
            .transpose()?;
        let mut ctx = StepContext {
            rope: &self.rope,
            offset,
            mask: mask.as_ref(),
            cache,
            kernels: self.kernels,
            lora: self.lora.as_deref(),
        };
        // On one of rayon's threads: the layers' hundred-odd parallel steps then split their
        // work within the pool, where from any other thread each would hand itself to the pool
        // and sleep until it came back (two context switches a step).
        rayon::scope(|_| {
            // Embeddings kept in bf16 are widened row by row, as they are looked up.
            let mut xs = self.embed_tokens.forward(ids)?.to_dtype(self.dtype())?;
            for (i, layer) in self.layers.iter().enumerate() {
                xs = layer.forward(&xs, &mut ctx, i)?;
            }
            if let Some(cache) = ctx.cache {
                cache.len = offset + t;
            }
            self.norm.forward(&xs, self.kernels)
        })
    }

    /// Logits for every position, `(batch, seq, vocab)` in f32: scoring and training.
    pub fn forward_all(
        &self,
        ids: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids, offset, cache)?;
        self.head(&hidden)?.to_dtype(DType::F32)
    }

    /// Logits for the last position only, `(batch, vocab)` in f32: generation.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids, offset, cache)?;
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?;
        self.head(&last)?.squeeze(1)?.to_dtype(DType::F32)
    }

    /// The language-model head, with the adapter's update of it. On one of rayon's threads, as
    /// the layers run (see [`Self::forward_hidden`]).
    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        rayon::scope(|_| {
            let logits = self.lm_head.forward(hidden, self.kernels)?;
            let lora = self.lora.as_deref().and_then(|l| l.head.as_ref());
            Lora::add(lora, logits, hidden)
        })
    }

    /// Applies a LoRA adapter at run time, replacing the one applied before. `updates` are `(base weight name, A (r x in), B (out x r))` as peft names and stores
    /// them; `scale` multiplies `B A`. The base's weights are not touched, so switching back is
    /// exact. A name that is not one of this model's projections, or a shape that does not fit
    /// it, is an error naming it. Keys and values cached under another adapter are stale: the
    /// caller clears its cache.
    pub fn set_lora<'a>(
        &mut self,
        updates: impl IntoIterator<Item = (&'a str, &'a Tensor, &'a Tensor)>,
        scale: f64,
    ) -> Result<()> {
        let c = &self.config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let mut loras = Loras {
            layers: vec![LayerLora::default(); c.num_hidden_layers],
            head: None,
        };
        for (name, a, b) in updates {
            let (slot, (fan_in, fan_out)) = match name.strip_suffix(".weight") {
                Some("lm_head") => (&mut loras.head, (h, v)),
                Some(module) => {
                    let Some((layer, projection)) = module
                        .strip_prefix("model.layers.")
                        .and_then(|rest| rest.split_once('.'))
                        .and_then(|(n, p)| Some((n.parse::<usize>().ok()?, p)))
                    else {
                        candle_core::bail!(
                            "the adapter updates \"{name}\", which this model has no projection for"
                        )
                    };
                    let Some(l) = loras.layers.get_mut(layer) else {
                        candle_core::bail!(
                            "the adapter updates \"{name}\", but the model has {} layers",
                            c.num_hidden_layers
                        )
                    };
                    match projection {
                        "self_attn.q_proj" => (&mut l.q, (h, q)),
                        "self_attn.k_proj" => (&mut l.k, (h, kv)),
                        "self_attn.v_proj" => (&mut l.v, (h, kv)),
                        "self_attn.o_proj" => (&mut l.o, (q, h)),
                        "mlp.gate_proj" => (&mut l.gate, (h, i)),
                        "mlp.up_proj" => (&mut l.up, (h, i)),
                        "mlp.down_proj" => (&mut l.down, (i, h)),
                        _ => candle_core::bail!(
                            "the adapter updates \"{name}\", which this model has no projection for"
                        ),
                    }
                }
                None => candle_core::bail!("the adapter updates \"{name}\", which is not a weight"),
            };
            let (r, a_in) = a.dims2()?;
            let (b_out, b_r) = b.dims2()?;
            if a_in != fan_in || b_out != fan_out || b_r != r {
                candle_core::bail!(
                    "the adapter's update of \"{name}\" is {b_out}x{b_r} times {r}x{a_in}, but the \
                     model's matrix is {fan_out}x{fan_in}: an adapter for another model"
                )
            }
            let (device, dtype) = (self.device(), self.dtype());
            let a = a.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let b_t = (b.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.t()? * scale)?;
            let on_model = |t: Tensor| t.contiguous()?.to_dtype(dtype)?.to_device(device);
            *slot = Some(Lora {
                a: a.flatten_all()?.to_vec1::<f32>()?.into(),
                b_t_rows: b_t.flatten_all()?.to_vec1::<f32>()?.into(),
                a_t: on_model(a.t()?)?,
                b_t: on_model(b_t)?,
            });
        }
        self.lora = Some(Arc::new(loras));
        Ok(())
    }

    /// Takes the adapter applied at run time off: the base model alone, exactly.
    pub fn clear_lora(&mut self) {
        self.lora = None;
    }
}

/// Whether attention over scores of `dtype` masks the future inside its softmax
/// (`ops::causal_softmax`, infill's CPU kernel for f32, with its own backward) rather than adding
/// [`causal_mask`]'s tensor to the scores.
fn masks_in_softmax(kernels: Kernels, dtype: DType) -> bool {
    dtype == DType::F32 && kernels.cpu()
}

/// `(seq, offset + seq)` additive mask: 0 where a query may attend, -inf in the future.
fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, total), device)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::config::{Family, LlamaConfig};
    use candle_nn::VarMap;

    fn tiny(family: Family) -> LlamaConfig {
        LlamaConfig {
            family,
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling_factor: 1.0,
            qkv_bias: family == Family::Qwen2,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            fim_order: None,
        }
    }

    fn ids(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::model::max_abs(&(a - b).unwrap())
    }

    /// Equal up to f32 rounding relative to the logits' size (random init makes them large).
    fn close(a: &Tensor, want: &Tensor) -> bool {
        let scale = crate::model::max_abs(want);
        max_abs_diff(a, want) <= 1e-5 * scale.max(1.0)
    }

    #[test]
    fn every_parameter_gets_a_nonzero_gradient() {
        for (family, tie) in [(Family::Qwen2, false), (Family::Llama, true)] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let cfg = tiny(family);
            let model = Llama::new(&cfg, vb, tie, Kernels::Differentiable).unwrap();
            // Biases start at zero and norms at one; perturb everything so no gradient vanishes by symmetry.
            for var in varmap.all_vars() {
                let noise = var.randn_like(0.0, 0.1).unwrap();
                var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
            }
            let input = ids(&[1, 5, 9, 13, 2, 7, 30, 41]);
            let logits = model.forward_all(&input, 0, None).unwrap();
            let targets = Tensor::new(&[5u32, 9, 13, 2, 7, 30, 41, 3], &Device::Cpu).unwrap();
            let loss =
                candle_nn::loss::cross_entropy(&logits.squeeze(0).unwrap(), &targets).unwrap();
            let grads = loss.backward().unwrap();
            let data = varmap.data().lock().unwrap();
            assert!(!data.is_empty());
            for (name, var) in data.iter() {
                let grad = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name} has no gradient"));
                let norm = grad
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{name} has a zero gradient");
            }
        }
    }

    /// The candle-only sets are what a GPU runs: on the CPU they must compute what infill's
    /// kernels compute, prompts (longer than an attention block), cached decoding steps and,
    /// for training, every gradient.
    #[test]
    fn every_kernel_set_computes_the_same_logits_and_gradients() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = tiny(Family::Qwen2);
        for var in varmap.all_vars() {
            let noise = var.randn_like(0.0, 0.1).unwrap();
            var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        }
        let sets = [
            Kernels::Fused,
            Kernels::Portable,
            Kernels::Differentiable,
            Kernels::Composed,
        ];
        let models = sets.map(|k| Llama::new(&cfg, vb.clone(), false, k).unwrap());
        assert_eq!(models.each_ref().map(|m| m.kernels), sets, "on the CPU");
        let seq = [3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7];
        let want = models[0].forward_all(&ids(&seq), 0, None).unwrap();
        for (model, kernels) in models.iter().zip(sets).skip(1) {
            let got = model.forward_all(&ids(&seq), 0, None).unwrap();
            assert!(close(&got, &want), "{kernels:?}");
        }
        let prompt = 11;
        for model in &models[..2] {
            let mut cache = model.new_cache();
            model
                .forward_last(&ids(&seq[..prompt]), 0, Some(&mut cache))
                .unwrap();
            for (pos, &tok) in seq.iter().enumerate().skip(prompt) {
                let step = model
                    .forward_last(&ids(&[tok]), pos, Some(&mut cache))
                    .unwrap();
                let want = want.narrow(1, pos, 1).unwrap().squeeze(1).unwrap();
                assert!(close(&step, &want), "{:?} at {pos}", model.kernels);
            }
        }
        let targets = Tensor::new(&seq[1..], &Device::Cpu).unwrap();
        let gradients = |model: &Llama| {
            let logits = model.forward_all(&ids(&seq[..13]), 0, None).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0).unwrap(), &targets);
            loss.unwrap().backward().unwrap()
        };
        let (cpu, composed) = (gradients(&models[2]), gradients(&models[3]));
        for var in varmap.all_vars() {
            let want = cpu.get(var.as_tensor()).unwrap();
            assert!(close(composed.get(var.as_tensor()).unwrap(), want));
        }
    }

    #[test]
    fn cached_decoding_equals_full_recomputation() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Llama::new(&tiny(Family::Llama), vb, true, Kernels::Fused).unwrap();
        let seq = [3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3];
        let full = model.forward_all(&ids(&seq), 0, None).unwrap();
        let mut cache = model.new_cache();
        model
            .forward_last(&ids(&seq[..6]), 0, Some(&mut cache))
            .unwrap();
        for (pos, &tok) in seq.iter().enumerate().skip(6) {
            let step = model
                .forward_last(&ids(&[tok]), pos, Some(&mut cache))
                .unwrap();
            let want = full.narrow(1, pos, 1).unwrap().squeeze(1).unwrap();
            assert!(close(&step, &want), "position {pos}");
        }
        // Truncate back into the prompt and continue with different tokens: equals a fresh run.
        cache.truncate(4).unwrap();
        assert_eq!(cache.len(), 4);
        let other = [3u32, 1, 4, 1, 7, 7, 8];
        let resumed = model
            .forward_all(&ids(&other[4..]), 4, Some(&mut cache))
            .unwrap();
        let fresh = model
            .forward_all(&ids(&other), 0, None)
            .unwrap()
            .narrow(1, 4, 3)
            .unwrap();
        assert!(close(&resumed, &fresh));
    }

    #[test]
    fn shifting_rotated_keys_equals_rotating_them_at_the_new_position() {
        let cfg = tiny(Family::Qwen2);
        let rope = Rope::new(&cfg, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &Device::Cpu).unwrap();
        let at = |p: usize| rope.apply(&x, p, Kernels::Fused).unwrap();
        assert!(max_abs_diff(&rope.shift(&at(3), 7).unwrap(), &at(10)) < 1e-5);
        assert!(max_abs_diff(&rope.shift(&at(10), -3).unwrap(), &at(7)) < 1e-5);
        assert!(max_abs_diff(&rope.shift(&at(4), 0).unwrap(), &at(4)) < 1e-6);
    }

    #[test]
    fn linear_rope_scaling_divides_positions() {
        let plain = tiny(Family::Llama);
        let scaled = LlamaConfig {
            rope_scaling_factor: 4.0,
            ..plain.clone()
        };
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &Device::Cpu).unwrap();
        let rope = |c: &LlamaConfig| Rope::new(c, DType::F32, &Device::Cpu).unwrap();
        let a = rope(&scaled).apply(&x, 8, Kernels::Fused).unwrap();
        let b = rope(&plain)
            .apply(&x.narrow(2, 0, 1).unwrap(), 2, Kernels::Fused)
            .unwrap();
        assert!(max_abs_diff(&a.narrow(2, 0, 1).unwrap(), &b) < 1e-5);
    }

    #[test]
    fn a_segment_put_back_where_it_was_leaves_the_cache_as_it_was() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Llama::new(&tiny(Family::Qwen2), vb, false, Kernels::Fused).unwrap();
        let seq = ids(&[3, 14, 15, 9, 2, 6, 5, 35, 8, 9]);
        let mut whole = model.new_cache();
        model.forward_hidden(&seq, 0, Some(&mut whole)).unwrap();
        let mut cut = whole.clone();
        let tail = cut.segment(4..10).unwrap();
        cut.truncate(4).unwrap();
        model.append_shifted(&mut cut, &tail, 0).unwrap();
        assert_eq!(cut.len(), 10);
        let next = ids(&[7]);
        let a = model.forward_last(&next, 10, Some(&mut whole)).unwrap();
        let b = model.forward_last(&next, 10, Some(&mut cut)).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-6);
        // A segment outside the cache is an error, not a panic.
        assert!(whole.segment(5..40).is_err());
    }

    /// Appending in place never writes where another holder of the buffers can look: a clone
    /// decoding other tokens, a segment of positions the cache was then cut before, and the
    /// cache itself all compute what a forward pass from nothing computes.
    #[test]
    fn appends_in_place_never_change_what_a_clone_or_a_segment_holds() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Llama::new(&tiny(Family::Qwen2), vb, false, Kernels::Fused).unwrap();
        let seq = [3, 14, 15, 9, 2, 6, 5, 35, 8, 9];
        let fresh = |tokens: &[u32]| model.forward_last(&ids(tokens), 0, None).unwrap();
        let with = |more: &[u32]| [&seq[..], more].concat();
        let mut first = model.new_cache();
        model
            .forward_hidden(&ids(&seq), 0, Some(&mut first))
            .unwrap();
        let tail = first.segment(6..10).unwrap();
        let (k0, v0) = tail.layers[0].clone().unwrap();
        let (k0, v0) = (k0.copy().unwrap(), v0.copy().unwrap());
        let mut second = first.clone();
        let a = model
            .forward_last(&ids(&[7]), 10, Some(&mut first))
            .unwrap();
        let b = model
            .forward_last(&ids(&[11]), 10, Some(&mut second))
            .unwrap();
        let a2 = model
            .forward_last(&ids(&[4]), 11, Some(&mut first))
            .unwrap();
        let b2 = model
            .forward_last(&ids(&[4]), 11, Some(&mut second))
            .unwrap();
        assert!(max_abs_diff(&a, &fresh(&with(&[7]))) < 1e-5);
        assert!(max_abs_diff(&b, &fresh(&with(&[11]))) < 1e-5);
        assert!(max_abs_diff(&a2, &fresh(&with(&[7, 4]))) < 1e-5);
        assert!(max_abs_diff(&b2, &fresh(&with(&[11, 4]))) < 1e-5);
        // Cut before the segment, and positions 6.. written again with other tokens.
        first.truncate(6).unwrap();
        let c = model
            .forward_last(&ids(&[1, 2, 3]), 6, Some(&mut first))
            .unwrap();
        assert!(max_abs_diff(&c, &fresh(&[3, 14, 15, 9, 2, 6, 1, 2, 3])) < 1e-5);
        let (k, v) = tail.layers[0].clone().unwrap();
        assert_eq!(max_abs_diff(&k, &k0), 0.0);
        assert_eq!(max_abs_diff(&v, &v0), 0.0);
        let b3 = model
            .forward_last(&ids(&[5]), 12, Some(&mut second))
            .unwrap();
        assert!(max_abs_diff(&b3, &fresh(&with(&[11, 4, 5]))) < 1e-5);
    }

    /// A prompt's attention a block of queries at a time (the inference kernels) computes what
    /// the whole causal product computes (the training kernels), from an empty cache and after
    /// cached positions, for prompts of several blocks and a part of one.
    #[test]
    fn a_prompt_attended_in_blocks_equals_the_whole_causal_product() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = tiny(Family::Qwen2);
        let fused = Llama::new(&cfg, vb.clone(), false, Kernels::Fused).unwrap();
        let plain = Llama::new(&cfg, vb, false, Kernels::Differentiable).unwrap();
        let seq: Vec<u32> = (0..45).map(|i| (i * 7 + 3) % 50).collect();
        let whole = |m: &Llama| m.forward_all(&ids(&seq), 0, None).unwrap();
        assert!(max_abs_diff(&whole(&fused), &whole(&plain)) < 1e-5);
        for m in [&fused, &plain] {
            let mut cache = m.new_cache();
            m.forward_hidden(&ids(&seq[..11]), 0, Some(&mut cache))
                .unwrap();
            let rest = m
                .forward_all(&ids(&seq[11..]), 11, Some(&mut cache))
                .unwrap();
            let want = whole(&plain).narrow(1, 11, seq.len() - 11).unwrap();
            assert!(max_abs_diff(&rest, &want) < 1e-5);
        }
    }

    #[test]
    fn positions_past_the_context_are_an_error_not_a_panic() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Llama::new(&tiny(Family::Llama), vb, true, Kernels::Fused).unwrap();
        let long: Vec<u32> = (0..65).map(|i| i % 50).collect();
        assert!(model.forward_all(&ids(&long), 0, None).is_err());
    }
}
