//! mmsegmentation 1.2.2's `BaseDecodeHead` (`mmseg/models/decode_heads/decode_head.py`),
//! shared by every decode head: its keyword arguments with mmseg's defaults, the input
//! selection (`_init_inputs` / `_transform_inputs`), `cls_seg` (Dropout2d + 1x1
//! `conv_seg`), mmseg's `resize` (`mmseg/models/utils/wrappers.py`), and the registry
//! plumbing of TerraTorch's `MMSegRegistry.build(name, channels, **kwargs)`
//! (`terratorch/registry/mmseg_registry.py`).
//!
//! The losses, sampler and `predict` post-processing belong to mmseg's segmentor and
//! are not part of the module TerraTorch uses; their arguments are accepted and unused.
//! TerraTorch passes a one-entry channel list as the int `in_channels`, so heads that
//! select several maps need at least two entries; it keeps the head as the attribute
//! `decoder` of `MMsegDecoderWrapper`, so every parameter name starts with `decoder.`.
use super::conv_module::{check_conv_cfg, torch_conv2d, ActCfg, ConvModuleCfg, NormCfg};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The attribute under which TerraTorch's `MMsegDecoderWrapper` keeps the head.
pub const WRAPPER_ATTR: &str = "decoder";

/// An invalid-argument error naming argument `name` of the entry being built.
pub fn arg_error(ctx: &BuildCtx<'_, '_>, name: &str, why: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_argument(format!("argument `{name}` of `{}`: {why}", ctx.qualified()))
}

/// Parses a `norm_cfg`-like argument.
pub fn norm_arg(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<Option<NormCfg>> {
    NormCfg::from_json(ctx.args.raw(name).unwrap_or(&Value::Null))
        .map_err(|why| arg_error(ctx, name, why))
}

/// Parses an `act_cfg`-like argument: left out it is the declared default; an
/// explicit null reaches the plugin as absent and is mmseg's `None` (no activation).
pub fn act_arg(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<Option<ActCfg>> {
    match ctx.args.raw(name) {
        Some(v) => ActCfg::from_json(v).map_err(|why| arg_error(ctx, name, why)),
        None => Ok(None),
    }
}

/// How the head picks its input from the list of feature maps (`input_transform`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputTransform {
    /// Resize the selected maps to the first one's size (bilinear) and concatenate them.
    ResizeConcat,
    /// Pass the selected maps on as a list.
    MultipleSelect,
}

impl InputTransform {
    /// Parses mmseg's name; `None` is no transform (one selected map).
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "resize_concat" => Ok(Self::ResizeConcat),
            "multiple_select" => Ok(Self::MultipleSelect),
            other => Err(format!(
                "must be None, \"resize_concat\" or \"multiple_select\", got {other:?}"
            )),
        }
    }

    /// mmseg's name of the transform.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResizeConcat => "resize_concat",
            Self::MultipleSelect => "multiple_select",
        }
    }
}

/// Which feature map(s) the head reads (`in_index`); negative indices count from
/// the end, as in Python.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum InIndex {
    /// One map (with no input transform).
    One(i64),
    /// Several maps (with an input transform), one per channel-list entry.
    Many(Vec<i64>),
}

/// Which input selections a head supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inputs {
    /// One tensor: `input_transform` None (one map) or `"resize_concat"`; the head
    /// builds its layers from one channel count, so `"multiple_select"` is refused.
    One,
    /// `input_transform` is an argument and every value is accepted here; the head
    /// checks the one it needs (LRASPPHead and DPTHead want `"multiple_select"`).
    Declared,
    /// The head forces `input_transform="multiple_select"` (it is not an argument);
    /// `in_index` must list one index per channel-list entry, at least `min` of them.
    Multiple {
        /// Fewest maps the head reads.
        min: usize,
        /// Exactly this many, when the head needs a fixed count.
        exact: Option<usize>,
    },
}

impl Inputs {
    /// A head that reads a list of at least two maps.
    pub const MULTIPLE: Self = Self::Multiple {
        min: 2,
        exact: None,
    };
}

/// The `BaseDecodeHead` configuration of a head (mmseg's defaults in [`BaseCfg::new`]).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct BaseCfg {
    /// The channel list TerraTorch passes (one entry, or one per `in_index` entry
    /// with an input transform).
    pub in_channels: Vec<i64>,
    /// Width of the head before `conv_seg` (required in mmseg).
    pub channels: i64,
    /// Number of classes (required by TerraTorch).
    pub num_classes: i64,
    /// Channels of `conv_seg`: `num_classes`, or 1 for binary segmentation.
    pub out_channels: Option<i64>,
    /// Dropout2d probability before `conv_seg` (training only).
    pub dropout_ratio: f64,
    /// Norm and activation of the head's `ConvModule`s.
    pub conv: ConvModuleCfg,
    /// Which input(s) to read.
    pub in_index: InIndex,
    /// How to combine several inputs.
    pub input_transform: Option<InputTransform>,
    /// `align_corners` of the head's bilinear resizes.
    pub align_corners: bool,
}

