//! Reward-model learning curves and calibration from stored feedback, and best-of-N
//! over-optimization from stored candidates.
//!
//! **Learning curve.** The feedback's preference pairs are split into a test set (a quarter
//! of the books, by the reward trainer's own rule; with a single book, a quarter of its nodes,
//! and the result says so) and a training pool. For each height and each size `n` (doubling
//! from 25 up to the pool), `repeats` random subsets of `n` pool pairs train a reward model
//! exactly as `rrm reward train` would ([`RewardModel::train_prepared`]), and its accuracy and
//! log-loss on the test pairs of that height are recorded. The largest model of each height
//! also gives a calibration diagram: each test pair is shown in a random order and the
//! predicted probability that the first wins, σ(margin), is binned against how often it did.
//!
//! **Best-of-N** (after Gao et al. 2022, *Scaling Laws for Reward Model Overoptimization*).
//! For nodes with `K` sampled candidates, the expected score of the candidate that the proxy
//! (the reward ensemble's mean) ranks best among `N` drawn at random without replacement is
//! computed exactly: with candidates sorted by proxy, the one of rank `i` (1-based, ascending)
//! is the best of a random `N`-subset with probability C(i−1, N−1) / C(K, N). Both the proxy
//! and an independent judge (the simulated labeler) are averaged that way, for N = 1…K, and
//! plotted against KL(best-of-N ‖ base) = log N − (N−1)/N.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::bootstrap::SplitMix64;
use super::EvalError;
use crate::compose::CandidateSet;
use crate::feedback::sim::SimLabeler;
use crate::feedback::Pair;
use crate::infer::encoder::SharedCache;
use crate::infer::Encoder;
use crate::reward::features::Featurizer;
use crate::reward::model::mean_std;
use crate::reward::train::{self, TrainConfig};
use crate::reward::{pair_tensors, prepare_pairs, RewardModel};
use crate::store::{Store, Table};

/// One trained model of a learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub height: u32,
    /// Training pairs.
    pub n: usize,
    pub repeat: usize,
    pub accuracy: f64,
    pub log_loss: f64,
    pub test_pairs: usize,
}

/// One bin of a calibration diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub height: u32,
    pub low: f64,
    pub high: f64,
    pub count: usize,
    /// Mean predicted probability that the first text wins.
    pub predicted: f64,
    /// How often the first text won (ties count one half).
    pub observed: f64,
}

/// A learning curve and the calibration of the largest model per height.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearningCurve {
    /// `book` (held-out split groups: books, or nodes where the feedback names no book) or
    /// `node` (held-out nodes of a single book).
    pub split: String,
    pub test_groups: usize,
    pub train_pool: BTreeMap<u32, usize>,
    pub points: Vec<CurvePoint>,
    pub calibration: Vec<CalibrationBin>,
    /// Expected calibration error of the largest model per height.
    pub ece: BTreeMap<u32, f64>,
    pub config: TrainConfig,
    pub created_unix: u64,
}

/// Where the learning curve is stored in [`Table::Meta`].
pub const LEARNING_CURVE_KEY: &str = "eval/learning-curve";
/// Where the best-of-N result is stored in [`Table::Meta`].
pub const BEST_OF_N_KEY: &str = "eval/best-of-n";

/// Training sizes: 25, 50, 100, … below `pool`, then `pool`.
pub fn sizes(pool: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = 25;
    while n < pool {
        out.push(n);
        n *= 2;
    }
    if pool > 0 {
        out.push(pool);
    }
    out
}

