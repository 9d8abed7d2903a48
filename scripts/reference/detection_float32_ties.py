"""Shows that a corpus detection fixture's difference is a float32 tie: TerraTorch's own float32
run, with one pair of RPN proposals whose objectness is a float32 rounding apart swapped, gives
terrahost's detections.

    target/release/terrahost run --config tests/corpus/terratorch/<config> --weights W \
        --input I --output terrahost.safetensors       # W, I: written by --prepare
    .venv-ref/bin/python scripts/reference/detection_float32_ties.py --prepare DIR [--config REL]
    .venv-ref/bin/python scripts/reference/detection_float32_ties.py --terrahost OUT [--config REL]

`--prepare DIR` writes the corpus' detection weights (`DIR/weights.safetensors`) and the fixture's
input (`DIR/input.safetensors`) for `terrahost run`. With `--terrahost OUT` (what `run` wrote), it
runs TerraTorch's model in float32 as built, then once per tie of `corpus.FLOAT32_TIES` for the
config with that tie's two proposals swapped in the RPN's NMS of its image, and prints, per image,
how many leading detections terrahost's output shares with each run (same label, box within
0.01 px).

For `object_detection_substation_prithvi.yaml`: as built, image 1 agrees up to detection 54;
with the RPN's proposals 25 and 26 of image 1 swapped (objectness 0.526945353 and 0.526945055 in
float32, 2.8e-7 apart in float64: less than the float32 error of this model's scores), it
agrees on all 100.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import torchvision.models.detection.rpn as rpn  # noqa: E402
from corpus import torch, yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

DEFAULT = "examples/confs/object_detection_substation_prithvi.yaml"


def shared_prefix(ours: dict, theirs: dict, image: int) -> int:
    a = ours[image]
    n = min(len(a["labels"]), len(theirs[f"labels.{image}"]))
    for j in range(n):
        if int(a["labels"][j]) != int(theirs[f"labels.{image}"][j]) or \
                float((a["boxes"][j] - theirs[f"boxes.{image}"][j]).abs().max()) > 1e-2:
            return j
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT, help="relative to tests/corpus/terratorch")
    p.add_argument("--prepare", metavar="DIR")
    p.add_argument("--terrahost", metavar="OUT")
    a = p.parse_args()
    rel = Path(a.config)
    cfg = yaml.safe_load((corpus.SOURCE / rel).read_text())
    model = corpus.build_task(cfg).model
    corpus.detection_weights(model)
    x = load_file(str(corpus.FIXTURES / corpus.slug(rel) / "io.safetensors"))["input"]
    if a.prepare:
        d = Path(a.prepare)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "weights.safetensors"))
        save_file({"input": x}, str(d / "input.safetensors"))
        print(f"wrote {d}/weights.safetensors and {d}/input.safetensors")
        return
    theirs = load_file(a.terrahost)
    original = rpn.box_ops.batched_nms  # the RPN's NMS; the RoI heads call the same function
    calls = {"n": 0}
    swap: dict = {}

    def patched(boxes, scores, idxs, thr):
        call = calls["n"]
        calls["n"] += 1
        if swap and call == swap["image"]:  # the RPN's NMS runs first, once per image
            keep = original(boxes, scores, idxs, thr)
            k = int(keep[swap["rpn_kept_rank"]])
            same = (idxs == idxs[k]).nonzero().flatten()
            rivals = same[(box_iou(boxes[k:k + 1], boxes[same])[0] > thr) & (same != k)]
            r = int(rivals[(scores[rivals] - scores[k]).abs().argmin()])
            print(f"  image {swap['image']}: RPN proposals {k} (objectness {float(scores[k]):.9f}, kept) and "
                  f"{r} ({float(scores[r]):.9f}, suppressed) swapped")
            scores = scores.clone()
            scores[[k, r]] = scores[[r, k]]
        return original(boxes, scores, idxs, thr)

    rpn.box_ops.batched_nms = patched
    images = x.shape[0]
    for tie in [None] + corpus.FLOAT32_TIES.get(corpus.slug(rel), []):
        swap.clear()
        swap.update(tie or {})
        calls["n"] = 0
        with torch.no_grad():
            out = model(x).output
        what = "as built" if tie is None else f"tie of image {tie['image']} swapped"
        print(f"{what}: terrahost shares " + ", ".join(
            f"image {i}: {shared_prefix(out, theirs, i)} of {len(out[i]['labels'])}" for i in range(images)))


if __name__ == "__main__":
    main()
