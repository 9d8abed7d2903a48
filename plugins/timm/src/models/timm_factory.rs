//! Mirrors `terratorch/models/timm_model_factory.py` (TerraTorch 1.2.11): `TimmModelFactory`
//! builds `timm.create_model(backbone, pretrained=..., num_classes=num_classes,
//! in_chans=in_channels, **backbone_kwargs)` for the `classification` task and wraps it in
//! `TimmModelWrapper`, whose forward returns `ModelOutput(timm_model(x))` and whose
//! state_dict keys are the classifier's under `timm_model.`.
//!
//! As upstream: `backbone` is a timm model name (no `timm_` prefix; a `name.tag` picks
//! pretrained weights only), the `backbone_*` arguments go to timm with the prefix removed
//! (an argument the architecture does not take is refused, as timm's constructor raises
//! `TypeError`), and every other argument is swallowed by `build_model(**kwargs)` and never
//! read: terrahost accepts it and warns naming it.
use super::classifier;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Catalog, DynModule, Entry, Model, NoHost};
use terrahost_plugin_api::source::Source;
use terrahost_plugin_api::{BuildRequest, ModuleBox, PluginError, Result};

/// `TimmModelWrapper`: the timm classifier as the child `timm_model`.
pub struct TimmModelWrapper {
    timm_model: DynModule,
}

impl Model for TimmModelWrapper {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        self.timm_model.forward(xs)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.timm_model.out_channels()
    }

    fn includes_head(&self) -> bool {
        true
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        vec![("timm_model", &self.timm_model)]
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        vec![("timm_model", &mut self.timm_model)]
    }
}

/// The upstream keywords of `build_model` besides `**kwargs`.
const OWN: [&str; 5] = [
    "task",
    "backbone",
    "in_channels",
    "num_classes",
    "pretrained",
];

/// Why a timm name the classifier catalog does not have cannot be built.
fn unknown_backbone(backbone: &str, not_found: PluginError) -> PluginError {
    let (arch, _) = crate::tags::split(backbone);
    if let Some(bare) = backbone.strip_prefix("timm_") {
        return PluginError::not_found(format!(
            "TimmModelFactory: `backbone` is a timm model name, passed to timm.create_model as it is (timm \
             raises \"Unknown model ({backbone})\"); drop the registry prefix: `{bare}`"
        ));
    }
    if arch.starts_with("prithvi_vit_") {
        return PluginError::not_found(format!(
            "TimmModelFactory: `{arch}` is not a timm model (timm raises \"Unknown model ({backbone})\"); it is a \
             TerraTorch backbone name: use EncoderDecoderFactory with backbone `{arch}`"
        ));
    }
    PluginError::not_found(format!(
        "TimmModelFactory: {} (timm raises \"Unknown model ({backbone})\"); the timm classifiers terrahost \
         builds are the resnet, vit_*_patch16_224, convnext, swin_*_patch4_window7_224 and prithvi_swin_B/L \
         presets",
        not_found.message
    ))
}

