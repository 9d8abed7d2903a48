//! Mirrors `terratorch/models/generic_unet_model_factory.py` (TerraTorch 1.2.11):
//! `GenericUnetModelFactory.build_model` and `GenericUnetModelWrapper`.
//!
//! Upstream looks the backbone up as an attribute of the `terratorch.models.backbones` module
//! and calls it with the `backbone_*` arguments; the only class there is `UNet` (every other
//! attribute is a submodule, and a missing one ends in a NameError on `_has_mmseg`). The
//! wrapper runs it, keeps its last output (the finest decoder map), squeezes a single
//! channel for regression and returns that. Arguments other than the declared ones and the
//! `backbone_*`/`decoder_*` ones are dropped upstream; terrahost names each in a warning.
use super::generic_model_factory::split_backbone_kwargs;
use serde_json::{json, Map, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, DynModule, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

/// The entry name.
pub const NAME: &str = "GenericUnetModelFactory";

/// The arguments `build_model` declares itself.
const OWN: [&str; 7] = [
    "task",
    "backbone",
    "decoder",
    "dilations",
    "in_channels",
    "pretrained",
    "regression_relu",
];

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("{NAME}: {}", msg.into()))
}

/// `GenericUnetModelWrapper` without a decoder: the backbone's last output.
pub struct GenericUnetModelWrapper {
    unet_model: DynModule,
    relu: bool,
    squeeze_single_class: bool,
}

impl Model for GenericUnetModelWrapper {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let x = xs
            .first()
            .ok_or_else(|| invalid("the model takes the image as its first input"))?;
        if self.relu {
            // upstream applies nn.ReLU to the backbone's list of maps
            return Err(PluginError::forward_failed(format!(
                "{NAME}: task=regression with regression_relu=true applies ReLU to the UNet's list of outputs, which \
                 fails in TerraTorch 1.2.11 (TypeError); build with regression_relu=false"
            )));
        }
        let outs = self.unet_model.forward(std::slice::from_ref(x))?;
        let last = outs
            .into_iter()
            .last()
            .ok_or_else(|| invalid("the backbone returned no output"))?;
        let y = if self.squeeze_single_class && last.size().get(1) == Some(&1) {
            last.f_squeeze_dim(1)?
        } else {
            last
        };
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        self.unet_model
            .out_channels()
            .last()
            .copied()
            .into_iter()
            .collect()
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        vec![("unet_model", &self.unet_model)]
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        vec![("unet_model", &mut self.unet_model)]
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let args = ctx.args.map();
    let task: String = ctx.args.get("task")?;
    if task != "segmentation" && task != "regression" {
        return Err(invalid(format!(
            "This model can only perform pixel wise tasks, but got task {task} (`task`: segmentation or regression)"
        )));
    }
    if ctx.args.raw("decoder").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "`decoder` is not supported: upstream calls a terratorch.models.decoders class on the UNet's last map \
             with the decoder_* arguments; build without a decoder",
        ));
    }
    let backbone = match ctx.args.raw("backbone") {
        Some(Value::String(s)) if s == "UNet" => s.clone(),
        Some(Value::String(s)) => {
            return Err(invalid(format!(
                "`backbone` {s:?} is not a model class of terratorch.models.backbones, where upstream looks it up \
                 (the only one is `UNet`)"
            )))
        }
        _ => {
            return Err(invalid(
                "`backbone` is required (`UNet`): without one GenericUnetModelWrapper has no model to call",
            ))
        }
    };
    let extras: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (kwargs, rest) = split_backbone_kwargs(&extras, "backbone_");
    for key in rest {
        let msg = format!("`terratorch_{NAME}` ignores argument `{key}` (TerraTorch drops it)");
        tracing::warn!("{msg}");
        terrahost_plugin_api::warn!("{msg}");
    }
    let unet_model = ctx
        .build("backbone", &format!("terratorch_{backbone}"), &kwargs, None)
        .map_err(|e| e.context(format_args!("{NAME}: building backbone `{backbone}`")))?;
    let regression = task == "regression";
    let relu = regression && ctx.args.get::<bool>("regression_relu")?;
    let model = GenericUnetModelWrapper {
        unet_model,
        relu,
        squeeze_single_class: regression,
    };
    Ok(Built::new(
        format!("GenericUnetModelWrapper({backbone})"),
        nn::VarStore::new(Device::Cpu),
        model,
    )
    .boxed())
}

/// The registry entry, with every keyword argument of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        NAME,
        "TerraTorch's GenericUnetModelFactory: builds `backbone` (only `UNet`, the one class upstream finds) with \
         the `backbone_*` arguments and wraps it in GenericUnetModelWrapper (keys unet_model.*): the output is the \
         UNet's last (finest) map, its single channel squeezed for regression. `decoder` is not supported; other \
         arguments are dropped as upstream, each named in a warning.",
        build,
    )
    .opt("task", ParamType::STR, json!("segmentation"), "segmentation or regression")
    .opt("backbone", ParamType::ANY, Value::Null, "`UNet` (required in practice)")
    .opt("decoder", ParamType::ANY, Value::Null, "not supported: must be null")
    .opt("regression_relu", ParamType::BOOL, json!(false), "ReLU on the output for regression (fails upstream: it is applied to a list)")
    .ignores("dilations", "GenericUnetModelFactory takes it and does not use it")
    .ignores("in_channels", "GenericUnetModelFactory takes it and does not use it (give backbone_in_channels)")
    .ignores("pretrained", "GenericUnetModelFactory takes it and does not use it")
    .accepts_extra()
}
