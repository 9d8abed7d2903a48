//! mmcv 2.1's `ConvModule` (`mmcv/cnn/bricks/conv_module.py`) with the layers its
//! builders make from config dicts: `build_conv_layer` (`mmcv/cnn/bricks/conv.py`),
//! `build_norm_layer` (`mmcv/cnn/bricks/norm.py`) and `build_activation_layer`
//! (`mmcv/cnn/bricks/activation.py`, `hsigmoid.py`, `hswish.py`, `swish.py`); mmcv's
//! `DepthwiseSeparableConvModule` and `Scale` (`depthwise_separable_conv_module.py`,
//! `scale.py`); and plain `nn.Conv2d` / `nn.Linear` with PyTorch's default init.
//!
//! Parameter names follow mmcv: the convolution is `conv`, the norm layer is named
//! by its abbreviation (`bn` for BN/SyncBN, `gn` for GN), the activation has none.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{nn, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::{PluginError, Result};

/// Reads the keyword arguments of a `{type: ..., **kwargs}` config: checks that no
/// unknown key is present and hands out typed values. Errors are reasons only; the
/// caller names the argument.
struct Kwargs<'a> {
    ty: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Kwargs<'a> {
    fn new(
        ty: &'a str,
        map: &'a Map<String, Value>,
        allowed: &[&str],
    ) -> std::result::Result<Self, String> {
        if let Some(k) = map
            .keys()
            .find(|k| k.as_str() != "type" && !allowed.contains(&k.as_str()))
        {
            return Err(format!(
                "key `{k}` is not supported for type {ty:?} (supported: {})",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        Ok(Self { ty, map })
    }

    fn f64(&self, k: &str, default: f64) -> std::result::Result<f64, String> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("`{k}` of type {:?} must be a number, got {v}", self.ty)),
        }
    }

    fn bool(&self, k: &str, default: bool) -> std::result::Result<bool, String> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("`{k}` of type {:?} must be a bool, got {v}", self.ty)),
        }
    }

    fn str(&self, k: &str, default: &str) -> std::result::Result<String, String> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!(
                "`{k}` of type {:?} must be a string, got {v}",
                self.ty
            )),
        }
    }

    fn i64(&self, k: &str) -> std::result::Result<Option<i64>, String> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("`{k}` of type {:?} must be an integer, got {v}", self.ty)),
        }
    }
}

/// A `{type: ..., **kwargs}` config dict, or `None` for null; `example` is the type
/// the error message suggests.
fn cfg_dict<'a>(
    v: &'a Value,
    example: &str,
) -> std::result::Result<Option<&'a Map<String, Value>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(format!(
            "must be None or a dict like {{\"type\": \"{example}\"}}, got {other}"
        )),
    }
}

/// The `type` of a config dict.
fn cfg_type(v: &Map<String, Value>) -> std::result::Result<&str, String> {
    match v.get("type") {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("`type` must be a string, got {other}")),
        None => Err("the config dict must contain the key \"type\"".to_owned()),
    }
}

/// A normalisation layer config (`norm_cfg`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type")]
pub enum NormCfg {
    /// `BN` / `BN2d` / `SyncBN`: `nn.BatchNorm2d` (SyncBN equals BN on one device).
    #[serde(rename = "BN")]
    BatchNorm {
        /// Added to the variance (mmcv's default 1e-5).
        eps: f64,
        /// Running-statistics update factor.
        momentum: f64,
        /// Whether the affine weights are trained (mmcv's `requires_grad`).
        requires_grad: bool,
    },
    /// `GN`: `nn.GroupNorm(num_groups, C)`.
    #[serde(rename = "GN")]
    GroupNorm {
        /// Number of channel groups (required by mmcv).
        num_groups: i64,
        /// Added to the variance.
        eps: f64,
        /// Whether the affine weights are trained.
        requires_grad: bool,
    },
}

impl NormCfg {
    const SUPPORTED: &'static str = "BN, BN2d, SyncBN, GN";

