//! Tests of the trainable forward on tiny random models: gradient coverage, finite differences,
//! agreement with the inference engine, batching, export.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::export::{write_gguf, ExportFormat};
use super::lora::{LoraConfig, Target};
use super::model::{Checkpointing, LoadOptions, Mode, Packed, SeqSpec, TrainableLlama};
use crate::infer::llama::LlamaModel;
use crate::infer::testing::{tiny_gguf, TinyOptions};

fn tiny(dir: &Path, arch: &'static str, tied: bool) -> std::path::PathBuf {
    let path = dir.join(format!("{arch}-{tied}.gguf"));
    let o = TinyOptions { arch, tied, ..TinyOptions::default() };
    tiny_gguf(&path, 7, &o).unwrap();
    path
}

fn lora_all() -> Mode {
    Mode::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
        seed: 3,
        top_layers: None,
    })
}

/// Adapters in the top block only: the blocks below run forward only.
fn lora_top() -> Mode {
    Mode::Lora(LoraConfig { top_layers: Some(1), ..LoraConfig::default() })
}

fn load(path: &Path, mode: Mode, dtype: DType) -> TrainableLlama {
    TrainableLlama::load(path, &Device::Cpu, &LoadOptions { mode, dtype }).unwrap().0
}

/// Gives every LoRA `B` random values (a fresh adapter's `B` is zero, so `A` would get no
/// gradient and the adapter would change nothing).
fn randomize_lora_b(model: &TrainableLlama, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in model.trainable() {
        if name.ends_with("lora_b") {
            let n = var.elem_count();
            let data: Vec<f64> = (0..n).map(|_| rng.random_range(-0.2..0.2)).collect();
            let t = Tensor::from_vec(data, var.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(var.dtype())
                .unwrap();
            var.set(&t).unwrap();
        }
    }
}

fn seqs() -> Vec<SeqSpec> {
    vec![
        SeqSpec::new(&[1, 40, 41, 42, 43, 2, 1], &[50, 51, 52, 2]),
        SeqSpec::new(&[1, 60, 61], &[70, 71, 72, 73, 74, 75, 2]),
    ]
}

fn packed() -> Vec<Packed> {
    seqs()
        .into_iter()
        .map(|s| Packed {
            prompt: s.tokens[..s.start].to_vec(),
            completions: vec![s.tokens[s.start..].to_vec()],
        })
        .collect()
}

/// A mix of sequence sums and per-token terms, so both paths are exercised.
fn loss_of(s: &super::model::Scored) -> candle_core::Result<Tensor> {
    s.sums.sum_all()? + (s.tokens.sqr()?.sum_all()? * 0.1)?
}

/// The loss, computed without a graph.
fn loss(model: &TrainableLlama) -> Tensor {
    loss_of(&model.completion_logprobs(&seqs()).unwrap()).unwrap()
}

/// The loss and its gradients.
fn loss_grads(model: &TrainableLlama) -> (Tensor, candle_core::backprop::GradStore) {
    model.packed_backward(&packed(), |s| Ok(loss_of(s)?)).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn every_trainable_tensor_gets_a_gradient_and_frozen_weights_none() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, tied) in [("llama", true), ("qwen2", false)] {
        let path = tiny(dir.path(), arch, tied);
        for mode in [lora_all(), lora_top(), Mode::Full] {
            let model = load(&path, mode.clone(), DType::F32);
            randomize_lora_b(&model, 1);
            let vars = model.trainable();
            assert!(!vars.is_empty());
            let (_, grads) = loss_grads(&model);
            for (name, var) in &vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{arch} {}: no gradient for {name}", mode.name()));
                let norm = scalar(&g.abs().unwrap().sum_all().unwrap());
                assert!(norm > 0.0, "{arch} {}: zero gradient for {name}", mode.name());
            }
            if let Mode::Lora(cfg) = &mode {
                // Only the adapters: no gradient was computed for any frozen weight.
                let blocks = cfg.top_layers.unwrap_or(model.config.n_layer);
                let n_lora = blocks * 7 * 2;
                assert_eq!(vars.len(), n_lora);
                let top = format!("blk.{}.", model.config.n_layer - 1);
                assert!(blocks > 1 || vars.iter().all(|(n, _)| n.starts_with(&top)));
                let grads_len = vars.iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some());
                assert_eq!(grads_len.count(), n_lora);
            } else {
                let expected = 2
                    + model.config.n_layer * 9
                    + usize::from(!tied)
                    + if arch == "qwen2" { model.config.n_layer * 3 } else { 0 };
                assert_eq!(vars.len(), expected, "{arch}");
            }
        }
    }
}

