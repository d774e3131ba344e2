//! Fixed-size chunking after Wu et al. 2021: leaves of about `chunk_tokens` tokens, then parents
//! over 5–13 consecutive children, up to one root.
//!
//! Leaves: the book is cut into units (sentences; an over-long sentence into words; an
//! over-long word into pieces), each starting at a paragraph, sentence or word boundary, or at a
//! heading. Headings always start a new leaf. Within a section (text between headings) the leaf
//! target is balanced (`remaining / ceil(remaining / target)`) so that sections do not end in a
//! sliver, and each cut falls at the paragraph boundary nearest the target if one lies in
//! `[0.6 × target, chunk_tokens]`, else at the nearest sentence boundary, else at the last word
//! boundary that fits. A leaf never exceeds `chunk_tokens` by the counter's sum over its units
//! (for [`super::ApproxCounter`] that bounds the leaf's own count too), except a single
//! character that counts more. With a seed, each leaf's target is jittered down by up to
//! `jitter × chunk_tokens` (reproducibly: the generator is defined here, not by a crate).
//!
//! Parents: each level is cut into the fewest groups of at most `max` nodes, where `max` is
//! `fanout_max` lowered so that the children's output caps fit `max_input_tokens`; among those
//! cuts a dynamic program prefers ones at book/part/act starts, then chapter starts (with
//! `align_to_headings`), then even sizes. A level of one node is the root; a book of one leaf is
//! a one-node tree.
//!
//! This file never reads files or touches the store; it only proposes a [`TreeSpec`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ApproxCounter, DecomposeError, Decomposer, TokenCounter};
use crate::book::Book;
use crate::tree::{output_cap, LeafSpec, TaskTree, TreeSpec};

/// Whether nodes read earlier same-height outputs as previous context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextMode {
    /// Leaves are independent (they batch fully).
    #[default]
    None,
    /// Each node reads the outputs of the `context_window` nodes before it at its height.
    Previous,
}

impl std::str::FromStr for ContextMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ContextMode::None),
            "previous" => Ok(ContextMode::Previous),
            other => Err(format!("unknown context mode '{other}' (expected none or previous)")),
        }
    }
}

/// Settings of [`FixedChunker`]; all recorded in the trees it builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FixedConfig {
    /// Most tokens per leaf (the target, unless jittered).
    pub chunk_tokens: usize,
    /// Fewest children per parent (a level smaller than this becomes one root anyway).
    pub fanout_min: usize,
    /// Most children per parent.
    pub fanout_max: usize,
    /// Output caps by height (the last repeats): 128 / 192 / 384 after Wu et al.
    pub output_tokens: Vec<usize>,
    /// Most input tokens of a parent: its children's output caps must fit.
    pub max_input_tokens: usize,
    pub context: ContextMode,
    /// How many earlier same-height nodes a node reads with `context: previous`.
    pub context_window: usize,
    /// Jitters leaf sizes reproducibly (Wu et al. vary chunking by seed); `None`: no jitter.
    pub seed: Option<u64>,
    /// With a seed, each leaf target is `chunk_tokens × (1 − jitter × u)`, u uniform in [0, 1).
    pub jitter: f64,
    /// Place parents' boundaries at chapter (and book/part/act) starts where the fanout allows.
    pub align_to_headings: bool,
}

impl Default for FixedConfig {
    fn default() -> Self {
        FixedConfig {
            chunk_tokens: 600,
            fanout_min: 5,
            fanout_max: 13,
            output_tokens: vec![128, 192, 384],
            max_input_tokens: 2048,
            context: ContextMode::None,
            context_window: 3,
            seed: None,
            jitter: 0.25,
            align_to_headings: true,
        }
    }
}

