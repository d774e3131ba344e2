//! The hybrid reward model (issue 32): grounding as features of both backbones. Each member's
//! score is `learned(x) + wᵀ·g(input, summary)`, with `g` the small fixed vector of
//! [`crate::grounding`] features below and `w` trained jointly with the learned part under the
//! same Bradley–Terry loss.
//!
//! Training starts from the features-only model: `w` is first fitted on the training pairs
//! ([`fit`]: logistic regression on the pairs' feature differences, by Newton's method with a
//! small L2 penalty), with the learned part's output layer at zero, so step 0 scores exactly
//! `wᵀ·g`. Validation then chooses among the steps *including step 0*: on the validation groups
//! a hybrid model's loss is never above its own features'. The card records that the model is
//! hybrid, the features' version and the fitted `w` ([`HybridCard`]); loading refuses a
//! checkpoint whose features are another version.
//!
//! The features are cheap (microseconds per summary, no model) and computed the same way by
//! training, validation, `rrm reward eval`, the selectors and the LM engine scorer: always
//! through [`features`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::grounding;

/// Names the feature vector; a checkpoint trained on another version does not load.
pub const VERSION: &str = "grounding-features@1";

/// The number of grounding features.
pub const FEATURES: usize = 6;

/// What each feature is, in order.
pub const NAMES: [&str; FEATURES] = [
    "unsupported_rate",
    "ln(1+unsupported_names)",
    "coverage",
    "copied_4gram_share",
    "ln(1+longest_copy)",
    "ln(summary_words/input_words)",
];

/// The grounding features of one summary.
pub type Row = [f32; FEATURES];

/// L2 penalty on `w` in the initial fit (a unit-variance Gaussian prior on each weight, in
/// log-odds per unit of feature): it keeps `w` finite on separable pairs.
pub const FIT_L2: f64 = 1.0;

/// The grounding features of each of `summaries` against `input` (the input read once).
pub fn features(input: &str, summaries: &[&str]) -> Vec<Row> {
    let source = grounding::Source::new(input);
    let input_words = input.split_whitespace().count() as f32;
    summaries
        .iter()
        .map(|s| {
            let r = source.check(s);
            let words = s.split_whitespace().count() as f32;
            [
                r.unsupported_rate as f32,
                (r.unsupported_names as f32).ln_1p(),
                r.coverage as f32,
                r.copied_4gram_share as f32,
                (r.longest_copy as f32).ln_1p(),
                ((1.0 + words) / (1.0 + input_words)).ln(),
            ]
        })
        .collect()
}

/// `wᵀ·g`.
pub fn dot(w: &[f32], g: &[f32]) -> f32 {
    w.iter().zip(g).map(|(a, b)| a * b).sum()
}

