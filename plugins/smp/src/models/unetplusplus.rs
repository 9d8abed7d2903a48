//! The UNet++ decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/unetplusplus/decoder.py`
//! (`UnetPlusPlusDecoder`, `DecoderBlock`) as `decoders/unetplusplus/model.py`
//! (`UnetPlusPlus`) builds it, wrapped by TerraTorch's `SMPRegistry` (see
//! [`super::wrapper`]). The convolution blocks are smp's `Conv2dReLU` and
//! `Attention` from [`super::unet`].
use super::unet::{Attention, AttentionType, Conv2dReLU, Interpolation, NormConfig};
use super::wrapper::{self, SmpDecoderWrapper};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

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
        let depth = self.encoder_channels.len().saturating_sub(1);
        if depth != self.decoder_channels.len() {
            return Err(PluginError::invalid_argument(format!(
                "Model depth is {depth}, but you provide `decoder_channels` for {} blocks (channel list {:?})",
                self.decoder_channels.len(),
                self.encoder_channels
            )));
        }
        if depth < 2 {
            // smp builds one but its forward looks up the block `x_0_-1` and fails.
            return Err(PluginError::invalid_argument(format!(
                "the UnetPlusPlus decoder needs at least three feature maps (depth >= 2), got the channel list {:?}",
                self.encoder_channels
            )));
        }
        if let Some(c) = self
            .encoder_channels
            .iter()
            .chain(&self.decoder_channels)
            .find(|&&c| c <= 0)
        {
            return Err(PluginError::invalid_argument(format!(
                "channel counts must be positive, got {c} (channels {:?}, decoder_channels {:?})",
                self.encoder_channels, self.decoder_channels
            )));
        }
        Ok(())
    }

    /// `(name, in, skip, out)` of every block, as smp lays out its `ModuleDict`.
    fn blocks(&self) -> Vec<(String, i64, i64, i64)> {
        let mut enc: Vec<i64> = self.encoder_channels[1..].to_vec();
        enc.reverse();
        let dc = &self.decoder_channels;
        let ins: Vec<i64> = std::iter::once(enc[0])
            .chain(dc[..dc.len() - 1].iter().copied())
            .collect();
        let skips: Vec<i64> = enc[1..].iter().copied().chain(std::iter::once(0)).collect();
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

/// smp's UNet++ `DecoderBlock`: 2x upsampling, concatenated skips, attention, two
/// `Conv2dReLU`, attention.
#[derive(Debug)]
struct DecoderBlock {
    conv1: Conv2dReLU,
    attention1: Attention,
    conv2: Conv2dReLU,
    attention2: Attention,
    interpolation: Interpolation,
}

impl DecoderBlock {
    fn new(p: nn::Path, c_in: i64, c_skip: i64, c_out: i64, cfg: &Config) -> Self {
        Self {
            conv1: Conv2dReLU::new(&p / "conv1", c_in + c_skip, c_out, &cfg.use_norm),
            attention1: Attention::new(&p / "attention1", cfg.attention_type, c_in + c_skip),
            conv2: Conv2dReLU::new(&p / "conv2", c_out, c_out, &cfg.use_norm),
            attention2: Attention::new(&p / "attention2", cfg.attention_type, c_out),
            interpolation: cfg.interpolation_mode,
        }
    }

    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, train: bool) -> Result<Tensor> {
        // F.interpolate(scale_factor=2) == resizing to twice the size for these modes.
        let (h, w) = (x.size()[2], x.size()[3]);
        let mut x = self.interpolation.resize(x, 2 * h, 2 * w)?;
        if let Some(skip) = skip {
            x = Tensor::f_cat(&[&x, skip], 1)?;
            x = self.attention1.forward(x)?;
        }
        let x = self.conv1.forward(&x, train)?;
        let x = self.conv2.forward(&x, train)?;
        self.attention2.forward(x)
    }
}

