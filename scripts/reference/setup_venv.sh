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

"$venv/bin/python" -m pip install --quiet --upgrade pip
# requirements.txt holds the direct pins, requirements-lock.txt the full resolved set.
"$venv/bin/python" -m pip install --quiet \
    -r "$here/requirements.txt" \
    -c "$here/requirements-lock.txt"
"$venv/bin/python" -m pip check

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for d in ["torch", "terratorch", "timm", "segmentation-models-pytorch", "mmsegmentation", "mmcv-lite"]:
    print(f"{d}=={md.version(d)}")
PY
echo "ok: $venv"
