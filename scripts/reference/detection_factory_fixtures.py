"""Reference fixtures for the terratorch plugin's ObjectDetectionModelFactory (R-CNN
frameworks): TerraTorch 1.2.13's `ObjectDetectionModelFactory.build_model` with a tiny
Prithvi ViT (`prithvi_eo_tiny`) and the neck stack of TerraTorch's object-detection configs
(SelectIndices, ReshapeTokensToImage, LearnedInterpolateToPyramidal,
FeaturePyramidNetworkNeck), refkit's synthetic weights (the R-CNN heads' weight matrices from `hashed` instead), and a
batch of two 64x64 images.

Writes tests/fixtures/detection_factory/<case>.safetensors (the input and, per image i,
`boxes.i`, `scores.i`, `labels.i` and for Mask R-CNN `masks.i`) and <case>.json (the
factory arguments, the state_dict keys with their shapes, the versions). The weights are
not stored: both sides compute them with `synth`.

The score threshold and the number of detections are set through `framework_*` arguments
(TerraTorch passes them to torchvision's constructors), and the script refuses to write a
case whose images have no detections.

    PYTHONPATH=/tmp/tt1213dl/b .venv-ref/bin/python scripts/reference/detection_factory_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refkit  # noqa: E402  (installs the mmcv stand-ins, imports terratorch)
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from terratorch.registry import MODEL_FACTORY_REGISTRY  # noqa: E402

OUT = refkit.REPO / "tests" / "fixtures" / "detection_factory"

torch.set_num_threads(1)

BACKBONE = {
    "backbone": "prithvi_eo_tiny",
    "backbone_pretrained": False,
    "backbone_bands": ["RED", "GREEN", "BLUE"],
    "backbone_embed_dim": 32,
    "backbone_depth": 4,
    "backbone_num_heads": 2,
    "backbone_img_size": 64,
    "backbone_patch_size": [1, 16, 16],
}

NECKS = [
    {"name": "SelectIndices", "indices": [0, 1, 2, 3]},
    {"name": "ReshapeTokensToImage"},
    {"name": "LearnedInterpolateToPyramidal"},
    {"name": "FeaturePyramidNetworkNeck", "out_channel": 32},
]

CASES = {
    "faster_rcnn_prithvi": {
        "task": "object_detection",
        "framework": "faster-rcnn",
        "num_classes": 4,
        **BACKBONE,
        "necks": NECKS,
        "framework_min_size": 64,
        "framework_max_size": 64,
        "framework_rpn_pre_nms_top_n_test": 200,
        "framework_rpn_post_nms_top_n_test": 60,
        "framework_box_score_thresh": 0.2,
        "framework_box_detections_per_img": 8,
    },
    "mask_rcnn_prithvi": {
        "task": "object_detection",
        "framework": "mask-rcnn",
        "num_classes": 3,
        **BACKBONE,
        "necks": NECKS,
        "framework_rpn_post_nms_top_n_test": 40,
        "framework_box_score_thresh": 0.3,
        "framework_box_nms_thresh": 0.4,
        "framework_box_detections_per_img": 4,
    },
    # Across plugins: a timm backbone (the `timm` plugin) under the terratorch factory,
    # as object_detection_substation_resnet50.yaml (there with ResNet-50 and Mask R-CNN).
    "faster_rcnn_timm_resnet18": {
        "task": "object_detection",
        "framework": "faster-rcnn",
        "num_classes": 3,
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_out_indices": [1, 2, 3, 4],
        "in_channels": 3,
        "necks": [{"name": "FeaturePyramidNetworkNeck", "out_channel": 32}],
        "framework_rpn_post_nms_top_n_test": 50,
        "framework_box_detections_per_img": 6,
    },
    # The single-stage frameworks (torchvision's FCOS and RetinaNet with TerraTorch's anchors
    # and, for RetinaNet, its GroupNorm(32) head); the thresholds keep a few well-separated
    # detections of several classes.
    "fcos_prithvi": {
        "task": "object_detection",
        "framework": "fcos",
        "num_classes": 3,
        **BACKBONE,
        "necks": NECKS,
        "framework_score_thresh": 0.51,
        "framework_nms_thresh": 0.5,
        "framework_detections_per_img": 10,
        "framework_topk_candidates": 50,
        "framework_center_sampling_radius": 2.0,
    },
    "retinanet_prithvi": {
        "task": "object_detection",
        "framework": "retinanet",
        "num_classes": 4,
        **BACKBONE,
        "necks": NECKS,
        "framework_score_thresh": 0.3,
        "framework_nms_thresh": 0.4,
        "framework_detections_per_img": 10,
        "framework_topk_candidates": 100,
        "framework_fg_iou_thresh": 0.6,
    },
    "retinanet_timm_resnet18": {
        "task": "object_detection",
        "framework": "retinanet",
        "num_classes": 3,
        "backbone": "timm_resnet18",
        "backbone_pretrained": False,
        "backbone_out_indices": [1, 2, 3, 4],
        "in_channels": 3,
        "necks": [{"name": "FeaturePyramidNetworkNeck", "out_channel": 32}],
        "framework_score_thresh": 0.3,
        "framework_detections_per_img": 8,
    },
}

SINGLE_STAGE = ("fcos", "retinanet")


def hashed(t: torch.Tensor) -> torch.Tensor:
    """The R-CNN heads' weight matrices: ((i * i) mod 10007) mapped to [-1, 1) and scaled by
    3/sqrt(fan_in), integer arithmetic then float64, so the Rust test computes the same bits.
    refkit's `synth` rows are smooth sinusoids that cancel against the smooth pooled RoI
    features, which leaves every RoI the same class scores (exact ties, no order to check);
    the factor 3 spreads the scores (neighbouring scores differ by 1.6e-4 or more)."""
    n = t.numel()
    i = torch.arange(n, dtype=torch.int64)
    v = (i * i).remainder(10007).to(torch.float64) / 10007.0 * 2.0 - 1.0
    v = v * 3.0 / ((n / t.shape[0]) ** 0.5)
    return v.reshape(t.shape).to(t.dtype)


def is_hashed(key: str, t: torch.Tensor) -> bool:
    # FCOS's and RetinaNet's heads too: with `synth` their smooth kernels give neighbouring
    # anchors near-equal scores (ties whose order no implementation can be held to).
    return key.startswith(("torchvision_model.roi_heads.", "torchvision_model.head.")) and t.dim() >= 2


def build(args: dict) -> torch.nn.Module:
    factory = MODEL_FACTORY_REGISTRY.build("ObjectDetectionModelFactory")
    model = factory.build_model(**args)
    sd = model.state_dict()
    new_sd = {k: hashed(t) if is_hashed(k, t) else refkit.synth(k, t) for k, t in sd.items()}
    model.load_state_dict(new_sd, strict=True)
    model.eval()
    return model


def inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float32)


def intermediates(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The FPN maps (`features.l`) and the head's outputs (`head.cls_logits`,
    `head.bbox_regression`, FCOS's `head.bbox_ctrness`) of the batch, to locate a mismatch."""
    tv = model.torchvision_model
    with torch.no_grad():
        images, _ = tv.transform(list(x))
        features = list(tv.backbone(images.tensors).values())
        head = tv.head(features)
    out = {f"features.{i}": f.contiguous() for i, f in enumerate(features)}
    out.update({f"head.{k}": v.contiguous() for k, v in head.items()})
    return out


