//! Overseeability of a decomposition, measured per leaf: can a person judge a summary of this
//! leaf without reading its neighbours? Four signals, each cheap and explainable:
//!
//! - **Self-contained start.** The leaf starts at a sentence start; its first sentence does not
//!   use a third-person pronoun (he, she, they, him, her, …) before any name (a capitalized word
//!   that is not a pronoun or a common sentence opener), since such a pronoun points back into
//!   the previous leaf; and it does not start mid-dialogue: not inside a quotation opened before
//!   the leaf, and not with a reply line (a quoted paragraph right after another quoted one).
//! - **Ends at a boundary.** The leaf ends where a paragraph ends (or the book does); a *scene*
//!   boundary is counted apart: the end of the book, a heading or a scene-break line (`* * *`)
//!   next, or two or more blank lines after it.
//! - **Within budget.** Its token count lies in the decomposer's `[min, max]`.
//! - **Time to judge.** The measured milliseconds people took to answer about it, where stored
//!   feedback has them ([`summarize`] takes them as given; this module reads no store).
//!
//! Pure: books and spans in, numbers out.

use serde::{Deserialize, Serialize};

use crate::book::{Book, Span};

/// Third-person pronouns that point back to someone named earlier. "it"/"its" are left out:
/// "It was a cold morning" needs no antecedent.
const PRONOUNS: &[&str] = &[
    "he",
    "she",
    "him",
    "her",
    "his",
    "hers",
    "himself",
    "herself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
];

/// Capitalized words that open sentences without naming anyone.
const OPENERS: &[&str] = &[
    "the", "a", "an", "and", "but", "or", "so", "then", "when", "while", "as", "at", "in", "on",
    "of", "to", "for", "from", "with", "after", "before", "if", "it", "its", "this", "that",
    "these", "those", "there", "here", "i", "we", "you", "my", "our", "your", "one", "no", "not",
    "yes", "oh", "now", "once", "all", "what", "who", "why", "how", "where", "some", "by", "up",
    "down", "out", "into", "only", "still", "yet", "even", "just", "very", "well", "said",
];

/// Why a leaf's start is not self-contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartProblem {
    /// The leaf starts inside a sentence.
    MidSentence,
    /// A third-person pronoun before any name in the first sentence.
    Pronoun,
    /// Inside a quotation opened before the leaf.
    InsideQuote,
    /// A quoted paragraph answering the quoted paragraph before it.
    ReplyLine,
}

/// What one leaf scores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafCheck {
    pub span: Span,
    pub tokens: usize,
    /// `None`: the start is self-contained.
    pub start_problem: Option<StartProblem>,
    /// Ends where a paragraph ends (or the book does).
    pub ends_at_paragraph: bool,
    /// Ends at a scene boundary (see the module docs); implies `ends_at_paragraph`.
    pub ends_at_scene: bool,
    pub within_budget: bool,
}

impl LeafCheck {
    pub fn self_contained(&self) -> bool {
        self.start_problem.is_none()
    }
}

/// The shares over a decomposition's leaves (each in 0..=1; `None` with no leaves).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overseeability {
    pub leaves: usize,
    pub self_contained_starts: Option<f64>,
    pub paragraph_ends: Option<f64>,
    pub scene_ends: Option<f64>,
    pub within_budget: Option<f64>,
    /// Median milliseconds to judge, over the timings given (`None` when none).
    pub median_judge_ms: Option<f64>,
    /// How many timings the median is over.
    pub judged: usize,
}

/// Checks every leaf (`(span, tokens)` in book order) against `book`, with leaf sizes in
/// `[min, max]` tokens within budget (a lone leaf may be smaller).
pub fn check_leaves(
    book: &Book,
    leaves: &[(Span, usize)],
    budget: (usize, usize),
) -> Vec<LeafCheck> {
    let lone = leaves.len() == 1;
    leaves
        .iter()
        .map(|&(span, tokens)| {
            let (ends_at_paragraph, ends_at_scene) = end_boundary(book, span.end);
            LeafCheck {
                span,
                tokens,
                start_problem: start_problem(book, span.start),
                ends_at_paragraph,
                ends_at_scene,
                within_budget: tokens <= budget.1 && (tokens >= budget.0 || lone),
            }
        })
        .collect()
}

