//! Source grounding: what in a summary the text it summarizes does not support.
//!
//! Pure functions of (input, summary), no model and no store: the node's input is the book
//! passage at a leaf and the children's summaries above it. [`check`] reads both and reports
//!
//! - **unsupported spans**: names (capitalized words inside a sentence), numbers (digits and
//!   number words, compared by value) and content words (not function words, not the generic
//!   vocabulary every summary uses: "story", "describes", …) that occur nowhere in the input,
//!   neither as written nor by Porter stem; neighbouring unsupported words merge into one phrase;
//! - the **unsupported rate**: unsupported content tokens over all content tokens;
//! - **coverage**: the share of the input's key terms (its names and repeated content words, the
//!   most frequent first) the summary mentions;
//! - **copying**: the share of the summary's word 4-grams found verbatim in the input, and the
//!   longest verbatim run in words.
//!
//! [`score_with`] turns a report into a reward that needs no feedback at all: supported content,
//! plus coverage, minus copying beyond what a summary needs. [`member_weights`] are several
//! weightings of it, so that the ensemble machinery (pessimism, asking where unsure) has a spread
//! to work with: a node is "unsure" when the weightings disagree about the two best candidates.
//! `reward::grounded` makes them the `grounding` reward model (and decides at which heights
//! copying counts).
//!
//! The lexical check is what it is: a paraphrase with new words counts as unsupported, and a
//! supported word in a false statement counts as supported. Its errors are visible (the spans),
//! cheap (microseconds per summary), and the same on every machine.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::eval::stem::stem;

/// Names the scoring rule; part of every selector id and stored score that uses it.
pub const VERSION: &str = "grounding@1";

/// Function words: never content, never unsupported.
#[rustfmt::skip]
const STOPWORDS: &[&str] = &[
    "a", "about", "above", "across", "after", "again", "against", "all", "almost", "along", "also",
    "although", "always", "am", "among", "an", "and", "another", "any", "anyone", "anything",
    "are", "around", "as", "at", "away", "back", "be", "became", "because", "become", "becomes",
    "been", "before", "behind", "being", "below", "between", "both", "but", "by", "can", "cannot",
    "could", "did", "do", "does", "doing", "done", "down", "during", "each", "either", "else",
    "enough", "even", "ever", "every", "everyone", "everything", "few", "for", "from", "further",
    "get", "gets", "getting", "got", "had", "has", "have", "having", "he", "her", "here", "hers",
    "herself", "him", "himself", "his", "how", "however", "i", "if", "in", "into", "is", "it",
    "its", "itself", "just", "least", "less", "let", "like", "made", "make", "makes", "many",
    "may", "me", "might", "mine", "more", "most", "much", "must", "my", "myself", "neither",
    "never", "no", "nobody", "none", "nor", "not", "nothing", "now", "of", "off", "often", "on",
    "once", "one", "ones", "only", "onto", "or", "other", "others", "otherwise", "our", "ours",
    "ourselves", "out", "over", "own", "per", "perhaps", "quite", "rather", "really", "same",
    "see", "seem", "seems", "several", "shall", "she", "should", "since", "so", "some", "someone",
    "something", "soon", "still", "such", "than", "that", "the", "their", "theirs", "them",
    "themselves", "then", "there", "therefore", "these", "they", "thing", "things", "this",
    "those", "though", "through", "throughout", "thus", "to", "together", "too", "toward",
    "towards", "under", "until", "up", "upon", "us", "very", "via", "was", "way", "we", "well",
    "were", "what", "whatever", "when", "whenever", "where", "whether", "which", "while", "who",
    "whoever", "whole", "whom", "whose", "why", "will", "with", "within", "without", "would",
    "yet", "you", "your", "yours", "yourself", "mr", "mrs", "miss", "dr", "st", "s", "t", "don",
    "didn", "won", "isn", "wasn", "aren", "couldn", "wouldn", "ll", "ve", "re", "d", "m",

];

