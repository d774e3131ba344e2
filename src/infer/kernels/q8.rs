//! The decode matmul: `out (m, n) [+]= x (m, k) · wᵀ` with 8-bit weights, for the few rows of a
//! decode step (one generated token per sequence).
//!
//! Decoding is bound by the bytes of weights read per step, so weights are kept at 8 bits,
//! in blocks of 32 values with one f32 scale each per output (the Q8_0 scheme). The rows of
//! `x` are quantized the same way, so a block's dot product is exact integer arithmetic, then
//! scaled. Weights are interleaved in tiles of 16 outputs: for each block, 8 groups of 4
//! consecutive inputs, each group holding the 4 bytes of all 16 outputs side by side. One
//! vector of weights (16 outputs × 4 inputs) meets 4 activation bytes broadcast to every lane,
//! so the 16 outputs accumulate in the lanes of one register (no horizontal sums), and every
//! weight vector loaded serves all the rows of `x`.
//!
//! - AVX-512 VNNI: `vpdpbusd` multiplies unsigned by signed bytes and adds groups of 4 into 32
//!   bits. The activation is made unsigned (`a + 128`) and the tile's per-block sums of the
//!   weights take the offset back out exactly (`Σ(a+128)w − 128·Σw`).
//! - AVX2: `maddubs` (unsigned × signed bytes, pairs into 16 bits): the weight's sign moves
//!   onto the activation (`|w| · sign(a, w)`), and a pair (≤ 2·127·127) cannot overflow.

use super::pool::Pool;
use super::Level;

/// Inputs per block.
pub const QK: usize = 32;
/// Outputs per tile.
const TILE: usize = 16;
/// Bytes of one block of one tile.
const TILE_BLOCK: usize = TILE * QK;

/// A weight matrix `(n, k)` as 8-bit tiles (`n` padded to a multiple of 16 and `k` to a
/// multiple of 32, with zeros).
#[derive(Debug, Clone)]
pub struct Q8Weights {
    n: usize,
    k: usize,
    /// Blocks per row.
    kb: usize,
    /// `[tile][block][group of 4 inputs (8)][output (16)][4]` quants.
    qs: Vec<i8>,
    /// `[tile][block][output (16)]` scales.
    d: Vec<f32>,
    /// `[tile][block][output (16)]` `128 · Σ` of the block's quants (for the VNNI kernel).
    offsets: Vec<i32>,
}

/// Quantizes `x` into `q.len() / 32` blocks (missing values are zeros): returns nothing, fills
/// the quants `q` and scales `d`.
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for (b, (qb, db)) in q.chunks_exact_mut(QK).zip(d.iter_mut()).enumerate() {
        let xs = &x[(b * QK).min(x.len())..((b + 1) * QK).min(x.len())];
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        *db = scale;
        for (j, qv) in qb.iter_mut().enumerate() {
            *qv = xs.get(j).map_or(0, |v| (v * inv).round().clamp(-127.0, 127.0) as i8);
        }
    }
}

impl Q8Weights {
    /// Quantizes a row-major `(n, k)` f32 matrix.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {} values is not ({n}, {k})", w.len());
        let kb = k.div_ceil(QK);
        let tiles = n.div_ceil(TILE);
        let mut qs = vec![0i8; tiles * kb * TILE_BLOCK];
        let mut d = vec![0f32; tiles * kb * TILE];
        let mut offsets = vec![0i32; tiles * kb * TILE];
        let mut row_q = vec![0i8; kb * QK];
        let mut row_d = vec![0f32; kb];
        for r in 0..n {
            quantize_row(&w[r * k..(r + 1) * k], &mut row_q, &mut row_d);
            let (t, o) = (r / TILE, r % TILE);
            for b in 0..kb {
                let base = (t * kb + b) * TILE_BLOCK;
                for g in 0..QK / 4 {
                    let dst = base + (g * TILE + o) * 4;
                    qs[dst..dst + 4].copy_from_slice(&row_q[b * QK + 4 * g..b * QK + 4 * g + 4]);
                }
                d[(t * kb + b) * TILE + o] = row_d[b];
                offsets[(t * kb + b) * TILE + o] =
                    128 * row_q[b * QK..(b + 1) * QK].iter().map(|&q| q as i32).sum::<i32>();
            }
        }
        Self { n, k, kb, qs, d, offsets }
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.d.len() + 4 * self.offsets.len()
    }
}

/// `x` quantized for the kernels: per row, `kb` blocks of quants and scales.
struct Activations {
    kb: usize,
    q: Vec<i8>,
    d: Vec<f32>,
}

/// Rows of `x` per pass over a tile: as many as the level keeps accumulators for in registers.
fn rows_per_pass(level: Level) -> usize {
    match level {
        Level::Avx512 => 8,
        Level::Avx2 => 2,
        Level::Scalar => 4,
    }
}

