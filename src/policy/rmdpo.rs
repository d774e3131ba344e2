//! Reward-model rounds (RLHF with DPO as the optimizer, on-policy): each round samples `K`
//! candidates per training prompt from the current policy, lets the reward ensemble label
//! pairs, and runs DPO on them against the fixed reference (the policy the rounds started
//! from), so KL(π‖π_ref) is the explicit anchor and is reported per round.
//!
//! A pair (i, j) of a prompt's candidates is labeled by the ensemble's per-member score
//! differences `d_m = s_m(i) − s_m(j)`: it is used when `|mean d| − λ·std d > min_lcb`
//! (the winner is the sign of the mean) and skipped as uncertain otherwise; each prompt gives
//! its `pairs_per_prompt` most certain pairs.
//!
//! Every round also measures the policy it starts from (and the last one, the final policy):
//! the ensemble's mean score of its samples on the training prompts, KL(π‖π_ref) on the
//! held-out prompts, and, on the held-out prompts, the ensemble's and the judges' mean scores
//! of its greedy summaries, so over-optimization (proxy up, independent judge down) shows.
//!
//! Which model is which: every sample (training candidates, greedy summaries, KL samples) is
//! drawn by the engine from the round's Q8_0 export of the policy, the file a registered
//! policy would be. KL is scored on that same export against the base's zero-step Q8_0 export
//! ([`super::registry::zero_step_export`], [`RmDpoInputs::reference_gguf`]): both sides are the
//! weights that sample, quantized the same way (see [`super::kl`]), so round 0, whose export is
//! the zero-step export, measures exactly 0; the KL samples are kept in
//! `round-N/kl-samples.json`. DPO itself trains the f32 weights against the f32 reference (the
//! adapters off, or `reference`), as its loss needs.
//!
//! Resumable: a round's samples, its DPO run (checkpointed) and its result are kept in
//! `<run>/round-N/`; a restarted run skips finished rounds and loads their adapters.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{Encoded, Encoder, Prompt};
use super::judge::{mean_std, Judge, MemberScorer};
use super::kl::{self, KlEstimate};
use super::sample::{sample_gguf, SampleOptions, Sampled};
use super::train::{train, Observer, TrainConfig, TrainReport};
use super::{io_err, Method, PolicyError};
use crate::lm::export::{write_gguf, ExportFormat};
use crate::lm::model::{Mode, TrainableLlama};

/// Settings of the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RmDpoConfig {
    pub rounds: usize,
    /// How the training candidates are drawn (`k` per prompt).
    pub sample: SampleOptions,
    /// λ: pairs need `|mean| − λ·std` of the members' score difference above `min_lcb`.
    pub pessimism: f64,
    pub min_lcb: f64,
    pub pairs_per_prompt: usize,
    /// Samples per held-out prompt for the KL estimate.
    pub kl_samples: usize,
    pub dpo: TrainConfig,
}

impl Default for RmDpoConfig {
    fn default() -> Self {
        Self {
            rounds: 2,
            sample: SampleOptions::default(),
            pessimism: 1.0,
            min_lcb: 0.0,
            pairs_per_prompt: 1,
            kl_samples: 2,
            dpo: TrainConfig::default(),
        }
    }
}

/// The measurements of one policy (a round's start, or the final one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Ensemble mean score of the sampled training candidates.
    pub train_reward: f64,
    /// KL(π‖π_ref) on the held-out prompts.
    pub kl: KlEstimate,
    /// Ensemble mean score of greedy summaries of the held-out prompts.
    pub heldout_reward: f64,
    /// Each judge's mean score of the same summaries.
    pub heldout_judges: BTreeMap<String, f64>,
    /// Mean words of those summaries.
    pub heldout_words: f64,
}

/// One round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: usize,
    /// The policy this round started from.
    pub start: Measure,
    pub prompts: usize,
    pub candidates: usize,
    pub pairs: usize,
    /// Candidate pairs whose ensemble margin was not certain enough.
    pub uncertain_pairs: usize,
    /// Prompts that gave no pair.
    pub prompts_without_pair: usize,
    /// Pairs whose prompt or a completion was cut to the token limits (`data::fit`).
    #[serde(default)]
    pub truncated_pairs: usize,
    pub train_loss: f64,
    pub train_reward_accuracy: f64,
    pub train_tokens: usize,
    pub seconds: f64,
}

/// All rounds and the final policy's measurements.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RmDpoReport {
    pub rounds: Vec<RoundReport>,
    pub last: Measure,
    pub train_tokens: usize,
    pub seconds: f64,
}

