//! The Linknet decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/linknet/decoder.py` (`LinknetDecoder`,
//! `DecoderBlock`, `TransposeX2`) as `segmentation_models_pytorch/decoders/linknet/model.py`
//! (`Linknet`) builds it, with `Conv2dReLU`/`get_norm_layer` from
//! `segmentation_models_pytorch/base/modules.py`.
//!
//! TerraTorch (`terratorch/registry/smp_registry.py`) builds `smp.Linknet` around a
//! dummy encoder whose channel list is the given one, with
//! `encoder_depth = len(channels) - 1` decoder blocks.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Entry, Model},
    ModuleBox, PluginError, Result,
};

use super::args;
use super::blocks::{hw, torch_conv_transpose, Conv2dReLU, Norm, NormConfig};
use super::checks::{check_channels, check_maps};
use super::wrapper::{self, SmpDecoderWrapper};

/// Configuration of [`LinknetDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder feature map, the full-resolution one first.
    pub encoder_channels: Vec<i64>,
    /// Norm after each convolution (smp's `decoder_use_norm`).
    pub use_norm: NormConfig,
}

impl Config {
    /// Output channels of the last block (fixed to 32 by `smp.Linknet`).
    pub const PREFINAL_CHANNELS: i64 = 32;

    /// smp's defaults (batchnorm).
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            use_norm: NormConfig::default(),
        }
    }

    /// Number of decoder blocks (smp's `encoder_depth`, as TerraTorch sets it).
    pub fn n_blocks(&self) -> usize {
        self.encoder_channels.len().saturating_sub(1)
    }

    /// Input and output channels of each block, deepest first.
    fn block_channels(&self) -> Vec<(i64, i64)> {
        // Deepest first, without the full-resolution map, then the fixed 32.
        let mut chans: Vec<i64> = self
            .encoder_channels
            .iter()
            .skip(1)
            .rev()
            .copied()
            .collect();
        chans.push(Self::PREFINAL_CHANNELS);
        (0..self.n_blocks())
            .map(|i| (chans[i], chans[i + 1]))
            .collect()
    }

    /// Checks what would fail in smp (Linknet with a single map builds in smp but
    /// its forward fails).
    pub fn validate(&self) -> Result<()> {
        check_channels(
            "Linknet",
            &self.encoder_channels,
            2,
            "the full-resolution one and at least one deeper",
        )
    }
}

/// smp's `TransposeX2`: `ConvTranspose2d(k=4, s=2, p=1)` (with bias), norm, ReLU.
#[derive(Debug)]
struct TransposeX2 {
    conv: nn::ConvTranspose2D,
    norm: Norm,
}

/// smp's `DecoderBlock` of Linknet: 1x1 `Conv2dReLU` to C/4, `TransposeX2`, 1x1
/// `Conv2dReLU` to the output channels; then the skip is added.
#[derive(Debug)]
struct DecoderBlock {
    reduce: Conv2dReLU,
    up: TransposeX2,
    expand: Conv2dReLU,
}

impl DecoderBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, norm: &NormConfig) -> Self {
        let b = &p / "block";
        let mid = c_in / 4;
        let t = &b / 1;
        let cfg = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        Self {
            reduce: Conv2dReLU::with_kernel(&b / 0, c_in, mid, 1, norm),
            up: TransposeX2 {
                conv: torch_conv_transpose(&t / 0, mid, mid, 4, cfg),
                norm: Norm::new(&t / 1, norm, mid),
            },
            expand: Conv2dReLU::with_kernel(&b / 2, mid, c_out, 1, norm),
        }
    }

    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let y = self.reduce.forward(x, train)?;
        // [B, C/4, h, w] -> [B, C/4, 2h, 2w]
        let y = self
            .up
            .norm
            .forward(&y.apply(&self.up.conv), train)?
            .f_relu()?;
        let y = self.expand.forward(&y, train)?;
        match skip {
            Some(s) => {
                if hw(s) != hw(&y) {
                    return Err(PluginError::forward_failed(format!(
                        "a Linknet block doubles its input to {}x{} but the skip connection is {}x{}; each feature \
                         map must be half the size of the one before it",
                        hw(&y).0,
                        hw(&y).1,
                        hw(s).0,
                        hw(s).1
                    )));
                }
                Ok(y.f_add(s)?)
            }
            None => Ok(y),
        }
    }
}

/// smp's `LinknetDecoder`: one block per encoder stage, deepest first, each doubling
/// the resolution and adding the next shallower map.
///
/// Output: one `[B, 32, 2h, 2w]` map, where `h x w` is the second map's size (the
/// first map's size for a standard encoder); the first map itself is never read.
#[derive(Debug)]
pub struct LinknetDecoder {
    blocks: Vec<DecoderBlock>,
    cfg: Config,
}

impl LinknetDecoder {
    /// Builds the decoder under `p` (`blocks.N.block.*`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let bp = &p / "blocks";
        let blocks = cfg
            .block_channels()
            .into_iter()
            .enumerate()
            .map(|(i, (c_in, c_out))| DecoderBlock::new(&bp / i, c_in, c_out, &cfg.use_norm))
            .collect();
        Ok(Self {
            blocks,
            cfg: cfg.clone(),
        })
    }
}

impl Model for LinknetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let n = self.cfg.encoder_channels.len();
        let used: Vec<usize> = (1..n).collect();
        check_maps("Linknet", xs, &self.cfg.encoder_channels, &used)?;
        // Deepest first, without the full-resolution map.
        let feats: Vec<&Tensor> = xs[1..].iter().rev().collect();
        let mut x = feats[0].shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, feats.get(i + 1).copied(), train)?;
        }
        Ok(vec![x])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![Config::PREFINAL_CHANNELS]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.use_norm = args::use_norm(ctx)?;
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
    let out = Config::PREFINAL_CHANNELS;
    Ok((Box::new(LinknetDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = Config::PREFINAL_CHANNELS;
    // smp.Linknet's segmentation head reads a fixed 32 channels.
    SmpDecoderWrapper::build(ctx, out, |p| LinknetDecoder::new(p, &cfg))
}

/// The `smp_Linknet` entry of the decoder registry.
pub(crate) fn entry() -> Entry {
    args::declare_use_norm(wrapper::entry(
        "Linknet",
        "LinkNet decoder of segmentation_models_pytorch (smp.Linknet's decoder, as TerraTorch's SMPRegistry \
         wraps it): one block per stage (1x1 conv to C/4, transposed conv x2, 1x1 conv) from the deepest map \
         up, adding each shallower map (each must be twice the size of the next); returns one map with 32 \
         channels at twice the second map's resolution.",
        build,
    ))
}
