#!/usr/bin/env bash
# What `--precision bf16` costs in accuracy on TerraTorch's own configs: runs the corpus
# (tests/corpus) through `terrahost run --precision bf16` with the corpus test's synthetic
# weights and inputs, against each config's float64 reference, and prints a Markdown
# summary of target/corpus-bf16-report.json (the README quotes it).
#   scripts/bench/bf16_accuracy.sh            # the whole corpus
#   scripts/bench/bf16_accuracy.sh prithvi    # the configs whose name contains `prithvi`
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --workspace
TERRAHOST_CORPUS_ONLY="${1:-}" cargo test -q -p terrahost-integration-tests --test integration \
    corpus::bf16_accuracy_on_the_corpus -- --ignored --exact 2>&1 | grep -E "^(bf16:|test result)" || true
python3 scripts/bench/bf16_accuracy_table.py target/corpus-bf16-report.json
