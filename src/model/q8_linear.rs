//! A linear layer over Q8_0 weights (GGUF's 8-bit type) with our own CPU kernels, for inference.
//!
//! Decoding a token reads every weight once, so decoding speed is how fast the cores turn weight
//! bytes into dot products. In the file's layout (per row, per 32 values: an f16 scale, then 32
//! `i8`) a dot product needs a horizontal sum and a scalar scale conversion per block and row,
//! which kept candle's kernel, and a first kernel of ours on that layout, at about 10 GB/s on two
//! cores that stream 34 GB/s. So the rows are repacked as they are read, the way llama.cpp's CPU
//! backend repacks them:
//!
//! - Tiles of 16 rows: for each 32-value block, the 16 rows' scales side by side (one vector of
//!   f16), then their values in 8 groups of 4 per row, so one 64-byte load holds 4 values of each
//!   of 16 rows and one AVX-512 VNNI instruction (`vpdpbusd`) adds their products with 4 activation
//!   values to 16 running sums: no horizontal sums, the scales converted 16 at a time.
//! - Values are stored offset by 128 as `u8`, the unsigned operand `vpdpbusd` takes; the offset's
//!   contribution (`128 * sum(x)` per block) is subtracted by starting each block's sums at its
//!   negation.
//! - Activations are quantized once per product to 8 bits per 32-value block with an f32 scale
//!   (what llama.cpp does), so a block's products are integer arithmetic.
//! - AVX2 (without VNNI) undoes the offset and uses `vpmaddubsw`; other processors run portable
//!   Rust. The level is chosen at run time. Tiles are split across threads.
//!
//! The repacked matrix is the same size as the file's (Q8_0 is 34 bytes per 32 values either way)
//! and is the only copy: rows are read from the file a tile at a time. Prompts (many activation
//! rows) run on the integer kernel too where the processor has VNNI, four activation rows per
//! pass over a tile (the tile stays in cache across them); elsewhere they dequantize the tiles a
//! chunk at a time into candle's f32 GEMM, which batches where vector products cannot.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::bf16_linear::{input_rows, output};

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block in the file: an f16 scale and 32 `i8`.
pub const BLOCK_BYTES: usize = 34;
/// Rows per tile.
const TILE: usize = 16;
/// Groups of 4 values in a block.
const GROUPS: usize = BLOCK / 4;

/// From this many activation rows on (a prompt), processors without VNNI widen the weights into
/// candle's GEMM.
pub const GEMM_ROWS: usize = 16;
/// Weight rows widened at a time, which bounds the f32 copy (a vocabulary-sized head is never
/// widened whole).
const GEMM_CHUNK: usize = 2048;
/// Tiles per work item handed to a thread.
const TILES_PER_TASK: usize = 4;

/// 64 bytes, aligned for AVX-512 loads: 4 values of each of a tile's 16 rows.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// How a set of tiles holds its values. In both, a block of a tile is its 16 rows' f16 scales
/// and their 32 values each in 8 groups of 4, stored unsigned with an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Q8_0's values: 8 lines a block, line `g` holding group `g` of every row, plus 128. 34
    /// bytes per 32 values, as in the file.
    Q8,
    /// Q5_0's values (0..32, offset 16; exactly the file's): 5 lines a block. Line `g % 4` holds
    /// the low 4 bits of group `g` (in the low half of each byte for `g < 4`, the high half
    /// otherwise); line 4 holds their fifth bits, bit `g` of a byte for group `g`. 22 bytes per
    /// 32 values, as in the file, where Q8 would take 34.
    Q5,
}

impl Format {
    /// Lines per block of a tile.
    fn lines(self) -> usize {
        match self {
            Self::Q8 => GROUPS,
            Self::Q5 => 5,
        }
    }

    /// What the stored values exceed the signed ones by.
    fn offset(self) -> i32 {
        match self {
            Self::Q8 => 128,
            Self::Q5 => 16,
        }
    }

    /// The GGUF type whose blocks this format holds as they are.
    pub fn file_type(self) -> candle_core::quantized::GgmlDType {
        match self {
            Self::Q8 => candle_core::quantized::GgmlDType::Q8_0,
            Self::Q5 => candle_core::quantized::GgmlDType::Q5_0,
        }
    }

    /// Bytes per 32-value block in a GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8 => BLOCK_BYTES,
            Self::Q5 => 22,
        }
    }

    /// Group `g` of a block's `lines` as Q8's layout holds it: 4 stored values of each row.
    fn group(self, lines: &[Line], g: usize) -> [u8; 64] {
        match self {
            Self::Q8 => lines[g].0,
            Self::Q5 => std::array::from_fn(|k| {
                let nibbles = lines[g % 4].0[k];
                let low = if g < 4 { nibbles & 15 } else { nibbles >> 4 };
                low | ((lines[4].0[k] >> g) & 1) << 4
            }),
        }
    }

    /// One file block's 32 stored values (0..256 for Q8, 0..32 for Q5) and its scale's bits.
    fn unpack(self, block: &[u8]) -> ([u8; BLOCK], u16) {
        let d = u16::from_le_bytes([block[0], block[1]]);
        let values = match self {
            Self::Q8 => std::array::from_fn(|i| block[2 + i].wrapping_add(128)),
            Self::Q5 => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                std::array::from_fn(|i| {
                    let low = match i < 16 {
                        true => block[6 + i] & 15,
                        false => block[6 + i - 16] >> 4,
                    };
                    low | (((high >> i) & 1) as u8) << 4
                })
            }
        };
        (values, d)
    }

    /// Stores `values` (a row's block, stored values) as row `lane` of a tile's block `lines`.
    fn pack(self, lines: &mut [Line], lane: usize, values: &[u8; BLOCK]) {
        for (i, &v) in values.iter().enumerate() {
            let (g, k) = (i / 4, lane * 4 + i % 4);
            match self {
                Self::Q8 => lines[g].0[k] = v,
                Self::Q5 => {
                    let shift = if g < 4 { 0 } else { 4 };
                    lines[g % 4].0[k] |= (v & 15) << shift;
                    lines[4].0[k] |= ((v >> 4) & 1) << g;
                }
            }
        }
    }

    /// A line of padding rows (zero weights).
    fn empty(self) -> Line {
        match self {
            Self::Q8 => Line([128; 64]),
            // Padding rows have zero scales, so what their values stand for never counts.
            Self::Q5 => Line([0; 64]),
        }
    }
}

