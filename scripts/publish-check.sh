#!/usr/bin/env bash
# Checks that the crates plugin authors depend on can be published: packages
# terrahost-common, terrahost-plugin-api and terrahost-layers and builds each from its
# package alone, against the others' packages (`cargo publish --dry-run`; nothing is
# uploaded). Needs libtorch (scripts/setup-libtorch.sh) and the crates.io index.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-libtorch.sh
cargo publish --dry-run --allow-dirty \
    -p terrahost-common -p terrahost-plugin-api -p terrahost-layers "$@"
