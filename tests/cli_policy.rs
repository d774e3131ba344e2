//! `rrm policy train` and `rrm bench train` as a user runs them, over a tiny random model written
//! by the test: training from TRL files, registration and use of the trained policy, bad input,
//! and a run killed with SIGKILL that resumes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use rrm::infer::testing::{tiny_gguf, TinyOptions};

struct Ws {
    dir: tempfile::TempDir,
    model: PathBuf,
}

const PASSAGES: &[(&str, &str, &str)] = &[
    ("Rosalind carried the letters to the harbour.", "Rosalind carries letters.", "A ship."),
    ("Barnaby counted the ships in the ledger.", "Barnaby counts ships.", "The sea is wet."),
    ("The orchard flooded in the spring rain.", "The orchard floods.", "Nobody knows."),
    ("The miller sold the grain at the market.", "The miller sells grain.", "A day."),
];

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        tiny_gguf(&model, 5, &TinyOptions { context_length: 1024, ..TinyOptions::default() })
            .unwrap();
        let ws = Ws { dir, model };
        let mut prefs = String::new();
        let mut sft = String::new();
        for (i, (p, c, r)) in PASSAGES.iter().enumerate() {
            let book = format!("book{}", i % 3);
            prefs.push_str(
                &serde_json::json!({"prompt": p, "chosen": c, "rejected": r, "book": book})
                    .to_string(),
            );
            prefs.push('\n');
            sft.push_str(
                &serde_json::json!({"prompt": p, "completion": c, "book": book}).to_string(),
            );
            sft.push('\n');
        }
        std::fs::write(ws.path("prefs.jsonl"), prefs).unwrap();
        std::fs::write(ws.path("sft.jsonl"), sft).unwrap();
        let text: String = (0..6)
            .map(|i| format!("In week {i}, Rosalind carried the letters from the orchard to the harbour.\n\n"))
            .collect();
        std::fs::write(ws.path("orchard.txt"), text).unwrap();
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn std(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rrm"));
        cmd.current_dir(self.dir.path())
            .env("RRM_DB", self.path("db"))
            .env("RRM_BOOKS", self.path("books"))
            .env("RRM_TREES", self.path("trees"))
            .env("RRM_MODELS", self.path("models"))
            .env("RRM_REWARD_DIR", self.path("reward"))
            .env_remove("RRM_MODEL")
            .env_remove("RRM_LOG");
        cmd
    }

    fn rrm(&self) -> Command {
        Command::from_std(self.std())
    }

    fn train_args<'a>(&'a self, method: &'a str, data: &'a str, name: &'a str) -> Vec<String> {
        [
            "--threads",
            "1",
            "policy",
            "train",
            "--method",
            method,
            "--data",
            data,
            "--name",
            name,
            "--base",
            self.model.to_str().unwrap(),
            "--batch",
            "2",
            "--grad-accum",
            "1",
            "--lora-rank",
            "4",
            "--runs-dir",
            "runs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn trained_policies_register_list_and_summarize() {
    let ws = Ws::new();
    let mut args = ws.train_args("sft", "sft.jsonl", "t-sft");
    args.extend(["--max-steps", "3", "--checkpoint-every", "2"].map(String::from));
    let out = ws.rrm().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("registered `t-sft`"), "{stdout}");
    assert!(stdout.contains("split by book"), "{stdout}");

    let mut args = ws.train_args("dpo", "prefs.jsonl", "t-dpo");
    // DPO with activations recomputed in the backward (gradient checkpointing).
    args.extend(["--max-steps", "2", "--grad-checkpoint", "--json"].map(String::from));
    let out = ws.rrm().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["train"]["steps"], 2);
    assert_eq!(report["card"]["method"], "dpo");
    assert_eq!(report["card"]["beta"], 0.1);
    assert!(report["card"]["data"]["train_groups"].as_array().is_some_and(|g| !g.is_empty()));

    let list = ws.rrm().args(["models", "list", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> =
        rows.as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"t-sft") && names.contains(&"t-dpo"), "{names:?}");
    let builtin = rows.as_array().unwrap().iter().find(|r| r["name"] == "squality-root");
    assert!(builtin.is_some_and(|r| r["default_at"] == "root"), "{rows}");

    // The engine serves the trained policy by name.
    let out = ws
        .rrm()
        .args([
            "--threads",
            "1",
            "summarize",
            "orchard.txt",
            "--model",
            "t-dpo",
            "--max-height",
            "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    // Same name again: refused without --overwrite.
    let mut args = ws.train_args("sft", "sft.jsonl", "t-dpo");
    args.extend(["--max-steps", "1"].map(String::from));
    let out = ws.rrm().args(&args).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("--overwrite"), "{}", stderr_of(&out));
}