impl FixedConfig {
    pub fn validate(&self) -> Result<(), DecomposeError> {
        let err = |m: String| Err(DecomposeError::Config(m));
        if self.chunk_tokens < 8 {
            return err(format!("chunk tokens must be at least 8 (got {})", self.chunk_tokens));
        }
        if self.fanout_min < 2 || self.fanout_max < self.fanout_min {
            return err(format!(
                "fanout must be MIN..MAX with 2 <= MIN <= MAX (got {}..{})",
                self.fanout_min, self.fanout_max
            ));
        }
        if self.output_tokens.is_empty() || self.output_tokens.contains(&0) {
            return err("output caps must be a non-empty list of positive numbers".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return err(format!("jitter must be in [0, 1) (got {})", self.jitter));
        }
        Ok(())
    }
}

/// Parses `MIN..MAX` (also `MIN-MAX`) into a pair.
pub fn parse_fanout(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once("..")
        .or_else(|| s.split_once('-'))
        .ok_or_else(|| format!("fanout '{s}' is not MIN..MAX (e.g. 5..13)"))?;
    let parse = |x: &str| {
        x.trim().parse::<usize>().map_err(|_| format!("fanout '{s}': '{x}' is not a number"))
    };
    let (min, max) = (parse(a)?, parse(b.trim_start_matches('='))?);
    if min < 2 || max < min {
        return Err(format!("fanout '{s}' must satisfy 2 <= MIN <= MAX"));
    }
    Ok((min, max))
}

/// Fixed-size chunking (see the module docs).
#[derive(Clone)]
pub struct FixedChunker {
    config: FixedConfig,
    counter: Arc<dyn TokenCounter>,
}

impl std::fmt::Debug for FixedChunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedChunker")
            .field("config", &self.config)
            .field("counter", &self.counter.name())
            .finish()
    }
}

impl FixedChunker {
    /// A chunker counting with [`ApproxCounter`].
    pub fn new(config: FixedConfig) -> Result<FixedChunker, DecomposeError> {
        config.validate()?;
        Ok(FixedChunker { config, counter: Arc::new(ApproxCounter) })
    }

    /// The same chunker counting with `counter`.
    pub fn with_counter(mut self, counter: Arc<dyn TokenCounter>) -> FixedChunker {
        self.counter = counter;
        self
    }

    pub fn fixed_config(&self) -> &FixedConfig {
        &self.config
    }

    /// The leaves only (spans tiling the text, with token counts).
    pub fn leaves(&self, book: &Book) -> Result<Vec<LeafSpec>, DecomposeError> {
        Ok(self.leaves_and_sections(book)?.0)
    }

    /// The leaves, and for each the strength of the section that starts with it (0: none,
    /// 1: a chapter-like heading, 2: a book/part/act heading).
    fn leaves_and_sections(&self, book: &Book) -> Result<(Vec<LeafSpec>, Vec<u8>), DecomposeError> {
        let units = self.units(book);
        if units.is_empty() {
            return Err(DecomposeError::EmptyBook { title: book.title().to_string() });
        }
        Ok(self.pack(&units, book.text().len()))
    }

    /// Group sizes for each level above the leaves. `sections[i]` is the strength of the section
    /// starting at leaf `i` (0 when none; see [`FixedConfig::align_to_headings`]). Each level has
    /// the fewest groups its fanout allows; among those cuts, the ones before the strongest
    /// section starts win, then the most even sizes.
    pub fn groups(&self, sections: &[u8]) -> Vec<Vec<usize>> {
        let mut levels = Vec::new();
        let mut sections: Vec<u8> =
            if self.config.align_to_headings { sections.to_vec() } else { vec![0; sections.len()] };
        let mut height = 0u32;
        while sections.len() > 1 {
            let cap = output_cap(&self.config.output_tokens, height).max(1);
            let fit = self.config.max_input_tokens / cap;
            let max = self.config.fanout_max.min(fit).max(2);
            let sizes = partition(&sections, self.config.fanout_min, max);
            let mut next = Vec::with_capacity(sizes.len());
            let mut first = 0;
            for &size in &sizes {
                next.push(sections[first]);
                first += size;
            }
            sections = next;
            height += 1;
            levels.push(sizes);
        }
        levels
    }

