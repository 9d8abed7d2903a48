//! TerraTorch's `ClayModelFactory` (`terratorch/models/clay_model_factory.py`, identical in
//! TerraTorch 1.2.11 and 1.2.13): a Clay v1 backbone from timm with a
//! `terratorch.models.decoders` class and a TerraTorch head, in `PixelWiseModel` or
//! `ScalarOutputModel`.
//!
//! Upstream calls `timm.create_model(backbone, pretrained, in_chans=in_channels, bands=bands,
//! num_frames=num_frames, features_only=True, **backbone_*)`, builds the decoder on the
//! backbone's `feature_info.channels()` and passes no neck, so the task model falls back on
//! the Embedder's `prepare_features_for_image_model` (the last layer as one map). That is
//! exactly the `EncoderDecoderFactory` without necks on the `timm` source's backbone and the
//! `terratorch` source's decoder, so this factory translates its arguments and builds
//! through [`encoder_decoder_factory::build_with`]. terratorch's decoders include no head,
//! so the class count always goes to the head, as upstream puts it there.
//!
//! Where upstream differs from `EncoderDecoderFactory`, the translation follows upstream:
//! arguments it does not use are dropped (each named in a warning here) instead of being an
//! error, and `prepare_features_for_image_model` and `checkpoint_path` (used only for a
//! backbone given as a module, which a config cannot give) are not used.

use super::encoder_decoder_factory::{self, extract_prefix_keys, py_truthy};
use serde_json::{json, Map, Value};
use terrahost_plugin_api::{
    params::describe_json,
    sdk::{BuildCtx, Entry},
    ModuleBox, ParamType, PluginError, Result,
};

/// The entry name.
pub const NAME: &str = "ClayModelFactory";

/// The keyword arguments `build_model` declares itself.
pub const DECLARED: [&str; 12] = [
    "task",
    "backbone",
    "decoder",
    "in_channels",
    "bands",
    "num_classes",
    "pretrained",
    "num_frames",
    "prepare_features_for_image_model",
    "aux_decoders",
    "rescale",
    "checkpoint_path",
];

/// The tasks upstream supports (`SUPPORTED_TASKS`).
const TASKS: [&str; 4] = [
    "segmentation",
    "regression",
    "classification",
    "scalar_regression",
];

/// The classes `terratorch.models.decoders` exports in TerraTorch 1.2.11, where upstream
/// looks the decoder up by attribute (not through the decoder registry).
const DECODERS: [&str; 10] = [
    "ASPPRegressionHead",
    "ASPPSegmentationHead",
    "FCNDecoder",
    "IdentityDecoder",
    "LinearDecoder",
    "MLPDecoder",
    "SatMAEHead",
    "SatMAEHeadViT",
    "UNetDecoder",
    "UperNetDecoder",
];

/// The keywords upstream passes to `timm.create_model` itself: the same name among the
/// `backbone_*` arguments is a second value for it.
const CREATE_MODEL_KEYS: [&str; 5] = [
    "pretrained",
    "in_chans",
    "bands",
    "num_frames",
    "features_only",
];

/// Why `SatMAEModelFactory` is refused. TerraTorch 1.2.11 and 1.2.13 (the same file) pass
/// `prepare_features_for_image_model` to `PixelWiseModel` / `ScalarOutputModel`, which do not
/// take it, so no configuration builds; its backbones also come from the SatMAE
/// repository's Python modules on `model_sys_path`.
pub const SATMAE_REFUSAL: &str = "`SatMAEModelFactory` builds no model in TerraTorch 1.2.11 or 1.2.13: it passes \
     `prepare_features_for_image_model` to PixelWiseModel/ScalarOutputModel, which do not take it (TypeError), and \
     its backbones are Python classes imported from a SatMAE checkout (`model_sys_path`); terrahost refuses it rather \
     than build what TerraTorch never builds. Use EncoderDecoderFactory with a ViT backbone and the SatMAEHead decoder";

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("{NAME}: {}", msg.into()))
}

/// The result of [`translate`]: the `EncoderDecoderFactory` arguments and the arguments
/// upstream drops without using them.
#[derive(Debug)]
pub struct Translated {
    /// What to build through the `EncoderDecoderFactory`.
    pub args: Map<String, Value>,
    /// Given arguments that `ClayModelFactory` does not use, by name.
    pub dropped: Vec<String>,
}

