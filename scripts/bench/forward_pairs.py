#!/usr/bin/env python
"""Interleaved forward timings of persistent workers: the catalog model at batch B in
terrahost (`cargo bench --bench forward_server`, settings by environment) and in
TerraTorch (`terratorch_reference.py --serve`). Every worker builds once and warms up;
then each round runs one forward on every worker, in an order that alternates
(A B C, C B A, ...), and the ratio of each worker to the first is taken round by round.
Prints the median time of each worker and the median ratio with its range.

    .venv-ref/bin/python scripts/bench/forward_pairs.py --rounds 9 \\
        --worker terratorch --worker terrahost --worker terrahost:TERRAHOST_PACKED_LINEAR=0

A worker is `terratorch` or `terrahost`, optionally followed by `:VAR=VALUE,...`
environment settings. The first worker is the reference of the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@functools.cache
def server_binary() -> str:
    """The forward_server bench executable cargo built (the newest); asked of cargo once."""
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "terrahost-integration-tests", "--bench", "forward_server", "--no-run",
         "--message-format", "json"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    exes = [json.loads(l).get("executable") for l in out.splitlines() if '"executable"' in l]
    exes = [e for e in exes if e and "forward_server" in e]
    if not exes:
        sys.exit("forward_pairs: cargo built no forward_server bench")
    return exes[-1]


class Worker:
    def __init__(self, spec: str, batch: int, threads: int, mode: str):
        kind, _, env_text = spec.partition(":")
        env = dict(os.environ)
        for kv in filter(None, env_text.split(",")):
            k, _, v = kv.partition("=")
            env[k] = v
        env["TERRAHOST_BENCH_BATCH"] = str(batch)
        env["TERRAHOST_BENCH_THREADS"] = str(threads)
        if kind == "terrahost":
            argv = [server_binary()]
        elif kind == "terratorch":
            argv = [sys.executable, str(HERE / "terratorch_reference.py"), "--serve", "--batch", str(batch),
                    "--threads", str(threads), "--mode", mode]
        else:
            sys.exit(f"forward_pairs: a worker is `terrahost` or `terratorch`, got `{kind}`")
        self.name = spec
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        first = self._read()
        if not first.get("ready"):
            sys.exit(f"forward_pairs: {spec} did not start: {first}")

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit(f"forward_pairs: {self.name} ended (exit {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def forward(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()["forward_s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["no_grad", "inference_mode"], default="inference_mode",
                    help="TerraTorch's autograd mode (terrahost runs in inference mode)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    workers = [Worker(s, a.batch, a.threads, a.mode) for s in a.worker]
    times: list[list[float]] = [[] for _ in workers]
    for r in range(a.rounds):
        order = list(range(len(workers)))
        if r % 2:
            order.reverse()
        for i in order:
            times[i].append(workers[i].forward())
    for w in workers:
        w.close()
    result = {"batch": a.batch, "threads": a.threads, "rounds": a.rounds, "workers": []}
    for w, ts in zip(workers, times):
        ratios = [t / t0 for t, t0 in zip(ts, times[0])]
        result["workers"].append({"worker": w.name, "median_s": statistics.median(ts), "times_s": ts,
                                  "median_ratio": statistics.median(ratios), "ratio_min": min(ratios),
                                  "ratio_max": max(ratios)})
        print(f"{w.name:50s} median {statistics.median(ts):7.3f} s   ratio to {a.worker[0]}: "
              f"median {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
