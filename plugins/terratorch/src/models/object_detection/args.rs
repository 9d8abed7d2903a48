//! The arguments of TerraTorch's `ObjectDetectionModelFactory.build_model`
//! (`terratorch/models/object_detection_model_factory.py`, 1.2.13): the task check, the
//! `backbone_` / `framework_` split, the input channel count, and the `framework_*`
//! keyword arguments as torchvision's `FasterRCNN` / `MaskRCNN` / `FCOS` / `RetinaNet`
//! constructors take them.

use super::super::encoder_decoder_factory::{
    extract_prefix_keys, neck_specs, py_repr, take_temporal_config, NeckSpec,
};
use super::super::temporal_wrapper::TemporalConfig;
use super::single_stage::SingleStageConfig;
use serde_json::{Map, Value};
use terrahost_layers::detection::faster_rcnn::RCNNConfig;
use terrahost_plugin_api::{params::describe_json, PluginError, Result};

/// The keyword arguments `build_model` declares; the rest is split by prefix.
pub const DECLARED: [&str; 5] = ["task", "backbone", "framework", "num_classes", "necks"];

/// The detection frameworks TerraTorch 1.2.13 knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framework {
    /// torchvision's `FasterRCNN`.
    FasterRcnn,
    /// torchvision's `MaskRCNN` with TerraTorch's heads.
    MaskRcnn,
    /// TerraTorch's `DETR` (`terratorch/models/detr`).
    Detr,
    /// TerraTorch's `DeformableDETR`.
    DeformableDetr,
    /// torchvision's `FCOS` with TerraTorch's anchors.
    Fcos,
    /// torchvision's `RetinaNet` with TerraTorch's anchors and GroupNorm head.
    RetinaNet,
}

/// Why each framework terrahost does not build is refused.
pub const NOT_PORTED: [(&str, &str); 1] = [
    (
        "rf-detr",
        "TerraTorch's RF-DETR wraps LW-DETR from the optional `rfdetr` package (decoder-only, two-stage queries), \
         which is not ported to terrahost yet",
    ),
];

