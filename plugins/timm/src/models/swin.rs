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
//! the state_dict), so they are computed on the fly here. The window attention pieces are
//! shared with the TerraTorch/mmseg Swin of `prithvi_swin.rs`.
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{PluginError, Result};

// ---------------------------------------------------------------------------------------
// Pieces shared with the mmseg-style Swin (prithvi_swin.rs).
// ---------------------------------------------------------------------------------------

/// `nn.Linear` (weight `[out, in]`, optional bias).
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer under `p`; `init` draws the weight, the bias starts at zero.
    pub(crate) fn new(p: nn::Path, c_in: i64, c_out: i64, bias: bool, init: Init) -> Self {
        Self::with_inits(p, c_in, c_out, bias, init, Init::Const(0.0))
    }

    /// A linear layer whose weight and bias are drawn with `w` and `b`.
    pub(crate) fn with_inits(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        bias: bool,
        w: Init,
        b: Init,
    ) -> Self {
        Self {
            weight: p.var("weight", &[c_out, c_in], w),
            bias: bias.then(|| p.var("bias", &[c_out], b)),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// `nn.LayerNorm(dim)` over the last dimension (eps 1e-5, weight 1, bias 0).
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub(crate) fn new(p: nn::Path, dim: i64) -> Self {
        Self {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.var("bias", &[dim], Init::Const(0.0)),
            dim,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), 1e-5, true)?)
    }
}

/// timm's `DropPath`: drops whole samples of a residual branch with probability `p` and
/// rescales the rest by 1 / (1 - p); the identity outside training.
pub(crate) fn drop_path(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p == 0.0 || !train {
        return Ok(x);
    }
    let keep = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let mut mask = Tensor::f_empty(shape.as_slice(), (x.kind(), x.device()))?;
    let _ = mask.f_bernoulli_float_(keep)?;
    Ok(x.f_mul(&mask.f_div_scalar(keep)?)?)
}

/// `nn.Dropout(p)`: active in train mode only.
pub(crate) fn dropout(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p == 0.0 || !train {
        return Ok(x);
    }
    Ok(x.f_dropout(p, train)?)
}

/// `[B, H, W, C]` -> `[B * nW, wh, ww, C]` (H, W multiples of the window).
pub(crate) fn window_partition(x: &Tensor, wh: i64, ww: i64) -> Result<Tensor> {
    let (b, h, w, c) = x.size4()?;
    Ok(x.f_view([b, h / wh, wh, w / ww, ww, c])?
        .f_permute([0, 1, 3, 2, 4, 5])?
        .f_contiguous()?
        .f_view([-1, wh, ww, c])?)
}

/// `[B * nW, wh, ww, C]` -> `[B, H, W, C]`.
pub(crate) fn window_reverse(windows: &Tensor, wh: i64, ww: i64, h: i64, w: i64) -> Result<Tensor> {
    let c = *windows.size().last().unwrap_or(&0);
    Ok(windows
        .f_view([-1, h / wh, w / ww, wh, ww, c])?
        .f_permute([0, 1, 3, 2, 4, 5])?
        .f_contiguous()?
        .f_view([-1, h, w, c])?)
}

/// The pair-wise relative position index of the tokens of a `wh` x `ww` window,
/// `[wh*ww, wh*ww]` (int64): which row of the bias table each (query, key) pair reads.
pub fn relative_position_index(wh: i64, ww: i64, device: Device) -> Tensor {
    let n = (wh * ww) as usize;
    let mut idx = Vec::with_capacity(n * n);
    for a in 0..n as i64 {
        let (ya, xa) = (a / ww, a % ww);
        for b in 0..n as i64 {
            let (yb, xb) = (b / ww, b % ww);
            idx.push((ya - yb + wh - 1) * (2 * ww - 1) + (xa - xb + ww - 1));
        }
    }
    Tensor::from_slice(&idx)
        .view([n as i64, n as i64])
        .to_device(device)
}

