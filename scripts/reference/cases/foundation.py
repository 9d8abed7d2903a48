"""Cases of the foundation: resnet backbones, smp Unet, mmseg FCNHead, the first terratorch
decoders/necks, the three heads and the factory in all three tasks."""

from __future__ import annotations

import json
from typing import Callable

from cases._smp import smp_case
from cases._factory import factory_case
from refkit import (
    BACKBONE_REGISTRY,
    DECODER_REGISTRY,
    MODEL_FACTORY_REGISTRY,
    NECK_REGISTRY,
    Case,
    fwd_list,
    fwd_model_output,
    fwd_single,
)

# ---------------------------------------------------------------------------
# Cases: backbones
# ---------------------------------------------------------------------------
def _timm_resnet(arch: str, in_chans: int) -> Case:
    args = {"features_only": True, "pretrained": False, "in_chans": in_chans}
    model = BACKBONE_REGISTRY.build(f"timm_{arch}", **args)
    return Case(
        registry="backbone",
        name=f"timm_{arch}",
        channels=None,
        args=args,
        reference=(
            f'BACKBONE_REGISTRY.build("timm_{arch}", features_only=True, pretrained=False, in_chans={in_chans}) '
            f'== TimmBackboneWrapper(timm.create_model("{arch}", features_only=True, pretrained=False, '
            f"in_chans={in_chans})); forward(x) -> list of 5 feature maps (strides 2,4,8,16,32). "
            "The wrapper copies the timm FeatureListNet's child modules, so state_dict keys are "
            "conv1./bn1./layer1-4. (no fc)."
        ),
        model=model,
        input_shapes=[[1, in_chans, 64, 64]],
        forward=fwd_single,
        extra_meta={"out_channels": list(model.out_channels)},
    )


def case_timm_resnet18() -> Case:
    return _timm_resnet("resnet18", 3)


def case_timm_resnet34() -> Case:
    return _timm_resnet("resnet34", 6)


# ---------------------------------------------------------------------------
# Cases: decoders
# ---------------------------------------------------------------------------
RESNET18_64_SHAPES = [[1, 64, 32, 32], [1, 64, 16, 16], [1, 128, 8, 8], [1, 256, 4, 4], [1, 512, 2, 2]]


def _smp(name: str, channels: list[int], shapes: list[list[int]], **kwargs) -> Case:
    return smp_case(
        name,
        channels,
        shapes,
        "{kw}, aux_params=None). forward(list of len(channels) maps); "
        "UnetDecoder drops features[0] (its spatial size is only used as the final upsampling target).",
        default_error_key="default_decoder_channels_error",
        **kwargs,
    )


def case_smp_Unet() -> Case:
    # The default decoder_channels (256,128,64,32,16) has 5 entries but the
    # wrapper sets encoder_depth = len(channels)-1 = 4, so the default raises.
    # Pass the first 4 default entries.
    return _smp("Unet", [64, 64, 128, 256, 512], RESNET18_64_SHAPES, decoder_channels=[256, 128, 64, 32])


def case_smp_Unet_tiny() -> Case:
    # Small enough for a weights.safetensors file (BatchNorm-heavy smp decoder).
    return _smp(
        "Unet",
        [16, 16, 32, 64, 128],
        [[1, 16, 32, 32], [1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]],
        decoder_channels=[16, 16, 8, 8],
    )


def case_mmseg_FCNHead() -> Case:
    args = {"num_classes": 3, "channels": 16}
    model = DECODER_REGISTRY.build("mmseg_FCNHead", [32], **args)
    try:
        DECODER_REGISTRY.build("mmseg_FCNHead", [32], channels=16)
        missing_err = None
    except Exception as e:  # noqa: BLE001
        missing_err = f"{type(e).__name__}: {e}"
    return Case(
        registry="decoder",
        name="mmseg_FCNHead",
        channels=[32],
        args=args,
        reference=(
            'DECODER_REGISTRY.build("mmseg_FCNHead", [32], num_classes=3, channels=16) -> '
            "MMsegDecoderWrapper(mmseg.models.decode_heads.FCNHead(in_channels=32 (a 1-element channel list "
            "is unwrapped to an int), num_classes=3, channels=16)); defaults: num_convs=2, kernel_size=3, "
            "concat_input=True, dilation=1, dropout_ratio=0.1 (Dropout2d, no-op in eval), norm_cfg=None "
            "(convs have bias), act ReLU, in_index=-1, input_transform=None. forward(list) -> conv_seg "
            "logits at the selected map's resolution (no upsampling). includes_head=True."
        ),
        model=model,
        input_shapes=[[1, 32, 8, 8]],
        forward=fwd_list,
        extra_meta={"missing_num_classes_error": missing_err, "includes_head": True},
    )


