//! The local engine on tiny random models: batching must not change any sequence's result.

use candle_core::Device;
use rrm::infer::engine::{EngineConfig, LocalGenerator};
use rrm::infer::llama::LlamaModel;
use rrm::infer::testing::{tiny_gguf, tiny_llama_gguf, TinyOptions};
use rrm::infer::{ChatMessage, GenerationRequest, Generator, InferError, SamplingParams};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The largest |logit| of some rows (tolerances are relative to it).
fn scale(rows: &[Vec<f32>]) -> f32 {
    rows.iter().flatten().fold(0f32, |m, x| m.max(x.abs())).max(1.0)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![(3..40).collect(), vec![1, 50, 60, 70], (100..211).map(|i| i % 250 + 3).collect(), vec![9]]
}

fn check_ragged_batch(opts: &TinyOptions) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_gguf(&path, 11, opts).unwrap();
    let model = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
    let prompts = prompts();

    // Each prompt alone, then one more token.
    let mut single = Vec::new();
    for p in &prompts {
        let mut cache = model.new_cache(p.len() + 1).unwrap();
        let a = model.forward(&mut [(p.as_slice(), &mut cache)]).unwrap().to_vec2::<f32>().unwrap();
        let b = model.forward(&mut [(&[5u32][..], &mut cache)]).unwrap().to_vec2::<f32>().unwrap();
        single.push((a[0].clone(), b[0].clone()));
    }
    // All together: one ragged prefill step, then one batched decode step.
    let mut caches: Vec<_> =
        prompts.iter().map(|p| model.new_cache(p.len() + 1).unwrap()).collect();
    let mut batch: Vec<(&[u32], _)> =
        prompts.iter().map(|p| p.as_slice()).zip(caches.iter_mut()).collect();
    let pre = model.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
    let five = [5u32];
    let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (&five[..], c)).collect();
    let dec = model.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
    for (i, (a, b)) in single.iter().enumerate() {
        assert!(max_diff(a, &pre[i]) < 1e-4, "prefill row {i} differs by {}", max_diff(a, &pre[i]));
        assert!(max_diff(b, &dec[i]) < 1e-4, "decode row {i} differs by {}", max_diff(b, &dec[i]));
    }
}

#[test]
fn cpu_attention_and_tensor_attention_agree() {
    for arch in ["llama", "qwen2"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 2, &TinyOptions { arch, ..TinyOptions::default() }).unwrap();
        let host = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
        let mut tensor = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
        tensor.use_tensor_attention();
        let run = |m: &LlamaModel| {
            let mut caches: Vec<_> =
                prompts().iter().map(|p| m.new_cache(p.len() + 4).unwrap()).collect();
            let ps = prompts();
            let mut batch: Vec<(&[u32], _)> =
                ps.iter().map(|p| p.as_slice()).zip(caches.iter_mut()).collect();
            let a = m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
            let seven = [7u32];
            let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (&seven[..], c)).collect();
            let mut b = m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
            // Several new tokens on top of a filled cache (a chunked prefill).
            let more = [7u32, 8, 9];
            let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (&more[..], c)).collect();
            b.extend(m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap());
            (a, b)
        };
        let (a1, b1) = run(&host);
        let (a2, b2) = run(&tensor);
        // The CPU path keeps K/V in f16 (11 significant bits), the tensor path in f32.
        let tol = 2e-3 * scale(&a2);
        for i in 0..a1.len() {
            let d = max_diff(&a1[i], &a2[i]);
            assert!(d < tol, "{arch} prefill row {i}: {d} (tolerance {tol})");
        }
        // Decode rows go through the 8-bit matmul, which quantizes its input per block of 32
        // (step: 1/127 of the block's largest value): the f16 difference above can move a
        // value across a rounding step, so these agree within the 8-bit tolerance instead.
        let tol = 2.5e-2 * scale(&a2);
        assert_eq!(b1.len(), 2 * a1.len());
        for i in 0..b1.len() {
            let d = max_diff(&b1[i], &b2[i]);
            assert!(d < tol, "{arch} decode row {i}: {d} (tolerance {tol})");
        }
    }
}

#[test]
fn ragged_batch_logits_equal_single_sequence_logits_llama() {
    check_ragged_batch(&TinyOptions { tied: false, ..TinyOptions::default() });
}

#[test]
fn ragged_batch_logits_equal_single_sequence_logits_qwen2() {
    check_ragged_batch(&TinyOptions { arch: "qwen2", ..TinyOptions::default() });
}

