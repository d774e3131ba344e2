#!/usr/bin/env python3
"""Reference numbers from TRL / PEFT for rrm's parity test: on a fixed small batch of
(prompt, chosen, rejected) rows, with a FIXED LoRA adapter (saved, so rrm loads the same one):

- the policy's (adapter on) and reference's (adapter off) summed completion log-probabilities,
- the DPO loss (sigmoid, beta 0.1, mean over the batch) computed here and by TRL's DPOTrainer,
- the gradient of that loss w.r.t. layer 0's LoRA A and B of all seven projections,
- the Bradley-Terry reward loss of a fixed `score` head on the base model (no adapter), computed
  here and by TRL's RewardTrainer, with the rewards and the gradient w.r.t. the head.

    python scripts/trl/parity_dump.py --data prefs.jsonl --rows 2 --out /work/trl-out/parity

Writes to --out:
  adapter/adapter_config.json, adapter/adapter_model.safetensors  the fixed adapter (PEFT names)
  parity.json          settings, token ids and the scalar results (format in README.md)
  parity.safetensors   the layer-0 LoRA gradients, the reward head and its gradient (float32)
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rrm_common as rc  # noqa: E402

PROJ = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}


def hf_to_gguf_rows(w, n_head):
    """llama.cpp's q/k permutation (Hugging Face rotary halves -> GGUF interleaved pairs) of the
    output rows of `w` (out x ...)."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-dir")
    ap.add_argument("--gguf-file")
    ap.add_argument("--rows", type=int, default=2, help="the first N pairs of --data")
    ap.add_argument("--max-prompt-tokens", type=int, default=rc.MAX_PROMPT_TOKENS)
    ap.add_argument("--max-completion-tokens", type=int, default=rc.MAX_COMPLETION_TOKENS)
    ap.add_argument("--reward-max-tokens", type=int, default=rc.REWARD_MAX_TOKENS)
    ap.add_argument("--beta", type=float, default=rc.DPO_BETA)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--b-scale", type=float, default=0.02, help="LoRA B ~ U(-s, s) (non-zero, so A has a gradient)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    rc.set_threads(args.threads)
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from safetensors.torch import save_file
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, gguf = rc.resolve_model(args.model_dir, args.gguf_file)
    tok = rc.load_tokenizer(model_dir, gguf)
    enc = rc.RrmEncoder(tok)
    rows = rc.read_pairs(args.data)[: args.rows]
    items = [enc.dpo_row(r, args.max_prompt_tokens, args.max_completion_tokens) for r in rows]
    for it in items:
        it.pop("truncated")

    # ---- policy with a fixed adapter
    base = rc.load_causal_lm(model_dir, gguf)
    cfg = base.config
    # TRL wraps the base with the LoRA config itself, so its reference is the adapter turned off
    # (handed a PeftModel, it would copy the adapter as the reference instead).
    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **k):
            return dataset

    dcfg = DPOConfig(output_dir=str(out / "trainer"), per_device_train_batch_size=len(items), beta=args.beta,
                     loss_type=["sigmoid"], max_length=None, use_cpu=True, report_to="none",
                     remove_unused_columns=False, gradient_checkpointing=False, disable_dropout=True)
    trainer = PreTokenized(model=base, args=dcfg, train_dataset=Dataset.from_list(items), processing_class=tok,
                           peft_config=rc.lora_config("CAUSAL_LM"))
    model = trainer.model
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                bound = 1.0 / math.sqrt(a.shape[1])
                a.copy_((torch.rand(a.shape, generator=g) * 2 - 1) * bound)
                b.copy_((torch.rand(b.shape, generator=g) * 2 - 1) * args.b_scale)
    model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    model.eval()  # no dropout anywhere (the adapter has none either)

    def completion_logp(m, prompt, comp):
        ids = torch.tensor([prompt + comp])
        logits = m(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(comp)[:, None]).sum()

    pol_c, pol_r, ref_c, ref_r = [], [], [], []
    for it in items:
        pol_c.append(completion_logp(model, it["prompt_ids"], it["chosen_ids"]))
        pol_r.append(completion_logp(model, it["prompt_ids"], it["rejected_ids"]))
        with torch.no_grad(), model.disable_adapter():
            ref_c.append(completion_logp(model, it["prompt_ids"], it["chosen_ids"]))
            ref_r.append(completion_logp(model, it["prompt_ids"], it["rejected_ids"]))
    pc, pr, rcs, rr = (torch.stack(x) for x in (pol_c, pol_r, ref_c, ref_r))
    z = args.beta * ((pc - pr) - (rcs - rr))
    losses = -F.logsigmoid(z)
    loss = losses.mean()
    model.zero_grad()
    loss.backward()
    tensors = {}
    for proj, block in PROJ.items():
        mod = dict(model.named_modules())[f"base_model.model.model.layers.0.{block}.{proj}"]
        for ab in ("lora_A", "lora_B"):
            w = getattr(mod, ab)["default"].weight
            key = f"layers.0.{block}.{proj}.{ab}"
            tensors[f"grad.{key}"] = w.grad.detach().clone().contiguous()
            tensors[f"weight.{key}"] = w.detach().clone().contiguous()
    # q/k: the same rows in GGUF order (rrm's llama runs interleaved rotary on GGUF weights).
    for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
        for kind in ("grad", "weight"):
            key = f"{kind}.layers.0.self_attn.{proj}.lora_B"
            tensors[f"gguf_layout.{key}"] = hf_to_gguf_rows(tensors[key], heads).contiguous()

    # ---- the same batch through TRL's DPOTrainer (loss and its layer-0 gradient)
    assert "ref" not in model.peft_config, "TRL made a reference adapter: the reference would not be the base"
    batch = trainer.data_collator([dict(it) for it in items])
    model.zero_grad()
    trl_loss = trainer.compute_loss(model, batch)
    trl_loss.backward()
    qa = dict(model.named_modules())["base_model.model.model.layers.0.self_attn.q_proj"].lora_A["default"].weight
    trl_grad_q_a = qa.grad.detach().clone()
    grad_gap = (trl_grad_q_a - tensors["grad.layers.0.self_attn.q_proj.lora_A"]).abs().max().item()
    grad_max = tensors["grad.layers.0.self_attn.q_proj.lora_A"].abs().max().item()

    # ---- Bradley-Terry with a fixed head on the base model
    del trainer, model, base
    tok.pad_token = "<|endoftext|>"
    rm = rc.load_seq_cls(model_dir, gguf, tok.pad_token_id)
    rm.eval()
    with torch.no_grad():
        rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=g) / math.sqrt(cfg.hidden_size))
    rw_items = []
    for r in rows:
        (c, j), _ = enc.reward_seqs(r, [r["chosen"], r["rejected"]], args.reward_max_tokens)
        rw_items.append({"chosen_ids": c, "rejected_ids": j})
    r_c = torch.stack([rm(input_ids=torch.tensor([it["chosen_ids"]])).logits[0, 0] for it in rw_items])
    r_r = torch.stack([rm(input_ids=torch.tensor([it["rejected_ids"]])).logits[0, 0] for it in rw_items])
    bt = -F.logsigmoid(r_c - r_r).mean()
    rm.zero_grad()
    bt.backward()
    tensors["reward.score.weight"] = rm.score.weight.detach().clone().contiguous()
    tensors["reward.grad.score.weight"] = rm.score.weight.grad.detach().clone().contiguous()
    rcfg = RewardConfig(output_dir=str(out / "trainer"), per_device_train_batch_size=len(rw_items), max_length=None,
                        use_cpu=True, report_to="none", gradient_checkpointing=False)
    rtrainer = RewardTrainer(model=rm, args=rcfg, train_dataset=Dataset.from_list(rw_items), processing_class=tok)
    with torch.no_grad():
        trl_bt = rtrainer.compute_loss(rm, rtrainer.data_collator([dict(it) for it in rw_items])).item()

    save_file(tensors, str(out / "parity.safetensors"))
    f = lambda t: [float(x) for x in t.detach()]  # noqa: E731
    dump = {
        "format": "rrm-trl-parity/1",
        "model_dir": str(Path(model_dir).resolve()),  # the test reads it from another folder
        "gguf_file": gguf,
        "versions": rc.versions(),
        "dtype": "float32",
        "beta": args.beta,
        "loss": "mean over pairs of -log sigmoid(beta*((pi_c - pi_r) - (ref_c - ref_r)))",
        "lora": {"rank": rc.LORA_RANK, "alpha": rc.LORA_ALPHA, "scale": rc.LORA_ALPHA / rc.LORA_RANK,
                 "targets": rc.LORA_TARGETS, "layers": "all", "seed": args.seed, "b_scale": args.b_scale,
                 "adapter": str(out / "adapter")},
        "end_token_id": enc.end,
        "dpo": {
            "rows": [
                {**it, "policy_chosen_logp": float(a.detach()), "policy_rejected_logp": float(b.detach()),
                 "ref_chosen_logp": float(c), "ref_rejected_logp": float(d), "loss": float(l.detach())}
                for it, a, b, c, d, l in zip(items, pc, pr, rcs, rr, losses)
            ],
            "loss": float(loss.detach()),
            "trl_loss": float(trl_loss.detach()),
            "trl_grad_gap_q_proj_lora_A": grad_gap,
            "grad_max_q_proj_lora_A": grad_max,
        },
        "reward": {
            "head": "score.weight [1, hidden], no bias, read at the last token",
            "pad_token_id": tok.pad_token_id,
            "rows": [{**it, "reward_chosen": a, "reward_rejected": b} for it, a, b in zip(rw_items, f(r_c), f(r_r))],
            "loss": float(bt.detach()),
            "trl_loss": trl_bt,
        },
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "seconds": round(time.time() - t0, 1),
    }
    (out / "parity.json").write_text(json.dumps(dump, indent=1))
    print(json.dumps({k: dump[k] for k in ("beta", "seconds")} | {
        "dpo": {k: v for k, v in dump["dpo"].items() if k != "rows"},
        "logps": [{k: v for k, v in r.items() if "logp" in k} for r in dump["dpo"]["rows"]],
        "reward": {k: v for k, v in dump["reward"].items() if k in ("loss", "trl_loss")},
    }, indent=1))


if __name__ == "__main__":
    main()
