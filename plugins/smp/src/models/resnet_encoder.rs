//! smp's ResNet encoders, from segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/encoders/resnet.py` (`ResNetEncoder` over torchvision's
//! `ResNet`, `resnet_encoders`), with `EncoderMixin.set_in_channels` / `make_dilated`
//! of `encoders/_base.py` and `patch_first_conv` / `replace_strides_with_dilation` of
//! `encoders/_utils.py`. The blocks are torchvision's (`torchvision/models/resnet.py`:
//! `BasicBlock`, `Bottleneck`, stride on the 3x3 convolution).
//!
//! Parameter names are the encoder's `state_dict` keys: `conv1.weight`, `bn1.*`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ... (smp deletes `fc` and
//! `avgpool`). All four layers exist whatever the depth; forward stops at `depth`.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::{PluginError, Result};

/// torchvision's two residual blocks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Two 3x3 convolutions (expansion 1): resnet18, resnet34.
    Basic,
    /// 1x1, 3x3 (strided, grouped), 1x1 (expansion 4): resnet50 and deeper, ResNeXt.
    Bottleneck,
}

impl Block {
    fn expansion(self) -> i64 {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

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

/// A convolution without bias, with its stride, padding and dilation (after smp's
/// `replace_strides_with_dilation`).
#[derive(Debug)]
struct Conv {
    w: Tensor,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

impl Conv {
    /// `nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups, bias=False)` under `p`
    /// (weight `p.weight`, Kaiming-normal fan-out as torchvision initialises it), then
    /// dilated by `dilation` (stride 1, padding `(k // 2) * dilation`) when `dilation > 1`.
    fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        groups: i64,
        dilation: i64,
    ) -> Self {
        let fan_out = (c_out * k * k) as f64;
        let std = (2.0 / fan_out).sqrt();
        let w = p.var(
            "weight",
            &[c_out, c_in / groups, k, k],
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let (stride, dilation) = if dilation > 1 {
            (1, dilation)
        } else {
            (stride, 1)
        };
        Self {
            w,
            stride,
            padding: (k / 2) * dilation,
            dilation,
            groups,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(
            &self.w,
            None::<&Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [self.dilation, self.dilation],
            self.groups,
        )?)
    }
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    batch_norm2d(p, c, 1e-5, 0.1)
}

fn bn_forward(b: &nn::BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    Ok(Tensor::f_batch_norm(
        x,
        b.ws.as_ref(),
        b.bs.as_ref(),
        Some(&b.running_mean),
        Some(&b.running_var),
        train,
        0.1,
        1e-5,
        false,
    )?)
}

/// One residual block (`layerN.i`): convolutions and batch norms as torchvision names
/// them, and the `downsample` (1x1 conv + BN) of each layer's first block.
#[derive(Debug)]
struct ResBlock {
    convs: Vec<(Conv, nn::BatchNorm)>,
    downsample: Option<(Conv, nn::BatchNorm)>,
}

impl ResBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        cfg: &Config,
        c_in: i64,
        planes: i64,
        stride: i64,
        dilation: i64,
        first: bool,
    ) -> Self {
        let e = cfg.block.expansion();
        let convs = match cfg.block {
            Block::Basic => vec![
                (
                    Conv::new(&p / "conv1", c_in, planes, 3, stride, 1, dilation),
                    bn(&p / "bn1", planes),
                ),
                (
                    Conv::new(&p / "conv2", planes, planes, 3, 1, 1, dilation),
                    bn(&p / "bn2", planes),
                ),
            ],
            Block::Bottleneck => {
                let width = planes * cfg.width_per_group / 64 * cfg.groups;
                vec![
                    (
                        Conv::new(&p / "conv1", c_in, width, 1, 1, 1, dilation),
                        bn(&p / "bn1", width),
                    ),
                    (
                        Conv::new(&p / "conv2", width, width, 3, stride, cfg.groups, dilation),
                        bn(&p / "bn2", width),
                    ),
                    (
                        Conv::new(&p / "conv3", width, planes * e, 1, 1, 1, dilation),
                        bn(&p / "bn3", planes * e),
                    ),
                ]
            }
        };
        let downsample = (first && (stride != 1 || c_in != planes * e)).then(|| {
            let d = &p / "downsample";
            (
                Conv::new(&d / 0, c_in, planes * e, 1, stride, 1, dilation),
                bn(&d / 1, planes * e),
            )
        });
        Self { convs, downsample }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, norm)) in self.convs.iter().enumerate() {
            y = bn_forward(norm, &conv.forward(&y)?, train)?;
            if i != last {
                y = y.f_relu()?;
            }
        }
        let identity = match &self.downsample {
            Some((conv, norm)) => bn_forward(norm, &conv.forward(x)?, train)?,
            None => x.shallow_clone(),
        };
        Ok((y + identity).f_relu()?)
    }
}

/// smp's `ResNetEncoder`: returns `depth + 1` maps, the input itself first, then
/// `relu(bn1(conv1(x)))` (1/2), `layer1(maxpool(.))` (1/4), `layer2` (1/8), `layer3`
/// (1/16) and `layer4` (1/32), each of the last two at 1/`output_stride` at most.
#[derive(Debug)]
pub struct ResNetEncoder {
    conv1: Conv,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<ResBlock>>,
    cfg: Config,
}

impl ResNetEncoder {
    /// Builds the encoder under `p` (keys `p.conv1.weight`, `p.layer1.0.conv1.weight`, ...).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let conv1 = Conv::new(&p / "conv1", cfg.in_channels, 64, 7, 2, 1, 1);
        let bn1 = bn(&p / "bn1", 64);
        let e = cfg.block.expansion();
        let mut c_in = 64;
        let mut layers = Vec::new();
        for (i, (&n, planes)) in cfg.layers.iter().zip([64, 128, 256, 512]).enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            // make_dilated: stages whose stride exceeds output_stride lose their stride.
            let stage_stride = 4 << i; // 4, 8, 16, 32
            let dilation = if i >= 2 && stage_stride > cfg.output_stride {
                stage_stride / cfg.output_stride
            } else {
                1
            };
            let lp = &p / format!("layer{}", i + 1);
            let blocks = (0..n)
                .map(|b| {
                    let block = ResBlock::new(
                        &lp / b,
                        cfg,
                        c_in,
                        planes,
                        if b == 0 { stride } else { 1 },
                        dilation,
                        b == 0,
                    );
                    c_in = planes * e;
                    block
                })
                .collect();
            layers.push(blocks);
        }
        Ok(Self {
            conv1,
            bn1,
            layers,
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
        let depth = self.cfg.depth;
        let mut features = vec![x.shallow_clone()];
        let mut x = bn_forward(&self.bn1, &self.conv1.forward(x)?, train)?.f_relu()?;
        features.push(x.shallow_clone());
        if depth >= 2 {
            x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if depth < i + 2 {
                break;
            }
            for block in layer {
                x = block.forward(&x, train)?;
            }
            features.push(x.shallow_clone());
        }
        Ok(features)
    }
}