    /// Cut units: sentences, or words/pieces of over-long ones, with the boundary at their start.
    fn units(&self, book: &Book) -> Vec<Unit> {
        let text = book.text();
        let sentences = book.sentences();
        let paragraphs = book.paragraphs();
        let mut heading_starts = book
            .headings()
            .iter()
            .map(|h| (h.span.start, if h.kind.level() <= 1 { 2u8 } else { 1 }))
            .peekable();
        let mut para = 0;
        let mut units: Vec<Unit> = Vec::with_capacity(sentences.len());
        let mut prev_sentence_end = 0;
        for (i, s) in sentences.iter().enumerate() {
            while para + 1 < paragraphs.len() && paragraphs[para].end <= s.start {
                para += 1;
            }
            let p = paragraphs.get(para).copied().unwrap_or(*s);
            let first_in_para = prev_sentence_end <= p.start || i == 0;
            prev_sentence_end = s.end;
            while heading_starts.peek().is_some_and(|&(h, _)| h < s.start) {
                heading_starts.next();
            }
            // A heading right after another (ACT I / SCENE I) stays in the same leaf.
            let after_heading =
                units.last().is_some_and(|u: &Unit| u.boundary == Boundary::Heading);
            let heading = heading_starts.peek().filter(|&&(h, _)| h == s.start).map(|&(_, l)| l);
            let is_heading = heading.is_some() && !after_heading;
            let (start, boundary) = match (is_heading, first_in_para) {
                (true, _) => (p.start.min(s.start), Boundary::Heading),
                (false, true) => (p.start.min(s.start), Boundary::Paragraph),
                (false, false) => (s.start, Boundary::Sentence),
            };
            let start = if units.is_empty() { 0 } else { start };
            let section = if is_heading { heading.unwrap_or(1) } else { 0 };
            units.push(Unit { start, tokens: 0, boundary, section });
        }
        // Token counts over each unit's whole extent (up to the next unit), splitting any unit
        // that alone exceeds the limit.
        let limit = self.config.chunk_tokens;
        let mut out = Vec::with_capacity(units.len());
        for i in 0..units.len() {
            let end = units.get(i + 1).map_or(text.len(), |u| u.start);
            let unit = units[i];
            let tokens = self.counter.count(&text[unit.start..end]);
            if tokens <= limit {
                out.push(Unit { tokens, ..unit });
            } else {
                self.split_long(text, unit, end, &mut out);
            }
        }
        out
    }

    /// Splits an over-long unit at word starts, and an over-long word into pieces.
    fn split_long(&self, text: &str, unit: Unit, end: usize, out: &mut Vec<Unit>) {
        let limit = self.config.chunk_tokens;
        let slice = &text[unit.start..end];
        let mut starts = vec![0];
        let mut prev_ws = false;
        for (i, c) in slice.char_indices() {
            if prev_ws && !c.is_whitespace() {
                starts.push(i);
            }
            prev_ws = c.is_whitespace();
        }
        for (k, &w) in starts.iter().enumerate() {
            let w_end = starts.get(k + 1).copied().unwrap_or(slice.len());
            let boundary = if k == 0 { unit.boundary } else { Boundary::Word };
            let word = &slice[w..w_end];
            let tokens = self.counter.count(word);
            if tokens <= limit {
                let section = if k == 0 { unit.section } else { 0 };
                out.push(Unit { start: unit.start + w, tokens, boundary, section });
                continue;
            }
            // One word over the limit: cut it into pieces at char boundaries.
            let mut pos = 0;
            let mut first = true;
            while pos < word.len() {
                let mut take = floor_char(word, (pos + limit * 2).min(word.len()));
                if take <= pos {
                    take = ceil_char(word, pos + 1);
                }
                let mut tokens = self.counter.count(&word[pos..take]);
                while tokens > limit {
                    let half = floor_char(word, pos + (take - pos) / 2);
                    if half <= pos {
                        break;
                    }
                    take = half;
                    tokens = self.counter.count(&word[pos..take]);
                }
                // Trailing whitespace of the word joins its last piece if it still fits.
                if take < word.len() && word[take..].trim().is_empty() {
                    let with_space = self.counter.count(&word[pos..]);
                    if with_space <= limit {
                        take = word.len();
                        tokens = with_space;
                    }
                }
                let b = if first { boundary } else { Boundary::Word };
                let section = if k == 0 && first { unit.section } else { 0 };
                out.push(Unit { start: unit.start + w + pos, tokens, boundary: b, section });
                first = false;
                pos = take;
            }
        }
    }

