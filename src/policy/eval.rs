//! A trained policy against a baseline, node by node, on books: both compose the same task
//! tree (the composer's default single-candidate settings, cached in the store like any run),
//! then every node's two outputs are judged. Win rates per height and at the root, under each
//! judge and under the reward ensemble; mean length and loop rate of each side.
//!
//! The judges (simulated labelers, which judge coverage of the book) see the same input for
//! both sides: the part of the book the node covers (at height 0 exactly the node's input;
//! above it the book text under the node, since the two policies' own inputs there are their
//! own children's summaries). The reward ensemble scores each side's summary against that
//! side's own input, the text its policy summarized (above height 0 its children's summaries
//! joined as the composer joins them), which is what the reward model was trained on.
//!
//! Against its own base, a policy is compared with the base's zero-step export (the base put
//! through the policy's export with no training; [`BaselineUsed`]), not with the base's file:
//! a Q8_0 policy exported from dequantized Q4_1 weights differs from the Q4_1 file by its
//! quantization even before any training step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::judge::{mean_std, Judge, MemberScorer};
use super::kl::KlEstimate;
use super::PolicyError;
use crate::book::Book;
use crate::compose::{
    prompt, ComposeError, ComposeOptions, Composer, MeanLogprob, RunRecord, Silent,
};
use crate::infer::Generator;
use crate::lm::export::ExportFormat;
use crate::store::Store;
use crate::tree::{NodeKind, TaskTree};

/// One output of one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub text: String,
    pub looped: bool,
    /// What this side's node summarized (its prompt's input: a passage, or its children's
    /// summaries joined); empty in items written before it was kept (the book text stands in).
    #[serde(default)]
    pub input: String,
}

impl Output {
    /// What this side summarized, or `book_text` (the text the node covers) in items written
    /// before the side's own input was kept.
    fn input_or<'a>(&'a self, book_text: &'a str) -> &'a str {
        if self.input.is_empty() {
            book_text
        } else {
            &self.input
        }
    }
}

/// A node with both sides' outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalItem {
    /// The book's title, for people.
    pub book: String,
    /// The book's content id: what groups nodes by book (two books can share a title); empty in
    /// items written before it was kept, and then the title stands in.
    #[serde(default)]
    pub book_id: String,
    pub node: String,
    pub height: u32,
    pub is_root: bool,
    /// The book text the node covers (what the judges see).
    pub input: String,
    pub policy: Output,
    pub baseline: Output,
}

/// Wins of the policy over the baseline (ties count half).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// (wins + ties / 2) / n.
    pub rate: f64,
    /// Half-width of a 95% normal interval on `rate` (treats every node as independent).
    pub ci95: f64,
    /// A 95% bootstrap interval on `rate` that resamples whole books, since the nodes of one
    /// book are not independent; `None` with fewer than two books.
    #[serde(default)]
    pub interval_by_book: Option<(f64, f64)>,
    /// How many books the nodes came from (a bootstrap over a handful of books is itself
    /// rough: read the interval with this count).
    #[serde(default)]
    pub books: usize,
}

impl WinRate {
    /// From the policy-minus-baseline margin of each node and the book each node is from.
    fn from_margins(margins: &[f64], books: &[&str]) -> WinRate {
        let mut w = WinRate::default();
        // Each node's credit (1 win, ½ tie, 0 loss), counted and kept for the interval.
        let credits: Vec<f64> = margins
            .iter()
            .map(|&m| {
                if m.abs() < 1e-9 {
                    w.ties += 1;
                    0.5
                } else if m > 0.0 {
                    w.wins += 1;
                    1.0
                } else {
                    w.losses += 1;
                    0.0
                }
            })
            .collect();
        let distinct: std::collections::BTreeSet<&str> = books.iter().copied().collect();
        w.books = distinct.len();
        if distinct.len() >= 2 {
            w.interval_by_book =
                crate::eval::bootstrap::clustered_mean_interval(&credits, books, 2000, 0.95, 0);
        }
        let n = margins.len().max(1) as f64;
        w.rate = (w.wins as f64 + 0.5 * w.ties as f64) / n;
        w.ci95 = 1.96 * (w.rate * (1.0 - w.rate) / n).sqrt();
        w
    }
}