def case_terratorch_FCNDecoder() -> Case:
    args = {"channels": 16}
    channels = [32, 64, 128]
    model = DECODER_REGISTRY.build("FCNDecoder", channels, **args)
    return Case(
        registry="decoder",
        name="FCNDecoder",
        channels=channels,
        args=args,
        reference=(
            'DECODER_REGISTRY.build("FCNDecoder", [32, 64, 128], channels=16) -> '
            "terratorch.models.decoders.FCNDecoder(embed_dim=[32,64,128], channels=16, num_convs=4, "
            "in_index=-1): takes x[-1]; 4 x (ConvTranspose2d(k2,s2) -> Conv2d(3x3,bias) -> "
            "LayerNorm over channels (eps 1e-6) -> GELU); each block upsamples x2."
        ),
        model=model,
        input_shapes=[[1, 32, 16, 16], [1, 64, 8, 8], [1, 128, 4, 4]],
        forward=fwd_list,
        extra_meta={"out_channels": model.out_channels, "includes_head": False},
    )


def case_terratorch_IdentityDecoder() -> Case:
    channels = [32, 64, 128]
    model = DECODER_REGISTRY.build("IdentityDecoder", channels)
    return Case(
        registry="decoder",
        name="IdentityDecoder",
        channels=channels,
        args={},
        reference=(
            'DECODER_REGISTRY.build("IdentityDecoder", [32, 64, 128]) -> IdentityDecoder(embed_dim=[32,64,128], '
            "out_index=-1): returns x[-1]; out_channels = embed_dim[-1]."
        ),
        model=model,
        input_shapes=[[1, 32, 16, 16], [1, 64, 8, 8], [1, 128, 4, 4]],
        forward=fwd_list,
        extra_meta={"out_channels": model.out_channels, "includes_head": False},
    )


# ---------------------------------------------------------------------------
# Cases: necks
# ---------------------------------------------------------------------------
def case_terratorch_SelectIndices() -> Case:
    channels = [16, 32, 64, 128]
    args = {"indices": [1, 3]}
    model = NECK_REGISTRY.build("SelectIndices", channels, **args)
    return Case(
        registry="neck",
        name="SelectIndices",
        channels=channels,
        args=args,
        reference=(
            'NECK_REGISTRY.build("SelectIndices", [16, 32, 64, 128], indices=[1, 3]) -> '
            "SelectIndices(channel_list, indices): forward(features) = [features[i] for i in indices]; "
            "process_channel_list(cl) = [cl[i] for i in indices]. No parameters."
        ),
        model=model,
        input_shapes=[[1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]],
        forward=fwd_list,
        extra_meta={"out_channels": model.process_channel_list(channels)},
    )


# ---------------------------------------------------------------------------
# Cases: heads (not registry entries in TerraTorch; built directly)
# ---------------------------------------------------------------------------
def case_head_SegmentationHead() -> Case:
    from terratorch.models.heads import SegmentationHead

    args = {"in_channels": 16, "num_classes": 3, "channel_list": [8], "dropout": 0.1}
    model = SegmentationHead(**args)
    return Case(
        registry="head",
        name="SegmentationHead",
        channels=None,
        args=args,
        reference=(
            "terratorch.models.heads.SegmentationHead(in_channels=16, num_classes=3, channel_list=[8], "
            "dropout=0.1): head = Sequential(Sequential(Sequential(Conv2d(16,8,3,pad1,bias), ReLU)), "
            "Dropout(0.1), Conv2d(8,3,1))."
        ),
        model=model,
        input_shapes=[[1, 16, 8, 8]],
        forward=fwd_single,
    )


def case_head_RegressionHead() -> Case:
    from terratorch.models.heads import RegressionHead

    args = {"in_channels": 16, "channel_list": [8]}
    model = RegressionHead(**args)
    return Case(
        registry="head",
        name="RegressionHead",
        channels=None,
        args=args,
        reference=(
            "terratorch.models.heads.RegressionHead(in_channels=16, channel_list=[8]) (num_outputs=1, "
            "final_act=None, learned_upscale_layers=0, batch_norm=True (unused), dropout=0): head = "
            "Sequential(Sequential(Sequential(Conv2d(16,8,3,pad1,no bias), BatchNorm2d(8), ReLU)), "
            "Dropout2d(0), Conv2d(8,1,1)); final_act Identity. Output keeps the channel dim [B,1,H,W]."
        ),
        model=model,
        input_shapes=[[1, 16, 8, 8]],
        forward=fwd_single,
    )


def case_head_ClassificationHead() -> Case:
    from terratorch.models.heads import ClassificationHead

    # ClassificationHead is a deprecated alias of ScalarHead, whose arguments are
    # (in_dim, num_outputs=None, num_classes=None, dim_list=None, dropout=0, linear_after_pool=False).
    args = {"in_dim": 16, "num_classes": 4, "dim_list": [8], "dropout": 0.1}
    model = ClassificationHead(**args)
    return Case(
        registry="head",
        name="ClassificationHead",
        channels=None,
        args=args,
        reference=(
            "terratorch.models.heads.ClassificationHead(in_dim=16, num_classes=4, dim_list=[8], dropout=0.1) "
            "(deprecated subclass of ScalarHead; linear_after_pool=False): x[B,C,H,W] -> reshape(B,C,H*W)"
            ".permute(0,2,1) -> head = Sequential(Sequential(Sequential(Linear(16,8), ReLU)), Dropout(0.1), "
            "Linear(8,4)) -> mean over tokens -> [B,4]."
        ),
        model=model,
        input_shapes=[[1, 16, 4, 4]],
        forward=fwd_single,
    )


