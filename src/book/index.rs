//! Indexing of normalized text: paragraphs, sentences and chapter/section headings, as byte spans.
//!
//! Pure functions over a `&str`; nothing here reads files or allocates per character. Spans never
//! cross each other: a heading line is always a paragraph of its own, sentences lie inside
//! paragraphs, and every span starts and ends on a `char` boundary.

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use super::Span;

/// What a heading line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadingKind {
    Volume,
    Book,
    Part,
    Act,
    Chapter,
    Stave,
    Canto,
    Scene,
    Section,
    /// A roman (or arabic) numeral alone on a line.
    Numeral,
    /// A Markdown ATX heading (`#` … `######`) with its level.
    Markdown(u8),
}

impl HeadingKind {
    /// Nesting level: 1 for the largest divisions (volume, book, part, act), 2 below.
    pub fn level(self) -> u8 {
        match self {
            HeadingKind::Volume | HeadingKind::Book | HeadingKind::Part | HeadingKind::Act => 1,
            HeadingKind::Markdown(level) => level,
            _ => 2,
        }
    }
}

/// A chapter or section heading: the span of its (trimmed) line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heading {
    pub span: Span,
    pub kind: HeadingKind,
}

/// The index of one text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Index {
    pub paragraphs: Vec<Span>,
    pub sentences: Vec<Span>,
    pub headings: Vec<Heading>,
}

/// Abbreviations after which a period does not end a sentence (compared case-sensitively,
/// without the final period).
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Messrs", "Mme", "Mlle", "Dr", "St", "Mt", "Jr", "Sr", "Prof", "Rev",
    "Capt", "Col", "Gen", "Lt", "Sgt", "Gov", "Hon", "No", "Nos", "vol", "Vol", "pp", "cf", "vs",
    "viz", "e.g", "i.e", "Esq", "Bros", "Co", "Fig", "ch", "Ch",
];

pub(crate) fn index(text: &str) -> Index {
    let mut idx = Index::default();
    let mut block: Vec<Span> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.strip_suffix('\n').unwrap_or(line);
        let span = Span::new(offset, offset + content.len());
        offset += line.len();
        if content.trim().is_empty() {
            flush_block(text, &block, &mut idx);
            block.clear();
        } else {
            block.push(span);
        }
    }
    flush_block(text, &block, &mut idx);
    drop_contents_lists(text, &mut idx);
    idx
}

/// A run of this many headings with no text between them is a table of contents, not headings.
const CONTENTS_RUN: usize = 4;

/// Forgets headings that form a table of contents: runs of headings in consecutive paragraphs
/// (`Letter 1` … `Chapter 24` each on its own line). Their paragraphs stay.
fn drop_contents_lists(text: &str, idx: &mut Index) {
    if idx.headings.len() < CONTENTS_RUN {
        return;
    }
    // The paragraph index of each heading (both lists are in text order).
    let mut para_of = Vec::with_capacity(idx.headings.len());
    let mut p = 0;
    for h in &idx.headings {
        while p + 1 < idx.paragraphs.len() && idx.paragraphs[p].end < h.span.start {
            p += 1;
        }
        para_of.push(p);
    }
    let mut keep = vec![true; idx.headings.len()];
    let mut run_start = 0;
    for i in 1..=idx.headings.len() {
        let continues = i < idx.headings.len() && para_of[i] == para_of[i - 1] + 1;
        if !continues {
            if i - run_start >= CONTENTS_RUN {
                // The body's first heading may follow the list directly: it repeats the first
                // entry (`Chapter 1` … `Chapter 1`), and stays.
                let same = |a: usize, b: usize| {
                    idx.headings[a].span.slice(text) == idx.headings[b].span.slice(text)
                };
                let end = if same(run_start, i - 1) { i - 1 } else { i };
                keep[run_start..end].iter_mut().for_each(|k| *k = false);
            }
            run_start = i;
        }
    }
    let mut k = keep.into_iter();
    idx.headings.retain(|_| k.next().unwrap_or(true));
}

