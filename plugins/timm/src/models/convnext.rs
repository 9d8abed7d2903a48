//! Mirrors `timm/models/convnext.py` (timm 1.0.31): `ConvNeXt` with its patch stem,
//! `ConvNeXtStage` and `ConvNeXtBlock` (channels-last LayerNorm + Linear MLP), seen through
//! timm's `FeatureListNet` with `flatten_sequential=True` (`timm/models/_features.py`),
//! which is what `timm.create_model("convnext_*", features_only=True)` returns and
//! TerraTorch's `TimmBackboneWrapper` (`terratorch/registry/timm_registry.py`) wraps.
//!
//! Flattening turns the stem's `stem.0` / `stem.1` and the stages' `stages.i` into the
//! top-level modules `stem_0`, `stem_1`, `stages_i`, so those are the key prefixes. As in
//! `FeatureListNet`, stages after the last returned one and the head are left out.
use super::checks;
use super::features::{self, Order, Taps};
use super::layers::{
    drop_path, drop_path_rate, trunc_normal, Conv2d, ConvSpec, LayerNorm, Mlp, LN_EPS,
};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// How ConvNeXt stages are named in `out_indices` messages.
const TAPS: Taps<'static> = Taps {
    model: "a ConvNeXt",
    unit: "stages",
    legend: "",
    order: Order::Increasing,
};

/// The number of feature taps: the outputs of the four stages.
pub const NUM_FEATURES: i64 = 4;

/// The arguments of timm's `ConvNeXt.__init__` that shape the feature extractor, plus the
/// `features_only` selection. Defaults are upstream's (ConvNeXt-T).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Input channels.
    pub in_chans: i64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Channels per stage.
    pub dims: Vec<i64>,
    /// Depthwise kernel size per stage.
    pub kernel_sizes: Vec<i64>,
    /// LayerScale initial value; `None` disables it (no `gamma` keys).
    pub ls_init_value: Option<f64>,
    /// Kernel and stride of the patch stem.
    pub patch_size: i64,
    /// Bias on every convolution.
    pub conv_bias: bool,
    /// Classifier dropout; no effect on a features-only model (as in timm).
    pub drop_rate: f64,
    /// Stochastic depth rate, rising linearly over all blocks (train mode only).
    pub drop_path_rate: f64,
    /// Stages whose outputs are returned (negative from the end), strictly increasing.
    pub out_indices: Vec<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new(&[3, 3, 9, 3], &[96, 192, 384, 768])
    }
}

impl Config {
    /// `ConvNeXt(depths, dims)` with every other argument at its upstream default.
    pub fn new(depths: &[i64], dims: &[i64]) -> Self {
        Self {
            in_chans: 3,
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            kernel_sizes: vec![7; 4],
            ls_init_value: Some(1e-6),
            patch_size: 4,
            conv_bias: true,
            drop_rate: 0.0,
            drop_path_rate: 0.0,
            out_indices: (0..NUM_FEATURES).collect(),
        }
    }
    /// timm `convnext_tiny`.
    pub fn convnext_tiny() -> Self {
        Self::new(&[3, 3, 9, 3], &[96, 192, 384, 768])
    }
    /// timm `convnext_small`.
    pub fn convnext_small() -> Self {
        Self::new(&[3, 3, 27, 3], &[96, 192, 384, 768])
    }
    /// timm `convnext_base`.
    pub fn convnext_base() -> Self {
        Self::new(&[3, 3, 27, 3], &[128, 256, 512, 1024])
    }
    /// timm `convnext_large`.
    pub fn convnext_large() -> Self {
        Self::new(&[3, 3, 27, 3], &[192, 384, 768, 1536])
    }
    /// timm `convnext_xlarge`.
    pub fn convnext_xlarge() -> Self {
        Self::new(&[3, 3, 27, 3], &[256, 512, 1024, 2048])
    }
    /// The preset called `name` (timm's model name), if there is one.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "convnext_tiny" => Self::convnext_tiny(),
            "convnext_small" => Self::convnext_small(),
            "convnext_base" => Self::convnext_base(),
            "convnext_large" => Self::convnext_large(),
            "convnext_xlarge" => Self::convnext_xlarge(),
            _ => return None,
        })
    }

    /// `out_indices` made non-negative and checked; strictly increasing because
    /// `FeatureListNet` returns stages in network order while `out_channels` follows the
    /// order given.
    pub fn resolved_out_indices(&self) -> Result<Vec<i64>> {
        TAPS.resolve(&self.out_indices, NUM_FEATURES)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(PluginError::invalid_argument(what));
        checks::at_least_one(&[("in_chans", self.in_chans)])?;
        for (name, v) in [
            ("depths", &self.depths),
            ("dims", &self.dims),
            ("kernel_sizes", &self.kernel_sizes),
        ] {
            if v.len() != 4 || v.iter().any(|&x| x < 1) {
                return bad(format!(
                    "`{name}` must be 4 positive ints (one per stage), got {v:?}"
                ));
            }
        }
        // With output_stride 32, timm dilates the stages that would pass stride 32 instead of
        // striding; that path is not ported, so the stem must keep the last stride <= 32.
        let last_stride = self.patch_size * if self.patch_size == 2 { 16 } else { 8 };
        if self.patch_size < 1 || last_stride > 32 {
            return bad(format!(
                "`patch_size` must be 1..=4 (the last stage would reach stride {last_stride} > 32, where timm \
                 switches to dilated stages, which terrahost does not build), got {}",
                self.patch_size
            ));
        }
        checks::rates(&[
            ("drop_rate", self.drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ])?;
        Ok(())
    }
}

