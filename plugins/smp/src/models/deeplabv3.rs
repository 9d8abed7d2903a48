//! The DeepLabV3 and DeepLabV3+ decoders of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/deeplabv3/decoder.py` (`DeepLabV3Decoder`,
//! `DeepLabV3PlusDecoder`, `ASPP`, `ASPPConv`, `ASPPSeparableConv`, `ASPPPooling`,
//! `SeparableConv2d`) as `segmentation_models_pytorch/decoders/deeplabv3/model.py`
//! (`DeepLabV3`, `DeepLabV3Plus`) builds them. Unlike the other smp models these two
//! never call `initialize()`, so their layers keep PyTorch's default initialisation.
//!
//! TerraTorch (`terratorch/registry/smp_registry.py`) builds the smp model around a
//! dummy encoder whose channel list is the given one, with
//! `encoder_depth = len(channels) - 1`. The encoder's output stride only matters to
//! DeepLabV3+ (the upsampling of the ASPP output) and to smp's segmentation head,
//! which TerraTorch discards.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::{
    sdk::{BuildCtx, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

use super::args;
use super::blocks::{conv_cfg, hw, torch_conv, Interpolation};
use super::checks::{check_channels, check_maps, check_width};
use super::wrapper::{self, SmpDecoderWrapper};

/// Which of the two decoders.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `DeepLabV3Decoder`: ASPP on the deepest map, then conv-BN-ReLU.
    DeepLabV3,
    /// `DeepLabV3PlusDecoder`: ASPP, upsampled and fused with the stride-4 map.
    DeepLabV3Plus,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::DeepLabV3 => "DeepLabV3",
            Self::DeepLabV3Plus => "DeepLabV3Plus",
        }
    }
}

/// Configuration of [`DeepLabV3Decoder`], with smp's defaults per variant.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// The decoder.
    pub variant: Variant,
    /// Channels of every encoder feature map, the full-resolution one first.
    pub encoder_channels: Vec<i64>,
    /// Channels of the ASPP branches and of the output (smp's `decoder_channels`).
    pub decoder_channels: i64,
    /// Dilations of the three atrous branches (smp's `decoder_atrous_rates`).
    pub atrous_rates: Vec<i64>,
    /// Depthwise-separable atrous branches (smp's `decoder_aspp_separable`).
    pub aspp_separable: bool,
    /// Dropout after the ASPP projection (smp's `decoder_aspp_dropout`).
    pub aspp_dropout: f64,
    /// The encoder's output stride, 8 or 16 (smp's `encoder_output_stride`).
    pub output_stride: i64,
}

impl Config {
    /// `smp.DeepLabV3`'s defaults: 256 channels, rates (12, 24, 36), plain atrous
    /// convolutions, dropout 0.5, output stride 8.
    pub fn deeplabv3(encoder_channels: Vec<i64>) -> Self {
        Self {
            variant: Variant::DeepLabV3,
            encoder_channels,
            decoder_channels: 256,
            atrous_rates: vec![12, 24, 36],
            aspp_separable: false,
            aspp_dropout: 0.5,
            output_stride: 8,
        }
    }

    /// `smp.DeepLabV3Plus`'s defaults: as DeepLabV3 but separable atrous
    /// convolutions and output stride 16.
    pub fn deeplabv3plus(encoder_channels: Vec<i64>) -> Self {
        Self {
            variant: Variant::DeepLabV3Plus,
            aspp_separable: true,
            output_stride: 16,
            ..Self::deeplabv3(encoder_channels)
        }
    }

    /// smp's `encoder_depth`, as TerraTorch sets it.
    pub fn depth(&self) -> usize {
        self.encoder_channels.len().saturating_sub(1)
    }

    /// DeepLabV3+'s upsampling of the ASPP output, so that it meets the stride-4 map.
    pub fn up_scale(&self) -> i64 {
        if self.output_stride == 16 && self.depth() > 3 {
            4
        } else {
            2
        }
    }

    /// Checks what smp checks, plus what would fail later in torch.
    pub fn validate(&self) -> Result<()> {
        let name = self.variant.name();
        match self.variant {
            Variant::DeepLabV3 => {
                check_channels(name, &self.encoder_channels, 1, "it reads the deepest one")?
            }
            Variant::DeepLabV3Plus => {
                if self.depth() < 3 {
                    return Err(PluginError::invalid_argument(format!(
                        "Encoder depth for DeepLabV3Plus decoder cannot be less than 3, got {}. (The depth is the \
                         length of the channel list {:?} minus one; DeepLabV3+ reads the deepest map and the \
                         stride-4 map, channels[2].)",
                        self.depth(),
                        self.encoder_channels
                    )));
                }
                check_channels(name, &self.encoder_channels, 4, "depth 3 or more")?
            }
        }
        if ![8, 16].contains(&self.output_stride) {
            return Err(PluginError::invalid_argument(format!(
                "`encoder_output_stride`: {} support output stride 8 or 16, got {}.",
                name.replace("DeepLab", "Deeplab"),
                self.output_stride
            )));
        }
        check_width("decoder_channels", self.decoder_channels)?;
        if self.atrous_rates.len() != 3 || self.atrous_rates.iter().any(|&r| r <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "`decoder_atrous_rates` must be three positive dilation rates (one per atrous ASPP branch), got {:?}",
                self.atrous_rates
            )));
        }
        Ok(())
    }
}

