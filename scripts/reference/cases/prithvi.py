"""Cases of the Prithvi family: TerraTorch's prithvi_eo_* backbones (PrithviViT), the
prithvi_eo_*_mae full models (PrithviMAE), the old timm prithvi_vit_* names (built with
the equivalent prithvi_eo_* builder) and pretrained loading with band selection.

Every registered name has its own case, at a tiny size obtained through the builder's
own keyword arguments. Optional inputs that are Python `None` are stored as empty
tensors (shape [0]); the forward functions below turn them back into `None`."""

from __future__ import annotations

import os
import tempfile
from functools import partial
from typing import Callable

import torch
from torch import nn

from refkit import BACKBONE_REGISTRY, Case
from terratorch.models.backbones.prithvi_mae import PrithviViT
from terratorch.registry import FULL_MODEL_REGISTRY

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": [1, 8, 8]}
TINY_DEC = {"decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}


def _none(t: torch.Tensor):
    return None if t.numel() == 0 else t


def fwd_prithvi(model, inputs):
    """forward(x, temporal_coords, location_coords) -> list of token tensors"""
    x = inputs[0]
    tc = _none(inputs[1]) if len(inputs) > 1 else None
    lc = _none(inputs[2]) if len(inputs) > 2 else None
    return list(model(x, tc, lc))


def fwd_mae(model, inputs):
    """PrithviMAE.forward(x, temporal_coords, location_coords) with the masking noise of
    inputs[3] passed to random_masking (upstream's own `noise` argument); returns
    [loss, reconstruction, mask]."""
    x, tc, lc, noise = inputs
    enc = model.encoder
    enc.random_masking = lambda seq, ratio, noise_=None: PrithviViT.random_masking(enc, seq, ratio, noise=noise)
    try:
        loss, pred, mask = model(x, _none(tc), _none(lc))
    finally:
        del enc.random_masking
    return [loss["loss"], pred, mask]


def _backbone(name: str, shapes: list[list[int]], reference_note: str = "", **args) -> Case:
    model = BACKBONE_REGISTRY.build(f"terratorch_{name}", **args)
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return Case(
        registry="backbone",
        name=f"terratorch_{name}",
        channels=None,
        args=args,
        reference=(
            f'BACKBONE_REGISTRY.build("terratorch_{name}", {kw}) -> PrithviViT (prithvi_vit.py _create_prithvi); '
            "forward(x, temporal_coords, location_coords) -> tokens [B, 1+N, E] of the out_indices blocks. "
            + reference_note
        ),
        model=model,
        input_shapes=shapes,
        forward=fwd_prithvi,
        extra_meta={"out_channels": list(model.out_channels), "patch_size": list(model.patch_embed.patch_size)},
    )


def _mae(name: str, shapes: list[list[int]], reference_note: str = "", **args) -> Case:
    model = FULL_MODEL_REGISTRY.build(f"terratorch_{name}", **args)
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return Case(
        registry="full_model",
        name=f"terratorch_{name}",
        channels=None,
        args=args,
        reference=(
            f'FULL_MODEL_REGISTRY.build("terratorch_{name}", {kw}) -> PrithviMAE; forward(x, temporal_coords, '
            "location_coords) with random_masking's noise = input.3 -> [loss['loss'], reconstruction, mask]. "
            + reference_note
        ),
        model=model,
        input_shapes=shapes,
        forward=fwd_mae,
        extra_meta={"out_channels": list(model.out_channels)},
    )


# --------------------------------------------------------------------------- backbones
def case_prithvi_eo_tiny() -> Case:
    return _backbone("prithvi_eo_tiny", [[1, 6, 32, 32]], "Plain 4-D input.", **TINY)


def case_prithvi_eo_tiny_vpt() -> Case:
    c = _backbone(
        "prithvi_eo_tiny", [[1, 6, 32, 32]], "Visual prompt tuning.", **TINY, vpt=True, vpt_n_tokens=3
    )
    return c


def case_prithvi_eo_v1_100() -> Case:
    return _backbone(
        "prithvi_eo_v1_100", [[2, 6, 2, 32, 32]], "num_frames=2, 5-D input.", **TINY, num_frames=2
    )


def case_prithvi_eo_v2_tiny_tl() -> Case:
    return _backbone(
        "prithvi_eo_v2_tiny_tl",
        [[2, 6, 2, 32, 32], [2, 2, 2], [2, 2]],
        "Temporal + location coordinates, 2 frames.",
        **TINY,
        num_frames=2,
    )


def case_prithvi_eo_v2_100_tl() -> Case:
    return _backbone(
        "prithvi_eo_v2_100_tl",
        [[1, 6, 32, 32], [1, 1, 2], [1, 2]],
        "Coordinates with a 4-D input; out_indices=[-1, 0].",
        **TINY,
        out_indices=[-1, 0],
    )


def case_prithvi_eo_v2_300() -> Case:
    return _backbone(
        "prithvi_eo_v2_300",
        [[1, 3, 48, 48]],
        "bands subset (3 channels), out_indices=[0, 1], input 48x48 for a model built at 32 "
        "(bicubic position-embedding interpolation).",
        **TINY,
        bands=["RED", "GREEN", "BLUE"],
        out_indices=[0, 1],
    )


def case_prithvi_eo_v2_300_tl() -> Case:
    return _backbone(
        "prithvi_eo_v2_300_tl",
        [[1, 6, 2, 32, 32], [0], [1, 2]],
        "temporal_coords None (empty input), location only, 2 frames.",
        **TINY,
        num_frames=2,
    )


def case_prithvi_eo_v2_600() -> Case:
    args = {**TINY, "patch_size": 8, "img_size": [32, 48], "depth": 3}
    return _backbone(
        "prithvi_eo_v2_600", [[1, 6, 32, 48]], "int patch_size, rectangular image, 3 blocks.", **args
    )


def case_prithvi_eo_v2_600_tl() -> Case:
    return _backbone(
        "prithvi_eo_v2_600_tl",
        [[1, 6, 3, 32, 32], [0], [1, 2]],
        "3 frames into a model built for 2 (sin-cos table recomputed for the new frame count).",
        **TINY,
        num_frames=2,
    )


# --------------------------------------------------------------------------- full models
def case_prithvi_eo_v1_100_mae() -> Case:
    return _mae(
        "prithvi_eo_v1_100_mae", [[1, 6, 32, 32], [0], [0], [1, 16]], "4-D input, mask_ratio 0.75.", **TINY, **TINY_DEC
    )


def case_prithvi_eo_v2_tiny_tl_mae() -> Case:
    return _mae(
        "prithvi_eo_v2_tiny_tl_mae",
        [[2, 6, 2, 32, 32], [2, 2, 2], [2, 2], [2, 32]],
        "coordinates, 2 frames.",
        **TINY,
        **TINY_DEC,
        num_frames=2,
    )


def case_prithvi_eo_v2_100_tl_mae() -> Case:
    return _mae(
        "prithvi_eo_v2_100_tl_mae",
        [[1, 6, 32, 32], [1, 1, 2], [1, 2], [1, 16]],
        "coordinates, 4-D input.",
        **TINY,
        **TINY_DEC,
    )


def case_prithvi_eo_v2_300_mae() -> Case:
    args = {**TINY, **TINY_DEC, "num_frames": 2, "patch_size": [2, 8, 8], "norm_pix_loss": True}
    return _mae(
        "prithvi_eo_v2_300_mae", [[1, 6, 2, 32, 32], [0], [0], [1, 16]], "tubelet 2, norm_pix_loss.", **args
    )


def case_prithvi_eo_v2_300_tl_mae() -> Case:
    return _mae(
        "prithvi_eo_v2_300_tl_mae",
        [[1, 6, 48, 48], [1, 1, 2], [1, 2], [1, 36]],
        "48x48 input into a model built at 32 (encoder and decoder position embeddings interpolated).",
        **TINY,
        **TINY_DEC,
    )


def case_prithvi_eo_v2_600_mae() -> Case:
    return _mae(
        "prithvi_eo_v2_600_mae",
        [[1, 6, 32, 32], [0], [0], [1, 16]],
        "mask_ratio 0.5.",
        **TINY,
        **TINY_DEC,
        mask_ratio=0.5,
    )


def case_prithvi_eo_v2_600_tl_mae() -> Case:
    return _mae(
        "prithvi_eo_v2_600_tl_mae",
        [[1, 6, 32, 32], [0], [1, 2], [1, 16]],
        "location only.",
        **TINY,
        **TINY_DEC,
    )


# --------------------------------------------------------------------------- old timm names
def _timm(old: str, new: str) -> Case:
    args = {k: v for k, v in TINY.items()}
    model = BACKBONE_REGISTRY.build(f"terratorch_{new}", **args, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    return Case(
        registry="backbone",
        name=f"timm_{old}",
        channels=None,
        args=args,
        reference=(
            f"timm's {old} (TerraTorch <= 0.99) is gone from TerraTorch 1.2.11; the reference is its equivalent "
            f'BACKBONE_REGISTRY.build("terratorch_{new}", {args}, norm_layer=partial(nn.LayerNorm, eps=1e-6)) '
            "(the old registration used LayerNorm eps 1e-6, num_frames 1, patch 16)."
        ),
        model=model,
        input_shapes=[[1, 6, 32, 32]],
        forward=fwd_prithvi,
        extra_meta={"out_channels": list(model.out_channels)},
    )


def case_timm_prithvi_vit_tiny() -> Case:
    return _timm("prithvi_vit_tiny", "prithvi_eo_tiny")


def case_timm_prithvi_vit_100() -> Case:
    return _timm("prithvi_vit_100", "prithvi_eo_v1_100")


def case_timm_prithvi_vit_300() -> Case:
    return _timm("prithvi_vit_300", "prithvi_eo_v2_300")


# --------------------------------------------------------------------------- pretrained loading
PRETRAINED_BANDS_SUBSET = ["SWIR_2", "BLUE", "NIR_NARROW"]


def case_prithvi_pretrained() -> Case:
    """The case model is a 6-band MAE whose (synthetic) state_dict is the checkpoint: its
    keys are state_dict.json. forward saves it with torch.save, builds a 3-band encoder with
    pretrained=True, ckpt_path=<file>, bands=<subset> (checkpoint_filter_fn_vit +
    select_patch_embed_weights; every band is a pretrained band, so no column stays random)
    and runs it."""
    mae = FULL_MODEL_REGISTRY.build("terratorch_prithvi_eo_v2_300_mae", **TINY, **TINY_DEC)
    args = {**TINY, "bands": PRETRAINED_BANDS_SUBSET, "out_indices": [1]}

    def forward(model, inputs):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ckpt.pt")
            torch.save(model.state_dict(), path)
            enc = BACKBONE_REGISTRY.build("terratorch_prithvi_eo_v2_300", **args, pretrained=True, ckpt_path=path)
        enc.eval()
        return list(enc(inputs[0]))

    return Case(
        registry="backbone",
        name="terratorch_prithvi_eo_v2_300",
        channels=None,
        args=args,
        reference=(
            "checkpoint = synth weights of FULL_MODEL_REGISTRY.build('terratorch_prithvi_eo_v2_300_mae', tiny) "
            "(MAE key layout, keys in state_dict.json); reference = BACKBONE_REGISTRY.build("
            f"'terratorch_prithvi_eo_v2_300', {args}, pretrained=True, ckpt_path=<checkpoint>)(x). "
            "The Rust test writes the checkpoint itself and adds pretrained/ckpt_path."
        ),
        model=mae,
        input_shapes=[[1, 3, 32, 32]],
        forward=forward,
        # state_dict.json lists the checkpoint (an MAE), not the model: the plugin's own test loads it
        # ckpt.pt: the same checkpoint as torch.save wrote it, which terrahost reads too
        extra_meta={
            "checkpoint_entry": "terratorch_prithvi_eo_v2_300_mae",
            "parity_test": "custom",
            "torch_save": "ckpt.pt",
        },
    )


_ALL: dict[str, Callable[[], Case]] = {
    "terratorch_prithvi_eo_tiny": case_prithvi_eo_tiny,
    "terratorch_prithvi_eo_tiny_vpt": case_prithvi_eo_tiny_vpt,
    "terratorch_prithvi_eo_v1_100": case_prithvi_eo_v1_100,
    "terratorch_prithvi_eo_v2_tiny_tl": case_prithvi_eo_v2_tiny_tl,
    "terratorch_prithvi_eo_v2_100_tl": case_prithvi_eo_v2_100_tl,
    "terratorch_prithvi_eo_v2_300": case_prithvi_eo_v2_300,
    "terratorch_prithvi_eo_v2_300_tl": case_prithvi_eo_v2_300_tl,
    "terratorch_prithvi_eo_v2_600": case_prithvi_eo_v2_600,
    "terratorch_prithvi_eo_v2_600_tl": case_prithvi_eo_v2_600_tl,
    "terratorch_prithvi_eo_v1_100_mae": case_prithvi_eo_v1_100_mae,
    "terratorch_prithvi_eo_v2_tiny_tl_mae": case_prithvi_eo_v2_tiny_tl_mae,
    "terratorch_prithvi_eo_v2_100_tl_mae": case_prithvi_eo_v2_100_tl_mae,
    "terratorch_prithvi_eo_v2_300_mae": case_prithvi_eo_v2_300_mae,
    "terratorch_prithvi_eo_v2_300_tl_mae": case_prithvi_eo_v2_300_tl_mae,
    "terratorch_prithvi_eo_v2_600_mae": case_prithvi_eo_v2_600_mae,
    "terratorch_prithvi_eo_v2_600_tl_mae": case_prithvi_eo_v2_600_tl_mae,
    "timm_prithvi_vit_tiny": case_timm_prithvi_vit_tiny,
    "timm_prithvi_vit_100": case_timm_prithvi_vit_100,
    "timm_prithvi_vit_300": case_timm_prithvi_vit_300,
    "terratorch_prithvi_pretrained": case_prithvi_pretrained,
}

CASES: dict[str, Callable[[], Case]] = _ALL
