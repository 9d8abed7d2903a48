//! Pieces shared by the attention and context decode heads of mmsegmentation 1.2.2:
//! the `BaseDecodeHead` arguments and input selection
//! (`mmseg/models/decode_heads/decode_head.py`: `_init_inputs`, `_transform_inputs`,
//! `cls_seg`), mmseg's generic `SelfAttentionBlock`
//! (`mmseg/models/utils/self_attention_block.py`), `resize`
//! (`mmseg/models/utils/wrappers.py`) and the registry plumbing that turns
//! TerraTorch's `MMSegRegistry.build(name, channels, **kwargs)` call into a head.
use super::conv_module::{check_conv_cfg, ActCfg, ConvModule, ConvModuleCfg, NormCfg};
use super::fcn_head::{InIndex, InputTransform, MmsegDecoderWrapper};
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// An invalid-argument error naming `name` of the entry being built.
pub fn arg_error(ctx: &BuildCtx<'_, '_>, name: &str, why: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_argument(format!("argument `{name}` of `{}`: {why}", ctx.qualified()))
}

/// Which input selections a head supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inputs {
    /// One tensor: `input_transform` None (one map) or `"resize_concat"`.
    One,
    /// One map only: the head uses `in_channels` as an int (no `"resize_concat"`).
    OneMap,
    /// The head forces `input_transform="multiple_select"` (it is not an argument);
    /// `in_index` must list one index per channel-list entry, at least `min` of them.
    Multiple {
        /// Fewest maps the head reads.
        min: usize,
        /// Exactly this many, when the head needs a fixed count.
        exact: Option<usize>,
    },
}

/// The `BaseDecodeHead` arguments every head takes (mmseg's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct BaseCfg {
    /// The channel list TerraTorch passes.
    pub in_channels: Vec<i64>,
    /// Width of the head before `conv_seg`.
    pub channels: i64,
    /// Number of classes.
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
    /// `align_corners` of bilinear resizes.
    pub align_corners: bool,
}