impl Framework {
    /// `framework` as TerraTorch compares it (case-sensitive).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "faster-rcnn" => Ok(Self::FasterRcnn),
            "mask-rcnn" => Ok(Self::MaskRcnn),
            "detr" => Ok(Self::Detr),
            "deformable-detr" => Ok(Self::DeformableDetr),
            "fcos" => Ok(Self::Fcos),
            "retinanet" => Ok(Self::RetinaNet),
            other => match NOT_PORTED.iter().find(|(n, _)| *n == other) {
                Some((_, why)) => Err(PluginError::build_failed(format!(
                    "ObjectDetectionModelFactory: framework `{other}`: {why}; terrahost builds `faster-rcnn`, \
                     `mask-rcnn`, `fcos`, `retinanet`, \
                     `detr` and `deformable-detr`"
                ))),
                None => Err(invalid(format!(
                    "Framework type '{other}' is not valid. (TerraTorch's frameworks are faster-rcnn, fcos, \
                     retinanet, mask-rcnn, detr, deformable-detr and rf-detr)"
                ))),
            },
        }
    }

    /// The upstream name.
    pub fn name(self) -> &'static str {
        match self {
            Self::FasterRcnn => "faster-rcnn",
            Self::MaskRcnn => "mask-rcnn",
            Self::Detr => "detr",
            Self::DeformableDetr => "deformable-detr",
            Self::Fcos => "fcos",
            Self::RetinaNet => "retinanet",
        }
    }

    /// Whether TerraTorch builds it from `terratorch/models/detr` (no torchvision transform).
    pub fn is_detr(self) -> bool {
        matches!(self, Self::Detr | Self::DeformableDetr)
    }

    /// torchvision's class.
    fn class(self) -> &'static str {
        match self {
            Self::FasterRcnn => "FasterRCNN",
            Self::MaskRcnn => "MaskRCNN",
            Self::Detr => "TerraTorchDETR",
            Self::DeformableDetr => "TerraTorchDeformableDETR",
            Self::Fcos => "FCOS",
            Self::RetinaNet => "RetinaNet",
        }
    }

    /// The module of torchvision.models.detection that defines [`Framework::class`].
    fn module(self) -> &'static str {
        match self {
            Self::FasterRcnn => "faster_rcnn",
            Self::MaskRcnn => "mask_rcnn",
            Self::Fcos => "fcos",
            Self::RetinaNet => "retinanet",
            Self::Detr | Self::DeformableDetr => "detr",
        }
    }

    /// The keyword arguments TerraTorch itself passes to the constructor (a
    /// `framework_` argument of the same name is a duplicate keyword in Python).
    fn set_by_terratorch(self) -> &'static [&'static str] {
        match self {
            Self::FasterRcnn => &[
                "rpn_anchor_generator",
                "box_roi_pool",
                "_skip_resize",
                "image_mean",
                "image_std",
            ],
            Self::MaskRcnn => &[
                "num_classes",
                "rpn_anchor_generator",
                "rpn_head",
                "box_head",
                "box_roi_pool",
                "mask_roi_pool",
                "mask_head",
                "_skip_resize",
                "image_mean",
                "image_std",
            ],
            Self::Detr | Self::DeformableDetr => &["in_channels"],
            Self::Fcos => &[
                "anchor_generator",
                "_skip_resize",
                "image_mean",
                "image_std",
            ],
            Self::RetinaNet => &[
                "anchor_generator",
                "head",
                "_skip_resize",
                "image_mean",
                "image_std",
            ],
        }
    }

    /// Constructor arguments that take modules (or, for `box_predictor`, replace
    /// `num_classes`), which a config cannot give.
    fn module_valued(self) -> &'static [&'static str] {
        match self {
            Self::FasterRcnn => &["rpn_head", "box_head", "box_predictor"],
            Self::MaskRcnn => &["box_predictor", "mask_predictor"],
            Self::Detr | Self::DeformableDetr => &[],
            Self::Fcos => &["head"],
            Self::RetinaNet => &["proposal_matcher"],
        }
    }

    /// Constructor arguments that only training reads (target assignment and sampling).
    fn training_only(self) -> &'static [&'static str] {
        match self {
            Self::FasterRcnn | Self::MaskRcnn => &RCNN_TRAINING_ONLY,
            // FCOS's centre sampling picks the positive locations of the targets.
            Self::Fcos => &["center_sampling_radius"],
            // RetinaNet's Matcher thresholds assign anchors to targets.
            Self::RetinaNet => &["fg_iou_thresh", "bg_iou_thresh"],
            // `plan` refuses the DETRs (detr_args reads theirs).
            Self::Detr | Self::DeformableDetr => &[],
        }
    }
}

/// The R-CNNs' constructor arguments that only training reads (sampling and matching).
const RCNN_TRAINING_ONLY: [&str; 10] = [
    "rpn_pre_nms_top_n_train",
    "rpn_post_nms_top_n_train",
    "rpn_fg_iou_thresh",
    "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "box_fg_iou_thresh",
    "box_bg_iou_thresh",
    "box_batch_size_per_image",
    "box_positive_fraction",
];

/// Transform arguments TerraTorch's `TerratorchGeneralizedRCNNTransform` keeps and never
/// uses (it neither resizes nor pads).
const TRANSFORM_UNUSED: [&str; 4] = ["min_size", "max_size", "size_divisible", "fixed_size"];

/// Everything the factory builds from, decided from the arguments alone.
#[derive(Clone, Debug)]
pub struct DetectionPlan {
    /// The framework.
    pub framework: Framework,
    /// The backbone registry name.
    pub backbone: String,
    /// `backbone_*` arguments, prefix and temporal keys removed.
    pub backbone_kwargs: Map<String, Value>,
    /// The temporal wrapper, when `backbone_use_temporal` is true.
    pub temporal: Option<TemporalConfig>,
    /// Necks as (registry name, arguments), in order.
    pub necks: Vec<NeckSpec>,
    /// Input channels (`in_channels`, else the number of `backbone_model_bands` /
    /// `backbone_bands`): the length of the zero mean and unit std.
    pub in_channels: i64,
    /// `num_classes` (for the R-CNNs background included, for FCOS and RetinaNet not).
    pub num_classes: i64,
    /// torchvision's arguments with TerraTorch's settings and the `framework_*` ones.
    pub config: FrameworkConfig,
}

