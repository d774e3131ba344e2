//! `rrm bench score`: LM reward scoring throughput, the trainer's forward beside the engine's,
//! on the same model, adapters and sequences in one run. The shape follows
//! `scripts/trl/bench.py --modes score` (independent sequences of `len` random tokens, `batch`
//! per forward pass, LoRA rank 8 with non-zero `B` so the adapters count), so the figures sit
//! beside TRL's.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::engine::EngineScorer;
use super::pack::{head_rows, head_scores, score_rows};
use super::LmMember;
use crate::lm::model::LoadOptions;
use crate::lm::{Checkpointing, LoraConfig, Mode, Packed, TrainableLlama};
use crate::reward::RewardError;

/// One scorer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreBench {
    /// `trainer` or `engine`.
    pub scorer: String,
    pub summaries: usize,
    pub tokens_per_summary: usize,
    pub batch: usize,
    /// Seconds to make the scorer ready (the engine: merging the adapters and loading).
    pub setup_seconds: f64,
    pub seconds: f64,
    pub summaries_per_s: f64,
    pub tokens_per_s: f64,
    /// Largest |score − the trainer's score| over the sequences (0 for the trainer).
    pub max_abs_diff_vs_trainer: f64,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct ScoreBenchRequest {
    pub count: usize,
    pub len: usize,
    pub batch: usize,
    pub lora_rank: usize,
    pub seed: u64,
}

/// Scores `count` random sequences with each scorer, calling `row` after each.
pub fn bench_scoring(
    base: &Path,
    request: &ScoreBenchRequest,
    row: &mut dyn FnMut(ScoreBench),
) -> Result<(), RewardError> {
    if request.count == 0 || request.len < 2 || request.batch == 0 {
        return Err(RewardError::Invalid(
            "the scoring bench needs at least one sequence of two tokens and a batch of one".into(),
        ));
    }
    let mode = Mode::Lora(LoraConfig { rank: request.lora_rank, ..LoraConfig::default() });
    let options = LoadOptions { mode, dtype: DType::F32 };
    let (mut llama, _) = TrainableLlama::load(base, &Device::Cpu, &options)?;
    llama.set_checkpointing(Checkpointing::Off);
    let mut rng = rand::rngs::StdRng::seed_from_u64(request.seed);
    for (name, var) in llama.trainable() {
        if name.ends_with("lora_b") {
            let data: Vec<f32> =
                (0..var.elem_count()).map(|_| rng.random_range(-0.02..0.02)).collect();
            var.set(&Tensor::from_vec(data, var.shape(), &Device::Cpu)?)?;
        }
    }
    let hidden = llama.config.hidden;
    let head: Vec<f32> =
        (0..hidden).map(|_| rng.random_range(-1.0..1.0) / (hidden as f32).sqrt()).collect();
    let member = LmMember {
        grounding: None,
        // Copies: setting a variable to a view of itself is refused.
        weights: llama
            .trainable()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
            .collect::<candle_core::Result<_>>()?,
        head_w: Tensor::from_vec(head, (1, hidden), &Device::Cpu)?,
        head_b: Tensor::zeros(1, DType::F32, &Device::Cpu)?,
    };
    // Ids from the ordinary vocabulary (the first 1000 are often special or byte tokens).
    let vocab = llama.config.vocab_size as u32;
    let low = 1000.min(vocab / 2);
    let rows: Vec<Packed> = (0..request.count)
        .map(|_| {
            let ids: Vec<u32> = (0..request.len).map(|_| rng.random_range(low..vocab)).collect();
            Packed {
                prompt: ids[..request.len - 1].to_vec(),
                completions: vec![ids[request.len - 1..].to_vec()],
            }
        })
        .collect();
    let which =
        Tensor::new(head_rows(rows.iter().map(|r| (0, r.completions.len()))), &Device::Cpu)?;
    let budget = request.batch * request.len;
    let figures = |scorer: &str, setup: f64, seconds: f64, diff: f64| ScoreBench {
        scorer: scorer.into(),
        summaries: request.count,
        tokens_per_summary: request.len,
        batch: request.batch,
        setup_seconds: setup,
        seconds,
        summaries_per_s: request.count as f64 / seconds.max(1e-9),
        tokens_per_s: (request.count * request.len) as f64 / seconds.max(1e-9),
        max_abs_diff_vs_trainer: diff,
    };

    let heads = vec![0u32; rows.len()];
    let start = Instant::now();
    let trainer = score_rows(&llama, &rows, &heads, &member.head_w, &member.head_b, budget)?;
    row(figures("trainer", 0.0, start.elapsed().as_secs_f64(), 0.0));

    let start = Instant::now();
    let engine = EngineScorer::build(&llama, std::slice::from_ref(&member), base)?;
    let setup = start.elapsed().as_secs_f64();
    drop(llama);
    let start = Instant::now();
    let h = engine.last_hidden(0, &rows, budget)?;
    let scores = head_scores(&h, &member.head_w, &member.head_b, &which)?.to_vec1::<f32>()?;
    let seconds = start.elapsed().as_secs_f64();
    let diff =
        scores.iter().zip(&trainer).map(|(a, b)| f64::from((a - b).abs())).fold(0.0, f64::max);
    row(figures("engine", setup, seconds, diff));
    Ok(())
}
