#!/usr/bin/env python
"""Issue 18's speed and memory benchmark: one forward of TerraTorch's own object-detection
configs, terrahost against TerraTorch, in interleaved pairs of warm persistent workers.

    .venv-ref/bin/python scripts/bench/detection_pairs.py --rounds 9 --json out.json
    ... --config scripts/bench/detection_resnet50_faster_rcnn.yaml     # one config only
    ... --terratorch-python .venv-bench/bin/python                     # TerraTorch on PyTorch 2.15

Configs (default both): `object_detection_substation_prithvi.yaml` of TerraTorch's repository
(Prithvi-EO-2.0-300M with TerraTorch's neck stack under Mask R-CNN, 224 x 224, as the config
trains) and `detection_resnet50_faster_rcnn.yaml` (the substation ResNet-50 config with
`framework: faster-rcnn`).

For each config the script (in the Python that runs it, with TerraTorch) builds the model from
the YAML as `scripts/reference/corpus.py` does (pretrained off) with the corpus' detection
weights (refkit's `synth`, the RPN's and RoI heads' matrices from `hashed`, so that the model
detects things: a random model keeps nothing after the score threshold and skips the RoI heads'
work), writes them and a seeded input to --dir, and starts two workers on them: terrahost's
`forward_server` bench (`TERRAHOST_BENCH_CONFIG` = the YAML) and this script's `--serve`
(TerraTorch, `torch.inference_mode`). Each round runs one forward on each, in alternating order,
after a --pause; the ratio is terrahost's time over TerraTorch's in the same round. Printed: the
median times, the median ratio with its range and interquartile range, each worker's peak RSS
(VmHWM, build included) and resident set after the rounds (VmRSS), whether the detections
agree, and where each forward spends its time: TerraTorch's by forward hooks on the backbone,
the necks, the RPN and the RoI heads; terrahost's by its R-CNN's stage timer
(`TERRAHOST_STAGE_TIMES`, `terrahost_layers::stage_times`), whose `backbone_and_necks` is
TerraTorch's backbone plus necks and whose `transform` and `postprocess` are TerraTorch's
`other`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts" / "reference"))

from forward_pairs import quartiles, read_json_line, server_binary  # noqa: E402

CONFIGS = [
    REPO / "tests/corpus/terratorch/examples/confs/object_detection_substation_prithvi.yaml",
    HERE / "detection_resnet50_faster_rcnn.yaml",
]


def build(config: Path):
    """TerraTorch's model of `config` with the corpus' detection weights, and its input channels."""
    import corpus  # noqa: PLC0415  (imports TerraTorch)

    cfg = corpus.yaml.safe_load(config.read_text())
    model = corpus.build_task(cfg).model
    corpus.detection_weights(model)
    model_args = cfg["model"]["init_args"]["model_args"]
    channels, _ = corpus.channel_guess(model_args, model.torchvision_model.backbone)
    return model.eval(), channels


def serve(a) -> None:
    """The TerraTorch worker: build, load the shared weights, warm up, then one timed forward per
    stdin line; `stages` on a line reports the last forward's time per part."""
    import torch  # noqa: PLC0415
    from safetensors.torch import load_file, save_file  # noqa: PLC0415

    torch.set_num_threads(a.threads)
    model, _ = build(Path(a.config))
    model.load_state_dict(load_file(a.weights), strict=True)
    x = load_file(a.input)["x"]
    tv = model.torchvision_model
    parts = {"backbone": tv.backbone.backbone, "necks": tv.backbone.necks, "rpn": tv.rpn, "roi_heads": tv.roi_heads}
    spent: dict[str, float] = {}

    def timed(name, module):
        def pre(*_):
            spent[f"_{name}"] = time.perf_counter()

        def post(*_):
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - spent.pop(f"_{name}")

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    for name, module in parts.items():
        timed(name, module)
    with torch.inference_mode():
        out = model(x).output
        save_file({f"{k}.{i}": v.contiguous() for i, d in enumerate(out) for k, v in d.items()}, a.output)
        print(json.dumps({"ready": True, "torch": torch.__version__}), flush=True)
        for line in sys.stdin:
            spent.clear()
            t = time.perf_counter()
            model(x)
            total = time.perf_counter() - t
            stages = {k: v for k, v in spent.items() if not k.startswith("_")}
            stages["other"] = total - sum(stages.values())
            print(json.dumps({"forward_s": total, "stages_s": stages}), flush=True)