/// Length, loops and grounding of one side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SideStats {
    pub mean_words: f64,
    pub loop_rate: f64,
    /// Mean over nodes of the share of content words the side's own input does not support
    /// ([`crate::grounding`]; absent in reports written before it was measured).
    #[serde(default)]
    pub unsupported_rate: f64,
    /// Mean over nodes of the share of word 4-grams copied verbatim from the side's own input.
    #[serde(default)]
    pub copied_4gram_share: f64,
}

/// The comparison at one height (or at the root).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub nodes: usize,
    /// Judge name → win rate of the policy.
    pub judges: BTreeMap<String, WinRate>,
    /// Judge name → mean score of (policy, baseline).
    pub judge_means: BTreeMap<String, (f64, f64)>,
    /// Under the reward ensemble's mean score.
    pub reward: Option<WinRate>,
    pub reward_means: Option<(f64, f64)>,
    pub policy: SideStats,
    pub baseline: SideStats,
}

/// The model the baseline side really was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineUsed {
    /// The model named as the baseline.
    pub spec: String,
    /// The GGUF that composed the baseline side and scored π_ref of the KL estimate.
    pub file: PathBuf,
    /// `Some(weight type)`: `file` is the zero-step export of `spec` (the policy's base put
    /// through the policy's export with no training, `registry::zero_step_export`); `None`:
    /// the named model's own file.
    pub zero_step: Option<ExportFormat>,
    /// Why this one, for people.
    pub note: String,
}

/// The whole evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub policy: String,
    pub baseline: String,
    /// Which file the baseline was (see [`BaselineUsed`]).
    #[serde(default)]
    pub baseline_used: BaselineUsed,
    pub books: Vec<String>,
    /// Height → comparison.
    pub heights: BTreeMap<u32, Comparison>,
    pub root: Option<Comparison>,
    /// KL(π‖π_ref) on held-out prompts, π the policy and π_ref the baseline (the file in
    /// `baseline_used`).
    pub kl: Option<KlEstimate>,
    /// Books the policy was trained on that were evaluated anyway.
    pub seen_books: Vec<String>,
    /// The labelers whose feedback trained the policy (from its card): a judge of the same
    /// name is not independent of the training signal.
    pub trained_on: Vec<String>,
}

/// Judges `items` (see the module docs).
pub fn compare(
    items: &[&EvalItem],
    judges: &[&dyn Judge],
    reward: Option<&dyn MemberScorer>,
) -> Result<Comparison, PolicyError> {
    let mut c = Comparison { nodes: items.len(), ..Comparison::default() };
    if items.is_empty() {
        return Ok(c);
    }
    let n = items.len() as f64;
    let books: Vec<&str> = items
        .iter()
        .map(|i| if i.book_id.is_empty() { i.book.as_str() } else { i.book_id.as_str() })
        .collect();
    for j in judges {
        let mut margins = Vec::with_capacity(items.len());
        let (mut sp, mut sb) = (0.0, 0.0);
        for it in items {
            let p = j.score(&it.input, &it.policy.text);
            let b = j.score(&it.input, &it.baseline.text);
            margins.push(p - b);
            sp += p / n;
            sb += b / n;
        }
        c.judges.insert(j.name(), WinRate::from_margins(&margins, &books));
        c.judge_means.insert(j.name(), (sp, sb));
    }
    if let Some(r) = reward {
        let mut margins = Vec::with_capacity(items.len());
        let (mut sp, mut sb) = (0.0, 0.0);
        // Each side against its own input: above height 0 the two policies summarized
        // different children's summaries.
        let score = |height: u32, o: &Output, book: &str| -> Result<f64, PolicyError> {
            let input = o.input_or(book);
            let members = r.member_scores(height, input, &[o.text.as_str()])?;
            Ok(mean_std(&members).first().map_or(0.0, |m| m.0))
        };
        for it in items {
            let p = score(it.height, &it.policy, &it.input)?;
            let b = score(it.height, &it.baseline, &it.input)?;
            margins.push(p - b);
            sp += p / n;
            sb += b / n;
        }
        c.reward = Some(WinRate::from_margins(&margins, &books));
        c.reward_means = Some((sp, sb));
    }
    let side = |f: &dyn Fn(&EvalItem) -> &Output| {
        let checked: Vec<crate::grounding::Report> = items
            .iter()
            .map(|i| {
                let o = f(i);
                crate::grounding::check(o.input_or(&i.input), &o.text)
            })
            .collect();
        SideStats {
            mean_words: items
                .iter()
                .map(|i| f(i).text.split_whitespace().count() as f64)
                .sum::<f64>()
                / n,
            loop_rate: items.iter().filter(|i| f(i).looped).count() as f64 / n,
            unsupported_rate: checked.iter().map(|r| r.unsupported_rate).sum::<f64>() / n,
            copied_4gram_share: checked.iter().map(|r| r.copied_4gram_share).sum::<f64>() / n,
        }
    };
    c.policy = side(&|i| &i.policy);
    c.baseline = side(&|i| &i.baseline);
    Ok(c)
}

