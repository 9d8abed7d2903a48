//! Mirrors `timm/models/resnet.py` (timm 1.0.31): `ResNet` with its `BasicBlock` and
//! `Bottleneck` residual blocks, `make_blocks`, `downsample_conv` and `downsample_avg`,
//! seen through timm's `FeatureListNet` (`timm/models/_features.py`), which is what
//! `timm.create_model(name, features_only=True)` returns and what TerraTorch's
//! `TimmBackboneWrapper` (`terratorch/registry/timm_registry.py`) wraps.
//!
//! As in `FeatureListNet`, the model keeps only the modules up to the last feature it
//! returns (so `out_indices=[0, 1]` has no `layer2.*`..`layer4.*` keys) and never has the
//! classifier (`fc.*`).
use super::checks;
use super::features::{self, Order, Taps};
use super::layers::{drop_path, drop_path_rate, Conv2d, ConvSpec};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// The number of feature taps of a ResNet: the stem (`act1`, stride 2) and `layer1`..`layer4`.
pub const NUM_FEATURES: i64 = 5;

/// How ResNet features are named in `out_indices` messages.
const TAPS: Taps<'static> = Taps {
    model: "a ResNet",
    unit: "features",
    legend: " (0 = stem, 1..4 = layer1..layer4)",
    order: Order::Increasing,
};

/// Which residual block the stages are made of.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (`BasicBlock`, expansion 1): ResNet-18/34.
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (`Bottleneck`, expansion 4): ResNet-50/101/152.
    Bottleneck,
}

impl BlockKind {
    /// How much wider a block's output is than its `planes`.
    pub fn expansion(self) -> i64 {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// The arguments of timm's `ResNet.__init__` that shape the feature extractor, plus the
/// `features_only` selection (`out_indices`). Defaults are upstream's; `block` and
/// `layers` default to ResNet-18's.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Residual block type.
    pub block: BlockKind,
    /// Number of blocks in each of the four stages.
    pub layers: Vec<i64>,
    /// `planes` of each of the four stages (`channels` upstream).
    pub channels: Vec<i64>,
    /// Input channels of the first convolution.
    pub in_chans: i64,
    /// Output stride of the network: 32, or 16 / 8 by dilating the last stages.
    pub output_stride: i64,
    /// Groups of the 3x3 convolution in `Bottleneck` (ResNeXt).
    pub cardinality: i64,
    /// Bottleneck width factor: width = planes * base_width / 64 * cardinality.
    pub base_width: i64,
    /// Width of the deep stem's convolutions.
    pub stem_width: i64,
    /// `""` (one 7x7 conv), `"deep"` or `"deep_tiered"` (three 3x3 convs).
    pub stem_type: String,
    /// Divides the width of the first convolution of each block.
    pub block_reduce_first: i64,
    /// Kernel size of the strided projection shortcut.
    pub down_kernel_size: i64,
    /// Average-pool then 1x1 conv in the projection shortcut (ResNet-D).
    pub avg_down: bool,
    /// Dropout before the classifier; a features-only model has no classifier, so it has
    /// no effect here (as in timm).
    pub drop_rate: f64,
    /// Stochastic depth rate, decayed linearly over all blocks; active in train mode only.
    pub drop_path_rate: f64,
    /// Zero-initialise the last BatchNorm weight of every residual branch.
    pub zero_init_last: bool,
    /// Which features to return (0 = stem, 1..4 = layer1..layer4); negative indices count
    /// from the end. Must be increasing once made non-negative.
    pub out_indices: Vec<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new(BlockKind::Basic, &[2, 2, 2, 2])
    }
}

