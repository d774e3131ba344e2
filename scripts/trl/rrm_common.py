"""Shared pieces of the TRL scripts: finding and loading the model rrm uses, reading rrm's TRL
export, and tokenizing prompts and completions exactly as rrm does.

rrm's conventions reproduced here (see src/policy/data.rs, src/compose/prompt.rs,
src/reward/lm.rs):

- A string `prompt` in an exported row is a node's *input*; rrm renders it with the per-height
  template (height 0: LEAF, height >= 1: COMBINE) into a system and a user message, then with the
  model's chat template and the assistant turn opened (`add_generation_prompt=True`). A list of
  `{"role", "content"}` messages is used as it is.
- A completion is the text stripped of surrounding whitespace, tokenized without special tokens,
  followed by the end-of-turn token (the GGUF's eos, `<|im_end|>` for SmolLM2-Instruct).
- Policy training cuts a prompt longer than `max_prompt` to its last tokens (keeping a leading
  BOS) and a completion longer than `max_completion` to its first tokens.
- The LM reward model scores prompt + summary + end-of-turn, at most `max_tokens`; when too
  long, the *input* loses its end (the same cut for every summary compared).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

# The two templates of src/compose/prompt.rs (LEAF v1, COMBINE v2), rendered without previous
# context. Keep in step with that file: a change there changes every prompt.
LEAF_SYSTEM = (
    "You are a careful literary assistant. You write short, faithful summaries of "
    "book passages: who does what, where, and why, in plain prose."
)
LEAF_USER = (
    "Passage:\n{input}\n\n"
    "Summarize the passage above in a few sentences. Mention the characters by name "
    "and the main events, in order."
)
COMBINE_SYSTEM = (
    "You are a careful literary assistant. You write short, faithful summaries of "
    "books: who does what, where, and why, in plain prose."
)
COMBINE_USER = (
    "Here are summaries of consecutive parts of a book, one paragraph each, in order:\n\n"
    "{input}\n\n"
    "Write one coherent summary of these parts as a single paragraph of plain prose. "
    "Keep the main characters and events, in order."
)

# rrm's defaults (src/lm/lora.rs LoraConfig::default, src/policy/train.rs TrainConfig,
# src/cli/policy.rs, src/reward/lm.rs LmTrainConfig::default).
LORA_RANK = 8
LORA_ALPHA = 16.0
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DPO_BETA = 0.1
DPO_LR_LORA = 1e-4
MAX_PROMPT_TOKENS = 1024
MAX_COMPLETION_TOKENS = 256
REWARD_MAX_TOKENS = 1024

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def set_threads(n: int) -> None:
    """Pins torch (and the BLAS libraries) to `n` threads. Call before importing torch."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def default_model_dir() -> Path:
    """rrm's models folder for the default policy (RRM_MODELS, else ~/.cache/rrm/models)."""
    root = os.environ.get("RRM_MODELS")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rrm" / "models"
    return base / "smollm2-135m"