/// A conv with timm's ConvNeXt init (truncated normal std 0.02, zero bias) and timm's
/// symmetric default padding for an odd kernel at stride 1 (none for the strided
/// patchify convolutions).
fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
    bias: bool,
) -> Conv2d {
    let padding = if stride == 1 { (k - 1) / 2 } else { 0 };
    let spec = ConvSpec::new(c_in, c_out, k)
        .stride(stride)
        .padding(padding)
        .groups(groups);
    Conv2d::new(p, spec, trunc_normal(), bias.then_some(Init::Const(0.0)))
}

/// `ConvNeXtBlock`: depthwise conv, channels-last LayerNorm, MLP (Linear, GELU, Linear),
/// LayerScale, drop path, identity shortcut.
#[derive(Debug)]
struct Block {
    conv_dw: Conv2d,
    norm: LayerNorm,
    mlp: Mlp,
    gamma: Option<Tensor>,
    drop_path: f64,
}

impl Block {
    fn new(p: nn::Path, dim: i64, k: i64, cfg: &Config, drop_path: f64) -> Self {
        Self {
            conv_dw: conv(&p / "conv_dw", dim, dim, k, 1, dim, cfg.conv_bias),
            norm: LayerNorm::new(&p / "norm", dim, LN_EPS),
            mlp: Mlp::timm(&p / "mlp", dim, 4 * dim, 0.0),
            gamma: cfg
                .ls_init_value
                .map(|v| p.var("gamma", &[dim], Init::Const(v))),
            drop_path,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // [B, C, H, W] -> [B, H, W, C] for the norm and the MLP, and back.
        let y = self.conv_dw.forward(x)?.f_permute([0, 2, 3, 1])?;
        let y = self.norm.forward(&y)?;
        let y = self.mlp.forward(&y, train)?;
        let mut y = y.f_permute([0, 3, 1, 2])?;
        if let Some(g) = &self.gamma {
            y = y.f_mul(&g.f_reshape([1, -1, 1, 1])?)?;
        }
        Ok(drop_path(y, self.drop_path, train)?.f_add(x)?)
    }
}

/// `ConvNeXtStage`: an optional downsample (LayerNorm2d, 2x2 stride-2 conv) and blocks.
#[derive(Debug)]
struct Stage {
    downsample: Option<(LayerNorm, Conv2d)>,
    blocks: Vec<Block>,
}

impl Stage {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = match &self.downsample {
            Some((norm, conv)) => conv.forward(&norm.forward_nchw(x)?)?,
            None => x.shallow_clone(),
        };
        for b in &self.blocks {
            y = b.forward(&y, train)?;
        }
        Ok(y)
    }
}

/// timm's ConvNeXt as a `features_only` feature extractor: returns the outputs of the
/// stages in `out_indices` (strides 4, 8, 16, 32 with `dims` channels).
#[derive(Debug)]
pub struct ConvNeXt {
    cfg: Config,
    stem_conv: Conv2d,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    out_indices: Vec<i64>,
}

