//! The PSPNet decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/pspnet/decoder.py` (`PSPDecoder`,
//! `PSPModule`, `PSPBlock`) as `segmentation_models_pytorch/decoders/pspnet/model.py`
//! (`PSPNet`) builds it, with `Conv2dReLU` and `get_norm_layer` from
//! `segmentation_models_pytorch/base/modules.py` and the initialisation of
//! `segmentation_models_pytorch/base/initialization.py`.
//!
//! This file also holds small helpers the DeepLabV3, FPN, Linknet and PAN decoders
//! share (PyTorch-initialised convolutions, resizing with `align_corners`, the
//! feature-list and argument checks).
//!
//! TerraTorch (`terratorch/registry/smp_registry.py`) builds `smp.PSPNet` around a
//! dummy encoder whose channel list is the given one, with
//! `encoder_depth = len(channels) - 1`; the decoder reads only the deepest map.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, Tensor};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

use super::unet::{Conv2dReLU, Interpolation, NormConfig};
use super::wrapper::{self, SmpDecoderWrapper};

// ---------------------------------------------------------------------------
// Shared building blocks
// ---------------------------------------------------------------------------

/// A convolution with PyTorch's own `nn.Conv2d` initialisation (for decoders smp
/// never re-initialises): weight and bias uniform in `±1/sqrt(fan_in)`.
pub(crate) fn torch_conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    cfg: nn::ConvConfig,
) -> nn::Conv2D {
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
pub(crate) fn torch_conv_transpose(
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

/// `nn.Conv2d` options beyond the kernel size.
pub(crate) fn conv_cfg(padding: i64, dilation: i64, groups: i64, bias: bool) -> nn::ConvConfig {
    nn::ConvConfig {
        padding,
        dilation,
        groups,
        bias,
        ..Default::default()
    }
}

/// `F.interpolate(x, size=(h, w), mode=mode, align_corners=align_corners)` for the
/// 4-D modes smp's `decoder_interpolation` arguments accept. `align_corners` only
/// applies to the bilinear and bicubic modes (PyTorch's `None` is `false`).
pub(crate) fn resize(
    x: &Tensor,
    mode: Interpolation,
    h: i64,
    w: i64,
    align_corners: bool,
) -> Result<Tensor> {
    let size = [h, w];
    Ok(match mode {
        Interpolation::Nearest => x.f_upsample_nearest2d(size, None, None)?,
        Interpolation::Bilinear => x.f_upsample_bilinear2d(size, align_corners, None, None)?,
        Interpolation::Bicubic => x.f_upsample_bicubic2d(size, align_corners, None, None)?,
        Interpolation::Area => x.f_adaptive_avg_pool2d(size)?,
        Interpolation::NearestExact => x.f_internal_upsample_nearest_exact2d(size, None, None)?,
    })
}

/// `(H, W)` of a `[B, C, H, W]` map.
pub(crate) fn hw(x: &Tensor) -> (i64, i64) {
    let s = x.size();
    (s[s.len() - 2], s[s.len() - 1])
}

/// Checks the feature list a decoder receives: as many maps as the channel list it
/// was built for, every one `[B, C, H, W]`, and the maps at `used` with their
/// declared channels.
pub(crate) fn check_maps(
    decoder: &str,
    xs: &[Tensor],
    channels: &[i64],
    used: &[usize],
) -> Result<()> {
    if xs.len() != channels.len() {
        return Err(PluginError::forward_failed(format!(
            "the {decoder} decoder was built for {} feature maps (channels {channels:?}) but got {}",
            channels.len(),
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
        if used.contains(&i) && size[1] != channels[i] {
            return Err(PluginError::forward_failed(format!(
                "feature map {i} has {} channels but the {decoder} decoder was built for {} (channels {channels:?})",
                size[1], channels[i]
            )));
        }
    }
    Ok(())
}

/// Refuses channel lists with fewer than `min` maps or non-positive entries.
pub(crate) fn check_channels(decoder: &str, channels: &[i64], min: usize, why: &str) -> Result<()> {
    if channels.len() < min {
        return Err(PluginError::invalid_argument(format!(
            "the {decoder} decoder needs at least {min} feature maps ({why}), got the channel list {channels:?}"
        )));
    }
    if let Some(c) = channels.iter().find(|&&c| c <= 0) {
        return Err(PluginError::invalid_argument(format!(
            "channel counts must be positive, got {c} in {channels:?}"
        )));
    }
    Ok(())
}

/// Reads a norm argument (`decoder_use_norm`), letting smp's deprecated alias
/// (`alias`, popped from smp's `**kwargs`) win when it is given.
pub(crate) fn norm_arg(ctx: &BuildCtx<'_, '_>, alias: &str) -> Result<NormConfig> {
    let (name, v) = match ctx.args.raw(alias) {
        Some(v) => (alias, v.clone()),
        None => (
            "decoder_use_norm",
            ctx.args
                .raw("decoder_use_norm")
                .cloned()
                .unwrap_or(Value::from("batchnorm")),
        ),
    };
    NormConfig::from_smp(&v).map_err(|why| {
        PluginError::invalid_argument(format!("argument `{name}` of `{}`: {why}", ctx.qualified()))
    })
}

/// Reads an interpolation-mode argument.
pub(crate) fn interpolation_arg(
    ctx: &BuildCtx<'_, '_>,
    name: &str,
    value: &str,
) -> Result<Interpolation> {
    Interpolation::parse(value).map_err(|why| {
        PluginError::invalid_argument(format!("argument `{name}` of `{}`: {why}", ctx.qualified()))
    })
}

/// Checks a dropout probability as `nn.Dropout` does.
pub(crate) fn check_dropout(ctx: &BuildCtx<'_, '_>, name: &str, p: f64) -> Result<()> {
    ctx.args.ensure(
        (0.0..=1.0).contains(&p),
        name,
        format_args!("is a dropout probability: it must lie in [0, 1], got {p}"),
    )
}

/// `Dropout2d(p)` (whole channels) when training.
pub(crate) fn dropout2d(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        Ok(x.f_feature_dropout(p, train)?)
    } else {
        Ok(x)
    }
}

// ---------------------------------------------------------------------------
// PSPNet
// ---------------------------------------------------------------------------

/// Configuration of [`PspDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder feature map, the full-resolution one first.
    pub encoder_channels: Vec<i64>,
    /// Output channels of the final `Conv2dReLU` (smp's `psp_out_channels`).
    pub out_channels: i64,
    /// Norm of every `Conv2dReLU` (smp's `decoder_use_norm`); the 1x1 pooling
    /// branch always uses the identity.
    pub use_norm: NormConfig,
    /// `Dropout2d` probability after the final convolution (smp's `psp_dropout`).
    pub dropout: f64,
}

impl Config {
    /// The pooled grid sizes of the pyramid (fixed in smp).
    pub const SIZES: [i64; 4] = [1, 2, 3, 6];

    /// smp's defaults (`psp_out_channels=512`, batchnorm, dropout 0.2).
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            out_channels: 512,
            use_norm: NormConfig::default(),
            dropout: 0.2,
        }
    }

    /// Checks what would fail in smp, at build time rather than in the first forward.
    pub fn validate(&self) -> Result<()> {
        check_channels(
            "PSPNet",
            &self.encoder_channels,
            1,
            "it reads the deepest one",
        )?;
        let c = *self.encoder_channels.last().expect("checked");
        if c % 4 != 0 {
            return Err(PluginError::invalid_argument(format!(
                "the PSPNet decoder splits the deepest map's {c} channels into 4 pyramid branches of {c} // 4 = {} \
                 and then expects 2 * {c} channels; that only adds up when the deepest map's channels are a \
                 multiple of 4 (smp builds it, but its forward fails); got the channel list {:?}",
                c / 4,
                self.encoder_channels
            )));
        }
        if self.out_channels <= 0 {
            return Err(PluginError::invalid_argument(format!(
                "`psp_out_channels` must be positive, got {}",
                self.out_channels
            )));
        }
        Ok(())
    }
}

/// smp's `PSPBlock`: adaptive average pooling to `size x size`, a 1x1 `Conv2dReLU`,
/// bilinear resize back (align_corners=True).
#[derive(Debug)]
struct PspBlock {
    size: i64,
    conv: Conv2dReLU,
}

impl PspBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, size: i64, norm: &NormConfig) -> Self {
        // smp drops the norm on the 1x1 branch: BatchNorm cannot train on one value per channel.
        let norm = if size == 1 {
            NormConfig::Identity
        } else {
            norm.clone()
        };
        Self {
            size,
            conv: Conv2dReLU::with_kernel(&p / "pool" / 1, c_in, c_out, 1, &norm),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (h, w) = hw(x);
        let y = x.f_adaptive_avg_pool2d([self.size, self.size])?;
        let y = self.conv.forward(&y, train)?;
        resize(&y, Interpolation::Bilinear, h, w, true)
    }
}

