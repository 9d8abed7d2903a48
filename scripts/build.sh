#!/usr/bin/env bash
# Builds terrahost (the light front, `terrahost`, and the engine beside it,
# `terrahost-engine`) and the four plugins (PROFILE=release by default, or debug), and
# installs the plugin libraries into target/plugins/, where target/<profile>/terrahost
# finds them by default. To install elsewhere, copy both binaries into one directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile="${PROFILE:-release}"
command -v cargo >/dev/null || { echo "error: cargo is needed (install Rust with rustup)" >&2; exit 1; }
bash scripts/setup-libtorch.sh
bash scripts/setup-gdal.sh
flag=(); [ "$profile" = release ] && flag=(--release)
echo "==> building terrahost and plugins ($profile)" >&2
cargo build "${flag[@]}" -p terrahost-index -p terrahost -p terrahost-plugin-terratorch -p terrahost-plugin-timm \
    -p terrahost-plugin-smp -p terrahost-plugin-mmseg
mkdir -p target/plugins
for p in terratorch timm smp mmseg; do
    cp -f "target/$profile/libterrahost_plugin_$p.so" target/plugins/
done
for b in terrahost terrahost-engine; do
    [ -x "target/$profile/$b" ] || { echo "error: target/$profile/$b was not built" >&2; exit 1; }
done
echo "==> plugins installed in target/plugins/: $(ls target/plugins | tr '\n' ' ')" >&2