/// The prefill GEMM (f16 weights, f32 activations) against the 8-bit path (Q8_0 weights and
/// activations, per block of 32) that prompt rows took before the GEMM and decode rows take.
#[test]
fn the_prefill_gemm_agrees_with_the_quantized_path() {
    for arch in ["llama", "qwen2"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 3, &TinyOptions { arch, ..TinyOptions::default() }).unwrap();
        let gemm = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
        let mut quant = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
        quant.use_quantized_prefill();
        let run = |m: &LlamaModel| {
            let ps = prompts();
            let mut caches: Vec<_> = ps.iter().map(|p| m.new_cache(p.len() + 2).unwrap()).collect();
            let mut batch: Vec<(&[u32], _)> =
                ps.iter().map(|p| p.as_slice()).zip(caches.iter_mut()).collect();
            let mut rows = m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
            let six = [6u32];
            let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (&six[..], c)).collect();
            rows.extend(m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap());
            rows
        };
        let (a, b) = (run(&gemm), run(&quant));
        // The 8-bit side dominates: each value is rounded to 1/254 of its block's range (about
        // 0.4% relative, weights and activations both), through every layer into the logits.
        // Tolerance: 3% of the largest logit.
        let tol = 3e-2 * scale(&b);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = max_diff(x, y);
            assert!(d < tol, "{arch} row {i}: {d} (tolerance {tol})");
        }
    }
}

/// A prompt fed in chunks (chunked prefill) gives the logits it gives in one step.
#[test]
fn a_chunked_prompt_equals_the_whole_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 8).unwrap();
    let model = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
    let prompt: Vec<u32> = (0..70).map(|i| (i * 37 % 250) + 3).collect();
    let mut whole = model.new_cache(72).unwrap();
    let want = model.forward(&mut [(prompt.as_slice(), &mut whole)]).unwrap();
    let want = want.to_vec2::<f32>().unwrap();
    let mut cache = model.new_cache(72).unwrap();
    cache.set_prompt_len(prompt.len());
    let mut got = Vec::new();
    // Uneven chunks, the last one a single token.
    for chunk in [&prompt[..17], &prompt[17..50], &prompt[50..69], &prompt[69..]] {
        got = model.forward(&mut [(chunk, &mut cache)]).unwrap().to_vec2::<f32>().unwrap();
    }
    assert!(max_diff(&got[0], &want[0]) < 1e-4, "{}", max_diff(&got[0], &want[0]));
}

fn greedy_steps(model: &LlamaModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(prompt.len() + n).unwrap();
    let mut out = Vec::new();
    let mut next: Vec<u32> = prompt.to_vec();
    for _ in 0..n {
        let l =
            model.forward(&mut [(next.as_slice(), &mut cache)]).unwrap().to_vec2::<f32>().unwrap();
        let t = argmax(&l[0]);
        out.push(t);
        next = vec![t];
    }
    out
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0 as u32
}

#[test]
fn a_sequence_joining_mid_flight_decodes_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 5).unwrap();
    let model = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
    let a: Vec<u32> = (10..60).collect();
    let b: Vec<u32> = vec![1, 80, 81, 82, 83, 84, 2];
    let alone_a = greedy_steps(&model, &a, 12);
    let alone_b = greedy_steps(&model, &b, 8);

    // A runs 4 steps, then B joins (its prefill packed with A's decode step).
    let mut ca = model.new_cache(a.len() + 12).unwrap();
    let mut cb = model.new_cache(b.len() + 8).unwrap();
    let mut out_a = Vec::new();
    let mut out_b = Vec::new();
    let mut next_a = a.clone();
    for _ in 0..4 {
        let l =
            model.forward(&mut [(next_a.as_slice(), &mut ca)]).unwrap().to_vec2::<f32>().unwrap();
        out_a.push(argmax(&l[0]));
        next_a = vec![*out_a.last().unwrap()];
    }
    let mut next_b = b.clone();
    while out_a.len() < 12 {
        let mut batch: Vec<(&[u32], &mut _)> = vec![(next_a.as_slice(), &mut ca)];
        if out_b.len() < 8 {
            batch.push((next_b.as_slice(), &mut cb));
        }
        let l = model.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
        out_a.push(argmax(&l[0]));
        next_a = vec![*out_a.last().unwrap()];
        if l.len() > 1 {
            out_b.push(argmax(&l[1]));
            next_b = vec![*out_b.last().unwrap()];
        }
    }
    assert_eq!(out_a, alone_a);
    assert_eq!(out_b, alone_b);
}

fn request(
    text: &str,
    max_tokens: usize,
    sampling: SamplingParams,
    seed: u64,
) -> GenerationRequest {
    GenerationRequest { messages: vec![ChatMessage::user(text)], max_tokens, sampling, seed }
}