impl BaseCfg {
    /// mmseg's defaults for a head on one feature map of `in_channels` channels.
    pub fn new(in_channels: i64, channels: i64, num_classes: i64) -> Self {
        Self {
            in_channels: vec![in_channels],
            channels,
            num_classes,
            out_channels: None,
            dropout_ratio: 0.1,
            conv: ConvModuleCfg::default(),
            in_index: InIndex::One(-1),
            input_transform: None,
            align_corners: false,
        }
    }

    /// Reads the arguments declared by [`head_entry`] and checks them for `inputs`.
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>, inputs: Inputs) -> Result<Self> {
        let conv = ConvModuleCfg {
            norm_cfg: norm_arg(ctx, "norm_cfg")?,
            act_cfg: act_arg(ctx, "act_cfg")?,
        };
        Self::from_ctx_with(ctx, inputs, conv)
    }

    /// [`BaseCfg::from_ctx`] for heads whose `norm_cfg` / `act_cfg` are their own
    /// arguments (not passed to `BaseDecodeHead`): `conv` stands in for them.
    pub fn from_ctx_with(
        ctx: &BuildCtx<'_, '_>,
        inputs: Inputs,
        conv: ConvModuleCfg,
    ) -> Result<Self> {
        let a = &ctx.args;
        check_conv_cfg(a.raw("conv_cfg").unwrap_or(&Value::Null))
            .map_err(|why| arg_error(ctx, "conv_cfg", why))?;
        let input_transform = match inputs {
            Inputs::Multiple { .. } => Some(InputTransform::MultipleSelect),
            Inputs::One | Inputs::Declared => a
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
            conv,
            in_index: a.get("in_index")?,
            input_transform,
            align_corners: a.get("align_corners")?,
        };
        cfg.validate(ctx.name, inputs)
            .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
        Ok(cfg)
    }

    /// The channels `conv_seg` produces.
    pub fn seg_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.num_classes)
    }

    /// The channels of the (transformed) input, mmseg's `self.in_channels` as an int:
    /// the one entry, or the sum with `resize_concat`.
    pub fn in_ch(&self) -> i64 {
        match self.input_transform {
            Some(InputTransform::ResizeConcat) => self.in_channels.iter().sum(),
            _ => self.in_channels.first().copied().unwrap_or(0),
        }
    }

    /// `conv_seg` of this head under `p` (see [`ClsSeg`]).
    pub fn cls_seg(&self, p: &nn::Path) -> ClsSeg {
        ClsSeg::new(
            p / "conv_seg",
            self.channels,
            self.seg_channels(),
            self.dropout_ratio,
        )
    }

    /// Checks what `BaseDecodeHead.__init__` and `_init_inputs` assert for `head`,
    /// with messages that say what to change.
    pub fn validate(&self, head: &str, inputs: Inputs) -> Result<()> {
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
        let n = self.in_channels.len();
        let list_example = (0..n as i64).collect::<Vec<_>>();
        let Some(t) = self.input_transform else {
            if n != 1 {
                return Err(PluginError::invalid_argument(format!(
                    "without `input_transform`, {head} reads one feature map, so the channel list must have one \
                     entry (TerraTorch passes it to mmseg as an int); got {:?}. Select one map first (for example \
                     with a SelectIndices neck) or set input_transform=\"resize_concat\" with one `in_index` per \
                     entry",
                    self.in_channels
                )));
            }
            if let InIndex::Many(ix) = &self.in_index {
                return bad(
                    "in_index",
                    format!("must be one integer when `input_transform` is None, got {ix:?}"),
                );
            }
            return Ok(());
        };
        if t == InputTransform::MultipleSelect && inputs == Inputs::One {
            return bad(
                "input_transform",
                format!(
                    "\"multiple_select\" is not usable with {head}: it keeps in_channels as a list and the head \
                     builds its layers from a single channel count (mmseg fails too); use None or \"resize_concat\""
                ),
            );
        }
        if let Inputs::Multiple { min, exact } = inputs {
            if n < min.max(2) || exact.is_some_and(|e| e != n) {
                let want = match exact {
                    Some(e) => format!("exactly {e}"),
                    None => format!("at least {}", min.max(2)),
                };
                return Err(PluginError::invalid_argument(format!(
                    "{head} reads several feature maps (input_transform=\"multiple_select\"), so the channel list \
                     needs {want} entries, one per `in_index` entry (a one-entry list becomes a single int in \
                     TerraTorch, which mmseg rejects); got {:?}",
                    self.in_channels
                )));
            }
        } else if n < 2 {
            return Err(PluginError::invalid_argument(format!(
                "input_transform={:?} needs a channel list with one entry per `in_index` entry (at least two): a \
                 one-entry list {:?} becomes a single int in TerraTorch, which mmseg rejects",
                t.name(),
                self.in_channels
            )));
        }
        match &self.in_index {
            InIndex::Many(ix) if ix.len() == n => Ok(()),
            other => bad(
                "in_index",
                format!(
                    "must be a list with one index per channel-list entry {:?} (e.g. {list_example:?}) with \
                     input_transform={:?} in {head}, got {}",
                    self.in_channels,
                    t.name(),
                    serde_json::to_string(other).unwrap_or_default()
                ),
            ),
        }
    }

    /// mmseg's `_transform_inputs`: one tensor for None / `resize_concat` (every
    /// selected map resized bilinearly to the first one's size, then concatenated),
    /// the selected maps for `multiple_select`. Checks each map's channels.
    pub fn select(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let pick = |i: i64, c: i64| -> Result<Tensor> {
            let x = &xs[py_index(i, xs.len())?];
            check_map(x, c, &format!("feature map at in_index {i}"))?;
            Ok(x.shallow_clone())
        };
        match (&self.input_transform, &self.in_index) {
            (None, InIndex::One(i)) => Ok(vec![pick(*i, self.in_channels[0])?]),
            (Some(t), InIndex::Many(ix)) => {
                let maps = ix
                    .iter()
                    .zip(&self.in_channels)
                    .map(|(&i, &c)| pick(i, c))
                    .collect::<Result<Vec<_>>>()?;
                if *t == InputTransform::MultipleSelect {
                    return Ok(maps);
                }
                // every map (the first too) goes through the bilinear resize, as in mmseg
                let size = maps[0].size();
                let resized = maps
                    .iter()
                    .map(|x| resize(x, size[2], size[3], self.align_corners))
                    .collect::<Result<Vec<_>>>()?;
                // -> [B, sum(in_channels), h, w]
                Ok(vec![Tensor::f_cat(&resized, 1)?])
            }
            _ => Err(PluginError::forward_failed(
                "unsupported in_index/input_transform combination (not validated)",
            )),
        }
    }

    /// [`BaseCfg::select`] for heads that read one tensor.
    pub fn select_one(&self, xs: &[Tensor]) -> Result<Tensor> {
        Ok(self.select(xs)?.remove(0))
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

/// `F.normalize(x, p, dim)`: divides by the p-norm along `dim`, floored at 1e-12.
pub fn normalize(x: &Tensor, p: f64, dim: i64) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(p, [dim], true)?.f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
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

/// `BaseDecodeHead.cls_seg`: Dropout2d (training only) then a 1x1 classifier, with
/// PyTorch's default init (mmseg's `init_cfg` only applies through `init_weights()`,
/// which TerraTorch does not call).
#[derive(Debug)]
pub struct ClsSeg {
    conv: nn::Conv2D,
    dropout: f64,
}

impl ClsSeg {
    /// A 1x1 classifier from `c_in` to `c_out` at `p` (`conv_seg`, `pam_conv_seg`, ...).
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, dropout: f64) -> Self {
        Self {
            conv: torch_conv2d(p, c_in, c_out, 1, 0, true),
            dropout,
        }
    }

    /// Dropout2d -> conv.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if self.dropout > 0.0 {
            x.f_feature_dropout(self.dropout, train)?
        } else {
            x.shallow_clone()
        };
        Ok(x.apply(&self.conv))
    }
}