/// torchvision's settings of the framework: TerraTorch's and the `framework_*` arguments.
#[derive(Clone, Debug)]
pub enum FrameworkConfig {
    /// `faster-rcnn`, `mask-rcnn`: the anchor sizes are cut to the number of feature maps
    /// once the necks are built; `framework_bbox_reg_weights`, when given.
    Rcnn {
        /// The R-CNN's configuration (boxed: it is much larger than the other variant).
        cfg: Box<RCNNConfig>,
        /// The box coder's weights of the box head.
        bbox_reg_weights: Option<[f64; 4]>,
    },
    /// `fcos`, `retinanet`.
    SingleStage(SingleStageConfig),
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("ObjectDetectionModelFactory: {}", msg.into()))
}

/// `framework_{key}` as an integer.
pub(super) fn int_arg(key: &str, v: &Value) -> Result<i64> {
    v.as_i64().ok_or_else(|| {
        invalid(format!(
            "`framework_{key}` must be an integer, got {}",
            describe_json(v)
        ))
    })
}

/// `framework_{key}` as a number.
pub(super) fn float_arg(key: &str, v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| {
        invalid(format!(
            "`framework_{key}` must be a number, got {}",
            describe_json(v)
        ))
    })
}

/// TerraTorch's R-CNN settings for `framework` over `levels` feature maps (before the
/// `framework_*` arguments): the layers crate's presets, with TerraTorch's stack-only
/// transform (Mask R-CNN's for `mask-rcnn`, Faster R-CNN's for the others).
pub fn terratorch_rcnn(
    framework: Framework,
    num_classes: i64,
    levels: usize,
    in_channels: i64,
) -> RCNNConfig {
    match framework {
        Framework::MaskRcnn => {
            RCNNConfig::terratorch_mask_rcnn(num_classes, levels, in_channels as usize)
        }
        _ => RCNNConfig::terratorch_faster_rcnn(num_classes, levels, in_channels as usize),
    }
}

/// What every framework reads from the build arguments, in TerraTorch's order (task,
/// prefix split, input channels, framework, temporal options, necks).
#[derive(Clone, Debug)]
pub struct Front {
    /// The framework.
    pub framework: Framework,
    /// The backbone registry name.
    pub backbone: String,
    /// `backbone_*` arguments, prefix and temporal keys removed.
    pub backbone_kwargs: Map<String, Value>,
    /// The temporal wrapper, when `backbone_use_temporal` is true.
    pub temporal: Option<TemporalConfig>,
    /// Necks as (registry name, arguments), in order.
    pub necks: Vec<NeckSpec>,
    /// Input channels.
    pub in_channels: i64,
    /// `framework_*` arguments, prefix removed.
    pub framework_kwargs: Map<String, Value>,
    /// Arguments with neither prefix.
    pub rest: Map<String, Value>,
    /// `num_classes` as given.
    pub num_classes: Option<Value>,
}

