"""Reference fixtures for the terratorch plugin's `detr` and `deformable-detr` frameworks:
TerraTorch 1.2.13's `ObjectDetectionModelFactory.build_model` over the tiny Prithvi ViT and
neck stack of `detection_factory_fixtures.py` (four FPN maps of 32 channels), with small
`framework_*` sizes (width 32, two heads, few layers and queries) and a batch of two 64x64
images.

Weights: refkit's `synth` for the backbone and necks (not stored: both sides compute it);
every other parameter (input projections, transformer, queries, heads) is drawn from a seeded
generator and stored under `sd.<key>`, because `synth`'s smooth rows give every query the
same class. Parameters that TerraTorch shares between keys (Deformable DETR's `class_embed.{i}`
and `bbox_embed.{i}`, one module per decoder layer) get one value.

Deformable DETR imports the CUDA-only `MultiScaleDeformableAttention` extension at import
time. On CPU the script installs a stand-in whose `ms_deform_attn_forward` is TerraTorch's own
`ms_deform_attn_core_pytorch` (the same sampling the CUDA kernel computes, which is what
`layers::detection::ms_deform_attn` ports).

Writes tests/fixtures/detr/<case>.safetensors: `input`, per image i `boxes.i`, `scores.i`,
`labels.i`, the stored weights `sd.<key>`, and intermediates (`src_proj`, `pos`, `memory`,
`hs`, `pred_logits`, `pred_boxes`, for Deformable DETR per level `src.l`/`pos.l` and
`reference_points`); <case>.json: the factory arguments, the state_dict keys and shapes, the
versions.

    PYTHONPATH=/tmp/tt1213dl/b .venv-ref/bin/python scripts/reference/detr_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import refkit  # noqa: E402  (installs the mmcv stand-ins, imports terratorch)
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def _install_msda_stand_in() -> None:
    """`MultiScaleDeformableAttention` (CUDA-only) answered by TerraTorch's PyTorch path."""
    mod = types.ModuleType("MultiScaleDeformableAttention")

    def ms_deform_attn_forward(value, shapes, level_start_index, locations, weights, im2col_step):  # noqa: ARG001
        from terratorch.models.backbones.detr_ops.functions.ms_deform_attn_func import (  # noqa: PLC0415
            ms_deform_attn_core_pytorch,
        )

        return ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    mod.ms_deform_attn_forward = ms_deform_attn_forward
    sys.modules["MultiScaleDeformableAttention"] = mod


_install_msda_stand_in()

from terratorch.registry import MODEL_FACTORY_REGISTRY  # noqa: E402

OUT = refkit.REPO / "tests" / "fixtures" / "detr"

torch.set_num_threads(1)

BACKBONE = {
    "backbone": "prithvi_eo_tiny",
    "backbone_pretrained": False,
    "backbone_bands": ["RED", "GREEN", "BLUE"],
    "backbone_embed_dim": 32,
    "backbone_depth": 4,
    "backbone_num_heads": 2,
    "backbone_img_size": 64,
    "backbone_patch_size": [1, 16, 16],
}

NECKS = [
    {"name": "SelectIndices", "indices": [0, 1, 2, 3]},
    {"name": "ReshapeTokensToImage"},
    {"name": "LearnedInterpolateToPyramidal"},
    {"name": "FeaturePyramidNetworkNeck", "out_channel": 32},
]

CASES = {
    "detr_prithvi": {
        "task": "object_detection",
        "framework": "detr",
        "num_classes": 3,
        **BACKBONE,
        "necks": NECKS,
        "framework_d_model": 32,
        "framework_nhead": 2,
        "framework_num_encoder_layers": 2,
        "framework_num_decoder_layers": 2,
        "framework_dim_feedforward": 48,
        "framework_num_queries": 7,
        "framework_aux_loss": True,
    },
    # Five levels over four maps: the extra level is TerraTorch's stride-2 projection.
    # 25 queries x 4 classes: PostProcess takes the top 100, so fewer fail upstream.
    "deformable_detr_prithvi": {
        "task": "object_detection",
        "framework": "deformable-detr",
        "num_classes": 4,
        **BACKBONE,
        "necks": NECKS,
        "framework_d_model": 32,
        "framework_nhead": 2,
        "framework_num_encoder_layers": 1,
        "framework_num_decoder_layers": 2,
        "framework_dim_feedforward": 48,
        "framework_num_queries": 25,
        "framework_n_points": 2,
        "framework_num_feature_levels": 5,
    },
}


# Larger query embeddings and class weights: with DETR's zero initial target the queries
# differ only through their embeddings, and at the default scale every query gets one class.
SCALE = {"query_embed.weight": 15.0, "class_embed.weight": 4.0, "multihead_attn.in_proj_weight": 4.0,
         "memory": 1.0}


def scale_of(key: str) -> float:
    return next((v for k, v in SCALE.items() if key.endswith(k)), 1.0)


def is_backbone(key: str) -> bool:
    return key.startswith("torchvision_model.backbone.")


def seeded(key_index: int, t: torch.Tensor) -> torch.Tensor:
    """A parameter of the detection head: normal draws from a generator seeded by the key's
    position, scaled like a default init (1/sqrt(fan_in) for matrices, 1 + 0.1 n for norm
    weights, 0.2 n for biases and embeddings)."""
    if not t.is_floating_point():
        return torch.zeros_like(t)
    g = torch.Generator().manual_seed(1000 + key_index)
    v = torch.randn(t.shape, generator=g, dtype=torch.float64)
    if t.dim() >= 2:
        v = v / (t[0].numel() ** 0.5)
    else:
        v = v * 0.2
    return v.to(t.dtype)


