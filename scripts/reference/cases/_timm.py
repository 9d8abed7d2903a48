"""Helpers shared by the case modules of the timm plugin (timm_a.py, timm_swin.py): every timm case
builds its backbone as TerraTorch does, BACKBONE_REGISTRY.build("timm_<arch>", features_only=True,
pretrained=False, ...), and calls it on one image batch."""

from __future__ import annotations

from typing import Any

import torch
from refkit import BACKBONE_REGISTRY, Case, fwd_single


def build(arch: str, **kwargs: Any) -> tuple[dict[str, Any], torch.nn.Module]:
    """The entry's full arguments (features_only=True, pretrained=False, then `kwargs`) and the
    TerraTorch-built backbone."""
    args = {"features_only": True, "pretrained": False, **kwargs}
    return args, BACKBONE_REGISTRY.build(f"timm_{arch}", **args)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """`k=v, ...` as the Python call would spell them."""
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def backbone_case(
    arch: str,
    args: dict[str, Any],
    model: torch.nn.Module,
    input_shape: list[int],
    reference: str,
    **extra_meta: Any,
) -> Case:
    """A backbone case of `timm_<arch>` called on one input of `input_shape`; meta records the
    wrapper's out_channels plus `extra_meta`."""
    return Case(
        registry="backbone",
        name=f"timm_{arch}",
        channels=None,
        args=args,
        reference=reference,
        model=model,
        input_shapes=[input_shape],
        forward=fwd_single,
        extra_meta={"out_channels": list(model.out_channels), **extra_meta},
    )
