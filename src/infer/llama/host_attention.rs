//! Attention on the CPU over plain `f32` buffers: RoPE, writing K/V into each sequence's
//! preallocated cache, and attention of every sequence's new queries against its cache, in one
//! pass per layer instead of a dozen tensor ops per sequence.
//!
//! Work is split over (sequence, KV head) pairs on candle's CPU thread pool. A fresh prompt
//! (nothing cached yet, several tokens) goes through candle's GEMM instead, which is faster for
//! that shape; both paths compute the same function.

use std::sync::Mutex;

use candle_core::{Device, Tensor};

use super::{causal_mask, Arch, LlamaConfig};

/// One sequence's K and V for all layers. K is stored transposed,
/// `[layer][kv_head][head_dim][position]`, so the scores of a query against all positions are
/// a sum of `head_dim` vectorized row updates (no horizontal sum per position); V is
/// `[layer][kv_head][position][head_dim]`.
#[derive(Debug)]
pub(super) struct HostKv {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl HostKv {
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let per_layer = cfg.n_kv_head * capacity * cfg.head_dim;
        Self {
            k: (0..cfg.n_layer).map(|_| vec![0f32; per_layer]).collect(),
            v: (0..cfg.n_layer).map(|_| vec![0f32; per_layer]).collect(),
        }
    }
}

