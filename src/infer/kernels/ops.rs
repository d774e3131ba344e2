//! Row-wise operations of the forward pass on f32 buffers: RMS norm, SiLU-gated products,
//! softmax, with a polynomial `exp` the compiler vectorizes.
//!
//! The bodies are plain Rust written so that LLVM vectorizes them (lane-array accumulators, no
//! calls); each public function runs them compiled for the current [`Level`]'s instruction set
//! (a `#[target_feature]` copy), so a portable build still gets AVX2/AVX-512 code.

use super::pool::Pool;
use super::Level;

/// Rows handed to one pool item.
const ROWS_PER_ITEM: usize = 16;

/// `e^x` within ~2 ulp on f32's range (Cody–Waite range reduction, degree-6 polynomial);
/// `x` below −87.3 gives 0-ish, above 88.7 saturates. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_3 + r * (0.008_333_6 + r * 0.001_394_3)))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $body:block) => {
        $(#[$m])*
        $vis fn $name(level: Level, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn avx2($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
            fn avx512($($arg: $ty),*) { body($($arg),*) }
            match level {
                // SAFETY: `level` is at most what the CPU supports (see `kernels::level`).
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

multiversion! {
    /// `out = x / rms(x) * w` for one row.
    fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let mut lanes = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        let ss = lanes.iter().sum::<f32>() + tail;
        let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
        for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
            *o = v * inv * g;
        }
    }
}

multiversion! {
    /// `out[j] = silu(gu[j]) * gu[f + j]` for one row of `2f` gate-then-up values.
    fn silu_mul_row(gu: &[f32], out: &mut [f32]) {
        let (g, u) = gu.split_at(out.len());
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

multiversion! {
    /// Softmax of `row[..len]` in place; `row[len..]` is set to 0.
    pub fn softmax_prefix(row: &mut [f32], len: usize) {
        let (live, dead) = row.split_at_mut(len);
        let mut lanes = [f32::NEG_INFINITY; 16];
        let chunks = live.chunks_exact(16);
        let mut max = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = l.max(v);
            }
        }
        max = lanes.iter().copied().fold(max, f32::max);
        let mut sums = [0f32; 16];
        let mut chunks = live.chunks_exact_mut(16);
        for c in &mut chunks {
            for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                *v = exp(*v - max);
                *s += *v;
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        for v in live.iter_mut() {
            *v *= inv;
        }
        dead.fill(0.0);
    }
}

/// Raw output pointer shared by items that write disjoint rows.
#[derive(Clone, Copy)]
struct Rows(*mut f32);
// SAFETY: items write disjoint rows.
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}
impl Rows {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// RMS norm of each `w.len()`-wide row of `x` into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], level: Level, pool: &Pool) {
    let d = w.len();
    let rows = x.len() / d.max(1);
    let o = Rows(out.as_mut_ptr());
    pool.run(rows.div_ceil(ROWS_PER_ITEM), |item| {
        for r in item * ROWS_PER_ITEM..rows.min((item + 1) * ROWS_PER_ITEM) {
            // SAFETY: row r of `out` (same shape as `x`), written by this item only.
            let dst = unsafe { std::slice::from_raw_parts_mut(o.get().add(r * d), d) };
            rms_norm_row(level, &x[r * d..(r + 1) * d], w, eps, dst);
        }
    });
}

/// `out (rows, f) = silu(gate) * up` from `gu (rows, 2f)` holding gate then up in each row.
pub fn silu_mul(gu: &[f32], f: usize, out: &mut [f32], level: Level, pool: &Pool) {
    let rows = out.len() / f.max(1);
    let o = Rows(out.as_mut_ptr());
    pool.run(rows.div_ceil(ROWS_PER_ITEM), |item| {
        for r in item * ROWS_PER_ITEM..rows.min((item + 1) * ROWS_PER_ITEM) {
            // SAFETY: row r of `out`, written by this item only.
            let dst = unsafe { std::slice::from_raw_parts_mut(o.get().add(r * f), f) };
            silu_mul_row(level, &gu[r * 2 * f..(r + 1) * 2 * f], dst);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_std() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b, "exp({x}) = {a}, std {b}");
            x += 0.173;
        }
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.3));
        assert!(exp(-200.0) < 1e-37);
    }

    #[test]
    fn row_ops_match_plain_formulas_at_every_level() {
        let pool = Pool::new(2);
        let x: Vec<f32> = (0..3 * 37).map(|i| ((i * 7919) % 23) as f32 / 5.0 - 2.0).collect();
        let w: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 / 37.0).collect();
        for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
            if level > Level::detect() {
                continue;
            }
            let mut out = vec![0f32; x.len()];
            rms_norm(&x, &w, 1e-5, &mut out, level, &pool);
            for r in 0..3 {
                let row = &x[r * 37..(r + 1) * 37];
                let rms = (row.iter().map(|v| v * v).sum::<f32>() / 37.0 + 1e-5).sqrt();
                for j in 0..37 {
                    assert!((out[r * 37 + j] - row[j] / rms * w[j]).abs() < 1e-5);
                }
            }
            let f = 37 / 2;
            let gu = &x[..3 * 2 * f];
            let mut o = vec![0f32; 3 * f];
            silu_mul(gu, f, &mut o, level, &pool);
            for r in 0..3 {
                for j in 0..f {
                    let (g, u) = (gu[r * 2 * f + j], gu[r * 2 * f + f + j]);
                    let want = g / (1.0 + (-g).exp()) * u;
                    assert!((o[r * f + j] - want).abs() < 1e-5);
                }
            }
            let mut row = x[..37].to_vec();
            softmax_prefix(level, &mut row, 30);
            let m = x[..30].iter().copied().fold(f32::MIN, f32::max);
            let z: f32 = x[..30].iter().map(|v| (v - m).exp()).sum();
            for j in 0..30 {
                assert!((row[j] - (x[j] - m).exp() / z).abs() < 1e-6);
            }
            assert!(row[30..].iter().all(|&v| v == 0.0));
        }
    }
}