class Worker:
    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.read()
        if self.info is None:
            raise SystemExit(f"detection_pairs: the {name} worker ended before it was ready (exit {self.proc.wait()})")

    def read(self) -> dict | None:
        return read_json_line(self.proc)

    def forward(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        got = self.read()
        if got is None:
            raise SystemExit(f"detection_pairs: the {self.name} worker died (exit {self.proc.wait()})")
        return got

    def memory_mib(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        kib = {l.split(":")[0]: int(l.split()[1]) for l in status if l.startswith(("VmHWM", "VmRSS"))}
        return {"peak_rss_mib": kib["VmHWM"] / 1024, "rss_mib": kib["VmRSS"] / 1024}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def agreement(a: Path, b: Path) -> dict:
    """How terrahost's detections (a) compare with TerraTorch's (b), image by image. Detections
    are paired by label and box (within 0.01 px), so that two detections whose scores are a
    rounding apart and come out in swapped order count as the same detections; `swapped` counts
    those, `unpaired` the detections of either side that have no partner."""
    from safetensors.torch import load_file  # noqa: PLC0415

    x, y = load_file(str(a)), load_file(str(b))
    if set(x) != set(y):
        return {"same_outputs": False, "names": [sorted(x), sorted(y)]}
    res = {"detections": 0, "paired": 0, "swapped": 0, "unpaired": 0, "boxes_max_abs_diff": 0.0,
           "scores_max_abs_diff": 0.0}
    images = sorted(int(k.split(".")[1]) for k in x if k.startswith("labels."))
    for i in images:
        la, lb = x[f"labels.{i}"], y[f"labels.{i}"]
        ba, bb = x[f"boxes.{i}"].double(), y[f"boxes.{i}"].double()
        sa, sb = x[f"scores.{i}"].double(), y[f"scores.{i}"].double()
        res["detections"] += len(la)
        used: set[int] = set()
        for p in range(len(la)):
            near = ((bb - ba[p]).abs().amax(1) < 0.01) & (lb == la[p]) if len(lb) else lb.bool()
            cands = [int(q) for q in near.nonzero().flatten() if int(q) not in used]
            if not cands:
                res["unpaired"] += 1
                continue
            q = min(cands, key=lambda q: (abs(float(sa[p] - sb[q])), abs(q - p)))
            used.add(q)
            res["paired"] += 1
            res["swapped"] += q != p
            res["boxes_max_abs_diff"] = max(res["boxes_max_abs_diff"], float((ba[p] - bb[q]).abs().max()))
            res["scores_max_abs_diff"] = max(res["scores_max_abs_diff"], abs(float(sa[p] - sb[q])))
            if f"masks.{i}" in x:
                d = float((x[f"masks.{i}"][p].double() - y[f"masks.{i}"][q].double()).abs().max())
                res["masks_max_abs_diff"] = max(res.get("masks_max_abs_diff", 0.0), d)
        res["unpaired"] += len(lb) - len(used)
    return res


def run_config(config: Path, a) -> dict:
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    d = Path(a.dir) / config.stem
    d.mkdir(parents=True, exist_ok=True)
    print(f"==> {config.name}: preparing the weights and input in {d}", file=sys.stderr, flush=True)
    model, channels = build(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "weights.safetensors"))
    x = torch.rand(a.batch, channels, a.size, a.size, generator=torch.Generator().manual_seed(0))
    save_file({"x": x}, str(d / "input.safetensors"))
    del model

    stage_file = d / "terrahost_stage_times.jsonl"
    stage_file.unlink(missing_ok=True)
    env = dict(os.environ, TERRAHOST_STAGE_TIMES=str(stage_file), TERRAHOST_BENCH_CONFIG=str(config), TERRAHOST_BENCH_WEIGHTS=str(d / "weights.safetensors"),
               TERRAHOST_BENCH_INPUT=str(d / "input.safetensors"), TERRAHOST_BENCH_OUTPUT=str(d / "out_terrahost.safetensors"),
               TERRAHOST_BENCH_OUTPUT_ALL="1", TERRAHOST_BENCH_THREADS=str(a.threads))
    workers = [
        Worker("terrahost", [server_binary()], env),
        Worker("terratorch", [a.terratorch_python, str(Path(__file__).resolve()), "--serve", "--config", str(config),
                              "--weights", str(d / "weights.safetensors"), "--input", str(d / "input.safetensors"),
                              "--output", str(d / "out_terratorch.safetensors"), "--threads", str(a.threads)], dict(os.environ)),
    ]
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    stages: list[dict] = []
    ratios = []
    for r in range(a.rounds):
        order = workers if r % 2 == 0 else workers[::-1]
        got = {}
        for w in order:
            time.sleep(a.pause)
            got[w.name] = w.forward()
            times[w.name].append(got[w.name]["forward_s"])
        stages.append(got["terratorch"]["stages_s"])
        ratios.append(got["terrahost"]["forward_s"] / got["terratorch"]["forward_s"])
        print(f"    round {r + 1}: terrahost {got['terrahost']['forward_s']:.3f} s, terratorch "
              f"{got['terratorch']['forward_s']:.3f} s, ratio {ratios[-1]:.3f}", file=sys.stderr, flush=True)
    memory = {w.name: w.memory_mib() for w in workers}
    info = {w.name: w.info for w in workers}
    for w in workers:
        w.close()
    # The worker's stage times: one line per forward (warm-up first), the last `rounds` timed.
    lines = [json.loads(l)["stages_s"] for l in stage_file.read_text().splitlines()][-a.rounds:] \
        if stage_file.exists() else []
    q1, q3 = quartiles(ratios)
    return {
        "config": str(config.relative_to(REPO)),
        "input_shape": list(x.shape),
        "rounds": a.rounds,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_terrahost_over_terratorch": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                            "iqr": [q1, q3], "per_round": ratios},
        "memory_mib": memory,
        "terratorch_stages_median_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        "terrahost_stages_median_s": {k: statistics.median(s[k] for s in lines) for k in lines[0]} if lines else {},
        "agreement": agreement(d / "out_terrahost.safetensors", d / "out_terratorch.safetensors"),
        "workers": info,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="a TerraTorch ObjectDetectionTask YAML (default: both)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--pause", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default="/tmp/terrahost-detection-bench")
    p.add_argument("--terratorch-python", default=sys.executable)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        a.config = a.config[0]
        serve(a)
        return
    results = [run_config(Path(c).resolve(), a) for c in (a.config or CONFIGS)]
    print("| config | terrahost | TerraTorch | ratio, median [min, max] | peak RSS terrahost / TerraTorch |")
    print("|---|---|---|---|---|")
    for r in results:
        m, q = r["median_s"], r["ratio_terrahost_over_terratorch"]
        mem = r["memory_mib"]
        print(f"| {Path(r['config']).stem} {r['input_shape']} | {m['terrahost'] * 1e3:.0f} ms | "
              f"{m['terratorch'] * 1e3:.0f} ms | {q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}] | "
              f"{mem['terrahost']['peak_rss_mib']:.0f} / {mem['terratorch']['peak_rss_mib']:.0f} MiB |")
        for who in ("terratorch", "terrahost"):
            parts = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r[f"{who}_stages_median_s"].items())
            print(f"    {who}'s forward by part (medians): {parts}")
        print(f"    agreement: {r['agreement']}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
