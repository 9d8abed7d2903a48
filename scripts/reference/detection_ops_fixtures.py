"""Reference fixtures for the detection ops of `terrahost-layers` (`layers/src/detection/`):
torchvision's NMS and box utilities, RoIAlign, MultiScaleRoIAlign, BoxCoder, AnchorGenerator,
GeneralizedRCNNTransform, the RPN's proposal selection, the R-CNN box and mask heads with their
postprocessing (RoIHeads, paste_masks_in_image) and whole Faster and Mask R-CNNs on a tiny
backbone (also with TerraTorch's transform, read from the installed TerraTorch's source), run on
small deterministic inputs with the edge cases that decide parity (empty inputs, exact score ties,
identical and zero-area boxes, boxes outside the image or the feature map, odd image sizes).

Writes tests/fixtures/detection_ops/<group>.safetensors (inputs and torchvision's outputs) and
meta.json (the versions that made them). Large inputs are not stored: both sides rebuild them
with `formula(shape, phase)` below (libtorch's own arange/sin, so the values are identical).
No downloads, no randomness outside a seeded generator.

    .venv-ref/bin/python scripts/reference/detection_ops_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads, paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align
from torchvision.ops.poolers import MultiScaleRoIAlign

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "detection_ops"

torch.set_num_threads(1)


def formula(shape: list[int], phase: float) -> torch.Tensor:
    """Smooth, sign-changing float32 values: sin(0.37 * i + phase) over the flat index i.
    The Rust tests rebuild the same tensor with the same libtorch ops."""
    n = math.prod(shape)
    return torch.arange(n, dtype=torch.float32).mul(0.37).add(phase).sin().reshape(shape)


def rand_boxes(g: torch.Generator, n: int, extent: float, min_wh: float, max_wh: float) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * extent
    wh = min_wh + torch.rand(n, 2, generator=g) * (max_wh - min_wh)
    return torch.cat([xy, xy + wh], dim=1)


def thr(v: float) -> torch.Tensor:
    # Thresholds and other Python floats travel as float64 scalars.
    return torch.tensor([v], dtype=torch.float64)


def vanilla_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1100 boxes in 5 classes with scores on a grid of 1/64 (many ties), from the formula."""
    xy = formula([1100, 2], 0.1).add(1.0).mul(100.0)
    wh = formula([1100, 2], 0.6).add(1.0).mul(20.0).add(5.0)
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = formula([1100], 1.9).add(1.0).mul(32.0).floor().div(64.0)
    idxs = torch.arange(1100).mul(7).remainder(5)
    return boxes, scores, idxs