/// smp's `PSPDecoder`: the pyramid pooling module on the deepest map (its four
/// branches concatenated with the map itself), a 1x1 `Conv2dReLU` and `Dropout2d`.
///
/// Output: one `[B, psp_out_channels, h, w]` map at the deepest map's resolution.
#[derive(Debug)]
pub struct PspDecoder {
    blocks: Vec<PspBlock>,
    conv: Conv2dReLU,
    cfg: Config,
}

impl PspDecoder {
    /// Builds the decoder under `p` (`psp.blocks.N.pool.1.*`, `conv.*`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let c = *cfg.encoder_channels.last().expect("validated");
        let blocks_p = &p / "psp" / "blocks";
        let blocks = Config::SIZES
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                PspBlock::new(
                    &blocks_p / i,
                    c,
                    c / Config::SIZES.len() as i64,
                    s,
                    &cfg.use_norm,
                )
            })
            .collect();
        let conv = Conv2dReLU::with_kernel(&p / "conv", 2 * c, cfg.out_channels, 1, &cfg.use_norm);
        Ok(Self {
            blocks,
            conv,
            cfg: cfg.clone(),
        })
    }
}

impl Model for PspDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let n = self.cfg.encoder_channels.len();
        check_maps("PSPNet", xs, &self.cfg.encoder_channels, &[n - 1])?;
        let x = &xs[n - 1];
        let mut parts = self
            .blocks
            .iter()
            .map(|b| b.forward(x, train))
            .collect::<Result<Vec<_>>>()?;
        parts.push(x.shallow_clone());
        // 4 x [B, C/4, h, w] ++ [B, C, h, w] -> [B, 2C, h, w]
        let y = Tensor::f_cat(&parts, 1)?;
        let y = self.conv.forward(&y, train)?;
        Ok(vec![dropout2d(y, self.cfg.dropout, train)?])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.out_channels]
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.out_channels = ctx.args.get("psp_out_channels")?;
    cfg.use_norm = norm_arg(ctx, "psp_use_batchnorm")?;
    cfg.dropout = ctx.args.get("psp_dropout")?;
    check_dropout(ctx, "psp_dropout", cfg.dropout)?;
    cfg.validate()
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    // smp's segmentation head reads psp_out_channels.
    SmpDecoderWrapper::build(ctx, cfg.out_channels, |p| PspDecoder::new(p, &cfg))
}

