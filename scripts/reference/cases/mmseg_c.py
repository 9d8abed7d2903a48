"""Cases of the mmseg decode heads, second wave: SegmenterMaskTransformerHead, ..."""

from __future__ import annotations

from typing import Callable

from cases._mmseg import head_case
from refkit import Case

SEGMENTER = {"num_classes": 3, "channels": 8, "num_layers": 2, "num_heads": 2, "embed_dims": 8, "mlp_ratio": 2}

CASES: dict[str, Callable[[], Case]] = {
    "mmseg_SegmenterMaskTransformerHead": head_case(
        "SegmenterMaskTransformerHead",
        [16],
        SEGMENTER,
        [[2, 16, 4, 5]],
        "Two pre-norm ViT layers over 20 patch tokens + 3 class tokens; masks [B, 3, 4, 5].",
    ),
    "mmseg_SegmenterMaskTransformerHead_relu_3fcs_no_bias": head_case(
        "SegmenterMaskTransformerHead",
        [8],
        {
            **SEGMENTER,
            "num_classes": 4,
            "embed_dims": 12,
            "num_heads": 3,
            "num_layers": 1,
            "num_fcs": 3,
            "qkv_bias": False,
            "act_cfg": {"type": "ReLU"},
            "norm_cfg": {"type": "LN", "eps": 1e-6},
            "in_index": 0,
        },
        [[1, 8, 3, 3], [1, 16, 2, 2]],
        "in_index 0 of two maps (one channel-list entry); 3-layer ReLU FFN, no qkv/out_proj bias, LN eps 1e-6.",
    ),
}


def _fwd_train(model, inputs):
    """forward in training mode (BN on batch statistics; dropout_ratio 0 keeps it deterministic)"""
    model.train()
    try:
        out = model(list(inputs))
    finally:
        model.eval()
    return list(out)


def _fwd_tensor(model, inputs):
    """eval forward on one tensor: PIDHead/DDRHead's inference path takes the map itself"""
    return [model(inputs[0])]


PID = {"num_classes": 3, "channels": 8, "dropout_ratio": 0.0}
CASES.update(
    {
        "mmseg_PIDHead": head_case(
            "PIDHead",
            [16],
            PID,
            [[2, 16, 6, 5]],
            "Eval: the integral branch on one map (called with the tensor itself).",
            forward=_fwd_tensor,
        ),
        "mmseg_PIDHead_train": head_case(
            "PIDHead",
            [16],
            {**PID, "norm_cfg": {"type": "GN", "num_groups": 2}, "act_cfg": {"type": "LeakyReLU"}},
            [[2, 8, 8, 8], [2, 16, 4, 4], [2, 8, 8, 8]],
            "Training mode on (p, i, d) -> (p, i, d) logits; GN, LeakyReLU (d_head keeps ReLU).",
            forward=_fwd_train,
            extra_meta={"train": True},
        ),
        "mmseg_DDRHead": head_case(
            "DDRHead",
            [16],
            PID,
            [[2, 16, 4, 6]],
            "Eval: head + conv_seg on one map (called with the tensor itself).",
            forward=_fwd_tensor,
        ),
        "mmseg_DDRHead_train": head_case(
            "DDRHead",
            [16],
            {**PID, "out_channels": 1, "num_classes": 2},
            [[2, 8, 8, 8], [2, 16, 4, 4]],
            "Training mode on (c3, c5) -> (c5 logits, c3 aux logits); BN on batch statistics, binary.",
            forward=_fwd_train,
            extra_meta={"train": True},
        ),
    }
)
