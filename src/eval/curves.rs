//! Reward-model learning curves and calibration from stored feedback, and best-of-N
//! over-optimization from stored candidates.
//!
//! **Learning curve.** The feedback's preference pairs are split once, by the trainers' own
//! rule ([`crate::feedback::groups::held_out`]), into a test set (a quarter of the books; with
//! a single book, a quarter of its nodes, and the result says so), a validation set (the
//! config's `val_percent` of the books) and a training pool. For each height and each size `n`
//! (doubling from 25 up to the pool), `repeats` random subsets of `n` pool pairs train a reward
//! ensemble as `rrm reward train` trains a height's (`train::train_ensemble_with`, the
//! validation pairs choosing the epoch), on exactly those `n` pairs, and its accuracy and
//! log-loss on the test pairs of that height are recorded. Test and validation stay the same
//! for every `n`. The largest model of each height
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
use crate::reward::model::{mean_std, Heads, Scope};
use crate::reward::train::{self, TrainConfig};
use crate::reward::{pair_tensors, prepare_pairs, RewardModel};
use crate::store::{Store, Table};

/// One trained model of a learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub height: u32,
    /// Training pairs the model was trained on (validation and test pairs not included).
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
    /// Training pairs per height: the largest `n`, from which every subset is drawn.
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

/// The fixed split of a learning curve: test and validation held out once, every training
/// subset drawn from `train`.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveSplit {
    /// `book` or `node` (see [`LearningCurve::split`]).
    pub split: &'static str,
    pub test_groups: usize,
    pub val_groups: usize,
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
    pub test: Vec<Pair>,
}

/// Share of groups the learning curve holds out as its test set, in percent.
const CURVE_TEST_PERCENT: u32 = 25;

/// Splits `pairs` once for a learning curve by the trainers' split
/// ([`crate::feedback::groups::held_out`]): a quarter of the groups to test, `val_percent` to
/// validation (it chooses each model's epoch), the rest to train. With a single group, whole
/// nodes are held out instead (never single rows of a node).
pub fn curve_split(pairs: &[Pair], val_percent: u32) -> Result<CurveSplit, EvalError> {
    let none = BTreeSet::new();
    let held = |pairs: &[Pair]| {
        crate::feedback::groups::held_out(
            pairs.iter().map(|p| p.group.as_str()),
            val_percent,
            CURVE_TEST_PERCENT,
            &none,
            &none,
        )
    };
    let mut pairs = pairs.to_vec();
    let mut split = "book";
    let mut held_out = held(&pairs);
    if held_out.test.is_empty() {
        split = "node";
        for p in &mut pairs {
            p.group = blake3::hash(p.input.as_bytes()).to_hex()[..16].to_string();
        }
        held_out = held(&pairs);
    }
    if held_out.test.is_empty() {
        return Err(EvalError::Data("all pairs are on one node: nothing to hold out".into()));
    }
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for p in pairs {
        if held_out.test.contains(&p.group) {
            test.push(p);
        } else if held_out.val.contains(&p.group) {
            val.push(p);
        } else {
            train.push(p);
        }
    }
    Ok(CurveSplit {
        split,
        test_groups: held_out.test.len(),
        val_groups: held_out.val.len(),
        train,
        val,
        test,
    })
}

