#!/usr/bin/env python
"""MKL's packed GEMM against its plain one on a ViT-B's four linear shapes (issue 19): the
evidence behind `PackedLinear`'s `TERRAHOST_PACKED_LINEAR=mkl` (`layers/src/packed_linear.rs`). For each shape and
row count (197 rows: a ViT-B at batch 1; 394: batch 2; 1576: batch 8), `F.linear` and
`torch.ops.mkl._mkl_linear` on a weight packed once by `_mkl_reorder_linear_weight` are timed in
alternating blocks (A B A B ...), and the ratio packed / plain is taken block by block.

MKL chooses its kernels by CPU features only on Intel CPUs unless told otherwise; terrahost's
engine tells it (`host/src/mkl_dispatch.rs`). To measure what terrahost runs, this script builds
the same one-line answer as a library with `cc` (into target/bench/) and runs itself again with it
preloaded; `--no-mkl-fix` measures MKL's own choice instead.

    .venv-ref/bin/python scripts/bench/linear_packing.py [--threads 2] [--blocks 9] [--json out.json]

Runs with the PyTorch of `.venv-ref` (2.13, the libtorch terrahost links).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
FIX_SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
SHAPES = [("qkv", 768, 2304), ("proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768)]


def preload_fix() -> None:
    """Re-executes this script with the MKL answer preloaded (once)."""
    out = REPO / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libmkl_intel_cpu_true.so"
    if not lib.exists():
        src = out / "mkl_intel_cpu_true.c"
        src.write_text(FIX_SOURCE)
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    env = dict(os.environ, LD_PRELOAD=str(lib), LINEAR_PACKING_CHILD="1")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=9, help="alternating blocks per side and shape")
    p.add_argument("--calls", type=int, default=5, help="timed calls per block (their median is the block's)")
    p.add_argument("--rows", default="197,394,1576")
    p.add_argument("--no-mkl-fix", action="store_true", help="MKL's own kernel choice (no preloaded answer)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if not a.no_mkl_fix and os.environ.get("LINEAR_PACKING_CHILD") != "1":
        preload_fix()

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    def block(f) -> float:
        ts = []
        for _ in range(a.calls):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    results = []
    print(f"torch {torch.__version__}, {a.threads} threads, MKL vendor check "
          f"{'as MKL answers it' if a.no_mkl_fix else 'answered yes (as terrahost)'}")
    with torch.inference_mode():
        for rows in (int(r) for r in a.rows.split(",")):
            for name, k, n in SHAPES:
                x = torch.randn(rows, k)
                w = torch.randn(n, k) * 0.02
                b = torch.randn(n)
                packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
                plain_f = lambda: torch.nn.functional.linear(x, w, b)  # noqa: E731
                packed_f = lambda: torch.ops.mkl._mkl_linear(x, packed, w, b, rows)  # noqa: E731
                diff = (plain_f() - packed_f()).abs().max().item()
                for _ in range(2):  # warm-up
                    plain_f(), packed_f()
                plain, pk = [], []
                for _ in range(a.blocks):
                    plain.append(block(plain_f))
                    pk.append(block(packed_f))
                ratios = sorted(q / p_ for p_, q in zip(plain, pk))
                r = {"rows": rows, "layer": name, "in": k, "out": n, "plain_ms": 1e3 * statistics.median(plain),
                     "packed_ms": 1e3 * statistics.median(pk), "ratio_median": statistics.median(ratios),
                     "ratio_min": ratios[0], "ratio_max": ratios[-1], "max_abs_diff": diff}
                results.append(r)
                print(f"{rows:5d} rows {name:4s} {k:4d}->{n:4d}: plain {r['plain_ms']:7.3f} ms, packed "
                      f"{r['packed_ms']:7.3f} ms, packed/plain median {r['ratio_median']:.3f} "
                      f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}], max |diff| {diff:.1e}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"torch": torch.__version__, "threads": a.threads,
                                            "mkl_fix": not a.no_mkl_fix, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
