use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};

use super::pack::{encode, end_token, head_of, head_scores, pack, score_rows};
use super::*;
use crate::compose::{Candidate, Selector};
use crate::feedback::learn::{Kinds, Rating};
use crate::feedback::Pair;
use crate::infer::testing::{tiny_gguf, TinyOptions};
use crate::lm::model::LoadOptions;
use crate::lm::observe::{EvalLog, Observer, StepLog};
use crate::lm::{LoraConfig, Mode, Packed};
use crate::reward::train::bt_loss_weighted;
use crate::reward::CARD_FILE;

fn tiny(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    tiny_gguf(&path, 7, &TinyOptions::default()).unwrap();
    path
}

/// Chosen summaries contain "zebra", rejected ones never do.
fn separable() -> Vec<Pair> {
    separable_pairs(8)
}

/// `n` such pairs, each its own group.
fn separable_pairs(n: usize) -> Vec<Pair> {
    (0..n)
        .map(|i| {
            let input = format!("passage number {i} about animals");
            let (c, r) = (format!("zebra zebra {i}"), format!("cat dog {i}"));
            Pair::new(0, &input, &c, &r, 1.0, &format!("g{i}"))
        })
        .collect()
}

fn config() -> LmTrainConfig {
    LmTrainConfig {
        mode: Mode::Lora(LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() }),
        members: 2,
        steps: Some(40),
        batch_pairs: 4,
        lr: 1e-2,
        head_lr: 5e-2,
        max_tokens: 256,
        val_percent: 0,
        test_percent: 0,
        ..LmTrainConfig::default()
    }
}

/// Pairs that teach nothing (ties) and Likert ratings that do: the ordinal targets alone
/// order the summaries.
#[test]
fn likert_ratings_teach_through_the_ordinal_loss() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let ties: Vec<Pair> = separable().into_iter().map(|p| Pair { target: 0.5, ..p }).collect();
    let ratings: Vec<Rating> = (0..8)
        .flat_map(|i| {
            let input = format!("passage number {i} about animals");
            [(format!("zebra zebra {i}"), 7), (format!("cat dog {i}"), 1)].map(|(s, o)| Rating {
                height: 0,
                input: input.clone(),
                summary: s,
                overall: o,
                labeler: "l".into(),
                group: format!("g{i}"),
                weight: 1.0,
            })
        })
        .collect();
    let c = LmTrainConfig { members: 1, ordinal_weight: 1.0, ..config() };
    let model = LmRewardModel::train(&base, &ties, &ratings, &c, "test").unwrap();
    assert_eq!(model.card.train_ratings, 16);
    let s =
        model.member_scores(0, "passage number 3 about animals", &["zebra zebra 3", "cat dog 3"]);
    let s = s.unwrap();
    assert!(s[0][0] > s[0][1] + 0.5, "{s:?}");
    // The same through a linear probe alone: the ratings' features train the head too.
    let probe = LmTrainConfig { steps: Some(0), probe_epochs: 40, ..c.clone() };
    let model = LmRewardModel::train(&base, &ties, &ratings, &probe, "test").unwrap();
    let s =
        model.member_scores(0, "passage number 5 about animals", &["zebra zebra 5", "cat dog 5"]);
    let s = s.unwrap();
    assert!(s[0][0] > s[0][1] + 0.5, "probe: {s:?}");
    // Without the ordinal loss the ties teach no order.
    let c = LmTrainConfig { ordinal_weight: 0.0, ..c };
    let model = LmRewardModel::train(&base, &ties, &ratings, &c, "test").unwrap();
    assert_eq!(model.card.train_ratings, 0);
}

/// What a training run told its observer.
#[derive(Default)]
struct Recorder(Mutex<Recorded>);
#[derive(Default)]
struct Recorded {
    started: Vec<usize>,
    steps: Vec<usize>,
    evals: Vec<(usize, f64)>,
    messages: Vec<String>,
}
impl Observer for Recorder {
    fn started(&self, total: usize, _: Option<usize>) {
        self.0.lock().unwrap().started.push(total);
    }
    fn step(&self, log: &StepLog) {
        assert!(log.loss.is_finite() && log.tokens > 0 && log.metrics["pairs"] > 0.0);
        self.0.lock().unwrap().steps.push(log.step);
    }
    fn eval(&self, log: &EvalLog) {
        self.0.lock().unwrap().evals.push((log.step, log.metrics["log_loss"]));
    }
    fn message(&self, text: &str) {
        self.0.lock().unwrap().messages.push(text.to_string());
    }
}

