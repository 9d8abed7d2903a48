//! smp's shared building blocks, from segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/base/modules.py` (`get_norm_layer`, `Conv2dReLU`,
//! `SCSEModule`, `Attention`), the initialisation of
//! `segmentation_models_pytorch/base/initialization.py` (`initialize_decoder`), the
//! `F.interpolate` modes the decoders accept, and PyTorch's own initialisation for the
//! layers smp never re-initialises. Every decoder family builds on these.
use crate::norm::batch_norm2d;
use crate::{
    conv_bn::{ConvBn, ConvGeometry},
    upsample_conv::UpsampleConcatConv,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, nn::Module, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// The normalisation between each convolution and its ReLU (smp's `use_norm`).
///
/// smp also accepts `"inplace"` (InPlaceABN), which needs the compiled `inplace_abn`
/// package and is refused here.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NormConfig {
    /// `nn.BatchNorm2d(C, eps, momentum)`; the convolution then has no bias.
    BatchNorm {
        /// Added to the variance.
        eps: f64,
        /// Running-statistics update factor (training only).
        momentum: f64,
    },
    /// No normalisation (`nn.Identity`); the convolution then has a bias.
    Identity,
    /// `nn.LayerNorm(C)`. As in smp it normalises the *last* dimension of the
    /// `[B, C, H, W]` map, so it only runs when the width equals `C`.
    LayerNorm {
        /// Added to the variance.
        eps: f64,
    },
    /// `nn.InstanceNorm2d(C, affine=True, ...)`.
    InstanceNorm {
        /// Added to the variance.
        eps: f64,
        /// Running-statistics update factor (with `track_running_stats`).
        momentum: f64,
        /// Keep running statistics and use them in eval mode.
        track_running_stats: bool,
    },
}

impl Default for NormConfig {
    fn default() -> Self {
        Self::batchnorm()
    }
}

const SUPPORTED_NORMS: &str = "\"batchnorm\", \"identity\", \"layernorm\", \"instancenorm\"";

impl NormConfig {
    /// PyTorch's `BatchNorm2d` defaults.
    pub fn batchnorm() -> Self {
        Self::BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Reads smp's `use_norm` value: `true` (batchnorm), `false` (identity), a type
    /// name, or `{"type": name, **kwargs}` with the keyword arguments of the torch
    /// layer. The error text is the reason only; the caller names the argument.
    pub fn from_smp(v: &Value) -> std::result::Result<Self, String> {
        let (ty, kwargs) = match v {
            Value::Bool(true) => ("batchnorm".to_owned(), serde_json::Map::new()),
            Value::Bool(false) => ("identity".to_owned(), serde_json::Map::new()),
            Value::String(s) => (s.to_lowercase(), serde_json::Map::new()),
            Value::Object(m) => {
                let ty = match m.get("type") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => return Err(format!("its `type` must be a string, got {other}")),
                    None => {
                        return Err(format!(
                        "a dict must contain the key \"type\" (one of {SUPPORTED_NORMS}), got {v}"
                    ))
                    }
                };
                let mut kw = m.clone();
                kw.remove("type");
                (ty, kw)
            }
            other => {
                return Err(format!(
                    "must be a bool (batchnorm/identity), one of {SUPPORTED_NORMS}, or a dict like \
                     {{\"type\": \"batchnorm\", \"eps\": 1e-5}}; got {other}"
                ))
            }
        };
        let allowed: &[&str] = match ty.as_str() {
            "batchnorm" => &["eps", "momentum", "affine"],
            "identity" => &[],
            "layernorm" => &["eps", "elementwise_affine"],
            "instancenorm" => &["eps", "momentum", "affine", "track_running_stats"],
            "inplace" => {
                return Err(
                    "\"inplace\" (InPlaceABN) needs the compiled inplace_abn package, which terrahost does not \
                            provide; use \"batchnorm\""
                        .to_owned(),
                )
            }
            _ => return Err(format!("unrecognized normalization type {ty:?}; it should be one of {SUPPORTED_NORMS}")),
        };
        if let Some(k) = kwargs.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "keyword `{k}` is not supported for {ty:?} (supported: {})",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        let num = |k: &str, default: f64| -> std::result::Result<f64, String> {
            match kwargs.get(k) {
                None => Ok(default),
                Some(x) => x
                    .as_f64()
                    .ok_or_else(|| format!("`{k}` must be a number, got {x}")),
            }
        };
        let flag = |k: &str, default: bool| -> std::result::Result<bool, String> {
            match kwargs.get(k) {
                None => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| format!("`{k}` must be a bool, got {x}")),
            }
        };
        // smp's initialize_decoder sets every norm's weight and bias, so a norm
        // without them fails to build in smp; refuse it up front.
        let no_affine = |k: &str| {
            format!("{ty:?} with `{k}: false` has no weight for smp's initialisation to set, which fails in smp")
        };
        let cfg = match ty.as_str() {
            "batchnorm" => {
                if !flag("affine", true)? {
                    return Err(no_affine("affine"));
                }
                Self::BatchNorm {
                    eps: num("eps", 1e-5)?,
                    momentum: num("momentum", 0.1)?,
                }
            }
            "identity" => Self::Identity,
            "layernorm" => {
                if !flag("elementwise_affine", true)? {
                    return Err(no_affine("elementwise_affine"));
                }
                Self::LayerNorm {
                    eps: num("eps", 1e-5)?,
                }
            }
            _ => {
                // InstanceNorm2d defaults to affine=False, which smp cannot initialise.
                if !flag("affine", false)? {
                    return Err(format!(
                        "{ty:?} needs affine weights: smp's initialisation fails on InstanceNorm2d's default \
                         affine=False; pass {{\"type\": \"instancenorm\", \"affine\": true}}"
                    ));
                }
                Self::InstanceNorm {
                    eps: num("eps", 1e-5)?,
                    momentum: num("momentum", 0.1)?,
                    track_running_stats: flag("track_running_stats", false)?,
                }
            }
        };
        Ok(cfg)
    }

    /// Whether this is the identity (then `Conv2dReLU`'s convolution has a bias).
    pub fn is_identity(&self) -> bool {
        matches!(self, Self::Identity)
    }
}

