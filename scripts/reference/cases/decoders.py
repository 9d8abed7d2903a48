"""Cases of TerraTorch's own decoders (terratorch/models/decoders/*.py) beyond FCNDecoder and
IdentityDecoder: UNetDecoder, UperNetDecoder, LinearDecoder, MLPDecoder, the ASPP family and
SatMAEHead. Every model is built through DECODER_REGISTRY exactly as terrahost builds it: the
channel list is the first positional argument, the rest are keyword arguments."""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from refkit import DECODER_REGISTRY, Case, fwd_list, fwd_single

# Four maps of a small encoder: strides 1x..8x of a 16 px image.
CHANNELS = [16, 32, 64, 128]
SHAPES = [[1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]]


def _decoder(
    name: str, channel_list, shapes, reference: str, /, *, forward=fwd_list, meta_channels=None, **kwargs
) -> Case:
    model = DECODER_REGISTRY.build(name, channel_list, **kwargs)
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    out_channels = getattr(model, "out_channels", None)
    return Case(
        registry="decoder",
        name=name,
        channels=meta_channels if meta_channels is not None else channel_list,
        args=kwargs,
        reference=f'DECODER_REGISTRY.build("{name}", {channel_list!r}, {kw}): {reference}',
        model=model,
        input_shapes=shapes,
        forward=forward,
        extra_meta={
            "out_channels": out_channels if isinstance(out_channels, (int, list, type(None))) else None,
            "includes_head": bool(getattr(type(model), "includes_head", False)),
        },
    )


# ---------------------------------------------------------------------------
# UNetDecoder
# ---------------------------------------------------------------------------
def case_UNetDecoder() -> Case:
    return _decoder(
        "UNetDecoder",
        CHANNELS,
        SHAPES,
        "smp UnetDecoder(encoder_channels=[embed_dim[0], *embed_dim], decoder_channels=channels, "
        "n_blocks=len(channels), use_norm='batchnorm', add_center_block=False) under `decoder.`; forward "
        "duplicates x[0] so every map is used; output at the first map's size with channels[-1] channels.",
        channels=[32, 16, 8, 4],
    )


def case_UNetDecoder_scse_identity() -> Case:
    return _decoder(
        "UNetDecoder",
        CHANNELS,
        SHAPES,
        "scSE attention in every block and no normalisation (convs then have a bias).",
        channels=[32, 32, 16, 16],  # scSE squeezes C // 16: keep every width >= 16
        use_batchnorm=False,
        attention_type="scse",
    )


# ---------------------------------------------------------------------------
# UperNetDecoder
# ---------------------------------------------------------------------------
def case_UperNetDecoder() -> Case:
    return _decoder(
        "UperNetDecoder",
        CHANNELS,
        SHAPES,
        "all defaults: pool_scales=(1, 2, 3, 6), channels=256, align_corners=True, scale_modules=False. "
        "PPM on the last map, lateral 1x1 + FPN 3x3 ConvModules (conv without bias, BN, ReLU), bilinear "
        "top-down path, fpn_bottleneck at the first map's size.",
    )


