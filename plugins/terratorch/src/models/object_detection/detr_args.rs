//! The keyword arguments of TerraTorch's DETR wrappers (`TerraTorchDETR.__init__` and
//! `TerraTorchDeformableDETR.__init__` in `terratorch/models/detr/terratorch_detr.py`,
//! TerraTorch 1.2.13) as `framework_*` arguments of `ObjectDetectionModelFactory`: their
//! defaults, Python's `TypeError`s for duplicate and unknown names, the shape constraints
//! that fail upstream, and a warning for the loss-only ones.

use super::args::Framework;
use super::detr::GROUPS;
use serde_json::{Map, Value};
use terrahost_plugin_api::{params::describe_json, PluginError, Result};

/// The wrappers' sizes, with TerraTorch's defaults and the `framework_*` arguments.
#[derive(Clone, Debug)]
pub struct DetrConfig {
    /// `detr` or `deformable-detr`.
    pub framework: Framework,
    /// Object classes (DETR adds its no-object class).
    pub num_classes: i64,
    /// Width (`d_model`).
    pub d_model: i64,
    /// Attention heads (`nhead`).
    pub nhead: i64,
    /// `num_encoder_layers`.
    pub num_encoder_layers: i64,
    /// `num_decoder_layers`.
    pub num_decoder_layers: i64,
    /// `dim_feedforward`.
    pub dim_feedforward: i64,
    /// `num_queries`.
    pub num_queries: i64,
    /// Deformable DETR's sampling points per head and level (`n_points`).
    pub n_points: i64,
    /// Deformable DETR's `num_feature_levels` (`None`: one per feature map).
    pub num_feature_levels: Option<i64>,
}

pub(super) fn invalid(msg: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_argument(format!("ObjectDetectionModelFactory: {msg}"))
}

/// The keyword arguments each wrapper declares after `backbone, num_classes, in_channels`,
/// with whether inference reads them.
fn declared(framework: Framework) -> &'static [(&'static str, bool)] {
    match framework {
        Framework::DeformableDetr => &[
            ("d_model", true),
            ("nhead", true),
            ("num_encoder_layers", true),
            ("num_decoder_layers", true),
            ("dim_feedforward", true),
            ("dropout", false),
            ("num_queries", true),
            ("n_points", true),
            ("eos_coef", false),
            ("aux_loss", false),
            ("num_feature_levels", true),
            ("masks", true),
        ],
        _ => &[
            ("d_model", true),
            ("nhead", true),
            ("num_encoder_layers", true),
            ("num_decoder_layers", true),
            ("dim_feedforward", true),
            ("dropout", false),
            ("num_queries", true),
            ("eos_coef", false),
            ("aux_loss", false),
            ("masks", true),
        ],
    }
}

fn class_name(framework: Framework) -> &'static str {
    match framework {
        Framework::DeformableDetr => "TerraTorchDeformableDETR",
        _ => "TerraTorchDETR",
    }
}