/// Reads the arguments every framework shares, refusing what TerraTorch refuses.
pub fn front(args: &Map<String, Value>) -> Result<Front> {
    let task = match args.get("task") {
        Some(Value::String(s)) => s.to_lowercase(),
        Some(other) => {
            return Err(invalid(format!(
                "`task` must be a string, got {}",
                describe_json(other)
            )))
        }
        None => return Err(invalid("argument `task` is required")),
    };
    if task != "object_detection" {
        return Err(invalid(format!(
            "Task {task} not supported. Please choose one of ['object_detection']"
        )));
    }
    let backbone = match args.get("backbone") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "`backbone` must be a registry name, got {}",
                describe_json(other)
            )))
        }
        None => return Err(invalid("argument `backbone` is required")),
    };
    let framework_name = match args.get("framework") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "`framework` must be a string, got {}",
                describe_json(other)
            )))
        }
        None => return Err(invalid("argument `framework` is required")),
    };

    let extras: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| !DECLARED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (mut backbone_kwargs, rest) = extract_prefix_keys(&extras, "backbone_");
    let (framework_kwargs, rest) = extract_prefix_keys(&rest, "framework_");

    // The input channel count comes before the framework is looked at.
    let in_channels = match rest.get("in_channels") {
        Some(v) => v.as_i64().filter(|&n| n >= 1).ok_or_else(|| {
            invalid(format!(
                "`in_channels` must be a positive integer, got {}",
                describe_json(v)
            ))
        })?,
        None => {
            let key = if backbone_kwargs.contains_key("model_bands") {
                "model_bands"
            } else {
                "bands"
            };
            match backbone_kwargs.get(key) {
                Some(Value::Array(a)) => a.len() as i64,
                Some(other) => {
                    return Err(invalid(format!(
                        "`backbone_{key}` must be a list of bands (TerraTorch takes its length as the number of \
                         input channels), got {}",
                        describe_json(other)
                    )))
                }
                None => {
                    return Err(invalid(
                        "give `in_channels`, `backbone_model_bands` or `backbone_bands`: TerraTorch reads the \
                         number of input channels from one of them and fails without (KeyError: 'bands')",
                    ))
                }
            }
        }
    };
    let framework = Framework::parse(&framework_name)?;

    let temporal = take_temporal_config(&mut backbone_kwargs, invalid)?;

    let necks = neck_specs(args.get("necks"), invalid)?;
    Ok(Front {
        framework,
        backbone,
        backbone_kwargs,
        temporal,
        necks,
        in_channels,
        framework_kwargs,
        rest,
        num_classes: args.get("num_classes").cloned(),
    })
}

/// Reads the build arguments of an R-CNN framework into a plan, refusing what TerraTorch (or
/// torchvision's constructors) refuse, and warning about what they accept and never use.
pub fn plan(front: Front) -> Result<DetectionPlan> {
    let Front {
        framework,
        backbone,
        backbone_kwargs,
        temporal,
        necks,
        in_channels,
        framework_kwargs,
        rest,
        num_classes,
    } = front;
    if framework.is_detr() {
        return Err(invalid(format!(
            "framework `{}` is not an R-CNN: its arguments are read by detr::read_config",
            framework.name()
        )));
    }

    // torchvision's keyword checks, in the order Python makes them: duplicates at the call.
    let class = framework.class();
    for key in ["backbone", "num_classes"] {
        if framework_kwargs.contains_key(key) && !framework.set_by_terratorch().contains(&key) {
            return Err(invalid(format!(
                "`framework_{key}`: {class}.__init__() got multiple values for argument '{key}' (TerraTorch passes \
                 it itself)"
            )));
        }
    }
    for key in framework.set_by_terratorch() {
        if framework_kwargs.contains_key(*key) {
            return Err(invalid(format!(
                "`framework_{key}`: torchvision.models.detection.{}.{class}() got multiple values for keyword \
                 argument '{key}' (TerraTorch sets it itself)",
                framework.module()
            )));
        }
    }
    let num_classes = match num_classes.as_ref() {
        None | Some(Value::Null) if matches!(framework, Framework::Fcos | Framework::RetinaNet) => {
            return Err(invalid(format!(
                "{class}'s head needs `num_classes` (without it TerraTorch fails: TypeError: unsupported operand \
                 type(s) for *: 'int' and 'NoneType'); give the number of classes, no background class"
            )))
        }
        None | Some(Value::Null) => {
            return Err(invalid(
                "num_classes should not be None when box_predictor is not specified (torchvision's check; give \
                 `num_classes`, background included)",
            ))
        }
        Some(v) => v.as_i64().filter(|&n| n >= 1).ok_or_else(|| {
            invalid(format!(
                "`num_classes` must be a positive integer (background included), got {}",
                describe_json(v)
            ))
        })?,
    };

    let mut config = match framework {
        Framework::Fcos | Framework::RetinaNet => {
            FrameworkConfig::SingleStage(SingleStageConfig::torchvision(framework))
        }
        // Five levels until the necks tell how many maps there are (`build` cuts the anchors).
        _ => FrameworkConfig::Rcnn {
            cfg: Box::new(terratorch_rcnn(framework, num_classes, 5, in_channels)),
            bbox_reg_weights: None,
        },
    };
    let mut training_only = Vec::new();
    let mut no_effect = Vec::new();
    let mut swallowed = Vec::new();
    for (key, v) in &framework_kwargs {
        let k = key.as_str();
        let used = match &mut config {
            FrameworkConfig::Rcnn {
                cfg,
                bbox_reg_weights,
            } => read_rcnn_arg(cfg, bbox_reg_weights, k, v)?,
            FrameworkConfig::SingleStage(cfg) => cfg.read(k, v)?,
        };
        if used {
            continue;
        }
        match k {
            k if framework.training_only().contains(&k) => {
                training_only.push(format!("framework_{k}"))
            }
            k if TRANSFORM_UNUSED.contains(&k) => no_effect.push(format!("framework_{k}")),
            k if framework.module_valued().contains(&k) => {
                if !v.is_null() {
                    return Err(invalid(format!(
                        "`framework_{k}` takes a torch module in torchvision's {class}; a config value ({}) cannot \
                         stand for one. TerraTorch's heads are built from `num_classes` and the backbone's channels",
                        py_repr(v)
                    )));
                }
            }
            _ => swallowed.push(format!("framework_{key}")),
        }
    }
    if !training_only.is_empty() {
        terrahost_plugin_api::warn!(
            "ObjectDetectionModelFactory: {} only matter(s) in training; terrahost runs inference and does not \
             use them",
            training_only.join(", ")
        );
    }
    if !no_effect.is_empty() {
        terrahost_plugin_api::warn!(
            "ObjectDetectionModelFactory: {} has no effect: TerraTorch replaces torchvision's transform by one \
             that neither normalises, resizes nor pads the images",
            no_effect.join(", ")
        );
    }
    if !swallowed.is_empty() {
        terrahost_plugin_api::warn!(
            "ObjectDetectionModelFactory: {} is not an argument of torchvision's {class}; it reaches \
             GeneralizedRCNNTransform's **kwargs, which ignores it, so TerraTorch accepts it and nothing uses it",
            swallowed.join(", ")
        );
    }
    warn_leftovers(&rest);

    Ok(DetectionPlan {
        framework,
        backbone,
        backbone_kwargs,
        temporal,
        necks,
        in_channels,
        num_classes,
        config,
    })
}

