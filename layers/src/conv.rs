//! A plain 2-D convolution with PyTorch's parameter names (`weight`, `bias`).
use crate::linear::fan_in_uniform;
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::Result;

/// A 2-D convolution with square kernel, stride, padding and dilation.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    dilation: i64,
    groups: i64,
}

/// The geometry of a [`Conv2d`].
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub c_in: i64,
    pub c_out: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
}

impl ConvSpec {
    /// A `k` x `k` convolution from `c_in` to `c_out` channels, stride 1, no padding.
    pub fn new(c_in: i64, c_out: i64, kernel: i64) -> Self {
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
    pub fn stride(self, stride: i64) -> Self {
        Self { stride, ..self }
    }

    /// The same with padding `p` on every side.
    pub fn padding(self, padding: i64) -> Self {
        Self { padding, ..self }
    }

    /// The same with dilation `d`.
    pub fn dilation(self, dilation: i64) -> Self {
        Self { dilation, ..self }
    }

    /// The same with `g` groups.
    pub fn groups(self, groups: i64) -> Self {
        Self { groups, ..self }
    }
}

impl Conv2d {
    /// A convolution under `p` whose weight is drawn with `w` and whose bias (when `b`
    /// is given) with `b`.
    pub fn new(p: nn::Path, s: ConvSpec, w: Init, b: Option<Init>) -> Self {
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
    pub fn patchify(
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
