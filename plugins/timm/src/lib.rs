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

/// Reads the checkpoint named by `pretrained_cfg_overlay={"file": ...}` (`.safetensors` or a
/// `torch.save` file), or explains why `pretrained=true` cannot be honoured. Shared by every
/// timm entry; keys come back as stored (see [`clean_checkpoint_key`]).
pub(crate) fn pretrained_weights(ctx: &BuildCtx<'_, '_>) -> Result<Vec<(String, Tensor)>> {
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
    terrahost_plugin_api::checkpoint::read_state_dict(std::path::Path::new(file)).map_err(|e| {
        e.context(format_args!(
            "`{qualified}`: pretrained_cfg_overlay.file `{file}`"
        ))
    })
}

/// A checkpoint key without the wrappers timm's `clean_state_dict` removes (`module.` from
/// DataParallel, `_orig_mod.` from `torch.compile`).
pub(crate) fn clean_checkpoint_key(mut k: String) -> String {
    for prefix in ["_orig_mod.", "module.", "_orig_mod."] {
        if let Some(rest) = k.strip_prefix(prefix) {
            k = rest.to_owned();
        }
    }
    k
}

/// Copies `given` into `vs` strictly: every variable must be given with its shape and
/// nothing else may be left over, as `load_state_dict(strict=True)`; `what` names the model
/// in errors.
pub(crate) fn load_strict(
    vs: &mut nn::VarStore,
    given: std::collections::BTreeMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    let mut vars = vs.variables();
    let missing: Vec<&String> = vars.keys().filter(|k| !given.contains_key(*k)).collect();
    let unexpected: Vec<&String> = given.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(PluginError::invalid_argument(format!(
            "the checkpoint does not fit this {what}: missing keys {missing:?}, unexpected keys {unexpected:?}"
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for (k, v) in vars.iter_mut() {
            let src = &given[k];
            if src.size() != v.size() {
                return Err(PluginError::invalid_argument(format!(
                    "checkpoint tensor `{k}` has shape {:?}, the {what} expects {:?}",
                    src.size(),
                    v.size()
                )));
            }
            v.f_copy_(&src.f_to_device(v.device())?.f_to_kind(v.kind())?)?;
        }
        Ok(())
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
        .add(resnet_entry(
            "resnet50",
            "timm ResNet-50 (Bottleneck, 3-4-6-3) as a feature extractor: features at strides 2, 4, 8, 16, 32 \
             with 64, 256, 512, 1024, 2048 channels.",
        ))
        .add(resnet_entry(
            "resnet101",
            "timm ResNet-101 (Bottleneck, 3-4-23-3) as a feature extractor: features at strides 2, 4, 8, 16, 32 \
             with 64, 256, 512, 1024, 2048 channels.",
        ))
        .add(resnet_entry(
            "resnet152",
            "timm ResNet-152 (Bottleneck, 3-8-36-3) as a feature extractor: features at strides 2, 4, 8, 16, 32 \
             with 64, 256, 512, 1024, 2048 channels.",
        ))
        .add(models::vit::entry("vit_tiny_patch16_224"))
        .add(models::vit::entry("vit_small_patch16_224"))
        .add(models::vit::entry("vit_base_patch16_224"))
        .add(models::vit::entry("vit_large_patch16_224"))
        .add(models::convnext::entry("convnext_tiny"))
        .add(models::convnext::entry("convnext_small"))
        .add(models::convnext::entry("convnext_base"))
        .add(models::swin::entry("swin_tiny_patch4_window7_224"))
        .add(models::swin::entry("swin_small_patch4_window7_224"))
        .add(models::swin::entry("swin_base_patch4_window7_224"))
        .add(models::prithvi_swin::entry("prithvi_swin_B"))
        .add(models::prithvi_swin::entry("prithvi_swin_L"))
        .add(models::prithvi_vit::entry("prithvi_vit_tiny", "prithvi_eo_tiny"))
        .add(models::prithvi_vit::entry("prithvi_vit_100", "prithvi_eo_v1_100"))
        .add(models::prithvi_vit::entry("prithvi_vit_300", "prithvi_eo_v2_300"))
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
#[cfg(test)]
mod tests_timm_a;
