//! Mirrors `timm/models/swin_transformer.py` (timm 1.0.31): `SwinTransformer` with its
//! `PatchEmbed`, `SwinTransformerStage`, `SwinTransformerBlock`, `WindowAttention` and
//! `PatchMerging`, seen through timm's `FeatureListNet` (`flatten_sequential=True`), which is
//! what `timm.create_model("swin_...", features_only=True)` returns and what TerraTorch's
//! `TimmBackboneWrapper` (`terratorch/registry/timm_registry.py`) wraps.
//!
//! As in `FeatureListNet`, the stages are flattened to `layers_0`..`layers_3` (the keys are
//! `layers_0.blocks.0.attn.qkv.weight`), the stages after the last returned feature are
//! left out, and the final `norm` and the classifier are never built. The features come
//! out channels-last (`[B, H, W, C]`), exactly as timm returns them: TerraTorch's wrapper
//! does not permute them (its `prepare_features_for_image_model` is the identity for timm
//! Swin models).
//!
//! `relative_position_index` and `attn_mask` are non-persistent buffers upstream (not in
//! the state_dict), so they are computed on the fly here. The patch embedding, window
//! attention and Swin block are `swin_layers.rs`'s, shared with the TerraTorch/mmseg Swin
//! of `prithvi_swin.rs`; this file keeps timm's configuration, patch merging, stage layout
//! and checkpoint handling.
use super::checks;
use super::features::{self, Order, Taps};
use super::layers::{drop_path_rate, LayerNorm, Linear, TORCH_LN_EPS};
use super::swin_layers::{self, stage_widths, BlockSpec, Flavour, PatchEmbed, SwinBlock};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tch::nn;
use tch::Tensor;
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

pub use super::swin_layers::WindowShift;

/// How Swin stages are named in `out_indices` messages (shared with the Prithvi Swin).
pub(crate) const TAPS: Taps<'static> = Taps {
    model: "a Swin Transformer",
    unit: "stages",
    legend: "",
    order: Order::Increasing,
};

/// The arguments of timm's `SwinTransformer.__init__` that shape the feature extractor,
/// plus the `features_only` selection (`out_indices`). Defaults are upstream's (the
/// constructor's, which are Swin-T's), with `window_size` already resolved per stage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Input image size `[H, W]`; fixes each stage's resolution and so its window size.
    pub img_size: [i64; 2],
    /// Patch size of the patch embedding convolution.
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// Width of the first stage; stage `i` has `embed_dim * 2^i` channels.
    pub embed_dim: i64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Attention heads per stage.
    pub num_heads: Vec<i64>,
    /// Channels per attention head (`dim / num_heads` when `None`).
    pub head_dim: Option<i64>,
    /// Window `[h, w]` of each stage (before clamping to the stage's resolution).
    pub window_size: Vec<[i64; 2]>,
    /// Always partition into full windows and shift, even when a window covers the map.
    pub always_partition: bool,
    /// Require inputs of exactly `img_size` (else any multiple of the patch size).
    pub strict_img_size: bool,
    /// Hidden width of the MLP relative to the block width.
    pub mlp_ratio: f64,
    /// Bias in the qkv projection.
    pub qkv_bias: bool,
    /// Dropout after the attention projection and in the MLP (train mode only).
    pub proj_drop_rate: f64,
    /// Dropout of the attention weights (train mode only).
    pub attn_drop_rate: f64,
    /// Stochastic depth, rising linearly over all blocks (train mode only).
    pub drop_path_rate: f64,
    /// Stages whose outputs are returned (negative from the end).
    pub out_indices: Vec<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Self::preset(96, &[2, 2, 6, 2], &[3, 6, 12, 24])
    }
}