/// smp's `UnetPlusPlusDecoder` (without the VGG-only center block).
///
/// Input: the encoder's maps, full resolution first, each half the size of the one
/// before. Output: one `[B, decoder_channels[-1], H0, W0]` map.
#[derive(Debug)]
pub struct UnetPlusPlusDecoder {
    blocks: HashMap<String, DecoderBlock>,
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
                let b = DecoderBlock::new(&bp / name.as_str(), i, s, o, cfg);
                (name, b)
            })
            .collect();
        Ok(Self {
            blocks,
            cfg: cfg.clone(),
        })
    }

    fn block(&self, depth: usize, layer: usize) -> &DecoderBlock {
        &self.blocks[&format!("x_{depth}_{layer}")]
    }
}

/// Checks count, rank and channels of the maps given to a decoder built for `want`;
/// channels are checked from map `from` on (the maps before it are not used for theirs).
pub(crate) fn check_maps(name: &str, want: &[i64], xs: &[Tensor], from: usize) -> Result<()> {
    if xs.len() != want.len() {
        return Err(PluginError::forward_failed(format!(
            "the {name} decoder was built for {} feature maps (channels {want:?}) but got {}",
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
        if i >= from && size[1] != want[i] {
            return Err(PluginError::forward_failed(format!(
                "feature map {i} has {} channels but the {name} decoder was built for {} (channels {want:?})",
                size[1], want[i]
            )));
        }
    }
    Ok(())
}

impl Model for UnetPlusPlusDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        check_maps("UnetPlusPlus", &self.cfg.encoder_channels, xs, 1)?;
        // Drop the full-resolution map, deepest first.
        let feats: Vec<&Tensor> = xs[1..].iter().rev().collect();
        let depth = self.cfg.decoder_channels.len() - 1;
        let mut dense: HashMap<(usize, usize), Tensor> = HashMap::new();
        for layer in 0..depth {
            for d in 0..depth - layer {
                if layer == 0 {
                    let y = self
                        .block(d, d)
                        .forward(feats[d], Some(feats[d + 1]), train)?;
                    dense.insert((d, d), y);
                } else {
                    let l = d + layer;
                    // Every node to the right on this column, then the encoder map.
                    let mut cat: Vec<&Tensor> = (d + 1..=l).map(|idx| &dense[&(idx, l)]).collect();
                    cat.push(feats[l + 1]);
                    let skip = Tensor::f_cat(&cat, 1)?;
                    let y = self
                        .block(d, l)
                        .forward(&dense[&(d, l - 1)], Some(&skip), train)?;
                    dense.insert((d, l), y);
                }
            }
        }
        let y = self
            .block(0, depth)
            .forward(&dense[&(0, depth - 1)], None, train)?;
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![*self.cfg.decoder_channels.last().unwrap_or(&0)]
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    cfg.use_norm = wrapper::use_norm(ctx)?;
    cfg.attention_type = ctx
        .args
        .opt::<String>("decoder_attention_type")?
        .map(|s| AttentionType::parse(&s))
        .transpose()
        .map_err(|why| {
            PluginError::invalid_argument(format!(
                "argument `decoder_attention_type` of `{}`: {why}",
                ctx.qualified()
            ))
        })?;
    cfg.interpolation_mode = wrapper::interpolation(ctx)?;
    wrapper::check_depth(ctx, cfg.decoder_channels.len())?;
    wrapper::check_positive(ctx, "decoder_channels", &cfg.decoder_channels)?;
    cfg.validate()
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    // TerraTorch reads out_channels from smp's segmentation head: decoder_channels[-1].
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
    wrapper::declare_use_norm(e)
        .opt("decoder_attention_type", ParamType::STR, Value::Null, "attention in each decoder block: None or \"scse\"")
        .opt(
            "decoder_interpolation",
            ParamType::STR,
            json!("nearest"),
            "2x upsampling mode: \"nearest\", \"bilinear\", \"bicubic\", \"area\" or \"nearest-exact\"",
        )
}
