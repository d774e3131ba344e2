//! The trainer's attention on the CPU as one differentiable op: scores, the packing mask,
//! softmax and the weighted sum of values, with a backward that recomputes the probabilities
//! from each query's saved log-sum-exp (as FlashAttention does) instead of keeping them.
//!
//! Written out of candle's ops, attention keeps five `(heads, T, T)` tensors per block in the
//! autograd graph (scores, masked scores, and softmax's intermediates) and allocates their
//! gradients in the backward: at `T` = 2,304 (a 1,536-token prompt with two 384-token
//! completions, one rm-dpo row) that is ~190 MB per tensor per block. Here the only per-query
//! state kept is one f32; the `T × T` work happens in tiles of [`CHUNK`] queries, and a query
//! tile only reads the keys up to its last query (the causal half is never computed).
//!
//! Visibility is that of packed rows ([`super::model::Packed`]): key `k` is visible to query
//! `q` when `k ≤ q` and `k` is in the prompt (segment 0) or in `q`'s own segment.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{f32_slice, matmul, Write};

use crate::infer::kernels::ops::exp;

/// Queries per tile: the tile's scores are `CHUNK × T` floats.
const CHUNK: usize = 64;

/// Attention shape: batch, query heads, KV heads, sequence length, head size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    b: usize,
    nh: usize,
    nkv: usize,
    t: usize,
    hd: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.nh / self.nkv
    }
}

/// `softmax(q·kᵀ + mask)·v` for `q (B, heads, T, d)` (already scaled) and `k`, `v`
/// `(B, kv_heads, T, d)`, f32 on the CPU; `segments` holds each row's segment ids (`B·T`).
/// Query head `h` reads KV head `h / (heads / kv_heads)`. Returns `(B, heads, T, d)`.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Arc<Vec<u32>>,
) -> candle_core::Result<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let (b2, nkv, t2, hd2) = k.dims4()?;
    if (b2, t2, hd2) != (b, t, hd) || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?} and v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if segments.len() != b * t {
        candle_core::bail!("fused attention: {} segment ids for {b} × {t} tokens", segments.len());
    }
    let op = FusedAttention { dims: Dims { b, nh, nkv, t, hd }, segments, lse: Mutex::new(None) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct FusedAttention {
    dims: Dims,
    segments: Arc<Vec<u32>>,
    /// Each query's log-sum-exp from the forward pass `(B, heads, T)`, for the backward.
    lse: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let slice = |s, l, what| f32_slice(s, l, "fused attention", what);
        let (q, k, v) = (slice(s1, l1, "q")?, slice(s2, l2, "k")?, slice(s3, l3, "v")?);
        let (out, lse) = forward(self.dims, &self.segments, q, k, v);
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(lse);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims;
        let flat = |x: &Tensor| x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (qv, kv, vv) = (flat(q)?, flat(k)?, flat(v)?);
        let lse = match self.lse.lock().ok().and_then(|mut s| s.take()) {
            Some(lse) => lse,
            None => forward(d, &self.segments, &qv, &kv, &vv).1,
        };
        let (dq, dk, dv) =
            backward(d, &self.segments, &qv, &kv, &vv, &flat(out)?, &flat(grad)?, &lse);
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// The key spans `[start, end)` query `q` of a row sees, from the row's runs of equal
/// segment ids.
fn visible(runs: &[(usize, usize, u32)], q: usize, seg_q: u32, spans: &mut Vec<(usize, usize)>) {
    spans.clear();
    for &(start, end, seg) in runs {
        if start > q {
            break;
        }
        if seg == 0 || seg == seg_q {
            spans.push((start, end.min(q + 1)));
        }
    }
}

/// Maximal runs `(start, end, segment)` of equal segment ids.
fn runs(segments: &[u32]) -> Vec<(usize, usize, u32)> {
    let mut out: Vec<(usize, usize, u32)> = Vec::new();
    for (i, &s) in segments.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.2 == s => last.1 = i + 1,
            _ => out.push((i, i + 1, s)),
        }
    }
    out
}

/// One query head's slices: its queries `(T, d)` and its KV head's keys and values.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    runs: &'a [(usize, usize, u32)],
    segments: &'a [u32],
}

fn heads<'a>(
    d: Dims,
    segments: &'a [u32],
    runs: &'a [Vec<(usize, usize, u32)>],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    bh: usize,
) -> Head<'a> {
    let (bi, h) = (bh / d.nh, bh % d.nh);
    let per = d.t * d.hd;
    let kv = (bi * d.nkv + h / d.group()) * per;
    Head {
        q: &q[bh * per..(bh + 1) * per],
        k: &k[kv..kv + per],
        v: &v[kv..kv + per],
        runs: &runs[bi],
        segments: &segments[bi * d.t..(bi + 1) * d.t],
    }
}

