//! Training tests on tiny random models: SFT overfits a batch, DPO learns its pairs from a
//! reference computed once, a stopped run resumes to the same weights, registration.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::data::{Encoded, Encoder, Prompt};
use super::train::{train, Observer, Quiet, TrainConfig};
use super::{registry, Method, PolicyError};
use crate::infer::testing::tiny_llama_gguf;
use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::export::ExportFormat;
use crate::lm::model::{LoadOptions, Mode, TrainableLlama};
use crate::lm::{LoraConfig, Target};

fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    tiny_llama_gguf(&p, 11).unwrap();
    p
}

fn lora(rank: usize) -> Mode {
    Mode::Lora(LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        targets: Target::ALL.to_vec(),
        seed: 1,
        top_layers: None,
    })
}

fn load(path: &Path, mode: Mode) -> (TrainableLlama, GgufTokenizer) {
    TrainableLlama::load(path, &Device::Cpu, &LoadOptions { mode, dtype: DType::F32 }).unwrap()
}

fn prompt(input: &str) -> Prompt {
    Prompt::for_node(input, 0, "g").unwrap()
}

fn fast(steps: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        lr,
        epochs: 1,
        max_steps: Some(steps),
        batch: 2,
        grad_accum: 1,
        warmup_ratio: 0.0,
        min_lr_ratio: 1.0,
        max_grad_norm: 0.0,
        checkpoint_every: 1000,
        ..TrainConfig::default()
    }
}

#[test]
fn sft_overfits_one_batch_to_near_zero_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let (mut model, tok) = load(&path, lora(16));
    let enc = Encoder::new(&tok, 512, 64).unwrap();
    let batch: Vec<Encoded> = [("a cat", "the cat sat."), ("a hat", "in the hat.")]
        .iter()
        .map(|(i, c)| enc.encode(&prompt(i), &[c]).unwrap().encoded)
        .collect();
    // Completions end with the end-of-turn token.
    assert_eq!(batch[0].completions[0].last(), Some(&enc.end_token()));
    let report = train(
        &mut model,
        Method::Sft,
        &batch,
        &batch,
        &fast(80, 1e-2),
        &dir.path().join("run"),
        None,
        &Quiet,
    )
    .unwrap();
    let first = report.steps_log[0].loss;
    let last = report.steps_log.last().unwrap().loss;
    assert!(first > 3.0, "a random model starts near ln(vocab): {first}");
    assert!(last < 0.05, "SFT did not overfit: {first} -> {last}");
    let val = &report.val_history.last().unwrap().metrics["loss"];
    assert!(*val < 0.05, "{val}");
    assert_eq!(report.steps, 80);
}

#[test]
fn a_pair_longer_than_the_limits_is_truncated_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tok) = load(&tiny(dir.path()), Mode::Frozen);
    let long = "the mill burnt down and the miller ran to the river. ".repeat(8);
    let full =
        Encoder::new(&tok, 4096, 4096).unwrap().encode(&prompt(&long), &[&long, "a"]).unwrap();
    assert!(!full.truncated);
    let enc = Encoder::new(&tok, 16, 6).unwrap();
    let cut = enc.encode(&prompt(&long), &[&long, "a"]).unwrap();
    assert!(cut.truncated);
    let (p, c) = (&cut.encoded.prompt, &cut.encoded.completions);
    // The prompt's end (where the assistant's turn opens), the chosen text's start.
    // (A leading BOS stays in front.)
    let whole = &full.encoded.prompt;
    assert_eq!(p.len(), 16);
    if tok.bos_id.is_some() && whole.first().copied() == tok.bos_id {
        assert_eq!((p[0], &p[1..]), (whole[0], &whole[whole.len() - 15..]));
    } else {
        assert_eq!(p[..], whole[whole.len() - 16..]);
    }
    assert_eq!(c[0][..], full.encoded.completions[0][..6]);
    // A short completion keeps its end token.
    assert_eq!(c[1], full.encoded.completions[1]);
    assert_eq!(c[1].last(), Some(&enc.end_token()));
}

