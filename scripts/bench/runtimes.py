#!/usr/bin/env python
"""What users would run instead of terrahost (issue 19), as persistent forward workers for
`forward_pairs.py`: the catalog model (`prithvi_unet.yaml`) built by TerraTorch on PyTorch 2.15
and run in PyTorch eager (fp32, or bf16 under CPU autocast), ONNX Runtime (fp32) or OpenVINO
(fp32 or bf16), all from one set of weights. Runs in `.venv-bench`
(`scripts/bench/setup_bench_venv.sh`).

    .venv-bench/bin/python scripts/bench/runtimes.py --prepare --dir D --batch 8 --seed 0
        # once per (seed, batch): D/weights.safetensors (TerraTorch's initialisation under the
        # seed), D/input_b8.safetensors (`x`), D/ref64_b8.safetensors (`y`, a float64 forward
        # of the same weights) and, on request (--onnx), D/model_b8.onnx; existing files are kept
    .venv-bench/bin/python scripts/bench/runtimes.py --serve --runtime ort --dir D --batch 8 \\
        --threads 2 [--output out.safetensors]

A worker loads, runs one warm-up forward (its output goes to --output as `y`, float32), prints
`{"ready": true, ...}`, then runs one timed forward per line on stdin and prints
`{"forward_s": ...}`. A runtime that cannot be loaded prints `{"unavailable": "why"}` and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUNTIMES = ["torch", "torch-bf16", "torch-int8", "ort", "ort-int8", "openvino", "openvino-bf16", "openvino-int8"]


def build_terratorch_model():
    """The catalog model, built by TerraTorch, in eval mode (the initialisation is torch's RNG)."""
    import yaml

    sys.path.insert(0, str(HERE.parent / "reference"))
    from mmcv_stand_in import install_stand_ins

    install_stand_ins()  # mmcv-lite lacks the compiled mmcv.ops that TerraTorch's mmseg registry imports
    warnings.filterwarnings("ignore")
    from terratorch.registry import MODEL_FACTORY_REGISTRY

    cfg = yaml.safe_load((HERE / "prithvi_unet.yaml").read_text())
    factory = MODEL_FACTORY_REGISTRY.build(cfg["model_factory"])
    return factory.build_model(**json.loads(json.dumps(cfg["model_args"]))).eval()


def load_model(d: Path):
    """The catalog model with the weights in `d/weights.safetensors`, loaded strictly."""
    from safetensors.torch import load_file

    model = build_terratorch_model()
    model.load_state_dict(load_file(d / "weights.safetensors"), strict=True)
    return model


def output_only(model):
    """A module that returns the segmentation logits alone (TerraTorch returns a ModelOutput)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).output

    return Logits(model).eval()


def prepare(a) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    weights = d / "weights.safetensors"
    if not weights.exists():
        torch.manual_seed(a.seed)
        model = build_terratorch_model()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights) + ".tmp")
        os.replace(str(weights) + ".tmp", weights)
        print(f"prepare: {len(state)} tensors -> {weights}", file=sys.stderr)
    inp = d / f"input_b{a.batch}.safetensors"
    if not inp.exists():
        g = torch.Generator().manual_seed(a.seed + 1)
        x = torch.randn(a.batch, 6, 224, 224, generator=g)
        save_file({"x": x}, str(inp))
    x = load_file(inp)["x"]
    ref = d / f"ref64_b{a.batch}.safetensors"
    if not ref.exists():
        t = time.perf_counter()
        model = load_model(d).double()
        with torch.inference_mode():
            y = model(x.double()).output
        save_file({"y": y.contiguous()}, str(ref))
        print(f"prepare: float64 reference {list(y.shape)} in {time.perf_counter() - t:.1f} s -> {ref}",
              file=sys.stderr)
    onnx_path = d / f"model_b{a.batch}.onnx"
    if a.onnx and not onnx_path.exists() and not (d / f"model_b{a.batch}.onnx.failed").exists():
        export_onnx(d, x, onnx_path)


def export_onnx(d: Path, x, onnx_path: Path) -> None:
    """torch.onnx.export of the fp32 model at a fixed batch: the default (dynamo) exporter, and
    the TorchScript one if that fails. A failure is written to model_bN.onnx.failed."""
    import torch

    model = output_only(load_model(d))
    tmp = onnx_path.with_suffix(".onnx.tmp")
    errors = []
    for dynamo in (True, False):
        t = time.perf_counter()
        try:
            with torch.no_grad():
                torch.onnx.export(model, (x,), str(tmp), input_names=["x"], output_names=["y"],
                                  opset_version=18, dynamo=dynamo, external_data=False)
            os.replace(tmp, onnx_path)
            print(f"prepare: torch.onnx.export (dynamo={dynamo}) in {time.perf_counter() - t:.1f} s -> {onnx_path}",
                  file=sys.stderr)
            return
        except Exception as e:  # noqa: BLE001 - any exporter failure falls back, then is reported
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    onnx_path.with_suffix(".onnx.failed").write_text("; ".join(errors) + "\n")
    print(f"prepare: torch.onnx.export failed: {'; '.join(errors)}", file=sys.stderr)


class Unavailable(Exception):
    pass


def make_runner(a, d: Path, x_np):
    """(forward(), describe) for the runtime: forward() runs once and returns a float32 numpy array."""
    if a.runtime in ("torch", "torch-bf16", "torch-int8"):
        import torch

        torch.set_num_threads(a.threads)
        model = load_model(d)
        x = torch.from_numpy(x_np)
        bf16 = a.runtime == "torch-bf16"
        if a.runtime == "torch-int8":
            # PyTorch's dynamic quantization of the linear layers, per-channel weights (what
            # `terrahost --precision int8` computes); in place, because TerraTorch's Prithvi
            # keeps a closure over its own model that a copy would still call.
            torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, inplace=True
            )

        def forward():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x).output.float().numpy()

        return forward, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    onnx_path = d / f"model_b{a.batch}.onnx"
    if not onnx_path.exists():
        failed = onnx_path.with_suffix(".onnx.failed")
        raise Unavailable(failed.read_text().strip() if failed.exists() else f"no {onnx_path}")
    if a.runtime in ("ort", "ort-int8"):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise Unavailable(f"onnxruntime: {e}") from e
        if a.runtime == "ort-int8":
            onnx_path = ort_int8(onnx_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def forward():
            return sess.run(None, {name: x_np})[0]

        return forward, {"onnxruntime": ort.__version__, "threads": a.threads}

    if a.runtime in ("openvino", "openvino-bf16", "openvino-int8"):
        try:
            import openvino as ov
        except ImportError as e:
            raise Unavailable(f"openvino: {e}") from e
        core = ov.Core()
        precision = "bf16" if a.runtime == "openvino-bf16" else "f32"
        graph = openvino_int8(core, onnx_path, x_np) if a.runtime == "openvino-int8" else onnx_path
        compiled = core.compile_model(core.read_model(str(graph)), "CPU", {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": a.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        })
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        got = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # what the CPU plugin will run
        request = compiled.create_infer_request()

        def forward():
            request.infer({0: x_np})
            return request.get_output_tensor(0).data.astype("float32", copy=True)

        return forward, {"openvino": ov.__version__, "threads": a.threads, "precision": got,
                         "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}

    raise Unavailable(f"unknown runtime `{a.runtime}` (one of {', '.join(RUNTIMES)})")


# NNCF's calibration set for `openvino-int8`: inputs drawn as the fixture's input is (standard
# normal), from other seeds.
CALIBRATION_SAMPLES = 16


def openvino_int8(core, onnx_path: Path, x_np) -> Path:
    """The graph quantized as OpenVINO's documentation has users do it: NNCF's post-training
    quantization (`nncf.quantize`, its default preset: int8 weights per channel and int8
    activations with ranges calibrated once, on CALIBRATION_SAMPLES inputs) with
    `ModelType.TRANSFORMER`, which NNCF asks for on models with attention. Unlike PyTorch's,
    ONNX Runtime's and terrahost's dynamic int8 it quantizes the convolutions too. Saved once
    as OpenVINO IR next to the float32 graph."""
    out = onnx_path.with_name(onnx_path.stem + "_ov_int8.xml")
    if not out.exists():
        try:
            import nncf
        except ImportError as e:
            raise Unavailable(f"nncf (OpenVINO's quantizer): {e}") from e
        import numpy as np
        import openvino as ov

        shape = x_np.shape
        samples = [np.random.default_rng(1000 + i).standard_normal(shape, dtype=np.float32)
                   for i in range(CALIBRATION_SAMPLES)]
        t = time.perf_counter()
        quantized = nncf.quantize(core.read_model(str(onnx_path)), nncf.Dataset(samples),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
        tmp = out.with_name(out.stem + ".tmp.xml")
        ov.save_model(quantized, str(tmp))
        os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(tmp, out)
        print(f"openvino-int8: nncf.quantize in {time.perf_counter() - t:.1f} s -> {out}", file=sys.stderr)
    return out


def ort_int8(onnx_path: Path) -> Path:
    """The graph with its linear layers quantized as ONNX Runtime's dynamic quantization does it
    (`onnxruntime.quantization.quantize_dynamic`, int8 weights per channel, activations per
    call), restricted to MatMul and Gemm: PyTorch's and terrahost's int8 leave convolutions in
    float32 too. Made once next to the float32 graph."""
    out = onnx_path.with_name(onnx_path.stem + "_int8.onnx")
    if not out.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = out.with_suffix(".onnx.tmp")
        t = time.perf_counter()
        quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        os.replace(tmp, out)
        print(f"ort-int8: quantize_dynamic in {time.perf_counter() - t:.1f} s -> {out}", file=sys.stderr)
    return out


def serve(a) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    d = Path(a.dir)
    x_np = np.ascontiguousarray(load_file(str(d / f"input_b{a.batch}.safetensors"))["x"], dtype=np.float32)
    try:
        forward, describe = make_runner(a, d, x_np)
        y = forward()  # warm-up
    except Unavailable as e:
        print(json.dumps({"unavailable": str(e)}), flush=True)
        sys.exit(3)
    except Exception as e:  # noqa: BLE001 - a runtime that fails to load is reported, not fatal to the others
        print(json.dumps({"unavailable": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}),
              flush=True)
        sys.exit(3)
    if a.output:
        save_file({"y": np.ascontiguousarray(y, dtype=np.float32)}, a.output)
    print(json.dumps({"ready": True, "batch": a.batch, **describe}), flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        forward()
        print(json.dumps({"forward_s": time.perf_counter() - t}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--onnx", action="store_true", help="with --prepare: also export model_bN.onnx")
    p.add_argument("--serve", action="store_true")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch")
    p.add_argument("--dir", required=True, help="where the weights, inputs, references and ONNX files live")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", help="with --serve: write the warm-up forward's output here (`y`)")
    a = p.parse_args()
    if a.prepare:
        prepare(a)
    if a.serve:
        serve(a)


if __name__ == "__main__":
    main()
