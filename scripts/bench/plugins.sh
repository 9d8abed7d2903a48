#!/usr/bin/env bash
# Plugin-directory benchmarks (issue 10): cold vs warm `list --json`, `plugins --json`
# with 100 plugin libraries (cold, warm, one changed), the scan cost per new plugin, and
# `run` of the foundation fixture with and without the registry cache. Interleaved A/B,
# medians of 10, release build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh
cargo build --release --workspace
cargo bench -p terrahost-integration-tests --bench plugins
