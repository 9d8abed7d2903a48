#!/usr/bin/env bash
# Issue 19, "measure first": the catalog model (scripts/bench/prithvi_unet.yaml) in terrahost
# (persistent worker) beside PyTorch 2.15 eager fp32 and autocast bf16, ONNX Runtime fp32,
# OpenVINO fp32 and bf16, and TerraTorch on PyTorch 2.13, all with the same weights and input,
# interleaved rounds at batch 1 and 8, ratios to PyTorch 2.15 fp32, accuracy against float64.
# Writes target/bench/runtimes-b{1,8}.json and .md and prints the tables.
#
#   scripts/bench/runtimes.sh                       # ROUNDS_B1=11 ROUNDS_B8=7 THREADS=2
#   ROUNDS_B8=5 BF16_ROUNDS_B8=2 scripts/bench/runtimes.sh
#
# BF16_ROUNDS_B1 / BF16_ROUNDS_B8 cap the rounds of PyTorch's autocast bf16 worker, which is
# many times slower than fp32 on a CPU without native bf16 (AVX2 only); default: every round.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
threads="${THREADS:-2}"
out="target/bench"
mkdir -p "$out"

bash scripts/setup-libtorch.sh
[ -x .venv-ref/bin/python ] || bash scripts/reference/setup_venv.sh
[ -x .venv-bench/bin/python ] || bash scripts/bench/setup_bench_venv.sh

for batch in 1 8; do
  rounds_var="ROUNDS_B$batch"; bf16_var="BF16_ROUNDS_B$batch"
  default_rounds=$([ "$batch" = 1 ] && echo 11 || echo 7)
  rounds="${!rounds_var:-$default_rounds}"
  extra=()
  [ -n "${!bf16_var:-}" ] && extra+=(--rounds-of "torch215-bf16=${!bf16_var}")
  echo "==> batch $batch, $rounds rounds"
  .venv-bench/bin/python scripts/bench/forward_pairs.py --batch "$batch" --rounds "$rounds" --threads "$threads" \
    "${extra[@]}" --json "$out/runtimes-b$batch.json" --markdown "$out/runtimes-b$batch.md"
done
