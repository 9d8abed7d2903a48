"""ClayModelFactory (terratorch/models/clay_model_factory.py, the same in TerraTorch 1.2.11 and
1.2.13): Clay v1 (`clay_v1_base` from timm, features_only, with the factory's in_channels, bands
and num_frames) and a terratorch.models.decoders class, one case per task it supports.

The factory passes no neck, so PixelWiseModel / ScalarOutputModel fall back on the Embedder's
prepare_features_for_image_model: the last layer's tokens, without the class token, as one
[B, 768, H/8, W/8] map. The decoder is still built for the 12 feature_info channels, so only
decoders that read the last map (FCNDecoder, IdentityDecoder, ...) run. Clay's encoder is fixed
at its base size; the cases keep the image small (img_size 32) and the decoders narrow."""

from __future__ import annotations

from typing import Callable

from cases.factories import _case
from cases._factory import fwd_with_aux
from refkit import Case

CLAY_BANDS = ["blue", "green", "red", "nir"]


def _clay(task: str, extra: dict, shape: list[int], explanation: str, lightning_task: str) -> Callable[[], Case]:
    def make() -> Case:
        model_args = {
            "task": task,
            "backbone": "clay_v1_base",
            "in_channels": shape[1],
            "bands": CLAY_BANDS[: shape[1]],
            "pretrained": False,
            "backbone_img_size": 32,
            **extra,
        }
        return _case(
            "ClayModelFactory",
            model_args,
            [shape],
            "timm.create_model(backbone, pretrained, in_chans=in_channels, bands=bands, num_frames=num_frames, "
            "features_only=True, **backbone_*); no neck, so the Embedder's prepare_features_for_image_model makes "
            "one map of the last layer. " + explanation,
            fwd_with_aux,
            lightning_task,
        )

    return make


CASES: dict[str, Callable[[], Case]] = {
    "factory_clay_mf_segmentation": _clay(
        "segmentation",
        {"decoder": "FCNDecoder", "decoder_channels": 16, "num_classes": 3, "head_dropout": 0.1},
        [1, 4, 30, 30],
        "A 30x30 input, reflect-padded to the patch size 8 (32x32), FCNDecoder (4 upsamplings of 4x4 -> 64x64), "
        "SegmentationHead, resized to 32x32 and cropped to 30x30.",
        "terratorch.tasks.SemanticSegmentationTask",
    ),
    "factory_clay_mf_regression": _clay(
        "regression",
        {"decoder": "IdentityDecoder", "head_channel_list": [16], "backbone_out_indices": [3, 11]},
        [2, 3, 32, 32],
        "Two layers' features (out_indices [3, 11]; the last one is used), IdentityDecoder, RegressionHead, "
        "the 4x4 map resized to 32x32 and its single channel squeezed.",
        "terratorch.tasks.PixelwiseRegressionTask",
    ),
    "factory_clay_mf_classification": _clay(
        "classification",
        {"decoder": "IdentityDecoder", "num_classes": 5, "head_dim_list": [16]},
        [2, 4, 32, 32],
        "IdentityDecoder, ClassificationHead (pooled, one hidden layer of 16) with 5 classes.",
        "terratorch.tasks.ClassificationTask",
    ),
    "factory_clay_mf_scalar_regression": _clay(
        "scalar_regression",
        {"decoder": "FCNDecoder", "decoder_channels": 8, "decoder_num_convs": 2, "head_num_outputs": 1},
        [1, 4, 32, 32],
        "FCNDecoder (8 channels, 2 convs), ScalarHead with head_num_outputs=1 (ClayModelFactory declares no "
        "num_outputs, so it goes to the head by its head_ prefix).",
        "terratorch.tasks.ScalarRegressionTask",
    ),
}
