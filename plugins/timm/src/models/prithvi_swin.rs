//! Mirrors TerraTorch's `terratorch/models/backbones/prithvi_swin.py` (the `prithvi_swin_B` /
//! `prithvi_swin_L` timm entry points, `checkpoint_filter_fn`, `convert_weights_swin2mmseg`)
//! and the `MMSegSwinTransformer` of `terratorch/models/backbones/swin_encoder_decoder.py`
//! (with its `PatchEmbed`, `PatchMerging`, `AdaptivePadding`, `SwinBlockSequence`,
//! `SwinBlock`, `ShiftWindowMSA`, `WindowMSA` and `FFN`), plus the band selection of
//! `terratorch/models/backbones/select_patch_embed_weights.py`.
//!
//! TerraTorch registers these models into timm, so TerraTorch builds them as
//! `timm_prithvi_swin_B` through `timm.create_model(..., features_only=True)`: a
//! `FeatureListNet` over the flattened stages (`stages_0`..`stages_3`, mmseg-style keys
//! such as `stages_0.blocks.0.attn.w_msa.qkv.weight`), truncated after the last returned
//! stage, without the classifier. Each stage output is the stage's own `norm` applied to
//! the blocks' output, channels-last `[B, H, W, C]`; TerraTorch's
//! `prepare_features_for_image_model` permutes them to `[B, C, H, W]`
//! ([`Model::prepare_features`]). Unlike timm's Swin, any input size works: the input is
//! padded (replicate) to the patch size, every attention map to whole windows (zeros) and
//! every patch merging to even sizes (zeros).
//!
//! `relative_position_index` is a persistent buffer here (it is in the state_dict), so
//! the forward reads the stored buffer, as upstream does.
//!
//! The patch embedding, window attention and Swin block are `swin_layers.rs`'s (the
//! [`Flavour::MMSeg`] variant: mmseg key names and init, padding before the cyclic
//! shift); this file keeps the mmseg patch merging, the stage norms, the band handling and
//! TerraTorch's checkpoint conversion.
use super::checks;
use super::features::{self, Order, Taps};
use super::layers::{drop_path_rate, dropout, LayerNorm, Linear, TORCH_LN_EPS};
use super::swin_layers::{self, stage_widths, BlockSpec, Flavour, PatchEmbed, SwinBlock};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tch::nn;
use tch::{Kind, Tensor};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// How Prithvi Swin stages are named in `out_indices` messages.
const TAPS: Taps<'static> = Taps {
    model: "a Prithvi Swin",
    unit: "stages",
    legend: "",
    order: Order::Increasing,
};

/// The HLS bands the Prithvi Swin checkpoints were trained on, in order (`PRETRAINED_BANDS`).
pub const PRETRAINED_BANDS: [&str; 6] = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"];

/// A band: an `HLSBands` name (or any other name) or a channel index.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Band {
    /// A band named by a string, such as `"RED"`.
    Name(String),
    /// A band given by its index.
    Index(i64),
}