/// The shares of [`check_leaves`]'s results, with the median of `judge_ms`.
pub fn summarize(checks: &[LeafCheck], judge_ms: &[u64]) -> Overseeability {
    let n = checks.len();
    let share = |f: &dyn Fn(&LeafCheck) -> bool| {
        (n > 0).then(|| checks.iter().filter(|c| f(c)).count() as f64 / n as f64)
    };
    Overseeability {
        leaves: n,
        self_contained_starts: share(&|c| c.self_contained()),
        paragraph_ends: share(&|c| c.ends_at_paragraph),
        scene_ends: share(&|c| c.ends_at_scene),
        within_budget: share(&|c| c.within_budget),
        median_judge_ms: median(judge_ms),
        judged: judge_ms.len(),
    }
}

/// The median of `xs` (the mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[u64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] as f64 } else { (v[m - 1] as f64 + v[m] as f64) / 2.0 })
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '\u{201c}' | '\u{201d}')
}

/// Whether a leaf starting at byte `at` starts self-contained, and if not why.
pub fn start_problem(book: &Book, at: usize) -> Option<StartProblem> {
    let text = book.text();
    let sentences = book.sentences();
    // The first sentence that ends after `at`.
    let i = sentences.partition_point(|s| s.end <= at);
    let first = sentences.get(i)?;
    let head = text.get(at..first.start).unwrap_or("");
    if first.start < at || !head.trim().is_empty() {
        return Some(StartProblem::MidSentence);
    }
    let paragraphs = book.paragraphs();
    let p = paragraphs.partition_point(|s| s.end <= first.start);
    if let Some(par) = paragraphs.get(p) {
        // Quotes opened before the leaf in its first paragraph.
        if par.start < first.start {
            let before = text.get(par.start..first.start).unwrap_or("");
            if open_quote(before) {
                return Some(StartProblem::InsideQuote);
            }
        } else if starts_quoted(book.slice(*par)) && p > 0 {
            // A quoted paragraph right after another quoted one: a reply in a dialogue.
            if starts_quoted(book.slice(paragraphs[p - 1])) {
                return Some(StartProblem::ReplyLine);
            }
        }
    }
    if pronoun_before_name(book.slice(*first)) {
        return Some(StartProblem::Pronoun);
    }
    None
}

fn starts_quoted(paragraph: &str) -> bool {
    paragraph.trim_start().chars().next().is_some_and(is_quote)
}

/// Whether `text` leaves a quotation open: curly quotes by their direction, straight ones by
/// parity.
fn open_quote(text: &str) -> bool {
    let mut depth: i32 = 0;
    let mut straight = 0usize;
    for c in text.chars() {
        match c {
            '\u{201c}' => depth += 1,
            '\u{201d}' => depth = (depth - 1).max(0),
            '"' => straight += 1,
            _ => {}
        }
    }
    depth > 0 || straight % 2 == 1
}

