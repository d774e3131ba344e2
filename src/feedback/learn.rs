//! Every kind of feedback as a training signal for the reward models.
//!
//! [`build`] turns feedback records into preference [`Pair`]s and Likert [`Rating`]s:
//! - **comparisons**: the preferred text beats the other; the labeler's confidence (1–9) becomes
//!   the pair's loss weight ([`ConfidenceUse::Weight`], the default), a soft target
//!   ([`ConfidenceUse::Soft`]) or nothing ([`ConfidenceUse::Ignore`]); ties are target 0.5.
//! - **Likert ratings**: within one node and one labeler, the better-rated text beats the other
//!   (`likert` pairs), and each rating is also an ordinal target ([`Rating`], `ordinal`): the
//!   reward model's score, through learned thresholds, predicts the 1–7 overall score
//!   (a cumulative-logit model), so the scale itself teaches, not only the order.
//! - **corrections**: the edited text beats the original.
//! - **demonstrations**: the text a person wrote beats every model candidate of that node (the
//!   texts other feedback on the node judged, and the node's stored candidates, which the caller
//!   supplies).
//! - **critiques**: an auxiliary, weaker signal: a critique says its candidate has a flaw, so it
//!   loses to every sibling candidate nobody critiqued and that the same labeler did not judge
//!   below it (weight [`LearnOptions::critique_weight`]). The critique's edited version and the
//!   node's demonstrations already beat it through the kinds above. (The critique's text is not
//!   read: conditioning the reward model on it is left for later.)
//!
//! Pairs and ratings get their train/validation/test groups together ([`regroup`]), so a node's
//! ratings never sit on the other side of the split from its pairs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{groups, Feedback, FeedbackKind, Origin, Pair, Preference};

/// Which kinds of feedback to learn from (the ablation switches them off one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kinds {
    pub comparison: bool,
    /// Likert ratings as pairs within a node and labeler.
    pub likert: bool,
    /// Likert ratings as ordinal targets.
    pub ordinal: bool,
    pub correction: bool,
    pub demonstration: bool,
    pub critique: bool,
    /// Pairs judged by a script (external files only).
    pub synthetic: bool,
}

impl Default for Kinds {
    fn default() -> Self {
        Kinds::ALL
    }
}

impl Kinds {
    pub const ALL: Kinds = Kinds {
        comparison: true,
        likert: true,
        ordinal: true,
        correction: true,
        demonstration: true,
        critique: true,
        synthetic: true,
    };
    pub const NONE: Kinds = Kinds {
        comparison: false,
        likert: false,
        ordinal: false,
        correction: false,
        demonstration: false,
        critique: false,
        synthetic: false,
    };
    pub const NAMES: [&'static str; 7] =
        ["comparison", "likert", "ordinal", "correction", "demonstration", "critique", "synthetic"];

    fn slot(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "comparison" | "comparisons" => &mut self.comparison,
            "likert" => &mut self.likert,
            "ordinal" => &mut self.ordinal,
            "correction" | "corrections" => &mut self.correction,
            "demonstration" | "demonstrations" => &mut self.demonstration,
            "critique" | "critiques" => &mut self.critique,
            "synthetic" => &mut self.synthetic,
            _ => return None,
        })
    }

    /// Parses a comma-separated list: kind names, `all`, `none`, and `-kind` to remove one
    /// (`all,-critique`).
    pub fn parse(list: &str) -> Result<Kinds, String> {
        // A list that starts by dropping a kind (`-likert`) drops it from all of them.
        let drops_first = list.trim_start().starts_with('-');
        let mut out = if drops_first { Kinds::ALL } else { Kinds::NONE };
        let mut any = false;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            any = true;
            let part = part.to_ascii_lowercase();
            match part.as_str() {
                "all" => out = Kinds::ALL,
                "none" => out = Kinds::NONE,
                _ => {
                    let (name, on) = match part.strip_prefix('-') {
                        Some(n) => (n, false),
                        None => (part.as_str(), true),
                    };
                    let slot = out.slot(name).ok_or_else(|| {
                        format!(
                            "unknown feedback kind '{name}' (all, none, {})",
                            Kinds::NAMES.join(", ")
                        )
                    })?;
                    *slot = on;
                }
            }
        }
        if !any {
            return Err("no feedback kind given".into());
        }
        Ok(out)
    }

    /// The kinds switched on, by name.
    pub fn names(&self) -> Vec<&'static str> {
        let mut copy = *self;
        Kinds::NAMES.into_iter().filter(|n| copy.slot(n).is_some_and(|s| *s)).collect()
    }

    /// Whether pairs of `origin` are used.
    pub fn allows(&self, origin: Origin) -> bool {
        match origin {
            Origin::Comparison => self.comparison,
            Origin::Likert => self.likert,
            Origin::Correction => self.correction,
            Origin::Demonstration => self.demonstration,
            Origin::Critique => self.critique,
            Origin::Synthetic => self.synthetic,
        }
    }
}

