#!/usr/bin/env python
"""A synthetic W x H x 6-band uint16 HLS-like GeoTIFF for the predict benchmarks: smooth
sine/cosine patterns per band, LZW, 512 x 512 tiles, EPSG:32633, nodata 0, written one
block row at a time (so a 20000 x 20000 scene never sits in memory).

    .venv-ref/bin/python scripts/bench/synthetic_scene.py PATH WIDTH HEIGHT [--nodata-corner]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_scene(path: Path, width: int, height: int, nodata_corner: bool = False) -> None:
    """Writes the scene; with `nodata_corner`, a 40 x 40 block of nodata in the top left."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    prof = dict(driver="GTiff", width=width, height=height, count=6, dtype="uint16", crs="EPSG:32633",
                nodata=0, transform=from_origin(500000, 4100000, 30, 30), compress="lzw", tiled=True,
                blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
    x = np.arange(width)
    with rasterio.open(path, "w", **prof) as dst:
        for y0 in range(0, height, 512):
            n = min(512, height - y0)
            y = np.arange(y0, y0 + n)[:, None]
            block = np.stack([(1000 + 800 * np.sin(x[None, :] / (50 + 7 * b)) * np.cos(y / (70 + 5 * b)) + b * 300)
                              .astype(np.uint16) for b in range(6)])
            if nodata_corner and y0 == 0:
                block[:, :40, :40] = 0
            dst.write(block, window=Window(0, y0, width, n))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("width", type=int)
    ap.add_argument("height", type=int)
    ap.add_argument("--nodata-corner", action="store_true")
    a = ap.parse_args()
    write_scene(a.path, a.width, a.height, a.nodata_corner)
