#!/usr/bin/env python
"""Reference fixture for `terrahost run --precision int8`: a small model of the catalog's
shape (Prithvi ViT, four blocks turned into a pyramid, UNet decoder; 0.3 M parameters),
built by TerraTorch with its own seeded random initialisation (full-rank weights, unlike
the synthetic ones of the other fixtures, whose rank-2 matrices hide int8's rounding), run
in float32, in float64, and with its linear layers quantized by PyTorch
(`torch.ao.quantization.quantize_dynamic` with `per_channel_dynamic_qconfig`: what
terrahost's int8 computes, through the same FBGEMM operators of libtorch 2.13).

Writes tests/fixtures/int8/prithvi_unet_small/: config.yaml (for `terrahost run`),
weights.safetensors (the initialisation), io.safetensors (`input`, `output` in float32,
`int8.output` PyTorch's int8, `f64.output`) and meta.json (errors and argmax agreement).

    .venv-ref/bin/python scripts/reference/int8_fixtures.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refkit  # noqa: E402  (installs the mmcv stand-ins, imports terratorch)
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from terratorch.registry import MODEL_FACTORY_REGISTRY  # noqa: E402

OUT = refkit.REPO / "tests" / "fixtures" / "int8" / "prithvi_unet_small"
CONFIG = {
    "model_factory": "EncoderDecoderFactory",
    "model_args": {
        "task": "segmentation",
        "backbone": "prithvi_eo_v1_100",
        "backbone_pretrained": False,
        "backbone_embed_dim": 64,
        "backbone_depth": 4,
        "backbone_num_heads": 2,
        "backbone_img_size": 64,
        "backbone_patch_size": 8,
        "necks": [
            {"name": "SelectIndices", "indices": [0, 1, 2, 3]},
            {"name": "ReshapeTokensToImage"},
            {"name": "LearnedInterpolateToPyramidal"},
        ],
        "decoder": "UNetDecoder",
        "decoder_channels": [32, 16, 8, 8],
        "num_classes": 4,
    },
}


def build() -> torch.nn.Module:
    factory = MODEL_FACTORY_REGISTRY.build(CONFIG["model_factory"])
    return factory.build_model(**json.loads(json.dumps(CONFIG["model_args"]))).eval()


def argmax_agree(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.argmax(1) == b.argmax(1)).sum())


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    x = torch.randn(2, 6, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out32 = model(x).output
        # A second model for float64: TerraTorch's Prithvi keeps a closure over the model
        # it was built for, so each pass gets its own.
        m64 = build()
        m64.load_state_dict(sd)
        out64 = m64.double()(x.double()).output
        # In place (quantize_dynamic's copy would keep calling the float32 layers, see above).
        torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, inplace=True
        )
        out8 = model(x).output
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "config.yaml").write_text(
        "# scripts/reference/int8_fixtures.py: the catalog model's shape, small.\n"
        + yaml.safe_dump(CONFIG, sort_keys=False)
    )
    save_file(sd, str(OUT / "weights.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in
         {"input": x, "output": out32, "int8.output": out8, "f64.output": out64.float()}.items()},
        str(OUT / "io.safetensors"),
    )
    total = out64.argmax(1).numel()
    scale = float(out64.abs().max())
    meta = {
        "input_shape": list(x.shape),
        "output_shape": list(out32.shape),
        "n_params": sum(t.numel() for t in sd.values()),
        "linear_layers_quantized": sum(
            isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules()
        ),
        "max_abs_f64": scale,
        "f32_max_abs_vs_f64": float((out32.double() - out64).abs().max()),
        "int8_max_abs_vs_f64": float((out8.double() - out64).abs().max()),
        "argmax_total": total,
        "f32_argmax_agree_with_f64": argmax_agree(out32, out64),
        "int8_argmax_agree_with_f64": argmax_agree(out8, out64),
        "qengine": torch.backends.quantized.engine,
        "versions": refkit.versions(),
    }
    (OUT / "meta.json").write_text(refkit.dump_json(meta) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "versions"}, indent=1))


if __name__ == "__main__":
    main()
