//! Mirrors `timm/models/vision_transformer.py` (timm 1.0.31): `VisionTransformer` with its
//! `Block`, `Attention`, `Mlp` and `LayerScale`, `PatchEmbed` (`timm/layers/patch_embed.py`),
//! `resample_abs_pos_embed` (`timm/layers/pos_embed.py`) and `checkpoint_filter_fn`, seen
//! through timm's `FeatureGetterNet` (`timm/models/_features.py`): what
//! `timm.create_model("vit_*", features_only=True)` returns and TerraTorch's
//! `TimmBackboneWrapper` (`terratorch/registry/timm_registry.py`) wraps.
//!
//! `FeatureGetterNet` keeps the transformer as its child `model`, so every key starts with
//! `model.`. It prunes the blocks after the last returned one, the final norm, `fc_norm`
//! and the head, and returns `forward_intermediates(..., output_fmt="NCHW",
//! intermediates_only=True)`: the selected blocks' outputs without the prefix (class and
//! register) tokens, as [B, embed_dim, H / patch, W / patch] maps.
//!
//! `Block`, `Attention`, `Mlp` and `LayerScale` are the shared [`terrahost_layers::vit`].
use super::checks;
use super::features::{self, Order, Taps};
use super::layers::{drop_path_rate, trunc_normal, Conv2d, LayerNorm, LN_EPS};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_layers::vit::{Block, BlockConfig};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// How ViT blocks are named in `out_indices` messages.
const TAPS: Taps<'static> = Taps {
    model: "a ViT",
    unit: "blocks",
    legend: "",
    order: Order::Distinct,
};

/// The arguments of timm's `VisionTransformer.__init__` that shape the feature extractor,
/// plus the `features_only` selection. Defaults are upstream's (ViT-B/16 at 224).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Input image size (height, width) the position embedding is made for.
    pub img_size: (i64, i64),
    /// Square patch size of the patch-embedding convolution.
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// Token width.
    pub embed_dim: i64,
    /// Number of transformer blocks.
    pub depth: i64,
    /// Attention heads per block.
    pub num_heads: i64,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Bias of the qkv projection.
    pub qkv_bias: bool,
    /// LayerNorm on each head's queries and keys.
    pub qk_norm: bool,
    /// LayerScale initial value; `None` disables LayerScale (no `ls1` / `ls2` keys).
    pub init_values: Option<f64>,
    /// Prepend a class token.
    pub class_token: bool,
    /// Number of register tokens.
    pub reg_tokens: i64,
    /// The position embedding covers the patches only, not the prefix tokens.
    pub no_embed_class: bool,
    /// LayerNorm after the embedding (`norm_pre`), and no patch-embedding bias (CLIP).
    pub pre_norm: bool,
    /// Accept any input size that is a multiple of the patch size, resampling the position
    /// embedding at every forward.
    pub dynamic_img_size: bool,
    /// Zero-pad the input (right / bottom) to a multiple of the patch size.
    pub dynamic_img_pad: bool,
    /// Pooling of the classifier; only its consistency with `class_token` matters here.
    pub global_pool: String,
    /// Classifier dropout; no effect on a features-only model (as in timm).
    pub drop_rate: f64,
    /// Dropout after adding the position embedding.
    pub pos_drop_rate: f64,
    /// Dropout after the attention projection and in the MLP.
    pub proj_drop_rate: f64,
    /// Dropout on the attention weights.
    pub attn_drop_rate: f64,
    /// Stochastic depth rate, rising linearly over the blocks (train mode only).
    pub drop_path_rate: f64,
    /// Blocks whose outputs are returned; negative count from the end.
    pub out_indices: Vec<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Self::preset_dims(16, 768, 12, 12)
    }
}

impl Config {
    fn preset_dims(patch_size: i64, embed_dim: i64, depth: i64, num_heads: i64) -> Self {
        Self {
            img_size: (224, 224),
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            qk_norm: false,
            init_values: None,
            class_token: true,
            reg_tokens: 0,
            no_embed_class: false,
            pre_norm: false,
            dynamic_img_size: false,
            dynamic_img_pad: false,
            global_pool: "token".into(),
            drop_rate: 0.0,
            pos_drop_rate: 0.0,
            proj_drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
            out_indices: vec![depth - 3, depth - 2, depth - 1],
        }
    }