/// smp's `SeparableConv2d`: a depthwise convolution (`0`) then a pointwise one (`1`).
#[derive(Debug)]
struct SeparableConv2d {
    depthwise: nn::Conv2D,
    pointwise: nn::Conv2D,
}

impl SeparableConv2d {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, padding: i64, dilation: i64) -> Self {
        Self {
            depthwise: torch_conv(
                &p / 0,
                c_in,
                c_in,
                k,
                conv_cfg(padding, dilation, c_in, false),
            ),
            pointwise: torch_conv(&p / 1, c_in, c_out, 1, conv_cfg(0, 1, 1, false)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.depthwise).apply(&self.pointwise)
    }
}

/// A convolution that is plain or separable.
#[derive(Debug)]
enum Conv {
    Plain(nn::Conv2D),
    Separable(SeparableConv2d),
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Plain(c) => x.apply(c),
            Self::Separable(c) => c.forward(x),
        }
    }
}

/// `Sequential(conv, BatchNorm2d, ReLU)`, the conv at `conv_idx` and the norm after it.
#[derive(Debug)]
struct ConvBnRelu {
    conv: Conv,
    bn: nn::BatchNorm,
}

impl ConvBnRelu {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.conv.forward(x).apply_t(&self.bn, train).f_relu()?)
    }
}

/// smp's `ASPP`: a 1x1 branch, three atrous branches and an image-pooling branch,
/// concatenated and projected back by a 1x1 conv (with dropout).
#[derive(Debug)]
struct Aspp {
    /// `convs.0` to `convs.3`: the 1x1 and the three atrous branches.
    branches: Vec<ConvBnRelu>,
    /// `convs.4`: global average pooling, then conv-BN-ReLU (`convs.4.1`, `convs.4.2`).
    pooling: ConvBnRelu,
    /// `project.0`, `project.1`.
    project: ConvBnRelu,
    dropout: f64,
}

