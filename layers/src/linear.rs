//! `nn.Linear` and timm's `Mlp` (`timm/layers/mlp.py`), with the initialisations
//! PyTorch and timm give them. Without autograd a linear layer can run on a packed
//! weight ([`PackedLinear`]: MKL's by default, oneDNN's with `TERRAHOST_PACKED_LINEAR=onednn`).
use crate::drop::dropout;
use crate::packed_linear::PackedLinear;
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::Result;

/// The truncated-normal (std 0.02) weight init timm gives linear layers, tokens and
/// relative position bias tables.
pub fn trunc_normal() -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

/// PyTorch's default init of a convolution's or linear layer's weight and bias: uniform
/// in +-1/sqrt(fan_in).
pub fn fan_in_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// Xavier-uniform (Glorot) init of a `[out, in]` weight: uniform in
/// +-sqrt(6 / (in + out)), as `nn.init.xavier_uniform_`.
pub fn xavier_uniform(c_in: i64, c_out: i64) -> Init {
    let bound = (6.0 / (c_in + c_out) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Linear` (weight `[out, in]`, optional bias); without autograd it can run on a
/// packed weight ([`PackedLinear`]).
#[derive(Debug)]
pub struct Linear {
    inner: PackedLinear,
}

impl Linear {
    /// A linear layer whose weight and bias are drawn with `w` and `b`.
    pub fn with_inits(p: nn::Path, c_in: i64, c_out: i64, bias: bool, w: Init, b: Init) -> Self {
        Self {
            inner: PackedLinear::from_parts(
                p.var("weight", &[c_out, c_in], w),
                bias.then(|| p.var("bias", &[c_out], b)),
            ),
        }
    }

    /// A linear layer with timm's init: truncated normal weight, zero bias.
    pub fn timm(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Self {
        Self::with_inits(p, c_in, c_out, bias, trunc_normal(), Init::Const(0.0))
    }

    /// A linear layer with PyTorch's default init (weight and bias uniform in
    /// +-1/sqrt(fan_in)).
    pub fn torch(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Self {
        let u = fan_in_uniform(c_in);
        Self::with_inits(p, c_in, c_out, bias, u, u)
    }

    /// A linear layer with Xavier-uniform weight and zero bias (the `_init_weights` of
    /// MAE-style transformers: Prithvi, TerraMind). The weight is filled on all threads
    /// ([`crate::init::uniform_`]): these layers are most of a 300M-parameter model.
    pub fn xavier(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Self {
        let mut lin = Self::with_inits(p, c_in, c_out, bias, Init::Const(0.0), Init::Const(0.0));
        let bound = (6.0 / (c_in + c_out) as f64).sqrt();
        let mut w = lin.inner.weight().shallow_clone();
        crate::init::uniform_(&mut w, -bound, bound);
        lin.inner = PackedLinear::from_parts(w, lin.inner.bias().map(Tensor::shallow_clone));
        lin
    }

    /// The layer without its bias, and the bias (still registered where it was), for a
    /// caller that adds the bias itself (DINOv3's masked qkv bias).
    pub fn split_bias(self) -> (Self, Option<Tensor>) {
        let bias = self.inner.bias().map(Tensor::shallow_clone);
        let inner = PackedLinear::from_parts(self.inner.weight().shallow_clone(), None);
        (Self { inner }, bias)
    }

    /// `linear(x)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x))
    }

    /// `gelu(linear(x))`, exact GELU (fused into the matmul on oneDNN's packed path).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward_gelu(x))
    }
}

/// The activation between the two layers of an [`Mlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Act {
    /// `nn.GELU` (exact erf form); fused into the first matmul on oneDNN's packed path.
    #[default]
    Gelu,
    /// `nn.SiLU`.
    Silu,
}

impl Act {
    /// `act(linear(x))`.
    pub fn forward_linear(self, linear: &Linear, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => linear.forward_gelu(x),
            Self::Silu => Ok(linear.forward(x)?.f_silu()?),
        }
    }
}

/// timm's `Mlp` (and mmseg's `FFN`, which computes the same): fc1, activation (exact
/// GELU unless set), dropout, fc2, dropout. The two layers are built by the caller, so
/// each family keeps its keys.
#[derive(Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Act,
    drop_hidden: f64,
    drop_out: f64,
}

impl Mlp {
    /// An MLP of the given layers, with GELU and dropout `drop` after both.
    pub fn new(fc1: Linear, fc2: Linear, drop: f64) -> Self {
        Self {
            fc1,
            fc2,
            act: Act::Gelu,
            drop_hidden: drop,
            drop_out: drop,
        }
    }

    /// timm's `Mlp(dim, hidden)` under `p` (`fc1` / `fc2`), with timm's init.
    pub fn timm(p: nn::Path, dim: i64, hidden: i64, drop: f64) -> Self {
        Self::new(
            Linear::timm(&p / "fc1", dim, hidden, true),
            Linear::timm(&p / "fc2", hidden, dim, true),
            drop,
        )
    }

    /// The same with activation `act`.
    pub fn with_act(self, act: Act) -> Self {
        Self { act, ..self }
    }

    /// The same with dropout `hidden` after the activation and `out` after fc2 (4M's
    /// `Mlp`, TerraMind's, drops only at the end).
    pub fn with_drops(self, hidden: f64, out: f64) -> Self {
        Self {
            drop_hidden: hidden,
            drop_out: out,
            ..self
        }
    }

    /// `[.., dim] -> [.., dim]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.act.forward_linear(&self.fc1, x)?;
        let y = dropout(y, self.drop_hidden, train)?;
        dropout(self.fc2.forward(&y)?, self.drop_out, train)
    }
}