    /// timm `vit_tiny_patch16_224`.
    pub fn vit_tiny_patch16_224() -> Self {
        Self::preset_dims(16, 192, 12, 3)
    }
    /// timm `vit_small_patch16_224`.
    pub fn vit_small_patch16_224() -> Self {
        Self::preset_dims(16, 384, 12, 6)
    }
    /// timm `vit_base_patch16_224`.
    pub fn vit_base_patch16_224() -> Self {
        Self::preset_dims(16, 768, 12, 12)
    }
    /// timm `vit_large_patch16_224`.
    pub fn vit_large_patch16_224() -> Self {
        Self::preset_dims(16, 1024, 24, 16)
    }
    /// The preset called `name` (timm's model name), if there is one.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "vit_tiny_patch16_224" => Self::vit_tiny_patch16_224(),
            "vit_small_patch16_224" => Self::vit_small_patch16_224(),
            "vit_base_patch16_224" => Self::vit_base_patch16_224(),
            "vit_large_patch16_224" => Self::vit_large_patch16_224(),
            _ => return None,
        })
    }

    /// Class plus register tokens.
    pub fn num_prefix_tokens(&self) -> i64 {
        i64::from(self.class_token) + self.reg_tokens
    }

    /// The patch grid of `img_size` (`PatchEmbed.grid_size`).
    pub fn grid_size(&self) -> (i64, i64) {
        (
            self.img_size.0 / self.patch_size,
            self.img_size.1 / self.patch_size,
        )
    }

    /// Tokens covered by the position embedding.
    pub fn pos_embed_len(&self) -> i64 {
        let (gh, gw) = self.grid_size();
        gh * gw
            + if self.no_embed_class {
                0
            } else {
                self.num_prefix_tokens()
            }
    }

    /// `out_indices` made non-negative as timm's `feature_take_indices` does; the blocks'
    /// outputs come back in network order, so the list must not repeat an index.
    pub fn resolved_out_indices(&self) -> Result<Vec<i64>> {
        TAPS.resolve(&self.out_indices, self.depth)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(PluginError::invalid_argument(what));
        checks::at_least_one(&[("in_chans", self.in_chans), ("patch_size", self.patch_size)])?;
        let (h, w) = self.img_size;
        if h < self.patch_size || w < self.patch_size {
            return bad(format!(
                "`img_size` {:?} is smaller than `patch_size` {}: there would be no patch",
                self.img_size, self.patch_size
            ));
        }
        if self.embed_dim < 1 || self.depth < 1 || self.num_heads < 1 {
            return bad(format!(
                "`embed_dim`, `depth` and `num_heads` must be positive, got {}, {}, {}",
                self.embed_dim, self.depth, self.num_heads
            ));
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(format!(
                "`embed_dim` {} must be divisible by `num_heads` {}",
                self.embed_dim, self.num_heads
            ));
        }
        checks::mlp_ratio(self.mlp_ratio)?;
        if self.reg_tokens < 0 {
            return bad(format!(
                "`reg_tokens` must be >= 0, got {}",
                self.reg_tokens
            ));
        }
        if !["", "avg", "avgmax", "max", "token", "map", "prr"].contains(&self.global_pool.as_str())
        {
            return bad(format!(
                "`global_pool` must be one of \"\", \"avg\", \"avgmax\", \"max\", \"token\", \"map\", \"prr\"; got {:?}",
                self.global_pool
            ));
        }
        if !self.class_token && self.global_pool == "token" {
            return bad(
                "`class_token`=false needs another `global_pool` than \"token\" (e.g. \"avg\"), as in timm"
                    .into(),
            );
        }
        checks::rates(&[
            ("drop_rate", self.drop_rate),
            ("pos_drop_rate", self.pos_drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ])?;
        Ok(())
    }
}

