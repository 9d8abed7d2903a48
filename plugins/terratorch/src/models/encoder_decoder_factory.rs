//! TerraTorch's `EncoderDecoderFactory`: builds a backbone, necks and a decoder through
//! the host's registries (so each may come from another plugin), puts a TerraTorch
//! head on top and wraps everything in a task model.
//! Mirrors `terratorch/models/encoder_decoder_factory.py` (and `build_neck_list` of
//! `terratorch/models/necks.py`, `_get_backbone` of `terratorch/models/utils.py`).

use super::embedding_output_model::EmbeddingOutputModel;
use super::heads::{
    RegressionHead, RegressionHeadConfig, ScalarHead, ScalarHeadConfig, SegmentationHead,
    SegmentationHeadConfig,
};
use super::peft::{self, config::LoraSpec};
use super::pixel_wise_model::{PixelHead, PixelWiseModel, PixelWiseOptions};
use super::scalar_output_model::ScalarOutputModel;
use super::temporal_wrapper::{TemporalConfig, TemporalWrapper};
use super::trunk::Trunk;
use super::utils::{check_padding_mode, Padding, PatchSize};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tch::{nn, Device};
use terrahost_plugin_api::reexports::abi_stable::std_types::RStr;
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
/// ([`TemporalWrapper`]), never passing them to the backbone.
pub const TEMPORAL_KEYS: [&str; 6] = [
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
    /// The backbone's (and necks') features themselves ([`EmbeddingOutputModel`]).
    EmbeddingGeneration,
}

impl Task {
    /// Parses a task name, case-insensitively as upstream.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_lowercase().as_str() {
            "segmentation" => Ok(Self::Segmentation),
            "regression" => Ok(Self::Regression),
            "classification" => Ok(Self::Classification),
            "scalar_regression" => Ok(Self::ScalarRegression),
            "embedding_generation" => Ok(Self::EmbeddingGeneration),
            other => Err(PluginError::invalid_argument(format!(
                "EncoderDecoderFactory: task `{other}` is not supported; \
                 choose one of segmentation, regression, classification, scalar_regression, embedding_generation"
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
            Self::EmbeddingGeneration => "embedding_generation",
        }
    }

    /// Whether the task predicts per pixel.
    pub fn is_pixel_wise(self) -> bool {
        matches!(self, Self::Segmentation | Self::Regression)
    }
}

/// Splits `map` into the entries whose key starts with `prefix` (prefix removed) and the
/// rest, as upstream `extract_prefix_keys`.
pub fn extract_prefix_keys(
    map: &Map<String, Value>,
    prefix: &str,
) -> (Map<String, Value>, Map<String, Value>) {
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

/// TerraTorch's `_check_all_args_used` message: `arguments {'k': v} were passed but not
/// used.` with the leftover arguments as Python prints the dict (keys in sorted order).
pub fn unused_arguments_message(unused: &Map<String, Value>) -> String {
    format!(
        "arguments {} were passed but not used.",
        py_repr(&Value::Object(unused.clone()))
    )
}

/// Python's truth value of a JSON value (`None`, `False`, `0`, `""`, `[]`, `{}` are
/// false), for the `if kwarg:` tests of TerraTorch's factories.
pub fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A JSON value as Python's `repr` prints the same value (`None`, `True`, `'text'`).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_str(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's float repr: the shortest round-trip digits, `1.0` for whole numbers and
/// `1e-05` / `1e+16` outside 1e-4 <= |f| < 1e16.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// One neck to build: its registry name and keyword arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct NeckSpec {
    /// The neck registry name.
    pub name: String,
    /// The other keys of its dict.
    pub args: Map<String, Value>,
}

/// One auxiliary decoder (upstream `AuxiliaryHead`): its output is written as
/// `aux_{name}`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuxSpec {
    /// The name of the auxiliary head (and of its loss, upstream).
    pub name: String,
    /// The decoder registry name.
    pub decoder: String,
    /// `decoder_*` entries of its `decoder_args`, prefix removed.
    pub decoder_kwargs: Map<String, Value>,
    /// `head_*` entries of its `decoder_args`, prefix removed. Upstream builds every
    /// auxiliary head with the main head's arguments and never reads these.
    pub head_kwargs: Map<String, Value>,
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
    /// The decoder registry name (`None` only for embedding generation).
    pub decoder: Option<String>,
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
    /// `backbone_patch_size`; when absent the backbone's own `patch_size` is used.
    pub patch_size: Option<PatchSize>,
    /// `backbone_padding` (upstream default `reflect`; `null` disables padding).
    pub padding_mode: Option<String>,
    /// Auxiliary decoders, in order.
    pub aux_decoders: Vec<AuxSpec>,
    /// `backbone_use_temporal=True`: the backbone is wrapped in a [`TemporalWrapper`].
    pub temporal: Option<TemporalConfig>,
    /// `peft_config`: the backbone is wrapped in PEFT's LoRA model ([`peft`]).
    pub peft: Option<LoraSpec>,
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
            serde_json::from_value(v.clone()).map_err(|e| {
                invalid(format!(
                    "argument `{key}` has the wrong type ({e}); got {}",
                    describe_json(v)
                ))
            })
        })
        .transpose()
}

