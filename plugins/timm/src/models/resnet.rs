//! Mirrors `timm/models/resnet.py` (timm 1.0.31): `ResNet` with its `BasicBlock` and
//! `Bottleneck` residual blocks, `make_blocks`, `downsample_conv` and `downsample_avg`,
//! seen through timm's `FeatureListNet` (`timm/models/_features.py`), which is what
//! `timm.create_model(name, features_only=True)` returns and what TerraTorch's
//! `TimmBackboneWrapper` (`terratorch/registry/timm_registry.py`) wraps.
//!
//! The network itself (blocks, stems, shortcuts) is the shared
//! [`terrahost_layers::resnet`]; this file holds timm's arguments, presets, feature
//! selection and checkpoint loading.
//!
//! As in `FeatureListNet`, the model keeps only the modules up to the last feature it
//! returns (so `out_indices=[0, 1]` has no `layer2.*`..`layer4.*` keys) and never has the
//! classifier (`fc.*`).
use super::checks;
use super::features::{self, Order, Taps};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn;
use tch::Tensor;
use terrahost_layers::resnet as net;
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

pub use terrahost_layers::resnet::BlockKind;

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

    /// The stem `stem_type` and `stem_width` describe (validated).
    fn stem(&self) -> net::Stem {
        let width = self.stem_width;
        match self.stem_type.as_str() {
            "deep" => net::Stem::Deep { width },
            "deep_tiered" => net::Stem::DeepTiered { width },
            _ => net::Stem::Plain,
        }
    }

    /// Channels of the stem output (`inplanes` upstream: 64 for the 7x7 stem whatever
    /// `stem_width` says, twice `stem_width` for a deep stem).
    pub fn stem_channels(&self) -> i64 {
        self.stem().channels()
    }

    /// Channels of all five feature taps (timm's `feature_info` `num_chs`).
    pub fn feature_channels(&self) -> Vec<i64> {
        self.net_config(net::NUM_STAGES).feature_channels()
    }

    /// The shared network's configuration, with `num_stages` stages built and no
    /// classifier (`FeatureListNet` drops it).
    fn net_config(&self, num_stages: usize) -> net::Config {
        net::Config {
            block: self.block,
            layers: self.layers.clone(),
            channels: self.channels.clone(),
            in_chans: self.in_chans,
            output_stride: self.output_stride,
            cardinality: self.cardinality,
            base_width: self.base_width,
            stem: self.stem(),
            block_reduce_first: self.block_reduce_first,
            down_kernel_size: self.down_kernel_size,
            avg_down: self.avg_down,
            drop_path_rate: self.drop_path_rate,
            zero_init_last: self.zero_init_last,
            dilation: net::Dilation::Timm,
            num_stages,
            classifier: None,
        }
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

/// timm's ResNet as a `features_only` feature extractor: returns the feature maps at
/// `out_indices` among [stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)]
/// (strides for `output_stride` 32). The network is the shared
/// [`terrahost_layers::resnet::ResNet`], built up to the last returned feature.
#[derive(Debug)]
pub struct ResNet {
    cfg: Config,
    net: net::ResNet,
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
        let net = net::ResNet::new(p, &cfg.net_config(last as usize))?;
        Ok(Self {
            cfg: cfg.clone(),
            net,
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
        let all = self.net.forward_features(x, train, self.net.num_stages())?;
        Ok(self
            .out_indices
            .iter()
            .map(|&i| all[i as usize].shallow_clone())
            .collect())
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
        let last_stage = self.net.num_stages();
        let first_conv = self.net.first_conv_key();
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
