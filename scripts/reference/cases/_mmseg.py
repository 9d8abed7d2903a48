"""Shared helper of the mmseg case modules: a decode head built as TerraTorch's MMSegRegistry
builds it, DECODER_REGISTRY.build("mmseg_<Head>", channels, **kwargs) -> MMsegDecoderWrapper(head)
(keys under `decoder.`), called in eval mode as wrapper(list_of_maps)."""

from __future__ import annotations

from typing import Callable

from refkit import DECODER_REGISTRY, Case, fwd_list


def head_case(
    head: str,
    channels: list[int],
    args: dict,
    shapes: list[list[int]],
    note: str = "",
    forward=fwd_list,
    setup: Callable | None = None,
    extra_meta: dict | None = None,
) -> Callable[[], Case]:
    """A case factory for head `head` on `channels` with `args`, fed maps of `shapes`;
    `setup(model)` runs after the build (before the synthetic weights)."""

    def make() -> Case:
        model = DECODER_REGISTRY.build(f"mmseg_{head}", list(channels), **args)
        if setup is not None:
            setup(model)
        return Case(
            registry="decoder",
            name=f"mmseg_{head}",
            channels=list(channels),
            args=args,
            reference=(
                f'DECODER_REGISTRY.build("mmseg_{head}", {channels}, **{args}) -> '
                f"MMsegDecoderWrapper(mmseg.models.decode_heads.{head}(...)); eval forward(list). {note}"
            ),
            model=model,
            input_shapes=shapes,
            forward=forward,
            extra_meta={"includes_head": True, **(extra_meta or {})},
        )

    return make
