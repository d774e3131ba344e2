#!/usr/bin/env python3
"""DPO with TRL's DPOTrainer and a PEFT LoRA adapter on rrm's TRL-format export, on CPU.

    python scripts/trl/train_dpo.py --data prefs.jsonl --out /work/trl-out/dpo-adapter --max-steps 8

Defaults are rrm's (`rrm policy train --method dpo` with LoRA): rank 8, alpha 16 on
q,k,v,o,gate,up,down, no dropout, beta 0.1 (sigmoid loss), lr 1e-4 with 10 % warm-up and a cosine
to 0.1 x lr, batch 2 pairs x 4 accumulation, gradient clip 1.0, prompts cut to their last 1024
tokens and completions to their first 256, reference log-probabilities computed once before
training (the model with its adapter off). Prompts and completions are tokenized as rrm does
(`--tokenize rrm`, see rrm_common.py); `--tokenize trl` hands TRL the rendered text instead.

Writes to --out: adapter_config.json + adapter_model.safetensors (PEFT), the tokenizer,
train_report.json (timings, losses, versions); with --merged DIR also the merged model in
Hugging Face layout (config.json + model.safetensors + tokenizer files).
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
    ap.add_argument("--data", required=True, help="rrm feedback export --format trl output (JSONL)")
    ap.add_argument("--model-dir", help="rrm's model folder (GGUF) or a Hugging Face-layout folder (default: rrm's smollm2-135m)")
    ap.add_argument("--gguf-file", help="GGUF file name inside --model-dir (default: the one there)")
    ap.add_argument("--out", required=True, help="folder for the PEFT adapter")
    ap.add_argument("--merged", help="also write the merged model (HF layout) here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (default: --epochs)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-examples", type=int, default=0, help="use the first N pairs (0: all)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--lr", type=float, default=rc.DPO_LR_LORA)
    ap.add_argument("--beta", type=float, default=rc.DPO_BETA)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--lora-rank", type=int, default=rc.LORA_RANK)
    ap.add_argument("--lora-alpha", type=float, default=rc.LORA_ALPHA)
    ap.add_argument("--lora-targets", default="all")
    ap.add_argument("--max-prompt-tokens", type=int, default=rc.MAX_PROMPT_TOKENS)
    ap.add_argument("--max-completion-tokens", type=int, default=rc.MAX_COMPLETION_TOKENS)
    ap.add_argument("--tokenize", choices=["rrm", "trl"], default="rrm")
    ap.add_argument("--no-precompute-ref", action="store_true", help="reference forward at every step (TRL's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rc.set_threads(args.threads)
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(args.seed)
    t_start = time.time()
    model_dir, gguf = rc.resolve_model(args.model_dir, args.gguf_file)
    tok = rc.load_tokenizer(model_dir, gguf)
    model = rc.load_causal_lm(model_dir, gguf)
    load_s = time.time() - t_start

    rows = rc.read_pairs(args.data)
    if args.max_examples:
        rows = rows[: args.max_examples]
    enc = rc.RrmEncoder(tok)
    if args.tokenize == "rrm":
        items = [enc.dpo_row(r, args.max_prompt_tokens, args.max_completion_tokens) for r in rows]
        truncated = sum(i.pop("truncated") for i in items)
        ds = Dataset.from_list(items)
        max_length = None  # already cut as rrm cuts
    else:
        items = [
            {
                "prompt": tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True),
                "chosen": r["chosen"].strip(),
                "rejected": r["rejected"].strip(),
            }
            for r in rows
        ]
        truncated = None
        ds = Dataset.from_list(items)
        max_length = args.max_prompt_tokens + args.max_completion_tokens

    class RrmDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args_, name):
            if "prompt_ids" in dataset.column_names:
                return dataset  # tokenized by rrm's rules already
            return super()._prepare_dataset(dataset, processing_class, args_, name)

    cfg = DPOConfig(
        output_dir=str(Path(args.out) / "trainer"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": args.min_lr_ratio},
        warmup_steps=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        weight_decay=0.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        max_length=max_length,
        precompute_ref_log_probs=not args.no_precompute_ref,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    peft_cfg = rc.lora_config("CAUSAL_LM", args.lora_rank, args.lora_alpha, rc.parse_targets(args.lora_targets))
    trainer = RrmDPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)

    t0 = time.time()
    result = trainer.train()
    train_s = time.time() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    merged_dir = None
    if args.merged:
        merged = trainer.model.merge_and_unload()
        rc.drop_gguf_marks(merged)
        merged.save_pretrained(args.merged, safe_serialization=True)
        tok.save_pretrained(args.merged)
        merged_dir = args.merged

    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        tensors = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    report = {
        "model_dir": model_dir,
        "gguf_file": gguf,
        "data": os.path.abspath(args.data),
        "pairs": len(rows),
        "pairs_truncated": truncated,
        "tokenize": args.tokenize,
        "steps": trainer.state.global_step,
        "load_seconds": round(load_s, 2),
        "train_seconds": round(train_s, 2),
        "train_loss": result.training_loss,
        "log": trainer.state.log_history,
        "config": {k: v for k, v in vars(args).items()},
        "adapter_tensors": len(tensors),
        "adapter_example": {k: tensors[k] for k in sorted(tensors)[:4]},
        "merged": merged_dir,
        "peak_rss_mib": round(rc.peak_rss_mib(), 1),
        "versions": rc.versions(),
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=2, default=str))


if __name__ == "__main__":
    main()
