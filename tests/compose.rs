//! The composer over a tiny random model: scheduling, batching, caching, previous context and
//! incremental edits. The model's text is noise, but deterministic, which is what these
//! behaviours need; the real model is exercised in `tests/summarize_real.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rrm::book::Book;
use rrm::compose::{ComposeOptions, Composer, MeanLogprob, NodeOutput, RunRecord, Silent};
use rrm::decompose::{ContextMode, Decomposer, FixedChunker, FixedConfig};
use rrm::infer::engine::{EngineConfig, LocalGenerator};
use rrm::infer::testing::{tiny_gguf, TinyOptions};
use rrm::store::{Store, Table};
use rrm::tree::{EdgeKind, TaskTree};

/// A made-up book: four chapters of distinct paragraphs.
fn book_text(edit: bool) -> String {
    let mut text = String::new();
    for chapter in 1..=4 {
        text.push_str(&format!("CHAPTER {chapter}.\n\n"));
        for para in 1..=6 {
            let who = if edit && chapter == 2 && para == 3 { "Miranda" } else { "Marigold" };
            text.push_str(&format!(
                "In chapter {chapter}, scene {para}, {who} walked to the mill by the river and \
                 spoke with the miller about the flood of year {}. The miller said the water \
                 had risen past the old stone mark, and the village had to move its sheep.\n\n",
                1800 + chapter * 10 + para
            ));
        }
    }
    text
}

fn chunker(context: ContextMode) -> FixedChunker {
    FixedChunker::new(FixedConfig {
        chunk_tokens: 90,
        fanout_min: 2,
        fanout_max: 3,
        output_tokens: vec![12, 16, 20],
        context,
        context_window: 2,
        ..FixedConfig::default()
    })
    .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    generator: Arc<LocalGenerator>,
}

fn fixture(max_batch: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 7, &TinyOptions { context_length: 2048, ..TinyOptions::default() }).unwrap();
    let generator = LocalGenerator::load(
        &model,
        None,
        &candle_core::Device::Cpu,
        EngineConfig { max_batch, ..EngineConfig::default() },
    )
    .unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    Fixture { _dir: dir, store, generator: Arc::new(generator) }
}

fn composer(f: &Fixture, options: ComposeOptions) -> Composer {
    Composer::new(f.generator.clone(), Arc::new(MeanLogprob), f.store.clone(), options)
}

fn options(batch_size: usize) -> ComposeOptions {
    ComposeOptions { batch_size, ..ComposeOptions::default() }
}

/// Sampled decoding: each node's seed comes from its content key, so a changed input gives a
/// changed output even from a random model (greedy noise tends to ignore its input).
fn sampled(batch_size: usize) -> ComposeOptions {
    let mut o = options(batch_size);
    o.sampling.temperature = 1.0;
    o
}

fn run(composer: &Composer, book: &Book, tree: &TaskTree) -> rrm::compose::ComposeReport {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(composer.compose(book, tree, &Silent)).unwrap()
}

#[test]
fn composes_every_node_then_rerun_is_all_cache_hits() {
    let f = fixture(8);
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    assert!(tree.max_height() >= 2, "the fixture should have at least three levels");
    let c = composer(&f, options(8));

    let first = run(&c, &book, &tree);
    assert_eq!(first.nodes_total, tree.len());
    // Nodes with the same content (noise from a random model repeats) are generated once.
    let runs = RunRecord::for_book(&f.store, book.id().as_str()).unwrap();
    assert_eq!(runs.len(), 1, "one run, one record");
    let record = runs[0].clone();
    assert!(record.complete && record.finished_unix > 0);
    let distinct: BTreeSet<&String> = record.outputs.values().collect();
    assert_eq!(first.computed, distinct.len());
    assert_eq!(first.computed + first.cache_hits, tree.len());
    assert!(first.tokens_generated > 0);
    assert!(!first.root_summary.is_empty() || first.tokens_generated > 0);
    // Every node's chosen output and candidates are stored (nodes with the same content share).
    assert_eq!(record.outputs.len(), tree.len());
    for key in record.outputs.values() {
        let out: NodeOutput = f.store.get(Table::Outputs, key).unwrap().expect("stored");
        assert!(f.store.contains(Table::Candidates, &out.gen_key).unwrap());
    }

    let second = run(&c, &book, &tree);
    assert_eq!(second.computed, 0, "a re-run must do no model work");
    assert_eq!(second.cache_hits, tree.len());
    assert_eq!(second.root_summary, first.root_summary);
    // A re-run that found everything stored adds no duplicate record.
    assert_eq!(RunRecord::for_book(&f.store, book.id().as_str()).unwrap().len(), 1);
}

