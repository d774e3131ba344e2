//! What the rating screen shows of a node, as plain data for the templates: its input (a leaf's
//! passage in paragraphs; a higher node's children, each with its summary and its own input for
//! reading in place), and the pair of candidates, blind (no model, no score, no index).

use serde::Serialize;

use crate::compose::sample::{self, StoredCandidate};
use crate::grounding;
use crate::tree::NodeId;
use crate::workspace::{LoadedTree, RatingTarget, Workspace};

/// The paragraphs of a text: split at blank lines, each trimmed; line breaks inside a paragraph
/// kept as spaces would lose verse and lists, so they stay (the page shows them with
/// `white-space: pre-line`).
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        } else {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(line.trim_end());
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// A child of the node being rated.
#[derive(Debug, Clone, Serialize)]
pub struct ChildView {
    pub id: String,
    pub height: u32,
    pub summary: String,
    /// The child's own input, in paragraphs (a passage, or its children's summaries).
    pub input: Vec<String>,
}

/// A candidate as shown.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateView {
    pub hash: String,
    pub text: String,
    pub paragraphs: Vec<String>,
    /// With the input checked ([`CandidateView::checked`]): each paragraph as pieces, those
    /// the input does not support marked with their kind (the rating screen's highlights).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub marked: Vec<Vec<Piece>>,
    /// What the check found, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grounding: Option<GroundingView>,
}

/// A piece of a paragraph: plain, or a span the input does not support.
#[derive(Debug, Clone, Serialize)]
pub struct Piece {
    pub text: String,
    /// `name`, `number` or `word` for unsupported content; absent for plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<grounding::SpanKind>,
}

/// The numbers shown beside the highlights.
#[derive(Debug, Clone, Serialize)]
pub struct GroundingView {
    pub unsupported: usize,
    pub content: usize,
    pub percent: u32,
    pub copied_percent: u32,
}

impl CandidateView {
    pub fn of(c: &StoredCandidate) -> CandidateView {
        CandidateView {
            hash: c.hash.clone(),
            text: c.text.clone(),
            paragraphs: paragraphs(&c.text),
            marked: Vec::new(),
            grounding: None,
        }
    }

    /// The candidate with what `source` (the node's input) does not support marked.
    pub fn checked(c: &StoredCandidate, source: &grounding::Source) -> CandidateView {
        let mut view = CandidateView::of(c);
        view.marked = view.paragraphs.iter().map(|p| pieces(p, &source.check(p).spans)).collect();
        let whole = source.check(&c.text);
        view.grounding = Some(GroundingView {
            unsupported: whole.unsupported(),
            content: whole.content_tokens,
            percent: (100.0 * whole.unsupported_rate).round() as u32,
            copied_percent: (100.0 * whole.copied_4gram_share).round() as u32,
        });
        view
    }
}

/// `text` cut at the spans (byte offsets into it, in order) into plain and marked pieces.
fn pieces(text: &str, spans: &[grounding::Span]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut at = 0;
    for span in spans {
        if span.start < at || span.end > text.len() {
            continue;
        }
        if span.start > at {
            out.push(Piece { text: text[at..span.start].to_string(), kind: None });
        }
        out.push(Piece { text: text[span.start..span.end].to_string(), kind: Some(span.kind) });
        at = span.end;
    }
    if at < text.len() {
        out.push(Piece { text: text[at..].to_string(), kind: None });
    }
    out
}

/// The node part of the rating screen.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub book_id: String,
    pub book_title: String,
    pub id: String,
    pub height: u32,
    pub max_height: u32,
    pub parent: Option<String>,
    pub is_leaf: bool,
    /// The exact text the node summarizes.
    pub input: String,
    pub paragraphs: Vec<String>,
    pub children: Vec<ChildView>,
    pub context: Option<String>,
    pub input_key: String,
    pub candidates: usize,
}

/// The child's input as its rating screen would show it (empty when it cannot be rebuilt yet).
fn child_input(ws: &Workspace, loaded: &LoadedTree, child: NodeId) -> Vec<String> {
    let Some(book) = &loaded.book else { return Vec::new() };
    match sample::node_input(ws.store(), book, &loaded.tree, loaded.run.as_ref(), child) {
        Ok(input) if input.children.is_empty() => paragraphs(&input.input),
        Ok(input) => {
            input.children.into_iter().map(|(label, text)| format!("[{label}] {text}")).collect()
        }
        Err(_) => Vec::new(),
    }
}

/// The node view of `target`.
pub fn node_view(ws: &Workspace, target: &RatingTarget, candidates: usize) -> NodeView {
    let tree = &target.loaded.tree;
    let node = tree.node(target.id);
    let children = tree
        .children(target.id)
        .into_iter()
        .zip(target.input.children.iter())
        .map(|(child, (label, summary))| ChildView {
            id: label.clone(),
            height: tree.node(child).height,
            summary: summary.clone(),
            input: child_input(ws, &target.loaded, child),
        })
        .collect();
    NodeView {
        book_id: tree.book_id().as_str().to_string(),
        book_title: tree.book_title().to_string(),
        id: node.label.clone(),
        height: node.height,
        max_height: tree.max_height(),
        parent: tree.parent(target.id).map(|p| tree.node(p).label.clone()),
        is_leaf: node.is_leaf(),
        input: target.input.input.clone(),
        paragraphs: paragraphs(&target.input.input),
        children,
        context: target.input.context.clone(),
        input_key: target.input.input_key.clone(),
        candidates,
    }
}

/// Which side each of a pair goes to, stable for a labeler and a pair but otherwise random
/// (a reload does not swap them; nothing about the candidates decides it).
pub fn blind_order(labeler: &str, a: &str, b: &str) -> bool {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let h = blake3::hash(format!("{labeler}\u{0}{x}\u{0}{y}").as_bytes());
    let swap = h.as_bytes()[0] & 1 == 1;
    // true: show `a` first.
    (a <= b) != swap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_pieces_put_the_text_back_together_and_mark_only_the_spans() {
        let source = grounding::Source::new("The miller stood by the mill in the flood.");
        let text = "The miller met Procopius by the mill.";
        let spans = source.check(text).spans;
        let p = pieces(text, &spans);
        assert_eq!(p.iter().map(|x| x.text.as_str()).collect::<String>(), text);
        let marked: Vec<&str> =
            p.iter().filter(|x| x.kind.is_some()).map(|x| x.text.as_str()).collect();
        assert_eq!(marked, vec!["met Procopius"]);
    }

    #[test]
    fn paragraphs_split_at_blank_lines_and_keep_line_breaks() {
        let text = "One line\nand its second.\n\n\n  Another.  \n\nVerse one\nverse two\n";
        assert_eq!(
            paragraphs(text),
            vec!["One line\nand its second.", "Another.", "Verse one\nverse two"]
        );
        assert!(paragraphs(" \n\n").is_empty());
    }

    #[test]
    fn blind_order_is_stable_and_does_not_follow_the_arguments() {
        let first = blind_order("ann", "aaaa", "bbbb");
        assert_eq!(first, blind_order("ann", "aaaa", "bbbb"));
        // Asked the other way round, the same text goes first.
        assert_eq!(first, !blind_order("ann", "bbbb", "aaaa"));
        // Over many pairs both sides come up.
        let firsts = (0..64).filter(|i| blind_order("ann", &format!("{i:04}"), "ffff")).count();
        assert!(firsts > 10 && firsts < 54, "{firsts}");
    }
}
