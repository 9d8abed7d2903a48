//! TerraTorch's `EncoderDecoderFactory`: builds a backbone, necks and a decoder through
//! the host's registries (so each may come from another plugin), puts a TerraTorch
//! head on top and wraps everything in a task model.
//! Mirrors `terratorch/models/encoder_decoder_factory.py` (and `build_neck_list` of
//! `terratorch/models/necks.py`, `_get_backbone` of `terratorch/models/utils.py`).

use super::heads::{
    RegressionHead, RegressionHeadConfig, ScalarHead, ScalarHeadConfig, SegmentationHead, SegmentationHeadConfig,
};
use super::pixel_wise_model::{Padding, PixelHead, PixelWiseModel, PixelWiseOptions, Trunk};
use super::scalar_output_model::ScalarOutputModel;
use super::utils::{check_padding_mode, PatchSize};
use abi_stable::std_types::RStr;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tch::{nn, Device};
use terrahost_plugin_api::{
    params::describe_json,
    sdk::{BuildCtx, Built, DynModule, Entry},
    EntryInfo, ModuleBox, ParamType, PluginError, Result,
};

/// The keyword arguments the factory declares itself; everything else must carry a
/// `backbone_`, `decoder_` or `head_` prefix.
pub const DECLARED: [&str; 13] = [
    "task",
    "backbone",
    "decoder",
    "backbone_kwargs",
    "decoder_kwargs",
    "head_kwargs",
    "num_classes",
    "num_outputs",
    "necks",
    "aux_decoders",
    "rescale",
    "image_size_out",
    "peft_config",
];

/// Backbone arguments TerraTorch consumes itself to wrap the backbone in time
/// (`TemporalWrapper`), never passing them to the backbone.
const TEMPORAL_KEYS: [&str; 6] = [
    "use_temporal",
    "temporal_pooling",
    "temporal_concat",
    "temporal_n_timestamps",
    "temporal_features_permute_op",
    "temporal_subset_lengths",
];

/// The tasks of the factory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Per-pixel classes ([`PixelWiseModel`] + [`SegmentationHead`]).
    Segmentation,
    /// Per-pixel values ([`PixelWiseModel`] + [`RegressionHead`]).
    Regression,
    /// Per-image classes ([`ScalarOutputModel`] + [`ScalarHead`]).
    Classification,
    /// Per-image values ([`ScalarOutputModel`] + [`ScalarHead`]).
    ScalarRegression,
}

impl Task {
    /// Parses a task name, case-insensitively as upstream.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_lowercase().as_str() {
            "segmentation" => Ok(Self::Segmentation),
            "regression" => Ok(Self::Regression),
            "classification" => Ok(Self::Classification),
            "scalar_regression" => Ok(Self::ScalarRegression),
            "embedding_generation" => Err(PluginError::invalid_argument(
                "EncoderDecoderFactory: task `embedding_generation` is not supported yet; \
                 use segmentation, regression, classification or scalar_regression",
            )),
            other => Err(PluginError::invalid_argument(format!(
                "EncoderDecoderFactory: task `{other}` is not supported; \
                 choose one of segmentation, regression, classification, scalar_regression"
            ))),
        }
    }

    /// The upstream name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Segmentation => "segmentation",
            Self::Regression => "regression",
            Self::Classification => "classification",
            Self::ScalarRegression => "scalar_regression",
        }
    }

    /// Whether the task predicts per pixel.
    pub fn is_pixel_wise(self) -> bool {
        matches!(self, Self::Segmentation | Self::Regression)
    }
}

/// Splits `map` into the entries whose key starts with `prefix` (prefix removed) and the
/// rest, as upstream `extract_prefix_keys`.
pub fn extract_prefix_keys(map: &Map<String, Value>, prefix: &str) -> (Map<String, Value>, Map<String, Value>) {
    let mut extracted = Map::new();
    let mut rest = Map::new();
    for (k, v) in map {
        match k.strip_prefix(prefix) {
            Some(stripped) => extracted.insert(stripped.to_owned(), v.clone()),
            None => rest.insert(k.clone(), v.clone()),
        };
    }
    (extracted, rest)
}

/// One neck to build: its registry name and keyword arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct NeckSpec {
    /// The neck registry name.
    pub name: String,
    /// The other keys of its dict.
    pub args: Map<String, Value>,
}

