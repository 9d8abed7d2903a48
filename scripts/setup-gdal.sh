#!/usr/bin/env bash
# Installs GDAL's development files (libgdal + headers + gdal.pc) when pkg-config does
# not find them: the `gdal` crate links the system's libgdal through pkg-config.
# Idempotent: when `pkg-config --exists gdal` succeeds it does nothing.
set -euo pipefail
if command -v pkg-config >/dev/null && pkg-config --exists gdal; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: libgdal (with its pkg-config file gdal.pc) is missing and this system has no apt-get;" >&2
    echo "       install GDAL's development package yourself (e.g. dnf install gdal-devel," >&2
    echo "       brew install gdal pkg-config) and run this again" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo="sudo"
    else
        echo "error: libgdal is missing and installing it needs root:" >&2
        echo "       run 'sudo apt-get update && sudo apt-get install -y libgdal-dev pkg-config', then this again" >&2
        exit 1
    fi
fi
echo "==> installing libgdal-dev and pkg-config with apt-get (once)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends libgdal-dev pkg-config >/dev/null
pkg-config --exists gdal || { echo "error: pkg-config still finds no gdal after installing libgdal-dev" >&2; exit 1; }
echo "==> libgdal $(pkg-config --modversion gdal) ready" >&2
