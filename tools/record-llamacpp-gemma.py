#!/usr/bin/env python3
"""Records llama.cpp's tokenization, greedy continuation and perplexity on the Gemma 3 270M file,
as the reference our runtime must reproduce (tests/gemma_reference.rs).

    python tools/record-llamacpp-gemma.py [MODEL.gguf [OUT.json [N_TOKENS]]]

Defaults: models/gemma-3-270m-q4_k_m.gguf, tests/fixtures/gemma3_270m_reference.json, 32.
Needs llama-cpp-python (pip install llama-cpp-python) and numpy. One thread, a 1024-token
context, llama.cpp's default (f16) KV cache, every position's logits kept (`logits_all`).

- Greedy: each prompt is tokenized with `add_bos=True, special=True` (Gemma asks for BOS), then
  decoded one token at a time with `llm.eval`, the next token being numpy's argmax of the last
  logits, until EOS (1), `<end_of_turn>` (106) or N_TOKENS tokens; a stop token is the last of
  `greedy`. Per step it stores the top logit and the chosen token's margin over the runner-up,
  so a test can tell near-ties.
- Perplexity: the first WINDOWS passages of assets/concepts/wikipedia_passages.csv that have at
  least WINDOW_TOKENS tokens, each tokenized with BOS and cut to its first WINDOW_TOKENS ids,
  evaluated in one pass; per window the mean negative log-likelihood (nats, float64
  log-softmax) of tokens 1..n given their prefix, and the ids themselves; `nll_f32_kv` is the
  same with an f32 KV cache (`type_k = type_v = f32`), a measure of llama.cpp's own spread
  (on 128-token windows the two differed by up to 1.6 % in perplexity).
"""
import csv
import hashlib
import json
import os
import sys

import llama_cpp
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROMPTS = [
    "Once upon a time",
    "The capital of France is Paris, and the capital of Germany is",
    "<start_of_turn>user\nWrite one sentence about football.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    ",
    "  Leading spaces, digits 12345 and émojis 🎉 in one line: 3.14159, 2718, ",
]
STOP = (1, 106)
WINDOWS = 4
WINDOW_TOKENS = 256


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    return np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)


def greedy(llm: llama_cpp.Llama, toks: list, n: int) -> dict:
    llm.reset()
    llm.eval(toks)
    out, top, margin = [], [], []
    for _ in range(n):
        row = last_logits(llm)
        order = np.argsort(row)[::-1]
        t = int(order[0])
        out.append(t)
        top.append(float(row[t]))
        margin.append(float(row[t] - row[order[1]]))
        if t in STOP:
            break
        llm.eval([t])
    return {"greedy": out, "top_logit": top, "margin": margin}


def window_nll(llm: llama_cpp.Llama, ids: list) -> float:
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    mx = logits.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
    lp = logits[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]
    return float(-lp.mean())


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests/fixtures/gemma3_270m_reference.json")
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    llm = llama_cpp.Llama(model_path=path, n_threads=1, n_ctx=1024, logits_all=True, verbose=False)
    records = []
    for p in PROMPTS:
        toks = [int(t) for t in llm.tokenize(p.encode(), add_bos=True, special=True)]
        rec = {"prompt": p, "tokens": toks, **greedy(llm, toks, n)}
        records.append(rec)
        print(repr(p), "->", repr(llm.detokenize(rec["greedy"]).decode(errors="replace")),
              "min margin %.3f" % min(rec["margin"]))
    llm32 = llama_cpp.Llama(model_path=path, n_threads=1, n_ctx=1024, logits_all=True, verbose=False,
                            type_k=0, type_v=0)
    windows = []
    with open(os.path.join(ROOT, "assets/concepts/wikipedia_passages.csv"), newline="") as f:
        for row in csv.DictReader(f):
            ids = [int(t) for t in llm.tokenize(row["text"].encode(), add_bos=True, special=False)]
            if len(ids) < WINDOW_TOKENS:
                continue
            ids = ids[:WINDOW_TOKENS]
            nll, nll32 = window_nll(llm, ids), window_nll(llm32, ids)
            windows.append({"passage": int(row[""]), "ids": ids, "nll": nll, "nll_f32_kv": nll32})
            print("passage", row[""], "ppl %.4f, f32 KV %.4f" % (np.exp(nll), np.exp(nll32)))
            if len(windows) == WINDOWS:
                break
    doc = {
        "generator": "tools/record-llamacpp-gemma.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(path),
        "model_sha256": sha,
        "new_tokens": n,
        "stop_tokens": list(STOP),
        "records": records,
        "window_tokens": WINDOW_TOKENS,
        "windows": windows,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