/// Per-height and root comparisons of `items`.
pub fn report(
    items: &[EvalItem],
    judges: &[&dyn Judge],
    reward: Option<&dyn MemberScorer>,
) -> Result<(BTreeMap<u32, Comparison>, Option<Comparison>), PolicyError> {
    let mut heights = BTreeMap::new();
    let mut hs: Vec<u32> = items.iter().map(|i| i.height).collect();
    hs.sort_unstable();
    hs.dedup();
    for h in hs {
        let at: Vec<&EvalItem> = items.iter().filter(|i| i.height == h).collect();
        heights.insert(h, compare(&at, judges, reward)?);
    }
    let roots: Vec<&EvalItem> = items.iter().filter(|i| i.is_root).collect();
    let root = if roots.is_empty() { None } else { Some(compare(&roots, judges, reward)?) };
    Ok((heights, root))
}

/// The outputs of the newest composition of `tree` by the model `model_hash`, by node label.
fn outputs(
    store: &Store,
    book: &Book,
    tree: &TaskTree,
    model_hash: &str,
) -> Result<BTreeMap<String, Output>, PolicyError> {
    let store_err = |e: crate::store::StoreError| PolicyError::Invalid(e.to_string());
    let run = RunRecord::for_book(store, book.id().as_str())
        .map_err(store_err)?
        .into_iter()
        .rev()
        .find(|r| {
            // One model for every node (a run with another model at some level is not it).
            r.matches(tree)
                && r.model.hash == model_hash
                && r.models_at.is_empty()
                && !r.outputs.is_empty()
        })
        .ok_or_else(|| {
            PolicyError::Invalid(format!("{}: no composition was stored", book.title()))
        })?;
    let mut out = BTreeMap::new();
    for label in run.outputs.keys() {
        if let Some((o, set)) = run.node_result(store, label).map_err(store_err)? {
            let looped =
                set.as_ref().and_then(|s| s.candidates.get(o.chosen)).is_some_and(|c| c.looped);
            let input = set.map(|s| s.input).unwrap_or_default();
            out.insert(label.clone(), Output { text: o.text, looped, input });
        }
    }
    // A node whose candidate set is gone: its input rebuilt as the composer builds it.
    for id in tree.nodes_topological() {
        let label = &tree.node(id).label;
        if out.get(label).is_some_and(|o| o.input.is_empty()) {
            let input = node_input(book, tree, id, &out);
            if let Some(o) = out.get_mut(label) {
                o.input = input;
            }
        }
    }
    Ok(out)
}

/// What node `id` summarized, given each node's output: a leaf's span of the book, else its
/// children's outputs joined as the composer joins them (`compose::prompt::join_children`).
fn node_input(
    book: &Book,
    tree: &TaskTree,
    id: crate::tree::NodeId,
    outputs: &BTreeMap<String, Output>,
) -> String {
    match &tree.node(id).kind {
        NodeKind::Leaf { span } => span.get(book.text()).unwrap_or_default().to_string(),
        NodeKind::Internal { .. } => {
            let texts: Vec<&str> = tree
                .children(id)
                .into_iter()
                .filter_map(|c| outputs.get(&tree.node(c).label))
                .map(|o| o.text.as_str())
                .collect();
            prompt::join_children(&texts)
        }
    }
}