def check_separated(case: str, image: int, scores: torch.Tensor) -> None:
    """Refuses near-ties among an image's kept scores: their order would be arbitrary."""
    gaps = (scores[:-1] - scores[1:]).abs()
    if gaps.numel() and float(gaps.min()) < 1e-5:
        raise SystemExit(f"{case}: image {image} has scores within 1e-5 of each other: {scores.tolist()}")


def run(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    args = CASES[case]
    model = build(args)
    x = inputs()
    with torch.no_grad():
        out = model(x).output
    tensors = {"input": x}
    if args["framework"] in SINGLE_STAGE:
        tensors.update(intermediates(model, x))
    counts = []
    labels = set()
    for i, det in enumerate(out):
        n = det["boxes"].shape[0]
        if n == 0:
            raise SystemExit(f"{case}: image {i} has no detections; lower the score threshold")
        counts.append(n)
        labels.update(det["labels"].tolist())
        if args["framework"] in SINGLE_STAGE:
            check_separated(case, i, det["scores"])
        for k in ("boxes", "scores", "labels", "masks"):
            if k in det:
                tensors[f"{k}.{i}"] = det[k].contiguous()
    if args["framework"] in SINGLE_STAGE and (sum(counts) < 4 or len(labels) < 2):
        raise SystemExit(f"{case}: {counts} detections of labels {sorted(labels)}; want several of 2+ labels")
    sd = model.state_dict()
    meta = {
        "case": case,
        "args": args,
        "detections_per_image": counts,
        "state_dict": {k: list(v.shape) for k, v in sd.items()},
        "hashed_weights": sorted(k for k, v in sd.items() if is_hashed(k, v)),
        "versions": refkit.versions(),
        "terratorch_path": str(Path(refkit.terratorch.__file__).parent),
    }
    return meta, tensors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the stored fixtures")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    failed = False
    for case in CASES:
        meta, tensors = run(case)
        st = OUT / f"{case}.safetensors"
        if a.check:
            old = load_file(st)
            for k, v in tensors.items():
                if k not in old or old[k].shape != v.shape or not torch.allclose(
                    old[k].double(), v.double(), atol=1e-5, rtol=0
                ):
                    print(f"{case}: {k} differs")
                    failed = True
            continue
        save_file(tensors, st)
        (OUT / f"{case}.json").write_text(refkit.dump_json(meta) + "\n")
        print(f"{case}: detections per image {meta['detections_per_image']}, "
              f"{st.stat().st_size} bytes")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
