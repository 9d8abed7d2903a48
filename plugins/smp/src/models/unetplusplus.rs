//! The UNet++ decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/unetplusplus/decoder.py`
//! (`UnetPlusPlusDecoder`, `DecoderBlock`) as `decoders/unetplusplus/model.py`
//! (`UnetPlusPlus`) builds it, wrapped by TerraTorch's `SMPRegistry` (see
//! [`super::wrapper`]). Its `DecoderBlock` is smp's `UnetDecoderBlock` resized to twice
//! its input, so it is built as [`UnetDecoderBlock`].
use super::args;
use super::blocks::{hw, AttentionType, Interpolation, NormConfig};
use super::checks::{check_maps_from, check_stages};
use super::unet::{block_channels, UnetDecoderBlock};
use super::wrapper::{self, SmpDecoderWrapper};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// Configuration of [`UnetPlusPlusDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder map, full resolution first (TerraTorch's channel list).
    pub encoder_channels: Vec<i64>,
    /// Output channels of the blocks on the top row, deepest first.
    pub decoder_channels: Vec<i64>,
    /// Normalisation inside `Conv2dReLU`.
    pub use_norm: NormConfig,
    /// Attention around the convolutions of each block.
    pub attention_type: Option<AttentionType>,
    /// Mode of the 2x upsampling in each block.
    pub interpolation_mode: Interpolation,
}

impl Config {
    /// smp's defaults (`decoder_channels=(256, 128, 64, 32, 16)`, batchnorm, no
    /// attention, nearest) for the given encoder channels.
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            decoder_channels: vec![256, 128, 64, 32, 16],
            use_norm: NormConfig::default(),
            attention_type: None,
            interpolation_mode: Interpolation::Nearest,
        }
    }

    /// Checks what smp checks, plus what would fail in its forward.
    pub fn validate(&self) -> Result<()> {
        // Depth 1: smp builds one but its forward looks up the block `x_0_-1` and fails.
        check_stages(
            "UnetPlusPlus",
            &self.encoder_channels,
            &self.decoder_channels,
            2,
            "three feature maps (depth >= 2)",
        )
    }

    /// `(name, in, skip, out)` of every block, as smp lays out its `ModuleDict`.
    fn blocks(&self) -> Vec<(String, i64, i64, i64)> {
        // The first column (depth 0) is a U-Net's; inner nodes reuse the skip widths.
        let top = block_channels(&self.encoder_channels, &self.decoder_channels);
        let ins: Vec<i64> = top.iter().map(|b| b.0).collect();
        let skips: Vec<i64> = top.iter().map(|b| b.1).collect();
        let dc = &self.decoder_channels;
        let mut out = Vec::new();
        for layer in 0..ins.len() - 1 {
            for depth in 0..=layer {
                let (c_in, c_skip, c_out) = if depth == 0 {
                    (ins[layer], skips[layer] * (layer as i64 + 1), dc[layer])
                } else {
                    (
                        skips[layer - 1],
                        skips[layer] * (layer - depth + 1) as i64,
                        skips[layer],
                    )
                };
                out.push((format!("x_{depth}_{layer}"), c_in, c_skip, c_out));
            }
        }
        let last = ins.len() - 1;
        out.push((format!("x_0_{last}"), ins[last], 0, dc[last]));
        out
    }
}

/// smp's `UnetPlusPlusDecoder` (without the VGG-only center block).
///
/// Input: the encoder's maps, full resolution first, each half the size of the one
/// before. Output: one `[B, decoder_channels[-1], H0, W0]` map.
#[derive(Debug)]
pub struct UnetPlusPlusDecoder {
    blocks: HashMap<String, UnetDecoderBlock>,
    cfg: Config,
}

