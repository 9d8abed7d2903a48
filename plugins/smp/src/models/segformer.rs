//! The SegFormer decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/segformer/decoder.py` (`SegformerDecoder`,
//! `MLP`) as `decoders/segformer/model.py` (`Segformer`) builds it, wrapped by
//! TerraTorch's `SMPRegistry` (see [`super::wrapper`]).
use super::args;
use super::blocks::{xavier_linear, Conv2dReLU, NormConfig};
use super::checks::{check_maps_from, check_width};
use super::wrapper::{self, SmpDecoderWrapper};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// Configuration of [`SegformerDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder map, full resolution first (TerraTorch's channel list).
    /// A 0 in second place marks a missing 1/2-scale map (mit encoders), as in smp.
    pub encoder_channels: Vec<i64>,
    /// Width of every projected map and of the output (`decoder_segmentation_channels`).
    pub segmentation_channels: i64,
}

impl Config {
    /// smp's default width (256) for the given encoder channels.
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            segmentation_channels: 256,
        }
    }

    /// Whether the second map is the empty placeholder smp's mit encoders report.
    fn skips_second(&self) -> bool {
        self.encoder_channels.get(1) == Some(&0)
    }

    /// Channels of the maps that get an MLP, deepest first.
    fn mlp_channels(&self) -> Vec<i64> {
        let start = if self.skips_second() { 2 } else { 1 };
        self.encoder_channels[start..]
            .iter()
            .rev()
            .copied()
            .collect()
    }

    /// Checks what smp checks, plus what would fail later.
    pub fn validate(&self) -> Result<()> {
        let depth = self.encoder_channels.len().saturating_sub(1);
        if depth < 3 {
            return Err(PluginError::invalid_argument(format!(
                "Encoder depth for Segformer decoder cannot be less than 3, got {depth} (the depth is the length of \
                 the channel list {:?} minus one)",
                self.encoder_channels
            )));
        }
        let bad = self
            .encoder_channels
            .iter()
            .enumerate()
            .find(|&(i, &c)| c < 0 || (c == 0 && i != 1));
        if let Some((_, c)) = bad {
            return Err(PluginError::invalid_argument(format!(
                "channel counts must be positive (only the second may be 0, for a missing 1/2-scale map), got {c} \
                 in {:?}",
                self.encoder_channels
            )));
        }
        check_width("decoder_segmentation_channels", self.segmentation_channels)?;
        Ok(())
    }
}

/// smp's Segformer decoder.
///
/// Input: the encoder's maps, full resolution first. Each map but the first is
/// projected per pixel to `segmentation_channels`, resized (bilinear) to a quarter of
/// the first map's size, concatenated and fused by a 1x1 `Conv2dReLU`. Output: one
/// `[B, segmentation_channels, H0 / 4, W0 / 4]` map.
#[derive(Debug)]
pub struct SegformerDecoder {
    /// `mlp_stage.N.linear`, deepest map first.
    mlp_stage: Vec<nn::Linear>,
    fuse_stage: Conv2dReLU,
    cfg: Config,
}

impl SegformerDecoder {
    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.segmentation_channels;
        let mp = &p / "mlp_stage";
        let chans = cfg.mlp_channels();
        let mlp_stage = chans
            .iter()
            .enumerate()
            .map(|(i, &ci)| xavier_linear(&mp / i / "linear", ci, c))
            .collect();
        // smp fixes this norm to batchnorm whatever the model's other settings.
        let fuse_stage = Conv2dReLU::with_kernel(
            &p / "fuse_stage",
            chans.len() as i64 * c,
            c,
            1,
            &NormConfig::batchnorm(),
        );
        Ok(Self {
            mlp_stage,
            fuse_stage,
            cfg: cfg.clone(),
        })
    }
}

impl Model for SegformerDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let want = &self.cfg.encoder_channels;
        check_maps_from("Segformer", xs, want, 1)?;
        let size = xs[0].size();
        let (th, tw) = (size[2] / 4, size[3] / 4);
        // smp decides on the runtime width of the second map.
        let start = if xs[1].size()[1] == 0 { 2 } else { 1 };
        let feats: Vec<&Tensor> = xs[start..].iter().rev().collect();
        let mut resized = Vec::with_capacity(self.mlp_stage.len());
        for (x, lin) in feats.iter().zip(&self.mlp_stage) {
            let s = x.size();
            let (b, h, w) = (s[0], s[2], s[3]);
            // [B, C, H, W] -> [B, HW, C] -> linear -> [B, C', H, W]
            let y = x
                .f_flatten(2, -1)?
                .f_transpose(1, 2)?
                .apply(lin)
                .f_transpose(1, 2)?
                .f_reshape([b, -1, h, w])?;
            resized.push(y.f_upsample_bilinear2d([th, tw], false, None, None)?);
        }
        let y = self
            .fuse_stage
            .forward(&Tensor::f_cat(&resized, 1)?, train)?;
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.segmentation_channels]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.segmentation_channels = ctx.args.get("decoder_segmentation_channels")?;
    ctx.args.ensure(
        cfg.segmentation_channels > 0,
        "decoder_segmentation_channels",
        format_args!("must be positive, got {}", cfg.segmentation_channels),
    )?;
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
    let out = cfg.segmentation_channels;
    Ok((Box::new(SegformerDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = cfg.segmentation_channels;
    SmpDecoderWrapper::build(ctx, out, |p| SegformerDecoder::new(p, &cfg))
}

/// The `smp_Segformer` entry.
pub(crate) fn entry() -> Entry {
    wrapper::entry(
        "Segformer",
        "SegFormer all-MLP decoder of segmentation_models_pytorch (smp.Segformer's decoder, as TerraTorch's \
         SMPRegistry wraps it): projects every encoder map but the first (full resolution first; depth = number of \
         maps - 1 >= 3) to decoder_segmentation_channels, resizes them to a quarter of the first map's size and \
         fuses them; returns one map with decoder_segmentation_channels channels at 1/4 of the first map's size.",
        build,
    )
    .opt(
        "decoder_segmentation_channels",
        ParamType::INT,
        json!(256),
        "width every map is projected to, and of the output",
    )
}