    /// Parses an mmcv `norm_cfg` (`None` stays `None`).
    pub fn from_json(v: &Value) -> std::result::Result<Option<Self>, String> {
        let Some(map) = cfg_dict(v, "BN")? else {
            return Ok(None);
        };
        let ty = cfg_type(map)?;
        let cfg = match ty {
            "BN" | "BN2d" | "SyncBN" => {
                let kw = Kwargs::new(ty, map, &["eps", "momentum", "requires_grad"])?;
                Self::BatchNorm {
                    eps: kw.f64("eps", 1e-5)?,
                    momentum: kw.f64("momentum", 0.1)?,
                    requires_grad: kw.bool("requires_grad", true)?,
                }
            }
            "GN" => {
                let kw = Kwargs::new(ty, map, &["num_groups", "eps", "requires_grad"])?;
                let num_groups = kw
                    .i64("num_groups")?
                    .ok_or("type \"GN\" needs `num_groups`")?;
                Self::GroupNorm {
                    num_groups,
                    eps: kw.f64("eps", 1e-5)?,
                    requires_grad: kw.bool("requires_grad", true)?,
                }
            }
            other => {
                return Err(format!(
                    "norm type {other:?} is not supported (supported: {})",
                    Self::SUPPORTED
                ))
            }
        };
        Ok(Some(cfg))
    }

    /// mmcv's `infer_abbr`: the attribute name of the norm layer in a `ConvModule`.
    pub fn abbr(&self) -> &'static str {
        match self {
            Self::BatchNorm { .. } => "bn",
            Self::GroupNorm { .. } => "gn",
        }
    }

    /// Checks that it can normalise `c` channels.
    pub fn check(&self, c: i64) -> std::result::Result<(), String> {
        match *self {
            Self::GroupNorm { num_groups, .. } if num_groups <= 0 || c % num_groups != 0 => {
                Err(format!(
                    "GN's num_groups ({num_groups}) must be positive and divide the {c} channels"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// An activation config (`act_cfg`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type")]
pub enum ActCfg {
    /// `ReLU`.
    ReLU,
    /// `LeakyReLU(negative_slope)`.
    LeakyReLU {
        /// Slope for negative inputs (0.01).
        negative_slope: f64,
    },
    /// `ReLU6`.
    ReLU6,
    /// `ELU(alpha)`.
    ELU {
        /// Saturation value for negative inputs (1.0).
        alpha: f64,
    },
    /// `GELU(approximate)`.
    GELU {
        /// `"none"` or `"tanh"`.
        approximate: String,
    },
    /// `SiLU` (also `Swish`, which mmcv implements as `x * sigmoid(x)`).
    SiLU,
    /// `Sigmoid`.
    Sigmoid,
    /// `Tanh`.
    Tanh,
    /// mmcv's `HSigmoid`: `clamp((x + bias) / divisor, min_value, max_value)`.
    HSigmoid {
        /// Added to the input (3.0).
        bias: f64,
        /// Divides the shifted input (6.0).
        divisor: f64,
        /// Lower clamp (0.0).
        min_value: f64,
        /// Upper clamp (1.0).
        max_value: f64,
    },
    /// mmcv's `HSwish`: `x * relu6(x + 3) / 6`.
    HSwish,
}

impl ActCfg {
    const SUPPORTED: &'static str =
        "ReLU, LeakyReLU, ReLU6, ELU, GELU, SiLU, Swish, Sigmoid, Tanh, HSigmoid, HSwish";

    /// Parses an mmcv `act_cfg` (`None` stays `None`). `inplace` is accepted and has
    /// no effect on results.
    pub fn from_json(v: &Value) -> std::result::Result<Option<Self>, String> {
        let Some(map) = cfg_dict(v, "ReLU")? else {
            return Ok(None);
        };
        let ty = cfg_type(map)?;
        let cfg = match ty {
            "ReLU" | "ReLU6" | "SiLU" | "HSwish" => {
                Kwargs::new(ty, map, &["inplace"])?;
                match ty {
                    "ReLU" => Self::ReLU,
                    "ReLU6" => Self::ReLU6,
                    "SiLU" => Self::SiLU,
                    _ => Self::HSwish,
                }
            }
            "Swish" | "Sigmoid" | "Tanh" => {
                Kwargs::new(ty, map, &[])?;
                match ty {
                    "Swish" => Self::SiLU,
                    "Sigmoid" => Self::Sigmoid,
                    _ => Self::Tanh,
                }
            }
            "LeakyReLU" => Self::LeakyReLU {
                negative_slope: Kwargs::new(ty, map, &["negative_slope", "inplace"])?
                    .f64("negative_slope", 0.01)?,
            },
            "ELU" => Self::ELU {
                alpha: Kwargs::new(ty, map, &["alpha", "inplace"])?.f64("alpha", 1.0)?,
            },
            "GELU" => {
                let approximate =
                    Kwargs::new(ty, map, &["approximate"])?.str("approximate", "none")?;
                if approximate != "none" && approximate != "tanh" {
                    return Err(format!(
                        "GELU's `approximate` must be \"none\" or \"tanh\", got {approximate:?}"
                    ));
                }
                Self::GELU { approximate }
            }
            "HSigmoid" => {
                let kw = Kwargs::new(ty, map, &["bias", "divisor", "min_value", "max_value"])?;
                let divisor = kw.f64("divisor", 6.0)?;
                if divisor == 0.0 {
                    return Err("HSigmoid's `divisor` must not be 0".to_owned());
                }
                Self::HSigmoid {
                    bias: kw.f64("bias", 3.0)?,
                    divisor,
                    min_value: kw.f64("min_value", 0.0)?,
                    max_value: kw.f64("max_value", 1.0)?,
                }
            }
            other => {
                return Err(format!(
                    "activation type {other:?} is not supported (supported: {})",
                    Self::SUPPORTED
                ))
            }
        };
        Ok(Some(cfg))
    }

    /// Applies the activation.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::ReLU => x.f_relu()?,
            Self::LeakyReLU { negative_slope } => {
                x.f_where_self(&x.f_ge(0.0)?, &x.f_mul_scalar(*negative_slope)?)?
            }
            Self::ReLU6 => x.f_clamp(0.0, 6.0)?,
            Self::ELU { alpha } => {
                x.f_where_self(&x.f_gt(0.0)?, &x.f_expm1()?.f_mul_scalar(*alpha)?)?
            }
            Self::GELU { approximate } => x.f_gelu(approximate)?,
            Self::SiLU => x.f_silu()?,
            Self::Sigmoid => x.f_sigmoid()?,
            Self::Tanh => x.f_tanh()?,
            Self::HSigmoid {
                bias,
                divisor,
                min_value,
                max_value,
            } => x
                .f_add_scalar(*bias)?
                .f_div_scalar(*divisor)?
                .f_clamp(*min_value, *max_value)?,
            Self::HSwish => x
                .f_mul(&x.f_add_scalar(3.0)?.f_clamp(0.0, 6.0)?)?
                .f_div_scalar(6.0)?,
        })
    }
}

/// Checks an mmcv `conv_cfg`: only plain 2-D convolution (`None`, `Conv`, `Conv2d`).
pub fn check_conv_cfg(v: &Value) -> std::result::Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::Object(m) => match cfg_type(m)? {
            "Conv" | "Conv2d" => Kwargs::new("Conv2d", m, &[]).map(|_| ()),
            other => Err(format!(
                "conv type {other:?} is not supported (supported: None, Conv, Conv2d)"
            )),
        },
        other => Err(format!(
            "must be None or a dict like {{\"type\": \"Conv2d\"}}, got {other}"
        )),
    }
}