impl ConvNeXt {
    /// Builds the network under `p` with the flattened timm parameter names.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        Self::with_names(p, cfg, true)
    }

    /// Builds the network under `p`, with the flattened names of the feature extractor
    /// (`stem_0`, `stages_i`) when `flat`, else with the classifier's (`stem.0`, `stages.i`).
    pub fn with_names(p: nn::Path, cfg: &Config, flat: bool) -> Result<Self> {
        cfg.validate()?;
        let out_indices = cfg.resolved_out_indices()?;
        let last = *out_indices.last().expect("out_indices are non-empty");
        let d0 = cfg.dims[0];
        let stem_conv = conv(
            features::child(&p, "stem", 0, flat),
            cfg.in_chans,
            d0,
            cfg.patch_size,
            cfg.patch_size,
            1,
            cfg.conv_bias,
        );
        let stem_norm = LayerNorm::new(features::child(&p, "stem", 1, flat), d0, LN_EPS);
        // calculate_drop_path_rates(stagewise=True): linspace(0, rate, total) split by stage.
        let total: i64 = cfg.depths.iter().sum();
        let mut block_idx = 0i64;
        let mut prev = d0;
        let mut stages = Vec::new();
        let mut curr_stride = cfg.patch_size;
        for i in 0..=last as usize {
            let sp = features::child(&p, "stages", i, flat);
            let dim = cfg.dims[i];
            // Stage 0 keeps the stem's resolution unless the stem has stride 2.
            let stride = if curr_stride == 2 || i > 0 { 2 } else { 1 };
            curr_stride *= stride;
            let downsample = (stride > 1 || prev != dim).then(|| {
                let ds = &sp / "downsample";
                let k = if stride > 1 { 2 } else { 1 };
                (
                    LayerNorm::new(&ds / 0, prev, LN_EPS),
                    conv(&ds / 1, prev, dim, k, stride, 1, cfg.conv_bias),
                )
            });
            let blocks = (0..cfg.depths[i])
                .map(|j| {
                    let dpr = drop_path_rate(cfg.drop_path_rate, block_idx, total);
                    block_idx += 1;
                    Block::new(&sp / "blocks" / j, dim, cfg.kernel_sizes[i], cfg, dpr)
                })
                .collect();
            stages.push(Stage { downsample, blocks });
            prev = dim;
        }
        Ok(Self {
            cfg: cfg.clone(),
            stem_conv,
            stem_norm,
            stages,
            out_indices,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs the network on `x` ([B, in_chans, H, W]) and returns the selected stages.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        TAPS.check_image(x, self.cfg.in_chans)?;
        let mut y = self.stem_norm.forward_nchw(&self.stem_conv.forward(x)?)?;
        let mut out = Vec::with_capacity(self.out_indices.len());
        for (i, stage) in self.stages.iter().enumerate() {
            y = stage.forward(&y, train)?;
            if self.out_indices.contains(&(i as i64)) {
                out.push(y.shallow_clone());
            }
        }
        Ok(out)
    }
}

impl LoadPretrained for ConvNeXt {
    /// Loads a timm ConvNeXt checkpoint (the state_dict of the full classifier model) into
    /// `vs`: `module.` / `_orig_mod.` prefixes are removed, original Facebook checkpoints
    /// (`downsample_layers.*`, `dwconv`, `pwconv*`) are renamed as timm's
    /// `checkpoint_filter_fn` does, `stem.i` / `stages.i` become the flattened `stem_i` /
    /// `stages_i`, the head and the stages this extractor leaves out are dropped, and a
    /// 3-channel stem is adapted to `in_chans`. Anything else missing, unexpected or of
    /// the wrong shape is an error.
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()> {
        let weights: Vec<(String, Tensor)> = weights
            .into_iter()
            .map(|(k, v)| (pretrained::clean_checkpoint_key(k), v))
            .collect();
        let fb = !weights
            .iter()
            .any(|(k, _)| k.starts_with("head.norm.") || k.starts_with("norm_pre."))
            && weights
                .iter()
                .any(|(k, _)| k.starts_with("downsample_layers."));
        let n_stages = self.stages.len();
        let mut given: BTreeMap<String, Tensor> = BTreeMap::new();
        for (k, v) in weights {
            let k = if fb { fb_to_timm(&k) } else { k };
            if k.starts_with("head.") || k.starts_with("norm_pre.") || k.starts_with("norm.") {
                continue;
            }
            let k = if let Some(rest) = k.strip_prefix("stem.") {
                format!("stem_{rest}")
            } else if let Some(rest) = k.strip_prefix("stages.") {
                let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
                match i.parse::<usize>() {
                    Ok(i) if i >= n_stages => continue,
                    _ => format!("stages_{i}.{tail}"),
                }
            } else {
                k
            };
            given.insert(k, v);
        }
        // FB checkpoints store the MLP as 1x1 convs ([O, I, 1, 1]).
        for (k, v) in given.iter_mut() {
            if k.contains(".mlp.fc") && k.ends_with("weight") && v.dim() == 4 {
                *v = v.f_flatten(1, 3)?;
            }
        }
        pretrained::adapt_first_conv(&mut given, "stem_0.weight", self.cfg.in_chans)?;
        pretrained::load_strict(vs, given, "ConvNeXt")
    }
}

/// The renames of timm's `checkpoint_filter_fn` for an original (Facebook) ConvNeXt
/// checkpoint: `downsample_layers.0` is the stem, `downsample_layers.i` the downsample of
/// stage i, `stages.i.j` is block j, `dwconv` / `pwconv` are `conv_dw` / `mlp.fc`.
fn fb_to_timm(k: &str) -> String {
    let mut k = k.replace("downsample_layers.0.", "stem.");
    let parts: Vec<&str> = k.split('.').collect();
    if parts.len() > 2 && parts[1].parse::<usize>().is_ok() && parts[2].parse::<usize>().is_ok() {
        let tail = parts[3..].join(".");
        if parts[0] == "stages" {
            k = format!("stages.{}.blocks.{}.{tail}", parts[1], parts[2]);
        } else if parts[0] == "downsample_layers" {
            k = format!("stages.{}.downsample.{}.{tail}", parts[1], parts[2]);
        }
    }
    let k = k.replace("dwconv", "conv_dw").replace("pwconv", "mlp.fc");
    if let Some(rest) = k.strip_prefix("head.") {
        return format!("head.fc.{rest}");
    }
    if let Some(rest) = k.strip_prefix("norm.") {
        return format!("head.norm.{rest}");
    }
    k
}

impl Model for ConvNeXt {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.features(TAPS.single(xs, self.cfg.in_chans)?, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        features::pick(&self.cfg.dims, &self.out_indices)
    }
}

/// An int-or-list argument with one value per stage (an int applies to every stage).
fn per_stage(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<Vec<i64>> {
    match ctx.args.raw(name) {
        Some(Value::Array(_)) => ctx.args.get(name),
        _ => Ok(vec![ctx.args.get::<i64>(name)?; 4]),
    }
}

/// Builds from the validated arguments, whose defaults are the preset's (so every
/// field comes from them).
fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    features::require_features_only(ctx, "the four stages' feature maps")?;
    let cfg = config(ctx)?;
    pretrained::build_model(ctx, |p| ConvNeXt::new(p, &cfg))
}

/// The configuration the validated arguments give (every stage when `out_indices` is not
/// an argument).
pub(crate) fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let a = &ctx.args;
    Ok(Config {
        in_chans: a.get("in_chans")?,
        depths: a.get("depths")?,
        dims: a.get("dims")?,
        kernel_sizes: per_stage(ctx, "kernel_sizes")?,
        // timm's create_model drops None arguments, so null means the default here too.
        ls_init_value: Some(a.get_or("ls_init_value", 1e-6)?),
        patch_size: a.get("patch_size")?,
        conv_bias: a.get("conv_bias")?,
        drop_rate: a.get("drop_rate")?,
        drop_path_rate: a.get("drop_path_rate")?,
        out_indices: TAPS.out_indices_arg(ctx, NUM_FEATURES)?,
    })
}

