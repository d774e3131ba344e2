//! The exact segmentation dynamic program.
//!
//! Given a sequence of units with sizes and a score for cutting each gap between neighbours,
//! [`segment`] returns the cut set that maximizes
//!
//! ```text
//!   Σ_{cut gaps g} score[g]  −  Σ_{segments s} prior.cost(size(s))
//! ```
//!
//! subject to every segment's size lying in `[min, max]`. It is exact (not greedy): `best[j]` is
//! the best value of a segmentation of the first `j` units that ends a segment at `j`, and
//! `best[j] = max_i best[i] + score[i − 1] − cost(size(i..j))` over the starts `i` whose segment
//! fits. Time is O(n × w), `w` the most units a segment of size `max` holds.
//!
//! The same program cuts leaves (sizes: tokens) and groups nodes into parents (sizes: 1 per node).

/// Why no segmentation exists.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentError {
    #[error("segment limits are invalid: min {min} > max {max} or max is 0")]
    Limits { min: usize, max: usize },
    #[error("unit {index} has size {size}, more than the maximum segment size {max}")]
    UnitTooLarge { index: usize, size: usize, max: usize },
    #[error(
        "no segmentation of {units} units (total size {total}) has every segment within \
         [{min}, {max}]"
    )]
    Infeasible { units: usize, total: usize, min: usize, max: usize },
    #[error("{scores} gap scores given for {units} units (expected {})", units.saturating_sub(1))]
    Scores { units: usize, scores: usize },
}

/// A prior on segment size: `weight × (size / target − 1)²` is subtracted per segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthPrior {
    pub target: f64,
    pub weight: f64,
}

impl LengthPrior {
    pub const NONE: LengthPrior = LengthPrior { target: 1.0, weight: 0.0 };

    pub fn cost(&self, size: usize) -> f64 {
        if self.weight == 0.0 || self.target <= 0.0 {
            return 0.0;
        }
        let r = size as f64 / self.target - 1.0;
        self.weight * r * r
    }
}

/// The best segmentation (see the module docs): the exclusive end index of each segment, in
/// order (the last is `sizes.len()`). `scores[g]` is the score of cutting between unit `g` and
/// unit `g + 1`; a score of `-inf` forbids that cut. No units: no segments.
pub fn segment(
    sizes: &[usize],
    scores: &[f32],
    min: usize,
    max: usize,
    prior: LengthPrior,
) -> Result<Vec<usize>, SegmentError> {
    let n = sizes.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    if scores.len() + 1 != n {
        return Err(SegmentError::Scores { units: n, scores: scores.len() });
    }
    if max == 0 || min > max {
        return Err(SegmentError::Limits { min, max });
    }
    if let Some((index, &size)) = sizes.iter().enumerate().find(|(_, &s)| s > max) {
        return Err(SegmentError::UnitTooLarge { index, size, max });
    }
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0usize);
    for &s in sizes {
        prefix.push(prefix[prefix.len() - 1] + s);
    }
    let mut best = vec![f64::NEG_INFINITY; n + 1];
    let mut from = vec![usize::MAX; n + 1];
    best[0] = 0.0;
    for j in 1..=n {
        // Starts i = j-1, j-2, ... while the segment i..j fits under max.
        let mut i = j;
        while i > 0 {
            i -= 1;
            let size = prefix[j] - prefix[i];
            if size > max {
                break;
            }
            if size < min || best[i] == f64::NEG_INFINITY {
                continue;
            }
            let cut = if i == 0 { 0.0 } else { f64::from(scores[i - 1]) };
            if cut == f64::NEG_INFINITY || cut.is_nan() {
                continue;
            }
            let value = best[i] + cut - prior.cost(size);
            if value > best[j] {
                best[j] = value;
                from[j] = i;
            }
        }
    }
    if best[n] == f64::NEG_INFINITY {
        return Err(SegmentError::Infeasible { units: n, total: prefix[n], min, max });
    }
    let mut ends = Vec::new();
    let mut j = n;
    while j > 0 {
        ends.push(j);
        j = from[j];
    }
    ends.reverse();
    Ok(ends)
}

