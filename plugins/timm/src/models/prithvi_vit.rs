//! The old timm registrations `prithvi_vit_tiny`, `prithvi_vit_100` and
//! `prithvi_vit_300` of TerraTorch <= 0.99 (`terratorch/models/backbones/prithvi_vit.py`
//! then, which registered them into timm with `@register_model`). TerraTorch 1.2.11 no
//! longer has them; they are built here with the TerraTorch 1.2.11 encoder
//! (`PrithviViT`, from `terrahost_terratorch::models::prithvi_mae`) at the old defaults:
//! one frame, patch 16, LayerNorm eps 1e-6, and the sizes of the old `model_args`
//! (tiny 256/4/4, 100M 768/12/12, 300M 1024/24/16), which equal `prithvi_eo_tiny`,
//! `prithvi_eo_v1_100` and `prithvi_eo_v2_300`.
//!
//! The old class (`TemporalViTEncoder` from `vit_encoder_decoder.py`) is not ported: its
//! state_dict and forward may differ in details from `PrithviViT`; the parameter names
//! here are PrithviViT's (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, ...),
//! which is also what the old checkpoints use after TerraTorch's filtering.
use serde_json::{json, Value};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::Entry;
use terrahost_terratorch::models::prithvi_mae::Config;
use terrahost_terratorch::models::prithvi_vit::{build_encoder_from_ctx, common_params, preset};

/// `(timm name, equivalent TerraTorch 1.2.11 preset)`.
pub const NAMES: [(&str, &str); 3] = [
    ("prithvi_vit_tiny", "prithvi_eo_tiny"),
    ("prithvi_vit_100", "prithvi_eo_v1_100"),
    ("prithvi_vit_300", "prithvi_eo_v2_300"),
];

/// The old defaults: the preset's widths with one frame and LayerNorm eps 1e-6.
pub fn config(equivalent: &str) -> Option<Config> {
    preset(equivalent).map(|c| Config {
        num_frames: 1,
        norm_eps: 1e-6,
        ..c
    })
}

/// The timm entry `name`, built like TerraTorch's `equivalent` at the old defaults.
pub fn entry(name: &'static str, equivalent: &'static str) -> Entry {
    let base =
        config(equivalent).expect("a timm Prithvi entry is registered only for a known preset");
    let doc = format!(
        "Old timm name of TerraTorch <= 0.99 for the Prithvi ViT encoder (embed_dim {}, depth {}, heads {}, \
         patch 16, 1 frame, LayerNorm eps 1e-6); built as TerraTorch 1.2.11's PrithviViT, the same encoder as \
         terratorch_{equivalent}. Inputs: image [B, C, H, W] or [B, C, T, H, W]. Returns the tokens \
         [B, 1+N, embed_dim] after each block in out_indices.",
        base.embed_dim, base.depth, base.num_heads
    );
    let b = base.clone();
    let e = Entry::new(name, &doc, move |ctx| {
        let features_only: bool = ctx.args.get("features_only")?;
        ctx.args.ensure(
            features_only,
            "features_only",
            "must be true: terrahost's Prithvi ViT is the encoder returning block tokens (the old encoder-decoder \
             is the full model terratorch_prithvi_eo_*_mae)",
        )?;
        build_encoder_from_ctx(ctx, &b)
    });
    common_params(e, &base)
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
}

/// The three entries.
pub fn entries() -> Vec<Entry> {
    NAMES.iter().map(|(n, e)| entry(n, e)).collect()
}

#[cfg(test)]
mod tests {
    use crate::test_support::parity;
    use serde_json::json;
    use terrahost_testkit::host_with;

    #[test]
    fn prithvi_vit_tiny_parity() {
        parity("timm_prithvi_vit_tiny");
    }

    #[test]
    fn prithvi_vit_100_parity() {
        parity("timm_prithvi_vit_100");
    }

    #[test]
    fn prithvi_vit_300_parity() {
        parity("timm_prithvi_vit_300");
    }

    /// Sizes of the equivalent TerraTorch builders (counted in Python); the LayerNorm
    /// eps does not change them.
    #[test]
    fn prithvi_vit_sizes_and_errors() {
        let host = host_with(crate::plugin_sources().unwrap());
        for (name, params) in [
            ("timm_prithvi_vit_tiny", 3_553_280i64),
            ("timm_prithvi_vit_100", 86_237_184),
        ] {
            let m = host
                .build("backbone", name, &serde_json::Map::new(), None)
                .unwrap();
            assert_eq!(crate::test_support::n_params(&m), params, "{name}");
            assert_eq!(m.meta()["patch_size"], json!([1, 16, 16]));
        }
        let args = json!({"features_only": false}).as_object().unwrap().clone();
        let e = host
            .build("backbone", "timm_prithvi_vit_tiny", &args, None)
            .err()
            .expect("features_only=false fails");
        assert!(e.to_string().contains("features_only"), "{e}");
    }
}
