//! TerraTorch's `ObjectDetectionModelFactory` (`terratorch/models/object_detection_model_factory.py`,
//! TerraTorch 1.2.13) for the frameworks `faster-rcnn`, `mask-rcnn`, `fcos` and `retinanet`: a registry
//! backbone (from any plugin) and registry necks in a [`backbone_wrapper::BackboneWrapper`],
//! under torchvision's `FasterRCNN` / `MaskRCNN` with TerraTorch's settings
//! ([`args::terratorch_rcnn`]): anchors 32, 64, 128, 256, 512 (one per level, cut to the
//! number of feature maps) with aspect ratios 0.5, 1, 2; one `MultiScaleRoIAlign` over
//! `feat0`..`feat3` (7 x 7, sampling ratio 2); for Mask R-CNN `RPNHead(conv_depth=2)`,
//! `FastRCNNConvFCHead((C, 7, 7), [256] * 4, [1024], BatchNorm2d)` and
//! `MaskRCNNHeads(C, [256] * 4, 1, BatchNorm2d)` with the box pooler as mask pooler; and
//! TerraTorch's transform, which passes the images through unchanged. `fcos` and
//! `retinanet` are torchvision's `FCOS` and `RetinaNet` with TerraTorch's anchors and heads
//! ([`single_stage`]).
//!
//! `detr` and `deformable-detr` are built by [`detr`] (TerraTorch's own DETR wrappers, on
//! the feature maps as a list, so no FPN neck is needed).
//!
//! `rf-detr` is refused with the reason ([`args::NOT_PORTED`]).
//!
//! **Outputs.** TerraTorch's model returns one dict per image; the module returns, image
//! after image, `boxes` (`[D, 4]` float, `x1, y1, x2, y2` in input pixels), `scores` (`[D]`
//! float, decreasing), `labels` (`[D]` int64: for the R-CNNs 1.., as 0 is the background;
//! for `fcos` and `retinanet`, which have no background class, 0..) and for
//! `mask-rcnn` `masks` (`[D, 1, H, W]` float probabilities). `terrahost run` names them
//! `boxes.{i}`, `scores.{i}`, `labels.{i}`, `masks.{i}` for image `i` (the module's
//! `output_names_per_image` meta).

pub mod args;
pub mod backbone_wrapper;
pub mod detr;
pub mod detr_args;
pub mod rcnn;
pub mod single_stage;

use super::encoder_decoder_factory::NeckSpec;
use super::temporal_wrapper::{TemporalConfig, TemporalWrapper};
use args::{plan, Framework, FrameworkConfig};
use backbone_wrapper::{BackboneWrapper, FPN_NECK};
use rcnn::RcnnModel;
use serde_json::{json, Map, Value};
use single_stage::SingleStageModel;
use tch::{nn, Device};
use terrahost_layers::detection::box_coder::BoxCoder;
use terrahost_layers::detection::faster_rcnn::GeneralizedRCNN;
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, DynModule, Entry},
    ModuleBox, ParamType, PluginError, Result,
};

/// TerraTorch's anchor sizes, one per feature level, cut to the number of levels.
const ANCHOR_SIZES: [f64; 5] = [32.0, 64.0, 128.0, 256.0, 512.0];

/// The output names of one image, in order; image `i`'s are suffixed `.{i}`.
pub fn per_image_names(framework: Framework) -> &'static [&'static str] {
    match framework {
        Framework::FasterRcnn | Framework::Fcos | Framework::RetinaNet => {
            &["boxes", "scores", "labels"]
        }
        Framework::MaskRcnn => &["boxes", "scores", "labels", "masks"],
        Framework::Detr | Framework::DeformableDetr => &detr::PER_IMAGE_NAMES,
    }
}