/// `bands` / `pretrained_bands` as TerraTorch takes them, with `generate_bands_intervals`:
/// names, indices, and `[start, end]` inclusive index intervals (tuples upstream).
fn bands_arg(v: &Value, name: &str) -> Result<Vec<Band>> {
    let bad = || {
        PluginError::invalid_argument(format!(
            "`{name}` must be a list of band names (such as \"RED\"), indices, or [start, end] index intervals, got {v}"
        ))
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let mut out = Vec::new();
    for it in items {
        match it {
            Value::String(s) => out.push(Band::Name(s.clone())),
            Value::Number(_) => out.push(Band::Index(it.as_i64().ok_or_else(bad)?)),
            Value::Array(r) if r.len() == 2 => {
                let (a, b) = (
                    r[0].as_i64().ok_or_else(bad)?,
                    r[1].as_i64().ok_or_else(bad)?,
                );
                out.extend((a..=b).map(Band::Index));
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// The arguments of `MMSegSwinTransformer.__init__` that shape the feature extractor (as
/// the `prithvi_swin_*` entry points fill them), plus `out_indices` and the bands.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Input channels (always `len(bands)` upstream).
    pub in_chans: i64,
    /// Width of the first stage; doubled by each patch merging.
    pub embed_dim: i64,
    /// Kernel of the patch embedding (must equal `strides[0]`).
    pub patch_size: i64,
    /// Square attention window of every stage.
    pub window_size: i64,
    /// FFN hidden width relative to the stage width.
    pub mlp_ratio: f64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Attention heads per stage.
    pub num_heads: Vec<i64>,
    /// Stride of the patch embedding, then of each patch merging.
    pub strides: Vec<i64>,
    /// Bias in the qkv projection.
    pub qkv_bias: bool,
    /// Attention scale (`head_dim ** -0.5` when `None` or 0).
    pub qk_scale: Option<f64>,
    /// Dropout after the patch embedding, the attention projection and in the FFN.
    pub drop_rate: f64,
    /// Dropout of the attention weights.
    pub attn_drop_rate: f64,
    /// Stochastic depth, rising linearly over all blocks (train mode only).
    pub drop_path_rate: f64,
    /// Stages whose outputs are returned.
    pub out_indices: Vec<i64>,
    /// The bands the checkpoint's patch embedding was trained on.
    pub pretrained_bands: Vec<Band>,
    /// The bands of the input, in order (`None`: the pretrained bands).
    pub bands: Option<Vec<Band>>,
}

impl Default for Config {
    fn default() -> Self {
        Self::prithvi_swin_b()
    }
}

impl Config {
    fn preset(embed_dim: i64, num_heads: &[i64]) -> Self {
        Self {
            in_chans: 6,
            embed_dim,
            patch_size: 4,
            window_size: 7,
            mlp_ratio: 4.0,
            depths: vec![2, 2, 18, 2],
            num_heads: num_heads.to_vec(),
            strides: vec![4, 2, 2, 2],
            qkv_bias: true,
            qk_scale: None,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.1,
            out_indices: vec![0, 1, 2, 3],
            pretrained_bands: PRETRAINED_BANDS
                .iter()
                .map(|b| Band::Name(b.to_string()))
                .collect(),
            bands: None,
        }
    }
    /// TerraTorch `prithvi_swin_B`.
    pub fn prithvi_swin_b() -> Self {
        Self::preset(128, &[4, 8, 16, 32])
    }
    /// TerraTorch `prithvi_swin_L`.
    pub fn prithvi_swin_l() -> Self {
        Self::preset(192, &[6, 12, 24, 48])
    }
    /// The preset called `name` (TerraTorch's timm name), if there is one.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "prithvi_swin_B" => Some(Self::prithvi_swin_b()),
            "prithvi_swin_L" => Some(Self::prithvi_swin_l()),
            _ => None,
        }
    }

    /// The bands of the input (the pretrained ones when none are given).
    pub fn model_bands(&self) -> &[Band] {
        self.bands.as_deref().unwrap_or(&self.pretrained_bands)
    }

    /// Channels of every stage's output (`feature_info` `num_chs`).
    pub fn feature_channels(&self) -> Vec<i64> {
        stage_widths(self.embed_dim, self.depths.len())
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        swin_layers::check_stages(&self.depths, &self.num_heads)?;
        let n = self.depths.len();
        if self.strides.len() < n {
            return bad(format!(
                "`strides` {:?} needs one entry per stage ({n})",
                self.strides
            ));
        }
        if self.strides.iter().any(|&s| s < 1) {
            return bad(format!("`strides` {:?} must be positive", self.strides));
        }
        if self.strides[0] != self.patch_size {
            return bad(format!(
                "`strides[0]` ({}) must equal `patch_size` ({}): the patch embedding does not overlap",
                self.strides[0], self.patch_size
            ));
        }
        checks::at_least_one(&[
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("patch_size", self.patch_size),
            ("window_size", self.window_size),
        ])?;
        swin_layers::check_heads_divide(
            self.embed_dim,
            &self.num_heads,
            "change `embed_dim` or `num_heads`",
        )?;
        checks::mlp_ratio(self.mlp_ratio)?;
        checks::rates(&[
            ("drop_rate", self.drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ])?;
        Ok(())
    }
}

/// mmseg's `AdaptivePadding` "corner" amounts: what makes `len` fully covered by
/// `kernel`-sized windows at `stride`, all added after the data.
fn corner_pad(len: i64, kernel: i64, stride: i64) -> i64 {
    let out = (len + stride - 1) / stride;
    ((out - 1) * stride + kernel - len).max(0)
}

/// mmseg's `PatchMerging`: zero corner padding, `nn.Unfold(2, stride)` (channel-major:
/// feature `c * 4 + kh * 2 + kw`), norm and a bias-free reduction.
#[derive(Debug)]
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
    stride: i64,
}

impl PatchMerging {
    fn forward(&self, x: &Tensor, hw: (i64, i64)) -> Result<(Tensor, (i64, i64))> {
        let (b, _, c) = x.size3()?;
        let (h, w) = hw;
        let s = self.stride;
        let (ph, pw) = (corner_pad(h, 2, s), corner_pad(w, 2, s));
        // [B, L, C] -> [B, C, H, W], padded
        let x = x
            .f_view([b, h, w, c])?
            .f_permute([0, 3, 1, 2])?
            .f_constant_pad_nd([0, pw, 0, ph])?;
        let (h, w) = (h + ph, w + pw);
        // [B, 4C, L'] -> [B, L', 4C]
        let x = x
            .f_im2col([2, 2], [1, 1], [0, 0], [s, s])?
            .f_transpose(1, 2)?;
        let out = ((h - 2) / s + 1, (w - 2) / s + 1);
        Ok((self.reduction.forward(&self.norm.forward(&x)?)?, out))
    }
}

#[derive(Debug)]
struct Stage {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
    norm: LayerNorm,
}

/// TerraTorch's `MMSegSwinTransformer` (`prithvi_swin_B` / `_L`) as a `features_only`
/// feature extractor: the normed outputs of the stages in `out_indices`, channels-last.
#[derive(Debug)]
pub struct PrithviSwin {
    cfg: Config,
    patch_embed: PatchEmbed,
    stages: Vec<Stage>,
    out_indices: Vec<i64>,
}

impl PrithviSwin {
    /// Builds the network under `p` with TerraTorch's (flattened) parameter names. The
    /// weights start as PyTorch's defaults (upstream never calls `init_weights`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        Self::with_names(p, cfg, true)
    }

    /// Builds the network under `p`, with the feature extractor's flattened stage names
    /// (`stages_i`) when `flat`, else with the classifier's (`stages.i`).
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
            "projection",
            cfg.in_chans,
            cfg.embed_dim,
            ps,
            cfg.strides[0],
        );

        let total: i64 = cfg.depths.iter().sum();
        let ws = cfg.window_size;
        let mut dim = cfg.embed_dim;
        let mut block_idx = 0i64;
        let mut stages = Vec::new();
        for i in 0..n as usize {
            if i as i64 > last {
                break;
            }
            let sp = features::child(&p, "stages", i, flat);
            let heads = cfg.num_heads[i];
            let head_dim = dim / heads;
            let scale = match cfg.qk_scale {
                Some(s) if s != 0.0 => s,
                _ => (head_dim as f64).powf(-0.5),
            };
            let hidden = (cfg.mlp_ratio * dim as f64) as i64;
            let mut blocks = Vec::new();
            for j in 0..cfg.depths[i] {
                let shift = if j % 2 == 0 { 0 } else { ws / 2 };
                // torch.linspace in float32, as upstream computes the rates.
                let dpr = drop_path_rate(cfg.drop_path_rate, block_idx, total) as f32 as f64;
                let spec = BlockSpec {
                    dim,
                    heads,
                    head_dim,
                    scale,
                    window: (ws, ws),
                    shift: (shift, shift),
                    qkv_bias: cfg.qkv_bias,
                    mlp_hidden: hidden,
                    attn_drop: cfg.attn_drop_rate,
                    proj_drop: cfg.drop_rate,
                    drop_path: dpr,
                };
                blocks.push(SwinBlock::new(&sp / "blocks" / j, Flavour::MMSeg, &spec));
                block_idx += 1;
            }
            let downsample = ((i as i64) < n - 1).then(|| {
                let dp = &sp / "downsample";
                PatchMerging {
                    norm: LayerNorm::new(&dp / "norm", 4 * dim, TORCH_LN_EPS),
                    reduction: Flavour::MMSeg.reduction(&dp / "reduction", 4 * dim, 2 * dim),
                    stride: cfg.strides[i + 1],
                }
            });
            let norm = LayerNorm::new(&sp / "norm", dim, TORCH_LN_EPS);
            stages.push(Stage {
                blocks,
                downsample,
                norm,
            });
            dim *= 2;
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

    /// Runs the network on `x` (`[B, in_chans, H, W]`, any size) and returns the selected
    /// stage outputs, channels-last.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let size = x.size();
        if size.len() != 4 {
            return Err(PluginError::forward_failed(format!(
                "a Prithvi Swin takes one [B, C, H, W] image batch, got a tensor of shape {size:?}"
            )));
        }
        if size[1] != self.cfg.in_chans {
            return Err(PluginError::forward_failed(format!(
                "the input has {} channels but the model was built for {} bands (in_chans={}); pass `bands` \
                 naming the input's {} bands",
                size[1], self.cfg.in_chans, self.cfg.in_chans, size[1]
            )));
        }
        let (ps, s0) = (self.cfg.patch_size, self.cfg.strides[0]);
        let (ph, pw) = (corner_pad(size[2], ps, s0), corner_pad(size[3], ps, s0));
        let x = if ph > 0 || pw > 0 {
            x.f_replication_pad2d([0, pw, 0, ph])?
        } else {
            x.shallow_clone()
        };
        let y = self.patch_embed.forward(&x)?;
        let (b, h, w, _) = y.size4()?;
        // [B, h, w, E] -> [B, h*w, E]
        let y = y.f_flatten(1, 2)?;
        let mut y = dropout(y, self.cfg.drop_rate, train)?;
        let mut hw = (h, w);
        let mut out = Vec::with_capacity(self.out_indices.len());
        for (i, stage) in self.stages.iter().enumerate() {
            // [B, h*w, C] -> [B, h, w, C] for the blocks, and back.
            let mut map = y.f_view([b, hw.0, hw.1, -1])?;
            for blk in &stage.blocks {
                map = blk.forward(&map, train)?;
            }
            y = map.f_view([b, hw.0 * hw.1, -1])?;
            if self.out_indices.contains(&(i as i64)) {
                out.push(stage.norm.forward(&y)?.f_view([b, hw.0, hw.1, -1])?);
            }
            if let Some(d) = &stage.downsample {
                let (ny, nhw) = d.forward(&y, hw)?;
                y = ny;
                hw = nhw;
            }
        }
        Ok(out)
    }

    /// The shape every full-model `relative_position_bias_table` has, by stage.
    fn table_shape(&self, stage: usize) -> Option<Vec<i64>> {
        let ws = self.cfg.window_size;
        self.cfg
            .num_heads
            .get(stage)
            .map(|&h| vec![(2 * ws - 1) * (2 * ws - 1), h])
    }
}

