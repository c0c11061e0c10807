#!/usr/bin/env python3
"""Records llama.cpp's tokenization of a set of awkward strings on one GGUF file, as the
reference our SentencePiece tokenizer must reproduce (tests/gemma_tokenizer.rs).

    python tools/record-llamacpp-tokens.py [MODEL.gguf [OUT.json]]

Defaults: models/gemma-3-270m-q4_k_m.gguf and tests/fixtures/gemma3_270m_tokens.json.
Needs llama-cpp-python (pip install llama-cpp-python); only the vocabulary is loaded
(`vocab_only=True`). For every string it records

- `ids_special`: `llm.tokenize(text, add_bos=True, special=True)` (special-token text such as
  `<start_of_turn>` becomes its single id),
- `ids_plain`: the same with `special=False` (control-token text is tokenized as text),
- `text_unparsed`: llama.cpp's `llama_detokenize(ids_special, remove_special=False,
  unparse_special=True)` (control tokens written out),
- `text_removed`: `llama_detokenize(ids_special, remove_special=True, unparse_special=False)`
  (BOS removed, control tokens dropped).

The detokenized texts are decoded from UTF-8 with replacement characters (all strings here
decode cleanly).
"""
import ctypes
import hashlib
import json
import os
import sys

import llama_cpp

STRINGS = [
    "",
    " ",
    "\n",
    "Hello world",
    " Hello",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between  words",
    "line one\nline two\n\nline four\n",
    "\ttab\tseparated\tvalues\t",
    "  \n  \t \n",
    "1234567890 3.14159 -42 1e10 007",
    "The year 2024 had 366 days, i.e. 8784 hours; 31415926535897932384626433832795028841971.",
    "Hello, world! How's it going?... (yes) [no] {maybe} @user #hash $5 100% a&b ~/.x --flag",
    "emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️",
    "中文分词测试，日本語のテキスト、한국어 텍스트。",
    "Café naïve résumé Straße Ångström façade e\u0301",
    "Mixed: English, русский, العربية, עברית, हिन्दी, ελληνικά, ไทย",
    "<start_of_turn>user\nWrite a poem.<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos",
    "text <eos> middle <pad> and <unk> end",
    "<start_of_image><end_of_image>[multimodal] <unused0> <mask>",
    "<start_of_turn <end_of_turn> <<bos>> </bos>",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 4,
    "xqzjvkwpxqzjvkwpxqzjvkwpxqzjvkwpxqzjvkwpxqzjvkwpxqzjvkwpxqzjvkwp",
    "rare: 𓀀𓁐𒀀 \u0001\u0007\u007f \ufeff zero\u200bwidth",
    "fn main() {\n    println!(\"hi {}\", 1 + 2);\n}\n",
    "https://example.com/path?query=1&b=2#frag user@example.org",
    "ALL CAPS and MiXeD CaSe, snake_case and camelCase",
    "▁already▁escaped ▁",
]


def detokenize(vocab, ids, remove_special, unparse_special):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
    if n < 0:
        raise RuntimeError(f"detokenize needs {-n} bytes")
    return buf.raw[:n].decode("utf-8", errors="replace")


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models/gemma-3-270m-q4_k_m.gguf")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "tests/fixtures/gemma3_270m_tokens.json")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    records = []
    for s in STRINGS:
        ids_special = llm.tokenize(s.encode(), add_bos=True, special=True)
        ids_plain = llm.tokenize(s.encode(), add_bos=True, special=False)
        records.append(
            {
                "text": s,
                "ids_special": [int(t) for t in ids_special],
                "ids_plain": [int(t) for t in ids_plain],
                "text_unparsed": detokenize(vocab, ids_special, False, True),
                "text_removed": detokenize(vocab, ids_special, True, False),
            }
        )
    doc = {
        "model": os.path.basename(path),
        "model_sha256": h.hexdigest(),
        "recorded_with": f"llama-cpp-python {llama_cpp.__version__}",
        "calls": "tokenize(text, add_bos=True, special=True|False); "
        "llama_detokenize(ids_special, remove_special, unparse_special)",
        "strings": records,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(records)} strings to {out}")


if __name__ == "__main__":
    main()
