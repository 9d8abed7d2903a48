//! mmcv 2.1's `ConvModule` (`mmcv/cnn/bricks/conv_module.py`) in its default order
//! conv -> norm -> act, with the layers its builders make from config dicts:
//! `build_conv_layer` (`mmcv/cnn/bricks/conv.py`), `build_norm_layer`
//! (`mmcv/cnn/bricks/norm.py`) and `build_activation_layer`
//! (`mmcv/cnn/bricks/activation.py`, `hsigmoid.py`, `hswish.py`, `swish.py`).
//!
//! Parameter names follow mmcv: the convolution is `conv`, the norm layer is named
//! by its abbreviation (`bn` for BN/SyncBN, `gn` for GN), the activation has none.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{nn, Tensor};
use terrahost_plugin_api::{sdk::batch_norm2d, PluginError, Result};

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
        let map = match v {
            Value::Null => return Ok(None),
            Value::Object(m) => m,
            other => {
                return Err(format!(
                    "must be None or a dict like {{\"type\": \"BN\"}}, got {other}"
                ))
            }
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
        let map = match v {
            Value::Null => return Ok(None),
            Value::Object(m) => m,
            other => {
                return Err(format!(
                    "must be None or a dict like {{\"type\": \"ReLU\"}}, got {other}"
                ))
            }
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

#[derive(Debug)]
enum Norm {
    Batch(nn::BatchNorm),
    Group(nn::GroupNorm),
}

/// mmcv's `ConvModule`: conv (bias only without a norm), norm, activation.
#[derive(Debug)]
pub struct ConvModule {
    conv: nn::Conv2D,
    norm: Option<Norm>,
    act: Option<ActCfg>,
}

impl ConvModule {
    /// A `kernel` x `kernel` convolution from `c_in` to `c_out` channels with
    /// `padding` and `dilation`, under `p` (`p.conv`, `p.bn`/`p.gn`).
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        padding: i64,
        dilation: i64,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        if let Some(norm) = &cfg.norm_cfg {
            norm.check(c_out)
                .map_err(|why| PluginError::invalid_argument(format!("norm_cfg: {why}")))?;
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
            padding,
            dilation,
            bias: cfg.norm_cfg.is_none(),
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity,
            },
            bs_init: nn::Init::Const(0.),
            ..Default::default()
        };
        let conv = nn::conv2d(&p / "conv", c_in, c_out, kernel, conv_cfg);
        let norm = cfg.norm_cfg.as_ref().map(|n| {
            let np = &p / n.abbr();
            let (norm, requires_grad) = match *n {
                NormCfg::BatchNorm {
                    eps,
                    momentum,
                    requires_grad,
                } => (
                    Norm::Batch(batch_norm2d(np, c_out, eps, momentum)),
                    requires_grad,
                ),
                NormCfg::GroupNorm {
                    num_groups,
                    eps,
                    requires_grad,
                } => (
                    Norm::Group(nn::group_norm(
                        np,
                        num_groups,
                        c_out,
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
                // mmcv freezes the affine weights; they stay in the state_dict.
                let (w, b) = match &norm {
                    Norm::Batch(bn) => (bn.ws.as_ref(), bn.bs.as_ref()),
                    Norm::Group(gn) => (gn.ws.as_ref(), gn.bs.as_ref()),
                };
                for t in w.into_iter().chain(b) {
                    let _ = t.set_requires_grad(false);
                }
            }
            norm
        });
        Ok(Self {
            conv,
            norm,
            act: cfg.act_cfg.clone(),
        })
    }

    /// conv -> norm -> act.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.apply(&self.conv);
        y = match &self.norm {
            None => y,
            Some(Norm::Batch(bn)) => y.apply_t(bn, train),
            Some(Norm::Group(gn)) => y.apply(gn),
        };
        match &self.act {
            None => Ok(y),
            Some(act) => act.apply(&y),
        }
    }
}

/// The shape options of a [`ConvModule`] besides its kernel: mmcv's `stride`,
/// `padding`, `dilation`, `groups` and `bias` (`None` is mmcv's `'auto'`: a bias only
/// without a norm).
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

/// Builds the norm layer of a `ConvModule` under `p / abbr` (frozen affine weights
/// when `requires_grad` is false; they stay in the state_dict).
fn build_norm(p: &nn::Path, n: &NormCfg, c: i64) -> Norm {
    let np = p / n.abbr();
    let (norm, requires_grad) = match *n {
        NormCfg::BatchNorm {
            eps,
            momentum,
            requires_grad,
        } => (
            Norm::Batch(batch_norm2d(np, c, eps, momentum)),
            requires_grad,
        ),
        NormCfg::GroupNorm {
            num_groups,
            eps,
            requires_grad,
        } => (
            Norm::Group(nn::group_norm(
                np,
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
        let (w, b) = match &norm {
            Norm::Batch(bn) => (bn.ws.as_ref(), bn.bs.as_ref()),
            Norm::Group(gn) => (gn.ws.as_ref(), gn.bs.as_ref()),
        };
        for t in w.into_iter().chain(b) {
            let _ = t.set_requires_grad(false);
        }
    }
    norm
}

impl ConvModule {
    /// Like [`ConvModule::new`] with every shape option of mmcv's `ConvModule`
    /// (stride, groups, an explicit bias).
    pub fn with_opts(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        opts: ConvOpts,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        if let Some(norm) = &cfg.norm_cfg {
            norm.check(c_out)
                .map_err(|why| PluginError::invalid_argument(format!("norm_cfg: {why}")))?;
        }
        if opts.groups <= 0 || c_in % opts.groups != 0 || c_out % opts.groups != 0 {
            return Err(PluginError::invalid_argument(format!(
                "a convolution with {} groups needs input ({c_in}) and output ({c_out}) channels divisible by it",
                opts.groups
            )));
        }
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
        let norm = cfg.norm_cfg.as_ref().map(|n| build_norm(&p, n, c_out));
        Ok(Self {
            conv,
            norm,
            act: cfg.act_cfg.clone(),
        })
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