#[test]
fn validation_groups_choose_the_checkpoint_and_test_groups_give_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let pairs = separable_pairs(16);
    let c = LmTrainConfig {
        members: 1,
        val_percent: 25,
        test_percent: 25,
        eval_every: Some(10),
        ..config()
    };
    let seen = Recorder::default();
    let model = LmRewardModel::train_observed(&base, &pairs, &[], &c, "test", &seen).unwrap();
    let card = &model.card;
    assert!(card.held_out && !card.test_groups.is_empty() && !card.val_groups.is_empty());
    // The observer saw every step once, in order, and each validation the card logs.
    let seen = seen.0.into_inner().unwrap();
    let total = c.steps.unwrap();
    assert_eq!(seen.started, vec![total]);
    assert_eq!(seen.steps, (1..=total).collect::<Vec<_>>());
    assert_eq!(seen.evals, card.validation_curve[0]);
    assert!(seen.messages[0].contains("training pairs"), "{:?}", seen.messages);
    assert!(card.test_groups.iter().all(|g| !card.val_groups.contains(g)));
    let held = card.test_groups.len() + card.val_groups.len();
    assert_eq!(card.train_pairs, 16 - held);
    // Validated after steps 10, 20, 30, 40; the kept step has the lowest log-loss.
    let curve = &card.validation_curve[0];
    assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![10, 20, 30, 40]);
    let best = curve.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(card.best_step, vec![best.0]);
    // The kept weights are the validated ones: before the temperature, the validation
    // pairs give the logged log-loss; the temperature fitted on them only lowers it.
    let val: Vec<Pair> =
        pairs.iter().filter(|p| card.val_groups.contains(&p.group)).cloned().collect();
    let raw = card.validation_log_loss_uncalibrated.unwrap();
    assert!((raw - best.1).abs() < 1e-4, "{raw} vs {best:?}");
    // Four validation pairs are too few to fit a temperature on.
    assert!(val.len() < crate::reward::train::MIN_TEMPERATURE_PAIRS);
    assert!(!card.temperature_fitted && card.temperature == 1.0, "{card:?}");
    let again = model.evaluate(&val).unwrap()["all"].log_loss;
    assert!(again <= raw + 1e-6, "{again} vs {raw}");
    assert!((again - card.validation_metrics["all"].log_loss).abs() < 1e-5);
    // The metrics are on the test groups, with the baselines beside them.
    let test = card.metrics["all"].pairs;
    assert_eq!(test, pairs.iter().filter(|p| card.test_groups.contains(&p.group)).count());
    assert_eq!(card.report.as_ref().unwrap().all.model.pairs, test);
    assert_eq!(card.metrics["all"].accuracy, 1.0, "{card:?}");
}

/// A probe alone (0 steps) keeps the validated pass's head, which scores through the whole
/// model exactly as it did on the features; fine-tuning then starts from it (step 0).
#[test]
fn a_linear_probe_is_validated_like_a_step_and_fine_tuning_starts_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let pairs = separable_pairs(16);
    let c =
        LmTrainConfig { members: 1, steps: Some(0), probe_epochs: 30, val_percent: 25, ..config() };
    let model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
    let card = &model.card;
    assert_eq!(card.best_step, vec![0]);
    assert!((1..=30).contains(&card.probe_epoch[0]), "{card:?}");
    let curve = &card.validation_curve[0];
    assert_eq!(curve.len(), 1);
    assert_eq!(curve[0].0, 0);
    // The head folded back out of standardised coordinates gives the probe's validation
    // log-loss through the full forward pass.
    let raw = card.validation_log_loss_uncalibrated.unwrap();
    assert!((raw - curve[0].1).abs() < 1e-3, "model {raw} vs probe {:?}", curve[0]);
    assert!(raw < 0.3, "{raw}");
    let train: Vec<Pair> =
        pairs.iter().filter(|p| !card.val_groups.contains(&p.group)).cloned().collect();
    assert!(model.margins(&train).unwrap().iter().all(|&d| d > 0.0));
    assert!(card.probe_seconds > 0.0 && card.train_seconds >= 0.0);
    // Probe, then fine-tuning: validated at step 0 (the probe) and after steps 5 and 10.
    let c = LmTrainConfig { steps: Some(10), eval_every: Some(5), ..c };
    let model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
    let curve = &model.card.validation_curve[0];
    assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 5, 10]);
    let best = curve.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(model.card.best_step, vec![best.0]);
    // No steps and no probe: nothing to train.
    let c = LmTrainConfig { steps: Some(0), probe_epochs: 0, ..c };
    let err = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap_err().to_string();
    assert!(err.contains("probe"), "{err}");
}

