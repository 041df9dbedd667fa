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
//!
//! Q5_0, Q4_K and Q6_K matrices have tiles of their own ([`Format`]) that hold the file's values
//! in as many bits as the file does, unpacked by the kernels into the same `vpdpbusd` operands.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::bf16_linear::{input_rows, output, with_values};

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
/// Tiles read at a time while loading, then rearranged in parallel.
const LOAD_BATCH: usize = 64;
/// Bytes of quantized activations a prompt's tiles pass over at a time (see
/// `Q8Linear::products`): a fraction of a core's L2 cache; a few rows in unit tests, so that
/// their prompts take several chunks.
#[cfg(not(test))]
const CHUNK_BYTES: usize = 256 << 10;
#[cfg(test)]
const CHUNK_BYTES: usize = 1 << 10;

/// 64 bytes, aligned for AVX-512 loads: 4 values of each of a tile's 16 rows.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// How a set of tiles holds its values. In each, a block of a tile is its 16 rows' 32 values each
/// in 8 groups of 4, stored unsigned; a unit is what the file scales together (a block, or
/// Q4_K's super-block of 8), and a tile is its units in turn: their lines, and their scales' f16
/// bits in [`Tiles::scales`].
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
    /// Q4_K's values (0..16) and scales, exactly the file's, in units of its 256-value
    /// super-blocks: 36 lines a unit. Lines `4j..4j + 4` hold block `j`'s values as Q5's first
    /// four lines do; line `32 + j / 2` holds the 6-bit scales of blocks `j` (`j` even: bytes
    /// 0..16, one a row; `j` odd: 32..48) and their mins 16 bytes further. Each row's super-block
    /// factors (`d`, then `dmin`) take 32 scales a unit. A value is `d * scale * q - dmin * min`:
    /// 4.625 bits a weight where the file takes 4.5 and Q8 8.5.
    Q4K,
    /// Q6_K's values (0..64, offset 32) and scales, exactly the file's, in units of its 256-value
    /// super-blocks: 52 lines a unit. Lines `6j..6j + 4` hold block `j`'s low four bits as Q4_K's
    /// do, lines `6j + 4` and `6j + 5` their top two bits (group `g`'s at bits `2 * (g % 4)` of
    /// line `6j + 4 + g / 4`); line `48 + j / 2` holds the signed 8-bit scales of block `j`'s two
    /// halves of 16 values (`j` even: bytes 0..16 and 16..32, one a row; `j` odd: 32..64). Each
    /// row's super-block factor `d` takes 16 scales a unit. A value is `d * scale * (q - 32)`:
    /// 6.5625 bits a weight, as in the file, where Q8 takes 8.5.
    Q6K,
}

/// Bytes of a Q4_K super-block in a GGUF file: `d`, `dmin`, 12 bytes of packed 6-bit scales and
/// mins, 128 of nibbles.
const Q4K_BYTES: usize = 144;
/// Values in a K super-block (Q4_K's, Q6_K's).
const Q4K_VALUES: usize = 256;
/// Bytes of a Q6_K super-block in a GGUF file: 128 of low nibbles, 64 of top two bits, 16 signed
/// scales, `d`.
const Q6K_BYTES: usize = 210;

/// Block `j`'s 6-bit scale and min from a Q4_K super-block's 12 packed bytes (as ggml packs them:
/// the first four blocks' in the low 6 bits of bytes 0..8, the last four's split between the
/// low and high nibbles of bytes 8..12 and the top 2 bits of bytes 0..8).
fn q4k_scale_min(j: usize, packed: &[u8]) -> (u8, u8) {
    match j < 4 {
        true => (packed[j] & 63, packed[j + 4] & 63),
        false => (
            (packed[j + 4] & 15) | (packed[j - 4] >> 6) << 4,
            (packed[j + 4] >> 4) | (packed[j] >> 6) << 4,
        ),
    }
}

