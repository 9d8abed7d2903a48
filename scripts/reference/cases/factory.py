"""EncoderDecoderFactory cases beyond the foundation's three: auxiliary heads, embedding
generation, and (with the Prithvi backbone) padding for patch sizes that do not divide
the input, plus whole-catalog compositions across the plugins."""

from __future__ import annotations

import json
from typing import Callable

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


def case_factory_aux() -> Case:
    model_args = {
        "task": "segmentation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "necks": [{"name": "SelectIndices", "indices": [2, 3, 4]}],
        "decoder": "FCNDecoder",
        "decoder_channels": 16,
        "head_dropout": 0.1,
        "num_classes": 3,
        "aux_decoders": [
            {"name": "fcn", "decoder": "FCNDecoder", "decoder_args": {"decoder_channels": 8, "decoder_in_index": -2}},
            {"name": "identity", "decoder": "IdentityDecoder", "decoder_args": {"head_dropout": 0.5}},
        ],
    }
    return factory_case(
        model_args,
        [[1, 3, 64, 64]],
        "PixelWiseModel with aux_heads: each auxiliary decoder gets the neck's features and a SegmentationHead "
        "built with the MAIN head's arguments (upstream ignores the aux head_ args); each output is resized to "
        "the input like the main one. Outputs: output, aux_fcn, aux_identity.",
    )


def case_factory_aux_classification() -> Case:
    model_args = {
        "task": "classification",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "decoder": "IdentityDecoder",
        "num_classes": 4,
        "aux_decoders": [{"name": "deep", "decoder": "FCNDecoder", "decoder_args": {"decoder_channels": 8, "decoder_num_convs": 1}}],
    }
    return factory_case(
        model_args,
        [[1, 3, 32, 32]],
        "ScalarOutputModel with one auxiliary decoder; its ScalarHead pools over tokens like the main one.",
    )


def case_factory_embedding() -> Case:
    model_args = {
        "task": "embedding_generation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "necks": [{"name": "SelectIndices", "indices": [1, 4]}, {"name": "AggregateTokens", "indices": [0, 1]}],
    }
    return factory_case(
        model_args,
        [[1, 3, 32, 32]],
        "EmbeddingOutputModel: encoder -> necks; the outputs are the features (one pooled vector per layer).",
        forward=fwd_features,
    )


CASES: dict[str, Callable[[], Case]] = {
    "factory_aux": case_factory_aux,
    "factory_aux_classification": case_factory_aux_classification,
    "factory_embedding": case_factory_embedding,
}
