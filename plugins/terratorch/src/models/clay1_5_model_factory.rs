//! TerraTorch's `Clay1_5ModelFactory` as TerraTorch 1.2.12 rewrote it
//! (`terratorch/models/clay1_5_model_factory.py` of 1.2.13): the Clay v1.5 encoder
//! ([`ClayV15Backbone`]) sized by the factory's own `dim`, `depth`, `heads`, `dim_head`,
//! `mlp_ratio` and `patch_size`, fed with the wavelengths and GSD of `metadata[platform]`, a
//! `terratorch.models.decoders` class on `[dim]`, and the task's head, in `PixelWiseModel` or
//! `ScalarOutputModel` (`segmentation`, `regression`, `classification`, `scalar_regression`).
//!
//! The task model is the `EncoderDecoderFactory`'s without necks
//! ([`encoder_decoder_factory::build_around`]); `patch_size` and `padding` pad the input as
//! there. Two departures, each refused with the reason rather than built differently:
//! - `pretrained` (upstream's default) without `checkpoint_path` downloads Clay v1.5 from the
//!   Hugging Face hub, and when that fails upstream goes on with random weights; terrahost
//!   downloads nothing, so it asks for `checkpoint_path` or `pretrained: false` (`run
//!   --weights` sets it, and loads a whole model's checkpoint).
//! - `checkpoint_path` is read as upstream reads it (`model.encoder.*` of the Lightning
//!   `state_dict`), but a checkpoint that leaves encoder weights out is refused: upstream
//!   loads it with `strict=False` and keeps random values there, which no other run
//!   reproduces.
//! - upstream takes the channel order from the key order of `bands.wavelength`; terrahost's
//!   argument trees do not keep key order, so `metadata[platform].band_order` (which Clay's
//!   metadata files carry, in that order) names it.

use super::clay_v15::{ClayV15Backbone, Config};
use super::encoder_decoder_factory::{self, extract_prefix_keys, py_truthy};
use serde_json::{json, Map, Value};
use tch::{nn, Device};
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_plugin_api::{
    params::describe_json,
    sdk::{BuildCtx, Built, DynModule, Entry},
    ModuleBox, ParamType, PluginError, Result,
};

/// The entry name.
pub const NAME: &str = "Clay1_5ModelFactory";

/// The tasks upstream supports.
const TASKS: [&str; 4] = [
    "segmentation",
    "regression",
    "classification",
    "scalar_regression",
];

/// ClayMAE settings that share the `decoder_` prefix; upstream drops them before the
/// terratorch decoder sees its arguments.
const CLAY_DECODER_KEYS: [&str; 6] = ["dim", "depth", "heads", "dim_head", "mlp_ratio", "ratio"];

/// The classes of `terratorch.models.decoders` (TerraTorch 1.2.13, less `SklearnDecoder`).
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

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("{NAME}: {}", msg.into()))
}

/// A decoder name routed to the `terratorch` source, as upstream looks it up in
/// `terratorch.models.decoders`.
fn decoder_name(what: &str, v: Option<&Value>) -> Result<String> {
    match v {
        Some(Value::String(s)) if DECODERS.contains(&s.as_str()) => Ok(format!("terratorch_{s}")),
        Some(Value::String(s)) if s == "SklearnDecoder" => Err(invalid(format!(
            "{what}: `SklearnDecoder` needs a fitted scikit-learn estimator from a joblib file, which terrahost \
             does not load; choose a terratorch decoder such as FCNDecoder"
        ))),
        Some(Value::String(s)) => Err(invalid(format!(
            "{what}: Decoder {s} was not found in the registry (Clay1_5ModelFactory looks decoders up in \
             terratorch.models.decoders: {})",
            DECODERS.join(", ")
        ))),
        other => Err(invalid(format!(
            "{what} must be the name of a terratorch decoder ({}), got {}",
            DECODERS.join(", "),
            other.map_or("nothing".to_owned(), describe_json)
        ))),
    }
}