impl Config {
    fn preset(embed_dim: i64, depths: &[i64], num_heads: &[i64]) -> Self {
        Self {
            img_size: [224, 224],
            patch_size: 4,
            in_chans: 3,
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            head_dim: None,
            window_size: vec![[7, 7]; depths.len()],
            always_partition: false,
            strict_img_size: true,
            mlp_ratio: 4.0,
            qkv_bias: true,
            proj_drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.1,
            out_indices: (0..depths.len() as i64).collect(),
        }
    }
    /// timm `swin_tiny_patch4_window7_224`.
    pub fn swin_tiny_patch4_window7_224() -> Self {
        Self::preset(96, &[2, 2, 6, 2], &[3, 6, 12, 24])
    }
    /// timm `swin_small_patch4_window7_224`.
    pub fn swin_small_patch4_window7_224() -> Self {
        Self::preset(96, &[2, 2, 18, 2], &[3, 6, 12, 24])
    }
    /// timm `swin_base_patch4_window7_224`.
    pub fn swin_base_patch4_window7_224() -> Self {
        Self::preset(128, &[2, 2, 18, 2], &[4, 8, 16, 32])
    }
    /// The preset called `name` (timm's model name), if there is one.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "swin_tiny_patch4_window7_224" => Self::swin_tiny_patch4_window7_224(),
            "swin_small_patch4_window7_224" => Self::swin_small_patch4_window7_224(),
            "swin_base_patch4_window7_224" => Self::swin_base_patch4_window7_224(),
            _ => return None,
        })
    }

    /// Channels of every stage's output (timm's `feature_info` `num_chs`).
    pub fn feature_channels(&self) -> Vec<i64> {
        stage_widths(self.embed_dim, self.depths.len())
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        swin_layers::check_stages(&self.depths, &self.num_heads)?;
        if self.window_size.len() != self.depths.len() {
            return bad(format!(
                "`window_size` {:?} needs one entry per stage ({})",
                self.window_size,
                self.depths.len()
            ));
        }
        checks::at_least_one(&[
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("patch_size", self.patch_size),
        ])?;
        if self.img_size.iter().any(|&s| s < self.patch_size) {
            return bad(format!(
                "`img_size` {:?} must be at least `patch_size` ({}) on each side",
                self.img_size, self.patch_size
            ));
        }
        if self.window_size.iter().flatten().any(|&w| w < 1) {
            return bad(format!(
                "window sizes must be positive, got `window_size` {:?}",
                self.window_size
            ));
        }
        if self.head_dim.is_none() {
            swin_layers::check_heads_divide(
                self.embed_dim,
                &self.num_heads,
                "change `embed_dim`/`num_heads` or give `head_dim`",
            )?;
        } else if self.head_dim.is_some_and(|d| d < 1) {
            return bad(format!(
                "`head_dim` must be at least 1, got {:?}",
                self.head_dim
            ));
        }
        checks::mlp_ratio(self.mlp_ratio)?;
        checks::rates(&[
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ])?;
        Ok(())
    }
}

/// `window_size` as timm takes it: an int, `[h, w]`, or one int / `[h, w]` per stage.
pub fn resolve_window_size(v: &Value, num_stages: usize) -> Result<Vec<[i64; 2]>> {
    let bad = || {
        PluginError::invalid_argument(format!(
            "`window_size` must be an int, [h, w], or one int or [h, w] per stage ({num_stages} stages), got {v}"
        ))
    };
    let pair = |x: &Value| -> Option<[i64; 2]> {
        match x {
            Value::Array(a) if a.len() == 2 => Some([a[0].as_i64()?, a[1].as_i64()?]),
            x => x.as_i64().map(|w| [w, w]),
        }
    };
    match v {
        Value::Array(a) if a.len() == 2 && a.iter().all(|x| !x.is_array()) => {
            Ok(vec![pair(v).ok_or_else(bad)?; num_stages])
        }
        Value::Array(a) if a.len() == num_stages => {
            a.iter().map(|x| pair(x).ok_or_else(bad)).collect()
        }
        Value::Array(_) => Err(bad()),
        x => Ok(vec![pair(x).ok_or_else(bad)?; num_stages]),
    }
}