impl Config {
    /// The shared [`Block`]'s configuration for one block with drop-path rate `drop_path`.
    fn block_config(&self, drop_path: f64) -> BlockConfig {
        let mut b = BlockConfig::timm(self.embed_dim, self.num_heads, self.mlp_ratio);
        b.qkv_bias = self.qkv_bias;
        b.qk_norm = self.qk_norm;
        b.attn_drop = self.attn_drop_rate;
        b.proj_drop = self.proj_drop_rate;
        b.init_values = self.init_values;
        b.drop_path = drop_path;
        // timm's Mlp drops after the activation and after fc2, both at proj_drop.
        b.mlp.drop_hidden = self.proj_drop_rate;
        b.mlp.drop_out = self.proj_drop_rate;
        b
    }
}

/// timm's `resample_abs_pos_embed`: the grid part of a [1, prefix + old_h * old_w, D]
/// position embedding resized to `new` with antialiased bicubic interpolation, the prefix
/// part kept.
pub fn resample_abs_pos_embed(
    posemb: &Tensor,
    new: (i64, i64),
    old: (i64, i64),
    num_prefix_tokens: i64,
) -> Result<Tensor> {
    let size = posemb.size();
    if size.len() != 3 || size[1] != num_prefix_tokens + old.0 * old.1 {
        return Err(PluginError::invalid_argument(format!(
            "cannot resample a position embedding of shape {size:?} from a {old:?} grid with \
             {num_prefix_tokens} prefix tokens"
        )));
    }
    if old == new {
        return Ok(posemb.shallow_clone());
    }
    let d = size[2];
    let prefix = posemb.f_narrow(1, 0, num_prefix_tokens)?;
    let kind = posemb.kind();
    // [1, old_h * old_w, D] -> [1, D, old_h, old_w]
    let grid = posemb
        .f_narrow(1, num_prefix_tokens, old.0 * old.1)?
        .f_to_kind(Kind::Float)?
        .f_reshape([1, old.0, old.1, d])?
        .f_permute([0, 3, 1, 2])?;
    let grid = grid.f_internal_upsample_bicubic2d_aa([new.0, new.1], false, None, None)?;
    // [1, D, new_h, new_w] -> [1, new_h * new_w, D]
    let grid = grid
        .f_permute([0, 2, 3, 1])?
        .f_reshape([1, new.0 * new.1, d])?
        .f_to_kind(kind)?;
    Ok(Tensor::f_cat(&[prefix, grid], 1)?)
}

/// timm's Vision Transformer as a `features_only` feature extractor (`FeatureGetterNet`):
/// returns the outputs of the blocks in `out_indices` as NCHW maps at stride `patch_size`.
#[derive(Debug)]
pub struct VisionTransformer {
    cfg: Config,
    patch_embed: Conv2d,
    cls_token: Option<Tensor>,
    reg_token: Option<Tensor>,
    pos_embed: Tensor,
    norm_pre: Option<LayerNorm>,
    blocks: Vec<Block>,
    out_indices: Vec<i64>,
}

