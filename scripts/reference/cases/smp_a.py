"""Cases of the smp decoders, part A: DeepLabV3, DeepLabV3Plus, FPN, Linknet, PSPNet and PAN,
each built through TerraTorch's SMPRegistry (DECODER_REGISTRY.build("smp_<Name>", channels, **kwargs))
on tiny channel lists."""

from __future__ import annotations

from typing import Callable

from cases._smp import smp_case, square_shapes
from refkit import Case


def _smp(name: str, channels: list[int], sizes: list[int], note: str = "", **kwargs) -> Case:
    return smp_case(
        name,
        channels,
        square_shapes(channels, sizes),
        "{kw}, aux_params=None); forward(list of len(channels) maps). " + note,
        **kwargs,
    )


STD = [16, 16, 32, 64, 128]


def case_smp_DeepLabV3() -> Case:
    return _smp(
        "DeepLabV3",
        STD,
        [32, 16, 8, 4, 4],
        "Output stride 8 (the last two maps share a size); ASPP on the deepest map only.",
        decoder_channels=16,
        decoder_atrous_rates=[1, 2, 3],
    )


def case_smp_DeepLabV3_separable() -> Case:
    return _smp(
        "DeepLabV3",
        [8, 16, 32],
        [16, 8, 8],
        "smp's default rates (12, 24, 36) with depthwise-separable ASPP branches.",
        decoder_channels=8,
        decoder_aspp_separable=True,
        decoder_aspp_dropout=0.1,
        encoder_output_stride=16,
    )


def case_smp_DeepLabV3Plus() -> Case:
    return _smp(
        "DeepLabV3Plus",
        STD,
        [32, 16, 8, 4, 2],
        "Output stride 16 and depth 4: the ASPP output is upsampled x4 to meet features[2].",
        decoder_channels=16,
        decoder_atrous_rates=[1, 2, 3],
    )


def case_smp_DeepLabV3Plus_os8() -> Case:
    return _smp(
        "DeepLabV3Plus",
        STD,
        [32, 16, 8, 4, 4],
        "Output stride 8: the ASPP output is upsampled x2; plain (not separable) ASPP branches.",
        decoder_channels=8,
        decoder_aspp_separable=False,
        encoder_output_stride=8,
    )


def case_smp_DeepLabV3Plus_depth3() -> Case:
    return _smp(
        "DeepLabV3Plus",
        [8, 8, 16, 32],
        [16, 8, 4, 2],
        "Depth 3: the ASPP output is upsampled x2 even at output stride 16.",
        decoder_channels=8,
        decoder_atrous_rates=[1, 1, 2],
    )


def case_smp_FPN() -> Case:
    return _smp(
        "FPN",
        STD,
        [32, 16, 8, 4, 2],
        "Reads the last four maps; output at features[1]'s size.",
        decoder_pyramid_channels=16,
        decoder_segmentation_channels=32,
    )


def case_smp_FPN_cat_bilinear() -> Case:
    return _smp(
        "FPN",
        [4, 16, 16, 32, 32],
        [4, 16, 8, 4, 2],
        "Concatenating merge (4 x 32 output channels) and bilinear top-down upsampling; the first map is "
        "never read, so it is kept tiny.",
        decoder_pyramid_channels=8,
        decoder_segmentation_channels=32,
        decoder_merge_policy="cat",
        decoder_interpolation="bilinear",
        decoder_dropout=0.5,
    )


def case_smp_Linknet() -> Case:
    return _smp("Linknet", STD, [16, 8, 4, 2, 1], "Four blocks; output 32 channels at features[0]'s size.")


def case_smp_Linknet_identity() -> Case:
    return _smp(
        "Linknet",
        [8, 16, 32],
        [8, 4, 2],
        "Deprecated decoder_use_batchnorm=False: no norms, convolutions with bias.",
        decoder_use_batchnorm=False,
    )


def case_smp_PSPNet() -> Case:
    return _smp(
        "PSPNet",
        [8, 16, 32],
        [24, 12, 6],
        "Pyramid pooling of the deepest (6x6) map.",
        psp_out_channels=16,
    )


def case_smp_PSPNet_instancenorm() -> Case:
    return _smp(
        "PSPNet",
        [8, 16, 64],
        [8, 4, 4],
        "InstanceNorm2d(affine) in every Conv2dReLU except the 1x1 branch (identity).",
        psp_out_channels=8,
        decoder_use_norm={"type": "instancenorm", "affine": True},
        psp_dropout=0.0,
    )


def case_smp_PAN() -> Case:
    return _smp(
        "PAN",
        [4, 8, 16, 32, 64],
        [4, 4, 32, 16, 8],
        "Depth 4: FPA on the 8x8 map, then gau2 (features[3]) and gau1 (features[2]); "
        "the first two maps are never read, so they are kept tiny.",
        decoder_channels=8,
    )


def case_smp_PAN_depth5_nearest() -> Case:
    return _smp(
        "PAN",
        [4, 8, 8, 16, 16, 32],
        [2, 2, 32, 16, 16, 8],
        "Depth 5 adds gau3 (features[4]); nearest upsampling in the GAU blocks.",
        decoder_channels=8,
        decoder_interpolation="nearest",
    )


CASES: dict[str, Callable[[], Case]] = {
    "smp_DeepLabV3": case_smp_DeepLabV3,
    "smp_DeepLabV3_separable": case_smp_DeepLabV3_separable,
    "smp_DeepLabV3Plus": case_smp_DeepLabV3Plus,
    "smp_DeepLabV3Plus_os8": case_smp_DeepLabV3Plus_os8,
    "smp_DeepLabV3Plus_depth3": case_smp_DeepLabV3Plus_depth3,
    "smp_FPN": case_smp_FPN,
    "smp_FPN_cat_bilinear": case_smp_FPN_cat_bilinear,
    "smp_Linknet": case_smp_Linknet,
    "smp_Linknet_identity": case_smp_Linknet_identity,
    "smp_PSPNet": case_smp_PSPNet,
    "smp_PSPNet_instancenorm": case_smp_PSPNet_instancenorm,
    "smp_PAN": case_smp_PAN,
    "smp_PAN_depth5_nearest": case_smp_PAN_depth5_nearest,
}