/// Draws `n` distinct indices of `0..len` (partial Fisher–Yates).
fn subset(len: usize, n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    let n = n.min(len);
    for i in 0..n {
        let j = i + rng.below(len - i);
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx
}

/// Computes the learning curve of `pairs` (see the module docs).
pub fn learning_curve(
    encoder: &dyn Encoder,
    cache: Option<SharedCache>,
    pairs: &[Pair],
    repeats: usize,
    config: &TrainConfig,
    mut progress: impl FnMut(&CurvePoint),
) -> Result<LearningCurve, EvalError> {
    if pairs.is_empty() {
        return Err(EvalError::Data(
            "no preference pairs in the stored feedback (run `rrm feedback simulate` or rate nodes)"
                .into(),
        ));
    }
    let mut pairs = pairs.to_vec();
    let mut split = "book";
    let mut test_groups = train::split_groups(&pairs, 0, 25).1;
    if test_groups.is_empty() {
        // A single book: hold out whole nodes instead (never single rows of a node).
        split = "node";
        for p in &mut pairs {
            p.group = blake3::hash(p.input.as_bytes()).to_hex()[..16].to_string();
        }
        test_groups = train::split_groups(&pairs, 0, 25).1;
    }
    if test_groups.is_empty() {
        return Err(EvalError::Data("all pairs are on one node: nothing to hold out".into()));
    }
    let (test, pool): (Vec<Pair>, Vec<Pair>) =
        pairs.into_iter().partition(|p| test_groups.contains(&p.group));
    let mut featurizer = Featurizer::new(encoder, cache);
    prepare_pairs(&mut featurizer, &pool)?;
    prepare_pairs(&mut featurizer, &test)?;
    let heights: BTreeSet<u32> = pool.iter().map(|p| p.height).collect();
    let mut out = LearningCurve {
        split: split.into(),
        test_groups: test_groups.len(),
        train_pool: BTreeMap::new(),
        points: Vec::new(),
        calibration: Vec::new(),
        ece: BTreeMap::new(),
        config: config.clone(),
        created_unix: crate::feedback::unix_now(),
    };
    let mut rng = SplitMix64::new(config.seed ^ 0x5eed);
    for h in heights {
        let pool_h: Vec<Pair> = pool.iter().filter(|p| p.height == h).cloned().collect();
        let test_h: Vec<&Pair> = test.iter().filter(|p| p.height == h).collect();
        out.train_pool.insert(h, pool_h.len());
        if test_h.is_empty() {
            tracing::warn!("height {h} has no held-out pairs: no learning curve for it");
            continue;
        }
        let test_t = pair_tensors(&featurizer, &test_h)?;
        let all_sizes = sizes(pool_h.len());
        for (si, &n) in all_sizes.iter().enumerate() {
            let last = si + 1 == all_sizes.len();
            // The whole pool is one subset however often it is drawn.
            let reps = if n == pool_h.len() { 1 } else { repeats.max(1) };
            for r in 0..reps {
                let idx = subset(pool_h.len(), n, &mut rng);
                let sub: Vec<Pair> = idx.iter().map(|&i| pool_h[i].clone()).collect();
                let cfg =
                    TrainConfig { seed: config.seed.wrapping_add(r as u64), ..config.clone() };
                let model =
                    RewardModel::train_prepared(&featurizer, encoder, &sub, &cfg, "curve", 0.0)?;
                let margins = train::ensemble_margins(&model.heads, &test_t)?;
                let m = train::metrics(&margins, &test_t.target);
                let point = CurvePoint {
                    height: h,
                    n,
                    repeat: r,
                    accuracy: m.accuracy,
                    log_loss: m.log_loss,
                    test_pairs: test_h.len(),
                };
                progress(&point);
                out.points.push(point);
                if last && r == 0 {
                    // Ten bins need a few hundred pairs; fewer get five.
                    let nbins = if test_h.len() >= 200 { 10 } else { 5 };
                    let (bins, ece) = calibration(h, &margins, &test_t.target, nbins, &mut rng);
                    out.calibration.extend(bins);
                    out.ece.insert(h, ece);
                }
            }
        }
    }
    Ok(out)
}

/// Reliability bins of margins (chosen − rejected) against targets (P(chosen wins)): each pair
/// is shown in a random order, so predictions span [0, 1]. Returns the bins and the ECE.
pub fn calibration(
    height: u32,
    margins: &[f32],
    targets: &[f32],
    bins: usize,
    rng: &mut SplitMix64,
) -> (Vec<CalibrationBin>, f64) {
    let bins = bins.max(1);
    let mut acc = vec![(0usize, 0f64, 0f64); bins];
    for (&d, &t) in margins.iter().zip(targets) {
        let p = 1.0 / (1.0 + (-f64::from(d)).exp());
        let (p, y) =
            if rng.next_u64() & 1 == 1 { (1.0 - p, 1.0 - f64::from(t)) } else { (p, f64::from(t)) };
        let b = ((p * bins as f64) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += p;
        acc[b].2 += y;
    }
    let total: usize = acc.iter().map(|a| a.0).sum();
    let mut ece = 0.0;
    let out = acc
        .iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(i, &(n, ps, ys))| {
            let (predicted, observed) = (ps / n as f64, ys / n as f64);
            ece += n as f64 / total.max(1) as f64 * (predicted - observed).abs();
            CalibrationBin {
                height,
                low: i as f64 / bins as f64,
                high: (i + 1) as f64 / bins as f64,
                count: n,
                predicted,
                observed,
            }
        })
        .collect();
    (out, ece)
}

/// KL(best-of-N ‖ base) = log N − (N−1)/N (Stiennon et al. 2020; Gao et al. 2022).
pub fn best_of_n_kl(n: usize) -> f64 {
    let n = n.max(1) as f64;
    n.ln() - (n - 1.0) / n
}

fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Expected (proxy, gold) of the proxy's pick among `n` of the candidates drawn at random
/// without replacement. `scores` are (proxy, gold) per candidate; needs `n <= scores.len()`.
pub fn expected_best_of(scores: &[(f64, f64)], n: usize) -> Option<(f64, f64)> {
    let k = scores.len();
    if n == 0 || n > k {
        return None;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = binomial(k, n);
    let (mut proxy, mut gold) = (0.0, 0.0);
    for (i, &(p, g)) in sorted.iter().enumerate() {
        // Rank i+1 ascending is the best of the subset when the other n−1 come from below it.
        let w = binomial(i, n - 1) / total;
        proxy += w * p;
        gold += w * g;
    }
    Some((proxy, gold))
}

/// One N of the best-of-N curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfNPoint {
    pub n: usize,
    pub kl: f64,
    /// Mean over nodes of the expected proxy reward (ensemble mean) of the pick.
    pub proxy: f64,
    /// Mean over nodes of the expected labeler score of the pick.
    pub gold: f64,
    /// Standard errors over nodes.
    pub proxy_se: f64,
    pub gold_se: f64,
}

/// The best-of-N curve over stored nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfN {
    pub model: String,
    pub labeler: String,
    pub candidates: usize,
    pub nodes: usize,
    /// Nodes left out because the store's feedback is on them (the model may have seen them).
    pub excluded_seen: usize,
    pub by_height: BTreeMap<u32, usize>,
    pub points: Vec<BestOfNPoint>,
    pub created_unix: u64,
}