impl LoadPretrained for PrithviSwin {
    /// Applies TerraTorch's `checkpoint_filter_fn` to `weights` (keys in the full model's
    /// namespace, `stages.N.`), then loads what fits into `vs` as `load_state_dict(strict=False)`
    /// does after it: see [`filter_checkpoint`]. Keys this extractor does not have (the
    /// classifier, stages it leaves out) are skipped; others missing or unexpected are
    /// reported in the log. A `relative_position_index` of another window size is skipped
    /// (the model's own is right for its window). A checkpoint that shares no key with the
    /// model, or a tensor of the wrong shape, is an error (upstream would silently fall
    /// back to random weights).
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()> {
        let proj = vs
            .variables()
            .get("patch_embed.projection.weight")
            .map(Tensor::copy)
            .ok_or_else(|| {
                PluginError::build_failed("the model has no patch_embed.projection.weight")
            })?;
        let filtered =
            filter_checkpoint(weights, &self.cfg, &proj, |stage| self.table_shape(stage))?;
        let built = self.stages.len();
        let vars = vs.variables();
        let mut given = BTreeMap::new();
        let mut unexpected = Vec::new();
        for (k, v) in filtered {
            let ours = match k
                .strip_prefix("stages.")
                .or_else(|| k.strip_prefix("stages_"))
            {
                Some(rest) => {
                    let (stage, tail) = rest.split_once('.').unwrap_or((rest, ""));
                    match stage.parse::<usize>() {
                        Ok(s) if s >= built => continue,
                        Ok(s) => format!("stages_{s}.{tail}"),
                        Err(_) => k.clone(),
                    }
                }
                None if k.starts_with("head.") => continue,
                None => k.clone(),
            };
            // The index is a function of the window size; after a bias-table resize the
            // checkpoint's index is for the old window, and the model's own is the right one.
            // (Upstream the load fails on it and TerraTorch silently falls back to random weights.)
            if ours.ends_with("relative_position_index")
                && vars.get(&ours).is_some_and(|t| t.size() != v.size())
            {
                continue;
            }
            if vars.contains_key(&ours) {
                given.insert(ours, v);
            } else {
                unexpected.push(k);
            }
        }
        if given.is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "the checkpoint shares no key with this Prithvi Swin (after TerraTorch's conversion); its keys \
                 look like {:?}",
                unexpected.iter().take(5).collect::<Vec<_>>()
            )));
        }
        let missing: Vec<&String> = vars.keys().filter(|k| !given.contains_key(*k)).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            terrahost_plugin_api::warn!(
                "Prithvi Swin checkpoint loaded non-strictly, as TerraTorch does (missing: {missing:?}; unexpected: \
                 {unexpected:?})"
            );
        }
        pretrained::copy_into(vs, &given)
    }
}

