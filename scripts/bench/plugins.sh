#!/usr/bin/env bash
# Plugin-directory benchmarks (issue 10): cold vs warm `list --json`, `plugins --json`
# with 100 plugin libraries (cold, warm, one changed), the scan cost per new plugin, and
# `run` of the foundation fixture with and without the registry cache. Interleaved A B A B,
# medians of 10 and the median and range of the pair-by-pair ratios, release build (the
# front `terrahost` and the engine `terrahost-engine` both).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh
cargo build --release --workspace
cargo bench -p terrahost-integration-tests --bench plugins
