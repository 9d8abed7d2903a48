#!/usr/bin/env python
"""PyTorch's own error under `torch.autocast("cpu", dtype=torch.bfloat16)` on fixture cases (any
module of `cases/`), with the fixtures' synthetic weights and inputs: the largest
difference from the float32 forward, relative to the output's magnitude (absolute below 1), as
`cli::bf16_runs_every_model_fixture` measures terrahost's `--precision bf16`. Shows which
fixtures are sensitive to bfloat16 by themselves (BatchNorm statistics of the synthetic weights
that magnify rounding).

    .venv-ref/bin/python scripts/reference/bf16_autocast_errors.py factory_aux factory_temporal_vit_diff
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import importlib  # noqa: E402
import pkgutil  # noqa: E402

import cases  # noqa: E402
import refkit  # noqa: E402


def all_cases() -> dict:
    found = {}
    for m in pkgutil.iter_modules(cases.__path__):
        if not m.name.startswith("_"):
            found.update(importlib.import_module(f"cases.{m.name}").CASES)
    return found


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    known = all_cases()
    for name in names or sorted(known):
        case = known[name]()
        model = case.model
        refkit.apply_synth(model)
        model.eval()
        inputs = refkit.make_inputs(case.input_shapes)
        with torch.no_grad():
            f32 = [o.float() for o in case.forward(model, [i.clone() for i in inputs])]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = [o.float() for o in case.forward(model, [i.clone() for i in inputs])]
        for j, (a, b) in enumerate(zip(f32, bf16)):
            magnitude = max(a.abs().max().item(), 1.0)
            print(f"{name} output {j}: PyTorch bf16 autocast, relative error {(a - b).abs().max().item() / magnitude:.3e}")


if __name__ == "__main__":
    main(sys.argv[1:])