impl VisionTransformer {
    /// Builds the network under `p` (the wrapper's `model.` level is the caller's) with
    /// timm's parameter names.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let out_indices = cfg.resolved_out_indices()?;
        let last = *out_indices.iter().max().expect("out_indices are non-empty");
        let d = cfg.embed_dim;
        let ps = cfg.patch_size;
        let patch_embed = Conv2d::patchify(
            &p / "patch_embed" / "proj",
            cfg.in_chans,
            d,
            ps,
            ps,
            !cfg.pre_norm,
        );
        let tiny = Init::Randn {
            mean: 0.0,
            stdev: 1e-6,
        };
        let cls_token = cfg
            .class_token
            .then(|| p.var("cls_token", &[1, 1, d], tiny));
        let reg_token =
            (cfg.reg_tokens > 0).then(|| p.var("reg_token", &[1, cfg.reg_tokens, d], tiny));
        let pos_embed = p.var("pos_embed", &[1, cfg.pos_embed_len(), d], trunc_normal());
        let norm_pre = cfg
            .pre_norm
            .then(|| LayerNorm::new(&p / "norm_pre", d, LN_EPS));
        // calculate_drop_path_rates: linspace(0, rate, depth) over all blocks, also those
        // pruned away.
        let blocks = (0..=last)
            .map(|i| {
                let dpr = drop_path_rate(cfg.drop_path_rate, i, cfg.depth);
                Block::new(&p / "blocks" / i, &cfg.block_config(dpr))
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            cls_token,
            reg_token,
            pos_embed,
            norm_pre,
            blocks,
            out_indices,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The block indices returned (non-negative, in the order given).
    pub fn out_indices(&self) -> &[i64] {
        &self.out_indices
    }

    /// The token sequence entering the first block ([B, prefix + gh * gw, D]: patch
    /// embedding, prefix tokens, position embedding, dropout, `norm_pre`) and `(B, gh, gw)`.
    fn embed(&self, x: &Tensor, train: bool) -> Result<(Tensor, (i64, i64, i64))> {
        let cfg = &self.cfg;
        let size = TAPS.check_image(x, cfg.in_chans)?;
        let (b, h, w) = (size[0], size[2], size[3]);
        let ps = cfg.patch_size;
        if !cfg.dynamic_img_size {
            if (h, w) != cfg.img_size {
                return Err(PluginError::forward_failed(format!(
                    "the input is {h}x{w} but the ViT was built with img_size={:?}; build it with \
                     img_size=[{h}, {w}] or dynamic_img_size=true",
                    cfg.img_size
                )));
            }
        } else if !cfg.dynamic_img_pad && (h % ps != 0 || w % ps != 0) {
            return Err(PluginError::forward_failed(format!(
                "the input is {h}x{w}, not a multiple of patch_size {ps}; resize or pad it, or build the \
                 model with dynamic_img_pad=true"
            )));
        }
        let x = if cfg.dynamic_img_pad {
            let (ph, pw) = ((ps - h % ps) % ps, (ps - w % ps) % ps);
            x.f_constant_pad_nd([0, pw, 0, ph])?
        } else {
            x.shallow_clone()
        };
        // [B, C, H, W] -> [B, D, gh, gw] -> [B, gh * gw, D]
        let y = self.patch_embed.forward(&x)?;
        let (gh, gw) = (y.size()[2], y.size()[3]);
        let mut t = y.f_flatten(2, 3)?.f_transpose(1, 2)?;

        let n_prefix_pos = if cfg.no_embed_class {
            0
        } else {
            cfg.num_prefix_tokens()
        };
        let pos = if cfg.dynamic_img_size {
            resample_abs_pos_embed(&self.pos_embed, (gh, gw), cfg.grid_size(), n_prefix_pos)?
        } else {
            self.pos_embed.shallow_clone()
        };
        let mut prefix = Vec::new();
        if let Some(c) = &self.cls_token {
            prefix.push(c.f_expand([b, -1, -1], false)?);
        }
        if let Some(r) = &self.reg_token {
            prefix.push(r.f_expand([b, -1, -1], false)?);
        }
        let cat = |t: Tensor, prefix: &[Tensor]| -> Result<Tensor> {
            if prefix.is_empty() {
                return Ok(t);
            }
            let mut all: Vec<Tensor> = prefix.iter().map(Tensor::shallow_clone).collect();
            all.push(t);
            Ok(Tensor::f_cat(&all, 1)?)
        };
        t = if cfg.no_embed_class {
            cat(t.f_add(&pos)?, &prefix)?
        } else {
            cat(t, &prefix)?.f_add(&pos)?
        };
        t = t.f_dropout(cfg.pos_drop_rate, train)?;
        if let Some(n) = &self.norm_pre {
            t = n.forward(&t)?;
        }
        Ok((t, (b, gh, gw)))
    }

    /// Runs every block built on `x` ([B, in_chans, H, W]) and returns the last one's
    /// tokens, [B, prefix + gh * gw, D] (the classifier's `forward_features` before `norm`).
    pub fn tokens(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mut t, _) = self.embed(x, train)?;
        for blk in &self.blocks {
            t = blk.forward(&t, train)?;
        }
        Ok(t)
    }

    /// Runs the network on `x` ([B, in_chans, H, W]) and returns the selected blocks'
    /// outputs as [B, embed_dim, H / patch, W / patch], in network order.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let cfg = &self.cfg;
        let (mut t, (b, gh, gw)) = self.embed(x, train)?;
        let np = cfg.num_prefix_tokens();
        let n_tokens = gh * gw;
        let mut out = Vec::with_capacity(self.out_indices.len());
        for (i, blk) in self.blocks.iter().enumerate() {
            t = blk.forward(&t, train)?;
            if self.out_indices.contains(&(i as i64)) {
                // [B, prefix + gh * gw, D] -> [B, D, gh, gw]
                let y = t
                    .f_narrow(1, np, n_tokens)?
                    .f_reshape([b, gh, gw, cfg.embed_dim])?
                    .f_permute([0, 3, 1, 2])?
                    .f_contiguous()?;
                out.push(y);
            }
        }
        Ok(out)
    }
}