/// `kwargs` with a `decoder_` prefix, less the ClayMAE keys, with the prefix put back.
fn decoder_kwargs(kwargs: &Map<String, Value>) -> Map<String, Value> {
    let (decoder, _) = extract_prefix_keys(kwargs, "decoder_");
    decoder
        .into_iter()
        .filter(|(k, _)| !CLAY_DECODER_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (format!("decoder_{k}"), v))
        .collect()
}

/// The platform's wavelengths (in channel order) and GSD from `metadata`.
pub fn platform_bands(metadata: &Value, platform: &Value) -> Result<(Vec<f64>, f64)> {
    let platform =
        match platform {
            Value::String(s) => s.clone(),
            // a list: its first name, as upstream
            Value::Array(a) => match a.first() {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(invalid(
                        "`platform` must be a platform name or a list whose first item is one",
                    ))
                }
            },
            Value::Null => return Err(invalid(
                "'platform' is required in kwargs for Clay1_5ModelFactory (a key of `metadata`)",
            )),
            other => {
                return Err(invalid(format!(
                    "`platform` must be a platform name, got {}",
                    describe_json(other)
                )))
            }
        };
    let metadata = match metadata {
        Value::Object(m) => m,
        Value::Null => {
            return Err(invalid(
                "'metadata' is required in kwargs for Clay1_5ModelFactory (per platform: band wavelengths and gsd)",
            ))
        }
        other => {
            return Err(invalid(format!(
                "`metadata` must be a mapping of platforms, got {}",
                describe_json(other)
            )))
        }
    };
    let Some(entry) = metadata.get(&platform) else {
        let keys: Vec<&String> = metadata.keys().collect();
        return Err(invalid(format!(
            "Platform '{platform}' not found in metadata. Available: {keys:?}"
        )));
    };
    let at = |path: &str| format!("metadata.{platform}.{path}");
    let wavelength = entry
        .get("bands")
        .and_then(|b| b.get("wavelength"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            invalid(format!(
                "`{}` is required: a mapping of band name to wavelength",
                at("bands.wavelength")
            ))
        })?;
    let order = entry
        .get("band_order")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            invalid(format!(
                "`{}` is required: upstream takes the channel order from the key order of `{}`, which terrahost's \
                 argument trees do not keep; list those bands in the input's channel order (Clay's metadata files \
                 have it)",
                at("band_order"),
                at("bands.wavelength")
            ))
        })?;
    let mut waves = Vec::with_capacity(order.len());
    for band in order {
        let name = band.as_str().ok_or_else(|| {
            invalid(format!(
                "`{}` must list band names, got {}",
                at("band_order"),
                describe_json(band)
            ))
        })?;
        let w = wavelength
            .get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                invalid(format!(
                    "`{}` names `{name}`, which has no number in `{}`",
                    at("band_order"),
                    at("bands.wavelength")
                ))
            })?;
        waves.push(w);
    }
    if waves.len() != wavelength.len() {
        return Err(invalid(format!(
            "`{}` has {} bands but `{}` has {}: upstream uses every wavelength, so list each once",
            at("band_order"),
            waves.len(),
            at("bands.wavelength"),
            wavelength.len()
        )));
    }
    let gsd = entry.get("gsd").and_then(Value::as_f64).ok_or_else(|| {
        invalid(format!(
            "`{}` is required: the ground sample distance (a number)",
            at("gsd")
        ))
    })?;
    Ok((waves, gsd))
}

fn int_arg(args: &Map<String, Value>, key: &str) -> Result<i64> {
    match args.get(key).filter(|v| !v.is_null()) {
        Some(v) => v.as_i64().ok_or_else(|| {
            invalid(format!("`{key}` must be an integer, got {}", describe_json(v)))
        }),
        None => Err(invalid(format!(
            "`{key}` is required (the Clay v1.5 encoder's size; upstream fails with KeyError '{key}')"
        ))),
    }
}

