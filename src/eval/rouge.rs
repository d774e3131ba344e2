//! ROUGE-1, ROUGE-2 and ROUGE-L (Lin 2004) as the `rouge-score` package computes them with
//! `use_stemmer=True`, so our figures can be put beside published ones:
//!
//! - tokens: the text lowercased (Unicode lowercase), every run of characters other than
//!   `a-z0-9` replaced by one space, split on whitespace; tokens longer than three characters
//!   are stemmed with the Porter stemmer in NLTK's default mode ([`super::stem`]); empty tokens
//!   are dropped. Nothing else (no stopwords, no sentence splitting).
//! - ROUGE-N: clipped n-gram overlap; precision over the candidate's n-grams, recall over the
//!   reference's (each denominator at least 1); F1 their harmonic mean (0 when both are 0).
//! - ROUGE-L: the longest common subsequence of the two token lists (0 when either is empty).
//!
//! Several references: [`score_multi`] scores against each and reports the maximum and the
//! mean of each metric's F1 (`rouge-score`'s `score_multi` keeps the reference with the best
//! F1, which is our maximum).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::stem::stem;

/// Precision, recall and F1 of one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Prf {
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Prf { precision, recall, f1 }
    }
}

/// ROUGE-1, -2 and -L of one candidate against one reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rouge {
    pub rouge1: Prf,
    pub rouge2: Prf,
    pub rouge_l: Prf,
}

/// F1 of each metric over several references: the best and the mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RougeMulti {
    pub rouge1_max: f64,
    pub rouge2_max: f64,
    pub rouge_l_max: f64,
    pub rouge1_mean: f64,
    pub rouge2_mean: f64,
    pub rouge_l_mean: f64,
}

/// `rouge-score`'s tokens of `text` (stemmed).
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { ' ' })
        .collect();
    cleaned
        .split_whitespace()
        .map(|t| if t.len() > 3 { stem(t) } else { t.to_string() })
        .filter(|t| !t.is_empty())
        .collect()
}

/// A text tokenized once, for scoring against many others.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<String>);

impl Tokens {
    pub fn new(text: &str) -> Tokens {
        Tokens(tokenize(text))
    }

    /// Tokens made elsewhere (e.g. with some replaced by tokens that match nothing).
    pub fn from_tokens(tokens: Vec<String>) -> Tokens {
        Tokens(tokens)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

fn rouge_n(reference: &[String], candidate: &[String], n: usize) -> Prf {
    let r = ngrams(reference, n);
    let c = ngrams(candidate, n);
    let overlap: usize = r.iter().map(|(g, &k)| k.min(c.get(g).copied().unwrap_or(0))).sum();
    let r_total: usize = r.values().sum();
    let c_total: usize = c.values().sum();
    Prf::new(overlap as f64 / c_total.max(1) as f64, overlap as f64 / r_total.max(1) as f64)
}

/// Length of the longest common subsequence (two rows of the DP table).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn rouge_l(reference: &[String], candidate: &[String]) -> Prf {
    if reference.is_empty() || candidate.is_empty() {
        return Prf::default();
    }
    let l = lcs_len(reference, candidate) as f64;
    Prf::new(l / candidate.len() as f64, l / reference.len() as f64)
}

/// ROUGE of tokenized `candidate` against tokenized `reference`.
pub fn score_tokens(reference: &Tokens, candidate: &Tokens) -> Rouge {
    Rouge {
        rouge1: rouge_n(&reference.0, &candidate.0, 1),
        rouge2: rouge_n(&reference.0, &candidate.0, 2),
        rouge_l: rouge_l(&reference.0, &candidate.0),
    }
}

/// ROUGE of `candidate` against `reference`.
pub fn score(reference: &str, candidate: &str) -> Rouge {
    score_tokens(&Tokens::new(reference), &Tokens::new(candidate))
}

/// F1 of `candidate` against each of `references`, best and mean. No references: all zero.
pub fn score_multi(references: &[Tokens], candidate: &str) -> RougeMulti {
    let candidate = Tokens::new(candidate);
    let scores: Vec<Rouge> = references.iter().map(|r| score_tokens(r, &candidate)).collect();
    if scores.is_empty() {
        return RougeMulti::default();
    }
    let k = scores.len() as f64;
    let max = |f: fn(&Rouge) -> f64| scores.iter().map(f).fold(0.0, f64::max);
    let mean = |f: fn(&Rouge) -> f64| scores.iter().map(f).sum::<f64>() / k;
    RougeMulti {
        rouge1_max: max(|s| s.rouge1.f1),
        rouge2_max: max(|s| s.rouge2.f1),
        rouge_l_max: max(|s| s.rouge_l.f1),
        rouge1_mean: mean(|s| s.rouge1.f1),
        rouge2_mean: mean(|s| s.rouge2.f1),
        rouge_l_mean: mean(|s| s.rouge_l.f1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reference, candidate, [P, R, F1] of ROUGE-1, -2, -L) as the `rouge-score` package
    /// (0.1.2, `use_stemmer=True`) computes them: facts, not its code.
    const CASES: &[(&str, &str, [[f64; 3]; 3])] = include!("testdata/rouge_cases.rs.in");

    #[test]
    fn matches_rouge_score_on_fixed_pairs() {
        for (reference, candidate, want) in CASES {
            let s = score(reference, candidate);
            for (got, want) in [s.rouge1, s.rouge2, s.rouge_l].iter().zip(want) {
                for (g, w) in [got.precision, got.recall, got.f1].iter().zip(want) {
                    assert!(
                        (g - w).abs() < 1e-3,
                        "{reference:?} / {candidate:?}: {got:?} vs {want:?}"
                    );
                    // Not only within the tolerance: the same fractions.
                    assert!(
                        (g - w).abs() < 1e-12,
                        "{reference:?} / {candidate:?}: {got:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn tokenizer_lowercases_splits_and_stems_long_tokens_only() {
        assert_eq!(
            tokenize("The CATS' running-fast, 3 dogs!! Naïve é"),
            vec!["the", "cat", "run", "fast", "3", "dog", "na", "ve"]
        );
        // Three characters or fewer are never stemmed.
        assert_eq!(tokenize("was has its"), vec!["was", "has", "its"]);
        assert!(tokenize("  ...  ").is_empty());
    }

    #[test]
    fn identical_texts_score_one_and_disjoint_zero() {
        let s = score("a cat sat on the mat", "a cat sat on the mat");
        assert_eq!(s.rouge1.f1, 1.0);
        assert_eq!(s.rouge2.f1, 1.0);
        assert_eq!(s.rouge_l.f1, 1.0);
        let z = score("a cat", "dogs bark");
        assert_eq!(z, Rouge::default());
        assert_eq!(score("", "something"), Rouge::default());
    }

    #[test]
    fn multi_reports_max_and_mean() {
        let refs = [Tokens::new("the cat sat"), Tokens::new("a dog ran")];
        let m = score_multi(&refs, "the cat sat");
        assert_eq!(m.rouge1_max, 1.0);
        assert!((m.rouge1_mean - 0.5).abs() < 1e-12);
        assert_eq!(score_multi(&[], "x"), RougeMulti::default());
    }
}
