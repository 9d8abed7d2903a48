"""Cases of the mmseg decode heads, part A: UPerHead, ASPPHead, DepthwiseSeparableASPPHead,
DepthwiseSeparableFCNHead, PSPHead, SegformerHead, FPNHead, SETRUPHead, SETRMLAHead,
LRASPPHead, STDCHead, DPTHead, each built through TerraTorch's DECODER_REGISTRY
(MMSegRegistry -> MMsegDecoderWrapper) with tiny widths."""

from __future__ import annotations

from typing import Callable

from cases._mmseg import head_case
from refkit import Case, fwd_list

BN = {"type": "BN"}
PYRAMID = [8, 16, 32, 64]
PYRAMID_SHAPES = [[1, 8, 32, 32], [1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4]]


def _head(name: str, channels: list[int], args: dict, shapes: list[list[int]], note: str, forward=fwd_list) -> Case:
    return head_case(name, channels, args, shapes, note, forward=forward)()


def case_uper() -> Case:
    args = {"num_classes": 3, "channels": 16, "in_index": [0, 1, 2, 3], "norm_cfg": BN}
    return _head("UPerHead", PYRAMID, args, PYRAMID_SHAPES, "PPM (1,2,3,6) on the 4 px map + FPN, BN.")


def case_psp() -> Case:
    args = {
        "num_classes": 3,
        "channels": 16,
        "pool_scales": [1, 2, 4],
        "input_transform": "resize_concat",
        "in_index": [0, 1],
        "align_corners": True,
    }
    return _head("PSPHead", [8, 16], args, [[1, 8, 8, 8], [1, 16, 4, 4]], "resize_concat of two maps, no norm.")


def case_aspp() -> Case:
    args = {"num_classes": 3, "channels": 16, "dilations": [1, 2, 3], "norm_cfg": BN}
    return _head("ASPPHead", [32], args, [[1, 32, 8, 8]], "image pool + 3 dilated branches, BN.")


def case_sep_aspp() -> Case:
    args = {
        "num_classes": 3,
        "channels": 16,
        "dilations": [1, 2, 3],
        "c1_in_channels": 8,
        "c1_channels": 4,
        "in_index": 3,
        "norm_cfg": BN,
    }
    return _head(
        "DepthwiseSeparableASPPHead",
        [64],
        args,
        PYRAMID_SHAPES,
        "ASPP on inputs[3] (depthwise-separable dilated branches), c1_bottleneck on inputs[0]; output at inputs[0]'s "
        "resolution. BN.",
    )


def case_sep_fcn() -> Case:
    args = {"num_classes": 3, "channels": 16, "norm_cfg": BN, "dw_act_cfg": {"type": "ReLU"}}
    return _head("DepthwiseSeparableFCNHead", [32], args, [[1, 32, 8, 8]], "2 DS convs + DS conv_cat, BN.")


def case_segformer() -> Case:
    args = {"num_classes": 3, "channels": 16, "in_index": [0, 1, 2, 3]}
    return _head("SegformerHead", PYRAMID, args, PYRAMID_SHAPES, "all-MLP head, no norm.")


def case_fpn() -> Case:
    args = {
        "num_classes": 3,
        "channels": 16,
        "in_index": [0, 1, 2, 3],
        "feature_strides": [4, 8, 16, 32],
        "norm_cfg": BN,
    }
    return _head("FPNHead", PYRAMID, args, PYRAMID_SHAPES, "semantic FPN scale heads, BN.")


def case_setr_up() -> Case:
    args = {"num_classes": 3, "channels": 16, "num_convs": 2, "up_scale": 2, "norm_cfg": BN}
    return _head("SETRUPHead", [32], args, [[1, 32, 4, 4]], "LN over channels, 2 x (conv + x2 upsample), BN.")


