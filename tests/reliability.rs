//! Nothing lost, nothing hidden: the data-safety and error-surfacing findings of the reliability
//! review, each as a test over the library (a tiny random model, a made-up book, a temporary
//! workspace). Every test here failed before its fix.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rrm::book::Book;
use rrm::compose::select::SelectError;
use rrm::compose::{
    Candidate, CandidateOrigin, CandidateScore, CandidateSet, ComposeError, ComposeOptions,
    MeanLogprob, Observer, RunRecord, Selector, Silent,
};
use rrm::decompose::{FixedChunker, FixedConfig};
use rrm::feedback::{self, Feedback, FeedbackKind, Judged, Preference};
use rrm::infer::engine::{EngineConfig, LocalGenerator};
use rrm::infer::testing::{tiny_gguf, TinyOptions};
use rrm::infer::{Completion, GenerationRequest, Generator, InferError, ModelIdentity};
use rrm::store::Table;
use rrm::tree::TaskTree;
use rrm::workspace::check::{self, ProblemKind};
use rrm::workspace::gc::{self, GcOptions};
use rrm::workspace::{books, queue, rating, summarize, trees, Workspace, WorkspaceConfig};

/// Four chapters of distinct paragraphs.
fn book_text(edit: bool) -> String {
    let mut text = String::new();
    for chapter in 1..=4 {
        text.push_str(&format!("CHAPTER {chapter}.\n\n"));
        for para in 1..=5 {
            let who = if edit && chapter == 2 && para == 3 { "Miranda" } else { "Marigold" };
            text.push_str(&format!(
                "In chapter {chapter}, scene {para}, {who} walked to the mill and spoke with the \
                 miller about the flood of year {}. The water had risen past the stone mark.\n\n",
                1800 + chapter * 10 + para
            ));
        }
    }
    text
}

struct Fixture {
    dir: tempfile::TempDir,
    ws: Workspace,
    generator: Arc<dyn Generator>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 7, &TinyOptions { context_length: 2048, ..TinyOptions::default() }).unwrap();
    let generator = LocalGenerator::load(
        &model,
        None,
        &candle_core::Device::Cpu,
        EngineConfig { max_batch: 8, ..EngineConfig::default() },
    )
    .unwrap();
    let mut config = WorkspaceConfig::new(dir.path().join("db"));
    config.books_dir = dir.path().join("books");
    config.trees_dir = dir.path().join("trees");
    let ws = Workspace::open(&config).unwrap();
    Fixture { dir, ws, generator: Arc::new(generator) }
}

fn chunker() -> FixedChunker {
    FixedChunker::new(FixedConfig {
        chunk_tokens: 90,
        fanout_min: 2,
        fanout_max: 3,
        output_tokens: vec![12, 16, 20],
        ..FixedConfig::default()
    })
    .unwrap()
}

impl Fixture {
    fn book(&self, edit: bool) -> (Book, TaskTree) {
        let path = self.dir.path().join("mill.txt");
        std::fs::write(&path, book_text(edit)).unwrap();
        let book = self.ws.open_book(path.to_str().unwrap(), false, &|_| {}).unwrap();
        let tree = summarize::decompose(&self.ws, &book, &chunker()).unwrap();
        (book, tree)
    }

    fn compose(
        &self,
        book: &Book,
        tree: &TaskTree,
        generator: Arc<dyn Generator>,
        selector: Arc<dyn Selector>,
        options: ComposeOptions,
    ) -> Result<rrm::compose::ComposeReport, Box<rrm::workspace::WorkspaceError>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(summarize::compose(&self.ws, book, tree, generator, selector, options, &Silent))
            .map_err(Box::new)
    }
}

fn best_of(n: usize) -> ComposeOptions {
    ComposeOptions { best_of: n, ..ComposeOptions::default() }
}

/// A generator that serves `budget` calls, then fails (a crash in the middle of a run).
struct FailAfter {
    inner: Arc<dyn Generator>,
    budget: AtomicUsize,
}