/// A quantized matrix in tiles of 16 rows (the last tile padded).
#[derive(Clone)]
struct Tiles {
    /// `[tile][block][line]`: see [`Format`].
    values: Vec<Line>,
    /// `[tile][block][row]`: the f16 scales' bits.
    scales: Vec<u16>,
    blocks: usize,
    format: Format,
}

impl Tiles {
    fn tile_lines(&self) -> usize {
        self.blocks * self.format.lines()
    }

    /// Tile `t` dequantized into `out`: its 16 rows of `blocks * 32` values, row-major.
    fn dequantize_tile(&self, t: usize, out: &mut [f32]) {
        let k = self.blocks * BLOCK;
        let (n, offset) = (self.format.lines(), self.format.offset());
        for b in 0..self.blocks {
            let tb = t * self.blocks + b;
            let d: [f32; TILE] = std::array::from_fn(|lane| f16(self.scales[tb * TILE + lane]));
            let lines = &self.values[tb * n..][..n];
            for g in 0..GROUPS {
                let group = self.format.group(lines, g);
                for (lane, four) in group.chunks_exact(4).enumerate() {
                    let at = lane * k + b * BLOCK + 4 * g;
                    for (o, &v) in out[at..at + 4].iter_mut().zip(four) {
                        *o = d[lane] * (i32::from(v) - offset) as f32;
                    }
                }
            }
        }
    }

    /// Row `r`'s values and scales, dequantized, appended to `out`.
    fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        let (t, lane) = (r / TILE, r % TILE);
        let (n, offset) = (self.format.lines(), self.format.offset());
        for b in 0..self.blocks {
            let d = f16(self.scales[(t * self.blocks + b) * TILE + lane]);
            let lines = &self.values[(t * self.blocks + b) * n..][..n];
            for g in 0..GROUPS {
                let group = self.format.group(lines, g);
                let four = &group[lane * 4..lane * 4 + 4];
                out.extend(four.iter().map(|&v| d * (i32::from(v) - offset) as f32));
            }
        }
    }
}

fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// `y = x W^T + b` with `W` in Q8_0, `(out_dim, in_dim)`: a run of whole tiles in a set of tiles
/// that several layers may share (a layer's q, k and v projections are read into one, so that
/// [`Q8Linear::joint`] can compute them in one pass).
#[derive(Clone)]
pub struct Q8Linear {
    tiles: Arc<Tiles>,
    /// The first of this matrix's tiles.
    first_tile: usize,
    bias: Option<Vec<f32>>,
    in_dim: usize,
    out_dim: usize,
}

impl std::fmt::Debug for Q8Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Linear({}, {})", self.out_dim, self.in_dim)
    }
}

impl Q8Linear {
    /// A layer over the file's Q8_0 rows (`out_dim` rows of `in_dim / 32` blocks).
    pub fn from_rows(rows: &[u8], shape: (usize, usize), bias: Option<&Tensor>) -> Result<Self> {
        let row_bytes = shape.1 / BLOCK * BLOCK_BYTES;
        if rows.len() != shape.0 * row_bytes {
            candle_core::bail!(
                "{} bytes for a ({}, {}) Q8_0 matrix, not {}",
                rows.len(),
                shape.0,
                shape.1,
                shape.0 * row_bytes
            );
        }
        let mut layers = Self::read(&[shape.0], shape.1, |_, first, buf| {
            buf.copy_from_slice(&rows[first * row_bytes..][..buf.len()]);
            Ok(())
        })?;
        match layers.pop() {
            Some(layer) => layer.with_bias(bias),
            None => candle_core::bail!("no matrix read"),
        }
    }

    /// Matrices of `parts[i]` rows each, all of `in_dim` values, read into one set of tiles:
    /// `read(i, first, buf)` fills `buf` with whole rows of matrix `i` from row `first`, a tile's
    /// rows at a time, so no second copy of a matrix is ever held. Each matrix starts a tile.
    pub fn read(
        parts: &[usize],
        in_dim: usize,
        read: impl FnMut(usize, usize, &mut [u8]) -> Result<()>,
    ) -> Result<Vec<Self>> {
        Self::read_format(parts, in_dim, Format::Q8, read)
    }

