//! Embedding texts longer than the encoder's window: cut at word boundaries into windows that
//! fit, embed each (through a cache when given), average by token counts, renormalize.

use super::cache::{embed_cached, EmbeddingCache};
use crate::infer::{Encoder, InferError};

/// Cuts `text` at word boundaries into consecutive windows of at most `encoder.max_tokens()`
/// tokens each (by [`Encoder::count_tokens`]), without overlap. A text that fits is one window;
/// an empty text is one empty window; a single word longer than the window is a window of its own
/// (and gets truncated when embedded).
pub fn split_windows<'t>(encoder: &dyn Encoder, text: &'t str) -> Vec<&'t str> {
    windows_with_counts(encoder, text).into_iter().map(|(window, _)| window).collect()
}

/// [`split_windows`] with each window's token count.
pub(super) fn windows_with_counts<'t>(
    encoder: &dyn Encoder,
    text: &'t str,
) -> Vec<(&'t str, usize)> {
    let max = encoder.max_tokens();
    let whole = encoder.count_tokens(text);
    if whole <= max {
        return vec![(text, whole)];
    }
    // Byte offsets where words start, and the end of the text.
    let mut starts = Vec::new();
    let mut in_space = true;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            starts.push(i);
            in_space = false;
        }
    }
    starts.push(text.len());
    let words = starts.len() - 1;
    let mut windows = Vec::new();
    let mut first = 0;
    while first < words {
        // Every word is at least one token, so at most `max` words fit. Binary search for the
        // most words [first, last) whose text fits; at least one word per window.
        let piece = |last: usize| text[starts[first]..starts[last]].trim_end();
        let (mut lo, mut hi) = (first + 1, words.min(first + max));
        let mut lo_count = encoder.count_tokens(piece(lo));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let count = encoder.count_tokens(piece(mid));
            if count <= max {
                lo = mid;
                lo_count = count;
            } else {
                hi = mid - 1;
            }
        }
        windows.push((piece(lo), lo_count.min(max)));
        first = lo;
    }
    windows
}

/// Embeds texts of any length: each is cut by [`split_windows`], every window is embedded (all
/// windows of all texts batched together, through `cache` when one is given), and a text's
/// embedding is the mean of its windows' embeddings weighted by their token counts, L2-normalized.
/// A text that fits the window gets exactly its plain embedding.
pub fn embed_long(
    encoder: &dyn Encoder,
    texts: &[&str],
    cache: Option<&mut dyn EmbeddingCache>,
) -> Result<Vec<Vec<f32>>, InferError> {
    let per_text: Vec<Vec<(&str, usize)>> =
        texts.iter().map(|text| windows_with_counts(encoder, text)).collect();
    let flat: Vec<&str> = per_text.iter().flatten().map(|&(window, _)| window).collect();
    let embeddings = match cache {
        Some(cache) => embed_cached(encoder, cache, &flat)?,
        None => encoder.embed(&flat)?,
    };
    let mut embeddings = embeddings.into_iter();
    let mut out = Vec::with_capacity(texts.len());
    for windows in &per_text {
        if windows.len() == 1 {
            out.push(embeddings.next().unwrap_or_default());
            continue;
        }
        let mut pooled = vec![0f32; encoder.dim()];
        for &(_, tokens) in windows {
            let embedding = embeddings.next().unwrap_or_default();
            for (acc, x) in pooled.iter_mut().zip(&embedding) {
                *acc += x * tokens as f32;
            }
        }
        let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        pooled.iter_mut().for_each(|x| *x /= norm);
        out.push(pooled);
    }
    Ok(out)
}