    /// Packs units into leaves (see the module docs).
    fn pack(&self, units: &[Unit], text_len: usize) -> (Vec<LeafSpec>, Vec<u8>) {
        let limit = self.config.chunk_tokens;
        let mut prefix = Vec::with_capacity(units.len() + 1);
        prefix.push(0usize);
        for u in units {
            prefix.push(prefix[prefix.len() - 1] + u.tokens);
        }
        let n = units.len();
        // next_heading[i]: the first unit after i that starts a heading (or n).
        let mut next_heading = vec![n; n];
        let mut next = n;
        for i in (0..n).rev() {
            next_heading[i] = next;
            if units[i].boundary == Boundary::Heading {
                next = i;
            }
        }
        let mut rng = self.config.seed.map(SplitMix64::new);
        let mut leaves = Vec::new();
        let mut sections = Vec::new();
        let mut i = 0;
        while i < n {
            let section_end = next_heading[i];
            let remaining = prefix[section_end] - prefix[i];
            let j = if remaining <= limit {
                section_end
            } else {
                let base = match rng.as_mut() {
                    Some(r) => (limit as f64 * (1.0 - self.config.jitter * r.next_f64())) as usize,
                    None => limit,
                }
                .max(1);
                let target = remaining / remaining.div_ceil(base);
                self.choose_cut(units, &prefix, i, section_end, target)
            };
            let start = if i == 0 { 0 } else { units[i].start };
            let end = if j >= n { text_len } else { units[j].start };
            leaves.push(LeafSpec {
                span: crate::book::Span::new(start, end),
                input_tokens: prefix[j] - prefix[i],
            });
            sections.push(units[i].section);
            i = j;
        }
        (leaves, sections)
    }

    /// Where the leaf that starts at unit `i` ends (exclusive unit index), within `i+1..=end`.
    fn choose_cut(
        &self,
        units: &[Unit],
        prefix: &[usize],
        i: usize,
        end: usize,
        target: usize,
    ) -> usize {
        let limit = self.config.chunk_tokens;
        let lo = target * 6 / 10;
        let mut best_para: Option<(usize, usize)> = None; // (distance, j)
        let mut best_sent: Option<(usize, usize)> = None;
        let mut last_sent = None;
        let mut last_any = None;
        let mut j = i + 1;
        while j <= end {
            let cum = prefix[j] - prefix[i];
            if cum > limit {
                break;
            }
            if j == end {
                last_any = Some(j);
                last_sent = Some(j);
                j += 1;
                continue;
            }
            let boundary = units[j].boundary;
            let dist = cum.abs_diff(target);
            if cum >= lo
                && boundary >= Boundary::Paragraph
                && best_para.is_none_or(|(d, _)| dist < d)
            {
                best_para = Some((dist, j));
            }
            if cum >= lo
                && boundary >= Boundary::Sentence
                && best_sent.is_none_or(|(d, _)| dist < d)
            {
                best_sent = Some((dist, j));
            }
            if boundary >= Boundary::Sentence {
                last_sent = Some(j);
            }
            last_any = Some(j);
            j += 1;
        }
        best_para.or(best_sent).map(|(_, j)| j).or(last_sent).or(last_any).unwrap_or(i + 1)
    }
}

impl Decomposer for FixedChunker {
    fn name(&self) -> &str {
        "fixed"
    }

    fn config(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("token_counter".into(), self.counter.name().into());
        }
        value
    }

    fn decompose(&self, book: &Book) -> Result<TaskTree, DecomposeError> {
        let _span =
            tracing::debug_span!("decompose", decomposer = "fixed", book = book.id().short())
                .entered();
        let started = std::time::Instant::now();
        let (leaves, sections) = self.leaves_and_sections(book)?;
        tracing::debug!(leaves = leaves.len(), elapsed = ?started.elapsed(), "leaves cut");
        let groups = self.groups(&sections);
        let context_window = match self.config.context {
            ContextMode::None => 0,
            ContextMode::Previous => self.config.context_window,
        };
        let spec = TreeSpec {
            leaves,
            groups,
            output_tokens: self.config.output_tokens.clone(),
            context_window,
        };
        Ok(TaskTree::build(book, self.info(), &spec)?)
    }
}

/// Strength of the boundary at a unit's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    Word,
    Sentence,
    Paragraph,
    Heading,
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    tokens: usize,
    boundary: Boundary,
    /// 0, or the strength of the section this unit's heading starts (1 chapter, 2 book/part).
    section: u8,
}

