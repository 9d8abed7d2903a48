"""Cases of smp decoders, part B: DPT, MAnet, Segformer, UPerNet, UnetPlusPlus, and the
`aux_*` arguments of TerraTorch's SMPRegistry (smp's ClassificationHead, which the wrapper
discards).

Every case but DPT is `DECODER_REGISTRY.build("smp_<Name>", channels, **kwargs)`. TerraTorch
1.2.11 cannot build smp_DPT (see `case_smp_DPT`), so the DPT cases wrap smp's DPTDecoder in
TerraTorch's SMPDecoderWrapper by hand, which is what `SMPRegistry.build` would return.
"""

from __future__ import annotations

from typing import Callable

from refkit import Case  # first: installs the mmcv.ops stand-in

from cases._smp import build_error, smp_case  # noqa: E402

import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402
from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder  # noqa: E402
from terratorch.registry.smp_registry import SMPDecoderWrapper  # noqa: E402

TINY = [16, 16, 32, 64, 128]
TINY_SHAPES = [[1, 16, 32, 32], [1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]]


def _smp(name: str, channels: list[int], shapes: list[list[int]], case_note: str = "", **kwargs) -> Case:
    return smp_case(
        name,
        channels,
        shapes,
        "...). forward(list of len(channels) maps) -> the decoder's output. " + case_note,
        default_error_key="smp_default_error",
        **kwargs,
    )


def case_smp_MAnet() -> Case:
    return _smp("MAnet", TINY, TINY_SHAPES, decoder_channels=[16, 16, 8, 8], decoder_pab_channels=4)


def case_smp_MAnet_bilinear() -> Case:
    return _smp(
        "MAnet",
        [4, 8, 16, 32],
        [[1, 4, 16, 16], [1, 8, 8, 8], [1, 16, 4, 4], [1, 32, 2, 2]],
        decoder_channels=[8, 8, 4],
        decoder_pab_channels=2,
        decoder_interpolation="bilinear",
        decoder_use_norm={"type": "instancenorm", "affine": True},
    )


def case_smp_UnetPlusPlus() -> Case:
    return _smp("UnetPlusPlus", TINY, TINY_SHAPES, decoder_channels=[16, 16, 8, 8])


def case_smp_UnetPlusPlus_scse() -> Case:
    return _smp(
        "UnetPlusPlus",
        # every attention width >= 16, so scSE's C // 16 convs are not empty
        [4, 16, 32, 32],
        [[1, 4, 16, 16], [1, 16, 8, 8], [1, 32, 4, 4], [1, 32, 2, 2]],
        decoder_channels=[32, 16, 16],
        decoder_attention_type="scse",
        decoder_use_batchnorm=False,
        decoder_interpolation="bilinear",
    )


def case_smp_Segformer() -> Case:
    return _smp("Segformer", TINY, TINY_SHAPES, decoder_segmentation_channels=8)


def case_smp_UPerNet() -> Case:
    return _smp("UPerNet", TINY, TINY_SHAPES, decoder_channels=8)


def case_smp_UPerNet_identity() -> Case:
    # Non-square maps; PSP's 6x6 pooling on a 3x2 map (adaptive pooling repeats windows).
    return _smp(
        "UPerNet",
        [3, 8, 8, 16, 16],
        [[1, 3, 48, 32], [1, 8, 24, 16], [1, 8, 12, 8], [1, 16, 6, 4], [1, 16, 3, 2]],
        decoder_channels=4,
        decoder_use_norm="identity",
    )


def case_smp_Unet_aux() -> Case:
    # aux_* kwargs: smp builds ClassificationHead(in_channels=128, classes=3, pooling="max",
    # dropout=0.1, activation="sigmoid"), but the wrapper keeps only model.decoder: same keys and
    # the same single output as without them.
    aux = {"aux_classes": 3, "aux_pooling": "max", "aux_dropout": 0.1, "aux_activation": "sigmoid"}
    case = _smp(
        "Unet",
        TINY,
        TINY_SHAPES,
        case_note=(
            "aux_* kwargs are split off by extract_prefix_keys and passed as aux_params={classes: 3, pooling: "
            "'max', dropout: 0.1, activation: 'sigmoid'}; smp builds model.classification_head but the wrapper "
            "keeps only model.decoder, so the state_dict has no classification_head keys and forward returns "
            "the mask features only (no (mask, label) tuple)."
        ),
        decoder_channels=[16, 16, 8, 8],
        **aux,
    )
    with torch.no_grad():
        out = case.model([torch.zeros(s) for s in TINY_SHAPES])
    case.extra_meta["forward_returns"] = type(out).__name__
    case.extra_meta["aux_errors"] = {
        "aux_params dict": build_error("smp_Unet", TINY, decoder_channels=[16, 16, 8, 8], aux_params={"classes": 3}),
        "no aux_classes": build_error("smp_Unet", TINY, decoder_channels=[16, 16, 8, 8], aux_pooling="max"),
        "bad pooling": build_error("smp_Unet", TINY, decoder_channels=[16, 16, 8, 8], aux_classes=3, aux_pooling="mean"),
    }
    return case


# ---------------------------------------------------------------------------
# DPT
# ---------------------------------------------------------------------------
def _dpt_case(name: str, decoder, channels: list[int], args: dict, shapes: list[list[int]], reference: str) -> Case:
    model = SMPDecoderWrapper(decoder, args.get("decoder_fusion_channels", 256))
    n = len(channels)

    def fwd(m, inputs):
        maps, tokens = inputs[:n], inputs[n:]
        if not tokens:
            tokens = [None] * n
        return [m._smp_decoder(list(maps), list(tokens))]

    return Case(
        registry="decoder",
        name="smp_DPT",
        channels=channels,
        args=args,
        reference=reference,
        model=model,
        input_shapes=shapes,
        forward=fwd,
        extra_meta={
            "out_channels": model.out_channels,
            "terratorch_default_error": build_error("smp_DPT", [16] * 5),
            "terratorch_tu_encoder_error": build_error(
                "smp_DPT", [16] * 5, encoder_name="tu-vit_tiny_patch16_224", embed_dim=16, num_heads=2, img_size=64
            ),
        },
    )


