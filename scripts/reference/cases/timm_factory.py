"""Cases of TerraTorch's TimmModelFactory (terratorch/models/timm_model_factory.py): a timm
classifier, timm.create_model(backbone, pretrained=False, num_classes=num_classes, in_chans=in_channels,
**backbone_kwargs), wrapped in TimmModelWrapper (keys timm_model.*; forward -> ModelOutput(logits)).

One case per timm family the plugin builds as a classifier (ResNet, ViT, ConvNeXt, Swin), with the
heads' options (global_pool, drop_rate, fc_norm), a pretrained tag (vit_base_patch16_224.mae as the
corpus's forestnet_timm.yaml) and small inputs; architecture keywords (depth, depths, img_size,
window_size) keep the synthetic weights small."""

from __future__ import annotations

from typing import Callable

from refkit import MODEL_FACTORY_REGISTRY, Case, fwd_model_output


def _case(model_args: dict, input_shape: list[int], note: str, lightning: bool = False) -> Case:
    factory = MODEL_FACTORY_REGISTRY.build("TimmModelFactory")
    model = factory.build_model(**model_args)
    kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    return Case(
        registry="model",
        name="TimmModelFactory",
        channels=None,
        args=model_args,
        reference=f'MODEL_FACTORY_REGISTRY.build("TimmModelFactory").build_model({kw}) == '
        f"TimmModelWrapper(timm.create_model(...)); forward(x).output. {note}",
        model=model,
        input_shapes=[input_shape],
        forward=fwd_model_output,
        extra_meta={
            "model_class": type(model).__name__,
            "timm_class": type(model.timm_model).__name__,
            "state_dict_prefixes": sorted({k.split(".")[0] + "." for k in model.state_dict()}),
            "head_keys": sorted(k for k in model.state_dict() if k.split(".")[1] in ("fc", "head", "norm", "fc_norm")),
        },
        factory_config={"model_factory": "TimmModelFactory", "model_args": model_args},
        lightning_task="terratorch.tasks.ClassificationTask" if lightning else None,
    )


def case_timm_factory_resnet18() -> Case:
    return _case(
        {"task": "classification", "backbone": "resnet18", "in_channels": 4, "num_classes": 5, "pretrained": False},
        [2, 4, 32, 32],
        "ResNet: global average pool, fc.",
    )


def case_timm_factory_resnet34_catavgmax() -> Case:
    return _case(
        {
            "task": "classification", "backbone": "resnet34.a1_in1k", "in_channels": 3, "num_classes": 3,
            "pretrained": False, "backbone_global_pool": "catavgmax", "backbone_drop_rate": 0.2,
        },
        [1, 3, 32, 32],
        "ResNet with a pretrained tag, catavgmax pooling (fc over 2 x 512 features) and dropout (eval: none).",
    )


def case_timm_factory_vit_base_mae() -> Case:
    # forestnet_timm.yaml: vit_base_patch16_224.mae, in_channels 6, num_classes 12 (depth and
    # img_size made small)
    return _case(
        {
            "task": "classification", "backbone": "vit_base_patch16_224.mae", "in_channels": 6, "num_classes": 12,
            "pretrained": False, "backbone_img_size": 32, "backbone_depth": 2,
        },
        [1, 6, 32, 32],
        "ViT: final norm, class token, head (the mae tag's num_classes=0 is overridden by num_classes).",
        lightning=True,
    )


def case_timm_factory_vit_tiny_avg() -> Case:
    return _case(
        {
            "task": "classification", "backbone": "vit_tiny_patch16_224", "in_channels": 3, "num_classes": 4,
            "pretrained": False, "backbone_img_size": [32, 48], "backbone_global_pool": "avg",
            "backbone_reg_tokens": 2, "backbone_depth": 3,
        },
        [2, 3, 32, 48],
        "ViT with average pooling over the patch tokens (register tokens left out) and fc_norm instead of norm.",
    )


def case_timm_factory_convnext_tiny() -> Case:
    return _case(
        {
            "task": "classification", "backbone": "convnext_tiny", "in_channels": 2, "num_classes": 7,
            "pretrained": False, "backbone_depths": [1, 1, 2, 1],
        },
        [1, 2, 32, 32],
        "ConvNeXt: NormMlpClassifierHead (average pool, head.norm, head.fc).",
    )


def case_timm_factory_convnext_large_in22k() -> Case:
    return _case(
        {
            "task": "classification", "backbone": "convnext_large.fb_in22k", "in_channels": 3, "num_classes": 2,
            "pretrained": False, "backbone_depths": [1, 1, 1, 1], "backbone_dims": [16, 32, 48, 64],
            "backbone_global_pool": "max",
        },
        [1, 3, 32, 32],
        "ConvNeXt with a tag (fb_in22k: num_classes 21841 overridden) and max pooling.",
    )


def case_timm_factory_swin_tiny() -> Case:
    return _case(
        {
            "task": "classification", "backbone": "swin_tiny_patch4_window7_224", "in_channels": 3, "num_classes": 6,
            "pretrained": False, "backbone_img_size": 64, "backbone_window_size": 4, "backbone_depths": [2, 2, 2, 2],
        },
        [1, 3, 64, 64],
        "Swin: final norm (channels-last), average pool over H, W, head.fc.",
    )


CASES: dict[str, Callable[[], Case]] = {
    "timm_factory_resnet18": case_timm_factory_resnet18,
    "timm_factory_resnet34_catavgmax": case_timm_factory_resnet34_catavgmax,
    "timm_factory_vit_base_mae": case_timm_factory_vit_base_mae,
    "timm_factory_vit_tiny_avg": case_timm_factory_vit_tiny_avg,
    "timm_factory_convnext_tiny": case_timm_factory_convnext_tiny,
    "timm_factory_convnext_large_in22k": case_timm_factory_convnext_large_in22k,
    "timm_factory_swin_tiny": case_timm_factory_swin_tiny,
}


def case_timm_factory_prithvi_swin_b() -> Case:
    # TerraTorch registers prithvi_swin_B into timm; in_chans is len(bands) (here 4 given bands)
    return _case(
        {
            "task": "classification", "backbone": "prithvi_swin_B", "in_channels": 4, "num_classes": 3,
            "pretrained": False, "backbone_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW"],
            "backbone_depths": [1, 1, 2, 1], "backbone_embed_dim": 32, "backbone_num_heads": [2, 2, 4, 4],
            "backbone_window_size": 4,
        },
        [1, 4, 64, 64],
        "MMSegSwinTransformer (TerraTorch): the last stage's normed NHWC output -> ClassifierHead (avg pool, "
        "head.fc).",
    )


CASES["timm_factory_prithvi_swin_B"] = case_timm_factory_prithvi_swin_b
