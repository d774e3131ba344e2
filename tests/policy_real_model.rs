//! The trainable forward on the real default model (SmolLM2-135M-Instruct, fetched with pip on
//! first use): its logits against the inference engine's.
//!
//! The engine on the CPU does not run a file's weights as they are: prompt rows go through f16
//! weights and generated rows through 8-bit ones, whatever the file stores. So both comparisons
//! bound the KL between the two next-token distributions and require that the trainer finds the
//! engine's top token likely (rounding may swap two near-tied tokens):
//! - the trainer's (dequantized, f32) weights exported as an F32 GGUF and loaded by the engine;
//! - the engine on the original file, as `rrm summarize` runs it.

use std::sync::OnceLock;

use candle_core::{DType, Device};
use rrm::infer::fetch::{models_dir, resolve_model, DEFAULT_GENERATOR};
use rrm::infer::llama::LlamaModel;
use rrm::infer::ChatMessage;
use rrm::lm::export::{write_gguf, ExportFormat};
use rrm::lm::model::{LoadOptions, Mode, TrainableLlama};

fn model_path() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        resolve_model(DEFAULT_GENERATOR, &models_dir(None))
            .unwrap_or_else(|e| panic!("fetching the default model: {e}"))
            .path
    })
}

fn engine_last(path: &std::path::Path, tokens: &[u32]) -> Vec<f32> {
    let loaded = LlamaModel::load(path, &Device::Cpu).unwrap();
    let mut cache = loaded.model.new_cache(tokens.len()).unwrap();
    loaded
        .model
        .forward(&mut [(tokens, &mut cache)])
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap()
}

#[test]
fn trainer_logits_equal_the_engines_on_smollm2() {
    let path = model_path();
    let options = LoadOptions { mode: Mode::Frozen, dtype: DType::F32 };
    let (model, tok) = TrainableLlama::load(path, &Device::Cpu, &options).unwrap();
    let prompts = [
        "Summarize: Martha Bell tended the lighthouse on Gull Rock for thirty years, and one \
         winter she rowed out through the storm to guide a fishing boat home.",
        "What is the capital of France?",
    ];
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("smollm2-f32.gguf");
    write_gguf(&model, &f32_file, ExportFormat::F32, &[]).unwrap();
    for p in prompts {
        let text = tok.render_chat(&[ChatMessage::user(p)]).unwrap();
        let ids = tok.encode(&text).unwrap();
        let logits = model.logits(&[&ids]).unwrap();
        let trainer: Vec<f32> =
            logits.get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1().unwrap();
        let exact = engine_last(&f32_file, &ids);
        let (p, q) = (softmax(&exact), softmax(&trainer));
        let kl: f64 =
            p.iter().zip(&q).filter(|(a, _)| **a > 0.0).map(|(a, b)| a * (a / b).ln()).sum();
        eprintln!("f32 export in the engine vs trainer: KL {kl:.4} nats");
        // Rounding may swap two near-tied top tokens: the trainer must give the engine's top
        // token at least half the probability of its own.
        assert!(
            q[argmax(&exact)] >= 0.5 * q[argmax(&trainer)],
            "the engine's top token is unlikely under the trainer"
        );
        assert!(kl < 0.05, "KL(engine on the f32 export‖trainer) = {kl}");

        let served = engine_last(path, &ids);
        let (p, q) = (softmax(&served), softmax(&trainer));
        let kl: f64 =
            p.iter().zip(&q).filter(|(a, _)| **a > 0.0).map(|(a, b)| a * (a / b).ln()).sum();
        let d = trainer.iter().zip(&served).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("served engine (Q8_0) vs trainer: KL {kl:.4} nats, max |Δlogit| {d:.3}");
        assert!(
            q[argmax(&served)] >= 0.5 * q[argmax(&trainer)],
            "the served engine's top token is unlikely under the trainer"
        );
        assert!(kl < 0.05, "KL(engine‖trainer) = {kl}");
    }
}
