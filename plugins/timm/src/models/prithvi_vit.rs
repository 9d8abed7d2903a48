//! The old timm registrations `prithvi_vit_tiny`, `prithvi_vit_100` and
//! `prithvi_vit_300` of TerraTorch <= 0.99 (`terratorch/models/backbones/prithvi_vit.py`
//! then, which registered them into timm with `@register_model`). TerraTorch 1.2.11 no
//! longer has them; they are built with the TerraTorch 1.2.11 encoder (`PrithviViT`) at
//! the old defaults: one frame, patch 16, LayerNorm eps 1e-6, and the sizes of the old
//! `model_args` (tiny 256/4/4, 100M 768/12/12, 300M 1024/24/16), which equal
//! `prithvi_eo_tiny`, `prithvi_eo_v1_100` and `prithvi_eo_v2_300`.
//!
//! The encoder is the `terratorch` plugin's: these entries build
//! `terratorch_<equivalent>` through the host's registries, across the plugin boundary,
//! so that this plugin does not link the terratorch crate. Without the terratorch
//! plugin they answer that its source is missing.
//!
//! The old class (`TemporalViTEncoder` from `vit_encoder_decoder.py`) is not ported: its
//! state_dict and forward may differ in details from `PrithviViT`; the parameter names
//! here are PrithviViT's (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, ...),
//! which is also what the old checkpoints use after TerraTorch's filtering.
use serde_json::{json, Value};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::Entry;

/// `(timm name, equivalent TerraTorch 1.2.11 preset, (embed_dim, depth, num_heads))`.
pub const NAMES: [(&str, &str, (i64, i64, i64)); 3] = [
    ("prithvi_vit_tiny", "prithvi_eo_tiny", (256, 4, 4)),
    ("prithvi_vit_100", "prithvi_eo_v1_100", (768, 12, 12)),
    ("prithvi_vit_300", "prithvi_eo_v2_300", (1024, 24, 16)),
];

/// The old LayerNorm epsilon (TerraTorch 1.2.11's encoder uses 1e-5).
const OLD_NORM_EPS: f64 = 1e-6;

/// The timm entry `name`, built as TerraTorch's `equivalent` at the old defaults.
pub fn entry(
    name: &'static str,
    equivalent: &'static str,
    (dim, depth, heads): (i64, i64, i64),
) -> Entry {
    let doc = format!(
        "Old timm name of TerraTorch <= 0.99 for the Prithvi ViT encoder (embed_dim {dim}, depth {depth}, heads \
         {heads}, patch 16, 1 frame, LayerNorm eps 1e-6); built as the terratorch plugin's \
         terratorch_{equivalent} with norm_eps 1e-6 (needs that plugin), which takes every other argument. \
         Inputs: image [B, C, H, W] or [B, C, T, H, W]. Returns the tokens [B, 1+N, embed_dim] after each block \
         in out_indices."
    );
    Entry::new(name, &doc, move |ctx| {
        let features_only: bool = ctx.args.get("features_only")?;
        ctx.args.ensure(
            features_only,
            "features_only",
            "must be true: terrahost's Prithvi ViT is the encoder returning block tokens (the old encoder-decoder \
             is the full model terratorch_prithvi_eo_*_mae)",
        )?;
        let mut args = ctx.args.map().clone();
        args.remove("features_only");
        args.entry("norm_eps").or_insert(json!(OLD_NORM_EPS));
        let encoder = ctx.build("backbone", &format!("terratorch_{equivalent}"), &args, None)?;
        Ok(encoder.into_inner())
    })
    .opt(
        "features_only",
        ParamType::BOOL,
        json!(true),
        "return the block tokens (only true is supported)",
    )
    .opt(
        "out_indices",
        ParamType::INT_LIST,
        Value::Null,
        "blocks whose tokens are returned (Python indices; default all)",
    )
    .accepts_extra()
}

/// The three entries.
pub fn entries() -> Vec<Entry> {
    NAMES
        .iter()
        .map(|(n, e, size)| entry(n, e, *size))
        .collect()
}
