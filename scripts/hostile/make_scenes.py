#!/usr/bin/env python3
"""Writes the hostile-scene corpus to tests/fixtures/hostile/scenes/ (issue 17).

Each file is a scene someone could send a user, made to exhaust memory or to make GDAL
read what the user did not mean:

- declares_1e6x64.tif: a 6-band GeoTIFF whose header declares 1,000,000 x 64 pixels,
  with no tile written (GDAL's SPARSE_OK): a few KB on disk, 3 GB as float64.
- sparse_1e6x1e6.tif: the same at 1,000,000 x 1,000,000 pixels (48 TB as float64).
- vsicurl.vrt: a VRT whose band comes from /vsicurl/http://127.0.0.1:9/x.tif.
- raw_passwd.vrt: a VRT raw band over /etc/passwd.
- outside.tif: a VRT, named .tif, whose source is ../../../../../../etc/hostname.
- truncated.tif: the first 600 bytes of a valid tiled GeoTIFF.

Run with the reference virtualenv (rasterio): .venv-ref/bin/python scripts/hostile/make_scenes.py
"""
import os
import pathlib

import numpy as np
import rasterio
from rasterio.transform import from_origin

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "tests" / "fixtures" / "hostile" / "scenes"
out.mkdir(parents=True, exist_ok=True)


def sparse(name, width, height, bands=6):
    # Pixel-interleaved strips of 65536 rows: a handful of strip offsets, so the file
    # stays small whatever the declared size.
    path = out / name
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype="int16",
        tiled=False,
        blockysize=min(height, 65536),
        interleave="pixel",
        bigtiff="YES",
        sparse_ok=True,
        compress="deflate",
        transform=from_origin(500000, 4000000, 30, 30),
        crs="EPSG:32610",
    ):
        pass  # no block is written
    return path


sparse("declares_1e6x64.tif", 1_000_000, 64)
sparse("sparse_1e6x1e6.tif", 1_000_000, 1_000_000)


def vrt(name, body):
    (out / name).write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64">\n' + body + "</VRTDataset>\n"
    )


simple = """  <VRTRasterBand dataType="Int16" band="{band}">
    <SimpleSource>
      <SourceFilename relativeToVRT="{rel}">{src}</SourceFilename>
      <SourceBand>1</SourceBand>
    </SimpleSource>
  </VRTRasterBand>
"""
vrt("vsicurl.vrt", "".join(simple.format(band=b, rel=0, src="/vsicurl/http://127.0.0.1:9/x.tif") for b in range(1, 7)))
vrt(
    "raw_passwd.vrt",
    "".join(
        f"""  <VRTRasterBand dataType="Byte" band="{b}" subClass="VRTRawRasterBand">
    <SourceFilename relativetoVRT="0">/etc/passwd</SourceFilename>
    <ImageOffset>0</ImageOffset>
    <PixelOffset>1</PixelOffset>
    <LineOffset>64</LineOffset>
  </VRTRasterBand>
"""
        for b in range(1, 7)
    ),
)
vrt("outside.tif", "".join(simple.format(band=b, rel=1, src="../../../../../../etc/hostname") for b in range(1, 7)))

# A valid small scene, cut short.
good = out / "_good.tif"
with rasterio.open(
    good, "w", driver="GTiff", width=64, height=64, count=6, dtype="int16", tiled=True,
    blockxsize=16, blockysize=16, transform=from_origin(0, 64, 1, 1), crs="EPSG:32610",
) as ds:
    ds.write((np.arange(6 * 64 * 64) % 1000).astype("int16").reshape(6, 64, 64))
(out / "truncated.tif").write_bytes(good.read_bytes()[:600])
os.remove(good)

for p in sorted(out.iterdir()):
    print(f"{p.name}: {p.stat().st_size} bytes")