/// An mmcv `LN` norm config (`{type: LN, eps, requires_grad}`), for norms over
/// `[B, N, C]` token sequences (`nn.LayerNorm` over the last dimension).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LnCfg {
    /// Added to the variance.
    pub eps: f64,
    /// Whether its affine weights are trained.
    pub requires_grad: bool,
}

impl LnCfg {
    /// Parses the dict; only `LN` normalises tokens over their last dimension.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let m = v.as_object().ok_or_else(|| {
            format!("must be a dict like {{\"type\": \"LN\", \"eps\": 1e-6}}, got {v}")
        })?;
        match m.get("type").and_then(Value::as_str) {
            Some("LN") => {}
            other => {
                return Err(format!(
                    "type {other:?} is not supported: this norm runs on [B, N, C] tokens, which only \"LN\" normalises"
                ))
            }
        }
        if let Some(k) = m
            .keys()
            .find(|k| !["type", "eps", "requires_grad"].contains(&k.as_str()))
        {
            return Err(format!(
                "key `{k}` is not supported for type \"LN\" (supported: eps, requires_grad)"
            ));
        }
        let eps = match m.get("eps") {
            None | Some(Value::Null) => 1e-5,
            Some(e) => e
                .as_f64()
                .ok_or_else(|| format!("`eps` must be a number, got {e}"))?,
        };
        let requires_grad = match m.get("requires_grad") {
            None | Some(Value::Null) => true,
            Some(r) => r
                .as_bool()
                .ok_or_else(|| format!("`requires_grad` must be a bool, got {r}"))?,
        };
        Ok(Self { eps, requires_grad })
    }

    /// `nn.LayerNorm(dim, eps)` at `p` (`weight`, `bias`; frozen without `requires_grad`).
    pub fn build(&self, p: nn::Path, dim: i64) -> nn::LayerNorm {
        let norm = nn::layer_norm(
            p,
            vec![dim],
            nn::LayerNormConfig {
                eps: self.eps,
                ..Default::default()
            },
        );
        if !self.requires_grad {
            for t in norm.ws.iter().chain(norm.bs.iter()) {
                let _ = t.set_requires_grad(false);
            }
        }
        norm
    }
}

