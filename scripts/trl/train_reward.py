#!/usr/bin/env python3
"""A reward model with TRL's RewardTrainer on rrm's TRL-format export, on CPU.

    python scripts/trl/train_reward.py --data prefs.jsonl --out /work/trl-out/reward --max-steps 8

The model is AutoModelForSequenceClassification (num_labels 1) on the same base as the policy
(rrm's SmolLM2-135M GGUF, dequantized, or a Hugging Face-layout folder), with a PEFT LoRA
adapter (rank 8, alpha 16, q,k,v,o,gate,up,down) and the `score` head trained in full
(`modules_to_save`); `--full` fine-tunes every weight instead. Defaults follow rrm's LM reward
model (src/reward/lm.rs): 4 pairs per step, lr 1e-4 for the adapter and 1e-3 for the head,
cosine to 0.1 x lr, gradient clip 1.0, inputs of at most 1024 tokens.

Each input is what rrm's LM reward model scores: the node's prompt (per-height template and
chat template, assistant turn opened) + the summary + `<|im_end|>`; the score is read at that
last token. The padding token is `<|endoftext|>` (not `<|im_end|>`, which would make
transformers read the score one token early). Loss: Bradley-Terry, -log sigmoid(r_c - r_r).

Writes to --out: config.json (LlamaForSequenceClassification, pad_token_id set) and
model.safetensors with `score.weight` [1, hidden] (adapter merged), the tokenizer,
train_report.json; and the PEFT adapter (adapter_config.json + adapter_model.safetensors, the
head under `...score.weight`) in --out/adapter.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rrm_common as rc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-dir")
    ap.add_argument("--gguf-file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-examples", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=rc.REWARD_MAX_TOKENS)
    ap.add_argument("--lora-rank", type=int, default=rc.LORA_RANK)
    ap.add_argument("--lora-alpha", type=float, default=rc.LORA_ALPHA)
    ap.add_argument("--lora-targets", default="all")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rc.set_threads(args.threads)
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(args.seed)
    t_start = time.time()
    model_dir, gguf = rc.resolve_model(args.model_dir, args.gguf_file)
    tok = rc.load_tokenizer(model_dir, gguf)
    pad = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.pad_token
    tok.pad_token = pad
    model = rc.load_seq_cls(model_dir, gguf, tok.pad_token_id)
    load_s = time.time() - t_start
    if tok.pad_token_id == rc.end_token_id(tok):
        sys.exit("the padding token equals the end-of-turn token: the score would be read one token early")

    rows = rc.read_pairs(args.data)
    if args.max_examples:
        rows = rows[: args.max_examples]
    enc = rc.RrmEncoder(tok)
    items, cut = [], 0
    for r in rows:
        (c, j), was_cut = enc.reward_seqs(r, [r["chosen"], r["rejected"]], args.max_tokens)
        cut += was_cut
        items.append({"chosen_ids": c, "rejected_ids": j})
    ds = Dataset.from_list(items)

    peft_cfg = None
    if not args.full:
        peft_cfg = rc.lora_config("SEQ_CLS", args.lora_rank, args.lora_alpha, rc.parse_targets(args.lora_targets), seq_cls_head=True)
        from peft import get_peft_model

        model = get_peft_model(model, peft_cfg)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "score" in n]
    body = [p for n, p in model.named_parameters() if p.requires_grad and "score" not in n]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": args.lr}, {"params": head, "lr": args.head_lr}], weight_decay=0.0
    )

    cfg = RewardConfig(
        output_dir=str(Path(args.out) / "trainer"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=args.max_grad_norm,
        max_length=None,
        pad_token=pad,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(
        model=model, args=cfg, train_dataset=ds, processing_class=tok, optimizers=(optimizer, None)
    )
    t0 = time.time()
    result = trainer.train()
    train_s = time.time() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = trainer.model
    if not args.full:
        trained.save_pretrained(str(out / "adapter"), safe_serialization=True)
        trained = trained.merge_and_unload()
    rc.drop_gguf_marks(trained)
    trained.config.pad_token_id = tok.pad_token_id
    trained.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))

    # Scores of the first pairs with the saved model, for a check on the loading side.
    trained.eval()
    check = []
    with torch.no_grad():
        for it in items[:4]:
            s = [trained(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in (it["chosen_ids"], it["rejected_ids"])]
            check.append({"chosen": s[0], "rejected": s[1], "chosen_tokens": len(it["chosen_ids"]), "rejected_tokens": len(it["rejected_ids"])})

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    report = {
        "model_dir": model_dir,
        "gguf_file": gguf,
        "data": os.path.abspath(args.data),
        "pairs": len(rows),
        "pairs_cut": cut,
        "steps": trainer.state.global_step,
        "load_seconds": round(load_s, 2),
        "train_seconds": round(train_s, 2),
        "train_loss": result.training_loss,
        "log": trainer.state.log_history,
        "config": vars(args),
        "pad_token_id": tok.pad_token_id,
        "tensors": len(shapes),
        "score_weight": shapes.get("score.weight"),
        "first_pair_scores": check,
        "peak_rss_mib": round(rc.peak_rss_mib(), 1),
        "versions": rc.versions(),
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=2, default=str))


if __name__ == "__main__":
    main()