#[test]
fn auto_checkpointing_recomputes_exactly_the_batches_over_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), "llama", true);
    let mut model = load(&path, lora_all(), DType::F32);
    let kept = model.kept_activation_bytes(2, 64);
    // Fused attention keeps nothing that grows with T²: twice the tokens, twice the bytes.
    assert_eq!(model.kept_activation_bytes(2, 128), 2 * kept);
    // Dense attention keeps its score rows: twice the tokens keep more than twice the bytes.
    model.set_fused_ops(false);
    assert!(model.kept_activation_bytes(2, 128) > 2 * model.kept_activation_bytes(2, 64));
    model.set_fused_ops(true);
    assert_eq!(model.kept_activation_bytes(4, 64), 2 * kept);
    // Adapters only on top keep only the blocks from there up; a frozen model keeps none.
    let top = load(&path, lora_top(), DType::F32);
    assert!(top.kept_activation_bytes(2, 64) < kept && top.kept_activation_bytes(2, 64) > 0);
    assert_eq!(load(&path, Mode::Frozen, DType::F32).kept_activation_bytes(2, 64), 0);
    assert_eq!(Checkpointing::default(), Checkpointing::Auto);
    model.set_activation_budget(kept);
    assert!(!model.recomputes(2, 64), "at the budget: kept");
    assert!(model.recomputes(2, 65), "over it: recomputed");
    model.set_checkpointing(Checkpointing::Off);
    assert!(!model.recomputes(64, 4096));
    model.set_checkpointing(Checkpointing::On);
    assert!(model.recomputes(1, 2));
    for (text, want) in
        [("auto", Checkpointing::Auto), ("on", Checkpointing::On), ("off", Checkpointing::Off)]
    {
        assert_eq!(text.parse::<Checkpointing>().unwrap(), want);
        assert_eq!(want.to_string(), text);
    }
    let err = "sometimes".parse::<Checkpointing>().unwrap_err();
    assert!(err.contains("sometimes") && err.contains("auto, on, off"), "{err}");
}

#[test]
fn checkpointed_gradients_equal_the_plain_backward() {
    use candle_core::Var;
    let dir = tempfile::tempdir().unwrap();
    let packed = [
        Packed {
            prompt: vec![1, 40, 41, 42, 43, 2, 1],
            completions: vec![vec![50, 51, 2], vec![52]],
        },
        Packed { prompt: vec![1, 60, 61], completions: vec![vec![70, 71, 72, 73, 74, 2]] },
    ];
    let ends = [Packed { prompt: vec![1, 40, 41], completions: vec![vec![42, 43], vec![44]] }];
    for (arch, tied) in [("llama", true), ("qwen2", false)] {
        let path = tiny(dir.path(), arch, tied);
        for mode in [lora_all(), lora_top(), Mode::Full] {
            let mut model = load(&path, mode.clone(), DType::F64);
            randomize_lora_b(&model, 5);
            let h = model.config.hidden as f64;
            let w = (Tensor::arange(0f64, h, &Device::Cpu).unwrap() * 0.01).unwrap();
            let head = Var::from_tensor(&w).unwrap();
            let run = |model: &TrainableLlama| {
                let (a, ga) = model.packed_backward(&packed, |s| Ok(loss_of(s)?)).unwrap();
                let (b, gb) = model
                    .packed_last_hidden_backward(&ends, std::slice::from_ref(&head), |h| {
                        Ok(h.matmul(&head.as_tensor().unsqueeze(1)?)?.sqr()?.sum_all()?)
                    })
                    .unwrap();
                (scalar(&a), ga, scalar(&b), gb)
            };
            let plain = run(&model);
            // `Auto` over a budget of nothing recomputes every batch, as `On` does.
            if arch == "llama" {
                model.set_checkpointing(Checkpointing::On);
            } else {
                model.set_checkpointing(Checkpointing::Auto);
                model.set_activation_budget(0);
            }
            let ckpt = run(&model);
            let what = format!("{arch} {}", mode.name());
            assert!((plain.0 - ckpt.0).abs() < 1e-12, "{what}: loss");
            assert!((plain.2 - ckpt.2).abs() < 1e-12, "{what}: loss");
            let mut vars: Vec<(String, Var)> = model.trainable();
            vars.push(("head".into(), head.clone()));
            for (name, var) in &vars {
                for (p, c) in [(&plain.1, &ckpt.1), (&plain.3, &ckpt.3)] {
                    let (Some(p), Some(c)) = (p.get(var.as_tensor()), c.get(var.as_tensor()))
                    else {
                        // The head is only in the second loss, an untied output layer only in
                        // the first; every other tensor is in both.
                        assert!(name == "head" || name == "output.weight", "{what}: {name}");
                        assert!(
                            p.get(var.as_tensor()).is_none() && c.get(var.as_tensor()).is_none()
                        );
                        continue;
                    };
                    let diff = scalar(&(p - c).unwrap().abs().unwrap().max_all().unwrap());
                    let size = scalar(&p.abs().unwrap().max_all().unwrap());
                    assert!(size > 0.0, "{what}: {name} has a zero gradient");
                    assert!(diff <= 1e-9 * size.max(1.0), "{what}: {name} differs by {diff}");
                }
            }
        }
    }
}

