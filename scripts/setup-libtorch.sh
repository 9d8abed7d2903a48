#!/usr/bin/env bash
# Installs libtorch 2.13.0 (the version tch 0.26 expects) into the project virtualenv
# .venv, and points .venv/libtorch at it. Idempotent: a second run only checks.
#
# The lean install: the torch wheel without its Python dependencies, plus the two CUDA
# runtime libraries that libtorch_cpu/libc10 link (libcudart, libcupti; about 5 MB).
# The host and the plugins link only libtorch_cpu and libc10, so the 3.5 GB of CUDA
# math libraries the full wheel pulls in are never needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
marker="$venv/.libtorch-2.13.0"

if [ -f "$marker" ] && [ -e "$venv/libtorch/lib/libtorch_cpu.so" ]; then
    exit 0
fi

command -v python3 >/dev/null || { echo "error: python3 is needed to install libtorch (apt-get install python3 python3-venv)" >&2; exit 1; }
echo "==> installing libtorch 2.13.0 into $venv (once)" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn "$site/torch" "$venv/libtorch"
test -e "$venv/libtorch/lib/libtorch_cpu.so" || { echo "error: libtorch_cpu.so missing after install" >&2; exit 1; }
touch "$marker"
echo "==> libtorch ready at $venv/libtorch" >&2
