//! Normalisation layers as PyTorch and timm initialise them: `LayerNorm` (timm's
//! `timm/layers/norm.py` `LayerNorm` / `LayerNorm2d`, PyTorch's `nn.LayerNorm`, and the
//! bias-free variant of TerraMind's `LayerNorm(bias=False)`) and `nn.BatchNorm2d`.
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::Result;

/// timm's `LayerNorm` default epsilon (`timm/layers/norm.py`).
pub const LN_EPS: f64 = 1e-6;

/// `nn.LayerNorm`'s default epsilon (mmseg / Swin).
pub const TORCH_LN_EPS: f64 = 1e-5;

/// A LayerNorm over the last dimension, with keys `weight` / `bias`.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm of width `dim` under `p` (weight 1, bias 0).
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.var("bias", &[dim], Init::Const(0.0)),
            dim,
            eps,
        }
    }

    /// A LayerNorm whose bias is a zero buffer, not a parameter (`LayerNorm(bias=False)`
    /// as TerraMind writes it: the key `bias` exists in its state_dict as a buffer).
    pub fn without_bias(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.zeros_no_train("bias", &[dim]),
            dim,
            eps,
        }
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }

    /// `LayerNorm2d`: normalises the channels of an NCHW map.
    pub fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward(&x.f_permute([0, 2, 3, 1])?)?;
        Ok(y.f_permute([0, 3, 1, 2])?)
    }
}

/// `nn.BatchNorm2d(c, eps, momentum)` as PyTorch initialises it (weight 1, bias 0;
/// tch's default draws the weight at random). Its running statistics are buffers.
pub fn batch_norm2d(p: nn::Path, c: i64, eps: f64, momentum: f64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            eps,
            momentum,
            ws_init: nn::Init::Const(1.),
            bs_init: nn::Init::Const(0.),
            ..Default::default()
        },
    )
}
