"""Shared helpers of the smp case modules (foundation.py, smp_a.py, smp_b.py): an smp decoder
built the way TerraTorch's SMPRegistry builds it (DECODER_REGISTRY.build("smp_<Name>", channels,
**kwargs)), described as a Case, and the error a build raises."""

from __future__ import annotations

from refkit import DECODER_REGISTRY, Case, fwd_list


def build_error(name: str, channels: list[int], **kwargs) -> str | None:
    """`"<ExceptionType>: <message>"` of DECODER_REGISTRY.build(name, channels, **kwargs), or None
    when it builds."""
    try:
        DECODER_REGISTRY.build(name, channels, **kwargs)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def square_shapes(channels: list[int], sizes: list[int]) -> list[list[int]]:
    """One `[1, c, s, s]` input shape per channel count and size."""
    return [[1, c, s, s] for c, s in zip(channels, sizes)]


def smp_case(
    name: str,
    channels: list[int],
    shapes: list[list[int]],
    tail: str,
    default_error_key: str | None = None,
    **kwargs,
) -> Case:
    """The Case of DECODER_REGISTRY.build(f"smp_{name}", channels, **kwargs) run on inputs of
    `shapes`. Its reference text names the registry call, the wrapper and the smp model made
    around TerraTorch's dummy encoder, then goes on with `tail`, in which `{kw}` stands for the
    keyword arguments as written. The meta records `out_channels` and, under
    `default_error_key`, what building with smp's default arguments raises."""
    model = DECODER_REGISTRY.build(f"smp_{name}", channels, **kwargs)
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    extra_meta = {"out_channels": model.out_channels}
    if default_error_key is not None:
        extra_meta[default_error_key] = build_error(f"smp_{name}", channels)
    return Case(
        registry="decoder",
        name=f"smp_{name}",
        channels=channels,
        args=kwargs,
        reference=(
            f'DECODER_REGISTRY.build("smp_{name}", {channels}, {kw}) -> SMPDecoderWrapper(model.decoder, '
            f"model.segmentation_head[0].in_channels) where model = smp.{name}(encoder_name="
            f'"SMPEncoderWrapperWithPFFIM" (dummy), encoder_weights=None, in_channels=1, classes=1, '
            f"encoder_depth=len(channels)-1, " + tail.replace("{kw}", kw)
        ),
        model=model,
        input_shapes=shapes,
        forward=fwd_list,
        extra_meta=extra_meta,
    )