/// The pairs (winner, loser) of one prompt's candidates, most certain first, and the number of
/// distinct-text pairs that were too uncertain.
pub fn choose_pairs(
    members: &[Vec<f32>],
    texts: &[&str],
    pessimism: f64,
    min_lcb: f64,
    per_prompt: usize,
) -> (Vec<(usize, usize)>, usize) {
    let mut found = Vec::new();
    let mut uncertain = 0;
    let n = texts.len();
    for i in 0..n {
        for j in i + 1..n {
            if texts[i] == texts[j] || texts[i].trim().is_empty() || texts[j].trim().is_empty() {
                continue;
            }
            let d: Vec<f64> = members.iter().map(|s| s[i] as f64 - s[j] as f64).collect();
            let k = d.len().max(1) as f64;
            let mean = d.iter().sum::<f64>() / k;
            let std = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / k).sqrt();
            let lcb = mean.abs() - pessimism * std;
            if lcb > min_lcb {
                let pair = if mean > 0.0 { (i, j) } else { (j, i) };
                found.push((lcb, pair));
            } else {
                uncertain += 1;
            }
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    (found.into_iter().take(per_prompt).map(|(_, p)| p).collect(), uncertain)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), PolicyError> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(value).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// What the rounds work with.
pub struct RmDpoInputs<'a> {
    pub encoder: &'a Encoder<'a>,
    pub device: &'a Device,
    pub train_prompts: &'a [Prompt],
    pub heldout_prompts: &'a [Prompt],
    pub scorer: &'a dyn MemberScorer,
    pub judges: &'a [&'a dyn Judge],
    /// The reference when the model is fully fine-tuned (LoRA: the adapters turned off).
    pub reference: Option<&'a TrainableLlama>,
    /// π_ref of the KL measurements: the base's zero-step Q8_0 export (the policy's rounds are
    /// sampled and scored from their own Q8_0 export).
    pub reference_gguf: &'a Path,
}