/// Splits one block of non-blank lines into paragraphs (heading lines stand alone), then
/// paragraphs into sentences.
fn flush_block(text: &str, lines: &[Span], idx: &mut Index) {
    let ends = soft_paragraph_ends(text, lines);
    let mut para_start: Option<usize> = None;
    let mut para_end = 0;
    for (i, line) in lines.iter().enumerate() {
        let s = line.slice(text);
        // A titled heading may wrap onto a line or two ("CHAPTER 56. Of the Less Erroneous
        // Pictures of Whales, and the True Pictures of Whaling Scenes.").
        let alone = lines.len() == 1 || (i == 0 && lines.len() <= 3 && titled_heading(s));
        if let Some(kind) = heading_kind(s, alone) {
            if let Some(start) = para_start.take() {
                push_paragraph(text, Span::new(start, para_end), idx);
            }
            let lead = s.len() - s.trim_start().len();
            let span = Span::new(line.start + lead, line.start + s.trim_end().len());
            idx.headings.push(Heading { span, kind });
            push_paragraph(text, *line, idx);
        } else {
            let start = *para_start.get_or_insert(line.start);
            para_end = line.end;
            if ends.get(i).copied().unwrap_or(false) {
                push_paragraph(text, Span::new(start, para_end), idx);
                para_start = None;
            }
        }
    }
    if let Some(start) = para_start {
        push_paragraph(text, Span::new(start, para_end), idx);
    }
}

/// Lines of a block this long may hide paragraphs (texts that lost their blank lines).
const SOFT_PARAGRAPH_BLOCK: usize = 20;

/// In a long block with no blank lines, the lines that end a paragraph: a sentence ends there
/// and the line is clearly shorter than the block's full lines (under 80% of the 90th
/// percentile length), as hard-wrapped prose leaves it. Short blocks: none.
fn soft_paragraph_ends(text: &str, lines: &[Span]) -> Vec<bool> {
    if lines.len() < SOFT_PARAGRAPH_BLOCK {
        return Vec::new();
    }
    let lens: Vec<usize> = lines.iter().map(|l| l.slice(text).trim_end().len()).collect();
    let mut sorted = lens.clone();
    sorted.sort_unstable();
    let full = sorted[sorted.len() * 9 / 10];
    lines
        .iter()
        .zip(&lens)
        .map(|(line, &len)| {
            let t = line.slice(text).trim_end().trim_end_matches(['"', '\'', '’', '”', ')']);
            len * 5 < full * 4 && t.ends_with(['.', '!', '?'])
        })
        .collect()
}

fn push_paragraph(text: &str, span: Span, idx: &mut Index) {
    let s = span.slice(text);
    let trimmed = s.trim_end();
    if trimmed.trim_start().is_empty() {
        return;
    }
    let span = Span::new(span.start, span.start + trimmed.len());
    idx.paragraphs.push(span);
    split_sentences(text, span, &mut idx.sentences);
}

/// UAX #29 sentences of one paragraph, with line breaks read as spaces (hard-wrapped text would
/// otherwise break at every line), then repaired: a segment is joined to the previous one when
/// that one ends in an abbreviation or an initial, or when it starts in lower case (dialogue:
/// `"Stop!" he said.`).
fn split_sentences(text: &str, para: Span, out: &mut Vec<Span>) {
    let original = para.slice(text);
    let flat;
    let view: &str = if original.contains('\n') {
        flat = original.replace('\n', " ");
        &flat
    } else {
        original
    };
    let first_new = out.len();
    let segments: Vec<(usize, &str)> = if is_plain_ascii(view) {
        ascii_sentence_bounds(view)
    } else {
        view.split_sentence_bound_indices().collect()
    };
    for (off, seg) in segments {
        let trimmed_end = seg.trim_end();
        let trimmed = trimmed_end.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let start = para.start + off + (trimmed_end.len() - trimmed.len());
        let span = Span::new(start, start + trimmed.len());
        if out.len() > first_new {
            let prev = out[out.len() - 1];
            if should_join(prev.slice(text), trimmed) {
                let last = out.len() - 1;
                out[last].end = span.end;
                continue;
            }
        }
        out.push(span);
    }
}

/// Printable ASCII, spaces and tabs only: the text [`ascii_sentence_bounds`] handles.
fn is_plain_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
}