/// How a [`ConvModule`] is built besides its shape.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct ConvModuleCfg {
    /// Normalisation after the convolution; `None` gives the convolution a bias.
    pub norm_cfg: Option<NormCfg>,
    /// Activation last; `None` for none.
    pub act_cfg: Option<ActCfg>,
}

impl Default for ConvModuleCfg {
    /// mmcv's defaults: no norm, ReLU.
    fn default() -> Self {
        Self {
            norm_cfg: None,
            act_cfg: Some(ActCfg::ReLU),
        }
    }
}

/// A norm layer built alone from a `norm_cfg` (mmcv's `build_norm_layer`): the norm
/// of a [`ConvModule`], or one that a head keeps outside a `ConvModule`. It works on
/// `[B, C, ...]` inputs.
#[derive(Debug)]
pub enum NormLayer {
    /// BatchNorm (1d or 2d: same parameters, same maths).
    Batch(nn::BatchNorm),
    /// GroupNorm.
    Group(nn::GroupNorm),
}

impl NormLayer {
    /// Builds the layer for `c` channels at `p` (`weight`, `bias`, running stats);
    /// with `requires_grad` false the affine weights are frozen, and they stay in
    /// the state_dict.
    pub fn new(p: nn::Path, cfg: &NormCfg, c: i64) -> Result<Self> {
        cfg.check(c)
            .map_err(|why| PluginError::invalid_argument(format!("norm_cfg: {why}")))?;
        let (layer, requires_grad) = match *cfg {
            NormCfg::BatchNorm {
                eps,
                momentum,
                requires_grad,
            } => (
                Self::Batch(batch_norm2d(p, c, eps, momentum)),
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

/// The options of a [`ConvModule`] besides its kernel: mmcv's `stride`, `padding`,
/// `dilation`, `groups`, `bias` (`None` is mmcv's `'auto'`: a bias only without a
/// norm) and `order` (conv first, or norm and act first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvOpts {
    /// Stride of the convolution.
    pub stride: i64,
    /// Zero padding on each side.
    pub padding: i64,
    /// Dilation of the kernel.
    pub dilation: i64,
    /// Channel groups (`c_in` for a depthwise convolution).
    pub groups: i64,
    /// Whether the convolution has a bias; `None` for `'auto'`.
    pub bias: Option<bool>,
    /// mmcv's `order=('norm', 'act', 'conv')`: the norm (over the input channels)
    /// and the activation come before the convolution.
    pub norm_first: bool,
}

impl Default for ConvOpts {
    /// mmcv's defaults: stride 1, no padding, dilation 1, one group, bias `'auto'`.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: None,
            norm_first: false,
        }
    }
}

impl ConvOpts {
    /// The defaults with `padding`.
    pub fn padding(padding: i64) -> Self {
        Self {
            padding,
            ..Self::default()
        }
    }
}

/// mmcv's `ConvModule`: conv (bias only without a norm), norm, activation, or
/// norm, activation, conv with [`ConvOpts::norm_first`].
#[derive(Debug)]
pub struct ConvModule {
    conv: nn::Conv2D,
    norm: Option<NormLayer>,
    act: Option<ActCfg>,
    norm_first: bool,
}

impl ConvModule {
    /// A `kernel` x `kernel` convolution from `c_in` to `c_out` channels with
    /// `padding` and `dilation` (the common case of [`ConvModule::with_opts`]).
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        padding: i64,
        dilation: i64,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let opts = ConvOpts {
            padding,
            dilation,
            ..ConvOpts::default()
        };
        Self::with_opts(p, c_in, c_out, kernel, opts, cfg)
    }

