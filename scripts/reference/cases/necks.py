"""TerraTorch's necks (terratorch/models/necks.py). `SelectIndices` is in foundation.py."""

from __future__ import annotations

from typing import Callable

from refkit import NECK_REGISTRY, Case, fwd_list


def _neck(name: str, channels: list[int], args: dict, shapes: list[list[int]], what: str,
          forward=fwd_list, forward_kwargs: dict | None = None) -> Case:
    model = NECK_REGISTRY.build(name, channels, **args)
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    extra = {"out_channels": model.process_channel_list(list(channels))}
    if forward_kwargs is not None:
        extra["forward_kwargs"] = forward_kwargs
        forward = lambda m, xs: list(m(list(xs), **forward_kwargs))  # noqa: E731
    return Case(
        registry="neck",
        name=name,
        channels=channels,
        args=args,
        reference=f'NECK_REGISTRY.build("{name}", {channels}{", " + kw if kw else ""}): {what}',
        model=model,
        input_shapes=shapes,
        forward=forward,
        extra_meta=extra,
    )


def case_PermuteDims() -> Case:
    return _neck("PermuteDims", [16, 32], {"new_order": [0, 3, 1, 2]},
                 [[1, 4, 4, 16], [1, 2, 2, 32]], "NHWC -> NCHW of every feature (contiguous).")


def case_InterpolateToPyramidal() -> Case:
    return _neck("InterpolateToPyramidal", [8, 8, 8, 8], {},
                 [[1, 8, 2, 2]] * 4, "nearest upsampling by 2^4, 2^3, 2^2, 2^1.")


def case_InterpolateToPyramidal_bilinear() -> Case:
    return _neck("InterpolateToPyramidal", [8, 8, 8],
                 {"scale_factor": 3, "mode": "bilinear"}, [[1, 8, 3, 3]] * 3,
                 "bilinear (align_corners False) upsampling by 3^3, 3^2, 3^1.")


def case_MaxpoolToPyramidal() -> Case:
    return _neck("MaxpoolToPyramidal", [8, 8, 8, 8], {},
                 [[1, 8, 16, 16]] * 4, "first feature cloned, then max_pool2d with kernel 2, 4, 8.")


def case_ReshapeTokensToImage() -> Case:
    return _neck("ReshapeTokensToImage", [8, 8], {},
                 [[2, 17, 8], [2, 17, 8]], "drop CLS, 16 tokens -> 4x4 map of 8 channels.")


def case_ReshapeTokensToImage_time() -> Case:
    return _neck("ReshapeTokensToImage", [8],
                 {"effective_time_dim": 2}, [[1, 33, 8]],
                 "drop CLS, 2 time steps x 16 tokens -> [B, 2*8, 4, 4].")


def case_ReshapeTokensToImage_nonsquare() -> Case:
    return _neck("ReshapeTokensToImage", [8], {},
                 [[1, 13, 8]], "12 tokens after the CLS token are not a square grid: with image_size (24, 32) "
                 "the patch is sqrt(24*32/12) = 8, so the grid is 3x4.",
                 forward_kwargs={"image_size": [24, 32]})


def case_AggregateTokens() -> Case:
    return _neck("AggregateTokens", [8, 8, 8], {},
                 [[2, 5, 8], [2, 5, 8], [2, 5, 8]], "mean over the tokens of the last layer -> [B, 8].")


def case_AggregateTokens_max() -> Case:
    return _neck("AggregateTokens", [8, 16],
                 {"pooling": "max", "indices": [0, 1], "drop_cls": True},
                 [[2, 5, 8], [2, 16, 2, 2]],
                 "max over tokens after dropping the first; the 4-D map is flattened to tokens first.")


def case_AggregateTokens_cls() -> Case:
    return _neck("AggregateTokens", [8, 8], {"pooling": "CLS", "indices": 0},
                 [[2, 5, 8], [2, 5, 8]], "indices=0 is falsy in `indices or index`, so the deprecated index -1 is used: the first token of the last layer.")


def case_AddBottleneckLayer() -> Case:
    return _neck("AddBottleneckLayer", [8, 16], {},
                 [[1, 8, 8, 8], [1, 16, 4, 4]], "appends Conv2d(16, 8, 1)(features[-1]).")


def case_LearnedInterpolateToPyramidal() -> Case:
    return _neck("LearnedInterpolateToPyramidal", [16, 16, 16, 16], {},
                 [[1, 16, 4, 4]] * 4,
                 "fpn1 = ConvT(16,8,2,2)-BN-GELU-ConvT(8,4,2,2); fpn2 = ConvT(16,8,2,2); fpn3 = identity; "
                 "fpn4 = maxpool 2.")


def _fpn_values(model, inputs):
    out = model(list(inputs))
    return list(out.values()) if isinstance(out, dict) else list(out)


def case_FeaturePyramidNetworkNeck() -> Case:
    return _neck("FeaturePyramidNetworkNeck", [8, 16, 32],
                 {"out_channel": 8, "output_ordered_dict": False},
                 [[1, 8, 16, 16], [1, 16, 8, 8], [1, 32, 4, 4]],
                 "torchvision FeaturePyramidNetwork([8,16,32], 8) -> list.")


def case_FeaturePyramidNetworkNeck_dict() -> Case:
    return _neck("FeaturePyramidNetworkNeck", [8, 16],
                 {"out_channel": 4}, [[1, 8, 6, 6], [1, 16, 3, 3]],
                 "default output_ordered_dict=True returns an OrderedDict; its values, in order, are the outputs.",
                 forward=_fpn_values)


CASES: dict[str, Callable[[], Case]] = {
    "terratorch_PermuteDims": case_PermuteDims,
    "terratorch_InterpolateToPyramidal": case_InterpolateToPyramidal,
    "terratorch_InterpolateToPyramidal_bilinear": case_InterpolateToPyramidal_bilinear,
    "terratorch_MaxpoolToPyramidal": case_MaxpoolToPyramidal,
    "terratorch_ReshapeTokensToImage": case_ReshapeTokensToImage,
    "terratorch_ReshapeTokensToImage_time": case_ReshapeTokensToImage_time,
    "terratorch_ReshapeTokensToImage_nonsquare": case_ReshapeTokensToImage_nonsquare,
    "terratorch_AggregateTokens": case_AggregateTokens,
    "terratorch_AggregateTokens_max": case_AggregateTokens_max,
    "terratorch_AggregateTokens_cls": case_AggregateTokens_cls,
    "terratorch_AddBottleneckLayer": case_AddBottleneckLayer,
    "terratorch_LearnedInterpolateToPyramidal": case_LearnedInterpolateToPyramidal,
    "terratorch_FeaturePyramidNetworkNeck": case_FeaturePyramidNetworkNeck,
    "terratorch_FeaturePyramidNetworkNeck_dict": case_FeaturePyramidNetworkNeck_dict,
}
