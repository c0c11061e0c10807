#!/usr/bin/env bash
# Reproduces the preset × support table for Gemma 3 270M (the analogue of the README's
# "Choosing the default preset and support (SmolLM2, measured)"): for each preset × support,
# `fit --concept C --preset P --support S` on the built-in sets, then `sweep --lambdas 1
# --samples 32 --max-tokens 32 --seed 0` from "Once upon a time" (temperature 1, top-k 50,
# top-p 0.95) with the Wikipedia perplexity of the first 128 tokens of 20 passages under the
# same steering. λ = 0 does not depend on the maps, so it is swept once per concept (on the
# first row's maps) rather than once per row. Every fit and sweep is timed.
#
# Usage: benches/gemma-preset-table.sh [OUT_DIR]
# Environment:
#   ACT_GEMMA_MODEL  model (default models/gemma-3-270m-q4_k_m.gguf)
#   CONCEPTS         built-in concepts (default "football")
#   ROWS             "preset:support" pairs, in the order they run (default: all ten)
#   LIMIT            fit on at most this many samples per side (default: all)
#   SAMPLES, MAX_TOKENS, HELDOUT_SAMPLES  sweep sizes (defaults 32, 32, 20)
# Results: OUT_DIR/table.md (markdown), OUT_DIR/*.csv (each sweep), OUT_DIR/times.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${ACT_GEMMA_MODEL:-models/gemma-3-270m-q4_k_m.gguf}
OUT=${1:-target/gemma-preset-table}
CONCEPTS=${CONCEPTS:-football}
ROWS=${ROWS:-"post-ln:q0-100 post-ln:unbounded all-ln:q0-100 attention:q0-100 mlp:q0-100 all-ln:unbounded attention:unbounded mlp:unbounded residual:q0-100 residual:unbounded"}
SAMPLES=${SAMPLES:-32}
MAX_TOKENS=${MAX_TOKENS:-32}
HELDOUT_SAMPLES=${HELDOUT_SAMPLES:-20}
LIMIT_ARGS=()
[[ -n ${LIMIT:-} ]] && LIMIT_ARGS=(--limit "$LIMIT")

BIN=target/release/act-studio
cargo build --release --locked --quiet
mkdir -p "$OUT"
: >"$OUT/times.tsv"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
# Field of the CSV's first data row: presence as a percentage, perplexity as it is.
field() { # CSV COLUMN
    awk -F, -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        NR == 2 { print $c; exit }' "$1"
}
pct() { awk -v x="$1" 'BEGIN { if (x == "") print "—"; else printf "%.1f %%", 100 * x }'; }
ppl() { awk -v x="$1" 'BEGIN { if (x == "") print "—"; else if (x < 1000) printf "%.1f", x; else printf "%.3g", x }'; }

sweep() { # MAPS CONCEPT LAMBDAS CSV
    "$BIN" sweep --model "$MODEL" --maps "$1" --keywords "builtin:$2" --lambdas "$3" \
        --samples "$SAMPLES" --max-tokens "$MAX_TOKENS" --seed 0 \
        --heldout builtin:wikipedia --heldout-samples "$HELDOUT_SAMPLES" --heldout-tokens 128 \
        --csv "$4" >"${4%.csv}.txt" 2>/dev/null
}

declare -A CELL
for c in $CONCEPTS; do
    first=1
    for row in $ROWS; do
        preset=${row%%:*} support=${row#*:}
        tag="$c-$preset-$support"
        maps="$OUT/$tag.safetensors"
        t0=$(now)
        "$BIN" fit --model "$MODEL" --concept "$c" --name "$c" --preset "$preset" \
            --support "$support" "${LIMIT_ARGS[@]}" --out "$maps" 2>/dev/null
        t1=$(now)
        fit_s=$(secs "$t0" "$t1")
        if [[ $first == 1 ]]; then
            sweep "$maps" "$c" 0 "$OUT/$c-lambda0.csv"
            first=0
            t2=$(now)
            printf '%s\tsweep λ=0\t%s s\n' "$c" "$(secs "$t1" "$t2")" | tee -a "$OUT/times.tsv"
            CELL["$c:base"]="$(pct "$(field "$OUT/$c-lambda0.csv" presence)") / $(ppl "$(field "$OUT/$c-lambda0.csv" perplexity)")"
            t1=$(now)
        fi
        sweep "$maps" "$c" 1 "$OUT/$tag.csv"
        t2=$(now)
        printf '%s\tfit %s s\tsweep λ=1 %s s\n' "$tag" "$fit_s" "$(secs "$t1" "$t2")" | tee -a "$OUT/times.tsv"
        CELL["$c:$row"]="$(pct "$(field "$OUT/$tag.csv" presence)") / $(ppl "$(field "$OUT/$tag.csv" perplexity)")"
    done
done

{
    printf 'At λ = 0:'
    for c in $CONCEPTS; do printf ' %s %s;' "$c" "${CELL[$c:base]}"; done
    printf ' (presence / perplexity)\n\n| preset | support |'
    for c in $CONCEPTS; do printf ' %s presence / ppl at λ = 1 |' "$c"; done
    printf '\n|---|---|'
    for c in $CONCEPTS; do printf -- '---|'; done
    printf '\n'
    for row in $ROWS; do
        printf '| %s | %s |' "${row%%:*}" "${row#*:}"
        for c in $CONCEPTS; do printf ' %s |' "${CELL[$c:$row]}"; done
        printf '\n'
    done
} | tee "$OUT/table.md"
