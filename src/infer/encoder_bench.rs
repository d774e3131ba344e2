//! Sentence-encoder throughput, shared by `rrm bench encoder` and the GPU check: short
//! sentences (sentences/s) and passages longer than the window (tokens/s), from a fixed text, on
//! any [`Encoder`] (so on any device the encoder was loaded on).

use std::time::Instant;

use super::bench::BENCH_TEXT;
use super::{Encoder, InferError};

/// One measured encoder workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncoderBenchRow {
    /// `sentences` or `passages`.
    pub workload: String,
    pub texts: usize,
    /// Tokens embedded (special tokens included, after truncation at the encoder's window).
    pub tokens: usize,
    pub seconds: f64,
    pub texts_per_s: f64,
    pub tokens_per_s: f64,
}

/// `count` distinct short sentences (10–30 words) cut from [`BENCH_TEXT`].
pub fn bench_sentences(count: usize) -> Vec<String> {
    let words: Vec<&str> = BENCH_TEXT.split_whitespace().collect();
    (0..count)
        .map(|i| {
            let len = 10 + (i * 7) % 21;
            let start = (i * 13) % words.len();
            let mut s: Vec<&str> = (0..len).map(|j| words[(start + j) % words.len()]).collect();
            s.push(if i % 2 == 0 { "indeed." } else { "again." });
            s.join(" ")
        })
        .collect()
}

/// `count` distinct passages of about 300 words (longer than a 256-token window).
pub fn bench_passages(count: usize) -> Vec<String> {
    let text = BENCH_TEXT.repeat(3);
    (0..count).map(|i| format!("Passage {i}. {text}")).collect()
}

/// Embeds `texts` once (after one small warm-up call) and measures the rate.
pub fn bench_encoder(
    encoder: &dyn Encoder,
    workload: &str,
    texts: &[String],
) -> Result<EncoderBenchRow, InferError> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    encoder.embed(&refs[..refs.len().min(8)])?;
    let max = encoder.max_tokens();
    let tokens: usize = refs.iter().map(|t| encoder.count_tokens(t).min(max)).sum();
    let t0 = Instant::now();
    let out = encoder.embed(&refs)?;
    let seconds = t0.elapsed().as_secs_f64().max(1e-9);
    debug_assert_eq!(out.len(), refs.len());
    Ok(EncoderBenchRow {
        workload: workload.to_string(),
        texts: refs.len(),
        tokens,
        seconds,
        texts_per_s: refs.len() as f64 / seconds,
        tokens_per_s: tokens as f64 / seconds,
    })
}

/// The two workloads, `sentences` short sentences then `passages` long passages (a count of 0
/// skips one), on `encoder`.
pub fn run_encoder_bench(
    encoder: &dyn Encoder,
    sentences: usize,
    passages: usize,
) -> Result<Vec<EncoderBenchRow>, InferError> {
    let workloads =
        [("sentences", bench_sentences(sentences)), ("passages", bench_passages(passages))];
    workloads
        .iter()
        .filter(|(_, texts)| !texts.is_empty())
        .map(|(name, texts)| bench_encoder(encoder, name, texts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::encoder::MiniLmEncoder;
    use crate::infer::testing::tiny_bert;

    #[test]
    fn workloads_are_distinct_and_counted() {
        let sentences = bench_sentences(50);
        let unique: std::collections::HashSet<_> = sentences.iter().collect();
        assert_eq!(unique.len(), 50);
        assert!(sentences.iter().all(|s| (11..=32).contains(&s.split_whitespace().count())));
        let dir = tempfile::tempdir().unwrap();
        tiny_bert(dir.path(), 1).unwrap();
        let encoder = MiniLmEncoder::load(dir.path()).unwrap();
        let row = bench_encoder(&encoder, "passages", &bench_passages(3)).unwrap();
        assert_eq!((row.texts, row.workload.as_str()), (3, "passages"));
        // Each passage is longer than the window: truncated at the window.
        assert_eq!(row.tokens, 3 * encoder.max_tokens());
        let rows = run_encoder_bench(&encoder, 4, 0).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].workload.as_str(), rows[0].texts), ("sentences", 4));
    }
}