impl Config {
    /// `ResNet(block, layers)` with every other argument at its upstream default.
    pub fn new(block: BlockKind, layers: &[i64]) -> Self {
        Self {
            block,
            layers: layers.to_vec(),
            channels: vec![64, 128, 256, 512],
            in_chans: 3,
            output_stride: 32,
            cardinality: 1,
            base_width: 64,
            stem_width: 64,
            stem_type: String::new(),
            block_reduce_first: 1,
            down_kernel_size: 1,
            avg_down: false,
            drop_rate: 0.0,
            drop_path_rate: 0.0,
            zero_init_last: true,
            out_indices: (0..NUM_FEATURES).collect(),
        }
    }
    /// timm `resnet18`.
    pub fn resnet18() -> Self {
        Self::new(BlockKind::Basic, &[2, 2, 2, 2])
    }
    /// timm `resnet34`.
    pub fn resnet34() -> Self {
        Self::new(BlockKind::Basic, &[3, 4, 6, 3])
    }
    /// timm `resnet50`.
    pub fn resnet50() -> Self {
        Self::new(BlockKind::Bottleneck, &[3, 4, 6, 3])
    }
    /// timm `resnet101`.
    pub fn resnet101() -> Self {
        Self::new(BlockKind::Bottleneck, &[3, 4, 23, 3])
    }
    /// timm `resnet152`.
    pub fn resnet152() -> Self {
        Self::new(BlockKind::Bottleneck, &[3, 8, 36, 3])
    }
    /// The preset called `name` (timm's model name), if there is one.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "resnet18" => Self::resnet18(),
            "resnet34" => Self::resnet34(),
            "resnet50" => Self::resnet50(),
            "resnet101" => Self::resnet101(),
            "resnet152" => Self::resnet152(),
            _ => return None,
        })
    }

    fn deep_stem(&self) -> bool {
        self.stem_type.contains("deep")
    }

    /// Channels of the stem output (`inplanes` upstream: 64 for the 7x7 stem whatever
    /// `stem_width` says, twice `stem_width` for a deep stem).
    pub fn stem_channels(&self) -> i64 {
        if self.deep_stem() {
            self.stem_width * 2
        } else {
            64
        }
    }

    /// Channels of all five feature taps (timm's `feature_info` `num_chs`).
    pub fn feature_channels(&self) -> Vec<i64> {
        let e = self.block.expansion();
        std::iter::once(self.stem_channels())
            .chain(self.channels.iter().map(|c| c * e))
            .collect()
    }

    /// `out_indices` made non-negative and checked, as timm's `feature_take_indices`
    /// does, and strictly increasing ([`Order::Increasing`]).
    pub fn resolved_out_indices(&self) -> Result<Vec<i64>> {
        TAPS.resolve(&self.out_indices, NUM_FEATURES)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.layers.len() != 4 || self.channels.len() != 4 {
            return bad(format!(
                "a ResNet has 4 stages: `layers` {:?} and `channels` {:?} must both have 4 entries",
                self.layers, self.channels
            ));
        }
        if let Some(n) = self.layers.iter().find(|&&n| n < 1) {
            return bad(format!(
                "every stage needs at least one block; `layers` {:?} has {n}",
                self.layers
            ));
        }
        if let Some(c) = self.channels.iter().find(|&&c| c < 1) {
            return bad(format!(
                "stage widths must be positive; `channels` {:?} has {c}",
                self.channels
            ));
        }
        checks::at_least_one(&[("in_chans", self.in_chans)])?;
        if ![8, 16, 32].contains(&self.output_stride) {
            return bad(format!(
                "`output_stride` must be 8, 16 or 32, got {}",
                self.output_stride
            ));
        }
        if !["", "deep", "deep_tiered"].contains(&self.stem_type.as_str()) {
            return bad(format!(
                "`stem_type` must be \"\", \"deep\" or \"deep_tiered\", got {:?}",
                self.stem_type
            ));
        }
        if self.deep_stem() && self.stem_width < 4 {
            return bad(format!(
                "`stem_width` must be at least 4 for a deep stem, got {}",
                self.stem_width
            ));
        }
        if self.cardinality < 1
            || self.base_width < 1
            || self.block_reduce_first < 1
            || self.down_kernel_size < 1
        {
            return bad(format!(
                "`cardinality` ({}), `base_width` ({}), `block_reduce_first` ({}) and `down_kernel_size` ({}) \
                 must all be at least 1",
                self.cardinality, self.base_width, self.block_reduce_first, self.down_kernel_size
            ));
        }
        if self.block == BlockKind::Basic && (self.cardinality != 1 || self.base_width != 64) {
            return bad(format!(
                "BasicBlock supports only cardinality 1 and base_width 64, got {} and {}",
                self.cardinality, self.base_width
            ));
        }
        checks::rates(&[
            ("drop_rate", self.drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ])?;
        Ok(())
    }
}

/// A bias-free convolution with timm's ResNet init (kaiming normal, fan_out, ReLU gain);
/// every convolution of a ResNet is one.
fn conv(p: nn::Path, spec: ConvSpec) -> Conv2d {
    let init = Init::Kaiming {
        dist: NormalOrUniform::Normal,
        fan: FanInOut::FanOut,
        non_linearity: NonLinearity::ReLU,
    };
    Conv2d::new(p, spec, init, None)
}

