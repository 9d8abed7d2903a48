//! smp's ResNet encoders, from segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/encoders/resnet.py` (`ResNetEncoder` over torchvision's
//! `ResNet`, `resnet_encoders`), with `EncoderMixin.set_in_channels` / `make_dilated`
//! of `encoders/_base.py` and `patch_first_conv` / `replace_strides_with_dilation` of
//! `encoders/_utils.py`. The blocks are torchvision's (`torchvision/models/resnet.py`:
//! `BasicBlock`, `Bottleneck`, stride on the 3x3 convolution), built by the shared
//! [`terrahost_layers::resnet`] with torchvision's dilation ([`net::Dilation::Uniform`]).
//!
//! Parameter names are the encoder's `state_dict` keys: `conv1.weight`, `bn1.*`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ... (smp deletes `fc` and
//! `avgpool`). All four layers exist whatever the depth; forward stops at `depth`.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use terrahost_layers::resnet as net;
use terrahost_plugin_api::{PluginError, Result};

/// torchvision's two residual blocks (`BasicBlock`, `Bottleneck`), as the shared ResNet
/// names them.
pub use terrahost_layers::resnet::BlockKind as Block;

/// Configuration of [`ResNetEncoder`]: one of smp's `resnet_encoders` plus what
/// `get_encoder` sets (`depth`, `output_stride`, `in_channels`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Residual block type.
    pub block: Block,
    /// Blocks per layer (`layers`).
    pub layers: [i64; 4],
    /// Groups of the 3x3 convolutions (ResNeXt's cardinality).
    pub groups: i64,
    /// Width per group (`width_per_group`, 64 for plain ResNets).
    pub width_per_group: i64,
    /// Number of stages run (smp's `encoder_depth`, 1..=5).
    pub depth: usize,
    /// 32 (no dilation), 16 (layer4 dilated) or 8 (layer3 and layer4 dilated).
    pub output_stride: i64,
    /// Input channels of `conv1` (`set_in_channels`).
    pub in_channels: i64,
}

/// The encoder names of smp's `resnet_encoders`, in smp's order.
pub const NAMES: [&str; 11] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext101_32x16d",
    "resnext101_32x32d",
    "resnext101_32x48d",
];

impl Config {
    fn plain(block: Block, layers: [i64; 4]) -> Self {
        Self {
            block,
            layers,
            groups: 1,
            width_per_group: 64,
            depth: 5,
            output_stride: 32,
            in_channels: 3,
        }
    }

    fn resnext(layers: [i64; 4], width_per_group: i64) -> Self {
        Self {
            groups: 32,
            width_per_group,
            ..Self::plain(Block::Bottleneck, layers)
        }
    }

    /// smp's `resnet18` (BasicBlock, 2-2-2-2).
    pub fn resnet18() -> Self {
        Self::plain(Block::Basic, [2, 2, 2, 2])
    }
    /// smp's `resnet34` (BasicBlock, 3-4-6-3).
    pub fn resnet34() -> Self {
        Self::plain(Block::Basic, [3, 4, 6, 3])
    }
    /// smp's `resnet50` (Bottleneck, 3-4-6-3).
    pub fn resnet50() -> Self {
        Self::plain(Block::Bottleneck, [3, 4, 6, 3])
    }
    /// smp's `resnet101` (Bottleneck, 3-4-23-3).
    pub fn resnet101() -> Self {
        Self::plain(Block::Bottleneck, [3, 4, 23, 3])
    }
    /// smp's `resnet152` (Bottleneck, 3-8-36-3).
    pub fn resnet152() -> Self {
        Self::plain(Block::Bottleneck, [3, 8, 36, 3])
    }

