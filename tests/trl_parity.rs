//! rrm's trainer held to TRL's numbers on a fixed batch (issue 34, item 2).
//!
//! `scripts/trl/parity_dump.py` (a throwaway Python environment with torch, transformers, peft
//! and trl; see scripts/trl/README.md) writes, for the first pairs of a TRL export and a fixed
//! LoRA adapter: the policy's and the reference's summed completion log-probabilities, the DPO
//! loss (its own and TRL's `DPOTrainer.compute_loss`), the gradients of layer 0's LoRA A and B,
//! and for a fixed `score` head on the frozen model the rewards, the Bradley–Terry loss (its own
//! and TRL's `RewardTrainer`) and the head's gradient. This test loads the same model (the
//! Hugging Face folder the dump names, converted by `infer::hf`) and adapter (`lm::peft`) into
//! rrm's trainer and recomputes every number through the code the trainers run: packed rows,
//! `policy::train::loss_of`, `packed_backward`, `packed_last_hidden_backward`,
//! `reward::train::bt_loss_weighted`.
//!
//! ```sh
//! python scripts/trl/parity_dump.py --data prefs.jsonl --rows 2 --out /work/trl-out/parity
//! RRM_TRL_PARITY=/work/trl-out/parity cargo test --release --test trl_parity -- --nocapture
//! ```
//!
//! Without `RRM_TRL_PARITY` it says that it skipped, and why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rrm::infer::hf;
use rrm::lm::model::LoadOptions;
use rrm::lm::{Checkpointing, LoraConfig, Mode, Packed, Target, TrainableLlama};
use rrm::policy::train::{loss_of, TrainConfig};
use rrm::policy::Method;
use rrm::reward::train::bt_loss_weighted;
use serde_json::Value;

/// Summed log-probabilities of 30–130 tokens: f32 sums in a different order.
const LOGP_ABS: f64 = 1e-3;
/// The DPO and Bradley–Terry losses.
const LOSS_ABS: f64 = 1e-5;
/// Rewards (a dot product of a 576-d hidden state with the head).
const REWARD_ABS: f64 = 1e-4;
/// Gradients: max |rrm − TRL| over a tensor, relative to the tensor's max |TRL|.
const GRAD_REL: f64 = 2e-4;

fn parity_dir() -> Option<PathBuf> {
    match std::env::var_os("RRM_TRL_PARITY") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!(
                "trl_parity SKIPPED: RRM_TRL_PARITY is not set. Set it to the folder \
                 scripts/trl/parity_dump.py wrote (parity.json, parity.safetensors, adapter/); \
                 the dump needs a Python environment with torch, transformers, peft and trl \
                 (scripts/trl/README.md)."
            );
            None
        }
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("a list of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

struct Dump {
    json: Value,
    tensors: HashMap<String, Tensor>,
    gguf: PathBuf,
    _models: tempfile::TempDir,
}

fn load_dump(dir: &Path) -> Dump {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("parity.json")).expect("parity.json in RRM_TRL_PARITY"),
    )
    .expect("parity.json is JSON");
    assert_eq!(json["format"], "rrm-trl-parity/1", "a dump of another format");
    assert_eq!(json["dtype"], "float32");
    let tensors = candle_core::safetensors::load(dir.join("parity.safetensors"), &Device::Cpu)
        .expect("parity.safetensors");
    let model_dir = PathBuf::from(json["model_dir"].as_str().expect(
        "the dump names a Hugging Face model folder (run parity_dump.py with --model-dir: \
         rrm's own export, so the tokenizer is rrm's)",
    ));
    let models = tempfile::tempdir().expect("temp dir");
    let gguf = hf::cached_conversion(&model_dir, models.path()).expect("the model converts");
    Dump { json, tensors, gguf, _models: models }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Max |a − b| / max |b|.
fn rel_gap(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-30)
}