fn pairs(enc: &Encoder<'_>) -> Vec<Encoded> {
    [
        ("the mill", "the mill burnt.", "a tea party."),
        ("a rabbit", "a rabbit ran.", "the hatter sang."),
        ("the queen", "the queen shouts.", "in the hat."),
        ("a river", "a river runs.", "then the tea."),
    ]
    .iter()
    .map(|(i, c, r)| enc.encode(&prompt(i), &[c, r]).unwrap().encoded)
    .collect()
}

#[test]
fn dpo_starts_at_ln2_against_its_reference_and_learns_the_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let (mut model, tok) = load(&path, lora(8));
    let enc = Encoder::new(&tok, 512, 64).unwrap();
    let data = pairs(&enc);
    for (smoothing, rpo) in [(0.0, 0.0), (0.1, 0.5)] {
        let cfg =
            TrainConfig { label_smoothing: smoothing, rpo_alpha: rpo, beta: 0.5, ..fast(30, 5e-3) };
        let run = dir.path().join(format!("run-{smoothing}"));
        let (mut model, _) = load(&path, lora(8));
        let r = train(&mut model, Method::Dpo, &data, &data, &cfg, &run, None, &Quiet).unwrap();
        let before = &r.val_history[0].metrics;
        // π = π_ref at the start (B = 0): z = 0, loss = ln 2 whatever the smoothing.
        let ln2 = std::f64::consts::LN_2;
        let nll = before.get("nll_chosen").copied().unwrap_or(0.0);
        assert!((before["loss"] - ln2 - rpo * nll).abs() < 1e-4, "{before:?}");
        assert!(before["margin"].abs() < 1e-4);
        let after = &r.val_history.last().unwrap().metrics;
        assert_eq!(after["reward_accuracy"], 1.0, "{after:?}");
        assert!(after["margin"] > 1.0, "{after:?}");
        assert!(run.join("reference.json").is_file());
    }
    // Wrong shapes are refused.
    let sft_like: Vec<Encoded> = data
        .iter()
        .map(|e| Encoded { prompt: e.prompt.clone(), completions: vec![e.completions[0].clone()] })
        .collect();
    let err = train(
        &mut model,
        Method::Dpo,
        &sft_like,
        &[],
        &fast(1, 1e-3),
        &dir.path().join("x"),
        None,
        &Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("2 completion"), "{err}");
    let err = train(
        &mut model,
        Method::Dpo,
        &[],
        &[],
        &fast(1, 1e-3),
        &dir.path().join("y"),
        None,
        &Quiet,
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::NoData(_)));
}

/// Stops the loop after `after` forward passes, as a kill would.
struct StopAfter {
    after: usize,
    seen: Cell<usize>,
}

impl Observer for StopAfter {
    fn stop(&self) -> bool {
        self.seen.set(self.seen.get() + 1);
        self.seen.get() >= self.after
    }
}