/// Fits `w` by weighted logistic regression of the pairs' targets on their feature
/// differences (`diffs[i]` = g(chosen) − g(rejected), target `targets[i]`, loss weight
/// `weights[i]`), without intercept (Bradley–Terry sees only differences), with the L2 penalty
/// [`FIT_L2`]: the `w` that minimises the same loss training does with the learned part at
/// zero. Newton's method (the problem is strictly convex); zeros without pairs.
#[allow(clippy::needless_range_loop)] // dense 6×6 algebra reads best with indices
pub fn fit(diffs: &[Row], targets: &[f32], weights: &[f32]) -> Row {
    let mut w = [0f64; FEATURES];
    if diffs.is_empty() {
        return [0.0; FEATURES];
    }
    for _ in 0..100 {
        let mut grad = [0f64; FEATURES];
        let mut hess = [[0f64; FEATURES]; FEATURES];
        for k in 0..FEATURES {
            grad[k] = FIT_L2 * w[k];
            hess[k][k] = FIT_L2;
        }
        for ((d, &t), &wt) in diffs.iter().zip(targets).zip(weights) {
            let z: f64 = d.iter().zip(&w).map(|(&x, &b)| f64::from(x) * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let wt = f64::from(wt);
            let r = wt * (p - f64::from(t));
            let s = wt * p * (1.0 - p);
            for a in 0..FEATURES {
                grad[a] += r * f64::from(d[a]);
                for b in 0..FEATURES {
                    hess[a][b] += s * f64::from(d[a]) * f64::from(d[b]);
                }
            }
        }
        let Some(step) = solve(hess, grad) else { break };
        let mut largest = 0f64;
        for k in 0..FEATURES {
            w[k] -= step[k];
            largest = largest.max(step[k].abs());
        }
        if largest < 1e-10 {
            break;
        }
    }
    w.map(|x| x as f32)
}

/// Solves `a·x = b` by Gaussian elimination with partial pivoting; `None` when singular.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: [[f64; FEATURES]; FEATURES], mut b: [f64; FEATURES]) -> Option<[f64; FEATURES]> {
    for col in 0..FEATURES {
        let pivot = (col..FEATURES).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..FEATURES {
            let f = a[row][col] / a[col][col];
            for k in col..FEATURES {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0f64; FEATURES];
    for row in (0..FEATURES).rev() {
        let rest: f64 = (row + 1..FEATURES).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// What a hybrid checkpoint's card says about its grounding part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HybridCard {
    /// [`VERSION`] at training time: loading checks it.
    pub features: String,
    /// [`NAMES`], for whoever reads the card.
    pub names: Vec<String>,
    /// The `w` fitted on the training pairs before the joint training (step 0), per head scope
    /// (`h0`, …, `shared`; the LM backbone: `all`).
    pub fitted: BTreeMap<String, Vec<f32>>,
    /// Per scope and member, the step (MiniLM: epoch) validation kept; 0 is the features-only
    /// model.
    #[serde(default)]
    pub best_step: BTreeMap<String, Vec<usize>>,
}

impl HybridCard {
    pub fn new() -> HybridCard {
        HybridCard {
            features: VERSION.to_string(),
            names: NAMES.iter().map(|s| s.to_string()).collect(),
            fitted: BTreeMap::new(),
            best_step: BTreeMap::new(),
        }
    }

    /// An error message when this card's features are not the ones this build computes.
    pub fn check(&self) -> Result<(), String> {
        if self.features != VERSION {
            return Err(format!(
                "the model was trained on grounding features {}, this build computes {VERSION}",
                self.features
            ));
        }
        Ok(())
    }
}

impl Default for HybridCard {
    fn default() -> Self {
        HybridCard::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "The miller stood at the mill while the flood rose over the meadow. \
                         His daughter Anna carried the sacks of flour up to the loft.";

    #[test]
    fn features_say_what_grounding_says() {
        let g = features(
            INPUT,
            &[
                "Anna carries flour while the flood rises.",
                "Procopius sails to King Tranquil's castle.",
                "",
            ],
        );
        assert_eq!(g.len(), 3);
        // Unsupported content and names: the invented summary has them, the grounded one not.
        assert!(g[1][0] > g[0][0] && g[1][1] > g[0][1], "{g:?}");
        assert!(g[0][2] > g[1][2], "coverage: {g:?}");
        // Shorter than the input: a negative log length ratio; empty is the shortest.
        assert!(g[0][5] < 0.0 && g[2][5] < g[0][5]);
        assert!(g.iter().flatten().all(|x| x.is_finite()));
    }

    #[test]
    fn the_fit_recovers_a_known_direction_and_stays_finite_on_separable_pairs() {
        // Targets from σ(2·Δ0 − 1·Δ2), many pairs: the fit is close to (2, 0, −1, 0, 0, 0).
        let mut diffs = Vec::new();
        let mut targets = Vec::new();
        for i in 0..400 {
            let a = ((i * 37) % 101) as f32 / 50.0 - 1.0;
            let b = ((i * 53) % 97) as f32 / 48.0 - 1.0;
            let c = ((i * 11) % 89) as f32 / 44.0 - 1.0;
            diffs.push([a, c * 0.1, b, 0.0, 0.0, c]);
            targets.push(1.0 / (1.0 + (-(2.0 * a - b)).exp()));
        }
        let w = fit(&diffs, &targets, &vec![1.0; diffs.len()]);
        assert!((w[0] - 2.0).abs() < 0.2 && (w[2] + 1.0).abs() < 0.2, "{w:?}");
        assert!(w[5].abs() < 0.2, "{w:?}");
        // Perfectly separable: finite under the penalty, and pointing the right way.
        let w = fit(&[[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]; 20], &[1.0; 20], &[1.0; 20]);
        assert!(w[0] > 1.0 && w[0].is_finite(), "{w:?}");
        assert_eq!(fit(&[], &[], &[]), [0.0; FEATURES]);
        assert!(HybridCard::new().check().is_ok());
        let other = HybridCard { features: "grounding-features@0".into(), ..HybridCard::new() };
        assert!(other.check().unwrap_err().contains("grounding-features@0"));
    }
}
