//! Mirrors `timm/models/resnet.py` (timm 1.0.31): `ResNet` with its `BasicBlock` and
//! `Bottleneck` residual blocks, `make_blocks`, `downsample_conv` and `downsample_avg`,
//! seen through timm's `FeatureListNet` (`timm/models/_features.py`), which is what
//! `timm.create_model(name, features_only=True)` returns and what TerraTorch's
//! `TimmBackboneWrapper` (`terratorch/registry/timm_registry.py`) wraps.
//!
//! As in `FeatureListNet`, the model keeps only the modules up to the last feature it
//! returns (so `out_indices=[0, 1]` has no `layer2.*`..`layer4.*` keys) and never has the
//! classifier (`fc.*`).
use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// The number of feature taps of a ResNet: the stem (`act1`, stride 2) and `layer1`..`layer4`.
pub const NUM_FEATURES: i64 = 5;

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
    /// does, and also required to be strictly increasing: timm returns features in
    /// network order whatever the order given, while its `out_channels` follows the order
    /// given, so any other order would describe the outputs wrongly.
    pub fn resolved_out_indices(&self) -> Result<Vec<i64>> {
        if self.out_indices.is_empty() {
            return Err(PluginError::invalid_argument(
                "`out_indices` is empty; give at least one feature index (0 = stem, 1..4 = layer1..layer4)",
            ));
        }
        let mut out = Vec::with_capacity(self.out_indices.len());
        for &i in &self.out_indices {
            let idx = if i < 0 { NUM_FEATURES + i } else { i };
            if !(0..NUM_FEATURES).contains(&idx) {
                return Err(PluginError::invalid_argument(format!(
                    "`out_indices` contains {i}, but a ResNet has {NUM_FEATURES} features: use 0..4 \
                     (0 = stem, 1..4 = layer1..layer4) or -5..-1"
                )));
            }
            if out.last().is_some_and(|&prev| idx <= prev) {
                return Err(PluginError::invalid_argument(format!(
                    "`out_indices` {:?} must be strictly increasing (after counting negative ones from the \
                     end): features come out in network order",
                    self.out_indices
                )));
            }
            out.push(idx);
        }
        Ok(out)
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
        if self.in_chans < 1 {
            return bad(format!(
                "`in_chans` must be at least 1, got {}",
                self.in_chans
            ));
        }
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
        for (name, v) in [
            ("drop_rate", self.drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("`{name}` must be in [0, 1), got {v}"));
            }
        }
        Ok(())
    }
}

/// A bias-free 2-D convolution (every convolution of a ResNet is one).
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        dilation: i64,
        groups: i64,
    ) -> Self {
        // timm's init_weights: kaiming normal, fan_out, relu gain.
        let init = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        };
        let weight = p.var("weight", &[c_out, c_in / groups, k, k], init);
        Self {
            weight,
            stride,
            padding,
            dilation,
            groups,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = [self.stride, self.stride];
        let pad = [self.padding, self.padding];
        let d = [self.dilation, self.dilation];
        Ok(x.f_conv2d(&self.weight, None::<&Tensor>, s, pad, d, self.groups)?)
    }
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