impl UnetPlusPlusDecoder {
    /// Builds the decoder under `p` (parameters `p.blocks.x_{depth}_{layer}....`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let bp = &p / "blocks";
        let blocks = cfg
            .blocks()
            .into_iter()
            .map(|(name, i, s, o)| {
                let b = UnetDecoderBlock::new(
                    &bp / name.as_str(),
                    (i, s, o),
                    &cfg.use_norm,
                    cfg.attention_type,
                    cfg.interpolation_mode,
                );
                (name, b)
            })
            .collect();
        Ok(Self {
            blocks,
            cfg: cfg.clone(),
        })
    }

    /// Runs block `x_{depth}_{layer}`: smp's UNet++ `DecoderBlock` upsamples by
    /// `scale_factor=2`, which for these modes is resizing to twice the size.
    fn run(
        &self,
        (depth, layer): (usize, usize),
        x: &Tensor,
        skip: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (h, w) = hw(x);
        self.blocks[&format!("x_{depth}_{layer}")].forward(x, (2 * h, 2 * w), skip, train)
    }
}

impl Model for UnetPlusPlusDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        check_maps_from("UnetPlusPlus", xs, &self.cfg.encoder_channels, 1)?;
        // Drop the full-resolution map, deepest first.
        let feats: Vec<&Tensor> = xs[1..].iter().rev().collect();
        let depth = self.cfg.decoder_channels.len() - 1;
        let mut dense: HashMap<(usize, usize), Tensor> = HashMap::new();
        for layer in 0..depth {
            for d in 0..depth - layer {
                if layer == 0 {
                    let y = self.run((d, d), feats[d], Some(feats[d + 1]), train)?;
                    dense.insert((d, d), y);
                } else {
                    let l = d + layer;
                    // Every node to the right on this column, then the encoder map.
                    let mut cat: Vec<&Tensor> = (d + 1..=l).map(|idx| &dense[&(idx, l)]).collect();
                    cat.push(feats[l + 1]);
                    let skip = Tensor::f_cat(&cat, 1)?;
                    let y = self.run((d, l), &dense[&(d, l - 1)], Some(&skip), train)?;
                    dense.insert((d, l), y);
                }
            }
        }
        let y = self.run((0, depth), &dense[&(0, depth - 1)], None, train)?;
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![*self.cfg.decoder_channels.last().unwrap_or(&0)]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    cfg.use_norm = args::use_norm(ctx)?;
    cfg.attention_type = args::attention_type(ctx)?;
    cfg.interpolation_mode = args::interpolation(ctx)?;
    args::check_stage_channels(ctx, &cfg.decoder_channels)?;
    args::in_entry(ctx, cfg.validate())?;
    // TerraTorch reads out_channels from smp's segmentation head: decoder_channels[-1].
    Ok(cfg)
}

/// The decoder smp's full model builds from `ctx` (the encoder's channels and the model's
/// keyword arguments) under `p`, with the input channels of its segmentation head.
pub(crate) fn full_model_decoder(
    ctx: &BuildCtx<'_, '_>,
    p: nn::Path,
) -> Result<(Box<dyn Model>, i64)> {
    let cfg = config(ctx)?;
    let out = *cfg.decoder_channels.last().unwrap_or(&0);
    Ok((Box::new(UnetPlusPlusDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = *cfg.decoder_channels.last().unwrap_or(&0);
    SmpDecoderWrapper::build(ctx, out, |p| UnetPlusPlusDecoder::new(p, &cfg))
}

/// The `smp_UnetPlusPlus` entry.
pub(crate) fn entry() -> Entry {
    let e = wrapper::entry(
        "UnetPlusPlus",
        "UNet++ decoder of segmentation_models_pytorch (smp.UnetPlusPlus's decoder, as TerraTorch's SMPRegistry \
         wraps it): nested, densely connected U-Net blocks over the encoder's maps (full resolution first, each \
         half the previous size; depth = number of maps - 1 >= 2); returns one map with decoder_channels[-1] \
         channels at the first map's resolution.",
        build,
    )
    .opt(
        "decoder_channels",
        ParamType::INT_LIST,
        json!([256, 128, 64, 32, 16]),
        "output channels of the top-row blocks, deepest first; one per block (len(channels) - 1 values)",
    );
    args::declare_use_norm(e)
        .opt("decoder_attention_type", ParamType::STR, Value::Null, "attention in each decoder block: None or \"scse\"")
        .opt(
            "decoder_interpolation",
            ParamType::STR,
            json!("nearest"),
            "2x upsampling mode: \"nearest\", \"bilinear\", \"bicubic\", \"area\" or \"nearest-exact\"",
        )
}
