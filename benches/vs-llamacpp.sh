#!/usr/bin/env bash
# benches/vs-llamacpp.sh MODEL.gguf [REPS] — ours against llama.cpp on one GGUF file, side by side
# in one run: decode tok/s (128 greedy tokens after a short prompt), prefill tok/s (a ~500-token
# prompt), and peak RSS of the decode run; idle, then with another process keeping one core
# busy. Medians of REPS (default 3) alternating runs.
#
# Needs the release binary (cargo build --release) and llama-cpp-python in $VENV
# (default ~/.cache/llamacpp-bench-venv; `python3 -m venv $VENV && $VENV/bin/pip install
# llama-cpp-python` compiles llama.cpp, ~11 minutes on 2 cores). llama.cpp runs with 2 threads,
# greedy, as ours does with the default thread count on a 2-core machine. llama.cpp's greedy token
# is the numpy argmax of its logits: llama-cpp-python's `sample` adds Python-side work per token
# that grows with the vocabulary and the context (Gemma's 262k vocabulary: 15 vs 21 tok/s), which
# would flatter us.
set -eu
model=${1:?usage: benches/vs-llamacpp.sh MODEL.gguf [REPS]}
reps=${2:-3}
VENV=${VENV:-$HOME/.cache/llamacpp-bench-venv}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/act-studio
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
"$VENV/bin/python" -c "import llama_cpp" || { echo "llama-cpp-python missing in $VENV" >&2; exit 1; }
short="Once upon a time, in a small village by the sea, there lived an old fisherman who"
para="The history of the lighthouse begins with fires lit on hilltops to guide sailors home, and over the centuries these beacons grew into towers of stone with lamps, lenses and keepers who tended them through every storm. "
long=""
for _ in $(seq 12); do long="$long$para"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ -n "${busy:-}" ] && kill "$busy" 2>/dev/null; true' EXIT

ours() { # prompt max_tokens → "prefill_tok/s decode_tok/s peak_rss_kib"
  /usr/bin/time -f "%M" -o "$tmp/rss" "$bin" generate --model "$model" --prompt "$1" \
    --max-tokens "$2" --temperature 0 --stats > /dev/null 2> "$tmp/err"
  p=$(grep -o 'prefill: [0-9]* tokens, [0-9.]*' "$tmp/err" | awk '{print $4}')
  d=$(grep -o 'decode: [0-9]* tokens, [0-9.]*' "$tmp/err" | awk '{print $4}')
  echo "$p $d $(tail -1 "$tmp/rss")"
}
theirs() { # prompt max_tokens → "prefill_tok/s decode_tok/s peak_rss_kib"
  /usr/bin/time -f "%M" -o "$tmp/rss" "$VENV/bin/python" - "$model" "$1" "$2" > "$tmp/out" <<'PY'
import sys, time, llama_cpp
import numpy as np
llm = llama_cpp.Llama(model_path=sys.argv[1], n_threads=2, n_ctx=1024, verbose=False)
toks = llm.tokenize(sys.argv[2].encode(), add_bos=False)
t = time.time(); llm.eval(toks); p = len(toks) / (time.time() - t)
n = int(sys.argv[3]) - 1
t = time.time()
for _ in range(n):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
print(p, n / (time.time() - t))
PY
  echo "$(cat "$tmp/out") $(tail -1 "$tmp/rss")"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "model: $model ($(du -m "$model" | cut -f1) MB), $reps reps, medians"
for load in idle busy; do
  busy=""
  if [ $load = busy ]; then sh -c 'while :; do :; done' & busy=$!; fi
  : > "$tmp/o"; : > "$tmp/t"
  for _ in $(seq "$reps"); do
    d_o=$(ours "$short" 128); p_o=$(ours "$long" 2)
    d_t=$(theirs "$short" 128); p_t=$(theirs "$long" 2)
    echo "$(echo "$p_o" | cut -d' ' -f1) $(echo "$d_o" | cut -d' ' -f2) $(echo "$d_o" | cut -d' ' -f3)" >> "$tmp/o"
    echo "$(echo "$p_t" | cut -d' ' -f1) $(echo "$d_t" | cut -d' ' -f2) $(echo "$d_t" | cut -d' ' -f3)" >> "$tmp/t"
  done
  [ -n "$busy" ] && kill "$busy" && busy=""
  for col in 1 2 3; do
    o=$(cut -d' ' -f$col "$tmp/o" | median); t=$(cut -d' ' -f$col "$tmp/t" | median)
    name=$(echo "prefill_tok/s decode_tok/s peak_rss_MiB" | cut -d' ' -f$col)
    if [ $col = 3 ]; then o=$((o / 1024)); t=$((t / 1024)); fi
    awk -v l=$load -v n=$name -v o=$o -v t=$t 'BEGIN {printf "%-5s %-14s ours %8.1f  llama.cpp %8.1f  ratio %.2f×\n", l, n, o, t, o / t}'
  done
done
