//! Properties of book indexing, fixed decomposition and tree files, on generated texts.

use proptest::prelude::*;
use rrm::book::Book;
use rrm::decompose::{
    ApproxCounter, ContextMode, Decomposer, FixedChunker, FixedConfig, TokenCounter,
};
use rrm::tree::{NodeKind, TaskTree};

/// One piece of a generated book.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        // ordinary sentences
        6 => prop::collection::vec("[A-Za-z]{1,12}", 1..30)
            .prop_map(|w| format!("{}{} ", w.join(" "), ["." , "!", "?", "", ","][w.len() % 5])),
        // paragraph breaks, with CR/LF and blank-but-spaced lines
        2 => prop_oneof![Just("\n\n"), Just("\r\n\r\n"), Just("\n \n\n"), Just("\n")].prop_map(str::to_string),
        // headings on their own line
        1 => prop_oneof![Just("\n\nCHAPTER IV.\n\n"), Just("\nBOOK II\n"), Just("\n\nACT I\n\nSCENE 2\n\n"), Just("\n# Part\n")]
            .prop_map(str::to_string),
        // abbreviations and dialogue
        1 => prop_oneof![Just("Mr. Smith said, \"Stop!\" he cried. "), Just("`Oh dear!' said Alice. ")].prop_map(str::to_string),
        // non-ASCII and over-long words
        1 => prop_oneof![Just("Café naïve — “quoted” 日本語の文章。 "), Just("\u{FEFF}")].prop_map(str::to_string),
        1 => (50usize..400).prop_map(|n| format!("{} ", "x".repeat(n))),
    ]
}

fn book_text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..120).prop_map(|p| p.concat())
}

fn config() -> impl Strategy<Value = FixedConfig> {
    (16usize..200, 2usize..6, 0usize..8, any::<Option<u64>>(), any::<bool>()).prop_map(
        |(chunk_tokens, fmin, extra, seed, context)| FixedConfig {
            chunk_tokens,
            fanout_min: fmin,
            fanout_max: fmin + extra,
            seed,
            context: if context { ContextMode::Previous } else { ContextMode::None },
            ..FixedConfig::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn book_spans_are_well_formed(text in book_text()) {
        let book = Book::from_text("t", &text);
        let t = book.text();
        let mut last = 0;
        for p in book.paragraphs() {
            prop_assert!(p.start >= last && p.end > p.start && p.get(t).is_some());
            last = p.end;
        }
        let mut last = 0;
        for s in book.sentences() {
            prop_assert!(s.start >= last && s.end > s.start && s.get(t).is_some());
            prop_assert!(book.paragraphs().iter().any(|p| p.contains(*s)));
            last = s.end;
        }
        for h in book.headings() {
            prop_assert!(book.paragraphs().iter().any(|p| p.contains(h.span)));
        }
    }

    #[test]
    fn leaves_tile_fit_and_nest(text in book_text(), config in config()) {
        let book = Book::from_text("t", &text);
        let limit = config.chunk_tokens;
        let (fmin, fmax) = (config.fanout_min, config.fanout_max);
        let chunker = FixedChunker::new(config).unwrap();
        let tree = match chunker.decompose(&book) {
            Ok(tree) => tree,
            Err(_) => {
                prop_assert!(book.text().trim().is_empty());
                return Ok(());
            }
        };
        // Leaf spans tile the normalized text exactly.
        let mut joined = String::new();
        let mut cursor = 0;
        for &leaf in tree.leaves() {
            let span = tree.node(leaf).span().unwrap();
            prop_assert_eq!(span.start, cursor);
            prop_assert!(span.end > span.start);
            joined.push_str(book.slice(span));
            cursor = span.end;
            // Every leaf fits the limit (over-long sentences and words are cut).
            let tokens = ApproxCounter.count(book.slice(span));
            prop_assert!(tokens <= limit, "{} has {} tokens > {}", tree.node(leaf).label, tokens, limit);
        }
        prop_assert_eq!(joined.as_str(), book.text());
        // Children are contiguous, ordered, one level down; every non-root has one parent.
        for id in tree.nodes_topological() {
            let node = tree.node(id);
            if let NodeKind::Internal { children } = &node.kind {
                prop_assert!(!children.is_empty());
                if tree.len() > 1 && id != tree.root() {
                    prop_assert!(children.len() <= fmax.max(2));
                }
                for pair in children.windows(2) {
                    prop_assert_eq!(tree.node(pair[0]).index + 1, tree.node(pair[1]).index);
                }
                for &c in children {
                    prop_assert_eq!(tree.node(c).height + 1, node.height);
                    prop_assert_eq!(tree.parent(c), Some(id));
                }
                prop_assert_eq!(node.covers.start, tree.node(children[0]).covers.start);
            } else {
                prop_assert_eq!(node.height, 0);
            }
            if id != tree.root() {
                prop_assert!(tree.parent(id).is_some());
            }
        }
        let _ = fmin;
        // A short book is one node.
        if ApproxCounter.count(book.text()) <= limit && book.headings().is_empty() {
            prop_assert_eq!(tree.len(), 1);
        }
        // The tree round-trips through JSON unchanged.
        let json = tree.to_json_string();
        let back = TaskTree::from_json_str(&json).unwrap();
        prop_assert_eq!(&back, &tree);
        prop_assert_eq!(back.to_json_string(), json);
        back.check_book(&book, "round trip").unwrap();
    }

    #[test]
    fn same_input_same_tree(text in book_text(), config in config()) {
        let book = Book::from_text("t", &text);
        let chunker = FixedChunker::new(config).unwrap();
        if let (Ok(a), Ok(b)) = (chunker.decompose(&book), chunker.decompose(&book)) {
            prop_assert_eq!(a.to_json_string(), b.to_json_string());
        }
    }
}