/// mmseg's `swin2mmseg` conversion (TerraTorch's `convert_weights_swin2mmseg`) of one
/// original Swin key and tensor; `None` for the classifier.
fn swin2mmseg(k: &str, v: Tensor) -> Result<Option<(String, Tensor)>> {
    if k.starts_with("head") {
        return Ok(None);
    }
    if k.starts_with("layers") {
        let mut new_v = v;
        let new_k = if k.contains("attn.") {
            k.replace("attn.", "attn.w_msa.")
        } else if k.contains("mlp.") {
            if k.contains("mlp.fc1.") {
                k.replace("mlp.fc1.", "ffn.layers.0.0.")
            } else if k.contains("mlp.fc2.") {
                k.replace("mlp.fc2.", "ffn.layers.1.")
            } else {
                k.replace("mlp.", "ffn.")
            }
        } else if k.contains("downsample") {
            // The original merges 2x2 patches as [x0, x1, x2, x3] = (0,0), (1,0), (0,1), (1,1);
            // nn.Unfold's order is (0,0), (0,1), (1,0), (1,1) per channel.
            if k.contains("reduction.") {
                let (o, i) = new_v.size2()?;
                new_v = new_v
                    .f_reshape([o, 4, i / 4])?
                    .f_index_select(1, &Tensor::from_slice(&[0i64, 2, 1, 3]))?
                    .f_transpose(1, 2)?
                    .f_reshape([o, i])?;
            } else if k.contains("norm.") {
                let i = new_v.size()[0];
                new_v = new_v
                    .f_reshape([4, i / 4])?
                    .f_index_select(0, &Tensor::from_slice(&[0i64, 2, 1, 3]))?
                    .f_transpose(0, 1)?
                    .f_reshape([i])?;
            }
            k.to_owned()
        } else {
            k.to_owned()
        };
        return Ok(Some((new_k.replacen("layers", "stages", 1), new_v)));
    }
    if k.starts_with("patch_embed") && k.contains("proj") {
        return Ok(Some((k.replacen("proj", "projection", 1), v)));
    }
    Ok(Some((k.to_owned(), v)))
}