# ---------------------------------------------------------------------------
# Cases: full models through EncoderDecoderFactory
# ---------------------------------------------------------------------------
def _factory(task: str, model_args: dict, lightning_task: str | None, explanation: str) -> Case:
    case = factory_case(
        model_args, [[1, 3, 64, 64]], f"forward(x).output. {explanation}", forward=fwd_model_output,
        lightning_task=lightning_task,
    )
    model = case.model
    case.extra_meta.update(
        {
            "head_keys": [k for k in model.state_dict() if k.startswith("head.")],
            "encoder_out_channels": list(model.encoder.out_channels),
            "decoder_out_channels": getattr(model.decoder, "out_channels", None),
            "rescale": getattr(model, "rescale", None),
        }
    )
    return case


def case_factory_segmentation() -> Case:
    model_args = {
        "task": "segmentation",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "backbone_in_chans": 3,
        "decoder": "smp_Unet",
        # flat "decoder_" prefix -> decoder_kwargs {"decoder_channels": [...]}; the smp default
        # (5 entries) fails because encoder_depth = len(channel_list)-1 = 4.
        "decoder_decoder_channels": [256, 128, 64, 32],
        "num_classes": 3,
        "rescale": True,
    }
    return _factory(
        "segmentation",
        model_args,
        "terratorch.tasks.SemanticSegmentationTask",
        "PixelWiseModel: encoder=TimmBackboneWrapper(resnet18 features_only) -> neck=identity "
        "(encoder.prepare_features_for_image_model) -> decoder=SMPDecoderWrapper(Unet decoder, out 32ch at "
        "32x32) -> head=SegmentationHead(32, num_classes=3) (smp registry includes_head=False, so num_classes "
        "goes to the head) -> bilinear resize to 64x64 (rescale=True, align_corners=None/False) -> "
        "squeeze(1) only if 1 channel -> center_crop to input size. No padding (resnet has no patch_size).",
    )


def case_factory_regression() -> Case:
    model_args = {
        "task": "regression",
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_features_only": True,
        "necks": [{"name": "SelectIndices", "indices": [2, 4]}],
        "decoder": "FCNDecoder",
        "decoder_channels": 32,
        "head_channel_list": [16],
        "rescale": True,
    }
    return _factory(
        "regression",
        model_args,
        None,
        "PixelWiseModel: encoder=resnet18 features [64,64,128,256,512] -> neck=NeckSequential("
        "SelectIndices([2,4])) -> channel_list [128,512] -> FCNDecoder(embed_dim=[128,512], channels=32) takes "
        "the 512ch 2x2 map -> 32ch 32x32 -> RegressionHead(32, channel_list=[16]) (num_outputs default 1) -> "
        "bilinear resize to 64x64 -> squeeze(1) -> [1,64,64].",
    )


def case_factory_classification() -> Case:
    model_args = {
        "task": "classification",
        "backbone": "timm_resnet18",
        # dict form instead of flat backbone_ prefixes (both are accepted by the factory)
        "backbone_kwargs": {"pretrained": False, "features_only": True},
        "decoder": "IdentityDecoder",
        "num_classes": 5,
    }
    return _factory(
        "classification",
        model_args,
        None,
        "ScalarOutputModel: encoder=resnet18 features -> neck identity -> IdentityDecoder (last map, 512ch "
        "2x2) -> head=ScalarHead(512, num_classes=5) (Linear per token, then mean over tokens) -> [1,5].",
    )


CASES: dict[str, Callable[[], Case]] = {
    "timm_resnet18": case_timm_resnet18,
    "timm_resnet34": case_timm_resnet34,
    "smp_Unet": case_smp_Unet,
    "smp_Unet_tiny": case_smp_Unet_tiny,
    "mmseg_FCNHead": case_mmseg_FCNHead,
    "terratorch_FCNDecoder": case_terratorch_FCNDecoder,
    "terratorch_IdentityDecoder": case_terratorch_IdentityDecoder,
    "terratorch_SelectIndices": case_terratorch_SelectIndices,
    "head_SegmentationHead": case_head_SegmentationHead,
    "head_RegressionHead": case_head_RegressionHead,
    "head_ClassificationHead": case_head_ClassificationHead,
    "factory_segmentation": case_factory_segmentation,
    "factory_regression": case_factory_regression,
    "factory_classification": case_factory_classification,
}


