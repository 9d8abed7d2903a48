#!/usr/bin/env python
"""TerraTorch's side of the catalog benchmark: build and forward of the model in
`prithvi_unet.yaml` with TerraTorch 1.2.11 (PyTorch eager, eval mode), under
`torch.no_grad()` or `torch.inference_mode()` (what Lightning's predict uses).

    .venv-ref/bin/python scripts/bench/terratorch_reference.py --runs 7 --threads 2 --mode inference_mode
    .venv-ref/bin/python scripts/bench/terratorch_reference.py --once   # one build + one forward (for peak RSS)
    .venv-ref/bin/python scripts/bench/terratorch_reference.py --serve --batch 8   # a worker for forward_pairs.py
    ... --serve --weights W.safetensors --input X.safetensors --output Y.safetensors
        # those weights (strictly) and that input (`x`); the warm-up output is written as `y`

Prints one JSON object: medians in seconds, the thread count and the versions.
"""

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "reference"))
from mmcv_stand_in import install_stand_ins  # noqa: E402

# mmcv-lite lacks the compiled mmcv.ops that TerraTorch's mmseg registry imports.
install_stand_ins()
warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--once", action="store_true")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", choices=["no_grad", "inference_mode"], default="inference_mode")
    p.add_argument("--serve", action="store_true",
                   help="build once, warm up, print {\"ready\": true}, then one forward per stdin line")
    p.add_argument("--weights", help="a .safetensors state_dict to load (strictly) instead of the initialisation")
    p.add_argument("--input", help="a .safetensors file whose tensor `x` is the input (its batch wins)")
    p.add_argument("--output", help="with --serve: write the warm-up forward's output here (`y`)")
    a = p.parse_args()

    t_import = time.perf_counter()
    import torch

    from terratorch.registry import MODEL_FACTORY_REGISTRY

    import_s = time.perf_counter() - t_import
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load((HERE / "prithvi_unet.yaml").read_text())
    factory = MODEL_FACTORY_REGISTRY.build(cfg["model_factory"])

    def build():
        m = factory.build_model(**json.loads(json.dumps(cfg["model_args"])))
        if a.weights:
            from safetensors.torch import load_file

            m.load_state_dict(load_file(a.weights), strict=True)
        return m.eval()

    torch.manual_seed(0)
    x = torch.randn(a.batch, 6, 224, 224)
    if a.input:
        from safetensors.torch import load_file

        x = load_file(a.input)["x"].float().contiguous()
        a.batch = x.shape[0]
    if a.serve:
        serve(build(), x, a)
        return
    builds, forwards = [], []
    runs = 1 if a.once else a.runs
    for _ in range(runs):
        t = time.perf_counter()
        model = build()
        builds.append(time.perf_counter() - t)
    with torch.no_grad() if a.mode == "no_grad" else torch.inference_mode():
        if not a.once:
            model(x)  # warm-up
        for _ in range(runs):
            t = time.perf_counter()
            out = model(x).output
            forwards.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "mode": a.mode,
                "import_s": import_s,
                "build_s": statistics.median(builds),
                "forward_s": statistics.median(forwards),
                "builds_s": builds,
                "forwards_s": forwards,
                "output_shape": list(out.shape),
                "params": sum(p.numel() for p in model.parameters()),
                "torch": torch.__version__,
            }
        )
    )


def serve(model, x, a) -> None:
    """The worker side of forward_pairs.py: one timed forward per line on stdin."""
    import torch

    with torch.no_grad() if a.mode == "no_grad" else torch.inference_mode():
        y = model(x).output  # warm-up
        if a.output:
            from safetensors.torch import save_file

            save_file({"y": y.float().contiguous()}, a.output)
        del y
        print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "batch": a.batch,
                          "torch": torch.__version__}), flush=True)
        for _ in sys.stdin:
            t = time.perf_counter()
            model(x)
            print(json.dumps({"forward_s": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
    main()