    /// [`read`](Self::read) for rows in `format`'s file layout (Q8_0, or Q5_0 kept in five bits
    /// where the processor has VNNI: see [`q5_tiles`]).
    pub fn read_format(
        parts: &[usize],
        in_dim: usize,
        format: Format,
        mut read: impl FnMut(usize, usize, &mut [u8]) -> Result<()>,
    ) -> Result<Vec<Self>> {
        if in_dim == 0 || !in_dim.is_multiple_of(BLOCK) {
            candle_core::bail!("a row of {in_dim} values is not whole blocks of {BLOCK}");
        }
        let blocks = in_dim / BLOCK;
        let row_bytes = blocks * format.block_bytes();
        let n = format.lines();
        let total: usize = parts.iter().map(|rows| rows.div_ceil(TILE)).sum();
        let mut values = vec![format.empty(); total * blocks * n];
        let mut scales = vec![0u16; total * blocks * TILE];
        let mut buf = vec![0u8; TILE * row_bytes];
        let mut t = 0;
        let mut firsts = Vec::with_capacity(parts.len());
        for (part, &rows) in parts.iter().enumerate() {
            firsts.push(t);
            for first in (0..rows).step_by(TILE) {
                let count = TILE.min(rows - first);
                read(part, first, &mut buf[..count * row_bytes])?;
                for (lane, row) in buf[..count * row_bytes].chunks_exact(row_bytes).enumerate() {
                    for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
                        let (stored, d) = format.unpack(block);
                        scales[(t * blocks + b) * TILE + lane] = d;
                        format.pack(&mut values[(t * blocks + b) * n..][..n], lane, &stored);
                    }
                }
                t += 1;
            }
        }
        let tiles = Arc::new(Tiles {
            values,
            scales,
            blocks,
            format,
        });
        Ok(parts
            .iter()
            .zip(firsts)
            .map(|(&out_dim, first_tile)| Self {
                tiles: Arc::clone(&tiles),
                first_tile,
                bias: None,
                in_dim,
                out_dim,
            })
            .collect())
    }

    /// The same weights with `bias` (the weights are shared, not copied).
    pub fn with_bias(&self, bias: Option<&Tensor>) -> Result<Self> {
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != self.out_dim) {
            candle_core::bail!("a bias of the wrong length for {} rows", self.out_dim);
        }
        Ok(Self {
            bias,
            ..self.clone()
        })
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    /// `layers` as one matrix whose rows are theirs in turn, when they lie that way in one set of
    /// tiles (read together, each a whole number of tiles): computing it computes them all in
    /// one pass over the weights and one dispatch to the threads.
    pub fn joint(layers: &[&Q8Linear]) -> Option<Q8Linear> {
        let first = layers.first()?;
        let mut next = first.first_tile;
        for l in layers {
            let whole = l.out_dim.is_multiple_of(TILE);
            if !Arc::ptr_eq(&l.tiles, &first.tiles) || l.first_tile != next || !whole {
                return None;
            }
            next += l.out_dim / TILE;
        }
        let bias = layers.iter().any(|l| l.bias.is_some()).then(|| {
            layers
                .iter()
                .flat_map(|l| match &l.bias {
                    Some(b) => b.clone(),
                    None => vec![0.0; l.out_dim],
                })
                .collect()
        });
        Some(Q8Linear {
            tiles: Arc::clone(&first.tiles),
            first_tile: first.first_tile,
            bias,
            in_dim: first.in_dim,
            out_dim: layers.iter().map(|l| l.out_dim).sum(),
        })
    }

    /// Rows `ids` of the matrix dequantized, `(ids.len(), in_dim)`: an embedding lookup (the table
    /// shared with a tied head).
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let mut out = Vec::with_capacity(ids.len() * self.in_dim);
        for &id in ids {
            if id as usize >= self.out_dim {
                candle_core::bail!("token id {id} is outside the {} rows", self.out_dim);
            }
            self.tiles
                .dequantize_row(self.first_tile * TILE + id as usize, &mut out);
        }
        Tensor::from_vec(out, (ids.len(), self.in_dim), device)
    }

    /// Rows `range` dequantized, `(len, in_dim)`: whole tiles at a time (a tile's values lie
    /// together, a row's do not), in parallel.
    fn dequantize_rows(&self, range: std::ops::Range<usize>, device: &Device) -> Result<Tensor> {
        let k = self.in_dim;
        let (first, last) = (range.start / TILE, range.end.div_ceil(TILE));
        let mut widened = vec![0f32; (last - first) * TILE * k];
        widened
            .par_chunks_mut(TILE * k)
            .enumerate()
            .for_each(|(i, out)| self.tiles.dequantize_tile(self.first_tile + first + i, out));
        let skip = (range.start - first * TILE) * k;
        let len = range.len();
        let out = match skip {
            0 => {
                widened.truncate(len * k);
                widened
            }
            _ => widened[skip..skip + len * k].to_vec(),
        };
        Tensor::from_vec(out, (len, k), device)
    }

    /// The whole matrix in f32 (a fine-tune's starting weights).
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        self.dequantize_rows(0..self.out_dim, device)
    }

    /// `x` of shape `(..., in)`; returns `(..., out)` in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (lead, rows) = input_rows(x, self.in_dim, "Q8_0")?;
        let out = if rows >= GEMM_ROWS && !integer_prompts(level()) {
            self.gemm(&x.to_dtype(DType::F32)?.reshape((rows, self.in_dim))?)?
        } else {
            let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            self.products(&xs, rows)
        };
        output(out, self.bias.as_deref(), &lead, self.out_dim, x.device())
    }

    /// `x` (`(rows, in_dim)`) times the weights through candle's f32 GEMM, the weights widened
    /// `GEMM_CHUNK` rows at a time, the chunks in parallel: `(rows, out_dim)` row-major.
    fn gemm(&self, x: &Tensor) -> Result<Vec<f32>> {
        // One chunk widened at a time: the f32 copy never exceeds a chunk.
        let parts = (0..self.out_dim)
            .step_by(GEMM_CHUNK)
            .map(|start| {
                let end = self.out_dim.min(start + GEMM_CHUNK);
                x.matmul(&self.dequantize_rows(start..end, x.device())?.t()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)?.flatten_all()?.to_vec1()
    }

    /// `rows` activation rows `xs` times the weights: `(rows, out_dim)` row-major.
    fn products(&self, xs: &[f32], rows: usize) -> Vec<f32> {
        let acts: Vec<Activations> = xs
            .par_chunks_exact(self.in_dim)
            .map(Activations::quantize)
            .collect();
        let tiles = &*self.tiles;
        let level = level();
        let padded = self.out_dim.next_multiple_of(TILE);
        // (rows, padded) while computing: each task owns whole tiles of every row.
        let mut out = vec![0f32; rows * padded];
        let lines = tiles.tile_lines();
        let task_tiles = TILES_PER_TASK.min(padded / TILE);
        let tasks = padded / TILE;
        let per_task: Vec<Vec<f32>> = (0..tasks.div_ceil(task_tiles))
            .into_par_iter()
            .map(|task| {
                let first = self.first_tile + task * task_tiles;
                let count = task_tiles.min(tasks - task * task_tiles);
                let values = &tiles.values[first * lines..(first + count) * lines];
                let scales =
                    &tiles.scales[first * tiles.blocks * TILE..][..count * tiles.blocks * TILE];
                let mut part = vec![0f32; rows * count * TILE];
                match level {
                    // SAFETY: `level()` chose it only where the processor has its features.
                    #[cfg(target_arch = "x86_64")]
                    #[allow(unsafe_code)]
                    Level::Avx512Vnni if rows > 1 => unsafe {
                        match tiles.format {
                            Format::Q8 => {
                                x86::rows_avx512(values, scales, tiles.blocks, &acts, &mut part)
                            }
                            Format::Q5 => {
                                x86::rows_q5_avx512(values, scales, tiles.blocks, &acts, &mut part)
                            }
                        }
                    },
                    _ => {
                        for (a, y) in acts.iter().zip(part.chunks_exact_mut(count * TILE)) {
                            dots(level, tiles.format, values, scales, tiles.blocks, a, y);
                        }
                    }
                }
                part
            })
            .collect();
        for (task, part) in per_task.iter().enumerate() {
            let first = task * task_tiles * TILE;
            let width = part.len() / rows;
            for (r, y) in part.chunks_exact(width).enumerate() {
                out[r * padded + first..][..width].copy_from_slice(y);
            }
        }
        if padded == self.out_dim {
            return out;
        }
        out.chunks_exact(padded)
            .flat_map(|row| &row[..self.out_dim])
            .copied()
            .collect()
    }
}

/// One activation row quantized per 32-value block: `q`, each block's scale `d`, so that
/// `x[i] ~= d[i / 32] * q[i]`, and each block's `-128 * sum(q)`, which cancels the weights' offset.
#[derive(Debug, Clone)]
struct Activations {
    q: Vec<i8>,
    d: Vec<f32>,
    offset: Vec<i32>,
    /// Each block's `-16 * sum(q)`, which cancels Q5's offset.
    offset5: Vec<i32>,
}

impl Activations {
    fn quantize(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut q = vec![0i8; blocks * BLOCK];
        let mut d = vec![0f32; blocks];
        let mut offset = vec![0i32; blocks];
        let mut offset5 = vec![0i32; blocks];
        for (b, values) in x.chunks_exact(BLOCK).enumerate() {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            d[b] = scale;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let block = &mut q[b * BLOCK..(b + 1) * BLOCK];
            for (dst, &v) in block.iter_mut().zip(values) {
                // Rounded half away from zero, as `f32::round` (which is a call to libm: a few
                // percent of a prompt's time) and within [-127, 127] by construction (the AVX2
                // kernel relies on it): truncation after adding half with the value's sign.
                let r = (v * inv).clamp(-127.0, 127.0);
                *dst = (r + 0.5f32.copysign(r)) as i8;
            }
            let sum = block.iter().map(|&v| i32::from(v)).sum::<i32>();
            offset[b] = -128 * sum;
            offset5[b] = -16 * sum;
        }
        Self {
            q,
            d,
            offset,
            offset5,
        }
    }
}

/// The instruction sets the kernels can use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// The best level this processor runs, found once. `INFILL_KERNELS=avx2|portable` caps it (for
/// comparing kernels on one machine).
fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("INFILL_KERNELS").unwrap_or_default();
        let available = levels();
        let capped = |l: &Level| match cap.as_str() {
            "portable" => *l == Level::Portable,
            #[cfg(target_arch = "x86_64")]
            "avx2" => *l != Level::Avx512Vnni,
            _ => true,
        };
        available
            .into_iter()
            .rev()
            .find(capped)
            .unwrap_or(Level::Portable)
    })
}