/// UAX #29 sentence boundaries for plain ASCII without line breaks, the same segments as
/// `unicode_segmentation` (a property test checks this) at several times its speed: in ASCII a
/// boundary can only follow `Term Close* Sp*`, so only those places need the rules.
fn ascii_sentence_bounds(s: &str) -> Vec<(usize, &str)> {
    let b = s.as_bytes();
    let is_term = |c: u8| matches!(c, b'.' | b'!' | b'?');
    let is_close = |c: u8| matches!(c, b'"' | b'\'' | b'(' | b')' | b'[' | b']' | b'{' | b'}');
    let is_sp = |c: u8| c == b' ' || c == b'\t';
    let is_continue = |c: u8| matches!(c, b',' | b'-' | b':' | b';');
    let mut out = Vec::new();
    let mut seg_start = 0;
    for t in 0..b.len() {
        if !is_term(b[t]) {
            continue;
        }
        let mut c = t + 1;
        while c < b.len() && is_close(b[c]) {
            c += 1;
        }
        while c < b.len() && is_sp(b[c]) {
            c += 1;
        }
        if c >= b.len() {
            break; // the end of the text ends the last segment anyway
        }
        let next = b[c];
        // SB8a: a continuation or another terminator keeps the sentence going.
        if is_continue(next) || is_term(next) {
            continue;
        }
        // SB9: `Term Close*` is followed by more of itself (a Close after Sp breaks, SB11).
        if c == t + 1 && b[t] == b'.' {
            // SB6: `.5`; SB7: `U.S` (a letter, the dot, a capital).
            if next.is_ascii_digit() {
                continue;
            }
            if next.is_ascii_uppercase() && t > 0 && b[t - 1].is_ascii_alphabetic() {
                continue;
            }
        }
        // SB8: after `.`, skip what is neither a letter nor a terminator; a lower-case letter
        // then means no boundary.
        if b[t] == b'.' {
            let mut k = c;
            while k < b.len() && !b[k].is_ascii_alphabetic() && !is_term(b[k]) {
                k += 1;
            }
            if k < b.len() && b[k].is_ascii_lowercase() {
                continue;
            }
        }
        out.push((seg_start, &s[seg_start..c]));
        seg_start = c;
    }
    if seg_start < b.len() {
        out.push((seg_start, &s[seg_start..]));
    }
    out
}

fn should_join(prev: &str, next: &str) -> bool {
    let first = next.chars().find(|c| !matches!(c, '"' | '\'' | '`' | '“' | '‘' | '(' | '['));
    match first {
        Some(c) if c.is_lowercase() => return true,
        Some(',' | ';' | ':' | ')') => return true,
        _ => {}
    }
    let Some(stem) = prev.strip_suffix('.') else { return false };
    let last_word = stem.rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or(stem);
    if ABBREVIATIONS.contains(&last_word) {
        return true;
    }
    // An initial: "J." in "J. R. Kennedy".
    let mut chars = last_word.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase())
}

/// The kind of heading `line` is, if it is one. `alone`: the line is a paragraph by itself
/// (blank lines around it); titles after the number and bare numerals need that.
pub(crate) fn heading_kind(line: &str, alone: bool) -> Option<HeadingKind> {
    let t = line.trim();
    if t.is_empty() || t.len() > 120 {
        return None;
    }
    if let Some(kind) = markdown_heading(t) {
        return Some(kind);
    }
    let mut words = t.split_whitespace();
    let first = words.next()?;
    let keyword = first.trim_end_matches(['.', ':']);
    let kind = match keyword {
        "VOLUME" | "Volume" => HeadingKind::Volume,
        "BOOK" | "Book" => HeadingKind::Book,
        "PART" | "Part" => HeadingKind::Part,
        "ACT" | "Act" => HeadingKind::Act,
        "CHAPTER" | "Chapter" => HeadingKind::Chapter,
        "STAVE" | "Stave" => HeadingKind::Stave,
        "CANTO" | "Canto" => HeadingKind::Canto,
        "SCENE" | "Scene" => HeadingKind::Scene,
        "SECTION" | "Section" | "ADVENTURE" | "Adventure" | "LETTER" | "Letter" => {
            HeadingKind::Section
        }
        other => {
            let bare = other.trim_end_matches(['.', ':']);
            let is_numeral = is_roman(bare, false) || is_arabic(bare);
            let rest = t[first.len()..].trim();
            // `XIV.` alone, or `VII. THE ADVENTURE OF THE BLUE CARBUNCLE` (a title in capitals).
            let titled = first.ends_with('.')
                && rest.chars().any(char::is_alphabetic)
                && !rest.chars().any(char::is_lowercase);
            return (alone && is_numeral && (rest.is_empty() || titled))
                .then_some(HeadingKind::Numeral);
        }
    };
    let mut number = words.next()?;
    if number.eq_ignore_ascii_case("the") {
        number = words.next()?;
        if !is_ordinal_word(number.trim_end_matches(['.', ':', ','])) {
            return None;
        }
    } else {
        let n = number.trim_end_matches(['.', ':', ',']);
        if !(is_roman(n, true) || is_arabic(n) || is_number_word(n) || is_ordinal_word(n)) {
            return None;
        }
    }
    let rest: Vec<&str> = words.collect();
    if rest.is_empty() || alone {
        return Some(kind);
    }
    // Inside a block of lines only "ACT II. SCENE 1."-style compounds count.
    let compound = rest.join(" ");
    heading_kind(&compound, false).filter(|_| rest.len() <= 2).map(|_| kind)
}