/// The fused ops (attention, LoRA projections; f32 on the CPU, the default) against candle's
/// ops with a dense mask, through the whole model: packed rows with two completions and
/// padding, every trainable tensor's gradient, with and without checkpointing.
#[test]
fn fused_ops_train_as_candles_ops_do() {
    let dir = tempfile::tempdir().unwrap();
    let packed = [
        Packed {
            prompt: vec![1, 40, 41, 42, 43, 2, 1, 44, 45, 46],
            completions: vec![vec![50, 51, 2], vec![52, 53, 54, 55]],
        },
        Packed { prompt: vec![1, 60, 61], completions: vec![vec![70, 71, 72, 73, 74, 2]] },
    ];
    for (arch, tied) in [("llama", true), ("qwen2", false)] {
        let path = tiny(dir.path(), arch, tied);
        let mut model = load(&path, lora_all(), DType::F32);
        randomize_lora_b(&model, 9);
        let run =
            |model: &TrainableLlama| model.packed_backward(&packed, |s| Ok(loss_of(s)?)).unwrap();
        assert!(model.fuses_attention());
        let fused = run(&model);
        model.set_checkpointing(Checkpointing::On);
        let fused_ckpt = run(&model);
        model.set_checkpointing(Checkpointing::Off);
        model.set_fused_ops(false);
        assert!(!model.fuses_attention());
        let dense = run(&model);
        let (lf, ld) = (scalar(&fused.0), scalar(&dense.0));
        assert!((lf - ld).abs() <= 1e-5 * ld.abs().max(1.0), "{arch}: loss {lf} vs {ld}");
        assert!((lf - scalar(&fused_ckpt.0)).abs() <= 1e-6 * lf.abs().max(1.0), "{arch}");
        for (name, var) in model.trainable() {
            let d = dense.1.get(var.as_tensor()).unwrap();
            let size = scalar(&d.abs().unwrap().max_all().unwrap()).max(1e-6);
            for (what, g) in [("fused", &fused.1), ("checkpointed", &fused_ckpt.1)] {
                let g = g.get(var.as_tensor()).unwrap();
                let diff = scalar(&(g - d).unwrap().abs().unwrap().max_all().unwrap());
                assert!(diff <= 1e-3 * size, "{arch} {what}: {name} differs by {diff} of {size}");
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), "llama", true);
    for mode in [lora_all(), Mode::Full] {
        let model = load(&path, mode.clone(), DType::F64);
        randomize_lora_b(&model, 2);
        let vars = model.trainable();
        let (_, grads) = loss_grads(&model);
        // A few entries of a few tensors: first, middle and last of the list.
        let picks = [0, vars.len() / 3, vars.len() / 2, vars.len() - 1];
        for &vi in &picks {
            let (name, var) = &vars[vi];
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f64>().unwrap();
            let n = g.len();
            for &ei in &[0, n / 2, n - 1] {
                let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[ei] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    var.set(&t).unwrap();
                    scalar(&loss(&model))
                };
                let h = 1e-5;
                let numeric = (eval(h) - eval(-h)) / (2.0 * h);
                var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let analytic = g[ei];
                // Relative error, with an absolute floor for the rounding noise of the
                // difference quotient (~1e-16 · |loss| / h).
                let err = (numeric - analytic).abs();
                assert!(
                    err < 1e-4 * numeric.abs().max(analytic.abs()) + 1e-7,
                    "{} {name}[{ei}]: analytic {analytic} vs numeric {numeric}",
                    mode.name()
                );
            }
        }
    }
}