/// The region (0, 1, 2) of each position along one padded axis of length `len` for the
/// shifted-window mask: `[0, len-win)`, `[len-win, len-shift)`, `[len-shift, len)`. With no
/// shift along the axis, the last region (`[-0:]` upstream) covers the whole axis.
fn shift_regions(len: i64, win: i64, shift: i64) -> Vec<i64> {
    (0..len)
        .map(|i| {
            if shift == 0 || i >= len - shift {
                2
            } else if i >= len - win {
                1
            } else {
                0
            }
        })
        .collect()
}

/// The SW-MSA attention mask `[nW, N, N]` for a padded `hp` x `wp` map: 0 between tokens
/// that were neighbours before the cyclic shift, -100 between tokens that were not.
pub(crate) fn shifted_window_mask(
    hp: i64,
    wp: i64,
    window: (i64, i64),
    shift: (i64, i64),
    kind: Kind,
    device: Device,
) -> Result<Tensor> {
    let rh = shift_regions(hp, window.0, shift.0);
    let rw = shift_regions(wp, window.1, shift.1);
    let labels: Vec<f32> = rh
        .iter()
        .flat_map(|&h| rw.iter().map(move |&w| (h * 3 + w) as f32))
        .collect();
    let img = Tensor::from_slice(&labels).f_view([1, hp, wp, 1])?;
    let mw = window_partition(&img, window.0, window.1)?.f_view([-1, window.0 * window.1])?;
    // [nW, 1, N] - [nW, N, 1] -> [nW, N, N]
    let diff = mw.f_unsqueeze(1)?.f_sub(&mw.f_unsqueeze(2)?)?;
    let mask = Tensor::f_zeros_like(&diff)?.f_masked_fill(&diff.f_ne(0.0)?, -100.0)?;
    Ok(mask.f_to_kind(kind)?.f_to_device(device)?)
}

/// Window multi-head self-attention with a relative position bias (timm's
/// `WindowAttention`, mmseg's `WindowMSA`): the math both share.
#[derive(Debug)]
pub(crate) struct WindowAttention {
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    pub(crate) relative_position_bias_table: Tensor,
    pub(crate) num_heads: i64,
    pub(crate) scale: f64,
    pub(crate) attn_drop: f64,
    pub(crate) proj_drop: f64,
}

impl WindowAttention {
    /// `x`: `[B * nW, N, C]` windows; `index`: `[N, N]` bias-table rows; `mask`: `[nW, N, N]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        index: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b_, n, _) = x.size3()?;
        let nh = self.num_heads;
        // [B_, N, 3*A] -> [3, B_, nH, N, hd]
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b_, n, 3, nh, -1])?
            .f_permute([2, 0, 3, 1, 4])?;
        let q = qkv.f_select(0, 0)?.f_mul_scalar(self.scale)?;
        let k = qkv.f_select(0, 1)?;
        let v = qkv.f_select(0, 2)?;
        let attn = q.f_matmul(&k.f_transpose(-2, -1)?)?;
        // [N*N, nH] -> [1, nH, N, N]
        let bias = self
            .relative_position_bias_table
            .f_index_select(0, &index.f_reshape([-1])?)?
            .f_view([n, n, -1])?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?;
        let mut attn = attn.f_add(&bias)?;
        if let Some(m) = mask {
            let nw = m.size()[0];
            attn = attn
                .f_view([-1, nw, nh, n, n])?
                .f_add(&m.f_unsqueeze(1)?.f_unsqueeze(0)?)?
                .f_view([-1, nh, n, n])?;
        }
        let attn = dropout(attn.f_softmax(-1, attn.kind())?, self.attn_drop, train)?;
        let y = attn
            .f_matmul(&v)?
            .f_transpose(1, 2)?
            .f_reshape([b_, n, -1])?;
        dropout(self.proj.forward(&y)?, self.proj_drop, train)
    }
}