/// Smoothed targets stop the margins near `ln((1−ε/2)/(ε/2))`; validation pairs are only
/// those of the kinds asked for, from the validation groups.
#[test]
fn label_smoothing_bounds_margins_and_validation_keeps_its_kinds() {
    use crate::feedback::Origin;
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    // Eight groups, each with a demonstration pair and a synthetic one.
    let pairs: Vec<Pair> = separable()
        .into_iter()
        .flat_map(|p| {
            [Origin::Demonstration, Origin::Synthetic].map(|origin| Pair {
                origin,
                chosen: format!("{} {origin:?}", p.chosen),
                ..p.clone()
            })
        })
        .collect();
    let synthetic = Kinds::parse("synthetic").unwrap();
    let c = LmTrainConfig { members: 1, steps: Some(60), val_percent: 25, ..config() };
    let margin = |eps: f32| {
        let c = LmTrainConfig { label_smoothing: eps, val_kinds: synthetic, ..c.clone() };
        let model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
        let groups = &model.card.val_groups;
        assert!(!groups.is_empty());
        // One synthetic pair per validation group was validated on, not its demonstration.
        assert_eq!(model.card.validation_metrics["all"].pairs, groups.len());
        let train: Vec<Pair> =
            pairs.iter().filter(|p| !groups.contains(&p.group)).cloned().collect();
        let m = model.margins(&train).unwrap();
        assert!(m.iter().all(|&d| d > 0.0), "ε {eps}: {m:?}");
        m.iter().sum::<f32>() / m.len() as f32
    };
    let (plain, smoothed) = (margin(0.0), margin(0.5));
    let optimum = 3f32.ln();
    assert!(smoothed < optimum + 0.6, "smoothed {smoothed}, optimum {optimum}");
    assert!(plain > smoothed + 1.0, "plain {plain}, smoothed {smoothed}");
    // Kinds absent from the validation groups: an error, not a silent run without one.
    let c = LmTrainConfig { val_kinds: Kinds::parse("comparison").unwrap(), ..c };
    let err = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap_err().to_string();
    assert!(err.contains("validation kinds (comparison)"), "{err}");
    let c = LmTrainConfig { label_smoothing: 1.0, ..c };
    assert!(LmRewardModel::train(&base, &pairs, &[], &c, "test").is_err());
}

