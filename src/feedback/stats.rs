//! Counts for the progress page and agreement per tree height: percent agreement and
//! Krippendorff's α (nominal) over the pairs of texts that two or more labelers compared.
//!
//! A *unit* is one pair of texts of one node (input key, the two hashes, unordered); its value
//! from a labeler is which text won (or a tie), each labeler's latest judgment counting once.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Feedback, FeedbackKind, Preference};

/// How much feedback someone (or some height) has, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: usize,
    /// kind name (`comparison`, `likert`, …) → records.
    pub by_kind: BTreeMap<String, usize>,
}

impl Counts {
    fn add(&mut self, kind: &str) {
        self.total += 1;
        *self.by_kind.entry(kind.to_string()).or_default() += 1;
    }

    pub fn of(&self, kind: &str) -> usize {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }
}

/// Feedback counted per labeler and per height.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub total: usize,
    pub by_labeler: BTreeMap<String, Counts>,
    pub by_height: BTreeMap<u32, Counts>,
    /// kind name → how long answers of that kind took, over the records that say.
    #[serde(default)]
    pub time_to_judge: BTreeMap<String, TimeToJudge>,
}

/// Time to judge of one kind of answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeToJudge {
    /// Answers of this kind that carry a time.
    pub timed: usize,
    /// Their median, in milliseconds (rounded); `None` when none is timed.
    pub median_ms: Option<u64>,
}

/// The kind name decomposition comparisons are counted under.
pub const DECOMPOSITION: &str = "decomposition";

/// The median of `ms` (the rounded mean of the middle two for an even count).
pub fn median_ms(mut ms: Vec<u64>) -> Option<u64> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_unstable();
    let m = ms.len() / 2;
    Some(if ms.len() % 2 == 1 { ms[m] } else { (ms[m - 1] + ms[m]).div_ceil(2) })
}

/// Counts `records` per labeler and height, and decomposition comparisons per labeler (they
/// belong to no tree height), with the median time to judge of every kind.
pub fn progress_all(
    records: &[Feedback],
    decompositions: &[super::decomp::DecompComparison],
) -> Progress {
    let mut out = progress(records);
    let mut times: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for fb in records {
        if let Some(ms) = fb.judge_ms {
            times.entry(fb.kind.name().to_string()).or_default().push(ms);
        }
    }
    for d in decompositions {
        out.total += 1;
        out.by_labeler.entry(d.labeler.clone()).or_default().add(DECOMPOSITION);
        if let Some(ms) = d.judge_ms {
            times.entry(DECOMPOSITION.to_string()).or_default().push(ms);
        }
    }
    out.time_to_judge = times
        .into_iter()
        .map(|(kind, ms)| (kind, TimeToJudge { timed: ms.len(), median_ms: median_ms(ms) }))
        .collect();
    out
}

/// Counts `records` per labeler and per height.
pub fn progress(records: &[Feedback]) -> Progress {
    let mut out = Progress::default();
    for fb in records {
        out.total += 1;
        out.by_labeler.entry(fb.labeler.clone()).or_default().add(fb.kind.name());
        out.by_height.entry(fb.height).or_default().add(fb.kind.name());
    }
    out
}

/// Agreement at one tree height.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeightAgreement {
    /// Pairs of texts compared by at least two labelers.
    pub shared_pairs: usize,
    /// Pairs of judgments by different labelers on the same texts.
    pub judgment_pairs: usize,
    /// Of those, how many agree (same winner, or both tie).
    pub agreeing: usize,
    /// `agreeing / judgment_pairs`, when there is any.
    pub rate: Option<f64>,
    /// Krippendorff's α (nominal: first text, second text, tie), over the shared pairs; `None`
    /// when it is undefined (no shared pair, or every judgment the same value).
    pub alpha: Option<f64>,
}

