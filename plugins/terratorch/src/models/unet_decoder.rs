//! TerraTorch's U-Net decoder: smp's `UnetDecoder` fed with the first feature map
//! twice, so that every map (the full-resolution one included) gets a block.
//! Mirrors `terratorch/models/decoders/unet_decoder.py` (`UNetDecoder`), which builds
//! `segmentation_models_pytorch/decoders/unet/decoder.py` (`UnetDecoder`) of smp 0.6.0
//! under `decoder`. That decoder is the `smp` plugin's
//! [`terrahost_layers::smp::unet_decoder::UnetDecoder`], used here as it is.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};
use terrahost_layers::smp::unet_decoder::{self as smp_unet, Interpolation, UnetDecoder};
pub use terrahost_layers::smp::unet_decoder::{AttentionType, NormConfig};
use terrahost_plugin_api::{
    sdk::{Built, Entry, Model},
    ParamType, PluginError, Result,
};

/// Arguments of [`UNetDecoder`] besides the channel list.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Output channels of each block, deepest first; as many as feature maps.
    pub channels: Vec<i64>,
    /// Normalisation inside `Conv2dReLU` (smp's `use_norm`).
    pub use_batchnorm: NormConfig,
    /// Attention around the convolutions of each block.
    pub attention_type: Option<AttentionType>,
}

impl Config {
    /// The smp decoder TerraTorch builds for feature channels `embed_dim`:
    /// `UnetDecoder(encoder_channels=[embed_dim[0], *embed_dim], decoder_channels=channels,
    /// n_blocks=len(channels), use_norm=use_batchnorm, add_center_block=False,
    /// attention_type=attention_type)`, smp's default (nearest) interpolation.
    pub fn smp(&self, embed_dim: &[i64]) -> smp_unet::Config {
        let encoder_channels = embed_dim
            .first()
            .into_iter()
            .chain(embed_dim)
            .copied()
            .collect();
        smp_unet::Config {
            decoder_channels: self.channels.clone(),
            n_blocks: self.channels.len(),
            use_norm: self.use_batchnorm.clone(),
            attention_type: self.attention_type,
            interpolation_mode: Interpolation::Nearest,
            ..smp_unet::Config::new(encoder_channels)
        }
    }
}

/// TerraTorch's `UNetDecoder`: smp's `UnetDecoder` (under `decoder.`) built for the
/// encoder channels `[embed_dim[0], *embed_dim]`, one block per entry of `channels`.
///
/// Input: the feature maps, full resolution first. Output: one
/// `[B, channels[-1], H0, W0]` map at the first map's size.
#[derive(Debug)]
pub struct UNetDecoder {
    decoder: UnetDecoder,
    embed_dim: Vec<i64>,
}

impl UNetDecoder {
    /// Builds the decoder for features with channels `embed_dim` under `p`.
    pub fn new(p: nn::Path, embed_dim: &[i64], cfg: &Config) -> Result<Self> {
        if embed_dim.len() != cfg.channels.len() {
            return Err(PluginError::invalid_argument(format!(
                "UNetDecoder: `channels` should have the same length as the channel list (one block per feature \
                 map), got {} value(s) {:?} for {} map(s) {embed_dim:?}",
                cfg.channels.len(),
                cfg.channels,
                embed_dim.len()
            )));
        }
        if embed_dim.is_empty() || embed_dim.iter().any(|&c| c < 1) {
            return Err(PluginError::invalid_argument(format!(
                "UNetDecoder: the channel list must be non-empty and positive, got {embed_dim:?}"
            )));
        }
        if let Some(c) = cfg.channels.iter().find(|&&c| c < 1) {
            return Err(PluginError::invalid_argument(format!(
                "UNetDecoder: `channels` must be positive, got {c} in {:?}",
                cfg.channels
            )));
        }
        Ok(Self {
            decoder: UnetDecoder::new(&p / "decoder", &cfg.smp(embed_dim))?,
            embed_dim: embed_dim.to_vec(),
        })
    }
}

impl Model for UNetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let want = &self.embed_dim;
        if xs.len() != want.len() {
            return Err(PluginError::forward_failed(format!(
                "UNetDecoder was built for {} feature maps (channels {want:?}) but got {}",
                want.len(),
                xs.len()
            )));
        }
        for (i, x) in xs.iter().enumerate() {
            let size = x.size();
            if size.len() != 4 || size[1] != want[i] {
                return Err(PluginError::forward_failed(format!(
                    "UNetDecoder: feature map {i} must be [B, {}, H, W], got shape {size:?}",
                    want[i]
                )));
            }
        }
        // smp drops its first map (it only sets the output size), so TerraTorch puts
        // x[0] in front once more: [x0, x0, x1, ...].
        let maps: Vec<Tensor> = xs[..1]
            .iter()
            .chain(xs)
            .map(Tensor::shallow_clone)
            .collect();
        self.decoder.forward(&maps, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.decoder.out_channels()
    }
}

/// The `UNetDecoder` registry entry.
pub(crate) fn entry() -> Entry {
    Entry::new(
        "UNetDecoder",
        "U-Net decoder (smp's UnetDecoder, with the first feature map given twice so every map is used): one \
         block per map, deepest first, each upsampling (nearest), concatenating the next shallower map and \
         applying two 3x3 conv-norm-ReLU; output at the first map's size with channels[-1] channels.",
        |ctx| {
            let raw_norm = ctx.args.raw("use_batchnorm").cloned().unwrap_or(json!("batchnorm"));
            let use_batchnorm = NormConfig::from_smp(&raw_norm).map_err(|why| {
                PluginError::invalid_argument(format!("argument `use_batchnorm` of `{}`: {why}", ctx.qualified()))
            })?;
            let attention_type = ctx
                .args
                .opt::<String>("attention_type")?
                .map(|name| AttentionType::parse(&name))
                .transpose()
                .map_err(|why| {
                    PluginError::invalid_argument(format!("argument `attention_type` of `{}`: {why}", ctx.qualified()))
                })?;
            let cfg = Config { channels: ctx.args.get("channels")?, use_batchnorm, attention_type };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = UNetDecoder::new(vs.root(), &ctx.channels, &cfg)?;
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        },
    )
    .req("channels", ParamType::INT_LIST, "output channels of each block, deepest first; one per feature map")
    .opt(
        "use_batchnorm",
        ParamType::ANY,
        json!("batchnorm"),
        "norm after each conv: true/false, \"batchnorm\", \"identity\", \"layernorm\", \"instancenorm\" or {\"type\": ..., kwargs}",
    )
    .opt("attention_type", ParamType::STR, Value::Null, "attention around each block's convs: null or \"scse\"")
    .takes_channels()
}
