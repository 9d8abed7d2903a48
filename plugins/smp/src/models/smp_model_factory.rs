//! TerraTorch's `SMPModelFactory` and `SMPModelWrapper`, from TerraTorch 1.2.11:
//! `terratorch/models/smp_model_factory.py`.
//!
//! `build_model(task, backbone, model, bands, in_channels=None, num_classes=1,
//! pretrained=True, prepare_features_for_image_model=None, regression_relu=False, **kwargs)`:
//! only `task="segmentation"`; `in_channels` defaults to `len(bands)`; `model` names an
//! smp model class and `backbone` an smp encoder. Of `**kwargs`, the `smp_*` keys (prefix
//! removed) go to the smp model and override the factory's own `encoder_name`,
//! `encoder_weights`, `in_channels` and `classes`; `backbone_*` keys are only read for
//! custom (non-smp) encoders; `aux_*` keys are split off and never used; every other key
//! (`decoder_*`, `head_*`, `rescale`, `padding`, `aux_decoders`, ...) is swallowed. terrahost
//! accepts all of those and names each one it drops: `rescale`, `padding` and `aux_decoders`
//! are declared ignored (the host warns), the others are listed in the model's
//! `meta.ignored_args` (and logged). The smp model itself swallows the keys it does not read
//! (`get_encoder(**kwargs)` ignores them for smp's encoders); those are named as well.
//!
//! The model is `SMPModelWrapper(smp_model)`: its keys are `smp_model.encoder.*`,
//! `smp_model.decoder.*`, `smp_model.segmentation_head.*` (and
//! `smp_model.classification_head.*` with `smp_aux_params`); forward returns the mask
//! only (smp's classification labels are dropped), resized bilinearly to the input size
//! when it differs (`rescale=True` always: the factory never passes `rescale`).
use super::resnet_encoder::{self, Config as EncoderConfig};
use super::segmentation_model::{self, SegmentationModel};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The encoders smp 0.6.0 registers besides the ResNets (`smp.encoders.encoders`); the
/// smp plugin has not ported them.
const OTHER_SMP_ENCODERS: [&str; 65] = [
    "dpn68",
    "dpn68b",
    "dpn92",
    "dpn98",
    "dpn107",
    "dpn131",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "senet154",
    "se_resnet50",
    "se_resnet101",
    "se_resnet152",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
    "inceptionresnetv2",
    "inceptionv4",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
    "efficientnet-b4",
    "efficientnet-b5",
    "efficientnet-b6",
    "efficientnet-b7",
    "mobilenet_v2",
    "xception",
    "timm-efficientnet-b0",
    "timm-efficientnet-b1",
    "timm-efficientnet-b2",
    "timm-efficientnet-b3",
    "timm-efficientnet-b4",
    "timm-efficientnet-b5",
    "timm-efficientnet-b6",
    "timm-efficientnet-b7",
    "timm-efficientnet-b8",
    "timm-efficientnet-l2",
    "timm-tf_efficientnet_lite0",
    "timm-tf_efficientnet_lite1",
    "timm-tf_efficientnet_lite2",
    "timm-tf_efficientnet_lite3",
    "timm-tf_efficientnet_lite4",
    "timm-skresnet18",
    "timm-skresnet34",
    "timm-skresnext50_32x4d",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "mobileone_s0",
    "mobileone_s1",
    "mobileone_s2",
    "mobileone_s3",
    "mobileone_s4",
];

/// The factory's own keyword parameters (everything else is `**kwargs`).
const DECLARED: [&str; 9] = [
    "task",
    "backbone",
    "model",
    "bands",
    "in_channels",
    "num_classes",
    "pretrained",
    "prepare_features_for_image_model",
    "regression_relu",
];

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(msg.into())
}

/// TerraTorch's `extract_prefix_keys`: the keys starting with `prefix` (prefix removed)
/// and the rest, both in the given order.
fn extract_prefix_keys(
    d: &Map<String, Value>,
    prefix: &str,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut extracted = Map::new();
    let mut remaining = Map::new();
    for (k, v) in d {
        match k.strip_prefix(prefix) {
            Some(rest) => {
                extracted.insert(rest.to_owned(), v.clone());
            }
            None => {
                remaining.insert(k.clone(), v.clone());
            }
        }
    }
    (extracted, remaining)
}

