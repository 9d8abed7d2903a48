#!/usr/bin/env bash
# The main job, end to end: install libtorch if missing, build in release, install the
# four plugins, list the merged registries, then build models whose parts come from
# several plugins and run them on random tensors: a timm backbone, a terratorch neck, an
# smp decoder and a terratorch head; and the Prithvi-EO 100M backbone with three
# terratorch necks, a UNet decoder and a head (the catalog benchmark's model).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-gdal.sh
PROFILE=release bash scripts/build.sh
th=target/release/terrahost
run() { echo; echo "\$ terrahost $*"; "$th" "$@"; }
run plugins
run list
run show decoder smp_Unet
run show backbone prithvi_eo_v2_300_tl
run build decoder FCNDecoder --channels 64,128,256,512 --args '{"channels": 64}'
run build neck LearnedInterpolateToPyramidal --channels 768,768,768,768
run run --config scripts/demo/segmentation.yaml --input-shape 1,3,224,224 --output target/demo-output.safetensors
run run --config scripts/bench/prithvi_unet.yaml --input-shape 1,6,224,224
# One of TerraTorch's own configs, unchanged (tests/corpus/terratorch/), through PrithviModelFactory:
run run --config tests/corpus/terratorch/tests/resources/configs/manufactured-finetune_prithvi_swin_B_segmentation.yaml --input-shape 1,6,224,224
# GeoTIFF scenes, tiled as TerraTorch tiles them (random weights here; pass --weights CKPT for a trained model):
run predict --config tests/fixtures/predict/average/config.yaml --input tests/fixtures/predict/average/scenes --output-dir target/demo-predict --overwrite
