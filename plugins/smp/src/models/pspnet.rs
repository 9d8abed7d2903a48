//! The PSPNet decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/pspnet/decoder.py` (`PSPDecoder`,
//! `PSPModule`, `PSPBlock`) as `segmentation_models_pytorch/decoders/pspnet/model.py`
//! (`PSPNet`) builds it, with `Conv2dReLU` and `get_norm_layer` from
//! `segmentation_models_pytorch/base/modules.py` and the initialisation of
//! `segmentation_models_pytorch/base/initialization.py`.
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

use super::args;
use super::blocks::{dropout2d, hw, Conv2dReLU, Interpolation, NormConfig};
use super::checks::{check_channels, check_maps, check_width};
use super::wrapper::{self, SmpDecoderWrapper};

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
        check_width("psp_out_channels", self.out_channels)?;
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
        Interpolation::Bilinear.resize_aligned(&y, h, w, true)
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

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.out_channels = ctx.args.get("psp_out_channels")?;
    cfg.use_norm = args::use_norm_or(ctx, "psp_use_batchnorm")?;
    cfg.dropout = ctx.args.get("psp_dropout")?;
    args::check_dropout(ctx, "psp_dropout", cfg.dropout)?;
    args::in_entry(ctx, cfg.validate())?;
    Ok(cfg)
}

/// The decoder smp's full model builds from `ctx` (the encoder's channels and the model's
/// keyword arguments) under `p`, with the input channels of its segmentation head.
pub(crate) fn full_model_decoder(
    ctx: &BuildCtx<'_, '_>,
    p: nn::Path,
) -> Result<(Box<dyn Model>, i64)> {
    let cfg = config(ctx)?;
    let out = cfg.out_channels;
    Ok((Box::new(PspDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = cfg.out_channels;
    // smp's segmentation head reads psp_out_channels.
    SmpDecoderWrapper::build(ctx, out, |p| PspDecoder::new(p, &cfg))
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
