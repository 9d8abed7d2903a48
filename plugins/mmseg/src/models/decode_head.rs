//! The parts of mmsegmentation 1.2.2's `BaseDecodeHead`
//! (`mmseg/models/decode_heads/decode_head.py`) that the decode heads besides FCNHead
//! share: its keyword arguments (with mmseg's defaults), the input selection
//! (`_init_inputs` / `_transform_inputs`), `cls_seg` (Dropout2d + 1x1 `conv_seg`) and
//! mmseg's `resize` (`mmseg/models/utils/wrappers.py`).
//!
//! As in TerraTorch's `MMSegRegistry.build`, a one-entry channel list arrives as the
//! int `in_channels`, so heads that select several maps need at least two entries.
use super::conv_module::{check_conv_cfg, ActCfg, ConvModuleCfg, NormCfg};
use super::fcn_head::{InIndex, InputTransform};
use serde_json::{json, Value};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ParamType, PluginError, Result};

/// An invalid-argument error naming argument `name` of the entry being built.
pub fn arg_error(ctx: &BuildCtx<'_, '_>, name: &str, why: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_argument(format!("argument `{name}` of `{}`: {why}", ctx.qualified()))
}

/// How a head declares the `BaseDecodeHead` keyword arguments.
#[derive(Clone, Debug)]
pub struct BaseParams {
    /// Whether `input_transform` is a keyword of the head; heads that fix it
    /// (`UPerHead`, `SegformerHead`, ...) pass it to `BaseDecodeHead` themselves, so
    /// giving it again is a Python error.
    pub input_transform: bool,
    /// The default of `norm_cfg` (None in `BaseDecodeHead`, BN in `DPTHead`).
    pub norm_cfg: Value,
    /// The default of `init_cfg`.
    pub init_cfg: Value,
    /// Doc line of `in_index`.
    pub in_index_doc: &'static str,
    /// Doc line of `input_transform` (when declared).
    pub input_transform_doc: &'static str,
}

impl Default for BaseParams {
    fn default() -> Self {
        Self {
            input_transform: true,
            norm_cfg: Value::Null,
            init_cfg: json!({"type": "Normal", "std": 0.01, "override": {"name": "conv_seg"}}),
            in_index_doc: "feature map(s) to read: an int, or a list with input_transform",
            input_transform_doc:
                "None (one map) or \"resize_concat\" (resize to the first selected map, \
                                  concatenate)",
        }
    }
}

impl BaseParams {
    /// For heads that fix `input_transform="multiple_select"` themselves.
    pub fn multiple_select() -> Self {
        Self {
            input_transform: false,
            in_index_doc: "the feature maps to read, one index per channel-list entry (the mmseg default -1 is \
                           refused: this head needs a list)",
            ..Self::default()
        }
    }
}

/// A decoder entry taking the channel list, with the two arguments every mmseg head
/// requires (`num_classes`, `channels`).
pub fn head_entry(
    name: &str,
    doc: &str,
    build: impl Fn(&BuildCtx<'_, '_>) -> Result<terrahost_plugin_api::ModuleBox> + Send + Sync + 'static,
) -> Entry {
    Entry::new(name, doc, build)
        .takes_channels()
        .req("num_classes", ParamType::INT, crate::NUM_CLASSES_REQUIRED)
        .req(
            "channels",
            ParamType::INT,
            "width of the head's convolutions before conv_seg (required by mmseg)",
        )
}