/// Runs the rounds (see the module docs) in `run_dir`, resuming finished rounds.
pub fn run(
    model: &mut TrainableLlama,
    inputs: &RmDpoInputs<'_>,
    cfg: &RmDpoConfig,
    run_dir: &Path,
    observer: &dyn Observer,
) -> Result<RmDpoReport, PolicyError> {
    if inputs.train_prompts.is_empty() {
        return Err(PolicyError::NoData("no training prompts for the reward-model rounds".into()));
    }
    if cfg.sample.k < 2 {
        return Err(PolicyError::Invalid("rm-dpo needs at least 2 candidates per prompt".into()));
    }
    if matches!(model.mode, Mode::Full) && inputs.reference.is_none() {
        return Err(PolicyError::Invalid(
            "full fine-tuning with rm-dpo needs a separate reference model".into(),
        ));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| io_err(run_dir, e))?;
    let started = Instant::now();
    let mut report = RmDpoReport::default();
    for round in 0..=cfg.rounds {
        let dir = run_dir.join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let done = dir.join("done.json");
        let adapters = dir.join("weights.safetensors");
        if let Some(r) = read_json::<RoundReport>(&done) {
            if adapters.exists() {
                let w = candle_core::safetensors::load(&adapters, &Device::Cpu)?;
                model.load_trainable(&w)?;
                observer.message(&format!("round {round}: done earlier, resumed"));
                report.train_tokens += r.train_tokens;
                report.rounds.push(r);
                continue;
            }
        }
        if round == cfg.rounds {
            if let Some(m) = read_json::<Measure>(&dir.join("measure.json")) {
                report.last = m;
                break;
            }
        }
        let round_start = Instant::now();
        observer.message(&format!("round {round}: sampling with the current policy"));
        let gguf = dir.join("policy.gguf");
        write_gguf(model, &gguf, ExportFormat::Q8_0, &[])?;
        let samples_path = dir.join("samples.json");
        let samples: Vec<Vec<Sampled>> = match read_json(&samples_path) {
            Some(s) => s,
            None => {
                let mut opts = cfg.sample.clone();
                opts.seed = cfg.sample.seed ^ (round as u64 + 1).wrapping_mul(0x5851_F42D);
                let s = sample_gguf(&gguf, inputs.device, inputs.train_prompts, &opts)?;
                write_json(&samples_path, &s)?;
                s
            }
        };
        let measure = measure(&gguf, inputs, cfg, &samples, round, &dir)?;
        let _ = std::fs::remove_file(&gguf);
        if round == cfg.rounds {
            write_json(&dir.join("measure.json"), &measure)?;
            report.last = measure;
            break;
        }
        // Label pairs with the ensemble.
        let mut pairs: Vec<Encoded> = Vec::new();
        let (mut uncertain, mut without, mut candidates, mut truncated) = (0, 0, 0, 0);
        for (p, cands) in inputs.train_prompts.iter().zip(&samples) {
            let texts: Vec<&str> = cands.iter().map(|c| c.text.as_str()).collect();
            candidates += texts.len();
            let members = inputs.scorer.member_scores(p.height, &p.input, &texts)?;
            let (chosen, u) =
                choose_pairs(&members, &texts, cfg.pessimism, cfg.min_lcb, cfg.pairs_per_prompt);
            uncertain += u;
            if chosen.is_empty() {
                without += 1;
            }
            for (w, l) in chosen {
                let fitted = inputs.encoder.encode(p, &[texts[w], texts[l]])?;
                truncated += usize::from(fitted.truncated);
                pairs.push(fitted.encoded);
            }
        }
        if truncated > 0 {
            tracing::info!(
                "round {round}: {truncated} of {} pairs truncated to the token limits",
                pairs.len()
            );
        }
        observer.message(&format!(
            "round {round}: {} pairs ({uncertain} uncertain pairs skipped, {truncated} \
             truncated); DPO",
            pairs.len()
        ));
        let train_report = if pairs.is_empty() {
            TrainReport::default()
        } else {
            let mut dpo = cfg.dpo.clone();
            dpo.seed ^= round as u64;
            train(
                model,
                Method::Dpo,
                &pairs,
                &[],
                &dpo,
                &dir.join("dpo"),
                inputs.reference,
                observer,
            )?
        };
        let weights: HashMap<String, Tensor> =
            model.trainable().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
        candle_core::safetensors::save(&weights, &adapters)?;
        let r = RoundReport {
            round,
            start: measure,
            prompts: inputs.train_prompts.len(),
            candidates,
            pairs: pairs.len(),
            uncertain_pairs: uncertain,
            prompts_without_pair: without,
            truncated_pairs: truncated,
            train_loss: train_report.last.get("loss").copied().unwrap_or(0.0),
            train_reward_accuracy: train_report.last.get("reward_accuracy").copied().unwrap_or(0.0),
            train_tokens: train_report.train_tokens,
            seconds: round_start.elapsed().as_secs_f64(),
        };
        write_json(&done, &r)?;
        report.train_tokens += r.train_tokens;
        report.rounds.push(r);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Measures the policy exported at `gguf` (see [`Measure`]); the KL samples go to `dir`.
fn measure(
    gguf: &Path,
    inputs: &RmDpoInputs<'_>,
    cfg: &RmDpoConfig,
    samples: &[Vec<Sampled>],
    round: usize,
    dir: &Path,
) -> Result<Measure, PolicyError> {
    let mut m = Measure::default();
    let mut scores = Vec::new();
    for (p, cands) in inputs.train_prompts.iter().zip(samples) {
        let texts: Vec<&str> = cands.iter().map(|c| c.text.as_str()).collect();
        let ms = mean_std(&inputs.scorer.member_scores(p.height, &p.input, &texts)?);
        scores.extend(ms.into_iter().map(|(mean, _)| mean));
    }
    m.train_reward = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    let held = inputs.heldout_prompts;
    if held.is_empty() {
        return Ok(m);
    }
    // Greedy summaries, as the composer writes them by default.
    let mut greedy = SampleOptions { k: 1, ..cfg.sample.clone() };
    greedy.sampling.temperature = 0.0;
    let outs = sample_gguf(gguf, inputs.device, held, &greedy)?;
    let mut rewards = Vec::new();
    let mut judged: BTreeMap<String, f64> = BTreeMap::new();
    let mut words = 0usize;
    for (p, o) in held.iter().zip(&outs) {
        let text = o.first().map_or("", |s| s.text.as_str());
        let ms = mean_std(&inputs.scorer.member_scores(p.height, &p.input, &[text])?);
        rewards.push(ms.first().map_or(0.0, |x| x.0));
        for j in inputs.judges {
            *judged.entry(j.name()).or_default() += j.score(&p.input, text) / held.len() as f64;
        }
        words += text.split_whitespace().count();
    }
    m.heldout_reward = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    m.heldout_judges = judged;
    m.heldout_words = words as f64 / held.len() as f64;
    if cfg.kl_samples > 0 {
        let opts =
            SampleOptions::pure(cfg.kl_samples, cfg.sample.max_tokens.clone(), 7919 + round as u64);
        let (mut kl, kl_samples) =
            kl::estimate_files(gguf, inputs.reference_gguf, inputs.device, held, &opts)?;
        kl.policy = format!("round-{round}/policy.gguf (q8_0)");
        write_json(&dir.join("kl-samples.json"), &kl_samples)?;
        m.kl = kl;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_follow_the_ensemble_and_skip_uncertain_ones() {
        // Three members, three candidates: 0 clearly beats 2; 0 vs 1 is uncertain.
        let members = vec![vec![1.0, 0.9, 0.0], vec![1.0, 1.2, 0.1], vec![1.1, 0.8, -0.1]];
        let texts = ["a", "b", "c"];
        let (pairs, uncertain) = choose_pairs(&members, &texts, 1.0, 0.0, 1);
        assert_eq!(pairs, vec![(0, 2)]);
        assert_eq!(uncertain, 1);
        // λ = 0 trusts every nonzero mean.
        let (pairs, uncertain) = choose_pairs(&members, &texts, 0.0, 0.0, 3);
        assert_eq!((pairs.len(), uncertain), (3, 0));
        // Identical texts make no pair.
        let (pairs, _) = choose_pairs(&members, &["x", "x", "x"], 0.0, 0.0, 3);
        assert!(pairs.is_empty());
    }
}
