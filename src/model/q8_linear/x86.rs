//! The x86 kernels. Every access stays inside `values`, `scales` and the activations: the
//! callers pass whole tiles of `blocks` blocks, and activations of `blocks` blocks.

use std::arch::x86_64::*;

use super::{Activations, BLOCK, Format, GROUPS, Line, TILE};

/// Panics unless `values` and `scales` hold `tiles` whole tiles in `format` of `blocks` blocks
/// and each activation row `blocks` blocks: what every kernel's unchecked indexing relies on.
fn bounds(
    format: Format,
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    tiles: usize,
    acts: &[Activations],
) {
    let units = blocks * BLOCK / format.unit();
    assert!(values.len() >= tiles * units * format.lines());
    assert!(scales.len() >= tiles * units * format.unit_scales());
    for a in acts {
        assert!(a.q.len() >= blocks * BLOCK && a.d.len() >= blocks && a.sum.len() >= blocks);
        assert!(a.offset.len() >= blocks && a.offset5.len() >= blocks);
        assert!(a.offset6.len() >= 2 * blocks);
    }
}

/// A several-row kernel's shape: `out` holds a row of whole tiles for each of `acts`; returns
/// the rows, a row's width and its tiles, after [`bounds`] holds for them.
fn rows_bounds(
    format: Format,
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    acts: &[Activations],
    out: &[f32],
) -> (usize, usize, usize) {
    let rows = acts.len();
    let width = out.len() / rows.max(1);
    let tiles = width / TILE;
    assert!(out.len() == rows * width);
    bounds(format, values, scales, blocks, tiles, acts);
    (rows, width, tiles)
}

/// The `ROWS` activation rows from `first` a several-row kernel computes together, and how many
/// of them are real: rows past the end repeat the last one, and their results are not stored.
fn row_group(acts: &[Activations], first: usize) -> (usize, [&Activations; ROWS]) {
    let count = ROWS.min(acts.len() - first);
    let group = std::array::from_fn(|r| &acts[first + r.min(count - 1)]);
    (count, group)
}

/// How far ahead of the loads (in 64-byte lines, about 2 KB) each tile's Q8 values are
/// prefetched: the hardware's prefetchers alone left two cores at 18 GB/s of the 34 the
/// memory streams; this added 10% (`cargo bench --bench q8`).
const PREFETCH_LINES: usize = 32;