/// Translates the validated `ClayModelFactory` arguments (defaults filled in) into the
/// `EncoderDecoderFactory` arguments that build the same model.
pub fn translate(args: &Map<String, Value>) -> Result<Translated> {
    let get = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
    let backbone = match args.get("backbone") {
        Some(Value::String(s)) => s.clone(),
        other => {
            return Err(invalid(format!(
                "`backbone` must be the name of a timm Clay model (clay_v1_base), got {}; a backbone given as a \
                 module (with checkpoint_path) cannot come from a config",
                other.map_or("nothing".to_owned(), describe_json)
            )))
        }
    };
    // upstream checks the name before the task
    if !backbone.contains("clay") {
        return Err(invalid(format!(
            "This class only handles models for `Clay` encoders (got backbone `{backbone}`; use clay_v1_base, or \
             EncoderDecoderFactory for other backbones)"
        )));
    }
    let task = match args.get("task") {
        Some(Value::String(s)) => s.to_lowercase(),
        other => {
            return Err(invalid(format!(
                "`task` must be a string, got {}",
                other.map_or("nothing".to_owned(), describe_json)
            )))
        }
    };
    if !TASKS.contains(&task.as_str()) {
        return Err(invalid(format!(
            "Task {task} not supported. Please choose one of {TASKS:?} (`task`)"
        )));
    }
    let decoder = match args.get("decoder") {
        Some(Value::String(s)) if DECODERS.contains(&s.as_str()) => s.clone(),
        Some(Value::String(s)) if s == "SklearnDecoder" => {
            return Err(invalid(
                "decoder `SklearnDecoder` (TerraTorch 1.2.12+) needs a fitted scikit-learn estimator from a joblib \
                 file, which terrahost does not load; choose a terratorch decoder such as FCNDecoder",
            ))
        }
        Some(Value::String(s)) => {
            return Err(invalid(format!(
                "Decoder {s} was not found in the registry (ClayModelFactory looks decoders up in \
                 terratorch.models.decoders: {})",
                DECODERS.join(", ")
            )))
        }
        other => {
            return Err(invalid(format!(
                "`decoder` must be the name of a terratorch decoder ({}), got {}",
                DECODERS.join(", "),
                other.map_or("nothing".to_owned(), describe_json)
            )))
        }
    };

    let rest: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !DECLARED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (backbone_kwargs, rest) = extract_prefix_keys(&rest, "backbone_");
    if let Some(k) = CREATE_MODEL_KEYS
        .iter()
        .find(|k| backbone_kwargs.contains_key(**k))
    {
        return Err(invalid(format!(
            "create_model() got multiple values for keyword argument '{k}' (ClayModelFactory passes it itself: \
             remove `backbone_{k}` and give it through the factory's own argument)"
        )));
    }
    let (decoder_kwargs, rest) = extract_prefix_keys(&rest, "decoder_");
    let (head_kwargs, rest) = extract_prefix_keys(&rest, "head_");
    let mut dropped: Vec<String> = rest.keys().cloned().collect();
    if args
        .get("prepare_features_for_image_model")
        .is_some_and(py_truthy)
    {
        dropped.push("prepare_features_for_image_model".into());
    }
    if args.get("checkpoint_path").is_some_and(py_truthy) {
        dropped.push("checkpoint_path".into());
    }

    let mut out = Map::new();
    out.insert("task".into(), json!(task));
    // upstream asks timm, whatever other backbone sources hold
    out.insert("backbone".into(), json!(format!("timm_{backbone}")));
    out.insert("backbone_pretrained".into(), get("pretrained"));
    out.insert("backbone_in_chans".into(), get("in_channels"));
    out.insert("backbone_bands".into(), get("bands"));
    out.insert("backbone_num_frames".into(), get("num_frames"));
    out.insert("backbone_features_only".into(), json!(true));
    for (k, v) in backbone_kwargs {
        out.insert(format!("backbone_{k}"), v);
    }
    out.insert("decoder".into(), json!(format!("terratorch_{decoder}")));
    for (k, v) in decoder_kwargs {
        out.insert(format!("decoder_{k}"), v);
    }
    for (k, v) in head_kwargs {
        out.insert(format!("head_{k}"), v);
    }
    // `if num_classes:` upstream: 0 and None leave the head without one
    if args.get("num_classes").is_some_and(py_truthy) {
        out.insert("num_classes".into(), get("num_classes"));
    }
    out.insert("aux_decoders".into(), aux_decoders(&get("aux_decoders"))?);
    out.insert("rescale".into(), get("rescale"));
    Ok(Translated { args: out, dropped })
}

