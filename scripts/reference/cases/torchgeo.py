"""Cases of the torchgeo-weight backbones TerraTorch 1.2.11 registers itself
(terratorch/models/backbones/torchgeo_resnet.py and torchgeo_swin_satlas.py): the
ssl4eol_/ssl4eos12_/seco_/fmow_/satlas_ ResNets (timm ResNet-18/50/152 through torchgeo's
resnet18/50/152, wrapped in ResNetEncoderWrapper) and the satlas_swin_t/b_ backbones
(torchvision Swin Transformer V2 with an `in_chans` patch embedding, wrapped in
SwinEncoderWrapper).

Every registered name has its own case, built as TerraTorch builds it:
BACKBONE_REGISTRY.build("terratorch_<name>", model_bands=[...], pretrained=False, ...).
The ResNet-50/152 cases other than one per architecture shrink the network through timm's
own `layers` keyword (forwarded by TerraTorch and torchgeo to timm.create_model); the Swin
cases are full size (torchvision's swin_v2_* refuse `depths`)."""

from __future__ import annotations

from typing import Callable

import torch

from refkit import BACKBONE_REGISTRY, Case, fwd_single

S2_ALL = ["COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3", "NIR_BROAD",
          "NIR_NARROW", "WATER_VAPOR", "CIRRUS", "SWIR_1", "SWIR_2"]