/// The same for the packed formats (Q5, Q4_K, Q6_K), which spend more arithmetic on a line and
/// need their lines asked for earlier: 4 KB ahead decoded Q4_K 9% faster than 1 KB with VNNI
/// and 31% with AVX2, Q6_K 11% and 40%, Q5 1.18x with AVX2 (`INFILL_BENCH_TYPE=q4k cargo bench
/// --bench q8`; Q8 gained nothing).
const PACKED_PREFETCH_LINES: usize = 64;

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
    bounds(
        Format::Q8,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
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
    bounds(
        Format::Q5,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
    // SAFETY: `bounds` bounds every index below.
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
                        let ahead = lines[i].wrapping_add(g + PACKED_PREFETCH_LINES);
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
    let (rows, width, tiles) = rows_bounds(Format::Q8, values, scales, blocks, acts, out);
    // SAFETY: `rows_bounds` bounds every index below.
    unsafe {
        for t in 0..tiles {
            for first in (0..rows).step_by(ROWS) {
                let (count, a) = row_group(acts, first);
                let mut acc = [_mm512_setzero_ps(); ROWS];
                for b in 0..blocks {
                    let tb = t * blocks + b;
                    let lines = values.as_ptr().add(tb * GROUPS);
                    let mut sums: [__m512i; ROWS] =
                        std::array::from_fn(|r| _mm512_set1_epi32(*a[r].offset.get_unchecked(b)));
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
                    _mm512_storeu_ps(out.as_mut_ptr().add((first + r) * width + t * TILE), *acc);
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
    let (rows, width, tiles) = rows_bounds(Format::Q5, values, scales, blocks, acts, out);
    // SAFETY: `rows_bounds` bounds every index below.
    unsafe {
        for t in 0..tiles {
            for first in (0..rows).step_by(ROWS) {
                let (count, a) = row_group(acts, first);
                let mut acc = [_mm512_setzero_ps(); ROWS];
                for b in 0..blocks {
                    let tb = t * blocks + b;
                    let lines = values.as_ptr().add(tb * LINES);
                    let mut sums: [__m512i; ROWS] =
                        std::array::from_fn(|r| _mm512_set1_epi32(*a[r].offset5.get_unchecked(b)));
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
                    _mm512_storeu_ps(out.as_mut_ptr().add((first + r) * width + t * TILE), *acc);
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
    bounds(
        Format::Q5,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
    // SAFETY: `bounds` bounds every index below.
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
                    let ahead = lines.wrapping_add((g + PACKED_PREFETCH_LINES) * 64);
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
    bounds(
        Format::Q8,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
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

/// Lines of a Q4_K unit (see [`Format::Q4K`]): block `j`'s nibble line `g` is line `4 * j + g`;
/// its scales and mins are on line `32 + j / 2`, from byte `32 * (j % 2)`.
const Q4K_LINES: usize = 36;

/// 16 bytes from `at` (a Q4_K block's 16 rows' scales, or mins) as f32.
///
/// # Safety
/// The processor must have AVX-512 F; `at` must point at 16 readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4k_bytes(at: *const u8) -> __m512 {
    // SAFETY: the caller's.
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(at.cast()))) }
}

/// 8 bytes from `at` (8 rows' scales or mins of a Q4_K block) as f32.
///
/// # Safety
/// The processor must have AVX2; `at` must point at 8 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_bytes8(at: *const u8) -> __m256 {
    // SAFETY: the caller's.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(at.cast()))) }
}

/// [`dots_avx512`] over tiles in [`Format::Q4K`]: each nibble line gives two groups (its low and
/// high halves), so one load of 64 bytes feeds two `vpdpbusd`; a block's integer sums are scaled
/// by its 6-bit scales and the activations' scale, its mins by what the activations' block sums
/// to, and a unit's totals by the rows' `d` and `dmin`.
///
/// # Safety
/// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dots_q4k_avx512(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let tiles = out.len() / TILE;
    bounds(
        Format::Q4K,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
    let units = blocks / 8;
    // SAFETY: `bounds` bounds every index below.
    unsafe {
        let x = a.q.as_ptr();
        let low = _mm512_set1_epi8(15);
        // Two tiles at a time, each block's groups split over two sums: four chains.
        let mut t = 0;
        while t < tiles {
            let pair = usize::from(t + 1 < tiles);
            let mut acc = [_mm512_setzero_ps(); 2];
            for u in 0..units {
                let tu = [t * units + u, (t + pair) * units + u];
                let unit = tu.map(|tu| values.as_ptr().add(tu * Q4K_LINES));
                let mut scaled = [_mm512_setzero_ps(); 2];
                let mut mins = [_mm512_setzero_ps(); 2];
                for j in 0..8 {
                    let b = u * 8 + j;
                    let zero = _mm512_setzero_si512();
                    let mut sums = [[zero, zero]; 2];
                    for g in 0..4 {
                        let xs = x.add(b * BLOCK + 4 * g);
                        let x_low = _mm512_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                        let x_high =
                            _mm512_set1_epi32(std::ptr::read_unaligned(xs.add(16).cast::<i32>()));
                        for i in 0..2 {
                            let line = unit[i].add(4 * j + g);
                            _mm_prefetch::<_MM_HINT_T0>(
                                line.wrapping_add(PACKED_PREFETCH_LINES).cast(),
                            );
                            let n = _mm512_load_si512(line.cast());
                            let w_low = _mm512_and_si512(n, low);
                            let w_high = _mm512_and_si512(_mm512_srli_epi16::<4>(n), low);
                            sums[i][0] = _mm512_dpbusd_epi32(sums[i][0], w_low, x_low);
                            sums[i][1] = _mm512_dpbusd_epi32(sums[i][1], w_high, x_high);
                        }
                    }
                    let da = _mm512_set1_ps(*a.d.get_unchecked(b));
                    let sa = _mm512_set1_ps(*a.sum.get_unchecked(b));
                    for i in 0..2 {
                        let at = unit[i].add(32 + j / 2).cast::<u8>().add(j % 2 * 32);
                        let s = _mm512_mul_ps(q4k_bytes(at), da);
                        let sum = _mm512_add_epi32(sums[i][0], sums[i][1]);
                        scaled[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, scaled[i]);
                        mins[i] = _mm512_fmadd_ps(q4k_bytes(at.add(TILE)), sa, mins[i]);
                    }
                }
                for i in 0..2 {
                    let f = scales.as_ptr().add(tu[i] * 2 * TILE);
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(f.cast()));
                    let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(f.add(TILE).cast()));
                    acc[i] = _mm512_fmadd_ps(scaled[i], d, acc[i]);
                    acc[i] = _mm512_fnmadd_ps(mins[i], dmin, acc[i]);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(1 + pair) {
                _mm512_storeu_ps(out.as_mut_ptr().add((t + i) * TILE), *acc);
            }
            t += 1 + pair;
        }
    }
}

/// [`rows_avx512`] over tiles in [`Format::Q4K`], each block's groups unpacked and its scales
/// and mins widened once per four activation rows, every row's arithmetic in the order of
/// [`dots_q4k_avx512`] (so the same bits).
///
/// # Safety
/// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn rows_q4k_avx512(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    acts: &[Activations],
    out: &mut [f32],
) {
    let (rows, width, tiles) = rows_bounds(Format::Q4K, values, scales, blocks, acts, out);
    let units = blocks / 8;
    // SAFETY: `rows_bounds` bounds every index below.
    unsafe {
        let low = _mm512_set1_epi8(15);
        for t in 0..tiles {
            for first in (0..rows).step_by(ROWS) {
                let (count, a) = row_group(acts, first);
                let mut acc = [_mm512_setzero_ps(); ROWS];
                for u in 0..units {
                    let tu = t * units + u;
                    let unit = values.as_ptr().add(tu * Q4K_LINES);
                    let mut scaled = [_mm512_setzero_ps(); ROWS];
                    let mut mins = [_mm512_setzero_ps(); ROWS];
                    for j in 0..8 {
                        let b = u * 8 + j;
                        let mut sums = [_mm512_setzero_si512(); ROWS];
                        for g in 0..4 {
                            let n = _mm512_load_si512(unit.add(4 * j + g).cast());
                            let w_low = _mm512_and_si512(n, low);
                            let w_high = _mm512_and_si512(_mm512_srli_epi16::<4>(n), low);
                            for r in 0..ROWS {
                                let x = a[r].q.as_ptr().add(b * BLOCK + 4 * g);
                                let x_low = _mm512_set1_epi32(std::ptr::read_unaligned(x.cast()));
                                let x_high =
                                    _mm512_set1_epi32(std::ptr::read_unaligned(x.add(16).cast()));
                                sums[r] = _mm512_dpbusd_epi32(sums[r], w_low, x_low);
                                sums[r] = _mm512_dpbusd_epi32(sums[r], w_high, x_high);
                            }
                        }
                        let at = unit.add(32 + j / 2).cast::<u8>().add(j % 2 * 32);
                        let (sc, m) = (q4k_bytes(at), q4k_bytes(at.add(TILE)));
                        for r in 0..ROWS {
                            let s = _mm512_mul_ps(sc, _mm512_set1_ps(*a[r].d.get_unchecked(b)));
                            let sum = _mm512_cvtepi32_ps(sums[r]);
                            scaled[r] = _mm512_fmadd_ps(sum, s, scaled[r]);
                            let sa = _mm512_set1_ps(*a[r].sum.get_unchecked(b));
                            mins[r] = _mm512_fmadd_ps(m, sa, mins[r]);
                        }
                    }
                    let f = scales.as_ptr().add(tu * 2 * TILE);
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(f.cast()));
                    let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(f.add(TILE).cast()));
                    for r in 0..ROWS {
                        acc[r] = _mm512_fmadd_ps(scaled[r], d, acc[r]);
                        acc[r] = _mm512_fnmadd_ps(mins[r], dmin, acc[r]);
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(count) {
                    _mm512_storeu_ps(out.as_mut_ptr().add((first + r) * width + t * TILE), *acc);
                }
            }
        }
    }
}

/// [`dots_q4k_avx2`] for a prompt's rows, `ROWS` at a time: each line of weights is loaded and
/// its nibbles split once for all of them (a prompt without VNNI otherwise widens the weights to
/// f32 for a GEMM), every row's arithmetic in the order of [`dots_q4k_avx2`] (so the same bits).
///
/// # Safety
/// The processor must have AVX2, FMA and F16C.
// Tile halves `h` and rows `r` index the same arrays together.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_q4k_avx2(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    acts: &[Activations],
    out: &mut [f32],
) {
    let (rows, width, tiles) = rows_bounds(Format::Q4K, values, scales, blocks, acts, out);
    let units = blocks / 8;
    // SAFETY: `rows_bounds` bounds every index below.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(15);
        for t in 0..tiles {
            for first in (0..rows).step_by(ROWS) {
                let (count, a) = row_group(acts, first);
                // Rows 0-7 and 8-15 of the tile (`h`), for each activation row.
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for u in 0..units {
                    let tu = t * units + u;
                    let unit = values.as_ptr().add(tu * Q4K_LINES).cast::<u8>();
                    let mut scaled = [[_mm256_setzero_ps(); 2]; ROWS];
                    let mut mins = [[_mm256_setzero_ps(); 2]; ROWS];
                    for j in 0..8 {
                        let b = u * 8 + j;
                        let mut sums = [[_mm256_setzero_si256(); 2]; ROWS];
                        for g in 0..4 {
                            let line = unit.add((4 * j + g) * 64);
                            let n: [__m256i; 2] =
                                std::array::from_fn(|h| _mm256_load_si256(line.add(h * 32).cast()));
                            let w_low = n.map(|n| _mm256_and_si256(n, low));
                            let w_high =
                                n.map(|n| _mm256_and_si256(_mm256_srli_epi16::<4>(n), low));
                            for r in 0..ROWS {
                                let xs = a[r].q.as_ptr().add(b * BLOCK + 4 * g);
                                let x_low =
                                    _mm256_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                                let x_high = _mm256_set1_epi32(std::ptr::read_unaligned(
                                    xs.add(16).cast::<i32>(),
                                ));
                                for h in 0..2 {
                                    let pairs = _mm256_add_epi16(
                                        _mm256_maddubs_epi16(w_low[h], x_low),
                                        _mm256_maddubs_epi16(w_high[h], x_high),
                                    );
                                    sums[r][h] = _mm256_add_epi32(
                                        sums[r][h],
                                        _mm256_madd_epi16(pairs, ones),
                                    );
                                }
                            }
                        }
                        let at = unit.add((32 + j / 2) * 64 + j % 2 * 32);
                        for h in 0..2 {
                            let (sc, m) =
                                (q4k_bytes8(at.add(8 * h)), q4k_bytes8(at.add(TILE + 8 * h)));
                            for r in 0..ROWS {
                                let s = _mm256_mul_ps(sc, _mm256_set1_ps(*a[r].d.get_unchecked(b)));
                                let sum = _mm256_cvtepi32_ps(sums[r][h]);
                                scaled[r][h] = _mm256_fmadd_ps(sum, s, scaled[r][h]);
                                let sa = _mm256_set1_ps(*a[r].sum.get_unchecked(b));
                                mins[r][h] = _mm256_fmadd_ps(m, sa, mins[r][h]);
                            }
                        }
                    }
                    let f = scales.as_ptr().add(tu * 2 * TILE);
                    for h in 0..2 {
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(f.add(8 * h).cast()));
                        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(f.add(TILE + 8 * h).cast()));
                        for r in 0..ROWS {
                            acc[r][h] = _mm256_fmadd_ps(scaled[r][h], d, acc[r][h]);
                            acc[r][h] = _mm256_fnmadd_ps(mins[r][h], dmin, acc[r][h]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(count) {
                    let y = out.as_mut_ptr().add((first + r) * width + t * TILE);
                    _mm256_storeu_ps(y, acc[0]);
                    _mm256_storeu_ps(y.add(8), acc[1]);
                }
            }
        }
    }
}

/// [`dots_q4k_avx512`] with AVX2: `vpmaddubsw` takes the nibbles (0..15) as they are, with the
/// activations as its signed operand (two groups' pairs of products stay within 4 * 15 * 127).
///
/// # Safety
/// The processor must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_q4k_avx2(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let tiles = out.len() / TILE;
    bounds(
        Format::Q4K,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
    let units = blocks / 8;
    // SAFETY: `bounds` bounds every index below.
    unsafe {
        let x = a.q.as_ptr();
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(15);
        for t in 0..tiles {
            // Rows 0-7 and 8-15 of the tile: each 64-byte line is two halves of 8 rows.
            let mut acc = [_mm256_setzero_ps(); 2];
            for u in 0..units {
                let tu = t * units + u;
                let unit = values.as_ptr().add(tu * Q4K_LINES).cast::<u8>();
                let mut scaled = [_mm256_setzero_ps(); 2];
                let mut mins = [_mm256_setzero_ps(); 2];
                for j in 0..8 {
                    let b = u * 8 + j;
                    let mut sums = [_mm256_setzero_si256(); 2];
                    for g in 0..4 {
                        let xs = x.add(b * BLOCK + 4 * g);
                        let x_low = _mm256_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                        let x_high =
                            _mm256_set1_epi32(std::ptr::read_unaligned(xs.add(16).cast::<i32>()));
                        let line = unit.add((4 * j + g) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(
                            line.wrapping_add(PACKED_PREFETCH_LINES * 64).cast(),
                        );
                        for (h, sum) in sums.iter_mut().enumerate() {
                            let n = _mm256_load_si256(line.add(h * 32).cast());
                            let w_low = _mm256_and_si256(n, low);
                            let w_high = _mm256_and_si256(_mm256_srli_epi16::<4>(n), low);
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(w_low, x_low),
                                _mm256_maddubs_epi16(w_high, x_high),
                            );
                            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    let da = _mm256_set1_ps(*a.d.get_unchecked(b));
                    let sa = _mm256_set1_ps(*a.sum.get_unchecked(b));
                    let at = unit.add((32 + j / 2) * 64 + j % 2 * 32);
                    for h in 0..2 {
                        let s = _mm256_mul_ps(q4k_bytes8(at.add(8 * h)), da);
                        let sum = _mm256_cvtepi32_ps(sums[h]);
                        scaled[h] = _mm256_fmadd_ps(sum, s, scaled[h]);
                        mins[h] = _mm256_fmadd_ps(q4k_bytes8(at.add(TILE + 8 * h)), sa, mins[h]);
                    }
                }
                let f = scales.as_ptr().add(tu * 2 * TILE);
                for h in 0..2 {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(f.add(8 * h).cast()));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(f.add(TILE + 8 * h).cast()));
                    acc[h] = _mm256_fmadd_ps(scaled[h], d, acc[h]);
                    acc[h] = _mm256_fnmadd_ps(mins[h], dmin, acc[h]);
                }
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE + 8), acc[1]);
        }
    }
}

/// Lines of a [`Format::Q6K`] unit: six a block, then four of scales.
const Q6K_LINES: usize = 52;

// The Q6_K kernels below call intrinsics only from functions that enable their features, never
// from closures: a closure does not inherit `target_feature`, so intrinsics inside it stay calls
// (which halved the prompt kernel's speed).

/// Group `g` of a Q6_K block as `vpdpbusd`'s unsigned operand (0..64): the low four bits from
/// `nibbles` (line `g % 4`; the high halves for `g >= 4`), the top two from hi line `high`
/// (bits `2 * (g % 4)`), moved to bits 4 and 5 by 16-bit shifts whose carries between bytes
/// land outside them.
///
/// # Safety
/// The processor must have AVX-512 F and BW.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q6k_group(nibbles: __m512i, high: __m512i, g: usize) -> __m512i {
    let nibbles = if g < 4 {
        nibbles
    } else {
        _mm512_srli_epi16::<4>(nibbles)
    };
    let high = match g % 4 {
        0 => _mm512_slli_epi16::<4>(high),
        1 => _mm512_slli_epi16::<2>(high),
        2 => high,
        _ => _mm512_srli_epi16::<2>(high),
    };
    let high = _mm512_and_si512(high, _mm512_set1_epi8(0x30));
    // (nibbles & 15) | high
    _mm512_ternarylogic_epi32::<0xEC>(nibbles, high, _mm512_set1_epi8(15))
}

/// Block `j` of a Q6_K unit at `unit` unpacked: its 8 groups, 0..4 the block's first 16 values,
/// 4..8 its last.
///
/// # Safety
/// The processor must have AVX-512 F and BW; `unit` must point at a whole unit.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q6k_groups(unit: *const Line, j: usize) -> [__m512i; GROUPS] {
    // SAFETY: the caller's.
    unsafe {
        let at = unit.add(6 * j);
        let n0 = _mm512_load_si512(at.cast());
        let n1 = _mm512_load_si512(at.add(1).cast());
        let n2 = _mm512_load_si512(at.add(2).cast());
        let n3 = _mm512_load_si512(at.add(3).cast());
        let h0 = _mm512_load_si512(at.add(4).cast());
        let h1 = _mm512_load_si512(at.add(5).cast());
        [
            q6k_group(n0, h0, 0),
            q6k_group(n1, h0, 1),
            q6k_group(n2, h0, 2),
            q6k_group(n3, h0, 3),
            q6k_group(n0, h1, 4),
            q6k_group(n1, h1, 5),
            q6k_group(n2, h1, 6),
            q6k_group(n3, h1, 7),
        ]
    }
}

/// A Q6_K block's two halves' scales at `at` (16 signed bytes each, 16 bytes apart) as f32.
///
/// # Safety
/// The processor must have AVX-512 F; `at` must point at 32 readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q6k_scales(at: *const u8) -> [__m512; 2] {
    // SAFETY: the caller's.
    unsafe {
        let low = _mm512_cvtepi8_epi32(_mm_loadu_si128(at.cast()));
        let high = _mm512_cvtepi8_epi32(_mm_loadu_si128(at.add(TILE).cast()));
        [_mm512_cvtepi32_ps(low), _mm512_cvtepi32_ps(high)]
    }
}

/// `scaled` plus a Q6_K block's two integer sums times their halves' scales `sf`, times the
/// activations' scale `da`: the one order of operations both AVX-512 kernels use.
///
/// # Safety
/// The processor must have AVX-512 F and FMA.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn q6k_block_sum(sums: [__m512i; 2], sf: [__m512; 2], da: __m512, scaled: __m512) -> __m512 {
    let total = _mm512_mul_ps(_mm512_cvtepi32_ps(sums[0]), sf[0]);
    let total = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[1]), sf[1], total);
    _mm512_fmadd_ps(total, da, scaled)
}