/// Reads `num_classes` and the `framework_*` arguments of a DETR framework.
pub fn read_config(
    framework: Framework,
    num_classes: Option<&Value>,
    kwargs: &Map<String, Value>,
) -> Result<DetrConfig> {
    let class = class_name(framework);
    let declared = declared(framework);
    // Python's checks at the call, in its order: duplicates, then unknown names.
    for key in ["backbone", "num_classes"] {
        if kwargs.contains_key(key) {
            return Err(invalid(format!(
                "`framework_{key}`: {class}.__init__() got multiple values for argument '{key}' (TerraTorch \
                 passes it itself)"
            )));
        }
    }
    if kwargs.contains_key("in_channels") {
        return Err(invalid(format!(
            "`framework_in_channels`: {class}.__init__() got multiple values for keyword argument 'in_channels' \
             (TerraTorch passes it itself; give `in_channels` without the prefix)"
        )));
    }
    if let Some(k) = kwargs
        .keys()
        .find(|k| !declared.iter().any(|(d, _)| d == k))
    {
        let names: Vec<&str> = declared.iter().map(|(d, _)| *d).collect();
        return Err(invalid(format!(
            "`framework_{k}`: {class}.__init__() got an unexpected keyword argument '{k}' (it takes {})",
            names.join(", ")
        )));
    }
    let int = |key: &str, default: i64, min: i64| -> Result<i64> {
        match kwargs.get(key) {
            None => Ok(default),
            Some(v) => v.as_i64().filter(|&n| n >= min).ok_or_else(|| {
                invalid(format!(
                    "`framework_{key}` must be an integer >= {min}, got {}",
                    describe_json(v)
                ))
            }),
        }
    };
    let flag = |key: &str, default: bool| -> Result<bool> {
        match kwargs.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(invalid(format!(
                "`framework_{key}` must be true or false, got {}",
                describe_json(v)
            ))),
        }
    };
    for key in ["dropout", "eos_coef"] {
        if let Some(v) = kwargs.get(key) {
            if !v.is_number() {
                return Err(invalid(format!(
                    "`framework_{key}` must be a number, got {}",
                    describe_json(v)
                )));
            }
        }
    }
    // nn.Dropout checks its probability even though eval mode never applies it.
    if let Some(p) = kwargs.get("dropout").and_then(Value::as_f64) {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid(format!(
                "`framework_dropout`: dropout probability has to be between 0 and 1, but got {p}"
            )));
        }
    }
    let deformable = framework == Framework::DeformableDetr;
    let num_classes = match num_classes {
        None | Some(Value::Null) => {
            return Err(invalid(format!(
                "{class} needs `num_classes` (the number of object classes, no background; upstream fails on \
                 None in nn.Linear)"
            )))
        }
        Some(v) => v.as_i64().filter(|&n| n >= 1).ok_or_else(|| {
            invalid(format!(
                "`num_classes` must be a positive integer (object classes, no background), got {}",
                describe_json(v)
            ))
        })?,
    };
    let cfg = DetrConfig {
        framework,
        num_classes,
        d_model: int("d_model", 256, 1)?,
        nhead: int("nhead", 8, 1)?,
        num_encoder_layers: int("num_encoder_layers", 6, 0)?,
        num_decoder_layers: int("num_decoder_layers", 6, 0)?,
        dim_feedforward: int("dim_feedforward", if deformable { 1024 } else { 2048 }, 1)?,
        num_queries: int("num_queries", if deformable { 300 } else { 100 }, 1)?,
        n_points: int("n_points", 4, 1)?,
        num_feature_levels: match kwargs.get("num_feature_levels") {
            None | Some(Value::Null) => None,
            Some(_) => Some(int("num_feature_levels", 0, 1)?),
        },
    };
    let masks = flag("masks", false)?;
    let aux_loss = flag("aux_loss", deformable)?;
    if masks {
        return Err(PluginError::build_failed(format!(
            "ObjectDetectionModelFactory: `framework_masks: true` adds {class}'s mask head \
             (terratorch/models/detr/segmentation.py), which is not ported to terrahost yet; leave masks false"
        )));
    }
    if cfg.d_model % cfg.nhead != 0 {
        return Err(invalid(format!(
            "`framework_d_model` ({}) must be divisible by `framework_nhead` ({}): embed_dim must be divisible \
             by num_heads",
            cfg.d_model, cfg.nhead
        )));
    }
    // PositionEmbeddingSine(d_model // 2) interleaves sin and cos pairs: an odd half fails
    // upstream, and a d_model not divisible by 2 cannot take the encoding.
    if cfg.d_model % 4 != 0 {
        return Err(invalid(format!(
            "`framework_d_model` must be a multiple of 4 (the sine position encoding has d_model // 2 \
             channels per axis in sin/cos pairs), got {}",
            cfg.d_model
        )));
    }
    if deformable && cfg.d_model % GROUPS != 0 {
        return Err(invalid(format!(
            "`framework_d_model` must be a multiple of 32 for deformable-detr (its input projections use \
             GroupNorm(32, d_model): num_channels must be divisible by num_groups), got {}",
            cfg.d_model
        )));
    }
    if cfg.num_decoder_layers == 0 && (deformable || aux_loss) {
        return Err(invalid(format!(
            "`framework_num_decoder_layers` must be at least 1 for {} (upstream stacks the decoder layers' \
             outputs and fails on none)",
            framework.name()
        )));
    }
    let unused: Vec<String> = kwargs
        .keys()
        .filter(|k| declared.iter().any(|(d, read)| d == k && !read))
        .map(|k| format!("framework_{k}"))
        .collect();
    if !unused.is_empty() {
        terrahost_plugin_api::warn!(
            "ObjectDetectionModelFactory: {} only matter(s) in training ({class}'s loss, dropout and auxiliary \
             outputs); terrahost runs inference and does not use them",
            unused.join(", ")
        );
    }
    Ok(cfg)
}
