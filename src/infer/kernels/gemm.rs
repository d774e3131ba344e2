//! Blocked matrix products on f32 rows: `C (m, n) [+]= A (m, k) · B (k, n)`.
//!
//! One micro-kernel family serves the whole CPU forward pass. `A` is always f32 rows (the
//! activations, or attention probabilities), given as row pointers so any row layout works (a
//! head group's query rows, say). `B` is read row by row, 16 contiguous columns at a time, as
//! f16 or f32 with any row stride:
//!
//! - prefill weights ([`F16Weights`]): f16 *panels* of 16 output columns — panel `p` holds, for
//!   each `kk`, the 16 values `w[p*16 .. p*16+16][kk]` side by side, so a panel is read once,
//!   sequentially, per tile of rows;
//! - attention: `Kᵀ` (`d × positions`) for the scores and `V` (`positions × d`) for the output,
//!   straight from the KV cache.
//!
//! A micro-kernel keeps a tile of `MR` rows × 16 or 32 columns in registers while it walks `k`:
//! per step it loads (and converts) one row of `B`'s 16 or 32 columns and does `MR` broadcast
//! FMAs per vector. AVX2 + FMA + F16C: 6 × 16; AVX-512: 12 × 32 (and 12 × 16 for an odd last
//! panel); the scalar kernel is the portable reference. Tiles go through a small buffer, so
//! ragged edges (fewer rows, fewer columns) need no special kernels.
//!
//! f16 weights keep 11 significant bits, more than the 8 of the Q8_0 weights the decode path
//! uses (and that prefill used before, with its activations quantized to 8 bits as well).

use half::f16;

use super::pool::Pool;
use super::Level;

/// Columns per panel (and per half of an AVX-512 tile).
pub const NR: usize = 16;
/// Most rows of any level's tile.
pub const MAX_MR: usize = 12;

/// A weight matrix `(n, k)` (`n` outputs of `k` inputs) in f16 panels.
#[derive(Debug, Clone)]
pub struct F16Weights {
    n: usize,
    k: usize,
    /// `ceil(n / NR)` panels of `k * NR` halves.
    panels: Vec<f16>,
}

impl F16Weights {
    /// Packs a row-major `(n, k)` f32 matrix.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {} values is not ({n}, {k})", w.len());
        let np = n.div_ceil(NR);
        let mut panels = vec![f16::ZERO; np * k * NR];
        for (p, panel) in panels.chunks_exact_mut(k * NR).enumerate() {
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = f16::from_f32(v);
                }
            }
        }
        Self { n, k, panels }
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.panels.len() * 2
    }
}

/// Rows per micro-tile and 16-column groups per micro-tile at a level.
pub fn tile_shape(level: Level) -> (usize, usize) {
    match level {
        Level::Scalar => (4, 1),
        Level::Avx2 => (6, 1),
        Level::Avx512 => (MAX_MR, 2),
    }
}

/// An element type `B` may hold.
pub trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// A `B` operand: row `kk`'s 16-column group `g` starts at `ptr + kk * ld + g * group`.
#[derive(Clone, Copy)]
pub struct BView<T> {
    pub ptr: *const T,
    /// Elements between consecutive rows.
    pub ld: usize,
    /// Elements between consecutive 16-column groups.
    pub group: usize,
}

/// The output of one tile: `rows` row pointers, `cols ≤ 32` columns each.
pub struct CTile<'a> {
    pub rows: &'a [*mut f32],
    pub cols: usize,
    /// Add to what `C` holds instead of overwriting it.
    pub accumulate: bool,
}

