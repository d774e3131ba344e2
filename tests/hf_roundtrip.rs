//! Hugging Face and PEFT round trips over tiny random models, measured in logits of the trainer
//! (f32, exact arithmetic of the file's weights): a GGUF exported as a Hugging Face folder and
//! resolved back as a model spec gives the same logits (llama and qwen2 shapes); a trained LoRA
//! policy exported for PEFT and resolved back (adapter merged into its exported base) gives the
//! merged policy's logits; `rrm policy export` from the command line.
//! A policy registered as Q8_0 on a quantized base and its PEFT export loaded back are the same
//! file. The adapter committed under `policies/squality-root` reads as what its card says, and
//! is the binary's built-in root policy.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use rrm::infer::fetch::resolve_model;
use rrm::infer::hf::HfDType;
use rrm::infer::testing::{tiny_gguf, TinyOptions};
use rrm::infer::ModelIdentity;
use rrm::lm::export::ExportFormat;
use rrm::lm::lora::{LoraConfig, Target};
use rrm::lm::model::{LoadOptions, Mode, TrainableLlama};
use rrm::policy::registry::{self, DataCard, ExportKind, ExportRequest, PolicyCard};
use rrm::policy::Method;

/// Largest difference allowed between the logits of a model and its round trip. Both sides
/// hold the same f32 weights (permuting rows is exact), so only the order of additions could
/// differ; measured: exactly 0 on these models.
const ROUND_TRIP_TOLERANCE: f32 = 1e-5;
/// For an adapter merged by us against one merged by the trainer (`W + scale·B·A` summed in a
/// different order, in f32): measured exactly 0 here.
const MERGE_TOLERANCE: f32 = 1e-4;

const PROMPTS: &[&[u32]] = &[&[1, 40, 41, 42, 43, 2, 1], &[1, 60, 70, 80, 90, 100, 110, 120, 2]];

fn tiny(dir: &Path, arch: &'static str, tied: bool) -> PathBuf {
    let path = dir.join(format!("{arch}-{tied}.gguf"));
    tiny_gguf(&path, 11, &TinyOptions { arch, tied, ..TinyOptions::default() }).unwrap();
    path
}

fn logits(path: &Path) -> Vec<f32> {
    let options = LoadOptions { mode: Mode::Frozen, dtype: DType::F32 };
    let (model, _) = TrainableLlama::load(path, &Device::Cpu, &options).unwrap();
    model.logits(PROMPTS).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn hf_export_then_import_keeps_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for (arch, tied) in [("llama", true), ("llama", false), ("qwen2", false), ("qwen2", true)] {
        let gguf = tiny(dir.path(), arch, tied);
        let out = dir.path().join(format!("{arch}-{tied}-hf"));
        rrm::infer::hf::export_hf(&gguf, &out, HfDType::F32).unwrap();
        let resolved = resolve_model(out.to_str().unwrap(), &models).unwrap();
        assert!(resolved.path.starts_with(models.join("hf-gguf")), "{}", resolved.path.display());
        let diff = max_abs_diff(&logits(&gguf), &logits(&resolved.path));
        eprintln!("{arch} tied={tied}: max |Δlogit| after the round trip = {diff:e}");
        assert!(diff <= ROUND_TRIP_TOLERANCE, "{arch} tied={tied}: {diff}");
        // The engine serves the converted file too.
        let loaded = rrm::infer::llama::LlamaModel::load(&resolved.path, &Device::Cpu).unwrap();
        let mut cache = loaded.model.new_cache(PROMPTS[0].len()).unwrap();
        let out = loaded.model.forward(&mut [(PROMPTS[0], &mut cache)]).unwrap();
        assert_eq!(out.dims()[1], rrm::infer::testing::tiny_vocab().len());
    }
}

#[test]
fn a_quantized_model_exports_its_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("q8.gguf");
    let o = TinyOptions { weights: candle_core::quantized::GgmlDType::Q8_0, ..Default::default() };
    tiny_gguf(&gguf, 4, &o).unwrap();
    let out = dir.path().join("hf");
    rrm::infer::hf::export_hf(&gguf, &out, HfDType::F32).unwrap();
    let resolved = resolve_model(out.to_str().unwrap(), &dir.path().join("models")).unwrap();
    let diff = max_abs_diff(&logits(&gguf), &logits(&resolved.path));
    assert!(diff <= ROUND_TRIP_TOLERANCE, "{diff}");
}

/// Registers a LoRA policy on `base` with random (non-zero) adapters, as `rrm policy train`
/// would; returns its merged GGUF.
fn register_lora_policy(models: &Path, base: &Path, name: &str, top: Option<usize>) -> PathBuf {
    register_lora_policy_as(models, base, name, top, ExportFormat::F32)
}

