"""Reference fixtures for `terrahost predict` on ObjectDetectionTask configs: what TerraTorch
1.2.13's `ObjectDetectionTask.predict_step` returns for the images of the
`detection_factory` fixtures. Its model outputs are those fixtures' (`boxes.i`, `scores.i`,
`labels.i`, `masks.i`, made by `detection_factory_fixtures.py` with TerraTorch's own
factory); this script runs the task's `apply_nms_sample` (TerraTorch's source, unbound: it
uses no state of the task) on them at the thresholds below.

Writes tests/fixtures/detection_predict/<case>.safetensors: `iou_threshold`,
`score_threshold` and per image i `boxes.i`, `scores.i`, `labels.i` and, for Mask R-CNN,
`mask_pixels.i` (per detection, the number of mask pixels above 0.5, which is what the
polygonised mask covers).

    PYTHONPATH=/tmp/tt1213dl/b .venv-ref/bin/python scripts/reference/detection_predict_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refkit  # noqa: E402  (installs the mmcv stand-ins TerraTorch's import needs)
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from terratorch.tasks.object_detection_task import ObjectDetectionTask  # noqa: E402

REPO = refkit.REPO
SRC = REPO / "tests" / "fixtures" / "detection_factory"
OUT = REPO / "tests" / "fixtures" / "detection_predict"

# (iou_threshold, score_threshold): the task's defaults where the fixture's scores pass
# them, lower where they do not (the tiny models' scores are 0.3 to 0.55).
CASES = {
    "faster_rcnn_timm_resnet18": (0.5, 0.5),
    "faster_rcnn_prithvi": (0.3, 0.3),
    "mask_rcnn_prithvi": (0.5, 0.3),
}


def case(name: str, iou: float, score: float) -> dict[str, torch.Tensor]:
    src = load_file(SRC / f"{name}.safetensors")
    out = {
        "iou_threshold": torch.tensor([iou], dtype=torch.float64),
        "score_threshold": torch.tensor([score], dtype=torch.float64),
    }
    for i in range(src["input"].shape[0]):
        y_hat = {k: src[f"{k}.{i}"].clone() for k in ("boxes", "scores", "labels", "masks") if f"{k}.{i}" in src}
        y = ObjectDetectionTask.apply_nms_sample(None, y_hat, iou_threshold=iou, score_threshold=score)
        if y["boxes"].shape[0] == 0:
            raise SystemExit(f"{name}: image {i} keeps no detection at these thresholds; pick others")
        for k in ("boxes", "scores", "labels"):
            out[f"{k}.{i}"] = y[k].contiguous()
        if "masks" in y:
            out[f"mask_pixels.{i}"] = (y["masks"] > 0.5).flatten(1).sum(1).to(torch.int64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the stored fixtures")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name, (iou, score) in CASES.items():
        tensors = case(name, iou, score)
        path = OUT / f"{name}.safetensors"
        if args.check:
            old = load_file(path)
            same = old.keys() == tensors.keys() and all(torch.equal(old[k], tensors[k]) for k in old)
            print(f"{name}: {'same' if same else 'DIFFERENT'}")
            bad += not same
        else:
            save_file(tensors, path)
            counts = [int(tensors[f"boxes.{i}"].shape[0]) for i in range(2)]
            print(f"{name}: {counts} detections after the task's NMS")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
