"""Reference fixtures for `terrahost predict`: small GeoTIFF scenes (written with rasterio,
with a CRS, a transform and nodata), a tiny TerraTorch model with the synthetic weights,
and TerraTorch's own predict path on them: its datamodule (GenericNonGeo*DataModule:
img_grep, bands, nodata -> NaN -> no_data_replace, constant_scale, means/stds), its task's
predict_step (tiled_inference with the task's tiled_inference_parameters,
output_on_inference) and its writer (cli_tools.CustomWriter -> save_prediction), run by a
Lightning Trainer exactly as `terratorch predict` runs them.

Writes tests/fixtures/predict/<case>/: scenes/*.tif (the inputs), config.yaml (the
LightningCLI config terrahost reads), state_dict.json (keys, shapes, dtypes of the
synthetic weights, regenerated on the Rust side), expected/*.tif (TerraTorch's outputs)
and meta.json (what the test passes on the command line).

    .venv-ref/bin/python scripts/reference/predict_fixtures.py [--only CASE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refkit  # noqa: E402  (installs the mmcv stand-ins, imports terratorch)

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = refkit.REPO / "tests" / "fixtures" / "predict"

SEG_MODEL = {
    "backbone": "timm_resnet18",
    "backbone_pretrained": False,
    "backbone_in_chans": 6,
    "decoder": "FCNDecoder",
    "decoder_channels": 16,
    "num_classes": 3,
    "rescale": True,
}
REG_MODEL = {
    "backbone": "timm_resnet18",
    "backbone_pretrained": False,
    "backbone_in_chans": 6,
    "decoder": "FCNDecoder",
    "decoder_channels": 16,
    "rescale": True,
}
# A tiny Prithvi (3-D patch embedding) on 3 frames: the multi-temporal cases.
PRITHVI_T_MODEL = {
    "backbone": "prithvi_eo_tiny",
    "backbone_pretrained": False,
    "backbone_in_chans": 6,
    "backbone_num_frames": 3,
    "backbone_embed_dim": 16,
    "backbone_depth": 2,
    "backbone_num_heads": 2,
    "backbone_patch_size": [1, 4, 4],
    "backbone_img_size": 32,
    "decoder": "FCNDecoder",
    "decoder_channels": 16,
    "num_classes": 3,
    "rescale": True,
}
MEANS = [400.0, 700.0, 900.0, 2500.0, 1800.0, 1200.0]
STDS = [150.0, 200.0, 250.0, 600.0, 400.0, 300.0]


def scene(seed: int, bands: int, h: int, w: int, nodata_value: int | None) -> np.ndarray:
    """Smooth fields (they compress) with a little noise, uint16; nodata pixels in a
    block of every band and in scattered pixels of one band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((bands, h, w), dtype=np.uint16)
    for b in range(bands):
        f = (
            np.sin(xx / (7.0 + b) + b) * np.cos(yy / (9.0 + 2 * b) - b) * 0.5
            + np.sin((xx + yy) / (13.0 + b)) * 0.3
            + rng.normal(0, 0.05, size=(h, w))
        )
        mean, std = MEANS[b % len(MEANS)], STDS[b % len(STDS)]
        out[b] = np.clip(mean + std * 2.0 * f, 1, 60000).round().astype(np.uint16)
    if nodata_value is not None:
        out[:, 5:9, 10:17] = nodata_value
        idx = rng.choice(h * w, size=12, replace=False)
        out[2].reshape(-1)[idx] = nodata_value
    return out


def write_scene(path: Path, data: np.ndarray, nodata, crs: str | None, layout: dict):
    bands, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands,
        "dtype": str(data.dtype),
        "transform": from_origin(500000.0, 4100000.0, 30.0, 30.0),
        **({"crs": crs} if crs else {}),
        **({"nodata": nodata} if nodata is not None else {}),
        **layout,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def synth_state(model: torch.nn.Module) -> list:
    sd = model.state_dict()
    new = {k: refkit.synth(k, t) for k, t in sd.items()}
    model.load_state_dict(new, strict=True)
    return [[k, list(t.shape), str(t.dtype).replace("torch.", "")] for k, t in new.items()]


