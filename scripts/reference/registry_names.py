#!/usr/bin/env python
"""Every name TerraTorch registers, registry by registry and source by source, as JSON.

Run it in two reference environments and compare, to see what a TerraTorch release added or
removed (issue 16 compared 1.2.11 with 1.2.13):

    .venv-ref/bin/python scripts/reference/registry_names.py > names-1.2.13.json
    python scripts/reference/registry_names.py --diff names-1.2.11.json names-1.2.13.json

Names are listed as TerraTorch lists them (`iter` over a source; a MultiSourceRegistry's
`keys()` are its source prefixes), so the timm, smp and mmseg sources reflect the installed
timm, segmentation-models-pytorch and mmsegmentation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REGISTRIES = ["BACKBONE_REGISTRY", "NECK_REGISTRY", "DECODER_REGISTRY", "FULL_MODEL_REGISTRY", "MODEL_FACTORY_REGISTRY"]


def dump() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import refkit  # noqa: F401  (the mmcv.ops stand-in, then terratorch and its sources)
    import terratorch.registry as reg

    out = {"versions": refkit.versions(), "registries": {}}
    for name in REGISTRIES:
        r = getattr(reg, name)
        if hasattr(r, "keys") and hasattr(r, "_sources"):  # MultiSourceRegistry
            out["registries"][name] = {p: sorted(str(n) for n in r[p]) for p in r.keys()}
        else:  # a plain Registry (MODEL_FACTORY_REGISTRY)
            out["registries"][name] = {"": sorted(str(n) for n in r)}
    return out


def diff(old_path: str, new_path: str) -> None:
    old, new = (json.loads(Path(p).read_text()) for p in (old_path, new_path))
    print(f"terratorch {old['versions'].get('terratorch')} -> {new['versions'].get('terratorch')}")
    for name in REGISTRIES:
        o, n = old["registries"].get(name, {}), new["registries"].get(name, {})
        for src in sorted(set(o) | set(n)):
            a, b = set(o.get(src, [])), set(n.get(src, []))
            label = f"{name}[{src}]" if src else name
            print(f"{label}: {len(a)} -> {len(b)}")
            for x in sorted(b - a):
                print(f"  + {x}")
            for x in sorted(a - b):
                print(f"  - {x}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diff", nargs=2, metavar=("OLD", "NEW"), help="compare two dumps (needs no TerraTorch)")
    a = p.parse_args()
    if a.diff:
        diff(*a.diff)
    else:
        print(json.dumps(dump(), indent=1))


if __name__ == "__main__":
    main()