/// Same tokens and text exactly; log-probabilities up to float rounding (F32 matmuls of
/// different row counts may sum in a different order).
fn same(a: &[rrm::infer::Completion], b: &[rrm::infer::Completion]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.text, &x.token_ids, x.finish), (&y.text, &y.token_ids, y.finish));
        assert!(max_diff(&x.logprobs, &y.logprobs) < 1e-4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_give_the_same_completions_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 3).unwrap();
    let cfg = EngineConfig { max_batch: 3, ..EngineConfig::default() };
    let gen = LocalGenerator::load(&path, None, &Device::Cpu, cfg).unwrap();
    let mut sampled = SamplingParams::greedy();
    sampled.temperature = 0.9;
    sampled.top_p = 0.95;
    sampled.repetition_penalty = 1.1;
    let reqs = vec![
        request("the cat sat on the mat", 20, SamplingParams::greedy(), 0),
        request("in the beginning", 7, sampled.clone(), 42),
        request("a much longer prompt about the thing in the thing", 15, sampled.clone(), 7),
        request("x", 25, SamplingParams::greedy(), 1),
        request("another one, sampled", 9, sampled, 9),
    ];
    let mut alone = Vec::new();
    for r in &reqs {
        alone.push(gen.generate(vec![r.clone()]).await.unwrap().remove(0));
    }
    // All at once, as separate concurrent calls (more than max_batch: some wait and join later).
    let futs = reqs.iter().map(|r| gen.generate(vec![r.clone()]));
    let together: Vec<_> =
        futures::future::join_all(futs).await.into_iter().map(|r| r.unwrap().remove(0)).collect();
    same(&alone, &together);
    // And as one call.
    same(&alone, &gen.generate(reqs.clone()).await.unwrap());
    for c in &alone {
        assert_eq!(c.token_ids.len(), c.logprobs.len());
        assert!(c.logprobs.iter().all(|l| *l <= 0.0 && l.is_finite()));
    }
    assert_eq!(alone[1].completion_tokens.min(7), alone[1].completion_tokens);
}

#[test]
fn a_truncated_model_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 1).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 200, bytes.len() / 2, bytes.len() - 7] {
        let bad = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let err = LlamaModel::load(&bad, &Device::Cpu).unwrap_err();
        assert!(matches!(err, InferError::Model { .. }), "{err}");
        assert!(err.to_string().contains(&format!("cut{cut}.gguf")), "{err}");
    }
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"not a model at all, just some text").unwrap();
    assert!(LlamaModel::load(&garbage, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("garbage.gguf"));
}

#[test]
fn the_tiny_tokenizer_round_trips_and_knows_chatml() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 1).unwrap();
    let tok = LlamaModel::load(&path, &Device::Cpu).unwrap().tokenizer;
    let ids = tok.encode("<|im_start|>user\nthe<|im_end|>").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(tok.eos_ids, vec![0, 2]);
    let text = "Ünïcödé 123  spaces\tand code: fn f() {}";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 4).unwrap();
    let cfg = EngineConfig { max_batch: 1, ..EngineConfig::default() };
    let gen = LocalGenerator::load(&path, None, &Device::Cpu, cfg).unwrap();
    let long = request("a long one", 400, SamplingParams::greedy(), 0);
    // Start a long call and give up on it at once.
    let f = gen.generate(vec![long]);
    drop(tokio::time::timeout(std::time::Duration::from_millis(1), f).await);
    let out = gen.generate(vec![request("short", 3, SamplingParams::greedy(), 0)]).await.unwrap();
    assert_eq!(out[0].completion_tokens, 3);
    let err = gen
        .generate(vec![request(&"long prompt ".repeat(100), 3, SamplingParams::greedy(), 0)])
        .await;
    assert!(matches!(err, Err(InferError::PromptTooLong { .. })), "{err:?}");
}

/// Prompts fed in small chunks mixed with decode steps (a tiny step budget) give the
/// completions a large budget gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_prefill_gives_the_same_completions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_llama_gguf(&path, 21).unwrap();
    let load = |max_step_tokens: usize| {
        let loaded = LlamaModel::load(&path, &Device::Cpu).unwrap();
        let id = LocalGenerator::identity_of(&path, None).unwrap();
        let cfg = EngineConfig { max_batch: 3, max_step_tokens };
        LocalGenerator::from_model(loaded.model, loaded.tokenizer, id, cfg).unwrap()
    };
    let reqs: Vec<GenerationRequest> = (0..5)
        .map(|i| {
            let mut sampling = SamplingParams::greedy();
            sampling.temperature = if i % 2 == 0 { 0.0 } else { 0.9 };
            request(&"once upon a time ".repeat(3 + 4 * i), 12, sampling, i as u64)
        })
        .collect();
    let big = load(4096).generate(reqs.clone()).await.unwrap();
    let small = load(7).generate(reqs).await.unwrap();
    same(&big, &small);
}
