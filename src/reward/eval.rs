//! Honest evaluation: a reward model's accuracy, log-loss and calibration on pairs, always
//! beside two baselines that read no model, and again on the length-balanced pairs.
//!
//! - **length**: the longer text (in words) wins. People's preferences correlate with length,
//!   so a model that only learned "longer is better" must not look good.
//! - **overlap**: the text with the higher word overlap (mean of unigram and bigram F1) with
//!   the pair's human reference summaries wins; without references, overlap with the input.
//! - **length-balanced**: the pairs whose two texts are within 10% of each other in length
//!   (words), where the length baseline has nothing to go on.
//!
//! - **by kind**: when the pairs come from more than one kind of feedback (a person's
//!   comparison, a person's demonstration, a script's synthetic judgement…), every kind again on
//!   its own, so a figure over people's comparisons is never mixed with easier pairs.
//!
//! A baseline's tie (equal lengths, equal overlap) counts as half right, so its accuracy is over
//! the same decided pairs as the model's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::train::{metrics, Metrics};
use crate::feedback::{Origin, Pair};

/// Two texts are length-balanced when their word counts differ by at most this share of the
/// longer one.
pub const BALANCED_WITHIN: f64 = 0.10;

/// Model and baselines on one set of pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub model: Metrics,
    /// Half-width of the 95% interval of the model's accuracy (normal approximation, as if
    /// every pair were independent).
    pub accuracy_ci95: f64,
    /// The 95% interval of the model's accuracy by a bootstrap over groups (articles, stories,
    /// books: pairs from one source are not independent), and how many groups there are.
    /// Absent in reports written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_interval_by_group: Option<(f64, f64)>,
    #[serde(default)]
    pub groups: usize,
    /// Accuracy of "the longer text wins".
    pub length_accuracy: f64,
    /// Accuracy of "the text overlapping more with the references (else the input) wins".
    pub overlap_accuracy: f64,
    /// What the overlap baseline compared with: `references`, `input`, or `mixed`.
    pub overlap_against: String,
    /// Accuracy of "the text overlapping more with the input wins" (the source-overlap
    /// baseline: what a model that only rewards staying close to the source would get). Absent
    /// in reports written before it existed.
    #[serde(default)]
    pub source_overlap_accuracy: f64,
}

/// The full report: every pair, and the length-balanced ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub all: Comparison,
    pub balanced: Comparison,
    /// Every kind of pair on its own ([`Origin::name`] → its pairs), when there is more than
    /// one kind; empty otherwise (and in reports written before it existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_kind: BTreeMap<String, Comparison>,
}

/// Lowercased alphanumeric words.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

fn f1_of(candidate: &[String], reference: &[String], n: usize) -> f64 {
    if candidate.len() < n || reference.len() < n {
        return 0.0;
    }
    let grams = |w: &[String]| -> Vec<String> { w.windows(n).map(|g| g.join(" ")).collect() };
    let c = grams(candidate);
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for g in grams(reference) {
        *counts.entry(g).or_default() += 1;
    }
    let total_r: usize = counts.values().sum();
    let mut hit = 0usize;
    for g in &c {
        if let Some(k) = counts.get_mut(g) {
            if *k > 0 {
                *k -= 1;
                hit += 1;
            }
        }
    }
    if hit == 0 {
        return 0.0;
    }
    let p = hit as f64 / c.len() as f64;
    let r = hit as f64 / total_r as f64;
    2.0 * p * r / (p + r)
}

