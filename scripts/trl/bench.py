#!/usr/bin/env python3
"""The TRL / PyTorch side of rrm's training speed comparison: SFT and DPO training tokens/s and
peak memory (LoRA), and reward-model scoring summaries/s. Prints one JSON object.

    python scripts/trl/bench.py                      # 2 threads, batch 2 x 256 tokens, 64 scored
    rrm --threads 2 bench train --modes lora --json  # rrm's side, same defaults

The defaults match `rrm bench train` (src/cli/bench.rs, src/lm/bench.rs): batch 2 sequences of
256 tokens whose last 64 are scored, 3 measured steps after one warm-up (median), LoRA rank 8
(alpha 16) on q,k,v,o,gate,up,down, float32, AdamW at lr 1e-6, gradient checkpointing off and on,
the same synthetic token ids (3 + (i*7919 + b*104729) mod (vocab-3)).

- sft: TRL's SFTTrainer on pre-tokenized rows (completion-only loss: the mean NLL of the scored
  tokens, as rrm's bench loss). tokens/s = batch x seq_len / median step seconds.
  forward_tokens_per_s: a no-grad forward of the same batch with the completion log-probs.
- dpo: TRL's DPOTrainer (sigmoid, beta 0.1) on `batch` pairs: a prompt of seq_len - completion_len
  tokens and two completions of completion_len, so 2 x batch sequences of seq_len per step, with
  the reference forward (adapter off) inside every step as TRL does by default
  (`--dpo-precompute-ref` moves it before training, as rrm's trainer does). tokens/s counts
  2 x batch x seq_len.
- score: AutoModelForSequenceClassification (num_labels 1) with an unmerged LoRA adapter (the
  way rrm's LM reward model runs; `--score-merged` merges it), no grad, `--score-count` inputs of
  `--score-len` tokens in batches of `--score-batch`: summaries/s.

Each (mode, checkpointing) runs in a fresh child process so each peak RSS
(getrusage ru_maxrss, model loading included, as rrm's VmHWM after its reset) is its own.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rrm_common as rc  # noqa: E402


def synthetic_seqs(batch, seq_len, vocab, salt=0):
    return [[3 + (i * 7919 + b * 104_729 + salt) % (vocab - 3) for i in range(seq_len)] for b in range(batch)]


def timing_callback():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    return Timer()


def common_cfg(a, ckpt):
    return dict(
        output_dir="/tmp/rrm-trl-bench",
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-6,
        max_steps=a.steps + 1,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        gradient_checkpointing=ckpt,
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def child(a, mode, ckpt):
    rc.set_threads(a.threads)
    import torch
    from datasets import Dataset

    t0 = time.perf_counter()
    model_dir, gguf = rc.resolve_model(a.model_dir, a.gguf_file)
    tok = rc.load_tokenizer(model_dir, gguf)
    targets = rc.parse_targets(a.lora_targets)
    out = {"mode": mode, "checkpointing": ckpt, "threads": a.threads, "lora_rank": a.lora_rank}

    if mode == "score":
        from peft import get_peft_model

        tok.pad_token = "<|endoftext|>"
        model = rc.load_seq_cls(model_dir, gguf, tok.pad_token_id)
        model = get_peft_model(model, rc.lora_config("SEQ_CLS", a.lora_rank, rc.LORA_ALPHA, targets, seq_cls_head=True))
        if a.score_merged:
            model = model.merge_and_unload()
        model.eval()
        load_s = time.perf_counter() - t0
        vocab = model.config.vocab_size
        n, b = a.score_count, a.score_batch
        seqs = synthetic_seqs(n, a.score_len, vocab)
        with torch.inference_mode():
            model(input_ids=torch.tensor(seqs[:b]))  # warm-up
            t = time.perf_counter()
            scores = []
            for i in range(0, n, b):
                scores += model(input_ids=torch.tensor(seqs[i : i + b])).logits[:, 0].tolist()
            dt = time.perf_counter() - t
        out.update(
            summaries=n, tokens_per_summary=a.score_len, batch=b, merged=a.score_merged,
            seconds=round(dt, 3), summaries_per_s=round(n / dt, 3),
            tokens_per_s=round(n * a.score_len / dt, 1),
        )
    else:
        model = rc.load_causal_lm(model_dir, gguf)
        load_s = time.perf_counter() - t0
        vocab = model.config.vocab_size
        seqs = synthetic_seqs(a.batch, a.seq_len, vocab)
        start = a.seq_len - a.completion_len
        rows = (a.steps + 1) * a.batch
        timer = timing_callback()
        peft_cfg = rc.lora_config("CAUSAL_LM", a.lora_rank, rc.LORA_ALPHA, targets)
        if mode == "sft":
            from trl import SFTConfig, SFTTrainer

            ds = Dataset.from_list(
                [{"input_ids": seqs[i % a.batch], "completion_mask": [0] * start + [1] * a.completion_len} for i in range(rows)]
            )
            cfg = SFTConfig(**common_cfg(a, ckpt), completion_only_loss=True, max_length=None, packing=False,
                            dataset_kwargs={"skip_prepare_dataset": False})
            trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                                 callbacks=[timer])
            tokens = a.batch * a.seq_len
        else:
            from trl import DPOConfig, DPOTrainer

            other = synthetic_seqs(a.batch, a.seq_len, vocab, salt=12_345)
            ds = Dataset.from_list(
                [
                    {"prompt_ids": seqs[i % a.batch][:start], "chosen_ids": seqs[i % a.batch][start:],
                     "rejected_ids": other[i % a.batch][start:]}
                    for i in range(rows)
                ]
            )

            class PreTokenized(DPOTrainer):
                def _prepare_dataset(self, dataset, *args_, **kw):
                    return dataset

            cfg = DPOConfig(**common_cfg(a, ckpt), beta=rc.DPO_BETA, loss_type=["sigmoid"], max_length=None,
                            precompute_ref_log_probs=a.dpo_precompute_ref, remove_unused_columns=False)
            trainer = PreTokenized(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                                   callbacks=[timer])
            tokens = 2 * a.batch * a.seq_len
            out["reference_forward_in_step"] = not a.dpo_precompute_ref
        trainer.train()
        step_s = statistics.median(timer.times[1:]) if len(timer.times) > 1 else timer.times[0]
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        # Forward with completion log-probs, no gradient (what reference log-probs cost).
        m = trainer.model
        m.eval()
        x = torch.tensor(seqs)
        ft = []
        with torch.inference_mode():
            for _ in range(a.steps):
                t = time.perf_counter()
                logits = m(input_ids=x).logits[:, start - 1 : -1]
                lp = torch.log_softmax(logits.float(), -1).gather(-1, x[:, start:, None]).sum((1, 2))
                lp.tolist()
                ft.append(time.perf_counter() - t)
        out.update(
            trainable_params=trainable, batch=a.batch, seq_len=a.seq_len, completion_len=a.completion_len,
            steps=a.steps, tokens_per_step=tokens, step_seconds=round(step_s, 3),
            train_tokens_per_s=round(tokens / step_s, 1),
            forward_tokens_per_s=round(a.batch * a.seq_len / statistics.median(ft), 1),
            step_times=[round(t, 3) for t in timer.times],
        )
    out["load_seconds"] = round(load_s, 2)
    out["peak_rss_mib"] = round(rc.peak_rss_mib(), 1)
    print("BENCH_ROW " + json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir")
    ap.add_argument("--gguf-file")
    ap.add_argument("--modes", default="sft,dpo,score")
    ap.add_argument("--checkpointing", default="off,on", help="gradient checkpointing settings for sft and dpo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--completion-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-targets", default="all")
    ap.add_argument("--dpo-precompute-ref", action="store_true")
    ap.add_argument("--score-len", type=int, default=512)
    ap.add_argument("--score-batch", type=int, default=4)
    ap.add_argument("--score-count", type=int, default=16)
    ap.add_argument("--score-merged", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "CKPT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not 0 < a.completion_len < a.seq_len:
        sys.exit("need 0 < --completion-len < --seq-len")
    if a.child:
        child(a, a.child[0], a.child[1] == "on")
        return

    runs = []
    for mode in a.modes.split(","):
        for ck in (a.checkpointing.split(",") if mode != "score" else ["off"]):
            runs.append((mode.strip(), ck.strip()))
    rows, errors = [], []
    argv = [a for a in sys.argv[1:]]
    for mode, ck in runs:
        cmd = [sys.executable, __file__, *argv, "--child", mode, ck]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in p.stdout.splitlines() if l.startswith("BENCH_ROW ")]
        if p.returncode != 0 or not line:
            errors.append({"mode": mode, "checkpointing": ck, "rc": p.returncode, "stderr_tail": p.stderr[-1500:]})
            print(f"{mode}/{ck}: failed (rc {p.returncode})", file=sys.stderr)
            continue
        rows.append(json.loads(line[-1][len("BENCH_ROW "):]))
        print(f"{mode}/{ck}: done", file=sys.stderr)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(json.dumps({"cpu": rc.cpu_info(), "load_average_at_end": load, "versions": rc.versions(),
                      "rows": rows, "errors": errors}, indent=2))


if __name__ == "__main__":
    main()
