//! The GPU path against the CPU path, on tiny random models (and, when the GPU check script
//! points at them, on twins of the real models: `RRM_GPU_CHECK_MODEL` a .gguf, `RRM_GPU_CHECK_ENCODER`
//! an encoder folder).
//!
//! Without a CUDA device (any build without `--features cuda`, or no GPU) every test here
//! returns at once after saying so on stderr; with `RRM_REQUIRE_GPU=1` (set by
//! `scripts/gpu-check.sh`) a missing device fails them instead. Run them on a GPU machine with
//! `--nocapture` to see the measured differences. `RRM_CUDA_TESTS_ON_CPU=1` runs them with the
//! CPU in the GPU's place (a check of the tests, not of the GPU).

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use rrm::infer::encoder::{EncoderOptions, MiniLmEncoder};
use rrm::infer::engine::{EngineConfig, LocalGenerator};
use rrm::infer::llama::LlamaModel;
use rrm::infer::testing::{tiny_bert, tiny_gguf, TinyOptions};
use rrm::infer::{ChatMessage, Encoder, GenerationRequest, Generator, SamplingParams};

/// The CUDA device, or `None` (and a note) when there is none. `RRM_CUDA_TESTS_ON_CPU=1` runs
/// the tests with the CPU standing in for the GPU: a check of the tests themselves.
fn gpu() -> Option<Device> {
    if std::env::var("RRM_CUDA_TESTS_ON_CPU").is_ok_and(|v| v == "1") {
        return Some(Device::Cpu);
    }
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(err) => {
            let required = std::env::var("RRM_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "RRM_REQUIRE_GPU=1 but no CUDA device: {err}");
            eprintln!("skipped: no CUDA device ({err})");
            None
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b)).max(1e-12)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn prompts() -> Vec<Vec<u32>> {
    vec![(3..40).collect(), vec![1, 50, 60, 70], (100..211).map(|i| i % 250 + 3).collect(), vec![9]]
}

/// Logits of a ragged batched prefill, then of two decode steps, one row per sequence.
fn run_batch(model: &LlamaModel, prompts: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut caches: Vec<_> =
        prompts.iter().map(|p| model.new_cache(p.len() + 2).unwrap()).collect();
    let mut batch: Vec<(&[u32], _)> =
        prompts.iter().map(|p| p.as_slice()).zip(caches.iter_mut()).collect();
    let mut rows = model.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
    for token in [5u32, 7] {
        let t = [token];
        let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (&t[..], c)).collect();
        rows.extend(model.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap());
    }
    rows
}

/// The same rows, each sequence run alone.
fn run_alone(model: &LlamaModel, prompts: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut per_step = vec![Vec::new(); 3];
    for p in prompts {
        let rows = run_batch(model, std::slice::from_ref(p));
        for (step, row) in rows.into_iter().enumerate() {
            per_step[step].push(row);
        }
    }
    per_step.into_iter().flatten().collect()
}

fn tiny(dir: &tempfile::TempDir, arch: &'static str, weights: GgmlDType) -> PathBuf {
    let path = dir.path().join(format!("{arch}-{weights:?}.gguf"));
    tiny_gguf(
        &path,
        11,
        &TinyOptions { arch, weights, tied: arch == "llama", ..Default::default() },
    )
    .unwrap();
    path
}

#[test]
fn f32_models_give_the_same_logits_on_cpu_and_gpu() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let path = tiny(&dir, arch, GgmlDType::F32);
        let cpu_rows = run_batch(&LlamaModel::load(&path, &Device::Cpu).unwrap().model, &prompts());
        let gpu_rows = run_batch(&LlamaModel::load(&path, &gpu).unwrap().model, &prompts());
        let worst = cpu_rows.iter().zip(&gpu_rows).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
        eprintln!("{arch} F32: CPU vs GPU logits, max |diff| {worst:.2e}");
        assert!(worst < 1e-3, "{arch}: CPU and GPU logits differ by {worst}");
    }
}

#[test]
fn a_ragged_batch_on_the_gpu_equals_each_sequence_alone() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let model = LlamaModel::load(&tiny(&dir, arch, GgmlDType::F32), &gpu).unwrap().model;
        let batch = run_batch(&model, &prompts());
        let alone = run_alone(&model, &prompts());
        let worst = batch.iter().zip(&alone).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
        eprintln!("{arch} F32 on the GPU: batched vs alone, max |diff| {worst:.2e}");
        assert!(worst < 1e-3, "{arch}: a batched row differs from its sequence alone by {worst}");
    }
}

/// Quantized weights: the CPU requantizes Q4_1 to Q8_0 and quantizes activations its own way, so
/// the paths agree only approximately; the rows must still point the same way.
#[test]
fn quantized_models_agree_on_cpu_and_gpu() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    for weights in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let path = tiny(&dir, "llama", weights);
        let cpu_rows = run_batch(&LlamaModel::load(&path, &Device::Cpu).unwrap().model, &prompts());
        let gpu_rows = run_batch(&LlamaModel::load(&path, &gpu).unwrap().model, &prompts());
        let worst_cos =
            cpu_rows.iter().zip(&gpu_rows).map(|(a, b)| cosine(a, b)).fold(1.0, f32::min);
        let worst = cpu_rows.iter().zip(&gpu_rows).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
        eprintln!(
            "{weights:?}: CPU vs GPU logits, min cosine {worst_cos:.5}, max |diff| {worst:.3}"
        );
        assert!(worst_cos > 0.99, "{weights:?}: CPU and GPU logits point apart ({worst_cos})");
    }
}