impl Generator for FailAfter {
    fn identity(&self) -> &ModelIdentity {
        self.inner.identity()
    }
    fn context_length(&self) -> Result<usize, InferError> {
        self.inner.context_length()
    }
    fn count_tokens(&self, text: &str) -> Result<usize, InferError> {
        self.inner.count_tokens(text)
    }
    fn generate(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> BoxFuture<'_, Result<Vec<Completion>, InferError>> {
        let left =
            self.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1));
        match left {
            Ok(_) => self.inner.generate(requests),
            Err(_) => Box::pin(async { Err(InferError::Other("the machine went away".into())) }),
        }
    }
}

#[test]
fn an_interrupted_run_is_recorded_shown_and_kept() {
    let f = fixture();
    let (book, tree) = f.book(false);
    let failing = Arc::new(FailAfter { inner: f.generator.clone(), budget: AtomicUsize::new(4) });
    let err = f
        .compose(&book, &tree, failing, Arc::new(MeanLogprob), ComposeOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("went away"), "{err}");
    // The run's record was written as nodes finished: the finished nodes are reachable.
    let runs = RunRecord::for_book(f.ws.store(), book.id().as_str()).unwrap();
    assert_eq!(runs.len(), 1, "the interrupted run has a record");
    assert!(!runs[0].complete);
    assert!(runs[0].outputs.len() >= 4, "{:?}", runs[0].outputs);
    let loaded = trees::load_tree(&f.ws, tree.clone()).unwrap();
    let shown = loaded
        .tree
        .nodes_topological()
        .iter()
        .filter(|&&n| loaded.tree.node(n).output.is_some())
        .count();
    assert_eq!(shown, runs[0].outputs.len(), "tree show sees the interrupted run's outputs");
    // Garbage collection keeps them.
    let report = gc::gc(&f.ws, GcOptions::default()).unwrap();
    assert_eq!((report.outputs_removed, report.candidate_sets_removed), (0, 0), "{report:?}");
    // And a resumed run recomputes none of them.
    let resumed = f
        .compose(
            &book,
            &tree,
            f.generator.clone(),
            Arc::new(MeanLogprob),
            ComposeOptions::default(),
        )
        .unwrap();
    for label in runs[0].outputs.keys() {
        assert!(!resumed.computed_labels.contains(label), "{label} recomputed");
    }
}

