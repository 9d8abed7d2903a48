#!/usr/bin/env bash
# Create (or update) the reference virtualenv .venv-ref at the repository root.
# Idempotent: re-running only installs what is missing or at a different version.
# Needs python3.11 and access to PyPI (torch wheel + deps is ~4.7 GB, 1-2 minutes).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${VENV_REF:-$repo/.venv-ref}"
python="${PYTHON:-python3.11}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi

# The reference is TerraTorch 1.2.13, but its metadata asks for torchgeo>=0.9,<0.10 and the
# package registry here has nothing newer than torchgeo 0.8.1. So the environment is 1.2.11's
# resolved set (requirements.txt pins terratorch==1.2.11 as the resolver's anchor;
# requirements-lock.txt is the full set) with 1.2.13 installed over it with --no-deps. The two
# releases declare the same requirements apart from torchgeo (and the `tortilla` extra), and
# 1.2.13's code imports nothing from torchgeo that 0.8.1 lacks; see README.md.
terratorch_ref=1.2.13

py() { "$venv/bin/python" "$@"; }

py -m pip install --quiet --upgrade pip
have="$(py -c 'import importlib.metadata as m; print(m.version("terratorch"))' 2>/dev/null || true)"
if [ "$have" = "$terratorch_ref" ]; then
    # Already moved to the reference: resolving requirements.txt again would put 1.2.11 back.
    reqs="$(mktemp)"
    trap 'rm -f "$reqs"' EXIT
    grep -v '^terratorch==' "$here/requirements.txt" >"$reqs"
else
    reqs="$here/requirements.txt"
fi
# requirements.txt holds the direct pins, requirements-lock.txt the full resolved set.
py -m pip install --quiet -r "$reqs" -c "$here/requirements-lock.txt"
py -m pip install --quiet --no-deps "terratorch==$terratorch_ref"

# pip check knows only the declared requirements: the one it must report is 1.2.13's torchgeo
# pin; anything else is a real conflict.
problems="$(py -m pip check 2>&1 | grep -v '^terratorch .* has requirement torchgeo' | grep -v '^No broken requirements' || true)"
if [ -n "$problems" ]; then
    echo "error: the reference environment has conflicts besides TerraTorch's torchgeo pin:" >&2
    echo "$problems" >&2
    exit 1
fi

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for d in ["torch", "terratorch", "timm", "segmentation-models-pytorch", "mmsegmentation", "mmcv-lite"]:
    print(f"{d}=={md.version(d)}")
PY
echo "ok: $venv"