/// Composes `tree` with the policy and with the baseline (each run cached in the store like
/// any `rrm summarize`; the baseline runs second, so it stays the book's current run) and
/// pairs their outputs node by node.
pub async fn compose_both(
    store: &Store,
    book: &Book,
    tree: &TaskTree,
    policy: Arc<dyn Generator>,
    baseline: Arc<dyn Generator>,
    options: &ComposeOptions,
) -> Result<Vec<EvalItem>, PolicyError> {
    let compose_err = |e: ComposeError| PolicyError::Invalid(format!("{}: {e}", book.title()));
    let mut sides = Vec::new();
    for generator in [policy, baseline] {
        let model_hash = generator.identity().hash.clone();
        let composer =
            Composer::new(generator, Arc::new(MeanLogprob), store.clone(), options.clone());
        composer.compose(book, tree, &Silent).await.map_err(compose_err)?;
        sides.push(outputs(store, book, tree, &model_hash)?);
    }
    let root = tree.node(tree.root()).label.clone();
    let mut items = Vec::new();
    for id in tree.nodes_topological() {
        let node = tree.node(id);
        if options.max_height.is_some_and(|h| node.height > h) {
            continue;
        }
        let (Some(p), Some(b)) = (sides[0].get(&node.label), sides[1].get(&node.label)) else {
            continue;
        };
        items.push(EvalItem {
            book: book.title().to_string(),
            book_id: book.id().as_str().to_string(),
            node: node.label.clone(),
            height: node.height,
            is_root: node.label == root,
            input: book.slice(node.covers).to_string(),
            policy: p.clone(),
            baseline: b.clone(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::sim::SimLabeler;

    fn item(h: u32, root: bool, p: &str, b: &str) -> EvalItem {
        EvalItem {
            book: "b".into(),
            book_id: String::new(),
            node: format!("h{h}.0"),
            height: h,
            is_root: root,
            input: "Marigold went to the mill. The flood drowned the sheep.".into(),
            policy: Output { text: p.into(), looped: false, input: String::new() },
            baseline: Output { text: b.into(), looped: true, input: String::new() },
        }
    }

    #[test]
    fn win_rates_per_height_and_root() {
        let items = vec![
            item(0, false, "Marigold saw the flood drown the sheep.", "Someone went somewhere."),
            item(0, false, "Same.", "Same."),
            item(1, true, "A thing.", "Marigold and the flood."),
        ];
        let sim = SimLabeler::new("sim", 0.0);
        let (heights, root) = report(&items, &[&sim], None).unwrap();
        let h0 = &heights[&0];
        assert_eq!(h0.nodes, 2);
        assert_eq!((h0.judges["sim"].wins, h0.judges["sim"].ties), (1, 1));
        assert!((h0.judges["sim"].rate - 0.75).abs() < 1e-9);
        assert_eq!(h0.baseline.loop_rate, 1.0);
        assert_eq!(h0.policy.loop_rate, 0.0);
        // Each side checked against the input: an invented summary against a copied one.
        let pair = [item(1, true, "Bob sold fish in Rome.", "The flood drowned the sheep.")];
        let checked = report(&pair, &[&sim], None).unwrap().1.unwrap();
        assert!(checked.policy.unsupported_rate > 0.9, "{checked:?}");
        assert_eq!(checked.baseline.unsupported_rate, 0.0);
        assert!(checked.baseline.copied_4gram_share > 0.99, "{checked:?}");
        assert_eq!(checked.policy.copied_4gram_share, 0.0);
        let root = root.unwrap();
        assert_eq!(root.judges["sim"].losses, 1);
        // One book: no interval over books; two books whose nodes all go one way each: the
        // interval over books spans what resampling whole books can give.
        assert_eq!(h0.judges["sim"].interval_by_book, None);
        let m = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0];
        let w = WinRate::from_margins(&m, &["a", "a", "a", "b", "b", "b"]);
        assert_eq!((w.wins, w.losses, w.rate, w.books), (3, 3, 0.5, 2));
        let (lo, hi) = w.interval_by_book.unwrap();
        assert!(lo < 0.1 && hi > 0.9, "{lo} {hi}");
        assert!(w.ci95 < 0.45, "the node interval is narrower: {}", w.ci95);
        // Two books with one title are two books: nodes are grouped by content id.
        let mut a = item(0, false, "Marigold saw the flood.", "Someone went somewhere.");
        let mut b = a.clone();
        (a.book_id, b.book_id) = ("id-a".into(), "id-b".into());
        let (by_height, _) = report(&[a, b], &[&sim], None).unwrap();
        assert_eq!(by_height[&0].judges["sim"].books, 2);
    }

    /// Records the inputs it is asked to score against; scores a summary by its length.
    struct Recorder(std::sync::Mutex<Vec<(String, String)>>);

    impl MemberScorer for Recorder {
        fn name(&self) -> String {
            "recorder".into()
        }

        fn member_scores(
            &self,
            _height: u32,
            input: &str,
            summaries: &[&str],
        ) -> Result<Vec<Vec<f32>>, crate::reward::RewardError> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(summaries.iter().map(|s| (input.to_string(), s.to_string())));
            Ok(vec![summaries.iter().map(|s| s.len() as f32).collect()])
        }
    }

    #[test]
    fn the_reward_judge_scores_each_side_against_its_own_input() {
        let mut it = item(1, true, "Policy summary.", "Baseline summary.");
        it.policy.input = "The policy's children's summaries.".into();
        it.baseline.input = "The baseline's children's summaries.".into();
        let recorder = Recorder(std::sync::Mutex::new(Vec::new()));
        let c = compare(&[&it], &[], Some(&recorder)).unwrap();
        let seen = recorder.0.into_inner().unwrap();
        assert!(seen.contains(&(it.policy.input.clone(), it.policy.text.clone())), "{seen:?}");
        assert!(seen.contains(&(it.baseline.input.clone(), it.baseline.text.clone())), "{seen:?}");
        assert!(seen.iter().all(|(input, _)| *input != it.input), "{seen:?}");
        assert_eq!(c.reward.unwrap().losses, 1);
        // An item without the sides' inputs (written before they were kept): the book text.
        let old = item(0, false, "A.", "B.");
        let recorder = Recorder(std::sync::Mutex::new(Vec::new()));
        compare(&[&old], &[], Some(&recorder)).unwrap();
        assert!(recorder.0.into_inner().unwrap().iter().all(|(input, _)| *input == old.input));
    }

    #[test]
    fn node_inputs_are_the_composers() {
        use crate::book::Book;
        use crate::decompose::fixed::{FixedChunker, FixedConfig};
        use crate::decompose::Decomposer;
        let text = (0..40)
            .map(|i| format!("Paragraph {i} tells how the miller mended wheel {i} by the river."))
            .collect::<Vec<_>>()
            .join("\n\n");
        let book = Book::from_text("Mill", &text);
        let config = FixedConfig {
            chunk_tokens: 40,
            fanout_min: 2,
            fanout_max: 4,
            ..FixedConfig::default()
        };
        let tree = FixedChunker::new(config).unwrap().decompose(&book).unwrap();
        assert!(tree.node(tree.root()).height >= 1);
        let outputs: BTreeMap<String, Output> = tree
            .nodes_topological()
            .into_iter()
            .map(|id| {
                let label = tree.node(id).label.clone();
                let o = Output {
                    text: format!("Summary of {label}."),
                    looped: false,
                    input: String::new(),
                };
                (label, o)
            })
            .collect();
        let root = tree.root();
        let children: Vec<String> = tree
            .children(root)
            .into_iter()
            .map(|c| format!("Summary of {}.", tree.node(c).label))
            .collect();
        let refs: Vec<&str> = children.iter().map(String::as_str).collect();
        assert_eq!(node_input(&book, &tree, root, &outputs), prompt::join_children(&refs));
        let mut leaf = root;
        while let Some(&first) = tree.children(leaf).first() {
            leaf = first;
        }
        let NodeKind::Leaf { span } = &tree.node(leaf).kind else { panic!("not a leaf") };
        assert_eq!(node_input(&book, &tree, leaf, &outputs), span.get(book.text()).unwrap());
    }
}