/// What the factory decided from its arguments, before any layer is made.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The smp model class.
    pub model: String,
    /// The smp model's keyword arguments, as TerraTorch passes them.
    pub model_args: Map<String, Value>,
    /// Given arguments that nothing reads, each with the reason.
    pub ignored: Vec<(String, String)>,
}

/// The factory's argument handling, as `SMPModelFactory.build_model` does it.
pub fn plan(args: &Map<String, Value>) -> Result<Plan> {
    let get = |k: &str| args.get(k).filter(|v| !v.is_null());
    let task = get("task").and_then(Value::as_str).unwrap_or_default();
    if task != "segmentation" {
        return Err(invalid(format!(
            "SMP models can only perform segmentation, but got task {task}"
        )));
    }
    let bands = match get("bands") {
        Some(Value::Array(b)) => b.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "`bands` must be a list of band names (HLSBands) or ints, got {other}"
            )))
        }
        None => {
            return Err(invalid(
                "SMPModelFactory.build_model() missing 1 required positional argument: 'bands'",
            ))
        }
    };
    let in_channels = match get("in_channels") {
        None => json!(bands.len()),
        Some(v) if v.as_i64().is_some() => v.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "`in_channels` must be an int, got {other}"
            )))
        }
    };
    let model = get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let backbone = get("backbone")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !segmentation_model::SMP_MODELS.contains(&model.as_str()) {
        // Checked again (with the encoder) when the model is made; this is upstream's order.
        segmentation_model::arch_named(&model, &backbone)?;
    }

    let mut ignored: Vec<(String, String)> = Vec::new();
    let extra: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !DECLARED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (backbone_kwargs, rest) = extract_prefix_keys(&extra, "backbone_");
    let (smp_kwargs, rest) = extract_prefix_keys(&rest, "smp_");
    let (aux_kwargs, rest) = extract_prefix_keys(&rest, "aux_");
    for k in aux_kwargs.keys() {
        ignored.push((
            format!("aux_{k}"),
            "SMPModelFactory splits off `aux_*` arguments and never passes them to the model; give the smp \
             model's `aux_params` as `smp_aux_params` instead"
                .into(),
        ));
    }
    for k in rest.keys() {
        ignored.push((
            k.clone(),
            "SMPModelFactory takes it through **kwargs and never reads it (only `smp_*` arguments reach the \
             smp model)"
                .into(),
        ));
    }
    if get("prepare_features_for_image_model").is_some() {
        ignored.push((
            "prepare_features_for_image_model".into(),
            "only custom (non-smp) encoders use it".into(),
        ));
    }
    if get("regression_relu") == Some(&Value::Bool(true)) {
        ignored.push((
            "regression_relu".into(),
            "it only applies to regression, which SMPModelFactory refuses".into(),
        ));
    }

    let weights: Option<String> = match args.get("pretrained").unwrap_or(&Value::Bool(true)) {
        Value::Bool(true) => Some("imagenet".into()),
        Value::Bool(false) | Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => {
            return Err(invalid(format!(
                "`pretrained` must be a bool or the name of smp's pretrained weights, got {other}"
            )))
        }
    };

    let is_resnet = resnet_encoder::NAMES.contains(&backbone.as_str());
    if !is_resnet {
        if OTHER_SMP_ENCODERS.contains(&backbone.as_str()) {
            return Err(invalid(format!(
                "smp encoder `{backbone}` is not ported to terrahost yet; the smp plugin has smp's ResNet \
                 encoders: {}",
                resnet_encoder::NAMES.join(", ")
            )));
        }
        if let Some(timm_name) = backbone.strip_prefix("tu-") {
            return Err(invalid(format!(
                "`{backbone}` is a timm universal encoder (timm model `{timm_name}` through smp's \
                 TimmUniversalEncoder), which the smp plugin does not have; use one of smp's ResNet encoders \
                 ({}) or EncoderDecoderFactory with backbone `timm_{timm_name}`",
                resnet_encoder::NAMES.join(", ")
            )));
        }
        for (param, dict) in [
            ("encoder_depth", &smp_kwargs),
            ("out_channels", &backbone_kwargs),
            ("output_stride", &backbone_kwargs),
        ] {
            if !dict.contains_key(param) {
                return Err(invalid(format!(
                    "Config must include the '{param}' parameter"
                )));
            }
        }
        return Err(invalid(format!(
            "backbone `{backbone}` is not an smp encoder, so TerraTorch would import it as a Python class and \
             wrap it (SMPEncoderWrapperWithPFFIM); terrahost cannot import Python classes. Use one of smp's \
             ResNet encoders: {}",
            resnet_encoder::NAMES.join(", ")
        )));
    }
    for k in backbone_kwargs.keys() {
        ignored.push((
            format!("backbone_{k}"),
            format!("SMPModelFactory reads `backbone_*` arguments only for custom encoders, not for smp's `{backbone}`"),
        ));
    }
    let mut model_args = Map::new();
    model_args.insert("encoder_name".into(), json!(backbone));
    model_args.insert(
        "encoder_weights".into(),
        weights.map(Value::String).unwrap_or(Value::Null),
    );
    model_args.insert("in_channels".into(), in_channels);
    model_args.insert(
        "classes".into(),
        get("num_classes").cloned().unwrap_or(json!(1)),
    );
    for (k, v) in smp_kwargs {
        model_args.insert(k, v);
    }
    Ok(Plan {
        model,
        model_args,
        ignored,
    })
}

