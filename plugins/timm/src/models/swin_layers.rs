//! The Swin Transformer maths shared by timm's `SwinTransformer` (`swin.rs`) and the
//! mmseg-style Swin of TerraTorch's Prithvi Swin (`prithvi_swin.rs`): window partition and
//! reverse, the relative position index, the shifted-window attention mask, window
//! attention with a relative position bias, and the (shifted-)window transformer block.
//! Mirrors `timm/models/swin_transformer.py` (`window_partition`, `window_reverse`,
//! `get_relative_position_index`, `WindowAttention`, `SwinTransformerBlock`) and mmseg's
//! `WindowMSA`, `ShiftWindowMSA`, `SwinBlock` and `FFN` as TerraTorch copies them
//! (`terratorch/models/backbones/swin_encoder_decoder.py`). The two compute the same;
//! they differ in key names, initialisation, whether the index is a stored buffer, and
//! the order of padding and cyclic shift, all of which [`Flavour`] decides.
use super::layers::{
    drop_path, dropout, trunc_normal, Conv2d, LayerNorm, Linear, Mlp, TORCH_LN_EPS,
};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// Which implementation's key names, initialisation and order of operations a block
/// follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// timm: `attn.*`, `mlp.fc1` / `mlp.fc2`, truncated-normal init, the index computed
    /// on the fly (a non-persistent buffer), cyclic shift before padding.
    Timm,
    /// mmseg: `attn.w_msa.*`, `ffn.layers.0.0` / `ffn.layers.1`, PyTorch's default init and
    /// a zero bias table, the index a stored buffer, padding before the cyclic shift.
    MMSeg,
}

impl Flavour {
    fn linear(self, p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Linear {
        match self {
            Self::Timm => Linear::timm(p, c_in, c_out, bias),
            Self::MMSeg => Linear::torch(p, c_in, c_out, bias),
        }
    }

    /// A linear layer of a patch merging (`downsample.reduction`, no bias).
    pub(crate) fn reduction(self, p: nn::Path, c_in: i64, c_out: i64) -> Linear {
        self.linear(p, c_in, c_out, false)
    }
}

/// The channels of each of `n` stages: `embed_dim * 2^i` (every patch merging doubles them).
pub(crate) fn stage_widths(embed_dim: i64, n: usize) -> Vec<i64> {
    (0..n as u32).map(|i| embed_dim * 2i64.pow(i)).collect()
}

/// The stage checks both Swins make: one `depths` and `num_heads` entry per stage, at
/// least one stage, and at least one block and one head in each.
pub(crate) fn check_stages(depths: &[i64], num_heads: &[i64]) -> Result<()> {
    if depths.is_empty() || num_heads.len() != depths.len() {
        return Err(PluginError::invalid_argument(format!(
            "`depths` {depths:?} and `num_heads` {num_heads:?} need one entry per stage (at least one stage)"
        )));
    }
    if depths.iter().any(|&d| d < 1) || num_heads.iter().any(|&h| h < 1) {
        return Err(PluginError::invalid_argument(format!(
            "every stage needs at least one block and one head: `depths` {depths:?}, `num_heads` {num_heads:?}"
        )));
    }
    Ok(())
}

/// Every stage width (`embed_dim * 2^i`) must split evenly into its heads; `fix` says how
/// to change the arguments.
pub(crate) fn check_heads_divide(embed_dim: i64, num_heads: &[i64], fix: &str) -> Result<()> {
    let widths = stage_widths(embed_dim, num_heads.len());
    match widths.iter().zip(num_heads).find(|(c, h)| *c % *h != 0) {
        Some((c, h)) => Err(PluginError::invalid_argument(format!(
            "stage width {c} is not divisible by its {h} heads; {fix}"
        ))),
        None => Ok(()),
    }
}

/// The patch embedding of both Swins: a patchify convolution (`proj` in timm,
/// `projection` in mmseg) and a LayerNorm (`norm`), channels-last out.
#[derive(Debug)]
pub(crate) struct PatchEmbed {
    proj: Conv2d,
    norm: LayerNorm,
}

impl PatchEmbed {
    /// The embedding under `p` (`patch_embed`), its convolution under `p / proj_name`.
    pub(crate) fn new(
        p: nn::Path,
        proj_name: &str,
        in_chans: i64,
        embed_dim: i64,
        kernel: i64,
        stride: i64,
    ) -> Self {
        Self {
            proj: Conv2d::patchify(&p / proj_name, in_chans, embed_dim, kernel, stride, true),
            norm: LayerNorm::new(&p / "norm", embed_dim, TORCH_LN_EPS),
        }
    }