/// Winner of one judgment, relative to the unit's ordered pair (lower hash first).
const LOWER: u8 = 0;
const HIGHER: u8 = 1;
const TIE: u8 = 2;

/// Agreement per height over comparisons (each labeler's latest judgment of a pair counts).
pub fn agreement_by_height(records: &[Feedback]) -> BTreeMap<u32, HeightAgreement> {
    // (input key, lower hash, higher hash) → (height, labeler → value).
    type Unit = (u32, BTreeMap<String, u8>);
    let mut units: HashMap<(String, String, String), Unit> = HashMap::new();
    for fb in records {
        if let FeedbackKind::Comparison { a, b, prefer, .. } = &fb.kind {
            let a_is_lower = a.hash <= b.hash;
            let (lo, hi) = if a_is_lower { (&a.hash, &b.hash) } else { (&b.hash, &a.hash) };
            let value = match (prefer, a_is_lower) {
                (Preference::Tie, _) => TIE,
                (Preference::A, true) | (Preference::B, false) => LOWER,
                _ => HIGHER,
            };
            units
                .entry((fb.input_key.clone(), lo.clone(), hi.clone()))
                .or_insert_with(|| (fb.height, BTreeMap::new()))
                .1
                .insert(fb.labeler.clone(), value);
        }
    }
    let mut per_height: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (height, labelers) in units.into_values() {
        if labelers.len() >= 2 {
            per_height.entry(height).or_default().push(labelers.into_values().collect());
        }
    }
    per_height
        .into_iter()
        .map(|(height, units)| {
            let mut out = HeightAgreement { shared_pairs: units.len(), ..Default::default() };
            for values in &units {
                for i in 0..values.len() {
                    for j in i + 1..values.len() {
                        out.judgment_pairs += 1;
                        out.agreeing += usize::from(values[i] == values[j]);
                    }
                }
            }
            out.rate =
                (out.judgment_pairs > 0).then(|| out.agreeing as f64 / out.judgment_pairs as f64);
            out.alpha = krippendorff_alpha_nominal(&units);
            (height, out)
        })
        .collect()
}

