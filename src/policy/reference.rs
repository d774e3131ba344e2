//! People's own summaries as the labeler of model-vs-model pairs: `--reward-model reference`
//! for rm-dpo. The policy samples K candidates of a prompt; each candidate is scored against
//! every human summary (demonstration) the training data holds for that same input, and the
//! pairs the references agree on train DPO. The pairs are synthetic (no person compared the two
//! candidates), but the signal is what a person wrote, not a simulated preference.
//!
//! One member per reference `r`, so rm-dpo's pessimism skips pairs the references disagree on:
//!
//! `s_r(c) = ROUGE-1 F1(r, c) + ROUGE-L F1(r, c) − u · unsupported(c) − l · |ln(words(c) / median)|`
//!
//! - `unsupported(c)`: the share of the candidate's content tokens its input does not support
//!   ([`crate::grounding`]), so a candidate that matches a reference by inventing what the
//!   reference says but the input lacks does not win;
//! - `median`: the median word count of the candidates scored together (the prompt's K samples),
//!   so a pair is not won by length alone, and training does not drift towards longer summaries
//!   because ROUGE's F1 rises with length up to the references' (a single summary, as in the
//!   held-out measurements, gets no length term).

use std::collections::HashMap;

use super::data::Dataset;
use super::judge::MemberScorer;
use crate::decompose::oversee::median;
use crate::eval::rouge::{score_tokens, Tokens};
use crate::grounding;
use crate::reward::RewardError;

/// The name users give it (`--reward-model reference`).
pub const NAME: &str = "reference";

/// The weights of the score's parts (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceWeights {
    pub unsupported: f64,
    pub length: f64,
}

impl Default for ReferenceWeights {
    /// A clear difference in ROUGE-1 + ROUGE-L between two samples is about 0.05; a quarter of
    /// the unsupported rate and a tenth of the log length ratio put ten points more invented
    /// content, or a candidate 30 % longer than its siblings, at about half of that.
    fn default() -> Self {
        ReferenceWeights { unsupported: 0.25, length: 0.1 }
    }
}

impl ReferenceWeights {
    /// The weights `spec` names: `reference`, or `reference:unsupported=U,length=L` (either
    /// option alone); `None` when `spec` does not name this scorer, an error naming the option
    /// when it is not known or its value is not a non-negative number.
    pub fn parse(spec: &str) -> Option<Result<Self, String>> {
        let rest = spec.strip_prefix(NAME)?;
        let mut w = ReferenceWeights::default();
        if rest.is_empty() {
            return Some(Ok(w));
        }
        let options = rest.strip_prefix(':')?;
        for option in options.split(',') {
            let (key, value) = option.trim().split_once('=').unwrap_or((option.trim(), ""));
            let parsed = value.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
            let slot = match key {
                "unsupported" => &mut w.unsupported,
                "length" => &mut w.length,
                other => {
                    return Some(Err(format!(
                        "unknown option `{other}` of the reference scorer `{spec}` (known: \
                         unsupported=U, length=L)"
                    )))
                }
            };
            match parsed {
                Some(v) => *slot = v,
                None => {
                    return Some(Err(format!(
                        "`{option}` in `{spec}`: the value must be a non-negative number"
                    )))
                }
            }
        }
        Some(Ok(w))
    }
}

/// Scores candidates against the human summaries of their input (module docs).
pub struct ReferenceScorer {
    references: HashMap<String, Vec<Tokens>>,
    weights: ReferenceWeights,
}

impl ReferenceScorer {
    /// The demonstrations of `data`, by input. An error when it has none: rm-dpo's prompts
    /// come from the same data, so nothing could be scored.
    pub fn from_dataset(data: &Dataset, weights: ReferenceWeights) -> Result<Self, RewardError> {
        let mut references: HashMap<String, Vec<Tokens>> = HashMap::new();
        for e in &data.sft {
            if !e.completion.trim().is_empty() {
                references
                    .entry(e.prompt.input.clone())
                    .or_default()
                    .push(Tokens::new(&e.completion));
            }
        }
        if references.is_empty() {
            return Err(RewardError::Invalid(format!(
                "--reward-model {NAME} scores candidates against people's summaries of the same \
                 input, but {} has no demonstrations (store them with `rrm eval summaries \
                 --store-demonstrations LABELER`, or pass a file of {{prompt, completion}} rows)",
                data.source
            )));
        }
        // rm-dpo samples every prompt of the data: one without a reference would stop the run
        // after its sampling, so refuse it before.
        let missing: Vec<&str> = data
            .prefs
            .iter()
            .map(|e| e.prompt.input.as_str())
            .filter(|input| !references.contains_key(*input))
            .collect();
        if let Some(first) = missing.first() {
            let preview: String = first.chars().take(60).collect();
            return Err(RewardError::Invalid(format!(
                "--reward-model {NAME}: {} preference pair(s) in {} have an input with no \
                 person's summary to score against (the first: \"{preview}…\"); keep only \
                 demonstrations (e.g. `--labeler`) or add them",
                missing.len(),
                data.source
            )));
        }
        Ok(ReferenceScorer { references, weights })
    }

    /// How many inputs have at least one reference.
    pub fn inputs(&self) -> usize {
        self.references.len()
    }
}

impl MemberScorer for ReferenceScorer {
    fn name(&self) -> String {
        let w = self.weights;
        format!("{NAME}:unsupported={},length={}", w.unsupported, w.length)
    }