/// The objective [`segment`] maximizes, for a given segmentation (ends as it returns them).
pub fn objective(sizes: &[usize], scores: &[f32], ends: &[usize], prior: LengthPrior) -> f64 {
    let mut value = 0.0;
    let mut start = 0;
    for &end in ends {
        if start > 0 {
            value += f64::from(scores[start - 1]);
        }
        value -= prior.cost(sizes[start..end].iter().sum());
        start = end;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every segmentation of n units (as end lists), by brute force over cut subsets.
    fn all_segmentations(n: usize) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        for mask in 0u32..(1 << (n - 1)) {
            let mut ends: Vec<usize> =
                (0..n - 1).filter(|g| mask & (1 << g) != 0).map(|g| g + 1).collect();
            ends.push(n);
            out.push(ends);
        }
        out
    }

    fn fits(sizes: &[usize], ends: &[usize], min: usize, max: usize) -> bool {
        let mut start = 0;
        ends.iter().all(|&end| {
            let s: usize = sizes[start..end].iter().sum();
            start = end;
            (min..=max).contains(&s)
        })
    }

    /// A small deterministic generator for test cases.
    fn lcg(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn exact_optimum_matches_brute_force() {
        let mut state = 7u64;
        for case in 0..400 {
            let n = 1 + (lcg(&mut state) % 11) as usize;
            let sizes: Vec<usize> = (0..n).map(|_| 1 + (lcg(&mut state) % 9) as usize).collect();
            let scores: Vec<f32> =
                (0..n - 1).map(|_| (lcg(&mut state) % 200) as f32 / 20.0 - 5.0).collect();
            let min = (lcg(&mut state) % 8) as usize;
            let max = min.max(9) + (lcg(&mut state) % 10) as usize;
            let prior = LengthPrior {
                target: 5.0 + (lcg(&mut state) % 10) as f64,
                weight: (lcg(&mut state) % 3) as f64,
            };
            let brute = all_segmentations(n)
                .into_iter()
                .filter(|e| fits(&sizes, e, min, max))
                .map(|e| objective(&sizes, &scores, &e, prior))
                .fold(f64::NEG_INFINITY, f64::max);
            match segment(&sizes, &scores, min, max, prior) {
                Ok(ends) => {
                    assert!(fits(&sizes, &ends, min, max), "case {case}: {ends:?} breaks limits");
                    let got = objective(&sizes, &scores, &ends, prior);
                    assert!((got - brute).abs() < 1e-6, "case {case}: dp {got} vs brute {brute}");
                }
                Err(SegmentError::Infeasible { .. }) => {
                    assert_eq!(brute, f64::NEG_INFINITY, "case {case}: dp found none");
                }
                Err(other) => panic!("case {case}: {other}"),
            }
        }
    }

    #[test]
    fn picks_high_scores_within_limits() {
        // Six units of 10; cutting after unit 2 is the only good cut.
        let sizes = [10; 6];
        let scores = [-1.0, -1.0, 5.0, -1.0, -1.0];
        assert_eq!(segment(&sizes, &scores, 10, 40, LengthPrior::NONE).unwrap(), vec![3, 6]);
        // A max of 20 forces more cuts; the good one is still taken.
        let ends = segment(&sizes, &scores, 10, 20, LengthPrior::NONE).unwrap();
        assert!(ends.contains(&3) && fits(&sizes, &ends, 10, 20), "{ends:?}");
        // A forbidden cut is never taken.
        let forbid = [-1.0, -1.0, f32::NEG_INFINITY, -1.0, -1.0];
        let ends = segment(&sizes, &forbid, 10, 30, LengthPrior::NONE).unwrap();
        assert!(!ends.contains(&3), "{ends:?}");
    }

    #[test]
    fn infeasible_inputs_are_clear_errors() {
        let err = segment(&[5, 30, 5], &[0.0, 0.0], 10, 34, LengthPrior::NONE).unwrap_err();
        assert!(matches!(err, SegmentError::Infeasible { units: 3, total: 40, .. }), "{err}");
        assert!(err.to_string().contains("[10, 34]"), "{err}");
        let err = segment(&[5, 50], &[0.0], 1, 40, LengthPrior::NONE).unwrap_err();
        assert_eq!(err, SegmentError::UnitTooLarge { index: 1, size: 50, max: 40 });
        let err = segment(&[5, 5], &[0.0], 9, 3, LengthPrior::NONE).unwrap_err();
        assert!(matches!(err, SegmentError::Limits { .. }));
        let err = segment(&[5, 5], &[], 1, 10, LengthPrior::NONE).unwrap_err();
        assert!(matches!(err, SegmentError::Scores { .. }));
        assert_eq!(segment(&[], &[], 1, 10, LengthPrior::NONE).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn prior_prefers_target_sizes() {
        let sizes = [1; 12];
        let scores = [0.0; 11];
        let prior = LengthPrior { target: 4.0, weight: 1.0 };
        assert_eq!(segment(&sizes, &scores, 1, 12, prior).unwrap(), vec![4, 8, 12]);
    }
}
