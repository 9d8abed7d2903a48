#!/usr/bin/env python
"""Where the forward's time goes, operator by operator (issue 19): the catalog model
(`prithvi_unet.yaml`) with the weights and input of `forward_pairs.py`'s fixture, profiled in
terrahost (libtorch's operator profiler: the bench worker's `TERRAHOST_BENCH_PROFILE`), PyTorch
2.15 eager fp32 (`torch.profiler`), ONNX Runtime fp32 (its session profiling) and OpenVINO fp32
(its per-node performance counters). Each runtime runs alone, one after the other, with the same
thread count: a warm-up forward, then --forwards profiled ones.

Printed: each runtime's self time per forward summed into operator families (GEMM, attention,
convolution, ...), and its most expensive operators. Profilers add their own cost, so the
figures say where the time goes *within* a runtime; how fast the runtimes are against each other
is `forward_pairs.py`'s (interleaved rounds, no profiler).

    .venv-bench/bin/python scripts/bench/op_profile.py --batch 1 --forwards 5 \\
        --json target/bench/op_profile-b1.json --markdown target/bench/op_profile-b1.md

`--summarise TRACE` instead sums any Chrome trace of libtorch's operators, such as the one
`terrahost run --profile TRACE` writes, per operator family and operator (Python's standard
library only):

    terrahost run --config model.yaml --input-shape 1,6,224,224 --profile ops.json
    python3 scripts/bench/op_profile.py --summarise ops.json

The fixture (weights, input, ONNX export) is made by `runtimes.py --prepare` if missing, as
`forward_pairs.py` does. Runs in `.venv-bench` (`scripts/bench/setup_bench_venv.sh`).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

RUNTIMES = ["terrahost", "torch215", "ort", "openvino"]
LABEL = {
    "terrahost": "terrahost",
    "torch215": "PyTorch 2.15 eager",
    "ort": "ONNX Runtime",
    "openvino": "OpenVINO",
}

# Operator families, in the order the table lists them. Each runtime names its operators its
# own way: ATen's (terrahost, PyTorch), ONNX's (ONNX Runtime, with its fused ops) and
# OpenVINO's CPU plugin's node types. OpenVINO compiles attention and runs of elementwise
# operators into generated kernels it calls "Subgraph"; they get a family of their own. In the
# catalog model's ONNX export the linear layers are Gemm nodes and the MatMul nodes are
# attention's two batched products, so ONNX Runtime's MatMul counts as attention here.
FAMILIES = [
    ("GEMM (linear layers)", {
        "aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "mkldnn::_linear_pointwise", "mkl::_mkl_linear",
        "Gemm", "FusedGemm", "FullyConnected",
    }),
    ("attention", {
        "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention",
        "aten::_scaled_dot_product_attention_math", "aten::bmm", "aten::baddbmm", "aten::_softmax",
        "aten::softmax", "Softmax", "MatMul", "FusedMatMul", "Attention", "MultiHeadAttention",
        "ScaledDotProductAttention",
    }),
    ("OpenVINO generated kernels (attention, fused elementwise)", {"Subgraph"}),
    ("convolution", {
        "aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
        "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d", "aten::conv_transpose2d",
        "aten::_convolution_mode", "Conv", "FusedConv", "ConvTranspose", "Convolution",
        "ConvolutionBackpropData", "GroupConvolution",
    }),
    ("normalisation", {
        "aten::native_layer_norm", "aten::layer_norm", "aten::native_batch_norm", "aten::batch_norm",
        "aten::_native_batch_norm_legit_no_training", "aten::_batch_norm_impl_index",
        "LayerNormalization", "SkipLayerNormalization", "BatchNormalization", "MVN",
    }),
    ("activation", {
        "aten::gelu", "aten::gelu_", "aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_",
        "aten::erf", "Gelu", "BiasGelu", "FastGelu", "Relu", "Erf",
    }),
    ("resampling", {
        "aten::upsample_bilinear2d", "aten::upsample_nearest2d", "aten::max_pool2d_with_indices",
        "aten::max_pool2d", "Resize", "Interpolate", "MaxPool",
    }),
    ("data movement", {
        "aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::_to_copy",
        "aten::constant_pad_nd", "Transpose", "Concat", "Slice", "Reorder", "Split", "VariadicSplit",
        "Gather", "Expand", "Pad", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity",
    }),
    ("elementwise arithmetic", {
        "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div", "aten::sub", "aten::fill_",
        "aten::zero_", "Add", "Mul", "Div", "Sub", "Eltwise", "Multiply",
    }),
]


def family_of(op: str) -> str:
    for name, ops in FAMILIES:
        if op in ops:
            return name
    return "other (allocation, views, dispatch)"


FAMILY_ORDER = [f for f, _ in FAMILIES] + ["other (allocation, views, dispatch)"]


def self_times_of_chrome_trace(events: list[dict]) -> tuple[collections.Counter, collections.Counter]:
    """Self time (µs) and calls per operator name from complete events ("ph": "X") that nest on
    their thread: an operator's time less that of the operators it called."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[e.get("tid")].append(e)
    self_us, calls = collections.Counter(), collections.Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack: list[dict] = []
        for e in evs:
            ts, dur = float(e["ts"]), float(e["dur"])
            while stack and float(stack[-1]["ts"]) + float(stack[-1]["dur"]) <= ts + 1e-6:
                stack.pop()
            if stack:
                self_us[stack[-1]["name"]] -= dur
            self_us[e["name"]] += dur
            calls[e["name"]] += 1
            stack.append(e)
    return self_us, calls