/// A Q6_K super-block's 256 values (0..64, before the offset of 32), in order: as ggml lays them
/// out, each half of 128 takes its low four bits from 64 bytes (values `l` and `l + 64` from byte
/// `l`'s low and high nibbles, `l + 32` and `l + 96` from byte `l + 32`'s) and its top two bits
/// from 32 (value `l + 32 * i` from bits `2i..2i + 2` of byte `l`).
fn q6k_values(unit: &[u8]) -> [u8; Q4K_VALUES] {
    let mut values = [0u8; Q4K_VALUES];
    for (half, out) in values.chunks_exact_mut(128).enumerate() {
        let (lows, highs) = (&unit[64 * half..][..64], &unit[128 + 32 * half..][..32]);
        for (quarter, out) in out.chunks_exact_mut(32).enumerate() {
            let lows = &lows[32 * (quarter % 2)..][..32];
            let shift = if quarter < 2 { 0 } else { 4 };
            for ((v, &low), &high) in out.iter_mut().zip(lows).zip(highs) {
                *v = ((low >> shift) & 15) | ((high >> (2 * quarter)) & 3) << 4;
            }
        }
    }
    values
}

impl Format {
    /// Values per unit.
    pub fn unit(self) -> usize {
        match self {
            Self::Q8 | Self::Q5 => BLOCK,
            Self::Q4K | Self::Q6K => Q4K_VALUES,
        }
    }

    /// Lines per unit of a tile.
    fn lines(self) -> usize {
        match self {
            Self::Q8 => GROUPS,
            Self::Q5 => 5,
            Self::Q4K => 36,
            Self::Q6K => 52,
        }
    }

    /// Scales (f16 bits) per unit of a tile.
    fn unit_scales(self) -> usize {
        match self {
            Self::Q8 | Self::Q5 | Self::Q6K => TILE,
            Self::Q4K => 2 * TILE,
        }
    }

    /// What the stored values exceed the signed ones by (Q4_K's mins are scaled separately).
    fn offset(self) -> i32 {
        match self {
            Self::Q8 => 128,
            Self::Q5 => 16,
            Self::Q4K => 0,
            Self::Q6K => 32,
        }
    }

    /// The GGUF type whose blocks this format holds as they are.
    pub fn file_type(self) -> candle_core::quantized::GgmlDType {
        match self {
            Self::Q8 => candle_core::quantized::GgmlDType::Q8_0,
            Self::Q5 => candle_core::quantized::GgmlDType::Q5_0,
            Self::Q4K => candle_core::quantized::GgmlDType::Q4K,
            Self::Q6K => candle_core::quantized::GgmlDType::Q6K,
        }
    }

    /// Bytes per unit in a GGUF file.
    pub fn unit_bytes(self) -> usize {
        match self {
            Self::Q8 => BLOCK_BYTES,
            Self::Q5 => 22,
            Self::Q4K => Q4K_BYTES,
            Self::Q6K => Q6K_BYTES,
        }
    }

    /// Bytes of a row of `in_dim` values in a GGUF file.
    pub fn row_bytes(self, in_dim: usize) -> usize {
        in_dim / self.unit() * self.unit_bytes()
    }

    /// Group `g` of a block's `lines` as Q8's layout holds it: 4 stored values of each row.
    fn group(self, lines: &[Line], g: usize) -> [u8; 64] {
        let nibble = |k: usize| {
            let nibbles = lines[g % 4].0[k];
            if g < 4 { nibbles & 15 } else { nibbles >> 4 }
        };
        match self {
            Self::Q8 => lines[g].0,
            Self::Q5 => std::array::from_fn(|k| nibble(k) | ((lines[4].0[k] >> g) & 1) << 4),
            Self::Q4K => std::array::from_fn(nibble),
            Self::Q6K => std::array::from_fn(|k| {
                nibble(k) | ((lines[4 + g / 4].0[k] >> (2 * (g % 4))) & 3) << 4
            }),
        }
    }