#[test]
fn a_stopped_run_resumes_from_its_checkpoint_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let (_, tok) = load(&path, lora(4));
    let enc = Encoder::new(&tok, 512, 64).unwrap();
    let data = pairs(&enc);
    // 4 pairs, batch 1, accumulation 2: 2 steps an epoch; 3 epochs; checkpoints every 2 steps.
    let cfg = TrainConfig {
        epochs: 3,
        max_steps: None,
        batch: 1,
        grad_accum: 2,
        checkpoint_every: 2,
        warmup_ratio: 0.2,
        min_lr_ratio: 0.1,
        max_grad_norm: 1.0,
        ..fast(1, 3e-3)
    };
    let weights = |m: &TrainableLlama| -> Vec<f32> {
        m.trainable()
            .iter()
            .flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let (mut a, _) = load(&path, lora(4));
    let full =
        train(&mut a, Method::Dpo, &data, &[], &cfg, &dir.path().join("a"), None, &Quiet).unwrap();
    assert_eq!((full.steps, full.epochs), (6, 3));
    let run_b = dir.path().join("b");
    let (mut b, _) = load(&path, lora(4));
    // 9 forward passes: step 4 (checkpointed) and half of step 5 done, then "killed".
    let stop = StopAfter { after: 9, seen: Cell::new(0) };
    let err = train(&mut b, Method::Dpo, &data, &[], &cfg, &run_b, None, &stop).unwrap_err();
    assert!(matches!(err, PolicyError::Interrupted));
    let (mut b, _) = load(&path, lora(4));
    let resumed = train(&mut b, Method::Dpo, &data, &[], &cfg, &run_b, None, &Quiet).unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(resumed.steps, 6);
    let (wa, wb) = (weights(&a), weights(&b));
    let diff = wa.iter().zip(&wb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "resumed weights differ by {diff}");
    // The loss curve continues where it stopped.
    let la: Vec<f64> = full.steps_log.iter().map(|s| s.loss).collect();
    let lb: Vec<f64> = resumed.steps_log.iter().map(|s| s.loss).collect();
    assert_eq!(la.len(), lb.len());
    assert!(la.iter().zip(&lb).all(|(x, y)| (x - y).abs() < 1e-5), "{la:?} vs {lb:?}");
    // A finished run re-run does nothing more; other settings in the same folder are refused.
    let (mut c, _) = load(&path, lora(4));
    let again = train(&mut c, Method::Dpo, &data, &[], &cfg, &run_b, None, &Quiet).unwrap();
    assert_eq!(again.steps, 6);
    let other = TrainConfig { lr: 1e-3, ..cfg };
    let err = train(&mut c, Method::Dpo, &data, &[], &other, &run_b, None, &Quiet).unwrap_err();
    assert!(err.to_string().contains("other data or settings"), "{err}");
}

#[test]
fn a_registered_policy_resolves_by_name_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let (model, _) = load(&path, lora(4));
    let models = dir.path().join("models");
    let base = crate::infer::ModelIdentity { name: "tiny".into(), hash: "abc".into() };
    let card = registry::PolicyCard::new(
        "tiny-dpo",
        base,
        Method::Dpo,
        model.mode.clone(),
        ExportFormat::Q8_0,
        serde_json::json!({}),
        registry::DataCard::default(),
    );
    let (gguf, card) = registry::register(&models, card, &model, false).unwrap();
    assert_eq!(card.sha256.len(), 64);
    let resolved = crate::infer::fetch::resolve_model("tiny-dpo", &models).unwrap();
    assert_eq!(resolved.path, gguf);
    assert_eq!(resolved.name, "tiny-dpo");
    assert_eq!(registry::list(&models).len(), 1);
    let again = registry::PolicyCard { ..card.clone() };
    let err = registry::register(&models, again, &model, false).unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert!(registry::validate_name("smollm2-135m").is_err());
    assert!(registry::validate_name("../x").is_err());
    assert!(crate::infer::llama::LlamaModel::load(&gguf, &Device::Cpu).is_ok());
}

/// Prefers shorter texts; three members that disagree a little.
struct ShortIsBetter;

impl super::judge::MemberScorer for ShortIsBetter {
    fn name(&self) -> String {
        "short".into()
    }
    fn member_scores(
        &self,
        _height: u32,
        _input: &str,
        summaries: &[&str],
    ) -> Result<Vec<Vec<f32>>, crate::reward::RewardError> {
        Ok((0..3)
            .map(|m| summaries.iter().map(|s| -(s.len() as f32) + m as f32 * 0.1).collect())
            .collect())
    }
}