/// Tiles per pool item.
const TILES_PER_ITEM: usize = 2;

#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: items write disjoint columns.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out (m, n) [+]= x (m, k) · wᵀ` on `pool`.
pub fn matmul(
    x: &[f32],
    m: usize,
    w: &Q8Weights,
    out: &mut [f32],
    accumulate: bool,
    level: Level,
    pool: &Pool,
) {
    let (n, k, kb) = (w.n, w.k, w.kb);
    assert_eq!(x.len(), m * k, "input of {} values is not ({m}, {k})", x.len());
    assert_eq!(out.len(), m * n, "output of {} values is not ({m}, {n})", out.len());
    if m == 0 || n == 0 {
        return;
    }
    let mut act = Activations { kb, q: vec![0i8; m * kb * QK], d: vec![0f32; m * kb] };
    for r in 0..m {
        quantize_row(
            &x[r * k..(r + 1) * k],
            &mut act.q[r * kb * QK..(r + 1) * kb * QK],
            &mut act.d[r * kb..(r + 1) * kb],
        );
    }
    if level == Level::Avx512 {
        // The VNNI kernel takes the activations unsigned (offset by 128).
        for q in act.q.iter_mut() {
            *q = (*q as u8 ^ 0x80) as i8;
        }
    }
    let tiles = n.div_ceil(TILE);
    let per_pass = rows_per_pass(level);
    let o = Out(out.as_mut_ptr());
    pool.run(tiles.div_ceil(TILES_PER_ITEM), |item| {
        let mut res = [0f32; 8 * TILE];
        for t in item * TILES_PER_ITEM..tiles.min((item + 1) * TILES_PER_ITEM) {
            let cols = TILE.min(n - t * TILE);
            for r0 in (0..m).step_by(per_pass) {
                let rows = per_pass.min(m - r0);
                tile(level, w, t, &act, r0, rows, &mut res);
                for i in 0..rows {
                    for (j, v) in res[i * TILE..i * TILE + cols].iter().enumerate() {
                        // SAFETY: cell (r0 + i, t * 16 + j) of `out`; this item alone writes
                        // the columns of tile t.
                        unsafe {
                            let p = o.get().add((r0 + i) * n + t * TILE + j);
                            *p = if accumulate { *p + v } else { *v };
                        }
                    }
                }
            }
        }
    });
}

