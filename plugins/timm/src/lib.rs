//! The `timm` plugin: timm backbones as feature extractors (`features_only`), with timm's state_dict keys.

pub mod models;

use models::resnet::{Config as ResNetConfig, ResNet};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Catalog, Entry};
use terrahost_plugin_api::{PluginError, Result};

/// `out_indices` as timm takes it: a list of feature indices, or an int `n` for the last `n`.
fn out_indices_arg(ctx: &BuildCtx<'_, '_>) -> Result<Vec<i64>> {
    match ctx.args.raw("out_indices") {
        None => Ok((0..models::resnet::NUM_FEATURES).collect()),
        Some(Value::Array(_)) => ctx.args.get::<Vec<i64>>("out_indices"),
        Some(_) => {
            let n: i64 = ctx.args.get("out_indices")?;
            ctx.args.ensure(
                (1..=models::resnet::NUM_FEATURES).contains(&n),
                "out_indices",
                format!("as an int takes the last n features and must be 1..=5, got {n}"),
            )?;
            Ok((-n..0).collect())
        }
    }
}

/// Reads the checkpoint named by `pretrained_cfg_overlay={"file": ...}`, or explains why
/// `pretrained=true` cannot be honoured.
fn pretrained_weights(ctx: &BuildCtx<'_, '_>) -> Result<Vec<(String, Tensor)>> {
    let qualified = ctx.qualified();
    let overlay: Option<Map<String, Value>> = ctx.args.opt("pretrained_cfg_overlay")?;
    let file = overlay
        .as_ref()
        .and_then(|o| o.get("file"))
        .and_then(Value::as_str);
    let Some(file) = file else {
        return Err(PluginError::invalid_argument(format!(
            "`{qualified}` with pretrained=true would download weights from the timm / Hugging Face hub, \
             and terrahost makes no hub downloads: build it with pretrained=false and pass the checkpoint \
             with `terrahost run --weights <file>` (or give a local file as \
             pretrained_cfg_overlay={{\"file\": \"<path>.safetensors\"}})"
        )));
    };
    if !file.ends_with(".safetensors") {
        return Err(PluginError::invalid_argument(format!(
            "`{qualified}`: pretrained_cfg_overlay.file `{file}` is not a .safetensors file, the only format read \
             here; convert it (safetensors.torch.save_file(torch.load(f), \"weights.safetensors\")) or pass it \
             with `terrahost run --weights <file>`"
        )));
    }
    if !std::path::Path::new(file).is_file() {
        return Err(PluginError::not_found(format!(
            "`{qualified}`: pretrained_cfg_overlay.file `{file}` does not exist or is not a file"
        )));
    }
    Tensor::read_safetensors(file).map_err(|e| {
        PluginError::invalid_argument(format!(
            "`{qualified}`: cannot read pretrained_cfg_overlay.file `{file}`: {e}"
        ))
    })
}

/// Builds timm ResNet `name` from the validated arguments.
fn build_resnet(
    ctx: &BuildCtx<'_, '_>,
    base: ResNetConfig,
) -> Result<terrahost_plugin_api::ModuleBox> {
    let a = &ctx.args;
    let features_only: bool = a.get("features_only")?;
    a.ensure(
        features_only,
        "features_only",
        "must be true: terrahost backbones are feature extractors returning the stem and layer1..layer4 feature \
         maps (a classifier ResNet is not available)",
    )?;
    let cfg = ResNetConfig {
        in_chans: a.get("in_chans")?,
        out_indices: out_indices_arg(ctx)?,
        output_stride: a.get("output_stride")?,
        stem_width: a.get("stem_width")?,
        stem_type: a.get("stem_type")?,
        block_reduce_first: a.get("block_reduce_first")?,
        down_kernel_size: a.get("down_kernel_size")?,
        avg_down: a.get("avg_down")?,
        drop_rate: a.get("drop_rate")?,
        drop_path_rate: a.get("drop_path_rate")?,
        zero_init_last: a.get("zero_init_last")?,
        ..base
    };
    let pretrained: bool = a.get("pretrained")?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(vs.root(), &cfg)
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    if pretrained {
        let weights = pretrained_weights(ctx)?;
        model
            .load_pretrained(&mut vs, weights)
            .map_err(|e| e.context(format_args!("`{}` pretrained weights", ctx.qualified())))?;
    }
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// A registry entry for the timm ResNet preset `name`, with timm's keyword parameters.
fn resnet_entry(name: &'static str, doc: &str) -> Entry {
    let base =
        ResNetConfig::preset(name).expect("a ResNet entry is registered only for a known preset");
    let d = ResNetConfig::default();
    Entry::new(name, doc, move |ctx| build_resnet(ctx, base.clone()))
        .opt("features_only", ParamType::BOOL, json!(true), "return the feature maps (only true is supported)")
        .opt("pretrained", ParamType::BOOL, json!(false), "load pretrained weights (needs pretrained_cfg_overlay.file; no downloads)")
        .opt("pretrained_cfg_overlay", ParamType::DICT, Value::Null, "overrides of the pretrained config; `file` names a local .safetensors checkpoint")
        .opt("in_chans", ParamType::INT, json!(d.in_chans), "input channels of the first convolution")
        .opt("out_indices", ParamType::INT_OR_INT_LIST, json!(d.out_indices), "features to return: 0 = stem, 1..4 = layer1..layer4 (negative from the end; an int n = the last n)")
        .opt("output_stride", ParamType::INT, json!(d.output_stride), "output stride 32, 16 or 8 (the last stages dilate instead of striding)")
        .opt("stem_width", ParamType::INT, json!(d.stem_width), "width of the deep stem's convolutions")
        .opt("stem_type", ParamType::STR, json!(d.stem_type), "stem: \"\" (7x7 conv), \"deep\" or \"deep_tiered\" (three 3x3 convs)")
        .opt("block_reduce_first", ParamType::INT, json!(d.block_reduce_first), "divides the width of each block's first convolution")
        .opt("down_kernel_size", ParamType::INT, json!(d.down_kernel_size), "kernel size of the strided projection shortcut")
        .opt("avg_down", ParamType::BOOL, json!(d.avg_down), "average-pool before the 1x1 projection shortcut (ResNet-D)")
        .opt("drop_rate", ParamType::FLOAT, json!(d.drop_rate), "classifier dropout; no effect on a features-only model, as in timm")
        .opt("drop_path_rate", ParamType::FLOAT, json!(d.drop_path_rate), "stochastic depth rate, linear over the blocks (train mode only)")
        .opt("zero_init_last", ParamType::BOOL, json!(d.zero_init_last), "initialise the last BatchNorm weight of each residual branch to zero")
}

/// The `timm` entries of the `backbone` registry.
fn backbones() -> Catalog {
    Catalog::new("timm")
        .add(resnet_entry(
            "resnet18",
            "timm ResNet-18 (BasicBlock, 2-2-2-2) as a feature extractor: features at strides 2, 4, 8, 16, 32 \
             with 64, 64, 128, 256, 512 channels.",
        ))
        .add(resnet_entry(
            "resnet34",
            "timm ResNet-34 (BasicBlock, 3-4-6-3) as a feature extractor: features at strides 2, 4, 8, 16, 32 \
             with 64, 64, 128, 256, 512 channels.",
        ))
}

terrahost_plugin_api::declare_plugin! {
    name: "timm",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("backbone", "timm", backbones()),
    ],
}

#[cfg(test)]
mod tests;