#[test]
fn rm_dpo_rounds_measure_train_and_resume() {
    use super::judge::{AltLabeler, Judge};
    use super::rmdpo::{run, RmDpoConfig, RmDpoInputs};
    use super::sample::SampleOptions;
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path());
    let (mut model, tok) = load(&path, lora(4));
    let enc = Encoder::new(&tok, 512, 64).unwrap();
    let train_prompts: Vec<Prompt> =
        ["the mill", "a rabbit", "the queen"].iter().map(|i| prompt(i)).collect();
    let held: Vec<Prompt> = ["a river", "the hat"].iter().map(|i| prompt(i)).collect();
    let alt = AltLabeler::default();
    let judges: [&dyn Judge; 1] = [&alt];
    let models = dir.path().join("models");
    let sha = crate::infer::engine::file_sha256(&path).unwrap();
    let zero =
        registry::zero_step_export(&models, &path, &sha, ExportFormat::Q8_0, DType::F32).unwrap();
    let inputs = RmDpoInputs {
        reference_gguf: &zero,
        encoder: &enc,
        device: &Device::Cpu,
        train_prompts: &train_prompts,
        heldout_prompts: &held,
        scorer: &ShortIsBetter,
        judges: &judges,
        reference: None,
    };
    let cfg = RmDpoConfig {
        rounds: 2,
        sample: SampleOptions { k: 3, max_tokens: vec![12], ..SampleOptions::default() },
        pessimism: 0.5,
        kl_samples: 2,
        dpo: fast(2, 5e-3),
        ..RmDpoConfig::default()
    };
    let run_dir = dir.path().join("rounds");
    let report = run(&mut model, &inputs, &cfg, &run_dir, &Quiet).unwrap();
    assert_eq!(report.rounds.len(), 2);
    let r0 = &report.rounds[0];
    // Round 0 starts from the reference itself (its Q8_0 export is the zero-step export): KL
    // is exactly 0.
    assert_eq!(r0.start.kl.mean, 0.0);
    assert_eq!(r0.start.kl.per_token, 0.0);
    assert!(r0.start.kl.samples > 0);
    assert!(r0.start.kl.truncated <= r0.start.kl.samples);
    // The same model samples and is scored: the final KL is the Q8_0 export of the final
    // weights (what sampled) scored against the zero-step export, on the samples kept.
    let last = &report.last.kl;
    assert!(last.policy.contains("round-2") && last.policy.contains("q8_0"), "{last:?}");
    assert_eq!(last.reference, zero.file_name().unwrap().to_string_lossy());
    let kept: Vec<Vec<super::sample::Sampled>> = serde_json::from_slice(
        &std::fs::read(run_dir.join("round-2").join("kl-samples.json")).unwrap(),
    )
    .unwrap();
    let exported = dir.path().join("final.gguf");
    crate::lm::export::write_gguf(&model, &exported, ExportFormat::Q8_0, &[]).unwrap();
    let (p, _) = super::kl::load_scorer(&exported, &Device::Cpu).unwrap();
    let (r, _) = super::kl::load_scorer(&zero, &Device::Cpu).unwrap();
    let again = super::kl::estimate(&p, &r, &enc, &held, &kept).unwrap();
    assert!((again.mean - last.mean).abs() < 1e-9, "{again:?} vs {last:?}");
    assert_eq!((again.samples, again.truncated), (last.samples, last.truncated));
    // The f32 weights the policy was exported from are another model: scored on them, the
    // same samples give another number (what this estimate was before it scored the export).
    let (f32_policy, _) = {
        let f = dir.path().join("final-f32.gguf");
        crate::lm::export::write_gguf(&model, &f, ExportFormat::F32, &[]).unwrap();
        super::kl::load_scorer(&f, &Device::Cpu).unwrap()
    };
    let (base, _) = super::kl::load_scorer(&path, &Device::Cpu).unwrap();
    let f32_kl = super::kl::estimate(&f32_policy, &base, &enc, &held, &kept).unwrap();
    assert!((f32_kl.mean - last.mean).abs() > 1e-6, "{f32_kl:?} vs {last:?}");
    assert!(r0.pairs > 0 && r0.pairs <= 3);
    assert!(r0.start.heldout_judges.contains_key("sim-alt"));
    assert!(report.last.kl.samples > 0);
    // Resuming re-uses the finished rounds.
    let (mut again, _) = load(&path, lora(4));
    let resumed = run(&mut again, &inputs, &cfg, &run_dir, &Quiet).unwrap();
    // (read back from JSON: equal up to the last bits of the floats)
    assert_eq!(resumed.rounds.len(), 2);
    for (a, b) in resumed.rounds.iter().zip(&report.rounds) {
        assert_eq!(
            (a.pairs, a.uncertain_pairs, a.train_tokens),
            (b.pairs, b.uncertain_pairs, b.train_tokens)
        );
        assert!((a.start.train_reward - b.start.train_reward).abs() < 1e-9);
    }
    assert!((resumed.last.kl.mean - report.last.kl.mean).abs() < 1e-9);
}

