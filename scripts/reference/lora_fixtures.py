"""LoRA fine-tune fixtures (issue 16): models built by TerraTorch's factories with a
`peft_config` (TerraTorch's `get_peft_backbone`: `replace_qkv` + peft's `get_peft_model`),
their full state_dicts saved as TerraTorch saves a fine-tuned model (PEFT's key names:
`encoder.base_model.model....base_layer.weight`, `lora_A.default.weight`,
`lora_B.default.weight`, `modules_to_save.default....`), an input and the output.

Weights are refkit's deterministic `synth` values for every key, so `lora_B` is NONZERO
and the adapters change the output (PEFT initialises it to zero). Each case is written to
tests/fixtures/lora/<case>/: weights.safetensors (the checkpoint), io.safetensors
(`input`, `output`), config.json (factory and model_args).

    .venv-ref/bin/python scripts/reference/lora_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from refkit import MODEL_FACTORY_REGISTRY, synth  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "lora"
BANDS = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]

PRITHVI = {
    "task": "segmentation",
    "backbone": "prithvi_eo_v2_300",
    "backbone_embed_dim": 32,
    "backbone_depth": 2,
    "backbone_num_heads": 2,
    "backbone_img_size": 16,
    "backbone_patch_size": [1, 4, 4],
    "backbone_bands": BANDS,
    "backbone_pretrained": False,
    "necks": [{"name": "SelectIndices", "indices": [-1]}, {"name": "ReshapeTokensToImage"}],
    "decoder": "FCNDecoder",
    "decoder_channels": 8,
    "decoder_num_convs": 1,
    "num_classes": 3,
}

CASES = {
    # QKVSep: the fused qkv split into q_linear/k_linear/v_linear, adapters on q and v
    # (names and suffixes), the attention projection by a dotted suffix, the final norm
    # kept whole (modules_to_save).
    "lora_prithvi_replace_qkv": (
        "EncoderDecoderFactory",
        {
            **PRITHVI,
            "peft_config": {
                "method": "LORA",
                "replace_qkv": "qkv",
                "peft_config_kwargs": {
                    "target_modules": ["q_linear", "v_linear", "attn.proj", "blocks.1.mlp.fc1"],
                    "r": 4,
                    "lora_alpha": 8,
                    "lora_dropout": 0.1,
                    "bias": "none",
                    "modules_to_save": ["norm"],
                },
            },
        },
    ),
    # The fused qkv adapted whole, chosen by a regex (re.fullmatch), with rsLoRA scaling.
    "lora_prithvi_fused_qkv": (
        "EncoderDecoderFactory",
        {
            **PRITHVI,
            "peft_config": {
                "method": "LORA",
                "peft_config_kwargs": {
                    "target_modules": r"blocks\.\d+\.(attn\.qkv|mlp\.fc2)",
                    "r": 2,
                    "lora_alpha": 3,
                    "use_rslora": True,
                    "bias": "lora_only",
                },
            },
        },
    ),
    # timm's ViT (another plugin in terrahost): fused qkv split, adapters by suffix;
    # input 3 x 32 x 32.
    "lora_timm_vit_replace_qkv": (
        "EncoderDecoderFactory",
        {
            "task": "segmentation",
            "backbone": "timm_vit_tiny_patch16_224",
            "backbone_pretrained": False,
            "backbone_features_only": True,
            "backbone_img_size": 32,
            "backbone_patch_size": 8,
            "backbone_embed_dim": 16,
            "backbone_depth": 2,
            "backbone_num_heads": 2,
            "backbone_out_indices": [1],
            "necks": [{"name": "ReshapeTokensToImage", "remove_cls_token": True}],
            "decoder": "FCNDecoder",
            "decoder_channels": 8,
            "decoder_num_convs": 1,
            "num_classes": 2,
            "peft_config": {
                "method": "LORA",
                "replace_qkv": "qkv",
                "peft_config_kwargs": {
                    "target_modules": ["q_linear", "v_linear", "mlp.fc2"],
                    "r": 2,
                    "lora_alpha": 4,
                },
            },
        },
    ),
}

IN_CHANS = {"lora_timm_vit_replace_qkv": 3}


def build(factory: str, model_args: dict) -> torch.nn.Module:
    model = MODEL_FACTORY_REGISTRY.build(factory).build_model(**json.loads(json.dumps(model_args)))
    sd = model.state_dict()
    model.load_state_dict({k: synth(k, t) for k, t in sd.items()}, strict=True)
    return model.eval()


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).output


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the committed fixtures")
    args = ap.parse_args()
    torch.manual_seed(0)
    ok = True
    for case, (factory, model_args) in CASES.items():
        model = build(factory, model_args)
        g = torch.Generator().manual_seed(0)
        size = 32 if case in IN_CHANS else 16
        x = torch.randn(1, IN_CHANS.get(case, len(BANDS)), size, size, generator=g)
        y = run(model, x)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        d = OUT / case
        if args.check:
            old = load_file(d / "io.safetensors")
            same = torch.allclose(old["output"], y, atol=1e-5)
            print(f"{case}: {'reproduces' if same else 'DIFFERS'}")
            ok &= same
            continue
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, d / "weights.safetensors")
        save_file({"input": x, "output": y.contiguous()}, d / "io.safetensors")
        (d / "config.json").write_text(
            json.dumps({"model_factory": factory, "model_args": model_args}, indent=2) + "\n"
        )
        print(case, len(sd), "keys", tuple(y.shape))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
