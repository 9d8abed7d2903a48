"""Cases of TerraTorch 1.2.11's own UNet backbone (terratorch/models/backbones/unet.py, mmseg's UNet with
TerraTorch's BasicConvBlock / UpConvBlock / ConvModule) and its IdentityBackbone
(terratorch/models/backbones/identity_backbone.py), built as TerraTorch builds them:
BACKBONE_REGISTRY.build("terratorch_UNet", ...). The UNets are narrow (out_channels 4) so the fixtures
stay small; one case keeps the default 5 stages."""

from __future__ import annotations

from typing import Callable

from refkit import BACKBONE_REGISTRY, Case, fwd_single

UNET_NOTE = (
    "encoder stages of conv(no bias)-BN-ReLU ConvModules (max-pooling or a strided first conv), decoder "
    "UpConvBlocks (transposed-conv ConvModule x2 upsampling, cat [skip, up], BasicConvBlock); forward returns "
    "[bottleneck, decoder outputs deepest first]."
)


def _unet(hw: tuple[int, int], **args) -> Callable[[], Case]:
    def make() -> Case:
        model = BACKBONE_REGISTRY.build("terratorch_UNet", **args)
        kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return Case(
            registry="backbone",
            name="terratorch_UNet",
            channels=None,
            args=args,
            reference=f'BACKBONE_REGISTRY.build("terratorch_UNet", {kw}); forward(x) -> list. ' + UNET_NOTE,
            model=model,
            input_shapes=[[1, args.get("in_channels", 3), *hw]],
            forward=fwd_single,
            extra_meta={"out_channels": list(model.out_channels)},
        )

    return make


def case_identity() -> Case:
    model = BACKBONE_REGISTRY.build("terratorch_IdentityBackbone", out_channels=[6])
    return Case(
        registry="backbone",
        name="terratorch_IdentityBackbone",
        channels=None,
        args={"out_channels": [6]},
        reference='BACKBONE_REGISTRY.build("terratorch_IdentityBackbone", out_channels=[6]); forward(x) -> [x].',
        model=model,
        input_shapes=[[2, 6, 5, 7]],
        forward=fwd_single,
        extra_meta={"out_channels": list(model.out_channels)},
    )


CASES: dict[str, Callable[[], Case]] = {
    "terratorch_UNet": _unet((32, 32), out_channels=4),
    "terratorch_UNet_strided_dilated": _unet(
        (16, 24), in_channels=5, out_channels=4, num_stages=3, strides=(1, 2, 1), enc_num_convs=(1, 2, 3),
        dec_num_convs=(2, 1), downsamples=(True, True), enc_dilations=(1, 2, 1), dec_dilations=(2, 1)),
    "terratorch_UNet_no_pool": _unet(
        (8, 8), in_channels=2, out_channels=4, num_stages=2, strides=(1, 2), enc_num_convs=(2, 2),
        dec_num_convs=(2,), downsamples=(False,), enc_dilations=(1, 1), dec_dilations=(1,)),
    "terratorch_IdentityBackbone": case_identity,
}


def _generic_unet(model_args: dict, hw: tuple[int, int], explanation: str) -> Callable[[], Case]:
    def make() -> Case:
        from refkit import MODEL_FACTORY_REGISTRY, fwd_model_output

        model = MODEL_FACTORY_REGISTRY.build("GenericUnetModelFactory").build_model(**dict(model_args))
        kw = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
        return Case(
            registry="model",
            name="GenericUnetModelFactory",
            channels=None,
            args=model_args,
            reference=f'MODEL_FACTORY_REGISTRY.build("GenericUnetModelFactory").build_model({kw}). ' + explanation,
            model=model,
            input_shapes=[[1, model_args.get("backbone_in_channels", 3), *hw]],
            forward=fwd_model_output,
            extra_meta={"model_class": type(model).__name__,
                        "state_dict_prefixes": sorted({k.split(".")[0] + "." for k in model.state_dict()})},
            factory_config={"model_factory": "GenericUnetModelFactory", "model_args": model_args},
        )

    return make


CASES["factory_generic_unet_segmentation"] = _generic_unet(
    {"task": "segmentation", "backbone": "UNet", "backbone_in_channels": 4, "backbone_out_channels": 4,
     "backbone_num_stages": 3, "backbone_strides": [1, 1, 1], "backbone_enc_num_convs": [2, 2, 2],
     "backbone_dec_num_convs": [2, 2], "backbone_downsamples": [True, True], "backbone_enc_dilations": [1, 1, 1],
     "backbone_dec_dilations": [1, 1], "in_channels": 4, "pretrained": False, "num_classes": 3},
    (16, 16),
    "GenericUnetModelWrapper (keys unet_model.*) around terratorch.models.backbones.UNet(**backbone_*); output: "
    "the UNet's last (finest) map; in_channels, pretrained and num_classes are not used.",
)
CASES["factory_generic_unet_regression"] = _generic_unet(
    {"task": "regression", "backbone": "UNet", "backbone_in_channels": 2, "backbone_out_channels": 1,
     "backbone_num_stages": 2, "backbone_strides": [1, 2], "backbone_enc_num_convs": [1, 2],
     "backbone_dec_num_convs": [1], "backbone_downsamples": [True], "backbone_enc_dilations": [1, 1],
     "backbone_dec_dilations": [2], "regression_relu": False},
    (8, 12),
    "GenericUnetModelWrapper around a 2-stage UNet with out_channels=1: for regression the single channel of the "
    "last map is squeezed ([B, H, W]).",
)