/// A tiny llama whose weights are Q4_1, like the real base file.
fn tiny_q4_1(dir: &Path) -> PathBuf {
    use crate::infer::testing::{tiny_gguf, TinyOptions};
    let p = dir.join("tiny-q4_1.gguf");
    let o =
        TinyOptions { weights: candle_core::quantized::GgmlDType::Q4_1, ..TinyOptions::default() };
    tiny_gguf(&p, 11, &o).unwrap();
    p
}

/// Every tensor of a GGUF file, dequantized, with its stored type.
fn gguf_tensors(
    path: &Path,
) -> std::collections::BTreeMap<String, (candle_core::quantized::GgmlDType, Vec<f32>)> {
    use candle_core::quantized::gguf_file::Content;
    let mut f = std::fs::File::open(path).unwrap();
    let content = Content::read(&mut f).unwrap();
    content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let t = content.tensor(&mut f, name, &Device::Cpu).unwrap();
            let v = t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            (name.clone(), (info.ggml_dtype, v))
        })
        .collect()
}

#[test]
fn the_zero_step_export_is_the_base_exported_like_an_untrained_policy_and_cached() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_q4_1(dir.path());
    let sha = crate::infer::engine::file_sha256(&base).unwrap();
    let models = dir.path().join("models");
    let zero =
        registry::zero_step_export(&models, &base, &sha, ExportFormat::Q8_0, DType::F32).unwrap();
    assert!(zero.starts_with(models.join(registry::ZERO_STEP_DIR)), "{}", zero.display());
    // A LoRA policy exported before any training step holds exactly these weights.
    let (policy, _) = load(&base, lora(4));
    let exported = dir.path().join("untrained.gguf");
    crate::lm::export::write_gguf(&policy, &exported, ExportFormat::Q8_0, &[]).unwrap();
    let (z, e, b) = (gguf_tensors(&zero), gguf_tensors(&exported), gguf_tensors(&base));
    assert_eq!(z, e);
    // …and not the base file's: its matrices were Q4_1, the export's are Q8_0.
    let q = "blk.0.attn_q.weight";
    assert_eq!((b[q].0, z[q].0), (GgmlDType::Q4_1, GgmlDType::Q8_0));
    assert_ne!(b[q].1, z[q].1);
    // Cached by content: the same request is the same file, not written again; another
    // weight type is another file.
    let modified = std::fs::metadata(&zero).unwrap().modified().unwrap();
    let again =
        registry::zero_step_export(&models, &base, &sha, ExportFormat::Q8_0, DType::F32).unwrap();
    assert_eq!(again, zero);
    assert_eq!(std::fs::metadata(&again).unwrap().modified().unwrap(), modified);
    let f16 =
        registry::zero_step_export(&models, &base, &sha, ExportFormat::F16, DType::F32).unwrap();
    assert_ne!(f16, zero);
    // It is no trained policy: `rrm models list` does not list it.
    assert!(registry::list(&models).is_empty());
}

