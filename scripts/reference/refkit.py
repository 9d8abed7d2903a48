"""Shared pieces of the reference fixture writer: the mmcv.ops stand-in, the synthetic
weights convention, the `Case` description and the fixture writer/checker.

Case modules live in `cases/` (one per area) and each defines `CASES: dict[str, Callable[[], Case]]`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
WEIGHTS_FILE_LIMIT = 64_000  # bytes; write weights.safetensors (a cross-check of the synthetic formula) only below this


from mmcv_stand_in import install_stand_ins  # noqa: E402  (before terratorch is imported)

install_stand_ins()
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import terratorch  # noqa: E402,F401  (registers all sources)
from terratorch.registry import (  # noqa: E402
    BACKBONE_REGISTRY,
    DECODER_REGISTRY,
    MODEL_FACTORY_REGISTRY,
    NECK_REGISTRY,
)


def versions() -> dict[str, str]:
    def v(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "torch": torch.__version__,
        "terratorch": v("terratorch"),
        "timm": v("timm"),
        "smp": v("segmentation-models-pytorch"),
        "mmseg": v("mmsegmentation"),
        "mmcv": v("mmcv-lite"),
        "mmengine": v("mmengine"),
    }


# ---------------------------------------------------------------------------
# Synthetic weights convention (must stay bit-identical with the Rust side).
# ---------------------------------------------------------------------------
def synth(key: str, t: torch.Tensor) -> torch.Tensor:
    # integer tensors (e.g. num_batches_tracked) are left as they are (zeros)
    if not t.is_floating_point():
        return torch.zeros_like(t)
    n = t.numel()
    phase = (sum(key.encode("utf-8")) % 997) * 0.01
    v = torch.sin(torch.arange(n, dtype=torch.float64) * 0.618 + phase)
    if key.endswith("running_var"):
        v = 1.0 + 0.5 * v
    elif key.endswith("running_mean"):
        v = 0.1 * v
    elif t.dim() >= 2:
        v = v / math.sqrt(n / t.shape[0])  # 1/sqrt(fan_in)
    elif key.endswith("weight"):
        v = 1.0 + 0.1 * v  # 1-D norm weights
    else:
        v = 0.1 * v  # biases and other 1-D
    return v.reshape(t.shape).to(t.dtype)


def apply_synth(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    new_sd = {k: synth(k, t) for k, t in sd.items()}
    model.load_state_dict(new_sd, strict=True)
    model.eval()
    return new_sd


def make_inputs(shapes: list[list[int]], seed: int = 0) -> list[torch.Tensor]:
    """Deterministic inputs (stored in the fixture anyway)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float32) for s in shapes]


# ---------------------------------------------------------------------------
# Case description
# ---------------------------------------------------------------------------
@dataclass
class Case:
    registry: str  # backbone | neck | decoder | head | model
    name: str  # terrahost registry name
    channels: list[int] | None  # input channel list given to the registry (None for backbones/models)
    args: dict[str, Any]  # kwargs as JSON
    reference: str  # python expression / explanation
    model: torch.nn.Module
    input_shapes: list[list[int]]
    # forward(model, inputs) -> list of output tensors
    forward: Callable[[torch.nn.Module, list[torch.Tensor]], list[torch.Tensor]]
    extra_meta: dict[str, Any] = field(default_factory=dict)
    # for full models: the TerraTorch model_factory config (model_factory + model_args)
    factory_config: dict[str, Any] | None = None
    lightning_task: str | None = None  # e.g. terratorch.tasks.SemanticSegmentationTask
    # inputs that must not be random (e.g. coordinates), by position; None keeps the random one
    fixed_inputs: list[torch.Tensor | None] | None = None


def fwd_list(model, inputs):
    """forward(list_of_tensors) -> tensor or list of tensors"""
    out = model(list(inputs))
    return list(out) if isinstance(out, (list, tuple)) else [out]


def fwd_single(model, inputs):
    """forward(tensor) -> tensor or list of tensors"""
    out = model(inputs[0])
    return list(out) if isinstance(out, (list, tuple)) else [out]