/// Cuts `sections.len()` nodes into consecutive groups of at most `max` (and, where the count
/// allows, at least `min`) nodes: the fewest groups, then cuts before the strongest section
/// starts, then the most even sizes. A dynamic program over positions, O(n × (max − min)).
fn partition(sections: &[u8], min: usize, max: usize) -> Vec<usize> {
    let n = sections.len();
    if n <= max {
        return vec![n];
    }
    let k = n.div_ceil(max);
    let min = min.min(n / k).clamp(1, max);
    // Costs in strict priority: a group, then a cut at a weak boundary, then unevenness.
    const GROUP: u128 = 1 << 100;
    const WEAK_CUT: u128 = 1 << 64;
    let mut cost = vec![u128::MAX; n + 1];
    let mut size_at = vec![0usize; n + 1];
    cost[0] = 0;
    for i in 1..=n {
        for s in min..=max.min(i) {
            let start = i - s;
            if cost[start] == u128::MAX {
                continue;
            }
            let weak = if start == 0 { 0 } else { 2 - sections[start].min(2) } as u128;
            let uneven = (s * k).abs_diff(n) as u128;
            let c = cost[start] + GROUP + weak * WEAK_CUT + uneven * uneven;
            if c < cost[i] {
                cost[i] = c;
                size_at[i] = s;
            }
        }
    }
    if cost[n] == u128::MAX {
        // Unreachable with min <= n / k, but never panic: fall back to an even split.
        let (base, extra) = (n / k, n % k);
        return (0..k).map(|i| base + usize::from(i < extra)).collect();
    }
    let mut sizes = Vec::with_capacity(k);
    let mut i = n;
    while i > 0 {
        sizes.push(size_at[i]);
        i -= size_at[i];
    }
    sizes.reverse();
    sizes
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

/// SplitMix64: a tiny generator defined here so seeded trees stay the same across crate updates.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::NodeKind;

    fn chunker(chunk_tokens: usize) -> FixedChunker {
        FixedChunker::new(FixedConfig { chunk_tokens, ..FixedConfig::default() }).unwrap()
    }

    fn paragraphs(n: usize, sentences: usize) -> String {
        (0..n)
            .map(|p| {
                (0..sentences)
                    .map(|s| format!("Sentence {s} of paragraph {p} is here."))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn check_tiling(book: &Book, tree: &TaskTree) {
        let joined: String =
            tree.leaves().iter().map(|&l| book.slice(tree.node(l).span().unwrap())).collect();
        assert_eq!(joined, book.text());
    }

    #[test]
    fn short_book_is_one_node() {
        let book = Book::from_text("t", "A short book. Only two sentences.");
        let tree = chunker(600).decompose(&book).unwrap();
        assert_eq!(tree.len(), 1);
        assert!(tree.node(tree.root()).is_leaf());
    }

    #[test]
    fn leaves_cut_at_paragraphs_and_fit() {
        let book = Book::from_text("t", paragraphs(40, 6));
        let c = chunker(100);
        let tree = c.decompose(&book).unwrap();
        check_tiling(&book, &tree);
        for &l in tree.leaves() {
            let n = tree.node(l);
            let text = book.slice(n.span().unwrap());
            assert!(ApproxCounter.count(text) <= 100, "{}: {}", n.label, ApproxCounter.count(text));
            if l != *tree.leaves().last().unwrap() {
                assert!(
                    text.ends_with("\n\n"),
                    "{} does not end at a paragraph: {text:?}",
                    n.label
                );
            }
        }
        for id in tree.nodes_topological() {
            if let NodeKind::Internal { children } = &tree.node(id).kind {
                assert!(children.len() <= 13);
            }
        }
    }

    #[test]
    fn headings_start_leaves() {
        let text = format!(
            "CHAPTER I\n\n{}\n\nBOOK II\n\nCHAPTER II\n\n{}\n",
            paragraphs(2, 2),
            paragraphs(2, 2)
        );
        let book = Book::from_text("t", &text);
        let tree = chunker(600).decompose(&book).unwrap();
        assert_eq!(tree.leaves().len(), 2);
        let second = book.slice(tree.node(tree.leaves()[1]).span().unwrap());
        assert!(second.starts_with("BOOK II\n\nCHAPTER II"), "{second:?}");
    }

    #[test]
    fn long_sentence_and_long_word_split() {
        let text = format!("{} {}", "word ".repeat(500), "x".repeat(5000));
        let book = Book::from_text("t", &text);
        let tree = chunker(50).decompose(&book).unwrap();
        check_tiling(&book, &tree);
        for &l in tree.leaves() {
            assert!(ApproxCounter.count(book.slice(tree.node(l).span().unwrap())) <= 50);
        }
    }

    #[test]
    fn seed_jitters_reproducibly() {
        let book = Book::from_text("t", paragraphs(200, 5));
        let with = |seed| {
            let config = FixedConfig { seed, ..FixedConfig::default() };
            FixedChunker::new(config).unwrap().leaves(&book).unwrap()
        };
        assert_eq!(with(Some(7)), with(Some(7)));
        assert_ne!(with(Some(7)), with(Some(8)));
        assert_ne!(with(Some(7)), with(None));
    }

    #[test]
    fn grouping_respects_fanout_and_budget() {
        let c = chunker(600);
        let groups = c.groups(&[0; 200]);
        assert_eq!(groups.last().unwrap().len(), 1);
        for (h, level) in groups.iter().enumerate() {
            let cap = output_cap(&[128, 192, 384], h as u32);
            for &g in level {
                assert!(g <= 13 && g * cap <= 2048 || g == 2, "height {}: {g}", h + 1);
            }
        }
        assert_eq!(groups[0].len(), 16); // ceil(200 / 13)
        assert!(c.groups(&[0]).is_empty());
        assert_eq!(c.groups(&[0; 3]), vec![vec![3]]);
        assert_eq!(groups[0].iter().sum::<usize>(), 200);
        assert!(groups[0].iter().all(|&g| g == 12 || g == 13), "{:?}", groups[0]);
    }

    #[test]
    fn parents_align_to_chapters() {
        // 6 chapters of 4 leaves each; groups of at most 9: the fewest groups is 3, and cuts
        // at chapter starts are possible (8 + 8 + 8).
        let mut sections = vec![0u8; 24];
        for c in 0..6 {
            sections[c * 4] = 1;
        }
        assert_eq!(partition(&sections, 5, 9), vec![8, 8, 8]);
        // Book starts beat chapter starts.
        sections[12] = 2;
        let sizes = partition(&sections, 2, 13);
        assert_eq!(sizes, vec![12, 12]);
        // Without headings: even sizes.
        assert_eq!(partition(&[0; 27], 5, 13), vec![9, 9, 9]);
        // A count that cannot meet the minimum still partitions.
        assert_eq!(partition(&[0; 7], 5, 6).iter().sum::<usize>(), 7);
        let c =
            FixedChunker::new(FixedConfig { align_to_headings: false, ..FixedConfig::default() })
                .unwrap();
        let mut many = vec![0u8; 30];
        many[3] = 2;
        assert_eq!(c.groups(&many)[0], vec![10, 10, 10]);
    }

    #[test]
    fn fanout_parsing() {
        assert_eq!(parse_fanout("5..13"), Ok((5, 13)));
        assert_eq!(parse_fanout("2-4"), Ok((2, 4)));
        assert!(parse_fanout("13..5").is_err());
        assert!(parse_fanout("x..5").is_err());
        assert!(parse_fanout("7").is_err());
    }

    #[test]
    fn empty_book_is_an_error() {
        let book = Book::from_text("t", "  \n\n ");
        assert!(matches!(chunker(600).decompose(&book), Err(DecomposeError::EmptyBook { .. })));
    }

    #[test]
    fn config_is_recorded() {
        let book = Book::from_text("t", paragraphs(50, 5));
        let config =
            FixedConfig { context: ContextMode::Previous, seed: Some(3), ..FixedConfig::default() };
        let tree = FixedChunker::new(config).unwrap().decompose(&book).unwrap();
        assert_eq!(tree.decomposer().name, "fixed");
        assert_eq!(tree.decomposer().config["seed"], 3);
        assert_eq!(tree.decomposer().config["token_counter"], "approx");
        assert_eq!(tree.context_inputs(tree.leaves()[5]).len(), 3);
    }
}