#[test]
fn output_does_not_depend_on_batch_size() {
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    let f1 = fixture(1);
    let one = run(&composer(&f1, options(1)), &book, &tree);
    let f8 = fixture(8);
    let eight = run(&composer(&f8, options(8)), &book, &tree);
    assert_eq!(one.root_summary, eight.root_summary);
    for key in f1.store.keys(Table::Outputs).unwrap() {
        let a: NodeOutput = f1.store.get(Table::Outputs, &key).unwrap().unwrap();
        let b: NodeOutput = f8.store.get(Table::Outputs, &key).unwrap().expect("same keys");
        assert_eq!(a.text, b.text, "node {key}");
    }
}

/// The nodes whose output can change when `changed` changes: everything reachable from it over
/// child and previous-context edges.
fn affected(tree: &TaskTree, changed: &[String]) -> BTreeSet<String> {
    let all = tree.nodes_topological();
    let mut out = BTreeSet::new();
    let mut stack: Vec<_> =
        changed.iter().map(|l| tree.find(l).expect("label exists")).collect::<Vec<_>>();
    while let Some(id) = stack.pop() {
        if out.insert(tree.node(id).label.clone()) {
            for &n in &all {
                if tree.children(n).contains(&id) || tree.context_inputs(n).contains(&id) {
                    stack.push(n);
                }
            }
        }
    }
    out
}

fn changed_leaves(before: &TaskTree, after: &TaskTree) -> Vec<String> {
    let a: Vec<_> = before.leaves().iter().map(|&id| before.node(id).clone()).collect();
    let b: Vec<_> = after.leaves().iter().map(|&id| after.node(id).clone()).collect();
    assert_eq!(a.len(), b.len(), "a same-length word edit must not move leaf boundaries");
    a.iter()
        .zip(&b)
        .filter(|(x, y)| x.content_hash != y.content_hash)
        .map(|(_, y)| y.label.clone())
        .collect()
}

#[test]
fn one_paragraph_edit_recomputes_only_its_leaf_and_ancestors() {
    let f = fixture(8);
    let c = composer(&f, sampled(8));
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    run(&c, &book, &tree);

    let edited = Book::from_text("Mill", book_text(true));
    let tree2 = chunker(ContextMode::None).decompose(&edited).unwrap();
    let changed = changed_leaves(&tree, &tree2);
    assert_eq!(changed.len(), 1, "one paragraph lies in one leaf");
    let report = run(&c, &edited, &tree2);
    let recomputed: BTreeSet<String> = report.computed_labels.iter().cloned().collect();
    let expected = affected(&tree2, &changed);
    assert_eq!(recomputed, expected);
    assert_eq!(recomputed.len(), tree2.max_height() as usize + 1, "the leaf and its ancestors");
}

#[test]
fn with_previous_context_an_edit_also_recomputes_the_readers() {
    let f = fixture(8);
    let c = composer(&f, sampled(8));
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::Previous).decompose(&book).unwrap();
    assert!(tree.graph().edge_weights().any(|e| *e == EdgeKind::PreviousContext));
    run(&c, &book, &tree);

    let edited = Book::from_text("Mill", book_text(true));
    let tree2 = chunker(ContextMode::Previous).decompose(&edited).unwrap();
    let changed = changed_leaves(&tree, &tree2);
    let report = run(&c, &edited, &tree2);
    let recomputed: BTreeSet<String> = report.computed_labels.iter().cloned().collect();
    assert_eq!(recomputed, affected(&tree2, &changed));
    assert!(recomputed.len() > tree2.max_height() as usize + 1, "readers recompute too");
    assert!(recomputed.len() < tree2.len(), "earlier leaves stay cached");
}

#[test]
fn best_of_n_stores_every_candidate_and_picks_by_logprob() {
    let f = fixture(8);
    let c = composer(&f, ComposeOptions { best_of: 3, ..options(8) });
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    run(&c, &book, &tree);
    for key in f.store.keys(Table::Outputs).unwrap() {
        let out: NodeOutput = f.store.get(Table::Outputs, &key).unwrap().unwrap();
        let set: rrm::compose::CandidateSet =
            f.store.get(Table::Candidates, &out.gen_key).unwrap().unwrap();
        assert_eq!(set.candidates.len(), 3);
        assert_eq!(out.scores.len(), 3);
        let best = out.scores.iter().map(|s| s.score).fold(f32::MIN, f32::max);
        assert_eq!(out.scores[out.chosen].score, best);
        assert_eq!(out.text, set.candidates[out.chosen].text);
    }
}