    /// One file unit (`unit_bytes` bytes) of one row, stored as row `lane` of a tile's unit:
    /// its `lines` and `scales`.
    fn store(self, lines: &mut [Line], scales: &mut [u16], lane: usize, unit: &[u8]) {
        if self == Self::Q6K {
            scales[lane] = u16::from_le_bytes([unit[208], unit[209]]);
            let values = q6k_values(unit);
            for (j, block) in values.as_chunks::<BLOCK>().0.iter().enumerate() {
                self.pack(&mut lines[6 * j..6 * j + 6], lane, block);
                let at = &mut lines[48 + j / 2].0[j % 2 * 32..];
                at[lane] = unit[192 + 2 * j];
                at[TILE + lane] = unit[192 + 2 * j + 1];
            }
            return;
        }
        let d = u16::from_le_bytes([unit[0], unit[1]]);
        scales[lane] = d;
        if self != Self::Q4K {
            self.pack(lines, lane, &self.unpack(unit));
            return;
        }
        scales[TILE + lane] = u16::from_le_bytes([unit[2], unit[3]]);
        let (packed, nibbles) = (&unit[4..16], &unit[16..]);
        for j in 0..Q4K_VALUES / BLOCK {
            // Blocks 2c and 2c + 1 are the low and high nibbles of the same 32 bytes.
            let chunk = &nibbles[j / 2 * BLOCK..][..BLOCK];
            let values = std::array::from_fn(|i| match j % 2 {
                0 => chunk[i] & 15,
                _ => chunk[i] >> 4,
            });
            self.pack(&mut lines[4 * j..4 * j + 4], lane, &values);
            let (scale, min) = q4k_scale_min(j, packed);
            let at = &mut lines[32 + j / 2].0[j % 2 * 32..];
            at[lane] = scale;
            at[TILE + lane] = min;
        }
    }

    /// One Q8_0 or Q5_0 block's 32 stored values (0..256 for Q8, 0..32 for Q5); [`Self::store`]
    /// reads Q4_K's super-blocks itself.
    fn unpack(self, block: &[u8]) -> [u8; BLOCK] {
        match self {
            Self::Q8 => std::array::from_fn(|i| block[2 + i].wrapping_add(128)),
            Self::Q5 | Self::Q4K | Self::Q6K => {
                let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                std::array::from_fn(|i| {
                    let low = match i < 16 {
                        true => block[6 + i] & 15,
                        false => block[6 + i - 16] >> 4,
                    };
                    low | (((high >> i) & 1) as u8) << 4
                })
            }
        }
    }

    /// Stores `values` (a row's block, stored values) as row `lane` of a tile's block `lines`:
    /// group `g` (values `4g..4g + 4`) goes to bytes `4 lane..4 lane + 4` of line `g`, or, in
    /// the narrower formats, to the low (`g < 4`) or high nibbles of line `g % 4`, with Q5's fifth
    /// bit of group `g` at bit `g` of line 4 and Q6_K's top two bits at bits `2 (g % 4)` of line
    /// `4 + g / 4`. Every byte of the lane is assigned once, none read back.
    fn pack(self, lines: &mut [Line], lane: usize, values: &[u8; BLOCK]) {
        let at = lane * 4;
        if self == Self::Q8 {
            for (line, group) in lines.iter_mut().zip(values.chunks_exact(4)) {
                line.0[at..at + 4].copy_from_slice(group);
            }
            return;
        }
        for g in 0..4 {
            for m in 0..4 {
                let (low, high) = (values[4 * g + m], values[16 + 4 * g + m]);
                lines[g].0[at + m] = (low & 15) | (high & 15) << 4;
            }
        }
        match self {
            Self::Q5 => {
                for m in 0..4 {
                    lines[4].0[at + m] =
                        (0..8).fold(0, |bits, g| bits | ((values[4 * g + m] >> 4) & 1) << g);
                }
            }
            Self::Q6K => {
                for h in 0..2 {
                    for m in 0..4 {
                        lines[4 + h].0[at + m] = (0..4).fold(0, |bits, q| {
                            bits | ((values[4 * (4 * h + q) + m] >> 4) & 3) << (2 * q)
                        });
                    }
                }
            }
            Self::Q8 | Self::Q4K => {}
        }
    }

    /// A line of padding rows (zero weights).
    fn empty(self) -> Line {
        match self {
            Self::Q8 => Line([128; 64]),
            // Padding rows have zero scales, so what their values stand for never counts.
            Self::Q5 | Self::Q4K | Self::Q6K => Line([0; 64]),
        }
    }
}

/// A quantized matrix in tiles of 16 rows (the last tile padded).
#[derive(Clone)]
struct Tiles {
    /// `[tile][unit][line]`: see [`Format`].
    values: Vec<Line>,
    /// `[tile][unit][scale]`: the f16 scales' bits, `format.unit_scales()` a unit.
    scales: Vec<u16>,
    /// 32-value blocks in a row.
    blocks: usize,
    format: Format,
}