impl Model for VisionTransformer {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.features(TAPS.single(xs, self.cfg.in_chans)?, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.embed_dim; self.out_indices.len()]
    }
}

/// timm's `resample_patch_embed`: resizes patch-embedding kernels [O, I, h, w] to `new`
/// so that a resized patch gives about the same embedding as the original one (FlexiViT):
/// the kernels are multiplied by the pseudo-inverse of the bicubic (antialiased) resize
/// matrix, in float32 as upstream.
pub fn resample_patch_embed(w: &Tensor, new: (i64, i64)) -> Result<Tensor> {
    let size = w.size();
    let (oh, ow) = (size[2], size[3]);
    if (oh, ow) == new {
        return Ok(w.shallow_clone());
    }
    let kind = w.kind();
    let (n_old, n_new) = (oh * ow, new.0 * new.1);
    // Every old basis kernel resized: [n_old, 1, nh, nw] -> resize matrix [n_new, n_old].
    let basis = Tensor::f_eye(n_old, (Kind::Float, w.device()))?.f_reshape([n_old, 1, oh, ow])?;
    let resize = basis
        .f_internal_upsample_bicubic2d_aa([new.0, new.1], false, None, None)?
        .f_reshape([n_old, n_new])?
        .f_transpose(0, 1)?;
    // [n_old, n_new]
    let pinv = resize.f_linalg_pinv_atol_rtol_float(None, None, false)?;
    let flat = w
        .f_to_kind(Kind::Float)?
        .f_reshape([size[0], size[1], n_old])?;
    Ok(flat
        .f_matmul(&pinv)?
        .f_reshape([size[0], size[1], new.0, new.1])?
        .f_to_kind(kind)?)
}

