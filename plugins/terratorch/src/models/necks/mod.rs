//! Necks: operations between a backbone and a decoder that reshape the feature list,
//! mirroring `terratorch/models/necks.py`. Each neck also rewrites the channel list as
//! upstream's `process_channel_list` does, which is what the next neck and the decoder
//! are built with. (The chaining of necks, upstream `build_neck_list`, lives in
//! `encoder_decoder_factory.rs`.)

pub mod fpn;
pub mod pyramidal;
pub mod select_indices;
pub mod tokens;

pub use fpn::{FeaturePyramidNetworkNeck, FpnConfig};
pub use pyramidal::{
    AddBottleneckLayer, InterpolateConfig, InterpolateToPyramidal, LearnedInterpolateToPyramidal,
    MaxpoolConfig, MaxpoolToPyramidal,
};
pub use select_indices::{SelectIndices, SelectIndicesConfig};
pub use tokens::{
    AggregateTokens, AggregateTokensConfig, PermuteDims, ReshapeTokensConfig, ReshapeTokensToImage,
};

use serde_json::json;
use tch::{nn, Device};
use terrahost_plugin_api::{
    sdk::{Built, Entry},
    ParamType,
};

/// The `terratorch` neck entries, in upstream's order.
pub(crate) fn entries() -> Vec<Entry> {
    vec![
        Entry::new(
            "SelectIndices",
            "Keeps the features at `indices` (in that order) and drops the others; the channel list \
             is selected the same way.",
            |ctx| {
                let cfg = SelectIndicesConfig { indices: ctx.args.get("indices")? };
                let model = SelectIndices::new(&ctx.channels, &cfg)?;
                Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
            },
        )
        .req("indices", ParamType::INT_LIST, "indices of the features to keep (negative counts from the end)")
        .takes_channels(),
        Entry::new(
            "AggregateTokens",
            "Pools each selected layer's tokens (or flattened pixels) into one embedding per layer, for \
             classification: mean, max, min, the CLS token or a token index. The channel list is passed on \
             unchanged, as upstream's process_channel_list does.",
            |ctx| {
                let cfg = AggregateTokensConfig {
                    pooling: ctx.args.get("pooling")?,
                    indices: ctx.args.opt("indices")?,
                    index: ctx.args.opt("index")?,
                    drop_cls: ctx.args.get("drop_cls")?,
                    temporal_inputs: ctx.args.get("temporal_inputs")?,
                };
                let model = AggregateTokens::new(&ctx.channels, &cfg)?;
                Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
            },
        )
        .opt(
            "pooling",
            ParamType::ANY,
            json!("mean"),
            "`mean`, `max`, `min`, `CLS` (case-insensitive), or a token index (int)",
        )
        .opt("indices", ParamType::INT_OR_INT_LIST, json!(null), "layer index or list of indices to pool (null: use `index`)")
        .opt("index", ParamType::INT, json!(-1), "deprecated single layer index, used when `indices` is null")
        .opt("drop_cls", ParamType::BOOL, json!(false), "drop the first (CLS) token before mean/max/min pooling")
        .opt("temporal_inputs", ParamType::BOOL, json!(false), "inputs are [B, T, ...]: pool each time step")
        .takes_channels(),
        Entry::new(
            "PermuteDims",
            "Permutes the dimensions of every feature (`tensor.permute(new_order)`, made contiguous).",
            |ctx| {
                let model = PermuteDims::new(&ctx.channels, ctx.args.get("new_order")?)?;
                Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
            },
        )
        .req("new_order", ParamType::INT_LIST, "the permutation, as given to tensor.permute()")
        .takes_channels(),
        Entry::new(
            "InterpolateToPyramidal",
            "Upsamples feature i of n by scale_factor^(n-i), making the maps of a plain ViT a pyramid.",
            |ctx| {
                let cfg = InterpolateConfig { scale_factor: ctx.args.get("scale_factor")?, mode: ctx.args.get("mode")? };
                let model = InterpolateToPyramidal::new(&ctx.channels, &cfg)?;
                Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
            },
        )
        .opt("scale_factor", ParamType::INT, json!(2), "upsampling factor between consecutive features (>= 1)")
        .opt(
            "mode",
            ParamType::STR,
            json!("nearest"),
            "F.interpolate mode: nearest, nearest-exact, bilinear, bicubic or area",
        )
        .takes_channels(),
        Entry::new(
            "MaxpoolToPyramidal",
            "Max-pools feature i by kernel_size^i (the first is kept), making the maps of a plain ViT a pyramid.",
            |ctx| {
                let cfg = MaxpoolConfig { kernel_size: ctx.args.get("kernel_size")? };
                let model = MaxpoolToPyramidal::new(&ctx.channels, &cfg)?;
                Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
            },
        )
        .opt("kernel_size", ParamType::INT, json!(2), "pooling factor between consecutive features (>= 1)")
        .takes_channels(),
        Entry::new(
            "ReshapeTokensToImage",
            "Turns transformer tokens [B, (T H W), E] into maps [B, T*E, H, W], dropping the CLS token; \
             the grid comes from `h`, a square token count, or the model's image_size.",
            |ctx| {
                let cfg = ReshapeTokensConfig {
                    remove_cls_token: ctx.args.get("remove_cls_token")?,
                    effective_time_dim: ctx.args.get("effective_time_dim")?,
                    h: ctx.args.opt("h")?,
                    temporal_inputs: ctx.args.get("temporal_inputs")?,
                };
                let model = ReshapeTokensToImage::new(&ctx.channels, &cfg)?;
                Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
            },
        )
        .opt("remove_cls_token", ParamType::BOOL, json!(true), "drop the first token before reshaping")
        .opt(
            "effective_time_dim",
            ParamType::INT,
            json!(1),
            "time steps the tokens cover (num_frames / tubelet size); they are stacked along channels",
        )
        .opt("h", ParamType::INT, json!(null), "grid height in tokens (null: square grid, else from image_size)")
        .opt("temporal_inputs", ParamType::BOOL, json!(false), "inputs are [B, T, N, E]: reshape each time step")
        .takes_channels(),
        Entry::new(
            "AddBottleneckLayer",
            "Appends a feature made from the last one by a 1x1 conv to half its channels (for smp decoders \
             that want one more level).",
            |ctx| {
                let vs = nn::VarStore::new(Device::Cpu);
                let model = AddBottleneckLayer::new(vs.root(), &ctx.channels)?;
                Ok(Built::new(ctx.qualified(), vs, model).boxed())
            },
        )
        .takes_channels(),
        Entry::new(
            "LearnedInterpolateToPyramidal",
            "Makes 4 same-size maps a pyramid with learned layers: x4 (two transposed convs with BatchNorm \
             and GELU), x2 (one transposed conv), x1, and a 2x2 max-pool.",
            |ctx| {
                let vs = nn::VarStore::new(Device::Cpu);
                let model = LearnedInterpolateToPyramidal::new(vs.root(), &ctx.channels)?;
                Ok(Built::new(ctx.qualified(), vs, model).boxed())
            },
        )
        .takes_channels(),
        Entry::new(
            "FeaturePyramidNetworkNeck",
            "torchvision's FeaturePyramidNetwork: 1x1 lateral convs, a nearest-upsampled top-down path and \
             3x3 output convs, every level with `out_channel` channels.",
            |ctx| {
                let cfg = FpnConfig {
                    out_channel: ctx.args.get("out_channel")?,
                    output_ordered_dict: ctx.args.get("output_ordered_dict")?,
                };
                let vs = nn::VarStore::new(Device::Cpu);
                let model = FeaturePyramidNetworkNeck::new(vs.root(), &ctx.channels, &cfg)?;
                Ok(Built::new(ctx.qualified(), vs, model).boxed())
            },
        )
        .opt("out_channel", ParamType::INT, json!(256), "channels of every output level")
        .opt(
            "output_ordered_dict",
            ParamType::BOOL,
            json!(true),
            "upstream returns an OrderedDict when true; terrahost passes the same maps on as a list either way",
        )
        .takes_channels(),
    ]
}