impl Tiles {
    fn units(&self) -> usize {
        self.blocks * BLOCK / self.format.unit()
    }

    fn tile_lines(&self) -> usize {
        self.units() * self.format.lines()
    }

    fn tile_scales(&self) -> usize {
        self.units() * self.format.unit_scales()
    }

    /// Row `lane` of block `b` of tile `t` in K tiles (Q4_K's, Q6_K's), dequantized as ggml
    /// dequantizes it (the same operations in the same order, so the same bits).
    fn k_block(&self, t: usize, b: usize, lane: usize) -> [f32; BLOCK] {
        let (u, j) = (b / 8, b % 8);
        let tu = t * self.units() + u;
        let format = self.format;
        let lines = &self.values[tu * format.lines()..][..format.lines()];
        let scales = &self.scales[tu * format.unit_scales()..][..format.unit_scales()];
        let (block, at) = match format {
            Format::Q6K => (&lines[6 * j..6 * j + 6], &lines[48 + j / 2].0[j % 2 * 32..]),
            _ => (&lines[4 * j..4 * j + 4], &lines[32 + j / 2].0[j % 2 * 32..]),
        };
        let q = |i: usize| format.group(block, i / 4)[lane * 4 + i % 4];
        let d = f16(scales[lane]);
        if format == Format::Q6K {
            let factor = [0, 1].map(|h| d * f32::from(at[h * TILE + lane] as i8));
            return std::array::from_fn(|i| factor[i / 16] * f32::from(q(i) as i8 - 32));
        }
        let factor = d * f32::from(at[lane]);
        let min = f16(scales[TILE + lane]) * f32::from(at[TILE + lane]);
        std::array::from_fn(|i| factor * f32::from(q(i)) - min)
    }

    fn is_k(&self) -> bool {
        matches!(self.format, Format::Q4K | Format::Q6K)
    }