impl LoadPretrained for VisionTransformer {
    /// Loads a timm ViT checkpoint (the state_dict of the full classifier model, as
    /// `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`
    /// reads it) into `vs`, whose variables sit under `model.`.
    ///
    /// As timm's loader and `checkpoint_filter_fn` do: `module.` / `_orig_mod.` prefixes
    /// are removed; the head, `fc_norm`, the final norm (pruned by `FeatureGetterNet`) and
    /// the blocks after the last returned one are dropped; patch kernels of another size are
    /// resampled (`resample_patch_embed`); a position embedding of another grid is resampled
    /// (bicubic, antialiased) to this model's; and a 3-channel patch embedding is adapted to
    /// `in_chans` (`adapt_input_conv`). Anything else missing, unexpected or of the wrong
    /// shape is an error.
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()> {
        let cfg = &self.cfg;
        let n_blocks = self.blocks.len();
        let mut given: BTreeMap<String, Tensor> = BTreeMap::new();
        for (k, v) in weights {
            let k = pretrained::clean_checkpoint_key(k);
            let pruned_block = k
                .strip_prefix("blocks.")
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                .is_some_and(|i| i >= n_blocks);
            let pruned = ["head.", "fc_norm.", "norm.", "attn_pool.", "pre_logits."]
                .iter()
                .any(|p| k.starts_with(p));
            if pruned || pruned_block {
                continue;
            }
            given.insert(k, v);
        }
        let patch_key = "patch_embed.proj.weight";
        if let Some(w) = given.get(patch_key) {
            let s = w.size();
            if s.len() != 4 {
                return Err(PluginError::invalid_argument(format!(
                    "checkpoint tensor `{patch_key}` has shape {s:?}, expected [O, I, kH, kW]"
                )));
            }
            let mut w = w.shallow_clone();
            if (s[2], s[3]) != (cfg.patch_size, cfg.patch_size) {
                w = resample_patch_embed(&w, (cfg.patch_size, cfg.patch_size))?;
            }
            // The pretrained grid: 224 / the checkpoint's patch when that accounts for every
            // token, else the square one, as get_pretrained_grid_size falls back to.
            if let Some(pe) = given.get("pos_embed") {
                let n_prefix = if cfg.no_embed_class {
                    0
                } else {
                    cfg.num_prefix_tokens()
                };
                let n_grid = pe.size().get(1).copied().unwrap_or(0) - n_prefix;
                let g224 = (224 / s[2], 224 / s[3]);
                let old = if g224.0 * g224.1 == n_grid {
                    g224
                } else {
                    let side = (n_grid as f64).sqrt().round() as i64;
                    (side, side)
                };
                let resampled = resample_abs_pos_embed(pe, cfg.grid_size(), old, n_prefix)
                    .map_err(|e| e.context("`pos_embed`"))?;
                given.insert("pos_embed".into(), resampled);
            }
            if w.size()[1] != cfg.in_chans {
                w = pretrained::adapt_input_conv(cfg.in_chans, &w)
                    .map_err(|e| e.context(format_args!("`{patch_key}`")))?;
            }
            given.insert(patch_key.into(), w);
        }
        let given = given
            .into_iter()
            .map(|(k, v)| (format!("model.{k}"), v))
            .collect();
        pretrained::load_strict(vs, given, "ViT")
    }
}

/// Builds a timm ViT from the validated arguments, whose defaults are the preset's (so
/// every field comes from them).
fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    features::require_features_only(ctx, "the blocks' outputs as feature maps")?;
    let cfg = config(ctx)?;
    pretrained::build_model(ctx, |p| VisionTransformer::new(p / "model", &cfg))
}

/// The configuration the validated arguments give (every block when `out_indices` is not
/// an argument).
pub(crate) fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let a = &ctx.args;
    let depth: i64 = a.get("depth")?;
    a.ensure(
        depth >= 1,
        "depth",
        format!("must be at least 1, got {depth}"),
    )?;
    Ok(Config {
        img_size: features::img_size_arg(ctx)?,
        patch_size: a.get("patch_size")?,
        in_chans: a.get("in_chans")?,
        embed_dim: a.get("embed_dim")?,
        depth,
        num_heads: a.get("num_heads")?,
        mlp_ratio: a.get("mlp_ratio")?,
        qkv_bias: a.get("qkv_bias")?,
        qk_norm: a.get("qk_norm")?,
        init_values: a.opt("init_values")?,
        class_token: a.get("class_token")?,
        reg_tokens: a.get("reg_tokens")?,
        no_embed_class: a.get("no_embed_class")?,
        pre_norm: a.get("pre_norm")?,
        dynamic_img_size: a.get("dynamic_img_size")?,
        dynamic_img_pad: a.get("dynamic_img_pad")?,
        global_pool: a.get("global_pool")?,
        drop_rate: a.get("drop_rate")?,
        pos_drop_rate: a.get("pos_drop_rate")?,
        proj_drop_rate: a.get("proj_drop_rate")?,
        attn_drop_rate: a.get("attn_drop_rate")?,
        drop_path_rate: a.get("drop_path_rate")?,
        out_indices: TAPS.out_indices_arg(ctx, depth)?,
    })
}