/// The `smp_PSPNet` entry of the decoder registry.
pub(crate) fn entry() -> Entry {
    wrapper::entry(
            "PSPNet",
            "Pyramid Scene Parsing decoder of segmentation_models_pytorch (smp.PSPNet's decoder, as TerraTorch's \
             SMPRegistry wraps it): pools the deepest feature map to 1x1, 2x2, 3x3 and 6x6 grids, convolves and \
             resizes each back, concatenates them with the map and fuses them with a 1x1 conv; returns one map \
             with psp_out_channels channels at the deepest map's resolution (smp's head upsamples it by 8).",
            build,
        )
        .opt("psp_out_channels", ParamType::INT, Value::from(512), "output channels of the final 1x1 conv")
        .opt(
            "decoder_use_norm",
            ParamType::ANY,
            Value::from("batchnorm"),
            "norm after each conv: true/false, \"batchnorm\", \"identity\", \"layernorm\", \"instancenorm\", or {\"type\": ..., **kwargs}",
        )
        .opt("psp_dropout", ParamType::FLOAT, Value::from(0.2), "Dropout2d probability after the final conv")
        .opt(
            "psp_use_batchnorm",
            ParamType::ANY,
            Value::Null,
            "deprecated alias of decoder_use_norm; overrides it when given",
        )
}
