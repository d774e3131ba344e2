//! Sentence-encoder throughput: batches of 32 short sentences (sentences/s) and 256-token
//! passages (tokens/s), on the real all-MiniLM-L6-v2.
//!
//! `cargo bench --bench encoder` fetches the default encoder on first use (into `RRM_MODELS` or
//! the user's cache); `RRM_MINILM_DIR=DIR` uses a model folder instead.
//! Threads: `RAYON_NUM_THREADS` (candle's CPU kernels), defaulting to all cores.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rrm::infer::encoder::{EncoderOptions, MiniLmEncoder};
use rrm::infer::fetch::{models_dir, DEFAULT_ENCODER};
use rrm::infer::Encoder;

const WORDS: &[&str] = &[
    "the",
    "river",
    "rose",
    "through",
    "night",
    "and",
    "by",
    "morning",
    "lower",
    "town",
    "was",
    "under",
    "water",
    "miller",
    "his",
    "daughters",
    "carried",
    "sacks",
    "of",
    "flour",
    "up",
    "to",
    "church",
    "on",
    "hill",
    "where",
    "priest",
    "had",
    "opened",
    "doors",
    "everyone",
    "storm",
    "ship",
    "captain",
    "letter",
    "refused",
    "sign",
    "treaty",
    "old",
    "man",
    "walked",
    "slowly",
];

/// Deterministic pseudo-text: `count` words drawn from `WORDS` by a linear congruential sequence.
fn text(seed: u64, count: usize) -> String {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut words = Vec::with_capacity(count);
    for _ in 0..count {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        words.push(WORDS[(state >> 33) as usize % WORDS.len()]);
    }
    let mut text = words.join(" ");
    text.push('.');
    text
}

fn bench(c: &mut Criterion) {
    let loaded = match std::env::var_os("RRM_MINILM_DIR").map(PathBuf::from) {
        Some(dir) => MiniLmEncoder::load(&dir),
        None => MiniLmEncoder::resolve_and_load(
            DEFAULT_ENCODER,
            &models_dir(None),
            true,
            EncoderOptions::default(),
        ),
    };
    let encoder = match loaded {
        Ok(encoder) => encoder,
        Err(err) => {
            eprintln!("encoder bench skipped: {err}");
            return;
        }
    };
    let mut group = c.benchmark_group("encoder");
    group.sample_size(10);

    let sentences: Vec<String> = (0..32).map(|i| text(i, 8 + (i as usize % 9))).collect();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    group.throughput(Throughput::Elements(sentences.len() as u64));
    group.bench_function("32 short sentences (elements = sentences)", |b| {
        b.iter(|| encoder.embed(&sentences).map(|e| e.len()));
    });

    let passages: Vec<String> = (0..16).map(|i| text(100 + i, 400)).collect();
    let passages: Vec<&str> = passages.iter().map(String::as_str).collect();
    let tokens: usize = passages.iter().map(|p| encoder.count_tokens(p).min(256)).sum();
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function("16 passages of 256 tokens (elements = tokens)", |b| {
        b.iter(|| encoder.embed(&passages).map(|e| e.len()));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
