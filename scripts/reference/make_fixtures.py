#!/usr/bin/env python
"""Build reference models with the real Python libraries (TerraTorch, timm, smp,
mmseg) and write small numeric fixtures that the Rust tests reproduce.

Usage (from the repository root):

    .venv-ref/bin/python scripts/reference/make_fixtures.py            # all cases
    .venv-ref/bin/python scripts/reference/make_fixtures.py --only timm_resnet18 --only smp_Unet
    .venv-ref/bin/python scripts/reference/make_fixtures.py --module necks   # every case of cases/necks.py
    .venv-ref/bin/python scripts/reference/make_fixtures.py --list
    .venv-ref/bin/python scripts/reference/make_fixtures.py --check    # recompute and compare, write nothing

Every case uses *synthetic weights* (see `refkit.synth` and README.md), so that no
weight file needs to be committed for large models: the Rust side regenerates the
exact same tensors with libtorch from the committed state_dict key list.

Adding a case: write a function `case_xxx() -> Case` in the matching module of
`cases/` (one module per area) and add it to that module's `CASES`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from refkit import REPO, check_case, torch, write_case  # noqa: E402


def all_cases() -> dict[str, tuple[str, object]]:
    """case name -> (module name, constructor), over every module of cases/."""
    import cases

    out: dict[str, tuple[str, object]] = {}
    for info in sorted(pkgutil.iter_modules(cases.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers shared by case modules, no cases of their own
            continue
        mod = importlib.import_module(f"cases.{info.name}")
        for name, ctor in mod.CASES.items():
            if name in out:
                raise SystemExit(f"case {name!r} is defined in both cases/{out[name][0]}.py and cases/{info.name}.py")
            out[name] = (info.name, ctor)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], help="case name (repeatable)")
    p.add_argument("--module", action="append", default=[], help="every case of cases/MODULE.py (repeatable)")
    p.add_argument("--list", action="store_true", help="list case names (with their module) and exit")
    p.add_argument(
        "--check",
        action="store_true",
        help="recompute the cases and compare with tests/fixtures (writes nothing); exit 1 on any difference",
    )
    a = p.parse_args()
    found = all_cases()
    cases_ = {name: ctor for name, (_, ctor) in found.items()}
    if a.list:
        print("\n".join(f"{name:40s} cases/{mod}.py" for name, (mod, _) in found.items()))
        return
    a.only += [name for name, (mod, _) in found.items() if mod in a.module]
    unknown = [c for c in a.only if c not in cases_]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(cases_)}")

    torch.set_num_threads(1)  # reduce any thread-count dependence of CPU reductions
    torch.use_deterministic_algorithms(True)
    names = a.only or list(cases_)
    if a.check:
        bad = 0
        for name in names:
            # one case that cannot be built (another TerraTorch release) must not hide the others
            try:
                problems = check_case(name, cases_[name]())
            except Exception as e:  # noqa: BLE001
                problems = [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
            bad += bool(problems)
            print(f"{name:28s} {'OK' if not problems else 'FAIL: ' + '; '.join(problems)}")
        sys.exit(1 if bad else 0)
    for name in names:
        meta = write_case(name, cases_[name]())
        mags = ", ".join(f"{s['max_abs']:.3g}" for s in meta["output_stats"])
        print(
            f"{name:28s} params={meta['n_params']:>9d} in={meta['input_shapes']} out={meta['output_shapes']} "
            f"max|out|=[{mags}] weights_file={meta['weights_file']}" + (f" WARN {meta['warnings']}" if meta["warnings"] else "")
        )


if __name__ == "__main__":
    os.chdir(REPO)
    main()
