//! Byte-level property tests: every reader of user-supplied files gets arbitrary bytes and
//! structured mutations of valid files, and must answer with a value or an error — never a panic,
//! an abort or an unbounded allocation. Readers: books, GGUF models, safetensors checkpoints
//! (the boundary model, reward checkpoints), feedback JSONL import, task tree JSON, TRL files.
//!
//! CI runs a small number of cases per reader; the full run is
//! `RRM_FUZZ_CASES=10000 cargo test --test fuzz_bytes` (see the README).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use rrm::book::{Book, BookSource};
use rrm::decompose::learned::BoundaryModel;
use rrm::decompose::{Decomposer, FixedChunker, FixedConfig};
use rrm::feedback::{io, Feedback, FeedbackKind, Judged, Preference};
use rrm::infer::llama::LlamaModel;
use rrm::infer::testing::{tiny_gguf, BowEncoder, TinyOptions};
use rrm::reward::train::TrainConfig;
use rrm::reward::RewardModel;
use rrm::store::Store;
use rrm::tree::TaskTree;

fn cases() -> u32 {
    std::env::var("RRM_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// How a valid file is damaged: flipped bytes, a truncation, inserted garbage, a run of 0xFF
/// (huge lengths and counts), a copy of another region.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Ones(usize, usize),
    Copy(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (any::<usize>(), 1usize..9).prop_map(|(i, n)| Mutation::Ones(i, n)),
        1 => (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(a, b, n)| Mutation::Copy(a, b, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len();
        match m {
            Mutation::Flip(i, b) => bytes[i % n] ^= b | 1,
            Mutation::Truncate(i) => bytes.truncate(i % n),
            Mutation::Insert(i, v) => {
                let at = i % n;
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Ones(i, len) => {
                let at = i % n;
                let end = (at + len).min(n);
                bytes[at..end].iter_mut().for_each(|b| *b = 0xFF);
            }
            Mutation::Copy(a, b, len) => {
                let (a, b) = (a % n, b % n);
                let len = (*len).min(n - a).min(n - b);
                let chunk = bytes[a..a + len].to_vec();
                bytes[b..b + len].copy_from_slice(&chunk);
            }
        }
    }
    bytes
}

/// Either arbitrary bytes or mutations of `valid`.
fn damaged(valid: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2048),
        4 => prop::collection::vec(mutation(), 1..6).prop_map(move |m| mutate(valid.to_vec(), &m)),
    ]
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// A file of its own for this case (tests run on several threads).
fn write_case(name: &str, bytes: &[u8]) -> PathBuf {
    let id =
        format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_alphanumeric(), "");
    let path = scratch().join(format!("{id}-{name}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

const BOOK: &str = "\u{FEFF}The Project Gutenberg eBook of Tests\r\n\r\n*** START OF THE PROJECT \
GUTENBERG EBOOK TESTS ***\r\n\r\nCHAPTER I.\r\n\r\nMr. Smith said, \"Stop!\" and ran. Café naïve — \
“quoted”.\r\n\r\nBOOK II\r\n\r\nShe left. It rained.\r\n\r\n*** END OF THE PROJECT GUTENBERG \
EBOOK TESTS ***\r\nLicense text.\r\n";

fn valid_tree() -> &'static [u8] {
    static TREE: OnceLock<Vec<u8>> = OnceLock::new();
    TREE.get_or_init(|| {
        let text = "One sentence here. Another one there.\n\n".repeat(40);
        let book = Book::from_text("t", text);
        let chunker = FixedChunker::new(FixedConfig {
            chunk_tokens: 40,
            fanout_min: 2,
            fanout_max: 3,
            ..FixedConfig::default()
        })
        .unwrap();
        chunker.decompose(&book).unwrap().to_json_string().into_bytes()
    })
}

fn valid_gguf() -> &'static [u8] {
    static GGUF: OnceLock<Vec<u8>> = OnceLock::new();
    GGUF.get_or_init(|| {
        let path = scratch().join("valid.gguf");
        tiny_gguf(
            &path,
            1,
            &TinyOptions { hidden: 32, ffn: 64, n_head: 2, n_kv_head: 1, ..TinyOptions::default() },
        )
        .unwrap();
        std::fs::read(path).unwrap()
    })
}

fn valid_feedback() -> &'static [u8] {
    static FB: OnceLock<Vec<u8>> = OnceLock::new();
    FB.get_or_init(|| {
        let fb = Feedback::new(
            "ann",
            "key",
            "The input.",
            0,
            FeedbackKind::Comparison { a: Judged::new("a"), b: Judged::new("b"), prefer: Preference::A, confidence: 5 },
        );
        let mut out = Vec::new();
        io::write_jsonl(&mut out, &[fb.clone(), fb], &[]).unwrap();
        out.extend_from_slice(b"{\"split\":{\"book\":\"00\",\"action\":{\"kind\":\"split\",\"at\":3},\"nodes\":[\"h0.1\"],\"node_hashes\":[\"ab\"],\"created\":1}}\n");
        out
    })
}

const TRL: &[u8] = b"{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"height\":1}\n{\"prompt\":\"q\",\"chosen\":\"c2\",\"rejected\":\"r2\",\"group\":\"doc7\"}\n";

/// A reward checkpoint folder (card + weights) trained on a few synthetic pairs.
fn valid_reward() -> &'static (Vec<u8>, Vec<u8>) {
    static CKPT: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    CKPT.get_or_init(|| {
        let pairs = (0..12)
            .map(|i| rrm::feedback::Pair {
                height: i % 2,
                input: format!("input {i} about gardens and roses"),
                chosen: "roses in the garden".into(),
                rejected: format!("ships at sea {i}"),
                target: 1.0,
                group: format!("book:{}", i % 4),
            })
            .collect::<Vec<_>>();
        let encoder = BowEncoder::new();
        let config = TrainConfig { members: 1, hidden: 4, max_epochs: 2, ..TrainConfig::default() };
        let mut model = RewardModel::train(&encoder, None, &pairs, &config, "fuzz").unwrap();
        let dir = scratch().join("reward");
        let path = model.save(&dir).unwrap();
        (
            std::fs::read(path.join(rrm::reward::CARD_FILE)).unwrap(),
            std::fs::read(path.join(rrm::reward::WEIGHTS_FILE)).unwrap(),
        )
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn book_reader(bytes in damaged(BOOK.as_bytes()), lossy in any::<bool>()) {
        let source = BookSource::File { path: PathBuf::from("fuzz.txt") };
        if let Ok(book) = Book::from_bytes(&bytes, source, lossy) {
            // Whatever was read is consistent: spans lie inside the text on char boundaries.
            for s in book.paragraphs().iter().chain(book.sentences()) {
                prop_assert!(s.get(book.text()).is_some());
            }
        }
    }

    #[test]
    fn gguf_reader(bytes in damaged(valid_gguf())) {
        let path = write_case("model.gguf", &bytes);
        let _ = LlamaModel::load(&path, &candle_core::Device::Cpu);
    }

    #[test]
    fn boundary_model_safetensors(bytes in damaged(BUILT_IN)) {
        let _ = BoundaryModel::from_bytes(&bytes, Path::new("fuzz.safetensors"));
    }

    #[test]
    fn reward_checkpoint(card in damaged(&[]), weights in prop::collection::vec(mutation(), 1..5), keep_hash in any::<bool>()) {
        let (valid_card, valid_weights) = valid_reward();
        let weights = mutate(valid_weights.clone(), &weights);
        // Mostly the true card with the damaged weights' hash (so parsing is reached), sometimes
        // a damaged card.
        let card = if card.is_empty() || keep_hash {
            let mut v: serde_json::Value = serde_json::from_slice(valid_card).unwrap();
            v["hash"] = blake3::hash(&weights).to_hex()[..16].to_string().into();
            serde_json::to_vec(&v).unwrap()
        } else {
            card
        };
        let id = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_alphanumeric(), "");
        let dir = scratch().join(format!("ckpt-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(rrm::reward::CARD_FILE), card).unwrap();
        std::fs::write(dir.join(rrm::reward::WEIGHTS_FILE), weights).unwrap();
        let _ = RewardModel::load(&dir);
    }

    #[test]
    fn feedback_import(bytes in damaged(valid_feedback())) {
        let path = write_case("feedback.jsonl", &bytes);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let before = rrm::feedback::all(&store).unwrap().len();
        match io::import_file(&store, &path, false) {
            Ok(_) => {}
            // All or nothing: a refused file stores nothing.
            Err(_) => prop_assert_eq!(rrm::feedback::all(&store).unwrap().len(), before),
        }
        let _ = io::import_file(&store, &path, true);
    }

    #[test]
    fn tree_json(bytes in damaged(valid_tree())) {
        let _ = TaskTree::from_json_str(&String::from_utf8_lossy(&bytes));
        let path = write_case("tree.json", &bytes);
        let _ = TaskTree::load_unchecked(&path);
    }

    #[test]
    fn trl_import(bytes in damaged(TRL)) {
        let path = write_case("prefs.jsonl", &bytes);
        let _ = io::read_trl(&path);
    }
}

const BUILT_IN: &[u8] = include_bytes!("../src/decompose/learned/default_model.safetensors");