# ---------------------------------------------------------------------------------------
# One runtime each; every profile returns ({op: self µs}, {op: calls}) summed over the forwards.


def profile_terrahost(a, fixture: Path):
    from forward_pairs import read_json_line, server_binary

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        env = dict(os.environ, TERRAHOST_BENCH_THREADS=str(a.threads),
                   TERRAHOST_BENCH_WEIGHTS=str(fixture / "weights.safetensors"),
                   TERRAHOST_BENCH_INPUT=str(fixture / f"input_b{a.batch}.safetensors"),
                   TERRAHOST_BENCH_PROFILE=str(trace))
        proc = subprocess.Popen([server_binary()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env, cwd=REPO)
        if not (read_json_line(proc) or {}).get("ready"):
            raise RuntimeError("terrahost's worker did not start")
        wall = []
        for _ in range(a.forwards):
            proc.stdin.write("\n")
            proc.stdin.flush()
            wall.append(read_json_line(proc)["forward_s"])
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"terrahost's worker exited with {proc.returncode}")
        self_us, calls = self_times_of_chrome_trace(json.loads(trace.read_text()))
    return self_us, calls, wall


def profile_torch(a, fixture: Path):
    import time

    import torch
    from safetensors.torch import load_file
    from torch.profiler import ProfilerActivity, profile

    from runtimes import load_model

    torch.set_num_threads(a.threads)
    model = load_model(fixture)
    x = load_file(fixture / f"input_b{a.batch}.safetensors")["x"]
    wall = []
    with torch.inference_mode():
        model(x)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.forwards):
                t = time.perf_counter()
                model(x)
                wall.append(time.perf_counter() - t)
    self_us, calls = collections.Counter(), collections.Counter()
    for k in prof.key_averages():
        self_us[k.key] += k.self_cpu_time_total
        calls[k.key] += k.count
    return self_us, calls, wall


def profile_ort(a, fixture: Path):
    import time

    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    x = np.ascontiguousarray(load_file(str(fixture / f"input_b{a.batch}.safetensors"))["x"], dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(fixture / f"model_b{a.batch}.onnx"), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        sess.run(None, {name: x})  # warm-up: its events are dropped below
        wall = []
        for _ in range(a.forwards):
            t = time.perf_counter()
            sess.run(None, {name: x})
            wall.append(time.perf_counter() - t)
        events = json.loads(Path(sess.end_profiling()).read_text())
    # Node events are "<node>_kernel_time", with the ONNX (or fused) operator in
    # args.op_name; those before the second model_run are the warm-up's.
    runs = sorted(float(e["ts"]) for e in events if e.get("name") == "model_run")
    start = runs[1] if len(runs) > 1 else 0.0
    self_us, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and float(e["ts"]) >= start:
            op = e.get("args", {}).get("op_name", "?")
            self_us[op] += float(e["dur"])
            calls[op] += 1
    return self_us, calls, wall


def profile_openvino(a, fixture: Path):
    import time

    import numpy as np
    import openvino as ov
    from safetensors.numpy import load_file

    x = np.ascontiguousarray(load_file(str(fixture / f"input_b{a.batch}.safetensors"))["x"], dtype=np.float32)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(fixture / f"model_b{a.batch}.onnx")), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": a.threads, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True,
    })
    request = compiled.create_infer_request()
    request.infer({0: x})  # warm-up
    self_us, calls = collections.Counter(), collections.Counter()
    wall = []
    for _ in range(a.forwards):
        t = time.perf_counter()
        request.infer({0: x})
        wall.append(time.perf_counter() - t)
        for p in request.get_profiling_info():  # the last inference's counters
            us = p.real_time.total_seconds() * 1e6
            if us > 0:
                self_us[p.node_type] += us
                calls[p.node_type] += 1
    return self_us, calls, wall


PROFILERS = {"terrahost": profile_terrahost, "torch215": profile_torch, "ort": profile_ort,
             "openvino": profile_openvino}


def child(a) -> None:
    """Profiles one runtime in this process and prints its result as one JSON line."""
    fixture = Path(a.dir)
    self_us, calls, wall = PROFILERS[a.child](a, fixture)
    print(json.dumps({"self_us": dict(self_us), "calls": dict(calls), "wall_s": wall}), flush=True)