/// Whether this processor runs the AVX-512 VNNI kernels, where Q8_0 is the fastest type to hold
/// a quantized matrix in (prompts and decoding both on integer kernels).
pub fn vnni() -> bool {
    integer_prompts(level())
}

/// Whether Q5_0 matrices are kept in five bits ([`Format::Q5`]) rather than requantized to Q8_0:
/// where the AVX2 or VNNI kernels run (portable Rust has no fast form of them), unless
/// `INFILL_Q5=q8` asks for the eight-bit form (to compare the two on one machine).
pub fn q5_tiles() -> bool {
    level() != Level::Portable && std::env::var("INFILL_Q5").map_or(true, |v| v != "q8")
}

/// Whether prompts run on the integer kernels at `level`: only VNNI's has a several-row form.
fn integer_prompts(level: Level) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512Vnni {
        return true;
    }
    let _ = level;
    false
}

/// The levels this processor can run, worst first.
fn levels() -> Vec<Level> {
    let mut all = vec![Level::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            all.push(Level::Avx2);
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                all.push(Level::Avx512Vnni);
            }
        }
    }
    all
}

/// `out[16 * t + lane]` = row `lane` of tile `t` (of `values` and `scales`, whole tiles of
/// `blocks` blocks) dotted with `a`.
fn dots(
    level: Level,
    format: Format,
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    match (level, format) {
        // SAFETY: `level()` chose these only where the processor has the features they enable.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx512Vnni, Format::Q8) => unsafe {
            x86::dots_avx512(values, scales, blocks, a, out)
        },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx512Vnni, Format::Q5) => unsafe {
            x86::dots_q5_avx512(values, scales, blocks, a, out)
        },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx2, Format::Q8) => unsafe { x86::dots_avx2(values, scales, blocks, a, out) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx2, Format::Q5) => unsafe { x86::dots_q5_avx2(values, scales, blocks, a, out) },
        (Level::Portable, _) => dots_portable(format, values, scales, blocks, a, out),
    }
}