/// The registry entry for the timm ConvNeXt preset `name`, with timm's keyword parameters.
pub(crate) fn entry(name: &'static str) -> Entry {
    let base =
        Config::preset(name).expect("a ConvNeXt entry is registered only for a known preset");
    let doc = format!(
        "timm {name} (depths {:?}, dims {:?}) as a feature extractor: the four stages' maps at strides \
         4, 8, 16, 32.",
        base.depths, base.dims
    );
    features::common_params(Entry::new(name, &doc, build), "the feature maps")
        .opt("in_chans", ParamType::INT, json!(3), "input channels")
        .opt("out_indices", ParamType::INT_OR_INT_LIST, json!([0, 1, 2, 3]), "stages whose outputs are returned (negative from the end; an int n = the last n)")
        .opt("depths", ParamType::INT_LIST, json!(base.depths), "blocks per stage")
        .opt("dims", ParamType::INT_LIST, json!(base.dims), "channels per stage")
        .opt("kernel_sizes", ParamType::INT_OR_INT_LIST, json!(7), "depthwise kernel size (int, or one per stage)")
        .opt("ls_init_value", ParamType::FLOAT, json!(1e-6), "LayerScale initial value (null means the default: timm.create_model drops None arguments)")
        .opt("patch_size", ParamType::INT, json!(4), "kernel and stride of the patch stem")
        .opt("conv_bias", ParamType::BOOL, json!(true), "bias on the convolutions")
        .opt("drop_rate", ParamType::FLOAT, json!(0.0), "classifier dropout; no effect on a features-only model, as in timm")
        .opt("drop_path_rate", ParamType::FLOAT, json!(0.0), "stochastic depth rate, linear over the blocks (train mode only)")
}

/// The registry entries of the timm ConvNeXt presets.
pub(crate) fn entries() -> Vec<Entry> {
    [
        "convnext_tiny",
        "convnext_small",
        "convnext_base",
        "convnext_large",
        "convnext_xlarge",
    ]
    .into_iter()
    .map(entry)
    .collect()
}