/// `nn.BatchNorm2d` with PyTorch's defaults (eps 1e-5, momentum 0.1, running stats).
#[derive(Debug)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn new(p: nn::Path, c: i64, zero_weight: bool) -> Self {
        let w = if zero_weight { 0.0 } else { 1.0 };
        Self {
            weight: p.var("weight", &[c], Init::Const(w)),
            bias: p.var("bias", &[c], Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
        }
    }

    /// Batch statistics (and a running-stat update) in train mode, running stats in eval.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            1e-5,
            true,
        )?)
    }
}

/// The pooling in front of an average-pool shortcut (`downsample_avg`).
#[derive(Debug)]
enum AvgPool {
    /// Stride 1 and no dilation: nothing to pool.
    Identity,
    /// `nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)`.
    Pool { stride: i64 },
    /// `AvgPool2dSame(2, 1)`: TF "same" zero padding (right/bottom) then a 2x2 stride-1
    /// average; used when the stage is dilated instead of strided.
    Same,
}

impl AvgPool {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x.shallow_clone(),
            Self::Pool { stride } => {
                x.f_avg_pool2d([2, 2], [*stride, *stride], [0, 0], true, false, None)?
            }
            Self::Same => {
                // For kernel 2 / stride 1 the "same" padding is one zero column and row,
                // both after the data; they count in the mean since they are real zeros.
                let padded = x.f_constant_pad_nd([0, 1, 0, 1])?;
                padded.f_avg_pool2d([2, 2], [1, 1], [0, 0], true, false, None)?
            }
        })
    }
}

/// A block's shortcut when its input and output shapes differ.
#[derive(Debug)]
enum Downsample {
    /// `downsample_conv`: keys `downsample.0` (conv) and `downsample.1` (norm).
    Conv { conv: Conv2d, bn: BatchNorm },
    /// `downsample_avg`: `downsample.0` is the pool, then `.1` conv and `.2` norm.
    Avg {
        pool: AvgPool,
        conv: Conv2d,
        bn: BatchNorm,
    },
}

/// `make_blocks`' arguments for the shortcut of a stage's first block.
struct DownArgs {
    c_in: i64,
    c_out: i64,
    kernel_size: i64,
    stride: i64,
    dilation: i64,
    first_dilation: i64,
    avg_down: bool,
}

impl Downsample {
    fn new(p: nn::Path, a: DownArgs) -> Self {
        if a.avg_down {
            let pool = if a.stride == 1 && a.dilation == 1 {
                AvgPool::Identity
            } else {
                let avg_stride = if a.dilation == 1 { a.stride } else { 1 };
                if avg_stride == 1 && a.dilation > 1 {
                    AvgPool::Same
                } else {
                    AvgPool::Pool { stride: avg_stride }
                }
            };
            let conv = conv(&p / 1, ConvSpec::new(a.c_in, a.c_out, 1));
            let bn = BatchNorm::new(&p / 2, a.c_out, false);
            Self::Avg { pool, conv, bn }
        } else {
            let k = if a.stride == 1 && a.dilation == 1 {
                1
            } else {
                a.kernel_size
            };
            let first_dilation = if k > 1 { a.first_dilation } else { 1 };
            let padding = ((a.stride - 1) + first_dilation * (k - 1)) / 2;
            let spec = ConvSpec::new(a.c_in, a.c_out, k)
                .stride(a.stride)
                .padding(padding)
                .dilation(first_dilation);
            let conv = conv(&p / 0, spec);
            let bn = BatchNorm::new(&p / 1, a.c_out, false);
            Self::Conv { conv, bn }
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Conv { conv, bn } => bn.forward(&conv.forward(x)?, train),
            Self::Avg { pool, conv, bn } => bn.forward(&conv.forward(&pool.forward(x)?)?, train),
        }
    }
}

/// The arguments `make_blocks` hands each block.
struct BlockArgs {
    c_in: i64,
    planes: i64,
    stride: i64,
    dilation: i64,
    first_dilation: i64,
    drop_path: f64,
}

/// One residual block: `BasicBlock` (conv1, conv2) or `Bottleneck` (conv1, conv2, conv3),
/// each convolution followed by its BatchNorm (`bn1`..`bn3`).
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<Downsample>,
    drop_path: f64,
}