/// [`dots_avx512`] over tiles in [`Format::Q6K`]: each block's 8 groups unpacked from its six
/// lines into `vpdpbusd`'s operands, its two halves summed apart (each started at the negation
/// of the offset's share) and scaled by their signed scales, then by the activations' scale; a
/// unit's total by the rows' `d`.
///
/// # Safety
/// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dots_q6k_avx512(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let tiles = out.len() / TILE;
    bounds(
        Format::Q6K,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
    let units = blocks / 8;
    // SAFETY: `bounds` bounds every index below.
    unsafe {
        let x = a.q.as_ptr();
        // Two tiles at a time, each block's halves in two sums: four chains.
        let mut t = 0;
        while t < tiles {
            let pair = usize::from(t + 1 < tiles);
            let mut acc = [_mm512_setzero_ps(); 2];
            for u in 0..units {
                let tu = [t * units + u, (t + pair) * units + u];
                let unit = [
                    values.as_ptr().add(tu[0] * Q6K_LINES),
                    values.as_ptr().add(tu[1] * Q6K_LINES),
                ];
                let mut scaled = [_mm512_setzero_ps(); 2];
                for j in 0..8 {
                    let b = u * 8 + j;
                    let low = _mm512_set1_epi32(*a.offset6.get_unchecked(2 * b));
                    let high = _mm512_set1_epi32(*a.offset6.get_unchecked(2 * b + 1));
                    let mut sums = [[low, high]; 2];
                    for i in 0..2 {
                        for k in 0..6 {
                            let ahead = unit[i].add(6 * j + k).wrapping_add(PACKED_PREFETCH_LINES);
                            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                        }
                        let w = q6k_groups(unit[i], j);
                        for g in 0..GROUPS {
                            let xs = x.add(b * BLOCK + 4 * g);
                            let xg = _mm512_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                            sums[i][g / 4] = _mm512_dpbusd_epi32(sums[i][g / 4], w[g], xg);
                        }
                    }
                    let da = _mm512_set1_ps(*a.d.get_unchecked(b));
                    for i in 0..2 {
                        let sf = q6k_scales(unit[i].add(48 + j / 2).cast::<u8>().add(j % 2 * 32));
                        scaled[i] = q6k_block_sum(sums[i], sf, da, scaled[i]);
                    }
                }
                for i in 0..2 {
                    let f = scales.as_ptr().add(tu[i] * TILE);
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(f.cast()));
                    acc[i] = _mm512_fmadd_ps(scaled[i], d, acc[i]);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(1 + pair) {
                _mm512_storeu_ps(out.as_mut_ptr().add((t + i) * TILE), *acc);
            }
            t += 1 + pair;
        }
    }
}

/// [`rows_avx512`] over tiles in [`Format::Q6K`]. Unpacking a block's six lines into its eight
/// groups costs about as much as the products of four activation rows, so each tile is unpacked
/// once, into a scratch tile of plain `vpdpbusd` operands (and its scales widened to f32) that
/// stays in cache while every row passes over it, four at a time. Every row's arithmetic is in
/// the order of [`dots_q6k_avx512`] (so the same bits).
///
/// # Safety
/// The processor must have AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn rows_q6k_avx512(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    acts: &[Activations],
    out: &mut [f32],
) {
    let (rows, width, tiles) = rows_bounds(Format::Q6K, values, scales, blocks, acts, out);
    let units = blocks / 8;
    // One tile unpacked: each block's 8 groups, and its two halves' scales as f32.
    let mut groups = vec![Line([0; 64]); blocks * GROUPS];
    let mut block_scales = vec![[0f32; TILE]; blocks * 2];
    // SAFETY: `rows_bounds` and the scratch tiles' sizes bound every index below.
    unsafe {
        let groups = groups.as_mut_ptr();
        let sf_at = block_scales.as_mut_ptr().cast::<f32>();
        for t in 0..tiles {
            for u in 0..units {
                let unit = values.as_ptr().add((t * units + u) * Q6K_LINES);
                for j in 0..8 {
                    let b = u * 8 + j;
                    let w = q6k_groups(unit, j);
                    for (g, w) in w.iter().enumerate() {
                        _mm512_store_si512(groups.add(b * GROUPS + g).cast(), *w);
                    }
                    let sf = q6k_scales(unit.add(48 + j / 2).cast::<u8>().add(j % 2 * 32));
                    _mm512_storeu_ps(sf_at.add(2 * b * TILE), sf[0]);
                    _mm512_storeu_ps(sf_at.add((2 * b + 1) * TILE), sf[1]);
                }
            }
            for first in (0..rows).step_by(ROWS) {
                let (count, a) = row_group(acts, first);
                let mut acc = [_mm512_setzero_ps(); ROWS];
                for u in 0..units {
                    let mut scaled = [_mm512_setzero_ps(); ROWS];
                    for j in 0..8 {
                        let b = u * 8 + j;
                        let mut sums = [[_mm512_setzero_si512(); 2]; ROWS];
                        for r in 0..ROWS {
                            sums[r][0] = _mm512_set1_epi32(*a[r].offset6.get_unchecked(2 * b));
                            sums[r][1] = _mm512_set1_epi32(*a[r].offset6.get_unchecked(2 * b + 1));
                        }
                        for g in 0..GROUPS {
                            let w = _mm512_load_si512(groups.add(b * GROUPS + g).cast());
                            for r in 0..ROWS {
                                let xs = a[r].q.as_ptr().add(b * BLOCK + 4 * g);
                                let xg = _mm512_set1_epi32(std::ptr::read_unaligned(xs.cast()));
                                sums[r][g / 4] = _mm512_dpbusd_epi32(sums[r][g / 4], w, xg);
                            }
                        }
                        let sf = [
                            _mm512_loadu_ps(sf_at.add(2 * b * TILE)),
                            _mm512_loadu_ps(sf_at.add((2 * b + 1) * TILE)),
                        ];
                        for r in 0..ROWS {
                            let da = _mm512_set1_ps(*a[r].d.get_unchecked(b));
                            scaled[r] = q6k_block_sum(sums[r], sf, da, scaled[r]);
                        }
                    }
                    let f = scales.as_ptr().add((t * units + u) * TILE);
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(f.cast()));
                    for r in 0..ROWS {
                        acc[r] = _mm512_fmadd_ps(scaled[r], d, acc[r]);
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(count) {
                    _mm512_storeu_ps(out.as_mut_ptr().add((first + r) * width + t * TILE), *acc);
                }
            }
        }
    }
}

/// [`q6k_group`] for half a line (8 rows) with AVX2.
///
/// # Safety
/// The processor must have AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_group8(nibbles: __m256i, high: __m256i, g: usize) -> __m256i {
    let nibbles = if g < 4 {
        nibbles
    } else {
        _mm256_srli_epi16::<4>(nibbles)
    };
    let high = match g % 4 {
        0 => _mm256_slli_epi16::<4>(high),
        1 => _mm256_slli_epi16::<2>(high),
        2 => high,
        _ => _mm256_srli_epi16::<2>(high),
    };
    _mm256_or_si256(
        _mm256_and_si256(nibbles, _mm256_set1_epi8(15)),
        _mm256_and_si256(high, _mm256_set1_epi8(0x30)),
    )
}

