#!/usr/bin/env python3
"""Reference numbers from llama.cpp (through llama-cpp-python) for rrm's family tests.

    dump.py logits MODEL.gguf IDS.json OUT      # logits of every position: OUT.f32 + OUT.json
    dump.py tokenize MODEL.gguf TEXTS.json OUT.json

`logits` evaluates the token ids in IDS.json (a JSON list of ints) from an empty cache with
`logits_all=True` and writes the (n_tokens, n_vocab) float32 matrix, row-major little-endian,
to OUT.f32, and {"rows": n, "vocab": v} to OUT.json. `tokenize` writes, for each string of
TEXTS.json, llama.cpp's ids without BOS and with special tokens parsed.

Run it in a throwaway environment with llama-cpp-python importable (for a source tree:
PYTHONPATH=<llama_cpp_python>/ and LLAMA_CPP_LIB_PATH=<folder with libllama.so>), numpy not
needed. tests/families_llamacpp.rs calls it when RRM_LLAMACPP_PYTHON names that python.
"""
import array
import json
import sys

import llama_cpp


def load(path, n_ctx, vocab_only=False):
    return llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=max(n_ctx, 8),
        n_threads=2,
        logits_all=True,
        vocab_only=vocab_only,
        verbose=False,
    )


def main():
    mode, model, inp, out = sys.argv[1:5]
    with open(inp, encoding="utf-8") as f:
        data = json.load(f)
    if mode == "logits":
        ids = [int(i) for i in data]
        llm = load(model, n_ctx=max(len(ids) + 8, 64))
        llm.eval(ids)
        vocab = llm.n_vocab()
        flat = array.array("f")
        for row in range(len(ids)):
            flat.extend(llm.scores[row][:vocab].tolist())
        if sys.byteorder != "little":
            flat.byteswap()
        with open(out + ".f32", "wb") as f:
            flat.tofile(f)
        with open(out + ".json", "w") as f:
            json.dump({"rows": len(ids), "vocab": vocab}, f)
    elif mode == "tokenize":
        llm = load(model, n_ctx=64, vocab_only=True)
        ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in data]
        with open(out, "w") as f:
            json.dump(ids, f)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
