//! `rrm reward bench` (with `--features testing`): featurizing, training on N synthetic
//! comparisons from the simulated labeler, and scoring throughput.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use crate::feedback::sim::SimLabeler;
use crate::feedback::{self};
use crate::infer::Encoder;
use crate::reward::features::Featurizer;
use crate::reward::train::TrainConfig;
use crate::reward::{synth, RewardModel};
use crate::workspace::{embeddings, Workspace};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Comparisons to train on.
    #[arg(long, default_value_t = 10_000)]
    pub pairs: usize,
    /// Candidates to score for the throughput figure.
    #[arg(long, default_value_t = 512)]
    pub candidates: usize,
}

/// CPU seconds (user + system) this process has used, from /proc (Linux); 0 elsewhere. On a
/// shared, loaded machine wall-clock time overstates cost; CPU time does not.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub fn run(ws: &Workspace, encoder: Arc<dyn Encoder>, args: BenchArgs) -> anyhow::Result<()> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    // Synthetic nodes: enough that every pair of 6 candidates gives `pairs` comparisons.
    let per_node = 15;
    let nodes_needed = args.pairs.div_ceil(per_node).max(1);
    let books = nodes_needed.div_ceil(6).max(2);
    let nodes = synth::corpus(11, books, 4, 2, 6);
    let sim = SimLabeler::new("bench", 0.0);
    let mut rng = crate::feedback::sim::rng(1);
    let mut records = Vec::new();
    'outer: for n in &nodes {
        for i in 0..n.candidates.len() {
            for j in i + 1..n.candidates.len() {
                if records.len() >= args.pairs {
                    break 'outer;
                }
                if n.candidates[i] == n.candidates[j] {
                    continue;
                }
                let kind = sim.compare(&n.input, &n.candidates[i], &n.candidates[j], &mut rng);
                records.push(
                    feedback::Feedback::new(
                        "bench",
                        &feedback::text_hash(&n.input),
                        &n.input,
                        n.height,
                        kind,
                    )
                    .at(Some(n.book.clone()), None),
                );
            }
        }
    }
    let pairs = feedback::to_pairs(&records);
    let mut featurizer = embeddings::featurizer(ws, encoder.as_ref());
    let t0 = Instant::now();
    crate::reward::prepare_pairs(&mut featurizer, &pairs)?;
    let cold = t0.elapsed().as_secs_f64();
    // Warm: a fresh featurizer over the same store finds every embedding cached.
    let mut warm_f = embeddings::featurizer(ws, encoder.as_ref());
    let t0 = Instant::now();
    crate::reward::prepare_pairs(&mut warm_f, &pairs)?;
    let warm = t0.elapsed().as_secs_f64();
    let config = TrainConfig::default();
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    let model =
        RewardModel::train_prepared(&warm_f, encoder.as_ref(), &pairs, &config, "bench", warm)?;
    let train_s = t0.elapsed().as_secs_f64();
    let train_cpu = cpu_seconds() - c0;
    // Scoring throughput on new candidate texts (embedding included), and on cached ones.
    let fresh = synth::corpus(99, args.candidates.div_ceil(36).max(1), 4, 2, 6);
    let mut scored = 0;
    let mut f_nocache = Featurizer::new(encoder.as_ref(), None);
    let t0 = Instant::now();
    let c0 = cpu_seconds();
    for n in &fresh {
        if scored >= args.candidates {
            break;
        }
        let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
        model.member_scores(&mut f_nocache, n.height, &n.input, &texts)?;
        scored += texts.len();
    }
    let score_s = t0.elapsed().as_secs_f64();
    let score_cpu = cpu_seconds() - c0;
    let t0 = Instant::now();
    for n in fresh.iter().take(scored / 6) {
        let texts: Vec<&str> = n.candidates.iter().map(String::as_str).collect();
        model.member_scores(&mut f_nocache, n.height, &n.input, &texts)?;
    }
    let score_warm_s = t0.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "threads": threads,
        "comparisons": pairs.len(),
        "embed_cold_s": cold,
        "embed_cached_s": warm,
        "train_s": train_s,
        "train_cpu_s": train_cpu,
        "score_cpu_s_with_embedding": score_cpu,
        "train_epochs": model.card.epochs,
        "members": config.members,
        "test_metrics": model.card.metrics,
        "validation_metrics": model.card.validation_metrics,
        "test_pairs": model.card.data.test_pairs,
        "score_candidates": scored,
        "score_candidates_per_s_with_embedding": scored as f64 / score_s.max(1e-9),
        "score_candidates_per_s_cached": scored as f64 / score_warm_s.max(1e-9),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