/// TerraTorch's `checkpoint_filter_fn` for the Prithvi Swin models, on a state_dict already
/// unwrapped from `state_dict` / `model` by the reader. `proj` is the model's current patch
/// embedding weight; `table_shape(stage)` the model's bias-table shape in a stage.
///
/// - a checkpoint with `head.fc.weight` (a full model of this implementation) is returned
///   unchanged;
/// - `module.` (DDP) is cut from every key when the first key has it;
/// - a checkpoint of the original Swin (keys under `encoder.`) keeps the encoder and
///   non-decoder keys and is converted to mmseg names; otherwise `backbone.` is cut;
/// - bias tables of another window size are resized (bicubic) to the model's;
/// - the patch embedding is rebuilt for `bands` (`select_patch_embed_weights`): channels of
///   bands that are also in `pretrained_bands` are copied from the checkpoint, the others
///   drawn anew (Xavier uniform); a prefix before `patch_embed.` is cut from every key.
pub fn filter_checkpoint(
    weights: Vec<(String, Tensor)>,
    cfg: &Config,
    proj: &Tensor,
    table_shape: impl Fn(usize) -> Option<Vec<i64>>,
) -> Result<Vec<(String, Tensor)>> {
    if weights.iter().any(|(k, _)| k == "head.fc.weight") {
        return Ok(weights);
    }
    let mut sd = weights;
    if sd.first().is_some_and(|(k, _)| k.starts_with("module.")) {
        sd = sd
            .into_iter()
            .map(|(k, v)| (k.get(7..).unwrap_or("").to_owned(), v))
            .collect();
    }
    if sd.iter().any(|(k, _)| k.starts_with("encoder.")) {
        let mut conv = Vec::new();
        for (k, v) in sd {
            let k = if let Some(rest) = k.strip_prefix("encoder.") {
                rest.to_owned()
            } else if k.starts_with("decoder") {
                continue;
            } else {
                k
            };
            if let Some(kv) = swin2mmseg(&k, v)? {
                conv.push(kv);
            }
        }
        sd = conv;
    } else {
        sd = sd
            .into_iter()
            .map(|(k, v)| {
                (
                    k.strip_prefix("backbone.").map(str::to_owned).unwrap_or(k),
                    v,
                )
            })
            .collect();
    }

    // Bias tables of another window size: bicubic resize of the [S, S] grid per head.
    // Upstream finds the stage of a table by cutting a prefix guessed from the first key;
    // that guess depends on the checkpoint's key order (which differs between readers), so
    // the stage is read from the `stages.N` / `stages_N` part of the key instead.
    for (k, v) in sd.iter_mut() {
        if !k.contains("relative_position_bias_table") {
            continue;
        }
        let stage = k
            .find("stages")
            .and_then(|i| k[i + "stages".len()..].strip_prefix(['.', '_']))
            .and_then(|r| r.split('.').next())
            .and_then(|s| s.parse::<usize>().ok());
        let Some(want) = stage.and_then(&table_shape) else {
            return Err(PluginError::invalid_argument(format!(
                "checkpoint key `{k}` names a bias table the model does not have"
            )));
        };
        let (l1, nh1) = v.size2()?;
        let (l2, nh2) = (want[0], want[1]);
        if nh1 != nh2 {
            return Err(PluginError::invalid_argument(format!(
                "checkpoint tensor `{k}` has {nh1} heads, the model has {nh2} (shape {:?} vs {want:?})",
                v.size()
            )));
        }
        if l1 != l2 {
            let s1 = (l1 as f64).sqrt() as i64;
            let s2 = (l2 as f64).sqrt() as i64;
            let t = v
                .f_to_kind(Kind::Float)?
                .f_permute([1, 0])?
                .f_reshape([1, nh1, s1, s1])?;
            let t = t.f_upsample_bicubic2d([s2, s2], false, None, None)?;
            *v = t.f_view([nh2, l2])?.f_permute([1, 0])?.f_contiguous()?;
        }
    }

    // select_patch_embed_weights
    let proj_pos = sd
        .iter()
        .position(|(k, _)| {
            k.ends_with("patch_embed.proj.weight") || k.ends_with("patch_embed.projection.weight")
        })
        .ok_or_else(|| {
            PluginError::invalid_argument(
                "could not find the patch embedding weight (`patch_embed.proj.weight` or \
                 `patch_embed.projection.weight`) in the checkpoint",
            )
        })?;
    let key = sd[proj_pos].0.clone();
    let embed_prefix = ["patch_embed.proj.weight", "patch_embed.projection.weight"]
        .iter()
        .find_map(|s| key.strip_suffix(s))
        .unwrap_or("")
        .to_owned();
    let ckpt = sd[proj_pos].1.shallow_clone();
    let mut temp = proj.copy();
    let (ms, cs) = (proj.size(), ckpt.size());
    let compatible =
        ms.len() == cs.len() && ms.iter().enumerate().all(|(i, &d)| i == 1 || d == cs[i]);
    if compatible {
        tch::no_grad(|| -> Result<()> {
            // xavier_uniform_ on the [out, in*k*k] view.
            let fan_out = ms[0] as f64;
            let fan_in = (temp.numel() as f64) / fan_out;
            let a = (6.0 / (fan_in + fan_out)).sqrt();
            let _ = temp.f_uniform_(-a, a)?;
            let pretrained = &cfg.pretrained_bands;
            for (idx, band) in cfg.model_bands().iter().enumerate() {
                if let Some(src) = pretrained.iter().position(|p| p == band) {
                    if src as i64 >= cs[1] {
                        return Err(PluginError::invalid_argument(format!(
                            "band {band:?} is pretrained band {src}, but the checkpoint's patch embedding has only \
                             {} channels; fix `pretrained_bands`",
                            cs[1]
                        )));
                    }
                    temp.f_select(1, idx as i64)?
                        .f_copy_(&ckpt.f_select(1, src as i64)?.f_to_kind(temp.kind())?)?;
                }
            }
            Ok(())
        })?;
    } else {
        terrahost_plugin_api::warn!(
            "incompatible patch embedding shapes (model {ms:?}, checkpoint {cs:?}): the model keeps its own initial \
             patch embedding"
        );
    }
    sd[proj_pos].1 = temp;
    if !embed_prefix.is_empty() {
        sd = sd
            .into_iter()
            .map(|(k, v)| (k.replace(&embed_prefix, ""), v))
            .collect();
    }
    Ok(sd)
}

impl Model for PrithviSwin {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.features(TAPS.single(xs, self.cfg.in_chans)?, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        features::pick(&self.cfg.feature_channels(), &self.out_indices)
    }

    // No `meta`: no module of the reference model has a `patch_size` attribute (mmseg's
    // PatchEmbed does not keep one), so TerraTorch's factory finds none and does not pad
    // the input; this model pads internally (replicate) instead.

    /// `prepare_features_for_image_model`: `[B, H, W, C]` -> `[B, C, H, W]`.
    fn prepare_features(&self, xs: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        Some(
            xs.iter()
                .map(|x| Ok(x.f_permute([0, 3, 1, 2])?.f_contiguous()?))
                .collect(),
        )
    }
}

