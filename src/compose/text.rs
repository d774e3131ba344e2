//! Post-processing of generated summaries: trimming a dangling last sentence, detecting and
//! cutting loops, counting repeated n-grams.
//!
//! Pure functions over strings; the composer applies them to every candidate before storing it.

use std::collections::HashMap;

/// Cuts `text` after its last complete sentence (a `.`, `!` or `?`, optionally followed by a
/// closing quote or bracket). Returns the text unchanged when it has no sentence end at all,
/// so a summary is never emptied.
pub fn trim_to_last_sentence(text: &str) -> &str {
    let trimmed = text.trim_end();
    let bytes = trimmed.as_bytes();
    let mut cut = None;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'.' | b'!' | b'?') {
            let mut end = i + 1;
            while end < bytes.len() && matches!(bytes[end], b'"' | b'\'' | b')' | b']') {
                end += 1;
            }
            // A sentence end is followed by whitespace or the end of the text: "3.5" is not one.
            if end == bytes.len() || bytes[end].is_ascii_whitespace() {
                cut = Some(end);
            }
        }
    }
    match cut {
        Some(end) => trimmed[..end].trim_end(),
        None => trimmed,
    }
}

/// Lower-cased word tokens (letters, digits and apostrophes).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// The largest number of times any word n-gram occurs in `text`.
pub fn max_ngram_repeats(text: &str, n: usize) -> usize {
    let words = words(text);
    if n == 0 || words.len() < n {
        return 0;
    }
    let mut counts: HashMap<&[String], usize> = HashMap::new();
    for gram in words.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

/// Cuts a looping text: finds the first word `n`-gram that occurs more than `max_repeats` times
/// and cuts the text before its `max_repeats + 1`-th occurrence, then trims to the last complete
/// sentence. Returns `None` when the text does not loop.
pub fn cut_loop(text: &str, n: usize, max_repeats: usize) -> Option<String> {
    // Byte offsets of words so the cut lands in the original text.
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        let is_word = c.is_alphanumeric() || c == '\'';
        match (is_word, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    if n == 0 || spans.len() < n {
        return None;
    }
    let lower: Vec<String> = spans.iter().map(|&(s, e)| text[s..e].to_lowercase()).collect();
    let mut counts: HashMap<&[String], usize> = HashMap::new();
    for (i, gram) in lower.windows(n).enumerate() {
        let count = counts.entry(gram).or_default();
        *count += 1;
        if *count > max_repeats {
            let cut_at = spans[i].0;
            let head = trim_to_last_sentence(&text[..cut_at]);
            return Some(head.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_dangling_sentence() {
        assert_eq!(trim_to_last_sentence("Alice falls. She grows and"), "Alice falls.");
        assert_eq!(
            trim_to_last_sentence("\"Off with her head!\" said the"),
            "\"Off with her head!\""
        );
        assert_eq!(trim_to_last_sentence("It costs 3.5 pounds"), "It costs 3.5 pounds");
        assert_eq!(trim_to_last_sentence("no end at all"), "no end at all");
        assert_eq!(trim_to_last_sentence("Done.  "), "Done.");
    }

    #[test]
    fn counts_ngram_repeats() {
        let looping = "It's a tale of the Queen's cunning and the Queen's cunning. \
                       It's a tale of the Queen's cunning and the Queen's cunning.";
        assert!(max_ngram_repeats(looping, 4) >= 2);
        assert_eq!(max_ngram_repeats("one two three four five", 4), 1);
    }

    #[test]
    fn cuts_loops_at_a_sentence() {
        let text = "Alice meets the Queen. The Queen is cruel. The Queen is cruel. \
                    The Queen is cruel. The Queen is cruel.";
        let cut = cut_loop(text, 4, 2).expect("loops");
        assert_eq!(cut, "Alice meets the Queen. The Queen is cruel. The Queen is cruel.");
        assert!(cut_loop("A short and varied summary of events.", 4, 2).is_none());
    }
}