/// Declares the `BaseDecodeHead` keyword arguments (after the head's own).
pub fn base_params(e: Entry, p: &BaseParams) -> Entry {
    let e = e
        .opt(
            "out_channels",
            ParamType::INT,
            Value::Null,
            "conv_seg channels: None for num_classes, or 1 for binary segmentation",
        )
        .opt(
            "threshold",
            ParamType::FLOAT,
            Value::Null,
            "binary threshold of mmseg's predict (0.3 with out_channels=1); no effect on forward",
        )
        .opt("dropout_ratio", ParamType::FLOAT, json!(0.1), "Dropout2d probability before conv_seg (training only)")
        .opt("conv_cfg", ParamType::DICT, Value::Null, "conv layer config: None, {type: Conv} or {type: Conv2d}")
        .opt(
            "norm_cfg",
            ParamType::DICT,
            p.norm_cfg.clone(),
            "norm after each conv: None, {type: BN|SyncBN, eps, momentum} or {type: GN, num_groups}",
        )
        .opt(
            "act_cfg",
            ParamType::ANY,
            json!({"type": "ReLU"}),
            "activation after each norm: {type: ReLU|LeakyReLU|GELU|...}, or null for none",
        )
        .opt("in_index", ParamType::INT_OR_INT_LIST, json!(-1), p.in_index_doc);
    let e = if p.input_transform {
        e.opt(
            "input_transform",
            ParamType::STR,
            Value::Null,
            p.input_transform_doc,
        )
    } else {
        e
    };
    e.opt(
        "loss_decode",
        ParamType::ANY,
        json!({"type": "CrossEntropyLoss", "use_sigmoid": false, "loss_weight": 1.0}),
        "mmseg's loss config; accepted for config compatibility, unused (TerraTorch computes losses itself)",
    )
    .opt(
        "ignore_index",
        ParamType::INT,
        json!(255),
        "label ignored by mmseg's loss; accepted for config compatibility, unused",
    )
    .opt(
        "sampler",
        ParamType::DICT,
        Value::Null,
        "mmseg's pixel sampler for its loss; accepted for config compatibility, unused",
    )
    .opt("align_corners", ParamType::BOOL, json!(false), "align_corners of the head's bilinear resizes")
    .opt(
        "init_cfg",
        ParamType::ANY,
        p.init_cfg.clone(),
        "mmseg's init_weights config; unused, as TerraTorch never calls init_weights",
    )
}

/// Declares `FCNHead`'s own keyword arguments and then the `BaseDecodeHead` ones,
/// as the `FCNHead` entry does (for heads derived from it).
pub fn fcn_params(e: Entry) -> Entry {
    let e = e
        .opt(
            "num_convs",
            ParamType::INT,
            json!(2),
            "number of convs before the classifier",
        )
        .opt(
            "kernel_size",
            ParamType::INT,
            json!(3),
            "kernel size of the convs",
        )
        .opt(
            "concat_input",
            ParamType::BOOL,
            json!(true),
            "concatenate the input with the convs' output and fuse them (conv_cat)",
        )
        .opt(
            "dilation",
            ParamType::INT,
            json!(1),
            "dilation of FCNHead's convs",
        );
    base_params(e, &BaseParams::default())
}