/// `aux_decoders` with each decoder name routed to the `terratorch` source, as upstream
/// looks those up in `terratorch.models.decoders` too.
fn aux_decoders(v: &Value) -> Result<Value> {
    let Value::Array(items) = v else {
        return Ok(v.clone());
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut item = item.clone();
        if let Some(Value::String(d)) = item.get("decoder").cloned() {
            if !DECODERS.contains(&d.as_str()) {
                return Err(invalid(format!(
                    "aux_decoders[{i}]: Decoder {d} was not found in the registry (ClayModelFactory looks decoders \
                     up in terratorch.models.decoders: {})",
                    DECODERS.join(", ")
                )));
            }
            item["decoder"] = json!(format!("terratorch_{d}"));
        }
        out.push(item);
    }
    Ok(Value::Array(out))
}

/// Translates, warns about what upstream drops, and builds through the
/// `EncoderDecoderFactory`.
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let t = translate(ctx.args.map())?;
    for key in &t.dropped {
        let msg = format!("`terratorch_{NAME}` ignores argument `{key}` (TerraTorch drops it)");
        tracing::warn!("{msg}");
        terrahost_plugin_api::warn!("{msg}");
    }
    encoder_decoder_factory::build_with(ctx, &t.args).map_err(|e| {
        e.context(format_args!(
            "{NAME} (building through EncoderDecoderFactory)"
        ))
    })
}

