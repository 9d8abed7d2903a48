#!/usr/bin/env bash
# Installs what is missing (libtorch, the Rust build, the plugin libraries) and runs
# the whole test suite: unit tests, plugin parity tests against the committed
# TerraTorch fixtures, and integration tests that load the built plugin libraries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# A one-off build gains nothing from incremental state, which doubles the tree's size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The build and libtorch need a few GB; say so up front rather than fail half-way with
# "No space left on device" from the linker.
free_kb=$(df -Pk "$root" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((5 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kb / 1024)) MB free under $root; the libtorch install and" \
        "the debug build need about 5 GB (free some space, or set CARGO_TARGET_DIR" \
        "to a larger disk)" >&2
fi
bash scripts/setup-libtorch.sh
bash scripts/setup-gdal.sh
echo "==> building the workspace (debug), plugin libraries included" >&2
cargo build --workspace
echo "==> running the tests" >&2
cargo test --workspace --no-fail-fast "$@"
