#!/usr/bin/env bash
# Foundation benchmarks: cold `terrahost list --json`, `contains` falling through to the
# last source, and build + forward of the fixture model. Medians of 10, release build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh
cargo build --release --workspace
cargo bench -p terrahost-integration-tests --bench foundation
