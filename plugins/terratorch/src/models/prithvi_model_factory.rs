//! TerraTorch's deprecated `PrithviModelFactory`: translates its arguments (`bands`,
//! `in_channels`, `pretrained`, `num_frames`) into `backbone_*` ones and builds through
//! the [`EncoderDecoderFactory`](super::encoder_decoder_factory) without necks.
//! Mirrors `terratorch/models/prithvi_model_factory.py`.

use super::encoder_decoder_factory::{self, py_truthy};
use serde_json::{json, Map, Value};
use terrahost_plugin_api::{
    params::describe_json,
    sdk::{BuildCtx, Entry},
    ModuleBox, ParamType, PluginError, Result,
};

/// The entry name.
pub const NAME: &str = "PrithviModelFactory";

/// The keyword arguments `build_model` declares itself; anything else is passed on to
/// the `EncoderDecoderFactory` as it is.
pub const DECLARED: [&str; 11] = [
    "task",
    "backbone",
    "decoder",
    "bands",
    "in_channels",
    "num_classes",
    "pretrained",
    "num_frames",
    "prepare_features_for_image_model",
    "aux_decoders",
    "rescale",
];

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("{NAME}: {}", msg.into()))
}

/// The `EncoderDecoderFactory` arguments TerraTorch's `PrithviModelFactory.build_model`
/// calls it with: `backbone_bands`, `backbone_in_chans` (`in_channels`, else
/// `len(bands)`), `backbone_pretrained` and `backbone_num_frames` overwrite whatever
/// was given under those names; `necks` is always `None`; every other argument is
/// passed on unchanged. `args` are the validated arguments (defaults filled in).
pub fn translate(args: &Map<String, Value>) -> Result<Map<String, Value>> {
    let get = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
    let backbone = match args.get("backbone") {
        Some(Value::String(s)) => s.clone(),
        other => {
            return Err(invalid(format!(
                "`backbone` must be a backbone name, got {}",
                other.map_or("nothing".to_owned(), describe_json)
            )))
        }
    };
    if args
        .get("prepare_features_for_image_model")
        .is_some_and(py_truthy)
    {
        return Err(invalid(
            "This functionality is no longer supported. Please migrate to EncoderDecoderFactory and use necks. \
             (`prepare_features_for_image_model` must be left unset)",
        ));
    }
    if !backbone.starts_with("prithvi_") {
        return Err(invalid(format!(
            "This class only handles models for `prithvi` encoders (got backbone `{backbone}`; use \
             EncoderDecoderFactory for other backbones)"
        )));
    }
    // `necks=None` is passed explicitly, so a `necks` keyword collides with it.
    if args.contains_key("necks") {
        return Err(invalid(
            "EncoderDecoderFactory.build_model() got multiple values for keyword argument 'necks' \
             (PrithviModelFactory builds without necks; use EncoderDecoderFactory to give necks)",
        ));
    }
    let bands = get("bands");
    let n_bands = match &bands {
        Value::Array(a) => a.len(),
        other => {
            return Err(invalid(format!(
                "`bands` must be a list of bands, got {}",
                describe_json(other)
            )))
        }
    };
    let in_channels = match get("in_channels") {
        Value::Null => json!(n_bands),
        v => v,
    };

    let mut out: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !DECLARED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert("backbone_bands".into(), bands);
    out.insert("backbone_in_chans".into(), in_channels);
    out.insert("backbone_pretrained".into(), get("pretrained"));
    out.insert("backbone_num_frames".into(), get("num_frames"));
    out.insert("task".into(), get("task"));
    out.insert("backbone".into(), Value::String(backbone));
    out.insert("decoder".into(), get("decoder"));
    out.insert("num_classes".into(), get("num_classes"));
    out.insert("aux_decoders".into(), get("aux_decoders"));
    out.insert("rescale".into(), get("rescale"));
    Ok(out)
}

/// Translates, warns as TerraTorch does, and builds through the `EncoderDecoderFactory`.
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let args = translate(ctx.args.map())?;
    terrahost_plugin_api::warn!(
        "PrithviModelFactory is deprecated. Please switch to EncoderDecoderFactory."
    );
    encoder_decoder_factory::build_with(ctx, &args).map_err(|e| {
        e.context(format_args!(
            "{NAME} (building through EncoderDecoderFactory)"
        ))
    })
}

/// The registry entry, with every keyword argument of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        NAME,
        "TerraTorch's deprecated factory for Prithvi encoders: sets backbone_bands = bands, backbone_in_chans = \
         in_channels (default len(bands)), backbone_pretrained = pretrained and backbone_num_frames = num_frames, \
         then builds through EncoderDecoderFactory without necks (the backbone's own \
         prepare_features_for_image_model turns its tokens into maps). The backbone name must start with \
         `prithvi_`. Further `backbone_*`, `decoder_*` and `head_*` arguments (and num_outputs, image_size_out, \
         *_kwargs) go to EncoderDecoderFactory.",
        build,
    )
    .req("task", ParamType::STR, "segmentation, regression, classification or scalar_regression")
    .req("backbone", ParamType::STR, "a `prithvi_*` backbone (prithvi_eo_v1_100, prithvi_eo_v2_300, prithvi_swin_B, ...)")
    .opt(
        "decoder",
        ParamType::STR,
        Value::Null,
        "decoder registry name (e.g. UperNetDecoder, FCNDecoder); upstream takes it positionally, null only for \
         embedding_generation",
    )
    .req("bands", ParamType::ANY, "the input's bands (HLS band names or indices): backbone_bands")
    .opt("in_channels", ParamType::INT, Value::Null, "input channels: backbone_in_chans (default len(bands))")
    .opt("num_classes", ParamType::INT, Value::Null, "number of classes (segmentation, classification)")
    .opt("pretrained", ParamType::BOOL, json!(true), "backbone_pretrained (upstream default true: needs backbone_ckpt_path here)")
    .opt("num_frames", ParamType::INT, json!(1), "backbone_num_frames")
    .opt(
        "prepare_features_for_image_model",
        ParamType::ANY,
        Value::Null,
        "no longer supported upstream (an error if set): use EncoderDecoderFactory with necks",
    )
    .opt(
        "aux_decoders",
        ParamType::DICT_LIST,
        Value::Null,
        "auxiliary heads, each {name, decoder, decoder_args}, as in EncoderDecoderFactory",
    )
    .opt("rescale", ParamType::BOOL, json!(true), "resize per-pixel outputs to the input size (bilinear)")
    .accepts_extra()
}
