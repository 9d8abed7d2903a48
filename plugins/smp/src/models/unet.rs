//! The U-Net decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/unet/decoder.py` (`UnetDecoder`,
//! `UnetDecoderBlock`), with the building blocks it takes from
//! `segmentation_models_pytorch/base/modules.py` (`Conv2dReLU`, `get_norm_layer`,
//! `Attention`, `SCSEModule`) and the initialisation of
//! `segmentation_models_pytorch/base/initialization.py` (`initialize_decoder`).
//!
//! TerraTorch builds it through `terratorch/registry/smp_registry.py`
//! (`SMPRegistry.build`): a dummy encoder reports the channel list as smp's
//! `encoder_channels`, the encoder depth is `len(channels) - 1`, and only
//! `model.decoder` is kept (see [`super::wrapper`]).
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, nn::Module, Tensor};
use terrahost_plugin_api::{
    sdk::{batch_norm2d, Model},
    PluginError, Result,
};

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

    fn is_identity(&self) -> bool {
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

    /// `F.interpolate(x, size=(h, w), mode=self)`.
    pub(crate) fn resize(self, x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        let size = [h, w];
        Ok(match self {
            Self::Nearest => x.f_upsample_nearest2d(size, None, None)?,
            Self::Bilinear => x.f_upsample_bilinear2d(size, false, None, None)?,
            Self::Bicubic => x.f_upsample_bicubic2d(size, false, None, None)?,
            Self::Area => x.f_adaptive_avg_pool2d(size)?,
            Self::NearestExact => x.f_internal_upsample_nearest_exact2d(size, None, None)?,
        })
    }
}

/// Configuration of [`UnetDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder feature map, the full-resolution one first
    /// (smp's `encoder.out_channels`; TerraTorch passes its channel list).
    pub encoder_channels: Vec<i64>,
    /// Output channels of each decoder block, deepest first.
    pub decoder_channels: Vec<i64>,
    /// Number of decoder blocks (smp's `encoder_depth`); must equal `decoder_channels.len()`.
    pub n_blocks: usize,
    /// Normalisation inside `Conv2dReLU`.
    pub use_norm: NormConfig,
    /// Attention around the convolutions of each block.
    pub attention_type: Option<AttentionType>,
    /// Resize mode of each block.
    pub interpolation_mode: Interpolation,
}

impl Config {
    /// smp's defaults (`decoder_channels=(256, 128, 64, 32, 16)`, depth 5, batchnorm,
    /// no attention, nearest) for the given encoder channels.
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            decoder_channels: vec![256, 128, 64, 32, 16],
            n_blocks: 5,
            use_norm: NormConfig::default(),
            attention_type: None,
            interpolation_mode: Interpolation::Nearest,
        }
    }

    /// What TerraTorch's `SMPRegistry.build` makes of a channel list: the depth is
    /// `len(channels) - 1`; everything else keeps smp's defaults.
    pub fn terratorch(channels: &[i64]) -> Self {
        Self {
            n_blocks: channels.len().saturating_sub(1),
            ..Self::new(channels.to_vec())
        }
    }

    /// `smp.Unet()` with its default encoder (resnet34: channels 3, 64, 64, 128, 256, 512).
    pub fn resnet34() -> Self {
        Self::new(vec![3, 64, 64, 128, 256, 512])
    }

    /// Input, skip and output channels of each block, deepest block first.
    fn block_channels(&self) -> Vec<(i64, i64, i64)> {
        // The full-resolution map gives no skip; the rest are used deepest first.
        let mut enc: Vec<i64> = self.encoder_channels.iter().skip(1).copied().collect();
        enc.reverse();
        let head = enc.first().copied().unwrap_or(0);
        let ins = std::iter::once(head).chain(
            self.decoder_channels
                .iter()
                .copied()
                .take(self.decoder_channels.len().saturating_sub(1)),
        );
        let skips = enc.iter().skip(1).copied().chain(std::iter::once(0));
        // smp zips the three lists, so the shortest decides the number of blocks.
        ins.zip(skips)
            .zip(self.decoder_channels.iter().copied())
            .map(|((i, s), o)| (i, s, o))
            .collect()
    }

    /// Checks what smp checks, plus what would fail later in smp or TerraTorch.
    pub fn validate(&self) -> Result<()> {
        if self.encoder_channels.len() < 2 {
            return Err(PluginError::invalid_argument(format!(
                "the Unet decoder needs at least two feature maps (the full-resolution one and one deeper), \
                 got the channel list {:?}",
                self.encoder_channels
            )));
        }
        if let Some(c) = self.encoder_channels.iter().find(|&&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "channel counts must be positive, got {c} in {:?}",
                self.encoder_channels
            )));
        }
        if self.n_blocks != self.decoder_channels.len() {
            return Err(PluginError::invalid_argument(format!(
                "Model depth is {}, but you provide `decoder_channels` for {} blocks. (The depth is the length \
                 of the channel list {:?} minus one; pass `decoder_channels` with {} values.)",
                self.n_blocks,
                self.decoder_channels.len(),
                self.encoder_channels,
                self.n_blocks
            )));
        }
        if let Some(c) = self.decoder_channels.iter().find(|&&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "`decoder_channels` must be positive, got {c} in {:?}",
                self.decoder_channels
            )));
        }
        if self.block_channels().len() != self.n_blocks {
            return Err(PluginError::invalid_argument(format!(
                "a depth of {} needs {} encoder feature maps, got the channel list {:?}",
                self.n_blocks,
                self.n_blocks + 1,
                self.encoder_channels
            )));
        }
        Ok(())
    }

    /// The channels of the decoder's output (the last block's).
    pub fn out_channels(&self) -> i64 {
        self.decoder_channels.last().copied().unwrap_or(0)
    }
}