/// `out_indices` as timm takes it (a list, negative from the end, or an int `n` for the
/// last `n`) resolved against `n` features, and required to be strictly increasing: timm
/// returns features in network order whatever the order given, while its `out_channels`
/// follows the order given, so any other order would describe the outputs wrongly.
pub(crate) fn resolve_out_indices(raw: Option<&Value>, n: i64) -> Result<Vec<i64>> {
    let bad = |m: String| Err(PluginError::invalid_argument(m));
    let given: Vec<i64> = match raw {
        None | Some(Value::Null) => return Ok((0..n).collect()),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        Some(v) => {
            let k = v.as_i64().unwrap_or(0);
            if !(1..=n).contains(&k) {
                return bad(format!(
                    "`out_indices` as an int takes the last n of the {n} stage features and must be 1..={n}, got {k}"
                ));
            }
            return Ok((n - k..n).collect());
        }
    };
    if given.is_empty() {
        return bad(format!(
            "`out_indices` is empty; give at least one stage index (0..{})",
            n - 1
        ));
    }
    let mut out: Vec<i64> = Vec::with_capacity(given.len());
    for &i in &given {
        let idx = if i < 0 { n + i } else { i };
        if !(0..n).contains(&idx) {
            return bad(format!(
                "`out_indices` contains {i}, but the model has {n} stages: use 0..{} or -{n}..-1",
                n - 1
            ));
        }
        if out.last().is_some_and(|&p| idx <= p) {
            return bad(format!(
                "`out_indices` {given:?} must be strictly increasing (after counting negative ones from the end): \
                 features come out in network order"
            ));
        }
        out.push(idx);
    }
    Ok(out)
}

/// The checkpoint named by `pretrained_cfg_overlay={"file": ...}` (read with
/// `checkpoint::read_state_dict`: .safetensors or torch.save files), or an error saying
/// why `pretrained=true` cannot be honoured.
pub(crate) fn pretrained_file_weights(ctx: &BuildCtx<'_, '_>) -> Result<Vec<(String, Tensor)>> {
    let qualified = ctx.qualified();
    let overlay: Option<Map<String, Value>> = ctx.args.opt("pretrained_cfg_overlay")?;
    let file = overlay
        .as_ref()
        .and_then(|o| o.get("file"))
        .and_then(Value::as_str);
    let Some(file) = file else {
        return Err(PluginError::invalid_argument(format!(
            "`{qualified}` with pretrained=true would download weights from the timm / Hugging Face hub, and \
             terrahost makes no downloads: build it with pretrained=false and pass the checkpoint with \
             `terrahost run --weights <file>`, or give a local file as pretrained_cfg_overlay={{\"file\": \"<path>\"}}"
        )));
    };
    terrahost_plugin_api::checkpoint::read_state_dict(std::path::Path::new(file))
        .map_err(|e| e.context(format_args!("`{qualified}`: pretrained_cfg_overlay.file")))
}