/// Warns about the arguments with neither prefix: TerraTorch 1.2.13 never checks what is
/// left over (it defines `_check_all_args_used` and does not call it), so they are accepted
/// and unused.
pub fn warn_leftovers(rest: &Map<String, Value>) {
    let leftovers: Vec<&String> = rest.keys().filter(|k| *k != "in_channels").collect();
    if !leftovers.is_empty() {
        terrahost_plugin_api::warn!(
            "ObjectDetectionModelFactory ignores {} (TerraTorch 1.2.13's build_model accepts arguments without a \
             `backbone_` or `framework_` prefix and does not use them)",
            leftovers
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Sets `key` (a `framework_` argument without its prefix) when it is one of the R-CNNs'
/// inference settings; `Ok(false)` when it is not.
fn read_rcnn_arg(
    rcnn: &mut RCNNConfig,
    bbox_reg_weights: &mut Option<[f64; 4]>,
    k: &str,
    v: &Value,
) -> Result<bool> {
    match k {
        "rpn_pre_nms_top_n_test" => rcnn.rpn_pre_nms_top_n_test = int_arg(k, v)?,
        "rpn_post_nms_top_n_test" => rcnn.rpn_post_nms_top_n_test = int_arg(k, v)?,
        "rpn_nms_thresh" => rcnn.rpn_nms_thresh = float_arg(k, v)?,
        "rpn_score_thresh" => rcnn.rpn_score_thresh = float_arg(k, v)?,
        "box_score_thresh" => rcnn.box_score_thresh = float_arg(k, v)?,
        "box_nms_thresh" => rcnn.box_nms_thresh = float_arg(k, v)?,
        "box_detections_per_img" => rcnn.box_detections_per_img = int_arg(k, v)?,
        "bbox_reg_weights" => {
            *bbox_reg_weights = match v {
                Value::Null => None,
                Value::Array(a) if a.len() == 4 && a.iter().all(Value::is_number) => {
                    let w: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
                    Some([w[0], w[1], w[2], w[3]])
                }
                other => {
                    return Err(invalid(format!(
                        "`framework_bbox_reg_weights` must be 4 numbers (wx, wy, ww, wh), got {}",
                        describe_json(other)
                    )))
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}