/// The vocabulary of talking about a text: a summary may use it without the input doing so.
#[rustfmt::skip]
const GENERIC: &[&str] = &[
    "summary", "summarize", "summarizes", "passage", "passages", "story", "stories", "text",
    "author", "authors", "narrator", "narrates", "narrative", "character", "characters", "chapter",
    "chapters", "section", "sections", "book", "novel", "reader", "readers", "protagonist",
    "scene", "scenes", "event", "events", "describe", "describes", "described", "describing",
    "description", "tell", "tells", "told", "telling", "discuss", "discusses", "discussed",
    "explain", "explains", "explained", "reveal", "reveals", "revealed", "mention", "mentions",
    "mentioned", "focus", "focuses", "focused", "introduce", "introduces", "introduced", "main",
    "overall", "including", "include", "includes", "various", "finally", "eventually", "later",
    "first", "also", "meanwhile", "ends", "end", "begins", "begin", "part", "plot", "theme",
    "themes", "follows", "follow", "following",

];

/// Number words and their values (ordinals too).
#[rustfmt::skip]
const NUMBER_WORDS: &[(&str, u64)] = &[
    ("two", 2), ("three", 3), ("four", 4), ("five", 5), ("six", 6), ("seven", 7), ("eight", 8),
    ("nine", 9), ("ten", 10), ("eleven", 11), ("twelve", 12), ("thirteen", 13), ("fourteen", 14),
    ("fifteen", 15), ("sixteen", 16), ("seventeen", 17), ("eighteen", 18), ("nineteen", 19),
    ("twenty", 20), ("thirty", 30), ("forty", 40), ("fifty", 50), ("sixty", 60), ("seventy", 70),
    ("eighty", 80), ("ninety", 90), ("hundred", 100), ("thousand", 1000), ("million", 1_000_000),
    ("second", 2), ("third", 3), ("fourth", 4), ("fifth", 5), ("sixth", 6), ("seventh", 7),
    ("eighth", 8), ("ninth", 9), ("tenth", 10), ("twice", 2), ("dozen", 12), ("dozens", 12),
    ("hundreds", 100), ("thousands", 1000),

];

/// How many of the input's key terms coverage looks for.
const KEY_TERMS: usize = 20;

/// What kind of unsupported content a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Name,
    Number,
    Word,
}

/// A stretch of the summary the input does not support: byte offsets into the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: SpanKind,
    pub text: String,
}

/// What the check found in one summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Content tokens in the summary (names, numbers and content words).
    pub content_tokens: usize,
    /// Content tokens the input does not support, by kind.
    pub unsupported_names: usize,
    pub unsupported_numbers: usize,
    pub unsupported_words: usize,
    /// Unsupported content tokens over content tokens (0 for a summary without content).
    pub unsupported_rate: f64,
    /// The share of the input's key terms the summary mentions.
    pub coverage: f64,
    /// The share of the summary's word 4-grams found verbatim in the input.
    pub copied_4gram_share: f64,
    /// The longest stretch of the summary copied verbatim from the input, in words (0 below 4).
    pub longest_copy: usize,
    /// Words in the summary.
    pub words: usize,
    /// The unsupported phrases, in order.
    pub spans: Vec<Span>,
}

impl Report {
    /// Unsupported content tokens of every kind.
    pub fn unsupported(&self) -> usize {
        self.unsupported_names + self.unsupported_numbers + self.unsupported_words
    }
}

/// A word of a text: its byte range, lowercased form, and whether it opens a sentence.
#[derive(Debug, Clone)]
struct Word {
    start: usize,
    end: usize,
    lower: String,
    capitalized: bool,
    sentence_start: bool,
}

fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut sentence_start = true;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() {
            let mut end = i + c.len_utf8();
            // Letters and digits, with single inner apostrophes (don't, Alice's).
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() {
                    end = j + d.len_utf8();
                    chars.next();
                } else if matches!(d, '\'' | '’') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().is_some_and(|&(_, e)| e.is_alphanumeric()) {
                        chars.next();
                    } else {
                        break;
                    }
                } else {
                    break;
                }
            }
            let raw = &text[i..end];
            let mut lower = raw.to_lowercase().replace('’', "'");
            for suffix in ["'s", "'ll", "'d", "'ve", "'re", "'m"] {
                if let Some(stripped) = lower.strip_suffix(suffix) {
                    lower = stripped.to_string();
                    break;
                }
            }
            out.push(Word { start: i, end, lower, capitalized: c.is_uppercase(), sentence_start });
            sentence_start = false;
        } else if matches!(c, '.' | '!' | '?' | '\n' | ':' | ';' | '"' | '“' | '”' | '(') {
            sentence_start = true;
        }
    }
    out
}