/// Whether `line` starts like a keyword heading with a title (`CHAPTER 56. Of the …`).
fn titled_heading(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("");
    let number = words.next().unwrap_or("");
    matches!(first, "CHAPTER" | "Chapter" | "BOOK" | "Book" | "PART" | "Part" | "STAVE" | "Stave")
        && number.ends_with(['.', ':'])
        && words.next().is_some()
}

fn markdown_heading(t: &str) -> Option<HeadingKind> {
    let hashes = t.bytes().take_while(|&b| b == b'#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = &t[hashes..];
    (rest.starts_with(' ') && !rest.trim().is_empty())
        .then_some(HeadingKind::Markdown(hashes as u8))
}

fn is_roman(s: &str, allow_lower: bool) -> bool {
    !s.is_empty()
        && s.len() <= 8
        && (s.bytes().all(|b| b"IVXLCDM".contains(&b))
            || (allow_lower && s.bytes().all(|b| b"ivxlcdm".contains(&b))))
}

fn is_arabic(s: &str) -> bool {
    !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit())
}

const NUMBER_WORDS: &[&str] = &[
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "last",
    "final",
];
const ORDINAL_WORDS: &[&str] = &[
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "eleventh", "twelfth", "last", "final",
];

fn is_number_word(s: &str) -> bool {
    NUMBER_WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

fn is_ordinal_word(s: &str) -> bool {
    ORDINAL_WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(text: &'a str, spans: &[Span]) -> Vec<&'a str> {
        spans.iter().map(|s| s.slice(text)).collect()
    }

    #[test]
    fn paragraphs_split_at_blank_lines_and_headings() {
        let text = "  First para\nline two.\n\n \nCHAPTER I\nSecond para.\n";
        let idx = index(text);
        assert_eq!(
            texts(text, &idx.paragraphs),
            ["  First para\nline two.", "CHAPTER I", "Second para."]
        );
        assert_eq!(idx.headings.len(), 1);
        assert_eq!(idx.headings[0].span.slice(text), "CHAPTER I");
    }

    #[test]
    fn sentences_handle_wraps_abbreviations_and_dialogue() {
        let text =
            "Mr. Smith met\nDr. Jones. \"Stop!\" he said. J. R. Kennedy wrote it. Then we left.";
        let idx = index(text);
        assert_eq!(
            texts(text, &idx.sentences),
            [
                "Mr. Smith met\nDr. Jones.",
                "\"Stop!\" he said.",
                "J. R. Kennedy wrote it.",
                "Then we left."
            ]
        );
    }

    #[test]
    fn heading_forms() {
        for (line, alone, kind) in [
            ("CHAPTER I", false, Some(HeadingKind::Chapter)),
            ("CHAPTER II.", false, Some(HeadingKind::Chapter)),
            ("Chapter 1", false, Some(HeadingKind::Chapter)),
            ("Chapter 12: The End", true, Some(HeadingKind::Chapter)),
            ("Chapter 12: The End of it", false, None),
            ("BOOK I", true, Some(HeadingKind::Book)),
            ("Book I ", true, Some(HeadingKind::Book)),
            ("BOOK THE FIRST", true, Some(HeadingKind::Book)),
            ("STAVE ONE.", true, Some(HeadingKind::Stave)),
            ("ACT II. SCENE 1.", false, Some(HeadingKind::Act)),
            ("SCENE I\tOrchard of Oliver's house.", true, Some(HeadingKind::Scene)),
            ("SCENE\tOliver's house; Duke Frederick's court", true, None),
            ("XIV.", true, Some(HeadingKind::Numeral)),
            ("XIV.", false, None),
            ("## Part two", true, Some(HeadingKind::Markdown(2))),
            ("chapter 3 of the book", true, None),
            ("Book lovers unite", true, None),
            ("I", true, Some(HeadingKind::Numeral)),
            ("ADVENTURE IV. THE BOSCOMBE VALLEY MYSTERY", true, Some(HeadingKind::Section)),
            ("Letter 4", true, Some(HeadingKind::Section)),
            ("VII. THE ADVENTURE OF THE BLUE CARBUNCLE", true, Some(HeadingKind::Numeral)),
            ("VII. The adventure", true, None),
            ("I. A Scandal in Bohemia", true, None),
        ] {
            assert_eq!(heading_kind(line, alone), kind, "{line:?}");
        }
    }

    #[test]
    fn heading_inside_unbroken_block() {
        let text = "end of the story.\nCHAPTER II.\nIt began again.\n";
        let idx = index(text);
        assert_eq!(idx.headings.len(), 1);
        assert_eq!(
            texts(text, &idx.paragraphs),
            ["end of the story.", "CHAPTER II.", "It began again."]
        );
    }

    #[test]
    fn contents_lists_are_not_headings() {
        let toc: String = (1..=6).map(|i| format!("Chapter {i}\n\n")).collect();
        let body: String = (1..=6).map(|i| format!("Chapter {i}\n\nText of {i}.\n\n")).collect();
        let text = format!("Contents\n\n{toc}{body}");
        let idx = index(&text);
        assert_eq!(idx.headings.len(), 6);
        assert!(idx.headings[0].span.start > text.find("Text of").unwrap() - 20);
        // ACT and SCENE together are kept.
        let idx = index("ACT I\n\nSCENE I\n\nWords.\n");
        assert_eq!(idx.headings.len(), 2);
    }

    #[test]
    fn wrapped_titled_heading() {
        let text = "end.\n\nCHAPTER 56. Of the Less Erroneous Pictures of Whales, and the True\nPictures of Whaling Scenes.\n\nText.\n";
        let idx = index(text);
        assert_eq!(idx.headings.len(), 1);
        assert!(idx.headings[0].span.slice(text).starts_with("CHAPTER 56."));
    }

    #[test]
    fn paragraphs_without_blank_lines() {
        let full = "a line of text that is as long as the lines of this block are, ok\n";
        let mut text = String::new();
        for _ in 0..3 {
            text.push_str(&full.repeat(8));
            text.push_str("The end of it.\n");
        }
        let idx = index(&text);
        assert_eq!(idx.paragraphs.len(), 3);
        assert!(idx.paragraphs[0].slice(&text).ends_with("The end of it."));
        // Short blocks keep their lines together.
        let idx = index("One line.\nShort.\nAnother line here.\n");
        assert_eq!(idx.paragraphs.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn ascii_bounds_match_uax29(s in "[aZq .!?'\"()\\[\\],;:5\t`-]{0,40}") {
            let ours = ascii_sentence_bounds(&s);
            let reference: Vec<(usize, &str)> = s.split_sentence_bound_indices().collect();
            proptest::prop_assert_eq!(ours, reference);
        }
    }

    #[test]
    fn ascii_bounds_match_uax29_on_prose() {
        let text = "Mr. Smith came. \"Stop!\" he said. It cost 3.5 dollars, i.e. a lot... Then the \
                    U.S. army (the one from the north) left.) Really?! Yes. 'Fine.' And so on; well. ok";
        let reference: Vec<(usize, &str)> = text.split_sentence_bound_indices().collect();
        assert_eq!(ascii_sentence_bounds(text), reference);
    }

    #[test]
    fn spans_nest() {
        let text = "A b. C d!\n\nE f? G.\n\n\n";
        let idx = index(text);
        for s in &idx.sentences {
            assert!(idx.paragraphs.iter().any(|p| p.start <= s.start && s.end <= p.end));
        }
        assert_eq!(idx.sentences.len(), 4);
    }
}
