//! The U-Net decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/unet/decoder.py` (`UnetDecoder`,
//! `UnetDecoderBlock`), built from smp's `Conv2dReLU` and `Attention` (see
//! [`super::blocks`]).
//!
//! It lives in the shared layers crate because two sources build it: the `smp` plugin
//! (smp's `Unet`, UNet++'s blocks) and the `terratorch` plugin (TerraTorch's
//! `UNetDecoder`, `terratorch/models/decoders/unet_decoder.py`, which builds this
//! decoder directly).
use super::blocks::{hw, Attention, Conv2dReLU};
pub use super::blocks::{AttentionType, Interpolation, NormConfig};
use super::checks::check_maps_from;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::Model;
use terrahost_plugin_api::{PluginError, Result};

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
        block_channels(&self.encoder_channels, &self.decoder_channels)
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

/// smp's channel bookkeeping of `UnetDecoder` (MAnet's and UNet++'s decoders do the
/// same): `(in, skip, out)` channels of each block, deepest first. The full-resolution
/// map gives no skip, the deepest map is the first block's input, each later block
/// takes the previous block's output, and the last block has no skip (0). As smp zips
/// the three lists, the shortest decides the number of blocks.
pub fn block_channels(encoder_channels: &[i64], decoder_channels: &[i64]) -> Vec<(i64, i64, i64)> {
    let mut enc: Vec<i64> = encoder_channels.iter().skip(1).copied().collect();
    enc.reverse();
    let head = enc.first().copied().unwrap_or(0);
    let ins = std::iter::once(head).chain(
        decoder_channels
            .iter()
            .copied()
            .take(decoder_channels.len().saturating_sub(1)),
    );
    let skips = enc.iter().skip(1).copied().chain(std::iter::once(0));
    ins.zip(skips)
        .zip(decoder_channels.iter().copied())
        .map(|((i, s), o)| (i, s, o))
        .collect()
}

/// smp's `UnetDecoderBlock`: resize, concatenate the skip, attend, two `Conv2dReLU`,
/// attend. Its parameters are `conv1.*`, `attention1.attention.*`, `conv2.*` and
/// `attention2.attention.*`. UNet++ builds its blocks from it too.
#[derive(Debug)]
pub struct UnetDecoderBlock {
    conv1: Conv2dReLU,
    attention1: Attention,
    conv2: Conv2dReLU,
    attention2: Attention,
    interpolation: Interpolation,
}

impl UnetDecoderBlock {
    /// `UnetDecoderBlock(c_in, c_skip, c_out, use_norm, attention_type, interpolation_mode)`
    /// under `p`; `c_skip` is 0 for the last block, which gets no skip.
    pub fn new(
        p: nn::Path,
        (c_in, c_skip, c_out): (i64, i64, i64),
        use_norm: &NormConfig,
        attention_type: Option<AttentionType>,
        interpolation: Interpolation,
    ) -> Self {
        Self {
            conv1: Conv2dReLU::new(&p / "conv1", c_in + c_skip, c_out, use_norm),
            attention1: Attention::new(&p / "attention1", attention_type, c_in + c_skip),
            conv2: Conv2dReLU::new(&p / "conv2", c_out, c_out, use_norm),
            attention2: Attention::new(&p / "attention2", attention_type, c_out),
            interpolation,
        }
    }

    /// Resizes `x` to `h x w`, concatenates `skip` (when given) and runs the block.
    pub fn forward(
        &self,
        x: &Tensor,
        (h, w): (i64, i64),
        skip: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        // A nearest 2x upsampling without attention on the concatenation is folded into
        // the first convolution for inference (Conv2dReLU::forward_upsampled).
        let plain_concat = skip.is_none() || self.attention1.is_identity();
        if plain_concat && self.interpolation.repeats_pixels(hw(x), (h, w)) {
            if let Some(y) = self.conv1.forward_upsampled(x, skip, train) {
                let x = self.conv2.forward(&y?, train)?;
                return self.attention2.forward(x);
            }
        }
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
            .map(|(i, channels)| {
                UnetDecoderBlock::new(
                    &blocks_p / i,
                    channels,
                    &cfg.use_norm,
                    cfg.attention_type,
                    cfg.interpolation_mode,
                )
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
}

impl Model for UnetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        // The first map only gives the output size; its channels are never used.
        check_maps_from("Unet", xs, &self.cfg.encoder_channels, 1)?;
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
            x = block.forward(&x, sizes[i + 1], skips.get(i).copied(), train)?;
        }
        Ok(vec![x])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.out_channels()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first convolution of a block over a nearest 2x upsampling runs at the low
    /// resolution (`Conv2dReLU::forward_upsampled`); it must give what upsampling,
    /// concatenating and convolving give, for every mode and norm that take that path
    /// (the parity fixtures cover nearest with BatchNorm).
    #[test]
    fn the_low_resolution_first_convolution_matches_upsample_then_concatenate() {
        use tch::{nn, Device, Kind};
        let opts = (Kind::Float, Device::Cpu);
        for interpolation in [Interpolation::Nearest, Interpolation::NearestExact] {
            for norm in [NormConfig::batchnorm(), NormConfig::Identity] {
                for c_skip in [0, 3] {
                    let vs = nn::VarStore::new(Device::Cpu);
                    let block = UnetDecoderBlock::new(
                        vs.root(),
                        (4, c_skip, 5),
                        &norm,
                        None,
                        interpolation,
                    );
                    tch::no_grad(|| {
                        for (name, t) in vs.variables() {
                            // positive variances, anything elsewhere
                            let r = match name.ends_with("running_var") {
                                true => Tensor::rand(t.size(), opts) + 0.5,
                                false => Tensor::randn(t.size(), opts),
                            };
                            t.shallow_clone().copy_(&r);
                        }
                    });
                    let x = Tensor::randn([2, 4, 3, 5], opts);
                    let skip = (c_skip > 0).then(|| Tensor::randn([2, c_skip, 6, 10], opts));
                    let case = format!("{interpolation:?}, {norm:?}, skip {c_skip}");
                    let (fast, plain) = tch::no_grad(|| {
                        assert!(
                            block
                                .conv1
                                .forward_upsampled(&x, skip.as_ref(), false)
                                .is_some(),
                            "{case}: the low-resolution path applies"
                        );
                        let fast = block.forward(&x, (6, 10), skip.as_ref(), false).unwrap();
                        let up = interpolation.resize(&x, 6, 10).unwrap();
                        let cat = match &skip {
                            Some(s) => Tensor::cat(&[&up, s], 1),
                            None => up,
                        };
                        let y = block.conv1.forward(&cat, false).unwrap();
                        (fast, block.conv2.forward(&y, false).unwrap())
                    });
                    let scale = plain.abs().max().double_value(&[]);
                    let err = (&fast - &plain).abs().max().double_value(&[]) / scale;
                    assert!(err < 1e-5, "{case}: relative error {err}");
                }
            }
        }
    }
}