def case_setr_mla() -> Case:
    args = {"num_classes": 3, "channels": 16, "mla_channels": 4, "up_scale": 2, "in_index": [0, 1, 2, 3]}
    shapes = [[1, 8, 4, 4], [1, 16, 4, 4], [1, 32, 4, 4], [1, 64, 4, 4]]
    return _head("SETRMLAHead", PYRAMID, args, shapes, "4 MLA branches of 4 channels, no norm.")


def case_lraspp() -> Case:
    args = {
        "num_classes": 3,
        "channels": 16,
        # mmseg asserts a tuple (is_tuple_of); JSON writes it as a list
        "branch_channels": (4, 8),
        "input_transform": "multiple_select",
        "in_index": [0, 1, 2],
        "norm_cfg": BN,
    }
    # image_pool is AvgPool2d(49, stride=(16, 20)): the last map must be >= 49 px; 65 x 69 gives a 2 x 2 pool.
    shapes = [[1, 4, 16, 16], [1, 8, 8, 8], [1, 4, 65, 69]]
    return _head("LRASPPHead", [4, 8, 4], args, shapes, "Lite R-ASPP, BN, a 65x69 last map for the 49 px pool.")


def case_stdc() -> Case:
    args = {"num_classes": 3, "channels": 16, "num_convs": 1, "concat_input": False, "norm_cfg": BN}
    return _head(
        "STDCHead",
        [32],
        args,
        [[1, 32, 8, 8]],
        "FCNHead plus the laplacian_kernel buffer and fusion_kernel parameter of its boundary loss.",
    )