fn scalars(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn dpo_logps_loss_and_lora_gradients_match_trl() {
    let Some(dir) = parity_dir() else { return };
    let dump = load_dump(&dir);
    let lora = &dump.json["lora"];
    let config = LoraConfig {
        rank: lora["rank"].as_u64().unwrap() as usize,
        alpha: f(&lora["alpha"]),
        targets: Target::ALL.to_vec(),
        seed: 0,
        top_layers: None,
    };
    let options = LoadOptions { mode: Mode::Lora(config), dtype: DType::F32 };
    let (mut model, _) = TrainableLlama::load(&dump.gguf, &Device::Cpu, &options).unwrap();
    model.set_checkpointing(Checkpointing::Off);
    let adapter = hf::read_adapter(&dir.join("adapter")).unwrap();
    let set = rrm::lm::peft::load_peft_adapter(&model, &adapter).unwrap();
    assert_eq!(set, 7 * model.config.n_layer, "every projection of every block");

    let rows = dump.json["dpo"]["rows"].as_array().unwrap();
    let packed: Vec<Packed> = rows
        .iter()
        .map(|r| Packed {
            prompt: ids(&r["prompt_ids"]),
            completions: vec![ids(&r["chosen_ids"]), ids(&r["rejected_ids"])],
        })
        .collect();

    // Log-probabilities with the adapter (policy) and without (reference).
    let policy = scalars(&model.packed_logprobs(&packed).unwrap().sums);
    model.set_adapters(false);
    let reference = scalars(&model.packed_logprobs(&packed).unwrap().sums);
    model.set_adapters(true);
    let mut worst_logp = 0f64;
    for (i, r) in rows.iter().enumerate() {
        for (ours, key) in [
            (policy[2 * i], "policy_chosen_logp"),
            (policy[2 * i + 1], "policy_rejected_logp"),
            (reference[2 * i], "ref_chosen_logp"),
            (reference[2 * i + 1], "ref_rejected_logp"),
        ] {
            let gap = (ours - f(&r[key])).abs();
            eprintln!("row {i} {key}: rrm {ours:.5} TRL {:.5} |Δ| {gap:.2e}", f(&r[key]));
            worst_logp = worst_logp.max(gap);
            assert!(gap <= LOGP_ABS, "row {i} {key}: rrm {ours} vs TRL {}", f(&r[key]));
        }
    }

    // The loss as rrm's DPO computes it, and its gradients.
    let refs: Vec<[f32; 2]> =
        (0..rows.len()).map(|i| [reference[2 * i] as f32, reference[2 * i + 1] as f32]).collect();
    let cfg = TrainConfig { beta: f(&dump.json["beta"]), ..TrainConfig::default() };
    let (loss, grads) =
        model.packed_backward(&packed, |s| Ok(loss_of(s, Method::Dpo, &refs, &cfg)?.0)).unwrap();
    let loss = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let trl_loss = f(&dump.json["dpo"]["trl_loss"]);
    eprintln!(
        "DPO loss: rrm {loss:.7} TRL DPOTrainer {trl_loss:.7} dump {:.7}",
        f(&dump.json["dpo"]["loss"])
    );
    assert!((loss - trl_loss).abs() <= LOSS_ABS, "DPO loss {loss} vs TRL {trl_loss}");

    let vars: HashMap<String, Var> = model.trainable().into_iter().collect();
    let mut worst_grad = 0f64;
    for (gguf, hf_module) in [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ] {
        for (ours, theirs) in [("lora_a", "lora_A"), ("lora_b", "lora_B")] {
            let var = &vars[&format!("blk.0.{gguf}.{ours}")];
            let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for blk.0.{gguf}.{ours}"));
            let key = format!("grad.layers.0.{hf_module}.{theirs}");
            // Q and K's B rows in the GGUF's order, as rrm's llama keeps them.
            let t = dump
                .tensors
                .get(&format!("gguf_layout.{key}"))
                .or_else(|| dump.tensors.get(&key))
                .unwrap_or_else(|| panic!("{key} in parity.safetensors"));
            let gap = rel_gap(g, t);
            eprintln!(
                "grad blk.0.{gguf}.{ours}: max |TRL| {:.3e}, max |Δ| / max |TRL| {gap:.2e}",
                max_abs(t)
            );
            worst_grad = worst_grad.max(gap);
            assert!(gap <= GRAD_REL, "gradient of blk.0.{gguf}.{ours}: relative gap {gap}");
        }
    }
    eprintln!(
        "DPO parity: worst |Δ logp| {worst_logp:.2e} (tolerance {LOGP_ABS:.0e}), worst relative \
         gradient gap {worst_grad:.2e} (tolerance {GRAD_REL:.0e})"
    );
}

/// The longest common prefix of two sequences, kept short enough that each keeps a token.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    n.min(a.len() - 1).min(b.len() - 1)
}

