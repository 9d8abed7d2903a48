"""Cases of the timm backbones: the Bottleneck ResNets, ViT and ConvNeXt, each built as
TerraTorch builds it: BACKBONE_REGISTRY.build("timm_<name>", features_only=True, pretrained=False, ...)
== TimmBackboneWrapper(timm.create_model(name, features_only=True, ...)).

Preset names are kept; inputs are small, and for the biggest presets `out_indices` stops early
so that timm's feature wrapper prunes the later stages / blocks (fewer synthetic weights).

Run as a script (PYTHONPATH=scripts/reference .venv-ref/bin/python scripts/reference/cases/timm_a.py) it also
writes the pretrained-loading fixture timm_vit_tiny_patch16_224_pretrained (a real timm checkpoint file)."""

from __future__ import annotations

from typing import Callable

from cases._timm import backbone_case, build, kwargs_repr
from refkit import BACKBONE_REGISTRY, Case


def _timm(arch: str, input_shape: list[int], note: str, **kwargs) -> Case:
    args, model = build(arch, **kwargs)
    kw = kwargs_repr(kwargs)
    reference = (
        f'BACKBONE_REGISTRY.build("timm_{arch}", features_only=True, pretrained=False{", " + kw if kw else ""}) '
        f'== TimmBackboneWrapper(timm.create_model("{arch}", features_only=True, ...)); forward(x) -> list. '
        + note
    )
    return backbone_case(arch, args, model, input_shape, reference)


RESNET_NOTE = (
    "FeatureListNet over timm ResNet (Bottleneck); keys conv1./bn1./layer1-4. (no fc); stages after the "
    "last out_index are pruned."
)
VIT_NOTE = (
    "FeatureGetterNet over timm VisionTransformer: keys under model.; blocks after the last out_index, the "
    "final norm and the head pruned; forward_intermediates(output_fmt=NCHW, intermediates_only=True) -> "
    "[B, D, H/16, W/16] maps without the class token."
)
CONVNEXT_NOTE = (
    "FeatureListNet(flatten_sequential=True) over timm ConvNeXt: keys stem_0/stem_1/stages_i.; stages after "
    "the last out_index pruned; NCHW maps at strides 4, 8, 16, 32."
)


def case_timm_resnet50() -> Case:
    return _timm("resnet50", [1, 3, 32, 32], RESNET_NOTE)


def case_timm_resnet101() -> Case:
    return _timm("resnet101", [1, 2, 32, 32], RESNET_NOTE, in_chans=2, out_indices=[1, 3])


def case_timm_resnet152() -> Case:
    return _timm("resnet152", [1, 3, 32, 32], RESNET_NOTE, out_indices=[0, 2])


def case_timm_vit_tiny_patch16_224() -> Case:
    return _timm("vit_tiny_patch16_224", [2, 3, 32, 32], VIT_NOTE, img_size=32)


def case_timm_vit_small_patch16_224() -> Case:
    return _timm(
        "vit_small_patch16_224", [1, 4, 32, 48], VIT_NOTE, img_size=[32, 48], in_chans=4, out_indices=[2, 5, -1]
    )


def case_timm_vit_base_patch16_224() -> Case:
    # dynamic_img_size: a 2x2 position grid resampled (bicubic, antialiased) to the 3x2 input grid.
    return _timm(
        "vit_base_patch16_224", [1, 3, 48, 32], VIT_NOTE, img_size=32, dynamic_img_size=True, out_indices=2
    )


def case_timm_vit_large_patch16_224() -> Case:
    return _timm("vit_large_patch16_224", [1, 3, 32, 32], VIT_NOTE, img_size=32, out_indices=[1, 3])


def case_timm_vit_small_patch16_224_tokens() -> Case:
    # register tokens, no class token, LayerScale, pre-norm, qk-norm, pos-embed for patches only
    return _timm(
        "vit_small_patch16_224",
        [1, 3, 32, 32],
        VIT_NOTE,
        img_size=32,
        depth=3,
        class_token=False,
        global_pool="avg",
        reg_tokens=2,
        no_embed_class=True,
        init_values=0.1,
        pre_norm=True,
        qk_norm=True,
        patch_size=8,
    )


def case_timm_convnext_tiny() -> Case:
    return _timm("convnext_tiny", [1, 3, 32, 32], CONVNEXT_NOTE)


def case_timm_convnext_small() -> Case:
    return _timm("convnext_small", [1, 1, 32, 32], CONVNEXT_NOTE, in_chans=1, out_indices=[1, 2])


def case_timm_convnext_base() -> Case:
    return _timm("convnext_base", [1, 3, 64, 64], CONVNEXT_NOTE, out_indices=2, kernel_sizes=5, conv_bias=False)


CASES: dict[str, Callable[[], Case]] = {
    "timm_resnet50": case_timm_resnet50,
    "timm_resnet101": case_timm_resnet101,
    "timm_resnet152": case_timm_resnet152,
    "timm_vit_tiny_patch16_224": case_timm_vit_tiny_patch16_224,
    "timm_vit_small_patch16_224": case_timm_vit_small_patch16_224,
    "timm_vit_base_patch16_224": case_timm_vit_base_patch16_224,
    "timm_vit_large_patch16_224": case_timm_vit_large_patch16_224,
    "timm_vit_small_patch16_224_tokens": case_timm_vit_small_patch16_224_tokens,
    "timm_convnext_tiny": case_timm_convnext_tiny,
    "timm_convnext_small": case_timm_convnext_small,
    "timm_convnext_base": case_timm_convnext_base,
}


def write_pretrained_fixture() -> None:
    """tests/fixtures/timm_vit_tiny_patch16_224_pretrained: a random timm classifier ViT checkpoint
    (embed_dim 32, depth 2, made for 224 / patch 16) and the features TerraTorch/timm compute after
    loading it with pretrained=True, pretrained_cfg_overlay={"file": ...}, img_size=48, patch_size=8,
    in_chans=2 (checkpoint_filter_fn resamples patch kernels and position grid; adapt_input_conv)."""
    import json

    import timm
    import torch
    from refkit import FIXTURES, make_inputs
    from safetensors.torch import save_file

    out = FIXTURES / "timm_vit_tiny_patch16_224_pretrained"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    dims = dict(embed_dim=32, num_heads=2, depth=2)
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, **dims)
    ck = out / "checkpoint.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(ck))
    args = dict(img_size=48, patch_size=8, in_chans=2, out_indices=[0, 1], **dims)
    model = BACKBONE_REGISTRY.build(
        "timm_vit_tiny_patch16_224", features_only=True, pretrained=True,
        pretrained_cfg_overlay={"file": str(ck)}, **args,
    ).eval()
    (x,) = make_inputs([[1, 2, 48, 48]])
    with torch.no_grad():
        ys = model(x)
    save_file({"input.0": x, **{f"output.{i}": y.contiguous() for i, y in enumerate(ys)}}, str(out / "io.safetensors"))
    # A real checkpoint instead of synthetic weights (no state_dict.json): the timm plugin's own
    # test loads it, the generic fixture runners skip it.
    meta = {"registry": "backbone", "name": "timm_vit_tiny_patch16_224", "args": {"pretrained": True, **args},
            "checkpoint": "checkpoint.safetensors", "parity_test": "custom",
            "output_shapes": [list(y.shape) for y in ys]}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    write_pretrained_fixture()