/// The registry entry for the timm ViT preset `name`, with timm's keyword parameters.
pub(crate) fn entry(name: &'static str) -> Entry {
    let base = Config::preset(name).expect("a ViT entry is registered only for a known preset");
    let doc = format!(
        "timm {name} (patch {}, width {}, {} blocks, {} heads) as a feature extractor: the last blocks' \
         tokens as [B, {}, H/{}, W/{}] maps (prefix tokens removed).",
        base.patch_size, base.embed_dim, base.depth, base.num_heads, base.embed_dim, base.patch_size,
        base.patch_size
    );
    features::common_params(Entry::new(name, &doc, build), "the feature maps")
        .opt(
            "img_size",
            ParamType::INT_OR_INT_LIST,
            json!(224),
            "input size (int or [height, width]) the position embedding is made for",
        )
        .opt(
            "patch_size",
            ParamType::INT,
            json!(base.patch_size),
            "patch size of the patch embedding (stride of the features)",
        )
        .opt("in_chans", ParamType::INT, json!(3), "input channels")
        .opt(
            "out_indices",
            ParamType::INT_OR_INT_LIST,
            json!(3),
            "blocks whose outputs are returned (negative from the end; an int n = the last n)",
        )
        .opt(
            "embed_dim",
            ParamType::INT,
            json!(base.embed_dim),
            "token width",
        )
        .opt(
            "depth",
            ParamType::INT,
            json!(base.depth),
            "number of transformer blocks",
        )
        .opt(
            "num_heads",
            ParamType::INT,
            json!(base.num_heads),
            "attention heads",
        )
        .opt(
            "mlp_ratio",
            ParamType::FLOAT,
            json!(4.0),
            "MLP hidden width / embed_dim",
        )
        .opt(
            "qkv_bias",
            ParamType::BOOL,
            json!(true),
            "bias of the qkv projection",
        )
        .opt(
            "qk_norm",
            ParamType::BOOL,
            json!(false),
            "LayerNorm on each head's queries and keys",
        )
        .opt(
            "init_values",
            ParamType::FLOAT,
            Value::Null,
            "LayerScale initial value (null: no LayerScale)",
        )
        .opt(
            "class_token",
            ParamType::BOOL,
            json!(true),
            "prepend a class token",
        )
        .opt(
            "reg_tokens",
            ParamType::INT,
            json!(0),
            "number of register tokens",
        )
        .opt(
            "no_embed_class",
            ParamType::BOOL,
            json!(false),
            "position embedding for the patches only, not the prefix tokens",
        )
        .opt(
            "pre_norm",
            ParamType::BOOL,
            json!(false),
            "LayerNorm after the embedding and no patch-embedding bias (CLIP)",
        )
        .opt(
            "dynamic_img_size",
            ParamType::BOOL,
            json!(false),
            "accept any input size (multiple of patch_size); the position embedding is resampled",
        )
        .opt(
            "dynamic_img_pad",
            ParamType::BOOL,
            json!(false),
            "zero-pad the input to a multiple of patch_size",
        )
        .opt(
            "global_pool",
            ParamType::STR,
            json!("token"),
            "classifier pooling; \"token\" needs class_token (no effect on the features)",
        )
        .opt(
            "drop_rate",
            ParamType::FLOAT,
            json!(0.0),
            "classifier dropout; no effect on a features-only model, as in timm",
        )
        .opt(
            "pos_drop_rate",
            ParamType::FLOAT,
            json!(0.0),
            "dropout after the position embedding (train mode only)",
        )
        .opt(
            "proj_drop_rate",
            ParamType::FLOAT,
            json!(0.0),
            "dropout after the attention projection and in the MLP (train mode only)",
        )
        .opt(
            "attn_drop_rate",
            ParamType::FLOAT,
            json!(0.0),
            "dropout on the attention weights (train mode only)",
        )
        .opt(
            "drop_path_rate",
            ParamType::FLOAT,
            json!(0.0),
            "stochastic depth rate, linear over the blocks (train mode only)",
        )
}

/// The registry entries of the timm ViT presets.
pub(crate) fn entries() -> Vec<Entry> {
    [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_large_patch16_224",
    ]
    .into_iter()
    .map(entry)
    .collect()
}
