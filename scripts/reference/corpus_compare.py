#!/usr/bin/env python
"""Compares two corpus trees (`tests/corpus` as `corpus.py` writes it): per config, the status
(built, or TerraTorch's error) and, for configs both built, the state_dict key lists and the largest
difference of every tensor in `io.safetensors` (inputs, float32 and float64 outputs).

Used to move the corpus to a new TerraTorch release without rewriting fixtures that did not change:
run `corpus.py` with the new release in a second checkout (a `git worktree`), then

    .venv-ref/bin/python scripts/reference/corpus_compare.py tests/corpus /path/to/other/tests/corpus
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    a = p.parse_args()
    ra = json.loads((a.old / "results.json").read_text())
    rb = json.loads((a.new / "results.json").read_text())
    worst, same = 0.0, 0
    for slug in sorted(set(ra) | set(rb)):
        sa, sb = ra.get(slug, {}).get("status"), rb.get(slug, {}).get("status")
        if sa != sb:
            print(f"status  {slug}: {sa} -> {sb} {rb.get(slug, {}).get('error', '')[:160]}")
            continue
        if sa != "built":
            continue
        fa = load_file(str(a.old / "fixtures" / slug / "io.safetensors"))
        fb = load_file(str(a.new / "fixtures" / slug / "io.safetensors"))
        ka = json.loads((a.old / "fixtures" / slug / "state_dict.json").read_text())
        kb = json.loads((a.new / "fixtures" / slug / "state_dict.json").read_text())
        if set(fa) != set(fb) or ka != kb:
            print(f"layout  {slug}: tensors {sorted(set(fa) ^ set(fb))}, state_dict keys {'same' if ka == kb else 'differ'}")
            continue
        if any(fa[n].shape != fb[n].shape for n in fa):
            print(f"shape   {slug}: {[n for n in fa if fa[n].shape != fb[n].shape]}")
            continue
        d = max((float((fa[n].double() - fb[n].double()).abs().max()) for n in fa if fa[n].numel()), default=0.0)
        worst = max(worst, d)
        if d > 0:
            print(f"values  {slug}: largest difference {d:.3g}")
        else:
            same += 1
    print(f"{same} built configs bit-identical; largest difference elsewhere {worst:.3g}")


if __name__ == "__main__":
    main()
