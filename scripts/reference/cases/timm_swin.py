"""Cases of the Swin Transformer backbones of the timm plugin: timm's own
`swin_{tiny,small,base}_patch4_window7_224` and TerraTorch's `prithvi_swin_{B,L}` (registered
into timm by terratorch/models/backbones/prithvi_swin.py), each built through
BACKBONE_REGISTRY.build("timm_<name>", features_only=True, pretrained=False, ...) with tiny
constructor overrides. Outputs are the wrapper's raw forward: channels-last [B, H, W, C].

Each case also records the parameter count of the real (unmodified) preset, printed from the
reference, in meta `preset_n_params`."""

from __future__ import annotations

from typing import Callable

from cases._timm import backbone_case, build, kwargs_repr
from refkit import Case, n_params

# Parameter counts (parameters only, no buffers) of the full presets with features_only=True.
_PRESET_PARAMS: dict[str, int] = {}


def _preset_params(name: str) -> int:
    if name not in _PRESET_PARAMS:
        _PRESET_PARAMS[name] = n_params(build(name)[1])
    return _PRESET_PARAMS[name]


def _case(name: str, args: dict, input_shape: list[int], note: str) -> Case:
    full, model = build(name, **args)
    kw = kwargs_repr(full)
    reference = (
        f'BACKBONE_REGISTRY.build("timm_{name}", {kw}) == TimmBackboneWrapper(timm.create_model("{name}", '
        f"{kw})); forward(x) -> list of channels-last [B, H, W, C] stage outputs. {note}"
    )
    return backbone_case(
        name,
        full,
        model,
        input_shape,
        reference,
        preset_n_params=_preset_params(name),
        state_dict_keys_sample=list(model.state_dict().keys())[:12],
    )


def case_swin_tiny() -> Case:
    # img_size 64: stage maps 16, 8, 4, 2; window 7 pads stages 0/1 to 21/14 with shifted masks, and
    # is clamped (no shift) to 4 and 2 in stages 2/3.
    return _case(
        "swin_tiny_patch4_window7_224",
        {"img_size": 64, "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]},
        [1, 3, 64, 64],
        "Keys layers_0..layers_3 (FeatureListNet flattening); relative_position_index / attn_mask are "
        "non-persistent (not in the state_dict).",
    )


def case_swin_small() -> Case:
    # Non-square image and window, head_dim != dim / heads, 4 channels, a subset of stages.
    return _case(
        "swin_small_patch4_window7_224",
        {
            "img_size": [56, 40],
            "window_size": [4, 3],
            "embed_dim": 8,
            "depths": [1, 2, 2, 1],
            "num_heads": [1, 2, 2, 2],
            "head_dim": 6,
            "in_chans": 4,
            "out_indices": [1, 3],
        },
        [1, 4, 56, 40],
        "Stage maps 14x10, 7x5, 4x3, 2x2 with (4, 3) windows; head_dim=6.",
    )


def case_swin_base() -> Case:
    # dynamic_img_size: windows fixed by img_size=64, any input that is a multiple of 4 (40x52).
    return _case(
        "swin_base_patch4_window7_224",
        {
            "img_size": 64,
            "dynamic_img_size": True,
            "embed_dim": 16,
            "depths": [1, 2, 1, 2],
            "num_heads": [2, 2, 4, 4],
            "mlp_ratio": 2.0,
            "out_indices": [0, 2, 3],
        },
        [2, 3, 40, 52],
        "dynamic_img_size=True: masks computed from the padded input of each forward.",
    )


def case_swin_tiny_always_partition() -> Case:
    c = _case(
        "swin_tiny_patch4_window7_224",
        {
            "img_size": 32,
            "window_size": 3,
            "always_partition": True,
            "embed_dim": 8,
            "depths": [2, 2, 2, 2],
            "num_heads": [1, 1, 2, 2],
            "out_indices": 2,
        },
        [1, 3, 32, 32],
        "always_partition=True: windows 3 with shift 1 even on the 2x2 and 1x1 maps (padded).",
    )
    return c


def case_prithvi_swin_B() -> Case:
    # 50x37 input: replicate padding to the patch size, zero padding to whole windows and odd merges.
    return _case(
        "prithvi_swin_B",
        {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4], "window_size": 4},
        [1, 6, 50, 37],
        "MMSegSwinTransformer: keys stages_0..3 with mmseg names (attn.w_msa., ffn.layers.0.0.); "
        "relative_position_index IS a persistent buffer (synthetic value: zeros). Outputs are the stage "
        "norms; prepare_features_for_image_model permutes them to NCHW.",
    )


def case_prithvi_swin_L() -> Case:
    return _case(
        "prithvi_swin_L",
        {
            "bands": ["RED", "GREEN", "BLUE"],
            "embed_dim": 12,
            "depths": [1, 2, 1, 2],
            "num_heads": [1, 2, 3, 3],
            "window_size": 3,
            "mlp_ratio": 2.0,
            "drop_path_rate": 0.2,
            "out_indices": [1, 2, 3],
        },
        [2, 3, 33, 29],
        "bands of length 3 set in_chans=3.",
    )


CASES: dict[str, Callable[[], Case]] = {
    "timm_swin_tiny_patch4_window7_224": case_swin_tiny,
    "timm_swin_small_patch4_window7_224": case_swin_small,
    "timm_swin_base_patch4_window7_224": case_swin_base,
    "timm_swin_tiny_always_partition": case_swin_tiny_always_partition,
    "timm_prithvi_swin_B": case_prithvi_swin_B,
    "timm_prithvi_swin_L": case_prithvi_swin_L,
}
