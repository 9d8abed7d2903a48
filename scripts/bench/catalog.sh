#!/usr/bin/env bash
# The catalog benchmark: prithvi_eo_v1_100 + SelectIndices[2,5,8,11] + ReshapeTokensToImage
# + LearnedInterpolateToPyramidal + UNetDecoder[512,256,128,64], 2 classes, input
# 1x6x224x224 (scripts/bench/prithvi_unet.yaml), in terrahost and in TerraTorch 1.2.11,
# with the same libtorch thread count. Writes target/bench/catalog.json and prints a table.
#
#   scripts/bench/catalog.sh            # THREADS=2 RUNS=7 by default
#   THREADS=1 RUNS=9 scripts/bench/catalog.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
threads="${THREADS:-2}"
runs="${RUNS:-7}"
out="target/bench"
mkdir -p "$out"

bash scripts/setup-libtorch.sh
[ -x .venv-ref/bin/python ] || bash scripts/reference/setup_venv.sh
cargo build --release --workspace

echo "==> terrahost: build and forward, plugin libraries and linked in-process (medians of $runs)"
TERRAHOST_BENCH_THREADS="$threads" TERRAHOST_BENCH_RUNS="$runs" \
  cargo bench -q -p terrahost-integration-tests --bench catalog | tail -n 1 >"$out/catalog-terrahost.json"

for mode in no_grad inference_mode; do
  echo "==> TerraTorch 1.2.11 ($mode): build and forward (medians of $runs)"
  .venv-ref/bin/python scripts/bench/terratorch_reference.py --runs "$runs" --threads "$threads" --mode "$mode" \
    >"$out/catalog-terratorch-$mode.json"
done

echo "==> peak RSS of one build + one forward in a fresh process (median of 3)"
peak() { # prints the peak RSS in KiB of the command
  /usr/bin/time -f '%M' -o "$out/.rss" "$@" >/dev/null
  cat "$out/.rss"
}
rss_th=(); rss_tt=()
for _ in 1 2 3; do
  rss_th+=("$(peak target/release/terrahost --threads "$threads" run --config scripts/bench/prithvi_unet.yaml \
    --input-shape 1,6,224,224 --json)")
  rss_tt+=("$(peak .venv-ref/bin/python scripts/bench/terratorch_reference.py --once --threads "$threads")")
done

python3 - "$out" "$threads" "${rss_th[*]}" "${rss_tt[*]}" <<'PY'
import json, statistics, sys
out, threads, rss_th, rss_tt = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
th = json.load(open(f"{out}/catalog-terrahost.json"))
tt = {m: json.load(open(f"{out}/catalog-terratorch-{m}.json")) for m in ("no_grad", "inference_mode")}
rss_th_mb = statistics.median(int(x) for x in rss_th) / 1024
rss_tt_mb = statistics.median(int(x) for x in rss_tt) / 1024
fwd = th["forward_s"]["plugins"]
eager = min(tt[m]["forward_s"] for m in tt)  # the faster of PyTorch's two modes
summary = {
    "threads": threads,
    "runs": th["runs"],
    "build_s": {"terrahost": th["build_s"]["plugins"], "terrahost_in_process": th["build_s"]["in_process"],
                "terratorch": tt["no_grad"]["build_s"]},
    "forward_s": {"terrahost": fwd, "terrahost_in_process": th["forward_s"]["in_process"],
                  "terratorch_no_grad": tt["no_grad"]["forward_s"],
                  "terratorch_inference_mode": tt["inference_mode"]["forward_s"]},
    "peak_rss_mib": {"terrahost": rss_th_mb, "terratorch": rss_tt_mb},
    "ratios": {
        "build_vs_terratorch": th["build_s"]["plugins"] / tt["no_grad"]["build_s"],
        "forward_vs_pytorch_eager": fwd / eager,
        "forward_vs_in_process": th["forward_boundary_ratio"],
        "peak_rss_vs_python": rss_th_mb / rss_tt_mb,
    },
}
json.dump(summary, open(f"{out}/catalog.json", "w"), indent=2)
r = summary["ratios"]
print(f"threads {threads}, medians of {th['runs']}")
print(f"{'':28s}{'terrahost':>12s}{'TerraTorch':>12s}{'ratio':>8s}  target")
print(f"{'build':28s}{th['build_s']['plugins']*1e3:>10.0f}ms{tt['no_grad']['build_s']*1e3:>10.0f}ms{r['build_vs_terratorch']:>8.2f}  <= 0.5")
print(f"{'forward (vs faster eager)':28s}{fwd*1e3:>10.1f}ms{eager*1e3:>10.1f}ms{r['forward_vs_pytorch_eager']:>8.3f}  <= 0.97")
print(f"{'forward vs in-process':28s}{fwd*1e3:>10.1f}ms{th['forward_s']['in_process']*1e3:>10.1f}ms{r['forward_vs_in_process']:>8.3f}  <= 1.01")
print(f"{'peak RSS':28s}{rss_th_mb:>9.0f}MiB{rss_tt_mb:>9.0f}MiB{r['peak_rss_vs_python']:>8.2f}  < 1")
print(f"(TerraTorch forward: no_grad {tt['no_grad']['forward_s']*1e3:.1f} ms, inference_mode {tt['inference_mode']['forward_s']*1e3:.1f} ms)")
PY
