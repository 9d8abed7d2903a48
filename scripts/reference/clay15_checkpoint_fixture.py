#!/usr/bin/env python
"""The `factory_clay15_checkpoint` fixture: `Clay1_5ModelFactory` with `pretrained=True` and a local
`checkpoint_path`, as TerraTorch 1.2.13 reads it (`_load_encoder_weights`: the `model.encoder.*` entries of
the Lightning checkpoint's `state_dict`).

The checkpoint is laid out as Clay's published `clay-v1.5.ckpt` is: a Lightning dict whose `state_dict`
holds the whole ClayMAE under `model.` (the encoder, the MAE decoder) and the distillation teacher under
`teacher.`. Its encoder is upstream's own `Encoder` at the small size of `cases/clay15_factory.py`, with
upstream's random initialisation (seeded) - not refkit's synthetic formula, so the test sees values that
only the checkpoint can give. The decoder and head get refkit's synthetic weights (upstream initialises
them at random), and the Rust test sets the same on the same keys.

Needs TerraTorch >= 1.2.12 (the 1.2.13 wheel over `.venv-ref`, as `cases/clay15_factory.py`):

    PYTHONPATH=<unpacked terratorch-1.2.13 wheel> .venv-ref/bin/python scripts/reference/clay15_checkpoint_fixture.py [--check]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from refkit import FIXTURES, dump_json, make_inputs, synth, versions  # noqa: E402  (installs the stand-ins)

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from cases.clay15_factory import METADATA, SMALL  # noqa: E402
from terratorch.models.backbones.clay_v15.model import Encoder  # noqa: E402
from terratorch.registry import MODEL_FACTORY_REGISTRY  # noqa: E402

CASE = "factory_clay15_checkpoint"
CKPT = "clay-v1.5-small.ckpt"
ENCODER_KEYS = "encoder.encoder_module."  # where the task model holds the checkpoint's encoder
ARGS = {
    "task": "segmentation",
    "backbone": "clay_v1.5",
    "in_channels": 4,
    "pretrained": True,
    "checkpoint_path": CKPT,  # relative to the fixture directory; the test makes it absolute
    "metadata": METADATA,
    "platform": "sentinel-2-l2a",
    "decoder": "FCNDecoder",
    "decoder_channels": 16,
    "num_classes": 3,
    **SMALL,
}
SHAPE = [1, 4, 30, 30]


def write_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A Lightning checkpoint in clay-v1.5.ckpt's layout; returns the encoder's own state_dict."""
    torch.manual_seed(1515)
    encoder = Encoder(mask_ratio=0.75, shuffle=False, **SMALL)
    g = torch.Generator().manual_seed(1516)
    enc_sd = {k: v.clone() for k, v in encoder.state_dict().items()}
    # float16 on disk, which keeps the committed file small and checks the conversion to the model's float32
    enc_sd = {k: v.half().float() for k, v in enc_sd.items()}
    state = {f"model.encoder.{k}": v.half() for k, v in enc_sd.items()}
    # what else the published file holds: ClayMAE's decoder and the teacher (ignored downstream)
    state["model.decoder.enc_to_dec.weight"] = torch.randn(64, SMALL["dim"], generator=g).half()
    state["model.decoder.mask_patch"] = torch.randn(64, generator=g).half()
    state["teacher.model.head.weight"] = torch.randn(8, 16, generator=g).half()
    torch.save({"epoch": 0, "global_step": 0, "state_dict": state,
                "hyper_parameters": {"model_size": "small", "mask_ratio": 0.75}}, path)
    return enc_sd


def build(ckpt: Path) -> torch.nn.Module:
    args = dict(ARGS, checkpoint_path=str(ckpt))
    model = MODEL_FACTORY_REGISTRY.build("Clay1_5ModelFactory").build_model(**args).eval()
    # the decoder and head: synthetic weights, as the Rust test sets them
    sd = model.state_dict()
    model.load_state_dict({k: (t if k.startswith(ENCODER_KEYS) else synth(k, t)) for k, t in sd.items()})
    return model


def compute(out_dir: Path) -> dict:
    enc_sd = write_checkpoint(out_dir / CKPT)
    model = build(out_dir / CKPT)
    sd = model.state_dict()
    loaded = all(torch.equal(sd[ENCODER_KEYS + k], v) for k, v in enc_sd.items())
    assert loaded, "upstream did not load the checkpoint's encoder"
    torch.manual_seed(0)
    (x,) = make_inputs([SHAPE])
    with torch.no_grad():
        # float32, as the other Clay1_5ModelFactory fixtures: ClayMAEBackbone keeps the platform's
        # wavelengths as a float32 tensor, so upstream's model does not run in float64
        y = model(x).output.contiguous()
    return {"sd": sd, "x": x, "y": y}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="recompute and compare with the files on disk")
    a = p.parse_args()
    out_dir = FIXTURES / CASE
    if a.check:
        with tempfile.TemporaryDirectory() as tmp:
            r = compute(Path(tmp))
        io = load_file(str(out_dir / "io.safetensors"))
        err = float((io["output.0"] - r["y"]).abs().max())
        ok = torch.equal(io["input.0"], r["x"]) and err < 1e-5
        print(f"{CASE}: {'ok' if ok else 'DIFFERS'} (max |stored - recomputed| = {err:.3g})")
        sys.exit(0 if ok else 1)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    r = compute(out_dir)
    keys = [[k, list(t.shape), str(t.dtype).replace("torch.", "")] for k, t in r["sd"].items()]
    (out_dir / "state_dict.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in keys) + "\n]\n")
    save_file({"input.0": r["x"], "output.0": r["y"]},
              str(out_dir / "io.safetensors"))
    meta = {
        "case": CASE,
        "registry": "model",
        "name": "Clay1_5ModelFactory",
        "channels": None,
        "args": ARGS,
        "reference": "MODEL_FACTORY_REGISTRY.build('Clay1_5ModelFactory', **args) with pretrained=True and "
                     "checkpoint_path: the model.encoder.* entries of a Lightning checkpoint in clay-v1.5.ckpt's "
                     "layout (upstream's Encoder, seeded random init; plus ClayMAE decoder and teacher entries "
                     "that are ignored); refkit's synthetic weights on every key outside encoder.encoder_module.*.",
        "parity_test": "custom",
        "checkpoint": CKPT,
        "synthetic_keys": f"all but {ENCODER_KEYS}*",
        "input_shapes": [SHAPE],
        "output_shapes": [list(r["y"].shape)],
        "versions": versions(),
    }
    (out_dir / "meta.json").write_text(dump_json(meta) + "\n")
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