def summarise(name: str, r: dict, forwards: int) -> dict:
    per = {op: us / forwards / 1e3 for op, us in r["self_us"].items()}
    fam = collections.Counter()
    for op, ms in per.items():
        fam[family_of(op)] += ms
    total = sum(per.values())
    top = sorted(per.items(), key=lambda kv: -kv[1])[:8]
    wall = sorted(r["wall_s"])
    return {
        "runtime": name,
        "profiled_ms_per_forward": total,
        "wall_ms_median_under_profiler": 1e3 * wall[len(wall) // 2],
        "families_ms": {f: fam.get(f, 0.0) for f in FAMILY_ORDER},
        "top_ops": [{"op": op, "ms": ms, "calls": r["calls"].get(op, 0) // forwards} for op, ms in top],
    }


def markdown(results: list[dict], a) -> str:
    lines = [f"batch {a.batch}, {a.threads} threads, {a.forwards} profiled forwards each after a warm-up; "
             "self time per forward in ms (share of the runtime's profiled total)", ""]
    lines.append("| operator family | " + " | ".join(LABEL[r["runtime"]] for r in results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for f in FAMILY_ORDER:
        if all(r["families_ms"][f] < 0.05 for r in results):
            continue
        cells = []
        for r in results:
            ms = r["families_ms"][f]
            cells.append(f"{ms:.1f} ({100 * ms / r['profiled_ms_per_forward']:.0f} %)" if ms >= 0.05 else "–")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines.append("| **profiled total** | " + " | ".join(f"**{r['profiled_ms_per_forward']:.1f}**" for r in results) + " |")
    lines.append("| wall time under the profiler (median) | "
                 + " | ".join(f"{r['wall_ms_median_under_profiler']:.1f}" for r in results) + " |")
    lines.append("")
    for r in results:
        ops = ", ".join(f"`{t['op']}` {t['ms']:.1f} ms ({t['calls']}×)" for t in r["top_ops"][:6])
        lines.append(f"* {LABEL[r['runtime']]}: {ops}")
    return "\n".join(lines) + "\n"


def summarise_trace(path: Path) -> None:
    """Prints the self time of a Chrome trace's operators per family and the 15 costliest."""
    try:
        events = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"op_profile: cannot read the trace {path}: {e}")
    if isinstance(events, dict):  # the {"traceEvents": [...]} form
        events = events.get("traceEvents", [])
    self_us, calls = self_times_of_chrome_trace(events)
    total = sum(self_us.values())
    if total <= 0:
        sys.exit(f"op_profile: {path} records no operators")
    fam = collections.Counter()
    for op, us in self_us.items():
        fam[family_of(op)] += us
    print(f"{path}: {total / 1e3:.1f} ms of operator self time, {sum(calls.values())} calls")
    for f in FAMILY_ORDER:
        if fam[f] > 0:
            print(f"  {fam[f] / 1e3:10.2f} ms {100 * fam[f] / total:5.1f} %  {f}")
    print("costliest operators:")
    for op, us in self_us.most_common(15):
        print(f"  {us / 1e3:10.2f} ms {100 * us / total:5.1f} %  {calls[op]:6d}x  {op}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forwards", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="forward_pairs.py's fixture (default target/bench-forward/seed<SEED>)")
    p.add_argument("--runtime", action="append", choices=RUNTIMES, help="profile these (default: all)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--markdown", help="also write the Markdown table here")
    p.add_argument("--summarise", metavar="TRACE", help="sum this Chrome trace of libtorch's operators and stop")
    p.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.summarise:
        summarise_trace(Path(a.summarise))
        return
    a.dir = a.dir or str(REPO / "target" / "bench-forward" / f"seed{a.seed}")
    if a.child:
        child(a)
        return

    fixture = Path(a.dir)
    runtimes = a.runtime or RUNTIMES
    subprocess.run([sys.executable, str(HERE / "runtimes.py"), "--prepare", "--dir", str(fixture), "--batch",
                    str(a.batch), "--seed", str(a.seed), "--threads", str(a.threads)]
                   + (["--onnx"] if {"ort", "openvino"} & set(runtimes) else []), check=True, cwd=REPO)
    results, failed = [], []
    for rt in runtimes:
        # Each runtime in a process of its own: no runtime's thread pools or allocations are
        # around while another is profiled.
        proc = subprocess.run([sys.executable, __file__, "--child", rt, "--batch", str(a.batch), "--threads",
                               str(a.threads), "--forwards", str(a.forwards), "--dir", str(fixture)],
                              capture_output=True, text=True, cwd=REPO)
        line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            print(f"op_profile: {rt} failed: {why}", file=sys.stderr)
            failed.append({"runtime": rt, "why": why})
            continue
        results.append(summarise(rt, json.loads(line), a.forwards))
        print(f"op_profile: {rt}: {results[-1]['profiled_ms_per_forward']:.1f} ms profiled per forward",
              file=sys.stderr, flush=True)
    md = markdown(results, a)
    print(md)
    if a.markdown:
        Path(a.markdown).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "batch": a.batch, "threads": a.threads, "forwards": a.forwards, "seed": a.seed,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "results": results, "failed": failed}, indent=1) + "\n")


if __name__ == "__main__":
    main()