#[test]
fn bt_loss_falls_to_full_train_accuracy_and_save_load_gives_identical_scores() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let pairs = separable();
    let mut model = LmRewardModel::train(&base, &pairs, &[], &config(), "test").unwrap();
    assert_eq!(model.members.len(), 2);
    // Members differ (seeds), and the head moved off its tiny initialisation.
    let head = |m: &LmMember| m.head_w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(head(&model.members[0]), head(&model.members[1]));
    let all = &model.card.metrics["all"];
    assert_eq!(all.accuracy, 1.0, "{:?} loss {:?}", all, model.card.final_loss);
    assert!(model.card.final_loss.iter().all(|&l| l < 0.5), "{:?}", model.card.final_loss);
    let input = "passage number 3 about animals";
    let s = model.member_scores(0, input, &["zebra zebra 3", "cat dog 3"]).unwrap();
    let ckpt = model.save(&dir.path().join("rm")).unwrap();
    assert!(is_lm_checkpoint(&ckpt));
    let loaded = LmRewardModel::load(&ckpt, None).unwrap();
    let t = loaded.member_scores(0, input, &["zebra zebra 3", "cat dog 3"]).unwrap();
    assert_eq!(s, t);
    assert!(s.iter().all(|m| m[0] > m[1]), "{s:?}");
    // Through the selector: one score per candidate, mean − λ·std.
    let sel = LmRewardSelector::new(std::sync::Arc::new(loaded), 1.0);
    let cands: Vec<Candidate> = ["zebra zebra 3", "cat dog 3"]
        .iter()
        .map(|t| Candidate {
            text: t.to_string(),
            raw_text: t.to_string(),
            completion_tokens: 3,
            mean_logprob: None,
            sum_logprob: None,
            finish: crate::infer::FinishReason::Stop,
            looped: false,
            seed: 0,
        })
        .collect();
    let scores = sel.score(0, input, &cands).unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores[0].score > scores[1].score);

    // A checkpoint from before heads per height (head saved as `(hidden,)`, no `heads` on
    // the card) loads and scores the same.
    let weights = ckpt.join(LM_WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for m in 0..2 {
        let name = format!("m{m}.head.weight");
        let flat = tensors[&name].flatten_all().unwrap();
        tensors.insert(name, flat);
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let card_path = ckpt.join(CARD_FILE);
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
    card.as_object_mut().unwrap().remove("heads");
    let bytes = std::fs::read(&weights).unwrap();
    card["hash"] = blake3::hash(&bytes).to_hex()[..16].into();
    std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
    let old = LmRewardModel::load(&ckpt, None).unwrap();
    assert_eq!(old.card.heads, 1);
    assert_eq!(old.member_scores(0, input, &["zebra zebra 3", "cat dog 3"]).unwrap(), s);
}

/// The engine's forward (f16 GEMM, blockwise attention, the prompt once per packed row and
/// the cache cut back between completions) scores as the trainer's does: LoRA members each
/// merged, and a frozen backbone shared by every member; one node's candidates and many
/// pairs at once.
#[test]
fn engine_scores_equal_the_trainers() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let pairs = separable();
    let mut lora = LmRewardModel::train(&base, &pairs, &[], &config(), "test").unwrap();
    let ckpt = lora.save(&dir.path().join("rm")).unwrap();
    // The same heads on the frozen backbone (what `rrm reward import` makes): the adapters
    // dropped from the checkpoint, the card's mode frozen.
    let weights = ckpt.join(LM_WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let heads: HashMap<String, Tensor> =
        tensors.into_iter().filter(|(n, _)| n.contains(".head.")).collect();
    let frozen_dir = dir.path().join("frozen");
    std::fs::create_dir_all(&frozen_dir).unwrap();
    candle_core::safetensors::save(&heads, frozen_dir.join(LM_WEIGHTS_FILE)).unwrap();
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join(CARD_FILE)).unwrap()).unwrap();
    card["config"]["mode"] = serde_json::json!({"mode": "frozen"});
    let bytes = std::fs::read(frozen_dir.join(LM_WEIGHTS_FILE)).unwrap();
    card["hash"] = blake3::hash(&bytes).to_hex()[..16].into();
    std::fs::write(frozen_dir.join(CARD_FILE), serde_json::to_vec(&card).unwrap()).unwrap();
    let frozen = LmRewardModel::load(&frozen_dir, None).unwrap();

    for (name, mut model) in [("lora", lora), ("frozen", frozen)] {
        let input = "passage number 3 about animals, and then a longer tail of words";
        let cands = ["zebra zebra 3", "cat dog 3", "a zebra and a cat and a dog 3"];
        let engine = model.member_scores(0, input, &cands).unwrap();
        let engine_margins = model.margins(&pairs).unwrap();
        model.set_scoring(Scoring::Trainer);
        let trainer = model.member_scores(0, input, &cands).unwrap();
        let trainer_margins = model.margins(&pairs).unwrap();
        let gap =
            |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let spread = trainer.iter().flatten().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        eprintln!("{name}: engine {engine:?} trainer {trainer:?}");
        for (e, t) in engine.iter().zip(&trainer) {
            assert!(gap(e, t) < 1e-2 * spread, "{name}: {e:?} vs {t:?}");
        }
        assert_eq!(engine_margins.len(), trainer_margins.len());
        assert!(
            gap(&engine_margins, &trainer_margins) < 1e-2 * spread,
            "{name}: {engine_margins:?} vs {trainer_margins:?}"
        );
    }
}