/// timm's `PatchMerging`: 2x2 neighbourhoods concatenated (zero-padding odd sizes), then
/// norm and a bias-free linear reduction.
#[derive(Debug)]
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.size4()?;
        let x = x.f_constant_pad_nd([0, 0, 0, w % 2, 0, h % 2])?;
        let (h, w) = ((h + 1) / 2, (w + 1) / 2);
        // [B, H/2, 2, W/2, 2, C] -> [B, H/2, W/2, 2(w), 2(h), C] -> [B, H/2, W/2, 4C]
        let x = x
            .f_reshape([b, h, 2, w, 2, c])?
            .f_permute([0, 1, 3, 4, 2, 5])?
            .f_flatten(3, -1)?;
        self.reduction.forward(&self.norm.forward(&x)?)
    }
}

#[derive(Debug)]
struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<SwinBlock>,
}

/// timm's Swin Transformer as a `features_only` feature extractor: returns the outputs of
/// the stages in `out_indices`, channels-last `[B, H/4/2^i, W/4/2^i, embed_dim*2^i]`.
#[derive(Debug)]
pub struct SwinTransformer {
    cfg: Config,
    patch_embed: PatchEmbed,
    stages: Vec<Stage>,
    out_indices: Vec<i64>,
}

impl SwinTransformer {
    /// Builds the network under `p` with timm's (flattened) parameter names.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        Self::with_names(p, cfg, true)
    }

    /// Builds the network under `p`, with the feature extractor's flattened stage names
    /// (`layers_i`) when `flat`, else with the classifier's (`layers.i`).
    pub fn with_names(p: nn::Path, cfg: &Config, flat: bool) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.depths.len() as i64;
        let out_indices = TAPS.resolve(&cfg.out_indices, n)?;
        let last = *out_indices
            .last()
            .expect("resolved out_indices are non-empty");
        let ps = cfg.patch_size;
        let patch_embed = PatchEmbed::new(
            &p / "patch_embed",
            "proj",
            cfg.in_chans,
            cfg.embed_dim,
            ps,
            ps,
        );

        let total: i64 = cfg.depths.iter().sum();
        let dims = cfg.feature_channels();
        let mut res = [cfg.img_size[0] / ps, cfg.img_size[1] / ps];
        let mut block_idx = 0i64;
        let mut stages = Vec::new();
        for i in 0..n as usize {
            if i as i64 > last {
                break;
            }
            let sp = features::child(&p, "layers", i, flat);
            let dim = dims[i];
            let downsample = (i > 0).then(|| {
                res = [(res[0] + 1) / 2, (res[1] + 1) / 2];
                let dp = &sp / "downsample";
                PatchMerging {
                    norm: LayerNorm::new(&dp / "norm", 4 * dims[i - 1], TORCH_LN_EPS),
                    reduction: Flavour::Timm.reduction(&dp / "reduction", 4 * dims[i - 1], dim),
                }
            });
            let heads = cfg.num_heads[i];
            let head_dim = cfg.head_dim.unwrap_or(dim / heads);
            let target = cfg.window_size[i];
            let mut blocks = Vec::new();
            for j in 0..cfg.depths[i] {
                let bp = &sp / "blocks" / j;
                let target_shift = if j % 2 == 0 {
                    [0, 0]
                } else {
                    [target[0] / 2, target[1] / 2]
                };
                let (mut win, mut shift) =
                    ((target[0], target[1]), (target_shift[0], target_shift[1]));
                if !cfg.always_partition {
                    // A window never exceeds the map; a map that fits one window is not shifted.
                    if res[0] <= target[0] {
                        win.0 = res[0];
                        shift.0 = 0;
                    }
                    if res[1] <= target[1] {
                        win.1 = res[1];
                        shift.1 = 0;
                    }
                }
                // torch.linspace in float32, as timm computes the rates.
                let dpr = drop_path_rate(cfg.drop_path_rate, block_idx, total) as f32 as f64;
                let spec = BlockSpec {
                    dim,
                    heads,
                    head_dim,
                    scale: (head_dim as f64).powf(-0.5),
                    window: win,
                    shift,
                    qkv_bias: cfg.qkv_bias,
                    mlp_hidden: (dim as f64 * cfg.mlp_ratio) as i64,
                    attn_drop: cfg.attn_drop_rate,
                    proj_drop: cfg.proj_drop_rate,
                    drop_path: dpr,
                };
                blocks.push(SwinBlock::new(bp, Flavour::Timm, &spec));
                block_idx += 1;
            }
            stages.push(Stage { downsample, blocks });
        }
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            stages,
            out_indices,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The (window, shift) of every built block, stage by stage, after clamping.
    pub fn windows(&self) -> Vec<Vec<WindowShift>> {
        self.stages
            .iter()
            .map(|s| s.blocks.iter().map(SwinBlock::window_shift).collect())
            .collect()
    }

    /// Runs the network on `x` (`[B, in_chans, H, W]`) and returns the selected features.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let size = TAPS.check_image(x, self.cfg.in_chans)?;
        let (h, w) = (size[2], size[3]);
        let ps = self.cfg.patch_size;
        if self.cfg.strict_img_size && [h, w] != self.cfg.img_size {
            return Err(PluginError::forward_failed(format!(
                "the input is {h}x{w} but the model was built for img_size={:?} (timm's strict_img_size): build it \
                 with img_size=[{h}, {w}], or with strict_img_size=false for any multiple of the patch size",
                self.cfg.img_size
            )));
        }
        if h % ps != 0 || w % ps != 0 {
            return Err(PluginError::forward_failed(format!(
                "the input is {h}x{w}, which is not divisible by the patch size {ps}"
            )));
        }
        // [B, C, H, W] -> [B, E, H/p, W/p] -> [B, H/p, W/p, E]
        let mut y = self.patch_embed.forward(x)?;
        let mut out = Vec::with_capacity(self.out_indices.len());
        for (i, stage) in self.stages.iter().enumerate() {
            if let Some(d) = &stage.downsample {
                y = d.forward(&y)?;
            }
            for b in &stage.blocks {
                y = b.forward(&y, train)?;
            }
            if self.out_indices.contains(&(i as i64)) {
                out.push(y.shallow_clone());
            }
        }
        Ok(out)
    }
}