def run_terratorch(case_dir: Path, spec: dict) -> None:
    """TerraTorch's predict: datamodule -> task.predict_step -> CustomWriter."""
    import lightning.pytorch as pl
    from terratorch.cli_tools import CustomWriter
    from terratorch.datamodules import (
        GenericNonGeoPixelwiseRegressionDataModule,
        GenericNonGeoSegmentationDataModule,
    )
    from terratorch.tasks import PixelwiseRegressionTask, SemanticSegmentationTask

    model = spec["model"]
    data = spec["data"]
    # jsonargparse turns a YAML [a, b] interval into the tuple TerraTorch expects.
    py_data = {
        k: ([tuple(b) if isinstance(b, list) else b for b in v] if k.endswith("bands") else v)
        for k, v in data.items()
    }
    init = dict(model["init_args"])
    if spec["task"] == "segmentation":
        task = SemanticSegmentationTask(**init)
        dm = GenericNonGeoSegmentationDataModule(**py_data)
    else:
        task = PixelwiseRegressionTask(**init)
        dm = GenericNonGeoPixelwiseRegressionDataModule(**py_data)
    keys = synth_state(task.model)
    (case_dir / "state_dict.json").write_text(json.dumps(keys) + "\n")
    task.eval()
    expected = case_dir / "expected"
    shutil.rmtree(expected, ignore_errors=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[CustomWriter(output_dir=str(expected), write_interval="batch")],
    )
    trainer.out_dtype = spec["out_dtype"]
    trainer.predict(task, datamodule=dm, return_predictions=False)