/// With a head per height, the same summaries can be preferred one way at height 0 and the
/// other at height 1; a node above the highest trained height uses the highest head.
#[test]
fn heads_per_height_learn_what_each_height_prefers() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let mut pairs = Vec::new();
    for i in 0..8 {
        let input = format!("passage number {i} about animals");
        let (zebra, cat) = (format!("zebra zebra {i}"), format!("cat dog {i}"));
        pairs.push(Pair::new(0, &input, &zebra, &cat, 1.0, &format!("g{i}")));
        pairs.push(Pair::new(1, &input, &cat, &zebra, 1.0, &format!("g{i}")));
    }
    let c = LmTrainConfig { members: 1, steps: Some(60), head_per_height: true, ..config() };
    let mut model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
    assert_eq!(model.card.heads, 2);
    assert_eq!(model.members[0].head_w.dims(), [2, model.card.hidden]);
    let all = &model.card.metrics;
    assert_eq!(all["h0"].accuracy, 1.0, "{all:?}");
    assert_eq!(all["h1"].accuracy, 1.0, "{all:?}");
    let input = "passage number 3 about animals";
    let texts = ["zebra zebra 3", "cat dog 3"];
    let (h0, h1) = (
        model.member_scores(0, input, &texts).unwrap(),
        model.member_scores(1, input, &texts).unwrap(),
    );
    assert!(h0[0][0] > h0[0][1] && h1[0][1] > h1[0][0], "{h0:?} {h1:?}");
    let ckpt = model.save(&dir.path().join("rm")).unwrap();
    let loaded = LmRewardModel::load(&ckpt, None).unwrap();
    assert_eq!(loaded.member_scores(1, input, &texts).unwrap(), h1);
    // Height 5 was never trained: the highest head (height 1's) scores it.
    assert_eq!((head_of(5, 2), head_of(1, 2), head_of(0, 2), head_of(3, 1)), (1, 1, 0, 0));
    let h5 = loaded.member_scores(5, input, &texts).unwrap();
    assert!(h5[0].iter().all(|s| s.is_finite()), "{h5:?}");
}

/// The tiny model as the test configuration trains it (LoRA).
fn tiny_llama(dir: &Path) -> TrainableLlama {
    let options = LoadOptions { mode: config().mode, dtype: DType::F32 };
    TrainableLlama::load(&tiny(dir), &Device::Cpu, &options).unwrap().0
}

#[test]
fn packed_scores_equal_scores_one_sequence_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let llama = tiny_llama(dir.path());
    let h = llama.config.hidden as f64;
    let w = (Tensor::arange(0f64, h, &Device::Cpu).unwrap() / h).unwrap();
    let w = w.to_dtype(DType::F32).unwrap().unsqueeze(0).unwrap();
    let b = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let seqs: [&[u32]; 3] = [&[1, 5, 6, 7, 9], &[1, 5, 6, 8], &[1, 5, 6, 7]];
    let packed = pack(&seqs);
    assert_eq!(packed.len(), 1, "one shared prefix, one row");
    assert_eq!(packed[0].prompt, vec![1, 5, 6]);
    let together = score_rows(&llama, &packed, &[0], &w, &b, 4096).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let alone = score_rows(&llama, &pack(&[s]), &[0], &w, &b, 4096).unwrap();
        assert!((alone[0] - together[i]).abs() < 1e-4, "{i}: {} vs {}", alone[0], together[i]);
    }
    // Rows of different lengths, one forward pass each (shortest first) or all in one:
    // the scores come back in the rows' order either way.
    let rows: Vec<Packed> = [seqs[0], &[1, 2], seqs[1]].iter().flat_map(|s| pack(&[s])).collect();
    let one_by_one = score_rows(&llama, &rows, &[0, 0, 0], &w, &b, 1).unwrap();
    let at_once = score_rows(&llama, &rows, &[0, 0, 0], &w, &b, 4096).unwrap();
    assert!((one_by_one[0] - together[0]).abs() < 1e-4);
    assert!((one_by_one[2] - together[1]).abs() < 1e-4);
    for (a, o) in one_by_one.iter().zip(&at_once) {
        assert!((a - o).abs() < 1e-4, "{one_by_one:?} vs {at_once:?}");
    }
    // No common prefix: one row each, in order.
    let apart = pack(&[&[2, 3], &[4, 5, 6]]);
    assert_eq!(apart.len(), 2);
    assert_eq!(apart[1].completions, vec![vec![6]]);
}