/// Builds the model: the classifier from `classifiers`, wrapped as upstream wraps it.
fn build(ctx: &BuildCtx<'_, '_>, classifiers: &Catalog) -> Result<ModuleBox> {
    let a = &ctx.args;
    let task: String = a.get("task")?;
    if task != "classification" {
        return Err(PluginError::invalid_argument(format!(
            "timm models can only perform classification, but got task {task}"
        )));
    }
    let backbone: String = a.get("backbone")?;
    match a.raw("pretrained") {
        Some(Value::Bool(false)) => {}
        Some(Value::String(s)) => {
            return Err(PluginError::invalid_argument(format!(
                "TimmModelFactory: pretrained={s:?} names weights (a torchvision/torchgeo weights enum or a \
                 checkpoint file) that upstream loads into the model; terrahost does not: set pretrained=false \
                 and pass the trained model's checkpoint with `terrahost run --weights <file>`"
            )))
        }
        _ => {
            return Err(PluginError::invalid_argument(format!(
                "TimmModelFactory: pretrained=true (upstream's default) would download the weights of \
                 `{backbone}` from the timm / Hugging Face hub, and terrahost makes no downloads: set \
                 pretrained=false, or pass a checkpoint with `terrahost run --weights <file>` (which switches \
                 pretrained loading off)"
            )))
        }
    }
    let mut timm_args = Map::new();
    timm_args.insert("in_chans".into(), a.get::<Value>("in_channels")?);
    timm_args.insert("num_classes".into(), a.get::<Value>("num_classes")?);
    let mut swallowed = Vec::new();
    for (k, v) in a.map() {
        if OWN.contains(&k.as_str()) {
            continue;
        }
        match k.strip_prefix("backbone_") {
            Some(key) => {
                if ["in_chans", "num_classes", "pretrained"].contains(&key) {
                    return Err(PluginError::invalid_argument(format!(
                        "TimmModelFactory: `{k}` sets timm's `{key}` a second time (timm.create_model() got \
                         multiple values for keyword argument '{key}'); TimmModelFactory passes \
                         in_chans=in_channels, num_classes=num_classes and pretrained itself"
                    )));
                }
                // timm.create_model drops arguments set to None.
                if !v.is_null() {
                    timm_args.insert(key.to_owned(), v.clone());
                }
            }
            None => swallowed.push(k.as_str()),
        }
    }
    for k in &swallowed {
        terrahost_plugin_api::warn!(
            "TimmModelFactory: `{k}` is accepted and ignored (TerraTorch's TimmModelFactory.build_model \
             swallows it through **kwargs and never reads it)"
        );
    }
    let req = BuildRequest::new(&timm_args, None);
    let module = classifiers
        .build(backbone.as_str().into(), req, NoHost::handle())
        .into_result()
        .map_err(|e| {
            if e.kind == terrahost_plugin_api::ErrorKind::NOT_FOUND {
                unknown_backbone(&backbone, e)
            } else {
                e.context(format_args!("TimmModelFactory: building `{backbone}`"))
            }
        })?;
    let label = format!("TimmModelWrapper(timm {backbone})");
    let model = TimmModelWrapper {
        timm_model: DynModule::new(format!("timm_{backbone}"), module),
    };
    Ok(Built::new(label, nn::VarStore::new(Device::Cpu), model).boxed())
}

/// The registry entry, with upstream `build_model`'s keywords.
pub fn entry() -> Entry {
    let classifiers = Arc::new(classifier::catalog());
    Entry::new(
        "TimmModelFactory",
        "Builds a timm classifier, timm.create_model(backbone, num_classes=num_classes, in_chans=in_channels, \
         **backbone_kwargs), wrapped in TerraTorch's TimmModelWrapper (keys `timm_model.*`; the output is the \
         logits [B, num_classes]). Task classification only. `backbone` is a timm name (resnet18..152, \
         vit_{tiny,small,base,large}_patch16_224, convnext_{tiny,small,base,large,xlarge}, \
         swin_{tiny,small,base}_patch4_window7_224, and prithvi_swin_B/L, whose in_chans is len(backbone_bands), \
         6 HLS bands by default), optionally with a pretrained tag (`vit_base_patch16_224.mae`); \
         `backbone_*` arguments go to timm (e.g. backbone_img_size, backbone_drop_rate, backbone_global_pool); \
         other arguments are ignored, as upstream swallows them.",
        move |ctx| build(ctx, &classifiers),
    )
    .req("task", ParamType::STR, "must be classification")
    .req("backbone", ParamType::STR, "timm model name, e.g. resnet18 or vit_base_patch16_224.mae")
    .req("in_channels", ParamType::INT, "input channels (timm's in_chans)")
    .req("num_classes", ParamType::INT, "number of classes")
    .opt(
        "pretrained",
        ParamType::ANY,
        json!(true),
        "upstream's default true downloads weights, which terrahost does not: give false (run --weights does)",
    )
    .ignores(
        "aux_decoders",
        "TerraTorch's tasks always pass it; TimmModelFactory.build_model swallows it through **kwargs",
    )
    .accepts_extra()
}
