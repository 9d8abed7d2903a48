"""SMPModelFactory cases: whole segmentation_models_pytorch models (smp's ResNet encoders, each
model's decoder and SegmentationHead) in TerraTorch's SMPModelWrapper. SMPModelFactory supports
one task, segmentation; every model class the smp plugin builds whole has a case, plus the two
corpus configs (burnscars_smp.yaml, test_smp_resnet34_model_factory_config.yaml) with pretrained
off, dilated encoders, a shallower encoder, ResNeXt, smp_aux_params, the wrapper's rescale, and
the arguments TerraTorch swallows."""

from __future__ import annotations

import json

from refkit import MODEL_FACTORY_REGISTRY, Case, fwd_model_output

HLS6 = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]


def smp_factory_case(model_args: dict, input_shape: list[int], explanation: str, lightning: bool = False,
                     extra: dict | None = None) -> Case:
    model = MODEL_FACTORY_REGISTRY.build("SMPModelFactory").build_model(**json.loads(json.dumps(model_args)))
    kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    sd = model.state_dict()
    return Case(
        registry="model",
        name="SMPModelFactory",
        channels=None,
        args=model_args,
        reference=f'MODEL_FACTORY_REGISTRY.build("SMPModelFactory").build_model({kw}). {explanation}',
        model=model,
        input_shapes=[input_shape],
        forward=fwd_model_output,
        extra_meta={
            "model_class": type(model).__name__,
            "smp_model_class": type(model.smp_model).__name__,
            "state_dict_prefixes": sorted({".".join(k.split(".")[:2]) + "." for k in sd}),
            "encoder_out_channels": list(model.smp_model.encoder.out_channels),
            "encoder_output_stride": model.smp_model.encoder.output_stride,
            "classification_head": model.smp_model.classification_head is not None,
            **(extra or {}),
        },
        factory_config={"model_factory": "SMPModelFactory", "model_args": model_args},
        lightning_task="terratorch.tasks.SemanticSegmentationTask" if lightning else None,
    )


def base(model: str, backbone: str = "resnet18", **kw) -> dict:
    return {"task": "segmentation", "model": model, "backbone": backbone, "bands": HLS6, "num_classes": 2,
            "pretrained": False, **kw}


def case_smp_factory_burnscars() -> Case:
    """examples/confs/burnscars_smp.yaml with pretrained off."""
    args = {"task": "segmentation", "model": "Unet", "backbone": "resnet50", "pretrained": False, "in_channels": 6,
            "bands": HLS6, "num_classes": 2}
    return smp_factory_case(args, [1, 6, 32, 32], "smp.Unet(resnet50, in_channels=6, classes=2), the burnscars config.",
                            lightning=True)


def case_smp_factory_resnet34_corpus() -> Case:
    """integrationtests/configs/test_smp_resnet34_model_factory_config.yaml with pretrained off."""
    args = {"task": "segmentation", "model": "Unet", "backbone": "resnet34", "num_classes": 2, "pretrained": False,
            "bands": ["RED", "GREEN", "BLUE"]}
    return smp_factory_case(args, [1, 3, 32, 32], "smp.Unet(resnet34), in_channels = len(bands) = 3.", lightning=True)


def case_smp_factory_unet_ignored() -> Case:
    args = base("Unet", smp_decoder_channels=[32, 32, 32, 16, 16], smp_decoder_attention_type="scse",
                decoder_channels=[8, 8, 8, 8, 8], rescale=False, backbone_out_indices=[1, 2], aux_classes=3,
                head_dropout=0.5, smp_not_an_smp_arg=1)
    return smp_factory_case(
        args, [1, 6, 32, 32],
        "Only smp_* arguments reach smp.Unet: decoder_channels, rescale, backbone_*, aux_* and head_* are swallowed by "
        "the factory, and smp_not_an_smp_arg by smp's get_encoder; the output equals the model without them.")


def case_smp_factory_unet_depth3() -> Case:
    args = base("Unet", smp_encoder_depth=3, smp_decoder_channels=[32, 16, 8], smp_decoder_interpolation="bilinear")
    return smp_factory_case(args, [1, 6, 32, 32], "Unet on a depth-3 ResNet (maps 1, 1/2, 1/4, 1/8).")


def case_smp_factory_unet_rescale() -> Case:
    """Unet accepts sizes its encoder cannot halve evenly; the wrapper resizes nothing then, and FPN does."""
    args = base("Unet", smp_decoder_channels=[16, 16, 8, 8, 8], in_channels=4, bands=[1, 2, 3, 4])
    return smp_factory_case(args, [1, 4, 40, 56], "Unet takes a 40x56 input (no divisibility check); int bands, "
                            "in_channels given.")