/// Attention applied around each decoder block's convolutions (smp's `attention_type`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttentionType {
    /// Concurrent spatial and channel squeeze-and-excitation (`SCSEModule`, reduction 16).
    Scse,
}

impl AttentionType {
    /// Parses smp's name (`"scse"`); `None` stands for no attention.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "scse" => Ok(Self::Scse),
            other => Err(format!(
                "Attention {other} is not implemented (available: None, \"scse\")"
            )),
        }
    }
}

/// How each block resizes its input to the next feature map's size (`F.interpolate` mode).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Interpolation {
    /// `"nearest"` (smp's default).
    #[default]
    #[serde(rename = "nearest")]
    Nearest,
    /// `"bilinear"` with `align_corners=False`.
    #[serde(rename = "bilinear")]
    Bilinear,
    /// `"bicubic"` with `align_corners=False`.
    #[serde(rename = "bicubic")]
    Bicubic,
    /// `"area"` (adaptive average pooling).
    #[serde(rename = "area")]
    Area,
    /// `"nearest-exact"`.
    #[serde(rename = "nearest-exact")]
    NearestExact,
}

impl Interpolation {
    /// The modes smp documents for `decoder_interpolation`.
    pub const NAMES: [&'static str; 5] =
        ["nearest", "bilinear", "bicubic", "area", "nearest-exact"];

    /// Parses an `F.interpolate` mode name.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        serde_json::from_value(Value::String(name.to_owned())).map_err(|_| {
            format!(
                "unknown interpolation mode {name:?} (available: {})",
                Self::NAMES.join(", ")
            )
        })
    }

    /// `F.interpolate(x, size=(h, w), mode=self)` (`align_corners` left at `None`).
    pub fn resize(self, x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        self.resize_aligned(x, h, w, false)
    }

    /// `F.interpolate(x, size=(h, w), mode=self, align_corners=align_corners)`.
    /// `align_corners` only applies to the bilinear and bicubic modes (PyTorch's
    /// `None` is `false`).
    pub fn resize_aligned(self, x: &Tensor, h: i64, w: i64, align_corners: bool) -> Result<Tensor> {
        let size = [h, w];
        Ok(match self {
            Self::Nearest => x.f_upsample_nearest2d(size, None, None)?,
            Self::Bilinear => x.f_upsample_bilinear2d(size, align_corners, None, None)?,
            Self::Bicubic => x.f_upsample_bicubic2d(size, align_corners, None, None)?,
            Self::Area => x.f_adaptive_avg_pool2d(size)?,
            Self::NearestExact => x.f_internal_upsample_nearest_exact2d(size, None, None)?,
        })
    }

    /// Whether resizing an `h x w` map to `2h x 2w` repeats every pixel twice in each
    /// direction (`"nearest"` and `"nearest-exact"` both take source pixel `i / 2`).
    pub fn repeats_pixels(self, (h, w): (i64, i64), (to_h, to_w): (i64, i64)) -> bool {
        matches!(self, Self::Nearest | Self::NearestExact) && to_h == 2 * h && to_w == 2 * w
    }
}