#[test]
fn the_head_and_adapters_get_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let llama = tiny_llama(dir.path());
    let hidden = llama.config.hidden;
    // Two head rows (two heights): the first completion is scored by row 0, the second by 1.
    let ones = Tensor::ones((2, hidden), DType::F32, &Device::Cpu).unwrap();
    let w = Var::from_tensor(&ones).unwrap();
    let b = Var::from_tensor(&Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let which = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let packed = pack(&[&[1, 5, 6, 7], &[1, 8]]);
    let one = Tensor::ones(1, DType::F32, &Device::Cpu).unwrap();
    let heads = [w.clone(), b.clone()];
    let (_, grads) = llama
        .packed_last_hidden_backward(&packed, &heads, |h| {
            let r = head_scores(h, w.as_tensor(), b.as_tensor(), &which)?;
            let d = (r.narrow(0, 0, 1)? - r.narrow(0, 1, 1)?)?;
            Ok(bt_loss_weighted(&d, &one, &one)?)
        })
        .unwrap();
    let gw = grads.get(w.as_tensor()).expect("head weight gradient");
    let per_row = gw.abs().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(per_row.iter().all(|&g| g > 0.0), "every head row learns: {per_row:?}");
    let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert!(gb[0] < 0.0 && gb[1] > 0.0, "chosen up, rejected down: {gb:?}");
    // A fresh LoRA's B is zero, so its A gets none yet; every B does.
    for (name, v) in llama.trainable() {
        if name.ends_with("lora_b") {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
        }
    }
}

#[test]
fn truncation_cuts_the_input_end_and_keeps_the_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let (_, tok) = TrainableLlama::load(&base, &Device::Cpu, &LoadOptions::default()).unwrap();
    let end = end_token(&tok).unwrap();
    let long = format!("opening words {}", "word ".repeat(500));
    let summaries = ["the summary", "a much longer summary of the passage"];
    // Room for the prompt, the longer summary and 24 tokens of the input.
    let max = encode(&tok, end, usize::MAX, 0, "", &summaries).unwrap().0[1].len() + 24;
    let (seqs, cut) = encode(&tok, end, max, 0, &long, &summaries).unwrap();
    assert!(cut);
    for (ids, s) in seqs.iter().zip(summaries) {
        assert!(ids.len() <= max, "{} > {max}", ids.len());
        let mut tail = tok.encode(s).unwrap();
        tail.push(end);
        assert!(ids.ends_with(&tail));
    }
    // The same cut input for both, and it keeps the prompt's start and the input's opening.
    let (a, b) = (&seqs[0], &seqs[1]);
    let shared = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
    assert!(shared >= a.len() - tok.encode("the summary").unwrap().len() - 1);
    let (whole, _) = encode(&tok, end, 4096, 0, &long, &summaries[..1]).unwrap();
    assert_eq!(a[..8], whole[0][..8]);
    assert!(tok.decode(a).unwrap().contains("opening words"));
    assert!(seqs[1].len() > max - 8, "the input fills what is left: {}", seqs[1].len());
    // Short enough: nothing cut, the same tokens as without a limit.
    let (short, cut) = encode(&tok, end, 4096, 0, "a short passage", &summaries).unwrap();
    assert!(!cut);
    assert!(short[0].len() < short[1].len());
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let err = LmRewardModel::train(&base, &[], &[], &config(), "test").unwrap_err();
    assert!(matches!(err, RewardError::NoData(_)), "{err}");
    let not_gguf = dir.path().join("x.gguf");
    std::fs::write(&not_gguf, b"not a model").unwrap();
    let err = LmRewardModel::train(&not_gguf, &separable(), &[], &config(), "t").unwrap_err();
    assert!(err.to_string().contains("x.gguf"), "{err}");
    let gpt2 = dir.path().join("gpt2.gguf");
    tiny_gguf(&gpt2, 7, &TinyOptions { arch: "gpt2", ..TinyOptions::default() }).unwrap();
    let err = LmRewardModel::train(&gpt2, &separable(), &[], &config(), "t").unwrap_err();
    assert!(err.to_string().contains("llama-family"), "{err}");
    for c in [
        LmTrainConfig { members: 0, ..config() },
        LmTrainConfig { val_percent: 60, test_percent: 40, ..config() },
        LmTrainConfig { eval_every: Some(0), ..config() },
    ] {
        assert!(matches!(
            LmRewardModel::train(&base, &separable(), &[], &c, "t").unwrap_err(),
            RewardError::Invalid(_)
        ));
    }
}

