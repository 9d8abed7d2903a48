#!/usr/bin/env bash
# The main job, end to end: install libtorch if missing, build in release, install the
# four plugins, list the merged registries, then build a model whose parts come from
# three plugins (timm backbone, terratorch neck, smp decoder, terratorch head) and run
# it on a random tensor.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PROFILE=release bash scripts/build.sh
th=target/release/terrahost
run() { echo; echo "\$ terrahost $*"; "$th" "$@"; }
run plugins
run list
run show decoder smp_Unet
run build decoder FCNDecoder --channels 64,128,256,512 --args '{"channels": 64}'
run run --config scripts/demo/segmentation.yaml --input-shape 1,3,224,224 --output target/demo-output.safetensors