#[test]
fn bradley_terry_rewards_loss_and_head_gradient_match_trl() {
    let Some(dir) = parity_dir() else { return };
    let dump = load_dump(&dir);
    let options = LoadOptions { mode: Mode::Frozen, dtype: DType::F32 };
    let (mut model, _) = TrainableLlama::load(&dump.gguf, &Device::Cpu, &options).unwrap();
    model.set_checkpointing(Checkpointing::Off);
    let head = Var::from_tensor(&dump.tensors["reward.score.weight"]).unwrap();

    // Each pair as rrm's LM reward model packs it: the common prefix once, both sequences after
    // it; a pair with nothing in common as two rows. Either way the scores come out chosen,
    // rejected, pair by pair.
    let rows = dump.json["reward"]["rows"].as_array().unwrap();
    let mut packed = Vec::new();
    for r in rows {
        let (c, j) = (ids(&r["chosen_ids"]), ids(&r["rejected_ids"]));
        let n = common_prefix(&c, &j);
        if n > 0 {
            packed.push(Packed {
                prompt: c[..n].to_vec(),
                completions: vec![c[n..].to_vec(), j[n..].to_vec()],
            });
        } else {
            packed.push(Packed { prompt: c[..1].to_vec(), completions: vec![c[1..].to_vec()] });
            packed.push(Packed { prompt: j[..1].to_vec(), completions: vec![j[1..].to_vec()] });
        }
    }

    let n = rows.len();
    let mut rewards = Vec::new();
    let (loss, grads) = model
        .packed_last_hidden_backward(&packed, std::slice::from_ref(&head), |h| {
            // (2n, hidden) · (hidden, 1): chosen and rejected alternate.
            let r = h.matmul(&head.as_tensor().t()?)?.squeeze(1)?;
            rewards = scalars(&r.detach());
            let r = r.reshape((n, 2))?;
            let d = (r.narrow(1, 0, 1)? - r.narrow(1, 1, 1)?)?.squeeze(1)?;
            let ones = Tensor::ones(n, DType::F32, h.device())?;
            Ok(bt_loss_weighted(&d, &ones, &ones)?)
        })
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        for (ours, key) in
            [(rewards[2 * i], "reward_chosen"), (rewards[2 * i + 1], "reward_rejected")]
        {
            let gap = (ours - f(&r[key])).abs();
            eprintln!("row {i} {key}: rrm {ours:.6} TRL {:.6} |Δ| {gap:.2e}", f(&r[key]));
            assert!(gap <= REWARD_ABS, "row {i} {key}: rrm {ours} vs TRL {}", f(&r[key]));
        }
    }
    let loss = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let trl = f(&dump.json["reward"]["trl_loss"]);
    eprintln!("Bradley–Terry loss: rrm {loss:.7} TRL RewardTrainer {trl:.7}");
    assert!((loss - trl).abs() <= LOSS_ABS, "BT loss {loss} vs TRL {trl}");
    let g = grads.get(&head).expect("the head's gradient");
    let gap = rel_gap(g, &dump.tensors["reward.grad.score.weight"]);
    eprintln!("head gradient: max |Δ| / max |TRL| {gap:.2e} (tolerance {GRAD_REL:.0e})");
    assert!(gap <= GRAD_REL, "head gradient relative gap {gap}");
}
