"""Reference fixtures of TerraTorch's DINOv3 backbones (`terratorch_dinov3_*`).

TerraTorch's `DinoV3Wrapper` loads its network with `torch.hub.load("facebookresearch/dinov3", ...)`,
which needs the network. This script points that call at a local checkout of facebookresearch/dinov3
(`source="local"`, `pretrained=False`: nothing is downloaded) and builds the real wrapper. The hub
presets are too big for committed fixtures, so the network's constructor is intercepted: the preset's
arguments are recorded as the hub passes them, `embed_dim`, `num_heads` and `depth` are reduced, and
the reference class builds the model. Everything else (FFN kind and ratio, registers, RoPE settings,
qkv bias and its key mask, LayerScale, norms) is the preset's.

Weights follow refkit's synthetic formula (`scripts/reference/README.md`), except two buffers that are
not weights: `rope_embed.periods` and `blocks.*.attn.qkv.bias_mask` keep the values the reference
computes (the formula's values would be meaningless periods and masks); the Rust test keeps its own
and checks them against `buffer.<key>` in `io.safetensors`.

`terratorch_dinov3_vits16` also gets `checkpoint.pth`: the network's own state_dict (Meta's layout,
no `dinov3.` prefix) written by `torch.save`, which the reference wrapper loads through `ckpt_path`
(checked here) and the Rust entry must load unchanged.

Usage:
    .venv-ref/bin/python scripts/reference/dinov3_fixtures.py /path/to/dinov3 [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from mmcv_stand_in import install_stand_ins  # noqa: E402  (before terratorch is imported, as refkit)

install_stand_ins()
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# name -> (reduced embed_dim, num_heads, depth, return_cls_token). Widths keep D_head = 16 (four
# RoPE periods per axis) so the fixtures stay a few hundred KB.
CASES = {
    "terratorch_dinov3_vits16": ("dinov3_vits16", 32, 2, 2, True),
    "terratorch_dinov3_vits16_no_cls": ("dinov3_vits16", 32, 2, 2, False),
    "terratorch_dinov3_vits16plus": ("dinov3_vits16plus", 32, 2, 2, True),
    "terratorch_dinov3_vitb16": ("dinov3_vitb16", 32, 2, 3, False),
    "terratorch_dinov3_vitl16plus": ("dinov3_vitl16plus", 64, 4, 2, True),
    "terratorch_dinov3_vitl16": ("dinov3_vitl16", 32, 2, 2, True),
    "terratorch_dinov3_vith16plus": ("dinov3_vith16plus", 64, 4, 3, True),
    "terratorch_dinov3_vit7b16": ("dinov3_vit7b16", 64, 4, 2, True),
}
INPUT_SHAPE = [2, 3, 48, 32]  # a 3 x 2 patch grid: rows and columns differ

# name -> (reduced depths, dims, return_cls_token) of the ConvNeXt presets.
CONVNEXT_CASES = {
    "terratorch_dinov3_convnext_base": ("dinov3_convnext_base", [1, 1, 2, 1], [8, 16, 24, 32], True),
    "terratorch_dinov3_convnext_large": ("dinov3_convnext_large", [1, 1, 1, 1], [8, 16, 24, 32], False),
    "terratorch_dinov3_convnext_small": ("dinov3_convnext_small", [1, 2, 1, 1], [8, 16, 16, 24], True),
    "terratorch_dinov3_convnext_tiny": ("dinov3_convnext_tiny", [2, 1, 1, 1], [8, 8, 16, 16], True),
}
CONVNEXT_INPUT_SHAPE = [1, 3, 32, 64]  # stages of 8 x 16, 4 x 8, 2 x 4 and 1 x 2
KEPT_BUFFERS = ("rope_embed.periods", "bias_mask")


def synth(key: str, t: torch.Tensor) -> torch.Tensor:
    """refkit.synth (kept bit-identical; refkit itself imports all of TerraTorch's sources)."""
    if not t.is_floating_point():
        return torch.zeros_like(t)
    n = t.numel()
    phase = (sum(key.encode("utf-8")) % 997) * 0.01
    v = torch.sin(torch.arange(n, dtype=torch.float64) * 0.618 + phase)
    if key.endswith("running_var"):
        v = 1.0 + 0.5 * v
    elif key.endswith("running_mean"):
        v = 0.1 * v
    elif t.dim() >= 2:
        v = v / math.sqrt(n / t.shape[0])
    elif key.endswith("weight"):
        v = 1.0 + 0.1 * v
    else:
        v = 0.1 * v
    return v.reshape(t.shape).to(t.dtype)


class Reducer:
    """Intercepts the network's class (`DinoVisionTransformer`, `ConvNeXt`) as the hub calls it."""

    def __init__(self, module, cls_name: str):
        self.real = getattr(module, cls_name)
        self.reduce: dict | None = None
        self.captured: dict = {}
        setattr(module, cls_name, self)

    def __call__(self, **kwargs):
        self.captured = dict(kwargs)
        if self.reduce:
            kwargs.update(self.reduce)
        return self.real(**kwargs)

    def full_size_counts(self) -> tuple[int, int]:
        """(parameters, state_dict entries) of the preset at full size, built on the meta device."""
        with torch.device("meta"):
            m = self.real(**{k: v for k, v in self.captured.items() if k != "device"})
        return sum(p.numel() for p in m.parameters()), len(m.state_dict())


def jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dinov3_dir", type=Path, help="local checkout of facebookresearch/dinov3")
    ap.add_argument("--check", action="store_true", help="recompute and compare; write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    hub_dir = str(args.dinov3_dir.resolve())
    sys.path.insert(0, hub_dir)
    import dinov3.models.convnext as cn  # noqa: E402
    import dinov3.models.vision_transformer as vt  # noqa: E402

    reducer = Reducer(vt, "DinoVisionTransformer")
    convnext_reducer = Reducer(cn, "ConvNeXt")
    real_hub_load = torch.hub.load

    def local_hub_load(repo, model, *a, **kw):
        # TerraTorch asks for "facebookresearch/dinov3"; the checkout answers instead of GitHub.
        assert repo == "facebookresearch/dinov3", repo
        return real_hub_load(hub_dir, model, *a, source="local", **kw)

    torch.hub.load = local_hub_load
    os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="dinov3-hub-")  # file:// checkpoints are copied here
    from terratorch.models.backbones.dinov3.dinov3_wrapper import DinoV3Wrapper

    jobs = [
        (case, hub, {"embed_dim": d, "num_heads": h, "depth": n}, cls, reducer, INPUT_SHAPE)
        for case, (hub, d, h, n, cls) in CASES.items()
    ] + [
        (case, hub, {"depths": depths, "dims": dims}, cls, convnext_reducer, CONVNEXT_INPUT_SHAPE)
        for case, (hub, depths, dims, cls) in CONVNEXT_CASES.items()
    ]
    problems = []
    for case, hub_name, reduce, cls, red, input_shape in jobs:
        red.reduce = reduce
        wrapper = DinoV3Wrapper(model=hub_name, ckpt_path=None, return_cls_token=cls)
        preset = {k: (v if isinstance(v, list) else jsonable(v)) for k, v in red.captured.items() if k != "device"}
        full_params, full_keys = red.full_size_counts()
        sd = wrapper.state_dict()
        new_sd = {k: (t.clone() if any(b in k for b in KEPT_BUFFERS) else synth(k, t)) for k, t in sd.items()}
        wrapper.load_state_dict(new_sd, strict=True)
        wrapper.eval()
        # ConvNeXt's final norm is also `norms.3`: one tensor under two keys, which holds the value of the
        # key loaded last. Record such groups (in state_dict order) and the values that are really there.
        sd_now = wrapper.state_dict()
        groups: dict[int, list[str]] = {}
        for k, t in sd_now.items():
            groups.setdefault(t.data_ptr(), []).append(k)
        aliases = [g for g in groups.values() if len(g) > 1]
        new_sd = {k: t.clone() for k, t in sd_now.items()}
        g = torch.Generator().manual_seed(0)
        x = torch.randn(*input_shape, generator=g, dtype=torch.float32)
        with torch.no_grad():
            outs = [o.contiguous() for o in wrapper(x.clone())]
        io = {"input.0": x}
        io.update({f"output.{i}": o for i, o in enumerate(outs)})
        io.update({f"buffer.{k}": t.contiguous() for k, t in new_sd.items() if any(b in k for b in KEPT_BUFFERS)})
        meta = {
            "case": case,
            "registry": "backbone",
            "name": "terratorch_" + hub_name,
            "args": {"ckpt_path": None, "return_cls_token": cls},
            "reference": f"DinoV3Wrapper(model={hub_name!r}, ckpt_path=None, return_cls_token={cls}) with the "
            f"hub preset reduced to {reduce}",
            "parity_test": "custom",
            "reduced": reduce,
            "hub_preset": preset,
            "full_size": {"n_params": full_params, "n_state_dict_entries": full_keys},
            "kept_buffers": list(KEPT_BUFFERS),
            "aliases": aliases,
            "out_channels": [int(c) for c in wrapper.out_channels],
            "n_outputs": len(outs),
            "input_shapes": [list(x.shape)],
            "output_shapes": [list(o.shape) for o in outs],
            "n_params": sum(p.numel() for p in wrapper.parameters()),
            "versions": {"torch": torch.__version__, "terratorch": __import__("importlib.metadata").metadata.version("terratorch")},
        }
        if hub_name == "dinov3_vitl16":
            from dinov3.hub.backbones import Weights

            real_hub_load(hub_dir, hub_name, source="local", pretrained=False, weights=Weights.SAT493M)
            meta["full_size_sat493m"] = dict(zip(("n_params", "n_state_dict_entries"), reducer.full_size_counts()))
        keys = [[k, list(t.shape), str(t.dtype).replace("torch.", "")] for k, t in new_sd.items()]
        write_ckpt = case == "terratorch_dinov3_vits16"
        if write_ckpt:
            # The network's own keys, as Meta distributes them; the wrapper must load it unchanged.
            inner = {k[len("dinov3."):]: t for k, t in new_sd.items()}
            tmp = Path(tempfile.mkdtemp()) / "checkpoint.pth"
            torch.save(inner, tmp)
            loaded = DinoV3Wrapper(model=hub_name, ckpt_path=str(tmp), return_cls_token=cls).eval()
            with torch.no_grad():
                again = loaded(x.clone())
            assert all(torch.equal(a, b) for a, b in zip(again, outs)), "checkpoint.pth does not reproduce"
            meta["checkpoint"] = "checkpoint.pth"
        out_dir = FIXTURES / case
        if args.check:
            old = load_file(str(out_dir / "io.safetensors"))
            for k, t in io.items():
                if k not in old or old[k].shape != t.shape:
                    problems.append(f"{case}: {k} missing or of another shape")
                elif not torch.equal(old[k], t):
                    # not bit-identical on another CPU: say by how much (the Rust tests compare at 1e-4)
                    problems.append(f"{case}: {k} differs by {float((old[k].double() - t.double()).abs().max()):.3g}")
            if json.loads((out_dir / "state_dict.json").read_text()) != keys:
                problems.append(f"{case}: state_dict.json differs")
            continue
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "state_dict.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in keys) + "\n]\n")
        save_file(io, str(out_dir / "io.safetensors"))
        if write_ckpt:
            shutil.copy(tmp, out_dir / "checkpoint.pth")
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        size = sum(f.stat().st_size for f in out_dir.iterdir())
        print(f"{case}: {len(outs)} outputs {list(outs[0].shape)}, {size / 1024:.0f} KiB")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    if args.check:
        print(f"{len(jobs)} fixtures reproduce bit for bit")


if __name__ == "__main__":
    main()
