"""Cases of the DOFA backbones (TerraTorch's dofa_small/base/large_patch16_224,
terratorch/models/backbones/dofa_vit.py around torchgeo's DOFA) and of Clay v1
(clay_v1_base, terratorch/models/backbones/clay_v1/, registered into timm).

Neither family accepts a smaller depth or width (torchgeo's presets overwrite embed_dim,
depth and num_heads; Clay's Embedder hard-codes its encoder), so every case is the real
preset on a small input; img_size is set to that input, as both families' position
encodings are made for img_size. Whole-model cases follow the corpus configs
(examples/confs/dofa_sen1floods11_{fcn,uper}.yaml,
integrationtests/configs/test_encoderdecoder_clay_v1_base_model_factory.yaml) with
pretrained off and a small image size."""

from __future__ import annotations

from typing import Callable

import torch

from cases._factory import factory_case
from refkit import BACKBONE_REGISTRY, Case

SEN1FLOODS11_BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]


def _none(t: torch.Tensor):
    return None if t.numel() == 0 else t


def fwd_tokens(model, inputs):
    """forward(x) -> tuple/list of token tensors"""
    return list(model(inputs[0]))


def _dofa(name: str, shape: list[int], note: str, **args) -> Case:
    model = BACKBONE_REGISTRY.build(f"terratorch_{name}", **args)
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return Case(
        registry="backbone",
        name=f"terratorch_{name}",
        channels=None,
        args=args,
        reference=(
            f'BACKBONE_REGISTRY.build("terratorch_{name}", {kw}) -> DOFAEncoderWrapper(torchgeo DOFA); '
            "forward(x) -> tokens [B, 1+N, D] of the out_indices blocks. " + note
        ),
        model=model,
        input_shapes=[shape],
        forward=fwd_tokens,
        extra_meta={
            "out_channels": list(model.out_channels),
            "wavelengths": list(model.wavelengths),
            "patch_size": model.dofa_model.patch_size,
        },
    )


def case_dofa_small() -> Case:
    return _dofa(
        "dofa_small_patch16_224",
        [2, 4, 32, 32],
        "4 bands (one given as an enum-style name), 32x32, three outputs (-1 = the last block).",
        model_bands=["BLUE", "GREEN", "HLSBands.RED", "NIR_NARROW"],
        img_size=32,
        out_indices=[2, 5, -1],
    )


def case_dofa_base() -> Case:
    return _dofa(
        "dofa_base_patch16_224",
        [1, 6, 32, 32],
        "the Sen1Floods11 bands of the corpus, out_indices [11, 5] (returned in network order), "
        "global_pool=False (`norm` keys) and num_classes=0 (no head).",
        model_bands=SEN1FLOODS11_BANDS,
        img_size=32,
        out_indices=[11, 5],
        global_pool=False,
        num_classes=0,
    )


def case_dofa_large() -> Case:
    return _dofa(
        "dofa_large_patch16_224",
        [1, 2, 48, 48],
        "SAR bands VV, VH (same wavelength), 48x48, default out_indices ([-1]).",
        model_bands=["VV", "VH"],
        img_size=48,
    )


# --------------------------------------------------------------------------- Clay
def fwd_clay(model, inputs):
    """forward(x, time, latlon, waves, gsd) with empty inputs meaning None; gsd as a float."""
    x = inputs[0]
    rest = [(_none(t) if t is not None else None) for t in inputs[1:]] + [None] * (5 - len(inputs))
    time, latlon, waves, gsd = rest[:4]
    if gsd is not None:
        gsd = float(gsd.reshape(-1)[0])
    return list(model(x, time=time, latlon=latlon, waves=waves, gsd=gsd))


def _clay(shapes: list[list[int]], note: str, fixed=None, **args) -> Case:
    model = BACKBONE_REGISTRY.build("timm_clay_v1_base", **args)
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return Case(
        registry="backbone",
        name="timm_clay_v1_base",
        channels=None,
        args=args,
        reference=(
            f'BACKBONE_REGISTRY.build("timm_clay_v1_base", {kw}) -> TimmBackboneWrapper(Embedder); '
            "forward(x, time, latlon, waves, gsd) -> tokens [B, 1+N, 768] of the out_indices layers. " + note
        ),
        model=model,
        input_shapes=shapes,
        forward=fwd_clay,
        extra_meta={"out_channels": list(model.out_channels)},
        fixed_inputs=fixed,
    )


def case_clay_default_bands() -> Case:
    return _clay(
        [[1, 6, 16, 16]],
        "the default bands (blue, green, red, nir, swir16, swir22), default out_indices (all 12 layers; "
        "the last after the final norm), 16x16.",
        img_size=16,
    )


