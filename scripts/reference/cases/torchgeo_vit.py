"""Cases of the torchgeo SSL4EO ViT-S/16 backbones TerraTorch 1.2.11 registers itself
(terratorch/models/backbones/torchgeo_vit.py): ViTEncoderWrapper over torchgeo's
vit_small_patch16_224 (timm.create_model("vit_small_patch16_224", in_chans=len(model_bands), ...)).

Every registered name has its own case, built as TerraTorch builds it:
BACKBONE_REGISTRY.build("terratorch_<name>", model_bands=[...], pretrained=False, ...). The network
is shrunk through timm's own keywords (img_size, embed_dim, depth, num_heads, mlp_ratio, forwarded by
TerraTorch and torchgeo to timm.create_model), so that every fixture stays a few tens of KB; one case
records the parameter and state_dict counts of the full-size network (built, not run)."""

from __future__ import annotations

from typing import Callable

from refkit import BACKBONE_REGISTRY, Case, fwd_single

S2_ALL = ["COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "RED_EDGE_1", "RED_EDGE_2", "RED_EDGE_3", "NIR_BROAD",
          "NIR_NARROW", "WATER_VAPOR", "CIRRUS", "SWIR_1", "SWIR_2"]
RGB = ["RED", "GREEN", "BLUE"]
HLS6 = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]

NOTE = (
    "ViTEncoderWrapper over timm vit_small_patch16_224(in_chans=len(model_bands), **kwargs): keys vit_model.* "
    "with the classifier head; forward = forward_intermediates(x, intermediates_only=True): every block's patch "
    "tokens as NCHW maps, without the final norm; out_indices is stored and ignored."
)

SMALL = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _default_counts(builder: str) -> dict:
    """Parameter and state_dict counts of the full-size network (checked without a forward)."""
    m = BACKBONE_REGISTRY.build(builder, model_bands=RGB, pretrained=False)
    return {
        "default_n_params": sum(p.numel() for p in m.parameters()),
        "default_n_state_dict_entries": len(m.state_dict()),
        "default_out_channels": list(m.out_channels),
    }


def _vit(name: str, bands: list[str], with_defaults: bool = False, **args) -> Callable[[], Case]:
    def make() -> Case:
        kwargs = {**SMALL, **args}
        model = BACKBONE_REGISTRY.build(f"terratorch_{name}", pretrained=False, model_bands=bands, **kwargs)
        in_chans = kwargs.get("in_chans", len(bands))
        hw = kwargs["img_size"]
        kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        extra = {"out_channels": list(model.out_channels)}
        if with_defaults:
            extra.update(_default_counts(f"terratorch_{name}"))
        return Case(
            registry="backbone",
            name=f"terratorch_{name}",
            channels=None,
            args={"model_bands": bands, **kwargs, "pretrained": False},
            reference=f'BACKBONE_REGISTRY.build("terratorch_{name}", pretrained=False, model_bands={bands!r}, '
            f"{kw}); forward(x) -> list. " + NOTE,
            model=model,
            input_shapes=[[1, in_chans, hw, hw]],
            forward=fwd_single,
            extra_meta=extra,
        )

    return make


P = "ssl4eol_vit_small_patch16_224_"
Q = "ssl4eos12_vit_small_patch16_224_"

CASES: dict[str, Callable[[], Case]] = {
    f"terratorch_{P}landsat_tm_toa_moco": _vit(f"{P}landsat_tm_toa_moco", S2_ALL[:7], with_defaults=True),
    f"terratorch_{P}landsat_tm_toa_simclr": _vit(f"{P}landsat_tm_toa_simclr", RGB, out_indices=[0]),
    f"terratorch_{P}landsat_etm_toa_moco": _vit(f"{P}landsat_etm_toa_moco", HLS6, depth=3, num_classes=0),
    f"terratorch_{P}landsat_etm_toa_simclr": _vit(f"{P}landsat_etm_toa_simclr", HLS6, in_chans=4),
    f"terratorch_{P}landsat_etm_sr_moco": _vit(f"{P}landsat_etm_sr_moco", HLS6, mlp_ratio=2.0),
    f"terratorch_{P}landsat_etm_sr_simclr": _vit(f"{P}landsat_etm_sr_simclr", HLS6, patch_size=8),
    f"terratorch_{P}landsat_oli_tirs_toa_simclr": _vit(f"{P}landsat_oli_tirs_toa_simclr", S2_ALL[:11],
                                                      img_size=24, patch_size=8, num_classes=7),
    f"terratorch_{P}landsat_oli_sr_moco": _vit(f"{P}landsat_oli_sr_moco", S2_ALL[:7], drop_rate=0.1,
                                              drop_path_rate=0.1),
    f"terratorch_{P}landsat_oli_sr_simclr": _vit(f"{P}landsat_oli_sr_simclr", S2_ALL[:7], num_heads=4),
    f"terratorch_{Q}sentinel2_all_dino": _vit(f"{Q}sentinel2_all_dino", S2_ALL, img_size=16, patch_size=8,
                                              out_indices=[1, 3, 5, 7]),
    f"terratorch_{Q}sentinel2_all_moco": _vit(f"{Q}sentinel2_all_moco", S2_ALL, img_size=16, depth=1),
}