/// Copies `given` into the variables of `vs` with the same names, checking shapes.
pub(crate) fn copy_into(vs: &mut nn::VarStore, given: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (k, v) in vars.iter_mut() {
            let Some(src) = given.get(k) else { continue };
            if src.size() != v.size() {
                return Err(PluginError::invalid_argument(format!(
                    "checkpoint tensor `{k}` has shape {:?}, the model expects {:?}",
                    src.size(),
                    v.size()
                )));
            }
            v.f_copy_(&src.f_to_kind(v.kind())?.f_to_device(v.device())?)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// timm's SwinTransformer.
// ---------------------------------------------------------------------------------------

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
        (0..self.depths.len() as u32)
            .map(|i| self.embed_dim * 2i64.pow(i))
            .collect()
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        let n = self.depths.len();
        if n == 0 || self.num_heads.len() != n || self.window_size.len() != n {
            return bad(format!(
                "`depths` {:?} and `num_heads` {:?} need one entry per stage (at least one stage)",
                self.depths, self.num_heads
            ));
        }
        if self.depths.iter().any(|&d| d < 1) || self.num_heads.iter().any(|&h| h < 1) {
            return bad(format!(
                "every stage needs at least one block and one head: `depths` {:?}, `num_heads` {:?}",
                self.depths, self.num_heads
            ));
        }
        for (name, v) in [
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("patch_size", self.patch_size),
        ] {
            if v < 1 {
                return bad(format!("`{name}` must be at least 1, got {v}"));
            }
        }
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
            for (c, h) in self.feature_channels().iter().zip(&self.num_heads) {
                if c % h != 0 {
                    return bad(format!(
                        "stage width {c} is not divisible by its {h} heads; change `embed_dim`/`num_heads` or give `head_dim`"
                    ));
                }
            }
        } else if self.head_dim.is_some_and(|d| d < 1) {
            return bad(format!(
                "`head_dim` must be at least 1, got {:?}",
                self.head_dim
            ));
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return bad(format!(
                "`mlp_ratio` must be positive, got {}",
                self.mlp_ratio
            ));
        }
        for (name, v) in [
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("`{name}` must be in [0, 1), got {v}"));
            }
        }
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

/// A block's `((window_h, window_w), (shift_h, shift_w))`.
pub type WindowShift = ((i64, i64), (i64, i64));

/// `SwinTransformerBlock`: (shifted) window attention and an MLP, on `[B, H, W, C]`.
#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// The window after clamping to the block's resolution.
    window: (i64, i64),
    shift: (i64, i64),
    proj_drop: f64,
    drop_path: f64,
}