/// How a comparison's confidence (1–9) enters training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfidenceUse {
    /// Every comparison counts fully.
    Ignore,
    /// Loss weight `0.2 + 0.8·(c − 1)/8`: a guess (1) counts a fifth of a certainty (9).
    #[default]
    Weight,
    /// Target `P(chosen wins) = 0.5 + 0.5·c/9`: a guess is nearly a tie.
    Soft,
}

impl ConfidenceUse {
    /// `(target, weight)` of a clear preference given with `confidence`.
    pub fn apply(self, confidence: u8) -> (f32, f32) {
        let c = f32::from(confidence.clamp(1, 9));
        match self {
            ConfidenceUse::Ignore => (1.0, 1.0),
            ConfidenceUse::Weight => (1.0, 0.2 + 0.8 * (c - 1.0) / 8.0),
            ConfidenceUse::Soft => (0.5 + 0.5 * c / 9.0, 1.0),
        }
    }

    pub fn parse(s: &str) -> Result<ConfidenceUse, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ignore" => Ok(ConfidenceUse::Ignore),
            "weight" => Ok(ConfidenceUse::Weight),
            "soft" => Ok(ConfidenceUse::Soft),
            other => Err(format!("unknown confidence use '{other}' (ignore, weight, soft)")),
        }
    }
}

/// What to learn from, and how much each kind counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnOptions {
    pub kinds: Kinds,
    pub confidence: ConfidenceUse,
    /// Loss weight of a demonstration > candidate pair.
    pub demonstration_weight: f32,
    /// Loss weight of a critique-implied pair (a weak signal).
    pub critique_weight: f32,
}

impl Default for LearnOptions {
    fn default() -> Self {
        Self {
            kinds: Kinds::ALL,
            confidence: ConfidenceUse::Weight,
            demonstration_weight: 1.0,
            critique_weight: 0.5,
        }
    }
}

/// A Likert rating as an ordinal target: `summary` of `input` got `overall` (1–7) from
/// `labeler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub height: u32,
    pub input: String,
    pub summary: String,
    pub overall: u8,
    pub labeler: String,
    pub group: String,
    pub weight: f32,
}

/// Pairs and ratings to train on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingData {
    pub pairs: Vec<Pair>,
    pub ratings: Vec<Rating>,
}

impl TrainingData {
    /// Pairs per origin, and `ordinal` for the ratings.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for p in &self.pairs {
            *out.entry(p.origin.name().to_string()).or_default() += 1;
        }
        if !self.ratings.is_empty() {
            out.insert("ordinal".into(), self.ratings.len());
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.ratings.is_empty()
    }

    /// Keeps the pairs and ratings at `heights` (all when empty).
    pub fn retain_heights(&mut self, heights: &[u32]) {
        if heights.is_empty() {
            return;
        }
        self.pairs.retain(|p| heights.contains(&p.height));
        self.ratings.retain(|r| heights.contains(&r.height));
    }
}

