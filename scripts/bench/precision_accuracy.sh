#!/usr/bin/env bash
# What `--precision bf16` or `--precision int8` costs in accuracy on TerraTorch's own
# configs: runs the corpus (tests/corpus) through `terrahost run --precision P` with the
# corpus test's synthetic weights and inputs, against each config's float64 reference, and
# prints a Markdown summary of target/corpus-P-report.json (the README quotes it).
#   scripts/bench/precision_accuracy.sh bf16            # the whole corpus in bfloat16
#   scripts/bench/precision_accuracy.sh int8 prithvi    # int8, configs whose name has `prithvi`
set -euo pipefail
cd "$(dirname "$0")/../.."
precision="${1:-bf16}"
case "$precision" in
bf16 | int8) ;;
*)
    echo "precision_accuracy.sh: the precision is bf16 or int8, not \`$precision\`" >&2
    exit 2
    ;;
esac
cargo build -q --workspace
TERRAHOST_CORPUS_ONLY="${2:-}" cargo test -q -p terrahost-integration-tests --test integration \
    "corpus::${precision}_accuracy_on_the_corpus" -- --ignored --exact 2>&1 |
    grep -E "^(${precision}:|test result)" || true
python3 scripts/bench/precision_accuracy_table.py "target/corpus-${precision}-report.json"
