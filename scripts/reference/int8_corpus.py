#!/usr/bin/env python
"""What int8 would cost on the corpus, measured with PyTorch's own int8: every built,
non-detection config of tests/corpus/ is rebuilt in TerraTorch with its synthetic weights,
its linear layers are quantized as `torch.ao.quantization.quantize_dynamic` does (int8
weights, activations quantized per call; what "int8 on CPU" means for a transformer, the
only int8 PyTorch runs without calibration data), and it is run on the fixture's own input.
The output is compared with the fixture's float64 one, as the bf16 corpus test compares
terrahost's: the largest error relative to the output's magnitude and, for segmentation and
classification, how many argmax decisions agree.

Issue 19 asks for `--precision int8` only where it keeps at least 99.9 % of the corpus'
argmax decisions; this is the measurement that decides it.

    .venv-ref/bin/python scripts/reference/int8_corpus.py [--only SLUG_PART] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402  (TerraTorch's registries, the corpus' model building)
from refkit import apply_synth, torch, yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def quantize(model: torch.nn.Module, per_channel: bool) -> None:
    """Quantizes `model`'s linear layers in place. In place, not on quantize_dynamic's deep
    copy: TerraTorch's Prithvi sets `forward` on the instance to a closure over the model it
    was built for, so a copy's forward would still run the float32 original's layers."""
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel
               else torch.ao.quantization.default_dynamic_qconfig)
    torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, inplace=True)


def measure(slug: str, meta: dict, per_channel: bool) -> dict:
    cfg = yaml.safe_load((corpus.REPO / meta["config"]).read_text())
    torch.manual_seed(0)
    model = corpus.build_task(cfg).model
    apply_synth(model)
    model.eval()
    io = load_file(str(corpus.FIXTURES / slug / "io.safetensors"))
    inputs = {k: io[k] for k in meta["input_shapes"]}
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    quantize(model, per_channel)
    q = model
    torch.manual_seed(meta.get("forward_seed", 0))
    with torch.no_grad():
        out = corpus.forward(q, {k: v.clone() for k, v in inputs.items()})
    classes = "Segmentation" in meta["task_class"] or "Classification" in meta["task_class"]
    rec: dict = {"linear_layers": linears, "outputs": {}}
    for name in meta["output_names"]:
        got, ref = out[name].double(), io[f"f64.{name}"].double()
        magnitude = max(float(ref.abs().max()) if ref.numel() else 0.0, 1.0)
        entry = {"rel_err_vs_f64": float((got - ref).abs().max()) / magnitude}
        if classes and got.dim() >= 2 and got.shape[1] >= 2:
            same = got.argmax(1) == ref.argmax(1)
            entry.update(argmax_agree=int(same.sum()), argmax_total=same.numel())
        rec["outputs"][name] = entry
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[])
    p.add_argument("--json", type=Path)
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel (else per tensor)")
    a = p.parse_args()
    torch.set_num_threads(2)
    results = json.loads((corpus.CORPUS / "results.json").read_text())
    report, agree, total = {}, 0, 0
    for slug, r in sorted(results.items()):
        if r.get("status") != "built" or (a.only and not any(o in slug for o in a.only)):
            continue
        meta = json.loads((corpus.FIXTURES / slug / "meta.json").read_text())
        if meta.get("task") == "object_detection" or "ObjectDetection" in meta.get("task_class", ""):
            continue
        t = time.time()
        try:
            rec = measure(slug, meta, a.per_channel)
        except Exception as e:  # noqa: BLE001
            rec = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        rec["seconds"] = round(time.time() - t, 1)
        for o in rec.get("outputs", {}).values():
            agree += o.get("argmax_agree", 0)
            total += o.get("argmax_total", 0)
        report[slug] = rec
        worst = max((o["rel_err_vs_f64"] for o in rec.get("outputs", {}).values()), default=float("nan"))
        args = [(o.get("argmax_agree"), o.get("argmax_total")) for o in rec.get("outputs", {}).values() if "argmax_total" in o]
        print(f"{slug}: linears {rec.get('linear_layers')}, rel err {worst:.3e}, argmax {args} {rec.get('error', '')}", flush=True)
    summary = {"torch": torch.__version__, "qengine": torch.backends.quantized.engine,
               "weights": "per_channel" if a.per_channel else "per_tensor",
               "argmax_agree": agree, "argmax_total": total, "configs": report}
    print(f"int8 (PyTorch quantize_dynamic): {len(report)} configs, argmax {agree} of {total} agree "
          f"({100 * agree / max(total, 1):.3f} %)")
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