impl Block {
    fn new(p: nn::Path, cfg: &Config, a: BlockArgs, downsample: Option<Downsample>) -> Self {
        let zil = cfg.zero_init_last;
        let convs = match cfg.block {
            BlockKind::Basic => {
                let first = a.planes / cfg.block_reduce_first;
                let out = a.planes;
                let fd = a.first_dilation;
                vec![
                    (
                        conv(
                            &p / "conv1",
                            ConvSpec::new(a.c_in, first, 3)
                                .stride(a.stride)
                                .padding(fd)
                                .dilation(fd),
                        ),
                        BatchNorm::new(&p / "bn1", first, false),
                    ),
                    (
                        conv(
                            &p / "conv2",
                            ConvSpec::new(first, out, 3)
                                .padding(a.dilation)
                                .dilation(a.dilation),
                        ),
                        BatchNorm::new(&p / "bn2", out, zil),
                    ),
                ]
            }
            BlockKind::Bottleneck => {
                // floor(planes * base_width / 64) * cardinality, in integers.
                let width = a.planes * cfg.base_width / 64 * cfg.cardinality;
                let first = width / cfg.block_reduce_first;
                let out = a.planes * 4;
                let fd = a.first_dilation;
                vec![
                    (
                        conv(&p / "conv1", ConvSpec::new(a.c_in, first, 1)),
                        BatchNorm::new(&p / "bn1", first, false),
                    ),
                    (
                        conv(
                            &p / "conv2",
                            ConvSpec::new(first, width, 3)
                                .stride(a.stride)
                                .padding(fd)
                                .dilation(fd)
                                .groups(cfg.cardinality),
                        ),
                        BatchNorm::new(&p / "bn2", width, false),
                    ),
                    (
                        conv(&p / "conv3", ConvSpec::new(width, out, 1)),
                        BatchNorm::new(&p / "bn3", out, zil),
                    ),
                ]
            }
        };
        Self {
            convs,
            downsample,
            drop_path: a.drop_path,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut y = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            y = bn.forward(&conv.forward(&y)?, train)?;
            // Every conv-bn but the last is followed by ReLU; the last one's ReLU comes
            // after the residual sum.
            if i < last {
                y = y.f_relu()?;
            }
        }
        let y = drop_path(y, self.drop_path, train)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train)?,
            None => x.shallow_clone(),
        };
        Ok(y.f_add(&shortcut)?.f_relu()?)
    }
}

/// The stem convolution: one 7x7 (`conv1`) or a deep stem (`conv1.0`, `conv1.3`, `conv1.6`
/// with norms `conv1.1`, `conv1.4` and ReLUs between).
#[derive(Debug)]
enum Stem {
    Plain(Conv2d),
    Deep {
        c0: Conv2d,
        n0: BatchNorm,
        c1: Conv2d,
        n1: BatchNorm,
        c2: Conv2d,
    },
}

impl Stem {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let inplanes = cfg.stem_channels();
        if cfg.deep_stem() {
            let sw = cfg.stem_width;
            let (s0, s1) = if cfg.stem_type.contains("tiered") {
                (3 * (sw / 4), sw)
            } else {
                (sw, sw)
            };
            Self::Deep {
                c0: conv(
                    &p / 0,
                    ConvSpec::new(cfg.in_chans, s0, 3).stride(2).padding(1),
                ),
                n0: BatchNorm::new(&p / 1, s0, false),
                c1: conv(&p / 3, ConvSpec::new(s0, s1, 3).padding(1)),
                n1: BatchNorm::new(&p / 4, s1, false),
                c2: conv(&p / 6, ConvSpec::new(s1, inplanes, 3).padding(1)),
            }
        } else {
            Self::Plain(conv(
                p,
                ConvSpec::new(cfg.in_chans, inplanes, 7)
                    .stride(2)
                    .padding(3),
            ))
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Plain(c) => c.forward(x),
            Self::Deep { c0, n0, c1, n1, c2 } => {
                let y = n0.forward(&c0.forward(x)?, train)?.f_relu()?;
                let y = n1.forward(&c1.forward(&y)?, train)?.f_relu()?;
                c2.forward(&y)
            }
        }
    }

    /// The key of the stem's first convolution weight (timm's `first_conv`).
    fn first_conv_key(&self) -> &'static str {
        match self {
            Self::Plain(_) => "conv1.weight",
            Self::Deep { .. } => "conv1.0.weight",
        }
    }
}

/// timm's ResNet as a `features_only` feature extractor: returns the feature maps at
/// `out_indices` among [stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)]
/// (strides for `output_stride` 32).
#[derive(Debug)]
pub struct ResNet {
    cfg: Config,
    stem: Stem,
    bn1: BatchNorm,
    /// The stages that are built: up to the last returned feature.
    stages: Vec<Vec<Block>>,
    out_indices: Vec<i64>,
}