/// A hybrid model with no steps is its grounding features alone (`wᵀ·g` through either forward
/// pass); trained, validation keeps a step no worse than that step 0; save → load scores the
/// same; a card that does not match its weights is refused.
#[test]
fn hybrid_step_zero_is_the_features_only_model_and_validation_never_goes_below_it() {
    use crate::reward::hybrid;
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path());
    let pairs = separable_pairs(16);
    let c = LmTrainConfig { members: 1, steps: Some(0), hybrid: true, ..config() };
    let mut model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
    let h = model.card.hybrid.clone().expect("a hybrid card");
    assert_eq!(h.features, hybrid::VERSION);
    assert_eq!(model.card.best_step, vec![0]);
    let w = h.fitted["all"].clone();
    let input = "passage number 3 about animals";
    let texts = ["zebra zebra 3", "cat dog 3", "the passage number 3 is about animals"];
    let g = hybrid::features(input, &texts);
    for scoring in [Scoring::Engine, Scoring::Trainer] {
        model.set_scoring(scoring);
        let s = model.member_scores(0, input, &texts).unwrap();
        for (score, g) in s[0].iter().zip(&g) {
            assert!((score - hybrid::dot(&w, g)).abs() < 1e-5, "{scoring:?}: {s:?} {w:?}");
        }
    }
    let margins = model.margins(&pairs).unwrap();
    for (d, p) in margins.iter().zip(&pairs) {
        let g = hybrid::features(&p.input, &[&p.chosen, &p.rejected]);
        assert!((d - (hybrid::dot(&w, &g[0]) - hybrid::dot(&w, &g[1]))).abs() < 1e-5);
    }

    // Trained with validation: step 0 is on the curve and nothing kept is worse than it.
    let c = LmTrainConfig { steps: Some(20), eval_every: Some(10), val_percent: 25, ..c };
    let mut model = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap();
    let curve = &model.card.validation_curve[0];
    assert_eq!(curve.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 10, 20]);
    let raw = model.card.validation_log_loss_uncalibrated.unwrap();
    assert!(raw <= curve[0].1 + 1e-4, "kept {raw}, features alone {}", curve[0].1);
    assert_eq!(model.card.hybrid.as_ref().unwrap().best_step["all"], model.card.best_step);
    let before = model.member_scores(0, input, &texts).unwrap();
    let ckpt = model.save(&dir.path().join("rm")).unwrap();
    let loaded = LmRewardModel::load(&ckpt, None).unwrap();
    assert_eq!(loaded.card.hybrid, model.card.hybrid);
    assert!(loaded.members[0].grounding.is_some());
    assert_eq!(loaded.member_scores(0, input, &texts).unwrap(), before);

    // Cards that do not add up.
    let card_path = ckpt.join(CARD_FILE);
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
    let refused = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut card = original.clone();
        f(&mut card);
        std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
        LmRewardModel::load(&ckpt, None).unwrap_err().to_string()
    };
    let err = refused(&|c| c["hybrid"]["features"] = "grounding-features@0".into());
    assert!(err.contains("grounding-features@0"), "{err}");
    let err = refused(&|c| c["config"]["hybrid"] = false.into());
    assert!(err.contains("not hybrid"), "{err}");
    let err = refused(&|c| {
        c.as_object_mut().unwrap().remove("hybrid");
    });
    assert!(err.contains("no grounding features"), "{err}");
    // A hybrid model starts from its features, not from a probe.
    let c = LmTrainConfig { probe_epochs: 5, ..c };
    let err = LmRewardModel::train(&base, &pairs, &[], &c, "test").unwrap_err();
    assert!(matches!(err, RewardError::Invalid(_)) && err.to_string().contains("probe"), "{err}");
}