/// Parses a `norm_cfg`-like argument.
pub fn norm_arg(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<Option<NormCfg>> {
    NormCfg::from_json(ctx.args.raw(name).unwrap_or(&Value::Null))
        .map_err(|why| arg_error(ctx, name, why))
}

/// Parses an `act_cfg`-like argument: left out it is the declared default; an
/// explicit null is mmseg's `None` (no activation).
pub fn act_arg(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<Option<ActCfg>> {
    match ctx.args.raw(name) {
        Some(v) => ActCfg::from_json(v).map_err(|why| arg_error(ctx, name, why)),
        None => Ok(None),
    }
}

/// The `BaseDecodeHead` configuration of a head.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseCfg {
    /// The channel list TerraTorch passes.
    pub in_channels: Vec<i64>,
    /// Width before `conv_seg`.
    pub channels: i64,
    /// Number of classes.
    pub num_classes: i64,
    /// Channels of `conv_seg` (`num_classes` or 1).
    pub out_channels: Option<i64>,
    /// Dropout2d probability before `conv_seg`.
    pub dropout_ratio: f64,
    /// `norm_cfg` and `act_cfg` of the head's `ConvModule`s.
    pub conv: ConvModuleCfg,
    /// Which map(s) to read.
    pub in_index: InIndex,
    /// How to combine several maps.
    pub input_transform: Option<InputTransform>,
    /// `align_corners` of the bilinear resizes.
    pub align_corners: bool,
}

impl BaseCfg {
    /// Reads the arguments declared by [`base_params`]; `forced` is the transform a
    /// head fixes itself (then `input_transform` is not an argument).
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>, forced: Option<InputTransform>) -> Result<Self> {
        let a = &ctx.args;
        check_conv_cfg(a.raw("conv_cfg").unwrap_or(&Value::Null))
            .map_err(|why| arg_error(ctx, "conv_cfg", why))?;
        let input_transform = match forced {
            Some(t) => Some(t),
            None => a
                .opt::<String>("input_transform")?
                .map(|s| InputTransform::parse(&s))
                .transpose()
                .map_err(|why| arg_error(ctx, "input_transform", why))?,
        };
        let cfg = Self {
            in_channels: ctx.channels.clone(),
            channels: a.get("channels")?,
            num_classes: a.get("num_classes")?,
            out_channels: a.opt("out_channels")?,
            dropout_ratio: a.get("dropout_ratio")?,
            conv: ConvModuleCfg {
                norm_cfg: norm_arg(ctx, "norm_cfg")?,
                act_cfg: act_arg(ctx, "act_cfg")?,
            },
            in_index: a.get("in_index")?,
            input_transform,
            align_corners: a.get("align_corners")?,
        };
        cfg.validate()
            .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
        Ok(cfg)
    }

    /// The channels `conv_seg` produces.
    pub fn seg_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.num_classes)
    }

    /// What `BaseDecodeHead.__init__` and `_init_inputs` assert.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, what: String| {
            Err(PluginError::invalid_argument(format!(
                "argument `{name}` {what}"
            )))
        };
        if self.in_channels.is_empty() || self.in_channels.iter().any(|&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "the channel list must be non-empty with positive entries, got {:?}",
                self.in_channels
            )));
        }
        if self.channels <= 0 {
            return bad(
                "channels",
                format!("must be positive, got {}", self.channels),
            );
        }
        if self.num_classes <= 0 {
            return bad(
                "num_classes",
                format!(
                    "must be positive, got {} (use 1 for regression)",
                    self.num_classes
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.dropout_ratio) {
            return bad(
                "dropout_ratio",
                format!("must be in [0, 1], got {}", self.dropout_ratio),
            );
        }
        if let Some(out) = self.out_channels {
            if out != self.num_classes && out != 1 {
                return bad(
                    "out_channels",
                    format!(
                        "must equal num_classes, or be 1 for binary segmentation (num_classes=2); got \
                         out_channels={out} and num_classes={}",
                        self.num_classes
                    ),
                );
            }
        }
        match (self.input_transform, &self.in_index) {
            (None, _) if self.in_channels.len() != 1 => Err(PluginError::invalid_argument(format!(
                "without `input_transform`, the head reads one feature map, so the channel list must have one entry \
                 (TerraTorch passes it to mmseg as an int); got {:?}. Select one map first (for example with a \
                 SelectIndices neck) or set input_transform=\"resize_concat\" with one `in_index` per entry",
                self.in_channels
            ))),
            (None, InIndex::Many(ix)) => {
                bad("in_index", format!("must be one integer when `input_transform` is None, got {ix:?}"))
            }
            (Some(t), _) if self.in_channels.len() < 2 => Err(PluginError::invalid_argument(format!(
                "input_transform={:?} needs a channel list with one entry per `in_index` entry (at least two): a \
                 one-entry list {:?} becomes a single int in TerraTorch, which mmseg rejects",
                t.name(),
                self.in_channels
            ))),
            (Some(t), InIndex::One(i)) => bad(
                "in_index",
                format!(
                    "must be a list (one index per channel-list entry, e.g. {:?}) with input_transform={:?}, got {i}",
                    (0..self.in_channels.len() as i64).collect::<Vec<_>>(),
                    t.name()
                ),
            ),
            (Some(_), InIndex::Many(ix)) if ix.len() != self.in_channels.len() => bad(
                "in_index",
                format!("must have one entry per channel-list entry ({:?}), got {ix:?}", self.in_channels),
            ),
            _ => Ok(()),
        }
    }

    /// mmseg's `self.in_channels` for heads reading one tensor: the one entry, or the
    /// sum with `resize_concat`.
    pub fn single_in_channels(&self) -> i64 {
        match self.input_transform {
            Some(InputTransform::ResizeConcat) => self.in_channels.iter().sum(),
            _ => self.in_channels[0],
        }
    }

    /// Refuses `multiple_select` for a head that reads one tensor (`what` names the head).
    pub fn require_single(&self, what: &str) -> Result<()> {
        if self.input_transform == Some(InputTransform::MultipleSelect) {
            return Err(PluginError::invalid_argument(format!(
                "argument `input_transform`: \"multiple_select\" is not usable with {what}, which builds its layers \
                 from one channel count (mmseg fails too); use None or \"resize_concat\""
            )));
        }
        Ok(())
    }

    fn pick<'a>(&self, xs: &'a [Tensor], i: i64, channels: i64) -> Result<&'a Tensor> {
        let x = &xs[py_index(i, xs.len())?];
        let size = x.size();
        if size.len() != 4 || size[1] != channels {
            return Err(PluginError::forward_failed(format!(
                "feature map at in_index {i} must be [B, {channels}, H, W], got shape {size:?}"
            )));
        }
        Ok(x)
    }

    /// `_transform_inputs` for `multiple_select`: the selected maps, checked against
    /// the channel list.
    pub fn select_many(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        match &self.in_index {
            InIndex::Many(ix) => ix
                .iter()
                .zip(&self.in_channels)
                .map(|(&i, &c)| Ok(self.pick(xs, i, c)?.shallow_clone()))
                .collect(),
            InIndex::One(_) => Err(PluginError::forward_failed(
                "in_index must be a list (not validated)",
            )),
        }
    }

    /// `_transform_inputs` for None (one map) or `resize_concat` (every selected map
    /// resized bilinearly to the first one's size, then concatenated).
    pub fn select_one(&self, xs: &[Tensor]) -> Result<Tensor> {
        match (&self.input_transform, &self.in_index) {
            (Some(InputTransform::ResizeConcat), InIndex::Many(_)) => {
                let selected = self.select_many(xs)?;
                let size = selected[0].size();
                let resized = selected
                    .iter()
                    .map(|x| resize(x, size[2], size[3], self.align_corners))
                    .collect::<Result<Vec<_>>>()?;
                // -> [B, sum(in_channels), h, w]
                Ok(Tensor::f_cat(&resized, 1)?)
            }
            (None, InIndex::One(i)) => Ok(self.pick(xs, *i, self.in_channels[0])?.shallow_clone()),
            _ => Err(PluginError::forward_failed(
                "unsupported in_index/input_transform combination (not validated)",
            )),
        }
    }
}