def case_clay_waves_gsd() -> Case:
    # inputs: image, time [B, 4], latlon [B, 4], waves [C], gsd [1]
    return _clay(
        [[2, 3, 24, 24], [2, 4], [2, 4], [3], [1]],
        "integer bands (no known wavelength -> 0.0) overridden by forward waves, time and latlon given, gsd 10.0, "
        "out_indices [-1, 3] (any order), 24x24.",
        fixed=[None, None, None, torch.tensor([0.49, 0.56, 0.665]), torch.tensor([10.0])],
        img_size=24,
        bands=[0, 1, 2],
        out_indices=[-1, 3],
    )


def case_clay_vpt() -> Case:
    return _clay(
        [[1, 4, 16, 16]],
        "visual prompt tuning (2 prompt tokens per layer), Sentinel-2 style names with an unknown one "
        "(-> wavelength 0.0), 16x16, out_indices [0, 11].",
        img_size=16,
        bands=["RED", "rededge1", "nir08", "unknown"],
        out_indices=[0, 11],
        vpt=True,
        vpt_n_tokens=2,
    )


# --------------------------------------------------------------------------- whole models (corpus)
def case_factory_dofa_fcn() -> Case:
    args = {
        "task": "segmentation",
        "decoder": "FCNDecoder",
        "backbone_pretrained": False,
        "backbone_img_size": 32,
        "backbone": "dofa_large_patch16_224",
        "decoder_channels": 16,
        "backbone_model_bands": SEN1FLOODS11_BANDS,
        "num_classes": 2,
        "head_dropout": 0.1,
        "head_channel_list": [16],
        "necks": [{"name": "SelectIndices", "indices": [-1]}, {"name": "ReshapeTokensToImage"}],
    }
    return factory_case(
        args,
        [[1, 6, 32, 32]],
        "examples/confs/dofa_sen1floods11_fcn.yaml with pretrained off, img_size 512 -> 32 and "
        "decoder_channels 256 -> 16.",
        lightning_task="terratorch.tasks.SemanticSegmentationTask",
    )


def case_factory_dofa_uper() -> Case:
    args = {
        "task": "segmentation",
        "decoder": "UperNetDecoder",
        "backbone_pretrained": False,
        "backbone": "dofa_large_patch16_224",
        "backbone_img_size": 32,
        "decoder_channels": 16,
        "backbone_model_bands": SEN1FLOODS11_BANDS,
        "backbone_out_indices": [5, 11, 17, 23],
        "num_classes": 2,
        "head_dropout": 0.1,
        "head_channel_list": [16],
        "necks": [{"name": "ReshapeTokensToImage"}],
    }
    return factory_case(
        args,
        [[1, 6, 30, 30]],
        "examples/confs/dofa_sen1floods11_uper.yaml with pretrained off, img_size 32 (the config's 224 default), "
        "decoder_channels 256 -> 16, a 30x30 input (reflect-padded to 32 by the factory).",
        lightning_task="terratorch.tasks.SemanticSegmentationTask",
    )


def case_factory_clay_unet() -> Case:
    args = {
        "task": "segmentation",
        "backbone": "clay_v1_base",
        "backbone_pretrained": False,
        "num_classes": 3,
        "backbone_img_size": 32,
        "backbone_bands": [0, 1, 2, 3, 4, 5],
        "necks": [
            {"name": "SelectIndices", "indices": [2, 5, 8, 11]},
            {"name": "ReshapeTokensToImage"},
            {"name": "LearnedInterpolateToPyramidal"},
        ],
        "decoder": "UNetDecoder",
        "decoder_channels": [32, 16, 8, 4],
        "head_channel_list": [16],
        "head_dropout": 0.1,
    }
    return factory_case(
        args,
        [[1, 6, 32, 32]],
        "integrationtests/configs/test_encoderdecoder_clay_v1_base_model_factory.yaml with pretrained off, "
        "img_size 512 -> 32, decoder_channels [512, 256, 128, 64] -> [32, 16, 8, 4].",
        lightning_task="terratorch.tasks.SemanticSegmentationTask",
    )


CASES: dict[str, Callable[[], Case]] = {
    "terratorch_dofa_small_patch16_224": case_dofa_small,
    "terratorch_dofa_base_patch16_224": case_dofa_base,
    "terratorch_dofa_large_patch16_224": case_dofa_large,
    "timm_clay_v1_base": case_clay_default_bands,
    "timm_clay_v1_base_waves_gsd": case_clay_waves_gsd,
    "timm_clay_v1_base_vpt": case_clay_vpt,
    "factory_dofa_fcn": case_factory_dofa_fcn,
    "factory_dofa_uper": case_factory_dofa_uper,
    "factory_clay_unet": case_factory_clay_unet,
}