impl Aspp {
    fn new(p: nn::Path, c_in: i64, c_out: i64, cfg: &Config) -> Self {
        let convs = &p / "convs";
        let bn = |p: nn::Path| batch_norm2d(p, c_out, 1e-5, 0.1);
        let mut branches = vec![ConvBnRelu {
            conv: Conv::Plain(torch_conv(
                &convs / 0 / 0,
                c_in,
                c_out,
                1,
                conv_cfg(0, 1, 1, false),
            )),
            bn: bn(&convs / 0 / 1),
        }];
        for (i, &rate) in cfg.atrous_rates.iter().enumerate() {
            let q = &convs / (i + 1);
            let conv = if cfg.aspp_separable {
                Conv::Separable(SeparableConv2d::new(&q / 0, c_in, c_out, 3, rate, rate))
            } else {
                Conv::Plain(torch_conv(
                    &q / 0,
                    c_in,
                    c_out,
                    3,
                    conv_cfg(rate, rate, 1, false),
                ))
            };
            branches.push(ConvBnRelu {
                conv,
                bn: bn(&q / 1),
            });
        }
        let q = &convs / 4;
        let pooling = ConvBnRelu {
            conv: Conv::Plain(torch_conv(&q / 1, c_in, c_out, 1, conv_cfg(0, 1, 1, false))),
            bn: bn(&q / 2),
        };
        let q = &p / "project";
        let project = ConvBnRelu {
            conv: Conv::Plain(torch_conv(
                &q / 0,
                5 * c_out,
                c_out,
                1,
                conv_cfg(0, 1, 1, false),
            )),
            bn: bn(&q / 1),
        };
        Self {
            branches,
            pooling,
            project,
            dropout: cfg.aspp_dropout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (h, w) = hw(x);
        let mut parts = self
            .branches
            .iter()
            .map(|b| b.forward(x, train))
            .collect::<Result<Vec<_>>>()?;
        // [B, C, h, w] -> [B, C', 1, 1] -> broadcast back to [B, C', h, w]
        let pooled = self
            .pooling
            .forward(&x.f_adaptive_avg_pool2d([1, 1])?, train)?;
        parts.push(Interpolation::Bilinear.resize(&pooled, h, w)?);
        // 5 x [B, C', h, w] -> [B, 5C', h, w]
        let y = self.project.forward(&Tensor::f_cat(&parts, 1)?, train)?;
        Ok(y.f_dropout(self.dropout, train)?)
    }
}

/// The head of each variant after the ASPP.
#[derive(Debug)]
enum Tail {
    /// DeepLabV3: `conv` (3x3), `bn`, ReLU.
    V3(Box<ConvBnRelu>),
    /// DeepLabV3+ (see [`PlusTail`]).
    Plus(Box<PlusTail>),
}

/// DeepLabV3+ after the ASPP: `aspp.1` (separable 3x3) + `aspp.2` (BN) + ReLU,
/// bilinear upsampling, `block1` (1x1 conv-BN-ReLU on the stride-4 map to 48
/// channels), `block2` (separable 3x3 conv-BN-ReLU on the concatenation).
#[derive(Debug)]
struct PlusTail {
    aspp_conv: ConvBnRelu,
    scale: i64,
    block1: ConvBnRelu,
    block2: ConvBnRelu,
}

/// smp's `DeepLabV3Decoder` or `DeepLabV3PlusDecoder`.
///
/// DeepLabV3 returns `[B, decoder_channels, h, w]` at the deepest map's resolution;
/// DeepLabV3+ returns it at the resolution of `features[2]` (stride 4).
#[derive(Debug)]
pub struct DeepLabV3Decoder {
    aspp: Aspp,
    tail: Tail,
    cfg: Config,
}

impl DeepLabV3Decoder {
    /// The channels DeepLabV3+ reduces the stride-4 map to (fixed by the paper).
    pub const HIGHRES_CHANNELS: i64 = 48;

    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let c_deep = *cfg.encoder_channels.last().expect("validated");
        let c = cfg.decoder_channels;
        let (aspp, tail) = match cfg.variant {
            Variant::DeepLabV3 => (
                Aspp::new(&p / "aspp", c_deep, c, cfg),
                Tail::V3(Box::new(ConvBnRelu {
                    conv: Conv::Plain(torch_conv(&p / "conv", c, c, 3, conv_cfg(1, 1, 1, false))),
                    bn: batch_norm2d(&p / "bn", c, 1e-5, 0.1),
                })),
            ),
            Variant::DeepLabV3Plus => {
                let a = &p / "aspp";
                let hr = Self::HIGHRES_CHANNELS;
                let c_high = cfg.encoder_channels[2];
                let b1 = &p / "block1";
                let b2 = &p / "block2";
                (
                    Aspp::new(&a / 0, c_deep, c, cfg),
                    Tail::Plus(Box::new(PlusTail {
                        aspp_conv: ConvBnRelu {
                            conv: Conv::Separable(SeparableConv2d::new(&a / 1, c, c, 3, 1, 1)),
                            bn: batch_norm2d(&a / 2, c, 1e-5, 0.1),
                        },
                        scale: cfg.up_scale(),
                        block1: ConvBnRelu {
                            conv: Conv::Plain(torch_conv(
                                &b1 / 0,
                                c_high,
                                hr,
                                1,
                                conv_cfg(0, 1, 1, false),
                            )),
                            bn: batch_norm2d(&b1 / 1, hr, 1e-5, 0.1),
                        },
                        block2: ConvBnRelu {
                            conv: Conv::Separable(SeparableConv2d::new(
                                &b2 / 0,
                                hr + c,
                                c,
                                3,
                                1,
                                1,
                            )),
                            bn: batch_norm2d(&b2 / 1, c, 1e-5, 0.1),
                        },
                    })),
                )
            }
        };
        Ok(Self {
            aspp,
            tail,
            cfg: cfg.clone(),
        })
    }
}

impl Model for DeepLabV3Decoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let n = self.cfg.encoder_channels.len();
        let name = self.cfg.variant.name();
        let y = match &self.tail {
            Tail::V3(tail) => {
                check_maps(name, xs, &self.cfg.encoder_channels, &[n - 1])?;
                tail.forward(&self.aspp.forward(&xs[n - 1], train)?, train)?
            }
            Tail::Plus(t) => {
                let PlusTail {
                    aspp_conv,
                    scale,
                    block1,
                    block2,
                } = &**t;
                check_maps(name, xs, &self.cfg.encoder_channels, &[2, n - 1])?;
                let y = aspp_conv.forward(&self.aspp.forward(&xs[n - 1], train)?, train)?;
                // nn.Upsample(scale_factor=s, bilinear, align_corners=True): [h, w] -> [s*h, s*w]
                let (h, w) = hw(&y);
                let y = Interpolation::Bilinear.resize_aligned(&y, h * scale, w * scale, true)?;
                let high = block1.forward(&xs[2], train)?;
                if hw(&high) != hw(&y) {
                    return Err(PluginError::forward_failed(format!(
                        "DeepLabV3Plus upsamples the deepest map ({h}x{w}) by {scale} to {}x{} but feature map 2 \
                         is {}x{}; with encoder_output_stride={} and depth {} the deepest map must be 1/{scale} \
                         the size of map 2",
                        h * scale,
                        w * scale,
                        hw(&high).0,
                        hw(&high).1,
                        self.cfg.output_stride,
                        self.cfg.depth()
                    )));
                }
                // [B, C, H, W] ++ [B, 48, H, W] -> [B, C + 48, H, W]
                block2.forward(&Tensor::f_cat(&[y, high], 1)?, train)?
            }
        };
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.decoder_channels]
    }
}

