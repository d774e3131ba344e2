//! Scoring a loaded model and selecting with it: per-member scores of a node's candidates
//! (packed rows on the engine, [`Scoring::Engine`], or the trainer's forward), pair margins,
//! metrics per height, and [`LmRewardSelector`], the compose [`Selector`].

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::engine;
use super::pack::{encode, head_of, head_rows, head_scores, rows_of, score_budget, score_rows};
use super::{LmMember, LmRewardModel, Scoring};
use crate::compose::select::SelectError;
use crate::compose::{Candidate, CandidateScore, Selector};
use crate::feedback::Pair;
use crate::reward::hybrid;
use crate::reward::model::mean_std;
use crate::reward::train::{metrics, Metrics};
use crate::reward::RewardError;

impl LmRewardModel {
    /// Per-member scores (K × n) of `summaries` of `input` at `height`, `batch` sequences at a
    /// time.
    pub fn member_scores(
        &self,
        height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let max = self.card.config.max_tokens;
        let seqs = encode(&self.tokenizer, self.end, max, height, input, summaries)?.0;
        let grounding =
            if self.card.config.hybrid { hybrid::features(input, summaries) } else { Vec::new() };
        self.score_tokens(&[seqs], &[height], &grounding)
    }

    /// Per-member scores (K × n) of tokenized sequences, given in groups that share a prompt
    /// (scored as packed rows, several rows per forward pass) and the groups' heights; scores
    /// in the groups' order. A hybrid model adds each member's `wᵀ·g` with `grounding`, one
    /// row per sequence in the same order (whichever forward pass gave the hidden states).
    fn score_tokens(
        &self,
        groups: &[Vec<Vec<u32>>],
        heights: &[u32],
        grounding: &[hybrid::Row],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let n: usize = groups.iter().map(Vec::len).sum();
        if self.card.config.hybrid && grounding.len() != n {
            return Err(RewardError::Invalid(format!(
                "internal: {} grounding rows for {n} summaries",
                grounding.len()
            )));
        }
        let add = |m: &LmMember, scores: Vec<f32>| -> Result<Vec<f32>, RewardError> {
            let Some(g) = &m.grounding else { return Ok(scores) };
            let w = g.to_vec1::<f32>()?;
            Ok(scores.into_iter().zip(grounding).map(|(s, g)| s + hybrid::dot(&w, g)).collect())
        };
        let heads = self.card.heads;
        let heads: Vec<u32> = heights.iter().map(|&h| head_of(h, heads)).collect();
        let (rows, row_heads, _) = rows_of(groups, &heads);
        if rows.is_empty() {
            return Ok(vec![Vec::new(); self.members.len()]);
        }
        let budget = score_budget(self.card.config.max_tokens);
        let t = self.card.temperature as f32;
        let mut out = Vec::with_capacity(self.members.len());
        if self.scoring == Scoring::Engine {
            let engine = self.engine()?;
            let which =
                head_rows(row_heads.iter().zip(&rows).map(|(&h, r)| (h, r.completions.len())));
            for (i, m) in self.members.iter().enumerate() {
                let hidden = engine.last_hidden(i, &rows, budget)?;
                let which = Tensor::new(which.as_slice(), m.head_w.device())?;
                let scores =
                    add(m, head_scores(&hidden, &m.head_w, &m.head_b, &which)?.to_vec1::<f32>()?)?;
                out.push(scores.into_iter().map(|s| s / t).collect());
            }
            return Ok(out);
        }
        let llama = self.lock_llama()?;
        for m in &self.members {
            llama.load_trainable(&m.weights)?;
            let scores =
                add(m, score_rows(&llama, &rows, &row_heads, &m.head_w, &m.head_b, budget)?)?;
            out.push(scores.into_iter().map(|s| s / t).collect());
        }
        Ok(out)
    }

    /// Chooses the forward pass that scores candidates from now on ([`Scoring::Engine`] by
    /// default; the two agree to about 1e-2 of a score, the engine multiplying in f16).
    pub fn set_scoring(&mut self, scoring: Scoring) {
        self.scoring = scoring;
    }

    /// The members on the engine, built on first use.
    fn engine(&self) -> Result<std::sync::Arc<engine::EngineScorer>, RewardError> {
        let mut slot = self
            .engine
            .lock()
            .map_err(|_| RewardError::Invalid("the reward model's lock is poisoned".into()))?;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let llama = self.lock_llama()?;
        let built =
            std::sync::Arc::new(engine::EngineScorer::build(&llama, &self.members, &llama.path)?);
        *slot = Some(built.clone());
        Ok(built)
    }

    /// The ensemble-mean margin (chosen − rejected) of every pair.
    pub fn margins(&self, pairs: &[Pair]) -> Result<Vec<f32>, RewardError> {
        let max = self.card.config.max_tokens;
        let mut groups = Vec::with_capacity(pairs.len());
        let mut grounding = Vec::new();
        for p in pairs {
            let summaries = [p.chosen.as_str(), p.rejected.as_str()];
            groups.push(encode(&self.tokenizer, self.end, max, p.height, &p.input, &summaries)?.0);
            if self.card.config.hybrid {
                grounding.extend(hybrid::features(&p.input, &summaries));
            }
        }
        let heights: Vec<u32> = pairs.iter().map(|p| p.height).collect();
        let scores = self.score_tokens(&groups, &heights, &grounding)?;
        let stats = mean_std(&scores);
        Ok((0..pairs.len()).map(|i| stats[2 * i].0 - stats[2 * i + 1].0).collect())
    }

    /// Accuracy, log-loss and calibration per height and `all`.
    pub fn evaluate(&self, pairs: &[Pair]) -> Result<BTreeMap<String, Metrics>, RewardError> {
        Ok(metrics_by_height(pairs, &self.margins(pairs)?))
    }
}

/// Accuracy, log-loss and ECE per height (`h{H}`) and over `all`, from the pairs' margins.
pub fn metrics_by_height(pairs: &[Pair], margins: &[f32]) -> BTreeMap<String, Metrics> {
    let mut out = BTreeMap::new();
    let mut heights: Vec<u32> = pairs.iter().map(|p| p.height).collect();
    heights.sort_unstable();
    heights.dedup();
    for h in heights {
        let (m, t): (Vec<f32>, Vec<f32>) = pairs
            .iter()
            .zip(margins)
            .filter(|(p, _)| p.height == h)
            .map(|(p, &d)| (d, p.target))
            .unzip();
        out.insert(format!("h{h}"), metrics(&m, &t));
    }
    let t: Vec<f32> = pairs.iter().map(|p| p.target).collect();
    out.insert("all".into(), metrics(margins, &t));
    out
}

/// The LM reward ensemble as a [`Selector`]: score = mean − λ·std over the members, like
/// [`crate::reward::RewardSelector`].
pub struct LmRewardSelector {
    model: std::sync::Arc<LmRewardModel>,
    pessimism: f32,
}

impl LmRewardSelector {
    pub fn new(model: std::sync::Arc<LmRewardModel>, pessimism: f32) -> LmRewardSelector {
        LmRewardSelector { model, pessimism }
    }
}

impl Selector for LmRewardSelector {
    fn id(&self) -> String {
        format!("reward-lm:{}:lambda={}:centred", self.model.card.hash, self.pessimism)
    }

    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<CandidateScore>, SelectError> {
        let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
        let members = self
            .model
            .member_scores(height, input, &texts)
            .map_err(|e| SelectError { selector: self.id(), message: e.to_string() })?;
        Ok(crate::reward::ensemble_scores(&members, self.pessimism))
    }
}
