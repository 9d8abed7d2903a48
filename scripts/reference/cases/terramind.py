"""Cases of the TerraMind family: TerraTorch's terramind_v1_tiny/small/base/large backbones
(TerraMindViT with raw image modalities) and a whole EncoderDecoderFactory model that takes
two modalities by name.

The presets fix their width and depth (TerraTorch raises on `dim`/`encoder_depth`), so every
case is full-size, with small inputs (16x16 or 32x32). Named inputs (TerraTorch's dict of
tensors by modality) are listed in `meta.input_names`: `input.i` is the tensor of the i-th
name, and the model is called with the dict in that order."""

from __future__ import annotations

from typing import Callable

import torch

from refkit import BACKBONE_REGISTRY, Case
from cases._factory import factory_case


def _named(names: list[str]):
    """forward({name: tensor, ...}) with the inputs in `names` order -> list of outputs."""

    def fwd(model, inputs):
        out = model(dict(zip(names, inputs)))
        if hasattr(out, "output"):
            return [out.output]
        return list(out)

    return fwd


def _single(model, inputs):
    return list(model(inputs[0]))


def _backbone(name: str, shapes: list[list[int]], note: str, input_names: list[str] | None, **args) -> Case:
    model = BACKBONE_REGISTRY.build(f"terratorch_{name}", **args)
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    call = "forward({" + ", ".join(f"{n!r}: input.{i}" for i, n in enumerate(input_names)) + "})" if input_names else "forward(input.0)"
    return Case(
        registry="backbone",
        name=f"terratorch_{name}",
        channels=None,
        args=args,
        reference=(
            f'BACKBONE_REGISTRY.build("terratorch_{name}", {kw}) -> TerraMindViT (terramind_register.py '
            f"build_terrammind_vit); {call} -> the tokens of every block, merged by merge_method. " + note
        ),
        model=model,
        input_shapes=shapes,
        forward=_named(input_names) if input_names else _single,
        extra_meta={
            "out_channels": list(model.out_channels),
            "modalities": model.modalities,
            "mod_name_mapping": model.mod_name_mapping,
            **({"input_names": input_names} if input_names else {}),
        },
    )


def case_tiny() -> Case:
    return _backbone(
        "terramind_v1_tiny",
        [[1, 12, 16, 32], [1, 2, 16, 32], [1, 4, 16, 16]],
        "Three modalities: two pretrained ones (16x32: 1x2 patches) and a new {'HLS': 4} with "
        "patch_size 8 (16x16: 4 tokens); merge_method=None keeps every token (2 + 2 + 4); img_size 224, "
        "so the position embeddings are interpolated (bicubic, to a rectangular grid).",
        ["S2L2A", "S1GRD", "HLS"],
        modalities=["S2L2A", "S1GRD", {"HLS": 4}],
        merge_method=None,
        patch_size=8,
    )


def case_small() -> Case:
    return _backbone(
        "terramind_v1_small",
        [[1, 6, 32, 32]],
        "One tensor goes to the first modality; bands select 6 of S2L2A's 12 channels (the patch "
        "embedding takes 6*16*16); img_size=32 (no interpolation); qk_norm=True (NormAttention).",
        None,
        modalities=["S2L2A"],
        bands={"S2L2A": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
        img_size=32,
        qk_norm=True,
    )


def case_base() -> Case:
    return _backbone(
        "terramind_v1_base",
        [[1, 13, 16, 16], [1, 2, 16, 16]],
        "merge_method=concat over three image modalities with DEM missing: missing_mod_token fills it; "
        "out_channels 3*768. SwiGLU MLP, no biases.",
        ["S2L1C", "S1GRD"],
        modalities=["S2L1C", "S1GRD", "DEM"],
        merge_method="concat",
    )


def case_large() -> Case:
    return _backbone(
        "terramind_v1_large",
        [[1, 2, 16, 16], [1, 1, 16, 16]],
        "merge_method=max over S1RTC and DEM; integer bands for S1RTC (two of two).",
        ["S1RTC", "DEM"],
        modalities=["S1RTC", "DEM"],
        bands={"S1RTC": [0, 1]},
        merge_method="max",
    )


def case_factory_terramind_multimodal() -> Case:
    """Two modalities by name through the factory and the CLI (io.safetensors holds S2L2A and S1GRD)."""
    model_args = {
        "task": "segmentation",
        "backbone": "terramind_v1_tiny",
        "backbone_pretrained": False,
        "backbone_modalities": ["S2L2A", "S1GRD"],
        "backbone_merge_method": "mean",
        "backbone_bands": {"S2L2A": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
        "necks": [
            {"name": "SelectIndices", "indices": [2, 5, 8, 11]},
            {"name": "ReshapeTokensToImage", "remove_cls_token": False},
            {"name": "LearnedInterpolateToPyramidal"},
        ],
        "decoder": "UNetDecoder",
        "decoder_channels": [32, 16, 8, 8],
        "num_classes": 2,
    }
    names = ["S2L2A", "S1GRD"]
    return factory_case(
        model_args,
        [[1, 6, 30, 30], [1, 2, 30, 30]],
        "PixelWiseModel called with {'S2L2A': x, 'S1GRD': y}: each modality is reflect-padded to 32x32 "
        "(twice the patch size 16, found on the first patch embedding), TerraMind merges the two token "
        "sets by mean, 4 blocks -> 2x2 maps -> pyramid -> UNetDecoder -> SegmentationHead -> cropped "
        "back to 30x30.",
        forward=_named(names),
        extra={"input_names": names},
    )


CASES: dict[str, Callable[[], Case]] = {
    "terratorch_terramind_v1_tiny": case_tiny,
    "terratorch_terramind_v1_small": case_small,
    "terratorch_terramind_v1_base": case_base,
    "terratorch_terramind_v1_large": case_large,
    "factory_terramind_multimodal": case_factory_terramind_multimodal,
}