fn register_lora_policy_as(
    models: &Path,
    base: &Path,
    name: &str,
    top: Option<usize>,
    format: ExportFormat,
) -> PathBuf {
    let lora =
        LoraConfig { rank: 4, alpha: 8.0, targets: Target::ALL.to_vec(), seed: 5, top_layers: top };
    let options = LoadOptions { mode: Mode::Lora(lora.clone()), dtype: DType::F32 };
    let (model, _) = TrainableLlama::load(base, &Device::Cpu, &options).unwrap();
    for (i, (n, var)) in model.trainable().into_iter().enumerate() {
        if n.ends_with("lora_b") {
            let t = Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu).unwrap();
            var.set(&(t + i as f64 * 1e-3).unwrap()).unwrap();
        }
    }
    let card = PolicyCard::new(
        name,
        ModelIdentity { name: "tiny".into(), hash: "x".into() },
        Method::Sft,
        Mode::Lora(lora),
        format,
        serde_json::Value::Null,
        DataCard::default(),
    );
    registry::register(models, card, &model, false).unwrap().0
}

fn request(name: &str, kind: ExportKind, out: &Path) -> ExportRequest {
    ExportRequest {
        name: name.into(),
        kind,
        out: out.to_path_buf(),
        base: false,
        dtype: HfDType::F32,
        base_ref: None,
    }
}

#[test]
fn a_peft_export_imported_on_its_base_gives_the_merged_policy() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for (arch, top) in [("llama", None), ("qwen2", Some(1))] {
        let base = tiny(dir.path(), arch, arch == "llama");
        let name = format!("pol-{arch}");
        let merged = register_lora_policy(&models, &base, &name, top);
        let out = dir.path().join(format!("{name}-peft"));
        let report = registry::export(&models, &request(&name, ExportKind::Peft, &out)).unwrap();
        assert!(
            out.join("adapter_config.json").is_file() && out.join("base/config.json").is_file()
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap())
                .unwrap();
        assert_eq!(config["r"], 4);
        assert_eq!(config["base_model_name_or_path"].as_str(), report.base_ref.as_deref());
        assert_eq!(config["layers_to_transform"].is_null(), top.is_none());
        // The adapter folder as a model spec: its base resolved, the adapter merged in.
        let resolved = resolve_model(out.to_str().unwrap(), &models).unwrap();
        let diff = max_abs_diff(&logits(&merged), &logits(&resolved.path));
        eprintln!("{arch}: max |Δlogit| PEFT import vs merged policy = {diff:e}");
        assert!(diff <= MERGE_TOLERANCE, "{arch}: {diff}");
        // The base exported with --base is the model the policy was trained from.
        let base_out = dir.path().join(format!("{name}-base"));
        let mut req = request(&name, ExportKind::Hf, &base_out);
        req.base = true;
        registry::export(&models, &req).unwrap();
        let back = resolve_model(base_out.to_str().unwrap(), &models).unwrap();
        assert!(max_abs_diff(&logits(&base), &logits(&back.path)) <= ROUND_TRIP_TOLERANCE);
    }
}

/// Every tensor of a GGUF file: name → (type, raw bytes).
fn raw_tensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<u8>)> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names
        .into_iter()
        .map(|name| {
            let q = content.tensor(&mut file, &name, &Device::Cpu).unwrap();
            let bytes = q.data().unwrap().to_vec();
            (name, (format!("{:?}", q.dtype()), bytes))
        })
        .collect()
}

/// A LoRA policy trained on a quantized base is registered as Q8_0; its PEFT export (f32 B and
/// A), loaded back on that base, must be that file bit for bit, so the adapter a user loads is
/// the model that was measured. (Merged at f16 it was not, and greedy roots differed.)
#[test]
fn a_peft_export_on_a_quantized_base_is_the_registered_q8_0_policy() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let base = dir.path().join("q8-base.gguf");
    let o = TinyOptions { weights: candle_core::quantized::GgmlDType::Q8_0, ..Default::default() };
    tiny_gguf(&base, 11, &o).unwrap();
    let merged = register_lora_policy_as(&models, &base, "pol-q8", None, ExportFormat::Q8_0);
    let out = dir.path().join("pol-q8-peft");
    let mut req = request("pol-q8", ExportKind::Peft, &out);
    req.base_ref = Some(base.to_string_lossy().into_owned());
    registry::export(&models, &req).unwrap();
    let resolved = resolve_model(out.to_str().unwrap(), &models).unwrap();
    let (want, got) = (raw_tensors(&merged), raw_tensors(&resolved.path));
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (name, (dtype, bytes)) in &want {
        assert_eq!(&got[name].0, dtype, "{name}: tensor type");
        assert!(&got[name].1 == bytes, "{name}: the bytes differ");
    }
    assert!(want["blk.0.attn_q.weight"].0.contains("Q8_0"), "{:?}", want["blk.0.attn_q.weight"].0);
}