impl BaseCfg {
    /// Reads the `BaseDecodeHead` arguments of `ctx` and checks them for `inputs`.
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>, inputs: Inputs) -> Result<Self> {
        let a = &ctx.args;
        check_conv_cfg(a.raw("conv_cfg").unwrap_or(&Value::Null))
            .map_err(|why| arg_error(ctx, "conv_cfg", why))?;
        let norm_cfg = NormCfg::from_json(a.raw("norm_cfg").unwrap_or(&Value::Null))
            .map_err(|why| arg_error(ctx, "norm_cfg", why))?;
        // An explicit null reaches us as absent: mmseg's act_cfg=None.
        let act_cfg = match a.raw("act_cfg") {
            Some(v) => ActCfg::from_json(v).map_err(|why| arg_error(ctx, "act_cfg", why))?,
            None => None,
        };
        let input_transform = match inputs {
            Inputs::Multiple { .. } => Some(InputTransform::MultipleSelect),
            _ => a
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
            conv: ConvModuleCfg { norm_cfg, act_cfg },
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

    /// The channels of the (transformed) input: mmseg's `self.in_channels` as an int.
    pub fn in_ch(&self) -> i64 {
        match self.input_transform {
            Some(InputTransform::ResizeConcat) => self.in_channels.iter().sum(),
            _ => self.in_channels.first().copied().unwrap_or(0),
        }
    }

    /// Checks what mmseg asserts, with messages that say what to change.
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
        match inputs {
            Inputs::Multiple { min, exact } => {
                let n = self.in_channels.len();
                if n < 2 || n < min || exact.is_some_and(|e| e != n) {
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
                match &self.in_index {
                    InIndex::Many(ix) if ix.len() == n => {}
                    other => {
                        return bad(
                            "in_index",
                            format!(
                                "must be a list with one index per channel-list entry ({:?}) for {head}, got {}",
                                self.in_channels,
                                serde_json::to_string(other).unwrap_or_default()
                            ),
                        )
                    }
                }
            }
            Inputs::One | Inputs::OneMap => match (self.input_transform, &self.in_index) {
                (None, _) if self.in_channels.len() != 1 => {
                    return Err(PluginError::invalid_argument(format!(
                        "without `input_transform`, {head} reads one feature map, so the channel list must have one \
                         entry (TerraTorch passes it to mmseg as an int); got {:?}. Select one map first (for \
                         example with a SelectIndices neck){}",
                        self.in_channels,
                        if inputs == Inputs::One {
                            " or set input_transform=\"resize_concat\" with one `in_index` per entry"
                        } else {
                            ""
                        }
                    )))
                }
                (None, InIndex::Many(ix)) => {
                    return bad("in_index", format!("must be one integer when `input_transform` is None, got {ix:?}"))
                }
                (Some(InputTransform::MultipleSelect), _) => {
                    return bad(
                        "input_transform",
                        format!(
                            "\"multiple_select\" is not usable with {head}: it keeps in_channels as a list and the \
                             head builds its layers from a single channel count (mmseg fails too){}",
                            if inputs == Inputs::One { "; use \"resize_concat\"" } else { "" }
                        ),
                    )
                }
                (Some(InputTransform::ResizeConcat), _) if inputs == Inputs::OneMap => {
                    return bad(
                        "input_transform",
                        format!(
                            "\"resize_concat\" is not usable with {head}: it uses in_channels as an int (mmseg \
                             fails too); leave it None and pass one map"
                        ),
                    )
                }
                (Some(InputTransform::ResizeConcat), _) if self.in_channels.len() < 2 => {
                    return Err(PluginError::invalid_argument(format!(
                        "input_transform=\"resize_concat\" needs a channel list with one entry per `in_index` entry; \
                         a one-entry list {:?} becomes a single int in TerraTorch, which mmseg rejects",
                        self.in_channels
                    )))
                }
                (Some(InputTransform::ResizeConcat), InIndex::One(i)) => {
                    return bad(
                        "in_index",
                        format!("must be a list (one index per channel-list entry) with \"resize_concat\", got {i}"),
                    )
                }
                (Some(InputTransform::ResizeConcat), InIndex::Many(ix)) if ix.len() != self.in_channels.len() => {
                    return bad(
                        "in_index",
                        format!("must have one entry per channel-list entry ({:?}), got {ix:?}", self.in_channels),
                    )
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// mmseg's `_transform_inputs`: one tensor for None / `resize_concat`, the
    /// selected maps for `multiple_select`. Checks each map's channels.
    pub fn select(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let pick = |i: i64, c: i64| -> Result<Tensor> {
            let x = &xs[py_index(i, xs.len())?];
            let size = x.size();
            if size.len() != 4 || size[1] != c {
                return Err(PluginError::forward_failed(format!(
                    "feature map at in_index {i} must be [B, {c}, H, W], got shape {size:?}"
                )));
            }
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
                let size = maps[0].size();
                let resized = maps
                    .iter()
                    .map(|x| resize_bilinear(x, size[2], size[3], self.align_corners))
                    .collect::<Result<Vec<_>>>()?;
                // -> [B, sum(in_channels), h, w]
                Ok(vec![Tensor::f_cat(&resized, 1)?])
            }
            _ => Err(PluginError::forward_failed(
                "unsupported in_index/input_transform combination (not validated)",
            )),
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

/// mmseg's `resize(x, size, mode="bilinear", align_corners)`.
pub fn resize_bilinear(x: &Tensor, h: i64, w: i64, align_corners: bool) -> Result<Tensor> {
    Ok(x.f_upsample_bilinear2d([h, w], align_corners, None, None)?)
}

/// `F.normalize(x, p, dim)`: divides by the p-norm along `dim`, floored at 1e-12.
pub fn normalize(x: &Tensor, p: f64, dim: i64) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(p, [dim], true)?.f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
}

/// `nn.Conv2d(c_in, c_out, k, padding=pad, bias=bias)` with PyTorch's default init.
pub fn torch_conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            padding,
            bias,
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
    )
}

/// `nn.Linear(c_in, c_out, bias)` with PyTorch's default init.
pub fn torch_linear(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Uniform,
                fan: nn::init::FanInOut::FanIn,
                non_linearity: nn::init::NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
            },
            bs_init: bias.then_some(nn::Init::Uniform {
                lo: -bound,
                up: bound,
            }),
            bias,
        },
    )
}

/// `BaseDecodeHead.cls_seg`: Dropout2d (training only) then a 1x1 classifier.
#[derive(Debug)]
pub struct ClsSeg {
    conv: nn::Conv2D,
    dropout: f64,
}

impl ClsSeg {
    /// A 1x1 classifier from `c_in` to `c_out` under `p` (`conv_seg`, `pam_conv_seg`, ...).
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

/// One projection layer of a [`SelfAttentionBlock`].
#[derive(Debug)]
enum ProjLayer {
    Plain(nn::Conv2D),
    Module(ConvModule),
}

/// `SelfAttentionBlock.build_project`: `num_convs` 1x1 convs (plain with bias, or
/// `ConvModule`s); one conv sits at `p` itself, several at `p.0`, `p.1`, ...
#[derive(Debug)]
pub struct Project {
    layers: Vec<ProjLayer>,
}

impl Project {
    /// Builds the projection from `c_in` to `c_out`.
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        num_convs: usize,
        module: bool,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let layers = (0..num_convs.max(1))
            .map(|i| {
                let lp = if num_convs > 1 { &p / i } else { p.clone() };
                let c = if i == 0 { c_in } else { c_out };
                Ok(if module {
                    ProjLayer::Module(ConvModule::new(lp, c, c_out, 1, 0, 1, cfg)?)
                } else {
                    ProjLayer::Plain(torch_conv2d(lp, c, c_out, 1, 0, true))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Applies the convs in order.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = match l {
                ProjLayer::Plain(c) => y.apply(c),
                ProjLayer::Module(m) => m.forward(&y, train)?,
            };
        }
        Ok(y)
    }
}

/// The constructor arguments of mmseg's `SelfAttentionBlock`.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    /// Channels of the key (and value) features.
    pub key_in_channels: i64,
    /// Channels of the query features.
    pub query_in_channels: i64,
    /// Channels of the key/query projections.
    pub channels: i64,
    /// Channels of the output.
    pub out_channels: i64,
    /// Whether key and query share one projection (`query_project` is `key_project`).
    pub share_key_query: bool,
    /// Max-pool kernel applied to the projected query.
    pub query_downsample: Option<i64>,
    /// Pyramid pooling (ANN's `PPMConcat`) applied to the projected key and value.
    pub key_pool_scales: Option<Vec<i64>>,
    /// Convs in each key/query projection.
    pub key_query_num_convs: usize,
    /// Convs in the value (and out) projections.
    pub value_out_num_convs: usize,
    /// Key/query projections are `ConvModule`s (else plain convs with bias).
    pub key_query_norm: bool,
    /// Value/out projections are `ConvModule`s.
    pub value_out_norm: bool,
    /// Scale the similarity by `channels ** -0.5`.
    pub matmul_norm: bool,
    /// Project the context from `channels` to `out_channels` (`out_project`).
    pub with_out: bool,
}

/// mmseg's `SelfAttentionBlock`: softmax(q k^T) v over flattened positions.
#[derive(Debug)]
pub struct SelfAttentionBlock {
    key_project: Project,
    query_project: Project,
    value_project: Project,
    out_project: Option<Project>,
    spec: AttentionSpec,
}

impl SelfAttentionBlock {
    /// Builds the block under `p` (`key_project`, `query_project`, `value_project`, `out_project`).
    pub fn new(p: &nn::Path, spec: AttentionSpec, cfg: &ConvModuleCfg) -> Result<Self> {
        let s = &spec;
        let key_project = Project::new(
            p / "key_project",
            s.key_in_channels,
            s.channels,
            s.key_query_num_convs,
            s.key_query_norm,
            cfg,
        )?;
        // A shared projection is one module under two names in PyTorch's state_dict;
        // both keys exist here too (see `forward` for which one is used).
        let query_project = Project::new(
            p / "query_project",
            s.query_in_channels,
            s.channels,
            s.key_query_num_convs,
            s.key_query_norm,
            cfg,
        )?;
        let value_project = Project::new(
            p / "value_project",
            s.key_in_channels,
            if s.with_out {
                s.channels
            } else {
                s.out_channels
            },
            s.value_out_num_convs,
            s.value_out_norm,
            cfg,
        )?;
        let out_project = s
            .with_out
            .then(|| {
                Project::new(
                    p / "out_project",
                    s.channels,
                    s.out_channels,
                    s.value_out_num_convs,
                    s.value_out_norm,
                    cfg,
                )
            })
            .transpose()?;
        Ok(Self {
            key_project,
            query_project,
            value_project,
            out_project,
            spec,
        })
    }

    /// ANN's `PPMConcat`: adaptive average pools, flattened and concatenated.
    fn key_pool(&self, x: &Tensor) -> Result<Tensor> {
        match &self.spec.key_pool_scales {
            None => Ok(x.shallow_clone()),
            Some(scales) => {
                let (b, c) = (x.size()[0], x.size()[1]);
                let outs = scales
                    .iter()
                    .map(|&s| Ok(x.f_adaptive_avg_pool2d([s, s])?.f_reshape([b, c, -1])?))
                    .collect::<Result<Vec<_>>>()?;
                // [B, C, sum(s*s)]
                Ok(Tensor::f_cat(&outs, 2)?)
            }
        }
    }

    /// Attention of `query_feats` over `key_feats`; the context takes the query's
    /// spatial size.
    pub fn forward(&self, query_feats: &Tensor, key_feats: &Tensor, train: bool) -> Result<Tensor> {
        let qsize = query_feats.size();
        let b = qsize[0];
        let mut query = self.query_project.forward(query_feats, train)?;
        if let Some(k) = self.spec.query_downsample {
            query = query.f_max_pool2d([k, k], [k, k], [0, 0], [1, 1], false)?;
        }
        let qs = query.size();
        // [B, C, h, w] -> [B, h*w, C]
        let query = query.f_reshape([qs[0], qs[1], -1])?.f_permute([0, 2, 1])?;
        // PyTorch loads a shared module's weights twice, the `query_project` keys
        // last, so those are the ones in effect.
        let key_proj = if self.spec.share_key_query {
            &self.query_project
        } else {
            &self.key_project
        };
        let mut key = key_proj.forward(key_feats, train)?;
        let mut value = self.value_project.forward(key_feats, train)?;
        if self.spec.key_pool_scales.is_some() {
            key = self.key_pool(&key)?;
            value = self.key_pool(&value)?;
        }
        let (ks, vs) = (key.size(), value.size());
        let key = key.f_reshape([ks[0], ks[1], -1])?;
        let value = value.f_reshape([vs[0], vs[1], -1])?.f_permute([0, 2, 1])?;
        let mut sim = query.f_matmul(&key)?;
        if self.spec.matmul_norm {
            sim = sim.f_mul_scalar((self.spec.channels as f64).powf(-0.5))?;
        }
        let sim = sim.f_softmax(-1, None)?;
        // [B, Nq, C'] -> [B, C', h, w]
        let context = sim.f_matmul(&value)?.f_permute([0, 2, 1])?.f_contiguous()?;
        let context = context.f_reshape([b, -1, qsize[2], qsize[3]])?;
        match &self.out_project {
            Some(p) => p.forward(&context, train),
            None => Ok(context),
        }
    }
}

/// Which `BaseDecodeHead` parameters an entry declares.
#[derive(Clone, Copy, Debug)]
pub struct BaseParams {
    /// Declare `input_transform` (heads that force it must not).
    pub input_transform: bool,
    /// The default `act_cfg` (and whether `norm_cfg`/`act_cfg` belong to the head).
    pub act_default: &'static str,
}

impl Default for BaseParams {
    fn default() -> Self {
        Self {
            input_transform: true,
            act_default: "ReLU",
        }
    }
}

/// An entry for head `name`: `num_classes` and `channels` first (TerraTorch checks
/// `num_classes` before anything else), then the head's own parameters (`own`),
/// then the `BaseDecodeHead` ones with mmseg's defaults.
pub fn head_entry(
    name: &str,
    doc: &str,
    build: impl Fn(&BuildCtx<'_, '_>) -> Result<ModuleBox> + Send + Sync + 'static,
    own: impl FnOnce(Entry) -> Entry,
    base: BaseParams,
) -> Entry {
    let e = Entry::new(name, doc, build)
        .takes_channels()
        .req("num_classes", ParamType::INT, crate::NUM_CLASSES_REQUIRED)
        .req(
            "channels",
            ParamType::INT,
            "width of the head before conv_seg (required by mmseg)",
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
        .opt("dropout_ratio", ParamType::FLOAT, json!(0.1), "Dropout2d probability before conv_seg (training only)")
        .opt("conv_cfg", ParamType::DICT, Value::Null, "conv layer config: None, {type: Conv} or {type: Conv2d}")
        .opt(
            "norm_cfg",
            ParamType::DICT,
            Value::Null,
            "norm after each ConvModule conv: None, {type: BN|SyncBN, eps, momentum} or {type: GN, num_groups}",
        )
        .opt(
            "act_cfg",
            ParamType::ANY,
            json!({"type": base.act_default}),
            "activation of each ConvModule: {type: ReLU|LeakyReLU|GELU|...}, or null for none",
        )
        .opt(
            "in_index",
            ParamType::INT_OR_INT_LIST,
            json!(-1),
            if base.input_transform {
                "feature map(s) to read: an int, or a list with input_transform"
            } else {
                "feature maps to read: a list, one index per channel-list entry (required in practice)"
            },
        );
    let e = if base.input_transform {
        e.opt(
            "input_transform",
            ParamType::STR,
            Value::Null,
            "None (one map) or \"resize_concat\" (resize to the first selected map, concatenate)",
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
    .opt("ignore_index", ParamType::INT, json!(255), "label ignored by mmseg's loss; accepted for config compatibility, unused")
    .opt("sampler", ParamType::DICT, Value::Null, "mmseg's pixel sampler for its loss; accepted for config compatibility, unused")
    .opt("align_corners", ParamType::BOOL, json!(false), "align_corners of the head's bilinear resizes")
    .opt(
        "init_cfg",
        ParamType::ANY,
        json!({"type": "Normal", "std": 0.01, "override": {"name": "conv_seg"}}),
        "mmseg's init_weights config; unused, as TerraTorch never calls init_weights",
    )
}

/// Builds `head` in a fresh VarStore, wrapped as TerraTorch's `MMsegDecoderWrapper`.
pub fn build_wrapped<D: Model>(
    ctx: &BuildCtx<'_, '_>,
    head: impl FnOnce(nn::Path) -> Result<D>,
) -> Result<ModuleBox> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MmsegDecoderWrapper::new(vs.root(), head)?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// Reads a list-of-ints argument that Python passes as a tuple.
pub fn int_list(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<Vec<i64>> {
    ctx.args.get::<Vec<i64>>(name)
}

/// The `FCNHead` arguments that FCNHead subclasses (NLHead, GCHead) still take;
/// they fix `num_convs=2` themselves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FcnArgs {
    /// Kernel size of the convs and of `conv_cat`.
    pub kernel_size: i64,
    /// Fuse the input with the convs' output (`conv_cat`).
    pub concat_input: bool,
    /// Dilation of the convs.
    pub dilation: i64,
}

impl FcnArgs {
    /// Reads and checks them.
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>) -> Result<Self> {
        let a = &ctx.args;
        let s = Self {
            kernel_size: a.get("kernel_size")?,
            concat_input: a.get("concat_input")?,
            dilation: a.get("dilation")?,
        };
        a.ensure(
            s.kernel_size > 0,
            "kernel_size",
            format_args!("must be positive, got {}", s.kernel_size),
        )?;
        a.ensure(
            s.dilation > 0,
            "dilation",
            format_args!("must be a positive integer, got {}", s.dilation),
        )?;
        Ok(s)
    }

    /// Declares them with FCNHead's defaults.
    pub fn declare(e: Entry) -> Entry {
        e.opt(
            "kernel_size",
            ParamType::INT,
            json!(3),
            "kernel size of the two convs and of conv_cat",
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
            "dilation of the two convs",
        )
    }
}

/// `FCNHead`'s layers with `num_convs=2`: `convs.0`, `convs.1` and the optional
/// `conv_cat`; subclasses put their block between the two convs.
#[derive(Debug)]
pub struct FcnTrunk {
    convs: Vec<ConvModule>,
    conv_cat: Option<ConvModule>,
}

impl FcnTrunk {
    /// Builds them under `p` from `c_in` input channels to `channels`.
    pub fn new(
        p: &nn::Path,
        c_in: i64,
        channels: i64,
        f: FcnArgs,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let k = f.kernel_size;
        let convs = (0..2)
            .map(|i| {
                let c = if i == 0 { c_in } else { channels };
                ConvModule::new(
                    p / "convs" / i,
                    c,
                    channels,
                    k,
                    (k / 2) * f.dilation,
                    f.dilation,
                    cfg,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv_cat = f
            .concat_input
            .then(|| ConvModule::new(p / "conv_cat", c_in + channels, channels, k, k / 2, 1, cfg))
            .transpose()?;
        Ok(Self { convs, conv_cat })
    }

    /// `convs.0 -> block -> convs.1 -> conv_cat([x, .])`.
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        block: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let y = self.convs[0].forward(x, train)?;
        let y = block(&y)?;
        let y = self.convs[1].forward(&y, train)?;
        match &self.conv_cat {
            // [B, C_in, h, w] ++ [B, channels, h, w] -> [B, channels, h, w]
            Some(cat) => cat.forward(&Tensor::f_cat(&[x, &y], 1)?, train),
            None => Ok(y),
        }
    }
}

/// A norm layer built alone from a `norm_cfg` (mmcv's `build_norm_layer`), for
/// modules that keep one outside a `ConvModule`; it works on `[B, C, ...]` inputs.
#[derive(Debug)]
pub enum NormLayer {
    /// BatchNorm (1d or 2d: same parameters, same maths).
    Batch(nn::BatchNorm),
    /// GroupNorm.
    Group(nn::GroupNorm),
}

impl NormLayer {
    /// Builds the layer for `c` channels under `p` (`weight`, `bias`, running stats).
    pub fn new(p: nn::Path, cfg: &NormCfg, c: i64) -> Result<Self> {
        cfg.check(c)
            .map_err(|why| PluginError::invalid_argument(format!("norm_cfg: {why}")))?;
        let (layer, requires_grad) = match *cfg {
            NormCfg::BatchNorm {
                eps,
                momentum,
                requires_grad,
            } => (
                Self::Batch(terrahost_plugin_api::sdk::batch_norm2d(p, c, eps, momentum)),
                requires_grad,
            ),
            NormCfg::GroupNorm {
                num_groups,
                eps,
                requires_grad,
            } => (
                Self::Group(nn::group_norm(
                    p,
                    num_groups,
                    c,
                    nn::GroupNormConfig {
                        eps,
                        ws_init: nn::Init::Const(1.),
                        bs_init: nn::Init::Const(0.),
                        ..Default::default()
                    },
                )),
                requires_grad,
            ),
        };
        if !requires_grad {
            let (w, b) = match &layer {
                Self::Batch(bn) => (bn.ws.as_ref(), bn.bs.as_ref()),
                Self::Group(gn) => (gn.ws.as_ref(), gn.bs.as_ref()),
            };
            for t in w.into_iter().chain(b) {
                let _ = t.set_requires_grad(false);
            }
        }
        Ok(layer)
    }

    /// The `BatchNorm1d` flavour (inputs `[B, C]` or `[B, C, L]`); GroupNorm is unchanged.
    pub fn one_d(mut self) -> Self {
        if let Self::Batch(bn) = &mut self {
            bn.nd = 1;
        }
        self
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Self::Batch(bn) => x.apply_t(bn, train),
            Self::Group(gn) => x.apply(gn),
        }
    }
}

/// mmcv's `Scale`: one learnable scalar (`scale`, shape `[]`) multiplying its input.
#[derive(Debug)]
pub struct Scale {
    scale: Tensor,
}

impl Scale {
    /// Builds it under `p` with the initial value `init`.
    pub fn new(p: nn::Path, init: f64) -> Self {
        Self {
            scale: p.var("scale", &[], nn::Init::Const(init)),
        }
    }

    /// `x * scale`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_mul(&self.scale)?)
    }
}