/// Logits of the engine (F32 weights, its own attention) for the last token of `tokens`.
fn engine_last_logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let loaded = LlamaModel::load(path, &Device::Cpu).unwrap();
    let mut cache = loaded.model.new_cache(tokens.len()).unwrap();
    let out = loaded.model.forward(&mut [(tokens, &mut cache)]).unwrap();
    out.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
}

/// How far the CPU engine's logits may be from the f32 trainer's: the engine computes prompt
/// rows with f16 weights and generated rows with 8-bit weights, whatever the file stores.
const ENGINE_TOLERANCE: f32 = 0.25;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn trainer_logits_match_the_engine_and_do_not_depend_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, tied) in [("llama", true), ("qwen2", false)] {
        let path = tiny(dir.path(), arch, tied);
        let model = load(&path, Mode::Frozen, DType::F32);
        let long: Vec<u32> = (0..40).map(|i| 3 + (i * 7) % 250).collect();
        let short: Vec<u32> = vec![1, 100, 101, 102, 2];
        let v = model.config.vocab_size;
        let batch = model.logits(&[&long, &short]).unwrap(); // (2, 40, V)
        let alone = model.logits(&[&short]).unwrap();
        let row = |t: &Tensor, b: usize, p: usize| {
            t.get(b).unwrap().get(p).unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(batch.dims(), &[2, 40, v]);
        // Padding never leaks into real positions.
        assert!(max_abs_diff(&row(&batch, 1, 4), &row(&alone, 0, 4)) < 1e-5);
        // The engine agrees at the last position of each sequence.
        let e_long = engine_last_logits(&path, &long);
        let e_short = engine_last_logits(&path, &short);
        let d1 = max_abs_diff(&row(&batch, 0, 39), &e_long);
        let d2 = max_abs_diff(&row(&batch, 1, 4), &e_short);
        // The CPU engine runs prompt rows through an f16 GEMM and generated rows through 8-bit
        // weights (issue 15), so it agrees with the f32 trainer within that rounding, not 1e-4.
        assert!(d1 < ENGINE_TOLERANCE && d2 < ENGINE_TOLERANCE, "{arch}: {d1} {d2}");
    }
}

#[test]
fn export_reads_back_in_the_engine_with_the_trainers_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), "llama", true);
    let model = load(&path, lora_all(), DType::F32);
    randomize_lora_b(&model, 4);
    let tokens: Vec<u32> = (0..24).map(|i| 3 + (i * 11) % 250).collect();
    let trainer = model.logits(&[&tokens]).unwrap().get(0).unwrap().get(23).unwrap();
    let trainer = trainer.to_vec1::<f32>().unwrap();
    // The adapters change the model.
    let mut base = load(&path, lora_all(), DType::F32);
    base.set_adapters(false);
    let base_logits = base.logits(&[&tokens]).unwrap().get(0).unwrap().get(23).unwrap();
    assert!(max_abs_diff(&trainer, &base_logits.to_vec1::<f32>().unwrap()) > 1e-2);

    let out = dir.path().join("out/exported.gguf");
    let extra = vec![(
        "rrm.policy.method".to_string(),
        candle_core::quantized::gguf_file::Value::String("test".into()),
    )];
    write_gguf(&model, &out, ExportFormat::F32, &extra).unwrap();
    let e = engine_last_logits(&out, &tokens);
    let d = max_abs_diff(&trainer, &e);
    assert!(d < ENGINE_TOLERANCE, "f32 export: {d}");
    // The metadata (tokenizer, template, our keys) survived.
    let loaded = LlamaModel::load(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded.tokenizer.encode("<|im_start|>the").unwrap()[0], 1);
    let mut f = std::fs::File::open(&out).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    assert!(content.metadata.contains_key("tokenizer.chat_template"));
    assert!(content.metadata.contains_key("rrm.policy.method"));
    // Q8_0: same argmax, small differences (the engine quantizes weights and activations).
    write_gguf(&model, &out, ExportFormat::Q8_0, &[]).unwrap();
    let q = engine_last_logits(&out, &tokens);
    let argmax =
        |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
    assert_eq!(argmax(&q), argmax(&trainer));
    assert!(max_abs_diff(&trainer, &q) < 0.5, "q8_0 export: {}", max_abs_diff(&trainer, &q));
}

#[test]
fn a_model_that_is_not_llama_family_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi.gguf");
    let o = TinyOptions { arch: "phi2", ..TinyOptions::default() };
    tiny_gguf(&path, 1, &o).unwrap();
    let err = TrainableLlama::load(&path, &Device::Cpu, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("phi2") && msg.contains("llama-family") && msg.contains("phi.gguf"),
        "{msg}"
    );
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let msg =
        TrainableLlama::load(&junk, &Device::Cpu, &LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("junk.gguf"), "{msg}");
}