/// One tile: `C[rows][cols] (+)= Σ_kk A[row][kk] · B[kk][col]` for `rows = a.len() ≤ MR` and
/// `cols ≤ NR · groups` of the level's tile shape.
///
/// # Safety
/// Every `a[i]` must point to `k` readable f32; `b` must cover `k` rows of the tile's column
/// groups (`ceil(cols / 16)` groups of 16 readable values each); every `c.rows[i]` must point
/// to `c.cols` writable f32 that no other thread touches meanwhile.
pub unsafe fn tile<T: KernelElem>(level: Level, k: usize, a: &[*const f32], b: BView<T>, c: CTile) {
    let rows = a.len();
    debug_assert!(rows >= 1 && rows <= tile_shape(level).0 && rows == c.rows.len());
    let groups = c.cols.div_ceil(NR);
    let mut ap = [a[0]; MAX_MR];
    ap[..rows].copy_from_slice(a);
    let mut buf = [0f32; MAX_MR * 2 * NR];
    T::kernel(level, k, &ap, rows, b, groups, &mut buf);
    let ld = groups * NR;
    for (i, &row) in c.rows.iter().enumerate() {
        let src = &buf[i * ld..i * ld + c.cols];
        let dst = std::slice::from_raw_parts_mut(row, c.cols);
        if c.accumulate {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
}

/// Element types with micro-kernels.
pub trait KernelElem: Elem {
    /// Computes a tile (the first `rows` of `a`, at most the level's `MR`; `groups` of 16
    /// columns, 1 or 2) into `out` (row stride `groups * 16`); rows past `rows` may be
    /// computed from `a`'s repeated pointers and are ignored.
    ///
    /// # Safety
    /// As [`tile`], for all `MR` row pointers.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        level: Level,
        k: usize,
        a: &[*const f32; MAX_MR],
        rows: usize,
        b: BView<Self>,
        groups: usize,
        out: &mut [f32; MAX_MR * 2 * NR],
    );
}

macro_rules! kernel_elem {
    ($t:ty, $avx2:ident, $avx512_2:ident, $avx512_1:ident) => {
        impl KernelElem for $t {
            unsafe fn kernel(
                level: Level,
                k: usize,
                a: &[*const f32; MAX_MR],
                rows: usize,
                b: BView<Self>,
                groups: usize,
                out: &mut [f32; MAX_MR * 2 * NR],
            ) {
                // Few rows (attention while decoding: one query per head of a group) take a
                // shorter kernel rather than computing repeated rows.
                match level {
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx512 => match (groups, rows) {
                        (2, 1..=4) => x86::$avx512_2::<4>(k, a, b, out),
                        (2, 5..=8) => x86::$avx512_2::<8>(k, a, b, out),
                        (2, _) => x86::$avx512_2::<12>(k, a, b, out),
                        (_, 1..=4) => x86::$avx512_1::<4>(k, a, b, out),
                        (_, 5..=8) => x86::$avx512_1::<8>(k, a, b, out),
                        _ => x86::$avx512_1::<12>(k, a, b, out),
                    },
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 => match rows {
                        1..=3 => x86::$avx2::<3>(k, a, b, out),
                        _ => x86::$avx2::<6>(k, a, b, out),
                    },
                    _ => kernel_scalar(k, a, b, groups, out),
                }
            }
        }
    };
}
kernel_elem!(f16, avx2_6x16_f16, avx512_12x32_f16, avx512_12x16_f16);
kernel_elem!(f32, avx2_6x16_f32, avx512_12x32_f32, avx512_12x16_f32);

/// The reference kernel: 4 rows × `groups` of 16 columns.
unsafe fn kernel_scalar<T: Elem>(
    k: usize,
    a: &[*const f32; MAX_MR],
    b: BView<T>,
    groups: usize,
    out: &mut [f32; MAX_MR * 2 * NR],
) {
    let ld = groups * NR;
    for g in 0..groups {
        let mut acc = [[0f32; NR]; 4];
        for kk in 0..k {
            let brow = b.ptr.add(kk * b.ld + g * b.group);
            let mut bv = [0f32; NR];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = (*brow.add(j)).to_f32();
            }
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let av = *a[i].add(kk);
                for (s, bj) in acc_row.iter_mut().zip(&bv) {
                    *s += av * bj;
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate() {
            out[i * ld + g * NR..i * ld + (g + 1) * NR].copy_from_slice(acc_row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{BView, MAX_MR, NR};

    /// Loads 8 columns as f32.
    trait Load8 {
        unsafe fn load8(p: *const Self) -> __m256;
        unsafe fn load16(p: *const Self) -> __m512;
    }
    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load16(p: *const Self) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
    }
    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load16(p: *const Self) -> __m512 {
            _mm512_loadu_ps(p)
        }
    }

    macro_rules! kernels {
        ($t:ty, $avx2:ident, $avx512_2:ident, $avx512_1:ident) => {
            /// `MR ≤ 6` rows × 16 columns, AVX2 + FMA + F16C.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $avx2<const MR: usize>(
                k: usize,
                a: &[*const f32; MAX_MR],
                b: BView<$t>,
                out: &mut [f32; MAX_MR * 2 * NR],
            ) {
                let mut acc = [[_mm256_setzero_ps(); 2]; MR];
                let mut bp = b.ptr;
                for kk in 0..k {
                    let b0 = <$t>::load8(bp);
                    let b1 = <$t>::load8(bp.add(8));
                    bp = bp.add(b.ld);
                    for i in 0..MR {
                        let av = _mm256_broadcast_ss(&*a[i].add(kk));
                        acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
                        acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
                    }
                }
                let o = out.as_mut_ptr();
                for (i, r) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(i * NR), r[0]);
                    _mm256_storeu_ps(o.add(i * NR + 8), r[1]);
                }
            }

            /// `MR ≤ 12` rows × 32 columns (two groups), AVX-512.
            #[target_feature(enable = "avx512f,avx512vl,f16c,fma")]
            pub(super) unsafe fn $avx512_2<const MR: usize>(
                k: usize,
                a: &[*const f32; MAX_MR],
                b: BView<$t>,
                out: &mut [f32; MAX_MR * 2 * NR],
            ) {
                let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                let mut bp = b.ptr;
                for kk in 0..k {
                    let w0 = <$t>::load16(bp);
                    let w1 = <$t>::load16(bp.add(b.group));
                    bp = bp.add(b.ld);
                    for i in 0..MR {
                        let av = _mm512_set1_ps(*a[i].add(kk));
                        acc[i][0] = _mm512_fmadd_ps(av, w0, acc[i][0]);
                        acc[i][1] = _mm512_fmadd_ps(av, w1, acc[i][1]);
                    }
                }
                let o = out.as_mut_ptr();
                for (i, r) in acc.iter().enumerate() {
                    _mm512_storeu_ps(o.add(i * 2 * NR), r[0]);
                    _mm512_storeu_ps(o.add(i * 2 * NR + NR), r[1]);
                }
            }

            /// `MR ≤ 12` rows × 16 columns, AVX-512.
            #[target_feature(enable = "avx512f,avx512vl,f16c,fma")]
            pub(super) unsafe fn $avx512_1<const MR: usize>(
                k: usize,
                a: &[*const f32; MAX_MR],
                b: BView<$t>,
                out: &mut [f32; MAX_MR * 2 * NR],
            ) {
                let mut acc = [_mm512_setzero_ps(); MR];
                let mut bp = b.ptr;
                for kk in 0..k {
                    let w = <$t>::load16(bp);
                    bp = bp.add(b.ld);
                    for i in 0..MR {
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*a[i].add(kk)), w, acc[i]);
                    }
                }
                let o = out.as_mut_ptr();
                for (i, r) in acc.iter().enumerate() {
                    _mm512_storeu_ps(o.add(i * NR), *r);
                }
            }
        };
    }
    kernels!(f16, avx2_6x16_f16, avx512_12x32_f16, avx512_12x16_f16);
    kernels!(f32, avx2_6x16_f32, avx512_12x32_f32, avx512_12x16_f32);
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only where items write disjoint parts of the buffer.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut T {
        self.0
    }
}