fn number_value(lower: &str) -> Option<u64> {
    if lower.chars().all(|c| c.is_ascii_digit()) {
        return lower.parse().ok();
    }
    let digits: String = lower.chars().take_while(char::is_ascii_digit).collect();
    if !digits.is_empty() && matches!(&lower[digits.len()..], "st" | "nd" | "rd" | "th" | "s") {
        return digits.parse().ok();
    }
    NUMBER_WORDS.iter().find(|(w, _)| *w == lower).map(|&(_, v)| v)
}

fn is_function(lower: &str) -> bool {
    STOPWORDS.contains(&lower) || GENERIC.contains(&lower)
}

fn word_stem(lower: &str) -> String {
    if lower.len() > 3 {
        stem(lower)
    } else {
        lower.to_string()
    }
}

fn hash4(w: &[Word]) -> [u64; 4] {
    let h = |s: &str| {
        let b = blake3::hash(s.as_bytes());
        let mut x = [0u8; 8];
        x.copy_from_slice(&b.as_bytes()[..8]);
        u64::from_le_bytes(x)
    };
    [h(&w[0].lower), h(&w[1].lower), h(&w[2].lower), h(&w[3].lower)]
}

/// An input read once, to check many summaries of it.
#[derive(Debug, Clone)]
pub struct Source {
    forms: HashSet<String>,
    stems: HashSet<String>,
    numbers: HashSet<u64>,
    fourgrams: HashSet<[u64; 4]>,
    /// Key terms as stems, most frequent first.
    key_terms: Vec<String>,
}

impl Source {
    pub fn new(input: &str) -> Source {
        let ws = words(input);
        let mut forms = HashSet::new();
        let mut stems = HashSet::new();
        let mut numbers = HashSet::new();
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for (pos, w) in ws.iter().enumerate() {
            let s = word_stem(&w.lower);
            if let Some(v) = number_value(&w.lower) {
                numbers.insert(v);
            }
            if !is_function(&w.lower)
                && w.lower.chars().count() >= 3
                && number_value(&w.lower).is_none()
            {
                let name = w.capitalized && !w.sentence_start;
                let entry = counts.entry(s.clone()).or_insert((0, pos));
                // A name counts twice: it is what a reader looks for first.
                entry.0 += if name { 2 } else { 1 };
            }
            forms.insert(w.lower.clone());
            stems.insert(s);
        }
        let fourgrams = ws.windows(4).map(hash4).collect();
        let mut ranked: Vec<(String, (usize, usize))> =
            counts.into_iter().filter(|(_, (n, _))| *n >= 2).collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
        let key_terms = ranked.into_iter().take(KEY_TERMS).map(|(s, _)| s).collect();
        Source { forms, stems, numbers, fourgrams, key_terms }
    }

    fn supports(&self, w: &Word) -> bool {
        self.forms.contains(&w.lower) || self.stems.contains(&word_stem(&w.lower))
    }

