//! Reward models trained elsewhere (TRL's RewardTrainer writes a Hugging Face
//! `…ForSequenceClassification` folder) imported as LM reward models, over tiny random models:
//! the head is the checkpoint's `score` row (scores scale with it), the backbone its own weights
//! (a different backbone scores differently), and each kind of wrong folder is refused by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rrm::infer::hf::HfDType;
use rrm::infer::testing::{tiny_gguf, TinyOptions};
use rrm::reward::lm::import::import_hf;
use rrm::reward::lm::LmRewardModel;
use rrm::reward::RewardError;

const INPUT: &str = "Alice sat by her sister on the bank and had nothing to do.";
const SUMMARIES: &[&str] = &["Alice is bored on the river bank.", "A rabbit runs past."];

/// A sequence-classification folder: a tiny random llama (seed `seed`) exported as a Hugging Face
/// folder, its config turned into a one-label classifier and `score.weight` = `scale` × a fixed
/// random row.
fn classifier(root: &Path, name: &str, seed: u64, scale: f64, labels: usize) -> PathBuf {
    let gguf = root.join(format!("{name}.gguf"));
    tiny_gguf(&gguf, seed, &TinyOptions { arch: "llama", tied: true, ..TinyOptions::default() })
        .unwrap();
    let dir = root.join(name);
    rrm::infer::hf::export_hf(&gguf, &dir, HfDType::F32).unwrap();
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let hidden = config["hidden_size"].as_u64().unwrap() as usize;
    config["architectures"] = serde_json::json!(["LlamaForSequenceClassification"]);
    config["num_labels"] = serde_json::json!(labels);
    config["pad_token_id"] = serde_json::json!(0);
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let weights_path = dir.join("model.safetensors");
    let mut weights: HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();
    // The same rows in every call: a function of the index, not of a random generator.
    let fixed: Vec<f32> = (0..labels * hidden).map(|i| ((i as f32) * 0.37).sin()).collect();
    let row = Tensor::from_vec(fixed, (labels, hidden), &Device::Cpu).unwrap();
    weights.insert("score.weight".into(), (row * scale).unwrap());
    weights.remove("lm_head.weight");
    candle_core::safetensors::save(&weights, &weights_path).unwrap();
    dir
}

fn scores(path: &Path) -> Vec<f32> {
    let model = LmRewardModel::load(path, None).unwrap();
    assert_eq!(model.members.len(), 1);
    model.member_scores(0, INPUT, SUMMARIES).unwrap().remove(0)
}

#[test]
fn an_imported_classifier_scores_with_its_own_head_and_backbone() {
    let root = tempfile::tempdir().unwrap();
    let (rewards, models) = (root.path().join("reward"), root.path().join("models"));
    let one = classifier(root.path(), "one", 5, 1.0, 1);
    let two = classifier(root.path(), "two", 5, 2.0, 1);
    let other = classifier(root.path(), "other", 6, 1.0, 1);

    let imported = import_hf(&one, &rewards, &models, 256).unwrap();
    assert!(imported.path.starts_with(&rewards));
    assert!(imported.card.source.contains("LlamaForSequenceClassification"));
    assert!(Path::new(&imported.card.base).starts_with(models.join("hf-gguf")));
    let base = scores(&imported.path);
    assert!(base.iter().all(|s| s.is_finite()));
    assert!((base[0] - base[1]).abs() > 1e-6, "two summaries scored alike: {base:?}");

    // The head is the checkpoint's score row: twice the row, twice the score (no bias).
    let doubled = scores(&import_hf(&two, &rewards, &models, 256).unwrap().path);
    for (a, b) in base.iter().zip(&doubled) {
        assert!((2.0 * a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{base:?} vs {doubled:?}");
    }
    // The backbone is the checkpoint's own: other weights, other scores.
    let different = scores(&import_hf(&other, &rewards, &models, 256).unwrap().path);
    assert!(base.iter().zip(&different).any(|(a, b)| (a - b).abs() > 1e-4));

    // Importing the same folder again gives the same checkpoint.
    let again = import_hf(&one, &rewards, &models, 256).unwrap();
    assert_eq!(again.path, imported.path);
}

fn import_error(dir: &Path, root: &Path) -> String {
    match import_hf(dir, &root.join("reward"), &root.join("models"), 256) {
        Err(err) => {
            assert!(matches!(err, RewardError::File { .. } | RewardError::Hf(_)), "{err:?}");
            err.to_string()
        }
        Ok(imported) => panic!("imported {} by mistake", imported.path.display()),
    }
}

#[test]
fn wrong_folders_are_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    // Two labels: a classifier, not a reward model.
    let two_labels = classifier(root.path(), "labels", 5, 1.0, 2);
    let err = import_error(&two_labels, root.path());
    assert!(err.contains("2 labels"), "{err}");
    // A causal LM.
    let gguf = root.path().join("lm.gguf");
    tiny_gguf(&gguf, 5, &TinyOptions::default()).unwrap();
    let lm = root.path().join("lm");
    rrm::infer::hf::export_hf(&gguf, &lm, HfDType::F32).unwrap();
    let err = import_error(&lm, root.path());
    assert!(err.contains("ForSequenceClassification") && err.contains("config.json"), "{err}");
    // No head tensor.
    let headless = classifier(root.path(), "headless", 5, 1.0, 1);
    let weights_path = headless.join("model.safetensors");
    let mut weights: HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();
    weights.remove("score.weight");
    candle_core::safetensors::save(&weights, &weights_path).unwrap();
    let err = import_error(&headless, root.path());
    assert!(err.contains("score.weight"), "{err}");
    // A PEFT adapter folder, and a folder that is nothing.
    let adapter = root.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), "{}").unwrap();
    assert!(import_error(&adapter, root.path()).contains("merged"));
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(import_error(&empty, root.path()).contains("not a Hugging Face model folder"));
    // Nothing was written for any of them.
    let written = std::fs::read_dir(root.path().join("reward")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0);
}
