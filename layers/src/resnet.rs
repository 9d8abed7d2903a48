//! The ResNet of timm (`timm/models/resnet.py`, timm 1.0.31: `ResNet`, `BasicBlock`,
//! `Bottleneck`, `make_blocks`, `downsample_conv`, `downsample_avg`) and of torchvision
//! (`torchvision/models/resnet.py`), written once. The two are the same network with the
//! same `state_dict` keys (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`,
//! `fc`); they differ only in what timm adds (deep stems, ResNet-D shortcuts, stochastic
//! depth) and in where a dilated stage's first block dilates ([`Dilation`]).
//!
//! Three plugins build their ResNets here: timm's `resnet*` (features only, every
//! option), TerraTorch's torchgeo ResNets (timm's model with its classifier `fc`) and
//! smp's ResNet encoders (torchvision's model dilated by smp's `make_dilated`).
use crate::conv::{Conv2d, ConvSpec};
use crate::drop::{drop_path, drop_path_rate, dropout};
use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

/// Number of residual stages (`layer1`..`layer4`).
pub const NUM_STAGES: usize = 4;

/// Which residual block the stages are made of.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// `BasicBlock`: two 3x3 convolutions (expansion 1), ResNet-18/34.
    Basic,
    /// `Bottleneck`: 1x1, 3x3 (strided, grouped), 1x1 convolutions (expansion 4),
    /// ResNet-50/101/152 and ResNeXt.
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

/// The stem convolution(s) in front of `bn1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// One 7x7 stride-2 convolution to 64 channels (`conv1`): torchvision's, and timm's
    /// `stem_type=""`.
    Plain,
    /// timm's `stem_type="deep"`: three 3x3 convolutions (`conv1.0`, `conv1.3`,
    /// `conv1.6`, norms `conv1.1`, `conv1.4`) of `width`, `width` and `2 * width`.
    Deep {
        /// timm's `stem_width`.
        width: i64,
    },
    /// timm's `stem_type="deep_tiered"`: as [`Stem::Deep`] with the first two
    /// convolutions `3 * (width / 4)` and `width` wide.
    DeepTiered {
        /// timm's `stem_width`.
        width: i64,
    },
}

impl Stem {
    /// Channels of the stem output (`inplanes` upstream): 64 for the 7x7 stem, twice the
    /// width for a deep stem.
    pub fn channels(self) -> i64 {
        match self {
            Self::Plain => 64,
            Self::Deep { width } | Self::DeepTiered { width } => 2 * width,
        }
    }
}

/// Where the first block of a dilated stage (one whose stride became a dilation to keep
/// the output stride) dilates its strided convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dilation {
    /// timm's `make_blocks`: with the previous stage's dilation (`first_dilation`); the
    /// later blocks with the stage's own.
    Timm,
    /// torchvision's `replace_stride_with_dilation` as smp's `make_dilated` applies it:
    /// every convolution of the stage with the stage's dilation.
    Uniform,
}

/// timm's `SelectAdaptivePool2d` pooling types that a ResNet classifier uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalPool {
    /// `avg`: mean over H and W.
    Avg,
    /// `max`: max over H and W.
    Max,
    /// `avgmax`: the mean of the two.
    AvgMax,
    /// `catavgmax`: the two concatenated (twice the channels).
    CatAvgMax,
}

impl GlobalPool {
    /// timm's name for it (`"avg"`, `"max"`, `"avgmax"`, `"catavgmax"`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "avg" => Self::Avg,
            "max" => Self::Max,
            "avgmax" => Self::AvgMax,
            "catavgmax" => Self::CatAvgMax,
            _ => return None,
        })
    }

    /// How many times the channels the pooled vector has.
    pub fn feat_mult(self) -> i64 {
        match self {
            Self::CatAvgMax => 2,
            _ => 1,
        }
    }

    /// `[B, C, H, W] -> [B, C * feat_mult]`.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        let avg = || x.f_mean_dim([-2i64, -1].as_slice(), false, None);
        let max = || x.f_amax([-2i64, -1], false);
        Ok(match self {
            Self::Avg => avg()?,
            Self::Max => max()?,
            Self::AvgMax => avg()?.f_add(&max()?)?.f_mul_scalar(0.5)?,
            Self::CatAvgMax => Tensor::f_cat(&[avg()?, max()?], 1)?,
        })
    }
}

/// The classifier of timm's `ResNet` (`global_pool`, dropout, `fc`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Classifier {
    /// Outputs of `fc`.
    pub num_classes: i64,
    /// The pooling in front of it.
    pub global_pool: GlobalPool,
    /// Dropout between pooling and `fc` (train mode only).
    pub drop_rate: f64,
}