/// TerraTorch's message when `num_classes` is missing (`MMSegRegistry.build`). It is
/// the parameter's doc line, so the SDK's missing-argument error carries it.
pub const NUM_CLASSES_REQUIRED: &str = "num_classes is a required argument for mmseg decoders. If you are using an \
                                        mmseg decoder for a regression task please include num_classes=1.";

/// How an entry declares the `BaseDecodeHead` keyword arguments.
#[derive(Clone, Debug)]
pub struct BaseParams {
    /// Whether `input_transform` is a keyword of the head; heads that fix it
    /// (`UPerHead`, `SegformerHead`, ...) pass it to `BaseDecodeHead` themselves, so
    /// giving it again is a Python error.
    pub input_transform: bool,
    /// The default of `norm_cfg` (None in `BaseDecodeHead`, BN in `DPTHead`).
    pub norm_cfg: Value,
    /// Doc line of `norm_cfg`.
    pub norm_cfg_doc: &'static str,
    /// The default of `act_cfg` (ReLU in `BaseDecodeHead`).
    pub act_cfg: Value,
    /// Doc line of `act_cfg`.
    pub act_cfg_doc: &'static str,
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
            norm_cfg_doc:
                "norm after each conv: None, {type: BN|SyncBN, eps, momentum} or {type: GN, num_groups}",
            act_cfg: json!({"type": "ReLU"}),
            act_cfg_doc: "activation after each norm: {type: ReLU|LeakyReLU|GELU|...}, or null for none",
            init_cfg: json!({"type": "Normal", "std": 0.01, "override": {"name": "conv_seg"}}),
            in_index_doc: "feature map(s) to read: an int, or a list with input_transform",
            input_transform_doc:
                "None (one map) or \"resize_concat\" (resize to the first selected map, concatenate)",
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

/// An entry for head `name` taking the channel list: `num_classes` and `channels`
/// first (TerraTorch checks `num_classes` before anything else), then the head's own
/// parameters (`own`), then the `BaseDecodeHead` ones with mmseg's defaults.
pub fn head_entry(
    name: &str,
    doc: &str,
    build: impl Fn(&BuildCtx<'_, '_>) -> Result<ModuleBox> + Send + Sync + 'static,
    own: impl FnOnce(Entry) -> Entry,
    base: BaseParams,
) -> Entry {
    let e = Entry::new(name, doc, build)
        .takes_channels()
        .req("num_classes", ParamType::INT, NUM_CLASSES_REQUIRED)
        .req(
            "channels",
            ParamType::INT,
            "width of the head's convolutions before conv_seg (required by mmseg)",
        );
    let e = own(e)
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
        .opt(
            "dropout_ratio",
            ParamType::FLOAT,
            json!(0.1),
            "Dropout2d probability before conv_seg (training only)",
        )
        .opt(
            "conv_cfg",
            ParamType::DICT,
            Value::Null,
            "conv layer config: None, {type: Conv} or {type: Conv2d}",
        )
        .opt(
            "norm_cfg",
            ParamType::DICT,
            base.norm_cfg,
            base.norm_cfg_doc,
        )
        .opt("act_cfg", ParamType::ANY, base.act_cfg, base.act_cfg_doc)
        .opt(
            "in_index",
            ParamType::INT_OR_INT_LIST,
            json!(-1),
            base.in_index_doc,
        );
    let e = if base.input_transform {
        e.opt(
            "input_transform",
            ParamType::STR,
            Value::Null,
            base.input_transform_doc,
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
        base.init_cfg,
        "mmseg's init_weights config; unused, as TerraTorch never calls init_weights",
    )
}

/// Builds `head` in a fresh VarStore, wrapped as TerraTorch's `MMsegDecoderWrapper`;
/// errors name the entry.
pub fn build_wrapped<D: DecodeHead>(
    ctx: &BuildCtx<'_, '_>,
    head: impl FnOnce(nn::Path) -> Result<D>,
) -> Result<ModuleBox> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MmsegDecoderWrapper::new(vs.root(), head)
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// A decode head: mmseg's `forward` and the `BaseDecodeHead` configuration it was
/// built with. [`MmsegDecoderWrapper`] turns it into a registry [`Model`].
pub trait DecodeHead: Send + 'static {
    /// The `BaseDecodeHead` configuration.
    fn base(&self) -> &BaseCfg;

    /// mmseg's `forward` on the list of feature maps (`train`: the module's mode).
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>>;

    /// The channels of each output: `conv_seg`'s by default.
    fn out_channels(&self) -> Vec<i64> {
        vec![self.base().seg_channels()]
    }
}

/// TerraTorch's `MMsegDecoderWrapper`: holds the head as `decoder` and says that it
/// includes its own classifier.
#[derive(Debug)]
pub struct MmsegDecoderWrapper<D> {
    decoder: D,
}

impl<D: DecodeHead> MmsegDecoderWrapper<D> {
    /// Builds the head with `build` under `root / "decoder"`.
    pub fn new(root: nn::Path, build: impl FnOnce(nn::Path) -> Result<D>) -> Result<Self> {
        Ok(Self {
            decoder: build(&root / WRAPPER_ATTR)?,
        })
    }

    /// The wrapped head.
    pub fn decoder(&self) -> &D {
        &self.decoder
    }
}

impl<D: DecodeHead> Model for MmsegDecoderWrapper<D> {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.decoder.forward(xs, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.decoder.out_channels()
    }

    fn includes_head(&self) -> bool {
        true
    }
}
