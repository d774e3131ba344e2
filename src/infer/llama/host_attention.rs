//! Attention on the CPU over plain buffers: RoPE, writing K/V into each sequence's
//! preallocated f16 cache, and attention of every sequence's new queries against its cache.
//!
//! One mechanism for every step shape — a fresh prompt, a chunk of a prompt on top of what is
//! cached, one decoded token: work is split into items of (sequence, KV head, block of up to
//! [`QUERY_BLOCK`] new queries). An item computes the scores of its block's queries (all the
//! query heads of the KV head's group) against the keys they may see, with the GEMM
//! micro-kernels reading `Kᵀ` straight from the cache; a causal softmax per row; then the
//! probabilities times `V`, again straight from the cache, into the output rows. The scores
//! never exist for more than one block at a time (a 1.7k-token prompt needs 48 × 1.7k floats
//! per item, not heads × 1.7k²).
//!
//! The cache holds f16: half the memory and half the bytes read per decode step of an f32
//! cache (at batch 8 and 700 positions, K/V reads rival the weights'), and keys and values
//! keep 11 significant bits.

use std::cell::RefCell;

use half::f16;

use super::LlamaConfig;
use crate::infer::kernels::gemm::{tile, tile_shape, BView, CTile, MAX_MR, NR};
use crate::infer::kernels::ops::softmax_prefix;
use crate::infer::kernels::pool::Pool;
use crate::infer::kernels::Level;

/// New queries per work item.
pub(super) const QUERY_BLOCK: usize = 16;

/// Elements past the end of each cache buffer, so a 32-column tile that starts near the end
/// of the last row may read (and discard) beyond it.
const SLACK: usize = 2 * NR;

/// One sequence's K and V for all layers, f16. K is stored transposed,
/// `[layer][kv_head][head_dim][position]` (a head's keys are the `B` of the scores product),
/// V as `[layer][kv_head][position][head_dim]`.
#[derive(Debug)]
pub(super) struct HostKv {
    pub k: Vec<Vec<f16>>,
    pub v: Vec<Vec<f16>>,
}

impl HostKv {
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let per_layer = cfg.n_kv_head * capacity * cfg.head_dim + SLACK;
        Self {
            k: (0..cfg.n_layer).map(|_| vec![f16::ZERO; per_layer]).collect(),
            v: (0..cfg.n_layer).map(|_| vec![f16::ZERO; per_layer]).collect(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 2).sum()
    }
}

