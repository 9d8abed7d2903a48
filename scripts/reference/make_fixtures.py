#!/usr/bin/env python
"""Build reference models with the real Python libraries (TerraTorch, timm, smp,
mmseg) and write small numeric fixtures that the Rust tests reproduce.

Usage (from the repository root):

    .venv-ref/bin/python scripts/reference/make_fixtures.py            # all cases
    .venv-ref/bin/python scripts/reference/make_fixtures.py --only timm_resnet18 --only smp_Unet
    .venv-ref/bin/python scripts/reference/make_fixtures.py --list

Every case uses *synthetic weights* (see `synth` below and README.md), so that no
weight file needs to be committed for large models: the Rust side regenerates the
exact same tensors with libtorch from the committed state_dict key list.

Adding a case: write a function `case_xxx() -> Case` and add it to `CASES`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
WEIGHTS_FILE_LIMIT = 1_000_000  # bytes; write weights.safetensors only below this


# ---------------------------------------------------------------------------
# Stand-ins for optional compiled dependencies.
#
# mmcv-lite ships `mmcv/ops/*.py` but not the compiled `mmcv._ext`, so
# `import mmcv.ops` fails, and mmseg imports it at module level (e.g.
# mmseg/utils/mask_classification.py: `from mmcv.ops import point_sample`).
# TerraTorch imports `mmseg.models.decode_heads` when `terratorch.registry` is
# imported (mmseg_registry.py), so the stand-in must be installed BEFORE
# importing terratorch. Every attribute of the stand-in is a class that raises
# when instantiated/called; heads that use no mmcv op (FCNHead, UPerHead, ...)
# never touch it. `mmcv.cnn.bricks.transformer` also tries
# `from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention`
# inside a try/except ImportError, which just warns; that is fine.
# ---------------------------------------------------------------------------
class _MmcvOpStandIn:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f"{type(self).__name__} is a stand-in: compiled mmcv.ops is not available (mmcv-lite)"
        )


class _MmcvOpsModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):  # keep import machinery / introspection sane
            raise AttributeError(name)
        return type(name, (_MmcvOpStandIn,), {})


def install_stand_ins() -> None:
    if "mmcv.ops" not in sys.modules:
        sys.modules["mmcv.ops"] = _MmcvOpsModule("mmcv.ops")


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
# Cases: backbones
# ---------------------------------------------------------------------------
def _timm_resnet(arch: str, in_chans: int) -> Case:
    args = {"features_only": True, "pretrained": False, "in_chans": in_chans}
    model = BACKBONE_REGISTRY.build(f"timm_{arch}", **args)
    return Case(
        registry="backbone",
        name=f"timm_{arch}",
        channels=None,
        args=args,
        reference=(
            f'BACKBONE_REGISTRY.build("timm_{arch}", features_only=True, pretrained=False, in_chans={in_chans}) '
            f'== TimmBackboneWrapper(timm.create_model("{arch}", features_only=True, pretrained=False, '
            f"in_chans={in_chans})); forward(x) -> list of 5 feature maps (strides 2,4,8,16,32). "
            "The wrapper copies the timm FeatureListNet's child modules, so state_dict keys are "
            "conv1./bn1./layer1-4. (no fc)."
        ),
        model=model,
        input_shapes=[[1, in_chans, 64, 64]],
        forward=fwd_single,
        extra_meta={"out_channels": list(model.out_channels)},
    )


def case_timm_resnet18() -> Case:
    return _timm_resnet("resnet18", 3)


def case_timm_resnet34() -> Case:
    return _timm_resnet("resnet34", 6)


# ---------------------------------------------------------------------------
# Cases: decoders
# ---------------------------------------------------------------------------
RESNET18_64_SHAPES = [[1, 64, 32, 32], [1, 64, 16, 16], [1, 128, 8, 8], [1, 256, 4, 4], [1, 512, 2, 2]]


def _smp(name: str, channels: list[int], shapes: list[list[int]], **kwargs) -> Case:
    model = DECODER_REGISTRY.build(f"smp_{name}", channels, **kwargs)
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return Case(
        registry="decoder",
        name=f"smp_{name}",
        channels=channels,
        args=kwargs,
        reference=(
            f'DECODER_REGISTRY.build("smp_{name}", {channels}, {kw}) -> SMPDecoderWrapper(model.decoder, '
            f"model.segmentation_head[0].in_channels) where model = smp.{name}(encoder_name="
            f'"SMPEncoderWrapperWithPFFIM" (dummy), encoder_weights=None, in_channels=1, classes=1, '
            f"encoder_depth=len(channels)-1, {kw}, aux_params=None). forward(list of len(channels) maps); "
            "UnetDecoder drops features[0] (its spatial size is only used as the final upsampling target)."
        ),
        model=model,
        input_shapes=shapes,
        forward=fwd_list,
        extra_meta={
            "out_channels": model.out_channels,
            "default_decoder_channels_error": _smp_default_error(name, channels),
        },
    )


def _smp_default_error(name: str, channels: list[int]) -> str | None:
    try:
        DECODER_REGISTRY.build(f"smp_{name}", channels)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def case_smp_Unet() -> Case:
    # The default decoder_channels (256,128,64,32,16) has 5 entries but the
    # wrapper sets encoder_depth = len(channels)-1 = 4, so the default raises.
    # Pass the first 4 default entries.
    return _smp("Unet", [64, 64, 128, 256, 512], RESNET18_64_SHAPES, decoder_channels=[256, 128, 64, 32])


def case_smp_Unet_tiny() -> Case:
    # Small enough for a weights.safetensors file (BatchNorm-heavy smp decoder).
    return _smp(
        "Unet",
        [16, 16, 32, 64, 128],
        [[1, 16, 32, 32], [1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]],
        decoder_channels=[16, 16, 8, 8],
    )


def case_mmseg_FCNHead() -> Case:
    args = {"num_classes": 3, "channels": 16}
    model = DECODER_REGISTRY.build("mmseg_FCNHead", [32], **args)
    try:
        DECODER_REGISTRY.build("mmseg_FCNHead", [32], channels=16)
        missing_err = None
    except Exception as e:  # noqa: BLE001
        missing_err = f"{type(e).__name__}: {e}"
    return Case(
        registry="decoder",
        name="mmseg_FCNHead",
        channels=[32],
        args=args,
        reference=(
            'DECODER_REGISTRY.build("mmseg_FCNHead", [32], num_classes=3, channels=16) -> '
            "MMsegDecoderWrapper(mmseg.models.decode_heads.FCNHead(in_channels=32 (a 1-element channel list "
            "is unwrapped to an int), num_classes=3, channels=16)); defaults: num_convs=2, kernel_size=3, "
            "concat_input=True, dilation=1, dropout_ratio=0.1 (Dropout2d, no-op in eval), norm_cfg=None "
            "(convs have bias), act ReLU, in_index=-1, input_transform=None. forward(list) -> conv_seg "
            "logits at the selected map's resolution (no upsampling). includes_head=True."
        ),
        model=model,
        input_shapes=[[1, 32, 8, 8]],
        forward=fwd_list,
        extra_meta={"missing_num_classes_error": missing_err, "includes_head": True},
    )


def case_terratorch_FCNDecoder() -> Case:
    args = {"channels": 16}
    channels = [32, 64, 128]
    model = DECODER_REGISTRY.build("FCNDecoder", channels, **args)
    return Case(
        registry="decoder",
        name="FCNDecoder",
        channels=channels,
        args=args,
        reference=(
            'DECODER_REGISTRY.build("FCNDecoder", [32, 64, 128], channels=16) -> '
            "terratorch.models.decoders.FCNDecoder(embed_dim=[32,64,128], channels=16, num_convs=4, "
            "in_index=-1): takes x[-1]; 4 x (ConvTranspose2d(k2,s2) -> Conv2d(3x3,bias) -> "
            "LayerNorm over channels (eps 1e-6) -> GELU); each block upsamples x2."
        ),
        model=model,
        input_shapes=[[1, 32, 16, 16], [1, 64, 8, 8], [1, 128, 4, 4]],
        forward=fwd_list,
        extra_meta={"out_channels": model.out_channels, "includes_head": False},
    )


def case_terratorch_IdentityDecoder() -> Case:
    channels = [32, 64, 128]
    model = DECODER_REGISTRY.build("IdentityDecoder", channels)
    return Case(
        registry="decoder",
        name="IdentityDecoder",
        channels=channels,
        args={},
        reference=(
            'DECODER_REGISTRY.build("IdentityDecoder", [32, 64, 128]) -> IdentityDecoder(embed_dim=[32,64,128], '
            "out_index=-1): returns x[-1]; out_channels = embed_dim[-1]."
        ),
        model=model,
        input_shapes=[[1, 32, 16, 16], [1, 64, 8, 8], [1, 128, 4, 4]],
        forward=fwd_list,
        extra_meta={"out_channels": model.out_channels, "includes_head": False},
    )


# ---------------------------------------------------------------------------
# Cases: necks
# ---------------------------------------------------------------------------
def case_terratorch_SelectIndices() -> Case:
    channels = [16, 32, 64, 128]
    args = {"indices": [1, 3]}
    model = NECK_REGISTRY.build("SelectIndices", channels, **args)
    return Case(
        registry="neck",
        name="SelectIndices",
        channels=channels,
        args=args,
        reference=(
            'NECK_REGISTRY.build("SelectIndices", [16, 32, 64, 128], indices=[1, 3]) -> '
            "SelectIndices(channel_list, indices): forward(features) = [features[i] for i in indices]; "
            "process_channel_list(cl) = [cl[i] for i in indices]. No parameters."
        ),
        model=model,
        input_shapes=[[1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]],
        forward=fwd_list,
        extra_meta={"out_channels": model.process_channel_list(channels)},
    )


# ---------------------------------------------------------------------------
# Cases: heads (not registry entries in TerraTorch; built directly)
# ---------------------------------------------------------------------------
def case_head_SegmentationHead() -> Case:
    from terratorch.models.heads import SegmentationHead

    args = {"in_channels": 16, "num_classes": 3, "channel_list": [8], "dropout": 0.1}
    model = SegmentationHead(**args)
    return Case(
        registry="head",
        name="SegmentationHead",
        channels=None,
        args=args,
        reference=(
            "terratorch.models.heads.SegmentationHead(in_channels=16, num_classes=3, channel_list=[8], "
            "dropout=0.1): head = Sequential(Sequential(Sequential(Conv2d(16,8,3,pad1,bias), ReLU)), "
            "Dropout(0.1), Conv2d(8,3,1))."
        ),
        model=model,
        input_shapes=[[1, 16, 8, 8]],
        forward=fwd_single,
    )


def case_head_RegressionHead() -> Case:
    from terratorch.models.heads import RegressionHead

    args = {"in_channels": 16, "channel_list": [8]}
    model = RegressionHead(**args)
    return Case(
        registry="head",
        name="RegressionHead",
        channels=None,
        args=args,
        reference=(
            "terratorch.models.heads.RegressionHead(in_channels=16, channel_list=[8]) (num_outputs=1, "
            "final_act=None, learned_upscale_layers=0, batch_norm=True (unused), dropout=0): head = "
            "Sequential(Sequential(Sequential(Conv2d(16,8,3,pad1,no bias), BatchNorm2d(8), ReLU)), "
            "Dropout2d(0), Conv2d(8,1,1)); final_act Identity. Output keeps the channel dim [B,1,H,W]."
        ),
        model=model,
        input_shapes=[[1, 16, 8, 8]],
        forward=fwd_single,
    )


def case_head_ClassificationHead() -> Case:
    from terratorch.models.heads import ClassificationHead

    # ClassificationHead is a deprecated alias of ScalarHead, whose arguments are
    # (in_dim, num_outputs=None, num_classes=None, dim_list=None, dropout=0, linear_after_pool=False).
    args = {"in_dim": 16, "num_classes": 4, "dim_list": [8], "dropout": 0.1}
    model = ClassificationHead(**args)
    return Case(
        registry="head",
        name="ClassificationHead",
        channels=None,
        args=args,
        reference=(
            "terratorch.models.heads.ClassificationHead(in_dim=16, num_classes=4, dim_list=[8], dropout=0.1) "
            "(deprecated subclass of ScalarHead; linear_after_pool=False): x[B,C,H,W] -> reshape(B,C,H*W)"
            ".permute(0,2,1) -> head = Sequential(Sequential(Sequential(Linear(16,8), ReLU)), Dropout(0.1), "
            "Linear(8,4)) -> mean over tokens -> [B,4]."
        ),
        model=model,
        input_shapes=[[1, 16, 4, 4]],
        forward=fwd_single,
    )


# ---------------------------------------------------------------------------
# Cases: full models through EncoderDecoderFactory
# ---------------------------------------------------------------------------
def _factory(task: str, model_args: dict, lightning_task: str | None, explanation: str) -> Case:
    factory = MODEL_FACTORY_REGISTRY.build("EncoderDecoderFactory")
    model = factory.build_model(**json.loads(json.dumps(model_args)))  # pass a copy
    kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    prefixes = sorted({k.split(".")[0] + "." for k in model.state_dict()})
    head_keys = [k for k in model.state_dict() if k.startswith("head.")]
    return Case(
        registry="model",
        name="EncoderDecoderFactory",
        channels=None,
        args=model_args,
        reference=(
            f'MODEL_FACTORY_REGISTRY.build("EncoderDecoderFactory").build_model({kw}); '
            f"forward(x).output. {explanation}"
        ),
        model=model,
        input_shapes=[[1, 3, 64, 64]],
        forward=fwd_model_output,
        extra_meta={
            "model_class": type(model).__name__,
            "state_dict_prefixes": prefixes,
            "head_keys": head_keys,
            "encoder_out_channels": list(model.encoder.out_channels),
            "decoder_out_channels": getattr(model.decoder, "out_channels", None),
            "patch_size": model.patch_size,
            "padding": model.padding,
            "rescale": getattr(model, "rescale", None),
        },
        factory_config={"model_factory": "EncoderDecoderFactory", "model_args": model_args},
        lightning_task=lightning_task,
    )


def case_factory_segmentation() -> Case:
    model_args = {
        "task": "segmentation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "backbone_in_chans": 3,
        "decoder": "smp_Unet",
        # flat "decoder_" prefix -> decoder_kwargs {"decoder_channels": [...]}; the smp default
        # (5 entries) fails because encoder_depth = len(channel_list)-1 = 4.
        "decoder_decoder_channels": [256, 128, 64, 32],
        "num_classes": 3,
        "rescale": True,
    }
    return _factory(
        "segmentation",
        model_args,
        "terratorch.tasks.SemanticSegmentationTask",
        "PixelWiseModel: encoder=TimmBackboneWrapper(resnet18 features_only) -> neck=identity "
        "(encoder.prepare_features_for_image_model) -> decoder=SMPDecoderWrapper(Unet decoder, out 32ch at "
        "32x32) -> head=SegmentationHead(32, num_classes=3) (smp registry includes_head=False, so num_classes "
        "goes to the head) -> bilinear resize to 64x64 (rescale=True, align_corners=None/False) -> "
        "squeeze(1) only if 1 channel -> center_crop to input size. No padding (resnet has no patch_size).",
    )


def case_factory_regression() -> Case:
    model_args = {
        "task": "regression",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "necks": [{"name": "SelectIndices", "indices": [2, 4]}],
        "decoder": "FCNDecoder",
        "decoder_channels": 32,
        "head_channel_list": [16],
        "rescale": True,
    }
    return _factory(
        "regression",
        model_args,
        None,
        "PixelWiseModel: encoder=resnet18 features [64,64,128,256,512] -> neck=NeckSequential("
        "SelectIndices([2,4])) -> channel_list [128,512] -> FCNDecoder(embed_dim=[128,512], channels=32) takes "
        "the 512ch 2x2 map -> 32ch 32x32 -> RegressionHead(32, channel_list=[16]) (num_outputs default 1) -> "
        "bilinear resize to 64x64 -> squeeze(1) -> [1,64,64].",
    )


def case_factory_classification() -> Case:
    model_args = {
        "task": "classification",
        "backbone": "timm_resnet18",
        # dict form instead of flat backbone_ prefixes (both are accepted by the factory)
        "backbone_kwargs": {"pretrained": False, "features_only": True},
        "decoder": "IdentityDecoder",
        "num_classes": 5,
    }
    return _factory(
        "classification",
        model_args,
        None,
        "ScalarOutputModel: encoder=resnet18 features -> neck identity -> IdentityDecoder (last map, 512ch "
        "2x2) -> head=ScalarHead(512, num_classes=5) (Linear per token, then mean over tokens) -> [1,5].",
    )


CASES: dict[str, Callable[[], Case]] = {
    "timm_resnet18": case_timm_resnet18,
    "timm_resnet34": case_timm_resnet34,
    "smp_Unet": case_smp_Unet,
    "smp_Unet_tiny": case_smp_Unet_tiny,
    "mmseg_FCNHead": case_mmseg_FCNHead,
    "terratorch_FCNDecoder": case_terratorch_FCNDecoder,
    "terratorch_IdentityDecoder": case_terratorch_IdentityDecoder,
    "terratorch_SelectIndices": case_terratorch_SelectIndices,
    "head_SegmentationHead": case_head_SegmentationHead,
    "head_RegressionHead": case_head_RegressionHead,
    "head_ClassificationHead": case_head_ClassificationHead,
    "factory_segmentation": case_factory_segmentation,
    "factory_regression": case_factory_regression,
    "factory_classification": case_factory_classification,
}


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


def _check_lightning(case: Case, new_sd: dict[str, torch.Tensor], x: torch.Tensor, out: torch.Tensor) -> dict:
    """Instantiate the Lightning task from the same model_args and check it reproduces the output."""
    import importlib

    mod, cls = case.lightning_task.rsplit(".", 1)
    task_cls = getattr(importlib.import_module(mod), cls)
    task = task_cls(**_lightning_init_args(case))
    task.model.load_state_dict(new_sd, strict=True)
    task.model.eval()
    with torch.no_grad():
        out2 = task.model(x).output
    keys = list(task.state_dict().keys())
    return {
        "task_state_dict_prefix": sorted({k.split(".")[0] + "." for k in keys}),
        "task_output_identical": bool(torch.equal(out, out2)),
    }


def write_case(case_name: str, case: Case) -> dict:
    out_dir = FIXTURES / case_name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    model = case.model
    new_sd = apply_synth(model)
    inputs = make_inputs(case.input_shapes)
    with torch.no_grad():
        outputs = [o.detach().contiguous().float() for o in case.forward(model, [i.clone() for i in inputs])]

    # state_dict.json
    sd_list = [[k, list(t.shape), _dtype_name(t)] for k, t in new_sd.items()]
    (out_dir / "state_dict.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in sd_list) + "\n]\n")

    # io.safetensors
    io = {f"input.{i}": t.contiguous() for i, t in enumerate(inputs)}
    io.update({f"output.{i}": t.clone().contiguous() for i, t in enumerate(outputs)})
    if case.registry == "model":  # CLI format as well
        io["input"] = inputs[0].clone().contiguous()
        io["output"] = outputs[0].clone().contiguous()
    save_file(io, str(out_dir / "io.safetensors"))

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
        meta["lightning_check"] = _check_lightning(case, new_sd, inputs[0], outputs[0])

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
    return problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], help="case name (repeatable)")
    p.add_argument("--list", action="store_true", help="list case names and exit")
    p.add_argument(
        "--check",
        action="store_true",
        help="recompute the cases and compare with tests/fixtures (writes nothing); exit 1 on any difference",
    )
    a = p.parse_args()
    if a.list:
        print("\n".join(CASES))
        return
    unknown = [c for c in a.only if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CASES)}")

    torch.set_num_threads(1)  # reduce any thread-count dependence of CPU reductions
    torch.use_deterministic_algorithms(True)
    names = a.only or list(CASES)
    if a.check:
        bad = 0
        for name in names:
            problems = check_case(name, CASES[name]())
            bad += bool(problems)
            print(f"{name:28s} {'OK' if not problems else 'FAIL: ' + '; '.join(problems)}")
        sys.exit(1 if bad else 0)
    for name in names:
        meta = write_case(name, CASES[name]())
        mags = ", ".join(f"{s['max_abs']:.3g}" for s in meta["output_stats"])
        print(
            f"{name:28s} params={meta['n_params']:>9d} in={meta['input_shapes']} out={meta['output_shapes']} "
            f"max|out|=[{mags}] weights_file={meta['weights_file']}" + (f" WARN {meta['warnings']}" if meta["warnings"] else "")
        )


if __name__ == "__main__":
    os.chdir(REPO)
    main()