def resolve_model(model_dir: str | None, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder, gguf file or None). A folder with config.json is a Hugging Face-layout checkpoint
    (e.g. `rrm policy export --format hf`); otherwise it must hold a GGUF (rrm's models folder)."""
    d = Path(model_dir) if model_dir else default_model_dir()
    if not d.is_dir():
        sys.exit(f"model folder {d} does not exist (run `rrm models pull`, or pass --model-dir)")
    if gguf_file is None and (d / "config.json").is_file():
        return str(d), None
    if gguf_file is None:
        ggufs = sorted(p.name for p in d.glob("*.gguf"))
        if not ggufs:
            sys.exit(f"{d} holds neither config.json nor a .gguf file")
        gguf_file = GGUF_NAME if GGUF_NAME in ggufs else ggufs[0]
    return str(d), gguf_file


def _kw(gguf_file):
    return {"gguf_file": gguf_file} if gguf_file else {}


def load_tokenizer(model_dir: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, **_kw(gguf_file))


def load_causal_lm(model_dir: str, gguf_file: str | None):
    """The policy in float32 (a GGUF is dequantized, as rrm's trainer does)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **_kw(gguf_file))
    drop_gguf_marks(model)
    return model


def load_seq_cls(model_dir: str, gguf_file: str | None, pad_token_id: int):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, num_labels=1, **_kw(gguf_file)
    )
    model.config.pad_token_id = pad_token_id
    drop_gguf_marks(model)
    return model


def drop_gguf_marks(model) -> None:
    """A model loaded from a GGUF carries `quantization_config` (quant_method gguf) in its config,
    though its weights are dequantized: saved as is, transformers would look for a GGUF again."""
    cfg = model.config
    if getattr(cfg, "quantization_config", None) is not None:
        try:
            del cfg.quantization_config
        except AttributeError:
            cfg.quantization_config = None
    for m in model.modules():
        if hasattr(m, "hf_quantizer"):
            m.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:
            pass


def end_token_id(tok) -> int:
    """The end-of-turn token rrm appends to every completion: the eos token when it is one token."""
    ids = tok(tok.eos_token, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else tok.eos_token_id


# ---------------------------------------------------------------- data


def node_messages(input_text: str, height: int) -> list[dict]:
    if height == 0:
        system, user = LEAF_SYSTEM, LEAF_USER
    else:
        system, user = COMBINE_SYSTEM, COMBINE_USER
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user.replace("{input}", input_text)},
    ]


def _last_text(v, field: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v:
        last = v[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), str):
            return last["content"]
    raise ValueError(f"`{field}` must be a string or a list of messages")


def read_pairs(path: str) -> list[dict]:
    """Rows of `rrm feedback export --format trl` (or any TRL preference file) as
    {messages, input, height, chosen, rejected, weight}. Every line must parse."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                height = int(obj.get("height") or 0)
                p = obj["prompt"]
                if isinstance(p, str):
                    messages, inp = node_messages(p, height), p
                else:
                    messages = [{"role": m["role"], "content": m["content"]} for m in p]
                    users = [m["content"] for m in messages if m["role"] == "user"]
                    inp = users[-1] if users else ""
                target = obj.get("target")
                if target is not None and float(target) <= 0.5:
                    continue  # a tie or reversed target: no chosen side (rrm's export leaves them out)
                rows.append(
                    {
                        "messages": messages,
                        "input": inp,
                        "height": height,
                        "string_prompt": isinstance(p, str),
                        "chosen": _last_text(obj["chosen"], "chosen"),
                        "rejected": _last_text(obj["rejected"], "rejected"),
                        "weight": float(obj.get("weight") or 1.0),
                    }
                )
            except Exception as e:  # noqa: BLE001 - report every bad line by number
                bad.append(f"line {i}: {e}")
    if bad:
        sys.exit(f"{path}: {len(bad)} bad line(s):\n" + "\n".join(bad[:10]))
    if not rows:
        sys.exit(f"{path}: no preference rows")
    return rows


class RrmEncoder:
    """Tokenizes like rrm's policy `Encoder` (src/policy/data.rs) and LM reward `encode`
    (src/reward/lm.rs)."""

    def __init__(self, tok):
        self.tok = tok
        self.end = end_token_id(tok)
        self.bos = tok.bos_token_id

    def chat(self, messages) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def completion(self, text: str) -> list[int]:
        return self.tok(text.strip(), add_special_tokens=False)["input_ids"] + [self.end]

    def fit(self, prompt, completions, max_prompt, max_completion):
        """rrm's `fit`: the prompt keeps its last tokens (and a leading BOS), completions their first."""
        max_prompt, max_completion = max(1, max_prompt), max(1, max_completion)
        truncated = False
        if len(prompt) > max_prompt:
            truncated = True
            keep_bos = max_prompt > 1 and self.bos is not None and prompt[0] == self.bos
            tail = max_prompt - 1 if keep_bos else max_prompt
            prompt = ([prompt[0]] if keep_bos else []) + prompt[len(prompt) - tail :]
        out = []
        for c in completions:
            if len(c) > max_completion:
                truncated = True
                c = c[:max_completion]
            out.append(c)
        return prompt, out, truncated

    def dpo_row(self, row, max_prompt=MAX_PROMPT_TOKENS, max_completion=MAX_COMPLETION_TOKENS):
        prompt, (c, r), cut = self.fit(
            self.chat(row["messages"]),
            [self.completion(row["chosen"]), self.completion(row["rejected"])],
            max_prompt,
            max_completion,
        )
        return {"prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r, "truncated": cut}

    def reward_seqs(self, row, summaries, max_tokens=REWARD_MAX_TOKENS):
        """Token sequences prompt + summary + end for each summary, as rrm's LM reward model sees
        them; (seqs, cut)."""
        tails = [self.completion(s) for s in summaries]
        longest = max(len(t) for t in tails)

        def head_of(text):
            msgs = node_messages(text, row["height"]) if row["string_prompt"] else row["messages"]
            return self.chat(msgs)

        head = head_of(row["input"])
        cut = len(head) + longest > max_tokens
        if cut and row["string_prompt"]:
            input_ids = self.tok(row["input"].strip(), add_special_tokens=False)["input_ids"]
            keep = max(0, len(input_ids) - (len(head) + longest - max_tokens))
            while True:
                text = self.tok.decode(input_ids[:keep], skip_special_tokens=True)
                head = head_of(text)
                over = max(0, len(head) + longest - max_tokens)
                if over == 0 or keep == 0:
                    break
                keep = max(0, keep - over)
        seqs = []
        for t in tails:
            ids = head + t
            if len(ids) > max_tokens:
                ids = ids[len(ids) - max_tokens :]
            seqs.append(ids)
        return seqs, cut


def lora_config(task_type: str, rank=LORA_RANK, alpha=LORA_ALPHA, targets=None, seq_cls_head=False):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,  # rrm's adapters have no dropout
        target_modules=list(targets or LORA_TARGETS),
        bias="none",
        task_type=task_type,
        modules_to_save=["score"] if seq_cls_head else None,
    )


def parse_targets(s: str) -> list[str]:
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    out = []
    for part in s.split(","):
        part = part.strip()
        if part == "all":
            out += LORA_TARGETS
        elif part == "attn":
            out += LORA_TARGETS[:4]
        elif part == "mlp":
            out += LORA_TARGETS[4:]
        elif part in names:
            out.append(names[part])
        elif part in LORA_TARGETS:
            out.append(part)
        else:
            sys.exit(f"unknown LoRA target `{part}` (q, k, v, o, gate, up, down, attn, mlp, all)")
    return list(dict.fromkeys(out))


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for p in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "gguf"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def cpu_info() -> dict:
    info = {"model": None, "avx2": False, "avx512f": False, "avx512_bf16": False, "amx": False}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name") and info["model"] is None:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["avx2"] = "avx2" in flags
                info["avx512f"] = "avx512f" in flags
                info["avx512_bf16"] = "avx512_bf16" in flags
                info["amx"] = "amx_tile" in flags
                break
    except OSError:
        pass
    info["logical_cpus"] = os.cpu_count()
    return info
