#!/usr/bin/env python3
"""Prompt and decode throughput of llama.cpp (through an installed llama-cpp-python) on a GGUF,
measured the way `rrm bench generate` measures rrm: the same 600-token prompt built from the same
passage (token ids rotated exactly as `infer::bench::make_prompts` does), then greedy decoding.

This is a benchmark-only peer. llama-cpp-python is not a dependency of rrm: install it in a
throwaway virtual environment outside the repository and run this script with that Python, e.g.

    VENV/bin/python scripts/bench_llamacpp.py --model PATH.gguf --threads 2 --json

Prints one JSON object (or a short table): median over --repeat runs.
"""
import argparse
import json
import statistics
import sys
import time

# Keep in sync with `BENCH_TEXT` in src/infer/bench.rs.
BENCH_TEXT = (
    "The river ran low that summer, and the village children walked along its "
    "stony bed, turning over rocks in search of crayfish. Their grandparents told them the water had once "
    "reached the doorsteps of the mill, that boats had carried grain down to the town every week, and "
    "that the old bridge had been built by a man who never learned to swim. Nobody believed the last "
    "part. In the evenings the heat lifted slowly from the fields, the swallows came low over the "
    "water, and the miller's daughter read aloud from a book of voyages to anyone who would sit still "
    "long enough to listen. "
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=600)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=args.prompt_len + args.new_tokens + 16,
        n_batch=args.prompt_len + args.new_tokens + 16,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    base = llm.tokenize((BENCH_TEXT * 8).encode(), add_bos=False, special=False)
    prompt = [base[i % len(base)] for i in range(args.prompt_len)]
    n_vocab = llm.n_vocab()

    def last_argmax():
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
        return int(np.argmax(logits))

    # Warm-up.
    llm.reset()
    llm.eval(prompt[:32])
    prompt_tps, decode_tps = [], []
    for _ in range(args.repeat):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = last_argmax()
        t1 = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            llm.eval([tok])
            tok = last_argmax()
        t2 = time.perf_counter()
        prompt_tps.append(args.prompt_len / (t1 - t0))
        decode_tps.append((args.new_tokens - 1) / (t2 - t1))
    row = {
        "engine": "llama.cpp",
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "threads": args.threads,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "prompt_tps": statistics.median(prompt_tps),
        "decode_tps": statistics.median(decode_tps),
        "runs": args.repeat,
    }
    if args.json:
        print(json.dumps(row))
    else:
        print(f"llama.cpp {row['version']}, {args.threads} threads: prompt {row['prompt_tps']:.1f} tok/s, "
              f"decode {row['decode_tps']:.1f} tok/s (median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
