"""Reference fixtures of TerraTorch's MMEarth ConvNeXtV2 backbones (`terratorch_convnextv2_*`,
`terratorch_convnext_pico`; terratorch/models/backbones/mmearth_convnextv2.py).

TerraTorch 1.2.11's whole forward of these networks fails for every input: the stem's and the
downsampling layers' `timm.layers.LayerNorm`s are channels-last norms applied to [B, C, H, W] maps,
so they normalise the width, which must equal the stage's channels, and no width satisfies every
stage of a preset. So each fixture records, from the real registry-built model:
  * its state_dict keys and shapes (`state_dict.json`) and parameter count;
  * the error of the whole forward on a 64x64 input (`meta.forward_error`);
  * the numbers of the parts that do run, with refkit's synthetic weights on their keys only (the
    presets are too big to synthesise whole; the formula depends on the key and shape alone):
    the first block of each stage (`stages[i][0]`, which holds the GlobalResponseNormMlp) on a small
    map, `head(norm(v))` on pooled features, and, for the narrow presets, `initial_conv` (or
    `stem_orig`) and `downsample_layers[0]` on inputs whose width equals the channels.
Each part is listed in `meta.parts` with its input and output names in `io.safetensors`; the
fixtures are "parity_test": "custom" and `plugins/terratorch/src/tests_mmearth_convnextv2.rs`
checks them.

Usage:
    .venv-ref/bin/python scripts/reference/mmearth_convnextv2_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

import refkit  # noqa: F401  (installs the mmcv stand-in before terratorch is imported)
import torch
from refkit import BACKBONE_REGISTRY, FIXTURES, dump_json, n_params, synth, versions
from safetensors.torch import load_file, save_file

NOTE = (
    "MMEarth dense ConvNeXtV2 as TerraTorch 1.2.11 registers it: channels-last timm LayerNorms on NCHW maps "
    "in the stem and downsampling layers (they normalise the width), timm GlobalResponseNormMlp as each block's "
    "`grn`; forward(x) = head(norm(mean_hw(stages(stem(x))))), which fails for every input of a preset."
)

CASES = {
    "convnextv2_atto": {"num_classes": 10},
    "convnextv2_femto": {"num_classes": 10, "use_orig_stem": True},
    "convnext_pico": {"num_classes": 10, "in_chans": 4},
    "convnextv2_nano": {"num_classes": 10, "patch_size": 16},
    "convnextv2_tiny": {"num_classes": 10, "drop_path_rate": 0.1},
    "convnextv2_base": {"num_classes": 10},
    "convnextv2_large": {"num_classes": 10, "head_init_scale": 0.5},
    "convnextv2_huge": {"num_classes": 10},
}


def _synth_module(module: torch.nn.Module, prefix: str) -> None:
    """refkit's synthetic weights on `module`, keyed by their full key in the network."""
    sd = {k: synth(prefix + k, t) for k, t in module.state_dict().items()}
    module.load_state_dict(sd, strict=True)


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def build_case(name: str, args: dict) -> tuple[dict, dict, list]:
    model = BACKBONE_REGISTRY.build(f"terratorch_{name}", **args).eval()
    dims = [s[0].dwconv.weight.shape[0] for s in model.stages]
    in_chans = args.get("in_chans", 3)
    gen = torch.Generator().manual_seed(0)
    io: dict[str, torch.Tensor] = {}
    parts = []

    try:
        with torch.no_grad():
            model(_randn(gen, 1, in_chans, 64, 64))
        raise SystemExit(f"{name}: the forward was expected to fail")
    except RuntimeError as e:
        forward_error = str(e)

    def part(kind: str, index: int | None, module: torch.nn.Module, prefix: str, x: torch.Tensor) -> None:
        _synth_module(module, prefix)
        with torch.no_grad():
            y = module(x.clone())
        tag = kind if index is None else f"{kind}.{index}"
        io[f"{tag}.input"] = x.contiguous()
        io[f"{tag}.output"] = y.contiguous()
        parts.append({"part": kind, "index": index, "input": f"{tag}.input", "output": f"{tag}.output",
                      "input_shape": list(x.shape), "output_shape": list(y.shape)})

    for i, d in enumerate(dims):
        if d > 512:
            continue  # keeps the fixture small; the same Block code runs at the other widths
        hw = (2, 2) if d <= 192 else (1, 2)
        part("stage_block", i, model.stages[i][0], f"stages.{i}.0.", _randn(gen, 1, d, *hw))
    head = torch.nn.Sequential(model.norm, model.head)
    _synth_module(model.norm, "norm.")
    _synth_module(model.head, "head.")
    x = _randn(gen, 2, dims[-1])
    with torch.no_grad():
        y = head(x)
    io["head.input"], io["head.output"] = x, y
    parts.append({"part": "head", "index": None, "input": "head.input", "output": "head.output",
                  "input_shape": list(x.shape), "output_shape": list(y.shape)})
    if dims[0] <= 48:
        if args.get("use_orig_stem"):
            k = model.stem_orig[0].kernel_size[0]
            part("stem_orig", None, model.stem_orig, "stem_orig.", _randn(gen, 1, in_chans, k, k * dims[0]))
        else:
            part("initial_conv", None, model.initial_conv, "initial_conv.",
                 _randn(gen, 1, in_chans, 3, dims[0] + 2))
    if dims[0] <= 40:
        part("downsample", 0, model.downsample_layers[0], "downsample_layers.0.", _randn(gen, 1, dims[0], 2, dims[0]))

    sd = model.state_dict()
    keys = [[k, list(t.shape), "float32"] for k, t in sd.items()]
    meta = {
        "case": f"terratorch_{name}",
        "registry": "backbone",
        "name": f"terratorch_{name}",
        "channels": None,
        "args": args,
        "reference": f'BACKBONE_REGISTRY.build("terratorch_{name}", **{args!r}). ' + NOTE,
        "parity_test": "custom",
        "n_params": n_params(model),
        "n_state_dict_entries": len(sd),
        "dims": dims,
        "forward_input_shape": [1, in_chans, 64, 64],
        "forward_error": forward_error,
        "parts": parts,
        "versions": versions(),
    }
    return meta, io, keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="recompute and compare, write nothing")
    ap.add_argument("--only", action="append", help="a registered name (repeatable)")
    opts = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    bad = 0
    for name, args in CASES.items():
        if opts.only and name not in opts.only:
            continue
        meta, io, keys = build_case(name, args)
        out = FIXTURES / meta["case"]
        if opts.check:
            old = load_file(str(out / "io.safetensors"))
            same_keys = old.keys() == io.keys() and json.loads((out / "state_dict.json").read_text()) == keys
            same = same_keys and all(torch.equal(old[k], io[k]) for k in io)
            # not bit-identical on another CPU: say by how much (the Rust tests compare at 1e-4)
            diff = max((float((old[k].double() - io[k].double()).abs().max()) for k in io if k in old
                        and old[k].shape == io[k].shape and old[k].numel()), default=0.0)
            print(f"{meta['case']}: {'reproduces' if same else 'DIFFERS'} (max abs diff {diff:.3g}"
                  f"{'' if same_keys else '; keys or state_dict.json differ'})")
            bad += not same
            continue
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        save_file(io, str(out / "io.safetensors"))
        (out / "state_dict.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in keys) + "\n]\n")
        (out / "meta.json").write_text(dump_json(meta) + "\n")
        print(f"{meta['case']}: params={meta['n_params']} parts={[p['output'] for p in meta['parts']]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