/// Builds the encoder and hands it to the `EncoderDecoderFactory`'s task models.
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let args = ctx.args.map();
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
    let (waves, gsd) = platform_bands(
        args.get("metadata").unwrap_or(&Value::Null),
        args.get("platform").unwrap_or(&Value::Null),
    )?;
    let patch_size = match args.get("patch_size") {
        None | Some(Value::Null) => 8,
        Some(_) => int_arg(args, "patch_size")?,
    };
    let padding = args.get("padding").cloned().unwrap_or(json!("reflect"));
    let mlp_ratio = match args.get("mlp_ratio").filter(|v| !v.is_null()) {
        Some(v) => v.as_f64().ok_or_else(|| {
            invalid(format!("`mlp_ratio` must be a number, got {}", describe_json(v)))
        })?,
        None => return Err(invalid(
            "`mlp_ratio` is required (the Clay v1.5 encoder's size; upstream fails with KeyError 'mlp_ratio')",
        )),
    };
    let cfg = Config {
        dim: int_arg(args, "dim")?,
        depth: int_arg(args, "depth")?,
        heads: int_arg(args, "heads")?,
        dim_head: int_arg(args, "dim_head")?,
        mlp_ratio,
        patch_size,
    };
    // upstream resolves the checkpoint before it builds anything else
    let checkpoint = if args.get("pretrained").is_some_and(py_truthy) {
        match args.get("checkpoint_path").filter(|v| !v.is_null()) {
            Some(Value::String(path)) => Some(path.clone()),
            Some(other) => {
                return Err(invalid(format!(
                    "`checkpoint_path` must be a file path, got {}",
                    describe_json(other)
                )))
            }
            None => {
                return Err(invalid(
                    "pretrained=true without checkpoint_path: upstream downloads clay-v1.5.ckpt from the Hugging \
                     Face hub, and terrahost downloads nothing; give checkpoint_path=<local clay-v1.5.ckpt>, or \
                     build with `pretrained: false` and load a whole model's checkpoint (`terrahost run --weights`)",
                ))
            }
        }
    } else {
        None
    };
    let unused = [
        "backbone",
        "bands",
        "in_channels",
        "num_frames",
        "prepare_features_for_image_model",
        "mask_ratio",
        "shuffle",
        "batch_size",
    ];
    for key in unused {
        if args.get(key).is_some_and(|v| !v.is_null()) {
            tracing::debug!("{NAME}: `{key}` is taken and not used, as upstream");
        }
    }

    // the encoder, as ClayMAEBackbone wraps it
    let vs = nn::VarStore::new(Device::Cpu);
    let backbone = ClayV15Backbone::new(vs.root(), cfg, waves, gsd)
        .map_err(|e| e.context(format_args!("{NAME}: building the Clay v1.5 encoder")))?;
    if let Some(path) = &checkpoint {
        load_encoder_weights(&vs, path)?;
    }
    let label = "ClayMAEBackbone".to_owned();
    let encoder = DynModule::new(label.clone(), Built::new(label, vs, backbone).boxed());

    let mut plan_args = Map::new();
    plan_args.insert("task".into(), json!(task));
    plan_args.insert("backbone".into(), json!("ClayMAEBackbone"));
    plan_args.insert("backbone_patch_size".into(), json!(patch_size));
    plan_args.insert("backbone_padding".into(), padding);
    plan_args.insert(
        "decoder".into(),
        json!(decoder_name("`decoder`", args.get("decoder"))?),
    );
    plan_args.extend(decoder_kwargs(args));
    let (head, _) = extract_prefix_keys(args, "head_");
    for (k, v) in head {
        plan_args.insert(format!("head_{k}"), v);
    }
    // `if num_classes:` upstream
    if args.get("num_classes").is_some_and(py_truthy) {
        plan_args.insert("num_classes".into(), args["num_classes"].clone());
    }
    if let Some(Value::Array(items)) = args.get("aux_decoders") {
        let mut aux = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut item = item.clone();
            let what = format!("aux_decoders[{i}].decoder");
            item["decoder"] = json!(decoder_name(&what, item.get("decoder"))?);
            if let Some(Value::Object(da)) = item.get("decoder_args").cloned() {
                let (_, rest) = extract_prefix_keys(&da, "decoder_");
                let mut kept = rest;
                kept.extend(decoder_kwargs(&da));
                item["decoder_args"] = Value::Object(kept);
            }
            aux.push(item);
        }
        plan_args.insert("aux_decoders".into(), Value::Array(aux));
    }
    plan_args.insert(
        "rescale".into(),
        args.get("rescale").cloned().unwrap_or(json!(true)),
    );
    let plan = encoder_decoder_factory::plan(&plan_args)?;
    encoder_decoder_factory::build_around(ctx, &plan, encoder)
        .map_err(|e| e.context(format_args!("{NAME}")))
}

