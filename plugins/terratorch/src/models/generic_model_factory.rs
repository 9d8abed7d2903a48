//! TerraTorch's `GenericModelFactory`: builds a backbone of the `backbone` registry from
//! the `backbone_*` arguments and wraps it in `GenericModelWrapper` (state_dict keys
//! `model.*`; the output is whatever the backbone returns).
//! Mirrors `terratorch/models/generic_model_factory.py`.

use serde_json::{Map, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, DynModule, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

/// The entry name.
pub const NAME: &str = "GenericModelFactory";

/// The arguments `build_model` declares itself.
const OWN: [&str; 3] = ["backbone", "in_channels", "pretrained"];

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("{NAME}: {}", msg.into()))
}

/// Upstream `_extract_prefix_keys` of `generic_model_factory.py`: every key starting
/// with `prefix`, renamed to `k.split(prefix)[1]` (the text up to a second occurrence of
/// the prefix), and the keys that were left.
pub fn split_backbone_kwargs(
    args: &Map<String, Value>,
    prefix: &str,
) -> (Map<String, Value>, Vec<String>) {
    let mut extracted = Map::new();
    let mut rest = Vec::new();
    for (k, v) in args {
        match k.strip_prefix(prefix) {
            Some(tail) => {
                let name = tail.split(prefix).next().unwrap_or_default();
                extracted.insert(name.to_owned(), v.clone());
            }
            None => rest.push(k.clone()),
        }
    }
    (extracted, rest)
}

/// TerraTorch's `GenericModelWrapper`: runs the wrapped model on all inputs.
pub struct GenericModelWrapper {
    model: DynModule,
}

impl Model for GenericModelWrapper {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        self.model.forward(xs)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.model.out_channels()
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        vec![("model", &self.model)]
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        vec![("model", &mut self.model)]
    }
}

/// Builds the backbone through the host and wraps it.
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let args = ctx.args.map();
    let backbone = match args.get("backbone") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(invalid(
                "argument `backbone` (a backbone registry name) is required",
            ))
        }
    };
    // The task classes other than ReconstructionTask call `build_model(task, ...)`, which
    // binds the task to `backbone`.
    if args.contains_key("task") {
        return Err(invalid(
            "GenericModelFactory.build_model() got multiple values for argument 'backbone' (a `task` was given: \
             TerraTorch's task classes pass their task as the first argument, which is `backbone` here; use \
             GenericModelFactory with terratorch.tasks.ReconstructionTask, or a plain model_factory config \
             without `task`)",
        ));
    }
    let extras: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (kwargs, unused) = split_backbone_kwargs(&extras, "backbone_");
    for key in unused {
        terrahost_plugin_api::warn!(
            "`terratorch_{NAME}` ignores argument `{key}` (TerraTorch passes only `backbone_*` arguments on and \
             drops the rest)"
        );
    }
    let model = ctx
        .build("backbone", &backbone, &kwargs, None)
        .map_err(|e| e.context(format_args!("{NAME}: building backbone `{backbone}`")))?;
    let label = format!("GenericModelWrapper({})", model.label());
    Ok(Built::new(
        label,
        nn::VarStore::new(Device::Cpu),
        GenericModelWrapper { model },
    )
    .boxed())
}

/// The registry entry, with every keyword argument of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        NAME,
        "Builds `backbone` from the backbone registry with the `backbone_*` arguments (prefix removed) and wraps \
         it in GenericModelWrapper: state_dict keys `model.*`, outputs the backbone's. Other arguments are \
         dropped, as upstream (each is named in a warning). Used with terratorch.tasks.ReconstructionTask, which \
         calls build_model(**model_args).",
        build,
    )
    .req("backbone", ParamType::STR, "backbone registry name (e.g. timm_resnet18)")
    .ignores("in_channels", "GenericModelFactory takes it and does not use it (give backbone_in_chans)")
    .ignores("pretrained", "GenericModelFactory takes it and does not use it (give backbone_pretrained)")
    .accepts_extra()
}