/// Computes the learning curve of `pairs` (see the module docs).
pub fn learning_curve(
    encoder: &dyn Encoder,
    cache: Option<SharedCache>,
    pairs: &[Pair],
    repeats: usize,
    config: &TrainConfig,
    progress: impl FnMut(&CurvePoint),
) -> Result<LearningCurve, EvalError> {
    if pairs.is_empty() {
        return Err(EvalError::Data(
            "no preference pairs in the stored feedback (run `rrm feedback simulate` or rate nodes)"
                .into(),
        ));
    }
    let split = curve_split(pairs, config.val_percent)?;
    let mut featurizer = Featurizer::new(encoder, cache);
    for set in [&split.train, &split.val, &split.test] {
        prepare_pairs(&mut featurizer, set)?;
    }
    let featurizer = featurizer;
    let dim = featurizer.dim();
    // One ensemble per model, trained as `rrm reward train` trains a height's
    // (`train_ensemble_with`), on exactly the subset given, the validation set choosing the
    // epoch; its margins on the test pairs.
    let fit = |cfg: &TrainConfig, h: u32, tr: &[&Pair], va: &[&Pair], te: &[&Pair]| {
        let scope = if cfg.shared { Scope::Shared } else { Scope::Height(h) };
        let tr = pair_tensors(&featurizer, tr)?;
        let va = if va.is_empty() { None } else { Some(pair_tensors(&featurizer, va)?) };
        let (members, _) =
            train::train_ensemble_with(&tr, None, va.as_ref(), None, dim, scope, cfg)?;
        let heads = Heads { by_scope: BTreeMap::from([(scope, members)]) };
        let te = pair_tensors(&featurizer, te)?;
        Ok::<_, EvalError>((train::ensemble_margins(&heads, &te)?, te.target))
    };
    curve_from(split, repeats, config, fit, progress)
}

