"""Cases of the big timm ConvNeXts and of timm's `name.tag` names: convnext_large and convnext_xlarge
built as TerraTorch builds them, BACKBONE_REGISTRY.build("timm_<name>", features_only=True,
pretrained=False, ...), and the corpus's `timm_convnext_large.fb_in22k` /
`timm_convnext_xlarge.fb_in22k` (integrationtests/configs/test_encoderdecoder_timm_convnext_*-fb-in22k):
the tag picks pretrained weights, so with pretrained=False the model is the bare architecture's.

`out_indices` stops early so that FeatureListNet prunes the later stages (fewer synthetic weights)."""

from __future__ import annotations

from typing import Callable

from cases._timm import backbone_case, build, kwargs_repr
from refkit import Case

NOTE = (
    "FeatureListNet(flatten_sequential=True) over timm ConvNeXt: keys stem_0/stem_1/stages_i.; stages after "
    "the last out_index pruned; NCHW maps at strides 4, 8, 16, 32."
)


def _timm(arch: str, input_shape: list[int], note: str, **kwargs) -> Case:
    args, model = build(arch, **kwargs)
    kw = kwargs_repr(kwargs)
    reference = (
        f'BACKBONE_REGISTRY.build("timm_{arch}", features_only=True, pretrained=False{", " + kw if kw else ""}) '
        f'== TimmBackboneWrapper(timm.create_model("{arch}", features_only=True, ...)); forward(x) -> list. '
        + note
    )
    return backbone_case(arch, args, model, input_shape, reference)


def case_timm_convnext_large() -> Case:
    return _timm("convnext_large", [1, 3, 32, 32], NOTE, out_indices=[0, 1])


def case_timm_convnext_xlarge() -> Case:
    return _timm("convnext_xlarge", [1, 2, 32, 32], NOTE, in_chans=2, out_indices=[0])


def case_timm_convnext_large_fb_in22k() -> Case:
    # the corpus config's backbone_in_chans: 6; the tag's pretrained cfg (num_classes=21841) only
    # reaches the classifier head, which features_only drops
    return _timm(
        "convnext_large.fb_in22k", [1, 6, 32, 32], NOTE + " The tag fb_in22k selects weights only.", in_chans=6,
        out_indices=[0],
    )


def case_timm_convnext_xlarge_fb_in22k() -> Case:
    return _timm(
        "convnext_xlarge.fb_in22k", [1, 3, 32, 32], NOTE + " The tag fb_in22k selects weights only.",
        out_indices=[0], kernel_sizes=3,
    )


CASES: dict[str, Callable[[], Case]] = {
    "timm_convnext_large": case_timm_convnext_large,
    "timm_convnext_xlarge": case_timm_convnext_xlarge,
    "timm_convnext_large.fb_in22k": case_timm_convnext_large_fb_in22k,
    "timm_convnext_xlarge.fb_in22k": case_timm_convnext_xlarge_fb_in22k,
}
