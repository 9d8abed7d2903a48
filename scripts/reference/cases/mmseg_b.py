"""Cases of the mmseg decode heads, part B (attention and context heads: DAHead, NLHead, GCHead,
OCRHead, EMAHead, ANNHead, APCHead, DMHead, EncHead, ISAHead, LightHamHead, ...), each built as
TerraTorch's MMSegRegistry builds it: DECODER_REGISTRY.build("mmseg_<Head>", channels, **kwargs)
-> MMsegDecoderWrapper(head) (keys under `decoder.`), called as wrapper(list_of_maps)."""

from __future__ import annotations

from typing import Callable

import torch
from cases._mmseg import head_case
from refkit import Case, fwd_list

_head = head_case

ONE = [[1, 32, 8, 8]]
FOUR = [[1, 8, 32, 32], [1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4]]
BASE = {"num_classes": 3, "channels": 16}

CASES: dict[str, Callable[[], Case]] = {
    # NLHead (FCNHead + NonLocal2d)
    "mmseg_NLHead": _head("NLHead", [32], BASE, ONE),
    "mmseg_NLHead_concatenation_bn": _head(
        "NLHead",
        [32],
        {**BASE, "mode": "concatenation", "norm_cfg": {"type": "BN"}, "reduction": 4, "concat_input": False},
        [[2, 32, 6, 5]],
    ),
    "mmseg_NLHead_gaussian_resize_concat": _head(
        "NLHead",
        [16, 32],
        {**BASE, "mode": "gaussian", "input_transform": "resize_concat", "in_index": [1, 2], "kernel_size": 1},
        [[1, 8, 16, 16], [1, 16, 8, 8], [1, 32, 4, 4]],
    ),
    "mmseg_NLHead_dot_product": _head(
        "NLHead", [32], {**BASE, "mode": "dot_product", "use_scale": False, "dilation": 2, "out_channels": 1, "num_classes": 2}, ONE
    ),
    # GCHead (FCNHead + ContextBlock)
    "mmseg_GCHead": _head("GCHead", [32], BASE, ONE),
    "mmseg_GCHead_avg_mul_add_gn": _head(
        "GCHead",
        [32],
        {**BASE, "pooling_type": "avg", "fusion_types": ["channel_mul", "channel_add"], "ratio": 0.5,
         "norm_cfg": {"type": "GN", "num_groups": 4}, "act_cfg": {"type": "LeakyReLU", "negative_slope": 0.1}},
        ONE,
    ),
    # DAHead: forward returns (pam_cam, pam, cam) in eval too
    "mmseg_DAHead": _head("DAHead", [32], {**BASE, "pam_channels": 8}, ONE, "Returns 3 tensors (pam_cam, pam, cam)."),
    "mmseg_DAHead_bn_binary": _head(
        "DAHead",
        [32],
        {**BASE, "pam_channels": 4, "num_classes": 2, "out_channels": 1, "norm_cfg": {"type": "BN"}},
        [[2, 32, 5, 6]],
        "Returns 3 tensors; conv_seg has out_channels=1, pam/cam_conv_seg have num_classes=2.",
    ),
    # EMAHead: the random bases buffer is in the state_dict (synthetic values here)
    "mmseg_EMAHead": _head("EMAHead", [32], {**BASE, "ema_channels": 16, "num_bases": 8, "num_stages": 3}, ONE),
    "mmseg_EMAHead_bn_no_concat": _head(
        "EMAHead",
        [32],
        {**BASE, "ema_channels": 8, "num_bases": 4, "num_stages": 1, "concat_input": False, "norm_cfg": {"type": "BN"}},
        [[2, 32, 6, 6]],
    ),
    # APCHead
    "mmseg_APCHead": _head("APCHead", [32], BASE, ONE),
    "mmseg_APCHead_bn_no_fusion": _head(
        "APCHead",
        [16, 32],
        {**BASE, "pool_scales": [2, 4], "fusion": False, "norm_cfg": {"type": "BN"},
         "input_transform": "resize_concat", "in_index": [0, 1]},
        [[1, 16, 8, 8], [1, 32, 4, 4]],
    ),
    # DMHead
    "mmseg_DMHead": _head("DMHead", [32], BASE, ONE),
    "mmseg_DMHead_even_filters_bn_fusion": _head(
        "DMHead",
        [32],
        {**BASE, "filter_sizes": [2, 4], "fusion": True, "norm_cfg": {"type": "BN"}},
        [[2, 32, 7, 6]],
    ),
    # ISAHead
    "mmseg_ISAHead": _head("ISAHead", [32], {**BASE, "isa_channels": 8, "down_factor": [3, 3]}, ONE, "8x8 maps padded to 9x9."),
    "mmseg_ISAHead_bn_uneven": _head(
        "ISAHead",
        [32],
        {**BASE, "isa_channels": 4, "down_factor": [4, 2], "norm_cfg": {"type": "BN"}},
        [[2, 32, 6, 5]],
    ),
    # OCRHead: cascade head; the last input is prev_output
    "mmseg_OCRHead": _head(
        "OCRHead",
        [32],
        {**BASE, "ocr_channels": 8},
        [[1, 32, 8, 8], [1, 3, 8, 8]],
        "Cascade head: TerraTorch's wrapper forward(x) cannot pass prev_output, so the reference is "
        "wrapper.decoder(inputs[:-1], prev_output=inputs[-1]) (terrahost's convention: the last input tensor is "
        "prev_output).",
        forward=lambda m, ins: [m.decoder(list(ins[:-1]), ins[-1])],
    ),
    "mmseg_OCRHead_bn_scale": _head(
        "OCRHead",
        [32],
        {**BASE, "ocr_channels": 4, "scale": 0.5, "norm_cfg": {"type": "BN"}, "in_index": 1},
        [[2, 16, 8, 8], [2, 32, 4, 4], [2, 5, 4, 4]],
        "Cascade head, last input is prev_output (here 5 classes from a previous head).",
        forward=lambda m, ins: [m.decoder(list(ins[:-1]), ins[-1])],
    ),
    # ANNHead: multiple_select over [low, high]
    "mmseg_ANNHead": _head("ANNHead", [32, 64], {**BASE, "project_channels": 8, "in_index": [2, 3]}, FOUR),
    "mmseg_ANNHead_bn_two_stages": _head(
        "ANNHead",
        [16, 32],
        {**BASE, "project_channels": 4, "in_index": [0, 1], "query_scales": [1, 1], "key_pool_scales": [1, 2],
         "norm_cfg": {"type": "BN"}},
        [[2, 16, 8, 8], [2, 32, 4, 4]],
    ),
    # EncHead: (seg_logits, se_logits) with use_se_loss
    "mmseg_EncHead": _head(
        "EncHead", [16, 32, 64], {**BASE, "num_codes": 8, "in_index": [1, 2, 3]}, FOUR, "Returns (seg_logits, se_logits)."
    ),
    "mmseg_EncHead_lateral_gn_no_se": _head(
        "EncHead",
        [8, 16, 32],
        {**BASE, "num_codes": 4, "in_index": [0, 1, 2], "add_lateral": True, "use_se_loss": False,
         "norm_cfg": {"type": "GN", "num_groups": 4}, "align_corners": True},
        [[1, 8, 16, 16], [1, 16, 8, 8], [1, 32, 4, 4]],
    ),
    "mmseg_EncHead_lateral_bn": _head(
        "EncHead",
        [8, 16],
        {**BASE, "num_codes": 4, "in_index": [0, 1], "add_lateral": True, "norm_cfg": {"type": "BN"}},
        [[2, 8, 8, 8], [2, 16, 4, 4]],
    ),
    # LightHamHead: rand_init=False keeps the NMF bases in a buffer (mmseg registers it at the first forward)
    "mmseg_LightHamHead": _head(
        "LightHamHead",
        [16, 32, 64],
        {**BASE, "in_index": [1, 2, 3], "ham_channels": 16, "ham_kwargs": {"MD_R": 2, "rand_init": False, "eval_steps": 1}},
        FOUR,
        "rand_init=False: one forward before the synthetic weights registers hamburger.ham.bases [1, 16, 2]. "
        "One eval step and rank 2: the synthetic bases have negative entries, which make NMF's multiplicative "
        "updates ill-conditioned (float32 vs float64 differ by 0.17 after 7 steps with rank 4, 1e-5 here).",
        setup=lambda m: _first_forward(m, [[1, 8, 4, 4], [1, 16, 4, 4], [1, 32, 2, 2], [1, 64, 2, 2]]),
    ),
    "mmseg_LightHamHead_rand_init_seeded": _head(
        "LightHamHead",
        [16, 32],
        {**BASE, "in_index": [0, 1], "ham_channels": 16, "ham_kwargs": {"MD_S": 2, "MD_R": 3, "eval_steps": 3},
         "norm_cfg": {"type": "GN", "num_groups": 4}},
        [[2, 16, 8, 8], [2, 32, 4, 4]],
        "rand_init=True (default): the bases come from torch.rand at each forward; the reference forward runs "
        "torch.manual_seed(0) first, so the Rust test seeds libtorch with 0 too.",
        forward=lambda m, ins: (torch.manual_seed(0), fwd_list(m, ins))[1],
        # the output depends on libtorch's generator state: the plugin's own test seeds it
        extra_meta={"parity_test": "custom"},
    ),
    # DNLHead (FCNHead + DisentangledNonLocal2d)
    "mmseg_DNLHead": _head("DNLHead", [32], BASE, ONE),
    "mmseg_DNLHead_gaussian_bn": _head(
        "DNLHead", [32], {**BASE, "mode": "gaussian", "norm_cfg": {"type": "BN"}}, [[2, 32, 5, 6]],
        "gaussian mode centres the block's input in place (theta/phi are views of it).",
    ),
    "mmseg_DNLHead_concatenation": _head(
        "DNLHead", [32], {**BASE, "mode": "concatenation", "reduction": 4, "temperature": 0.2}, ONE
    ),
    "mmseg_DNLHead_dot_product": _head("DNLHead", [32], {**BASE, "mode": "dot_product", "use_scale": False}, ONE),
}


def _first_forward(model, shapes) -> None:
    with torch.no_grad():
        model([torch.zeros(s) for s in shapes])
