#!/usr/bin/env python
"""Writes small `torch.save` checkpoints that the Rust reader of torch.save archives
(`layers/src/checkpoint/torch_save.rs`) must read, plus `expected.safetensors` with the
tensors every one of them holds.

    .venv-ref/bin/python scripts/reference/make_torch_save_fixtures.py
"""

import argparse
import pathlib
from collections import OrderedDict

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "torch_save"


def tensors() -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(3, 2, 3, 3, generator=g)
    sd["conv.bias"] = torch.randn(3, generator=g).double()
    sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    sd["half"] = torch.randn(5, generator=g).half()
    sd["bf16"] = torch.randn(5, generator=g).bfloat16()
    sd["mask"] = torch.tensor([True, False, True])
    sd["ints"] = torch.arange(-3, 3, dtype=torch.int32)
    sd["bytes"] = torch.arange(0, 250, 50, dtype=torch.uint8)
    # views of one storage: a transpose (non-contiguous) and an offset slice
    sd["view.t"] = base.t()
    sd["view.row"] = base[2]
    sd["scalar"] = torch.tensor(2.5)
    return sd


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    sd = tensors()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(OUT / "expected.safetensors"))
    # a plain state_dict
    torch.save(sd, OUT / "state_dict.pt")
    # parameters instead of tensors, as `model.state_dict(keep_vars=True)` would give
    params = OrderedDict((k, torch.nn.Parameter(v, requires_grad=False)) for k, v in sd.items())
    torch.save(params, OUT / "parameters.pth")
    # a Lightning-style checkpoint: the state_dict under `state_dict`, next to other objects
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": sd,
        "hyper_parameters": {"lr": 1e-3, "path": pathlib.PurePosixPath("/tmp/x"), "bands": ["RED", "NIR"]},
        "optimizer_states": [],
    }
    torch.save(ckpt, OUT / "lightning.ckpt")
    # the legacy (pre-1.6) format, which the reader refuses with a conversion hint
    torch.save(sd, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    # not a state_dict at all
    torch.save([1, 2, 3], OUT / "list.pt")
    for p in sorted(OUT.iterdir()):
        print(f"{p.name:24s} {p.stat().st_size:6d} bytes")


if __name__ == "__main__":
    main()