/// timm's `drop_path`: zeroes whole samples of the residual branch with probability `p`
/// and rescales the survivors by 1 / (1 - p); the identity outside training.
pub(crate) fn drop_path(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p == 0.0 || !train {
        return Ok(x);
    }
    let keep = 1.0 - p;
    let b = x.size().first().copied().unwrap_or(1);
    // [B, 1, 1, 1] mask, one draw per sample.
    let mut shape = vec![1i64; x.dim()];
    shape[0] = b;
    let mut mask = Tensor::f_empty(shape.as_slice(), (x.kind(), x.device()))?;
    let _ = mask.f_bernoulli_float_(keep)?;
    let mask = mask.f_div_scalar(keep)?;
    Ok(x.f_mul(&mask)?)
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
    Conv { conv: Conv, bn: BatchNorm },
    /// `downsample_avg`: `downsample.0` is the pool, then `.1` conv and `.2` norm.
    Avg {
        pool: AvgPool,
        conv: Conv,
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
            let conv = Conv::new(&p / 1, a.c_in, a.c_out, 1, 1, 0, 1, 1);
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
            let conv = Conv::new(
                &p / 0,
                a.c_in,
                a.c_out,
                k,
                a.stride,
                padding,
                first_dilation,
                1,
            );
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
    convs: Vec<(Conv, BatchNorm)>,
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
                        Conv::new(&p / "conv1", a.c_in, first, 3, a.stride, fd, fd, 1),
                        BatchNorm::new(&p / "bn1", first, false),
                    ),
                    (
                        Conv::new(&p / "conv2", first, out, 3, 1, a.dilation, a.dilation, 1),
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
                        Conv::new(&p / "conv1", a.c_in, first, 1, 1, 0, 1, 1),
                        BatchNorm::new(&p / "bn1", first, false),
                    ),
                    (
                        Conv::new(
                            &p / "conv2",
                            first,
                            width,
                            3,
                            a.stride,
                            fd,
                            fd,
                            cfg.cardinality,
                        ),
                        BatchNorm::new(&p / "bn2", width, false),
                    ),
                    (
                        Conv::new(&p / "conv3", width, out, 1, 1, 0, 1, 1),
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
    Plain(Conv),
    Deep {
        c0: Conv,
        n0: BatchNorm,
        c1: Conv,
        n1: BatchNorm,
        c2: Conv,
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
                c0: Conv::new(&p / 0, cfg.in_chans, s0, 3, 2, 1, 1, 1),
                n0: BatchNorm::new(&p / 1, s0, false),
                c1: Conv::new(&p / 3, s0, s1, 3, 1, 1, 1, 1),
                n1: BatchNorm::new(&p / 4, s1, false),
                c2: Conv::new(&p / 6, s1, inplanes, 3, 1, 1, 1, 1),
            }
        } else {
            Self::Plain(Conv::new(p, cfg.in_chans, inplanes, 7, 2, 3, 1, 1))
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
                    drop_path: cfg.drop_path_rate * net_block_idx as f64
                        / (net_num_blocks - 1).max(1) as f64,
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
        if x.dim() != 4 {
            return Err(PluginError::forward_failed(format!(
                "a ResNet takes one [B, C, H, W] image batch, got a tensor of shape {:?}",
                x.size()
            )));
        }
        let c = x.size()[1];
        if c != self.cfg.in_chans {
            return Err(PluginError::forward_failed(format!(
                "the input has {c} channels but the model was built with in_chans={} (input shape {:?}); \
                 build it with in_chans={c} or pass a {}-channel image",
                self.cfg.in_chans,
                x.size(),
                self.cfg.in_chans
            )));
        }
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

    /// Loads a timm ResNet checkpoint (a state_dict of the full classifier model, as
    /// `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`
    /// reads it) into `vs`, which must hold this model's variables.
    ///
    /// As timm does: `module.` / `_orig_mod.` prefixes are removed, the classifier
    /// (`fc.*`) is dropped, and a 3-channel first convolution is adapted to `in_chans`
    /// (summed for one channel, else repeated and scaled by 3 / in_chans). Keys of the
    /// stages this feature extractor leaves out are ignored. Anything else missing,
    /// unexpected or of the wrong shape is an error.
    pub fn load_pretrained(
        &self,
        vs: &mut nn::VarStore,
        weights: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let last_stage = self.stages.len();
        let first_conv = self.stem.first_conv_key();
        let mut given: std::collections::BTreeMap<String, Tensor> =
            std::collections::BTreeMap::new();
        for (k, v) in weights {
            let k = crate::clean_checkpoint_key(k);
            let left_out = k
                .strip_prefix("layer")
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                .is_some_and(|stage| stage > last_stage);
            if k.starts_with("fc.") || k.ends_with("num_batches_tracked") || left_out {
                continue;
            }
            given.insert(k, v);
        }
        let target = vs.variables().get(first_conv).map(Tensor::size);
        if let (Some(w), Some(target)) = (given.get(first_conv), target) {
            if w.size() != target {
                let adapted = adapt_input_conv(self.cfg.in_chans, w)
                    .map_err(|e| e.context(format_args!("`{first_conv}`")))?;
                given.insert(first_conv.to_owned(), adapted);
            }
        }
        crate::load_strict(vs, given, "ResNet")
    }
}

/// timm's `adapt_input_conv` for a 3-channel pretrained first convolution: one input
/// channel sums the three, more repeat them (cut to `in_chans`) and scale by 3 / in_chans.
pub fn adapt_input_conv(in_chans: i64, w: &Tensor) -> Result<Tensor> {
    let size = w.size();
    if size.len() != 4 || size[1] != 3 {
        return Err(PluginError::invalid_argument(format!(
            "cannot adapt a first-convolution weight of shape {size:?} to {in_chans} input channels: only 3-channel \
             [O, 3, kH, kW] weights can be adapted"
        )));
    }
    let kind = w.kind();
    let w = w.f_to_kind(Kind::Float)?;
    let out = if in_chans == 1 {
        w.f_sum_dim_intlist(Some([1i64].as_slice()), true, Kind::Float)?
    } else {
        let repeat = (in_chans + 2) / 3;
        w.f_repeat([1, repeat, 1, 1])?
            .f_narrow(1, 0, in_chans)?
            .f_mul_scalar(3.0 / in_chans as f64)?
    };
    Ok(out.f_to_kind(kind)?)
}

impl Model for ResNet {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => self.features(x, train),
            _ => Err(PluginError::invalid_argument(format!(
                "a ResNet backbone takes exactly one input tensor [B, {}, H, W], got {}",
                self.cfg.in_chans,
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        let all = self.cfg.feature_channels();
        self.out_indices.iter().map(|&i| all[i as usize]).collect()
    }
}