def case_specs() -> dict[str, dict]:
    seg = "terratorch.tasks.SemanticSegmentationTask"
    reg = "terratorch.tasks.PixelwiseRegressionTask"
    common = {"batch_size": 1, "num_workers": 0, "predict_data_root": "scenes", "img_grep": "*.tif"}
    return {
        # Overlapping tiles averaged, reflect padding, a scene size (75 x 101) that is
        # not a multiple of the stride, nodata pixels, prediction + logits; a second scene
        # that fits one chip (TerraTorch skips tiling for it).
        "average": {
            "task": "segmentation",
            "out_dtype": "float32",
            "scenes": [("a.tif", 1, 75, 101, 0, "EPSG:32633", {"compress": "lzw"}),
                       ("small.tif", 2, 30, 28, 0, "EPSG:32633", {"compress": "lzw"})],
            "model": {"class_path": seg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": SEG_MODEL,
                "tiled_inference_parameters": {"crop": 32, "stride": 24, "delta": 4, "average_patches": True,
                                               "blend_overlaps": False, "batch_size": 5},
                "output_on_inference": ["prediction", "logits"]}},
            "data": {**common, "num_classes": 3, "means": MEANS, "stds": STDS, "no_data_replace": 0},
        },
        # The last chip in TerraTorch's order wins (average_patches false), no padding,
        # separate h/w crops and strides, means/stds from text files, tiled input layout.
        "last_wins": {
            "task": "segmentation",
            "out_dtype": "float32",
            "scenes": [("b.tif", 3, 70, 90, 0, "EPSG:4326",
                        {"compress": "deflate", "tiled": True, "blockxsize": 16, "blockysize": 16})],
            "model": {"class_path": seg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": SEG_MODEL,
                "tiled_inference_parameters": {"h_crop": 32, "w_crop": 40, "h_stride": 24, "w_stride": 28,
                                               "delta": 2, "average_patches": False, "blend_overlaps": False,
                                               "padding": False, "batch_size": 4},
                "output_on_inference": "logits"}},
            "data": {**common, "num_classes": 3, "means": "means.txt", "stds": "stds.txt", "no_data_replace": 0},
            "files": {"means.txt": "\n".join(str(m) for m in MEANS) + "\n",
                      "stds.txt": "\n".join(str(s) for s in STDS) + "\n"},
        },
        # Cosine-ramp blending, band selection by names, ints and an interval (7 bands in
        # the file, 6 to the model), probabilities.
        "blend": {
            "task": "segmentation",
            "out_dtype": "float32",
            "bands": 7,
            "scenes": [("c.tif", 4, 66, 83, 0, "EPSG:32610", {"compress": "lzw", "predictor": 2})],
            "model": {"class_path": seg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": SEG_MODEL,
                "tiled_inference_parameters": {"crop": 32, "stride": 20, "delta": 4, "average_patches": True,
                                               "blend_overlaps": True, "batch_size": 8},
                "output_on_inference": "probabilities"}},
            "data": {**common, "num_classes": 3, "means": MEANS, "stds": STDS, "no_data_replace": 0,
                     "dataset_bands": ["COASTAL_AEROSOL", [1, 2], "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                     "output_bands": [1, 2, "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
        },
        # Pixelwise regression, blended without padding (border chips use the mask
        # without delta), no nodata value in the file.
        "regression": {
            "task": "regression",
            "out_dtype": "float32",
            "scenes": [("r.tif", 5, 60, 77, None, "EPSG:32633", {"compress": "lzw"})],
            "model": {"class_path": reg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": REG_MODEL,
                "tiled_inference_parameters": {"crop": 32, "stride": 24, "delta": 4, "average_patches": True,
                                               "blend_overlaps": True, "padding": False, "batch_size": 16}}},
            "data": {**common, "train_data_root": "scenes", "val_data_root": "scenes", "test_data_root": "scenes",
                     "means": MEANS, "stds": STDS, "constant_scale": 1.0},
        },
        # No tiling: the whole scene through the model; the default output (argmax,
        # int16) with nodata -1; constant_scale; predict_output_bands.
        "whole": {
            "task": "segmentation",
            "out_dtype": "int16",
            "scenes": [("w.tif", 6, 45, 58, 0, "EPSG:32633", {})],
            "model": {"class_path": seg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": SEG_MODEL}},
            "data": {**common, "num_classes": 3, "means": [m / 10000 for m in MEANS],
                     "stds": [s / 10000 for s in STDS], "no_data_replace": 0, "constant_scale": 0.0001,
                     "dataset_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                     "predict_output_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
        },
        # Multi-temporal (expand_temporal_dimension): 7 bands per frame x 3 frames stacked
        # time-major in one GeoTIFF (21 bands), 6 of each frame picked by output_bands,
        # means/stds per band broadcast over time, [B, 6, 3, 32, 32] chips into Prithvi
        # (num_frames 3), blended; nodata pixels; a second scene that fits one chip.
        "temporal": {
            "task": "segmentation",
            "out_dtype": "float32",
            "bands": 21,
            "scenes": [("t.tif", 7, 50, 61, 0, "EPSG:32633", {"compress": "lzw"}),
                       ("t_small.tif", 8, 28, 30, 0, "EPSG:32633", {"compress": "lzw"})],
            "model": {"class_path": seg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": PRITHVI_T_MODEL,
                "tiled_inference_parameters": {"crop": 32, "stride": 24, "delta": 4, "average_patches": True,
                                               "blend_overlaps": True, "batch_size": 4},
                "output_on_inference": ["prediction", "logits"]}},
            "data": {**common, "num_classes": 3, "means": MEANS, "stds": STDS, "no_data_replace": 0,
                     "expand_temporal_dimension": True,
                     "dataset_bands": ["COASTAL_AEROSOL", "BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                     "output_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
        },
        # Multi-temporal with per-band-and-frame statistics: means/stds as (C, T) tables
        # in text files (np.genfromtxt reads them 2-D; Normalize uses them per frame), no
        # tiling (the whole scene through the model), constant_scale, padding to the patch.
        "temporal_means": {
            "task": "segmentation",
            "out_dtype": "float32",
            "bands": 18,
            "scenes": [("tm.tif", 9, 30, 26, 0, "EPSG:32610", {"compress": "lzw"})],
            "model": {"class_path": seg, "init_args": {
                "model_factory": "EncoderDecoderFactory", "model_args": PRITHVI_T_MODEL,
                "output_on_inference": "logits"}},
            "data": {**common, "num_classes": 3, "means": "means.txt", "stds": "stds.txt", "no_data_replace": 0,
                     "constant_scale": 0.5, "expand_temporal_dimension": True,
                     "dataset_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                     "output_bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]},
            "files": {"means.txt": "".join(" ".join(str(m * 0.5 + 40.0 * t) for t in range(3)) + "\n"
                                           for m in MEANS),
                      "stds.txt": "".join(" ".join(str(s * 0.5 + 10.0 * t) for t in range(3)) + "\n"
                                          for s in STDS)},
        },
    }


def make_case(name: str, spec: dict) -> None:
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for fname, text in spec.get("files", {}).items():
        (d / fname).write_text(text)
    for fname, seed, h, w, nodata, crs, layout in spec["scenes"]:
        data = scene(seed, spec.get("bands", 6), h, w, nodata)
        write_scene(d / "scenes" / fname, data, nodata, crs, layout)
    config = {"model": spec["model"], "data": {"class_path": (
        "terratorch.datamodules.GenericNonGeoSegmentationDataModule" if spec["task"] == "segmentation"
        else "terratorch.datamodules.GenericNonGeoPixelwiseRegressionDataModule"), "init_args": spec["data"]}}
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(d)  # predict_data_root and the means/stds files are relative to the case
    try:
        run_terratorch(d, spec)
    finally:
        os.chdir(cwd)
    outputs = sorted(p.name for p in (d / "expected").iterdir())
    meta = {"task": spec["task"], "out_dtype": spec["out_dtype"], "outputs": outputs,
            "scenes": [s[0] for s in spec["scenes"]], "versions": refkit.versions()}
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    print(f"{name}: {outputs} ({size / 1024:.0f} KB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    for name, spec in case_specs().items():
        if args.only and name not in args.only:
            continue
        make_case(name, spec)


if __name__ == "__main__":
    main()