/// Word overlap of `candidate` with `references`: the mean over references of the mean of
/// unigram and bigram F1 (a ROUGE-1/2 F without stemming).
pub fn overlap(candidate: &str, references: &[&str]) -> f64 {
    if references.is_empty() {
        return 0.0;
    }
    let c = words(candidate);
    references
        .iter()
        .map(|r| {
            let r = words(r);
            (f1_of(&c, &r, 1) + f1_of(&c, &r, 2)) / 2.0
        })
        .sum::<f64>()
        / references.len() as f64
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Whether the pair's two texts are within [`BALANCED_WITHIN`] of each other in length.
pub fn length_balanced(p: &Pair) -> bool {
    let (a, b) = (word_count(&p.chosen) as f64, word_count(&p.rejected) as f64);
    (a - b).abs() <= BALANCED_WITHIN * a.max(b)
}

/// 1 when the baseline's signal (chosen − rejected) picks the chosen text, 0 when the rejected,
/// ½ on a tie.
fn credit(signal: f64) -> f64 {
    if signal > 0.0 {
        1.0
    } else if signal < 0.0 {
        0.0
    } else {
        0.5
    }
}

/// Model margins (chosen − rejected) on `pairs`, compared with the baselines.
pub fn compare(margins: &[f32], pairs: &[&Pair]) -> Comparison {
    let targets: Vec<f32> = pairs.iter().map(|p| p.target).collect();
    let model = metrics(margins, &targets);
    let decided: Vec<&&Pair> = pairs.iter().filter(|p| (p.target - 0.5).abs() > 1e-6).collect();
    let mut length = 0.0;
    let mut over = 0.0;
    let mut source = 0.0;
    let (mut with_refs, mut without) = (0usize, 0usize);
    for p in &decided {
        let sign = if p.target > 0.5 { 1.0 } else { -1.0 };
        length += credit(sign * (word_count(&p.chosen) as f64 - word_count(&p.rejected) as f64));
        let refs: Vec<&str> = if p.references.is_empty() {
            without += 1;
            vec![p.input.as_str()]
        } else {
            with_refs += 1;
            p.references.iter().map(String::as_str).collect()
        };
        over += credit(sign * (overlap(&p.chosen, &refs) - overlap(&p.rejected, &refs)));
        let input = [p.input.as_str()];
        source += credit(sign * (overlap(&p.chosen, &input) - overlap(&p.rejected, &input)));
    }
    let n = decided.len().max(1) as f64;
    let acc = model.accuracy;
    // The model's credit per decided pair, for the interval over groups.
    let (credits, groups): (Vec<f64>, Vec<&str>) = pairs
        .iter()
        .zip(margins)
        .filter(|(p, _)| (p.target - 0.5).abs() > 1e-6)
        .map(|(p, &m)| {
            let sign = if p.target > 0.5 { 1.0 } else { -1.0 };
            (credit(sign * f64::from(m)), p.group.as_str())
        })
        .unzip();
    let distinct: std::collections::BTreeSet<&str> = groups.iter().copied().collect();
    Comparison {
        accuracy_interval_by_group: crate::eval::bootstrap::clustered_mean_interval(
            &credits, &groups, 2000, 0.95, 0,
        ),
        groups: distinct.len(),
        accuracy_ci95: if decided.is_empty() { 0.0 } else { 1.96 * (acc * (1.0 - acc) / n).sqrt() },
        model,
        length_accuracy: length / n,
        overlap_accuracy: over / n,
        source_overlap_accuracy: source / n,
        overlap_against: match (with_refs, without) {
            (_, 0) if with_refs > 0 => "references",
            (0, _) => "input",
            _ => "mixed",
        }
        .to_string(),
    }
}

/// The margins and pairs of `pairs` that `keep` selects.
fn subset<'p>(
    margins: &[f32],
    pairs: &[&'p Pair],
    keep: impl Fn(&Pair) -> bool,
) -> (Vec<f32>, Vec<&'p Pair>) {
    margins.iter().zip(pairs).filter(|(_, p)| keep(p)).map(|(&m, &p)| (m, p)).unzip()
}

/// The report on every pair, on the length-balanced ones, and on each kind of pair when there
/// are several.
pub fn report(margins: &[f32], pairs: &[&Pair]) -> EvalReport {
    let (bm, bp) = subset(margins, pairs, length_balanced);
    let kinds: Vec<Origin> =
        Origin::ALL.into_iter().filter(|&o| pairs.iter().any(|p| p.origin == o)).collect();
    let by_kind = if kinds.len() > 1 {
        kinds
            .into_iter()
            .map(|o| {
                let (km, kp) = subset(margins, pairs, |p| p.origin == o);
                (o.name().to_string(), compare(&km, &kp))
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    EvalReport { all: compare(margins, pairs), balanced: compare(&bm, &bp), by_kind }
}

/// The report as text lines (for the CLI).
pub fn lines(report: &EvalReport) -> Vec<String> {
    let row = |name: &str, c: &Comparison| {
        format!(
            "{name:<16} {:>6} {:>7.1}% ±{:>4.1} {:>17} {:>9.3} {:>6.3}   {:>7.1}% {:>7.1}% {:>7.1}% ({})",
            c.model.decided,
            100.0 * c.model.accuracy,
            100.0 * c.accuracy_ci95,
            c.accuracy_interval_by_group.map_or("–".to_string(), |(lo, hi)| {
                format!("[{:.1}, {:.1}] /{}", 100.0 * lo, 100.0 * hi, c.groups)
            }),
            c.model.log_loss,
            c.model.ece,
            100.0 * c.length_accuracy,
            100.0 * c.source_overlap_accuracy,
            100.0 * c.overlap_accuracy,
            c.overlap_against
        )
    };
    vec![
        format!(
            "{:<16} {:>6} {:>15} {:>17} {:>9} {:>6}   {:>8} {:>8} {:>8}",
            "pairs",
            "n",
            "model accuracy",
            "by group",
            "log-loss",
            "ECE",
            "length",
            "source",
            "overlap"
        ),
        row("all", &report.all),
        row("length-balanced", &report.balanced),
    ]
    .into_iter()
    .chain(report.by_kind.iter().map(|(kind, c)| row(kind, c)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(chosen: &str, rejected: &str) -> Pair {
        Pair::new(0, "the miller and the flood at the mill", chosen, rejected, 1.0, "g")
    }

    #[test]
    fn overlap_is_rouge_like() {
        assert!((overlap("the cat sat", &["the cat sat"]) - 1.0).abs() < 1e-9);
        assert_eq!(overlap("dogs bark", &["the cat sat"]), 0.0);
        let some = overlap("the cat ran", &["the cat sat"]);
        assert!(some > 0.0 && some < 1.0);
    }

    #[test]
    fn baselines_and_the_balanced_subset() {
        let pairs = [
            // Longer and on topic: both baselines right.
            pair("the miller saw the flood at the mill", "a ship"),
            // Shorter wins: length wrong, overlap right.
            pair("the flood at the mill", "a long story about ships and sailors and the sea"),
            // Equal length: balanced; length baseline ties (½).
            pair("the flood came", "ships sailed away"),
        ];
        let refs: Vec<&Pair> = pairs.iter().collect();
        let r = report(&[1.0, -1.0, 2.0], &refs);
        assert!((r.all.length_accuracy - 1.5 / 3.0).abs() < 1e-9, "{r:?}");
        assert!((r.all.overlap_accuracy - 1.0).abs() < 1e-9);
        assert_eq!(r.all.overlap_against, "input");
        assert!((r.all.model.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.balanced.model.decided, 1);
        assert!((r.balanced.length_accuracy - 0.5).abs() < 1e-9);
        // References, when given, replace the input.
        let mut p = pair("ships sailed", "the flood came");
        p.references = vec!["ships sailed away".into()];
        let c = compare(&[0.0], &[&p]);
        assert_eq!((c.overlap_accuracy, c.overlap_against.as_str()), (1.0, "references"));
        assert_eq!(lines(&r).len(), 3);
        assert!(r.by_kind.is_empty(), "one kind of pair: no breakdown");
    }

    #[test]
    fn several_kinds_are_also_reported_one_by_one() {
        let mut pairs = [
            pair("the miller saw the flood at the mill", "a ship"),
            pair("the flood at the mill", "a long story about ships and sailors and the sea"),
            pair("the flood came", "ships sailed away"),
        ];
        pairs[2].origin = Origin::Demonstration;
        let refs: Vec<&Pair> = pairs.iter().collect();
        let r = report(&[1.0, -1.0, 2.0], &refs);
        let kinds: Vec<&str> = r.by_kind.keys().map(String::as_str).collect();
        assert_eq!(kinds, ["comparison", "demonstration"]);
        let comparison = &r.by_kind["comparison"];
        assert_eq!(comparison.model.decided, 2);
        assert!((comparison.model.accuracy - 0.5).abs() < 1e-9, "{comparison:?}");
        assert!((comparison.length_accuracy - 0.5).abs() < 1e-9);
        let demonstration = &r.by_kind["demonstration"];
        assert_eq!((demonstration.model.decided, demonstration.model.accuracy), (1, 1.0));
        let text = lines(&r);
        assert_eq!(text.len(), 5);
        assert!(text[3].starts_with("comparison") && text[4].starts_with("demonstration"));
        // Reports written before the breakdown existed still read.
        let before = EvalReport { by_kind: BTreeMap::new(), ..r.clone() };
        let old = serde_json::to_string(&before).unwrap_or_default();
        assert!(!old.contains("by_kind"), "{old}");
        let back: Result<EvalReport, _> = serde_json::from_str(&old);
        assert!(back.is_ok_and(|b| b.by_kind.is_empty()), "old reports load");
    }
}