#[test]
fn kl_scores_the_end_token_of_stopped_samples_and_counts_cut_ones() {
    use super::kl::{estimate, estimate_files, scored_tokens};
    use super::sample::{SampleOptions, Sampled};
    use crate::infer::FinishReason;
    use crate::lm::model::Packed;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = tiny(dir.path());
    let reference_path = dir.path().join("other.gguf");
    tiny_llama_gguf(&reference_path, 12).unwrap();
    let (policy, tok) = load(&policy_path, Mode::Frozen);
    let (reference, _) = load(&reference_path, Mode::Frozen);
    let enc = Encoder::new(&tok, 4096, 4096).unwrap();
    let end = enc.end_token();
    let prompts = vec![prompt("the mill burnt")];
    let ids = |s: &str| tok.encode(s).unwrap();
    let sample = |tokens: Vec<u32>, finish: FinishReason, stop: Option<u32>| Sampled {
        text: String::new(),
        raw: String::new(),
        token_ids: tokens,
        looped: false,
        finish,
        stop_token: stop,
    };
    let other_eos = *tok.eos_ids.iter().find(|&&e| e != end).unwrap();
    let samples = vec![vec![
        // Stopped with the chat's end token; stopped with another end-of-sequence token.
        sample(ids("the cat"), FinishReason::Stop, Some(end)),
        sample(ids("a hat"), FinishReason::Stop, Some(other_eos)),
        // Stopped at once: only the end token (a sample stored before stop tokens were kept).
        sample(Vec::new(), FinishReason::Stop, None),
        // Cut at its cap: no end token.
        sample(ids("in the river"), FinishReason::Length, None),
    ]];
    let expected: Vec<Vec<u32>> = vec![
        [ids("the cat"), vec![end]].concat(),
        [ids("a hat"), vec![other_eos]].concat(),
        vec![end],
        ids("in the river"),
    ];
    let scored: Vec<Vec<u32>> = samples[0].iter().map(|s| scored_tokens(s, end).unwrap()).collect();
    assert_eq!(scored, expected);
    let row = Packed { prompt: enc.prompt(&prompts[0]).unwrap(), completions: expected.clone() };
    let lp = |m: &TrainableLlama| -> Vec<f64> {
        let s = m.packed_logprobs(std::slice::from_ref(&row)).unwrap();
        s.sums.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
    };
    let d: Vec<f64> = lp(&policy).iter().zip(lp(&reference)).map(|(a, b)| a - b).collect();
    let kl = estimate(&policy, &reference, &enc, &prompts, &samples).unwrap();
    let tokens: usize = expected.iter().map(Vec::len).sum();
    assert_eq!((kl.samples, kl.truncated), (4, 1));
    assert!((kl.mean - d.iter().sum::<f64>() / 4.0).abs() < 1e-9, "{kl:?} vs {d:?}");
    assert!((kl.per_token - d.iter().sum::<f64>() / tokens as f64).abs() < 1e-9, "{kl:?}");
    assert!((kl.mean_tokens - tokens as f64 / 4.0).abs() < 1e-12);
    // A sample cut at a cap of 0 has nothing to score.
    assert_eq!(scored_tokens(&sample(Vec::new(), FinishReason::Length, None), end), None);

    // The engine says which end token a sample stopped with (it is not in the token ids), and
    // a sample at its cap has none. (A random tiny model hardly ever stops: a few SFT steps
    // teach it a short answer and its end.)
    let (mut stops, _) = load(&policy_path, lora(8));
    let batch = vec![enc.encode(&prompts[0], &["a."]).unwrap().encoded];
    let run = dir.path().join("sft");
    train(&mut stops, Method::Sft, &batch, &[], &fast(15, 1e-2), &run, None, &Quiet).unwrap();
    let exported = dir.path().join("stops.gguf");
    crate::lm::export::write_gguf(&stops, &exported, ExportFormat::F32, &[]).unwrap();
    let options = SampleOptions::pure(48, vec![24], 3);
    let (kl, drawn) =
        estimate_files(&exported, &policy_path, &Device::Cpu, &prompts, &options).unwrap();
    let (stopped, cut): (Vec<&Sampled>, Vec<&Sampled>) =
        drawn[0].iter().partition(|s| s.finish == FinishReason::Stop);
    assert!(!stopped.is_empty(), "{drawn:?}");
    for s in &stopped {
        let t = s.stop_token.expect("a stopped sample names its end token");
        assert!(tok.eos_ids.contains(&t) && !s.token_ids.contains(&t), "{s:?}");
    }
    assert!(cut.iter().all(|s| s.stop_token.is_none() && s.token_ids.len() == 24));
    assert_eq!((kl.samples, kl.truncated), (48, cut.len()));
    assert_eq!((kl.policy.as_str(), kl.reference.as_str()), ("stops.gguf", "tiny.gguf"));
    // Scored on the file that sampled, with every stopped sample's end token.
    let tokens: usize = drawn[0].iter().map(|s| scored_tokens(s, end).unwrap().len()).sum();
    assert!((kl.mean_tokens - tokens as f64 / 48.0).abs() < 1e-12, "{kl:?}");
    assert_eq!(tokens, drawn[0].iter().map(|s| s.token_ids.len()).sum::<usize>() + stopped.len());
}