RGB = ["RED", "GREEN", "BLUE"]
HLS6 = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]
S2_MS = ["RED", "GREEN", "BLUE", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3", "NIR_BROAD", "SWIR_1", "SWIR_2"]
S1 = ["VV", "VH"]


def _case(name: str, hw: tuple[int, int], note: str, extra: dict | None = None, **args) -> Case:
    model = BACKBONE_REGISTRY.build(f"terratorch_{name}", pretrained=False, **args)
    in_chans = args.get("in_chans", len(args["model_bands"]))
    kw = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return Case(
        registry="backbone",
        name=f"terratorch_{name}",
        channels=None,
        args={**args, "pretrained": False},
        reference=f'BACKBONE_REGISTRY.build("terratorch_{name}", pretrained=False, {kw}); forward(x) -> list. '
        + note,
        model=model,
        input_shapes=[[1, in_chans, hw[0], hw[1]]],
        forward=fwd_single,
        extra_meta={"out_channels": list(model.out_channels), **(extra or {})},
    )


RESNET_NOTE = (
    "ResNetEncoderWrapper over timm.create_model(resnet*, in_chans=len(model_bands), ...) (torchgeo "
    "resnet*(weights=None)): keys resnet_model.* with the classifier fc; forward_intermediates -> 5 maps "
    "(stem, layer1..4), kept where the index is in out_indices (or the last for -1), in feature order."
)
SWIN_NOTE = (
    "SwinEncoderWrapper over torchvision swin_v2_*(**kwargs) whose features.0.0 is replaced by "
    "Conv2d(in_chans, embed_dim, 4, 4): keys swin_model.*; the outputs of features[i] (NHWC) for i in "
    "out_indices (or the last for -1)."
)


def _resnet(name: str, bands: list[str], **args) -> Callable[[], Case]:
    return lambda: _case(name, (32, 32), RESNET_NOTE, model_bands=bands, **args)


def _default_counts(builder: str) -> dict:
    """Parameter and state_dict counts of the unshrunk network (checked without a forward)."""
    m = BACKBONE_REGISTRY.build(builder, model_bands=RGB, pretrained=False)
    sd = m.state_dict()
    return {
        "default_n_params": sum(p.numel() for p in m.parameters()),
        # num_batches_tracked left out: tch's BatchNorm has none (it is unused in eval)
        "default_n_state_dict_entries": len([k for k in sd if not k.endswith("num_batches_tracked")]),
        "default_out_channels": list(m.out_channels),
    }


def _resnet152(name: str, bands: list[str], with_defaults: bool = False, **args) -> Callable[[], Case]:
    def make() -> Case:
        extra = _default_counts(f"terratorch_{name}") if with_defaults else None
        return _case(name, (32, 32), RESNET_NOTE, extra=extra, model_bands=bands, **args)

    return make


def _swin_buffers(model) -> dict:
    """The real (not synthetic) position buffers of the first and a shifted block, before apply_synth
    overwrites them: the Rust side checks that it computes the same ones."""
    out = {}
    for blk in ("0", "1"):
        attn = model.swin_model.features[1][int(blk)].attn
        idx = attn.relative_position_index
        tab = attn.relative_coords_table
        out[f"block{blk}_relative_position_index_sum"] = int(idx.sum())
        out[f"block{blk}_relative_position_index_head"] = [int(v) for v in idx[:40]]
        out[f"block{blk}_relative_coords_table_abs_sum"] = float(tab.double().abs().sum())
        out[f"block{blk}_relative_coords_table_head"] = [float(v) for v in tab.reshape(-1)[:40]]
    return out


def _swin(name: str, bands: list[str], hw: tuple[int, int] = (64, 64), buffers: bool = False,
          **args) -> Callable[[], Case]:
    def make() -> Case:
        c = _case(name, hw, SWIN_NOTE, model_bands=bands, **args)
        if buffers:
            c.extra_meta.update(_swin_buffers(c.model))
        return c

    return make


SMALL = {"layers": [1, 1, 1, 1]}

CASES: dict[str, Callable[[], Case]] = {
    # ResNet-18 (BasicBlock): default size
    "terratorch_ssl4eol_resnet18_landsat_tm_toa_moco": _resnet("ssl4eol_resnet18_landsat_tm_toa_moco", S2_ALL[:7]),
    "terratorch_ssl4eol_resnet18_landsat_tm_toa_simclr": _resnet(
        "ssl4eol_resnet18_landsat_tm_toa_simclr", RGB, out_indices=[0, 1, 2, 3, 4]),
    "terratorch_ssl4eol_resnet18_landsat_etm_toa_moco": _resnet(
        "ssl4eol_resnet18_landsat_etm_toa_moco", HLS6, out_indices=[3, 1]),
    "terratorch_ssl4eol_resnet18_landsat_etm_toa_simclr": _resnet(
        "ssl4eol_resnet18_landsat_etm_toa_simclr", HLS6, in_chans=4, out_indices=[2, -1]),
    "terratorch_ssl4eol_resnet18_landsat_etm_sr_moco": _resnet(
        "ssl4eol_resnet18_landsat_etm_sr_moco", HLS6, num_classes=7),
    "terratorch_ssl4eol_resnet18_landsat_etm_sr_simclr": _resnet(
        "ssl4eol_resnet18_landsat_etm_sr_simclr", HLS6, num_classes=0, out_indices=[0]),
    "terratorch_ssl4eol_resnet18_landsat_oli_tirs_toa_moco": _resnet(
        "ssl4eol_resnet18_landsat_oli_tirs_toa_moco", HLS6, out_indices=[1, 3, 5, 7]),
    "terratorch_ssl4eol_resnet18_landsat_oli_tirs_toa_simclr": _resnet(
        "ssl4eol_resnet18_landsat_oli_tirs_toa_simclr", S2_ALL[:11], global_pool="catavgmax", num_classes=5),
    "terratorch_ssl4eol_resnet18_landsat_oli_sr_moco": _resnet(
        "ssl4eol_resnet18_landsat_oli_sr_moco", S2_ALL[:7], drop_rate=0.2, drop_path_rate=0.1),
    "terratorch_ssl4eol_resnet18_landsat_oli_sr_simclr": _resnet(
        "ssl4eol_resnet18_landsat_oli_sr_simclr", S2_ALL[:7], zero_init_last=False, out_indices=[4, 2]),
    "terratorch_ssl4eos12_resnet18_sentinel2_all_moco": _resnet(
        "ssl4eos12_resnet18_sentinel2_all_moco", S2_ALL, out_indices=[1, 2]),
    "terratorch_ssl4eos12_resnet18_sentinel2_rgb_moco": _resnet("ssl4eos12_resnet18_sentinel2_rgb_moco", RGB),
    "terratorch_seco_resnet18_sentinel2_rgb_seco": _resnet("seco_resnet18_sentinel2_rgb_seco", RGB, out_indices=[0, 4]),
    # ResNet-50 (Bottleneck): one at default size, the others with timm's layers=[1, 1, 1, 1]
    "terratorch_fmow_resnet50_fmow_rgb_gassl": _resnet(
        "fmow_resnet50_fmow_rgb_gassl", RGB, out_indices=[1, 2, 3, 4]),
    "terratorch_ssl4eol_resnet50_landsat_tm_toa_moco": _resnet(
        "ssl4eol_resnet50_landsat_tm_toa_moco", S2_ALL[:7], **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_tm_toa_simclr": _resnet(
        "ssl4eol_resnet50_landsat_tm_toa_simclr", HLS6, out_indices=[0, 2], **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_etm_toa_moco": _resnet(
        "ssl4eol_resnet50_landsat_etm_toa_moco", HLS6, layers=[1, 2, 1, 2], out_indices=[1, 4]),
    "terratorch_ssl4eol_resnet50_landsat_etm_toa_simclr": _resnet(
        "ssl4eol_resnet50_landsat_etm_toa_simclr", S2_ALL[:9], num_classes=3, **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_etm_sr_moco": _resnet(
        "ssl4eol_resnet50_landsat_etm_sr_moco", HLS6, out_indices=[1, 2, 3], **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_etm_sr_simclr": _resnet(
        "ssl4eol_resnet50_landsat_etm_sr_simclr", HLS6, global_pool="max", **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_oli_tirs_toa_moco": _resnet(
        "ssl4eol_resnet50_landsat_oli_tirs_toa_moco", S2_ALL[:11], out_indices=[1, 3, 5, 7], **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_oli_tirs_toa_simclr": _resnet(
        "ssl4eol_resnet50_landsat_oli_tirs_toa_simclr", S2_ALL[:11], **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_oli_sr_moco": _resnet(
        "ssl4eol_resnet50_landsat_oli_sr_moco", S2_ALL[:7], out_indices=[0, -1], **SMALL),
    "terratorch_ssl4eol_resnet50_landsat_oli_sr_simclr": _resnet(
        "ssl4eol_resnet50_landsat_oli_sr_simclr", S2_ALL[:7], in_chans=2, **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel1_all_decur": _resnet(
        "ssl4eos12_resnet50_sentinel1_all_decur", S1, out_indices=[2, 3], **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel1_all_moco": _resnet(
        "ssl4eos12_resnet50_sentinel1_all_moco", S1, **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel2_all_decur": _resnet(
        "ssl4eos12_resnet50_sentinel2_all_decur", S2_ALL, **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel2_all_dino": _resnet(
        "ssl4eos12_resnet50_sentinel2_all_dino", S2_ALL, out_indices=[0, 2, 4], **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel2_all_moco": _resnet(
        "ssl4eos12_resnet50_sentinel2_all_moco", S2_ALL, num_classes=0, **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel2_all_softcon": _resnet(
        "ssl4eos12_resnet50_sentinel2_all_softcon", S2_ALL, out_indices=[3], **SMALL),
    "terratorch_ssl4eos12_resnet50_sentinel2_rgb_moco": _resnet(
        "ssl4eos12_resnet50_sentinel2_rgb_moco", RGB, **SMALL),
    "terratorch_seco_resnet50_sentinel2_rgb_seco": _resnet("seco_resnet50_sentinel2_rgb_seco", RGB, **SMALL),
    "terratorch_satlas_resnet50_sentinel2_mi_ms_satlas": _resnet(
        "satlas_resnet50_sentinel2_mi_ms_satlas", S2_MS, out_indices=[1, 2, 3, 4], **SMALL),
    "terratorch_satlas_resnet50_sentinel2_mi_rgb_satlas": _resnet(
        "satlas_resnet50_sentinel2_mi_rgb_satlas", RGB, **SMALL),
    "terratorch_satlas_resnet50_sentinel2_si_ms_satlas": _resnet(
        "satlas_resnet50_sentinel2_si_ms_satlas", S2_MS, **SMALL),
    "terratorch_satlas_resnet50_sentinel2_si_rgb_satlas": _resnet(
        "satlas_resnet50_sentinel2_si_rgb_satlas", RGB, out_indices=[4, 1], **SMALL),
    # ResNet-152: shrunk through layers (the default size is counted, not run)
    "terratorch_satlas_resnet152_sentinel2_mi_ms": _resnet152(
        "satlas_resnet152_sentinel2_mi_ms", S2_MS, with_defaults=True, layers=[1, 2, 2, 1],
        out_indices=[1, 2, 3, 4]),
    "terratorch_satlas_resnet152_sentinel2_mi_rgb": _resnet152("satlas_resnet152_sentinel2_mi_rgb", RGB, **SMALL),
    "terratorch_satlas_resnet152_sentinel2_si_ms_satlas": _resnet152(
        "satlas_resnet152_sentinel2_si_ms_satlas", S2_MS, **SMALL),
    "terratorch_satlas_resnet152_sentinel2_si_rgb_satlas": _resnet152(
        "satlas_resnet152_sentinel2_si_rgb_satlas", RGB, out_indices=[2], **SMALL),
    # Swin V2 (torchvision), full size
    "terratorch_satlas_swin_t_sentinel2_mi_ms": _swin(
        "satlas_swin_t_sentinel2_mi_ms", S2_MS, hw=(32, 32), buffers=True, out_indices=[0, 1, 2, 3, 4, 5, 6, 7]),
    "terratorch_satlas_swin_t_sentinel2_mi_rgb": _swin("satlas_swin_t_sentinel2_mi_rgb", RGB, hw=(64, 40)),
    "terratorch_satlas_swin_t_sentinel2_si_ms": _swin(
        "satlas_swin_t_sentinel2_si_ms", S2_MS, hw=(48, 48), out_indices=[7, 1], mlp_ratio=2.0),
    "terratorch_satlas_swin_t_sentinel2_si_rgb": _swin(
        "satlas_swin_t_sentinel2_si_rgb", RGB, hw=(36, 44), num_classes=2, out_indices=[2, 3]),
    "terratorch_satlas_swin_b_sentinel2_mi_ms": _swin(
        "satlas_swin_b_sentinel2_mi_ms", S2_MS, hw=(48, 48), out_indices=[3, 5, 7]),
    "terratorch_satlas_swin_b_sentinel2_mi_rgb": _swin("satlas_swin_b_sentinel2_mi_rgb", RGB, hw=(32, 32)),
    "terratorch_satlas_swin_b_sentinel2_si_ms": _swin(
        "satlas_swin_b_sentinel2_si_ms", HLS6, hw=(32, 32), buffers=True, out_indices=[1, 3, 5, 7]),
    "terratorch_satlas_swin_b_sentinel2_si_rgb": _swin(
        "satlas_swin_b_sentinel2_si_rgb", RGB, hw=(32, 32), out_indices=[0, 2, 4, 6], in_chans=4),
    "terratorch_satlas_swin_b_naip_mi_rgb": _swin("satlas_swin_b_naip_mi_rgb", RGB, num_classes=10),
    "terratorch_satlas_swin_b_naip_si_rgb": _swin("satlas_swin_b_naip_si_rgb", RGB, hw=(48, 64)),
    "terratorch_satlas_swin_b_landsat_mi_ms": _swin("satlas_swin_b_landsat_mi_ms", S2_ALL[:11], hw=(40, 48), out_indices=[5]),
    "terratorch_satlas_swin_b_landsat_mi_rgb": _swin("satlas_swin_b_landsat_mi_rgb", RGB, mlp_ratio=1.0),
    "terratorch_satlas_swin_b_sentinel1_mi": _swin("satlas_swin_b_sentinel1_mi", S1, dropout=0.1,
                                                  attention_dropout=0.1),
    "terratorch_satlas_swin_b_sentinel1_si": _swin("satlas_swin_b_sentinel1_si", S1, out_indices=[6, 7]),
}


def case_factory_ssl4eol_resnet18_upernet() -> Case:
    """The model of TerraTorch's examples/confs/satlas_sen1floods11_uper.yaml, pretrained off."""
    from cases._factory import factory_case

    model_args = {
        "task": "segmentation",
        "decoder": "UperNetDecoder",
        "backbone_pretrained": False,
        "backbone": "ssl4eol_resnet18_landsat_oli_tirs_toa_moco",
        "decoder_channels": 256,
        "backbone_model_bands": HLS6,
        "backbone_out_indices": [1, 3, 5, 7],
        "num_classes": 2,
        "head_dropout": 0.1,
        "head_channel_list": [256],
        "necks": [{"name": "ReshapeTokensToImage"}],
    }
    return factory_case(
        model_args,
        [[1, 6, 32, 32]],
        "examples/confs/satlas_sen1floods11_uper.yaml with backbone_pretrained=False: ResNetEncoderWrapper keeps "
        "features 1 and 3 of out_indices [1, 3, 5, 7]; ReshapeTokensToImage leaves 4-D maps unchanged.",
    )


CASES["factory_ssl4eol_resnet18_upernet"] = case_factory_ssl4eol_resnet18_upernet