/// TerraTorch's `SMPModelWrapper` around the smp model (attribute `smp_model`), with
/// `rescale=True`, `relu=False` and `squeeze_single_class=False` as the factory builds it
/// for segmentation.
#[derive(Debug)]
pub struct SMPModelWrapper {
    smp_model: SegmentationModel,
    classes: i64,
    encoder: String,
    ignored: Vec<(String, String)>,
}

impl SMPModelWrapper {
    /// The wrapped smp model.
    pub fn smp_model(&self) -> &SegmentationModel {
        &self.smp_model
    }

    /// The given arguments nothing reads, with the reason.
    pub fn ignored(&self) -> &[(String, String)] {
        &self.ignored
    }
}

impl Model for SMPModelWrapper {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let [x] = xs else {
            return Err(PluginError::forward_failed(format!(
                "SMPModelWrapper takes one [B, C, H, W] tensor, got {} inputs",
                xs.len()
            )));
        };
        let mut y = self.smp_model.forward(x, train)?;
        let (size, out) = (x.size(), y.size());
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        if out[out.len() - 2..] != [h, w] {
            // F.interpolate(mode="bilinear"), align_corners=None -> False
            y = y.f_upsample_bilinear2d([h, w], false, None, None)?;
        }
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.classes]
    }

    fn includes_head(&self) -> bool {
        true
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("model".into(), json!(self.smp_model.arch.name));
        m.insert("encoder".into(), json!(self.encoder));
        m.insert(
            "encoder_channels".into(),
            json!(self.smp_model.encoder_channels()),
        );
        m.insert(
            "ignored_args".into(),
            json!(self.ignored.iter().map(|(k, _)| k).collect::<Vec<_>>()),
        );
        m
    }
}

