"""Helpers for whole-model (EncoderDecoderFactory) cases: build the model from the
YAML-style model_args, and the forward functions that turn TerraTorch's ModelOutput into
the list of outputs a fixture stores."""

from __future__ import annotations

import json

from refkit import MODEL_FACTORY_REGISTRY, Case


def _aux_heads(model_args: dict) -> dict:
    """The YAML form of aux_decoders (plain dicts) as the AuxiliaryHead objects build_model takes."""
    from terratorch.models.model import AuxiliaryHead

    args = json.loads(json.dumps(model_args))
    if args.get("aux_decoders"):
        args["aux_decoders"] = [AuxiliaryHead(a["name"], a["decoder"], a.get("decoder_args")) for a in args["aux_decoders"]]
    return args


def fwd_with_aux(model, inputs):
    out = model(inputs[0])
    return [out.output, *out.auxiliary_heads.values()]


def fwd_features(model, inputs):
    return list(model(inputs[0]))


def fwd_with_coords(model, inputs):
    """model(x, temporal_coords=..., location_coords=...), as TerraTorch passes a batch's extra keys."""
    x, tc, lc = inputs
    return [model(x, temporal_coords=tc, location_coords=lc).output]


def factory_case(model_args: dict, input_shapes: list[list[int]], explanation: str, forward=fwd_with_aux,
                 lightning_task: str | None = None, extra: dict | None = None) -> Case:
    factory = MODEL_FACTORY_REGISTRY.build("EncoderDecoderFactory")
    model = factory.build_model(**_aux_heads(model_args))
    kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    aux = [a["name"] for a in model_args.get("aux_decoders") or []]
    return Case(
        registry="model",
        name="EncoderDecoderFactory",
        channels=None,
        args=model_args,
        reference=f'MODEL_FACTORY_REGISTRY.build("EncoderDecoderFactory").build_model({kw}). {explanation}',
        model=model,
        input_shapes=input_shapes,
        forward=forward,
        extra_meta={
            "model_class": type(model).__name__,
            "state_dict_prefixes": sorted({k.split(".")[0] + "." for k in model.state_dict()}),
            **({"output_names": ["output", *[f"aux_{n}" for n in aux]]} if aux else {}),
            "patch_size": getattr(model, "patch_size", None),
            "padding": getattr(model, "padding", None),
            **(extra or {}),
        },
        factory_config={"model_factory": "EncoderDecoderFactory", "model_args": model_args},
        lightning_task=lightning_task,
    )
