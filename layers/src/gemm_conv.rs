//! A convolution over few pixels as `im2col` and one GEMM per image, for inference on CPU.
//!
//! libtorch hands every convolution to oneDNN, which lays its weight out anew on each call.
//! Where the map is small and the weight large, that reordering costs more than the
//! arithmetic; MKL's GEMM reads the weight as it is stored. The case that matters is the
//! first block of a U-Net decoder over a ViT: its phase convolution
//! ([`crate::upsample_conv`]) maps 768 channels at 7x7 to 4 x 512 with a 2x2 kernel, a 25 MB
//! weight for 64 output pixels. [`conv2d_small`] takes the GEMM path when the output has at
//! most [`SMALL_CONV_MAX_PIXELS`] pixels over the batch.
//!
//! Measured in PyTorch 2.13 with MKL's kernels chosen by CPU features (2 threads, this
//! project's AVX2 machine, 2026-12-05, the catalog model's phase convolutions): 768 channels
//! at 7x7 took 12.2 ms in oneDNN and 6.8 ms as GEMMs at batch 1, 46.7 and 38.5 ms at batch 8;
//! 512 channels at 14x14 9.7 and 7.7 ms at batch 1, but 46.9 and 50.2 ms at batch 8, and 256
//! channels at 28x28 5.7 and 6.0 ms at batch 1: oneDNN wins on larger maps, hence the limit.
//! The numbers are the convolution's up to float rounding (another summation order).
//! `TERRAHOST_GEMM_CONV=0` turns the path off, to compare.
use crate::packed_linear::float32_inference;
use tch::{Device, Kind, TchError, Tensor};

/// The environment variable that turns the GEMM path off (`0`).
pub const ENV_SWITCH: &str = "TERRAHOST_GEMM_CONV";

/// The most output pixels (over the whole batch) for which [`conv2d_small`] takes the
/// GEMM path.
pub const SMALL_CONV_MAX_PIXELS: i64 = 512;

/// Whether `TERRAHOST_GEMM_CONV` leaves the GEMM path on (anything but `0`).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(ENV_SWITCH).map_or(true, |v| v.trim() != "0"))
}

/// Whether the GEMM path may run: switched on, and a float32 CPU inference call
/// ([`float32_inference`]).
fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let tensors: Vec<&Tensor> = [x, weight].into_iter().chain(bias).collect();
    enabled() && float32_inference(&tensors)
}

/// `w2d [M, K] x cols[i] [K, N] + bias[:, None]` for each image `i` of `cols [B, K, N]`,
/// into a new `[B, M, N]`.
fn per_image_gemm(w2d: &Tensor, cols: &Tensor, bias: Option<&Tensor>) -> Result<Tensor, TchError> {
    let (b, _, n) = cols.size3()?;
    let m = w2d.size()[0];
    let out = Tensor::f_empty([b, m, n], (Kind::Float, Device::Cpu))?;
    let bias_col = bias.map(|bias| bias.f_unsqueeze(1)).transpose()?;
    for i in 0..b {
        let out_i = out.f_select(0, i)?;
        let cols_i = cols.f_select(0, i)?;
        // Into `out_i`, a view of `out`; the returned handle is the same tensor.
        let _ = match &bias_col {
            Some(bias_col) => bias_col.f_addmm_out(&out_i, w2d, &cols_i)?,
            None => w2d.f_mm_out(&out_i, &cols_i)?,
        };
    }
    Ok(out)
}

/// `conv2d(x, weight, bias, stride=1, padding)` with one group and no dilation: `im2col`
/// and one GEMM per image when the output has at most [`SMALL_CONV_MAX_PIXELS`] pixels over
/// the batch on inference's float32 CPU path (see the module docs), libtorch's convolution
/// otherwise.
pub fn conv2d_small(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: [i64; 2],
) -> Result<Tensor, TchError> {
    let plain = || x.f_conv2d(weight, bias, [1, 1], padding, [1, 1], 1);
    let (&[c_out, c_in, kh, kw], Ok((b, c, h, w))) = (weight.size().as_slice(), x.size4()) else {
        return plain(); // not 4-D: libtorch's error message
    };
    if !applies(x, weight, bias) {
        return plain();
    }
    let (oh, ow) = (h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1);
    if c != c_in || b == 0 || oh <= 0 || ow <= 0 || b * oh * ow > SMALL_CONV_MAX_PIXELS {
        return plain();
    }
    // [B, c_in * kh * kw, oh * ow], rows in the weight's (channel, row, column) order.
    let cols = x.f_im2col([kh, kw], [1, 1], padding, [1, 1])?;
    let w2d = weight.f_reshape([c_out, c_in * kh * kw])?;
    per_image_gemm(&w2d, &cols, bias)?.f_view([b, c_out, oh, ow])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
    }

    #[test]
    fn small_convolution_equals_libtorchs_and_large_ones_take_libtorchs_path() {
        let _guard = tch::no_grad_guard();
        for (b, hw, pad) in [(1, 7, 1), (2, 5, 0), (8, 7, 1)] {
            let x = Tensor::randn([b, 9, hw, hw], (Kind::Float, Device::Cpu));
            let w = Tensor::randn([16, 9, 2, 2], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([16], (Kind::Float, Device::Cpu));
            let plain = x.conv2d(&w, Some(&bias), [1, 1], [pad, pad], [1, 1], 1);
            let ours = conv2d_small(&x, &w, Some(&bias), [pad, pad]).unwrap();
            assert_eq!(ours.size(), plain.size());
            assert!(close(&ours, &plain) < 1e-5, "{}", close(&ours, &plain));
        }
        // 3x3 without bias, too.
        let x = Tensor::randn([1, 4, 6, 6], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([5, 4, 3, 3], (Kind::Float, Device::Cpu));
        let plain = x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let ours = conv2d_small(&x, &w, None, [1, 1]).unwrap();
        assert!(close(&ours, &plain) < 1e-5);
    }

    #[test]
    fn with_autograd_on_it_is_libtorchs_own_and_differentiable() {
        let x = Tensor::randn([1, 4, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::randn([2, 4, 2, 2], (Kind::Float, Device::Cpu));
        let y = conv2d_small(&x, &w, None, [1, 1]).unwrap();
        assert!(y.requires_grad());
    }
}