/// The forward pass: the output `(B, heads, T, d)` and each query's log-sum-exp.
fn forward(d: Dims, segments: &[u32], q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let per = d.t * d.hd;
    let mut out = vec![0f32; d.b * d.nh * per];
    let mut lse = vec![0f32; d.b * d.nh * d.t];
    let runs: Vec<_> = segments.chunks(d.t).map(runs).collect();
    out.par_chunks_mut(per).zip(lse.par_chunks_mut(d.t)).enumerate().for_each(
        |(bh, (out, lse))| {
            let head = heads(d, segments, &runs, q, k, v, bh);
            let mut scores = vec![0f32; CHUNK * d.t];
            let mut spans = Vec::new();
            for q0 in (0..d.t).step_by(CHUNK) {
                let q1 = (q0 + CHUNK).min(d.t);
                let (c, keys) = (q1 - q0, q1);
                let s = &mut scores[..c * keys];
                // Scores of the tile against keys 0..q1: q (c × d) · kᵀ (d × keys).
                matmul(
                    (c, keys, d.hd),
                    s,
                    keys,
                    &head.q[q0 * d.hd..],
                    (d.hd, 1),
                    head.k,
                    (1, d.hd),
                    Write::SET,
                );
                for i in 0..c {
                    let qi = q0 + i;
                    visible(head.runs, qi, head.segments[qi], &mut spans);
                    let row = &mut s[i * keys..(i + 1) * keys];
                    let (max, sum) = softmax_spans(row, &spans, None);
                    lse[qi] = max + sum.ln();
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|p| *p *= inv);
                }
                // The tile's output: p (c × keys) · v (keys × d).
                matmul(
                    (c, d.hd, keys),
                    &mut out[q0 * d.hd..q1 * d.hd],
                    d.hd,
                    s,
                    (keys, 1),
                    head.v,
                    (d.hd, 1),
                    Write::SET,
                );
            }
        },
    );
    (out, lse)
}

/// Over one row of scores: `exp(s − m)` on the visible spans and 0 elsewhere, where `m` is the
/// spans' maximum, or the given log-sum-exp (then the row holds probabilities). Returns
/// `(m, Σ exp)`.
fn softmax_spans(row: &mut [f32], spans: &[(usize, usize)], lse: Option<f32>) -> (f32, f32) {
    let m = lse.unwrap_or_else(|| {
        spans.iter().flat_map(|&(s, e)| row[s..e].iter().copied()).fold(f32::NEG_INFINITY, f32::max)
    });
    let mut sum = 0f32;
    let mut prev = 0;
    for &(s, e) in spans {
        row[prev..s].fill(0.0);
        for x in &mut row[s..e] {
            *x = exp(*x - m);
            sum += *x;
        }
        prev = e;
    }
    row[prev..].fill(0.0);
    (m, sum)
}