    fn member_scores(
        &self,
        _height: u32,
        input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, RewardError> {
        let refs = self.references.get(input).ok_or_else(|| {
            let preview: String = input.chars().take(60).collect();
            RewardError::Invalid(format!(
                "--reward-model {NAME}: no person's summary of the input \"{preview}…\" in the \
                 training data"
            ))
        })?;
        let source = grounding::Source::new(input);
        let tokens: Vec<Tokens> = summaries.iter().map(|s| Tokens::new(s)).collect();
        let words: Vec<u64> =
            summaries.iter().map(|s| s.split_whitespace().count() as u64).collect();
        let mid = median(&words).unwrap_or(1.0).max(1.0);
        let penalty: Vec<f64> = summaries
            .iter()
            .zip(&words)
            .map(|(s, &n)| {
                let unsupported = source.check(s).unsupported_rate;
                let length =
                    if summaries.len() > 1 { ((n as f64).max(1.0) / mid).ln().abs() } else { 0.0 };
                self.weights.unsupported * unsupported + self.weights.length * length
            })
            .collect();
        Ok(refs
            .iter()
            .map(|r| {
                tokens
                    .iter()
                    .zip(&penalty)
                    .map(|(c, p)| {
                        let s = score_tokens(r, c);
                        (s.rouge1.f1 + s.rouge_l.f1 - p) as f32
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::data::{Prompt, SftExample};

    const INPUT: &str = "Retief met the farmer Arapoulous at the embassy. The farmer needed \
        harvesters for the vintage, and Retief found him a crew of young men from the city.";

    fn data(refs: &[&str]) -> Dataset {
        let prompt = Prompt::for_node(INPUT, 1, "g").unwrap();
        Dataset {
            sft: refs
                .iter()
                .map(|r| SftExample { prompt: prompt.clone(), completion: r.to_string() })
                .collect(),
            source: "test".into(),
            ..Dataset::default()
        }
    }

    #[test]
    fn candidates_closer_to_the_references_and_to_the_input_win_for_every_member() {
        let s = ReferenceScorer::from_dataset(
            &data(&[
                "Retief helps the farmer Arapoulous find harvesters for his vintage.",
                "At the embassy, Retief finds the farmer a crew for the harvest.",
            ]),
            ReferenceWeights::default(),
        )
        .unwrap();
        let close = "Retief finds the farmer Arapoulous a crew of harvesters for the vintage.";
        let invented = "Procopius sails to Rome with King Tranquil and a golden puppet.";
        let m = s.member_scores(1, INPUT, &[close, invented]).unwrap();
        assert_eq!(m.len(), 2, "one member per reference");
        assert!(m.iter().all(|member| member[0] > member[1]), "{m:?}");
        assert_eq!(s.inputs(), 1);
    }

    #[test]
    fn invented_content_and_length_cost_at_equal_rouge() {
        let s =
            ReferenceScorer::from_dataset(&data(&["Retief met the farmer."]), Default::default())
                .unwrap();
        // The same words against the reference; one adds a name the input lacks.
        let plain = "Retief met the farmer at the embassy.";
        let named = "Retief met the farmer Zorbo at the embassy.";
        let m = s.member_scores(1, INPUT, &[plain, named]).unwrap();
        assert!(m[0][0] > m[0][1], "{m:?}");
        // Alone, a summary gets no length term; among siblings, the one far from their median
        // length pays for it.
        let long = format!("{plain} {}", "The farmer needed harvesters. ".repeat(8));
        let alone = s.member_scores(1, INPUT, &[long.as_str()]).unwrap()[0][0];
        let among = s.member_scores(1, INPUT, &[plain, plain, long.as_str()]).unwrap()[0][2];
        assert!(among < alone, "{among} vs {alone}");
    }

    #[test]
    fn inputs_without_references_and_bad_specs_are_clear_errors() {
        let s =
            ReferenceScorer::from_dataset(&data(&["Retief met the farmer."]), Default::default())
                .unwrap();
        let e = s.member_scores(1, "Another story altogether.", &["x"]).unwrap_err().to_string();
        assert!(e.contains("no person's summary") && e.contains("Another story"), "{e}");
        let e = ReferenceScorer::from_dataset(&data(&[]), Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no demonstrations") && e.contains("test"), "{e}");
        let mut mixed = data(&["Retief met the farmer."]);
        mixed.prefs.push(crate::policy::data::PrefExample {
            prompt: Prompt::for_node("A pair with no reference.", 0, "h").unwrap(),
            chosen: "a".into(),
            rejected: "b".into(),
        });
        let e =
            ReferenceScorer::from_dataset(&mixed, Default::default()).err().unwrap().to_string();
        assert!(e.contains("1 preference pair(s)") && e.contains("A pair with no"), "{e}");
        assert_eq!(ReferenceWeights::parse("latest"), None);
        assert_eq!(ReferenceWeights::parse("reference"), Some(Ok(ReferenceWeights::default())));
        assert_eq!(
            ReferenceWeights::parse("reference:unsupported=0.5,length=0"),
            Some(Ok(ReferenceWeights { unsupported: 0.5, length: 0.0 }))
        );
        for bad in ["reference:unsupported=-1", "reference:length=x", "reference:nope=1"] {
            let e = ReferenceWeights::parse(bad).unwrap().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