/// A Likert rating seen by [`build`]: the record, the text, its rank key, its overall score.
type LikertEntry<'a> = (&'a Feedback, &'a str, u32, u8);
/// The latest [`LikertEntry`] per (input key, labeler, text hash).
type LikertMap<'a> = BTreeMap<(String, String, String), LikertEntry<'a>>;

/// Turns `records` (and pairs from a file, `external`, filtered by kind) into training data, by
/// the rules of the module docs. `candidates_of(input_key)` gives the stored model candidates of
/// a node (for demonstrations and critiques); return nothing when there is no store.
pub fn build(
    records: &[Feedback],
    external: &[Pair],
    options: &LearnOptions,
    candidates_of: &dyn Fn(&str) -> Vec<String>,
) -> TrainingData {
    let kinds = &options.kinds;
    let mut pairs: Vec<Pair> = Vec::new();
    let mut ratings: Vec<Rating> = Vec::new();
    // Latest Likert score per (input key, labeler, text).
    let mut likert: LikertMap<'_> = BTreeMap::new();
    // Per node: texts people wrote, and texts a model wrote.
    let mut human: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut model: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let mut node_of: BTreeMap<&str, &Feedback> = BTreeMap::new();
    let mut order: Vec<&Feedback> = records.iter().collect();
    order.sort_by(|a, b| a.time_unix.cmp(&b.time_unix).then_with(|| a.id.cmp(&b.id)));
    for fb in &order {
        let key = fb.input_key.as_str();
        node_of.entry(key).or_insert(fb);
        let pair = |chosen: &str, rejected: &str, target: f32| {
            Pair::new(fb.height, &fb.input, chosen, rejected, target, &fb.split_group())
        };
        let mut add_model = |t: &str| {
            model.entry(key).or_default().insert(t.to_string());
        };
        match &fb.kind {
            FeedbackKind::Comparison { a, b, prefer, confidence } => {
                add_model(&a.text);
                add_model(&b.text);
                if kinds.comparison {
                    let (target, weight) = options.confidence.apply(*confidence);
                    pairs.push(match prefer {
                        Preference::A => pair(&a.text, &b.text, target).with_weight(weight),
                        Preference::B => pair(&b.text, &a.text, target).with_weight(weight),
                        Preference::Tie => pair(&a.text, &b.text, 0.5),
                    });
                }
            }
            FeedbackKind::Likert { summary, scores } => {
                add_model(&summary.text);
                let rank = u32::from(scores.overall) * 100
                    + u32::from(scores.coverage)
                    + u32::from(scores.accuracy)
                    + u32::from(scores.coherence);
                likert.insert(
                    (fb.input_key.clone(), fb.labeler.clone(), summary.hash.clone()),
                    (fb, summary.text.as_str(), rank, scores.overall),
                );
            }
            FeedbackKind::Correction { original, edited } => {
                add_model(&original.text);
                human.entry(key).or_default().insert(&edited.text);
                if kinds.correction {
                    pairs.push(
                        pair(&edited.text, &original.text, 1.0).with_origin(Origin::Correction),
                    );
                }
            }
            FeedbackKind::Demonstration { summary } => {
                human.entry(key).or_default().insert(&summary.text);
            }
            FeedbackKind::Critique { summary, .. } => add_model(&summary.text),
        }
    }
    // Likert: pairs within (node, labeler), and ordinal targets.
    let mut by_rater: BTreeMap<(&str, &str), Vec<LikertEntry<'_>>> = BTreeMap::new();
    for ((key, labeler, _), &entry) in &likert {
        by_rater.entry((key.as_str(), labeler.as_str())).or_default().push(entry);
    }
    for rated in by_rater.values() {
        if kinds.ordinal {
            for &(fb, text, _, overall) in rated {
                ratings.push(Rating {
                    height: fb.height,
                    input: fb.input.clone(),
                    summary: text.to_string(),
                    overall,
                    labeler: fb.labeler.clone(),
                    group: fb.split_group(),
                    weight: 1.0,
                });
            }
        }
        if kinds.likert {
            for i in 0..rated.len() {
                for j in i + 1..rated.len() {
                    let (fa, ta, sa, _) = rated[i];
                    let (_, tb, sb, _) = rated[j];
                    let (chosen, rejected, target) = match sa.cmp(&sb) {
                        std::cmp::Ordering::Greater => (ta, tb, 1.0),
                        std::cmp::Ordering::Less => (tb, ta, 1.0),
                        std::cmp::Ordering::Equal => (ta, tb, 0.5),
                    };
                    pairs.push(
                        Pair::new(
                            fa.height,
                            &fa.input,
                            chosen,
                            rejected,
                            target,
                            &fa.split_group(),
                        )
                        .with_origin(Origin::Likert),
                    );
                }
            }
        }
    }
    // The model candidates of each node: judged texts and stored candidates, never a text a
    // person wrote.
    let mut candidates: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    if kinds.demonstration || kinds.critique {
        for &key in node_of.keys() {
            let mut set = model.remove(key).unwrap_or_default();
            set.extend(candidates_of(key));
            if let Some(h) = human.get(key) {
                set.retain(|t| !h.contains(t.as_str()));
            }
            candidates.insert(key, set.into_iter().collect());
        }
    }
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut derived = |p: Pair, pairs: &mut Vec<Pair>| {
        let k = (
            super::text_hash(&p.input),
            super::text_hash(&p.chosen),
            super::text_hash(&p.rejected),
        );
        if seen.insert(k) {
            pairs.push(p);
        }
    };
    if kinds.demonstration {
        for fb in &order {
            if let FeedbackKind::Demonstration { summary } = &fb.kind {
                for cand in candidates.get(fb.input_key.as_str()).into_iter().flatten() {
                    derived(
                        Pair::new(
                            fb.height,
                            &fb.input,
                            &summary.text,
                            cand,
                            1.0,
                            &fb.split_group(),
                        )
                        .with_origin(Origin::Demonstration)
                        .with_weight(options.demonstration_weight),
                        &mut pairs,
                    );
                }
            }
        }
    }
    if kinds.critique {
        // Texts critiqued on each node, by anyone.
        let mut critiqued: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for fb in &order {
            if let FeedbackKind::Critique { summary, .. } = &fb.kind {
                critiqued.entry(fb.input_key.as_str()).or_default().insert(&summary.text);
            }
        }
        for fb in &order {
            let FeedbackKind::Critique { summary, .. } = &fb.kind else { continue };
            let key = fb.input_key.as_str();
            let c = summary.text.as_str();
            let below = judged_below(&order, &likert, fb, c);
            for s in candidates.get(key).into_iter().flatten() {
                if s == c
                    || critiqued.get(key).is_some_and(|set| set.contains(s.as_str()))
                    || below.contains(s.as_str())
                {
                    continue;
                }
                derived(
                    Pair::new(fb.height, &fb.input, s, c, 1.0, &fb.split_group())
                        .with_origin(Origin::Critique)
                        .with_weight(options.critique_weight),
                    &mut pairs,
                );
            }
        }
    }
    pairs.extend(external.iter().filter(|p| kinds.allows(p.origin)).cloned());
    let mut data = TrainingData { pairs, ratings };
    regroup(&mut data);
    data
}