/// Whether the sentence uses a third-person pronoun before any name.
pub fn pronoun_before_name(sentence: &str) -> bool {
    let words = sentence
        .split(|c: char| !(c.is_alphabetic() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches('\''));
    for word in words {
        let lower = word.to_lowercase();
        if PRONOUNS.contains(&lower.as_str()) {
            return true;
        }
        if word.chars().next().is_some_and(char::is_uppercase) && !OPENERS.contains(&lower.as_str())
        {
            // A capitalized word that does not merely open the sentence: a name.
            return false;
        }
    }
    false
}

/// Whether byte `end` ends a paragraph, and whether a scene.
fn end_boundary(book: &Book, end: usize) -> (bool, bool) {
    let text = book.text();
    let rest = text.get(end..).unwrap_or("");
    if rest.trim().is_empty() {
        return (true, true);
    }
    let paragraphs = book.paragraphs();
    // The paragraph that contains or ends just before `end`.
    let i = paragraphs.partition_point(|p| p.end < end);
    let at_end = paragraphs.get(i).is_some_and(|p| {
        p.end <= end && text.get(p.end..end).is_some_and(|gap| gap.trim().is_empty())
    }) || paragraphs.get(i).is_some_and(|p| p.start >= end)
        && text.get(..end).is_some_and(|b| b.ends_with('\n'));
    if !at_end {
        return (false, false);
    }
    let blank_lines = rest.chars().take_while(|c| c.is_whitespace()).filter(|&c| c == '\n').count()
        + text.get(..end).map_or(0, |b| {
            b.chars().rev().take_while(|c| c.is_whitespace()).filter(|&c| c == '\n').count()
        });
    let next = paragraphs.iter().find(|p| p.start >= end).map(|p| (*p, book.slice(*p)));
    let heading_next =
        next.is_some_and(|(span, _)| book.headings().iter().any(|h| h.span.start == span.start));
    let break_next = next.is_some_and(|(_, t)| is_scene_break(t));
    (true, blank_lines >= 3 || heading_next || break_next)
}

/// A line of only symbols (`* * *`, `---`, `#`): a scene break.
pub fn is_scene_break(paragraph: &str) -> bool {
    let t = paragraph.trim();
    !t.is_empty() && t.chars().count() <= 20 && t.chars().all(|c| !c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(text: &str) -> Book {
        Book::from_text("t", text)
    }

    fn at(b: &Book, needle: &str) -> usize {
        b.text().find(needle).unwrap()
    }

    #[test]
    fn pronouns_before_names() {
        assert!(pronoun_before_name("He opened the door slowly."));
        assert!(pronoun_before_name("Then she laughed at Marta."));
        assert!(!pronoun_before_name("Marta opened the door and he followed."));
        assert!(!pronoun_before_name("The baker said that Tomas had left his coat."));
        assert!(!pronoun_before_name("It was a cold morning in the valley."));
        assert!(!pronoun_before_name("I walked to the mill."));
    }

    #[test]
    fn starts_are_checked_for_pronouns_quotes_and_replies() {
        let text = "Marta lived by the mill. She baked bread every day.\n\n\
                    He came at dawn. The miller waved.\n\n\
                    \"Good morning,\" said Tomas. \"Is the bread ready? It smells\n\
                    fine today.\"\n\n\
                    \"Not yet,\" Marta answered.\n\n\
                    The sun rose over the hills.\n";
        let b = book(text);
        assert_eq!(start_problem(&b, 0), None);
        assert_eq!(start_problem(&b, at(&b, "She baked")), Some(StartProblem::Pronoun));
        assert_eq!(start_problem(&b, at(&b, "He came")), Some(StartProblem::Pronoun));
        assert_eq!(start_problem(&b, at(&b, "The miller")), None);
        assert_eq!(start_problem(&b, at(&b, "It smells")), Some(StartProblem::InsideQuote));
        assert_eq!(start_problem(&b, at(&b, "\"Not yet")), Some(StartProblem::ReplyLine));
        assert_eq!(start_problem(&b, at(&b, "The sun")), None);
        assert_eq!(start_problem(&b, at(&b, "by the mill")), Some(StartProblem::MidSentence));
    }

    #[test]
    fn ends_at_paragraphs_and_scenes() {
        let text = "One line here. Two.\n\nNext part is here.\n\n* * *\n\nA new scene.\n\n\n\nAfter a gap.\n";
        let b = book(text);
        assert_eq!(end_boundary(&b, at(&b, "Two.")), (false, false));
        assert_eq!(end_boundary(&b, at(&b, "Next")), (true, false));
        assert_eq!(end_boundary(&b, at(&b, "Next") - 2), (true, false));
        assert_eq!(end_boundary(&b, at(&b, "* * *")), (true, true));
        assert_eq!(end_boundary(&b, at(&b, "After")), (true, true));
        assert_eq!(end_boundary(&b, b.text().len()), (true, true));
    }

    #[test]
    fn shares_and_median() {
        let text = "Marta lived by the mill. She baked bread.\n\nThe miller waved at Marta.\n";
        let b = book(text);
        let cut = at(&b, "She baked");
        let cut2 = at(&b, "The miller");
        let leaves = [
            (Span::new(0, cut), 10),
            (Span::new(cut, cut2), 50),
            (Span::new(cut2, b.text().len()), 200),
        ];
        let checks = check_leaves(&b, &leaves, (20, 100));
        assert_eq!(checks[1].start_problem, Some(StartProblem::Pronoun));
        assert!(!checks[0].ends_at_paragraph && checks[1].ends_at_paragraph);
        let s = summarize(&checks, &[3000, 1000, 2000, 9000]);
        assert_eq!(s.leaves, 3);
        assert!((s.self_contained_starts.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.paragraph_ends.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.within_budget.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.median_judge_ms, Some(2500.0));
        assert_eq!(summarize(&[], &[]).self_contained_starts, None);
        assert_eq!(median(&[5]), Some(5.0));
    }
}