#[test]
fn best_of_n_candidate_zero_is_the_greedy_decode_so_it_cannot_lose_it() {
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    // Leaf input key → candidate 0's text, for one composition.
    let first_candidates = |options: ComposeOptions| {
        let f = fixture(8);
        run(&composer(&f, options), &book, &tree);
        let mut out = BTreeMap::new();
        for key in f.store.keys(Table::Candidates).unwrap() {
            let set: rrm::compose::CandidateSet =
                f.store.get(Table::Candidates, &key).unwrap().unwrap();
            if set.height == 0 {
                let texts: Vec<String> = set.candidates.iter().map(|c| c.text.clone()).collect();
                out.insert(set.input_key.clone(), texts);
            }
        }
        out
    };
    let greedy = first_candidates(options(8));
    let best_of = first_candidates(ComposeOptions { best_of: 3, ..options(8) });
    assert_eq!(greedy.len(), best_of.len());
    for (key, texts) in &best_of {
        assert_eq!(texts[0], greedy[key][0], "candidate 0 of {key} is not the greedy decode");
    }
    // The others are sampled: some differ from it somewhere.
    assert!(best_of.values().any(|t| t[1] != t[0] || t[2] != t[0]));
    // Off: every candidate sampled, and a different cache key.
    let all_sampled =
        first_candidates(ComposeOptions { best_of: 3, greedy_first: false, ..options(8) });
    assert!(all_sampled.iter().any(|(k, t)| t[0] != greedy[k][0]));
}

#[test]
fn a_leaf_level_pass_then_the_rest_reuses_the_leaves() {
    let f = fixture(8);
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    let leaves_only = composer(&f, ComposeOptions { max_height: Some(0), ..options(8) });
    let partial = run(&leaves_only, &book, &tree);
    assert!(!partial.complete);
    assert!(partial.root_summary.is_empty());
    assert_eq!(partial.nodes_total, tree.leaves().len());
    let full = run(&composer(&f, options(8)), &book, &tree);
    assert!(full.complete);
    assert!(full.cache_hits >= tree.leaves().len());
    assert_eq!(full.computed + full.cache_hits, tree.len());
}

/// An ensemble stand-in of two members whose means are `gap` apart and who disagree by `std`
/// in opposite directions on alternate candidates: unsure everywhere when `std` is large, sure
/// when it is zero and the means differ.
struct Ensemble {
    gap: f32,
    std: f32,
}

impl rrm::compose::Selector for Ensemble {
    fn id(&self) -> String {
        format!("ensemble:{}:{}", self.gap, self.std)
    }
    fn score(
        &self,
        _height: u32,
        _input: &str,
        candidates: &[rrm::compose::Candidate],
    ) -> Result<Vec<rrm::compose::CandidateScore>, rrm::compose::select::SelectError> {
        Ok(two_members(candidates.len(), self.gap, self.std))
    }
}

/// Scores of `n` candidates by two members whose means fall by `gap` per candidate and who
/// disagree by `std` in opposite directions on alternate candidates.
fn two_members(n: usize, gap: f32, std: f32) -> Vec<rrm::compose::CandidateScore> {
    let member = |sign: f32| -> Vec<f32> {
        (0..n)
            .map(|k| {
                let alternate = if k % 2 == 0 { 1.0 } else { -1.0 };
                -(k as f32) * gap + sign * alternate * std
            })
            .collect()
    };
    rrm::reward::ensemble_scores(&[member(1.0), member(-1.0)], 0.0)
}

/// A person who always prefers the second summary shown, and remembers what they were asked.
#[derive(Default)]
struct Scripted {
    asked: std::sync::Mutex<Vec<rrm::compose::ask::Question>>,
}

impl rrm::compose::ask::Asker for Scripted {
    fn labeler(&self) -> String {
        "scripted".into()
    }
    fn ask(
        &self,
        q: &rrm::compose::ask::Question,
    ) -> Result<rrm::compose::ask::Answer, rrm::compose::select::SelectError> {
        self.asked.lock().unwrap().push(q.clone());
        Ok(rrm::compose::ask::Answer::B { confidence: 7 })
    }
}

fn asking(
    f: &Fixture,
    ensemble: Ensemble,
    asker: Arc<Scripted>,
    budget: Option<usize>,
) -> (Composer, Arc<rrm::compose::ask::AskingSelector>) {
    let policy = rrm::compose::ask::AskPolicy { threshold: 1.0, budget };
    let selector = Arc::new(rrm::compose::ask::AskingSelector::new(
        Arc::new(ensemble),
        asker,
        policy,
        f.store.clone(),
    ));
    let c = Composer::new(
        f.generator.clone(),
        selector.clone(),
        f.store.clone(),
        ComposeOptions { best_of: 3, ..sampled(8) },
    );
    (c, selector)
}

