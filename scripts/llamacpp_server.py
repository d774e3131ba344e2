#!/usr/bin/env python3
"""A sequential llama.cpp peer for end-to-end comparisons: a minimal OpenAI-compatible
`/v1/chat/completions` server over an installed llama-cpp-python, answering one request at a
time (no batching), greedy when asked for temperature 0.

    VENV/bin/python scripts/llamacpp_server.py --model PATH.gguf --threads 2 --port 8111 &
    rrm summarize alice --backend openai --endpoint http://127.0.0.1:8111 --model smollm2 \
        --batch-size 1 --db /tmp/peer-db

rrm then builds the same tree, the same prompts and the same output caps as with its own engine,
and sends the nodes one by one: a plain sequential llama.cpp pipeline. Benchmark-only: install
llama-cpp-python in a throwaway virtual environment outside the repository.
"""
import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=8111)
    ap.add_argument("--n-ctx", type=int, default=4096)
    args = ap.parse_args()

    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_batch=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    stats = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "busy_s": 0.0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self.reply(200, {"data": [{"id": "llama.cpp", "object": "model"}]})
            elif self.path.rstrip("/") == "/stats":
                self.reply(200, stats)
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self.reply(404, {"error": "not found"})
                return
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            t0 = time.perf_counter()
            # No reset: llama-cpp-python reuses the KV of a prompt prefix shared with the
            # previous request (the system message), as a plain script calling it would.
            out = llm.create_chat_completion(
                messages=req["messages"],
                max_tokens=req.get("max_tokens", 128),
                temperature=req.get("temperature", 0.0),
                top_p=req.get("top_p", 1.0),
                top_k=req.get("top_k") or 40,
                repeat_penalty=req.get("repeat_penalty") or 1.0,
                seed=req.get("seed"),
            )
            stats["busy_s"] += time.perf_counter() - t0
            stats["requests"] += 1
            usage = out.get("usage", {})
            stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
            stats["completion_tokens"] += usage.get("completion_tokens", 0)
            self.reply(200, out)

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