def _upernet_scale_modules_from_parts(channel_list, **kwargs) -> torch.nn.Module:
    """TerraTorch 1.2.11's `UperNetDecoder(scale_modules=True)` rebuilt from 1.2.12+'s parts: 1.2.12 removed
    the argument, and its LearnedInterpolateToPyramidal neck holds the same fpn1..fpn4 layers. They sit at
    the top level here, before the decoder's own modules, so the keys and their order are 1.2.11's."""
    from terratorch.registry import NECK_REGISTRY

    neck = NECK_REGISTRY.build("LearnedInterpolateToPyramidal", channel_list)
    decoder = DECODER_REGISTRY.build("UperNetDecoder", neck.process_channel_list(channel_list), **kwargs)

    class UperNetDecoderScaleModules(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name in ["fpn1", "fpn2", "fpn3", "fpn4"]:
                self.add_module(name, getattr(neck, name))
            for name, module in decoder.named_children():
                self.add_module(name, module)
            self.out_channels = decoder.out_channels

        def forward(self, inputs):
            return decoder(neck(inputs))

    return UperNetDecoderScaleModules()


def case_UperNetDecoder_scale_modules() -> Case:
    kwargs = {"pool_scales": [1, 2], "channels": 16, "align_corners": False}
    reference = (
        "ViT-style equal maps through the deprecated scale_modules (fpn1: x4 with C/4, fpn2: x2 with C/2, "
        "fpn3: identity, fpn4: maxpool /2), small channels and pool scales, align_corners=False."
    )
    if "scale_modules" in inspect.signature(DECODER_REGISTRY["terratorch"]._registry["UperNetDecoder"]).parameters:
        return _decoder("UperNetDecoder", [32, 32, 32, 32], [[1, 32, 8, 8]] * 4, reference, scale_modules=True, **kwargs)
    case = _decoder("UperNetDecoder", [32, 32, 32, 32], [[1, 32, 8, 8]] * 4, reference, **kwargs)
    case.model = _upernet_scale_modules_from_parts([32, 32, 32, 32], **kwargs)
    case.args = {**kwargs, "scale_modules": True}
    case.reference = (
        "TerraTorch 1.2.11's UperNetDecoder(scale_modules=True), which 1.2.12 removed: built from 1.2.12+'s "
        "LearnedInterpolateToPyramidal neck (the same fpn1..fpn4) and UperNetDecoder, with 1.2.11's keys. "
        + reference
    )
    return case


# ---------------------------------------------------------------------------
# LinearDecoder / MLPDecoder
# ---------------------------------------------------------------------------
def case_LinearDecoder() -> Case:
    return _decoder(
        "LinearDecoder",
        CHANNELS,
        SHAPES,
        "ConvTranspose2d(embed_dim[in_index], num_classes, k=s=upsampling_size) on x[in_index]; "
        "includes_head=True, out_channels=num_classes.",
        num_classes=3,
        upsampling_size=4,
        in_index=-2,
    )


def case_MLPDecoder() -> Case:
    return _decoder(
        "MLPDecoder",
        [16, 16, 16],
        [[1, 16, 4, 4]] * 3,
        "cat(x, dim=1) -> channels last -> Linear(embed_dim[out_index] * n, embed_dim[out_index]) -> ReLU "
        "-> channels first.",
    )


def case_MLPDecoder_flat_gelu() -> Case:
    return _decoder(
        "MLPDecoder",
        [8, 8],
        [[2, 8], [2, 8]],
        "2-D inputs [B, C] go straight through Linear -> GELU.",
        activation="GELU",
        out_index=0,
    )


# ---------------------------------------------------------------------------
# ASPP family. ASPPModule and ASPPHead take `dilations` as their first positional parameter, so the
# channel list given to the registry is their dilation list. The two task heads take the (unused)
# channel list first and `dilations` as a keyword.
# ---------------------------------------------------------------------------
def case_ASPPModule() -> Case:
    return _decoder(
        "ASPPModule",
        [1, 2, 3],
        [[1, 16, 8, 8]],
        "dilations=[1, 2, 3]: ConvModule(1x1) for dilation 1, 3x3 with padding=dilation otherwise; "
        "forward(tensor) -> one map per dilation. conv_cfg/norm_cfg/act_cfg are required and unused.",
        forward=fwd_single,
        in_channels=16,
        channels=8,
        conv_cfg=None,
        norm_cfg=None,
        act_cfg=None,
    )


def case_ASPPHead() -> Case:
    return _decoder(
        "ASPPHead",
        [1, 2, 4],
        SHAPES,
        "dilations=[1, 2, 4] on x[in_index]: image pool (avgpool 1 + ConvModule 1x1, resized bilinear), ASPP "
        "branches, bottleneck ConvModule 3x3 -> `channels` maps (no classifier).",
        in_channels=64,
        channels=8,
        in_index=2,
    )


def case_ASPPSegmentationHead() -> Case:
    return _decoder(
        "ASPPSegmentationHead",
        CHANNELS,
        SHAPES,
        "channel_list unused; default dilations (1, 6, 12, 18) on x[-1], then Dropout2d (eval: no-op) and "
        "conv_seg 1x1 -> num_classes.",
        in_channels=128,
        channels=8,
        num_classes=3,
    )


def case_ASPPSegmentationHead_resize_concat() -> Case:
    return _decoder(
        "ASPPSegmentationHead",
        CHANNELS,
        SHAPES,
        "input_transform='resize_concat': maps in_index resized (bilinear, align_corners=True) to the first "
        "selected map's size and concatenated.",
        dilations=[1, 2],
        in_channels=48,
        channels=8,
        num_classes=2,
        align_corners=True,
        input_transform="resize_concat",
        in_index=[0, 1],
    )


def case_ASPPRegressionHead() -> Case:
    return _decoder(
        "ASPPRegressionHead",
        CHANNELS,
        SHAPES,
        "as ASPPSegmentationHead with conv_reg 1x1 -> out_channels.",
        dilations=[1, 3],
        in_channels=64,
        channels=8,
        out_channels=2,
        in_index=-2,
    )


# ---------------------------------------------------------------------------
# SatMAEHead: forward(x, ids_restore). The fixture stores float noise as input.1; the case (and the
# Rust test) turn it into ids_restore = argsort(noise, dim=1) before calling the decoder.
# ---------------------------------------------------------------------------
def _fwd_satmae(model, inputs):
    ids_restore = torch.argsort(inputs[1], dim=1)
    return [model(inputs[0], ids_restore)]


def case_SatMAEHead() -> Case:
    # A list embed_dim fails upstream (nn.Linear(list, ...)); the registry gets the int token width,
    # which terrahost receives as the one-element channel list [32].
    case = _decoder(
        "SatMAEHead",
        32,
        [[2, 5, 32], [2, 16]],
        "decoder_embed Linear(32, out_channels), mask tokens appended and unshuffled with ids_restore "
        "(= argsort(input.1, dim=1)), + decoder_pos_embed, `depth` timm Blocks, LayerNorm, decoder_pred "
        "Linear(out_channels, patch_size**2 * in_chans), cls token dropped, unpatchified to an image.",
        forward=_fwd_satmae,
        meta_channels=[32],
        out_channels=16,
        num_heads=2,
        mlp_ratio=2.0,
        patch_size=2,
        num_patches=16,
        depth=2,
        in_chans=3,
    )
    # the inputs are not the module's inputs (ids_restore is derived): the plugin's own test checks it
    case.extra_meta["parity_test"] = "custom"
    return case


CASES: dict[str, Callable[[], Case]] = {
    "terratorch_UNetDecoder": case_UNetDecoder,
    "terratorch_UNetDecoder_scse_identity": case_UNetDecoder_scse_identity,
    "terratorch_UperNetDecoder": case_UperNetDecoder,
    "terratorch_UperNetDecoder_scale_modules": case_UperNetDecoder_scale_modules,
    "terratorch_LinearDecoder": case_LinearDecoder,
    "terratorch_MLPDecoder": case_MLPDecoder,
    "terratorch_MLPDecoder_flat_gelu": case_MLPDecoder_flat_gelu,
    "terratorch_ASPPModule": case_ASPPModule,
    "terratorch_ASPPHead": case_ASPPHead,
    "terratorch_ASPPSegmentationHead": case_ASPPSegmentationHead,
    "terratorch_ASPPSegmentationHead_resize_concat": case_ASPPSegmentationHead_resize_concat,
    "terratorch_ASPPRegressionHead": case_ASPPRegressionHead,
    "terratorch_SatMAEHead": case_SatMAEHead,
}
