"""EncoderDecoderFactory cases beyond the foundation's three: auxiliary heads, embedding
generation, and (with the Prithvi backbone) padding for patch sizes that do not divide
the input, plus whole-catalog compositions across the plugins."""

from __future__ import annotations

import json
from typing import Callable

import torch

from cases._factory import factory_case, fwd_features, fwd_with_aux, fwd_with_coords
from refkit import BACKBONE_REGISTRY, DECODER_REGISTRY, MODEL_FACTORY_REGISTRY, Case


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


def case_factory_prithvi_unet() -> Case:
    """The benchmark architecture at a tiny size, with a 30x30 input that the factory pads."""
    model_args = {
        "task": "segmentation",
        "backbone": "prithvi_eo_v1_100",
        "backbone_pretrained": False,
        "backbone_embed_dim": 32,
        "backbone_depth": 4,
        "backbone_num_heads": 2,
        "backbone_img_size": 32,
        "backbone_patch_size": [1, 4, 4],
        "necks": [
            {"name": "SelectIndices", "indices": [0, 1, 2, 3]},
            {"name": "ReshapeTokensToImage"},
            {"name": "LearnedInterpolateToPyramidal"},
        ],
        "decoder": "UNetDecoder",
        "decoder_channels": [32, 16, 8, 8],
        "num_classes": 2,
    }
    return factory_case(
        model_args,
        [[1, 6, 30, 30]],
        "PixelWiseModel: the input is reflect-padded to 32x32 (multiples of twice the patch size 4), Prithvi "
        "tokens of 4 blocks -> 8x8 maps -> pyramid 32/16/8/4 -> UNetDecoder -> SegmentationHead -> cropped "
        "back to 30x30. checkpoint.ckpt is the Lightning task's state_dict (keys model.*) saved by torch.save.",
        lightning_task="terratorch.tasks.SemanticSegmentationTask",
        extra={"lightning_checkpoint": True},
    )


def case_factory_prithvi_tl() -> Case:
    """Temporal and location coordinates reach the backbone through the task model."""
    model_args = {
        "task": "segmentation",
        "backbone": "prithvi_eo_v2_tiny_tl",
        "backbone_pretrained": False,
        "backbone_embed_dim": 16,
        "backbone_depth": 2,
        "backbone_num_heads": 2,
        "backbone_img_size": 16,
        "backbone_patch_size": [1, 4, 4],
        "backbone_num_frames": 2,
        "necks": [
            {"name": "SelectIndices", "indices": [-1]},
            {"name": "ReshapeTokensToImage", "effective_time_dim": 2},
        ],
        "decoder": "FCNDecoder",
        "decoder_channels": 8,
        "decoder_num_convs": 2,
        "num_classes": 3,
    }
    case = factory_case(
        model_args,
        [[1, 6, 2, 16, 16], [1, 2, 2], [1, 2]],
        "PixelWiseModel.forward(x, temporal_coords=..., location_coords=...): the coordinates go to the "
        "Prithvi _tl backbone; 2 frames of 4x4 tokens -> [1, 2*16, 4, 4] -> FCNDecoder -> head.",
        forward=fwd_with_coords,
        extra={"input_names": ["input", "temporal_coords", "location_coords"]},
    )
    # coordinates: (year, day of year) and (lat, lon), not random noise
    case.fixed_inputs = [None, torch.tensor([[[2020.0, 100.0], [2021.0, 200.0]]]), torch.tensor([[45.5, -73.6]])]
    return case


def case_factory_timm_necks_smp() -> Case:
    model_args = {
        "task": "segmentation",
        "backbone": "timm_vit_tiny_patch16_224",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "backbone_img_size": 64,
        "backbone_out_indices": [2, 5, 8, 11],
        "necks": [{"name": "LearnedInterpolateToPyramidal"}],
        "decoder": "smp_FPN",
        "decoder_decoder_pyramid_channels": 32,
        "decoder_decoder_segmentation_channels": 32,
        "num_classes": 3,
    }
    return factory_case(
        model_args,
        [[1, 3, 64, 64]],
        "A timm ViT (4 blocks as 4x4 maps) -> terratorch LearnedInterpolateToPyramidal -> smp FPN decoder -> "
        "terratorch SegmentationHead, across three plugins.",
        lightning_task="terratorch.tasks.SemanticSegmentationTask",
    )