    /// `[B, C, H, W] -> [B, H/stride, W/stride, E]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.proj.forward(x)?.f_permute([0, 2, 3, 1])?;
        self.norm.forward(&y)
    }
}

/// The shape of a Swin block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockSpec {
    /// Block width.
    pub(crate) dim: i64,
    /// Attention heads.
    pub(crate) heads: i64,
    /// Channels per head.
    pub(crate) head_dim: i64,
    /// Attention scale (usually `head_dim ** -0.5`).
    pub(crate) scale: f64,
    /// Window `(h, w)` after clamping to the block's resolution.
    pub(crate) window: (i64, i64),
    /// Cyclic shift `(h, w)`; zero for a plain window block.
    pub(crate) shift: (i64, i64),
    /// Bias in the qkv projection.
    pub(crate) qkv_bias: bool,
    /// Hidden width of the MLP.
    pub(crate) mlp_hidden: i64,
    /// Dropout on the attention weights.
    pub(crate) attn_drop: f64,
    /// Dropout after the attention projection and in the MLP.
    pub(crate) proj_drop: f64,
    /// Stochastic depth of both residual branches.
    pub(crate) drop_path: f64,
}

/// A block's `((window_h, window_w), (shift_h, shift_w))`.
pub type WindowShift = ((i64, i64), (i64, i64));

/// `[B, H, W, C]` -> `[B * nW, wh, ww, C]` (H, W multiples of the window).
fn window_partition(x: &Tensor, wh: i64, ww: i64) -> Result<Tensor> {
    let (b, h, w, c) = x.size4()?;
    Ok(x.f_view([b, h / wh, wh, w / ww, ww, c])?
        .f_permute([0, 1, 3, 2, 4, 5])?
        .f_contiguous()?
        .f_view([-1, wh, ww, c])?)
}

