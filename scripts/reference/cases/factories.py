"""The model factories besides EncoderDecoderFactory: PrithviModelFactory (every task it
supports), FullModelFactory and GenericModelFactory (with ReconstructionTask, the task
class that calls build_model(**model_args) without a task). Small widths; the argument
sets follow TerraTorch's own configs (tests/resources/configs/manufactured-*)."""

from __future__ import annotations

import json
from typing import Callable

from cases._factory import fwd_with_aux
from refkit import MODEL_FACTORY_REGISTRY, Case

BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]


def _case(factory: str, model_args: dict, input_shapes: list[list[int]], explanation: str, forward,
          lightning_task: str | None, extra: dict | None = None) -> Case:
    model = MODEL_FACTORY_REGISTRY.build(factory).build_model(**json.loads(json.dumps(model_args)))
    kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    return Case(
        registry="model",
        name=factory,
        channels=None,
        args=model_args,
        reference=f'MODEL_FACTORY_REGISTRY.build("{factory}").build_model({kw}). {explanation}',
        model=model,
        input_shapes=input_shapes,
        forward=forward,
        extra_meta={
            "model_class": type(model).__name__,
            "state_dict_prefixes": sorted({k.split(".")[0] + "." for k in model.state_dict()}),
            **(extra or {}),
        },
        factory_config={"model_factory": factory, "model_args": model_args},
        lightning_task=lightning_task,
    )


def _prithvi(model_args: dict, input_shapes: list[list[int]], explanation: str, lightning_task: str | None) -> Case:
    return _case(
        "PrithviModelFactory",
        model_args,
        input_shapes,
        "PrithviModelFactory sets backbone_bands/in_chans/pretrained/num_frames and calls "
        "EncoderDecoderFactory with necks=None, so the backbone's prepare_features_for_image_model makes the "
        "maps. " + explanation,
        fwd_with_aux,
        lightning_task,
    )


def case_factory_prithvi_mf_segmentation() -> Case:
    """As manufactured-finetune_prithvi_eo_v2_600_segmentation_tiled.yaml, with the arguments TerraTorch's
    Prithvi swallows (backbone_in_channels, backbone_pretrain_img_size, backbone_band_patch_size)."""
    model_args = {
        "task": "segmentation",
        "backbone": "prithvi_eo_v2_600",
        "backbone_embed_dim": 32,
        "backbone_depth": 4,
        "backbone_num_heads": 2,
        "backbone_img_size": 32,
        "backbone_patch_size": 8,
        "backbone_drop_path_rate": 0.3,
        "backbone_in_channels": 6,
        "backbone_pretrain_img_size": 32,
        "backbone_band_patch_size": 2,
        "bands": BANDS,
        "in_channels": 6,
        "num_frames": 1,
        "pretrained": False,
        "decoder": "UperNetDecoder",
        "decoder_channels": 16,
        "head_dropout": 0.5708022831486758,
        "num_classes": 2,
    }
    return _prithvi(model_args, [[1, 6, 32, 32]], "Prithvi tokens of 4 blocks -> 4x4 maps -> UperNetDecoder -> "
                    "SegmentationHead -> resized to 32x32.", "terratorch.tasks.SemanticSegmentationTask")


def case_factory_prithvi_mf_swin_regression() -> Case:
    """As manufactured-finetune_prithvi_swin_B.yaml: the Swin TerraTorch registers into timm."""
    model_args = {
        "task": "regression",
        "backbone": "prithvi_swin_B",
        "backbone_embed_dim": 8,
        "backbone_depths": [1, 1, 1, 1],
        "backbone_num_heads": [1, 1, 2, 2],
        "backbone_window_size": 2,
        "backbone_drop_path_rate": 0.3,
        "bands": BANDS,
        "in_channels": 6,
        "num_frames": 1,
        "pretrained": False,
        "decoder": "UperNetDecoder",
        "decoder_channels": 16,
        "head_dropout": 0.5708022831486758,
        "head_final_act": "torch.nn.Softplus",
        "head_learned_upscale_layers": 2,
    }
    return _prithvi(model_args, [[1, 6, 32, 32]], "Swin stages 8/4/2/1 -> UperNetDecoder -> RegressionHead with 2 "
                    "learned upscale layers and a final Softplus (a ReLU zeroes this tiny model's output).", "terratorch.tasks.PixelwiseRegressionTask")