/// Everything the factory needs to build, decided from the arguments alone.
#[derive(Clone, Debug, PartialEq)]
pub struct FactoryPlan {
    /// The task.
    pub task: Task,
    /// The backbone registry name.
    pub backbone: String,
    /// Arguments for the backbone (temporal keys removed).
    pub backbone_kwargs: Map<String, Value>,
    /// Necks, applied in order.
    pub necks: Vec<NeckSpec>,
    /// The decoder registry name.
    pub decoder: String,
    /// Arguments for the decoder (before `num_classes` routing).
    pub decoder_kwargs: Map<String, Value>,
    /// Arguments for the head (before `num_classes` routing).
    pub head_kwargs: Map<String, Value>,
    /// `num_classes`, if given.
    pub num_classes: Option<i64>,
    /// `num_outputs`, if given.
    pub num_outputs: Option<i64>,
    /// Resize per-pixel outputs to the input size.
    pub rescale: bool,
    /// Fixed output size of per-pixel models.
    pub image_size_out: Option<[i64; 2]>,
    /// Input padding (from `backbone_patch_size` and `backbone_padding`).
    pub padding: Option<Padding>,
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("EncoderDecoderFactory: {}", msg.into()))
}

fn non_null<'a>(args: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    args.get(key).filter(|v| !v.is_null())
}

fn typed<T: DeserializeOwned>(args: &Map<String, Value>, key: &str) -> Result<Option<T>> {
    non_null(args, key)
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| invalid(format!("argument `{key}` has the wrong type ({e}); got {}", describe_json(v))))
        })
        .transpose()
}

fn dict_or_empty(args: &Map<String, Value>, key: &str) -> Result<Map<String, Value>> {
    Ok(typed::<Map<String, Value>>(args, key)?.unwrap_or_default())
}

