//! The qwen3 and gemma3 families on tiny random models (no downloads): they load and generate,
//! the CPU path and the tensor-op path agree, batching changes no sequence's logits, and the
//! SentencePiece tokenizer of gemma3 files joins pieces by score with byte fallback.

use candle_core::Device;
use rrm::infer::engine::{EngineConfig, LocalGenerator};
use rrm::infer::llama::{Arch, LlamaModel};
use rrm::infer::testing::{tiny_gguf, TinyOptions};
use rrm::infer::{ChatMessage, GenerationRequest, Generator, SamplingParams};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn scale(rows: &[Vec<f32>]) -> f32 {
    rows.iter().flatten().fold(0f32, |m, x| m.max(x.abs())).max(1.0)
}

/// qwen3 with head_dim ≠ hidden / heads; gemma3 with six layers (five local with a window of
/// 8, the sixth global) and head_dim ≠ hidden / heads.
fn families() -> Vec<TinyOptions> {
    vec![
        TinyOptions { arch: "qwen3", head_dim: Some(32), ..TinyOptions::default() },
        TinyOptions {
            arch: "gemma3",
            n_layer: 6,
            head_dim: Some(32),
            sliding_window: Some(8),
            ..TinyOptions::default()
        },
    ]
}

/// Prompts longer than the window, of ids inside both tiny vocabularies.
fn prompts() -> Vec<Vec<u32>> {
    vec![(3..40).collect(), vec![2, 50, 60, 70], (100..171).map(|i| i % 250 + 3).collect()]
}

#[test]
fn configs_read_the_family_rules() {
    for o in families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 1, &o).unwrap();
        let c = LlamaModel::load(&path, &Device::Cpu).unwrap().model.config.clone();
        assert_eq!(c.head_dim, 32);
        assert!(c.qk_norm);
        if o.arch == "gemma3" {
            assert_eq!(c.arch, Arch::Gemma3);
            assert_eq!(c.swa_layers, vec![true, true, true, true, true, false]);
            assert_eq!(c.window(0), Some(8));
            assert_eq!(c.window(5), None);
            assert_eq!((c.rope_base, c.rope_base_swa), (1e6, 1e4));
            assert_eq!(c.embed_scale, Some(8.0));
            assert!(c.post_norms);
        } else {
            assert_eq!(c.arch, Arch::Qwen3);
            assert!(!c.post_norms && c.sliding_window.is_none());
        }
    }
}

#[test]
fn cpu_path_and_tensor_path_agree_and_batching_changes_nothing() {
    for o in families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 3, &o).unwrap();
        let host = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
        let mut tensor = LlamaModel::load(&path, &Device::Cpu).unwrap().model;
        tensor.use_tensor_attention();
        // Prefill all prompts together, then two decode steps, then a 3-token chunk.
        let run_batch = |m: &LlamaModel| {
            let ps = prompts();
            let mut caches: Vec<_> = ps.iter().map(|p| m.new_cache(p.len() + 8).unwrap()).collect();
            let mut batch: Vec<(&[u32], _)> =
                ps.iter().map(|p| p.as_slice()).zip(caches.iter_mut()).collect();
            let mut rows = m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap();
            for step in [&[7u32][..], &[8], &[9, 10, 11]] {
                let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (step, c)).collect();
                rows.extend(m.forward(&mut batch).unwrap().to_vec2::<f32>().unwrap());
            }
            rows
        };
        // The same, one sequence at a time.
        let run_single = |m: &LlamaModel| {
            let ps = prompts();
            let mut out = vec![Vec::new(); 4 * ps.len()];
            for (i, p) in ps.iter().enumerate() {
                let mut cache = m.new_cache(p.len() + 8).unwrap();
                out[i] = m.forward(&mut [(p.as_slice(), &mut cache)]).unwrap().to_vec2().unwrap()
                    [0]
                .clone();
                for (s, step) in [&[7u32][..], &[8], &[9, 10, 11]].iter().enumerate() {
                    out[(s + 1) * ps.len() + i] =
                        m.forward(&mut [(*step, &mut cache)]).unwrap().to_vec2().unwrap()[0]
                            .clone();
                }
            }
            out
        };
        let (hb, hs, tb) = (run_batch(&host), run_single(&host), run_batch(&tensor));
        let tol_same = 1e-4 * scale(&hb);
        // Prompt rows: f16 GEMM and f16 K/V on the CPU path, f32 in the tensor path; decode
        // rows: the 8-bit matmul (as tests/infer_engine.rs states for llama and qwen2).
        let n = prompts().len();
        for i in 0..hb.len() {
            let d = max_diff(&hb[i], &hs[i]);
            assert!(d < tol_same, "{} batch vs single row {i}: {d}", o.arch);
            let tol = if i < n { 2e-3 } else { 3e-2 } * scale(&tb);
            let d = max_diff(&hb[i], &tb[i]);
            assert!(d < tol, "{} cpu vs tensor row {i}: {d} (tolerance {tol})", o.arch);
        }
    }
}

