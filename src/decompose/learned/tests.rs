//! Tests of the learned decomposer over a bag-of-words test encoder and generated books whose
//! chapters each have their own vocabulary.

use super::*;
use crate::decompose::{FixedChunker, FixedConfig};
use crate::infer::ModelIdentity;

use crate::infer::testing::BowEncoder;

const COMMON: &[&str] = &["the", "and", "was", "then", "she", "they", "with", "very", "of", "a"];
const TOPICS: &[&[&str]] = &[
    &["garden", "roses", "hedge", "gardener", "flowers", "soil", "spade", "blossom"],
    &["ocean", "waves", "sailor", "harbour", "anchor", "mast", "storm", "tide"],
    &["castle", "king", "throne", "knight", "banner", "tower", "crown", "moat"],
    &["kitchen", "bread", "oven", "baker", "flour", "butter", "kettle", "supper"],
    &["forest", "wolves", "pines", "hunter", "trail", "owls", "moss", "cabin"],
    &["school", "teacher", "lesson", "pupils", "chalk", "desks", "slate", "grammar"],
];

fn lcg(state: &mut u64) -> usize {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*state >> 33) as usize
}

/// A book of `chapters` chapters with headings; chapter `c` talks about topic `(c + offset) % 6`.
fn generated(chapters: usize, offset: usize, seed: u64) -> String {
    let mut state = seed;
    let mut text = String::from("A GENERATED TALE\n\n");
    for c in 0..chapters {
        text.push_str(&format!("CHAPTER {}\n\n", c + 1));
        let topic = TOPICS[(c + offset) % TOPICS.len()];
        let paragraphs = 6 + lcg(&mut state) % 4;
        for _ in 0..paragraphs {
            let sentences = 2 + lcg(&mut state) % 3;
            for s in 0..sentences {
                let words = 7 + lcg(&mut state) % 6;
                let mut sentence = Vec::new();
                for w in 0..words {
                    let word = if w % 2 == 0 {
                        topic[lcg(&mut state) % topic.len()]
                    } else {
                        COMMON[lcg(&mut state) % COMMON.len()]
                    };
                    sentence.push(word.to_string());
                }
                sentence[0] = capitalize(&sentence[0]);
                text.push_str(&sentence.join(" "));
                text.push_str(if s + 1 == sentences { ".\n\n" } else { ". " });
            }
        }
    }
    text
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// The test encoder's per-sentence vectors are noise, so the features leave them out.
fn featurizer() -> Featurizer {
    let features = FeatureConfig { sentence_embeddings: false, ..FeatureConfig::default() };
    let mut f = Featurizer::new(Arc::new(BowEncoder::new()), features);
    f.cache = Some(memory_cache());
    f
}

fn small_config() -> LearnedConfig {
    LearnedConfig {
        chunk_tokens: 120,
        min_tokens: 30,
        target_tokens: 90,
        fanout_min: 2,
        fanout_max: 6,
        ..LearnedConfig::default()
    }
}

fn trained() -> Arc<BoundaryModel> {
    let books: Vec<TrainingBook> = (0..2)
        .map(|i| TrainingBook {
            name: format!("train{i}"),
            book: Book::from_text("t", generated(10, i, 100 + i as u64)),
            feedback: Vec::new(),
        })
        .collect();
    let config = TrainConfig { hidden: 8, epochs: 150, ..TrainConfig::default() };
    let model = train(&featurizer(), &books, Views::default(), &config, &|_| {}).unwrap();
    assert!(model.meta().training.positives >= 18, "{:?}", model.meta().training);
    Arc::new(model)
}

fn check_leaves(tree: &TaskTree, book: &Book, config: &LearnedConfig) {
    let joined: String =
        tree.leaves().iter().map(|&l| book.slice(tree.node(l).span().unwrap())).collect();
    assert_eq!(joined, book.text());
    for &l in tree.leaves() {
        let n = tree.node(l);
        assert!(n.input_tokens <= config.chunk_tokens, "{}: {}", n.label, n.input_tokens);
        assert!(n.input_tokens >= config.min_tokens, "{}: {}", n.label, n.input_tokens);
        let counted = ApproxCounter.count(book.slice(n.span().unwrap()));
        assert!(counted <= config.chunk_tokens, "{}: counted {counted}", n.label);
    }
}

#[test]
fn recovers_known_boundaries_on_held_out_text() {
    let model = trained();
    let config = small_config();
    let learned =
        LearnedDecomposer::new(config.clone(), Scorer::Model(model), featurizer()).unwrap();
    // A held-out book (other seed, other topic order), headings hidden.
    let book = Book::from_text("held out", generated(8, 3, 999));
    let (stripped, refs) = strip_headings(&book, Hide::Layout);
    assert_eq!(refs.len(), 8); // the title paragraph precedes chapter 1
    let tree = learned.decompose(&stripped).unwrap();
    check_leaves(&tree, &stripped, &config);
    let leaf_starts: Vec<usize> =
        tree.leaves().iter().map(|&l| tree.node(l).span().unwrap().start).collect();
    // Most chapter starts are leaf starts (the first follows a title shorter than a leaf's
    // minimum; a weakly scored one may cost more than it gains).
    let hits = refs.iter().filter(|r| leaf_starts.contains(r)).count();
    assert!(hits + 2 >= refs.len(), "{hits} of {} chapter starts are leaf starts", refs.len());
    // And the parents' boundaries: Pk far below fixed chunking's.
    let fixed = FixedChunker::new(FixedConfig {
        chunk_tokens: 120,
        fanout_min: 2,
        fanout_max: 6,
        ..FixedConfig::default()
    })
    .unwrap();
    let rows = evaluate(
        "held out",
        &book,
        Hide::Layout,
        &[("fixed", &fixed, (0, 120)), ("learned", &learned, (30, 120))],
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    let (f, l) = (&rows[0], &rows[1]);
    let (lpk, fpk) = (l.pk.unwrap(), f.pk.unwrap());
    assert!(lpk <= 0.1 && lpk * 2.0 <= fpk, "learned {l:?} vs fixed {f:?}");
    assert_eq!(l.leaves_within_limits, l.leaves);
}

#[test]
fn similarity_baseline_and_visible_headings() {
    let config = small_config();
    let baseline =
        LearnedDecomposer::new(config.clone(), Scorer::Similarity { window: 3 }, featurizer())
            .unwrap();
    let book = Book::from_text("b", generated(6, 0, 5));
    let tree = baseline.decompose(&book).unwrap();
    check_leaves(&tree, &book, &config);
    assert_eq!(tree.decomposer().name, "similarity");
    // The trained model starts leaves at visible headings too.
    let learned =
        LearnedDecomposer::new(config.clone(), Scorer::Model(trained()), featurizer()).unwrap();
    let tree = learned.decompose(&book).unwrap();
    check_leaves(&tree, &book, &config);
    let starts: Vec<usize> =
        tree.leaves().iter().map(|&l| tree.node(l).span().unwrap().start).collect();
    for h in book.headings().iter().skip(1) {
        assert!(starts.contains(&h.span.start), "heading at {} starts no leaf", h.span.start);
    }
    assert_eq!(tree.decomposer().name, "learned");
    assert_eq!(tree.decomposer().config["chunk_tokens"], 120);
}

#[test]
fn split_feedback_moves_a_boundary() {
    // Feedback saying "split here" at a mid-chapter paragraph is learned as a positive.
    let book = Book::from_text("t", generated(4, 0, 77));
    let para = book.paragraphs()[6].start;
    let feedback = SplitFeedback {
        book: book.id().clone(),
        action: SplitAction::Split { at: para },
        nodes: vec![],
        node_hashes: vec![],
        created: 0,
    };
    let tb = TrainingBook { name: "fb".into(), book: book.clone(), feedback: vec![feedback] };
    let (data, fb_rows) =
        training_data(&featurizer(), &[tb], Views::default(), 120, &|_| {}).unwrap();
    assert_eq!(fb_rows, 1);
    assert_eq!(data.weights.iter().filter(|&&w| w == FEEDBACK_WEIGHT).count(), 1);
    let last = data.len() - 1;
    assert!(data.labels[last]);
}

#[test]
fn short_books_and_bad_configs() {
    let learned = LearnedDecomposer::new(
        LearnedConfig::default(),
        Scorer::Similarity { window: 3 },
        featurizer(),
    )
    .unwrap();
    let tree = learned.decompose(&Book::from_text("t", "One sentence. Two.")).unwrap();
    assert_eq!(tree.len(), 1);
    let err = learned.decompose(&Book::from_text("t", "  \n")).unwrap_err();
    assert!(matches!(err, DecomposeError::EmptyBook { .. }), "{err}");
    let bad = LearnedConfig { min_tokens: 700, ..LearnedConfig::default() };
    assert!(LearnedDecomposer::new(bad, Scorer::Similarity { window: 3 }, featurizer()).is_err());
}

#[test]
fn model_for_another_encoder_is_refused() {
    let model = trained();
    struct Other(BowEncoder);
    impl Encoder for Other {
        fn identity(&self) -> &ModelIdentity {
            static ID: std::sync::OnceLock<ModelIdentity> = std::sync::OnceLock::new();
            ID.get_or_init(|| ModelIdentity { name: "other".into(), hash: "ffff".into() })
        }
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn max_tokens(&self) -> usize {
            self.0.max_tokens()
        }
        fn count_tokens(&self, text: &str) -> usize {
            self.0.count_tokens(text)
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferError> {
            self.0.embed(texts)
        }
    }
    let f = Featurizer::new(Arc::new(Other(BowEncoder::new())), FeatureConfig::default());
    let err =
        LearnedDecomposer::new(LearnedConfig::default(), Scorer::Model(model), f).unwrap_err();
    assert!(err.to_string().contains("trained with encoder bow"), "{err}");
}

#[test]
fn grouping_always_shrinks_and_respects_fanout() {
    let d = LearnedDecomposer::new(
        LearnedConfig { fanout_min: 2, fanout_max: 3, ..LearnedConfig::default() },
        Scorer::Similarity { window: 3 },
        featurizer(),
    )
    .unwrap();
    for n in 1..40 {
        // Scores that love every cut.
        let levels = d.groups(&vec![10.0; n - 1]).unwrap();
        let mut width = n;
        for sizes in &levels {
            assert_eq!(sizes.iter().sum::<usize>(), width);
            assert!(sizes.len() < width, "n {n}: {levels:?}");
            assert!(sizes.iter().all(|&s| s <= 3), "n {n}: {levels:?}");
            width = sizes.len();
        }
        assert_eq!(width, 1);
    }
}

#[test]
fn parent_bias_lets_likely_breaks_start_parents() {
    // 24 leaves; every sixth leaf gap is a likely break (log-odds -1.5), the rest unlikely.
    let scores: Vec<f32> = (1..24).map(|i| if i % 6 == 0 { -1.5 } else { -6.0 }).collect();
    let with = |bias: f64| {
        let config = LearnedConfig {
            fanout_min: 3,
            fanout_max: 13,
            parent_bias: bias,
            ..Default::default()
        };
        let d = LearnedDecomposer::new(config, Scorer::Model(trained()), featurizer()).unwrap();
        d.groups(&scores).unwrap()[0].clone()
    };
    // No bias: as few parents as the fanout allows.
    assert_eq!(with(0.0).len(), 2);
    // The default bias: one parent per six-leaf section.
    assert_eq!(with(LearnedConfig::default().parent_bias), vec![6, 6, 6, 6]);
    // The untrained baseline's scores are not log-odds: no bias for it.
    let config = LearnedConfig { fanout_min: 3, ..Default::default() };
    let d = LearnedDecomposer::new(config, Scorer::Similarity { window: 3 }, featurizer()).unwrap();
    assert_eq!(d.groups(&scores).unwrap()[0].len(), 2);
}

#[test]
fn the_built_in_model_matches_the_default_encoder_and_features() {
    let model = BoundaryModel::built_in().expect("the built-in model parses");
    let meta = model.meta();
    let encoder = crate::infer::fetch::registry_model(crate::infer::fetch::DEFAULT_ENCODER)
        .expect("the default encoder is registered");
    assert_eq!(meta.encoder_hash, encoder.files[0].sha256, "retrain it (see DEFAULT_MODEL)");
    assert_eq!(meta.features, FeatureConfig::default());
    assert_eq!(model.dim(), FeatureConfig::default().dim(meta.encoder_dim));
    assert_eq!(meta.hidden, 0, "logistic regression");
    assert_eq!(meta.training.books, model::DEFAULT_TRAINING_BOOKS);
    // Its hash tells it apart from another model, and trees record it.
    let hash = model.hash().unwrap();
    assert_eq!(hash.len(), 64);
    assert_ne!(hash, trained().hash().unwrap());
    // It scores rows of its width.
    let scores = model.score(&vec![0.0; model.dim() * 2]).unwrap();
    assert!(scores.iter().all(|s| s.is_finite()));
}

#[test]
fn seeded_draws_are_reproducible_and_vary_by_seed() {
    let book = Book::from_text("t", generated(4, 1, 9));
    let cuts = |sample: Option<Sample>| {
        let config = LearnedConfig { sample, ..small_config() };
        let d =
            LearnedDecomposer::new(config, Scorer::Similarity { window: 3 }, featurizer()).unwrap();
        let tree = d.decompose(&book).unwrap();
        check_leaves(&tree, &book, d.learned_config());
        tree.leaves().iter().map(|&l| tree.node(l).span().unwrap().start).collect::<Vec<_>>()
    };
    let best = cuts(None);
    assert_eq!(cuts(Some(Sample { seed: 0, scale: 0.0 })), best);
    let draw = |seed| cuts(Some(Sample { seed, scale: 3.0 }));
    assert_eq!(draw(7), draw(7));
    let draws: Vec<_> = (1..6).map(draw).collect();
    assert!(draws.iter().any(|d| *d != best), "no draw differs from the best segmentation");
    let bad = LearnedConfig { sample: Some(Sample { seed: 1, scale: -1.0 }), ..small_config() };
    assert!(bad.validate().is_err());
}

#[test]
fn the_start_penalty_moves_cuts_to_leaves_that_stand_on_their_own() {
    // Every sentence but a paragraph's first starts with a pronoun and no name: a leaf starting
    // there would not stand on its own, one starting at a paragraph would.
    let text = generated(6, 2, 41).replace(". ", ". She saw that ");
    let book = Book::from_text("pronouns", text);
    let problems = |penalty: f64| {
        let config = LearnedConfig { start_penalty: penalty, ..small_config() };
        let d =
            LearnedDecomposer::new(config.clone(), Scorer::Model(trained()), featurizer()).unwrap();
        let tree = d.decompose(&book).unwrap();
        check_leaves(&tree, &book, &config);
        let starts: Vec<usize> =
            tree.leaves().iter().skip(1).map(|&l| tree.node(l).span().unwrap().start).collect();
        starts.iter().filter(|&&at| oversee::start_problem(&book, at).is_some()).count()
    };
    let (without, with) = (problems(0.0), problems(20.0));
    assert!(without > 0, "the test book must tempt the model into a dependent start");
    assert_eq!(with, 0, "{without} dependent starts without the penalty");
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = LearnedConfig { start_penalty: bad, ..small_config() }.validate().unwrap_err();
        assert!(err.to_string().contains("start penalty"), "{err}");
    }
    // A config recorded before the penalty existed reads as 0 (the cuts it made), not the default.
    let old = serde_json::json!({ "chunk_tokens": 120 });
    let read: LearnedConfig = serde_json::from_value(old).unwrap();
    assert_eq!(read.start_penalty, 0.0);
    assert_eq!(LearnedConfig::default().start_penalty, DEFAULT_START_PENALTY);
}