/// Reads the validated build arguments (declared ones plus prefixed extras) into a
/// plan, splitting the extras by prefix exactly as upstream does: an explicit
/// `backbone_kwargs`/`decoder_kwargs`/`head_kwargs` dict that is non-empty wins, and
/// then the prefixed extras of that group are left over, which is an error like any
/// other leftover argument.
pub fn plan(args: &Map<String, Value>) -> Result<FactoryPlan> {
    let task_name: String = typed(args, "task")?.ok_or_else(|| invalid("argument `task` is required"))?;
    let task = Task::parse(&task_name)?;
    let backbone: String = typed(args, "backbone")?.ok_or_else(|| invalid("argument `backbone` is required"))?;
    let decoder: String = typed(args, "decoder")?
        .ok_or_else(|| invalid(format!("a decoder must be provided for task `{}`", task.name())))?;

    let mut extras: Map<String, Value> =
        args.iter().filter(|(k, _)| !DECLARED.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();

    let mut backbone_kwargs = dict_or_empty(args, "backbone_kwargs")?;
    if backbone_kwargs.is_empty() {
        (backbone_kwargs, extras) = extract_prefix_keys(&extras, "backbone_");
    }
    // TerraTorch's temporal wrapper options never reach the backbone.
    let use_temporal = backbone_kwargs.get("use_temporal").cloned().unwrap_or(Value::Null);
    for key in TEMPORAL_KEYS {
        backbone_kwargs.remove(key);
    }
    if !(use_temporal.is_null() || use_temporal == json!(false)) {
        return Err(invalid(
            "`backbone_use_temporal` (TemporalWrapper) is not supported yet; drop it and the `backbone_temporal_*` arguments",
        ));
    }

    // Like upstream, the patch size and padding mode are read from the backbone's
    // arguments (and still passed on to the backbone).
    let padding_mode = match backbone_kwargs.get("padding") {
        None => Some("reflect".to_owned()),
        Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_padding_mode(s).map_err(|e| invalid(format!("`backbone_padding`: {}", e.message())))?;
            Some(s.clone())
        }
        Some(other) => {
            return Err(invalid(format!("`backbone_padding` must be a string, got {}", describe_json(other))))
        }
    };
    let patch = match backbone_kwargs.get("patch_size") {
        Some(v) => PatchSize::from_json(v).map_err(|e| invalid(format!("`backbone_patch_size`: {}", e.message())))?,
        None => None,
    };
    let padding = match (patch, padding_mode) {
        (Some(patch), Some(mode)) => Some(Padding { patch, mode }),
        _ => None,
    };

    if non_null(args, "peft_config").is_some() {
        return Err(invalid("`peft_config` (PEFT adapters) is not supported yet; leave it unset"));
    }
    if non_null(args, "aux_decoders").is_some() {
        return Err(invalid("`aux_decoders` (auxiliary heads) is not supported yet; leave it unset"));
    }

    let mut necks = Vec::new();
    for (i, neck) in typed::<Vec<Map<String, Value>>>(args, "necks")?.unwrap_or_default().into_iter().enumerate() {
        let name = match neck.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(invalid(format!("`necks[{i}].name` must be a string, got {}", describe_json(other))))
            }
            None => return Err(invalid(format!("`necks[{i}]` needs a `name` key naming the neck"))),
        };
        let args = neck.into_iter().filter(|(k, _)| k != "name").collect();
        necks.push(NeckSpec { name, args });
    }

    let mut decoder_kwargs = dict_or_empty(args, "decoder_kwargs")?;
    if decoder_kwargs.is_empty() {
        (decoder_kwargs, extras) = extract_prefix_keys(&extras, "decoder_");
    }
    let mut head_kwargs = dict_or_empty(args, "head_kwargs")?;
    if head_kwargs.is_empty() {
        (head_kwargs, extras) = extract_prefix_keys(&extras, "head_");
    }

    let num_classes: Option<i64> = typed(args, "num_classes")?;
    let num_outputs: Option<i64> = typed(args, "num_outputs")?;
    if num_classes.is_some() && num_outputs.is_some() {
        return Err(invalid("give only one of `num_outputs` and `num_classes`"));
    }
    for (key, v) in [("num_classes", num_classes), ("num_outputs", num_outputs)] {
        if let Some(n) = v.filter(|&n| n < 1) {
            return Err(invalid(format!("`{key}` must be >= 1, got {n}")));
        }
    }

    let rescale: bool = typed(args, "rescale")?.unwrap_or(true);
    let image_size_out = match typed::<Vec<i64>>(args, "image_size_out")? {
        None => None,
        Some(v) => match v[..] {
            [h, w] if h > 0 && w > 0 => Some([h, w]),
            _ => {
                return Err(invalid(format!(
                    "`image_size_out` must be [height, width] with positive values, got {v:?}"
                )))
            }
        },
    };

    if !extras.is_empty() {
        let names: Vec<String> = extras.keys().map(|k| format!("`{k}`")).collect();
        return Err(invalid(format!(
            "argument(s) {} were passed but not used: the factory's own arguments are {}, and anything else \
             must start with `backbone_`, `decoder_` or `head_` (prefixed arguments are not read when the \
             matching `*_kwargs` dict is given)",
            names.join(", "),
            DECLARED.join(", ")
        )));
    }

    Ok(FactoryPlan {
        task,
        backbone,
        backbone_kwargs,
        necks,
        decoder,
        decoder_kwargs,
        head_kwargs,
        num_classes,
        num_outputs,
        rescale,
        image_size_out,
        padding,
    })
}

impl FactoryPlan {
    /// The number of outputs with the keyword it was given as (`num_outputs` wins).
    pub fn outputs(&self) -> Option<(&'static str, i64)> {
        match (self.num_outputs, self.num_classes) {
            (Some(n), _) => Some(("num_outputs", n)),
            (None, Some(n)) => Some(("num_classes", n)),
            (None, None) => None,
        }
    }
}

/// Whether a decoder entry makes its own prediction and so takes the class count:
/// TerraTorch passes `num_classes` to decoders from registries that include a head
/// (mmseg's decode heads, whose `num_classes` is required) and to the head otherwise.
/// The ABI describes entries, not registries, so a required `num_classes` parameter is
/// the sign; the built module's `includes_head` then decides whether a head is added.
pub fn decoder_takes_num_classes(info: &EntryInfo) -> bool {
    info.params.iter().any(|p| p.name.as_str() == "num_classes" && p.is_required())
}

/// Adds the class count to the decoder's arguments when it takes it; returns whether
/// it did.
pub fn route_to_decoder(plan: &FactoryPlan, takes_num_classes: bool, decoder_kwargs: &mut Map<String, Value>) -> bool {
    match plan.outputs() {
        Some((_, n)) if takes_num_classes => {
            decoder_kwargs.insert("num_classes".to_owned(), json!(n));
            true
        }
        _ => false,
    }
}