/// Krippendorff's α for nominal data: each unit is the values its coders gave (units with fewer
/// than two values are not pairable and are ignored). α = 1 − D_o / D_e, computed from the
/// coincidence matrix: `(n − 1) · Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k`. `None` when undefined (no
/// pairable value, or a single value used throughout, so no disagreement is expected).
pub fn krippendorff_alpha_nominal<V: Ord + Clone>(units: &[Vec<V>]) -> Option<f64> {
    // Coincidences o_ck, and their marginals n_c.
    let mut o: BTreeMap<(V, V), f64> = BTreeMap::new();
    for values in units.iter().filter(|v| v.len() >= 2) {
        let weight = 1.0 / (values.len() - 1) as f64;
        for (i, c) in values.iter().enumerate() {
            for (j, k) in values.iter().enumerate() {
                if i != j {
                    *o.entry((c.clone(), k.clone())).or_default() += weight;
                }
            }
        }
    }
    let mut n_c: BTreeMap<V, f64> = BTreeMap::new();
    for ((c, _), w) in &o {
        *n_c.entry(c.clone()).or_default() += w;
    }
    let n: f64 = n_c.values().sum();
    if n <= 1.0 {
        return None;
    }
    let observed: f64 = o.iter().filter(|((c, k), _)| c != k).map(|(_, w)| w).sum();
    let mut expected = 0.0;
    for (c, nc) in &n_c {
        for (k, nk) in &n_c {
            if c != k {
                expected += nc * nk;
            }
        }
    }
    if expected == 0.0 {
        return None;
    }
    Some(1.0 - (n - 1.0) * observed / expected)
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_counts_decompositions_and_times_every_kind() {
        use crate::feedback::decomp::{tests::sample, DecompAnswer};
        let fb = |ms| cmp("ann", "k", 0, "a", "b", Preference::A).timed(ms);
        let records = vec![fb(Some(1000)), fb(Some(3000)), fb(None)];
        let d = sample(DecompAnswer::Prefer { prefer: Preference::A, confidence: 5 });
        let p = progress_all(&records, &[d]);
        assert_eq!(p.total, 4);
        assert_eq!(p.by_labeler["ann"].of(DECOMPOSITION), 1);
        assert_eq!(p.time_to_judge["comparison"], TimeToJudge { timed: 2, median_ms: Some(2000) });
        assert_eq!(p.time_to_judge[DECOMPOSITION].median_ms, Some(4200));
        assert_eq!(median_ms(vec![]), None);
    }

    use super::*;
    use crate::feedback::{Feedback, FeedbackKind, Judged};

    fn cmp(labeler: &str, key: &str, height: u32, a: &str, b: &str, p: Preference) -> Feedback {
        Feedback::new(
            labeler,
            key,
            "input",
            height,
            FeedbackKind::Comparison {
                a: Judged::new(a),
                b: Judged::new(b),
                prefer: p,
                confidence: 5,
            },
        )
    }

    #[test]
    fn alpha_matches_krippendorffs_worked_example() {
        // Krippendorff (2011), "Computing Krippendorff's alpha-reliability": the nominal
        // example with missing values, 4 observers and 12 units, α = 0.743 (unit 12 holds one
        // value and is not pairable).
        let units: Vec<Vec<u8>> = vec![
            vec![1, 1, 1],
            vec![2, 2, 3, 2],
            vec![3, 3, 3, 3],
            vec![3, 3, 3, 3],
            vec![2, 2, 2, 2],
            vec![1, 2, 3, 4],
            vec![4, 4, 4, 4],
            vec![1, 1, 2, 1],
            vec![2, 2, 2, 2],
            vec![5, 5, 5],
            vec![1, 1],
            vec![3],
        ];
        let alpha = krippendorff_alpha_nominal(&units).unwrap();
        assert!((alpha - 0.743).abs() < 0.001, "{alpha}");
        // Perfect agreement with variation across units: 1. One value everywhere: undefined.
        assert_eq!(krippendorff_alpha_nominal(&[vec![1, 1], vec![2, 2]]), Some(1.0));
        assert_eq!(krippendorff_alpha_nominal(&[vec![1, 1], vec![1, 1]]), None);
        assert_eq!(krippendorff_alpha_nominal::<u8>(&[vec![1]]), None);
    }

    #[test]
    fn agreement_per_height_reads_winners_not_positions() {
        let records = vec![
            cmp("ann", "k0", 0, "s1", "s2", Preference::A),
            // Same pair, shown the other way round, same winner.
            cmp("bob", "k0", 0, "s2", "s1", Preference::B),
            cmp("ann", "k1", 0, "s3", "s4", Preference::A),
            cmp("bob", "k1", 0, "s3", "s4", Preference::B),
            cmp("ann", "k2", 1, "s5", "s6", Preference::Tie),
            cmp("cy", "k2", 1, "s5", "s6", Preference::Tie),
            // Compared once only: not shared.
            cmp("ann", "k3", 1, "s7", "s8", Preference::A),
        ];
        let by_height = agreement_by_height(&records);
        let h0 = &by_height[&0];
        assert_eq!((h0.shared_pairs, h0.judgment_pairs, h0.agreeing), (2, 2, 1));
        assert_eq!(h0.rate, Some(0.5));
        assert!(h0.alpha.is_some());
        let h1 = &by_height[&1];
        assert_eq!((h1.shared_pairs, h1.agreeing), (1, 1));
        // Only ties at height 1: α is undefined.
        assert_eq!(h1.alpha, None);
        let p = progress(&records);
        assert_eq!(p.total, 7);
        assert_eq!(p.by_labeler["ann"].of("comparison"), 4);
        assert_eq!(p.by_height[&1].total, 3);
    }
}