/// The registry entry, with every keyword argument of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        NAME,
        "TerraTorch's factory for Clay v1: builds `backbone` (a timm Clay model, clay_v1_base) with pretrained, \
         in_chans = in_channels, bands, num_frames, features_only and the `backbone_*` arguments, a \
         terratorch.models.decoders class on its feature channels with the `decoder_*` arguments, and the task's \
         head (`head_*`, num_classes), without necks: the backbone's last layer becomes one map. Tasks: \
         segmentation, regression, classification, scalar_regression. Other arguments are dropped as upstream, \
         each named in a warning.",
        build,
    )
    .req("task", ParamType::STR, "segmentation, regression, classification or scalar_regression")
    .req("backbone", ParamType::ANY, "a timm Clay model name containing `clay` (clay_v1_base)")
    .req("decoder", ParamType::ANY, "a terratorch.models.decoders class name (FCNDecoder, IdentityDecoder, UperNetDecoder, ...)")
    .req("in_channels", ParamType::INT, "input channels: timm's in_chans (Clay's Embedder does not use it)")
    .opt("bands", ParamType::ANY, json!([]), "the input's Clay band names (blue, green, red, nir, ...); each name's wavelength feeds Clay's dynamic embedding. Upstream's default [] gives the embedding no wavelengths, so give one name per channel")
    .opt("num_classes", ParamType::INT, Value::Null, "number of classes, for the head (only when non-zero)")
    .opt("pretrained", ParamType::BOOL, json!(true), "load Clay weights (terrahost downloads nothing: set false, or give backbone_pretrained_cfg_overlay.file / backbone_ckpt_path)")
    .opt("num_frames", ParamType::INT, json!(1), "frames per sample, passed to the backbone")
    .opt("prepare_features_for_image_model", ParamType::ANY, Value::Null, "taken and not used upstream")
    .opt("aux_decoders", ParamType::DICT_LIST, Value::Null, "auxiliary heads, each {name, decoder, decoder_args}, as in EncoderDecoderFactory")
    .opt("rescale", ParamType::BOOL, json!(true), "resize per-pixel outputs to the input size (bilinear)")
    .opt("checkpoint_path", ParamType::STR, Value::Null, "used upstream only for a backbone given as a module; not used for a backbone name")
    .accepts_extra()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's defaults for what a config leaves out, then `extra`.
    fn args(extra: Value) -> Map<String, Value> {
        let mut a =
            json!({"task": "segmentation", "backbone": "clay_v1_base", "decoder": "FCNDecoder",
            "in_channels": 4, "bands": [], "num_classes": null, "pretrained": true, "num_frames": 1,
            "prepare_features_for_image_model": null, "aux_decoders": null, "rescale": true,
            "checkpoint_path": null})
            .as_object()
            .unwrap()
            .clone();
        a.extend(extra.as_object().unwrap().clone());
        a
    }

    fn err(extra: Value) -> String {
        translate(&args(extra)).unwrap_err().to_string()
    }

    #[test]
    fn translates_into_encoder_decoder_arguments_as_upstream_calls_timm() {
        let t = translate(&args(
            json!({"task": "Classification", "bands": ["red", "nir"],
            "num_classes": 5, "pretrained": false, "num_frames": 2, "backbone_img_size": 32,
            "decoder_channels": 16, "head_dropout": 0.1}),
        ))
        .unwrap();
        let want = json!({"task": "classification", "backbone": "timm_clay_v1_base",
            "backbone_pretrained": false, "backbone_in_chans": 4, "backbone_bands": ["red", "nir"],
            "backbone_num_frames": 2, "backbone_features_only": true, "backbone_img_size": 32,
            "decoder": "terratorch_FCNDecoder", "decoder_channels": 16, "head_dropout": 0.1,
            "num_classes": 5, "aux_decoders": null, "rescale": true});
        assert_eq!(Value::Object(t.args), want);
        assert!(t.dropped.is_empty());
    }

    #[test]
    fn zero_classes_and_unprefixed_arguments_are_dropped_as_upstream() {
        let t = translate(&args(
            json!({"num_classes": 0, "num_outputs": 3, "necks": [],
            "checkpoint_path": "clay.ckpt"}),
        ))
        .unwrap();
        assert!(!t.args.contains_key("num_classes"));
        assert!(!t.args.contains_key("num_outputs"));
        assert!(!t.args.contains_key("necks"));
        let mut dropped = t.dropped.clone();
        dropped.sort();
        assert_eq!(dropped, ["checkpoint_path", "necks", "num_outputs"]);
    }

    #[test]
    fn aux_decoders_are_looked_up_among_terratorch_decoders() {
        let t = translate(&args(json!({"aux_decoders": [
            {"name": "aux", "decoder": "IdentityDecoder", "decoder_args": {}}]})))
        .unwrap();
        assert_eq!(
            t.args["aux_decoders"][0]["decoder"],
            "terratorch_IdentityDecoder"
        );
        let e = err(json!({"aux_decoders": [{"name": "aux", "decoder": "smp_Unet"}]}));
        assert!(
            e.contains("aux_decoders[0]") && e.contains("smp_Unet"),
            "{e}"
        );
    }

    /// The refusals, each as TerraTorch 1.2.11 fails on the same arguments.
    #[test]
    fn refuses_what_upstream_refuses() {
        let e = err(json!({"backbone": "prithvi_eo_v2_300"}));
        assert!(e.contains("only handles models for `Clay` encoders"), "{e}");
        let e = err(json!({"task": "embedding_generation"}));
        assert!(e.contains("Task embedding_generation not supported"), "{e}");
        // upstream: create_model() got multiple values for 'bands', then AttributeError on the name
        let e = err(json!({"backbone_bands": ["red"]}));
        assert!(
            e.contains("multiple values for keyword argument 'bands'"),
            "{e}"
        );
        assert!(e.contains("backbone_bands"), "{e}");
        // only terratorch.models.decoders classes, not the decoder registry's other sources
        let e = err(json!({"decoder": "smp_Unet"}));
        assert!(e.contains("Decoder smp_Unet was not found"), "{e}");
        let e = err(json!({"decoder": "SklearnDecoder"}));
        assert!(e.contains("joblib"), "{e}");
        let e = err(json!({"backbone": {"class_path": "Embedder"}}));
        assert!(e.contains("`backbone` must be the name"), "{e}");
    }
}