/// The sum of groups `g` and `g + 1`'s products (unpacked `w`, activations `x`) added to `sum`:
/// `vpmaddubsw` pairs (two groups' pairs stay within 4 * 63 * 127), widened by `vpmaddwd`.
///
/// # Safety
/// The processor must have AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_pairs8(w: [__m256i; 2], x: [__m256i; 2], sum: __m256i) -> __m256i {
    let pairs = _mm256_add_epi16(
        _mm256_maddubs_epi16(w[0], x[0]),
        _mm256_maddubs_epi16(w[1], x[1]),
    );
    _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// 8 signed bytes at `at` (8 rows' scales of a Q6_K half block) as f32.
///
/// # Safety
/// The processor must have AVX2; `at` must point at 8 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_scales8(at: *const u8) -> __m256 {
    // SAFETY: the caller's.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(at.cast()))) }
}

/// [`dots_q6k_avx2`] for a prompt's rows, `ROWS` at a time: each half line's six-bit values are
/// put together once for all of them, every row's arithmetic in the order of [`dots_q6k_avx2`]
/// (so the same bits).
///
/// # Safety
/// The processor must have AVX2, FMA and F16C.
// Tile halves `h` and rows `r` index the same arrays together.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_q6k_avx2(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    acts: &[Activations],
    out: &mut [f32],
) {
    let (rows, width, tiles) = rows_bounds(Format::Q6K, values, scales, blocks, acts, out);
    let units = blocks / 8;
    // SAFETY: `rows_bounds` bounds every index below.
    unsafe {
        for t in 0..tiles {
            for first in (0..rows).step_by(ROWS) {
                let (count, a) = row_group(acts, first);
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for u in 0..units {
                    let tu = t * units + u;
                    let unit = values.as_ptr().add(tu * Q6K_LINES).cast::<u8>();
                    let mut scaled = [[_mm256_setzero_ps(); 2]; ROWS];
                    for j in 0..8 {
                        let b = u * 8 + j;
                        let block = unit.add(6 * j * 64);
                        let at = unit.add((48 + j / 2) * 64 + j % 2 * 32);
                        for h in 0..2 {
                            let half = block.add(h * 32);
                            let n: [__m256i; 4] =
                                std::array::from_fn(|i| _mm256_load_si256(half.add(i * 64).cast()));
                            let h0 = _mm256_load_si256(half.add(4 * 64).cast());
                            let h1 = _mm256_load_si256(half.add(5 * 64).cast());
                            let w: [__m256i; GROUPS] = std::array::from_fn(|g| match g < 4 {
                                true => q6k_group8(n[g], h0, g),
                                false => q6k_group8(n[g - 4], h1, g),
                            });
                            let (sl, sh) = (
                                q6k_scales8(at.add(8 * h)),
                                q6k_scales8(at.add(TILE + 8 * h)),
                            );
                            for r in 0..ROWS {
                                let x = a[r].q.as_ptr().add(b * BLOCK);
                                let xg = |g: usize| {
                                    _mm256_set1_epi32(std::ptr::read_unaligned(
                                        x.add(4 * g).cast::<i32>(),
                                    ))
                                };
                                let mut low = _mm256_set1_epi32(*a[r].offset6.get_unchecked(2 * b));
                                let mut high =
                                    _mm256_set1_epi32(*a[r].offset6.get_unchecked(2 * b + 1));
                                for g in [0, 2] {
                                    low = q6k_pairs8([w[g], w[g + 1]], [xg(g), xg(g + 1)], low);
                                    high = q6k_pairs8(
                                        [w[g + 4], w[g + 5]],
                                        [xg(g + 4), xg(g + 5)],
                                        high,
                                    );
                                }
                                let total = _mm256_mul_ps(_mm256_cvtepi32_ps(low), sl);
                                let total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), sh, total);
                                let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                                scaled[r][h] = _mm256_fmadd_ps(total, da, scaled[r][h]);
                            }
                        }
                    }
                    let f = scales.as_ptr().add(tu * TILE);
                    for h in 0..2 {
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(f.add(8 * h).cast()));
                        for r in 0..ROWS {
                            acc[r][h] = _mm256_fmadd_ps(scaled[r][h], d, acc[r][h]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(count) {
                    let y = out.as_mut_ptr().add((first + r) * width + t * TILE);
                    _mm256_storeu_ps(y, acc[0]);
                    _mm256_storeu_ps(y.add(8), acc[1]);
                }
            }
        }
    }
}

/// [`dots_q6k_avx512`] with AVX2: `vpmaddubsw` takes the unpacked values (0..63) with the
/// activations as its signed operand.
///
/// # Safety
/// The processor must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_q6k_avx2(
    values: &[Line],
    scales: &[u16],
    blocks: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let tiles = out.len() / TILE;
    bounds(
        Format::Q6K,
        values,
        scales,
        blocks,
        tiles,
        std::slice::from_ref(a),
    );
    let units = blocks / 8;
    // SAFETY: `bounds` bounds every index below.
    unsafe {
        let x = a.q.as_ptr();
        for t in 0..tiles {
            // Rows 0-7 and 8-15 of the tile: each 64-byte line is two halves of 8 rows.
            let mut acc = [_mm256_setzero_ps(); 2];
            for u in 0..units {
                let tu = t * units + u;
                let unit = values.as_ptr().add(tu * Q6K_LINES).cast::<u8>();
                let mut scaled = [_mm256_setzero_ps(); 2];
                for j in 0..8 {
                    let b = u * 8 + j;
                    let block = unit.add(6 * j * 64);
                    for k in 0..6 {
                        let ahead = block.add(k * 64).wrapping_add(PACKED_PREFETCH_LINES * 64);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    }
                    let mut xg = [_mm256_setzero_si256(); GROUPS];
                    for (g, xg) in xg.iter_mut().enumerate() {
                        let xs = x.add(b * BLOCK + 4 * g);
                        *xg = _mm256_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                    }
                    let da = _mm256_set1_ps(*a.d.get_unchecked(b));
                    let at = unit.add((48 + j / 2) * 64 + j % 2 * 32);
                    for (h, scaled) in scaled.iter_mut().enumerate() {
                        let half = block.add(h * 32);
                        let mut n = [_mm256_setzero_si256(); 4];
                        for (i, n) in n.iter_mut().enumerate() {
                            *n = _mm256_load_si256(half.add(i * 64).cast());
                        }
                        let h0 = _mm256_load_si256(half.add(4 * 64).cast());
                        let h1 = _mm256_load_si256(half.add(5 * 64).cast());
                        let mut low = _mm256_set1_epi32(*a.offset6.get_unchecked(2 * b));
                        let mut high = _mm256_set1_epi32(*a.offset6.get_unchecked(2 * b + 1));
                        for g in [0, 2] {
                            let w = [q6k_group8(n[g], h0, g), q6k_group8(n[g + 1], h0, g + 1)];
                            low = q6k_pairs8(w, [xg[g], xg[g + 1]], low);
                            let w = [q6k_group8(n[g], h1, g + 4), q6k_group8(n[g + 1], h1, g + 5)];
                            high = q6k_pairs8(w, [xg[g + 4], xg[g + 5]], high);
                        }
                        let total =
                            _mm256_mul_ps(_mm256_cvtepi32_ps(low), q6k_scales8(at.add(8 * h)));
                        let sf = q6k_scales8(at.add(TILE + 8 * h));
                        let total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), sf, total);
                        *scaled = _mm256_fmadd_ps(total, da, *scaled);
                    }
                }
                let f = scales.as_ptr().add(tu * TILE);
                for h in 0..2 {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(f.add(8 * h).cast()));
                    acc[h] = _mm256_fmadd_ps(scaled[h], d, acc[h]);
                }
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(t * TILE + 8), acc[1]);
        }
    }
}
