//! The content keys of the node cache.
//!
//! - *input key*: what a node summarizes (template id and version, input text, context); it does
//!   not depend on the model or sampling, so feedback and reward models key on it.
//! - *generation key*: the input key plus everything that decides the candidates (post-processing
//!   version, model hash, sampling, output cap, number of candidates, seed, loop limits).
//! - *output key*: the generation key plus the selector's identity.
//! - *sample key*: candidates drawn for rating (`rrm-sample-v1`), never a composer key.
//!
//! Every key is blake3 over length-prefixed parts, so no two different part lists hash alike.

use super::prompt;
use crate::infer::SamplingParams;

/// Version of the post-processing applied to raw completions (trim, loop cut). Part of every
/// generation key.
pub const POSTPROCESS_VERSION: u32 = 1;

/// The key of what a node summarizes: template (id and version), input text and context. It
/// does not depend on the model or sampling, so feedback on a node applies to candidates from
/// any model, and survives re-decomposition when the same passage recurs.
pub fn input_key(template: &prompt::Template, input: &str, context: Option<&str>) -> String {
    hash_parts(&[
        "rrm-input-v1",
        template.id,
        &template.version.to_string(),
        input,
        context.unwrap_or("\u{0}none"),
    ])
}

/// Everything besides the input that decides a node's candidates.
pub struct GenerationParts<'a> {
    pub model_hash: &'a str,
    pub sampling: &'a SamplingParams,
    pub max_tokens: usize,
    pub best_of: usize,
    pub seed: u64,
    pub loop_ngram: usize,
    pub loop_max_repeats: usize,
    /// With best-of-N: candidate 0 drawn with this sampling (the single-candidate decode).
    pub greedy_first: Option<&'a SamplingParams>,
}

/// The composer's generation key of a node.
pub fn generation_key(input_key: &str, parts: &GenerationParts<'_>) -> String {
    let owned = [
        POSTPROCESS_VERSION.to_string(),
        sampling_json(parts.sampling),
        parts.max_tokens.to_string(),
        parts.best_of.to_string(),
        parts.seed.to_string(),
        format!("{}:{}", parts.loop_ngram, parts.loop_max_repeats),
    ];
    let mut all: Vec<&str> = vec!["rrm-node-v2", input_key];
    all.insert(2, &owned[0]);
    all.push(parts.model_hash);
    all.extend(owned[1..].iter().map(String::as_str));
    // Absent (not an empty part) when off, so the keys of earlier runs stay valid.
    let first = parts.greedy_first.map(|s| format!("first:{}", sampling_json(s)));
    all.extend(first.as_deref());
    hash_parts(&all)
}

/// The output key: the generation key and the selector that picked.
pub fn output_key(gen_key: &str, selector_id: &str) -> String {
    hash_parts(&["rrm-output-v1", gen_key, selector_id])
}

/// The key of `k` candidates drawn for rating with `sampling` and `seed`.
pub fn sample_key(
    input_key: &str,
    model_hash: &str,
    sampling: &SamplingParams,
    max_tokens: usize,
    k: usize,
    seed: u64,
) -> String {
    hash_parts(&[
        "rrm-sample-v1",
        input_key,
        model_hash,
        &sampling_json(sampling),
        &max_tokens.to_string(),
        &k.to_string(),
        &seed.to_string(),
    ])
}

/// Sampling parameters as they enter keys (plain numbers and options: serializing cannot fail).
fn sampling_json(sampling: &SamplingParams) -> String {
    serde_json::to_string(sampling).unwrap_or_default()
}

/// blake3 over length-prefixed parts, so that no two different part lists hash alike.
pub fn hash_parts(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// A candidate's seed depends only on the node's generation key and its index: the same content
/// anywhere in any book gets the same candidates.
pub fn candidate_seed(gen_key: &str, index: usize) -> u64 {
    let bytes = blake3::Hasher::new()
        .update(gen_key.as_bytes())
        .update(&(index as u64).to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
