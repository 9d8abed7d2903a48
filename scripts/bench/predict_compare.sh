#!/usr/bin/env bash
# The predict benchmark of issue 9: `terrahost predict` against TerraTorch 1.2.11's own
# predict path on a generated 2048 x 2048 x 6-band uint16 GeoTIFF, with the catalog model
# (prithvi_eo_v1_100 + UNet, crop 224, stride 192, batch_size 8; predict_prithvi_unet.yaml):
# warm tiles/s interleaved pair by pair, the class maps compared, then cold time to the
# first output file and peak RSS against `terratorch predict`. Release build.
#
#   scripts/bench/predict_compare.sh                  # SIZE=2048 PAIRS=5 COLD_PAIRS=2 THREADS=2
#   SIZE=1024 PAIRS=3 scripts/bench/predict_compare.sh
#
# Writes target/bench/predict/compare.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh
bash scripts/setup-gdal.sh
[ -x .venv-ref/bin/python ] || bash scripts/reference/setup_venv.sh
cargo build --release --workspace
work=target/bench/predict
mkdir -p "$work/plugins"
for p in terratorch timm smp mmseg; do ln -sf "$root/target/release/libterrahost_plugin_$p.so" "$work/plugins/"; done
.venv-ref/bin/python scripts/bench/predict_compare.py --terrahost target/release/terrahost \
    --plugin-dir "$work/plugins" --work "$work" --size "${SIZE:-2048}" --pairs "${PAIRS:-5}" \
    --cold-pairs "${COLD_PAIRS:-2}" --threads "${THREADS:-2}"