    /// Tile `t` dequantized into `out`: its 16 rows of `blocks * 32` values, row-major.
    fn dequantize_tile(&self, t: usize, out: &mut [f32]) {
        let k = self.blocks * BLOCK;
        if self.is_k() {
            for (lane, row) in out.chunks_exact_mut(k).enumerate().take(TILE) {
                for (b, block) in row.chunks_exact_mut(BLOCK).enumerate() {
                    block.copy_from_slice(&self.k_block(t, b, lane));
                }
            }
            return;
        }
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
        if self.is_k() {
            for b in 0..self.blocks {
                out.extend(self.k_block(t, b, lane));
            }
            return;
        }
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

    /// [`read`](Self::read) for rows in `format`'s file layout (Q8_0, or Q5_0, Q4_K and Q6_K
    /// kept in their own bits where the kernels have their forms: see [`q5_tiles`]).
    pub fn read_format(
        parts: &[usize],
        in_dim: usize,
        format: Format,
        mut read: impl FnMut(usize, usize, &mut [u8]) -> Result<()>,
    ) -> Result<Vec<Self>> {
        let unit = format.unit();
        if in_dim == 0 || !in_dim.is_multiple_of(unit) {
            candle_core::bail!("a row of {in_dim} values is not whole blocks of {unit}");
        }
        let (blocks, units) = (in_dim / BLOCK, in_dim / unit);
        let row_bytes = format.row_bytes(in_dim);
        let (n, ns) = (format.lines(), format.unit_scales());
        // (matrix, first row, rows) of every tile, in order.
        let jobs: Vec<(usize, usize, usize)> = parts
            .iter()
            .enumerate()
            .flat_map(|(part, &rows)| {
                (0..rows)
                    .step_by(TILE)
                    .map(move |first| (part, first, TILE.min(rows - first)))
            })
            .collect();
        let total = jobs.len();
        let firsts = parts
            .iter()
            .scan(0, |t, rows| {
                let first = *t;
                *t += rows.div_ceil(TILE);
                Some(first)
            })
            .collect::<Vec<_>>();
        let mut values: Vec<Line> = (0..total * units * n)
            .into_par_iter()
            .map(|_| format.empty())
            .collect();
        let mut scales = vec![0u16; total * units * ns];
        // Tiles are read in order (`read` may be a file's reader), a batch at a time, and their
        // rows rearranged into lines on every core: one core took seconds for a 1.5B model.
        let tile_bytes = TILE * row_bytes;
        let mut buf = vec![0u8; LOAD_BATCH * tile_bytes];
        let (tile_lines, tile_scales) = (units * n, units * ns);
        let batches = values
            .chunks_mut(LOAD_BATCH * tile_lines)
            .zip(scales.chunks_mut(LOAD_BATCH * tile_scales))
            .zip(jobs.chunks(LOAD_BATCH));
        for ((values, scales), batch) in batches {
            for (&(part, first, count), dst) in batch.iter().zip(buf.chunks_exact_mut(tile_bytes)) {
                read(part, first, &mut dst[..count * row_bytes])?;
            }
            values
                .par_chunks_mut(tile_lines)
                .zip(scales.par_chunks_mut(tile_scales))
                .zip(buf.par_chunks_exact(tile_bytes))
                .zip(batch.par_iter())
                .for_each(|(((values, scales), bytes), &(_, _, count))| {
                    for (lane, row) in bytes[..count * row_bytes]
                        .chunks_exact(row_bytes)
                        .enumerate()
                    {
                        for (u, unit) in row.chunks_exact(format.unit_bytes()).enumerate() {
                            let (lines, scales) =
                                (&mut values[u * n..][..n], &mut scales[u * ns..]);
                            format.store(lines, &mut scales[..ns], lane, unit);
                        }
                    }
                });
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
        let out = if rows >= GEMM_ROWS && !integer_prompts(level(), self.tiles.format) {
            self.gemm(&x.to_dtype(DType::F32)?.reshape((rows, self.in_dim))?)?
        } else {
            with_values(x, |xs| self.products(xs, rows))?
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
        // A task's tiles pass over the rows a chunk at a time, so that the chunk's quantized
        // values stay in the core's cache for all of them: every tile streaming every row of a
        // long prompt (megabytes) from memory, over and over, left the multiply-adds waiting.
        let chunk_rows = (CHUNK_BYTES / self.in_dim).next_multiple_of(4).max(4);
        // One row at a time is decoding, on the decoding kernels.
        let rows_kernel = rows_kernel(level, tiles.format).filter(|_| rows > 1);
        let tasks = padded / TILE;
        let per_task: Vec<Vec<f32>> = (0..tasks.div_ceil(task_tiles))
            .into_par_iter()
            .map(|task| {
                let first = self.first_tile + task * task_tiles;
                let count = task_tiles.min(tasks - task * task_tiles);
                let values = &tiles.values[first * lines..(first + count) * lines];
                let tile_scales = tiles.tile_scales();
                let scales = &tiles.scales[first * tile_scales..][..count * tile_scales];
                let mut part = vec![0f32; rows * count * TILE];
                let chunks = acts
                    .chunks(chunk_rows)
                    .zip(part.chunks_mut(chunk_rows * count * TILE));
                for (acts, part) in chunks {
                    match rows_kernel {
                        // SAFETY: `rows_kernel` gives a kernel of `level()`, which was chosen
                        // only where the processor has its features.
                        #[allow(unsafe_code)]
                        Some(kernel) => unsafe { kernel(values, scales, tiles.blocks, acts, part) },
                        None => {
                            for (a, y) in acts.iter().zip(part.chunks_exact_mut(count * TILE)) {
                                dots(level, tiles.format, values, scales, tiles.blocks, a, y);
                            }
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
    /// Each block's `d * sum(q)`, what its sum stands for: Q4_K's mins are scaled by it.
    sum: Vec<f32>,
    /// Each half block's `-32 * sum(q)` (two a block), which cancels Q6_K's offset.
    offset6: Vec<i32>,
}

impl Activations {
    fn quantize(x: &[f32]) -> Self {
        let blocks = x.len() / BLOCK;
        let mut q = vec![0i8; blocks * BLOCK];
        let mut d = vec![0f32; blocks];
        let mut offset = vec![0i32; blocks];
        let mut offset5 = vec![0i32; blocks];
        let mut sums = vec![0f32; blocks];
        let mut offset6 = vec![0i32; 2 * blocks];
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
            let half = |h: usize| {
                block[h * 16..][..16]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum::<i32>()
            };
            let (low, high) = (half(0), half(1));
            offset6[2 * b] = -32 * low;
            offset6[2 * b + 1] = -32 * high;
            let sum = low + high;
            offset[b] = -128 * sum;
            offset5[b] = -16 * sum;
            sums[b] = scale * sum as f32;
        }
        Self {
            q,
            d,
            offset,
            offset5,
            sum: sums,
            offset6,
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
    integer_prompts(level(), Format::Q8)
}

/// Whether Q5_0 matrices are kept in five bits ([`Format::Q5`]) rather than requantized to Q8_0:
/// where the AVX2 or VNNI kernels run (portable Rust has no fast form of them), unless
/// `INFILL_Q5=q8` asks for the eight-bit form (to compare the two on one machine).
pub fn q5_tiles() -> bool {
    level() != Level::Portable && std::env::var("INFILL_Q5").map_or(true, |v| v != "q8")
}

/// Whether Q4_K matrices are kept in their own four bits ([`Format::Q4K`]) rather than
/// requantized to Q8_0 (with VNNI) or left to candle's K kernels (without): where the AVX2 or VNNI
/// kernels run, unless `INFILL_Q4K=q8` asks for the earlier forms (to compare on one machine).
pub fn q4k_tiles() -> bool {
    level() != Level::Portable && std::env::var("INFILL_Q4K").map_or(true, |v| v != "q8")
}

/// Whether Q6_K matrices are kept in their own six bits ([`Format::Q6K`]) rather than
/// requantized to Q8_0 (with VNNI) or left to candle's K kernel (without): where the AVX2 or VNNI
/// kernels run, unless `INFILL_Q6K=q8` asks for the earlier forms (to compare on one machine).
pub fn q6k_tiles() -> bool {
    level() != Level::Portable && std::env::var("INFILL_Q6K").map_or(true, |v| v != "q8")
}

/// A several-row (prompt) kernel: [`dots`] for `acts.len()` rows, each line of weights loaded once
/// for several of them, `out` holding each row's products in turn.
type RowsKernel = unsafe fn(&[Line], &[u16], usize, &[Activations], &mut [f32]);

/// The several-row kernel for tiles in `format` at `level`, where there is one: VNNI's for every
/// format, AVX2's for Q4_K and Q6_K.
fn rows_kernel(level: Level, format: Format) -> Option<RowsKernel> {
    #[cfg(target_arch = "x86_64")]
    match (level, format) {
        (Level::Avx512Vnni, Format::Q8) => return Some(x86::rows_avx512),
        (Level::Avx512Vnni, Format::Q5) => return Some(x86::rows_q5_avx512),
        (Level::Avx512Vnni, Format::Q4K) => return Some(x86::rows_q4k_avx512),
        (Level::Avx512Vnni, Format::Q6K) => return Some(x86::rows_q6k_avx512),
        (Level::Avx2, Format::Q4K) => return Some(x86::rows_q4k_avx2),
        (Level::Avx2, Format::Q6K) => return Some(x86::rows_q6k_avx2),
        _ => {}
    }
    let _ = (level, format);
    None
}

/// Whether prompts on tiles in `format` run on the integer kernels at `level`: where there is a
/// several-row kernel ([`rows_kernel`]); elsewhere they widen tiles for candle's GEMM.
fn integer_prompts(level: Level, format: Format) -> bool {
    rows_kernel(level, format).is_some()
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
        (Level::Avx512Vnni, Format::Q4K) => unsafe {
            x86::dots_q4k_avx512(values, scales, blocks, a, out)
        },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx2, Format::Q5) => unsafe { x86::dots_q5_avx2(values, scales, blocks, a, out) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx2, Format::Q4K) => unsafe { x86::dots_q4k_avx2(values, scales, blocks, a, out) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx512Vnni, Format::Q6K) => unsafe {
            x86::dots_q6k_avx512(values, scales, blocks, a, out)
        },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        (Level::Avx2, Format::Q6K) => unsafe { x86::dots_q6k_avx2(values, scales, blocks, a, out) },
        (Level::Portable, Format::Q4K) => dots_q4k_portable(values, scales, blocks, a, out),
        (Level::Portable, Format::Q6K) => dots_q6k_portable(values, scales, blocks, a, out),
        (Level::Portable, _) => dots_portable(format, values, scales, blocks, a, out),
    }
}

/// Each row's integer products of a tile's block (its `lines` in `format`) with activation block
/// `b` of `a`, stored values as they are (no offset), the block's two halves of 16 apart.
fn half_sums(format: Format, lines: &[Line], a: &Activations, b: usize) -> [[i32; 2]; TILE] {
    let mut sums = [[0i32; 2]; TILE];
    for g in 0..GROUPS {
        let line = format.group(lines, g);
        let x = &a.q[b * BLOCK + 4 * g..][..4];
        for (sum, four) in sums.iter_mut().zip(line.chunks_exact(4)) {
            for (&w, &v) in four.iter().zip(x) {
                sum[g / 4] += i32::from(w) * i32::from(v);
            }
        }
    }
    sums
}

/// [`dots_portable`] for [`Format::Q4K`]: per block, the integer sums times the block's scale, and
/// its min times what the activations' block sums to; per unit, times `d` and `dmin`.
fn dots_q4k_portable(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let units = blocks * BLOCK / Q4K_VALUES;
    for (t, y) in out.chunks_exact_mut(TILE).enumerate() {
        let mut acc = [0f32; TILE];
        for u in 0..units {
            let tu = t * units + u;
            let lines = &values[tu * 36..][..36];
            let factors = &scales[tu * 2 * TILE..][..2 * TILE];
            let (mut scaled, mut mins) = ([0f32; TILE], [0f32; TILE]);
            for j in 0..8 {
                let b = u * 8 + j;
                let sums = half_sums(Format::Q4K, &lines[4 * j..4 * j + 4], a, b);
                let at = &lines[32 + j / 2].0[j % 2 * 32..];
                for lane in 0..TILE {
                    let s = f32::from(at[lane]) * a.d[b];
                    scaled[lane] += (sums[lane][0] + sums[lane][1]) as f32 * s;
                    mins[lane] += f32::from(at[TILE + lane]) * a.sum[b];
                }
            }
            for lane in 0..TILE {
                acc[lane] += scaled[lane] * f16(factors[lane]);
                acc[lane] -= mins[lane] * f16(factors[TILE + lane]);
            }
        }
        y.copy_from_slice(&acc);
    }
}

/// [`dots_portable`] for [`Format::Q6K`]: per block, the integer sums of its two halves (started
/// at the negation of the offset's share) times their signed scales, times the activations'
/// scale; per unit, times `d`.
fn dots_q6k_portable(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let units = blocks * BLOCK / Q4K_VALUES;
    for (t, y) in out.chunks_exact_mut(TILE).enumerate() {
        let mut acc = [0f32; TILE];
        for u in 0..units {
            let tu = t * units + u;
            let lines = &values[tu * 52..][..52];
            let d = &scales[tu * TILE..][..TILE];
            let mut scaled = [0f32; TILE];
            for j in 0..8 {
                let b = u * 8 + j;
                let sums = half_sums(Format::Q6K, &lines[6 * j..6 * j + 6], a, b);
                let at = &lines[48 + j / 2].0[j % 2 * 32..];
                for lane in 0..TILE {
                    let low = (sums[lane][0] + a.offset6[2 * b]) as f32;
                    let high = (sums[lane][1] + a.offset6[2 * b + 1]) as f32;
                    let (sl, sh) = (f32::from(at[lane] as i8), f32::from(at[TILE + lane] as i8));
                    scaled[lane] += (low * sl + high * sh) * a.d[b];
                }
            }
            for lane in 0..TILE {
                acc[lane] += scaled[lane] * f16(d[lane]);
            }
        }
        y.copy_from_slice(&acc);
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
                _ => a.offset5[b],
            };
            let sums = half_sums(format, &values[(t * blocks + b) * n..][..n], a, b);
            let s = &scales[(t * blocks + b) * TILE..][..TILE];
            for lane in 0..TILE {
                let sum = start + sums[lane][0] + sums[lane][1];
                acc[lane] += sum as f32 * (f16(s[lane]) * a.d[b]);
            }
        }
        y.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
