//! The paired bootstrap (Efron & Tibshirani 1993; Koehn 2004 for MT): a confidence interval
//! for the mean difference of two systems scored on the same documents, and the win rate.
//!
//! Resamples the documents with replacement `resamples` times and takes the percentiles of
//! the resampled mean differences. The random numbers come from SplitMix64 seeded by the
//! caller, written here so the same seed gives the same interval on every platform and every
//! version of every dependency.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea & Flood 2014): a small, fast generator with a fixed definition.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias below 2^-32 for our n).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A paired comparison of one metric: mean difference (A − B) with its interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDiff {
    /// Documents scored by both.
    pub n: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    /// mean(A − B).
    pub diff: f64,
    /// The percentile interval of the resampled mean difference.
    pub low: f64,
    pub high: f64,
    /// Coverage of the interval (0.95).
    pub level: f64,
    /// Share of documents where A scores higher than B (ties count one half).
    pub win_rate: f64,
    pub resamples: usize,
    pub seed: u64,
}

impl PairedDiff {
    /// Whether the interval excludes zero.
    pub fn significant(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// The `q`-quantile (0..=1) of sorted values, linearly interpolated (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The paired bootstrap of `a` against `b` (the same documents in the same order). `None`
/// when there are no pairs or the lengths differ.
pub fn paired(a: &[f64], b: &[f64], resamples: usize, level: f64, seed: u64) -> Option<PairedDiff> {
    if a.is_empty() || a.len() != b.len() {
        return None;
    }
    let n = a.len();
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let resamples = resamples.max(1);
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| d[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let wins: f64 = d
        .iter()
        .map(|&x| {
            if x > 0.0 {
                1.0
            } else if x == 0.0 {
                0.5
            } else {
                0.0
            }
        })
        .sum();
    Some(PairedDiff {
        n,
        mean_a: mean(a),
        mean_b: mean(b),
        diff: mean(&d),
        low: quantile(&means, tail),
        high: quantile(&means, 1.0 - tail),
        level,
        win_rate: wins / n as f64,
        resamples,
        seed,
    })
}

/// A percentile bootstrap interval of the mean of `values` (for one run's own figures).
pub fn mean_interval(
    values: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    let zeros = vec![0.0; values.len()];
    paired(values, &zeros, resamples, level, seed).map(|p| (p.low, p.high))
}

/// A percentile bootstrap interval of the mean of `values` when they come in groups that are
/// not independent (pairs cut from one article, nodes of one book): each resample draws whole
/// groups with replacement and takes the mean over every value of the drawn groups. With one
/// value per group it is the ordinary bootstrap; `None` without values.
pub fn clustered_mean_interval(
    values: &[f64],
    groups: &[&str],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if values.is_empty() || values.len() != groups.len() || resamples == 0 {
        return None;
    }
    let mut by_group: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for (&v, &g) in values.iter().zip(groups) {
        let e = by_group.entry(g).or_insert((0.0, 0));
        e.0 += v;
        e.1 += 1;
    }
    let sums: Vec<(f64, usize)> = by_group.into_values().collect();
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let (mut total, mut n) = (0.0, 0usize);
            for _ in 0..sums.len() {
                let (s, k) = sums[rng.below(sums.len())];
                total += s;
                n += k;
            }
            total / n.max(1) as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Some((quantile(&means, tail), quantile(&means, 1.0 - tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clustered_intervals_widen_when_groups_move_together() {
        // 20 groups of 10 identical values (all right or all wrong): in effect 20 observations,
        // not 200, so the interval is as wide as the ordinary bootstrap over 20 values.
        let mut values = Vec::new();
        let mut groups = Vec::new();
        let names: Vec<String> = (0..20).map(|g| format!("g{g}")).collect();
        for (g, name) in names.iter().enumerate() {
            for _ in 0..10 {
                values.push(if g % 2 == 0 { 1.0 } else { 0.0 });
                groups.push(name.as_str());
            }
        }
        let (lo, hi) = clustered_mean_interval(&values, &groups, 4000, 0.95, 1).unwrap();
        let each: Vec<String> = (0..values.len()).map(|i| format!("p{i}")).collect();
        let each: Vec<&str> = each.iter().map(String::as_str).collect();
        let (plo, phi) = clustered_mean_interval(&values, &each, 4000, 0.95, 1).unwrap();
        assert!(hi - lo > 2.0 * (phi - plo), "clustered [{lo}, {hi}] vs pairs [{plo}, {phi}]");
        assert!(lo < 0.5 && 0.5 < hi);
        assert!(clustered_mean_interval(&[], &[], 100, 0.95, 1).is_none());
    }

    #[test]
    fn splitmix_matches_its_reference_values() {
        // The first outputs for seed 1234567 as published with the algorithm.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }

    #[test]
    fn seeded_and_reproducible() {
        let a = [0.31, 0.28, 0.35, 0.22, 0.40, 0.33, 0.29, 0.27];
        let b = [0.30, 0.25, 0.30, 0.24, 0.35, 0.31, 0.30, 0.20];
        let p = paired(&a, &b, 2000, 0.95, 7).unwrap();
        let q = paired(&a, &b, 2000, 0.95, 7).unwrap();
        assert_eq!(p, q);
        assert!((p.diff - 0.025).abs() < 1e-12);
        assert!(p.low < p.diff && p.diff < p.high, "{p:?}");
        assert_eq!(p.win_rate, 6.0 / 8.0);
        // A different seed moves the interval's ends, not the mean.
        let r = paired(&a, &b, 2000, 0.95, 8).unwrap();
        assert_eq!(r.diff, p.diff);
        assert_ne!((r.low, r.high), (p.low, p.high));
    }

    #[test]
    fn interval_width_matches_the_normal_approximation() {
        // Differences with mean 0.1 and sd ~0.2 over 400 documents: the 95% interval should
        // be about ±1.96·0.2/√400 = ±0.0196 around the mean.
        let mut rng = SplitMix64::new(3);
        let d: Vec<f64> = (0..400)
            .map(|_| {
                // Sum of 12 uniforms − 6: approximately standard normal.
                let z: f64 = (0..12).map(|_| rng.unit()).sum::<f64>() - 6.0;
                0.1 + 0.2 * z
            })
            .collect();
        let zeros = vec![0.0; d.len()];
        let p = paired(&d, &zeros, 4000, 0.95, 11).unwrap();
        let sd = (d.iter().map(|x| (x - p.diff).powi(2)).sum::<f64>() / 399.0).sqrt();
        let half = (p.high - p.low) / 2.0;
        let expect = 1.96 * sd / 20.0;
        assert!((half - expect).abs() < 0.15 * expect, "half {half} vs {expect}");
        assert!(p.significant());
    }

    #[test]
    fn constant_differences_and_bad_input() {
        let p = paired(&[1.0, 2.0, 3.0], &[0.5, 1.5, 2.5], 100, 0.95, 0).unwrap();
        assert!((p.low - 0.5).abs() < 1e-12 && (p.high - 0.5).abs() < 1e-12);
        assert_eq!(p.win_rate, 1.0);
        let tie = paired(&[1.0], &[1.0], 10, 0.95, 0).unwrap();
        assert_eq!(tie.win_rate, 0.5);
        assert!(!tie.significant());
        assert!(paired(&[], &[], 10, 0.95, 0).is_none());
        assert!(paired(&[1.0], &[1.0, 2.0], 10, 0.95, 0).is_none());
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
    }
}