/// Builds the wrapped smp model.
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let in_factory = |e: PluginError| e.context("SMPModelFactory");
    let mut plan = plan(ctx.args.map()).map_err(in_factory)?;
    let encoder = plan.model_args["encoder_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let arch = segmentation_model::arch_named(&plan.model, &encoder).map_err(in_factory)?;
    if !resnet_encoder::NAMES.contains(&encoder.as_str()) {
        // `smp_encoder_name` overrode the backbone.
        return Err(in_factory(invalid(format!(
            "`smp_encoder_name` {encoder:?} is not one of smp's ResNet encoders ({})",
            resnet_encoder::NAMES.join(", ")
        ))));
    }
    // smp's **kwargs reach `get_encoder(name, in_channels, depth, weights, output_stride, **kwargs)`,
    // which the model calls with those set already.
    let mut taken = vec!["name", "depth", "weights"];
    if arch.name.starts_with("DeepLabV3") || arch.name == "PAN" {
        taken.push("output_stride");
    }
    if let Some(k) = taken.iter().find(|k| plan.model_args.contains_key(**k)) {
        return Err(in_factory(invalid(format!(
            "get_encoder() got multiple values for keyword argument '{k}' (smp.{} passes `smp_{k}` on to get_encoder, \
             which it already calls with {k}=...)",
            arch.name
        ))));
    }
    let unread: Vec<String> = segmentation_model::unread_keys(&arch, &plan.model_args)
        .into_iter()
        .map(str::to_owned)
        .collect();
    for k in unread {
        plan.model_args.remove(&k);
        plan.ignored.push((
            format!("smp_{k}"),
            format!(
                "smp.{} does not take it, and smp's get_encoder swallows it through **kwargs",
                arch.name
            ),
        ));
    }
    match plan.model_args.get("encoder_weights") {
        None | Some(Value::Null) => {}
        Some(Value::String(w)) => {
            let known = EncoderConfig::pretrained_settings(&encoder);
            if !known.contains(&w.as_str()) {
                return Err(in_factory(invalid(format!(
                    "Wrong pretrained weights `{w}` for encoder `{encoder}`. Available options are: [{}]",
                    known.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
                ))));
            }
            return Err(in_factory(invalid(format!(
                "pretrained weights `{w}` of `{encoder}` would be downloaded from the Hugging Face hub \
                 (smp-hub/{encoder}.{w}), and terrahost makes no downloads: set `pretrained: false` and load \
                 the trained model with `terrahost run --weights <checkpoint>`"
            ))));
        }
        Some(other) => {
            return Err(in_factory(invalid(format!(
            "`encoder_weights` must be None or the name of smp's pretrained weights, got {other}"
        ))))
        }
    }
    for (k, why) in &plan.ignored {
        terrahost_plugin_api::warn!("SMPModelFactory ignores argument `{k}`: {why}");
    }
    let classes = plan.model_args["classes"].as_i64().unwrap_or(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let smp_model = SegmentationModel::new(vs.root() / "smp_model", arch, &plan.model_args)
        .map_err(|e| {
            e.context(format_args!(
                "SMPModelFactory: smp.{}(encoder_name={encoder:?})",
                arch.name
            ))
        })?;
    let model = SMPModelWrapper {
        smp_model,
        classes,
        encoder,
        ignored: plan.ignored,
    };
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// The `SMPModelFactory` entry of the `model_factory` registry.
pub fn entry() -> Entry {
    Entry::new(
        "SMPModelFactory",
        "TerraTorch's SMPModelFactory: a whole segmentation_models_pytorch model (an smp encoder, the model's \
         decoder and smp's segmentation head) in TerraTorch's SMPModelWrapper, for segmentation. Encoders: \
         smp's ResNets and ResNeXts. `smp_*` arguments go to the smp model (e.g. smp_encoder_depth, \
         smp_decoder_channels, smp_aux_params); other extra arguments are accepted and ignored, as TerraTorch \
         does, and named in a warning. Keys: smp_model.encoder.*, smp_model.decoder.*, \
         smp_model.segmentation_head.*. The output is resized to the input size (bilinear) when it differs.",
        build,
    )
    .req("task", ParamType::STR, "only \"segmentation\"")
    .req(
        "backbone",
        ParamType::STR,
        "smp encoder: resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, resnext101_32x{4,8,16,32,48}d",
    )
    .req(
        "model",
        ParamType::STR,
        "smp model class: Unet, UnetPlusPlus, MAnet, Linknet, FPN, PSPNet, DeepLabV3, DeepLabV3Plus, PAN, UPerNet, Segformer",
    )
    .opt(
        "bands",
        ParamType::ANY,
        Value::Null,
        "required: input bands (HLSBands names or ints); in_channels defaults to their number",
    )
    .opt("in_channels", ParamType::INT, Value::Null, "input channels (default: len(bands))")
    .opt("num_classes", ParamType::INT, json!(1), "output classes (smp's `classes`)")
    .opt(
        "pretrained",
        ParamType::ANY,
        json!(true),
        "true means smp's \"imagenet\" weights, a string names other smp weights; terrahost makes no downloads, \
         so only false (random init, then `run --weights`) builds",
    )
    .opt(
        "prepare_features_for_image_model",
        ParamType::ANY,
        Value::Null,
        "only used for custom encoders (ignored for smp's)",
    )
    .opt("regression_relu", ParamType::BOOL, json!(false), "only used for regression, which is refused")
    .ignores(
        "rescale",
        "SMPModelFactory never passes it: SMPModelWrapper always resizes the mask to the input size",
    )
    .ignores("padding", "SMPModelFactory swallows it through **kwargs; smp models are not padded")
    .ignores(
        "aux_decoders",
        "the task's aux_heads: SMPModelFactory swallows them through **kwargs and builds no auxiliary head",
    )
    .accepts_extra()
}