#[test]
fn gc_keeps_every_run_every_sample_and_what_feedback_rated() {
    let f = fixture();
    let (book, tree) = f.book(false);
    // Two runs of the same book: best-of-2 first, then greedy (the last).
    f.compose(&book, &tree, f.generator.clone(), Arc::new(MeanLogprob), best_of(2)).unwrap();
    f.compose(&book, &tree, f.generator.clone(), Arc::new(MeanLogprob), ComposeOptions::default())
        .unwrap();
    let runs = RunRecord::for_book(f.ws.store(), book.id().as_str()).unwrap();
    assert_eq!(runs.len(), 2, "both runs are kept, not only the last");
    // Draw candidates for rating on a leaf, and rate two of the best-of-2 candidates of another.
    let target = rating::resolve(
        &f.ws,
        "h0.1",
        Some(book.source().path().unwrap().to_str().unwrap()),
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(rating::draw(&f.ws, f.generator.as_ref(), &target, 2, None, None)).unwrap();
    let rated_label = "h0.2";
    let (first_run_set, input_key) = {
        let (output, set) = runs[0].node_result(f.ws.store(), rated_label).unwrap().unwrap();
        let set = set.unwrap();
        assert_eq!(set.candidates.len(), 2);
        (set, output.input_key)
    };
    let kind = FeedbackKind::Comparison {
        a: Judged::new(first_run_set.candidates[0].text.clone()),
        b: Judged::new(first_run_set.candidates[1].text.clone() + " (other)"),
        prefer: Preference::A,
        confidence: 7,
    };
    feedback::put(f.ws.store(), Feedback::new("ann", &input_key, &first_run_set.input, 0, kind))
        .unwrap();

    // Both runs' outputs are live while the book is.
    let before = gc::gc(&f.ws, GcOptions { dry_run: true, ..GcOptions::default() }).unwrap();
    assert_eq!(before.outputs_removed, 0, "{before:?}");

    // Edit the book: its old runs are dead, but samples and rated candidates stay.
    f.book(true);
    let report = gc::gc(&f.ws, GcOptions::default()).unwrap();
    assert!(report.outputs_removed > 0 && report.runs_removed == 2, "{report:?}");
    let sets: Vec<CandidateSet> =
        f.ws.store()
            .scan::<CandidateSet>(Table::Candidates, "")
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
    assert!(
        sets.iter().any(|s| s.origin == CandidateOrigin::Sample),
        "the draw for rating is kept"
    );
    assert!(
        sets.iter().any(|s| s.gen_key == first_run_set.gen_key),
        "the rated candidates are kept"
    );
    assert!(report.kept_for_feedback >= 1 && report.kept_samples >= 1, "{report:?}");
}

#[test]
fn gc_never_drops_a_book_whose_file_is_missing_without_the_flag() {
    let f = fixture();
    let (book, tree) = f.book(false);
    f.compose(&book, &tree, f.generator.clone(), Arc::new(MeanLogprob), ComposeOptions::default())
        .unwrap();
    std::fs::remove_file(book.source().path().unwrap()).unwrap();
    let kept = gc::gc(&f.ws, GcOptions::default()).unwrap();
    assert_eq!((kept.outputs_removed, kept.runs_removed), (0, 0), "{kept:?}");
    assert!(matches!(books::status(&f.ws, book.id()).unwrap(), books::BookStatus::Missing { .. }));
    let dropped =
        gc::gc(&f.ws, GcOptions { drop_missing_books: true, ..GcOptions::default() }).unwrap();
    assert!(dropped.outputs_removed > 0 && dropped.runs_removed == 1, "{dropped:?}");
}

#[test]
fn a_corrupt_record_is_named_skipped_and_quarantined() {
    let f = fixture();
    let (book, tree) = f.book(false);
    f.compose(&book, &tree, f.generator.clone(), Arc::new(MeanLogprob), best_of(2)).unwrap();
    let store = f.ws.store();
    store.put_raw(Table::Candidates, b"deadbeef", b"{\"gen_key\": 12").unwrap();
    store.put_raw(Table::Feedback, b"fb/0000", b"not json").unwrap();
    // A strict read names the key; the scans rating, the queue and training use go on.
    let err = store.scan::<CandidateSet>(Table::Candidates, "").unwrap_err();
    assert!(err.to_string().contains("deadbeef") && err.to_string().contains("db check"), "{err}");
    assert!(feedback::all(store).unwrap().is_empty());
    assert!(!queue::nodes(&f.ws).unwrap().is_empty(), "the queue still works");
    // db check reports both; --repair moves them aside; then the database reads clean.
    let report = check::check(&f.ws, false).unwrap();
    assert_eq!(report.count(ProblemKind::Corrupt), 2, "{report:?}");
    assert!(!report.is_clean());
    let repaired = check::check(&f.ws, true).unwrap();
    assert!(
        repaired.is_clean()
            && repaired.problems.iter().all(|p| p.kind != ProblemKind::Corrupt || p.quarantined)
    );
    let after = check::check(&f.ws, false).unwrap();
    assert!(after.problems.is_empty(), "{:?}", after.problems);
    assert_eq!(store.len(Table::Quarantine).unwrap(), 2, "moved aside, not deleted");
    store.scan::<CandidateSet>(Table::Candidates, "").unwrap();
}

/// A selector that gives one score too few.
struct ShortSelector;

impl Selector for ShortSelector {
    fn id(&self) -> String {
        "short".into()
    }
    fn score(&self, _: u32, _: &str, c: &[Candidate]) -> Result<Vec<CandidateScore>, SelectError> {
        Ok(vec![CandidateScore::new(1.0); c.len() - 1])
    }
}

/// A selector that records which thread scores.
struct ThreadSelector(Mutex<BTreeSet<String>>);

impl Selector for ThreadSelector {
    fn id(&self) -> String {
        "thread".into()
    }
    fn score(&self, _: u32, _: &str, c: &[Candidate]) -> Result<Vec<CandidateScore>, SelectError> {
        if let Ok(mut seen) = self.0.lock() {
            seen.insert(format!("{:?}", std::thread::current().id()));
        }
        Ok(c.iter().map(|_| CandidateScore::new(0.0)).collect())
    }
}

#[test]
fn selectors_are_checked_and_run_off_the_async_runtime() {
    let f = fixture();
    let (book, tree) = f.book(false);
    let err = f
        .compose(&book, &tree, f.generator.clone(), Arc::new(ShortSelector), best_of(2))
        .unwrap_err();
    match *err {
        rrm::workspace::WorkspaceError::Compose(ComposeError::Scores {
            got: 1, want: 2, ..
        }) => {}
        other => panic!("expected a score-count error, got {other}"),
    }
    let selector = Arc::new(ThreadSelector(Mutex::new(BTreeSet::new())));
    f.compose(&book, &tree, f.generator.clone(), selector.clone(), best_of(2)).unwrap();
    let here = format!("{:?}", std::thread::current().id());
    let seen = selector.0.lock().unwrap().clone();
    assert!(!seen.is_empty() && !seen.contains(&here), "scored on {seen:?}, runtime on {here}");
}

#[test]
fn mean_logprob_refuses_candidates_without_logprobs() {
    let candidate = |lp: Option<f32>| Candidate {
        text: "t".into(),
        raw_text: "t".into(),
        completion_tokens: 1,
        mean_logprob: lp,
        sum_logprob: lp,
        finish: rrm::infer::FinishReason::Stop,
        looped: false,
        seed: 0,
    };
    let err = MeanLogprob.score(0, "in", &[candidate(Some(-1.0)), candidate(None)]).unwrap_err();
    assert!(
        err.message.contains("no log-probabilities") && err.message.contains("candidate 1"),
        "{err}"
    );
}

#[test]
fn every_draw_for_rating_is_a_new_one() {
    let f = fixture();
    let (book, _) = f.book(false);
    let target = rating::resolve(
        &f.ws,
        "h0.0",
        Some(book.source().path().unwrap().to_str().unwrap()),
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Greedy draws repeat their text; each call must still be a new draw (a new seed), not the
    // same stored set served again.
    for _ in 0..3 {
        rt.block_on(rating::draw(&f.ws, f.generator.as_ref(), &target, 1, Some(0.0), None))
            .unwrap();
    }
    let samples =
        f.ws.store()
            .scan::<CandidateSet>(Table::Candidates, "")
            .unwrap()
            .into_iter()
            .filter(|(_, s)| s.origin == CandidateOrigin::Sample)
            .count();
    assert_eq!(samples, 3);
}

#[test]
fn progress_is_reported_only_for_stored_nodes() {
    struct Count(AtomicUsize, Mutex<Vec<String>>);
    impl Observer for Count {
        fn node_done(&self, label: &str, _: bool, _: usize) {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.lock().unwrap().push(label.to_string());
        }
    }
    let f = fixture();
    let (book, tree) = f.book(false);
    let observer = Count(AtomicUsize::new(0), Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let composer = rrm::compose::Composer::new(
        f.generator.clone(),
        Arc::new(MeanLogprob),
        f.ws.store().clone(),
        ComposeOptions::default(),
    );
    rt.block_on(composer.compose(&book, &tree, &observer)).unwrap();
    // Every node reported done is in the run's record (written before the report).
    let run = RunRecord::latest_for_tree(f.ws.store(), &tree).unwrap().unwrap();
    for label in observer.1.lock().unwrap().iter() {
        assert!(run.outputs.contains_key(label), "{label}");
    }
    assert_eq!(observer.0.load(Ordering::SeqCst), tree.len());
}