// ---------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------

/// `nn.Conv2d(c_in, c_out, k, padding=padding, bias=bias)` as smp's `initialize_decoder`
/// leaves it: Kaiming-uniform weight (fan-in, ReLU gain), zero bias.
pub fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, padding: i64, bias: bool) -> nn::Conv2D {
    conv2d_with(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            padding,
            bias,
            ..Default::default()
        },
    )
}

/// [`conv2d`] with every `nn.Conv2d` option (stride, dilation, groups) from `cfg`; its
/// initialisers are replaced by smp's. PyTorch skips zero-element tensors (scSE on few
/// channels makes them), whose fan would be zero here.
pub fn conv2d_with(p: nn::Path, c_in: i64, c_out: i64, k: i64, cfg: nn::ConvConfig) -> nn::Conv2D {
    let empty = c_in == 0 || c_out == 0;
    let cfg = nn::ConvConfig {
        ws_init: if empty {
            nn::Init::Const(0.)
        } else {
            nn::init::DEFAULT_KAIMING_UNIFORM
        },
        bs_init: nn::Init::Const(0.),
        ..cfg
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// `nn.Conv2d` options beyond the kernel size.
pub fn conv_cfg(padding: i64, dilation: i64, groups: i64, bias: bool) -> nn::ConvConfig {
    nn::ConvConfig {
        padding,
        dilation,
        groups,
        bias,
        ..Default::default()
    }
}

/// A convolution with PyTorch's own `nn.Conv2d` initialisation (for decoders smp
/// never re-initialises): weight and bias uniform in `±1/sqrt(fan_in)`.
pub fn torch_conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, cfg: nn::ConvConfig) -> nn::Conv2D {
    let fan_in = (c_in / cfg.groups.max(1)) * k * k;
    let init = if fan_in > 0 {
        let b = 1.0 / (fan_in as f64).sqrt();
        nn::Init::Uniform { lo: -b, up: b }
    } else {
        nn::Init::Const(0.)
    };
    nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            ws_init: init,
            bs_init: init,
            ..cfg
        },
    )
}

/// `nn.ConvTranspose2d` with PyTorch's initialisation (smp's `initialize_decoder`
/// only touches `nn.Conv2d`): uniform in `±1/sqrt(fan_in)`, where PyTorch takes the
/// fan-in from the weight's second dimension (`out_channels * k * k`).
pub fn torch_conv_transpose(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    cfg: nn::ConvTransposeConfig,
) -> nn::ConvTranspose2D {
    let fan_in = (c_out / cfg.groups.max(1)) * k * k;
    let init = if fan_in > 0 && c_in > 0 {
        let b = 1.0 / (fan_in as f64).sqrt();
        nn::Init::Uniform { lo: -b, up: b }
    } else {
        nn::Init::Const(0.)
    };
    nn::conv_transpose2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvTransposeConfig {
            ws_init: init,
            bs_init: init,
            ..cfg
        },
    )
}

/// `nn.Linear` as smp's `initialize_decoder` leaves it: Xavier-uniform weight, zero bias.
pub fn xavier_linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = (6.0 / (c_in + c_out).max(1) as f64).sqrt();
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: Some(nn::Init::Const(0.)),
        bias: true,
    };
    nn::linear(p, c_in, c_out, cfg)
}

// ---------------------------------------------------------------------------
// Layers of base/modules.py
// ---------------------------------------------------------------------------

/// A built normalisation layer (smp's `get_norm_layer`), weight 1 and bias 0 as
/// `initialize_decoder` sets them.
#[derive(Debug)]
pub enum Norm {
    /// `nn.BatchNorm2d`.
    Batch(nn::BatchNorm),
    /// `nn.Identity`.
    Identity,
    /// `nn.LayerNorm(C)` over the last dimension, with that `C`.
    Layer(nn::LayerNorm, i64),
    /// `nn.InstanceNorm2d(C, affine=True)`, with running statistics when tracked.
    Instance {
        /// Affine scale.
        weight: Tensor,
        /// Affine shift.
        bias: Tensor,
        /// `running_mean`, `running_var` (with `track_running_stats`).
        running: Option<(Tensor, Tensor)>,
        /// Added to the variance.
        eps: f64,
        /// Running-statistics update factor.
        momentum: f64,
    },
}

