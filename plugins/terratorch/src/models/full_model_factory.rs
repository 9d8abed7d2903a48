//! TerraTorch's `FullModelFactory`: builds a model of the `full_model` registry with all
//! further keyword arguments and returns it as it is (no task wrapper, so its
//! `state_dict` keys and outputs are the full model's own).
//! Mirrors `terratorch/models/full_model_factory.py`.

use super::peft::{self, config::LoraSpec};
use serde_json::{Map, Value};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Entry},
    ModuleBox, ParamType, PluginError, Result,
};

/// The entry name.
pub const NAME: &str = "FullModelFactory";

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("{NAME}: {}", msg.into()))
}

/// Splits the validated arguments into the full model's name and its keyword arguments
/// (everything but the factory's own `model`, `rescale`, `padding` and `peft_config`).
pub fn model_and_kwargs(args: &Map<String, Value>) -> Result<(String, Map<String, Value>)> {
    let model = match args.get("model") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(invalid(
                "argument `model` (a full_model registry name) is required",
            ))
        }
    };
    // The task classes other than ReconstructionTask call `build_model(task, ...)`, which
    // binds the task to `model`.
    if args.contains_key("task") {
        return Err(invalid(
            "FullModelFactory.build_model() got multiple values for argument 'model' (a `task` was given: \
             TerraTorch's task classes pass their task as the first argument, which is `model` here; use \
             FullModelFactory with terratorch.tasks.ReconstructionTask, or a plain model_factory config without \
             `task`)",
        ));
    }
    let kwargs = args
        .iter()
        .filter(|(k, _)| !["model", "rescale", "padding", "peft_config"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((model, kwargs))
}

/// `peft_config`, read (and so checked) before anything is built.
pub fn peft_spec(args: &Map<String, Value>) -> Result<Option<LoraSpec>> {
    args.get("peft_config")
        .filter(|v| !v.is_null())
        .map(peft::config::parse)
        .transpose()
        .map_err(|e| invalid(e.message()))
}

/// Builds the full model through the host's `full_model` registry, wrapped in PEFT's
/// LoRA model when `peft_config` is given (as upstream, around the whole model).
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let (model, kwargs) = model_and_kwargs(ctx.args.map())?;
    let spec = peft_spec(ctx.args.map())?;
    let built = ctx
        .build("full_model", &model, &kwargs, None)
        .map_err(|e| e.context(format_args!("{NAME}: building full model `{model}`")))?;
    match spec {
        None => Ok(built.into_inner()),
        Some(spec) => Ok(peft::wrap_spec(built, &spec)
            .map_err(|e| e.context(format_args!("{NAME}: peft_config")))?
            .into_inner()),
    }
}

/// The registry entry, with every keyword argument of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        NAME,
        "Builds `model` from the full_model registry with every further argument and returns it unwrapped: its \
         state_dict keys and outputs are the full model's (for a Prithvi MAE: loss, reconstruction, mask). Used \
         with terratorch.tasks.ReconstructionTask, which calls build_model(**model_args).",
        build,
    )
    .req("model", ParamType::STR, "full_model registry name (e.g. prithvi_eo_v1_100_mae)")
    .ignores("rescale", "FullModelFactory takes it and does not use it (the model is returned unwrapped)")
    .ignores("padding", "FullModelFactory takes it and does not use it (the model is returned unwrapped)")
    .opt(
        "peft_config",
        ParamType::DICT,
        Value::Null,
        "PEFT LoRA on the whole model: {method: LORA, replace_qkv, peft_config_kwargs, merge} as for \
         EncoderDecoderFactory",
    )
    .accepts_extra()
}