def nms_group() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(18)
    out: dict[str, torch.Tensor] = {}

    def nms_case(name: str, boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> None:
        out[f"nms.{name}.boxes"] = boxes
        out[f"nms.{name}.scores"] = scores
        out[f"nms.{name}.iou"] = thr(iou)
        out[f"nms.{name}.keep"] = box_ops.nms(boxes, scores, iou)

    boxes = rand_boxes(g, 40, 40.0, 4.0, 20.0)
    scores = torch.rand(40, generator=g)
    nms_case("random", boxes, scores, 0.5)
    nms_case("random_low", boxes, scores, 0.2)
    nms_case("random_high", boxes, scores, 0.8)
    # Exact ties: scores on a coarse grid, boxes overlapping, so which tied box is visited
    # first decides what survives.
    tie_boxes = rand_boxes(g, 30, 15.0, 6.0, 12.0)
    tie_scores = (torch.rand(30, generator=g) * 4).floor() / 4
    nms_case("ties", tie_boxes, tie_scores, 0.3)
    # Identical boxes with identical and with different scores, and disjoint ones.
    ident = torch.tensor([[1.0, 1.0, 5.0, 5.0]] * 4 + [[10.0, 10.0, 12.0, 13.0]] * 3 + [[1.0, 1.0, 5.0, 5.0]])
    ident_scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.2, 0.2, 0.2, 0.9])
    nms_case("identical", ident, ident_scores, 0.5)
    # Zero-area boxes: IoU 0/0 is NaN, never > threshold, so they are never suppressed and
    # never suppress anything.
    zero = torch.tensor(
        [[2.0, 2.0, 2.0, 8.0], [2.0, 2.0, 2.0, 8.0], [0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 4.0, 1.0],
         [0.0, 0.0, 4.0, 4.0], [3.0, 3.0, 3.0, 3.0]]
    )
    nms_case("zero_area", zero, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), 0.5)
    # IoU exactly at the threshold is kept (the rule is IoU > threshold): two 2x2 boxes
    # sharing half their area have IoU 2 / 6 = 1/3.
    half = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
    nms_case("at_threshold", half, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    nms_case("below_threshold", half, torch.tensor([0.9, 0.8, 0.7]), 0.3)
    nms_case("empty", torch.zeros(0, 4), torch.zeros(0), 0.5)
    nms_case("float64", boxes.double(), scores.double(), 0.5)

    def batched_case(name: str, boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float) -> None:
        out[f"batched_nms.{name}.boxes"] = boxes
        out[f"batched_nms.{name}.scores"] = scores
        out[f"batched_nms.{name}.idxs"] = idxs
        out[f"batched_nms.{name}.iou"] = thr(iou)
        out[f"batched_nms.{name}.keep"] = box_ops.batched_nms(boxes, scores, idxs, iou)

    # <= 1000 boxes: torchvision offsets each class's boxes (the coordinate trick).
    b = rand_boxes(g, 60, 30.0, 5.0, 15.0)
    s = (torch.rand(60, generator=g) * 8).floor() / 8
    batched_case("trick", b, s, torch.randint(0, 4, (60,), generator=g), 0.4)
    # > 1000 boxes on the CPU: one NMS per class, then a sort of the survivors by score.
    # Its inputs are not stored: `vanilla_inputs` rebuilds them from the formula.
    vb, vs, vi = vanilla_inputs()
    out["batched_nms.vanilla.iou"] = thr(0.5)
    out["batched_nms.vanilla.keep"] = box_ops.batched_nms(vb, vs, vi, 0.5)
    batched_case("empty", torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)

    # box_area / box_iou (zero-area pairs give 0/0 = NaN), clip, remove_small_boxes.
    b1 = torch.cat([rand_boxes(g, 5, 10.0, 0.0, 8.0), torch.tensor([[3.0, 3.0, 3.0, 6.0]])])
    b2 = torch.cat([rand_boxes(g, 4, 10.0, 1.0, 8.0), torch.tensor([[3.0, 4.0, 3.0, 5.0]])])
    out["box_iou.boxes1"] = b1
    out["box_iou.boxes2"] = b2
    out["box_iou.out"] = box_ops.box_iou(b1, b2)
    out["box_area.out"] = box_ops.box_area(b1)
    cb = (torch.rand(2, 5, 4, generator=g) - 0.25) * 50
    out["clip.boxes"] = cb
    out["clip.size"] = torch.tensor([30, 41], dtype=torch.int64)
    out["clip.out"] = box_ops.clip_boxes_to_image(cb, (30, 41))
    sb = torch.cat(
        [rand_boxes(g, 8, 10.0, 0.0, 2.0), torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.999, 5.0], [1.0, 1.0, 1.0005, 1.0005]])]
    )
    out["remove_small.boxes"] = sb
    out["remove_small.keep_1"] = box_ops.remove_small_boxes(sb, 1.0)
    out["remove_small.keep_1e-3"] = box_ops.remove_small_boxes(sb, 1e-3)
    return out