#[test]
fn ask_where_unsure_stores_the_answers_and_follows_them() {
    let f = fixture(8);
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    let asker = Arc::new(Scripted::default());
    let (c, selector) = asking(&f, Ensemble { gap: 0.01, std: 1.0 }, asker.clone(), Some(3));
    run(&c, &book, &tree);

    // The budget holds: three questions, three comparisons stored under the asker's name.
    let questions = asker.asked.lock().unwrap().clone();
    assert_eq!(questions.len(), 3);
    assert_eq!(selector.stats().asked, 3);
    let stored = rrm::feedback::all(&f.store).unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|fb| fb.labeler == "scripted"));
    // Each asked node took the answer (the second summary shown), and the output says so.
    let run_record = RunRecord::for_book(&f.store, book.id().as_str()).unwrap().pop().unwrap();
    for q in &questions {
        assert_eq!(q.book_id, book.id().as_str());
        assert_ne!(q.a, q.b, "a question shows two different summaries");
        let key = &run_record.outputs[&q.label];
        let out: NodeOutput = f.store.get(Table::Outputs, key).unwrap().unwrap();
        assert_eq!(out.text, q.b, "node {} follows the person's answer", q.label);
        assert!(out.scores[out.chosen].parts.contains_key("chosen_by_person"));
    }
    // A re-run finds the answered picks stored: nobody is asked twice.
    run(&c, &book, &tree);
    assert_eq!(asker.asked.lock().unwrap().len(), 3);
    assert_eq!(rrm::feedback::all(&f.store).unwrap().len(), 3);
}

#[test]
fn a_sure_ensemble_asks_nobody() {
    let f = fixture(8);
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    let asker = Arc::new(Scripted::default());
    let (c, _) = asking(&f, Ensemble { gap: 1.0, std: 0.0 }, asker.clone(), None);
    run(&c, &book, &tree);
    assert!(asker.asked.lock().unwrap().is_empty());
    assert!(rrm::feedback::all(&f.store).unwrap().is_empty());
}

/// An ensemble stand-in that is sure above the leaves and, at each leaf, unsure by an amount
/// set by the leaf's text: two members whose difference between neighbouring candidates is
/// `0.1 ± 2·std`, so a leaf's doubt (gap over spread) is `0.1 / (2·std)`.
struct LeafDoubt;

impl rrm::compose::Selector for LeafDoubt {
    fn id(&self) -> String {
        "leaf-doubt".into()
    }
    fn score(
        &self,
        height: u32,
        input: &str,
        candidates: &[rrm::compose::Candidate],
    ) -> Result<Vec<rrm::compose::CandidateScore>, rrm::compose::select::SelectError> {
        let byte = blake3::hash(input.as_bytes()).as_bytes()[0];
        let std = if height == 0 { 0.01 + f32::from(byte) / 255.0 } else { 0.0 };
        Ok(two_members(candidates.len(), 0.1, std))
    }
}

#[test]
fn a_ranked_budget_asks_where_the_ensemble_is_least_sure_not_where_it_comes_first() {
    use rrm::compose::ask::{ranked_threshold, run_doubts, AskPolicy, AskingSelector};
    let f = fixture(8);
    let book = Book::from_text("Mill", book_text(false));
    let tree = chunker(ContextMode::None).decompose(&book).unwrap();
    let options = ComposeOptions { best_of: 3, ..sampled(8) };
    // The planning pass: the ensemble alone.
    let plain =
        Composer::new(f.generator.clone(), Arc::new(LeafDoubt), f.store.clone(), options.clone());
    run(&plain, &book, &tree);
    let planned = RunRecord::for_book(&f.store, book.id().as_str()).unwrap().pop().unwrap();
    let mut doubts = run_doubts(&f.store, &planned).unwrap();
    let leaves = tree.leaves().len();
    assert!(doubts.len() >= leaves.min(6), "every leaf with two different texts has a doubt");
    doubts.sort_by(|a, b| a.1.total_cmp(&b.1));
    let budget = 3;
    let values: Vec<f32> = doubts.iter().map(|(_, d)| *d).collect();
    let threshold = ranked_threshold(&values, budget, 1e6);
    let expected: BTreeSet<String> = doubts[..budget].iter().map(|(l, _)| l.clone()).collect();
    assert!(doubts[budget].1 > doubts[budget - 1].1, "the test needs distinct doubts");

    // The asking pass, under the planned threshold, asks exactly those nodes.
    let asker = Arc::new(Scripted::default());
    let selector = Arc::new(AskingSelector::new(
        Arc::new(LeafDoubt),
        asker.clone(),
        AskPolicy { threshold, budget: Some(budget) },
        f.store.clone(),
    ));
    let c = Composer::new(f.generator.clone(), selector.clone(), f.store.clone(), options);
    let report = run(&c, &book, &tree);
    let asked: BTreeSet<String> =
        asker.asked.lock().unwrap().iter().map(|q| q.label.clone()).collect();
    assert_eq!(asked, expected);
    // Every leaf came from the planning pass's cache: planning costs no second generation.
    assert!(report.cache_hits >= leaves);
}