/// The backward pass: gradients of q, k and v given the output's gradient `g`.
#[allow(clippy::too_many_arguments)]
fn backward(
    d: Dims,
    segments: &[u32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    g: &[f32],
    lse: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let per = d.t * d.hd;
    let n = d.b * d.nh * per;
    let mut dq = vec![0f32; n];
    // Per query head; summed over each KV head's group below.
    let mut dk_h = vec![0f32; n];
    let mut dv_h = vec![0f32; n];
    let runs: Vec<_> = segments.chunks(d.t).map(runs).collect();
    dq.par_chunks_mut(per)
        .zip(dk_h.par_chunks_mut(per))
        .zip(dv_h.par_chunks_mut(per))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dv))| {
            let head = heads(d, segments, &runs, q, k, v, bh);
            let (o, g, lse) = (
                &out[bh * per..(bh + 1) * per],
                &g[bh * per..(bh + 1) * per],
                &lse[bh * d.t..(bh + 1) * d.t],
            );
            let mut p = vec![0f32; CHUNK * d.t];
            let mut dp = vec![0f32; CHUNK * d.t];
            let mut spans = Vec::new();
            for q0 in (0..d.t).step_by(CHUNK) {
                let q1 = (q0 + CHUNK).min(d.t);
                let (c, keys) = (q1 - q0, q1);
                let (p, dp) = (&mut p[..c * keys], &mut dp[..c * keys]);
                let qt = &head.q[q0 * d.hd..q1 * d.hd];
                let gt = &g[q0 * d.hd..q1 * d.hd];
                matmul((c, keys, d.hd), p, keys, qt, (d.hd, 1), head.k, (1, d.hd), Write::SET);
                for i in 0..c {
                    let qi = q0 + i;
                    visible(head.runs, qi, head.segments[qi], &mut spans);
                    softmax_spans(&mut p[i * keys..(i + 1) * keys], &spans, Some(lse[qi]));
                }
                // dv += pᵀ (keys × c) · g (c × d)
                matmul((keys, d.hd, c), dv, d.hd, p, (1, keys), gt, (d.hd, 1), Write::ADD);
                // dp = g (c × d) · vᵀ (d × keys)
                matmul((c, keys, d.hd), dp, keys, gt, (d.hd, 1), head.v, (1, d.hd), Write::SET);
                // ds = p ∘ (dp − rowsum(g ∘ o)), in place of dp.
                for i in 0..c {
                    let at = (q0 + i) * d.hd;
                    let delta: f32 =
                        g[at..at + d.hd].iter().zip(&o[at..at + d.hd]).map(|(a, b)| a * b).sum();
                    let (pr, dr) =
                        (&p[i * keys..(i + 1) * keys], &mut dp[i * keys..(i + 1) * keys]);
                    for (x, &pv) in dr.iter_mut().zip(pr) {
                        *x = pv * (*x - delta);
                    }
                }
                // dq (tile) = ds (c × keys) · k (keys × d)
                matmul(
                    (c, d.hd, keys),
                    &mut dq[q0 * d.hd..q1 * d.hd],
                    d.hd,
                    dp,
                    (keys, 1),
                    head.k,
                    (d.hd, 1),
                    Write::SET,
                );
                // dk += dsᵀ (keys × c) · q (c × d)
                matmul((keys, d.hd, c), dk, d.hd, dp, (1, keys), qt, (d.hd, 1), Write::ADD);
            }
        });
    let group = d.group();
    let mut dk = vec![0f32; d.b * d.nkv * per];
    let mut dv = vec![0f32; d.b * d.nkv * per];
    for bh in 0..d.b * d.nh {
        let (bi, h) = (bh / d.nh, bh % d.nh);
        let at = (bi * d.nkv + h / group) * per;
        for (x, y) in dk[at..at + per].iter_mut().zip(&dk_h[bh * per..(bh + 1) * per]) {
            *x += y;
        }
        for (x, y) in dv[at..at + per].iter_mut().zip(&dv_h[bh * per..(bh + 1) * per]) {
            *x += y;
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The same attention out of candle's ops with a dense additive mask.
    fn dense(q: &Tensor, k: &Tensor, v: &Tensor, segments: &[u32]) -> candle_core::Result<Tensor> {
        let (b, nh, t, _) = q.dims4()?;
        let nkv = k.dim(1)?;
        let group = nh / nkv;
        let mut m = vec![-1e9f32; b * t * t];
        for bi in 0..b {
            let seg = &segments[bi * t..(bi + 1) * t];
            for qi in 0..t {
                for ki in 0..=qi {
                    if seg[ki] == 0 || seg[ki] == seg[qi] {
                        m[(bi * t + qi) * t + ki] = 0.0;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), q.device())?;
        let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
            let (b, n, t, d) = x.dims4()?;
            x.unsqueeze(2)?.expand((b, n, group, t, d))?.reshape((b, n * group, t, d))
        };
        let (k, v) = (rep(k)?, rep(v)?);
        let att = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
        candle_nn::ops::softmax(&att, D::Minus1)?.matmul(&v)
    }

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Forward and every gradient against the dense version: a plain row, and a packed row
    /// (prompt, two completions, padding), with grouped KV heads and a length that is not a
    /// multiple of the tile.
    #[test]
    fn matches_dense_attention_and_its_gradients() {
        let (b, nh, nkv, t, hd) = (2, 6, 2, 150, 16);
        let mut segments = vec![0u32; t];
        segments.extend((0..t).map(|i| match i {
            0..=59 => 0,
            60..=99 => 1,
            100..=139 => 2,
            _ => u32::MAX,
        }));
        let q = Var::from_tensor(&random((b, nh, t, hd), 1)).unwrap();
        let k = Var::from_tensor(&random((b, nkv, t, hd), 2)).unwrap();
        let v = Var::from_tensor(&random((b, nkv, t, hd), 3)).unwrap();
        let w = random((b, nh, t, hd), 4);
        let fused = fused_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Arc::new(segments.clone()),
        )
        .unwrap();
        let want = dense(q.as_tensor(), k.as_tensor(), v.as_tensor(), &segments).unwrap();
        assert!(max_diff(&fused, &want) < 1e-5, "forward differs by {}", max_diff(&fused, &want));
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gd = (want * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, e) = (gf.get(var.as_tensor()).unwrap(), gd.get(var.as_tensor()).unwrap());
            let diff = max_diff(a, e);
            assert!(diff < 1e-4, "d{name} differs by {diff}");
        }
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let q = random((1, 4, 8, 8), 1);
        let k = random((1, 3, 8, 8), 2);
        let err = fused_attention(&q, &k, &k, Arc::new(vec![0; 8])).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let k = random((1, 2, 8, 8), 2);
        let err = fused_attention(&q, &k, &k, Arc::new(vec![0; 7])).unwrap_err();
        assert!(err.to_string().contains("segment ids"), "{err}");
    }
}