impl LoadPretrained for SwinTransformer {
    /// Loads a timm Swin checkpoint (the full classifier model's state_dict) into `vs`, as
    /// timm's `checkpoint_filter_fn` and `load_pretrained` do: `model` / `state_dict`
    /// nesting is already unwrapped by the reader, `module.` prefixes are removed,
    /// `relative_position_index` / `attn_mask` buffers are skipped, original Microsoft
    /// checkpoints (downsample at the end of a stage) are renumbered, and a 3-channel patch
    /// embedding is adapted to `in_chans`. The classifier, the final norm and the stages
    /// this extractor leaves out are dropped; anything else missing or unexpected is an
    /// error (timm loads strictly). Resizing a bias table or a patch embedding to another
    /// window or patch size is not supported (a shape error names the tensor).
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()> {
        let weights: Vec<(String, Tensor)> = weights
            .into_iter()
            .map(|(k, v)| (pretrained::clean_checkpoint_key(k), v))
            .collect();
        let old_layout = weights
            .iter()
            .any(|(k, _)| k == "layers.0.downsample.reduction.weight");
        let built = self.stages.len();
        let mut given = BTreeMap::new();
        for (mut k, v) in weights {
            if k.contains("relative_position_index") || k.contains("attn_mask") {
                continue;
            }
            if k.starts_with("head.") || k.starts_with("norm.") {
                continue;
            }
            let Some(rest) = k.strip_prefix("layers.").map(str::to_owned) else {
                given.insert(k, v);
                continue;
            };
            let (stage, tail) = rest.split_once('.').unwrap_or((&rest, ""));
            let Ok(mut stage) = stage.parse::<usize>() else {
                given.insert(k, v);
                continue;
            };
            if old_layout && tail.starts_with("downsample") {
                stage += 1;
            }
            if stage >= built {
                continue;
            }
            k = format!("layers_{stage}.{tail}");
            given.insert(k, v);
        }
        pretrained::adapt_first_conv(&mut given, "patch_embed.proj.weight", self.cfg.in_chans)?;
        pretrained::load_strict(vs, given, "Swin Transformer")
    }
}