def build(args: dict) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    factory = MODEL_FACTORY_REGISTRY.build("ObjectDetectionModelFactory")
    model = factory.build_model(**args)
    sd = model.state_dict()
    new_sd = {}
    stored = {}
    first_key_of: dict[int, str] = {}
    for i, (k, t) in enumerate(sd.items()):
        if is_backbone(k):
            new_sd[k] = refkit.synth(k, t)
            continue
        ptr = t.data_ptr()
        if ptr in first_key_of:  # a shared parameter: one value for all its keys
            new_sd[k] = new_sd[first_key_of[ptr]]
        else:
            first_key_of[ptr] = k
            norm_weight = k.endswith("weight") and t.dim() == 1
            v = seeded(i, t) * scale_of(k)
            new_sd[k] = (1.0 + 0.5 * v) if norm_weight else v
        stored[k] = new_sd[k]
    model.load_state_dict(new_sd, strict=True)
    model.eval()
    if args["framework"] == "detr":
        center_class_bias(model, stored)
    return model, stored


def center_class_bias(model: torch.nn.Module, stored: dict[str, torch.Tensor]) -> None:
    """DETR's queries start from a zero target and differ only through their embeddings, so
    their decoder outputs share a large common part that gives every query the same class.
    The class bias is set to cancel that part (minus the logits of the mean decoder output
    over both images' queries), so each query's class follows its own deviation."""
    net = model.torchvision_model
    rec = {}

    def keep_hs(_m, _i, out):
        rec["hs"] = out[0]

    hook = net.transformer.register_forward_hook(keep_hs)
    with torch.no_grad():
        model(inputs())
        hook.remove()
        mean = rec["hs"][-1].mean(dim=(0, 1))
        w = net.class_embed.weight
        net.class_embed.bias.copy_(-(w @ mean))
    stored["torchvision_model.class_embed.bias"] = net.class_embed.bias.detach().clone()


def inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float32)


def capture(model: torch.nn.Module, framework: str) -> dict[str, torch.Tensor]:
    """Hooks that record the intermediates of one forward."""
    net = model.torchvision_model
    rec: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, _inp, out):
            rec[name] = out

        return hook

    if framework == "detr":
        net.input_proj.register_forward_hook(keep("src_proj"))
        net.position_embedding.register_forward_hook(keep("pos"))

        def transformer_hook(_m, _inp, out):
            rec["hs"], rec["memory"] = out

        net.transformer.register_forward_hook(transformer_hook)
        post = net.postprocessor
    else:
        for lvl, proj in enumerate(net.input_proj):
            proj.register_forward_hook(keep(f"src.{lvl}"))
        calls = []

        def keep_pos(_m, _i, out):
            calls.append(out)

        net.position_embedding.register_forward_hook(keep_pos)
        net.transformer.encoder.register_forward_hook(keep("memory"))

        def transformer_hook(_m, _inp, out):
            rec["hs"], rec["reference_points"] = out[0], out[1]
            for lvl, p in enumerate(calls):
                rec[f"pos.{lvl}"] = p

        net.transformer.register_forward_hook(transformer_hook)
        post = net._postprocessor

    orig = post.forward

    def post_forward(outputs, target_sizes):
        rec["pred_logits"] = outputs["pred_logits"]
        rec["pred_boxes"] = outputs["pred_boxes"]
        return orig(outputs, target_sizes)

    post.forward = post_forward
    return rec


def run(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    args = CASES[case]
    model, stored = build(args)
    rec = capture(model, args["framework"])
    x = inputs()
    with torch.no_grad():
        out = model(x).output
    tensors = {"input": x}
    counts, labels_seen = [], set()
    for i, det in enumerate(out):
        counts.append(det["boxes"].shape[0])
        labels_seen |= set(det["labels"].tolist())
        for k in ("boxes", "scores", "labels"):
            tensors[f"{k}.{i}"] = det[k].contiguous()
    if len(labels_seen) < 2:
        raise SystemExit(f"{case}: every detection has the same label; change the weights")
    for k, v in rec.items():
        tensors[k] = v.contiguous()
    for k, v in stored.items():
        tensors[f"sd.{k}"] = v.clone().contiguous()
    sd = model.state_dict()
    meta = {
        "case": case,
        "args": args,
        "detections_per_image": counts,
        "labels": sorted(labels_seen),
        # Deformable DETR sorts by score: the closest two scores tell how exact ties are.
        "min_score_gap": min(
            float(d["scores"].sort(descending=True).values.diff().abs().min()) for d in out
        ),
        "state_dict": {k: list(v.shape) for k, v in sd.items()},
        "versions": refkit.versions(),
        "terratorch_path": str(Path(refkit.terratorch.__file__).parent),
    }
    return meta, tensors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with the stored fixtures")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    failed = False
    for case in CASES:
        meta, tensors = run(case)
        st = OUT / f"{case}.safetensors"
        if a.check:
            old = load_file(st)
            for k, v in tensors.items():
                if k not in old or old[k].shape != v.shape or not torch.allclose(
                    old[k].double(), v.double(), atol=1e-5, rtol=0
                ):
                    print(f"{case}: {k} differs")
                    failed = True
            continue
        save_file(tensors, st)
        (OUT / f"{case}.json").write_text(refkit.dump_json(meta) + "\n")
        print(f"{case}: detections per image {meta['detections_per_image']}, labels {meta['labels']}, "
              f"{st.stat().st_size} bytes")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
