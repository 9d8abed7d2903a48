//! Mirrors the pieces of `timm/layers/` (timm 1.0.31) every family here uses: `LayerNorm`
//! / `LayerNorm2d` (`norm.py`), `Mlp` (`mlp.py`), `DropPath` (`drop.py`), a plain
//! `Conv2d`, and the stochastic-depth schedule of `calculate_drop_path_rates`, plus the
//! `nn.Linear` / `nn.Dropout` of PyTorch.
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::packed_linear::PackedLinear;
use terrahost_plugin_api::Result;

/// timm's `LayerNorm` default epsilon (`timm/layers/norm.py`).
pub(crate) const LN_EPS: f64 = 1e-6;

/// `nn.LayerNorm`'s default epsilon (mmseg / Swin).
pub(crate) const TORCH_LN_EPS: f64 = 1e-5;

/// The truncated-normal (std 0.02) weight init timm gives linear layers, tokens and
/// relative position bias tables.
pub(crate) fn trunc_normal() -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

/// PyTorch's default init of a convolution's or linear layer's weight and bias: uniform
/// in +-1/sqrt(fan_in).
pub(crate) fn fan_in_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A LayerNorm over the last dimension, with keys `weight` / `bias`.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm of width `dim` under `p` (weight 1, bias 0).
    pub(crate) fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.var("bias", &[dim], Init::Const(0.0)),
            dim,
            eps,
        }
    }

    /// Normalises the last dimension.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }

    /// `LayerNorm2d`: normalises the channels of an NCHW map.
    pub(crate) fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward(&x.f_permute([0, 2, 3, 1])?)?;
        Ok(y.f_permute([0, 3, 1, 2])?)
    }
}

/// `nn.Linear` (weight `[out, in]`, optional bias); without autograd it runs on
/// oneDNN's packed weight ([`PackedLinear`]).
#[derive(Debug)]
pub(crate) struct Linear {
    inner: PackedLinear,
}

impl Linear {
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
            inner: PackedLinear::from_parts(
                p.var("weight", &[c_out, c_in], w),
                bias.then(|| p.var("bias", &[c_out], b)),
            ),
        }
    }

    /// A linear layer with timm's init: truncated normal weight, zero bias.
    pub(crate) fn timm(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Self {
        Self::with_inits(p, c_in, c_out, bias, trunc_normal(), Init::Const(0.0))
    }

    /// A linear layer with PyTorch's default init (weight and bias uniform in
    /// +-1/sqrt(fan_in)).
    pub(crate) fn torch(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Self {
        let u = fan_in_uniform(c_in);
        Self::with_inits(p, c_in, c_out, bias, u, u)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x))
    }

    /// `gelu(linear(x))`, exact GELU, fused into the matmul on the packed path.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward_gelu(x))
    }
}

/// timm's `Mlp` (and mmseg's `FFN`, which computes the same): fc1, exact GELU, dropout,
/// fc2, dropout. The two layers are built by the caller, so each family keeps its keys.
#[derive(Debug)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
    drop: f64,
}

impl Mlp {
    /// An MLP of the given layers.
    pub(crate) fn new(fc1: Linear, fc2: Linear, drop: f64) -> Self {
        Self { fc1, fc2, drop }
    }

    /// timm's `Mlp(dim, hidden)` under `p` (`fc1` / `fc2`), with timm's init.
    pub(crate) fn timm(p: nn::Path, dim: i64, hidden: i64, drop: f64) -> Self {
        Self::new(
            Linear::timm(&p / "fc1", dim, hidden, true),
            Linear::timm(&p / "fc2", hidden, dim, true),
            drop,
        )
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.fc1.forward_gelu(x)?;
        let y = dropout(y, self.drop, train)?;
        dropout(self.fc2.forward(&y)?, self.drop, train)
    }
}

/// A 2-D convolution with square kernel, stride, padding and dilation.
#[derive(Debug)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

/// The geometry of a [`Conv2d`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvSpec {
    pub(crate) c_in: i64,
    pub(crate) c_out: i64,
    pub(crate) kernel: i64,
    pub(crate) stride: i64,
    pub(crate) padding: i64,
    pub(crate) dilation: i64,
    pub(crate) groups: i64,
}

impl ConvSpec {
    /// A `k` x `k` convolution from `c_in` to `c_out` channels, stride 1, no padding.
    pub(crate) fn new(c_in: i64, c_out: i64, kernel: i64) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }

    /// The same with stride `s`.
    pub(crate) fn stride(self, stride: i64) -> Self {
        Self { stride, ..self }
    }

    /// The same with padding `p` on every side.
    pub(crate) fn padding(self, padding: i64) -> Self {
        Self { padding, ..self }
    }

    /// The same with dilation `d`.
    pub(crate) fn dilation(self, dilation: i64) -> Self {
        Self { dilation, ..self }
    }

    /// The same with `g` groups.
    pub(crate) fn groups(self, groups: i64) -> Self {
        Self { groups, ..self }
    }
}

impl Conv2d {
    /// A convolution under `p` whose weight is drawn with `w` and whose bias (when `b`
    /// is given) with `b`.
    pub(crate) fn new(p: nn::Path, s: ConvSpec, w: Init, b: Option<Init>) -> Self {
        let k = s.kernel;
        Self {
            weight: p.var("weight", &[s.c_out, s.c_in / s.groups, k, k], w),
            bias: b.map(|b| p.var("bias", &[s.c_out], b)),
            stride: s.stride,
            padding: s.padding,
            dilation: s.dilation,
            groups: s.groups,
        }
    }

    /// A patch embedding (`PatchEmbed.proj`): a `kernel` x `kernel` convolution at
    /// `stride` with PyTorch's default init, and a bias when `bias`.
    pub(crate) fn patchify(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        bias: bool,
    ) -> Self {
        let init = fan_in_uniform(c_in * kernel * kernel);
        let spec = ConvSpec::new(c_in, c_out, kernel).stride(stride);
        Self::new(p, spec, init, bias.then_some(init))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [self.dilation, self.dilation],
            self.groups,
        )?)
    }
}

/// timm's `drop_path`: zeroes whole samples of a residual branch with probability `p`
/// and rescales the survivors by 1 / (1 - p); the identity outside training.
pub(crate) fn drop_path(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p == 0.0 || !train {
        return Ok(x);
    }
    let keep = 1.0 - p;
    // [B, 1, ..., 1] mask, one draw per sample.
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size().first().copied().unwrap_or(1);
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

/// The stochastic-depth rate of block `i` of `total`: `linspace(0, rate, total)[i]`, as
/// `calculate_drop_path_rates` spreads it over all blocks of a network.
pub(crate) fn drop_path_rate(rate: f64, i: i64, total: i64) -> f64 {
    if total > 1 {
        rate * i as f64 / (total - 1) as f64
    } else {
        0.0
    }
}

/// A residual branch optionally scaled by a LayerScale `gamma` (broadcast over the last
/// dimension).
pub(crate) fn layer_scale(y: Tensor, gamma: Option<&Tensor>) -> Result<Tensor> {
    Ok(match gamma {
        Some(g) => y.f_mul(g)?,
        None => y,
    })
}