/// The arguments of timm's `ResNet.__init__` (torchvision's are a subset: `groups` is
/// `cardinality`, `width_per_group` is `base_width`), plus how many stages to build.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Residual block type.
    pub block: BlockKind,
    /// Number of blocks in each of the four stages.
    pub layers: Vec<i64>,
    /// `planes` of each of the four stages (64, 128, 256, 512 upstream).
    pub channels: Vec<i64>,
    /// Input channels of the first convolution.
    pub in_chans: i64,
    /// Output stride of the network: 32, or 16 / 8 by dilating the last stages.
    pub output_stride: i64,
    /// Groups of the Bottleneck's 3x3 convolution (ResNeXt).
    pub cardinality: i64,
    /// Bottleneck width: `planes * base_width / 64 * cardinality`.
    pub base_width: i64,
    /// The stem.
    pub stem: Stem,
    /// Divides the width of the first convolution of each block.
    pub block_reduce_first: i64,
    /// Kernel size of the strided projection shortcut.
    pub down_kernel_size: i64,
    /// Average-pool then 1x1 conv in the projection shortcut (ResNet-D).
    pub avg_down: bool,
    /// Stochastic depth rate, rising linearly over all blocks of all four stages (also
    /// those not built); train mode only.
    pub drop_path_rate: f64,
    /// Zero-initialise the last BatchNorm weight of every residual branch.
    pub zero_init_last: bool,
    /// Where a dilated stage's first block dilates.
    pub dilation: Dilation,
    /// Stages built (0..=4): a `features_only` model leaves out the stages after its last
    /// feature, so their keys do not exist.
    pub num_stages: usize,
    /// The classifier (`fc`), if any; it needs all four stages.
    pub classifier: Option<Classifier>,
}

impl Config {
    /// `ResNet(block, layers)` with every other argument at timm's default: plain stem,
    /// output stride 32, all four stages, no classifier.
    pub fn new(block: BlockKind, layers: &[i64]) -> Self {
        Self {
            block,
            layers: layers.to_vec(),
            channels: vec![64, 128, 256, 512],
            in_chans: 3,
            output_stride: 32,
            cardinality: 1,
            base_width: 64,
            stem: Stem::Plain,
            block_reduce_first: 1,
            down_kernel_size: 1,
            avg_down: false,
            drop_path_rate: 0.0,
            zero_init_last: true,
            dilation: Dilation::Timm,
            num_stages: NUM_STAGES,
            classifier: None,
        }
    }

    /// Channels of the stem output and of the four stages (timm's `feature_info`).
    pub fn feature_channels(&self) -> Vec<i64> {
        let e = self.block.expansion();
        std::iter::once(self.stem.channels())
            .chain(self.channels.iter().map(|c| c * e))
            .collect()
    }

    /// Structural checks only; the plugins check their arguments first, with their
    /// upstream's messages.
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.layers.len() != NUM_STAGES || self.channels.len() != NUM_STAGES {
            return bad(format!(
                "a ResNet has 4 stages: `layers` {:?} and `channels` {:?} must both have 4 entries",
                self.layers, self.channels
            ));
        }
        if self.layers.iter().chain(&self.channels).any(|&n| n < 1) {
            return bad(format!(
                "a ResNet needs positive block counts and widths, got `layers` {:?} and `channels` {:?}",
                self.layers, self.channels
            ));
        }
        if self.num_stages > NUM_STAGES {
            return bad(format!(
                "a ResNet has 4 stages, {} were asked for",
                self.num_stages
            ));
        }
        if self.classifier.is_some() && self.num_stages != NUM_STAGES {
            return bad("a ResNet classifier needs all four stages".into());
        }
        if let Stem::Deep { width } | Stem::DeepTiered { width } = self.stem {
            if width < 4 {
                return bad(format!(
                    "`stem_width` must be at least 4 for a deep stem, got {width}"
                ));
            }
        }
        if [
            self.in_chans,
            self.cardinality,
            self.base_width,
            self.block_reduce_first,
            self.down_kernel_size,
        ]
        .iter()
        .any(|&v| v < 1)
        {
            return bad(format!(
                "`in_chans` ({}), `cardinality` ({}), `base_width` ({}), `block_reduce_first` ({}) and \
                 `down_kernel_size` ({}) must all be at least 1",
                self.in_chans,
                self.cardinality,
                self.base_width,
                self.block_reduce_first,
                self.down_kernel_size
            ));
        }
        Ok(())
    }
}

