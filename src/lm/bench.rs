//! Training throughput: tokens per second of a forward + backward + AdamW step, and of a
//! forward pass alone (what reference log-probabilities and KL estimates cost), with the
//! process's peak resident memory.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use super::model::{Checkpointing, LoadOptions, Packed, SeqSpec, TrainableLlama};
use super::optim::{AdamW, ParamsAdamW};
use super::LmError;

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub mode: String,
    /// Gradient checkpointing (block activations recomputed in the backward).
    pub checkpointing: bool,
    /// `fused` (attention and LoRA projections as single ops) or `plain` (candle's ops).
    pub ops: String,
    pub trainable_params: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub completion_len: usize,
    pub steps: usize,
    /// Tokens (all positions of the batch) per second of a full training step.
    pub train_tokens_per_s: f64,
    /// Seconds per training step (median).
    pub step_seconds: f64,
    /// Tokens per second of a forward pass with completion log-probabilities, no gradient.
    pub forward_tokens_per_s: f64,
    /// What `Checkpointing::Auto` estimates a backward without checkpointing keeps for this
    /// batch ([`TrainableLlama::kept_activation_bytes`]), MiB: beside the measured peak without
    /// checkpointing, it shows how well the estimate holds.
    pub kept_activation_estimate_mib: f64,
    /// Peak resident memory (VmHWM) while loading and measuring this configuration, MiB (the
    /// high-water mark is reset first where the kernel allows).
    pub peak_rss_mib: Option<f64>,
    pub load_seconds: f64,
}

/// The process's peak resident set size in MiB (Linux), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the process's peak resident set size to its current size (Linux ≥ 4.0; elsewhere a
/// no-op, and the peak is the process's). Memory the allocator still holds from freed
/// tensors is handed back first (glibc), or it would count in the next configuration's peak:
/// measured in one process after a 4.2 GiB configuration, a 1 GiB one read 4.1 GiB.
pub fn reset_peak_rss() {
    release_freed_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Returns the pages of freed allocations in every malloc arena to the OS (glibc's
/// `malloc_trim`); elsewhere nothing.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim only releases free memory; it takes the arenas' locks
        // itself and is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The loss a benchmarked step differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// The mean negative log-probability of the scored tokens (SFT).
    Sft,
    /// TRL's sigmoid DPO (β 0.1) over `batch` pairs: one prompt of `seq_len − completion_len`
    /// tokens and two completions of `completion_len`, packed as rrm's trainer packs them (the
    /// prompt once), the reference log-probabilities computed before (as rrm's trainer and
    /// `bench.py --dpo-precompute-ref` do). Tokens count as TRL counts them: 2 × batch × seq_len.
    Dpo,
}

/// Measures `steps` training steps (after one warm-up) on `batch` sequences of `seq_len`
/// tokens, the last `completion_len` of which are scored (or `batch` DPO pairs, see
/// [`Objective::Dpo`]), with or without gradient checkpointing, with the fused ops or
/// candle's ([`TrainableLlama::set_fused_ops`]).
#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    path: &Path,
    device: &Device,
    options: &LoadOptions,
    objective: Objective,
    checkpointing: bool,
    fused_ops: bool,
    batch: usize,
    seq_len: usize,
    completion_len: usize,
    steps: usize,
) -> Result<TrainBench, LmError> {
    if batch == 0 || seq_len < 2 || completion_len == 0 || completion_len >= seq_len {
        return Err(LmError::Invalid(
            "need batch >= 1 and 1 <= completion length < sequence length".into(),
        ));
    }
    reset_peak_rss();
    let t0 = Instant::now();
    let (mut model, _) = TrainableLlama::load(path, device, options)?;
    model.set_checkpointing(if checkpointing { Checkpointing::On } else { Checkpointing::Off });
    model.set_fused_ops(fused_ops);
    let load_seconds = t0.elapsed().as_secs_f64();
    let vocab = model.config.vocab_size as u32;
    let seqs: Vec<SeqSpec> = (0..batch)
        .map(|b| SeqSpec {
            tokens: (0..seq_len as u32)
                .map(|i| 3 + (i * 7919 + b as u32 * 104_729) % (vocab - 3))
                .collect(),
            start: seq_len - completion_len,
        })
        .collect();
    let packed: Vec<Packed> = seqs
        .iter()
        .map(|s| {
            let mut completions = vec![s.tokens[s.start..].to_vec()];
            if objective == Objective::Dpo {
                // The rejected completion: other tokens of the same length.
                completions.push(
                    completions[0].iter().map(|&t| 3 + (t * 31 + 17) % (vocab - 3)).collect(),
                );
            }
            Packed { prompt: s.tokens[..s.start].to_vec(), completions }
        })
        .collect();
    // DPO's reference log-probabilities, once before training (adapters as loaded: zero B).
    let refs = match objective {
        Objective::Sft => None,
        Objective::Dpo => Some(model.packed_logprobs(&packed)?.sums.detach()),
    };
    let loss_of = |s: &super::model::Scored| -> Result<candle_core::Tensor, LmError> {
        Ok(match &refs {
            None => s.tokens.mean_all()?.neg()?,
            Some(r) => {
                let d = (&s.sums - r)?.reshape((batch, 2))?;
                let z = ((d.narrow(1, 0, 1)? - d.narrow(1, 1, 1)?)? * 0.1)?;
                // −log σ(z) = softplus(−z) = log(1 + e^(−z)).
                (z.neg()?.exp()? + 1.0)?.log()?.mean_all()?
            }
        })
    };
    let vars = model.trainable();
    let trainable_params = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: 1e-6, ..Default::default() })?;
    let mut times = Vec::new();
    for i in 0..steps.max(1) + 1 {
        let start = Instant::now();
        let (_, grads) = model.packed_backward(&packed, loss_of)?;
        candle_nn::Optimizer::step(&mut opt, &grads)?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let step_seconds = median(times);
    let mut ftimes = Vec::new();
    for _ in 0..steps.max(1) {
        let start = Instant::now();
        let scored = model.packed_logprobs(&packed)?;
        let _ = scored.sums.detach().to_vec1::<f32>()?;
        ftimes.push(start.elapsed().as_secs_f64());
    }
    let per_row = if objective == Objective::Dpo { 2 } else { 1 };
    let tokens = (per_row * batch * seq_len) as f64;
    Ok(TrainBench {
        mode: match objective {
            Objective::Sft => model.mode.name().to_string(),
            Objective::Dpo => format!("{}-dpo", model.mode.name()),
        },
        checkpointing,
        ops: if model.fuses_attention() { "fused" } else { "plain" }.to_string(),
        trainable_params,
        batch,
        seq_len,
        completion_len,
        steps: steps.max(1),
        train_tokens_per_s: tokens / step_seconds.max(1e-9),
        step_seconds,
        forward_tokens_per_s: tokens / median(ftimes).max(1e-9),
        kept_activation_estimate_mib: model.kept_activation_bytes(batch, seq_len) as f64
            / (1u64 << 20) as f64,
        peak_rss_mib: peak_rss_mib(),
        load_seconds,
    })
}