    /// A `kernel` x `kernel` convolution from `c_in` to `c_out` channels with every
    /// shape option of mmcv's `ConvModule`, under `p` (`p.conv`, `p.bn`/`p.gn`).
    pub fn with_opts(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        opts: ConvOpts,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let norm_channels = if opts.norm_first { c_in } else { c_out };
        if let Some(norm) = &cfg.norm_cfg {
            norm.check(norm_channels)
                .map_err(|why| PluginError::invalid_argument(format!("norm_cfg: {why}")))?;
        }
        if opts.groups <= 0 || c_in % opts.groups != 0 || c_out % opts.groups != 0 {
            return Err(PluginError::invalid_argument(format!(
                "a convolution with {} groups needs input ({c_in}) and output ({c_out}) channels divisible by it",
                opts.groups
            )));
        }
        // mmcv's init_weights: Kaiming-normal with fan_out for the convolution (the
        // LeakyReLU slope enters the gain), zero bias; norm weight 1, bias 0.
        let non_linearity = match cfg.act_cfg {
            Some(ActCfg::LeakyReLU { negative_slope }) => nn::init::NonLinearity::ExplicitGain(
                (2.0 / (1.0 + negative_slope * negative_slope)).sqrt(),
            ),
            _ => nn::init::NonLinearity::ReLU,
        };
        let conv_cfg = nn::ConvConfig {
            stride: opts.stride,
            padding: opts.padding,
            dilation: opts.dilation,
            groups: opts.groups,
            bias: opts.bias.unwrap_or(cfg.norm_cfg.is_none()),
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity,
            },
            bs_init: nn::Init::Const(0.),
            ..Default::default()
        };
        let conv = nn::conv2d(&p / "conv", c_in, c_out, kernel, conv_cfg);
        let norm = cfg
            .norm_cfg
            .as_ref()
            .map(|n| NormLayer::new(&p / n.abbr(), n, norm_channels))
            .transpose()?;
        Ok(Self {
            conv,
            norm,
            act: cfg.act_cfg.clone(),
            norm_first: opts.norm_first,
        })
    }

    /// conv -> norm -> act (or norm -> act -> conv).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let norm_act = |y: Tensor| -> Result<Tensor> {
            let y = match &self.norm {
                Some(norm) => norm.forward(&y, train),
                None => y,
            };
            match &self.act {
                Some(act) => act.apply(&y),
                None => Ok(y),
            }
        };
        if self.norm_first {
            Ok(norm_act(x.shallow_clone())?.apply(&self.conv))
        } else {
            norm_act(x.apply(&self.conv))
        }
    }
}

/// mmcv's `DepthwiseSeparableConvModule`: a depthwise `ConvModule` (`groups = c_in`,
/// `depthwise_conv`) then a 1x1 pointwise one (`pointwise_conv`), each with its own
/// norm and activation.
#[derive(Debug)]
pub struct DepthwiseSeparableConvModule {
    depthwise_conv: ConvModule,
    pointwise_conv: ConvModule,
}

impl DepthwiseSeparableConvModule {
    /// A `kernel` x `kernel` depthwise convolution over `c_in` channels with `opts`
    /// (its `groups` is replaced by `c_in`) and `dw` norm/activation, then a 1x1
    /// convolution to `c_out` channels with `pw` norm/activation.
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        opts: ConvOpts,
        dw: &ConvModuleCfg,
        pw: &ConvModuleCfg,
    ) -> Result<Self> {
        let depthwise_conv = ConvModule::with_opts(
            &p / "depthwise_conv",
            c_in,
            c_in,
            kernel,
            ConvOpts {
                groups: c_in,
                ..opts
            },
            dw,
        )?;
        let pointwise_conv = ConvModule::with_opts(
            &p / "pointwise_conv",
            c_in,
            c_out,
            1,
            ConvOpts::default(),
            pw,
        )?;
        Ok(Self {
            depthwise_conv,
            pointwise_conv,
        })
    }

    /// depthwise -> pointwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.pointwise_conv
            .forward(&self.depthwise_conv.forward(x, train)?, train)
    }
}

/// PyTorch's default init of a layer with `fan_in` inputs: Kaiming-uniform weights
/// with gain sqrt(1/3) and a uniform bias in +-1/sqrt(fan_in).
fn torch_default_init(fan_in: i64) -> (nn::Init, nn::Init) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    (
        nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Uniform,
            fan: nn::init::FanInOut::FanIn,
            non_linearity: nn::init::NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
        },
        nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )
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
    let (ws_init, bs_init) = torch_default_init(c_in * k * k);
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            padding,
            bias,
            ws_init,
            bs_init,
            ..Default::default()
        },
    )
}

/// `nn.Linear(c_in, c_out, bias)` with PyTorch's default init.
pub fn torch_linear(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let (ws_init, bs_init) = torch_default_init(c_in);
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init,
            bs_init: bias.then_some(bs_init),
            bias,
        },
    )
}

/// mmcv's `Scale` (`mmcv/cnn/bricks/scale.py`): one learnable scalar (`scale`, shape
/// `[]`) multiplying its input.
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