def case_smp_DPT() -> Case:
    # What smp.DPT builds on a tiny ViT (timm vit_tiny_patch16_224 with embed_dim=16, 64 px):
    # 4 maps of 16 channels at stride 16 (4x4) and a class token each.
    kwargs = {"decoder_intermediate_channels": [8, 8, 16, 16], "decoder_fusion_channels": 8}
    full = smp.DPT(
        encoder_name="tu-vit_tiny_patch16_224",
        encoder_weights=None,
        in_channels=1,
        classes=1,
        encoder_depth=4,
        embed_dim=16,
        num_heads=2,
        img_size=64,
        **kwargs,
    )
    assert list(full.encoder.out_channels) == [16] * 4 and list(full.encoder.output_strides) == [16] * 4
    assert full.encoder.has_prefix_tokens
    return _dpt_case(
        "smp_DPT",
        full.decoder,
        [16] * 4,
        kwargs,
        [[1, 16, 4, 4]] * 4 + [[1, 1, 16]] * 4,
        reference=(
            "TerraTorch 1.2.11 cannot build smp_DPT: DECODER_REGISTRY.build('smp_DPT', ch) raises ValueError (only "
            "'tu-' timm encoders), and with encoder_name='tu-...' it raises TypeError at "
            "model.segmentation_head[0] (DPTSegmentationHead is not a Sequential); its wrapper's forward(x) would "
            "also miss DPTDecoder's prefix_tokens argument. Reference: SMPDecoderWrapper(smp.DPT(encoder_name="
            "'tu-vit_tiny_patch16_224', encoder_weights=None, in_channels=1, classes=1, encoder_depth=4, "
            "embed_dim=16, num_heads=2, img_size=64, decoder_intermediate_channels=[8, 8, 16, 16], "
            "decoder_fusion_channels=8).decoder, 8); forward = _smp_decoder(maps, prefix_tokens) with the 4 maps "
            "[1, 16, 4, 4] then the 4 class tokens [1, 1, 16] as inputs (terrahost takes them as one list)."
        ),
    )


def case_smp_DPT_add() -> Case:
    args = {
        "decoder_readout": "add",
        "decoder_intermediate_channels": [4, 8, 8],
        "decoder_fusion_channels": 4,
        "encoder_output_strides": [8, 8, 8],
    }
    dec = DPTDecoder(
        encoder_out_channels=[8, 8, 8],
        encoder_output_strides=[8, 8, 8],
        encoder_has_prefix_tokens=True,
        readout="add",
        intermediate_channels=[4, 8, 8],
        fusion_channels=4,
    )
    return _dpt_case(
        "smp_DPT_add",
        dec,
        [8, 8, 8],
        args,
        [[1, 8, 4, 6]] * 3 + [[1, 2, 8]] * 3,
        reference=(
            "SMPDecoderWrapper(DPTDecoder(encoder_out_channels=[8, 8, 8], encoder_output_strides=[8, 8, 8], "
            "encoder_has_prefix_tokens=True, readout='add', intermediate_channels=[4, 8, 8], fusion_channels=4), 4): "
            "upsample factors 2 (ConvTranspose), 1 (Identity), 0.5 (strided conv); two prefix tokens per map, "
            "averaged. forward = _smp_decoder(maps, prefix_tokens)."
        ),
    )


def case_smp_DPT_noprefix() -> Case:
    args = {
        "decoder_intermediate_channels": [4, 4],
        "decoder_fusion_channels": 4,
        "encoder_output_strides": [4, 8],
        "encoder_has_prefix_tokens": False,
    }
    dec = DPTDecoder(
        encoder_out_channels=[6, 6],
        encoder_output_strides=[4, 8],
        encoder_has_prefix_tokens=False,
        readout="cat",
        intermediate_channels=[4, 4],
        fusion_channels=4,
    )
    return _dpt_case(
        "smp_DPT_noprefix",
        dec,
        [6, 6],
        args,
        [[1, 6, 8, 8], [1, 6, 4, 4]],
        reference=(
            "SMPDecoderWrapper(DPTDecoder(encoder_out_channels=[6, 6], encoder_output_strides=[4, 8], "
            "encoder_has_prefix_tokens=False, readout='cat', intermediate_channels=[4, 4], fusion_channels=4), 4): "
            "'cat' without prefix tokens is Linear(C, C) + GELU; factors 1 and 1 (no resampling). "
            "forward = _smp_decoder(maps, [None, None])."
        ),
    )


CASES: dict[str, Callable[[], Case]] = {
    "smp_DPT": case_smp_DPT,
    "smp_DPT_add": case_smp_DPT_add,
    "smp_DPT_noprefix": case_smp_DPT_noprefix,
    "smp_MAnet": case_smp_MAnet,
    "smp_MAnet_bilinear": case_smp_MAnet_bilinear,
    "smp_Segformer": case_smp_Segformer,
    "smp_UPerNet": case_smp_UPerNet,
    "smp_UPerNet_identity": case_smp_UPerNet_identity,
    "smp_UnetPlusPlus": case_smp_UnetPlusPlus,
    "smp_UnetPlusPlus_scse": case_smp_UnetPlusPlus_scse,
    "smp_Unet_aux": case_smp_Unet_aux,
}