fn dict_or_empty(args: &Map<String, Value>, key: &str) -> Result<Map<String, Value>> {
    Ok(typed::<Map<String, Value>>(args, key)?.unwrap_or_default())
}

/// Takes TerraTorch's temporal-wrapper options (`_get_backbone` pops them) out of a
/// backbone's keyword arguments: the wrapper's settings when `use_temporal` is true, and
/// none of the keys left for the backbone either way. `invalid` names the factory in errors.
pub fn take_temporal_config(
    backbone_kwargs: &mut Map<String, Value>,
    invalid: impl Fn(String) -> PluginError,
) -> Result<Option<TemporalConfig>> {
    let use_temporal = match backbone_kwargs.get("use_temporal") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "`backbone_use_temporal` must be true or false, got {}",
                describe_json(other)
            )))
        }
    };
    let temporal = if use_temporal {
        Some(
            TemporalConfig::from_kwargs(backbone_kwargs)
                .map_err(|e| invalid(e.message().to_owned()))?,
        )
    } else {
        None
    };
    for key in TEMPORAL_KEYS {
        backbone_kwargs.remove(key);
    }
    Ok(temporal)
}

/// A factory's `necks` argument (`null` or a list of dicts, each with a string `name` and
/// the neck's own arguments), as `build_neck_list` reads it. `invalid` names the factory
/// in errors.
pub fn neck_specs(
    necks: Option<&Value>,
    invalid: impl Fn(String) -> PluginError,
) -> Result<Vec<NeckSpec>> {
    let items = match necks {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "`necks` must be a list of dicts, got {}",
                describe_json(other)
            )))
        }
    };
    let mut specs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let neck = item.as_object().ok_or_else(|| {
            invalid(format!(
                "`necks[{i}]` must be a dict with a `name`, got {}",
                describe_json(item)
            ))
        })?;
        let name = match neck.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "`necks[{i}].name` must be a string, got {}",
                    describe_json(other)
                )))
            }
            None => {
                return Err(invalid(format!(
                    "`necks[{i}]` needs a `name` key naming the neck"
                )))
            }
        };
        let args = neck
            .iter()
            .filter(|(k, _)| k.as_str() != "name")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        specs.push(NeckSpec { name, args });
    }
    Ok(specs)
}