/// A node with sampled candidates: its input and `k` candidate texts from one candidate set.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledNode {
    pub input_key: String,
    pub height: u32,
    pub input: String,
    pub candidates: Vec<String>,
}

/// Nodes of the store with a candidate set of at least `k` distinct non-empty candidates
/// (the first `k` of the largest such set), leaving out nodes with stored feedback.
pub fn sampled_nodes(store: &Store, k: usize) -> Result<(Vec<SampledNode>, usize), EvalError> {
    let seen: BTreeSet<String> = crate::feedback::all(store)
        .map_err(|e| EvalError::Data(e.to_string()))?
        .into_iter()
        .map(|f| f.input_key)
        .collect();
    let mut best: BTreeMap<String, SampledNode> = BTreeMap::new();
    for (_, set) in store.scan::<CandidateSet>(Table::Candidates, "")? {
        let mut texts: Vec<String> = Vec::new();
        for c in &set.candidates {
            let t = c.text.trim();
            if !t.is_empty() && !texts.iter().any(|x| x == t) {
                texts.push(t.to_string());
            }
        }
        if texts.len() < k.max(2) {
            continue;
        }
        let keep = best.get(&set.input_key).is_none_or(|b| b.candidates.len() < texts.len());
        if keep {
            best.insert(
                set.input_key.clone(),
                SampledNode {
                    input_key: set.input_key.clone(),
                    height: set.height,
                    input: set.input.clone(),
                    candidates: texts,
                },
            );
        }
    }
    let before = best.len();
    let nodes: Vec<SampledNode> = best
        .into_values()
        .filter(|n| !seen.contains(&n.input_key))
        .map(|mut n| {
            n.candidates.truncate(k.max(2));
            n
        })
        .collect();
    let excluded = before - nodes.len();
    Ok((nodes, excluded))
}