fn config(ctx: &BuildCtx<'_, '_>, variant: Variant) -> Result<Config> {
    let mut cfg = match variant {
        Variant::DeepLabV3 => Config::deeplabv3(ctx.channels.clone()),
        Variant::DeepLabV3Plus => Config::deeplabv3plus(ctx.channels.clone()),
    };
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    cfg.atrous_rates = ctx.args.get("decoder_atrous_rates")?;
    cfg.aspp_separable = ctx.args.get("decoder_aspp_separable")?;
    cfg.aspp_dropout = ctx.args.get("decoder_aspp_dropout")?;
    args::check_dropout(ctx, "decoder_aspp_dropout", cfg.aspp_dropout)?;
    cfg.output_stride = ctx.args.get("encoder_output_stride")?;
    args::in_entry(ctx, cfg.validate())?;
    Ok(cfg)
}

/// The decoder smp's full model builds from `ctx` (the encoder's channels and the model's
/// keyword arguments) under `p`, with the input channels of its segmentation head.
pub(crate) fn full_model_decoder(
    ctx: &BuildCtx<'_, '_>,
    p: nn::Path,
    variant: Variant,
) -> Result<(Box<dyn Model>, i64)> {
    let cfg = config(ctx, variant)?;
    let out = cfg.decoder_channels;
    Ok((Box::new(DeepLabV3Decoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>, variant: Variant) -> Result<ModuleBox> {
    let cfg = config(ctx, variant)?;
    // smp's segmentation head reads decoder_channels.
    SmpDecoderWrapper::build(ctx, cfg.decoder_channels, |p| {
        DeepLabV3Decoder::new(p, &cfg)
    })
}

fn declare(e: Entry, separable: bool, output_stride: i64) -> Entry {
    e.opt("decoder_channels", ParamType::INT, json!(256), "channels of the ASPP branches and of the output")
        .opt(
            "decoder_atrous_rates",
            ParamType::INT_LIST,
            json!([12, 24, 36]),
            "dilation rates of the three atrous ASPP branches",
        )
        .opt(
            "decoder_aspp_separable",
            ParamType::BOOL,
            json!(separable),
            "depthwise-separable convolutions in the atrous ASPP branches",
        )
        .opt("decoder_aspp_dropout", ParamType::FLOAT, json!(0.5), "dropout after the ASPP projection")
        .opt(
            "encoder_output_stride",
            ParamType::INT,
            Value::from(output_stride),
            "the encoder's output stride, 8 or 16 (DeepLabV3+: sets the ASPP upsampling; otherwise only smp's \
                 discarded head uses it)",
        )
}

/// The `smp_DeepLabV3` entry of the decoder registry.
pub(crate) fn deeplabv3_entry() -> Entry {
    declare(
        wrapper::entry(
            "DeepLabV3",
            "DeepLabV3 decoder of segmentation_models_pytorch (smp.DeepLabV3's decoder, as TerraTorch's \
                 SMPRegistry wraps it): atrous spatial pyramid pooling on the deepest feature map, then a 3x3 \
                 conv-BN-ReLU; returns one map with decoder_channels channels at the deepest map's resolution.",
            |ctx| build(ctx, Variant::DeepLabV3),
        ),
        false,
        8,
    )
}

/// The `smp_DeepLabV3Plus` entry of the decoder registry.
pub(crate) fn deeplabv3plus_entry() -> Entry {
    declare(
        wrapper::entry(
            "DeepLabV3Plus",
            "DeepLabV3+ decoder of segmentation_models_pytorch (smp.DeepLabV3Plus's decoder, as TerraTorch's \
                 SMPRegistry wraps it): atrous spatial pyramid pooling on the deepest feature map, upsampled (x4 for \
                 output stride 16 and depth > 3, else x2) and fused with the stride-4 map (channels[2]); needs at \
                 least four maps and returns one map with decoder_channels channels at map 2's resolution.",
            |ctx| build(ctx, Variant::DeepLabV3Plus),
        ),
        true,
        16,
    )
}