/// `out (m, n) [+]= x (m, k) · wᵀ` on `pool`: the prefill matmul. With `accumulate` the product
/// is added to `out` (a residual connection for free).
pub fn matmul(
    x: &[f32],
    m: usize,
    w: &F16Weights,
    out: &mut [f32],
    accumulate: bool,
    level: Level,
    pool: &Pool,
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "input of {} values is not ({m}, {k})", x.len());
    assert_eq!(out.len(), m * n, "output of {} values is not ({m}, {n})", out.len());
    if m == 0 || n == 0 {
        return;
    }
    let (mr, gr) = tile_shape(level);
    let np = n.div_ceil(NR);
    // Items: groups of row tiles × groups of panels; within an item each panel (pair) is reused
    // across the group's rows while it is in cache.
    let rows_per_item = mr * 8;
    let panels_per_item = 4;
    let row_items = m.div_ceil(rows_per_item);
    let panel_items = np.div_ceil(panels_per_item);
    let out_ptr = SendPtr(out.as_mut_ptr());
    pool.run(row_items * panel_items, |item| {
        let (ri, pi) = (item / panel_items, item % panel_items);
        let (r0, r1) = (ri * rows_per_item, m.min((ri + 1) * rows_per_item));
        let (p0, p1) = (pi * panels_per_item, np.min((pi + 1) * panels_per_item));
        let mut p = p0;
        while p < p1 {
            let groups = gr.min(p1 - p);
            let cols = (n - p * NR).min(groups * NR);
            let b = BView { ptr: w.panels[p * k * NR..].as_ptr(), ld: NR, group: k * NR };
            let mut r = r0;
            while r < r1 {
                let rows = mr.min(r1 - r);
                let mut a = [std::ptr::null::<f32>(); MAX_MR];
                let mut c = [std::ptr::null_mut::<f32>(); MAX_MR];
                for i in 0..rows {
                    a[i] = x[(r + i) * k..].as_ptr();
                    // SAFETY: row r + i < m of `out`.
                    c[i] = unsafe { out_ptr.get().add((r + i) * n + p * NR) };
                }
                // SAFETY: rows r..r+rows of `x` hold k values; the panels hold k rows of
                // `groups` column groups; this item alone writes these cells of `out`.
                unsafe {
                    tile(level, k, &a[..rows], b, CTile { rows: &c[..rows], cols, accumulate })
                };
                r += rows;
            }
            p += groups;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let wj = &w[j * k..(j + 1) * k];
                // The weights as the kernels see them: rounded to f16.
                out[i * n + j] = x[i * k..(i + 1) * k]
                    .iter()
                    .zip(wj)
                    .map(|(a, b)| a * f16::from_f32(*b).to_f32())
                    .sum();
            }
        }
        out
    }

    pub(crate) fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn levels() -> Vec<Level> {
        [Level::Scalar, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= Level::detect())
            .collect()
    }

    #[test]
    fn every_level_matches_the_reference_on_ragged_shapes() {
        let pool = Pool::new(2);
        for level in levels() {
            for &(m, n, k) in &[(1, 16, 8), (7, 40, 33), (13, 48, 64), (30, 100, 17), (97, 64, 96)]
            {
                let x = data(m * k, 1);
                let wv = data(n * k, 2);
                let w = F16Weights::from_rows(&wv, n, k);
                let want = reference(&x, m, &wv, n, k);
                let mut out = vec![f32::NAN; m * n];
                matmul(&x, m, &w, &mut out, false, level, &pool);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    let ok = (a - b).abs() <= 1e-4 * (1.0 + b.abs());
                    assert!(ok, "{level:?} ({m},{n},{k}) [{i}]: {a} vs {b}");
                }
                // Accumulating adds the same product again.
                matmul(&x, m, &w, &mut out, true, level, &pool);
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - 2.0 * b).abs() <= 2e-4 * (1.0 + b.abs()), "{level:?} accumulate");
                }
            }
        }
    }

    #[test]
    fn strided_f32_tiles_match_the_reference() {
        // C (5 × 20) = A (5 × 9) · B (9 × 20) with B rows 24 apart.
        let (m, n, k, ld) = (5, 20, 9, 24);
        let a = data(m * k, 3);
        let b = data(k * ld + NR, 4);
        for level in levels() {
            let (mr, groups) = tile_shape(level);
            let mut c = vec![0f32; m * n];
            let mut col = 0;
            while col < n {
                let cols = (n - col).min(groups * NR);
                let mut r = 0;
                while r < m {
                    let rows = mr.min(m - r);
                    let ap: Vec<*const f32> = (r..r + rows).map(|i| a[i * k..].as_ptr()).collect();
                    let cp: Vec<*mut f32> =
                        (r..r + rows).map(|i| unsafe { c.as_mut_ptr().add(i * n + col) }).collect();
                    // Columns past 20 read B's padding (rows are 24 long), never stored.
                    let view = BView { ptr: b[col..].as_ptr(), ld, group: NR };
                    let cols_read = cols.div_ceil(NR) * NR;
                    assert!(col + cols_read <= ld + NR);
                    unsafe {
                        tile(level, k, &ap, view, CTile { rows: &cp, cols, accumulate: false })
                    };
                    r += rows;
                }
                col += cols;
            }
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|kk| a[i * k + kk] * b[kk * ld + j]).sum();
                    assert!((c[i * n + j] - want).abs() < 1e-4, "{level:?} [{i}][{j}]");
                }
            }
        }
    }
}