/// The best-of-N curve of `model` (proxy) and `labeler` (gold) over `nodes`.
pub fn best_of_n(
    model: &RewardModel,
    encoder: &dyn Encoder,
    cache: Option<SharedCache>,
    labeler: &SimLabeler,
    nodes: &[SampledNode],
    excluded_seen: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<BestOfN, EvalError> {
    let k = nodes.iter().map(|n| n.candidates.len()).min().unwrap_or(0);
    if nodes.is_empty() || k < 2 {
        return Err(EvalError::Data(
            "no node has two or more sampled candidates (run `rrm summarize … --best-of K`)".into(),
        ));
    }
    model.check_encoder(encoder)?;
    let mut featurizer = Featurizer::new(encoder, cache);
    let mut per_node: Vec<Vec<(f64, f64)>> = Vec::with_capacity(nodes.len());
    let mut by_height = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        progress(i, nodes.len());
        let texts: Vec<&str> = node.candidates.iter().take(k).map(String::as_str).collect();
        let members = model.member_scores(&mut featurizer, node.height, &node.input, &texts)?;
        if members.is_empty() {
            continue;
        }
        let stats = mean_std(&members);
        per_node.push(
            texts
                .iter()
                .zip(stats)
                .map(|(t, (mean, _))| (f64::from(mean), labeler.score(&node.input, t)))
                .collect(),
        );
        *by_height.entry(node.height).or_insert(0usize) += 1;
    }
    let mut points = Vec::new();
    for n in 1..=k {
        let vals: Vec<(f64, f64)> =
            per_node.iter().filter_map(|s| expected_best_of(s, n)).collect();
        let m = vals.len().max(1) as f64;
        let mean = |f: fn(&(f64, f64)) -> f64| vals.iter().map(f).sum::<f64>() / m;
        let (mp, mg) = (mean(|v| v.0), mean(|v| v.1));
        let se = |f: fn(&(f64, f64)) -> f64, mu: f64| {
            if vals.len() < 2 {
                return 0.0;
            }
            (vals.iter().map(|v| (f(v) - mu).powi(2)).sum::<f64>() / (m - 1.0)).sqrt() / m.sqrt()
        };
        points.push(BestOfNPoint {
            n,
            kl: best_of_n_kl(n),
            proxy: mp,
            gold: mg,
            proxy_se: se(|v| v.0, mp),
            gold_se: se(|v| v.1, mg),
        });
    }
    Ok(BestOfN {
        model: model.card.hash.clone(),
        labeler: labeler.name.clone(),
        candidates: k,
        nodes: per_node.len(),
        excluded_seen,
        by_height,
        points,
        created_unix: crate::feedback::unix_now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_best_of_n() {
        assert_eq!(best_of_n_kl(1), 0.0);
        assert!((best_of_n_kl(4) - (4f64.ln() - 0.75)).abs() < 1e-12);
    }

    #[test]
    fn best_of_estimator_matches_enumeration() {
        // (proxy, gold) of five candidates; enumerate all N-subsets and average the pick.
        let s: [(f64, f64); 5] = [(0.1, 1.0), (0.5, 0.0), (0.3, 2.0), (0.9, 0.5), (0.7, 3.0)];
        for n in 1..=5 {
            let mut sum = (0.0, 0.0);
            let mut count = 0.0;
            for mask in 0u32..32 {
                if mask.count_ones() as usize != n {
                    continue;
                }
                let pick = (0..5)
                    .filter(|i| mask & (1 << i) != 0)
                    .max_by(|&a, &b| s[a].0.total_cmp(&s[b].0))
                    .unwrap();
                sum.0 += s[pick].0;
                sum.1 += s[pick].1;
                count += 1.0;
            }
            let (p, g) = expected_best_of(&s, n).unwrap();
            assert!((p - sum.0 / count).abs() < 1e-12, "n={n}");
            assert!((g - sum.1 / count).abs() < 1e-12, "n={n}");
        }
        assert!(expected_best_of(&s, 6).is_none());
        // N = 1 is the plain mean; N = K is the proxy's favourite.
        assert!((expected_best_of(&s, 1).unwrap().1 - 6.5 / 5.0).abs() < 1e-12);
        assert_eq!(expected_best_of(&s, 5).unwrap(), (0.9, 0.5));
    }

    #[test]
    fn sizes_double_up_to_the_pool() {
        assert_eq!(sizes(210), vec![25, 50, 100, 200, 210]);
        assert_eq!(sizes(25), vec![25]);
        assert_eq!(sizes(10), vec![10]);
        assert!(sizes(0).is_empty());
    }

    #[test]
    fn calibration_of_a_calibrated_predictor() {
        // Margins whose σ is the true win probability: observed ≈ predicted in every bin.
        let mut rng = SplitMix64::new(5);
        let mut margins = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..20_000 {
            let d = (rng.unit() * 8.0 - 4.0) as f32;
            let p = 1.0 / (1.0 + (-f64::from(d)).exp());
            margins.push(d);
            targets.push(if rng.unit() < p { 1.0 } else { 0.0 });
        }
        let (bins, ece) = calibration(0, &margins, &targets, 10, &mut rng);
        assert_eq!(bins.len(), 10);
        assert!(ece < 0.02, "ece {ece}");
        for b in &bins {
            assert!(b.low <= b.predicted && b.predicted <= b.high, "{b:?}");
        }
    }

    #[test]
    fn subsets_are_distinct() {
        let mut rng = SplitMix64::new(1);
        let s = subset(10, 7, &mut rng);
        let set: BTreeSet<usize> = s.iter().copied().collect();
        assert_eq!(set.len(), 7);
        assert!(s.iter().all(|&i| i < 10));
    }
}