fn dots_portable(
    format: Format,
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let n = format.lines();
    for (t, y) in out.chunks_exact_mut(TILE).enumerate() {
        let mut acc = [0f32; TILE];
        for b in 0..blocks {
            let start = match format {
                Format::Q8 => a.offset[b],
                Format::Q5 => a.offset5[b],
            };
            let mut sums = [start; TILE];
            let lines = &values[(t * blocks + b) * n..][..n];
            for g in 0..GROUPS {
                let line = format.group(lines, g);
                let x = &a.q[b * BLOCK + 4 * g..][..4];
                for (sum, four) in sums.iter_mut().zip(line.chunks_exact(4)) {
                    for (&w, &v) in four.iter().zip(x) {
                        *sum += i32::from(w) * i32::from(v);
                    }
                }
            }
            let s = &scales[(t * blocks + b) * TILE..][..TILE];
            for lane in 0..TILE {
                acc[lane] += sums[lane] as f32 * (f16(s[lane]) * a.d[b]);
            }
        }
        y.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    //! The x86 kernels. Every access stays inside `values`, `scales` and the activations: the
    //! callers pass whole tiles of `blocks` blocks, and activations of `blocks` blocks.

    use std::arch::x86_64::*;

    use super::{Activations, BLOCK, GROUPS, Line, TILE};

    /// Panics unless `values` and `scales` hold `tiles` whole tiles of `blocks` blocks and each
    /// activation row `blocks` blocks: what every kernel's unchecked indexing relies on.
    fn bounds(values: &[Line], scales: &[u16], blocks: usize, tiles: usize, acts: &[Activations]) {
        bounds_lines(values, scales, blocks, tiles, acts, GROUPS);
    }

    /// [`bounds`] for tiles of `lines` lines a block.
    fn bounds_lines(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        tiles: usize,
        acts: &[Activations],
        lines: usize,
    ) {
        assert!(values.len() >= tiles * blocks * lines && scales.len() >= tiles * blocks * TILE);
        for a in acts {
            assert!(a.q.len() >= blocks * BLOCK && a.d.len() >= blocks);
            assert!(a.offset.len() >= blocks && a.offset5.len() >= blocks);
        }
    }

    /// How far ahead of the loads (in 64-byte lines, about 2 KB) each tile's values are
    /// prefetched: the hardware's prefetchers alone left two cores at 18 GB/s of the 34 the
    /// memory streams; this added 10% (`cargo bench --bench q8`).
    const PREFETCH_LINES: usize = 32;

    /// # Safety
    /// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dots_avx512(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        a: &Activations,
        out: &mut [f32],
    ) {
        let tiles = out.len() / TILE;
        bounds(values, scales, blocks, tiles, std::slice::from_ref(a));
        // SAFETY: `bounds` bounds every index below.
        unsafe {
            let x = a.q.as_ptr();
            // Two tiles at a time, each block's groups split over two sums: four independent
            // chains of `vpdpbusd`, whose latency one chain would wait on.
            let mut t = 0;
            while t < tiles {
                let pair = usize::from(t + 1 < tiles);
                let mut acc = [_mm512_setzero_ps(); 2];
                for b in 0..blocks {
                    let tb = [t * blocks + b, (t + pair) * blocks + b];
                    let lines = tb.map(|tb| values.as_ptr().add(tb * GROUPS));
                    let start = _mm512_set1_epi32(*a.offset.get_unchecked(b));
                    let zero = _mm512_setzero_si512();
                    let mut sums = [[start, zero]; 2];
                    for g in 0..GROUPS {
                        let four = std::ptr::read_unaligned(x.add(b * BLOCK + 4 * g).cast::<i32>());
                        let xv = _mm512_set1_epi32(four);
                        for (sums, lines) in sums.iter_mut().zip(lines) {
                            let ahead = lines.wrapping_add(g + PREFETCH_LINES);
                            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                            let w = _mm512_load_si512(lines.add(g).cast());
                            sums[g % 2] = _mm512_dpbusd_epi32(sums[g % 2], w, xv);
                        }
                    }
                    let da = _mm512_set1_ps(*a.d.get_unchecked(b));
                    for ((acc, sums), tb) in acc.iter_mut().zip(sums).zip(tb) {
                        let bits = _mm256_loadu_si256(scales.as_ptr().add(tb * TILE).cast());
                        let s = _mm512_mul_ps(_mm512_cvtph_ps(bits), da);
                        let sum = _mm512_add_epi32(sums[0], sums[1]);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, *acc);
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(1 + pair) {
                    _mm512_storeu_ps(out.as_mut_ptr().add((t + i) * TILE), *acc);
                }
                t += 1 + pair;
            }
        }
    }

    /// Groups `g` and `g + 4` of a Q5 block as the stored values (0..31) `vpdpbusd` takes: the
    /// low and high halves of nibble line `n`, each joined with its fifth bits from `high`
    /// (group g's are bit g of each byte: left by 4 - g to bit 4; group g + 4's, right by g).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn q5_groups(n: __m512i, high: __m512i, g: usize) -> (__m512i, __m512i) {
        let (low, fifth) = (_mm512_set1_epi8(15), _mm512_set1_epi8(16));
        let up = _mm_set_epi64x(0, 4 - g as i64);
        let down = _mm_set_epi64x(0, g as i64);
        let h_low = _mm512_and_si512(_mm512_sll_epi16(high, up), fifth);
        let h_high = _mm512_and_si512(_mm512_srl_epi16(high, down), fifth);
        // (n & 15) | h and ((n >> 4) & 15) | h: 0xEA is (a & b) | c.
        let w_low = _mm512_ternarylogic_epi32::<0xEA>(n, low, h_low);
        let w_high = _mm512_ternarylogic_epi32::<0xEA>(_mm512_srli_epi16::<4>(n), low, h_high);
        (w_low, w_high)
    }

    /// [`dots_avx512`] over tiles in [`super::Format::Q5`]: each of a block's four nibble lines
    /// gives two groups (its low and high halves), each completed with its fifth bits from the
    /// block's last line (shifted into bit 4), so one load of 64 bytes feeds two `vpdpbusd`.
    ///
    /// # Safety
    /// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dots_q5_avx512(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        a: &Activations,
        out: &mut [f32],
    ) {
        const LINES: usize = 5;
        let tiles = out.len() / TILE;
        bounds_lines(
            values,
            scales,
            blocks,
            tiles,
            std::slice::from_ref(a),
            LINES,
        );
        // SAFETY: `bounds_lines` bounds every index below.
        unsafe {
            let x = a.q.as_ptr();
            // Two tiles at a time: four independent chains of `vpdpbusd`.
            let mut t = 0;
            while t < tiles {
                let pair = usize::from(t + 1 < tiles);
                let mut acc = [_mm512_setzero_ps(); 2];
                for b in 0..blocks {
                    let tb = [t * blocks + b, (t + pair) * blocks + b];
                    let lines = tb.map(|tb| values.as_ptr().add(tb * LINES));
                    let start = _mm512_set1_epi32(*a.offset5.get_unchecked(b));
                    let zero = _mm512_setzero_si512();
                    let mut sums = [[start, zero]; 2];
                    let high = lines.map(|l| _mm512_load_si512(l.add(4).cast()));
                    for g in 0..4 {
                        let xs = x.add(b * BLOCK + 4 * g);
                        let x_low = _mm512_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                        let x_high =
                            _mm512_set1_epi32(std::ptr::read_unaligned(xs.add(16).cast::<i32>()));
                        for i in 0..2 {
                            let ahead = lines[i].wrapping_add(g + 2 * PREFETCH_LINES / 3);
                            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                            let n = _mm512_load_si512(lines[i].add(g).cast());
                            let (w_low, w_high) = q5_groups(n, high[i], g);
                            sums[i][0] = _mm512_dpbusd_epi32(sums[i][0], w_low, x_low);
                            sums[i][1] = _mm512_dpbusd_epi32(sums[i][1], w_high, x_high);
                        }
                    }
                    let da = _mm512_set1_ps(*a.d.get_unchecked(b));
                    for ((acc, sums), tb) in acc.iter_mut().zip(sums).zip(tb) {
                        let bits = _mm256_loadu_si256(scales.as_ptr().add(tb * TILE).cast());
                        let s = _mm512_mul_ps(_mm512_cvtph_ps(bits), da);
                        let sum = _mm512_add_epi32(sums[0], sums[1]);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, *acc);
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(1 + pair) {
                    _mm512_storeu_ps(out.as_mut_ptr().add((t + i) * TILE), *acc);
                }
                t += 1 + pair;
            }
        }
    }

    /// Activation rows at a time in a prompt: each line of weights loaded once for this many.
    const ROWS: usize = 4;

    /// `out` (`(acts.len(), tiles * 16)` row-major) = every activation row dotted with every row
    /// of the tiles: a prompt's product, each tile's values loaded once per four activation rows
    /// and kept in cache across them.
    ///
    /// # Safety
    /// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn rows_avx512(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        acts: &[Activations],
        out: &mut [f32],
    ) {
        let rows = acts.len();
        let width = out.len() / rows.max(1);
        let tiles = width / TILE;
        assert!(out.len() == rows * width);
        bounds(values, scales, blocks, tiles, acts);
        // SAFETY: `bounds` and the assert above bound every index below.
        unsafe {
            for t in 0..tiles {
                for first in (0..rows).step_by(ROWS) {
                    let count = ROWS.min(rows - first);
                    // Rows past the end repeat the last one; their results are not stored.
                    let a: [&Activations; ROWS] =
                        std::array::from_fn(|r| &acts[first + r.min(count - 1)]);
                    let mut acc = [_mm512_setzero_ps(); ROWS];
                    for b in 0..blocks {
                        let tb = t * blocks + b;
                        let lines = values.as_ptr().add(tb * GROUPS);
                        let mut sums: [__m512i; ROWS] = std::array::from_fn(|r| {
                            _mm512_set1_epi32(*a[r].offset.get_unchecked(b))
                        });
                        for g in 0..GROUPS {
                            let w = _mm512_load_si512(lines.add(g).cast());
                            for r in 0..ROWS {
                                let x = a[r].q.as_ptr().add(b * BLOCK + 4 * g);
                                let four = std::ptr::read_unaligned(x.cast::<i32>());
                                sums[r] = _mm512_dpbusd_epi32(sums[r], w, _mm512_set1_epi32(four));
                            }
                        }
                        let bits = _mm256_loadu_si256(scales.as_ptr().add(tb * TILE).cast());
                        let d = _mm512_cvtph_ps(bits);
                        for r in 0..ROWS {
                            let s = _mm512_mul_ps(d, _mm512_set1_ps(*a[r].d.get_unchecked(b)));
                            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), s, acc[r]);
                        }
                    }
                    for (r, acc) in acc.iter().enumerate().take(count) {
                        _mm512_storeu_ps(
                            out.as_mut_ptr().add((first + r) * width + t * TILE),
                            *acc,
                        );
                    }
                }
            }
        }
    }

    /// [`rows_avx512`] over tiles in [`super::Format::Q5`], the groups unpacked as in
    /// [`dots_q5_avx512`] once per four activation rows.
    ///
    /// # Safety
    /// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn rows_q5_avx512(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        acts: &[Activations],
        out: &mut [f32],
    ) {
        const LINES: usize = 5;
        let rows = acts.len();
        let width = out.len() / rows.max(1);
        let tiles = width / TILE;
        assert!(out.len() == rows * width);
        bounds_lines(values, scales, blocks, tiles, acts, LINES);
        // SAFETY: `bounds_lines` and the assert above bound every index below.
        unsafe {
            for t in 0..tiles {
                for first in (0..rows).step_by(ROWS) {
                    let count = ROWS.min(rows - first);
                    // Rows past the end repeat the last one; their results are not stored.
                    let a: [&Activations; ROWS] =
                        std::array::from_fn(|r| &acts[first + r.min(count - 1)]);
                    let mut acc = [_mm512_setzero_ps(); ROWS];
                    for b in 0..blocks {
                        let tb = t * blocks + b;
                        let lines = values.as_ptr().add(tb * LINES);
                        let mut sums: [__m512i; ROWS] = std::array::from_fn(|r| {
                            _mm512_set1_epi32(*a[r].offset5.get_unchecked(b))
                        });
                        let high = _mm512_load_si512(lines.add(4).cast());
                        for g in 0..4 {
                            let n = _mm512_load_si512(lines.add(g).cast());
                            let (w_low, w_high) = q5_groups(n, high, g);
                            for r in 0..ROWS {
                                let x = a[r].q.as_ptr().add(b * BLOCK + 4 * g);
                                let x_low = _mm512_set1_epi32(std::ptr::read_unaligned(x.cast()));
                                let x_high =
                                    _mm512_set1_epi32(std::ptr::read_unaligned(x.add(16).cast()));
                                sums[r] = _mm512_dpbusd_epi32(sums[r], w_low, x_low);
                                sums[r] = _mm512_dpbusd_epi32(sums[r], w_high, x_high);
                            }
                        }
                        let bits = _mm256_loadu_si256(scales.as_ptr().add(tb * TILE).cast());
                        let d = _mm512_cvtph_ps(bits);
                        for r in 0..ROWS {
                            let s = _mm512_mul_ps(d, _mm512_set1_ps(*a[r].d.get_unchecked(b)));
                            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), s, acc[r]);
                        }
                    }
                    for (r, acc) in acc.iter().enumerate().take(count) {
                        _mm512_storeu_ps(
                            out.as_mut_ptr().add((first + r) * width + t * TILE),
                            *acc,
                        );
                    }
                }
            }
        }
    }

    /// [`dots_avx2`] over tiles in [`super::Format::Q5`]: the stored values are unsigned and
    /// small (0..31), so `vpmaddubsw` takes them as they are, with the activations as its signed
    /// operand (a pair of products stays within 2 * 31 * 127), and the offset is cancelled as
    /// in the VNNI kernels.
    ///
    /// # Safety
    /// The processor must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots_q5_avx2(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        a: &Activations,
        out: &mut [f32],
    ) {
        const LINES: usize = 5;
        let tiles = out.len() / TILE;
        bounds_lines(
            values,
            scales,
            blocks,
            tiles,
            std::slice::from_ref(a),
            LINES,
        );
        // SAFETY: `bounds_lines` bounds every index below.
        unsafe {
            let x = a.q.as_ptr();
            let ones = _mm256_set1_epi16(1);
            let low = _mm256_set1_epi8(15);
            let fifth = _mm256_set1_epi8(16);
            for t in 0..tiles {
                // Rows 0-7 and 8-15 of the tile: each 64-byte line is two halves of 8 rows.
                let mut acc = [_mm256_setzero_ps(); 2];
                for b in 0..blocks {
                    let tb = t * blocks + b;
                    let lines = values.as_ptr().add(tb * LINES).cast::<u8>();
                    let start = _mm256_set1_epi32(*a.offset5.get_unchecked(b));
                    let mut sums = [start; 2];
                    let high = [0, 1].map(|h| _mm256_load_si256(lines.add(4 * 64 + h * 32).cast()));
                    for g in 0..4 {
                        let xs = x.add(b * BLOCK + 4 * g);
                        let x_low = _mm256_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                        let x_high =
                            _mm256_set1_epi32(std::ptr::read_unaligned(xs.add(16).cast::<i32>()));
                        let up = _mm_set_epi64x(0, 4 - g as i64);
                        let down = _mm_set_epi64x(0, g as i64);
                        let ahead = lines.wrapping_add((g + 2 * PREFETCH_LINES / 3) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                        for (h, sum) in sums.iter_mut().enumerate() {
                            let n = _mm256_load_si256(lines.add(g * 64 + h * 32).cast());
                            let h_low = _mm256_and_si256(_mm256_sll_epi16(high[h], up), fifth);
                            let h_high = _mm256_and_si256(_mm256_srl_epi16(high[h], down), fifth);
                            let w_low = _mm256_or_si256(_mm256_and_si256(n, low), h_low);
                            let n_high = _mm256_and_si256(_mm256_srli_epi16::<4>(n), low);
                            let w_high = _mm256_or_si256(n_high, h_high);
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(w_low, x_low),
                                _mm256_maddubs_epi16(w_high, x_high),
                            );
                            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    let da = _mm256_set1_ps(*a.d.get_unchecked(b));
                    for (h, (acc, sum)) in acc.iter_mut().zip(sums).enumerate() {
                        let bits = _mm_loadu_si128(scales.as_ptr().add(tb * TILE + 8 * h).cast());
                        let s = _mm256_mul_ps(_mm256_cvtph_ps(bits), da);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, *acc);
                    }
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE + 8), acc[1]);
            }
        }
    }

    /// # Safety
    /// The processor must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots_avx2(
        values: &[Line],
        scales: &[u16],
        blocks: usize,
        a: &Activations,
        out: &mut [f32],
    ) {
        let tiles = out.len() / TILE;
        bounds(values, scales, blocks, tiles, std::slice::from_ref(a));
        // SAFETY: `bounds` bounds every index below.
        unsafe {
            let x = a.q.as_ptr();
            let ones = _mm256_set1_epi16(1);
            let flip = _mm256_set1_epi8(-128);
            for t in 0..tiles {
                // Rows 0-7 and 8-15 of the tile: each 64-byte line is two halves of 8 rows.
                let mut acc = [_mm256_setzero_ps(); 2];
                for b in 0..blocks {
                    let tb = t * blocks + b;
                    let lines = values.as_ptr().add(tb * GROUPS).cast::<u8>();
                    let mut sums = [_mm256_setzero_si256(); 2];
                    for g in 0..GROUPS {
                        let four = std::ptr::read_unaligned(x.add(b * BLOCK + 4 * g).cast::<i32>());
                        let xv = _mm256_set1_epi32(four);
                        let magnitude = _mm256_sign_epi8(xv, xv);
                        let ahead = lines.wrapping_add((g + PREFETCH_LINES) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                        for (h, sum) in sums.iter_mut().enumerate() {
                            let raw = _mm256_load_si256(lines.add(g * 64 + h * 32).cast());
                            // Back to signed values, then |x| * (w with x's sign): |x| <= 127 and
                            // |w| <= 128 keep each pair of products inside i16.
                            let w = _mm256_xor_si256(raw, flip);
                            let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w, xv));
                            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    let da = _mm256_set1_ps(*a.d.get_unchecked(b));
                    for (h, (acc, sum)) in acc.iter_mut().zip(sums).enumerate() {
                        let bits = _mm_loadu_si128(scales.as_ptr().add(tb * TILE + 8 * h).cast());
                        let s = _mm256_mul_ps(_mm256_cvtph_ps(bits), da);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, *acc);
                    }
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE), acc[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE + 8), acc[1]);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
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

    /// A prompt's kernel, several activation rows per pass over the weights, gives each row
    /// exactly what the one-row kernel gives it: the same integer sums, scaled the same way.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_prompt_kernel_equals_the_decoding_kernel_row_by_row() {
        if !levels().contains(&Level::Avx512Vnni) {
            return;
        }
        let (out_dim, in_dim) = (48, 192);
        let layer =
            Q8Linear::from_rows(&matrix(out_dim, in_dim, 2), (out_dim, in_dim), None).unwrap();
        let t = &*layer.tiles;
        for rows in [2, 4, 7, 9] {
            let acts: Vec<Activations> = (0..rows)
                .map(|r| Activations::quantize(&randn(in_dim, 100 + r as u64)))
                .collect();
            let mut together = vec![0f32; rows * out_dim];
            // SAFETY: the processor has VNNI (checked above).
            #[allow(unsafe_code)]
            unsafe {
                x86::rows_avx512(&t.values, &t.scales, t.blocks, &acts, &mut together)
            };
            for (a, want) in acts.iter().zip(together.chunks_exact(out_dim)) {
                let mut got = vec![0f32; out_dim];
                dots(
                    Level::Avx512Vnni,
                    Format::Q8,
                    &t.values,
                    &t.scales,
                    t.blocks,
                    a,
                    &mut got,
                );
                assert_eq!(got, want, "{rows} rows");
            }
        }
    }

    /// The Q5 prompt kernel gives each row what the Q5 decoding kernel gives it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_q5_prompt_kernel_equals_its_decoding_kernel_row_by_row() {
        if !levels().contains(&Level::Avx512Vnni) {
            return;
        }
        let (out_dim, in_dim) = (48, 192);
        let layer = q5_layer(&q5_matrix(out_dim, in_dim, 4).0, (out_dim, in_dim));
        let t = &*layer.tiles;
        for rows in [2, 4, 7, 9] {
            let acts: Vec<Activations> = (0..rows)
                .map(|r| Activations::quantize(&randn(in_dim, 200 + r as u64)))
                .collect();
            let mut together = vec![0f32; rows * out_dim];
            // SAFETY: the processor has VNNI (checked above).
            #[allow(unsafe_code)]
            unsafe {
                x86::rows_q5_avx512(&t.values, &t.scales, t.blocks, &acts, &mut together)
            };
            for (a, want) in acts.iter().zip(together.chunks_exact(out_dim)) {
                let mut got = vec![0f32; out_dim];
                let (v, s) = (&t.values, &t.scales);
                dots(Level::Avx512Vnni, Format::Q5, v, s, t.blocks, a, &mut got);
                assert_eq!(got, want, "{rows} rows");
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
        let row_bytes = shape.1 / BLOCK * 22;
        let mut layers = Q8Linear::read_format(&[shape.0], shape.1, Format::Q5, |_, first, buf| {
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
            for count in [1, 3, GEMM_ROWS + 1] {
                let x = Tensor::new(randn(count * in_dim, count as u64), &dev)
                    .unwrap()
                    .reshape((count, in_dim))
                    .unwrap();
                let want = x.matmul(&reference.t().unwrap()).unwrap();
                let got = five.forward(&x).unwrap();
                let scale = crate::model::max_abs(&want);
                let diff = crate::model::max_abs(&(got - want).unwrap());
                assert!(diff <= 0.02 * scale, "{count} rows: {diff} of {scale}");
            }
        }
    }

    #[test]
    fn a_matrix_of_the_wrong_size_is_refused() {
        let bytes = vec![0u8; 34 * 3];
        assert!(Q8Linear::from_rows(&bytes, (1, 96), None).is_ok());
        assert!(Q8Linear::from_rows(&bytes, (2, 96), None).is_err());
        assert!(Q8Linear::from_rows(&bytes, (3, 33), None).is_err());
    }
}