/// Rotates each head of `row` (`heads * d` values) for one position.
fn rope_row(row: &mut [f32], heads: usize, d: usize, halves: bool, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for h in 0..heads {
        let x = &mut row[h * d..(h + 1) * d];
        for i in 0..half {
            let (a, b) = if halves { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * cos[i] - x1 * sin[i];
            x[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// Everything one layer's attention step reads.
pub(super) struct Step<'a> {
    pub cfg: &'a LlamaConfig,
    pub layer: usize,
    /// Position of each new row.
    pub positions: &'a [u32],
    /// Per sequence: (first row, new rows, positions already cached).
    pub spans: &'a [(usize, usize, usize)],
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// The sliding window of a local layer: a query at p sees keys after p − window.
    pub window: Option<usize>,
    pub level: Level,
    pub pool: &'a Pool,
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: items write disjoint (row, head) cells of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Per-thread scores of one item.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One layer's attention for a step. `qkv` holds, per new row, Q (`n_head * d`), K and V
/// (`n_kv_head * d` each); RoPE is applied to it in place. Writes `out (rows, n_head * d)`.
pub(super) fn attention(
    s: &Step,
    qkv: &mut [f32],
    caches: &mut [(&mut HostKv, usize)],
    out: &mut [f32],
) {
    let cfg = s.cfg;
    let (nh, nkv, d) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
    let group = nh / nkv;
    let half = d / 2;
    let width = (nh + 2 * nkv) * d;
    let scale = cfg.attn_scale;
    let halves = cfg.arch.rope_halves();
    for (row, &p) in qkv.chunks_exact_mut(width).zip(s.positions) {
        let p = p as usize;
        let (c, sn) = (&s.cos[p * half..(p + 1) * half], &s.sin[p * half..(p + 1) * half]);
        let (q, kv) = row.split_at_mut(nh * d);
        rope_row(q, nh, d, halves, c, sn);
        rope_row(&mut kv[..nkv * d], nkv, d, halves, c, sn);
        for x in q.iter_mut() {
            *x *= scale;
        }
    }
    // Append the new keys and values to each cache.
    for (&(start, t, p0), (cache, cap)) in s.spans.iter().zip(caches.iter_mut()) {
        let (kc, vc) = (&mut cache.k[s.layer], &mut cache.v[s.layer]);
        for r in 0..t {
            let row = &qkv[(start + r) * width..(start + r + 1) * width];
            for h in 0..nkv {
                let k = &row[nh * d + h * d..nh * d + (h + 1) * d];
                let v = &row[(nh + nkv) * d + h * d..(nh + nkv) * d + (h + 1) * d];
                let kt = &mut kc[h * d * *cap..(h + 1) * d * *cap];
                for (i, x) in k.iter().enumerate() {
                    kt[i * *cap + p0 + r] = f16::from_f32(*x);
                }
                let dst = (h * *cap + p0 + r) * d;
                for (o, x) in vc[dst..dst + d].iter_mut().zip(v) {
                    *o = f16::from_f32(*x);
                }
            }
        }
    }
    // Items: (sequence, KV head, first new row, end row), the costliest first.
    let mut items: Vec<(usize, usize, usize, usize)> = Vec::new();
    for (si, &(_, t, _)) in s.spans.iter().enumerate() {
        for hk in 0..nkv {
            for r0 in (0..t).step_by(QUERY_BLOCK) {
                items.push((si, hk, r0, t.min(r0 + QUERY_BLOCK)));
            }
        }
    }
    items.sort_by_key(|&(si, _, r0, r1)| std::cmp::Reverse((s.spans[si].2 + r1) * (r1 - r0)));
    let caches: Vec<(&HostKv, usize)> = caches.iter().map(|(c, cap)| (&**c, *cap)).collect();
    let qkv: &[f32] = qkv;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let (mr, groups) = tile_shape(s.level);
    s.pool.run(items.len(), |item| {
        let (si, hk, r0, r1) = items[item];
        let (start, _, p0) = s.spans[si];
        let (cache, cap) = caches[si];
        let rows = (r1 - r0) * group;
        // Keys visible to the block's last query.
        let len = p0 + r1;
        let ld = len.div_ceil(NR) * NR;
        // Row `j` of the item: query `r0 + j / group`, head `hk * group + j % group`.
        let q_row = |j: usize| {
            qkv[(start + r0 + j / group) * width + (hk * group + j % group) * d..].as_ptr()
        };
        let kt = cache.k[s.layer][hk * d * cap..].as_ptr();
        let vh = cache.v[s.layer][hk * cap * d..].as_ptr();
        SCORES.with(|sc| {
            let mut sc = sc.borrow_mut();
            if sc.len() < rows * ld {
                sc.resize(rows * ld, 0.0);
            }
            let sp = sc.as_mut_ptr();
            // Scores: (rows × d) · Kᵀ (d × len).
            for j0 in (0..rows).step_by(mr) {
                let n = mr.min(rows - j0);
                let mut a = [std::ptr::null(); MAX_MR];
                let mut c = [std::ptr::null_mut(); MAX_MR];
                for (i, ai) in a.iter_mut().enumerate().take(n) {
                    *ai = q_row(j0 + i);
                }
                for c0 in (0..len).step_by(groups * NR) {
                    for (i, ci) in c.iter_mut().enumerate().take(n) {
                        // SAFETY: row j0 + i of the scores, column c0 < ld.
                        *ci = unsafe { sp.add((j0 + i) * ld + c0) };
                    }
                    let cols = (len - c0).min(groups * NR);
                    // SAFETY: query rows hold d values; Kᵀ's d rows are `cap` apart and read
                    // columns c0..c0 + 32 < cap + SLACK; score rows have `ld ≥ c0 + cols`.
                    unsafe {
                        tile(
                            s.level,
                            d,
                            &a[..n],
                            BView { ptr: kt.add(c0), ld: cap, group: NR },
                            CTile { rows: &c[..n], cols, accumulate: false },
                        )
                    };
                }
            }
            // Causal softmax: query r sees positions 0..=p0 + r (in a sliding window, only the
            // last `window` of them).
            for j in 0..rows {
                let visible = p0 + r0 + j / group + 1;
                let first = s.window.map_or(0, |w| visible.saturating_sub(w));
                let row = &mut sc[j * ld..j * ld + len];
                row[..first].fill(0.0);
                softmax_prefix(s.level, &mut row[first..], visible - first);
            }
            // Output: P (rows × len) · V (len × d).
            for j0 in (0..rows).step_by(mr) {
                let n = mr.min(rows - j0);
                let mut a = [std::ptr::null(); MAX_MR];
                let mut c = [std::ptr::null_mut(); MAX_MR];
                for (i, ai) in a.iter_mut().enumerate().take(n) {
                    *ai = sc[(j0 + i) * ld..].as_ptr();
                }
                for c0 in (0..d).step_by(groups * NR) {
                    for (i, ci) in c.iter_mut().enumerate().take(n) {
                        let j = j0 + i;
                        let row = start + r0 + j / group;
                        let head = hk * group + j % group;
                        // SAFETY: inside row `row` of `out`; only this item writes this
                        // (row, head).
                        *ci = unsafe { out_ptr.get().add(row * nh * d + head * d + c0) };
                    }
                    let cols = (d - c0).min(groups * NR);
                    // SAFETY: probability rows hold `len` values; V's rows are d apart and
                    // the tile reads at most 32 columns from c0 < d, within the buffer's slack.
                    unsafe {
                        tile(
                            s.level,
                            len,
                            &a[..n],
                            BView { ptr: vh.add(c0), ld: d, group: NR },
                            CTile { rows: &c[..n], cols, accumulate: false },
                        )
                    };
                }
            }
        });
    });
}
