//! A workspace for the web app's tests and its load benchmark (feature `testing`): a small book
//! written here (with hostile markup in its title and text, to test escaping), summarized by a
//! tiny random model, with extra candidates drawn for some nodes. Offline and fast.

use std::path::PathBuf;
use std::sync::Arc;

use crate::compose::{ComposeOptions, MeanLogprob, Silent};
use crate::infer::spec::GeneratorSpec;
use crate::infer::testing::{tiny_gguf, TinyOptions};
use crate::infer::Generator;
use crate::workspace::decomposers::DecomposerSpec;
use crate::workspace::{rating, summarize, Workspace, WorkspaceConfig};

/// Markup a hostile book carries: it must show as text on every page.
pub const SCRIPT: &str = "<script>alert('rrm')</script>";
pub const IMG: &str = "\"><img src=x onerror=alert(1)>";

/// The book's text: a title line with markup, then `paragraphs` paragraphs (each ~45 words,
/// about one leaf at the fixture's chunk size), two of them carrying markup.
pub fn book_text(paragraphs: usize) -> String {
    let mut text = format!("The Orchard {SCRIPT} Letters\n\n");
    let names = ["Rosalind", "Barnaby", "Ottoline", "Jasper", "Wilhelmina", "Ezekiel"];
    for i in 0..paragraphs {
        let who = names[i % names.len()];
        let other = names[(i + 2) % names.len()];
        text.push_str(&format!(
            "In week {i} {who} carried the letters from the orchard to the harbour, where {other} \
             counted the ships of the year {} and wrote their names in the ledger before the tide \
             turned and the lamps were lit along the quay.",
            1850 + i
        ));
        if i == 1 {
            text.push_str(&format!(" The ledger said: {SCRIPT}"));
        }
        if i == 2 {
            text.push_str(&format!(" A stranger signed it {IMG} and left."));
        }
        text.push_str("\n\n");
    }
    text
}

/// A prepared workspace.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: WorkspaceConfig,
    pub ws: Workspace,
    /// The tiny model's file (for [`GeneratorSpec`]s of servers under test).
    pub model: PathBuf,
    pub book_id: String,
    /// Labels of the nodes that got `k` extra candidates.
    pub drawn: Vec<String>,
}

impl Fixture {
    /// A generator spec for the tiny model.
    pub fn generator_spec(&self) -> GeneratorSpec {
        GeneratorSpec {
            model: Some(self.model.display().to_string()),
            ..GeneratorSpec::local_default()
        }
    }
}

/// A workspace as a new user has it after `rrm decompose BOOK` alone: the book (`paragraphs`
/// paragraphs) and its task tree, no summary, no candidate, no feedback.
pub fn decomposed(paragraphs: usize) -> Fixture {
    let (f, _, _) = decompose(paragraphs);
    f
}

fn decompose(paragraphs: usize) -> (Fixture, crate::book::Book, crate::tree::TaskTree) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let model = dir.path().join("tiny.gguf");
    tiny_gguf(&model, 5, &TinyOptions { context_length: 2048, ..TinyOptions::default() })
        .expect("the tiny model");
    let config = WorkspaceConfig {
        db: dir.path().join("db"),
        books_dir: dir.path().join("books"),
        trees_dir: dir.path().join("trees"),
        reward_dir: Some(dir.path().join("reward")),
        models_dir: Some(dir.path().join("models")),
        ..WorkspaceConfig::new(dir.path().join("db"))
    };
    let ws = Workspace::open(&config).expect("the workspace");
    let path = dir.path().join("orchard.txt");
    std::fs::write(&path, book_text(paragraphs)).expect("the book file");
    let book = ws.open_book(&path.display().to_string(), false, &|_| {}).expect("the book");
    let spec = DecomposerSpec {
        chunk_tokens: 60,
        fanout: Some((2, 3)),
        output_tokens: vec![10, 12, 14],
        ..DecomposerSpec::default()
    };
    let decomposer = spec.build(&ws, false).expect("the decomposer");
    let tree = summarize::decompose(&ws, &book, decomposer.as_ref()).expect("the tree");
    let book_id = book.id().as_str().to_string();
    let f = Fixture { dir, config, ws, model, book_id, drawn: Vec::new() };
    (f, book, tree)
}

/// Writes the book (`paragraphs` paragraphs), summarizes it with a tiny model (leaves of ~60
/// tokens, 2–3 children per parent), and draws `k` candidates for the first `drawn` leaves and
/// for `h1.0` (so the rating screen has a higher node with children to drill into).
pub async fn fixture(paragraphs: usize, drawn: usize, k: usize) -> Fixture {
    let (f, book, tree) = decompose(paragraphs);
    let Fixture { dir, config, ws, model, book_id, .. } = f;
    let spec = GeneratorSpec {
        model: Some(model.display().to_string()),
        ..GeneratorSpec::local_default()
    };
    let generator: Arc<dyn Generator> = spec.start(8, false).expect("the tiny generator");
    let mut options = ComposeOptions::default();
    options.sampling.temperature = 1.0;
    summarize::compose(
        &ws,
        &book,
        &tree,
        Arc::clone(&generator),
        Arc::new(MeanLogprob),
        options,
        &Silent,
    )
    .await
    .expect("the summary");
    let mut labels: Vec<String> =
        tree.leaves().iter().take(drawn).map(|&l| tree.node(l).label.clone()).collect();
    if tree.max_height() >= 1 {
        labels.push("h1.0".into());
    }
    let mut targets = Vec::new();
    for label in &labels {
        targets.push(rating::resolve_in_book(&ws, &book_id, label).expect("the node"));
    }
    let draws =
        targets.iter().map(|t| rating::draw(&ws, generator.as_ref(), t, k, Some(1.0), Some(7)));
    for drawn in futures::future::join_all(draws).await {
        drawn.expect("candidates");
    }
    Fixture { dir, config, ws, model, book_id, drawn: labels }
}