#[test]
fn bad_sequences_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), "llama", true);
    let model = load(&path, lora_all(), DType::F32);
    assert!(model.completion_logprobs(&[SeqSpec { tokens: vec![1, 2], start: 2 }]).is_err());
    assert!(model.completion_logprobs(&[SeqSpec { tokens: vec![1, 99999], start: 1 }]).is_err());
    assert!(model.logits(&[]).is_err());
    let long = vec![5u32; 600];
    assert!(model.logits(&[&long]).unwrap_err().to_string().contains("context"));
}

#[test]
fn packed_completions_score_as_separate_sequences() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, tied) in [("llama", true), ("qwen2", false)] {
        let path = tiny(dir.path(), arch, tied);
        let model = load(&path, lora_all(), DType::F32);
        randomize_lora_b(&model, 5);
        let prompt = vec![1u32, 30, 31, 32, 33, 34, 2, 1];
        let completions = vec![vec![90u32, 91, 92, 2], vec![80u32, 81, 2], vec![70u32]];
        let packed = vec![
            super::Packed { prompt: prompt.clone(), completions: completions.clone() },
            super::Packed { prompt: vec![1, 5], completions: vec![vec![6, 7]] },
        ];
        let got = model.packed_logprobs(&packed).unwrap();
        assert_eq!(got.counts, vec![4, 3, 1, 2]);
        let mut seqs: Vec<SeqSpec> = completions.iter().map(|c| SeqSpec::new(&prompt, c)).collect();
        seqs.push(SeqSpec::new(&[1, 5], &[6, 7]));
        let want = model.completion_logprobs(&seqs).unwrap();
        let (g, w) = (got.sums.to_vec1::<f32>().unwrap(), want.sums.to_vec1::<f32>().unwrap());
        assert!(max_abs_diff(&g, &w) < 1e-4, "{arch}: {g:?} vs {w:?}");
        let (g, w) = (got.tokens.to_vec1::<f32>().unwrap(), want.tokens.to_vec1::<f32>().unwrap());
        assert!(max_abs_diff(&g, &w) < 1e-4, "{arch}");
    }
}

/// A trained adapter written as PEFT and read back into a model whose own adapters started
/// elsewhere gives the same log-probabilities: `B`'s Q/K rows go back into the GGUF order
/// (llama) or stay (qwen2), and a different alpha is folded into `B`.
#[test]
fn a_peft_adapter_loads_into_the_trainers_adapters() {
    use crate::infer::hf::{export_peft, read_adapter, PeftExport};
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let path = tiny(dir.path(), arch, false);
        let trained = load(&path, lora_all(), DType::F32);
        randomize_lora_b(&trained, 11);
        let tensors: HashMap<String, Tensor> =
            trained.trainable().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let out = dir.path().join(format!("{arch}-peft"));
        let export = PeftExport {
            rank: 4,
            alpha: 8.0,
            layers: None,
            base_ref: "tiny".into(),
            tensors: &tensors,
        };
        export_peft(&path, &export, &out).unwrap();
        let adapter = read_adapter(&out).unwrap();

        // Another seed, and alpha 4 instead of 8: loading must still reproduce the adapter.
        let other = Mode::Lora(LoraConfig {
            rank: 4,
            alpha: 4.0,
            targets: Target::ALL.to_vec(),
            seed: 99,
            top_layers: None,
        });
        let fresh = load(&path, other, DType::F32);
        let before = scalar(&(loss(&fresh) - loss(&trained)).unwrap().abs().unwrap());
        assert!(before > 1e-4, "{arch}: the two models must differ before loading");
        let set = super::peft::load_peft_adapter(&fresh, &adapter).unwrap();
        assert_eq!(set, 7 * fresh.config.n_layer);
        let a = fresh.packed_logprobs(&packed()).unwrap().tokens.to_vec1::<f32>().unwrap();
        let b = trained.packed_logprobs(&packed()).unwrap().tokens.to_vec1::<f32>().unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5, "{arch}: {}", max_abs_diff(&a, &b));

        // An adapter of another rank is refused, naming the module.
        let rank2 = Mode::Lora(LoraConfig { rank: 2, ..LoraConfig::default() });
        let err = super::peft::load_peft_adapter(&load(&path, rank2, DType::F32), &adapter)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank or shape differ") && err.contains("model.layers."), "{err}");
    }
}