/// The head's keyword arguments once the decoder is built, or `None` when the decoder
/// includes its own head (then `head_*` arguments are an error, as upstream).
pub fn head_kwargs_after_decoder(
    plan: &FactoryPlan,
    decoder_label: &str,
    decoder_includes_head: bool,
    routed_to_decoder: bool,
) -> Result<Option<Map<String, Value>>> {
    if decoder_includes_head {
        if !plan.head_kwargs.is_empty() {
            let names: Vec<String> = plan.head_kwargs.keys().map(|k| format!("`head_{k}`")).collect();
            return Err(invalid(format!(
                "decoder `{decoder_label}` already includes a head, but head arguments {} were given; remove them",
                names.join(", ")
            )));
        }
        if let (Some((key, _)), false) = (plan.outputs(), routed_to_decoder) {
            return Err(invalid(format!(
                "decoder `{decoder_label}` includes its own head but declares no required `num_classes`, so `{key}` \
                 has nowhere to go; drop it and set the decoder's own output size with a `decoder_` argument"
            )));
        }
        return Ok(None);
    }
    let mut head_kwargs = plan.head_kwargs.clone();
    if let Some((key, n)) = plan.outputs() {
        head_kwargs.insert(key.to_owned(), json!(n));
    }
    Ok(Some(head_kwargs))
}

fn head_config<T: DeserializeOwned>(
    head: &str,
    in_key: &str,
    in_channels: i64,
    mut kwargs: Map<String, Value>,
) -> Result<T> {
    if kwargs.contains_key(in_key) {
        return Err(invalid(format!(
            "`head_{in_key}` cannot be given: the {head}'s input size is the decoder's out_channels ({in_channels})"
        )));
    }
    kwargs.insert(in_key.to_owned(), json!(in_channels));
    serde_json::from_value(Value::Object(kwargs))
        .map_err(|e| invalid(format!("{head} arguments (`head_*` or `head_kwargs`): {e}")))
}

/// The head the task model puts on a decoder with `in_channels` output channels.
pub enum TaskHead {
    /// For per-pixel tasks.
    Pixel(PixelHead),
    /// For per-image tasks.
    Scalar(ScalarHead),
}

/// Builds the task's head under `p` from its keyword arguments.
pub fn build_head(task: Task, p: nn::Path, in_channels: i64, kwargs: Map<String, Value>) -> Result<TaskHead> {
    match task {
        Task::Segmentation => {
            if !kwargs.contains_key("num_classes") {
                return Err(invalid("`num_classes` must be given for the segmentation task"));
            }
            let cfg: SegmentationHeadConfig = head_config("SegmentationHead", "in_channels", in_channels, kwargs)?;
            Ok(TaskHead::Pixel(PixelHead::Segmentation(SegmentationHead::new(p, &cfg)?)))
        }
        Task::Regression => {
            let cfg: RegressionHeadConfig = head_config("RegressionHead", "in_channels", in_channels, kwargs)?;
            Ok(TaskHead::Pixel(PixelHead::Regression(RegressionHead::new(p, &cfg)?)))
        }
        Task::Classification | Task::ScalarRegression => {
            if task == Task::Classification && !kwargs.contains_key("num_classes") {
                return Err(invalid("`num_classes` must be given for the classification task"));
            }
            let cfg: ScalarHeadConfig = head_config("ScalarHead", "in_dim", in_channels, kwargs)?;
            Ok(TaskHead::Scalar(ScalarHead::new(p, &cfg)?))
        }
    }
}

fn in_step<T>(what: impl std::fmt::Display, r: Result<T>) -> Result<T> {
    r.map_err(|e| e.context(format_args!("EncoderDecoderFactory: {what}")))
}

