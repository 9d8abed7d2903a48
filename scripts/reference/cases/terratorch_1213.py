"""Cases that need TerraTorch 1.2.13 (the reference since issue 16): UperNetDecoder as 1.2.12
left it (no `scale_modules`), and the layout of the re-published Prithvi-EO-2.0-300M-TL
Sen1Floods11 model (the LearnedInterpolateToPyramidal neck where 1.2.11's config had
`decoder_scale_modules: true`), as a Lightning checkpoint of the task. Each case refuses to
run under another TerraTorch, since its point is what 1.2.13 builds."""

from __future__ import annotations

import importlib.metadata as md

import torch

from cases._factory import factory_case, fwd_with_coords
from cases.decoders import CHANNELS, SHAPES, _decoder
from refkit import Case

TERRATORCH = "1.2.13"


def _need_1213() -> None:
    have = md.version("terratorch")
    if have != TERRATORCH:
        raise RuntimeError(
            f"these cases are TerraTorch {TERRATORCH}'s and this environment has {have}; "
            "run them with the reference venv of scripts/reference/setup_venv.sh"
        )


def case_UperNetDecoder_1213() -> Case:
    _need_1213()
    return _decoder(
        "UperNetDecoder",
        CHANNELS,
        SHAPES,
        "TerraTorch 1.2.13's UperNetDecoder (1.2.12 removed scale_modules, which now raises a TypeError): "
        "non-default pool scales, width and align_corners=False.",
        pool_scales=[1, 3],
        channels=24,
        align_corners=False,
    )


def case_factory_sen1floods11_tl_lip() -> Case:
    """The re-published Sen1Floods11 300M-TL model at a tiny width and depth."""
    _need_1213()
    model_args = {
        "task": "segmentation",
        "backbone": "prithvi_eo_v2_300_tl",
        "backbone_pretrained": False,
        "backbone_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
        "backbone_num_frames": 1,
        "backbone_embed_dim": 32,
        "backbone_depth": 4,
        "backbone_num_heads": 2,
        "backbone_img_size": 32,
        "backbone_patch_size": [1, 4, 4],
        "necks": [
            {"name": "SelectIndices", "indices": [0, 1, 2, 3]},
            {"name": "ReshapeTokensToImage"},
            {"name": "LearnedInterpolateToPyramidal"},
        ],
        "decoder": "UperNetDecoder",
        "decoder_channels": 16,
        "num_classes": 2,
        "rescale": True,
        "head_dropout": 0.1,
    }
    case = factory_case(
        model_args,
        [[1, 6, 32, 32], [1, 1, 2], [1, 2]],
        "The Prithvi-EO-2.0-300M-TL-Sen1Floods11 layout as re-published for TerraTorch 1.2.12+ (SelectIndices, "
        "ReshapeTokensToImage, LearnedInterpolateToPyramidal, UperNetDecoder; the 300M model selects blocks "
        "5/11/17/23 of 24) at a tiny width and depth, with temporal and location coordinates. checkpoint.ckpt "
        "is the SemanticSegmentationTask's state_dict (keys model.*) saved by torch.save; f64.output.0 is the "
        "float64 forward.",
        forward=fwd_with_coords,
        lightning_task="terratorch.tasks.SemanticSegmentationTask",
        extra={
            "input_names": ["input", "temporal_coords", "location_coords"],
            "lightning_checkpoint": True,
            "float64": True,
            # Prithvi's coordinate encoders accept float32 coordinates only (they assert it): the float64
            # pass keeps them, so their sin/cos encodings are float32 there too, added to float64 tokens.
            "float64_keeps_float32_inputs": [1, 2],
        },
    )
    case.fixed_inputs = [None, torch.tensor([[[2019.0, 200.0]]]), torch.tensor([[28.6, 77.2]])]
    return case


CASES = {
    "terratorch_UperNetDecoder_1213": case_UperNetDecoder_1213,
    "factory_sen1floods11_tl_lip": case_factory_sen1floods11_tl_lip,
}