impl ResNet {
    /// Builds the network under `p` with timm's parameter names and initialisation.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let out_indices = cfg.resolved_out_indices()?;
        let last = *out_indices
            .last()
            .expect("resolved out_indices are non-empty");

        let stem = Stem::new(&p / "conv1", cfg);
        let mut inplanes = cfg.stem_channels();
        let bn1 = BatchNorm::new(&p / "bn1", inplanes, false);

        // make_blocks: stride 2 per stage after the first until the output stride is
        // reached, dilation from then on; drop-path rate rising linearly over all blocks
        // of the whole network (also those FeatureListNet leaves out).
        let expansion = cfg.block.expansion();
        let net_num_blocks: i64 = cfg.layers.iter().sum();
        let mut net_block_idx = 0i64;
        let mut net_stride = 4;
        let (mut dilation, mut prev_dilation) = (1, 1);
        let mut stages = Vec::new();
        for (stage_idx, (&planes, &num_blocks)) in cfg.channels.iter().zip(&cfg.layers).enumerate()
        {
            if stage_idx as i64 + 1 > last {
                break;
            }
            let sp = &p / format!("layer{}", stage_idx + 1);
            let mut stride = if stage_idx == 0 { 1 } else { 2 };
            if net_stride >= cfg.output_stride {
                dilation *= stride;
                stride = 1;
            } else {
                net_stride *= stride;
            }
            let mut downsample = (stride != 1 || inplanes != planes * expansion).then(|| {
                Downsample::new(
                    &sp / 0 / "downsample",
                    DownArgs {
                        c_in: inplanes,
                        c_out: planes * expansion,
                        kernel_size: cfg.down_kernel_size,
                        stride,
                        dilation,
                        first_dilation: prev_dilation,
                        avg_down: cfg.avg_down,
                    },
                )
            });
            let mut blocks = Vec::with_capacity(num_blocks as usize);
            for block_idx in 0..num_blocks {
                let a = BlockArgs {
                    c_in: inplanes,
                    planes,
                    stride: if block_idx == 0 { stride } else { 1 },
                    dilation,
                    first_dilation: prev_dilation,
                    drop_path: drop_path_rate(cfg.drop_path_rate, net_block_idx, net_num_blocks),
                };
                blocks.push(Block::new(&sp / block_idx, cfg, a, downsample.take()));
                prev_dilation = dilation;
                inplanes = planes * expansion;
                net_block_idx += 1;
            }
            stages.push(blocks);
        }
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            bn1,
            stages,
            out_indices,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The feature indices returned, non-negative and increasing.
    pub fn out_indices(&self) -> &[i64] {
        &self.out_indices
    }

    /// Runs the network on `x` ([B, in_chans, H, W]) and returns the selected features.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        TAPS.check_image(x, self.cfg.in_chans)?;
        let mut out = Vec::with_capacity(self.out_indices.len());
        // Stem: conv, bn, relu -> feature 0 at stride 2.
        let mut y = self
            .bn1
            .forward(&self.stem.forward(x, train)?, train)?
            .f_relu()?;
        if self.out_indices.contains(&0) {
            out.push(y.shallow_clone());
        }
        if self.stages.is_empty() {
            return Ok(out);
        }
        y = y.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        for (i, stage) in self.stages.iter().enumerate() {
            for block in stage {
                y = block.forward(&y, train)?;
            }
            if self.out_indices.contains(&(i as i64 + 1)) {
                out.push(y.shallow_clone());
            }
        }
        Ok(out)
    }
}

impl LoadPretrained for ResNet {
    /// Loads a timm ResNet checkpoint (a state_dict of the full classifier model, as
    /// `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`
    /// reads it) into `vs`, which must hold this model's variables.
    ///
    /// As timm does: `module.` / `_orig_mod.` prefixes are removed, the classifier
    /// (`fc.*`) is dropped, and a 3-channel first convolution is adapted to `in_chans`
    /// (summed for one channel, else repeated and scaled by 3 / in_chans). Keys of the
    /// stages this feature extractor leaves out are ignored. Anything else missing,
    /// unexpected or of the wrong shape is an error.
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()> {
        let last_stage = self.stages.len();
        let first_conv = self.stem.first_conv_key();
        let mut given = std::collections::BTreeMap::new();
        for (k, v) in weights {
            let k = pretrained::clean_checkpoint_key(k);
            let left_out = k
                .strip_prefix("layer")
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                .is_some_and(|stage| stage > last_stage);
            if k.starts_with("fc.") || k.ends_with("num_batches_tracked") || left_out {
                continue;
            }
            given.insert(k, v);
        }
        pretrained::adapt_first_conv(&mut given, first_conv, self.cfg.in_chans)?;
        pretrained::load_strict(vs, given, "ResNet")
    }
}