/// `[B * nW, wh, ww, C]` -> `[B, H, W, C]`.
fn window_reverse(windows: &Tensor, wh: i64, ww: i64, h: i64, w: i64) -> Result<Tensor> {
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
fn shifted_window_mask(
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
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    relative_position_bias_table: Tensor,
    /// The stored `relative_position_index` buffer ([`Flavour::MMSeg`]); computed on the
    /// fly when `None`.
    index: Option<Tensor>,
    num_heads: i64,
    scale: f64,
    attn_drop: f64,
    proj_drop: f64,
}

impl WindowAttention {
    /// The attention of a block with `spec` under `p` (`attn` or `attn.w_msa`).
    fn new(p: nn::Path, flavour: Flavour, spec: &BlockSpec) -> Self {
        let (wh, ww) = spec.window;
        let attn_dim = spec.head_dim * spec.heads;
        // The index comes first: mmseg registers it before the bias table.
        let index = (flavour == Flavour::MMSeg).then(|| {
            p.add(
                "relative_position_index",
                relative_position_index(wh, ww, Device::Cpu),
                false,
            )
        });
        let table_init = match flavour {
            Flavour::Timm => trunc_normal(),
            Flavour::MMSeg => Init::Const(0.0),
        };
        Self {
            relative_position_bias_table: p.var(
                "relative_position_bias_table",
                &[(2 * wh - 1) * (2 * ww - 1), spec.heads],
                table_init,
            ),
            qkv: flavour.linear(&p / "qkv", spec.dim, 3 * attn_dim, spec.qkv_bias),
            proj: flavour.linear(&p / "proj", attn_dim, spec.dim, true),
            index,
            num_heads: spec.heads,
            scale: spec.scale,
            attn_drop: spec.attn_drop,
            proj_drop: spec.proj_drop,
        }
    }

    /// `x`: `[B * nW, N, C]` windows of `window`; `mask`: `[nW, N, N]`.
    fn forward(
        &self,
        x: &Tensor,
        window: (i64, i64),
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b_, n, _) = x.size3()?;
        let computed;
        let index = match &self.index {
            Some(i) => i,
            None => {
                computed = relative_position_index(window.0, window.1, x.device());
                &computed
            }
        };
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

/// `SwinTransformerBlock` / mmseg's `SwinBlock`: (shifted) window attention and an MLP,
/// each pre-normed with a residual connection, on a channels-last `[B, H, W, C]` map.
#[derive(Debug)]
pub(crate) struct SwinBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    flavour: Flavour,
    window: (i64, i64),
    shift: (i64, i64),
    drop_path: f64,
}

impl SwinBlock {
    /// A block under `p` (`blocks.{j}`) with `flavour`'s key names and init.
    pub(crate) fn new(p: nn::Path, flavour: Flavour, spec: &BlockSpec) -> Self {
        let (attn_path, fc1, fc2) = match flavour {
            Flavour::Timm => (&p / "attn", &p / "mlp" / "fc1", &p / "mlp" / "fc2"),
            Flavour::MMSeg => (
                &p / "attn" / "w_msa",
                &p / "ffn" / "layers" / 0 / 0,
                &p / "ffn" / "layers" / 1,
            ),
        };
        let attn = WindowAttention::new(attn_path, flavour, spec);
        let (dim, hidden) = (spec.dim, spec.mlp_hidden);
        Self {
            norm1: LayerNorm::new(&p / "norm1", dim, TORCH_LN_EPS),
            attn,
            norm2: LayerNorm::new(&p / "norm2", dim, TORCH_LN_EPS),
            mlp: Mlp::new(
                flavour.linear(fc1, dim, hidden, true),
                flavour.linear(fc2, hidden, dim, true),
                spec.proj_drop,
            ),
            flavour,
            window: spec.window,
            shift: spec.shift,
            drop_path: spec.drop_path,
        }
    }

    /// The block's window and shift.
    pub(crate) fn window_shift(&self) -> WindowShift {
        (self.window, self.shift)
    }

    /// Window attention over `x` (`[B, H, W, C]`, already normed): padding to whole
    /// windows and the cyclic shift (in the flavour's order), partition, attention,
    /// reverse, and both undone.
    fn attention(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, h, w, c) = x.size4()?;
        let (wh, ww) = self.window;
        let (sh, sw) = self.shift;
        let has_shift = sh > 0 || sw > 0;
        let pad_h = (wh - h % wh) % wh;
        let pad_w = (ww - w % ww) % ww;
        let (hp, wp) = (h + pad_h, w + pad_w);
        let pad = |t: &Tensor| t.f_constant_pad_nd([0, 0, 0, pad_w, 0, pad_h]);
        let roll = |t: &Tensor, back: bool| -> Result<Tensor> {
            Ok(match (has_shift, back) {
                (false, _) => t.shallow_clone(),
                (true, false) => t.f_roll([-sh, -sw], [1, 2])?,
                (true, true) => t.f_roll([sh, sw], [1, 2])?,
            })
        };
        let crop = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_slice(1, 0, h, 1)?.f_slice(2, 0, w, 1)?.f_contiguous()?)
        };
        let pads_first = self.flavour == Flavour::MMSeg;
        let shifted = if pads_first {
            roll(&pad(x)?, false)?
        } else {
            pad(&roll(x, false)?)?
        };
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
        let out = self
            .attn
            .forward(&windows, self.window, mask.as_ref(), train)?;
        let out = window_reverse(&out.f_view([-1, wh, ww, c])?, wh, ww, hp, wp)?;
        if pads_first {
            crop(&roll(&out, true)?)
        } else {
            roll(&crop(&out)?, true)
        }
    }

    /// `[B, H, W, C] -> [B, H, W, C]`.
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x.size4()?;
        let a = self.attention(&self.norm1.forward(x)?, train)?;
        let x = x
            .f_add(&drop_path(a, self.drop_path, train)?)?
            .f_reshape([b, -1, c])?;
        let y = self.mlp.forward(&self.norm2.forward(&x)?, train)?;
        Ok(x.f_add(&drop_path(y, self.drop_path, train)?)?
            .f_reshape([b, h, w, c])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