impl InputTransform {
    /// mmseg's name of the transform.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResizeConcat => "resize_concat",
            Self::MultipleSelect => "multiple_select",
        }
    }
}

/// Resolves a Python-style index into a list of `len` items.
pub fn py_index(i: i64, len: usize) -> Result<usize> {
    let n = len as i64;
    let j = if i < 0 { i + n } else { i };
    if (0..n).contains(&j) {
        Ok(j as usize)
    } else {
        Err(PluginError::forward_failed(format!(
            "in_index {i} is out of range for {len} feature map(s)"
        )))
    }
}

/// mmseg's `resize(x, size=(h, w), mode='bilinear', align_corners)`.
pub fn resize(x: &Tensor, h: i64, w: i64, align_corners: bool) -> Result<Tensor> {
    Ok(x.f_upsample_bilinear2d([h, w], align_corners, None, None)?)
}

/// mmseg's `Upsample(scale_factor=s, mode='bilinear')`: to `int(h * s)` x `int(w * s)`.
pub fn upsample(x: &Tensor, scale: f64, align_corners: bool) -> Result<Tensor> {
    let size = x.size();
    resize(
        x,
        (size[2] as f64 * scale) as i64,
        (size[3] as f64 * scale) as i64,
        align_corners,
    )
}

/// Checks that `x` is `[B, c, H, W]`.
pub fn check_map(x: &Tensor, c: i64, what: &str) -> Result<()> {
    let size = x.size();
    if size.len() != 4 || size[1] != c {
        return Err(PluginError::forward_failed(format!(
            "{what} must be [B, {c}, H, W], got shape {size:?}"
        )));
    }
    Ok(())
}

/// `cls_seg`: Dropout2d (training only) and the 1x1 `conv_seg`.
#[derive(Debug)]
pub struct ClsSeg {
    conv_seg: nn::Conv2D,
    dropout_ratio: f64,
}

impl ClsSeg {
    /// `conv_seg` from `channels` to `out` channels under `p / "conv_seg"`, with
    /// PyTorch's default init (mmseg's `init_cfg` only applies through
    /// `init_weights()`, which TerraTorch does not call).
    pub fn new(p: &nn::Path, channels: i64, out: i64, dropout_ratio: f64) -> Self {
        let bound = 1.0 / (channels as f64).sqrt();
        let conv_seg = nn::conv2d(
            p / "conv_seg",
            channels,
            out,
            1,
            nn::ConvConfig {
                ws_init: nn::Init::Kaiming {
                    dist: nn::init::NormalOrUniform::Uniform,
                    fan: nn::init::FanInOut::FanIn,
                    non_linearity: nn::init::NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
                },
                bs_init: nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                ..Default::default()
            },
        );
        Self {
            conv_seg,
            dropout_ratio,
        }
    }

    /// Dropout2d then `conv_seg`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if self.dropout_ratio > 0.0 {
            x.f_feature_dropout(self.dropout_ratio, train)?
        } else {
            x.shallow_clone()
        };
        Ok(x.apply(&self.conv_seg))
    }
}