    /// Checks one summary against this input.
    pub fn check(&self, summary: &str) -> Report {
        let ws = words(summary);
        let mut content_tokens = 0;
        let (mut names, mut numbers, mut plain) = (0, 0, 0);
        // (word index, kind) of every unsupported token.
        let mut bad: Vec<(usize, SpanKind)> = Vec::new();
        let mut mentioned: HashSet<String> = HashSet::new();
        for (k, w) in ws.iter().enumerate() {
            mentioned.insert(word_stem(&w.lower));
            if let Some(v) = number_value(&w.lower) {
                content_tokens += 1;
                if !self.numbers.contains(&v) && !self.forms.contains(&w.lower) {
                    numbers += 1;
                    bad.push((k, SpanKind::Number));
                }
                continue;
            }
            if is_function(&w.lower) {
                continue;
            }
            let name = w.capitalized && !w.sentence_start;
            if !name && w.lower.chars().count() < 3 {
                continue;
            }
            content_tokens += 1;
            if !self.supports(w) {
                if name {
                    names += 1;
                    bad.push((k, SpanKind::Name));
                } else {
                    plain += 1;
                    bad.push((k, SpanKind::Word));
                }
            }
        }
        let spans = merge_spans(summary, &ws, &bad);
        let copied: Vec<bool> = ws.windows(4).map(|g| self.fourgrams.contains(&hash4(g))).collect();
        let copied_4gram_share = if copied.is_empty() {
            0.0
        } else {
            copied.iter().filter(|&&c| c).count() as f64 / copied.len() as f64
        };
        let mut longest = 0;
        let mut run = 0;
        for &c in &copied {
            run = if c { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        let coverage = if self.key_terms.is_empty() {
            0.0
        } else {
            self.key_terms.iter().filter(|t| mentioned.contains(*t)).count() as f64
                / self.key_terms.len() as f64
        };
        let unsupported = names + numbers + plain;
        Report {
            content_tokens,
            unsupported_names: names,
            unsupported_numbers: numbers,
            unsupported_words: plain,
            unsupported_rate: if content_tokens == 0 {
                0.0
            } else {
                unsupported as f64 / content_tokens as f64
            },
            coverage,
            copied_4gram_share,
            longest_copy: if longest == 0 { 0 } else { longest + 3 },
            words: ws.len(),
            spans,
        }
    }
}

/// Unsupported tokens next to each other (only spaces, hyphens or function words between them)
/// become one phrase; its kind is the strongest of its tokens' (name > number > word).
fn merge_spans(summary: &str, ws: &[Word], bad: &[(usize, SpanKind)]) -> Vec<Span> {
    let rank = |k: SpanKind| match k {
        SpanKind::Name => 2,
        SpanKind::Number => 1,
        SpanKind::Word => 0,
    };
    let mut spans: Vec<(usize, usize, SpanKind)> = Vec::new();
    for &(k, kind) in bad {
        if let Some(last) = spans.last_mut() {
            let between = &summary[ws[last.1].end..ws[k].start];
            let only_words_between =
                ws[last.1 + 1..k].iter().all(|w| STOPWORDS.contains(&w.lower.as_str()));
            let gap_is_plain = between
                .chars()
                .all(|c| c.is_alphanumeric() || c.is_whitespace() || c == '-' || c == '\'');
            if k - last.1 <= 2 && only_words_between && gap_is_plain {
                last.1 = k;
                if rank(kind) > rank(last.2) {
                    last.2 = kind;
                }
                continue;
            }
        }
        spans.push((k, k, kind));
    }
    spans
        .into_iter()
        .map(|(a, b, kind)| Span {
            start: ws[a].start,
            end: ws[b].end,
            kind,
            text: summary[ws[a].start..ws[b].end].to_string(),
        })
        .collect()
}

/// Checks `summary` against `input` (see [`Source`] to check many summaries of one input).
pub fn check(input: &str, summary: &str) -> Report {
    Source::new(input).check(summary)
}

/// How a report becomes a score: the weights of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Per unit of unsupported rate (names and numbers count this much more than words).
    pub unsupported: f64,
    pub name_extra: f64,
    /// Per unit of coverage of the input's key terms.
    pub coverage: f64,
    /// Per unit of copied-4-gram share above `copy_free`.
    pub copying: f64,
    pub copy_free: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { unsupported: 1.0, name_extra: 1.0, coverage: 0.5, copying: 1.0, copy_free: 0.5 }
    }
}

/// The grounded reward of one report under `w` (higher is better): −1 for a summary with no
/// content at all.
pub fn score_with(report: &Report, w: &Weights) -> f64 {
    if report.content_tokens == 0 {
        return -1.0;
    }
    let n = report.content_tokens as f64;
    let weighted = (report.unsupported() as f64
        + w.name_extra * (report.unsupported_names + report.unsupported_numbers) as f64)
        / n;
    -w.unsupported * weighted.min(1.0 + w.name_extra) + w.coverage * report.coverage
        - w.copying * (report.copied_4gram_share - w.copy_free).max(0.0)
}

/// The weightings whose scores form the grounding "ensemble": the default, one that cares more
/// about invention, one more about coverage, one stricter about copying.
pub fn member_weights() -> [Weights; 4] {
    let d = Weights::default();
    [
        d,
        Weights { unsupported: 1.5, name_extra: 2.0, ..d },
        Weights { coverage: 1.0, ..d },
        Weights { copying: 2.0, copy_free: 0.3, ..d },
    ]
}