/// The texts that `fb`'s labeler judged below `text` on `fb`'s node (lost a comparison to it, or
/// got a lower Likert score).
fn judged_below<'a>(
    order: &[&'a Feedback],
    likert: &LikertMap<'a>,
    fb: &Feedback,
    text: &str,
) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    for other in order {
        if other.input_key != fb.input_key || other.labeler != fb.labeler {
            continue;
        }
        if let FeedbackKind::Comparison { a, b, prefer, .. } = &other.kind {
            match prefer {
                Preference::A if a.text == text => {
                    out.insert(b.text.as_str());
                }
                Preference::B if b.text == text => {
                    out.insert(a.text.as_str());
                }
                _ => {}
            }
        }
    }
    let mine = likert.get(&(fb.input_key.clone(), fb.labeler.clone(), super::text_hash(text)));
    if let Some(&(_, _, rank, _)) = mine {
        for ((key, labeler, _), &(_, t, r, _)) in likert {
            if key == &fb.input_key && labeler == &fb.labeler && r < rank {
                out.insert(t);
            }
        }
    }
    out
}

/// Joins the groups of pairs and ratings: one book, or near-duplicate inputs, one group
/// ([`groups::components`]).
pub fn regroup(data: &mut TrainingData) {
    let items: Vec<(&str, &str)> = data
        .pairs
        .iter()
        .map(|p| (p.input.as_str(), p.group.as_str()))
        .chain(data.ratings.iter().map(|r| (r.input.as_str(), r.group.as_str())))
        .collect();
    let names = groups::components(&items);
    let (for_pairs, for_ratings) = names.split_at(data.pairs.len());
    for (p, g) in data.pairs.iter_mut().zip(for_pairs) {
        p.group = g.clone();
    }
    for (r, g) in data.ratings.iter_mut().zip(for_ratings) {
        r.group = g.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Judged, Likert};

    fn fb(labeler: &str, kind: FeedbackKind) -> Feedback {
        Feedback::new(labeler, "node-1", "The input passage about the mill.", 0, kind)
            .at(Some("bookA".into()), None)
    }

    fn cmp(labeler: &str, a: &str, b: &str, prefer: Preference, confidence: u8) -> Feedback {
        fb(
            labeler,
            FeedbackKind::Comparison { a: Judged::new(a), b: Judged::new(b), prefer, confidence },
        )
    }

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn kinds_parse_and_name() {
        let k = Kinds::parse("all,-critique").unwrap();
        // Dropping a kind first drops it from all of them.
        assert_eq!(Kinds::parse("-critique").unwrap(), k);
        assert!(!k.critique && k.comparison && k.ordinal);
        assert_eq!(
            Kinds::parse("comparison, ordinal").unwrap().names(),
            vec!["comparison", "ordinal"]
        );
        assert!(Kinds::parse("comparison,bogus").unwrap_err().contains("bogus"));
        assert!(Kinds::parse(" ").is_err());
    }

    #[test]
    fn confidence_becomes_weight_or_soft_target() {
        assert_eq!(ConfidenceUse::Weight.apply(9), (1.0, 1.0));
        assert!((ConfidenceUse::Weight.apply(1).1 - 0.2).abs() < 1e-6);
        let (t, w) = ConfidenceUse::Soft.apply(1);
        assert!(t > 0.5 && t < 0.6 && w == 1.0);
        let records = [cmp("x", "good", "bad", Preference::A, 1)];
        let d = build(&records, &[], &LearnOptions::default(), &none);
        assert_eq!(d.pairs.len(), 1);
        assert!((d.pairs[0].weight - 0.2).abs() < 1e-6 && d.pairs[0].target == 1.0);
        let ignore = LearnOptions { confidence: ConfidenceUse::Ignore, ..LearnOptions::default() };
        assert_eq!(build(&records, &[], &ignore, &none).pairs[0].weight, 1.0);
    }

    #[test]
    fn demonstrations_beat_every_model_candidate_of_the_node() {
        let records = [
            cmp("x", "cand one", "cand two", Preference::A, 9),
            fb("y", FeedbackKind::Demonstration { summary: Judged::new("written by a person") }),
            fb(
                "x",
                FeedbackKind::Correction {
                    original: Judged::new("cand two"),
                    edited: Judged::new("cand two, fixed"),
                },
            ),
        ];
        let stored = |key: &str| {
            assert_eq!(key, "node-1");
            vec!["stored cand".to_string(), "cand one".to_string()]
        };
        let d = build(&records, &[], &LearnOptions::default(), &stored);
        let demo: BTreeSet<&str> = d
            .pairs
            .iter()
            .filter(|p| p.origin == Origin::Demonstration)
            .map(|p| {
                assert_eq!(p.chosen, "written by a person");
                p.rejected.as_str()
            })
            .collect();
        // Model texts only: never the person's edit.
        assert_eq!(demo, ["cand one", "cand two", "stored cand"].into_iter().collect());
        let off = LearnOptions {
            kinds: Kinds { demonstration: false, ..Kinds::ALL },
            ..LearnOptions::default()
        };
        assert!(build(&records, &[], &off, &stored)
            .pairs
            .iter()
            .all(|p| p.origin != Origin::Demonstration));
    }

    #[test]
    fn critiqued_candidates_lose_to_uncritiqued_siblings_the_labeler_did_not_rank_lower() {
        let critique = |s: &str| {
            fb(
                "x",
                FeedbackKind::Critique {
                    summary: Judged::new(s),
                    critique: "misses the flood".into(),
                },
            )
        };
        let records = [
            // x preferred "bad" over "worse": "worse" must not beat "bad" through the critique.
            cmp("x", "bad", "worse", Preference::A, 5),
            cmp("x", "sibling", "other", Preference::A, 5),
            critique("bad"),
            critique("other"),
        ];
        let d = build(&records, &[], &LearnOptions::default(), &none);
        let crit: Vec<(&str, &str)> = d
            .pairs
            .iter()
            .filter(|p| p.origin == Origin::Critique)
            .map(|p| (p.chosen.as_str(), p.rejected.as_str()))
            .collect();
        assert!(crit.contains(&("sibling", "bad")), "{crit:?}");
        assert!(!crit.contains(&("worse", "bad")), "the labeler ranked worse below bad: {crit:?}");
        // A critiqued text never wins through a critique.
        assert!(!crit.iter().any(|(c, _)| *c == "other" || *c == "bad"), "{crit:?}");
        assert!(d.pairs.iter().filter(|p| p.origin == Origin::Critique).all(|p| p.weight == 0.5));
    }

    #[test]
    fn likert_gives_pairs_and_ordinal_targets_in_one_group() {
        let lk = |s: &str, overall: u8| {
            fb(
                "x",
                FeedbackKind::Likert {
                    summary: Judged::new(s),
                    scores: Likert { coverage: 4, accuracy: 4, coherence: 4, overall },
                },
            )
        };
        let records = [lk("s1", 2), lk("s2", 6)];
        let d = build(&records, &[], &LearnOptions::default(), &none);
        assert_eq!(d.pairs.len(), 1);
        assert_eq!(d.pairs[0].chosen, "s2");
        assert_eq!(d.ratings.len(), 2);
        assert!(d.ratings.iter().all(|r| r.group == d.pairs[0].group));
        let only_ordinal =
            LearnOptions { kinds: Kinds::parse("ordinal").unwrap(), ..LearnOptions::default() };
        let d = build(&records, &[], &only_ordinal, &none);
        assert!(d.pairs.is_empty() && d.ratings.len() == 2);
    }

    #[test]
    fn external_pairs_are_filtered_by_kind_and_keep_their_book_groups() {
        let ext = vec![
            Pair::new(0, "doc one text", "a", "b", 1.0, "book:d1"),
            Pair::new(0, "doc one, another prompt entirely", "c", "d", 1.0, "book:d1")
                .with_origin(Origin::Synthetic),
        ];
        let d = build(&[], &ext, &LearnOptions::default(), &none);
        assert_eq!(d.pairs.len(), 2);
        assert_eq!(d.pairs[0].group, d.pairs[1].group);
        let no_synth = LearnOptions {
            kinds: Kinds::parse("all,-synthetic").unwrap(),
            ..LearnOptions::default()
        };
        assert_eq!(build(&[], &ext, &no_synth, &none).pairs.len(), 1);
    }
}