impl Model for SwinTransformer {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.features(TAPS.single(xs, self.cfg.in_chans)?, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        features::pick(&self.cfg.feature_channels(), &self.out_indices)
    }

    /// timm's `PatchEmbed` has `patch_size` (the first module with one, which TerraTorch's
    /// factory reads) and `img_size`.
    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "patch_size".into(),
            json!([self.cfg.patch_size, self.cfg.patch_size]),
        );
        m.insert("img_size".into(), json!(self.cfg.img_size));
        m
    }
}

/// Builds a timm Swin from the validated arguments on top of the preset `base`.
fn build(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<ModuleBox> {
    features::require_features_only(ctx, "the stage outputs")?;
    let cfg = config(ctx, base)?;
    pretrained::build_model(ctx, |p| SwinTransformer::new(p, &cfg))
}

/// The configuration the validated arguments give on top of the preset `base` (every
/// stage when `out_indices` is not an argument), with `drop_rate` checked.
pub(crate) fn config(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<Config> {
    let a = &ctx.args;
    let depths: Vec<i64> = a.get_or("depths", base.depths.clone())?;
    let num_heads: Vec<i64> = a.get_or("num_heads", base.num_heads.clone())?;
    let window = a.raw("window_size").cloned().unwrap_or(json!(7));
    let dynamic: bool = a.get("dynamic_img_size")?;
    let strict: bool = a.get("strict_img_size")?;
    let n = depths.len();
    let cfg = Config {
        img_size: {
            let (h, w) = features::img_size_arg(ctx)?;
            [h, w]
        },
        patch_size: a.get("patch_size")?,
        in_chans: a.get("in_chans")?,
        embed_dim: a.get("embed_dim")?,
        head_dim: a.opt("head_dim")?,
        window_size: resolve_window_size(&window, n)?,
        always_partition: a.get("always_partition")?,
        strict_img_size: strict && !dynamic,
        mlp_ratio: a.get("mlp_ratio")?,
        qkv_bias: a.get("qkv_bias")?,
        proj_drop_rate: a.get("proj_drop_rate")?,
        attn_drop_rate: a.get("attn_drop_rate")?,
        drop_path_rate: a.get("drop_path_rate")?,
        out_indices: TAPS.out_indices_arg(ctx, n as i64)?,
        depths,
        num_heads,
    };
    let drop_rate: f64 = a.get("drop_rate")?;
    a.ensure(
        (0.0..1.0).contains(&drop_rate),
        "drop_rate",
        format!("must be in [0, 1), got {drop_rate}"),
    )?;
    Ok(cfg)
}

fn preset_entry(name: &'static str, doc: &str) -> Entry {
    let base = Config::named(name).expect("a Swin entry is registered only for a known preset");
    let d = base.clone();
    let e = Entry::new(name, doc, move |ctx| build(ctx, base.clone()));
    features::common_params(e, "the stage outputs")
        .opt(
            "img_size",
            ParamType::INT_OR_INT_LIST,
            json!(224),
            "input size, an int or [h, w]; fixes each stage's resolution and window clamping",
        )
        .opt(
            "patch_size",
            ParamType::INT,
            json!(d.patch_size),
            "patch size of the patch embedding",
        )
        .opt(
            "in_chans",
            ParamType::INT,
            json!(d.in_chans),
            "input channels",
        )
        .opt(
            "embed_dim",
            ParamType::INT,
            json!(d.embed_dim),
            "width of the first stage (doubled at each later stage)",
        )
        .opt(
            "depths",
            ParamType::INT_LIST,
            json!(d.depths),
            "blocks per stage",
        )
        .opt(
            "num_heads",
            ParamType::INT_LIST,
            json!(d.num_heads),
            "attention heads per stage",
        )
        .opt(
            "head_dim",
            ParamType::INT,
            Value::Null,
            "channels per head (default: stage width / heads)",
        )
        .opt(
            "window_size",
            ParamType::ANY,
            json!(7),
            "attention window: an int, [h, w], or one per stage",
        )
        .opt(
            "always_partition",
            ParamType::BOOL,
            json!(false),
            "always partition and shift, even when a window covers the whole map",
        )
        .opt(
            "strict_img_size",
            ParamType::BOOL,
            json!(true),
            "require inputs of exactly img_size",
        )
        .opt(
            "dynamic_img_size",
            ParamType::BOOL,
            json!(false),
            "accept any multiple of the patch size (same as strict_img_size=false)",
        )
        .opt(
            "mlp_ratio",
            ParamType::FLOAT,
            json!(d.mlp_ratio),
            "MLP hidden width relative to the block width",
        )
        .opt(
            "qkv_bias",
            ParamType::BOOL,
            json!(d.qkv_bias),
            "bias in the qkv projection",
        )
        .opt(
            "drop_rate",
            ParamType::FLOAT,
            json!(0.0),
            "classifier dropout; no effect on a features-only model, as in timm",
        )
        .opt(
            "proj_drop_rate",
            ParamType::FLOAT,
            json!(d.proj_drop_rate),
            "dropout after the attention projection and in the MLP",
        )
        .opt(
            "attn_drop_rate",
            ParamType::FLOAT,
            json!(d.attn_drop_rate),
            "dropout of the attention weights",
        )
        .opt(
            "drop_path_rate",
            ParamType::FLOAT,
            json!(d.drop_path_rate),
            "stochastic depth rate, linear over the blocks (train mode only)",
        )
        .opt(
            "out_indices",
            ParamType::INT_OR_INT_LIST,
            json!(d.out_indices),
            "stages to return (negative from the end; an int n = the last n)",
        )
}

/// The registry entry for the timm Swin preset `name` (`swin_tiny_patch4_window7_224`,
/// `swin_small_patch4_window7_224` or `swin_base_patch4_window7_224`).
pub(crate) fn entry(name: &'static str) -> Entry {
    let doc = match name {
        "swin_tiny_patch4_window7_224" => {
            "timm Swin-T (embed 96, depths 2-2-6-2, window 7) as a feature extractor: channels-last [B, H, W, C] \
             stage outputs at strides 4, 8, 16, 32 with 96, 192, 384, 768 channels; inputs must be img_size."
        }
        "swin_small_patch4_window7_224" => {
            "timm Swin-S (embed 96, depths 2-2-18-2, window 7) as a feature extractor: channels-last [B, H, W, C] \
             stage outputs at strides 4, 8, 16, 32 with 96, 192, 384, 768 channels; inputs must be img_size."
        }
        _ => {
            "timm Swin-B (embed 128, depths 2-2-18-2, window 7) as a feature extractor: channels-last [B, H, W, C] \
             stage outputs at strides 4, 8, 16, 32 with 128, 256, 512, 1024 channels; inputs must be img_size."
        }
    };
    preset_entry(name, doc)
}

/// The registry entries of the timm Swin presets.
pub(crate) fn entries() -> Vec<Entry> {
    [
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224",
    ]
    .into_iter()
    .map(entry)
    .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    //! Expected values were printed from the reference Python (timm 1.0.31 through
    //! TerraTorch 1.2.11's `BACKBONE_REGISTRY.build("timm_<name>", features_only=True)`).
    use super::*;
    use crate::test_support::{build, get, n_params, parity, write_checkpoint};
    use tch::{Device, Kind};
    use terrahost_plugin_api::ErrorKind;

    #[test]
    fn parity_timm_swin_tiny() {
        parity("timm_swin_tiny_patch4_window7_224");
    }

    #[test]
    fn parity_timm_swin_small_nonsquare_windows_head_dim() {
        parity("timm_swin_small_patch4_window7_224");
    }

    #[test]
    fn parity_timm_swin_base_dynamic_img_size() {
        parity("timm_swin_base_patch4_window7_224");
    }

    #[test]
    fn parity_timm_swin_always_partition() {
        parity("timm_swin_tiny_always_partition");
    }

    #[test]
    fn presets_have_timm_parameter_counts_and_keys() {
        // n_params of the full presets (features_only, no final norm / head), from the reference.
        for (name, want, chans) in [
            (
                "swin_tiny_patch4_window7_224",
                27_517_818,
                vec![96, 192, 384, 768],
            ),
            (
                "swin_small_patch4_window7_224",
                48_835_722,
                vec![96, 192, 384, 768],
            ),
            (
                "swin_base_patch4_window7_224",
                86_741_176,
                vec![128, 256, 512, 1024],
            ),
        ] {
            let m = build(name, json!({})).unwrap();
            assert_eq!(n_params(&m), want, "{name}");
            assert_eq!(m.out_channels(), chans, "{name}");
        }
        let m = build("swin_tiny_patch4_window7_224", json!({})).unwrap();
        let sd = m.state_dict();
        // 169 entries, none of them a relative_position_index or attn_mask buffer.
        assert_eq!(sd.len(), 169);
        assert!(sd
            .iter()
            .all(|(k, _)| !k.contains("relative_position_index") && !k.contains("attn_mask")));
        let shape = |k: &str| sd.iter().find(|(n, _)| n == k).unwrap().1.size();
        assert_eq!(
            shape("layers_0.blocks.0.attn.relative_position_bias_table"),
            vec![169, 3]
        );
        assert_eq!(
            shape("layers_1.downsample.reduction.weight"),
            vec![192, 384]
        );
        assert_eq!(shape("patch_embed.proj.weight"), vec![96, 3, 4, 4]);
        assert!(!sd
            .iter()
            .any(|(k, _)| k.starts_with("norm.") || k.starts_with("head")));
        assert_eq!(m.meta().get("patch_size"), Some(&json!([4, 4])));
        // timm's wrapper has no permuting step: features stay channels-last.
        assert!(m.prepare_features(&[]).unwrap().is_none());
    }

    #[test]
    fn features_are_channels_last_and_truncated() {
        let m = build(
            "swin_tiny_patch4_window7_224",
            json!({"img_size": 64, "out_indices": [0, 2]}),
        )
        .unwrap();
        assert_eq!(m.out_channels(), vec![96, 384]);
        assert!(!m
            .state_dict()
            .iter()
            .any(|(k, _)| k.starts_with("layers_3")));
        let ys = m
            .forward(&[Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu))])
            .unwrap();
        assert_eq!(ys[0].size(), vec![1, 16, 16, 96]);
        assert_eq!(ys[1].size(), vec![1, 4, 4, 384]);
        assert_eq!(
            build("swin_base_patch4_window7_224", json!({"out_indices": 2}))
                .unwrap()
                .out_channels(),
            vec![512, 1024]
        );
    }

    #[test]
    fn window_clamping_follows_the_stage_resolution() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            img_size: [64, 64],
            ..Config::swin_tiny_patch4_window7_224()
        };
        let m = SwinTransformer::new(vs.root(), &cfg).unwrap();
        let w = m.windows();
        assert_eq!(w[0][1], ((7, 7), (3, 3)));
        assert_eq!(w[2][1], ((4, 4), (0, 0)));
        assert_eq!(w[3][0], ((2, 2), (0, 0)));
    }

    #[test]
    fn argument_errors_name_the_argument() {
        let m = build("swin_tiny_patch4_window7_224", json!({"img_size": 64})).unwrap();
        let e = m
            .forward(&[Tensor::zeros([1, 3, 60, 64], (Kind::Float, Device::Cpu))])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::FORWARD_FAILED);
        assert!(e.message().contains("img_size"), "{e}");
        for (k, v) in [
            ("out_indices", json!([4])),
            ("out_indices", json!([2, 1])),
            ("window_size", json!([1, 2, 3])),
            ("features_only", json!(false)),
            ("drop_path_rate", json!(1.0)),
            ("num_heads", json!([3, 6, 12])),
            ("in_chans", json!(0)),
        ] {
            let e = build("swin_tiny_patch4_window7_224", json!({ k: v }))
                .err()
                .unwrap_or_else(|| panic!("{k}={v} accepted"));
            let want = if k == "num_heads" { "num_heads" } else { k };
            assert!(e.message().contains(want), "{k}: {e}");
        }
        let e = build("swin_tiny_patch4_window7_224", json!({"pretrained": true}))
            .err()
            .unwrap();
        assert!(e.message().contains("download"), "{e}");
    }

    #[test]
    fn pretrained_timm_checkpoint_loads() {
        // A full-model checkpoint (with final norm, head and the non-persistent buffers) in
        // the original layout (downsample at the end of a stage) loads like timm's filter.
        let cfg = Config {
            img_size: [32, 32],
            embed_dim: 8,
            depths: vec![1, 1, 1, 1],
            num_heads: vec![1, 1, 2, 2],
            ..Config::swin_tiny_patch4_window7_224()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = SwinTransformer::new(vs.root(), &cfg).unwrap();
        let mut ck: Vec<(String, Tensor)> = Vec::new();
        for (k, t) in vs.variables() {
            let v = t.detach().rand_like();
            let (stage, tail) = k
                .strip_prefix("layers_")
                .unwrap_or("x.")
                .split_once('.')
                .unwrap_or(("", ""));
            let k = if tail.starts_with("downsample") {
                format!("layers.{}.{tail}", stage.parse::<usize>().unwrap() - 1)
            } else if !stage.is_empty() && k.starts_with("layers_") {
                format!("layers.{stage}.{tail}")
            } else {
                k
            };
            ck.push((format!("module.{k}"), v));
        }
        ck.push((
            "module.norm.weight".into(),
            Tensor::ones([64], (Kind::Float, Device::Cpu)),
        ));
        ck.push((
            "module.head.weight".into(),
            Tensor::ones([10, 64], (Kind::Float, Device::Cpu)),
        ));
        ck.push((
            "module.layers.0.blocks.0.attn.relative_position_index".into(),
            Tensor::zeros([49, 49], (Kind::Int64, Device::Cpu)),
        ));
        let file = write_checkpoint(&ck, "timm-swin-test", "swin.safetensors");
        let args = json!({"pretrained": true, "pretrained_cfg_overlay": {"file": file.to_str().unwrap()},
            "img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]});
        let m = build("swin_tiny_patch4_window7_224", args).unwrap();
        let src = |k: &str| crate::test_support::tensor(&ck, k);
        assert!(get(&m, "layers_1.downsample.reduction.weight")
            .equal(&src("module.layers.0.downsample.reduction.weight")));
        assert!(get(&m, "layers_3.blocks.0.mlp.fc2.bias")
            .equal(&src("module.layers.3.blocks.0.mlp.fc2.bias")));
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