/// `rrm policy eval` of a policy against its own base compares it with the base's zero-step
/// export (the base exported as the policy was, no training) and says so; KL comes per sequence
/// and per token, scored against that same file, with the samples cut at the cap counted.
#[test]
fn policy_eval_compares_with_the_bases_zero_step_export_and_says_so() {
    let ws = Ws::new();
    let mut args = ws.train_args("dpo", "prefs.jsonl", "t-eval");
    args.extend(["--max-steps", "1"].map(String::from));
    let out = ws.rrm().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let eval = |extra: &[&str]| {
        let out = ws
            .rrm()
            .args(["--threads", "1", "policy", "eval", "--model", "t-eval", "--baseline"])
            .arg(&ws.model)
            .args(["--books", "orchard.txt", "--max-height", "0", "--reward-model", "none"])
            .args(["--kl-prompts", "2", "--kl-samples", "2", "--batch-size", "4"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report: serde_json::Value = serde_json::from_str(&eval(&["--json"])).unwrap();
    let used = &report["baseline_used"];
    assert_eq!(used["zero_step"], "q8_0", "{report}");
    let file = PathBuf::from(used["file"].as_str().unwrap());
    assert!(file.starts_with(ws.path("models").join("zero-step")), "{}", file.display());
    assert!(report["baseline"].as_str().unwrap().contains("zero-step q8_0"), "{report}");
    let kl = &report["kl"];
    assert_eq!(kl["reference"].as_str(), file.file_name().and_then(|n| n.to_str()), "{kl}");
    assert_eq!(kl["policy"], "t-eval.gguf", "{kl}");
    let (samples, cut) = (kl["samples"].as_u64().unwrap(), kl["truncated"].as_u64().unwrap());
    assert!(samples > 0 && cut <= samples, "{kl}");
    assert!(kl["per_token"].is_f64(), "{kl}");
    // The text says which baseline and how KL was counted.
    let text = eval(&[]);
    assert!(text.contains("baseline: ") && text.contains("with no training step"), "{text}");
    assert!(text.contains("per token") && text.contains("cut at the token cap"), "{text}");
    // --baseline-as-is: the named file itself.
    let report: serde_json::Value =
        serde_json::from_str(&eval(&["--baseline-as-is", "--json"])).unwrap();
    assert!(report["baseline_used"]["zero_step"].is_null(), "{report}");
    assert_eq!(report["baseline_used"]["file"].as_str(), ws.model.to_str(), "{report}");
}

/// `rrm reward train --backbone lm` on the same tiny llama: trained, evaluated on a file beside
/// the baselines, and picked up by `summarize --reward-model latest` for best-of-N.
#[test]
fn an_lm_reward_model_trains_evaluates_and_selects() {
    let ws = Ws::new();
    let base = ws.model.display().to_string();
    let out = ws
        .rrm()
        .args(["--threads", "1", "reward", "train", "--backbone", "lm", "--data", "prefs.jsonl"])
        .args(["--base", &base, "--steps", "2", "--members", "2", "--lora-rank", "4"])
        .args(["--grad-checkpoint", "--lora-top-layers", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("LM reward model"), "{stdout}");
    // Validation groups chose each member's checkpoint.
    assert!(stdout.contains("member 1: kept step"), "{stdout}");
    // A handful of validation pairs is too few to calibrate the scores' temperature on.
    assert!(stdout.contains("temperature 1 (not fitted: "), "{stdout}");
    // Without a terminal for a progress bar, the run still says how it goes, as lines: the
    // last step of each member (with its throughput) and each validation.
    let err = stderr_of(&out);
    assert!(err.contains("member 2 of 2"), "{err}");
    assert_eq!(err.matches("step 2/2 (epoch").count(), 2, "{err}");
    assert!(err.contains("pairs/s"), "{err}");
    assert!(err.contains("validation at step 2 (epoch"), "{err}");
    // A linear probe alone: the head on the frozen model's features, no fine-tuning step.
    let out = ws
        .rrm()
        .args(["--threads", "1", "reward", "train", "--backbone", "lm", "--data", "prefs.jsonl"])
        .args(["--base", &base, "--steps", "0", "--probe-epochs", "5", "--lora-rank", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("kept step 0, fine-tuned from the probe's pass"), "{stdout}");
    assert!(stdout.contains("the probe alone"), "{stdout}");
    // Neither steps nor a probe: nothing to train, said so.
    let out = ws
        .rrm()
        .args(["reward", "train", "--backbone", "lm", "--data", "prefs.jsonl"])
        .args(["--base", &base, "--steps", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("probe for at least one pass"), "{}", stderr_of(&out));
    // A checkpointing setting that is not one names itself and the choices.
    let out = ws
        .rrm()
        .args(["reward", "train", "--backbone", "lm", "--data", "prefs.jsonl"])
        .args(["--base", &base, "--grad-checkpoint", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("sometimes") && err.contains("auto, on, off"), "{err}");
    // More top layers than the model has blocks is a clear error, and the model stays.
    let out = ws
        .rrm()
        .args(["--threads", "1", "reward", "train", "--backbone", "lm", "--data", "prefs.jsonl"])
        .args(["--base", &base, "--steps", "1", "--lora-top-layers", "99"])
        .args(["--grad-checkpoint", "auto"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("top layers 99"), "{}", stderr_of(&out));

    let out =
        ws.rrm().args(["reward", "eval", "--data", "prefs.jsonl", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metrics"]["all"]["pairs"], PASSAGES.len(), "{v}");
    assert!(v["report"].is_object(), "{v}");
    // Without a file there is nothing held out to evaluate on: say so.
    let out = ws.rrm().args(["reward", "eval"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--data"), "{}", stderr_of(&out));

    let out = ws
        .rrm()
        .args(["--threads", "1", "summarize", "orchard.txt", "--model", &base])
        .args(["--best-of", "2", "--reward-model", "latest", "--max-height", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    // A MiniLM-only command names the backbone instead of failing on the card.
    let out = ws.rrm().args(["reward", "score", "h0.0", "--book", "orchard.txt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("language-model reward model"), "{}", stderr_of(&out));
}

#[test]
fn bad_input_is_a_clear_error() {
    let ws = Ws::new();
    let check = |args: Vec<String>, want: &[&str]| {
        let out = ws.rrm().args(&args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        for w in want {
            assert!(err.contains(w), "missing `{w}` in: {err}");
        }
    };
    std::fs::write(ws.path("empty.jsonl"), "\n").unwrap();
    check(ws.train_args("dpo", "empty.jsonl", "x"), &["empty.jsonl", "no examples"]);
    std::fs::write(
        ws.path("bad.jsonl"),
        "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{oops\n{\"prompt\": \"p\"}\n",
    )
    .unwrap();
    check(ws.train_args("dpo", "bad.jsonl", "x"), &["bad.jsonl", "line 2", "line 3"]);
    // SFT data but DPO asked for.
    check(ws.train_args("dpo", "sft.jsonl", "x"), &["no preference pairs"]);
    // A model that is not llama-family.
    let phi = ws.path("phi.gguf");
    tiny_gguf(&phi, 1, &TinyOptions { arch: "phi2", ..TinyOptions::default() }).unwrap();
    let mut args = ws.train_args("dpo", "prefs.jsonl", "x");
    let i = args.iter().position(|a| a == "--base").unwrap();
    args[i + 1] = phi.display().to_string();
    check(args, &["phi.gguf", "llama-family"]);
    // No stored feedback.
    check(
        vec![
            "policy".into(),
            "train".into(),
            "--method".into(),
            "sft".into(),
            "--base".into(),
            ws.model.display().to_string(),
        ],
        &["no stored feedback"],
    );
    check(ws.train_args("dpo", "missing.jsonl", "x"), &["missing.jsonl"]);
    // A held-out book the data never mentions would silently hold out nothing.
    let mut args = ws.train_args("dpo", "prefs.jsonl", "x");
    args.extend(["--val-books", "orchard.txt"].map(String::from));
    check(args, &["--val-books", "has no examples"]);
    let mut args = ws.train_args("dpo", "prefs.jsonl", "../evil");
    args.extend(["--max-steps", "1"].map(String::from));
    check(args, &["not a valid model name"]);
}

/// rm-dpo labelled by people's summaries (`--reward-model reference`): each prompt's samples
/// are scored against the demonstrations of the same prompt in the data file. A file without
/// demonstrations cannot be scored, and says so.
#[test]
fn rm_dpo_labels_pairs_by_the_datas_human_summaries() {
    let ws = Ws::new();
    let mut args = ws.train_args("rm-dpo", "sft.jsonl", "t-ref");
    args.extend(
        [
            "--reward-model",
            "reference",
            "--rounds",
            "1",
            "-k",
            "3",
            "--output-tokens",
            "12",
            "--max-steps",
            "1",
            "--val-percent",
            "30",
            "--test-percent",
            "0",
            "--json",
        ]
        .map(String::from),
    );
    let out = ws.rrm().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let round = &report["rounds"]["rounds"][0];
    let labelled = round["pairs"].as_u64().unwrap() + round["uncertain_pairs"].as_u64().unwrap();
    assert!(labelled > 0, "every prompt's samples were scored: {round}");
    assert_eq!(report["card"]["method"], "rm-dpo");

    let refused = |data: &str, spec: &str, want: &[&str]| {
        let mut args = ws.train_args("rm-dpo", data, "x");
        args.extend(["--reward-model", spec, "--rounds", "1"].map(String::from));
        let out = ws.rrm().args(&args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(want.iter().all(|w| err.contains(w)), "missing one of {want:?} in: {err}");
    };
    refused("prefs.jsonl", "reference", &["no demonstrations", "prefs.jsonl"]);
    refused("sft.jsonl", "reference:length=-1", &["length=-1", "non-negative"]);
}

fn checkpoints(runs: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for run in std::fs::read_dir(runs).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(run.path()).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("ckpt-") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_run_killed_mid_epoch_resumes_from_its_last_checkpoint() {
    let ws = Ws::new();
    let mut args = ws.train_args("dpo", "prefs.jsonl", "t-kill");
    // Batch 1 over the training pairs: most steps end mid-epoch.
    let i = args.iter().position(|a| a == "--batch").unwrap();
    args[i + 1] = "1".into();
    args.extend(
        ["--max-steps", "120", "--checkpoint-every", "1", "--val-percent", "0", "--json"]
            .map(String::from),
    );
    let log = std::fs::File::create(ws.path("killed.log")).unwrap();
    let mut child = ws.std().args(&args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let started = Instant::now();
    while checkpoints(&ws.path("runs")).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        if child.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(ws.path("killed.log")).unwrap_or_default();
            panic!("the run ended before it could be killed: {log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = ws.rrm().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resumed = report["train"]["resumed_from"].as_u64().expect("the run did not resume");
    assert!((1..120).contains(&resumed), "{resumed}");
    assert_eq!(report["train"]["steps"], 120);
    assert_eq!(report["train"]["steps_log"].as_array().unwrap().len(), 120);
}

#[test]
fn bench_train_reports_lora_and_full_throughput() {
    let ws = Ws::new();
    let out = ws
        .rrm()
        .args(["--threads", "1", "bench", "train", "--model", ws.model.to_str().unwrap()])
        .args(["--seq-len", "32", "--completion-len", "8", "--steps", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Each mode without and with gradient checkpointing.
    assert_eq!(rows.len(), 4);
    let modes: Vec<(&str, bool)> = rows
        .iter()
        .map(|r| (r["mode"].as_str().unwrap(), r["checkpointing"].as_bool().unwrap()))
        .collect();
    assert_eq!(modes, [("lora", false), ("lora", true), ("full", false), ("full", true)]);
    assert!(rows.iter().all(|r| r["train_tokens_per_s"].as_f64().unwrap() > 0.0));
    assert!(rows[2]["trainable_params"].as_u64() > rows[0]["trainable_params"].as_u64());
}