def _fwd_pairs(model, inputs):
    """DPTHead reads (feature map, class token) pairs; the flat inputs alternate them."""
    pairs = [[inputs[2 * i], inputs[2 * i + 1]] for i in range(len(inputs) // 2)]
    return fwd_list(model, pairs)


def case_dpt() -> Case:
    args = {
        "num_classes": 3,
        "channels": 8,
        "embed_dims": 16,
        "post_process_channels": [4, 8, 16, 32],
        "readout_type": "project",
        "input_transform": "multiple_select",
        "in_index": [0, 1, 2, 3],
    }
    shapes = [s for _ in range(4) for s in ([1, 16, 4, 4], [1, 16])]
    return _head(
        "DPTHead",
        [16, 16, 16, 16],
        args,
        shapes,
        "4 (map, cls token) pairs given as a flat list map0, cls0, map1, cls1, ...; readout 'project', BN.",
        forward=_fwd_pairs,
    )


# ---------------------------------------------------------------------------
# Variants: other norms/activations, input transforms and head options
# ---------------------------------------------------------------------------
GN4 = {"type": "GN", "num_groups": 4}


def case_uper_gn_leaky() -> Case:
    args = {
        "num_classes": 2,
        "out_channels": 1,
        "channels": 8,
        "in_index": [1, 2, 3],
        "pool_scales": [1, 2],
        "norm_cfg": GN4,
        "act_cfg": {"type": "LeakyReLU", "negative_slope": 0.2},
        "align_corners": True,
    }
    return _head("UPerHead", [16, 32, 64], args, PYRAMID_SHAPES, "maps 1..3 of 4, GN, LeakyReLU, binary output.")


def case_segformer_bicubic() -> Case:
    args = {"num_classes": 3, "channels": 8, "in_index": [3, 1], "interpolate_mode": "bicubic", "norm_cfg": BN}
    return _head("SegformerHead", [64, 16], args, PYRAMID_SHAPES, "maps 3 and 1 (coarse first), bicubic, BN.")


def case_fpn_uneven() -> Case:
    args = {
        "num_classes": 3,
        "channels": 8,
        "in_index": [0, 1, 2, 3],
        "feature_strides": [4, 8, 8, 32],
        "act_cfg": {"type": "GELU"},
        "dropout_ratio": 0.0,
    }
    shapes = [[1, 8, 32, 32], [1, 16, 16, 16], [1, 32, 16, 16], [1, 64, 4, 4]]
    return _head("FPNHead", PYRAMID, args, shapes, "strides 4, 8, 8, 32 (a repeated stride), GELU, no dropout.")


def case_setr_up_concat() -> Case:
    args = {
        "num_classes": 3,
        "channels": 8,
        "input_transform": "resize_concat",
        "in_index": [0, 1],
        "kernel_size": 1,
        "up_scale": 2,
        "norm_layer": {"type": "LN", "eps": 1e-5},
    }
    return _head("SETRUPHead", [8, 16], args, [[1, 8, 8, 8], [1, 16, 4, 4]], "resize_concat, 1x1 conv, LN eps 1e-5.")


def case_sep_aspp_no_c1() -> Case:
    args = {"num_classes": 3, "channels": 8, "dilations": [1, 2], "c1_in_channels": 0, "c1_channels": 0}
    return _head("DepthwiseSeparableASPPHead", [32], args, [[1, 32, 8, 8]], "no low-level branch, no norm.")


def case_sep_fcn_gn() -> Case:
    args = {"num_classes": 3, "channels": 8, "num_convs": 1, "concat_input": False, "kernel_size": 5, "norm_cfg": GN4}
    return _head("DepthwiseSeparableFCNHead", [16], args, [[1, 16, 8, 8]], "one 5x5 DS conv, GN, dw_act_cfg None.")


def case_dpt_add() -> Case:
    args = {
        "num_classes": 2,
        "channels": 8,
        "embed_dims": 8,
        "post_process_channels": [4, 4, 8, 8],
        "readout_type": "add",
        "input_transform": "multiple_select",
        "in_index": [0, 1, 2, 3],
        "norm_cfg": None,
        "act_cfg": {"type": "GELU"},
    }
    shapes = [s for _ in range(4) for s in ([1, 8, 2, 2], [1, 8])]
    return _head(
        "DPTHead",
        [8, 8, 8, 8],
        args,
        shapes,
        "readout 'add', no norm, GELU; pairs given flat as map0, cls0, ...",
        forward=_fwd_pairs,
    )


def case_aspp_resize_concat() -> Case:
    args = {
        "num_classes": 3,
        "channels": 8,
        "dilations": [1, 2],
        "input_transform": "resize_concat",
        "in_index": [2, 3],
        "norm_cfg": {"type": "SyncBN"},
    }
    return _head("ASPPHead", [32, 64], args, PYRAMID_SHAPES, "resize_concat of maps 2 and 3, SyncBN (BN on one device).")


CASES: dict[str, Callable[[], Case]] = {
    "mmseg_UPerHead": case_uper,
    "mmseg_PSPHead": case_psp,
    "mmseg_ASPPHead": case_aspp,
    "mmseg_DepthwiseSeparableASPPHead": case_sep_aspp,
    "mmseg_DepthwiseSeparableFCNHead": case_sep_fcn,
    "mmseg_SegformerHead": case_segformer,
    "mmseg_FPNHead": case_fpn,
    "mmseg_SETRUPHead": case_setr_up,
    "mmseg_SETRMLAHead": case_setr_mla,
    "mmseg_LRASPPHead": case_lraspp,
    "mmseg_STDCHead": case_stdc,
    "mmseg_DPTHead": case_dpt,
    "mmseg_UPerHead_gn_leaky_binary": case_uper_gn_leaky,
    "mmseg_SegformerHead_bicubic_bn": case_segformer_bicubic,
    "mmseg_FPNHead_uneven_strides_gelu": case_fpn_uneven,
    "mmseg_SETRUPHead_resize_concat": case_setr_up_concat,
    "mmseg_DepthwiseSeparableASPPHead_no_c1": case_sep_aspp_no_c1,
    "mmseg_DepthwiseSeparableFCNHead_gn": case_sep_fcn_gn,
    "mmseg_DPTHead_add_gelu": case_dpt_add,
    "mmseg_ASPPHead_resize_concat_syncbn": case_aspp_resize_concat,
}