impl Norm {
    /// Builds the norm `cfg` describes for `c` channels under `p`.
    pub fn new(p: nn::Path, cfg: &NormConfig, c: i64) -> Self {
        // smp's initialize_decoder: weight 1, bias 0.
        match *cfg {
            NormConfig::BatchNorm { eps, momentum } => {
                Self::Batch(batch_norm2d(p, c, eps, momentum))
            }
            NormConfig::Identity => Self::Identity,
            NormConfig::LayerNorm { eps } => Self::Layer(
                nn::layer_norm(
                    p,
                    vec![c],
                    nn::LayerNormConfig {
                        eps,
                        ws_init: nn::Init::Const(1.),
                        bs_init: nn::Init::Const(0.),
                        ..Default::default()
                    },
                ),
                c,
            ),
            NormConfig::InstanceNorm {
                eps,
                momentum,
                track_running_stats,
            } => Self::Instance {
                weight: p.var("weight", &[c], nn::Init::Const(1.)),
                bias: p.var("bias", &[c], nn::Init::Const(0.)),
                running: track_running_stats.then(|| {
                    (
                        p.zeros_no_train("running_mean", &[c]),
                        p.ones_no_train("running_var", &[c]),
                    )
                }),
                eps,
                momentum,
            },
        }
    }

    /// Normalises `x` (`[B, C, H, W]`); `train` selects batch statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(match self {
            Self::Batch(bn) => {
                if x.dim() != 4 {
                    return Err(PluginError::forward_failed(format!(
                        "BatchNorm2d expects a 4-D input, got {:?}",
                        x.size()
                    )));
                }
                x.apply_t(bn, train)
            }
            Self::Identity => x.shallow_clone(),
            Self::Layer(ln, c) => {
                let c = *c;
                let last = x.size().last().copied().unwrap_or(-1);
                if last != c {
                    return Err(PluginError::forward_failed(format!(
                        "smp's \"layernorm\" is nn.LayerNorm({c}) applied to the last (width) dimension of {:?}, \
                         so it only runs when the width is {c}; use \"batchnorm\" or \"instancenorm\"",
                        x.size()
                    )));
                }
                ln.forward(x)
            }
            Self::Instance {
                weight,
                bias,
                running,
                eps,
                momentum,
            } => {
                let (rm, rv) = match running {
                    Some((m, v)) => (Some(m), Some(v)),
                    None => (None, None),
                };
                // Batch statistics unless running statistics exist and we are evaluating.
                let use_input_stats = train || running.is_none();
                x.f_instance_norm(
                    Some(weight),
                    Some(bias),
                    rm,
                    rv,
                    use_input_stats,
                    *momentum,
                    *eps,
                    false,
                )?
            }
        })
    }
}

/// smp's `Conv2dReLU`: `Sequential(conv, norm, ReLU)`, named `0`, `1`, `2`.
#[derive(Debug)]
pub struct Conv2dReLU {
    conv: nn::Conv2D,
    norm: Norm,
    padding: i64,
    /// The BatchNorm's eps, when the norm is a BatchNorm (folded into the convolution
    /// for inference).
    bn_eps: Option<f64>,
    fold: ConvBn,
    /// The decomposed kernels of [`Self::forward_upsampled`].
    upsampled: UpsampleConcatConv,
}

impl Conv2dReLU {
    /// `Conv2dReLU(c_in, c_out, kernel_size=3, padding=1, use_norm=norm)`.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, norm: &NormConfig) -> Self {
        Self::with_kernel(p, c_in, c_out, 3, norm)
    }

    /// `Conv2dReLU(c_in, c_out, kernel_size=k, padding=k // 2)` (smp pads 3x3 by 1, 1x1 by 0).
    pub fn with_kernel(p: nn::Path, c_in: i64, c_out: i64, k: i64, norm: &NormConfig) -> Self {
        // A bias only where no normalisation follows.
        let conv = conv2d(&p / 0, c_in, c_out, k, k / 2, norm.is_identity());
        Self {
            conv,
            norm: Norm::new(&p / 1, norm, c_out),
            padding: k / 2,
            bn_eps: match *norm {
                NormConfig::BatchNorm { eps, .. } => Some(eps),
                _ => None,
            },
            fold: ConvBn::new(),
            upsampled: UpsampleConcatConv::new(),
        }
    }

    /// `self.forward(cat([upsample_nearest_2x(x), skip], 1))` for inference, without
    /// making the upsampled or the concatenated map
    /// ([`terrahost_layers::upsample_conv`]). `None` where that path does not
    /// apply (training, autograd on, a kernel other than 3x3, a norm other than
    /// BatchNorm or none, shapes that do not fit), and the caller runs the plain path.
    pub fn forward_upsampled(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        train: bool,
    ) -> Option<Result<Tensor>> {
        if train || self.padding != 1 {
            return None;
        }
        let bn = match (&self.norm, self.bn_eps) {
            (Norm::Batch(bn), Some(eps)) => Some((bn, eps)),
            (Norm::Identity, _) => None,
            _ => return None,
        };
        let mut y = self.upsampled.forward(x, skip, &self.conv, bn)?;
        Some(y.f_relu_().map_err(Into::into))
    }

    /// conv, norm, ReLU.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = match (&self.norm, self.bn_eps) {
            (Norm::Batch(bn), Some(eps)) => {
                let g = ConvGeometry::padded(self.padding);
                self.fold.forward(x, &self.conv, g, bn, eps, train)
            }
            _ => self.norm.forward(&x.apply(&self.conv), train)?,
        };
        // In place, as smp's `nn.ReLU(inplace=True)`: `y` is this block's own tensor.
        Ok(y.f_relu_()?)
    }
}

