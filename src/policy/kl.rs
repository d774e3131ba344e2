//! KL(π‖π_ref) on prompts, estimated from samples of π: the mean over samples `y ~ π(·|x)` of
//! `log π(y|x) − log π_ref(y|x)` (summed over the tokens of `y`), the usual Monte-Carlo
//! estimate RLHF reports. The samples come from the engine running the exported policy (its
//! Q8_0 weights); the log-probabilities from the trainer's f32 forward.

use serde::{Deserialize, Serialize};

use super::data::{Encoder, Prompt};
use super::sample::Sampled;
use super::PolicyError;
use crate::lm::model::{Packed, TrainableLlama};

/// A KL estimate in nats per sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KlEstimate {
    pub mean: f64,
    /// Standard error of the mean.
    pub std_err: f64,
    pub samples: usize,
    /// Mean sampled length in tokens.
    pub mean_tokens: f64,
}

/// Which models give log π and log π_ref.
pub enum Pair<'m> {
    /// One LoRA model: adapters on is π, off is π_ref.
    Adapters(&'m mut TrainableLlama),
    /// Two models.
    Models { policy: &'m TrainableLlama, reference: &'m TrainableLlama },
}

fn rows(
    encoder: &Encoder<'_>,
    prompts: &[Prompt],
    samples: &[Vec<Sampled>],
) -> Result<Vec<Packed>, PolicyError> {
    let mut out = Vec::new();
    for (p, s) in prompts.iter().zip(samples) {
        let completions: Vec<Vec<u32>> =
            s.iter().map(|x| x.token_ids.clone()).filter(|t| !t.is_empty()).collect();
        if completions.is_empty() {
            continue;
        }
        out.push(Packed { prompt: encoder.prompt(p)?, completions });
    }
    Ok(out)
}

fn sums(model: &TrainableLlama, rows: &[Packed]) -> Result<(Vec<f64>, Vec<usize>), PolicyError> {
    let mut v = Vec::new();
    let mut n = Vec::new();
    for r in rows {
        let s = model.packed_logprobs(std::slice::from_ref(r))?;
        let x = s.sums.detach().to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        v.extend(x);
        n.extend(s.counts);
    }
    Ok((v, n))
}

/// Estimates KL(π‖π_ref) from `samples[i]` drawn from π for `prompts[i]`.
pub fn estimate(
    models: Pair<'_>,
    encoder: &Encoder<'_>,
    prompts: &[Prompt],
    samples: &[Vec<Sampled>],
) -> Result<KlEstimate, PolicyError> {
    let rows = rows(encoder, prompts, samples)?;
    if rows.is_empty() {
        return Ok(KlEstimate::default());
    }
    let ((lp, counts), (lr, _)) = match models {
        Pair::Adapters(m) => {
            let was = m.adapters_enabled();
            m.set_adapters(true);
            let a = sums(m, &rows);
            m.set_adapters(false);
            let b = sums(m, &rows);
            m.set_adapters(was);
            (a?, b?)
        }
        Pair::Models { policy, reference } => (sums(policy, &rows)?, sums(reference, &rows)?),
    };
    let d: Vec<f64> = lp.iter().zip(&lr).map(|(a, b)| a - b).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(KlEstimate {
        mean,
        std_err: (var / n).sqrt(),
        samples: d.len(),
        mean_tokens: counts.iter().sum::<usize>() as f64 / n,
    })
}