/// smp's `initialize_decoder` for convolutions: Kaiming-uniform (fan-in, ReLU gain),
/// zero bias. PyTorch skips zero-element tensors (scSE on few channels makes them),
/// whose fan would be zero here.
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    let empty = c_in == 0 || c_out == 0;
    let cfg = nn::ConvConfig {
        padding,
        bias,
        ws_init: if empty {
            nn::Init::Const(0.)
        } else {
            nn::init::DEFAULT_KAIMING_UNIFORM
        },
        bs_init: nn::Init::Const(0.),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// A built normalisation layer.
#[derive(Debug)]
pub(crate) enum Norm {
    Batch(nn::BatchNorm),
    Identity,
    Layer(nn::LayerNorm, i64),
    Instance {
        weight: Tensor,
        bias: Tensor,
        running: Option<(Tensor, Tensor)>,
        eps: f64,
        momentum: f64,
    },
}

impl Norm {
    pub(crate) fn new(p: nn::Path, cfg: &NormConfig, c: i64) -> Self {
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

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
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
pub(crate) struct Conv2dReLU {
    conv: nn::Conv2D,
    norm: Norm,
}

impl Conv2dReLU {
    pub(crate) fn new(p: nn::Path, c_in: i64, c_out: i64, norm: &NormConfig) -> Self {
        Self::with_kernel(p, c_in, c_out, 3, norm)
    }

    /// `Conv2dReLU(c_in, c_out, kernel_size=k, padding=k // 2)` (smp pads 3x3 by 1, 1x1 by 0).
    pub(crate) fn with_kernel(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        norm: &NormConfig,
    ) -> Self {
        // A bias only where no normalisation follows.
        let conv = conv2d(&p / 0, c_in, c_out, k, k / 2, norm.is_identity());
        Self {
            conv,
            norm: Norm::new(&p / 1, norm, c_out),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.apply(&self.conv);
        Ok(self.norm.forward(&y, train)?.f_relu()?)
    }
}

/// smp's `SCSEModule`: `x * cSE(x) + x * sSE(x)`.
#[derive(Debug)]
pub(crate) struct Scse {
    /// `cSE.1`: C -> C // 16, 1x1.
    c_reduce: nn::Conv2D,
    /// `cSE.3`: C // 16 -> C, 1x1.
    c_expand: nn::Conv2D,
    /// `sSE.0`: C -> 1, 1x1.
    spatial: nn::Conv2D,
}

impl Scse {
    const REDUCTION: i64 = 16;

    fn new(p: nn::Path, c: i64) -> Self {
        let r = c / Self::REDUCTION;
        let cse = &p / "cSE";
        let sse = &p / "sSE";
        Self {
            c_reduce: conv2d(&cse / 1, c, r, 1, 0, true),
            c_expand: conv2d(&cse / 3, r, c, 1, 0, true),
            spatial: conv2d(&sse / 0, c, 1, 1, 0, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [B, C, H, W] -> [B, C, 1, 1] channel gate
        let channel = x
            .f_adaptive_avg_pool2d([1, 1])?
            .apply(&self.c_reduce)
            .f_relu()?
            .apply(&self.c_expand)
            .f_sigmoid()?;
        // [B, C, H, W] -> [B, 1, H, W] spatial gate
        let spatial = x.apply(&self.spatial).f_sigmoid()?;
        Ok(x.f_mul(&channel)?.f_add(&x.f_mul(&spatial)?)?)
    }
}

/// smp's `Attention`: identity or scSE, held under `.attention`.
#[derive(Debug)]
pub(crate) enum Attention {
    Identity,
    Scse(Box<Scse>),
}

impl Attention {
    pub(crate) fn new(p: nn::Path, kind: Option<AttentionType>, c: i64) -> Self {
        match kind {
            None => Self::Identity,
            Some(AttentionType::Scse) => Self::Scse(Box::new(Scse::new(&p / "attention", c))),
        }
    }

    pub(crate) fn forward(&self, x: Tensor) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(x),
            Self::Scse(m) => m.forward(&x),
        }
    }
}

/// smp's `UnetDecoderBlock`: resize, concatenate the skip, attend, two `Conv2dReLU`, attend.
#[derive(Debug)]
struct UnetDecoderBlock {
    conv1: Conv2dReLU,
    attention1: Attention,
    conv2: Conv2dReLU,
    attention2: Attention,
    interpolation: Interpolation,
}

impl UnetDecoderBlock {
    fn new(p: nn::Path, c_in: i64, c_skip: i64, c_out: i64, cfg: &Config) -> Self {
        Self {
            conv1: Conv2dReLU::new(&p / "conv1", c_in + c_skip, c_out, &cfg.use_norm),
            attention1: Attention::new(&p / "attention1", cfg.attention_type, c_in + c_skip),
            conv2: Conv2dReLU::new(&p / "conv2", c_out, c_out, &cfg.use_norm),
            attention2: Attention::new(&p / "attention2", cfg.attention_type, c_out),
            interpolation: cfg.interpolation_mode,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        h: i64,
        w: i64,
        skip: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let mut x = self.interpolation.resize(x, h, w)?;
        if let Some(skip) = skip {
            // [B, C_in, h, w] ++ [B, C_skip, h, w] -> [B, C_in + C_skip, h, w]
            x = Tensor::f_cat(&[&x, skip], 1)?;
            x = self.attention1.forward(x)?;
        }
        let x = self.conv1.forward(&x, train)?;
        let x = self.conv2.forward(&x, train)?;
        self.attention2.forward(x)
    }
}

/// smp's `UnetDecoder` (without the VGG-only center block, which smp adds only for
/// `vgg*` encoders and TerraTorch's dummy encoder never is).
///
/// Input: the encoder's feature maps, full resolution first. The first map supplies
/// only the output size; each block upsamples to the next shallower map and
/// concatenates it. Output: one `[B, decoder_channels[-1], H0, W0]` map.
#[derive(Debug)]
pub struct UnetDecoder {
    blocks: Vec<UnetDecoderBlock>,
    cfg: Config,
}

impl UnetDecoder {
    /// Builds the decoder under `p` (its parameters are `p.blocks.N....`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let blocks_p = &p / "blocks";
        let blocks = cfg
            .block_channels()
            .into_iter()
            .enumerate()
            .map(|(i, (c_in, c_skip, c_out))| {
                UnetDecoderBlock::new(&blocks_p / i, c_in, c_skip, c_out, cfg)
            })
            .collect();
        Ok(Self {
            blocks,
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn check_inputs(&self, xs: &[Tensor]) -> Result<()> {
        let want = &self.cfg.encoder_channels;
        if xs.len() != want.len() {
            return Err(PluginError::forward_failed(format!(
                "the Unet decoder was built for {} feature maps (channels {want:?}) but got {}",
                want.len(),
                xs.len()
            )));
        }
        for (i, x) in xs.iter().enumerate() {
            let size = x.size();
            if size.len() != 4 {
                return Err(PluginError::forward_failed(format!(
                    "feature map {i} must be [B, C, H, W], got shape {size:?}"
                )));
            }
            // The first map only gives the output size; its channels are never used.
            if i > 0 && size[1] != want[i] {
                return Err(PluginError::forward_failed(format!(
                    "feature map {i} has {} channels but the decoder was built for {} (channels {want:?})",
                    size[1], want[i]
                )));
            }
        }
        Ok(())
    }
}

impl Model for UnetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.check_inputs(xs)?;
        // Target sizes, deepest first: [hw/2^n, ..., hw/2, hw].
        let sizes: Vec<(i64, i64)> = xs
            .iter()
            .rev()
            .map(|x| (x.size()[2], x.size()[3]))
            .collect();
        // Drop the full-resolution map, then go deepest first.
        let feats: Vec<&Tensor> = xs.iter().skip(1).rev().collect();
        let (head, skips) = feats
            .split_first()
            .expect("validated: at least two feature maps");
        let mut x = head.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let (h, w) = sizes[i + 1];
            x = block.forward(&x, h, w, skips.get(i).copied(), train)?;
        }
        Ok(vec![x])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.out_channels()]
    }
}