/// Tile `t` against activation rows `r0..r0 + rows` into `res[i * 16 + j]`.
fn tile(
    level: Level,
    w: &Q8Weights,
    t: usize,
    act: &Activations,
    r0: usize,
    rows: usize,
    res: &mut [f32; 8 * TILE],
) {
    let kb = w.kb;
    let qs = &w.qs[t * kb * TILE_BLOCK..(t + 1) * kb * TILE_BLOCK];
    let d = &w.d[t * kb * TILE..(t + 1) * kb * TILE];
    let aq = &act.q[r0 * kb * QK..(r0 + rows) * kb * QK];
    let ad = &act.d[r0 * kb..(r0 + rows) * act.kb];
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is at most what the CPU has; the slices hold `kb` blocks.
        Level::Avx512 => unsafe {
            let off = &w.offsets[t * kb * TILE..(t + 1) * kb * TILE];
            x86::tile_vnni(kb, qs, d, off, aq, ad, rows, res)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::tile_avx2(kb, qs, d, aq, ad, rows, res) },
        _ => {
            for i in 0..rows {
                let mut acc = [0f32; TILE];
                for b in 0..kb {
                    let mut dots = [0i32; TILE];
                    for g in 0..QK / 4 {
                        for (o, dot) in dots.iter_mut().enumerate() {
                            for j in 0..4 {
                                let wq = qs[b * TILE_BLOCK + (g * TILE + o) * 4 + j] as i32;
                                *dot += wq * aq[(i * kb + b) * QK + 4 * g + j] as i32;
                            }
                        }
                    }
                    for (o, a) in acc.iter_mut().enumerate() {
                        *a += dots[o] as f32 * d[b * TILE + o] * ad[i * kb + b];
                    }
                }
                res[i * TILE..(i + 1) * TILE].copy_from_slice(&acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Row indices address several arrays at once (accumulators, activations, results).
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{QK, TILE, TILE_BLOCK};

    /// AVX-512 VNNI: up to 8 activation rows (offset by 128) against one tile.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and VNNI; the slices hold `kb` blocks of the tile and of
    /// `rows ≤ 8` activation rows.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_vnni(
        kb: usize,
        qs: &[i8],
        d: &[f32],
        off: &[i32],
        aq: &[i8],
        ad: &[f32],
        rows: usize,
        res: &mut [f32; 8 * TILE],
    ) {
        let mut out = [_mm512_setzero_ps(); 8];
        for b in 0..kb {
            let mut acc = [_mm512_setzero_si512(); 8];
            let wb = qs.as_ptr().add(b * TILE_BLOCK);
            for g in 0..QK / 4 {
                let w = _mm512_loadu_si512(wb.add(g * TILE * 4) as *const _);
                for i in 0..8 {
                    if i < rows {
                        let a = (aq.as_ptr().add((i * kb + b) * QK + 4 * g) as *const i32)
                            .read_unaligned();
                        acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_set1_epi32(a), w);
                    }
                }
            }
            let dw = _mm512_loadu_ps(d.as_ptr().add(b * TILE));
            let ow = _mm512_loadu_si512(off.as_ptr().add(b * TILE) as *const _);
            for i in 0..8 {
                if i < rows {
                    let dots = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i], ow));
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*ad.get_unchecked(i * kb + b)));
                    out[i] = _mm512_fmadd_ps(dots, scale, out[i]);
                }
            }
        }
        for i in 0..rows {
            _mm512_storeu_ps(res.as_mut_ptr().add(i * TILE), out[i]);
        }
    }

    /// AVX2: up to 2 activation rows against one tile (two halves of 8 outputs).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the slices hold `kb` blocks of the tile and of
    /// `rows ≤ 2` activation rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(
        kb: usize,
        qs: &[i8],
        d: &[f32],
        aq: &[i8],
        ad: &[f32],
        rows: usize,
        res: &mut [f32; 8 * TILE],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut out = [[_mm256_setzero_ps(); 2]; 2];
        for b in 0..kb {
            let mut acc = [[_mm256_setzero_si256(); 2]; 2];
            let wb = qs.as_ptr().add(b * TILE_BLOCK);
            for g in 0..QK / 4 {
                let w0 = _mm256_loadu_si256(wb.add(g * TILE * 4) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(g * TILE * 4 + 32) as *const __m256i);
                let (u0, u1) = (_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(w1, w1));
                for i in 0..2 {
                    if i < rows {
                        let a = (aq.as_ptr().add((i * kb + b) * QK + 4 * g) as *const i32)
                            .read_unaligned();
                        let a = _mm256_set1_epi32(a);
                        let p0 = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(a, w0));
                        let p1 = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(a, w1));
                        acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
                        acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
                    }
                }
            }
            let d0 = _mm256_loadu_ps(d.as_ptr().add(b * TILE));
            let d1 = _mm256_loadu_ps(d.as_ptr().add(b * TILE + 8));
            for i in 0..2 {
                if i < rows {
                    let s = _mm256_set1_ps(*ad.get_unchecked(i * kb + b));
                    let (s0, s1) = (_mm256_mul_ps(d0, s), _mm256_mul_ps(d1, s));
                    out[i][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][0]), s0, out[i][0]);
                    out[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][1]), s1, out[i][1]);
                }
            }
        }
        for i in 0..rows {
            _mm256_storeu_ps(res.as_mut_ptr().add(i * TILE), out[i][0]);
            _mm256_storeu_ps(res.as_mut_ptr().add(i * TILE + 8), out[i][1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_matches_the_scalar_kernel() {
        let pool = Pool::new(2);
        for &(m, n, k) in &[(1, 5, 32), (3, 40, 70), (9, 33, 96), (16, 17, 64)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 255) as f32 / 40.0 - 3.0).collect();
            let wv: Vec<f32> =
                (0..n * k).map(|i| ((i * 104729) % 201) as f32 / 300.0 - 0.33).collect();
            let w = Q8Weights::from_rows(&wv, n, k);
            let mut want = vec![0f32; m * n];
            matmul(&x, m, &w, &mut want, false, Level::Scalar, &pool);
            // Within the 8-bit quantization of both sides.
            for i in 0..m {
                for j in 0..n {
                    let exact: f32 = (0..k).map(|t| x[i * k + t] * wv[j * k + t]).sum();
                    let mag: f32 = (0..k).map(|t| (x[i * k + t] * wv[j * k + t]).abs()).sum();
                    let got = want[i * n + j];
                    assert!(
                        (got - exact).abs() <= 0.02 * mag + 1e-3,
                        "({m},{n},{k}) {got} {exact}"
                    );
                }
            }
            for level in [Level::Avx2, Level::Avx512] {
                if level > Level::detect() {
                    continue;
                }
                let mut got = vec![1f32; m * n];
                matmul(&x, m, &w, &mut got, true, level, &pool);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - 1.0 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{level:?} {g} {w}");
                }
            }
        }
    }
}