def case_factory_prithvi_mf_mlp_regression() -> Case:
    """As manufactured-finetune-mlp_decoder.yaml (MLPDecoder, final Identity), padded input."""
    model_args = {
        "task": "regression",
        "backbone": "prithvi_eo_v1_100",
        "backbone_embed_dim": 16,
        "backbone_depth": 2,
        "backbone_num_heads": 2,
        "backbone_img_size": 32,
        "backbone_patch_size": [1, 8, 8],
        "backbone_drop_path_rate": 0.3,
        "bands": BANDS,
        "in_channels": 6,
        "num_frames": 1,
        "pretrained": False,
        "decoder": "MLPDecoder",
        "decoder_activation": "ReLU",
        "head_dropout": 0.5708022831486758,
        "head_final_act": "torch.nn.Identity",
        "head_learned_upscale_layers": 2,
    }
    return _prithvi(model_args, [[1, 6, 30, 30]], "The 30x30 input is reflect-padded to the patch size and the "
                    "output cropped back.", "terratorch.tasks.PixelwiseRegressionTask")


def case_factory_prithvi_mf_classification() -> Case:
    model_args = {
        "task": "classification",
        "backbone": "prithvi_eo_tiny",
        "backbone_embed_dim": 16,
        "backbone_depth": 2,
        "backbone_num_heads": 2,
        "backbone_img_size": 16,
        "backbone_patch_size": [1, 4, 4],
        "bands": BANDS[:4],
        "pretrained": False,
        "decoder": "IdentityDecoder",
        "num_classes": 3,
        "head_dim_list": [8],
    }
    return _prithvi(model_args, [[1, 4, 16, 16]], "in_channels defaults to len(bands) = 4; ScalarOutputModel with "
                    "a ScalarHead.", "terratorch.tasks.ClassificationTask")


def case_factory_prithvi_mf_scalar_regression() -> Case:
    model_args = {
        "task": "scalar_regression",
        "backbone": "prithvi_eo_v2_300",
        "backbone_embed_dim": 16,
        "backbone_depth": 2,
        "backbone_num_heads": 2,
        "backbone_img_size": 16,
        "backbone_patch_size": [1, 4, 4],
        "bands": [0, 1, 2],
        "in_channels": 3,
        "pretrained": False,
        "decoder": "FCNDecoder",
        "decoder_channels": 8,
        "decoder_num_convs": 1,
        "num_outputs": 2,
    }
    return _prithvi(model_args, [[1, 3, 16, 16]], "Integer bands; num_outputs goes through to the ScalarHead.",
                    None)


def fwd_full_mae(model, inputs):
    """The bare PrithviMAE that FullModelFactory returns: forward(x) -> (loss dict, reconstruction, mask)."""
    loss, pred, mask = model(inputs[0])
    return [loss["loss"], pred, mask]


def case_factory_full_reconstruction() -> Case:
    """As manufactured-reconstruction_prithvi_eo_v1_100.yaml. mask_ratio 0.95 keeps int(16 * 0.05) = 0 of the
    16 patches, so the (otherwise random) mask is all ones and the outputs are deterministic."""
    model_args = {
        "model": "prithvi_eo_v1_100_mae",
        "pretrained": False,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "img_size": 32,
        "patch_size": [1, 8, 8],
        "decoder_embed_dim": 32,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
        "mask_ratio": 0.95,
    }
    return _case(
        "FullModelFactory",
        model_args,
        [[1, 6, 32, 32]],
        "The full model is returned unwrapped (keys encoder.*, decoder.*); outputs loss, reconstruction, mask.",
        fwd_full_mae,
        "terratorch.tasks.ReconstructionTask",
    )


def fwd_generic(model, inputs):
    """GenericModelWrapper.forward(x) -> ModelOutput(the backbone's features)."""
    return list(model(inputs[0]).output)


def case_factory_generic_reconstruction() -> Case:
    model_args = {
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "backbone_out_indices": [1, 2, 4],
        "in_channels": 3,
        "pretrained": False,
    }
    return _case(
        "GenericModelFactory",
        model_args,
        [[1, 3, 32, 32]],
        "GenericModelWrapper (keys model.*) around BACKBONE_REGISTRY.build('timm_resnet18', pretrained=False, "
        "features_only=True, out_indices=[1, 2, 4]); in_channels and pretrained are not used. Outputs: the three "
        "feature maps.",
        fwd_generic,
        "terratorch.tasks.ReconstructionTask",
    )


CASES: dict[str, Callable[[], Case]] = {
    "factory_prithvi_mf_segmentation": case_factory_prithvi_mf_segmentation,
    "factory_prithvi_mf_swin_regression": case_factory_prithvi_mf_swin_regression,
    "factory_prithvi_mf_mlp_regression": case_factory_prithvi_mf_mlp_regression,
    "factory_prithvi_mf_classification": case_factory_prithvi_mf_classification,
    "factory_prithvi_mf_scalar_regression": case_factory_prithvi_mf_scalar_regression,
    "factory_full_reconstruction": case_factory_full_reconstruction,
    "factory_generic_reconstruction": case_factory_generic_reconstruction,
}
