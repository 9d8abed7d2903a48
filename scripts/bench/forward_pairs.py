#!/usr/bin/env python
"""Interleaved forward timings of persistent workers on the catalog model
(`prithvi_unet.yaml`) at batch B, with every worker's accuracy against a float64 forward.

Workers (the first is the reference of the ratios; the default is all of them, in this order):

    torch215        PyTorch 2.15 eager fp32, inference_mode          (runtimes.py, .venv-bench)
    torch215-bf16   PyTorch 2.15 eager under CPU autocast bf16       (runtimes.py, .venv-bench)
    torch215-int8   PyTorch 2.15 eager, linears by quantize_dynamic  (runtimes.py, .venv-bench)
    ort             ONNX Runtime fp32 of torch.onnx.export's graph   (runtimes.py, .venv-bench)
    ort-int8        the same graph, MatMul/Gemm by ORT's quantize_dynamic (runtimes.py, .venv-bench)
    openvino        OpenVINO fp32 (INFERENCE_PRECISION_HINT f32)     (runtimes.py, .venv-bench)
    openvino-bf16   OpenVINO bf16 (INFERENCE_PRECISION_HINT bf16)    (runtimes.py, .venv-bench)
    openvino-int8   the same graph quantized by NNCF (static int8)   (runtimes.py, .venv-bench, nncf)
    terrahost       terrahost's persistent worker                    (`cargo bench --bench forward_server`)
    terrahost-bf16  the same with `--precision bf16` (TERRAHOST_BENCH_PRECISION=bf16)
    terrahost-int8  the same with `--precision int8` (TERRAHOST_BENCH_PRECISION=int8)
    terratorch      TerraTorch 1.2.13 on PyTorch 2.13, the reference of the parity fixtures
                                                                     (terratorch_reference.py, .venv-ref)

A worker may be followed by `:VAR=VALUE,...` environment settings
(`terrahost:TERRAHOST_PACKED_LINEAR=0`). Every worker builds once, loads the same weights and
input, runs a warm-up forward (whose output is kept for the accuracy columns) and waits; then
each round runs one forward on every worker, in an order that alternates (A B C, C B A, ...),
and each worker's time is divided by the reference's time of the same round (a --pause before
each forward lets the previous worker's spinning threads sleep). Printed: the
median time of each worker, the median ratio with its range and interquartile range, the
largest absolute difference from the float64 output and the fraction of pixels whose argmax
over the classes differs from the float64 output's; then the same as a Markdown table.

    .venv-bench/bin/python scripts/bench/forward_pairs.py --batch 8 --rounds 7 --json out.json

The weights (TerraTorch's initialisation under --seed), the input, the float64 output and the
ONNX export are made once by `runtimes.py --prepare` and kept in --dir. A runtime that cannot be
installed, exported or loaded is reported in one line and the others still run.
`--no-fixture` keeps the old behaviour for terrahost and terratorch only (each its own
initialisation and seeded input, no accuracy).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_WORKERS = ["torch215", "torch215-bf16", "ort", "openvino", "openvino-bf16", "terrahost", "terrahost-bf16",
                   "terratorch"]
RUNTIME_OF = {"torch215": "torch", "torch215-bf16": "torch-bf16", "torch215-int8": "torch-int8", "ort": "ort",
              "ort-int8": "ort-int8",
              "openvino": "openvino",
              "openvino-bf16": "openvino-bf16", "openvino-int8": "openvino-int8"}
PLUGIN_CRATES = ["terrahost-plugin-terratorch", "terrahost-plugin-timm", "terrahost-plugin-smp", "terrahost-plugin-mmseg"]
LABEL = {
    "torch215": "PyTorch 2.15 eager fp32",
    "torch215-bf16": "PyTorch 2.15 autocast bf16",
    "torch215-int8": "PyTorch 2.15 quantize_dynamic int8",
    "ort": "ONNX Runtime fp32",
    "ort-int8": "ONNX Runtime quantize_dynamic int8",
    "openvino": "OpenVINO fp32",
    "openvino-bf16": "OpenVINO bf16",
    "openvino-int8": "OpenVINO NNCF int8",
    "terrahost": "terrahost fp32",
    "terrahost-bf16": "terrahost --precision bf16",
    "terrahost-int8": "terrahost --precision int8",
    "terratorch": "TerraTorch on PyTorch 2.13 fp32",
}


def venv_python(name: str) -> str:
    p = REPO / name / "bin" / "python"
    return str(p) if p.exists() else sys.executable


def read_json_line(proc: subprocess.Popen) -> dict | None:
    """The next JSON line a worker prints on stdout (other lines are skipped), or None once it
    has ended."""
    while True:
        line = proc.stdout.readline()
        if not line:
            return None
        if line.startswith("{"):
            return json.loads(line)


@functools.cache
def server_binary() -> str:
    """The forward_server bench executable cargo built (the newest); asked of cargo once. The four
    plugin libraries it loads and the engine that scans them (`terrahost-engine`) are built first
    (the bench profile's output directory is release's)."""
    subprocess.run(["cargo", "build", "-q", "--release"] + [a for p in PLUGIN_CRATES for a in ("-p", p)],
                   cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "terrahost", "--bin", "terrahost-engine"],
                   cwd=REPO, check=True)
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "terrahost-integration-tests", "--bench", "forward_server", "--no-run",
         "--message-format", "json"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    exes = [json.loads(l).get("executable") for l in out.splitlines() if '"executable"' in l]
    exes = [e for e in exes if e and "forward_server" in e]
    if not exes:
        sys.exit("forward_pairs: cargo built no forward_server bench")
    return exes[-1]


class Unavailable(Exception):
    pass


class Worker:
    def __init__(self, spec: str, a, fixture: Path | None):
        kind, _, env_text = spec.partition(":")
        env = dict(os.environ)
        for kv in filter(None, env_text.split(",")):
            k, _, v = kv.partition("=")
            env[k] = v
        if kind in ("terrahost-bf16", "terrahost-int8"):
            env["TERRAHOST_BENCH_PRECISION"] = kind.rpartition("-")[2]
            kind = "terrahost"
        env["TERRAHOST_BENCH_BATCH"] = str(a.batch)
        env["TERRAHOST_BENCH_THREADS"] = str(a.threads)
        self.name = spec
        self.kind = kind
        self.output = None
        if fixture is not None:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec)
            self.output = fixture / f"out_{safe}_b{a.batch}.safetensors"
            self.output.unlink(missing_ok=True)
        if kind == "terrahost":
            try:
                argv = [server_binary()]
            except subprocess.CalledProcessError as e:
                raise Unavailable(f"cargo could not build forward_server (exit {e.returncode})") from e
            if fixture is not None:
                env["TERRAHOST_BENCH_WEIGHTS"] = str(fixture / "weights.safetensors")
                env["TERRAHOST_BENCH_INPUT"] = str(fixture / f"input_b{a.batch}.safetensors")
                env["TERRAHOST_BENCH_OUTPUT"] = str(self.output)
        elif kind == "terratorch":
            argv = [a.ref_python, str(HERE / "terratorch_reference.py"), "--serve", "--batch", str(a.batch),
                    "--threads", str(a.threads), "--mode", a.mode]
            if fixture is not None:
                argv += ["--weights", str(fixture / "weights.safetensors"),
                         "--input", str(fixture / f"input_b{a.batch}.safetensors"), "--output", str(self.output)]
        elif kind in RUNTIME_OF:
            if fixture is None:
                raise Unavailable("needs the shared weights and input (drop --no-fixture)")
            argv = [a.bench_python, str(HERE / "runtimes.py"), "--serve", "--runtime", RUNTIME_OF[kind],
                    "--dir", str(fixture), "--batch", str(a.batch), "--threads", str(a.threads),
                    "--output", str(self.output)]
        else:
            sys.exit(f"forward_pairs: a worker is one of {', '.join(DEFAULT_WORKERS)}, got `{kind}`")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        first = self._read()
        if first is None:
            raise Unavailable(f"ended before it was ready (exit {self.proc.wait()})")
        if "unavailable" in first:
            self.proc.wait()
            raise Unavailable(first["unavailable"])
        self.info = first

    def _read(self) -> dict | None:
        return read_json_line(self.proc)

    def forward(self) -> float | None:
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        got = self._read()
        return None if got is None else got["forward_s"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()


def prepare(a, fixture: Path, onnx: bool) -> None:
    argv = [a.bench_python, str(HERE / "runtimes.py"), "--prepare", "--dir", str(fixture), "--batch", str(a.batch),
            "--seed", str(a.seed), "--threads", str(a.threads)]
    if onnx:
        argv.append("--onnx")
    r = subprocess.run(argv, cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"forward_pairs: preparing the weights, input and float64 output failed (exit {r.returncode}); "
                 f"is {a.bench_python} the .venv-bench of scripts/bench/setup_bench_venv.sh?")


def accuracy(fixture: Path, batch: int, output: Path) -> dict | None:
    """Largest |y - y64| and the fraction of pixels whose class argmax differs from y64's."""
    import numpy as np
    from safetensors.numpy import load_file

    if not output.exists():
        return None
    ref = load_file(str(fixture / f"ref64_b{batch}.safetensors"))["y"]
    y = load_file(str(output))["y"].astype(np.float64)
    if y.shape != ref.shape:
        return {"error": f"output shape {list(y.shape)}, float64 reference {list(ref.shape)}"}
    return {"max_abs_err": float(np.abs(y - ref).max()), "ref_max_abs": float(np.abs(ref).max()),
            "argmax_differs": float((y.argmax(axis=1) != ref.argmax(axis=1)).mean()),
            "pixels": int(ref.shape[0] * np.prod(ref.shape[2:]))}


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def markdown(result: dict) -> str:
    ref = result["workers"][0]["worker"] if result["workers"] else "-"
    lines = [f"batch {result['batch']}, {result['threads']} threads, {result['rounds']} interleaved rounds; "
             f"ratio = time / {LABEL.get(ref, ref)}'s time in the same round",
             "",
             "| runtime | median ms | fastest ms | ratio: median [min, max] (IQR) | max abs err vs fp64 | argmax differs |",
             "|---|---|---|---|---|---|"]
    for w in result["workers"]:
        acc = w.get("accuracy") or {}
        err = f"{acc['max_abs_err']:.2e}" if "max_abs_err" in acc else "—"
        arg = (f"{100 * acc['argmax_differs']:.3f} % ({round(acc['argmax_differs'] * acc['pixels'])} px)"
               if "argmax_differs" in acc else "—")
        label = LABEL.get(w["worker"], w["worker"])
        if w["rounds"] != result["rounds"]:
            label += f" ({w['rounds']} rounds)"
        ran = w["info"].get("precision")
        if w["worker"].startswith("openvino-bf16") and ran and ran != "bf16":
            label += f" (ran as {ran}: the CPU has no bf16)"
        lines.append(f"| {label} | {1000 * w['median_s']:.0f} | {1000 * min(w['times_s']):.0f} | {w['median_ratio']:.3f} [{w['ratio_min']:.3f}, "
                     f"{w['ratio_max']:.3f}] ({w['ratio_q1']:.3f}–{w['ratio_q3']:.3f}) | {err} | {arg} |")
    for u in result["unavailable"]:
        lines.append(f"| {LABEL.get(u['worker'], u['worker'])} | unavailable: {u['why']} | | | | |")
    # terrahost against each other runtime directly, round by round (not through PyTorch's time)
    by = {w["worker"]: w for w in result["workers"]}
    if "terrahost" in by:
        pairs = []
        for name, w in by.items():
            if name == "terrahost" or w["rounds"] != by["terrahost"]["rounds"]:
                continue
            r = sorted(a / b for a, b in zip(by["terrahost"]["times_s"], w["times_s"]))
            pairs.append(f"{LABEL.get(name, name)} {statistics.median(r):.3f} [{r[0]:.3f}, {r[-1]:.3f}]")
        if pairs:
            lines += ["", "terrahost's time over each runtime's in the same round, median [min, max]: " + "; ".join(pairs)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="append", help="repeatable; default: " + " ".join(DEFAULT_WORKERS))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--rounds-of", action="append", default=[], metavar="WORKER=N",
                    help="a slow worker takes part in the first N rounds only (its ratios are still taken "
                         "against the reference's time in the same rounds)")
    ap.add_argument("--pause", type=float, default=0.2,
                    help="seconds of quiet before each forward, so that the previous worker's spinning "
                         "threads (OpenMP, ONNX Runtime, TBB) have gone to sleep")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="of the shared weights and input")
    ap.add_argument("--dir", help="the shared weights, inputs, float64 outputs and ONNX exports "
                                  "(default target/bench-forward/seed<SEED>)")
    ap.add_argument("--no-fixture", action="store_true",
                    help="terrahost and terratorch only, each with its own initialisation; no accuracy")
    ap.add_argument("--bench-python", default=venv_python(".venv-bench"), help="PyTorch 2.15, ORT, OpenVINO")
    ap.add_argument("--ref-python", default=venv_python(".venv-ref"), help="TerraTorch on PyTorch 2.13")
    ap.add_argument("--mode", choices=["no_grad", "inference_mode"], default="inference_mode",
                    help="TerraTorch's autograd mode (terrahost runs in inference mode)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--markdown", help="also write the Markdown table here")
    a = ap.parse_args()
    specs = a.worker or DEFAULT_WORKERS
    limit = {}
    for item in a.rounds_of:
        name, _, n = item.rpartition("=")
        if name not in specs or not n.isdigit() or name == specs[0]:
            sys.exit(f"forward_pairs: --rounds-of wants WORKER=N for a worker other than the reference, got `{item}`")
        limit[name] = int(n)

    fixture = None
    if not a.no_fixture:
        fixture = Path(a.dir) if a.dir else REPO / "target" / "bench-forward" / f"seed{a.seed}"
        # every ONNX Runtime and OpenVINO worker runs the exported graph
        prepare(a, fixture, onnx=any(RUNTIME_OF.get(s.partition(":")[0], "").startswith(("ort", "openvino"))
                                     for s in specs))

    workers, unavailable = [], []
    for s in specs:
        try:
            workers.append(Worker(s, a, fixture))
            print(f"forward_pairs: {s} ready {json.dumps(workers[-1].info)}", file=sys.stderr, flush=True)
        except Unavailable as e:
            print(f"forward_pairs: {s} unavailable: {e}", flush=True)
            unavailable.append({"worker": s, "why": str(e)})
    if not workers:
        sys.exit("forward_pairs: no worker started")

    times: list[list[float]] = [[] for _ in workers]
    alive = [True] * len(workers)
    for r in range(a.rounds):
        order = list(range(len(workers)))
        if r % 2:
            order.reverse()
        for i in order:
            if not alive[i] or r >= limit.get(workers[i].name, a.rounds):
                continue
            time.sleep(a.pause)
            t = workers[i].forward()
            if t is None:
                alive[i] = False
                why = f"ended in round {r + 1} (exit {workers[i].proc.wait()})"
                print(f"forward_pairs: {workers[i].name} {why}", flush=True)
                unavailable.append({"worker": workers[i].name, "why": why})
            else:
                times[i].append(t)
    for w, ok in zip(workers, alive):
        if ok:
            w.close()

    result = {"batch": a.batch, "threads": a.threads, "rounds": a.rounds, "seed": a.seed, "pause_s": a.pause,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
              "workers": [], "unavailable": unavailable}
    live = [i for i in range(len(workers)) if alive[i]]
    base = times[live[0]] if live else []
    for i in live:
        w, ts = workers[i], times[i]
        ratios = [t / t0 for t, t0 in zip(ts, base)]
        q1, q3 = quartiles(ratios)
        entry = {"worker": w.name, "info": w.info, "rounds": len(ts), "median_s": statistics.median(ts), "times_s": ts,
                 "median_ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                 "ratio_q1": q1, "ratio_q3": q3, "ratios": ratios}
        if fixture is not None and w.output is not None:
            entry["accuracy"] = accuracy(fixture, a.batch, w.output)
        result["workers"].append(entry)
        acc = entry.get("accuracy") or {}
        acc_text = (f"   vs fp64: max abs {acc['max_abs_err']:.2e}, argmax differs {100 * acc['argmax_differs']:.3f} %"
                    if "max_abs_err" in acc else "")
        print(f"{w.name:40s} median {entry['median_s']:7.3f} s   ratio to {workers[live[0]].name}: "
              f"median {entry['median_ratio']:.3f} ({entry['ratio_min']:.3f}-{entry['ratio_max']:.3f}){acc_text}")
    table = markdown(result)
    print()
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(table + "\n")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