/// Builds a Prithvi Swin from the validated arguments on top of the preset `base`.
fn build(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<ModuleBox> {
    features::require_features_only(ctx, "the stage outputs")?;
    let cfg = config(ctx, base)?;
    pretrained::build_model(ctx, |p| PrithviSwin::new(p, &cfg))
}

/// The configuration the validated arguments give on top of the preset `base` (every
/// stage when `out_indices` is not an argument).
pub(crate) fn config(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<Config> {
    let a = &ctx.args;
    let pretrained_bands = bands_arg(
        a.raw("pretrained_bands").unwrap_or(&Value::Null),
        "pretrained_bands",
    )
    .or_else(|e| match a.raw("pretrained_bands") {
        None | Some(Value::Null) => Ok(base.pretrained_bands.clone()),
        _ => Err(e),
    })?;
    let bands = match a.raw("bands") {
        None | Some(Value::Null) => None,
        Some(v) => Some(bands_arg(v, "bands")?),
    };
    let n_bands = bands.as_ref().unwrap_or(&pretrained_bands).len() as i64;
    a.ensure(n_bands > 0, "bands", "must name at least one band")?;
    if let Some(c) = a.opt::<i64>("in_chans")? {
        a.ensure(
            c == n_bands,
            "in_chans",
            format!(
                "is {c} but the model has {n_bands} bands: TerraTorch always sets in_chans = len(bands) (the \
                 pretrained bands when `bands` is not given), so pass `bands` naming the input's channels instead"
            ),
        )?;
    }
    let drop_path_rate: f64 = a.get("drop_path_rate")?;
    let depths: Vec<i64> = a.get("depths")?;
    Ok(Config {
        in_chans: n_bands,
        embed_dim: a.get("embed_dim")?,
        patch_size: a.get("patch_size")?,
        window_size: a.get("window_size")?,
        mlp_ratio: a.get("mlp_ratio")?,
        num_heads: a.get("num_heads")?,
        strides: a.get("strides")?,
        qkv_bias: a.get("qkv_bias")?,
        qk_scale: a.opt("qk_scale")?,
        drop_rate: a.get("drop_rate")?,
        attn_drop_rate: a.get("attn_drop_rate")?,
        drop_path_rate,
        out_indices: TAPS.out_indices_arg(ctx, depths.len() as i64)?,
        depths,
        pretrained_bands,
        bands,
    })
}

fn preset_entry(name: &'static str, doc: &str) -> Entry {
    let base =
        Config::named(name).expect("a Prithvi Swin entry is registered only for a known preset");
    let d = base.clone();
    let e = Entry::new(name, doc, move |ctx| build(ctx, base.clone()));
    features::common_params(e, "the stage outputs")
        .opt("pretrained_bands", ParamType::ANY, json!(PRETRAINED_BANDS), "bands of the checkpoint's patch embedding, in order")
        .opt("bands", ParamType::ANY, Value::Null, "bands of the input (names, indices or [start, end] intervals); default: pretrained_bands; sets in_chans")
        .opt("in_chans", ParamType::INT, Value::Null, "input channels; TerraTorch always uses len(bands), so only that value is accepted")
        .opt("embed_dim", ParamType::INT, json!(d.embed_dim), "width of the first stage (doubled by each patch merging)")
        .opt("depths", ParamType::INT_LIST, json!(d.depths), "blocks per stage")
        .opt("num_heads", ParamType::INT_LIST, json!(d.num_heads), "attention heads per stage")
        .opt("patch_size", ParamType::INT, json!(d.patch_size), "patch embedding kernel (must equal strides[0])")
        .opt("strides", ParamType::INT_LIST, json!(d.strides), "stride of the patch embedding, then of each patch merging")
        .opt("window_size", ParamType::INT, json!(d.window_size), "square attention window of every stage")
        .opt("mlp_ratio", ParamType::FLOAT, json!(d.mlp_ratio), "FFN hidden width relative to the stage width")
        .opt("qkv_bias", ParamType::BOOL, json!(d.qkv_bias), "bias in the qkv projection")
        .opt("qk_scale", ParamType::FLOAT, Value::Null, "attention scale (default head_dim ** -0.5)")
        .opt("drop_rate", ParamType::FLOAT, json!(d.drop_rate), "dropout after the patch embedding, the attention projection and in the FFN")
        .opt("attn_drop_rate", ParamType::FLOAT, json!(d.attn_drop_rate), "dropout of the attention weights")
        .opt("drop_path_rate", ParamType::FLOAT, json!(d.drop_path_rate), "stochastic depth rate, linear over the blocks (train mode only)")
        .opt("out_indices", ParamType::INT_OR_INT_LIST, json!(d.out_indices), "stages to return (negative from the end; an int n = the last n)")
        .opt("pretrain_img_size", ParamType::ANY, json!(224), "accepted for compatibility; has no effect (any input size works)")
        .opt("num_frames", ParamType::INT, Value::Null, "accepted and dropped, as TerraTorch does (the Swin is not multitemporal)")
}

/// The registry entry for the Prithvi Swin TerraTorch registers into timm as `name`
/// (`prithvi_swin_B` or `prithvi_swin_L`).
pub(crate) fn entry(name: &'static str) -> Entry {
    let doc = if name == "prithvi_swin_L" {
        "TerraTorch's Prithvi Swin-L (MMSegSwinTransformer: embed 192, depths 2-2-18-2, window 7, 6 HLS bands) \
         as a feature extractor: normed channels-last stage outputs at strides 4, 8, 16, 32 with 192, 384, 768, \
         1536 channels (prepare_features makes them [B, C, H, W]); any input size."
    } else {
        "TerraTorch's Prithvi Swin-B (MMSegSwinTransformer: embed 128, depths 2-2-18-2, window 7, 6 HLS bands) \
         as a feature extractor: normed channels-last stage outputs at strides 4, 8, 16, 32 with 128, 256, 512, \
         1024 channels (prepare_features makes them [B, C, H, W]); any input size."
    };
    preset_entry(name, doc)
}

/// The registry entries of the Prithvi Swin presets.
pub(crate) fn entries() -> Vec<Entry> {
    ["prithvi_swin_B", "prithvi_swin_L"]
        .into_iter()
        .map(entry)
        .collect()
}

#[cfg(test)]
mod tests {
    //! Expected values were printed from the reference Python (TerraTorch 1.2.11,
    //! `BACKBONE_REGISTRY.build("timm_prithvi_swin_B", features_only=True, ...)`).
    use super::*;
    use crate::models::swin;
    use crate::test_support::{build, n_params, parity, tensor, write_checkpoint};
    use tch::Device;

    #[test]
    fn parity_timm_prithvi_swin_b() {
        parity("timm_prithvi_swin_B");
    }

    #[test]
    fn parity_timm_prithvi_swin_l_bands() {
        parity("timm_prithvi_swin_L");
    }

    #[test]
    fn presets_have_terratorch_parameter_counts_and_keys() {
        for (name, want, chans) in [
            ("prithvi_swin_B", 86_751_160, vec![128, 256, 512, 1024]),
            ("prithvi_swin_L", 195_007_380, vec![192, 384, 768, 1536]),
        ] {
            let m = build(name, json!({})).unwrap();
            assert_eq!(n_params(&m), want, "{name}");
            assert_eq!(m.out_channels(), chans, "{name}");
            assert_eq!(m.state_dict().len(), 357, "{name}");
        }
        let m = build("prithvi_swin_B", json!({})).unwrap();
        let sd = m.state_dict();
        let get = |k: &str| tensor(&sd, k);
        assert_eq!(
            get("patch_embed.projection.weight").size(),
            vec![128, 6, 4, 4]
        );
        assert_eq!(
            get("stages_0.downsample.reduction.weight").size(),
            vec![256, 512]
        );
        let idx = get("stages_0.blocks.0.attn.w_msa.relative_position_index");
        assert_eq!(idx.kind(), Kind::Int64);
        // First row, first 10 entries, from the reference buffer.
        let row: Vec<i64> = Vec::try_from(idx.get(0).narrow(0, 0, 10)).unwrap();
        assert_eq!(row, vec![84, 83, 82, 81, 80, 79, 78, 71, 70, 69]);
        // It is a buffer, not a parameter.
        assert!(!m
            .module()
            .named_parameters()
            .iter()
            .any(|nt| nt.name.contains("relative_position_index")));
    }

    #[test]
    fn prepare_features_permutes_to_nchw() {
        let m = build(
            "prithvi_swin_B",
            json!({"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "out_indices": [0, 3]}),
        )
        .unwrap();
        let ys = m
            .forward(&[Tensor::randn([1, 6, 30, 17], (Kind::Float, Device::Cpu))])
            .unwrap();
        assert_eq!(ys[0].size(), vec![1, 8, 5, 8]);
        let zs = m.prepare_features(&ys).unwrap().unwrap();
        assert_eq!(zs[0].size(), vec![1, 8, 8, 5]);
        assert_eq!(zs[1].size(), vec![1, 64, 1, 1]);
        assert!(zs[0].equal(&ys[0].permute([0, 3, 1, 2])));
    }

    #[test]
    fn bands_set_in_chans_and_errors_name_the_argument() {
        let m = build("prithvi_swin_L", json!({"bands": ["RED", [2, 4]]})).unwrap();
        let sd = m.state_dict();
        assert_eq!(
            sd.iter()
                .find(|(k, _)| k == "patch_embed.projection.weight")
                .unwrap()
                .1
                .size(),
            vec![192, 4, 4, 4]
        );
        for (k, v) in [
            ("in_chans", json!(3)),
            ("bands", json!([])),
            ("bands", json!({"a": 1})),
            ("strides", json!([2, 2, 2, 2])),
            ("out_indices", json!([0, 4])),
            ("drop_path_rate", json!(2.0)),
            ("img_size", json!(64)),
        ] {
            let e = build("prithvi_swin_B", json!({ k: v }))
                .err()
                .unwrap_or_else(|| panic!("{k}={v} accepted"));
            assert!(e.message().contains(k), "{k}: {e}");
        }
        assert!(build("prithvi_swin_B", json!({"in_chans": 6, "num_frames": 1})).is_ok());
    }

    #[test]
    fn original_swin_checkpoint_matches_timm_swin_after_conversion() {
        // A timm Swin (always_partition, so its windows and shifts equal mmseg's everywhere)
        // with random weights, saved in the original Microsoft layout under `encoder.`, must
        // give the Prithvi Swin the same stage outputs up to the Prithvi stage norms (left at
        // their initial identity affine by a checkpoint without them).
        tch::manual_seed(1);
        let tcfg = swin::Config {
            img_size: [32, 32],
            in_chans: 6,
            embed_dim: 8,
            depths: vec![2, 2, 2, 1],
            num_heads: vec![1, 2, 2, 4],
            window_size: vec![[2, 2]; 4],
            always_partition: true,
            ..swin::Config::swin_tiny_patch4_window7_224()
        };
        let tvs = nn::VarStore::new(Device::Cpu);
        let timm_model = swin::SwinTransformer::new(tvs.root(), &tcfg).unwrap();
        tch::no_grad(|| {
            for (_, mut t) in tvs.variables() {
                t.copy_(&(t.rand_like() * 0.4 - 0.2));
            }
        });
        let mut ck: Vec<(String, Tensor)> = vec![(
            "decoder.conv.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        )];
        for (k, t) in tvs.variables() {
            let (stage, tail) = match k.strip_prefix("layers_") {
                Some(r) => {
                    let (s, t) = r.split_once('.').unwrap();
                    (Some(s.parse::<usize>().unwrap()), t.to_owned())
                }
                None => (None, k.clone()),
            };
            let name = match stage {
                // Original layout: the merging of stage i+1 sits at the end of stage i.
                Some(s) if tail.starts_with("downsample") => format!("layers.{}.{tail}", s - 1),
                Some(s) => format!("layers.{s}.{tail}"),
                None => k.clone(),
            };
            // timm merges 2x2 patches in the original order ([x00, x10, x01, x11]), so its
            // tensors are already in the original layout.
            ck.push((format!("encoder.{name}"), t.detach().copy()));
        }
        ck.push((
            "encoder.head.weight".into(),
            Tensor::zeros([3, 32], (Kind::Float, Device::Cpu)),
        ));
        let file = write_checkpoint(&ck, "prithvi-swin-test", "swin_orig.safetensors");

        let m = build(
            "prithvi_swin_B",
            json!({"pretrained": true, "pretrained_cfg_overlay": {"file": file.to_str().unwrap()},
                   "embed_dim": 8, "depths": [2, 2, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": 2}),
        )
        .unwrap();
        let x = Tensor::randn([1, 6, 32, 32], (Kind::Float, Device::Cpu));
        let got = m.forward(&[x.shallow_clone()]).unwrap();
        let want = Model::forward(&timm_model, &[x], false).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = w.size()[3];
            let w = w.layer_norm([c], None::<&Tensor>, None::<&Tensor>, 1e-5, true);
            let diff = (g - &w).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "stage {i}: max diff {diff}");
        }
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[test]
    fn band_selection_and_prefixes_follow_terratorch() {
        // A Prithvi Swin checkpoint of its own layout under `backbone.` and `module.`.
        let src = build("prithvi_swin_B", json!({"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 3})).unwrap();
        let ck: Vec<(String, Tensor)> = src
            .state_dict()
            .into_iter()
            .map(|(k, t)| {
                let k = k.replacen("stages_", "stages.", 1);
                let v = if t.is_floating_point() {
                    t.rand_like()
                } else {
                    t.copy()
                };
                (format!("module.backbone.{k}"), v)
            })
            .collect();
        let file = write_checkpoint(&ck, "prithvi-swin-bands", "prithvi.safetensors");
        let dir = file.parent().unwrap().to_owned();
        let get_ck = |k: &str| tensor(&ck, k);
        let m = build(
            "prithvi_swin_B",
            json!({"pretrained": true, "pretrained_cfg_overlay": {"file": file.to_str().unwrap()},
                   "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 5,
                   "bands": ["RED", "BLUE", 7], "out_indices": [0, 1]}),
        )
        .unwrap();
        let sd = m.state_dict();
        let get = |k: &str| tensor(&sd, k);
        let pw = get("patch_embed.projection.weight");
        let cw = get_ck("module.backbone.patch_embed.projection.weight");
        assert_eq!(pw.size(), vec![8, 3, 4, 4]);
        assert!(
            pw.select(1, 0).equal(&cw.select(1, 2)),
            "RED is pretrained band 2"
        );
        assert!(
            pw.select(1, 1).equal(&cw.select(1, 0)),
            "BLUE is pretrained band 0"
        );
        assert!(!pw.select(1, 2).equal(&cw.select(1, 2)));
        assert!(get("stages_1.blocks.0.ffn.layers.1.weight").equal(&get_ck(
            "module.backbone.stages.1.blocks.0.ffn.layers.1.weight"
        )));
        // Bias tables of window 3 are resized (bicubic) to window 5.
        assert_eq!(
            get("stages_0.blocks.0.attn.w_msa.relative_position_bias_table").size(),
            vec![81, 1]
        );
        // Stages past the last returned one are not built and their keys skipped.
        assert!(!sd.iter().any(|(k, _)| k.starts_with("stages_2")));

        // An unrelated checkpoint is an error, not a silently random model.
        let other = dir.join("other.safetensors");
        Tensor::write_safetensors(
            &[
                (
                    "patch_embed.proj.weight".to_string(),
                    Tensor::zeros([8, 6, 4, 4], (Kind::Float, Device::Cpu)),
                ),
                (
                    "foo.weight".to_string(),
                    Tensor::zeros([2], (Kind::Float, Device::Cpu)),
                ),
            ],
            &other,
        )
        .unwrap();
        let e = build("prithvi_swin_B", json!({"pretrained": true, "pretrained_cfg_overlay": {"file": other.to_str().unwrap()}, "embed_dim": 8}))
            .err()
            .unwrap();
        assert!(
            e.message().contains("no key") || e.message().contains("shares"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bias_tables_resize_like_torch_bicubic() {
        // F.interpolate(t.permute(1, 0).reshape(1, 2, 3, 3), size=(5, 5), mode="bicubic")
        // of t = arange(18).reshape(9, 2) * 0.1, head 1, from the reference.
        let want = [
            0.0232, 0.1056, 0.2424, 0.3792, 0.4616, 0.2704, 0.3528, 0.4896, 0.6264, 0.7088, 0.6808,
            0.7632, 0.9, 1.0368, 1.1192, 1.0912, 1.1736, 1.3104, 1.4472, 1.5296, 1.3384, 1.4208,
            1.5576, 1.6944, 1.7768,
        ];
        let table = (Tensor::arange(18, (Kind::Float, Device::Cpu)) * 0.1).view([9, 2]);
        let proj = Tensor::zeros([4, 6, 4, 4], (Kind::Float, Device::Cpu));
        let ck = vec![
            (
                "patch_embed.projection.weight".to_string(),
                proj.rand_like(),
            ),
            (
                "stages.0.blocks.0.attn.w_msa.relative_position_bias_table".to_string(),
                table,
            ),
        ];
        let out =
            filter_checkpoint(ck, &Config::prithvi_swin_b(), &proj, |_| Some(vec![25, 2])).unwrap();
        let t = &out[1].1;
        assert_eq!(t.size(), vec![25, 2]);
        let got: Vec<f64> = Vec::try_from(t.select(1, 1).to_kind(Kind::Double)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?}");
        }
        // The patch embedding keeps all six pretrained bands in place.
        assert!(out[0].1.size() == vec![4, 6, 4, 4]);
    }
}