    /// The configuration smp registers under `name` (see [`NAMES`]).
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "resnet18" => Self::resnet18(),
            "resnet34" => Self::resnet34(),
            "resnet50" => Self::resnet50(),
            "resnet101" => Self::resnet101(),
            "resnet152" => Self::resnet152(),
            "resnext50_32x4d" => Self::resnext([3, 4, 6, 3], 4),
            "resnext101_32x4d" => Self::resnext([3, 4, 23, 3], 4),
            "resnext101_32x8d" => Self::resnext([3, 4, 23, 3], 8),
            "resnext101_32x16d" => Self::resnext([3, 4, 23, 3], 16),
            "resnext101_32x32d" => Self::resnext([3, 4, 23, 3], 32),
            "resnext101_32x48d" => Self::resnext([3, 4, 23, 3], 48),
            _ => return None,
        })
    }

    /// The pretrained weight names smp knows for `name` (`pretrained_settings`).
    pub fn pretrained_settings(name: &str) -> &'static [&'static str] {
        match name {
            "resnet18" | "resnet50" | "resnext50_32x4d" => &["imagenet", "ssl", "swsl"],
            "resnet34" | "resnet101" | "resnet152" => &["imagenet"],
            "resnext101_32x4d" => &["ssl", "swsl"],
            "resnext101_32x8d" => &["imagenet", "instagram", "ssl", "swsl"],
            "resnext101_32x16d" => &["instagram", "ssl", "swsl"],
            "resnext101_32x32d" | "resnext101_32x48d" => &["instagram"],
            _ => &[],
        }
    }

    /// smp's `_out_channels` for the full depth, with the input map first (its
    /// channels become `in_channels` through `set_in_channels`).
    fn all_out_channels(&self) -> [i64; 6] {
        let e = self.block.expansion();
        [self.in_channels, 64, 64 * e, 128 * e, 256 * e, 512 * e]
    }

    /// `encoder.out_channels`: the channels of the `depth + 1` maps forward returns.
    pub fn out_channels(&self) -> Vec<i64> {
        self.all_out_channels()[..=self.depth.min(5)].to_vec()
    }

    /// `encoder.output_stride`: `min(output_stride, 2 ** depth)`.
    pub fn reduction(&self) -> i64 {
        self.output_stride.min(1 << self.depth.min(5))
    }

    /// What smp and torchvision check.
    pub fn validate(&self) -> Result<()> {
        if !(1..=5).contains(&self.depth) {
            return Err(PluginError::invalid_argument(format!(
                "ResNetEncoder depth should be in range [1, 5], got {}",
                self.depth
            )));
        }
        if ![8, 16, 32].contains(&self.output_stride) {
            return Err(PluginError::invalid_argument(format!(
                "Output stride should be 16 or 8, got {}.",
                self.output_stride
            )));
        }
        if self.in_channels <= 0 {
            return Err(PluginError::invalid_argument(format!(
                "in_channels must be positive, got {}",
                self.in_channels
            )));
        }
        if self.block == Block::Basic && (self.groups != 1 || self.width_per_group != 64) {
            return Err(PluginError::invalid_argument(
                "BasicBlock only supports groups=1 and base_width=64",
            ));
        }
        Ok(())
    }
}

/// smp's `ResNetEncoder`: returns `depth + 1` maps, the input itself first, then
/// `relu(bn1(conv1(x)))` (1/2), `layer1(maxpool(.))` (1/4), `layer2` (1/8), `layer3`
/// (1/16) and `layer4` (1/32), each of the last two at 1/`output_stride` at most.
#[derive(Debug)]
pub struct ResNetEncoder {
    net: net::ResNet,
    cfg: Config,
}

impl ResNetEncoder {
    /// Builds the encoder under `p` (keys `p.conv1.weight`, `p.layer1.0.conv1.weight`, ...).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let mut c = net::Config::new(cfg.block, &cfg.layers);
        c.in_chans = cfg.in_channels;
        c.output_stride = cfg.output_stride;
        c.cardinality = cfg.groups;
        c.base_width = cfg.width_per_group;
        // torchvision's default zero_init_residual=False.
        c.zero_init_last = false;
        // make_dilated dilates every convolution of a dilated stage.
        c.dilation = net::Dilation::Uniform;
        Ok(Self {
            net: net::ResNet::new(p, &c)?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The feature maps, full resolution (the input) first.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let size = x.size();
        if size.len() != 4 || size[1] != self.cfg.in_channels {
            return Err(PluginError::forward_failed(format!(
                "the ResNet encoder expects [B, {}, H, W], got shape {size:?}",
                self.cfg.in_channels
            )));
        }
        // The stem at depth 1, then one stage more per depth.
        let maps = self.net.forward_features(x, train, self.cfg.depth - 1)?;
        Ok(std::iter::once(x.shallow_clone()).chain(maps).collect())
    }
}