impl Block {
    fn attention(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, h, w, c) = x.size4()?;
        let (wh, ww) = self.window;
        let (sh, sw) = self.shift;
        let has_shift = sh > 0 || sw > 0;
        // Cyclic shift first, then pad to whole windows (timm's order).
        let shifted = if has_shift {
            x.f_roll([-sh, -sw], [1, 2])?
        } else {
            x.shallow_clone()
        };
        let pad_h = (wh - h % wh) % wh;
        let pad_w = (ww - w % ww) % ww;
        let shifted = shifted.f_constant_pad_nd([0, 0, 0, pad_w, 0, pad_h])?;
        let (hp, wp) = (h + pad_h, w + pad_w);
        let windows = window_partition(&shifted, wh, ww)?.f_view([-1, wh * ww, c])?;
        let mask = if has_shift {
            Some(shifted_window_mask(
                hp,
                wp,
                self.window,
                self.shift,
                x.kind(),
                x.device(),
            )?)
        } else {
            None
        };
        let index = relative_position_index(wh, ww, x.device());
        let out = self.attn.forward(&windows, &index, mask.as_ref(), train)?;
        let out = window_reverse(&out.f_view([-1, wh, ww, c])?, wh, ww, hp, wp)?;
        let out = out
            .f_slice(1, 0, h, 1)?
            .f_slice(2, 0, w, 1)?
            .f_contiguous()?;
        Ok(if has_shift {
            out.f_roll([sh, sw], [1, 2])?
        } else {
            out
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x.size4()?;
        let a = self.attention(&self.norm1.forward(x)?, train)?;
        let x = x
            .f_add(&drop_path(a, self.drop_path, train)?)?
            .f_reshape([b, -1, c])?;
        let y = self.fc1.forward(&self.norm2.forward(&x)?)?.f_gelu("none")?;
        let y = dropout(y, self.proj_drop, train)?;
        let y = dropout(self.fc2.forward(&y)?, self.proj_drop, train)?;
        Ok(x.f_add(&drop_path(y, self.drop_path, train)?)?
            .f_reshape([b, h, w, c])?)
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
    blocks: Vec<Block>,
}

/// timm's Swin Transformer as a `features_only` feature extractor: returns the outputs of
/// the stages in `out_indices`, channels-last `[B, H/4/2^i, W/4/2^i, embed_dim*2^i]`.
#[derive(Debug)]
pub struct SwinTransformer {
    cfg: Config,
    proj_w: Tensor,
    proj_b: Tensor,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    out_indices: Vec<i64>,
}

impl SwinTransformer {
    /// Builds the network under `p` with timm's (flattened) parameter names.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.depths.len() as i64;
        let out_indices = resolve_out_indices(Some(&json!(cfg.out_indices)), n)?;
        let last = *out_indices
            .last()
            .expect("resolved out_indices are non-empty");
        let linear_init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let ps = cfg.patch_size;
        let pe = &p / "patch_embed";
        let proj = &pe / "proj";
        let fan_in = (cfg.in_chans * ps * ps) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let proj_w = proj.var(
            "weight",
            &[cfg.embed_dim, cfg.in_chans, ps, ps],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let proj_b = proj.var(
            "bias",
            &[cfg.embed_dim],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let patch_norm = LayerNorm::new(&pe / "norm", cfg.embed_dim);

        let total: i64 = cfg.depths.iter().sum();
        let dims = cfg.feature_channels();
        let mut res = [cfg.img_size[0] / ps, cfg.img_size[1] / ps];
        let mut block_idx = 0i64;
        let mut stages = Vec::new();
        for i in 0..n as usize {
            if i as i64 > last {
                break;
            }
            let sp = &p / format!("layers_{i}");
            let dim = dims[i];
            let downsample = (i > 0).then(|| {
                res = [(res[0] + 1) / 2, (res[1] + 1) / 2];
                let dp = &sp / "downsample";
                PatchMerging {
                    norm: LayerNorm::new(&dp / "norm", 4 * dims[i - 1]),
                    reduction: Linear::new(
                        &dp / "reduction",
                        4 * dims[i - 1],
                        dim,
                        false,
                        linear_init,
                    ),
                }
            });
            let heads = cfg.num_heads[i];
            let head_dim = cfg.head_dim.unwrap_or(dim / heads);
            let attn_dim = head_dim * heads;
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
                let ap = &bp / "attn";
                let attn = WindowAttention {
                    relative_position_bias_table: ap.var(
                        "relative_position_bias_table",
                        &[(2 * win.0 - 1) * (2 * win.1 - 1), heads],
                        Init::Randn {
                            mean: 0.0,
                            stdev: 0.02,
                        },
                    ),
                    qkv: Linear::new(&ap / "qkv", dim, 3 * attn_dim, cfg.qkv_bias, linear_init),
                    proj: Linear::new(&ap / "proj", attn_dim, dim, true, linear_init),
                    num_heads: heads,
                    scale: (head_dim as f64).powf(-0.5),
                    attn_drop: cfg.attn_drop_rate,
                    proj_drop: cfg.proj_drop_rate,
                };
                let hidden = (dim as f64 * cfg.mlp_ratio) as i64;
                let dpr = if total > 1 {
                    (cfg.drop_path_rate * block_idx as f64 / (total - 1) as f64) as f32 as f64
                } else {
                    0.0
                };
                blocks.push(Block {
                    norm1: LayerNorm::new(&bp / "norm1", dim),
                    attn,
                    norm2: LayerNorm::new(&bp / "norm2", dim),
                    fc1: Linear::new(&bp / "mlp" / "fc1", dim, hidden, true, linear_init),
                    fc2: Linear::new(&bp / "mlp" / "fc2", hidden, dim, true, linear_init),
                    window: win,
                    shift,
                    proj_drop: cfg.proj_drop_rate,
                    drop_path: dpr,
                });
                block_idx += 1;
            }
            stages.push(Stage { downsample, blocks });
        }
        Ok(Self {
            cfg: cfg.clone(),
            proj_w,
            proj_b,
            patch_norm,
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
            .map(|s| s.blocks.iter().map(|b| (b.window, b.shift)).collect())
            .collect()
    }

    /// Runs the network on `x` (`[B, in_chans, H, W]`) and returns the selected features.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let size = x.size();
        if size.len() != 4 {
            return Err(PluginError::forward_failed(format!(
                "a Swin Transformer takes one [B, C, H, W] image batch, got a tensor of shape {size:?}"
            )));
        }
        let (c, h, w) = (size[1], size[2], size[3]);
        if c != self.cfg.in_chans {
            return Err(PluginError::forward_failed(format!(
                "the input has {c} channels but the model was built with in_chans={}; build it with in_chans={c}",
                self.cfg.in_chans
            )));
        }
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
        let y = x.f_conv2d(
            &self.proj_w,
            Some(&self.proj_b),
            [ps, ps],
            [0, 0],
            [1, 1],
            1,
        )?;
        let mut y = self.patch_norm.forward(&y.f_permute([0, 2, 3, 1])?)?;
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

    /// Loads a timm Swin checkpoint (the full classifier model's state_dict) into `vs`, as
    /// timm's `checkpoint_filter_fn` and `load_pretrained` do: `model` / `state_dict`
    /// nesting is already unwrapped by the reader, `module.` prefixes are removed,
    /// `relative_position_index` / `attn_mask` buffers are skipped, original Microsoft
    /// checkpoints (downsample at the end of a stage) are renumbered, and a 3-channel patch
    /// embedding is adapted to `in_chans`. The classifier, the final norm and the stages
    /// this extractor leaves out are dropped; anything else missing or unexpected is an
    /// error (timm loads strictly). Resizing a bias table or a patch embedding to another
    /// window or patch size is not supported (a shape error names the tensor).
    pub fn load_pretrained(
        &self,
        vs: &mut nn::VarStore,
        weights: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let old_layout = weights.iter().any(|(k, _)| {
            k.trim_start_matches("module.") == "layers.0.downsample.reduction.weight"
        });
        let built = self.stages.len();
        let mut given = BTreeMap::new();
        for (k, v) in weights {
            let mut k = k.trim_start_matches("module.").to_owned();
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
        let vars = vs.variables();
        let first = "patch_embed.proj.weight";
        if let (Some(w), Some(t)) = (given.get(first), vars.get(first)) {
            if w.size() != t.size() && w.size().get(1) == Some(&3) {
                let adapted = super::resnet::adapt_input_conv(self.cfg.in_chans, w)?;
                given.insert(first.to_owned(), adapted);
            }
        }
        let missing: Vec<&String> = vars.keys().filter(|k| !given.contains_key(*k)).collect();
        let unexpected: Vec<&String> = given.keys().filter(|k| !vars.contains_key(*k)).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "the checkpoint does not fit this Swin Transformer: missing keys {missing:?}, unexpected keys {unexpected:?}"
            )));
        }
        copy_into(vs, &given)
    }
}

impl Model for SwinTransformer {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => self.features(x, train),
            _ => Err(PluginError::invalid_argument(format!(
                "a Swin Transformer backbone takes exactly one input tensor [B, {}, H, W], got {}",
                self.cfg.in_chans,
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        let all = self.cfg.feature_channels();
        self.out_indices.iter().map(|&i| all[i as usize]).collect()
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

/// `img_size` as timm takes it: an int or `[h, w]`.
fn img_size_arg(ctx: &BuildCtx<'_, '_>) -> Result<[i64; 2]> {
    match ctx.args.raw("img_size") {
        Some(Value::Array(a)) if a.len() == 2 => {
            let v: Vec<i64> = ctx.args.get("img_size")?;
            Ok([v[0], v[1]])
        }
        Some(Value::Array(_)) => Err(PluginError::invalid_argument(
            "`img_size` must be an int or [h, w]".to_string(),
        )),
        _ => {
            let s: i64 = ctx.args.get("img_size")?;
            Ok([s, s])
        }
    }
}

fn build(ctx: &BuildCtx<'_, '_>, base: Config) -> Result<terrahost_plugin_api::ModuleBox> {
    let a = &ctx.args;
    let features_only: bool = a.get("features_only")?;
    a.ensure(
        features_only,
        "features_only",
        "must be true: terrahost backbones are feature extractors returning the stage outputs (a classifier \
         Swin is not available)",
    )?;
    let depths: Vec<i64> = a.get_or("depths", base.depths.clone())?;
    let num_heads: Vec<i64> = a.get_or("num_heads", base.num_heads.clone())?;
    let window = a.raw("window_size").cloned().unwrap_or(json!(7));
    let dynamic: bool = a.get("dynamic_img_size")?;
    let strict: bool = a.get("strict_img_size")?;
    let n = depths.len();
    let cfg = Config {
        img_size: img_size_arg(ctx)?,
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
        out_indices: resolve_out_indices(a.raw("out_indices"), n as i64)?,
        depths,
        num_heads,
    };
    let drop_rate: f64 = a.get("drop_rate")?;
    a.ensure(
        (0.0..1.0).contains(&drop_rate),
        "drop_rate",
        format!("must be in [0, 1), got {drop_rate}"),
    )?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = SwinTransformer::new(vs.root(), &cfg)
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    if a.get::<bool>("pretrained")? {
        let weights = pretrained_file_weights(ctx)?;
        model
            .load_pretrained(&mut vs, weights)
            .map_err(|e| e.context(format_args!("`{}` pretrained weights", ctx.qualified())))?;
    }
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

fn preset_entry(name: &'static str, doc: &str) -> Entry {
    let base = Config::named(name).expect("a Swin entry is registered only for a known preset");
    let d = base.clone();
    Entry::new(name, doc, move |ctx| build(ctx, base.clone()))
        .opt("features_only", ParamType::BOOL, json!(true), "return the stage outputs (only true is supported)")
        .opt("pretrained", ParamType::BOOL, json!(false), "load pretrained weights (needs pretrained_cfg_overlay.file; no downloads)")
        .opt("pretrained_cfg_overlay", ParamType::DICT, Value::Null, "overrides of the pretrained config; `file` names a local checkpoint (.safetensors or torch.save)")
        .opt("img_size", ParamType::INT_OR_INT_LIST, json!(224), "input size, an int or [h, w]; fixes each stage's resolution and window clamping")
        .opt("patch_size", ParamType::INT, json!(d.patch_size), "patch size of the patch embedding")
        .opt("in_chans", ParamType::INT, json!(d.in_chans), "input channels")
        .opt("embed_dim", ParamType::INT, json!(d.embed_dim), "width of the first stage (doubled at each later stage)")
        .opt("depths", ParamType::INT_LIST, json!(d.depths), "blocks per stage")
        .opt("num_heads", ParamType::INT_LIST, json!(d.num_heads), "attention heads per stage")
        .opt("head_dim", ParamType::INT, Value::Null, "channels per head (default: stage width / heads)")
        .opt("window_size", ParamType::ANY, json!(7), "attention window: an int, [h, w], or one per stage")
        .opt("always_partition", ParamType::BOOL, json!(false), "always partition and shift, even when a window covers the whole map")
        .opt("strict_img_size", ParamType::BOOL, json!(true), "require inputs of exactly img_size")
        .opt("dynamic_img_size", ParamType::BOOL, json!(false), "accept any multiple of the patch size (same as strict_img_size=false)")
        .opt("mlp_ratio", ParamType::FLOAT, json!(d.mlp_ratio), "MLP hidden width relative to the block width")
        .opt("qkv_bias", ParamType::BOOL, json!(d.qkv_bias), "bias in the qkv projection")
        .opt("drop_rate", ParamType::FLOAT, json!(0.0), "classifier dropout; no effect on a features-only model, as in timm")
        .opt("proj_drop_rate", ParamType::FLOAT, json!(d.proj_drop_rate), "dropout after the attention projection and in the MLP")
        .opt("attn_drop_rate", ParamType::FLOAT, json!(d.attn_drop_rate), "dropout of the attention weights")
        .opt("drop_path_rate", ParamType::FLOAT, json!(d.drop_path_rate), "stochastic depth rate, linear over the blocks (train mode only)")
        .opt("out_indices", ParamType::INT_OR_INT_LIST, json!(d.out_indices), "stages to return (negative from the end; an int n = the last n)")
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

#[cfg(test)]
pub(crate) mod tests {
    //! Expected values were printed from the reference Python (timm 1.0.31 through
    //! TerraTorch 1.2.11's `BACKBONE_REGISTRY.build("timm_<name>", features_only=True)`).
    use super::*;
    use terrahost_plugin_api::sdk::{DynModule, NoHost};
    use terrahost_plugin_api::{BuildRequest, ErrorKind};

    pub(crate) fn build(name: &str, args: Value) -> Result<DynModule> {
        let sources = crate::plugin_sources().unwrap();
        let src = sources
            .iter()
            .find(|s| s.registry.as_str() == "backbone" && s.prefix.as_str() == "timm")
            .unwrap();
        let req = BuildRequest::new(args.as_object().unwrap(), None);
        let m = src
            .source
            .build(name.into(), req, NoHost::handle())
            .into_result()?;
        Ok(DynModule::new(name, m))
    }

    fn n_params(m: &DynModule) -> i64 {
        m.module()
            .named_parameters()
            .iter()
            .map(|nt| nt.tensor.with(|t| t.numel() as i64))
            .sum()
    }

    #[test]
    fn parity_timm_swin_tiny() {
        terrahost_testkit::check_fixture(
            crate::plugin_sources().unwrap(),
            "timm_swin_tiny_patch4_window7_224",
        );
    }

    #[test]
    fn parity_timm_swin_small_nonsquare_windows_head_dim() {
        terrahost_testkit::check_fixture(
            crate::plugin_sources().unwrap(),
            "timm_swin_small_patch4_window7_224",
        );
    }

    #[test]
    fn parity_timm_swin_base_dynamic_img_size() {
        terrahost_testkit::check_fixture(
            crate::plugin_sources().unwrap(),
            "timm_swin_base_patch4_window7_224",
        );
    }

    #[test]
    fn parity_timm_swin_always_partition() {
        terrahost_testkit::check_fixture(
            crate::plugin_sources().unwrap(),
            "timm_swin_tiny_always_partition",
        );
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
    fn relative_position_index_matches_timm() {
        // get_relative_position_index(2, 3) from timm.
        let idx = relative_position_index(2, 3, Device::Cpu);
        let want = Tensor::from_slice(&[
            7i64, 6, 5, 2, 1, 0, 8, 7, 6, 3, 2, 1, 9, 8, 7, 4, 3, 2, 12, 11, 10, 7, 6, 5, 13, 12,
            11, 8, 7, 6, 14, 13, 12, 9, 8, 7,
        ])
        .view([6, 6]);
        assert!(idx.equal(&want), "{idx}");
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
        let dir = std::env::temp_dir().join(format!("timm-swin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("swin.safetensors");
        Tensor::write_safetensors(&ck, &file).unwrap();
        let args = json!({"pretrained": true, "pretrained_cfg_overlay": {"file": file.to_str().unwrap()},
            "img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]});
        let m = build("swin_tiny_patch4_window7_224", args).unwrap();
        let sd = m.state_dict();
        let get = |k: &str| sd.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
        let src = |k: &str| ck.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
        assert!(get("layers_1.downsample.reduction.weight")
            .equal(&src("module.layers.0.downsample.reduction.weight")));
        assert!(get("layers_3.blocks.0.mlp.fc2.bias")
            .equal(&src("module.layers.3.blocks.0.mlp.fc2.bias")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