/// Where a Clay v1.5 checkpoint keeps the encoder: its Lightning `state_dict` holds the
/// whole `ClayMAE` under `model.`.
const CHECKPOINT_ENCODER_PREFIX: &str = "model.encoder.";

/// `_load_encoder_weights`: the `model.encoder.*` entries of the checkpoint's `state_dict`
/// (or of the file's top-level dict) loaded into the encoder, which `vs` holds under
/// `encoder_module.`. Other entries (ClayMAE's decoder, the teacher) are ignored as
/// upstream ignores them; encoder keys the model lacks are logged as upstream logs them.
/// Unlike upstream, a checkpoint without `model.encoder.*` entries, or one that leaves
/// encoder weights out, is refused: upstream would run on random values there.
fn load_encoder_weights(vs: &nn::VarStore, path: &str) -> Result<()> {
    let pairs = read_state_dict(std::path::Path::new(path))?;
    let total = pairs.len();
    let mut others = Vec::new();
    let mut encoder = Vec::new();
    for (k, v) in pairs {
        match k.strip_prefix(CHECKPOINT_ENCODER_PREFIX) {
            Some(rest) => encoder.push((format!("encoder_module.{rest}"), v)),
            None => others.push(k),
        }
    }
    if encoder.is_empty() {
        let shown: Vec<&str> = others.iter().take(5).map(String::as_str).collect();
        return Err(invalid(format!(
            "checkpoint_path {path}: none of its {total} entries starts with `{CHECKPOINT_ENCODER_PREFIX}` (a Clay \
             v1.5 checkpoint keeps its encoder there; it has {}); give the clay-v1.5.ckpt that Clay publishes",
            shown.join(", ")
        )));
    }
    let vars = vs.variables();
    let given: std::collections::HashSet<&str> = encoder.iter().map(|(k, _)| k.as_str()).collect();
    let mut missing: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| !given.contains(k))
        .collect();
    if !missing.is_empty() {
        missing.sort_unstable();
        let more = missing.len().saturating_sub(5);
        missing.truncate(5);
        return Err(invalid(format!(
            "checkpoint_path {path} leaves {} encoder weight(s) out ({}{}): it does not hold a Clay v1.5 encoder of \
             this size (dim, depth, heads, dim_head, mlp_ratio, patch_size); upstream would keep random values there",
            missing.len() + more,
            missing.iter().map(|k| format!("model.encoder.{}", &k["encoder_module.".len()..])).collect::<Vec<_>>().join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
        )));
    }
    let mut unexpected = Vec::new();
    let mut wrong = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (k, v) in &encoder {
            match vars.get(k) {
                None => unexpected.push(k["encoder_module.".len()..].to_owned()),
                Some(dst) if dst.size() != v.size() => wrong.push(format!(
                    "model.encoder.{} (checkpoint {:?}, model {:?})",
                    &k["encoder_module.".len()..],
                    v.size(),
                    dst.size()
                )),
                Some(dst) => {
                    dst.shallow_clone().f_copy_(&v.f_to_kind(dst.kind())?)?;
                }
            }
        }
        Ok(())
    })?;
    if !wrong.is_empty() {
        return Err(invalid(format!(
            "checkpoint_path {path} does not fit this encoder (dim, depth, heads, dim_head, mlp_ratio, patch_size): \
             size mismatch for {}",
            wrong.join(", ")
        )));
    }
    if !unexpected.is_empty() {
        terrahost_plugin_api::warn!("Unexpected encoder keys in {path}: {unexpected:?}");
    }
    tracing::info!("{NAME}: encoder weights loaded from {path}");
    Ok(())
}

