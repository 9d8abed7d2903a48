#!/usr/bin/env bash
# Fuzzes every parser that reads untrusted input (issue 17) with cargo-fuzz on the
# stable toolchain (`-s none`: no sanitizer, which needs nightly; Rust's own bounds and
# overflow checks and libFuzzer's -rss_limit_mb / -timeout still catch crashes, hangs
# and memory blow-ups).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
#
# New inputs that add coverage are written to fuzz/corpus/<target>/ and crashes to
# fuzz/artifacts/<target>/; commit both (crashes into the corpus once fixed): the
# integration test `fuzz_replay` replays the corpus in every `cargo test`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(torch_save safetensors model_config predict_config entry_args name_routing)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
bash "$repo/scripts/setup-libtorch.sh" >/dev/null
cd "$repo/fuzz"
# The fuzz crate is its own workspace, built by cargo-fuzz without the rpath the
# workspace's binaries embed: the targets find libtorch through the loader path.
export LD_LIBRARY_PATH="$repo/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo fuzz build -s none -O
for t in "${targets[@]}"; do
    echo "== $t: ${secs} s"
    # -rss_limit_mb: the readers' budgets are 64 MiB plus libtorch's own footprint;
    # anything near 2 GB is a blow-up. -timeout: one input may take at most 10 s.
    cargo fuzz run -s none -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=262144 \
        -print_final_stats=1 2>&1 | grep -E "stat::number_of_executed_units|stat::peak_rss_mb|ERROR|crash|Done" || true
done
