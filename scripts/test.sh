#!/usr/bin/env bash
# Installs what is missing (libtorch, the Rust build, the plugin libraries) and runs
# the whole test suite: unit tests, plugin parity tests against the committed
# TerraTorch fixtures, and integration tests that load the built plugin libraries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh
bash scripts/setup-gdal.sh
echo "==> building the workspace (debug), plugin libraries included" >&2
cargo build --workspace
echo "==> running the tests" >&2
cargo test --workspace --no-fail-fast "$@"