def case_factory_timm_necks_mmseg() -> Case:
    """TerraTorch 1.2.11's factory adds a head on mmseg decoders and fails; the reference is the model it
    would build if it routed num_classes to the head-including decoder, assembled from TerraTorch's own
    parts (PixelWiseModel, build_neck_list, DECODER_REGISTRY)."""
    from terratorch.models.necks import NeckSequential, build_neck_list
    from terratorch.models.pixel_wise_model import PixelWiseModel

    model_args = {
        "task": "segmentation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "necks": [
            {"name": "SelectIndices", "indices": [1, 2, 3, 4]},
            {"name": "FeaturePyramidNetworkNeck", "out_channel": 16, "output_ordered_dict": False},
        ],
        "decoder": "mmseg_UPerHead",
        "decoder_channels": 16,
        "decoder_in_index": [0, 1, 2, 3],
        "num_classes": 3,
    }
    try:
        MODEL_FACTORY_REGISTRY.build("EncoderDecoderFactory").build_model(**json.loads(json.dumps(model_args)))
        factory_error = None
    except Exception as e:  # noqa: BLE001
        factory_error = f"{type(e).__name__}: {e}"
    backbone = BACKBONE_REGISTRY.build("timm_resnet18", pretrained=False, features_only=True)
    necks, channels = build_neck_list(json.loads(json.dumps(model_args["necks"])), list(backbone.out_channels))
    decoder = DECODER_REGISTRY.build("mmseg_UPerHead", channels, num_classes=3, channels=16, in_index=[0, 1, 2, 3])
    model = PixelWiseModel("segmentation", backbone, decoder, {}, patch_size=None, padding="reflect",
                           decoder_includes_head=True, neck=NeckSequential(*necks), rescale=True)
    kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    return Case(
        registry="model",
        name="EncoderDecoderFactory",
        channels=None,
        args=model_args,
        reference=(
            f"PixelWiseModel(encoder=timm_resnet18, neck=NeckSequential(SelectIndices, FeaturePyramidNetworkNeck), "
            f"decoder=DECODER_REGISTRY.build('mmseg_UPerHead', {channels}, num_classes=3, channels=16, "
            f"in_index=[0, 1, 2, 3]), "
            f"decoder_includes_head=True, rescale=True): what build_model({kw}) should give; TerraTorch 1.2.11's "
            f"factory raises instead (see terratorch_factory_error)."
        ),
        model=model,
        input_shapes=[[1, 3, 64, 64]],
        forward=fwd_with_aux,
        extra_meta={"terratorch_factory_error": factory_error, "model_class": type(model).__name__,
                    "state_dict_prefixes": sorted({k.split(".")[0] + "." for k in model.state_dict()})},
        factory_config={"model_factory": "EncoderDecoderFactory", "model_args": model_args},
    )


def case_factory_temporal_concat() -> Case:
    model_args = {
        "task": "segmentation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "backbone_use_temporal": True,
        "backbone_temporal_pooling": "concat",
        "backbone_temporal_n_timestamps": 2,
        "necks": [{"name": "SelectIndices", "indices": [-1]}],
        "decoder": "FCNDecoder",
        "decoder_channels": 16,
        "num_classes": 2,
    }
    return factory_case(
        model_args,
        [[1, 3, 2, 64, 64]],
        "TemporalWrapper(resnet18, pooling=concat, n_timestamps=2): both time steps through the backbone "
        "(folded into the batch), features stacked along the channels ([1024] for the last map) -> FCNDecoder.",
    )


def case_factory_temporal_vit_diff() -> Case:
    model_args = {
        "task": "regression",
        "backbone": "prithvi_eo_v1_100",
        "backbone_pretrained": False,
        "backbone_embed_dim": 32,
        "backbone_depth": 2,
        "backbone_num_heads": 2,
        "backbone_img_size": 16,
        "backbone_patch_size": [1, 4, 4],
        "backbone_use_temporal": True,
        "backbone_temporal_pooling": "diff",
        "backbone_temporal_subset_lengths": [1, 2],
        "necks": [{"name": "SelectIndices", "indices": [-1]}, {"name": "ReshapeTokensToImage"}],
        "decoder": "FCNDecoder",
        "decoder_channels": 8,
        "decoder_num_convs": 2,
    }
    return factory_case(
        model_args,
        [[1, 6, 3, 16, 16]],
        "TemporalWrapper(Prithvi, pooling=diff, subset_lengths=[1, 2]): tokens of 3 time steps, the last two "
        "averaged, first minus that; tokens back to [B, L, C] -> ReshapeTokensToImage -> FCNDecoder -> "
        "RegressionHead.",
    )


CASES: dict[str, Callable[[], Case]] = {
    "factory_temporal_concat": case_factory_temporal_concat,
    "factory_temporal_vit_diff": case_factory_temporal_vit_diff,
    "factory_prithvi_unet": case_factory_prithvi_unet,
    "factory_prithvi_tl": case_factory_prithvi_tl,
    "factory_timm_necks_smp": case_factory_timm_necks_smp,
    "factory_timm_necks_mmseg": case_factory_timm_necks_mmseg,
    "factory_aux": case_factory_aux,
    "factory_aux_classification": case_factory_aux_classification,
    "factory_embedding": case_factory_embedding,
}