impl Model for ResNet {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.features(TAPS.single(xs, self.cfg.in_chans)?, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        features::pick(&self.cfg.feature_channels(), &self.out_indices)
    }
}

/// Builds a timm ResNet from the validated arguments on top of the preset `base`.
fn build(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<ModuleBox> {
    features::require_features_only(ctx, "the stem and layer1..layer4 feature maps")?;
    let cfg = config(ctx, base)?;
    pretrained::build_model(ctx, |p| ResNet::new(p, &cfg))
}

/// The configuration the validated arguments give on top of the preset `base` (every
/// feature when `out_indices` is not an argument).
pub(crate) fn config(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<Config> {
    let a = &ctx.args;
    Ok(Config {
        in_chans: a.get("in_chans")?,
        out_indices: TAPS.out_indices_arg(ctx, NUM_FEATURES)?,
        output_stride: a.get("output_stride")?,
        stem_width: a.get("stem_width")?,
        stem_type: a.get("stem_type")?,
        block_reduce_first: a.get("block_reduce_first")?,
        down_kernel_size: a.get("down_kernel_size")?,
        avg_down: a.get("avg_down")?,
        drop_rate: a.get("drop_rate")?,
        drop_path_rate: a.get("drop_path_rate")?,
        zero_init_last: a.get("zero_init_last")?,
        ..base
    })
}

/// The registry entry for the timm ResNet preset `name`, with timm's keyword parameters.
pub(crate) fn entry(name: &'static str) -> Entry {
    let base = Config::preset(name).expect("a ResNet entry is registered only for a known preset");
    let list = |v: &[i64], sep: &str| v.iter().map(i64::to_string).collect::<Vec<_>>().join(sep);
    let block = match base.block {
        BlockKind::Basic => "BasicBlock",
        BlockKind::Bottleneck => "Bottleneck",
    };
    let doc = format!(
        "timm ResNet-{} ({block}, {}) as a feature extractor: features at strides 2, 4, 8, 16, 32 with {} channels.",
        name.trim_start_matches("resnet"),
        list(&base.layers, "-"),
        list(&base.feature_channels(), ", ")
    );
    let d = Config::default();
    let e = Entry::new(name, &doc, move |ctx| build(ctx, base.clone()));
    features::common_params(e, "the feature maps")
        .opt("in_chans", ParamType::INT, json!(d.in_chans), "input channels of the first convolution")
        .opt("out_indices", ParamType::INT_OR_INT_LIST, json!(d.out_indices), "features to return: 0 = stem, 1..4 = layer1..layer4 (negative from the end; an int n = the last n)")
        .opt("output_stride", ParamType::INT, json!(d.output_stride), "output stride 32, 16 or 8 (the last stages dilate instead of striding)")
        .opt("stem_width", ParamType::INT, json!(d.stem_width), "width of the deep stem's convolutions")
        .opt("stem_type", ParamType::STR, json!(d.stem_type), "stem: \"\" (7x7 conv), \"deep\" or \"deep_tiered\" (three 3x3 convs)")
        .opt("block_reduce_first", ParamType::INT, json!(d.block_reduce_first), "divides the width of each block's first convolution")
        .opt("down_kernel_size", ParamType::INT, json!(d.down_kernel_size), "kernel size of the strided projection shortcut")
        .opt("avg_down", ParamType::BOOL, json!(d.avg_down), "average-pool before the 1x1 projection shortcut (ResNet-D)")
        .opt("drop_rate", ParamType::FLOAT, json!(d.drop_rate), "classifier dropout; no effect on a features-only model, as in timm")
        .opt("drop_path_rate", ParamType::FLOAT, json!(d.drop_path_rate), "stochastic depth rate, linear over the blocks (train mode only)")
        .opt("zero_init_last", ParamType::BOOL, json!(d.zero_init_last), "initialise the last BatchNorm weight of each residual branch to zero")
}

/// The registry entries of the timm ResNet presets.
pub(crate) fn entries() -> Vec<Entry> {
    ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
        .into_iter()
        .map(entry)
        .collect()
}
