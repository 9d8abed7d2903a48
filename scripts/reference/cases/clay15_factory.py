"""Clay1_5ModelFactory as TerraTorch 1.2.12 rewrote it (terratorch/models/clay1_5_model_factory.py in
1.2.13): the Clay v1.5 Encoder (terratorch/models/backbones/clay_v15/model.py) in ClayMAEBackbone, a
terratorch.models.decoders class on [dim], and the task's head. The encoder's size comes from the
factory's own dim/depth/heads/dim_head/mlp_ratio/patch_size, so the cases are small; the band
wavelengths and the GSD come from `metadata[platform]`. Needs TerraTorch >= 1.2.12 (the 1.2.11 class of
that name is a different, hub-bound wrapper): run with the 1.2.13 environment."""

from __future__ import annotations

from typing import Callable

from cases.factories import _case
from cases._factory import fwd_with_aux
from refkit import Case

METADATA = {
    "sentinel-2-l2a": {
        "band_order": ["blue", "green", "red", "nir"],
        "gsd": 10,
        "bands": {
            "mean": {"blue": 1105.0, "green": 1355.0, "red": 1552.0, "nir": 2743.0},
            "std": {"blue": 1809.0, "green": 1757.0, "red": 1888.0, "nir": 1742.0},
            "wavelength": {"blue": 0.493, "green": 0.56, "red": 0.665, "nir": 0.842},
        },
    },
    "naip": {
        "band_order": ["red", "green", "blue", "nir"],
        "gsd": 1.0,
        "bands": {"wavelength": {"red": 0.65, "green": 0.56, "blue": 0.48, "nir": 0.842}},
    },
}

SMALL = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "mlp_ratio": 2.0, "patch_size": 8}


def _clay15(task: str, extra: dict, shape: list[int], explanation: str, lightning_task: str) -> Callable[[], Case]:
    def make() -> Case:
        model_args = {
            "task": task,
            "backbone": "clay_v1.5",
            "in_channels": shape[1],
            "pretrained": False,
            "metadata": METADATA,
            **SMALL,
            **extra,
        }
        return _case(
            "Clay1_5ModelFactory",
            model_args,
            [shape],
            "ClayMAEBackbone(Encoder(dim, depth, heads, dim_head, mlp_ratio, patch_size)): wavelengths and gsd of "
            "metadata[platform], zero time and latlon, no masking, the class token dropped, one [B, dim, h, w] map. "
            + explanation,
            fwd_with_aux,
            lightning_task,
        )

    return make


_ALL: dict[str, Callable[[], Case]] = {
    "factory_clay15_segmentation": _clay15(
        "segmentation",
        {"platform": "sentinel-2-l2a", "decoder": "FCNDecoder", "decoder_channels": 16, "num_classes": 3,
         "decoder_dim": 64, "decoder_depth": 1},
        [1, 4, 30, 30],
        "A 30x30 input reflect-padded to 32; FCNDecoder; SegmentationHead; cropped to 30x30. decoder_dim and "
        "decoder_depth (ClayMAE decoder settings) are dropped before the terratorch decoder sees them.",
        "terratorch.tasks.SemanticSegmentationTask",
    ),
    "factory_clay15_regression": _clay15(
        "regression",
        {"platform": ["naip"], "decoder": "IdentityDecoder", "head_channel_list": [8]},
        [2, 4, 32, 32],
        "platform given as a list (its first name), gsd 1.0; IdentityDecoder, RegressionHead, resized and squeezed.",
        "terratorch.tasks.PixelwiseRegressionTask",
    ),
    "factory_clay15_classification": _clay15(
        "classification",
        {"platform": "sentinel-2-l2a", "decoder": "IdentityDecoder", "num_classes": 4, "head_dim_list": [8]},
        [2, 4, 32, 32],
        "IdentityDecoder, ClassificationHead with 4 classes.",
        "terratorch.tasks.ClassificationTask",
    ),
    "factory_clay15_scalar_regression": _clay15(
        "scalar_regression",
        {"platform": "naip", "decoder": "FCNDecoder", "decoder_channels": 8, "decoder_num_convs": 2,
         "head_num_outputs": 1},
        [1, 4, 32, 32],
        "FCNDecoder (2 convs), ScalarHead with head_num_outputs=1.",
        "terratorch.tasks.ScalarRegressionTask",
    ),
}


def _rewritten() -> bool:
    """Whether the installed TerraTorch has the 1.2.12 rewrite (a downstream factory)."""
    import importlib.metadata
    import sys

    version = tuple(int(p) for p in importlib.metadata.version("terratorch").split(".")[:3])
    if version < (1, 2, 12):
        print(f"cases/clay15_factory.py: TerraTorch {version} has the old Clay1_5ModelFactory; its cases are "
              "skipped (run with TerraTorch >= 1.2.12)", file=sys.stderr)
        return False
    return True


CASES: dict[str, Callable[[], Case]] = _ALL if _rewritten() else {}