/// Reads the validated build arguments (declared ones plus prefixed extras) into a
/// plan, splitting the extras by prefix exactly as upstream does: an explicit
/// `backbone_kwargs`/`decoder_kwargs`/`head_kwargs` dict that is non-empty wins, and
/// then the prefixed extras of that group are left over, which is an error like any
/// other leftover argument.
pub fn plan(args: &Map<String, Value>) -> Result<FactoryPlan> {
    let task_name: String =
        typed(args, "task")?.ok_or_else(|| invalid("argument `task` is required"))?;
    let task = Task::parse(&task_name)?;
    let backbone: String =
        typed(args, "backbone")?.ok_or_else(|| invalid("argument `backbone` is required"))?;
    let decoder: Option<String> = typed(args, "decoder")?;
    match (&decoder, task) {
        (None, t) if t != Task::EmbeddingGeneration => {
            return Err(invalid(format!("a decoder must be provided for task `{}`", t.name())))
        }
        (Some(d), Task::EmbeddingGeneration) => {
            return Err(invalid(format!(
                "task `embedding_generation` outputs the backbone's features and uses no decoder; remove `decoder` \
                 (`{d}`) and its arguments"
            )))
        }
        _ => {}
    }

    let mut extras: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !DECLARED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut backbone_kwargs = dict_or_empty(args, "backbone_kwargs")?;
    if backbone_kwargs.is_empty() {
        (backbone_kwargs, extras) = extract_prefix_keys(&extras, "backbone_");
    }
    let temporal = take_temporal_config(&mut backbone_kwargs, invalid)?;

    // Like upstream, the patch size and padding mode are read from the backbone's
    // arguments (and still passed on to the backbone).
    let padding_mode = match backbone_kwargs.get("padding") {
        None => Some("reflect".to_owned()),
        Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_padding_mode(s)
                .map_err(|e| invalid(format!("`backbone_padding`: {}", e.message())))?;
            Some(s.clone())
        }
        Some(other) => {
            return Err(invalid(format!(
                "`backbone_padding` must be a string, got {}",
                describe_json(other)
            )))
        }
    };
    let patch_size = match backbone_kwargs.get("patch_size") {
        Some(v) => PatchSize::from_json(v)
            .map_err(|e| invalid(format!("`backbone_patch_size`: {}", e.message())))?,
        None => None,
    };

    let peft = non_null(args, "peft_config")
        .map(peft::config::parse)
        .transpose()
        .map_err(|e| invalid(e.message()))?;
    let aux_decoders = match non_null(args, "aux_decoders") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| aux_spec(i, v))
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(invalid(format!(
                "`aux_decoders` must be a list of auxiliary heads, got {}",
                describe_json(other)
            )))
        }
    };
    if task == Task::EmbeddingGeneration && !aux_decoders.is_empty() {
        return Err(invalid(
            "task `embedding_generation` takes no `aux_decoders`",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for aux in &aux_decoders {
        if !seen.insert(aux.name.as_str()) {
            return Err(invalid(format!(
                "two auxiliary decoders are named `{}`; names must be unique",
                aux.name
            )));
        }
    }

    let necks = neck_specs(args.get("necks"), invalid)?;

    if task == Task::EmbeddingGeneration {
        // Upstream's embedding path never reads `decoder_*`/`head_*` nor checks what is
        // left over: it drops every such argument without a word. terrahost names them.
        let mut dropped: Vec<String> = extras.keys().cloned().collect();
        dropped.extend(
            ["decoder_kwargs", "head_kwargs"]
                .into_iter()
                .filter(|k| non_null(args, k).is_some())
                .map(str::to_owned),
        );
        for key in dropped {
            terrahost_plugin_api::warn!(
                "EncoderDecoderFactory ignores argument `{key}` for task `embedding_generation` (TerraTorch \
                 accepts it and does not use it)"
            );
        }
        extras.clear();
    }
    let mut decoder_kwargs = dict_or_empty(args, "decoder_kwargs")?;
    if task == Task::EmbeddingGeneration {
        decoder_kwargs.clear();
    }
    if decoder_kwargs.is_empty() {
        (decoder_kwargs, extras) = extract_prefix_keys(&extras, "decoder_");
    }
    let mut head_kwargs = dict_or_empty(args, "head_kwargs")?;
    if task == Task::EmbeddingGeneration {
        head_kwargs.clear();
    }
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
        return Err(invalid(format!(
            "{} (the factory's own arguments are {}; anything else must start with `backbone_`, `decoder_` or \
             `head_`, and prefixed arguments are not read when the matching `*_kwargs` dict is given)",
            unused_arguments_message(&extras),
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
        patch_size,
        padding_mode,
        aux_decoders,
        temporal,
        peft,
    })
}

/// Reads one `aux_decoders` item: `{name, decoder, decoder_args}` as upstream's
/// `AuxiliaryHead` takes them, or the LightningCLI form
/// `{class_path: ...AuxiliaryHead, init_args: {...}}`.
fn aux_spec(i: usize, v: &Value) -> Result<AuxSpec> {
    let item = v.as_object().ok_or_else(|| {
        invalid(format!(
            "`aux_decoders[{i}]` must be a dict with name, decoder and decoder_args"
        ))
    })?;
    let fields = match (item.get("class_path"), item.get("init_args")) {
        (Some(Value::String(cp)), init) => {
            if cp.rsplit('.').next() != Some("AuxiliaryHead") {
                return Err(invalid(format!(
                    "`aux_decoders[{i}].class_path` is `{cp}`; only terratorch.models.model.AuxiliaryHead is known"
                )));
            }
            init.and_then(Value::as_object)
                .ok_or_else(|| invalid(format!("`aux_decoders[{i}].init_args` must be a dict")))?
        }
        _ => item,
    };
    for key in fields.keys() {
        if !["name", "decoder", "decoder_args"].contains(&key.as_str()) {
            return Err(invalid(format!(
                "`aux_decoders[{i}]` has an unknown key `{key}`; an auxiliary head takes name, decoder and decoder_args"
            )));
        }
    }
    let text = |key: &str| -> Result<String> {
        match fields.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(invalid(format!(
                "`aux_decoders[{i}].{key}` must be a string, got {}",
                describe_json(other)
            ))),
            None => Err(invalid(format!("`aux_decoders[{i}]` needs `{key}`"))),
        }
    };
    let name = text("name")?;
    let decoder = text("decoder")?;
    let decoder_args = dict_or_empty(fields, "decoder_args")?;
    let (decoder_kwargs, rest) = extract_prefix_keys(&decoder_args, "decoder_");
    let (head_kwargs, rest) = extract_prefix_keys(&rest, "head_");
    if !rest.is_empty() {
        return Err(invalid(format!(
            "`aux_decoders[{i}]` (`{name}`): {} (decoder_args must start with `decoder_` or `head_`)",
            unused_arguments_message(&rest)
        )));
    }
    Ok(AuxSpec {
        name,
        decoder,
        decoder_kwargs,
        head_kwargs,
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

/// Whether a decoder entry makes its own prediction and so takes the class count.
/// TerraTorch decides this by the decoder's registry (`includes_head` is true for
/// mmseg's decode heads, false for terratorch's and smp's decoders); terrahost's
/// sources declare the same per entry ([`EntryInfo::includes_head`]). The decoder then
/// gets `num_classes` and no head is added; otherwise the head gets it.
pub fn decoder_takes_num_classes(info: &EntryInfo) -> bool {
    info.includes_head
}

/// Adds the class count to the decoder's arguments when it takes it; returns whether
/// it did.
pub fn route_to_decoder(
    plan: &FactoryPlan,
    takes_num_classes: bool,
    decoder_kwargs: &mut Map<String, Value>,
) -> bool {
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
    head_kwargs: &Map<String, Value>,
    decoder_label: &str,
    decoder_includes_head: bool,
    routed_to_decoder: bool,
) -> Result<Option<Map<String, Value>>> {
    if decoder_includes_head {
        if !head_kwargs.is_empty() {
            let names: Vec<String> = head_kwargs.keys().map(|k| format!("`head_{k}`")).collect();
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
    let mut head_kwargs = head_kwargs.clone();
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
pub fn build_head(
    task: Task,
    p: nn::Path,
    in_channels: i64,
    kwargs: Map<String, Value>,
) -> Result<TaskHead> {
    match task {
        Task::Segmentation => {
            if !kwargs.contains_key("num_classes") {
                return Err(invalid(
                    "`num_classes` must be given for the segmentation task",
                ));
            }
            let cfg: SegmentationHeadConfig =
                head_config("SegmentationHead", "in_channels", in_channels, kwargs)?;
            Ok(TaskHead::Pixel(PixelHead::Segmentation(
                SegmentationHead::new(p, &cfg)?,
            )))
        }
        Task::Regression => {
            let cfg: RegressionHeadConfig =
                head_config("RegressionHead", "in_channels", in_channels, kwargs)?;
            Ok(TaskHead::Pixel(PixelHead::Regression(RegressionHead::new(
                p, &cfg,
            )?)))
        }
        Task::EmbeddingGeneration => Err(invalid("task `embedding_generation` has no head")),
        Task::Classification | Task::ScalarRegression => {
            if task == Task::Classification && !kwargs.contains_key("num_classes") {
                return Err(invalid(
                    "`num_classes` must be given for the classification task",
                ));
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
    build_with(ctx, ctx.args.map())
}

/// [`build`] from `args` instead of the entry's own (the factories that translate
/// their arguments and then delegate here, as TerraTorch's `PrithviModelFactory` does).
pub fn build_with(ctx: &BuildCtx<'_, '_>, args: &Map<String, Value>) -> Result<ModuleBox> {
    let plan = plan(args)?;

    let mut encoder = in_step(
        format_args!("building backbone `{}`", plan.backbone),
        ctx.build("backbone", &plan.backbone, &plan.backbone_kwargs, None),
    )?;
    if let Some(cfg) = &plan.temporal {
        let label = format!("TemporalWrapper({})", encoder.label());
        let wrapper = TemporalWrapper::new(encoder, cfg.clone())
            .map_err(|e| e.context(format_args!("EncoderDecoderFactory")))?;
        let module = Built::new(label.clone(), nn::VarStore::new(Device::Cpu), wrapper).boxed();
        encoder = DynModule::new(label, module);
    }
    // As upstream: PEFT wraps the backbone after the temporal wrapper.
    if let Some(spec) = &plan.peft {
        encoder = peft::wrap_spec(encoder, spec)
            .map_err(|e| e.context(format_args!("EncoderDecoderFactory: peft_config")))?;
    }
    build_around(ctx, &plan, encoder)
}

/// The rest of [`build_with`] once the backbone is built: necks, decoder, heads and the task
/// model around `encoder` (the factories that make their backbone themselves, as TerraTorch's
/// `Clay1_5ModelFactory` does, then hand it to the same task models).
pub fn build_around(
    ctx: &BuildCtx<'_, '_>,
    plan: &FactoryPlan,
    encoder: DynModule,
) -> Result<ModuleBox> {
    let plan = plan.clone();
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
            format_args!(
                "building neck {i} `{}` for channels {channels:?}",
                spec.name
            ),
            ctx.build("neck", &spec.name, &spec.args, Some(&channels)),
        )?;
        channels = neck.out_channels();
        necks.push(neck);
    }

    let padding = padding(&plan, &encoder)?;
    let Some(decoder_name) = plan.decoder.as_deref() else {
        // embedding_generation: the features are the output.
        let model = EmbeddingOutputModel::new(encoder, necks, padding);
        return Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed());
    };

    let (decoder, head_kwargs) = build_decoder(
        ctx,
        &plan,
        decoder_name,
        &plan.decoder_kwargs,
        &plan.head_kwargs,
        &channels,
    )?;
    let mut aux = Vec::new();
    for spec in &plan.aux_decoders {
        let what = format!("auxiliary decoder `{}` ({})", spec.name, spec.decoder);
        let (aux_decoder, aux_head_kwargs) = build_decoder(
            ctx,
            &plan,
            &spec.decoder,
            &spec.decoder_kwargs,
            &spec.head_kwargs,
            &channels,
        )
        .map_err(|e| e.context(format_args!("EncoderDecoderFactory: {what}")))?;
        if !spec.head_kwargs.is_empty() {
            terrahost_plugin_api::warn!(
                "auxiliary head `{}`: TerraTorch builds auxiliary heads with the main head's arguments; its `head_*` \
                 arguments are not used",
                spec.name
            );
        }
        // Upstream gives every auxiliary head the main head's arguments.
        let aux_head_kwargs = aux_head_kwargs.map(|_| head_kwargs.clone().unwrap_or_default());
        aux.push((spec.name.clone(), aux_decoder, aux_head_kwargs));
    }

    let vs = nn::VarStore::new(Device::Cpu);
    let head = head_kwargs
        .map(|kw| {
            build_head(
                plan.task,
                vs.root() / "head",
                head_in_channels(&decoder)?,
                kw,
            )
        })
        .transpose()?;
    let mut aux_heads = Vec::new();
    let mut aux_decoders = Vec::new();
    for (name, aux_decoder, kwargs) in aux {
        let p = vs.root() / "aux_heads" / name.as_str() / 1;
        aux_heads.push(
            kwargs
                .map(|kw| build_head(plan.task, p, head_in_channels(&aux_decoder)?, kw))
                .transpose()?,
        );
        aux_decoders.push((name, aux_decoder));
    }

    let trunk = Trunk::new(encoder, necks, decoder, aux_decoders);
    let name = ctx.qualified();
    if plan.task.is_pixel_wise() {
        let pixel = |h: Option<TaskHead>| match h {
            Some(TaskHead::Pixel(h)) => Some(h),
            _ => None,
        };
        let options = PixelWiseOptions {
            rescale: plan.rescale,
            image_size_out: plan.image_size_out,
            padding,
        };
        let model = PixelWiseModel::new(
            trunk,
            pixel(head),
            aux_heads.into_iter().map(pixel).collect(),
            options,
        );
        Ok(Built::new(name, vs, model).boxed())
    } else {
        let scalar = |h: Option<TaskHead>| match h {
            Some(TaskHead::Scalar(h)) => Some(h),
            _ => None,
        };
        let model = ScalarOutputModel::new(
            trunk,
            scalar(head),
            aux_heads.into_iter().map(scalar).collect(),
            padding,
        );
        Ok(Built::new(name, vs, model).boxed())
    }
}

/// The input padding: `backbone_patch_size`, else the backbone's own `patch_size` (as
/// upstream takes it from the first submodule that has one), with `backbone_padding`.
fn padding(plan: &FactoryPlan, encoder: &DynModule) -> Result<Option<Padding>> {
    let patch = match plan.patch_size {
        Some(p) => Some(p),
        None => match encoder.meta().get("patch_size") {
            Some(v) => PatchSize::from_json(v).map_err(|e| {
                invalid(format!(
                    "backbone `{}` reports a bad patch_size: {}",
                    plan.backbone,
                    e.message()
                ))
            })?,
            None => None,
        },
    };
    Ok(match (patch, &plan.padding_mode) {
        (Some(patch), Some(mode)) => Some(Padding {
            patch,
            mode: mode.clone(),
        }),
        _ => None,
    })
}

/// Builds a decoder for `channels`, routing the class count as upstream's
/// `_get_decoder_and_head_kwargs` does; returns it with its head's arguments (`None`
/// when it includes its own head).
fn build_decoder(
    ctx: &BuildCtx<'_, '_>,
    plan: &FactoryPlan,
    name: &str,
    decoder_kwargs: &Map<String, Value>,
    head_kwargs: &Map<String, Value>,
    channels: &[i64],
) -> Result<(DynModule, Option<Map<String, Value>>)> {
    let info = in_step(
        format_args!("looking up decoder `{name}`"),
        ctx.host
            .describe(RStr::from("decoder"), RStr::from(name))
            .into_result(),
    )?;
    let mut decoder_kwargs = decoder_kwargs.clone();
    let routed = route_to_decoder(plan, decoder_takes_num_classes(&info), &mut decoder_kwargs);
    let decoder = in_step(
        format_args!("building decoder `{name}` for channels {channels:?}"),
        ctx.build("decoder", name, &decoder_kwargs, Some(channels)),
    )?;
    let head_kwargs =
        head_kwargs_after_decoder(plan, head_kwargs, name, info.includes_head, routed)?;
    Ok((decoder, head_kwargs))
}

/// A head's input size: the decoder's one output channel count.
fn head_in_channels(decoder: &DynModule) -> Result<i64> {
    match decoder.out_channels()[..] {
        [c] => Ok(c),
        ref other => Err(PluginError::build_failed(format!(
            "EncoderDecoderFactory: decoder `{}` reports out_channels {other:?}; a head needs exactly one",
            decoder.label()
        ))),
    }
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
    .req("task", ParamType::STR, "segmentation, regression, classification, scalar_regression or embedding_generation")
    .req("backbone", ParamType::STR, "backbone registry name (e.g. timm_resnet18)")
    .opt(
        "decoder",
        ParamType::STR,
        Value::Null,
        "decoder registry name (e.g. FCNDecoder, smp_Unet, mmseg_FCNHead); required except for embedding_generation",
    )
    .opt("backbone_kwargs", ParamType::DICT, Value::Null, "backbone arguments (instead of `backbone_*` ones)")
    .opt("decoder_kwargs", ParamType::DICT, Value::Null, "decoder arguments (instead of `decoder_*` ones)")
    .opt("head_kwargs", ParamType::DICT, Value::Null, "head arguments (instead of `head_*` ones)")
    .opt("num_classes", ParamType::INT, Value::Null, "number of classes (segmentation, classification)")
    .opt("num_outputs", ParamType::INT, Value::Null, "number of regressed variables (regression tasks)")
    .opt("necks", ParamType::DICT_LIST, Value::Null, "necks applied in order, each {\"name\": ..., args...}")
    .opt(
        "aux_decoders",
        ParamType::DICT_LIST,
        Value::Null,
        "auxiliary heads, each {name, decoder, decoder_args} (decoder_*/head_* keys); output `aux_<name>`",
    )
    .opt("rescale", ParamType::BOOL, json!(true), "resize per-pixel outputs to the input size (bilinear)")
    .opt("image_size_out", ParamType::INT_LIST, Value::Null, "output [height, width] of per-pixel models")
    .opt(
        "peft_config",
        ParamType::DICT,
        Value::Null,
        "PEFT LoRA on the backbone: {method: LORA, replace_qkv, peft_config_kwargs: {target_modules, r, lora_alpha, \
         lora_dropout, bias, modules_to_save, use_rslora}, merge (terrahost: false keeps the adapters unmerged)}",
    )
    .accepts_extra()
}