/// The learning curve over a fixed `split`: for each height and size `n`, `repeats` subsets of
/// `n` of the height's training pairs (`n` is the number of pairs the model trains on), each
/// fitted by `fit` against the same validation and test pairs.
fn curve_from(
    split: CurveSplit,
    repeats: usize,
    config: &TrainConfig,
    mut fit: impl FnMut(
        &TrainConfig,
        u32,
        &[&Pair],
        &[&Pair],
        &[&Pair],
    ) -> Result<(Vec<f32>, Vec<f32>), EvalError>,
    mut progress: impl FnMut(&CurvePoint),
) -> Result<LearningCurve, EvalError> {
    let heights: BTreeSet<u32> = split.train.iter().map(|p| p.height).collect();
    tracing::info!(
        "learning curve: {} training, {} validation ({} group(s)), {} test pairs ({} group(s))",
        split.train.len(),
        split.val.len(),
        split.val_groups,
        split.test.len(),
        split.test_groups
    );
    let mut out = LearningCurve {
        split: split.split.into(),
        test_groups: split.test_groups,
        train_pool: BTreeMap::new(),
        points: Vec::new(),
        calibration: Vec::new(),
        ece: BTreeMap::new(),
        config: config.clone(),
        created_unix: crate::feedback::unix_now(),
    };
    let mut rng = SplitMix64::new(config.seed ^ 0x5eed);
    for h in heights {
        let train_h: Vec<&Pair> = split.train.iter().filter(|p| p.height == h).collect();
        let val_h: Vec<&Pair> = split.val.iter().filter(|p| p.height == h).collect();
        let test_h: Vec<&Pair> = split.test.iter().filter(|p| p.height == h).collect();
        out.train_pool.insert(h, train_h.len());
        if test_h.is_empty() {
            tracing::warn!("height {h} has no held-out pairs: no learning curve for it");
            continue;
        }
        let all_sizes = sizes(train_h.len());
        for (si, &n) in all_sizes.iter().enumerate() {
            let last = si + 1 == all_sizes.len();
            // The whole pool is one subset however often it is drawn.
            let reps = if n == train_h.len() { 1 } else { repeats.max(1) };
            for r in 0..reps {
                let sub: Vec<&Pair> =
                    subset(train_h.len(), n, &mut rng).into_iter().map(|i| train_h[i]).collect();
                let cfg =
                    TrainConfig { seed: config.seed.wrapping_add(r as u64), ..config.clone() };
                let (margins, targets) = fit(&cfg, h, &sub, &val_h, &test_h)?;
                let m = train::metrics(&margins, &targets);
                let point = CurvePoint {
                    height: h,
                    n: sub.len(),
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
                    let (bins, ece) = calibration(h, &margins, &targets, nbins, &mut rng);
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

    #[test]
    fn curve_models_train_on_n_pairs_of_the_training_split_against_fixed_held_out_sets() {
        // 60 books of 5 pairs each at height 0, 10 books of 2 pairs at height 1.
        let pairs: Vec<Pair> = (0..60)
            .flat_map(|b| (0..5).map(move |i| (0, b, i)))
            .chain((0..10).flat_map(|b| (0..2).map(move |i| (1, b, i))))
            .map(|(h, b, i)| {
                Pair::new(h, &format!("input {h} {b} {i}"), "c", "r", 1.0, &format!("book{b}"))
            })
            .collect();
        let split = curve_split(&pairs, 20).unwrap();
        assert_eq!(split.split, "book");
        assert!(split.test_groups > 0 && split.val_groups > 0);
        assert_eq!(split.train.len() + split.val.len() + split.test.len(), pairs.len());
        let groups = |v: &[Pair]| v.iter().map(|p| p.group.clone()).collect::<BTreeSet<_>>();
        let (train_g, val_g, test_g) =
            (groups(&split.train), groups(&split.val), groups(&split.test));
        assert!(train_g.is_disjoint(&val_g) && train_g.is_disjoint(&test_g));
        assert!(val_g.is_disjoint(&test_g));
        let config = TrainConfig { seed: 3, ..TrainConfig::default() };
        let mut calls = Vec::new();
        let fit = |_: &TrainConfig, h: u32, tr: &[&Pair], va: &[&Pair], te: &[&Pair]| {
            calls.push((
                h,
                tr.iter().map(|p| p.input.clone()).collect::<Vec<_>>(),
                va.iter().map(|p| p.input.clone()).collect::<Vec<_>>(),
                te.iter().map(|p| p.input.clone()).collect::<Vec<_>>(),
            ));
            Ok((vec![1.0; te.len()], vec![1.0; te.len()]))
        };
        let lc = curve_from(split.clone(), 2, &config, fit, |_| {}).unwrap();
        assert_eq!(lc.points.len(), calls.len());
        let train_inputs: BTreeSet<&str> = split.train.iter().map(|p| p.input.as_str()).collect();
        for (point, (h, tr, va, te)) in lc.points.iter().zip(&calls) {
            assert_eq!(point.height, *h);
            // n is exactly what the model trained on, all of it from the training split.
            assert_eq!(point.n, tr.len());
            assert!(tr.iter().all(|i| train_inputs.contains(i.as_str())));
            assert_eq!(tr.iter().collect::<BTreeSet<_>>().len(), tr.len());
            // Validation and test are the same for every n.
            let at = |v: &[Pair]| {
                v.iter().filter(|p| p.height == *h).map(|p| p.input.clone()).collect::<Vec<_>>()
            };
            assert_eq!(va, &at(&split.val));
            assert_eq!(te, &at(&split.test));
            assert_eq!(point.test_pairs, te.len());
        }
        // The largest n of a height is its whole training split.
        for (h, &pool) in &lc.train_pool {
            let in_train = split.train.iter().filter(|p| p.height == *h).count();
            assert_eq!(pool, in_train);
            let largest = lc.points.iter().filter(|p| p.height == *h).map(|p| p.n).max();
            assert!(largest.is_none() || largest == Some(pool), "h{h}: {largest:?} vs {pool}");
        }
        assert!(lc.points.iter().any(|p| p.height == 0 && p.n == 25));
    }

    #[test]
    fn a_single_book_holds_out_whole_nodes() {
        let pairs: Vec<Pair> = (0..40)
            .map(|i| Pair::new(0, &format!("node {}", i / 4), "c", &format!("r{i}"), 1.0, "book1"))
            .collect();
        let split = curve_split(&pairs, 20).unwrap();
        assert_eq!(split.split, "node");
        let nodes = |v: &[Pair]| v.iter().map(|p| p.input.clone()).collect::<BTreeSet<_>>();
        assert!(nodes(&split.train).is_disjoint(&nodes(&split.test)));
        assert!(nodes(&split.train).is_disjoint(&nodes(&split.val)));
        let one: Vec<Pair> = pairs.iter().filter(|p| p.input == "node 0").cloned().collect();
        assert!(curve_split(&one, 20).is_err());
    }
}