/// Builds the whole model: backbone, necks and decoder through the host, the head here.
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let plan = plan(ctx.args.map())?;

    let encoder = in_step(
        format_args!("building backbone `{}`", plan.backbone),
        ctx.build("backbone", &plan.backbone, &plan.backbone_kwargs, None),
    )?;
    let mut channels = encoder.out_channels();
    if channels.is_empty() {
        return Err(PluginError::build_failed(format!(
            "EncoderDecoderFactory: backbone `{}` reports no out_channels, so no decoder can be fitted to it",
            plan.backbone
        )));
    }

    let mut necks: Vec<DynModule> = Vec::new();
    for (i, spec) in plan.necks.iter().enumerate() {
        let neck = in_step(
            format_args!("building neck {i} `{}` for channels {channels:?}", spec.name),
            ctx.build("neck", &spec.name, &spec.args, Some(&channels)),
        )?;
        channels = neck.out_channels();
        necks.push(neck);
    }

    let info = in_step(
        format_args!("looking up decoder `{}`", plan.decoder),
        ctx.host.describe(RStr::from("decoder"), RStr::from(plan.decoder.as_str())).into_result(),
    )?;
    let mut decoder_kwargs = plan.decoder_kwargs.clone();
    let routed = route_to_decoder(&plan, decoder_takes_num_classes(&info), &mut decoder_kwargs);
    let decoder = in_step(
        format_args!("building decoder `{}` for channels {channels:?}", plan.decoder),
        ctx.build("decoder", &plan.decoder, &decoder_kwargs, Some(&channels)),
    )?;

    let vs = nn::VarStore::new(Device::Cpu);
    let head = match head_kwargs_after_decoder(&plan, &plan.decoder, decoder.includes_head(), routed)? {
        None => None,
        Some(kwargs) => {
            let in_channels = match decoder.out_channels()[..] {
                [c] => c,
                ref other => {
                    return Err(PluginError::build_failed(format!(
                        "EncoderDecoderFactory: decoder `{}` reports out_channels {other:?}; a head needs exactly one",
                        plan.decoder
                    )))
                }
            };
            Some(build_head(plan.task, vs.root() / "head", in_channels, kwargs)?)
        }
    };

    let trunk = Trunk::new(encoder, necks, decoder);
    let name = ctx.qualified();
    match head {
        Some(TaskHead::Scalar(h)) => {
            Ok(Built::new(name, vs, ScalarOutputModel::new(trunk, Some(h), plan.padding)).boxed())
        }
        Some(TaskHead::Pixel(h)) => Ok(Built::new(name, vs, pixel_model(&plan, trunk, Some(h))).boxed()),
        None if plan.task.is_pixel_wise() => Ok(Built::new(name, vs, pixel_model(&plan, trunk, None)).boxed()),
        None => Ok(Built::new(name, vs, ScalarOutputModel::new(trunk, None, plan.padding)).boxed()),
    }
}

fn pixel_model(plan: &FactoryPlan, trunk: Trunk, head: Option<PixelHead>) -> PixelWiseModel {
    let options =
        PixelWiseOptions { rescale: plan.rescale, image_size_out: plan.image_size_out, padding: plan.padding.clone() };
    PixelWiseModel::new(trunk, head, options)
}

/// The registry entry, with every keyword argument of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        "EncoderDecoderFactory",
        "Builds a task model from a backbone, optional necks, a decoder and a TerraTorch head \
         (segmentation, regression, classification, scalar_regression). Parts are looked up in the host's \
         registries, so they may come from any plugin. Further arguments go to the parts by prefix: \
         `backbone_*` (including `backbone_patch_size` and `backbone_padding`, which also set input padding), \
         `decoder_*` and `head_*`.",
        build,
    )
    .req("task", ParamType::STR, "segmentation, regression, classification or scalar_regression")
    .req("backbone", ParamType::STR, "backbone registry name (e.g. timm_resnet18)")
    .req("decoder", ParamType::STR, "decoder registry name (e.g. FCNDecoder, smp_Unet, mmseg_FCNHead)")
    .opt("backbone_kwargs", ParamType::DICT, Value::Null, "backbone arguments (instead of `backbone_*` ones)")
    .opt("decoder_kwargs", ParamType::DICT, Value::Null, "decoder arguments (instead of `decoder_*` ones)")
    .opt("head_kwargs", ParamType::DICT, Value::Null, "head arguments (instead of `head_*` ones)")
    .opt("num_classes", ParamType::INT, Value::Null, "number of classes (segmentation, classification)")
    .opt("num_outputs", ParamType::INT, Value::Null, "number of regressed variables (regression tasks)")
    .opt("necks", ParamType::DICT_LIST, Value::Null, "necks applied in order, each {\"name\": ..., args...}")
    .opt("aux_decoders", ParamType::DICT_LIST, Value::Null, "auxiliary decoders (not supported yet)")
    .opt("rescale", ParamType::BOOL, json!(true), "resize per-pixel outputs to the input size (bilinear)")
    .opt("image_size_out", ParamType::INT_LIST, Value::Null, "output [height, width] of per-pixel models")
    .opt("peft_config", ParamType::DICT, Value::Null, "PEFT configuration (not supported yet)")
    .accepts_extra()
}