def roi_align_group() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    x = formula([2, 3, 9, 11], 0.3)
    rois = torch.tensor(
        [
            [0, 1.0, 1.0, 6.0, 5.0],  # inside
            [1, 0.5, 2.25, 9.75, 8.5],  # inside, fractional
            [0, -3.0, -2.0, 4.0, 3.0],  # partly outside (top left)
            [1, 7.0, 5.0, 14.0, 12.0],  # partly outside (bottom right)
            [0, 20.0, 20.0, 25.0, 30.0],  # fully outside
            [1, -8.0, -8.0, -2.0, -1.5],  # fully outside, negative
            [0, 3.0, 3.0, 3.0, 3.0],  # zero area
            [1, 4.0, 2.0, 4.0, 7.0],  # zero width
            [0, 6.0, 6.0, 2.0, 3.0],  # x2 < x1, y2 < y1
            [1, 0.0, 0.0, 11.0, 9.0],  # the whole map
            [0, -1.0, -1.0, 12.0, 10.0],  # a little larger than the map
            [1, 2.2, 1.3, 2.9, 1.8],  # sub-pixel
            [0, 0.0, 0.0, 22.0, 18.0],  # large (adaptive grid 4 x 6 at scale 1)
            [1, 10.4, 8.3, 10.9, 8.9],  # at the last row and column
            # With a 2 x 2 output, adaptive sampling, scale 1, not aligned, samples fall exactly
            # on the bounds: at -1 (still sampled, clamped to 0) and at H = 9 and W = 11
            # (sampled, clamped to the last row and column); the next ones are outside.
            [0, -1.5, -1.5, 0.5, 0.5],
            [1, 10.5, 8.5, 12.5, 10.5],
        ],
        dtype=torch.float32,
    )
    out["x"] = x
    out["rois"] = rois
    for ratio in (0, 2, -1):
        for aligned in (False, True):
            for scale in (1.0, 0.5):
                for ph, pw in ((3, 4), (2, 2)):
                    key = f"out.r{ratio}.a{int(aligned)}.s{scale}.{ph}x{pw}"
                    out[key] = roi_align(x, rois, (ph, pw), spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    out["out.empty"] = roi_align(x, torch.zeros(0, 5), (3, 4), 1.0, 2, False)
    out["out.float64"] = roi_align(x.double(), rois.double(), (3, 4), 0.5, 0, True)
    out["out.float16"] = roi_align(x.half(), rois.half(), (3, 4), 0.5, 0, False)
    return out


def multiscale_group() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    # An FPN-like pyramid for a 224 x 256 batch (strides 4..32), two channels; the boxes reach
    # every level (boxes larger than 448 go to level 5, small ones are clamped to level 2).
    shapes = [[2, 2, 56, 64], [2, 2, 28, 32], [2, 2, 14, 16], [2, 2, 7, 8]]
    feats = OrderedDict((str(i), formula(s, 0.1 * i)) for i, s in enumerate(shapes))
    feats["pool"] = formula([2, 2, 4, 4], 0.9)  # not in featmap_names: filtered out
    boxes = [
        torch.tensor(
            [[10.0, 12.0, 30.0, 40.0], [0.0, 0.0, 120.0, 110.0], [30.0, 20.0, 250.0, 220.0],
             [-100.0, -100.0, 400.0, 420.0], [5.0, 5.0, 5.0, 9.0], [100.0, 50.0, 101.0, 51.0]]
        ),
        torch.tensor(
            [[40.0, 40.0, 200.0, 180.0], [1.0, 2.0, 60.0, 70.0], [10.0, 10.0, 250.0, 240.0], [50.0, 60.0, 70.0, 90.0]]
        ),
    ]
    image_shapes = [(224, 250), (200, 256)]
    for i, b in enumerate(boxes):
        out[f"boxes.{i}"] = b
    out["image_shapes"] = torch.tensor(image_shapes, dtype=torch.int64)
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    out["out.default"] = pool(feats, boxes, image_shapes)
    # One level: no level mapping, the one inferred scale.
    pool1 = MultiScaleRoIAlign(["1"], (3, 5), 0)
    out["out.one_level"] = pool1(feats, boxes, image_shapes)
    # A smaller canonical scale moves the same boxes to other levels; sampling adaptive.
    pool_c = MultiScaleRoIAlign(["0", "1", "2", "3"], (4, 4), -1, canonical_scale=64, canonical_level=3)
    out["out.canonical64"] = pool_c(feats, boxes, image_shapes)
    # Empty box lists.
    out["out.empty"] = pool(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], image_shapes)
    return out


def box_coder_group() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    out: dict[str, torch.Tensor] = {}
    boxes = rand_boxes(g, 12, 100.0, 1.0, 60.0)
    boxes[3] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero width: decodes to NaN/inf like upstream
    codes = torch.randn(12, 3 * 4, generator=g)
    codes[0, 2] = 9.0  # dw above log(1000/16): clipped
    codes[1, 3] = 20.0
    codes[2, 6] = -30.0  # very negative dw: not clipped
    out["boxes"] = boxes
    out["codes"] = codes
    for name, w in (("rcnn", (10.0, 10.0, 5.0, 5.0)), ("rpn", (1.0, 1.0, 1.0, 1.0))):
        coder = BoxCoder(w)
        out[f"{name}.weights"] = torch.tensor(w, dtype=torch.float64)
        out[f"{name}.decode_single"] = coder.decode_single(codes, boxes)
        # decode: boxes per image [5, 7], codes [12, 12] -> [12, 3, 4]
        out[f"{name}.decode"] = coder.decode(codes, [boxes[:5], boxes[5:]])
        ref = rand_boxes(g, 12, 100.0, 1.0, 60.0)
        out[f"{name}.reference"] = ref
        out[f"{name}.encode_single"] = coder.encode_single(ref, boxes)
    return out