fn request(text: &str, max_tokens: usize, seed: u64) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage::user(text)],
        max_tokens,
        sampling: SamplingParams::greedy(),
        seed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_on_the_gpu_gives_the_same_completions_batched_and_alone() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(&dir, "llama", GgmlDType::F32);
    let gen = LocalGenerator::load(
        &path,
        None,
        &gpu,
        EngineConfig { max_batch: 3, ..Default::default() },
    )
    .unwrap();
    let reqs = vec![
        request("the cat sat on the mat", 20, 0),
        request("in the beginning", 7, 1),
        request("a much longer prompt about the thing in the thing", 15, 2),
        request("x", 25, 3),
    ];
    let mut alone = Vec::new();
    for r in &reqs {
        alone.push(gen.generate(vec![r.clone()]).await.unwrap().remove(0));
    }
    let together = gen.generate(reqs.clone()).await.unwrap();
    for (a, b) in alone.iter().zip(&together) {
        assert_eq!(a.token_ids, b.token_ids);
        assert!(max_diff(&a.logprobs, &b.logprobs) < 1e-3);
    }
}

fn encoder_rows(encoder: &MiniLmEncoder) -> Vec<Vec<f32>> {
    let texts = [
        "The cat sat on the mat.",
        "A dog ran in the park by night and by morning.",
        "",
        "the river is long, and the book is long.",
    ];
    encoder.embed(&texts).unwrap()
}

#[test]
fn the_encoder_gives_the_same_embeddings_on_cpu_and_gpu() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    tiny_bert(dir.path(), 3).unwrap();
    let cpu = MiniLmEncoder::load_with(dir.path(), EncoderOptions::on(Device::Cpu)).unwrap();
    let on_gpu = MiniLmEncoder::load_with(dir.path(), EncoderOptions::on(gpu)).unwrap();
    let worst = encoder_rows(&cpu)
        .iter()
        .zip(&encoder_rows(&on_gpu))
        .map(|(a, b)| max_diff(a, b))
        .fold(0.0, f32::max);
    eprintln!("tiny BERT: CPU vs GPU embeddings, max |diff| {worst:.2e}");
    assert!(worst < 1e-4, "CPU and GPU embeddings differ by {worst}");
}

/// The twin of the real policy model (`RRM_GPU_CHECK_MODEL`): its real shapes and weight types
/// through both paths, and 16 greedy steps.
#[test]
fn the_real_shaped_model_agrees_on_cpu_and_gpu() {
    let Some(path) = std::env::var_os("RRM_GPU_CHECK_MODEL").map(PathBuf::from) else {
        eprintln!("skipped: RRM_GPU_CHECK_MODEL not set");
        return;
    };
    let Some(gpu) = gpu() else { return };
    let cpu_model = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
    let gpu_model = LlamaModel::load(&path, &gpu).unwrap().model;
    let prompt: Vec<u32> = (0..200).map(|i| 100 + (i * 37) % 20_000).collect();
    let steps = |m: &LlamaModel| {
        let mut cache = m.new_cache(prompt.len() + 16).unwrap();
        let mut rows = Vec::new();
        let mut next = prompt.clone();
        for _ in 0..16 {
            let row =
                m.forward(&mut [(next.as_slice(), &mut cache)]).unwrap().to_vec2::<f32>().unwrap();
            next = vec![argmax(&row[0]) as u32];
            rows.push(row.into_iter().next().unwrap());
        }
        rows
    };
    let (a, b) = (steps(&cpu_model), steps(&gpu_model));
    let worst_cos = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).fold(1.0, f32::min);
    let same = a.iter().zip(&b).filter(|(x, y)| argmax(x) == argmax(y)).count();
    eprintln!(
        "real-shaped twin: CPU vs GPU over 16 greedy steps: min cosine {worst_cos:.5}, \
         same argmax {same}/16, first-step max |diff| {:.3}",
        max_diff(&a[0], &b[0])
    );
    assert!(
        worst_cos > 0.98,
        "the real-shaped model's CPU and GPU logits point apart: {worst_cos}"
    );
}

/// The twin of the real encoder (`RRM_GPU_CHECK_ENCODER`): embeddings on both devices.
#[test]
fn the_real_shaped_encoder_agrees_on_cpu_and_gpu() {
    let Some(dir) = std::env::var_os("RRM_GPU_CHECK_ENCODER").map(PathBuf::from) else {
        eprintln!("skipped: RRM_GPU_CHECK_ENCODER not set");
        return;
    };
    let Some(gpu) = gpu() else { return };
    let cpu = MiniLmEncoder::load_with(&dir, EncoderOptions::on(Device::Cpu)).unwrap();
    let on_gpu = MiniLmEncoder::load_with(&dir, EncoderOptions::on(gpu)).unwrap();
    let (a, b) = (encoder_rows(&cpu), encoder_rows(&on_gpu));
    let worst = a.iter().zip(&b).map(|(x, y)| max_diff(x, y)).fold(0.0, f32::max);
    eprintln!("real-shaped encoder twin: CPU vs GPU embeddings, max |diff| {worst:.2e}");
    assert!(worst < 1e-3, "CPU and GPU embeddings differ by {worst}");
}