#[test]
fn the_sliding_window_matters_on_long_prompts() {
    // Same weights, with and without a window: identical within the window, different past it.
    let base = TinyOptions { arch: "gemma3", n_layer: 6, head_dim: Some(32), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    tiny_gguf(&a, 4, &TinyOptions { sliding_window: Some(8), ..base.clone() }).unwrap();
    tiny_gguf(&b, 4, &TinyOptions { sliding_window: Some(4096), ..base }).unwrap();
    let (ma, mb) = (
        LlamaModel::load(&a, &Device::Cpu).unwrap().model,
        LlamaModel::load(&b, &Device::Cpu).unwrap().model,
    );
    let last = |m: &LlamaModel, p: &[u32]| {
        let mut c = m.new_cache(p.len()).unwrap();
        m.forward(&mut [(p, &mut c)]).unwrap().to_vec2::<f32>().unwrap()[0].clone()
    };
    let short: Vec<u32> = (10..18).collect();
    let long: Vec<u32> = (10..40).collect();
    assert!(max_diff(&last(&ma, &short), &last(&mb, &short)) < 1e-4);
    assert!(max_diff(&last(&ma, &long), &last(&mb, &long)) > 1e-3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_models_generate() {
    for o in families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 5, &o).unwrap();
        let gen = LocalGenerator::load(&path, None, &Device::Cpu, EngineConfig::default()).unwrap();
        let req = GenerationRequest {
            messages: vec![ChatMessage::system("Be brief."), ChatMessage::user("the cat in a hat")],
            max_tokens: 12,
            sampling: SamplingParams::greedy(),
            seed: 0,
        };
        let out = gen.generate(vec![req.clone(), req]).await.unwrap();
        assert_eq!(out.len(), 2);
        assert!(!out[0].token_ids.is_empty(), "{}", o.arch);
        assert_eq!(out[0].token_ids, out[1].token_ids);
    }
}

#[test]
fn spm_tokenizer_joins_by_score_and_falls_back_to_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let o = TinyOptions { arch: "gemma3", n_layer: 1, ..TinyOptions::default() };
    tiny_gguf(&path, 1, &o).unwrap();
    let tok = LlamaModel::load(&path, &Device::Cpu).unwrap().tokenizer;
    let (tokens, _, _) = rrm::infer::testing::tiny_spm_vocab();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    // "▁the" wins over "▁t" + "he"; "in" and "er" join; "é" is not a piece: two bytes.
    let ids = tok.encode(" the inner é\n<end_of_turn>").unwrap();
    let want = vec![
        id("\u{2581}the"),
        id("\u{2581}"),
        id("in"),
        id("n"),
        id("er"),
        id("\u{2581}"),
        id("<0xC3>"),
        id("<0xA9>"),
        id("\n"),
        id("<end_of_turn>"),
    ];
    assert_eq!(ids, want);
    assert_eq!(tok.decode(&ids).unwrap(), " the inner é\n");
    // No template in the file: Gemma's turns, BOS first, the system message in the user turn.
    let text = tok.render_chat(&[ChatMessage::system("S"), ChatMessage::user("Hi")]).unwrap();
    assert_eq!(text, "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    assert!(tok.eos_ids.contains(&id("<end_of_turn>")) && tok.eos_ids.contains(&id("<eos>")));
}

#[test]
fn the_trainer_refuses_these_families_by_name() {
    for o in families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 2, &o).unwrap();
        let opts = rrm::lm::model::LoadOptions::default();
        let err = rrm::lm::TrainableLlama::load(&path, &Device::Cpu, &opts).err().unwrap();
        assert!(
            matches!(err, rrm::lm::LmError::UnsupportedFamily { family, .. } if family == o.arch),
            "{err}"
        );
        assert!(err.to_string().contains("inference engine only"), "{err}");
    }
}
