#!/usr/bin/env python3
"""Records llama.cpp's tokenization and greedy continuation of a few prompts on one GGUF file,
as the reference our runtime must reproduce (tests/llamacpp_reference.rs).

    python tools/record-llamacpp-greedy.py MODEL.gguf OUT.json [N_TOKENS]

Needs llama-cpp-python (pip install llama-cpp-python). Prompts are tokenized without an added
BOS (the SmolLM2 GGUF does not ask for one) and with special tokens parsed; greedy decoding is
temperature 0 on the full logits, one token at a time, with 1 thread, a 512-token context and
llama.cpp's default (f16) KV cache.
"""
import hashlib
import json
import sys

import llama_cpp

PROMPTS = [
    "Once upon a time",
    "The capital of France is Paris, and the capital of Germany is",
    "<|im_start|>user\nWrite one sentence about football.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
    "  Leading spaces, digits 12345 and émojis 🎉 in one line.",
]


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    llm = llama_cpp.Llama(model_path=path, n_threads=1, n_ctx=512, verbose=False)
    records = []
    for p in PROMPTS:
        llm.reset()
        toks = llm.tokenize(p.encode(), add_bos=False, special=True)
        llm.eval(toks)
        greedy = []
        for _ in range(n):
            t = llm.sample(temp=0.0)
            greedy.append(int(t))
            if t == llm.token_eos():
                break
            llm.eval([t])
        records.append({"prompt": p, "tokens": [int(t) for t in toks], "greedy": greedy})
        print(repr(p), "->", repr(llm.detokenize(greedy).decode(errors="replace")))
    doc = {
        "generator": "tools/record-llamacpp-greedy.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model_sha256": sha,
        "new_tokens": n,
        "records": records,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
