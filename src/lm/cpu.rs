//! What the trainer's CPU ops ([`super::attention`], [`super::lora::frozen_linear`]) share:
//! reading a candle storage as an f32 slice, and a bounds-checked matrix product on slices
//! through the `gemm` crate (candle's own CPU matmul).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

/// The contiguous f32 data of a storage and layout; `op` and `what` name them in the error.
pub(super) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: {what} is {:?}, not f32", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: {what} is not contiguous"),
    }
}

/// How [`matmul`] writes: `dst = beta·a·b`, or `dst += beta·a·b` when `accumulate`; on rayon's
/// threads when `parallel` and the product is large enough to pay for them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Write {
    pub accumulate: bool,
    pub beta: f32,
    pub parallel: bool,
}

impl Write {
    pub const SET: Write = Write { accumulate: false, beta: 1.0, parallel: false };
    pub const ADD: Write = Write { accumulate: true, beta: 1.0, parallel: false };
}

/// `dst (m × n, row stride dst_rs) [+]= beta · a (m × k) · b (k × n)`, `a` and `b` given by
/// their row and column strides (a transpose is a swap of the two).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    how: Write,
) {
    if m == 0 || n == 0 {
        return;
    }
    let reach = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(reach(dst_rs, 1, m, n) < dst.len(), "matmul: dst too small");
    if k == 0 {
        if !how.accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..i * dst_rs + n].fill(0.0));
        }
        return;
    }
    assert!(reach(a_rs, a_cs, m, k) < a.len(), "matmul: lhs too small");
    assert!(reach(b_rs, b_cs, k, n) < b.len(), "matmul: rhs too small");
    let threads = rayon::current_num_threads();
    let parallelism = if how.parallel && threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the strides reach is inside its slice (checked above), and `dst` is
    // a `&mut` that cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            how.accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            how.beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}
