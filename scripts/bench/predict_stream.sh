#!/usr/bin/env bash
# Streaming demonstration: a generated W x H x 6-band uint16 GeoTIFF (default 20000 x 20000,
# 4.8 GB decoded) through `terrahost predict` with tiling, reporting the scene's decoded
# size, the wall time and terrahost's peak RSS (VmHWM, from its --json summary). Memory is
# bounded by the strip (O(width x crop)), not by the scene.
#
#   scripts/bench/predict_stream.sh [WIDTH] [HEIGHT]
#
# The model is the predict fixture's tiny timm_resnet18 + FCNDecoder with synthetic
# weights (the memory figure does not depend on the model), crop 224, stride 192,
# batch_size 8. Uses the release build (PROFILE=debug for the debug one; built when
# missing) and .venv-ref (for rasterio, to write the scene through GDAL, and for the
# synthetic weights).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
W="${1:-20000}"; H="${2:-20000}"
work="${WORK:-target/predict-stream}"
mkdir -p "$work/scenes" "$work/out"
py=.venv-ref/bin/python
profile="${PROFILE:-release}"
[ -x "target/$profile/terrahost" ] || cargo build --workspace $([ "$profile" = release ] && echo --release)
th="target/$profile/terrahost"
plugins="$work/plugins"; mkdir -p "$plugins"
for p in terratorch timm smp mmseg; do ln -sf "$root/target/$profile/libterrahost_plugin_$p.so" "$plugins/"; done
scene="$work/scenes/scene_${W}x${H}.tif"
if [ ! -f "$scene" ]; then
    echo "==> writing $scene (LZW, 512 x 512 tiles, written block row by block row)" >&2
    "$py" scripts/bench/synthetic_scene.py "$scene" "$W" "$H"
fi
"$py" - "$work/weights.safetensors" <<'PY'
import sys, json; sys.path.insert(0, "scripts/reference")
import refkit
from pathlib import Path
from safetensors.torch import save_file
sd = refkit.synth_from_key_list(Path("tests/fixtures/predict/whole/state_dict.json"))
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[1])
PY
echo "==> terrahost predict on ${W} x ${H} x 6 uint16 ($(( W * H * 6 * 4 / 1000000 )) MB as float32, $(( W * H * 6 * 2 / 1000000 )) MB as uint16)" >&2
"$th" --plugin-dir "$plugins" predict --config tests/fixtures/predict/whole/config.yaml \
    --weights "$work/weights.safetensors" --input "$scene" --output-dir "$work/out" --overwrite --quiet --json \
    --set 'model.init_args.tiled_inference_parameters={crop: 224, stride: 192, batch_size: 8}' \
    > "$work/summary.json"
"$py" - "$work/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
sc = s["scenes"][0]
print(f"scene {sc['width']} x {sc['height']} x {sc['bands']}: {sc['chips']} chips in {sc['seconds']:.0f} s "
      f"({sc['chips'] / sc['seconds']:.1f} chips/s); peak RSS {s['peak_rss_mib']:.0f} MiB")
PY