#[test]
fn peft_export_of_a_policy_without_adapters_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let base = tiny(dir.path(), "llama", true);
    let options = LoadOptions { mode: Mode::Full, dtype: DType::F32 };
    let (model, _) = TrainableLlama::load(&base, &Device::Cpu, &options).unwrap();
    let card = PolicyCard::new(
        "full",
        ModelIdentity { name: "tiny".into(), hash: "x".into() },
        Method::Sft,
        Mode::Full,
        ExportFormat::F32,
        serde_json::Value::Null,
        DataCard::default(),
    );
    registry::register(&models, card, &model, false).unwrap();
    let err = registry::export(&models, &request("full", ExportKind::Peft, &dir.path().join("o")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no LoRA adapters") && err.contains("--format hf"), "{err}");
    let err = registry::export(&models, &request("nothing-here", ExportKind::Hf, dir.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing-here"), "{err}");
}

#[test]
fn cli_exports_hf_and_gguf_and_the_export_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let base = tiny(dir.path(), "qwen2", false);
    let hf = dir.path().join("hf");
    let run = |args: &[&str]| {
        Command::cargo_bin("rrm")
            .unwrap()
            .args(args)
            .arg("--models-dir")
            .arg(&models)
            .arg("--db")
            .arg(dir.path().join("db"))
            .output()
            .unwrap()
    };
    let out = run(&[
        "policy",
        "export",
        base.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(hf.join(f).is_file(), "{f}");
    }
    let g = dir.path().join("g");
    let out = run(&[
        "policy",
        "export",
        base.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(g.join("qwen2-false.gguf")).unwrap(), std::fs::read(&base).unwrap());
    // The Hugging Face folder is a model spec for generation.
    let out = Command::cargo_bin("rrm")
        .unwrap()
        .args([
            "generate",
            "--prompt",
            "the tin",
            "--max-tokens",
            "4",
            "--device",
            "cpu",
            "--model",
        ])
        .arg(&hf)
        .arg("--models-dir")
        .arg(&models)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Bad input: a folder that is no model, and an unknown format.
    let out = run(&["policy", "export", "no-such-model", "--out", hf.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));
    let out = run(&["policy", "export", "x", "--format", "onnx", "--out", "y"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("onnx"));
}

// The adapter committed under `policies/squality-root` (see its README): it must stay a LoRA
// adapter rrm reads, for SmolLM2-135M's shapes, naming rrm's default model as its base, with
// the bytes its card's hashes name. No model is fetched.

const SHIPPED_ADAPTER: &str = "policies/squality-root";

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn the_shipped_root_adapter_reads_as_smollm2_lora_and_matches_its_card() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_ADAPTER);
    // The binary's built-in copy, written out under the models folder, is these files.
    let models = tempfile::tempdir().unwrap();
    let builtin = rrm::infer::fetch::builtin_adapter(rrm::infer::fetch::DEFAULT_ROOT_POLICY)
        .expect("the default root policy is built in");
    let written = rrm::infer::fetch::materialize_builtin(builtin, models.path()).unwrap();
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        assert_eq!(sha256(&written.join(file)), sha256(&dir.join(file)), "{file}");
    }
    assert_eq!(rrm::infer::hf::adapter_base_spec(&dir).unwrap(), "smollm2-135m");
    let adapter = rrm::infer::hf::read_adapter(&dir).unwrap();
    // 30 blocks × 7 projections, rank 8, alpha 16.
    assert_eq!(adapter.pairs.len(), 30 * 7);
    for (name, (a, b, scale)) in &adapter.pairs {
        assert_eq!(a.dims()[0], 8, "{name}: rank");
        assert_eq!(b.dims()[1], 8, "{name}: rank");
        assert_eq!(*scale, 2.0, "{name}: alpha / rank");
        let inp = a.dims()[1];
        let out = b.dims()[0];
        assert!([576, 1536].contains(&inp) && [192, 576, 1536].contains(&out), "{name}");
    }
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let hash = sha256(&dir.join(file));
        assert!(card.contains(&hash), "{file}: sha256 {hash} is not the one the card names");
    }
}