/// A squeeze-and-excitation gate, `Sequential(AdaptiveAvgPool2d(1), Conv2d(C, r, 1),
/// ReLU, Conv2d(r, C, 1), Sigmoid)`: its convolutions are named `1` and `3`. It is
/// the `cSE` branch of smp's `SCSEModule` and MAnet's `SE_hl`/`SE_ll`.
#[derive(Debug)]
pub struct SqueezeExcite {
    reduce: nn::Conv2D,
    expand: nn::Conv2D,
}

impl SqueezeExcite {
    /// Builds the gate for `c` channels squeezed to `r` under `p`.
    pub fn new(p: nn::Path, c: i64, r: i64) -> Self {
        Self {
            reduce: conv2d(&p / 1, c, r, 1, 0, true),
            expand: conv2d(&p / 3, r, c, 1, 0, true),
        }
    }

    /// `[B, C, H, W] -> [B, C, 1, 1]` channel gate in (0, 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_adaptive_avg_pool2d([1, 1])?
            .apply(&self.reduce)
            .f_relu()?
            .apply(&self.expand)
            .f_sigmoid()?)
    }
}

/// smp's `SCSEModule`: `x * cSE(x) + x * sSE(x)`.
#[derive(Debug)]
pub struct Scse {
    /// `cSE`: C -> C // 16 -> C.
    channel: SqueezeExcite,
    /// `sSE.0`: C -> 1, 1x1.
    spatial: nn::Conv2D,
}

impl Scse {
    const REDUCTION: i64 = 16;

    /// `SCSEModule(c, reduction=16)` under `p`.
    pub fn new(p: nn::Path, c: i64) -> Self {
        Self {
            channel: SqueezeExcite::new(&p / "cSE", c, c / Self::REDUCTION),
            spatial: conv2d(&p / "sSE" / 0, c, 1, 1, 0, true),
        }
    }

    /// Gates `x` by channel and by position and sums both.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let channel = self.channel.forward(x)?;
        // [B, C, H, W] -> [B, 1, H, W] spatial gate
        let spatial = x.apply(&self.spatial).f_sigmoid()?;
        Ok(x.f_mul(&channel)?.f_add(&x.f_mul(&spatial)?)?)
    }
}

/// smp's `Attention`: identity or scSE, held under `.attention`.
#[derive(Debug)]
pub enum Attention {
    /// `attention_type=None`.
    Identity,
    /// `attention_type="scse"`.
    Scse(Box<Scse>),
}

impl Attention {
    /// `Attention(kind, in_channels=c)` under `p` (the module sits at `p.attention`).
    pub fn new(p: nn::Path, kind: Option<AttentionType>, c: i64) -> Self {
        match kind {
            None => Self::Identity,
            Some(AttentionType::Scse) => Self::Scse(Box::new(Scse::new(&p / "attention", c))),
        }
    }

    /// Whether this is `attention_type=None`.
    pub fn is_identity(&self) -> bool {
        matches!(self, Self::Identity)
    }

    /// Applies the attention (the identity returns `x` itself).
    pub fn forward(&self, x: Tensor) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(x),
            Self::Scse(m) => m.forward(&x),
        }
    }
}

// ---------------------------------------------------------------------------
// Small tensor helpers
// ---------------------------------------------------------------------------

/// `(H, W)` of a `[B, C, H, W]` map.
pub fn hw(x: &Tensor) -> (i64, i64) {
    let s = x.size();
    (s[s.len() - 2], s[s.len() - 1])
}

/// `Dropout2d(p)` (whole channels) when training.
pub fn dropout2d(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        Ok(x.f_feature_dropout(p, train)?)
    } else {
        Ok(x)
    }
}