/// The registry entry, with the keyword arguments upstream's `build_model` declares and
/// the ones it reads from `**kwargs`.
pub fn entry() -> Entry {
    Entry::new(
        NAME,
        "TerraTorch 1.2.12+'s Clay v1.5 downstream factory: the Clay v1.5 encoder of size dim/depth/heads/dim_head/\
         mlp_ratio/patch_size on the wavelengths and gsd of metadata[platform] (zero time and lat/lon, no masking, \
         the class token dropped: one [B, dim, H/p, W/p] map; with pretrained, the model.encoder.* weights of checkpoint_path), a terratorch.models.decoders class on [dim] \
         (`decoder_*`, less ClayMAE's decoder_dim/depth/heads/dim_head/mlp_ratio/ratio) and the task's head \
         (`head_*`, num_classes). Tasks: segmentation, regression, classification, scalar_regression. Needs \
         checkpoint_path or pretrained: false (no downloads), and metadata[platform].band_order (the channel order).",
        build,
    )
    .req("task", ParamType::STR, "segmentation, regression, classification or scalar_regression")
    .req("backbone", ParamType::ANY, "required upstream (positional) and not used")
    .req("decoder", ParamType::ANY, "a terratorch.models.decoders class name (FCNDecoder, IdentityDecoder, ...)")
    .req("in_channels", ParamType::ANY, "required upstream (positional) and not used: the channels are the platform's bands")
    .opt("bands", ParamType::ANY, json!([]), "taken and not used upstream (the platform's metadata gives the bands)")
    .opt("num_classes", ParamType::INT, Value::Null, "number of classes, for the head (only when non-zero)")
    .opt("pretrained", ParamType::BOOL, json!(true), "load checkpoint_path's encoder weights (needs checkpoint_path: no downloads)")
    .opt("num_frames", ParamType::ANY, json!(1), "taken and not used upstream")
    .opt("prepare_features_for_image_model", ParamType::ANY, Value::Null, "taken and not used upstream")
    .opt("aux_decoders", ParamType::DICT_LIST, Value::Null, "auxiliary heads, each {name, decoder, decoder_args}")
    .opt("rescale", ParamType::BOOL, json!(true), "resize per-pixel outputs to the input size (bilinear)")
    .opt("checkpoint_path", ParamType::ANY, Value::Null, "a local Clay v1.5 checkpoint (clay-v1.5.ckpt): its model.encoder.* weights, read with pretrained")
    .opt("platform", ParamType::ANY, Value::Null, "the platform (a key of metadata), or a list whose first item is one")
    .opt("metadata", ParamType::DICT, Value::Null, "per platform: band_order, bands.wavelength (band -> micrometres), gsd")
    .opt("dim", ParamType::INT, Value::Null, "token width (required)")
    .opt("depth", ParamType::INT, Value::Null, "transformer layers (required)")
    .opt("heads", ParamType::INT, Value::Null, "attention heads (required)")
    .opt("dim_head", ParamType::INT, Value::Null, "width of one head (required)")
    .opt("mlp_ratio", ParamType::FLOAT, Value::Null, "MLP width over dim (required)")
    .opt("patch_size", ParamType::INT, json!(8), "patch size of the dynamic embedding, also the input padding's multiple")
    .opt("padding", ParamType::STR, json!("reflect"), "how the input is padded to the patch size")
    .opt("mask_ratio", ParamType::ANY, json!(0.75), "taken and not used downstream (no masking)")
    .opt("shuffle", ParamType::ANY, json!(false), "taken and not used downstream")
    .opt("batch_size", ParamType::ANY, Value::Null, "taken and not used")
    .accepts_extra()
}
