"""How close TerraTorch's float64 NMS decisions are, for a corpus detection fixture: where a
different float32 rounding could flip which boxes are kept.

    .venv-ref/bin/python scripts/reference/detection_margins.py \
        [examples/confs/object_detection_substation_prithvi.yaml]

Builds the config's model as `corpus.py` does (the corpus' detection weights), runs the fixture's
input in float64 and records every `batched_nms` call (the RPN's, threshold 0.7, then the RoI
heads', the config's `box_nms_thresh`), image by image. For each call it prints the decisions
closest to the IoU threshold and, for the first 100 kept boxes, the score gap between each kept
box and the closest-scored box it suppresses (which box of a stack of near-duplicates wins),
and the smallest |IoU - threshold| of the decisions up to a kept rank.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import torchvision.models.detection.rpn as rpn  # noqa: E402
from corpus import torch, yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

RANKS = (0, 10, 20, 27, 40, 50, 52, 53, 54, 55, 56, 60, 80, 99)


def greedy(boxes, scores, idxs, thr):
    """NMS in score order: per candidate (index, kept, IoU with the kept boxes of its class - thr)."""
    kept, res = [], []
    for j in torch.argsort(scores, descending=True, stable=True).tolist():
        same = [k for k in kept if idxs[k] == idxs[j]]
        m = float(box_iou(boxes[j:j + 1], boxes[same]).max()) if same else 0.0
        res.append((j, m <= thr, m - thr))
        if m <= thr:
            kept.append(j)
    return res, kept


def report(name, boxes, scores, idxs, thr):
    res, kept = greedy(boxes, scores, idxs, thr)
    close = sorted(res, key=lambda r: abs(r[2]))[:5]
    print(f"{name}: {len(boxes)} candidates, {len(kept)} kept, IoU threshold {thr}; closest IoU calls "
          f"{[(j, 'kept' if ok else 'suppressed', f'{m:+.2e}') for j, ok, m in close]}")
    gaps = []
    for k in kept[:100]:
        same = (idxs == idxs[k]).nonzero().flatten()
        iou = box_iou(boxes[k:k + 1], boxes[same])[0]
        rivals = same[(iou > thr) & (same != k)]
        gaps.append(float((scores[rivals] - scores[k]).abs().min()) if len(rivals) else float("inf"))
    print("   score gap to the closest suppressed rival, by kept rank:",
          [(r, f"{g:.1e}") for r, g in enumerate(gaps) if r in RANKS or g < 1e-5])
    running, upto = 1e9, []
    for _, ok, m in res:
        running = min(running, abs(m))
        if ok:
            upto.append(running)
    print("   smallest |IoU - threshold| of the decisions up to kept rank:",
          [(k, f"{upto[k]:.1e}") for k in RANKS if k < len(upto)])


def main() -> None:
    rel = sys.argv[1] if len(sys.argv) > 1 else "examples/confs/object_detection_substation_prithvi.yaml"
    cfg = yaml.safe_load((corpus.SOURCE / rel).read_text())
    model = corpus.build_task(cfg).model
    corpus.detection_weights(model)
    model.eval()
    io = load_file(str(corpus.FIXTURES / corpus.slug(Path(rel)) / "io.safetensors"))
    calls = []
    original = rpn.box_ops.batched_nms  # the module the RPN and the RoI heads both call

    def recording(boxes, scores, idxs, thr):
        calls.append((boxes.clone(), scores.clone(), idxs.clone(), thr))
        return original(boxes, scores, idxs, thr)

    rpn.box_ops.batched_nms = recording
    with torch.no_grad():
        model.double()(io["input"].double())
    rpn.box_ops.batched_nms = original
    n = io["input"].shape[0]
    for c, (boxes, scores, idxs, thr) in enumerate(calls):
        stage = "RPN" if c < n else "RoI heads"
        report(f"{stage}, image {c % n}", boxes, scores.double(), idxs, thr)


if __name__ == "__main__":
    main()