/// The `meta` of every detection model: how `run` names the outputs of each image, the
/// framework, and the channel list the backbone and necks hand it.
fn model_meta(framework: Framework, backbone: &BackboneWrapper) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "output_names_per_image".into(),
        json!(per_image_names(framework)),
    );
    m.insert("framework".into(), json!(framework.name()));
    m.insert("channel_list".into(), json!(backbone.channel_list));
    // `--precision bf16` stores only the backbone's and necks' weights in bfloat16; the
    // heads run in float32 (terrahost_layers::precision::float32_heads).
    m.insert("bf16_prefixes".into(), json!([backbone.prefix()]));
    m
}

/// The refusal of a forward in training mode: upstream's detectors then need targets and
/// return losses, and training is not what terrahost runs.
fn eval_only(framework: Framework) -> PluginError {
    PluginError::invalid_argument(format!(
        "ObjectDetectionModel ({}): in training mode the detector needs targets and returns losses; \
         terrahost runs it in eval mode only (set_train(false))",
        framework.name()
    ))
}

fn in_step<T>(what: impl std::fmt::Display, r: Result<T>) -> Result<T> {
    r.map_err(|e| e.context(format_args!("ObjectDetectionModelFactory: {what}")))
}

/// Whether the last neck hands torchvision named maps, as TerraTorch's detection path needs.
fn ends_in_named_maps(necks: &[NeckSpec]) -> bool {
    match necks.last() {
        Some(NeckSpec { name, args }) => {
            let bare = name.strip_prefix("terratorch_").unwrap_or(name);
            bare == FPN_NECK && args.get("output_ordered_dict") != Some(&Value::Bool(false))
        }
        None => false,
    }
}

/// The registry backbone (in TerraTorch's temporal wrapper when asked) and its necks, built
/// through the host and wrapped as `torchvision_model.backbone`.
fn backbone_wrapper(
    ctx: &BuildCtx<'_, '_>,
    name: &str,
    kwargs: &serde_json::Map<String, Value>,
    temporal: &Option<TemporalConfig>,
    neck_specs: &[NeckSpec],
) -> Result<BackboneWrapper> {
    let mut backbone = in_step(
        format_args!("building backbone `{name}`"),
        ctx.build("backbone", name, kwargs, None),
    )?;
    if let Some(cfg) = temporal {
        let label = format!("TemporalWrapper({})", backbone.label());
        let wrapper = TemporalWrapper::new(backbone, cfg.clone())
            .map_err(|e| e.context(format_args!("ObjectDetectionModelFactory")))?;
        let module = Built::new(label.clone(), nn::VarStore::new(Device::Cpu), wrapper).boxed();
        backbone = DynModule::new(label, module);
    }
    let mut channels = backbone.out_channels();
    if channels.is_empty() {
        return Err(PluginError::build_failed(format!(
            "ObjectDetectionModelFactory: backbone must have out_channels attribute (`{name}` reports none)"
        )));
    }
    let mut necks = Vec::new();
    for (i, NeckSpec { name, args: nargs }) in neck_specs.iter().enumerate() {
        let neck = in_step(
            format_args!("building neck {i} `{name}` for channels {channels:?}"),
            ctx.build("neck", name, nargs, Some(&channels)),
        )?;
        channels = neck.out_channels();
        necks.push(neck);
    }
    BackboneWrapper::new("torchvision_model.backbone", backbone, necks, channels)
}

