//! CLI tests of the GPU-check plumbing that runs without a GPU: `rrm twin skeleton|inflate` over
//! tiny random models, `rrm bench encoder` on the CPU, and `--device cuda` / `--encoder-device
//! cuda` failing cleanly (an error naming the cause, exit 1, no panic) where there is no GPU.

use std::path::Path;

use assert_cmd::Command;
use candle_core::quantized::GgmlDType;
use predicates::prelude::*;
use predicates::str::contains;
use rrm::infer::testing::{tiny_bert, tiny_gguf, TinyOptions};

fn rrm(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rrm"));
    cmd.current_dir(dir).env("RRM_MODELS", dir.join("models")).env_remove("RRM_ENCODER_DEVICE");
    cmd
}

#[test]
fn a_generator_twin_has_the_original_size_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    let options = TinyOptions { weights: GgmlDType::Q8_0, ..Default::default() };
    tiny_gguf(&model, 3, &options).unwrap();
    let skeleton = dir.path().join("tiny.skeleton.gguf");
    rrm(dir.path())
        .args(["twin", "skeleton"])
        .arg(&model)
        .arg("--out")
        .arg(&skeleton)
        .assert()
        .success()
        .stdout(contains("tensors"));
    let twin = dir.path().join("twin.gguf");
    rrm(dir.path())
        .args(["twin", "inflate"])
        .arg(&skeleton)
        .arg("--out")
        .arg(&twin)
        .assert()
        .success();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(size(&skeleton) < size(&model));
    // Same tensors and types: the twin's size is the original's, up to metadata.
    assert!((size(&twin) / size(&model) - 1.0).abs() < 0.05, "{} vs {}", size(&twin), size(&model));
    rrm(dir.path())
        .args(["bench", "generate", "--device", "cpu", "--batch", "1,2", "--prompt-len", "8"])
        .args(["--new-tokens", "2", "--json", "--model"])
        .arg(&twin)
        .assert()
        .success()
        .stdout(contains("\"batch\":2"));
}

#[test]
fn an_encoder_twin_inflates_and_benches_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = dir.path().join("bert");
    tiny_bert(&encoder, 5).unwrap();
    let twin = dir.path().join("bert-twin");
    rrm(dir.path())
        .args(["twin", "skeleton"])
        .arg(&encoder)
        .arg("--out")
        .arg(&twin)
        .assert()
        .success();
    rrm(dir.path()).args(["twin", "inflate"]).arg(&twin).arg("--out").arg(&twin).assert().success();
    rrm(dir.path())
        .args(["bench", "encoder", "--device", "cpu", "--sentences", "5", "--passages", "2"])
        .args(["--json", "--encoder"])
        .arg(&twin)
        .assert()
        .success()
        .stdout(contains("\"workload\":\"sentences\"").and(contains("\"workload\":\"passages\"")));
}

#[test]
fn asking_for_a_gpu_without_one_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = dir.path().join("bert");
    tiny_bert(&encoder, 5).unwrap();
    let expected =
        if cfg!(feature = "cuda") { "cannot use CUDA device 0" } else { "--features cuda" };
    rrm(dir.path())
        .args(["bench", "encoder", "--device", "cuda", "--encoder"])
        .arg(&encoder)
        .assert()
        .code(1)
        .stderr(contains(expected).and(contains("panicked").not()));
    // The workspace's encoder (here the similarity decomposer's) follows --encoder-device.
    let book = dir.path().join("book.txt");
    let text = "A short book. It has sentences.\n\nAnd a second paragraph of them.\n";
    std::fs::write(&book, text.repeat(20)).unwrap();
    rrm(dir.path())
        .arg("--db")
        .arg(dir.path().join("db"))
        .args(["decompose", "--decomposer", "similarity", "--encoder-device", "cuda", "--encoder"])
        .arg(&encoder)
        .arg(&book)
        .assert()
        .code(1)
        .stderr(contains(expected).and(contains("panicked").not()));
}