#[cfg(test)]
mod tests {
    /// Each member weighting's score of `report`.
    fn members(report: &Report) -> Vec<f64> {
        member_weights().iter().map(|w| score_with(report, w)).collect()
    }

    /// The members' mean (what the `grounding` reward ranks leaves by).
    fn score(report: &Report) -> f64 {
        let m = members(report);
        m.iter().sum::<f64>() / m.len() as f64
    }
    use super::*;

    const INPUT: &str = "Alice was beginning to get very tired of sitting by her sister on the \
        bank. Suddenly a White Rabbit with pink eyes ran close by her. The Rabbit took a watch \
        out of its waistcoat-pocket, and Alice ran across the field after it, and fell down a \
        very deep rabbit-hole. She fell for what seemed four miles.";

    #[test]
    fn invented_names_numbers_and_words_are_found_with_their_spans() {
        let summary = "Alice follows the White Rabbit down a hole. She meets Lola, the Mouse \
                       King, and falls 40 miles.";
        let r = check(INPUT, summary);
        let texts: Vec<&str> = r.spans.iter().map(|s| s.text.as_str()).collect();
        assert!(texts.iter().any(|t| t.contains("Lola")), "{texts:?}");
        assert!(texts.iter().any(|t| t.contains("Mouse King")), "{texts:?}");
        assert!(texts.iter().any(|t| t.contains("40")), "{texts:?}");
        assert_eq!(r.unsupported_numbers, 1);
        assert!(r.unsupported_names >= 2, "{r:?}");
        for s in &r.spans {
            assert_eq!(&summary[s.start..s.end], s.text);
        }
        // Supported as written or by stem (sits ~ sitting).
        let ok = check(INPUT, "Alice sits with her sister; a rabbit ran by, Alice is tired.");
        assert_eq!(ok.unsupported(), 0, "{ok:?}");
        assert_eq!(ok.unsupported_rate, 0.0);
    }

    #[test]
    fn numbers_match_by_value_and_generic_words_are_free() {
        let r = check(INPUT, "The story describes how she fell 4 miles.");
        assert_eq!(r.unsupported(), 0, "{r:?}");
        let r = check(INPUT, "She fell five miles.");
        assert_eq!(r.unsupported_numbers, 1);
    }

    #[test]
    fn copying_is_measured_by_4_grams_and_the_longest_run() {
        let copy = check(INPUT, "Alice was beginning to get very tired of sitting by her sister.");
        assert!(copy.copied_4gram_share > 0.99, "{copy:?}");
        assert_eq!(copy.longest_copy, 12);
        let own =
            check(INPUT, "Tired Alice sees a rabbit with a watch and follows it underground.");
        assert_eq!(own.copied_4gram_share, 0.0);
        assert_eq!(own.longest_copy, 0);
        // Copying everything scores below a grounded summary in its own words.
        assert!(score(&own) > score(&copy), "{} vs {}", score(&own), score(&copy));
    }

    #[test]
    fn invention_loses_to_a_grounded_summary_of_the_same_length() {
        let grounded = "Alice, tired beside her sister, follows the White Rabbit and its watch \
                        down a deep rabbit-hole.";
        let invented = "Alice, tired beside Lola, follows the Mouse King and his puppets down a \
                        train tunnel.";
        assert!(score(&check(INPUT, grounded)) > score(&check(INPUT, invented)));
        // Every member weighting agrees here.
        let (g, i) = (members(&check(INPUT, grounded)), members(&check(INPUT, invented)));
        assert!(g.iter().zip(&i).all(|(a, b)| a > b));
    }

    #[test]
    fn empty_and_odd_text_do_not_panic() {
        for s in ["", "...", "’s", "Ünïcödé — 2nd, 3rd!", "a b c"] {
            let r = check(INPUT, s);
            assert!(r.unsupported_rate.is_finite());
            let _ = check(s, INPUT);
        }
        assert_eq!(score(&check(INPUT, "")), -1.0);
        assert!(check("", "").spans.is_empty());
    }
}