/// A bias-free convolution with the ResNet init of timm and torchvision (Kaiming normal,
/// fan_out, ReLU gain); every convolution of a ResNet is one.
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
    /// `downsample_conv` (torchvision's only kind): keys `downsample.0` (conv) and
    /// `downsample.1` (norm).
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

/// One residual block, `BasicBlock` (conv1, conv2) or `Bottleneck` (conv1, conv2, conv3),
/// each convolution followed by its BatchNorm (`bn1`..`bn3`); the stride sits on the 3x3
/// convolution in both timm and torchvision.
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<Downsample>,
    drop_path: f64,
}

impl Block {
    fn new(p: nn::Path, cfg: &Config, a: BlockArgs, downsample: Option<Downsample>) -> Self {
        let zil = cfg.zero_init_last;
        let fd = a.first_dilation;
        let convs = match cfg.block {
            BlockKind::Basic => {
                let first = a.planes / cfg.block_reduce_first;
                let out = a.planes;
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

/// The stem convolution(s) as built (see [`Stem`]).
#[derive(Debug)]
enum StemConv {
    Plain(Conv2d),
    Deep {
        c0: Conv2d,
        n0: BatchNorm,
        c1: Conv2d,
        n1: BatchNorm,
        c2: Conv2d,
    },
}

impl StemConv {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let inplanes = cfg.stem.channels();
        let (s0, s1) = match cfg.stem {
            Stem::Plain => {
                return Self::Plain(conv(
                    p,
                    ConvSpec::new(cfg.in_chans, inplanes, 7)
                        .stride(2)
                        .padding(3),
                ))
            }
            Stem::Deep { width } => (width, width),
            Stem::DeepTiered { width } => (3 * (width / 4), width),
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
}

/// timm's / torchvision's `ResNet`: stem (`conv1`, `bn1`, ReLU), max pool, `layer1`..
/// `layer4` (strides 4, 8, 16, 32 for output stride 32) and optionally the classifier
/// (`fc`). Callers pick the feature maps they return from [`ResNet::forward_features`].
#[derive(Debug)]
pub struct ResNet {
    cfg: Config,
    stem: StemConv,
    bn1: BatchNorm,
    /// The stages that are built (`cfg.num_stages`).
    stages: Vec<Vec<Block>>,
    fc: Option<nn::Linear>,
}

impl ResNet {
    /// Builds the network under `p` with the upstream parameter names (`p.conv1.weight`,
    /// `p.layer1.0.conv1.weight`, ..., `p.fc.weight`) and initialisation.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let stem = StemConv::new(&p / "conv1", cfg);
        let mut inplanes = cfg.stem.channels();
        let bn1 = BatchNorm::new(&p / "bn1", inplanes, false);

        // make_blocks: stride 2 per stage after the first until the output stride is
        // reached, dilation from then on; drop-path rate rising linearly over all blocks
        // of the whole network (also those left out).
        let expansion = cfg.block.expansion();
        let net_num_blocks: i64 = cfg.layers.iter().sum();
        let mut net_block_idx = 0i64;
        let mut net_stride = 4;
        let (mut dilation, mut prev_dilation) = (1, 1);
        let mut stages = Vec::new();
        for (stage_idx, (&planes, &num_blocks)) in cfg.channels.iter().zip(&cfg.layers).enumerate()
        {
            if stage_idx >= cfg.num_stages {
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
            let first_dilation = match cfg.dilation {
                Dilation::Timm => prev_dilation,
                Dilation::Uniform => dilation,
            };
            let mut downsample = (stride != 1 || inplanes != planes * expansion).then(|| {
                Downsample::new(
                    &sp / 0 / "downsample",
                    DownArgs {
                        c_in: inplanes,
                        c_out: planes * expansion,
                        kernel_size: cfg.down_kernel_size,
                        stride,
                        dilation,
                        first_dilation,
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
                    first_dilation: if block_idx == 0 {
                        first_dilation
                    } else {
                        dilation
                    },
                    drop_path: drop_path_rate(cfg.drop_path_rate, net_block_idx, net_num_blocks),
                };
                blocks.push(Block::new(&sp / block_idx, cfg, a, downsample.take()));
                prev_dilation = dilation;
                inplanes = planes * expansion;
                net_block_idx += 1;
            }
            stages.push(blocks);
        }
        let fc = cfg.classifier.map(|c| {
            // nn.Linear's own init, as timm leaves the classifier.
            nn::linear(
                &p / "fc",
                inplanes * c.global_pool.feat_mult(),
                c.num_classes,
                Default::default(),
            )
        });
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            bn1,
            stages,
            fc,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The number of stages built.
    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    /// The key of the stem's first convolution weight (timm's `first_conv`), relative to
    /// the model's path.
    pub fn first_conv_key(&self) -> &'static str {
        match self.stem {
            StemConv::Plain(_) => "conv1.weight",
            StemConv::Deep { .. } => "conv1.0.weight",
        }
    }

    /// The stem output `relu(bn1(conv1(x)))` (stride 2) followed by the outputs of the
    /// first `stages` stages: `1 + stages` maps. The max pool runs only when a stage
    /// does. `x` is `[B, in_chans, H, W]`; callers check it with their own messages.
    pub fn forward_features(&self, x: &Tensor, train: bool, stages: usize) -> Result<Vec<Tensor>> {
        if stages > self.stages.len() {
            return Err(PluginError::forward_failed(format!(
                "this ResNet was built with {} stages, {stages} were asked for",
                self.stages.len()
            )));
        }
        let mut y = self
            .bn1
            .forward(&self.stem.forward(x, train)?, train)?
            .f_relu()?;
        let mut out = Vec::with_capacity(stages + 1);
        out.push(y.shallow_clone());
        if stages == 0 {
            return Ok(out);
        }
        y = y.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        for stage in &self.stages[..stages] {
            for block in stage {
                y = block.forward(&y, train)?;
            }
            out.push(y.shallow_clone());
        }
        Ok(out)
    }

    /// The classifier on the last stage's map: global pool, dropout, `fc`
    /// (`[B, C, H, W] -> [B, num_classes]`).
    pub fn forward_head(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (Some(fc), Some(c)) = (&self.fc, self.cfg.classifier) else {
            return Err(PluginError::forward_failed(
                "this ResNet was built without a classifier (num_classes = 0)",
            ));
        };
        let y = dropout(c.global_pool.forward(x)?, c.drop_rate, train)?;
        Ok(y.f_linear(&fc.ws, fc.bs.as_ref())?)
    }

    /// The whole classifier: features, then [`ResNet::forward_head`].
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.forward_features(x, train, self.stages.len())?;
        let last = features.last().expect("at least the stem map");
        self.forward_head(last, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn names(cfg: &Config) -> (nn::VarStore, ResNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = ResNet::new(vs.root(), cfg).unwrap();
        (vs, m)
    }

    fn has(vs: &nn::VarStore, key: &str) -> bool {
        vs.variables().contains_key(key)
    }

    #[test]
    fn parameter_names_are_the_upstream_state_dict_keys() {
        let mut cfg = Config::new(BlockKind::Bottleneck, &[1, 1, 1, 1]);
        cfg.classifier = Some(Classifier {
            num_classes: 7,
            global_pool: GlobalPool::CatAvgMax,
            drop_rate: 0.0,
        });
        let (vs, _) = names(&cfg);
        for key in [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "layer1.0.conv1.weight",
            "layer1.0.bn3.weight",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_var",
            "layer4.0.conv3.weight",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(has(&vs, key), "missing {key}");
        }
        assert!(!has(&vs, "conv1.bias"), "ResNet convolutions have no bias");
        // catavgmax doubles the classifier input: 2 * 512 * 4.
        assert_eq!(vs.variables()["fc.weight"].size(), [7, 4096]);
        // The stem convolution and three per Bottleneck (the shortcuts are `downsample.0`).
        let convs = vs
            .variables()
            .keys()
            .filter(|k| k.contains("conv") && k.ends_with("weight"))
            .count();
        assert_eq!(convs, 1 + 4 * 3);
    }

    #[test]
    fn deep_stem_avg_down_and_left_out_stages_have_timm_keys() {
        let mut cfg = Config::new(BlockKind::Basic, &[1, 1, 1, 1]);
        cfg.stem = Stem::DeepTiered { width: 8 };
        cfg.avg_down = true;
        cfg.num_stages = 2;
        let (vs, m) = names(&cfg);
        assert_eq!(m.first_conv_key(), "conv1.0.weight");
        assert_eq!(vs.variables()["conv1.0.weight"].size(), [6, 3, 3, 3]);
        assert_eq!(vs.variables()["conv1.3.weight"].size(), [8, 6, 3, 3]);
        assert_eq!(vs.variables()["conv1.6.weight"].size(), [16, 8, 3, 3]);
        assert!(has(&vs, "conv1.1.running_mean") && has(&vs, "conv1.4.weight"));
        // avg_down: the pool is downsample.0, so conv and norm are .1 and .2.
        assert!(has(&vs, "layer2.0.downsample.1.weight"));
        assert!(has(&vs, "layer2.0.downsample.2.bias"));
        assert!(!vs.variables().keys().any(|k| k.starts_with("layer3")));
        assert!(!has(&vs, "fc.weight"));
    }

    #[test]
    fn features_have_the_upstream_strides_and_channels() {
        let cfg = Config::new(BlockKind::Bottleneck, &[1, 1, 1, 1]);
        let (_vs, m) = names(&cfg);
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let f = m.forward_features(&x, false, 4).unwrap();
        let shapes: Vec<Vec<i64>> = f.iter().map(Tensor::size).collect();
        assert_eq!(
            shapes,
            [
                vec![2, 64, 32, 32],
                vec![2, 256, 16, 16],
                vec![2, 512, 8, 8],
                vec![2, 1024, 4, 4],
                vec![2, 2048, 2, 2]
            ]
        );
        assert_eq!(cfg.feature_channels(), [64, 256, 512, 1024, 2048]);
        // Fewer stages run: the stem alone skips the max pool.
        assert_eq!(m.forward_features(&x, false, 0).unwrap().len(), 1);
        assert!(m.forward_features(&x, false, 5).is_err());
        assert!(
            m.forward_head(&f[4], false).is_err(),
            "no classifier was built"
        );
    }

    #[test]
    fn dilation_styles_keep_the_output_stride_and_differ_only_in_the_first_block() {
        let x = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        let mut shapes = Vec::new();
        let mut outs = Vec::new();
        let mut first: Option<nn::VarStore> = None;
        for style in [Dilation::Timm, Dilation::Uniform] {
            let mut cfg = Config::new(BlockKind::Basic, &[2, 1, 1, 1]);
            cfg.output_stride = 8;
            cfg.dilation = style;
            // A zero last norm would make every residual branch (and so the dilation) moot.
            cfg.zero_init_last = false;
            let (mut vs, m) = names(&cfg);
            // The same weights in both (the dilation changes no parameter shape).
            match &first {
                Some(src) => vs.copy(src).unwrap(),
                None => first = Some(vs),
            }
            let f = m.forward_features(&x, false, 4).unwrap();
            shapes.push(f.iter().map(Tensor::size).collect::<Vec<_>>());
            outs.push(f);
        }
        assert_eq!(shapes[0], shapes[1]);
        assert_eq!(shapes[0][4], [1, 512, 8, 8], "stride 8 kept by dilation");
        // Same weights: layer1 and layer2 agree, layer3 (dilated, its first block
        // dilated differently) does not.
        assert!(outs[0][2].allclose(&outs[1][2], 1e-6, 1e-6, false));
        assert!(!outs[0][3].allclose(&outs[1][3], 1e-4, 1e-4, false));
    }

    #[test]
    fn classifier_pools_and_projects() {
        for (pool, mult) in [
            (GlobalPool::Avg, 1),
            (GlobalPool::Max, 1),
            (GlobalPool::AvgMax, 1),
            (GlobalPool::CatAvgMax, 2),
        ] {
            let mut cfg = Config::new(BlockKind::Basic, &[1, 1, 1, 1]);
            cfg.classifier = Some(Classifier {
                num_classes: 5,
                global_pool: pool,
                drop_rate: 0.0,
            });
            let (vs, m) = names(&cfg);
            assert_eq!(vs.variables()["fc.weight"].size(), [5, 512 * mult]);
            let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            assert_eq!(m.forward(&x, false).unwrap().size(), [2, 5]);
        }
        let x = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 6.0]).view([1, 1, 2, 2]);
        let v = |t: Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(v(GlobalPool::Avg.forward(&x).unwrap()), [3.0]);
        assert_eq!(v(GlobalPool::AvgMax.forward(&x).unwrap()), [4.5]);
        assert_eq!(v(GlobalPool::CatAvgMax.forward(&x).unwrap()), [3.0, 6.0]);
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let mut cfg = Config::new(BlockKind::Basic, &[1, 1, 1]);
        assert!(ResNet::new(nn::VarStore::new(Device::Cpu).root(), &cfg).is_err());
        cfg.layers = vec![1, 1, 1, 1];
        cfg.num_stages = 3;
        cfg.classifier = Some(Classifier {
            num_classes: 2,
            global_pool: GlobalPool::Avg,
            drop_rate: 0.0,
        });
        assert!(ResNet::new(nn::VarStore::new(Device::Cpu).root(), &cfg).is_err());
    }
}