def case_smp_factory_fpn_aux() -> Case:
    args = base("FPN", smp_decoder_pyramid_channels=32, smp_decoder_segmentation_channels=32,
                smp_aux_params={"classes": 3, "dropout": 0.1}, bands=["RED", "NIR_NARROW"])
    return smp_factory_case(args, [1, 2, 64, 64],
                            "FPN with smp's ClassificationHead (smp_aux_params): its keys are in the state_dict, its "
                            "labels are dropped by SMPModelWrapper. 64x64: GroupNorm needs more than one value per channel.")


def case_smp_factory_deeplabv3() -> Case:
    args = base("DeepLabV3", smp_decoder_channels=32, smp_decoder_atrous_rates=[2, 4, 6])
    return smp_factory_case(args, [1, 6, 32, 32], "DeepLabV3: encoder dilated to output stride 8, head upsampling 8.")


def case_smp_factory_deeplabv3plus_resnext() -> Case:
    args = base("DeepLabV3Plus", "resnext50_32x4d", smp_decoder_channels=32, smp_decoder_atrous_rates=[2, 4, 6])
    return smp_factory_case(args, [1, 6, 32, 32], "DeepLabV3Plus on ResNeXt-50 32x4d, output stride 16 (layer4 dilated).")


def case_smp_factory_pspnet_rescale() -> Case:
    args = base("PSPNet", smp_psp_out_channels=32, smp_upsampling=4)
    return smp_factory_case(args, [1, 6, 32, 32], "PSPNet (depth 3) with upsampling 4: the mask is 16x16 and "
                            "SMPModelWrapper resizes it to 32x32 (bilinear).")


def case_smp_factory_pan() -> Case:
    args = base("PAN", smp_decoder_channels=16, bands=["RED"], num_classes=1)
    return smp_factory_case(args, [1, 1, 128, 128], "PAN: encoder at output stride 16; its feature pyramid attention "
                            "halves the deepest (8x8) map three times, hence 128x128; one band, one class.")


def case_smp_factory_linknet() -> Case:
    return smp_factory_case(base("Linknet"), [1, 6, 32, 32], "Linknet: fixed 32 prefinal channels, 1x1 head.")


def case_smp_factory_manet() -> Case:
    args = base("MAnet", smp_decoder_channels=[32, 16, 16, 8, 8], smp_decoder_pab_channels=8)
    return smp_factory_case(args, [1, 6, 32, 32], "MAnet.")


def case_smp_factory_unetplusplus() -> Case:
    args = base("UnetPlusPlus", smp_decoder_channels=[32, 16, 16, 8, 8])
    return smp_factory_case(args, [1, 6, 32, 32], "UnetPlusPlus (nested dense skips).")


def case_smp_factory_upernet() -> Case:
    args = base("UPerNet", smp_decoder_channels=32)
    return smp_factory_case(args, [1, 6, 32, 32], "UPerNet, head upsampling 4.")


def case_smp_factory_segformer() -> Case:
    args = base("Segformer", smp_decoder_segmentation_channels=32, smp_activation="sigmoid")
    return smp_factory_case(args, [1, 6, 32, 32], "Segformer decoder on a ResNet, with a sigmoid head activation.")


CASES = {
    "smp_factory_burnscars": case_smp_factory_burnscars,
    "smp_factory_resnet34_corpus": case_smp_factory_resnet34_corpus,
    "smp_factory_unet_ignored": case_smp_factory_unet_ignored,
    "smp_factory_unet_depth3": case_smp_factory_unet_depth3,
    "smp_factory_unet_rescale": case_smp_factory_unet_rescale,
    "smp_factory_fpn_aux": case_smp_factory_fpn_aux,
    "smp_factory_deeplabv3": case_smp_factory_deeplabv3,
    "smp_factory_deeplabv3plus_resnext": case_smp_factory_deeplabv3plus_resnext,
    "smp_factory_pspnet_rescale": case_smp_factory_pspnet_rescale,
    "smp_factory_pan": case_smp_factory_pan,
    "smp_factory_linknet": case_smp_factory_linknet,
    "smp_factory_manet": case_smp_factory_manet,
    "smp_factory_unetplusplus": case_smp_factory_unetplusplus,
    "smp_factory_upernet": case_smp_factory_upernet,
    "smp_factory_segformer": case_smp_factory_segformer,
}