/// Rotates each head of `row` (`heads * d` values) for position `pos`.
fn rope_row(row: &mut [f32], heads: usize, d: usize, arch: Arch, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for h in 0..heads {
        let x = &mut row[h * d..(h + 1) * d];
        for i in 0..half {
            let (a, b) = match arch {
                Arch::Llama => (2 * i, 2 * i + 1),
                Arch::Qwen2 => (i, i + half),
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * cos[i] - x1 * sin[i];
            x[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// One step of the sequences in `spans` (`(start row, new tokens, cached positions)`), for
/// layer `li`. `q`, `k`, `v` are the projections `(N, heads * d)`; `positions` the position of
/// each row; `caches` the sequences' caches with their `capacity`. Returns `(N, n_head * d)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    cfg: &LlamaConfig,
    li: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &[u32],
    spans: &[(usize, usize, usize)],
    caches: &mut [(&mut HostKv, usize)],
    cos: &[f32],
    sin: &[f32],
) -> candle_core::Result<Tensor> {
    let (nh, nkv, d) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
    let group = nh / nkv;
    let half = d / 2;
    let n = positions.len();
    let mut q = q.flatten_all()?.to_vec1::<f32>()?;
    let mut k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    for (row, &p) in positions.iter().enumerate() {
        let p = p as usize;
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        rope_row(&mut q[row * nh * d..(row + 1) * nh * d], nh, d, cfg.arch, c, s);
        rope_row(&mut k[row * nkv * d..(row + 1) * nkv * d], nkv, d, cfg.arch, c, s);
    }
    let scale = 1.0 / (d as f32).sqrt();
    for x in q.iter_mut() {
        *x *= scale;
    }
    // Append the new keys and values to each cache.
    for (&(start, t, p0), (cache, cap)) in spans.iter().zip(caches.iter_mut()) {
        for r in 0..t {
            for h in 0..nkv {
                let src = (start + r) * nkv * d + h * d;
                let dst = (h * *cap + p0 + r) * d;
                cache.v[li][dst..dst + d].copy_from_slice(&v[src..src + d]);
                let kt = &mut cache.k[li][h * d * *cap..(h + 1) * d * *cap];
                for (i, x) in k[src..src + d].iter().enumerate() {
                    kt[i * *cap + p0 + r] = *x;
                }
            }
        }
    }
    let mut out = vec![0f32; n * nh * d];
    // Fresh prompts: GEMM over the new rows only.
    let mut host_items = Vec::new();
    for (si, &(start, t, p0)) in spans.iter().enumerate() {
        if t > 1 && p0 == 0 {
            prompt_attention(cfg, &q, &k, &v, start, t, &mut out)?;
        } else {
            for h in 0..nkv {
                host_items.push((si, h));
            }
        }
    }
    if !host_items.is_empty() {
        let caches: Vec<(&HostKv, usize)> = caches.iter().map(|(c, cap)| (&**c, *cap)).collect();
        let results: Vec<Mutex<Vec<f32>>> =
            host_items.iter().map(|_| Mutex::new(Vec::new())).collect();
        let work = |range: std::ops::Range<usize>| {
            let mut scores: Vec<f32> = Vec::new();
            for item in range {
                let (si, hk) = host_items[item];
                let (start, t, p0) = spans[si];
                let (cache, cap) = caches[si];
                let kt = &cache.k[li][hk * d * cap..(hk + 1) * d * cap];
                let vbase = &cache.v[li][hk * cap * d..(hk + 1) * cap * d];
                let mut res = vec![0f32; t * group * d];
                for r in 0..t {
                    let len = p0 + r + 1;
                    // Scores of the group's query heads, one row of `len` per head.
                    scores.clear();
                    scores.resize(group * len, 0.0);
                    for i in 0..d {
                        let krow = &kt[i * cap..i * cap + len];
                        for g in 0..group {
                            let qi = q[(start + r) * nh * d + (hk * group + g) * d + i];
                            let srow = &mut scores[g * len..(g + 1) * len];
                            for (s, kv) in srow.iter_mut().zip(krow) {
                                *s += qi * kv;
                            }
                        }
                    }
                    for g in 0..group {
                        let srow = &mut scores[g * len..(g + 1) * len];
                        let max = srow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for s in srow.iter_mut() {
                            *s = (*s - max).exp();
                            sum += *s;
                        }
                        let inv = 1.0 / sum;
                        let o = &mut res[(r * group + g) * d..(r * group + g + 1) * d];
                        for (j, s) in srow.iter().enumerate() {
                            let w = s * inv;
                            for (oi, vi) in o.iter_mut().zip(&vbase[j * d..(j + 1) * d]) {
                                *oi += w * vi;
                            }
                        }
                    }
                }
                if let Ok(mut slot) = results[item].lock() {
                    *slot = res;
                }
            }
        };
        candle_core::utils::barrier_pool().execute_chunked(host_items.len(), work);
        for (item, res) in host_items.iter().zip(results) {
            let res = res.into_inner().unwrap_or_default();
            let (si, hk) = *item;
            let (start, t, _) = spans[si];
            for r in 0..t {
                for g in 0..group {
                    let h = hk * group + g;
                    let dst = (start + r) * nh * d + h * d;
                    let src = (r * group + g) * d;
                    out[dst..dst + d].copy_from_slice(&res[src..src + d]);
                }
            }
        }
    }
    Tensor::from_vec(out, (n, nh * d), &Device::Cpu)
}

/// Causal attention of a fresh prompt over itself with candle's GEMM; writes rows
/// `start..start + t` of `out`.
fn prompt_attention(
    cfg: &LlamaConfig,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    t: usize,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let (nh, nkv, d) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
    let group = nh / nkv;
    let dev = Device::Cpu;
    let qi = Tensor::from_slice(&q[start * nh * d..(start + t) * nh * d], (t, nh, d), &dev)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, group * t, d))?;
    let ki = Tensor::from_slice(&k[start * nkv * d..(start + t) * nkv * d], (t, nkv, d), &dev)?
        .transpose(0, 1)?
        .contiguous()?;
    let vi = Tensor::from_slice(&v[start * nkv * d..(start + t) * nkv * d], (t, nkv, d), &dev)?
        .transpose(0, 1)?
        .contiguous()?;
    let att = qi.matmul(&ki.t()?)?;
    let att = match causal_mask(t, 0, group, &dev)? {
        Some(m) => att.broadcast_add(&m)?,
        None => att,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let o = att
        .matmul(&vi)?
        .reshape((nh, t, d))?
        .transpose(0, 1)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    out[start * nh * d..(start + t) * nh * d].copy_from_slice(&o);
    Ok(())
}
