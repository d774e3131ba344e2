//! Generation throughput measurement, shared by `rrm bench generate` and the criterion bench.
//!
//! For a batch size `B`: `B` distinct prompts of `prompt_len` tokens are prefilled in one packed
//! step (prompt tokens per second), then `new_tokens` greedy decode steps run on all `B`
//! sequences together (aggregate decode tokens per second, i.e. `B * new_tokens / time`).
//! End tokens are ignored so every row decodes the full count.

use std::time::Instant;

use super::llama::LlamaModel;

/// One measured batch size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// Prompt tokens per second (all rows).
    pub prompt_tps: f64,
    /// Generated tokens per second, summed over the rows.
    pub decode_tps: f64,
    /// The same rates per second of CPU time of the calling thread (Linux only): with one
    /// compute thread (`CANDLE_NUM_THREADS=1`) they do not depend on what else runs on the
    /// machine.
    pub prompt_cpu_tps: Option<f64>,
    pub decode_cpu_tps: Option<f64>,
}

/// Nanoseconds the calling thread has run on a CPU (Linux), from `/proc/thread-self/schedstat`.
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// `batch` prompts of exactly `len` tokens cut from `base` (rotated per row so rows differ).
pub fn make_prompts(base: &[u32], len: usize, batch: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| (0..len).map(|i| base[(i + b * 7) % base.len().max(1)]).collect::<Vec<u32>>())
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

/// Measures one batch size.
pub fn bench_batch(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> candle_core::Result<BenchRow> {
    let batch = prompts.len();
    let prompt_len = prompts.first().map_or(0, |p| p.len());
    let mut caches = prompts
        .iter()
        .map(|p| model.new_cache(p.len() + new_tokens))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let c0 = thread_cpu_ns();
    let t0 = Instant::now();
    let logits = {
        let mut inputs: Vec<(&[u32], _)> =
            prompts.iter().map(|p| p.as_slice()).zip(caches.iter_mut()).collect();
        model.forward(&mut inputs)?
    };
    let mut next: Vec<u32> = logits.to_vec2::<f32>()?.iter().map(|r| argmax(r)).collect();
    let prefill_s = t0.elapsed().as_secs_f64();
    let c1 = thread_cpu_ns();
    let t1 = Instant::now();
    for _ in 1..new_tokens {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut inputs: Vec<(&[u32], _)> =
            toks.iter().map(|t| &t[..]).zip(caches.iter_mut()).collect();
        let logits = model.forward(&mut inputs)?;
        next = logits.to_vec2::<f32>()?.iter().map(|r| argmax(r)).collect();
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let c2 = thread_cpu_ns();
    let rate = |tokens: usize, a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b > a => Some(tokens as f64 / ((b - a) as f64 * 1e-9)),
        _ => None,
    };
    // The first token comes from the prefill step; the other new_tokens - 1 from decode steps.
    let decoded = batch * new_tokens.saturating_sub(1);
    Ok(BenchRow {
        batch,
        prompt_len,
        new_tokens,
        prefill_s,
        decode_s,
        prompt_tps: (batch * prompt_len) as f64 / prefill_s,
        decode_tps: decoded as f64 / decode_s.max(1e-9),
        prompt_cpu_tps: rate(batch * prompt_len, c0, c1),
        decode_cpu_tps: rate(decoded, c1, c2),
    })
}

/// A fixed English passage used to build benchmark prompts.
pub const BENCH_TEXT: &str = "The river ran low that summer, and the village children walked along its \
stony bed, turning over rocks in search of crayfish. Their grandparents told them the water had once \
reached the doorsteps of the mill, that boats had carried grain down to the town every week, and \
that the old bridge had been built by a man who never learned to swim. Nobody believed the last \
part. In the evenings the heat lifted slowly from the fields, the swallows came low over the \
water, and the miller's daughter read aloud from a book of voyages to anyone who would sit still \
long enough to listen. ";

/// One measured matmul: a path on one shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelRow {
    /// `candle-q8_0` (candle's quantized matmul), `f16-gemm/<level>` (prefill) or
    /// `q8/<level>` (decode).
    pub path: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Fastest wall time of one call, milliseconds (the minimum is the figure least disturbed
    /// by other work on the machine).
    pub ms: f64,
    /// `2·m·n·k` per second, in GFLOP/s (wall).
    pub gflops: f64,
}

/// The prefill matmul shapes `(n, k)` of a model: fused QKV, attention output, fused gate/up,
/// down.
pub fn model_shapes(cfg: &super::llama::LlamaConfig) -> Vec<(usize, usize)> {
    let qkv = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim;
    vec![
        (qkv, cfg.hidden),
        (cfg.hidden, cfg.n_head * cfg.head_dim),
        (2 * cfg.ffn, cfg.hidden),
        (cfg.hidden, cfg.ffn),
    ]
}

/// Times `m`-row matmuls of each shape `(n, k)` on random weights: candle's Q8_0 matmul and the
/// f16 GEMM at every kernel level this CPU has, on `threads` threads.
pub fn bench_kernels(
    m: usize,
    shapes: &[(usize, usize)],
    threads: usize,
    reps: usize,
) -> candle_core::Result<Vec<KernelRow>> {
    use super::kernels::{gemm, pool::Pool, Level};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    let pool = Pool::new(threads);
    let mut rows = Vec::new();
    let fastest = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
    for &(n, k) in shapes {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let flops = 2.0 * (m * n * k) as f64;
        let mut push = |path: String, times: Vec<f64>| {
            let s = fastest(times);
            rows.push(KernelRow { path, m, n, k, ms: s * 1e3, gflops: flops / s / 1e9 });
        };
        if k % 32 == 0 {
            let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
            q.forward(&x)?;
            let mut times = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                q.forward(&x)?;
                times.push(t.elapsed().as_secs_f64());
            }
            push("candle-q8_0".into(), times);
        }
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let packed = gemm::F16Weights::from_rows(&wv, n, k);
        let q8w = super::kernels::q8::Q8Weights::from_rows(&wv, n, k);
        let mut out = vec![0f32; m * n];
        for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
            if level > super::kernels::level() {
                continue;
            }
            gemm::matmul(&xv, m, &packed, &mut out, false, level, &pool);
            let mut times = Vec::new();
            for _ in 0..if level == Level::Scalar { 1 } else { reps } {
                let t = Instant::now();
                gemm::matmul(&xv, m, &packed, &mut out, false, level, &pool);
                times.push(t.elapsed().as_secs_f64());
            }
            push(format!("f16-gemm/{}", level.name()), times);
            super::kernels::q8::matmul(&xv, m, &q8w, &mut out, false, level, &pool);
            let mut times = Vec::new();
            for _ in 0..if level == Level::Scalar { 1 } else { reps } {
                let t = Instant::now();
                super::kernels::q8::matmul(&xv, m, &q8w, &mut out, false, level, &pool);
                times.push(t.elapsed().as_secs_f64());
            }
            push(format!("q8/{}", level.name()), times);
        }
    }
    Ok(rows)
}
