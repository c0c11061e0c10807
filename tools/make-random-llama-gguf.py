#!/usr/bin/env python3
"""Writes a random-weight Llama GGUF in F16 with a real model's tokenizer, for speed and memory
benchmarks of models larger than any file we can download (issue 13: "at least one ≥ 1 B
parameter file; a random-weight model in a real GGUF layout is fine for speed").

    python tools/make-random-llama-gguf.py TOKENIZER_FROM.gguf OUT.gguf [--layers 26]
        [--hidden 2048] [--ffn 5632] [--heads 32] [--kv-heads 4] [--seed 0]

The tokenizer (every `tokenizer.*` key) is copied from TOKENIZER_FROM (e.g. the demo
SmolLM2 file), so both llama.cpp and act-studio load and tokenize it. Weights are
N(0, 0.02²) in F16, norms are 1. Quantize it with
`act-studio quantize --model OUT.gguf --out OUT-q4km.gguf --type q4_k_m`. The defaults give
1.35 B parameters (2.7 GB in F16, about 0.8 GB in Q4_K_M). Needs `pip install gguf numpy`.
"""

import argparse
import time

import numpy as np
import gguf


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("tokenizer_from")
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=26)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.time()
    src = gguf.GGUFReader(a.tokenizer_from)
    tokens = src.fields["tokenizer.ggml.tokens"]
    vocab = len(tokens.data)
    head_dim = a.hidden // a.heads
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("random-llama")
    w.add_context_length(4096)
    w.add_embedding_length(a.hidden)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, field in src.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
            else:
                vals = [field.parts[i].tolist()[0] for i in field.data]
            w.add_key_value(name, vals, kind, sub_type=sub)
        elif kind == gguf.GGUFValueType.STRING:
            w.add_key_value(name, bytes(field.parts[-1]).decode("utf-8"), kind)
        else:
            w.add_key_value(name, field.parts[-1].tolist()[0], kind)
    rng = np.random.default_rng(a.seed)

    def rand(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    kvw = a.kv_heads * head_dim
    w.add_tensor("token_embd.weight", rand(vocab, a.hidden))
    w.add_tensor("output_norm.weight", np.ones(a.hidden, dtype=np.float32))
    w.add_tensor("output.weight", rand(vocab, a.hidden))
    for i in range(a.layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(a.hidden, dtype=np.float32))
        w.add_tensor(b + "attn_q.weight", rand(a.hidden, a.hidden))
        w.add_tensor(b + "attn_k.weight", rand(kvw, a.hidden))
        w.add_tensor(b + "attn_v.weight", rand(kvw, a.hidden))
        w.add_tensor(b + "attn_output.weight", rand(a.hidden, a.hidden))
        w.add_tensor(b + "ffn_norm.weight", np.ones(a.hidden, dtype=np.float32))
        w.add_tensor(b + "ffn_gate.weight", rand(a.ffn, a.hidden))
        w.add_tensor(b + "ffn_up.weight", rand(a.ffn, a.hidden))
        w.add_tensor(b + "ffn_down.weight", rand(a.hidden, a.ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    params = 2 * vocab * a.hidden + a.layers * (2 * a.hidden * a.hidden + 2 * kvw * a.hidden + 3 * a.ffn * a.hidden)
    print(f"wrote {a.out}: {params / 1e9:.2f} B parameters, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