/// Builds the model: backbone and necks through the host, the R-CNN here (the DETRs in
/// [`detr`]).
pub fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let front = args::front(ctx.args.map())?;
    if front.framework.is_detr() {
        return detr::build(ctx, front);
    }
    let plan = plan(front)?;
    if !ends_in_named_maps(&plan.necks) {
        let names: Vec<&str> = plan.necks.iter().map(|n| n.name.as_str()).collect();
        return Err(PluginError::invalid_argument(format!(
            "ObjectDetectionModelFactory: framework `{}` needs named feature maps, which TerraTorch gets only from a \
             last neck `{FPN_NECK}` (with output_ordered_dict true: it names them feat0, feat1, ...); with necks \
             {names:?} torchvision fails on the list of features ('list' object has no attribute 'values'). \
             Add {{name: {FPN_NECK}}} as the last neck",
            plan.framework.name()
        )));
    }

    let wrapper = backbone_wrapper(
        ctx,
        &plan.backbone,
        &plan.backbone_kwargs,
        &plan.temporal,
        &plan.necks,
    )?;

    let (cfg, bbox_reg_weights) = match plan.config {
        FrameworkConfig::Rcnn {
            cfg,
            bbox_reg_weights,
        } => (cfg, bbox_reg_weights),
        FrameworkConfig::SingleStage(cfg) => {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = SingleStageModel::new(
                &(vs.root() / "torchvision_model"),
                plan.framework,
                wrapper,
                plan.num_classes,
                plan.in_channels,
                &cfg,
            )?;
            return Ok(Built::new(ctx.qualified(), vs, model).boxed());
        }
    };
    let levels = wrapper.channel_list.len();
    if levels > ANCHOR_SIZES.len() {
        return Err(PluginError::invalid_argument(format!(
            "ObjectDetectionModelFactory: the necks give {levels} feature maps but TerraTorch's anchor generator has \
             sizes for at most {} (torchvision: there needs to be a match between the number of feature maps \
             passed and the number of sizes / aspect ratios specified)",
            ANCHOR_SIZES.len()
        )));
    }
    let preset = args::terratorch_rcnn(plan.framework, plan.num_classes, levels, plan.in_channels);
    let mut cfg = *cfg;
    cfg.anchor_sizes = preset.anchor_sizes;
    cfg.aspect_ratios = preset.aspect_ratios;

    let vs = nn::VarStore::new(Device::Cpu);
    let mut rcnn = GeneralizedRCNN::from_config(
        &(vs.root() / "torchvision_model"),
        wrapper.out_channels(),
        &cfg,
    )
    .map_err(|e| e.context(format_args!("ObjectDetectionModelFactory")))?;
    if let Some(w) = bbox_reg_weights {
        rcnn.roi_heads.box_coder = BoxCoder::new(w);
    }
    let model = RcnnModel::new(plan.framework, wrapper, rcnn, cfg.num_classes);
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// The registry entry, with the keyword arguments of upstream `build_model`.
pub fn entry() -> Entry {
    Entry::new(
        "ObjectDetectionModelFactory",
        "Builds an object-detection model: a registry backbone and necks (ending in FeaturePyramidNetworkNeck) \
         under torchvision's Faster R-CNN (`faster-rcnn`), Mask R-CNN (`mask-rcnn`), FCOS (`fcos`) or RetinaNet \
         (`retinanet`) with TerraTorch's anchors, pooler and heads. `backbone_*` arguments go to the backbone, \
         `framework_*` ones to torchvision's constructor (R-CNNs: box_score_thresh, box_nms_thresh, \
         box_detections_per_img, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test, rpn_nms_thresh, \
         rpn_score_thresh, bbox_reg_weights; fcos and retinanet: score_thresh, nms_thresh, detections_per_img, \
         topk_candidates). Outputs per image i: boxes.i, scores.i, labels.i (and masks.i). `detr` and `deformable-detr` build \
         TerraTorch's DETR wrappers (framework_d_model, nhead, num_encoder_layers, num_decoder_layers, \
         dim_feedforward, num_queries, and for deformable-detr n_points and num_feature_levels); rf-detr is not \
         ported.",
        build,
    )
    .req("task", ParamType::STR, "object_detection")
    .req("backbone", ParamType::STR, "backbone registry name (e.g. timm_resnet50, prithvi_eo_v2_300)")
    .req(
        "framework",
        ParamType::STR,
        "faster-rcnn, mask-rcnn, fcos, retinanet, detr or deformable-detr (TerraTorch's rf-detr is refused)",
    )
    .opt(
        "num_classes",
        ParamType::INT,
        Value::Null,
        "number of classes (for the R-CNNs background included, for fcos, retinanet and the DETRs not)",
    )
    .opt(
        "necks",
        ParamType::DICT_LIST,
        Value::Null,
        "necks applied in order, each {\"name\": ..., args...}; for the R-CNNs the last must be \
         FeaturePyramidNetworkNeck",
    )
    .accepts_extra()
}