def fwd_model_output(model, inputs):
    """TerraTorch Model.forward(tensor) -> ModelOutput; take .output"""
    return [model(inputs[0]).output]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def dump_json(obj: Any, indent: int = 2, _level: int = 0) -> str:
    """JSON with dicts indented but lists of scalars (shapes, channel lists) kept on one line."""
    pad, pad1 = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{pad1}{json.dumps(str(k))}: {dump_json(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and obj and any(isinstance(v, (dict, list, tuple)) for v in obj):
        items = [pad1 + dump_json(v, indent, _level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _stats(t: torch.Tensor) -> dict[str, float]:
    t = t.double()
    return {
        "max_abs": float(t.abs().max()),
        "mean": float(t.mean()),
        "std": float(t.std()) if t.numel() > 1 else 0.0,
    }


def _lightning_init_args(case: Case) -> dict:
    """The Lightning task passes its own `task` to build_model(self.task, ..., **model_args), so model_args
    there must NOT contain `task` (otherwise: "build_model() got multiple values for argument 'task'")."""
    cfg = json.loads(json.dumps(case.factory_config))
    model_args = {k: v for k, v in cfg["model_args"].items() if k != "task"}
    return {"model_factory": cfg["model_factory"], "model_args": model_args}


def _check_lightning(case: Case, new_sd: dict[str, torch.Tensor], inputs: list[torch.Tensor], out: torch.Tensor,
                     out_dir: Path) -> dict:
    """Instantiate the Lightning task from the same model_args and check it reproduces the output. With
    `extra_meta["lightning_checkpoint"]`, also save the task as a Lightning checkpoint would hold it
    (`checkpoint.ckpt`: torch.save of a dict with `state_dict` (keys `model.*`), `hyper_parameters`, ...)."""
    import importlib

    mod, cls = case.lightning_task.rsplit(".", 1)
    task_cls = getattr(importlib.import_module(mod), cls)
    task = task_cls(**_lightning_init_args(case))
    task.model.load_state_dict(new_sd, strict=True)
    task.model.eval()
    with torch.no_grad():
        out2 = task.model(inputs[0], **_encoder_kwargs(case, inputs))
    # a task model's ModelOutput; FullModelFactory's bare model returns a tuple, GenericModelFactory's
    # wrapper a ModelOutput holding a list: compare the first output either way
    out2 = getattr(out2, "output", out2)
    if isinstance(out2, (list, tuple)):
        out2 = out2[0]
    if isinstance(out2, dict):
        out2 = out2["loss"]
    keys = list(task.state_dict().keys())
    if case.extra_meta.get("lightning_checkpoint"):
        import lightning

        ckpt = {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": lightning.__version__,
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
        }
        torch.save(ckpt, out_dir / "checkpoint.ckpt")
    return {
        "task_state_dict_prefix": sorted({k.split(".")[0] + "." for k in keys}),
        "task_output_identical": bool(torch.equal(out, out2)),
    }


def _encoder_kwargs(case: Case, inputs: list[torch.Tensor]) -> dict:
    """The extra inputs of a whole model, by name (`temporal_coords`, `location_coords`)."""
    names = case.extra_meta.get("input_names", ["input"])
    return {n: t for n, t in zip(names[1:], inputs[1:]) if t.numel() > 0}


def _forward_f64(case: Case, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The case's forward on its (synthetic-weight) model in float64, cast back to float32 after (an exact
    round trip). In place, not on a deepcopy: TerraTorch's encoder_only Prithvi replaces `forward` by a
    closure over the original module, which a copy would still call."""
    model64 = case.model.double()
    # tensors a forward makes itself (encodings of coordinates) follow the default dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            keep = set(case.extra_meta.get("float64_keeps_float32_inputs", []))
            ins = [t.clone() if i in keep else t.clone().double() for i, t in enumerate(inputs)]
            return [o.detach().double() for o in case.forward(model64, ins)]
    finally:
        torch.set_default_dtype(default)
        case.model.float()


def write_case(case_name: str, case: Case) -> dict:
    out_dir = FIXTURES / case_name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    model = case.model
    new_sd = apply_synth(model)
    inputs = make_inputs(case.input_shapes)
    for i, fixed in enumerate(case.fixed_inputs or []):
        if fixed is not None:
            inputs[i] = fixed.to(torch.float32)
    with torch.no_grad():
        outputs = [o.detach().contiguous().float() for o in case.forward(model, [i.clone() for i in inputs])]

    # state_dict.json
    sd_list = [[k, list(t.shape), _dtype_name(t)] for k, t in new_sd.items()]
    (out_dir / "state_dict.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in sd_list) + "\n]\n")

    # io.safetensors
    io = {f"input.{i}": t.contiguous() for i, t in enumerate(inputs)}
    io.update({f"output.{i}": t.clone().contiguous() for i, t in enumerate(outputs)})
    f64_meta = {}
    if case.extra_meta.get("float64"):
        # The float64 truth (DESIGN.md): the same weights and inputs through model.double(),
        # stored as `f64.output.i` (float64), with how far the float32 pass is from it.
        out64 = _forward_f64(case, inputs)
        io.update({f"f64.output.{i}": t.contiguous() for i, t in enumerate(out64)})
        f64_meta["max_abs_f32_vs_f64"] = [float((o.double() - t).abs().max()) for o, t in zip(outputs, out64)]
    if case.registry == "model":  # the CLI's names as well
        for name, t in zip(case.extra_meta.get("input_names", ["input"]), inputs):
            io[name] = t.clone().contiguous()
        io["output"] = outputs[0].clone().contiguous()
    save_file(io, str(out_dir / "io.safetensors"))

    # a torch.save copy of the weights, for cases that test reading PyTorch checkpoints
    if case.extra_meta.get("torch_save"):
        torch.save(new_sd, out_dir / case.extra_meta["torch_save"])

    # weights.safetensors (tiny components only)
    nbytes = sum(t.numel() * t.element_size() for t in new_sd.values())
    wrote_weights = nbytes < WEIGHTS_FILE_LIMIT
    if wrote_weights:
        save_file({k: t.contiguous() for k, t in new_sd.items()}, str(out_dir / "weights.safetensors"))

    stats = [_stats(o) for o in outputs]
    warn = []
    for i, s in enumerate(stats):
        if s["max_abs"] > 1e4:
            warn.append(f"output.{i} max_abs {s['max_abs']:.3g} > 1e4")
        if s["max_abs"] < 1e-6:
            warn.append(f"output.{i} is all ~0 (max_abs {s['max_abs']:.3g})")

    meta = {
        "case": case_name,
        "registry": case.registry,
        "name": case.name,
        "channels": case.channels,
        "args": case.args,
        "reference": case.reference,
        "n_inputs": len(inputs),
        "n_outputs": len(outputs),
        "input_shapes": [list(t.shape) for t in inputs],
        "output_shapes": [list(t.shape) for t in outputs],
        "n_params": n_params(model),
        "n_state_dict_entries": len(new_sd),
        "state_dict_bytes": nbytes,
        "weights_file": wrote_weights,
        "output_stats": stats,
        "warnings": warn,
        "versions": versions(),
        **f64_meta,
        **case.extra_meta,
    }

    if case.factory_config is not None:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(case.factory_config, sort_keys=False))
        meta["config"] = "config.yaml"
    if case.lightning_task is not None:
        lightning = {
            "model": {
                "class_path": case.lightning_task,
                "init_args": _lightning_init_args(case),
            }
        }
        (out_dir / "lightning.yaml").write_text(yaml.safe_dump(lightning, sort_keys=False))
        meta["lightning"] = "lightning.yaml"
        meta["lightning_check"] = _check_lightning(case, new_sd, inputs, outputs[0], out_dir)

    (out_dir / "meta.json").write_text(dump_json(meta) + "\n")
    return meta


def synth_from_key_list(path: Path) -> dict[str, torch.Tensor]:
    """Regenerate the synthetic state_dict from state_dict.json alone (what the Rust side does)."""
    out = {}
    for key, shape, dtype in json.loads(path.read_text()):
        out[key] = synth(key, torch.zeros(shape, dtype=getattr(torch, dtype)))
    return out


def check_case(case_name: str, case: Case) -> list[str]:
    """Recompute a case in memory and compare with the files on disk; returns a list of problems."""
    from safetensors.torch import load_file

    d = FIXTURES / case_name
    problems = []
    new_sd = apply_synth(case.model)
    keys = [[k, list(t.shape), _dtype_name(t)] for k, t in new_sd.items()]
    if json.loads((d / "state_dict.json").read_text()) != keys:
        problems.append("state_dict.json differs")
    regen = synth_from_key_list(d / "state_dict.json")
    if (d / "weights.safetensors").exists():
        w = load_file(str(d / "weights.safetensors"))
        if set(w) != set(regen):
            problems.append("weights.safetensors keys differ")
        elif not all(torch.equal(w[k], regen[k]) for k in regen):
            problems.append("weights.safetensors != synth(state_dict.json)")
    if not all(torch.equal(new_sd[k], regen[k]) for k in new_sd):
        problems.append("synth(model.state_dict()) != synth(state_dict.json)")
    io = load_file(str(d / "io.safetensors"))
    inputs = [io[f"input.{i}"] for i in range(len(case.input_shapes))]
    with torch.no_grad():
        outputs = case.forward(case.model, [i.clone() for i in inputs])
    for i, o in enumerate(outputs):
        ref = io[f"output.{i}"]
        if ref.shape != o.shape:
            problems.append(f"output.{i} shape {list(o.shape)} != {list(ref.shape)}")
        elif not torch.equal(ref, o.float()):
            problems.append(f"output.{i} max abs diff {float((ref - o).abs().max()):.3g}")
    if case.extra_meta.get("float64"):
        for i, o in enumerate(_forward_f64(case, inputs)):
            ref = io.get(f"f64.output.{i}")
            if ref is None or ref.shape != o.shape or not torch.equal(ref, o):
                problems.append(f"f64.output.{i} differs")
    return problems