def anchors_group() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    # Faster R-CNN's FPN anchors on a 64 x 32 batch of two images.
    ag = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(2, 3, 64, 32), [(64, 30), (60, 32)])
    feats = [torch.zeros(2, 4, 64 // s, 32 // s) for s in (4, 8, 16, 32)] + [torch.zeros(2, 4, 1, 1)]
    anchors = ag(images, feats)
    out["fpn.anchors"] = anchors[0]
    assert torch.equal(anchors[0], anchors[1])
    for i, c in enumerate(ag.cell_anchors):
        out[f"fpn.cell.{i}"] = c
    # Several sizes on one level, aspect ratios whose half-sizes round half to even, and a
    # grid that does not divide the image (stride 50 // 7 = 7, 38 // 5 = 7).
    ag2 = AnchorGenerator(((45, 90, 33),), ((0.3, 1.0, 1.7, 4.0),))
    images2 = ImageList(torch.zeros(1, 3, 50, 38), [(50, 38)])
    anchors2 = ag2(images2, [torch.zeros(1, 4, 7, 5)])
    out["odd.anchors"] = anchors2[0]
    out["odd.cell.0"] = ag2.cell_anchors[0]
    return out


def transform_group() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    # Odd sizes, one landscape and one portrait: the first is bounded by min_size, the second
    # by max_size (27 * (30 / 27) lands just below or above 30 in float64).
    images = [formula([3, 21, 30], 0.2).add(1).div(2), formula([3, 27, 14], 0.7).add(1).div(2)]
    t = GeneralizedRCNNTransform(20, 30, mean, std, size_divisible=32).eval()
    il, _ = t(images)
    out["down.images"] = il.tensors
    out["down.image_sizes"] = torch.tensor(il.image_sizes, dtype=torch.int64)
    # Upscaling (the short side goes from 13 to 24), one image, size_divisible 16.
    up = [formula([3, 13, 19], 1.1)]
    t2 = GeneralizedRCNNTransform(24, 100, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25], size_divisible=16).eval()
    il2, _ = t2(up)
    out["up.images"] = il2.tensors
    out["up.image_sizes"] = torch.tensor(il2.image_sizes, dtype=torch.int64)
    # fixed_size (width, height): every image resized to 17 x 23 (height x width).
    t3 = GeneralizedRCNNTransform(20, 30, mean, std, size_divisible=32, fixed_size=(23, 17)).eval()
    il3, _ = t3(images)
    out["fixed.images"] = il3.tensors
    out["fixed.image_sizes"] = torch.tensor(il3.image_sizes, dtype=torch.int64)
    # postprocess: boxes in the resized images back to the originals.
    g = torch.Generator().manual_seed(3)
    res = [{"boxes": rand_boxes(g, 4, 20.0, 1.0, 10.0)}, {"boxes": rand_boxes(g, 3, 20.0, 1.0, 10.0)}]
    out["post.boxes.0"] = res[0]["boxes"].clone()
    out["post.boxes.1"] = res[1]["boxes"].clone()
    post = t.postprocess(res, il.image_sizes, [(21, 30), (27, 14)])
    out["post.out.0"] = post[0]["boxes"]
    out["post.out.1"] = post[1]["boxes"]
    return out


def rpn_group() -> dict[str, torch.Tensor]:
    """RPN inference on a two-level pyramid with formula weights: the head's outputs, the
    decoded proposals and the selected boxes and scores. The top-n cuts and the score threshold
    all remove proposals here: 6 per image survive NMS without the threshold, 4 and 5 with it,
    and the post-NMS top 4 cuts the second image."""
    out: dict[str, torch.Tensor] = {}
    torch.manual_seed(0)
    ag = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    head = RPNHead(4, 3)
    for k, v in head.state_dict().items():
        v.copy_(formula(list(v.shape), 0.05 * len(k)).mul(0.3))
        out[f"head.{k}"] = v.clone()
    rpn = RegionProposalNetwork(
        ag, head, 0.7, 0.3, 256, 0.5, dict(training=2000, testing=20), dict(training=2000, testing=4), 0.6,
        score_thresh=0.7,
    ).eval()
    images = ImageList(torch.zeros(2, 3, 32, 48), [(32, 45), (29, 48)])
    # The features are not stored: formula([2, 4, 8, 12], 0.4) and formula([2, 4, 4, 6], 1.3).
    feats = OrderedDict([("0", formula([2, 4, 8, 12], 0.4)), ("1", formula([2, 4, 4, 6], 1.3))])
    with torch.no_grad():
        objectness, deltas = head(list(feats.values()))
        boxes, _ = rpn(images, feats)
    for i, (o, d) in enumerate(zip(objectness, deltas)):
        out[f"objectness.{i}"] = o
        out[f"deltas.{i}"] = d
    for i, b in enumerate(boxes):
        out[f"proposals.{i}"] = b
    # Scores of the kept proposals (filter_proposals returns them; forward drops them).
    with torch.no_grad():
        anchors = ag(images, list(feats.values()))
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        num_per_level = [o[0].numel() for o in objectness]
        obj, dl = concat_box_prediction_layers(objectness, deltas)
        props = rpn.box_coder.decode(dl, anchors).view(2, -1, 4)
        b2, s2 = rpn.filter_proposals(props, obj, images.image_sizes, num_per_level)
    for i, (b, s) in enumerate(zip(b2, s2)):
        assert torch.equal(b, boxes[i])
        out[f"scores.{i}"] = s
    out["image_sizes"] = torch.tensor(images.image_sizes, dtype=torch.int64)
    return out


# RoIHeads: weights drawn from a seeded generator (scaled per layer so the class scores spread
# over the three foreground classes), stored; the cls_score bias is set by hand.
HEAD_SCALE = {"fc6": 2.0, "fc7": 1.5, "cls_score": 2.0, "bbox_pred": 0.5}
CLS_BIAS = [0.0, 1.5, -0.3, 4.5]


def seeded_weights(
    module: torch.nn.Module, seed: int, out: dict[str, torch.Tensor], prefix: str, cls_bias: list[float] = CLS_BIAS
) -> None:
    """Every parameter ~ N(0, 1) * scale / sqrt(fan-in), from one generator in state_dict order;
    stored under `prefix + key`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if k.endswith("num_batches_tracked"):
                continue
            parts = k.split(".")
            scale = next((HEAD_SCALE[p] for p in parts if p in HEAD_SCALE), 1.0)
            fan_in = v[0].numel() if v.dim() > 1 else 4
            v.copy_(torch.randn(v.shape, generator=g).mul(scale / math.sqrt(fan_in)))
            if k.endswith("cls_score.bias"):
                v.copy_(torch.tensor(cls_bias))
            if k.endswith("running_var"):
                v.abs_().add_(0.5)
            out[prefix + k] = v.clone()


def roi_heads_module(score_thresh: float, detections: int) -> RoIHeads:
    """4 channels, two levels, 4 classes; TwoMLPHead(196, 16); a 2-layer mask head on 7 x 7."""
    return RoIHeads(
        MultiScaleRoIAlign(["0", "1"], 7, 2), TwoMLPHead(4 * 49, 16), FastRCNNPredictor(16, 4),
        0.5, 0.5, 512, 0.25, None, score_thresh, 0.5, detections,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2),
        mask_head=MaskRCNNHeads(4, [8, 8], 1),
        mask_predictor=MaskRCNNPredictor(8, 6, 4),
    ).eval()


def many_proposals() -> torch.Tensor:
    """400 proposals from the formula (1200 class boxes: batched_nms's one-class-at-a-time path)."""
    xy = formula([400, 2], 0.3).add(1.0).mul(30.0)
    wh = formula([400, 2], 1.1).add(1.0).mul(12.0).add(2.0)
    return torch.cat([xy, xy + wh], dim=1)


def roi_heads_group() -> dict[str, torch.Tensor]:
    """RoIHeads inference (boxes and masks) on a two-level pyramid: pooled box features, the
    head's output, class logits, deltas, decoded boxes, the detections and their mask
    probabilities; plus no proposals, every score under the threshold, and 1200 candidates."""
    out: dict[str, torch.Tensor] = {}
    heads = roi_heads_module(0.2, 10)
    seeded_weights(heads, 5, out, "w.")
    # The features are not stored: formula([2, 4, 16, 24], 0.2) and formula([2, 4, 8, 12], 0.9).
    feats = OrderedDict([("0", formula([2, 4, 16, 24], 0.2)), ("1", formula([2, 4, 8, 12], 0.9))])
    g = torch.Generator().manual_seed(11)
    shapes = [(64, 90), (58, 96)]
    props = [rand_boxes(g, 12, 70.0, 3.0, 40.0).clamp(0, 90), rand_boxes(g, 9, 70.0, 3.0, 40.0).clamp(0, 90)]
    # At the borders: the decoded boxes are clipped there.
    props[0] = torch.cat([props[0], torch.tensor([[0.0, 0.0, 20.0, 15.0], [70.0, 50.0, 90.0, 64.0]])])
    for i, p in enumerate(props):
        out[f"proposals.{i}"] = p
    out["image_shapes"] = torch.tensor(shapes, dtype=torch.int64)
    with torch.no_grad():
        pooled = heads.box_roi_pool(feats, props, shapes)
        head = heads.box_head(pooled)
        logits, deltas = heads.box_predictor(head)
        res, _ = heads(feats, props, shapes)
        mask_feats = heads.mask_head(heads.mask_roi_pool(feats, [r["boxes"] for r in res], shapes))
    out["box_features"] = pooled
    out["box_head"] = head
    out["class_logits"] = logits
    out["box_regression"] = deltas
    out["decoded"] = heads.box_coder.decode(deltas, props)
    out["mask_head"] = mask_feats[:8]  # the first 8 of 20 rows keep the file small
    for i, r in enumerate(res):
        assert r["boxes"].shape[0] > 0
        for k in ("boxes", "scores", "labels", "masks"):
            out[f"out.{i}.{k}"] = r[k]
    # No proposals for the first image.
    with torch.no_grad():
        res, _ = heads(feats, [torch.zeros(0, 4), props[1]], shapes)
    for i, r in enumerate(res):
        for k in ("boxes", "scores", "labels", "masks"):
            out[f"none.{i}.{k}"] = r[k]
    # Every score under the threshold.
    high = roi_heads_module(0.99, 10)
    high.load_state_dict(heads.state_dict())
    with torch.no_grad():
        res, _ = high(feats, props, shapes)
    assert all(r["boxes"].shape[0] == 0 for r in res)
    for i, r in enumerate(res):
        out[f"high.{i}.masks"] = r["masks"]
    # 1200 class boxes (> 1000): batched_nms runs class by class; 100 detections kept.
    many = roi_heads_module(0.0, 100)
    many.load_state_dict(heads.state_dict())
    with torch.no_grad():
        res, _ = many(OrderedDict((k, v[:1]) for k, v in feats.items()), [many_proposals()], shapes[:1])
    assert res[0]["boxes"].shape[0] == 100
    for k in ("boxes", "scores", "labels"):
        out[f"many.{k}"] = res[0][k]
    return out


def paste_group() -> dict[str, torch.Tensor]:
    """paste_masks_in_image: 14 x 14 masks into a 30 x 41 image, boxes inside, partly outside on
    every side, at the borders, thinner than a pixel, larger than the image."""
    out: dict[str, torch.Tensor] = {}
    boxes = torch.tensor(
        [
            [3.0, 4.0, 20.0, 18.0],  # inside
            [10.3, 2.7, 33.9, 25.2],  # inside, fractional
            [-6.0, -4.5, 12.0, 9.0],  # partly outside (top left)
            [30.0, 20.0, 47.5, 36.0],  # partly outside (bottom right)
            [0.0, 0.0, 41.0, 30.0],  # the whole image
            [-5.0, -5.0, 45.0, 35.0],  # larger than the image
            [3.2, 3.7, 3.5, 3.9],  # thinner than a pixel
            [38.0, 0.0, 41.0, 30.0],  # at the right border
        ]
    )
    # The masks are not stored: formula([8, 1, 14, 14], 0.5).sigmoid().
    masks = formula([8, 1, 14, 14], 0.5).sigmoid()
    out["boxes"] = boxes
    out["out"] = paste_masks_in_image(masks, boxes, (30, 41))
    out["out.padding2"] = paste_masks_in_image(masks[1:3], boxes[1:3], (30, 41), padding=2)
    out["empty"] = paste_masks_in_image(torch.zeros(0, 1, 14, 14), torch.zeros(0, 4), (30, 41))
    return out


class TinyBackbone(torch.nn.Module):
    """Two levels, 4 channels: a stride-4 3x3 convolution and ReLU, then a stride-2 one."""

    out_channels = 4

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        a = torch.relu(self.c1(x))
        return OrderedDict([("0", a), ("1", torch.relu(self.c2(a)))])


def terratorch_transform_class() -> type:
    """TerraTorch's `TerratorchGeneralizedRCNNTransform` (`terratorch/models/utils.py`, 1.2.x),
    taken from the installed package's source: importing terratorch itself needs mmcv's compiled
    extension, which the reference environment lacks; the class needs only torch, torchvision's
    GeneralizedRCNNTransform and ImageList."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("terratorch")
    assert spec is not None and spec.submodule_search_locations, "TerraTorch is not installed"
    path = Path(spec.submodule_search_locations[0], "models", "utils.py")
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TerratorchGeneralizedRCNNTransform")
    ns = {"torch": torch, "GeneralizedRCNNTransform": GeneralizedRCNNTransform, "ImageList": ImageList}
    exec(compile(ast.Module([cls], []), str(path), "exec"), ns)
    return ns["TerratorchGeneralizedRCNNTransform"]


def rcnn_images() -> list[torch.Tensor]:
    # Not stored: both sides rebuild them.
    return [formula([3, 30, 40], 0.3).add(1).div(2), formula([3, 36, 28], 1.2).add(1).div(2)]


RCNN_CLS_BIAS = [0.0, 0.5, 1.5, 2.0]


def rcnn_group() -> dict[str, torch.Tensor]:
    """Whole Faster R-CNN and Mask R-CNN (torchvision's classes) on a tiny backbone: two images
    resized to 64..96, RPN with anchors 16 and 32, the RoIHeads of `roi_heads_module`."""
    out: dict[str, torch.Tensor] = {}
    common = dict(
        min_size=64, max_size=96, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2),
        rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=25,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2),
        box_head=TwoMLPHead(4 * 49, 16), box_predictor=FastRCNNPredictor(16, 4),
        box_score_thresh=0.2, box_detections_per_img=6,
    )
    mask = MaskRCNN(
        TinyBackbone(), None,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2),
        mask_head=MaskRCNNHeads(4, [8, 8], 1), mask_predictor=MaskRCNNPredictor(8, 6, 4), **common,
    ).eval()
    seeded_weights(mask, 9, out, "w.", RCNN_CLS_BIAS)
    faster = FasterRCNN(TinyBackbone(), None, **common).eval()
    faster.load_state_dict({k: v for k, v in mask.state_dict().items() if ".mask_" not in k})
    images = rcnn_images()
    with torch.no_grad():
        il, _ = mask.transform(images)
        proposals, _ = mask.rpn(il, mask.backbone(il.tensors))
        dets = mask(images)
        fdets = faster(images)
    for i, p in enumerate(proposals):
        out[f"proposals.{i}"] = p
    for i, (d, fd) in enumerate(zip(dets, fdets)):
        assert d["boxes"].shape[0] > 0, "no detections"
        for k in ("boxes", "scores", "labels", "masks"):
            out[f"mask.{i}.{k}"] = d[k]
        for k in ("boxes", "scores", "labels"):
            out[f"faster.{i}.{k}"] = fd[k]
    # TerraTorch's factory swaps in its own transform, which only stacks the images (no
    # normalisation, no resizing, no padding): two 30 x 31 images through the same Mask R-CNN.
    tt = terratorch_transform_class()
    t = mask.transform
    mask.transform = tt(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size, _skip_resize=True).eval()
    with torch.no_grad():
        tdets = mask([formula([3, 30, 31], 0.3).add(1).div(2), formula([3, 30, 31], 1.2).add(1).div(2)])
    for i, d in enumerate(tdets):
        assert d["boxes"].shape[0] > 0, "no detections"
        for k in ("boxes", "scores", "labels"):
            out[f"tt.{i}.{k}"] = d[k]
    out["tt.0.masks"] = tdets[0]["masks"][:2]  # 2 of 6: the file stays small
    return out


BN_CLS_BIAS = [0.0, 0.5, 1.5, 2.0]


def rcnn_bn_group() -> dict[str, torch.Tensor]:
    """Mask R-CNN with the heads TerraTorch's factory gives it: RPNHead with two convolutions,
    FastRCNNConvFCHead and MaskRCNNHeads with BatchNorm2d, one 7 x 7 pooler shared by boxes and
    masks; the tiny backbone and images of `rcnn_group`."""
    out: dict[str, torch.Tensor] = {}
    pool = MultiScaleRoIAlign(["0", "1"], 7, 2)
    model = MaskRCNN(
        TinyBackbone(), None,
        min_size=64, max_size=96, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2),
        rpn_head=RPNHead(4, 3, conv_depth=2),
        rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=25,
        box_roi_pool=pool,
        box_head=FastRCNNConvFCHead((4, 7, 7), [4, 4], [16], norm_layer=torch.nn.BatchNorm2d),
        box_predictor=FastRCNNPredictor(16, 4),
        box_score_thresh=0.2, box_detections_per_img=4,
        mask_roi_pool=pool,
        mask_head=MaskRCNNHeads(4, [8, 8], 1, norm_layer=torch.nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(8, 6, 4),
    ).eval()
    seeded_weights(model, 13, out, "w.", BN_CLS_BIAS)
    images = rcnn_images()
    with torch.no_grad():
        il, _ = model.transform(images)
        feats = model.backbone(il.tensors)
        proposals, _ = model.rpn(il, feats)
        box_head = model.roi_heads.box_head(pool(feats, proposals, il.image_sizes))
        dets = model(images)
    out["box_head"] = box_head
    for i, d in enumerate(dets):
        assert d["boxes"].shape[0] > 0, "no detections"
        for k in ("boxes", "scores", "labels", "masks"):
            out[f"bn.{i}.{k}"] = d[k]
    return out


class WideTinyBackbone(torch.nn.Module):
    """`TinyBackbone` with 32 channels (GroupNorm(32) needs them)."""

    out_channels = 32

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 32, 3, stride=4, padding=1)
        self.c2 = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        a = torch.relu(self.c1(x))
        return OrderedDict([("0", a), ("1", torch.relu(self.c2(a)))])


def formula_weights(module: torch.nn.Module) -> None:
    """Every parameter and buffer: formula(shape, 0.05 * len(key)) * scale, scale 1 / sqrt(fan-in)
    for weights of two or more dimensions, 0.5 otherwise (not stored: both sides rebuild them)."""
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if not v.is_floating_point():
                continue
            scale = 1.0 / math.sqrt(v[0].numel()) if v.dim() > 1 else 0.5
            v.copy_(formula(list(v.shape), 0.05 * len(k)).mul(scale))


def retinanet_group() -> dict[str, torch.Tensor]:
    """RetinaNet as TerraTorch's factory builds it (anchors (16, 20, 25) and (32, 40, 50) with
    ratios (0.5, 1, 2), GroupNorm(32) heads, TerraTorch's stack-only transform), 32 channels, two
    levels, 3 classes, formula weights; 20 detections per image kept. Level 0 has 1728 candidates
    (top 1000 kept), and the 1432 boxes of an image go through batched_nms class by class."""
    out: dict[str, torch.Tensor] = {}
    ag = AnchorGenerator(((16, 20, 25), (32, 40, 50)), ((0.5, 1.0, 2.0),) * 2)
    head = RetinaNetHead(32, 9, 3, norm_layer=partial(torch.nn.GroupNorm, 32))
    model = RetinaNet(
        WideTinyBackbone(), 3, anchor_generator=ag, head=head, _skip_resize=True,
        image_mean=[0.0] * 3, image_std=[1.0] * 3, detections_per_img=20,
    ).eval()
    formula_weights(model)
    t = model.transform
    model.transform = terratorch_transform_class()(
        t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size, _skip_resize=True
    ).eval()
    images = [formula([3, 30, 31], 0.3).add(1).div(2), formula([3, 30, 31], 1.2).add(1).div(2)]
    with torch.no_grad():
        il, _ = model.transform(images)
        feats = list(model.backbone(il.tensors).values())
        head_out = model.head(feats)
        dets = model(images)
    # The first 32 anchors of each image keep the file small.
    out["cls_logits"] = head_out["cls_logits"][:, :32]
    out["bbox_regression"] = head_out["bbox_regression"][:, :32]
    for i, d in enumerate(dets):
        assert d["boxes"].shape[0] == 20
        for k in ("boxes", "scores", "labels"):
            out[f"out.{i}.{k}"] = d[k]
    return out


def fcos_group() -> dict[str, torch.Tensor]:
    """FCOS as TerraTorch's factory builds it (one anchor per location, sizes 8 and 16, its
    default GroupNorm(32) head, TerraTorch's stack-only transform), the backbone and images of
    `retinanet_group`, formula weights; 20 detections per image kept."""
    out: dict[str, torch.Tensor] = {}
    ag = AnchorGenerator(((8,), (16,)), ((1.0,), (1.0,)))
    model = FCOS(
        WideTinyBackbone(), 3, anchor_generator=ag, head=FCOSHead(32, 1, 3), _skip_resize=True,
        image_mean=[0.0] * 3, image_std=[1.0] * 3, detections_per_img=20,
    ).eval()
    formula_weights(model)
    t = model.transform
    model.transform = terratorch_transform_class()(
        t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size, _skip_resize=True
    ).eval()
    images = [formula([3, 30, 31], 0.3).add(1).div(2), formula([3, 30, 31], 1.2).add(1).div(2)]
    with torch.no_grad():
        il, _ = model.transform(images)
        head_out = model.head(list(model.backbone(il.tensors).values()))
        dets = model(images)
    for k in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        out[k] = head_out[k][:, :32]  # the first 32 locations keep the file small
    for i, d in enumerate(dets):
        assert d["boxes"].shape[0] == 20
        for k in ("boxes", "scores", "labels"):
            out[f"out.{i}.{k}"] = d[k]
    return out


def terratorch_function(relpath: str, name: str, namespace: dict) -> object:
    """A top-level function of the installed TerraTorch's source, compiled on its own (see
    `terratorch_transform_class`)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("terratorch")
    assert spec is not None and spec.submodule_search_locations, "TerraTorch is not installed"
    path = Path(spec.submodule_search_locations[0], relpath)
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    ns = dict(namespace)
    exec(compile(ast.Module([fn], []), str(path), "exec"), ns)
    return ns[name]


def ms_deform_attn_group() -> dict[str, torch.Tensor]:
    """TerraTorch's `ms_deform_attn_core_pytorch` (multi-scale deformable attention's sampling,
    the PyTorch path of its CUDA-only op): two levels (6 x 7 and 3 x 4), 2 heads of 4 channels,
    5 queries, 3 points; sampling locations inside, outside and exactly on the borders."""
    import torch.nn.functional as F  # noqa: N812

    core = terratorch_function(
        "models/backbones/detr_ops/functions/ms_deform_attn_func.py", "ms_deform_attn_core_pytorch",
        {"torch": torch, "F": F},
    )
    g = torch.Generator().manual_seed(21)
    shapes = [[6, 7], [3, 4]]
    # The value is not stored: formula([2, 54, 2, 4], 0.4).
    value = formula([2, 54, 2, 4], 0.4)
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=g) * 1.4 - 0.2
    loc[0, 0, 0, 0] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    loc[1, 4, 1, 1] = torch.tensor([[1.0, 0.5], [-1e-3, 0.5], [0.5, 1.0 + 1e-3]])
    weights = torch.rand(2, 5, 2, 2 * 3, generator=g).softmax(-1).view(2, 5, 2, 2, 3)
    out = {"locations": loc, "weights": weights, "shapes": torch.tensor(shapes, dtype=torch.int64)}
    out["out"] = core(value, shapes, loc, weights)
    return out


GROUPS = {
    "boxes": nms_group,
    "roi_align": roi_align_group,
    "multiscale_roi_align": multiscale_group,
    "box_coder": box_coder_group,
    "anchors": anchors_group,
    "transform": transform_group,
    "rpn": rpn_group,
    "roi_heads": roi_heads_group,
    "paste_masks": paste_group,
    "rcnn": rcnn_group,
    "rcnn_bn": rcnn_bn_group,
    "retinanet": retinanet_group,
    "fcos": fcos_group,
    "ms_deform_attn": ms_deform_attn_group,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures instead of writing")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name, fn in GROUPS.items():
        tensors = {k: v.contiguous().clone() for k, v in fn().items()}
        path = OUT / f"{name}.safetensors"
        if args.check:
            old = load_file(str(path))
            for k, v in tensors.items():
                if k not in old or not torch.equal(old[k].nan_to_num(), v.nan_to_num()):
                    print(f"{name}: {k} differs", file=sys.stderr)
                    bad += 1
        else:
            save_file(tensors, str(path))
    if not args.check:
        meta = {"torch": torch.__version__, "torchvision": torchvision.__version__}
        (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
