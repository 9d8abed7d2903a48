#!/usr/bin/env bash
# Create (or update) the benchmark virtualenv .venv-bench at the repository root: what users
# would run instead of terrahost (issue 19) — PyTorch 2.15 eager, ONNX Runtime and OpenVINO —
# with TerraTorch 1.2.13 to build the catalog model on PyTorch 2.15.
# Idempotent: re-running only installs what is missing or at a different version.
# Needs python3.11 and PyPI. PyPI's torch wheel for linux x86_64 is the CUDA build (several GB
# with its nvidia-* dependencies); it runs on CPU.
#
# TerraTorch is installed as scripts/reference/setup_venv.sh does (1.2.11's resolved set, then
# 1.2.13 with --no-deps), except that torch, torchvision and the CUDA packages are not taken from
# the lock: torch is 2.15.0 here and pip picks the torchvision and CUDA libraries that go with it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
ref="$repo/scripts/reference"
venv="${VENV_BENCH:-$repo/.venv-bench}"
python="${PYTHON:-python3.11}"
torch_version=2.15.0
terratorch_ref=1.2.13

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
py() { "$venv/bin/python" "$@"; }
py -m pip install --quiet --upgrade pip

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Direct pins without torch/torchvision (relaxed) and without peft (LoRA fixtures only); the
# terratorch anchor is dropped once 1.2.13 is in, as setup_venv.sh does.
have="$(py -c 'import importlib.metadata as m; print(m.version("terratorch"))' 2>/dev/null || true)"
grep -Ev '^(torch|torchvision|peft)==' "$ref/requirements.txt" \
    | { if [ "$have" = "$terratorch_ref" ]; then grep -v '^terratorch=='; else cat; fi; } >"$tmp/reqs.txt"
# The lock, less what belongs to torch 2.13's build.
grep -Ev '^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*|peft|transformers|accelerate|tokenizers)==' \
    "$ref/requirements-lock.txt" >"$tmp/lock.txt"
cat >>"$tmp/reqs.txt" <<EOF
torch==$torch_version
torchvision
onnx
onnxscript
onnxruntime
openvino
nncf
EOF
py -m pip install --quiet -r "$tmp/reqs.txt" -c "$tmp/lock.txt"
py -m pip install --quiet --no-deps "terratorch==$terratorch_ref"

problems="$(py -m pip check 2>&1 | grep -v '^terratorch .* has requirement torchgeo' \
    | grep -v '^No broken requirements' || true)"
if [ -n "$problems" ]; then
    echo "warning: pip check reports (besides TerraTorch's torchgeo pin):" >&2
    echo "$problems" >&2
fi

py - <<'PY'
import importlib.metadata as md
for d in ["torch", "torchvision", "terratorch", "timm", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf"]:
    try:
        print(f"{d}=={md.version(d)}")
    except md.PackageNotFoundError:
        print(f"{d}: not installed")
PY
echo "ok: $venv"
