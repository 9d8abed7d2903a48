//! `conv3x3(cat([upsample_nearest_2x(x), skip], 1))` for inference, without making the
//! upsampled or the concatenated map: the first convolution of a U-Net decoder block
//! (smp's `UnetDecoderBlock`, which UNet++ builds on too).
//!
//! A 3x3 convolution (padding 1) over a nearest-neighbour 2x upsampling reads each
//! low-resolution pixel through several taps of the same kernel. For every output
//! pixel of phase `(a, b)` (row parity `a`, column parity `b`) the nine taps land on a
//! 2x2 neighbourhood of the low-resolution map, so the taps that land on the same pixel
//! can be summed into the weight beforehand. Row phase 0 reads rows `i - 1, i` with
//! taps `{0}, {1, 2}`; phase 1 reads rows `i, i + 1` with taps `{0, 1}, {2}`; likewise
//! for columns. The four phase kernels (`[4 * O, C_x, 2, 2]`) run as one 2x2
//! convolution over the low-resolution map padded by 1, whose `(H + 1) x (W + 1)`
//! outputs hold every phase at an offset of `(a, b)`. The skip channels take the plain
//! 3x3 convolution at full resolution, and the phases are added into its output in
//! place. Zero padding of the upsampled map is zero padding of the low-resolution map,
//! so the borders agree too.
//!
//! The upsampled part then costs 16 multiply-adds per channel pair and output quad
//! instead of 36. In the catalog model (prithvi_eo_v1_100 + UNet, batch 8) three of the
//! four decoder blocks qualify. The numbers are the plain path's up to float rounding
//! (the taps are summed before the product instead of after).
//!
//! The cached phase kernels are made from the convolution (and its eval-mode
//! BatchNorm, folded as in [`crate::conv_bn`]) on first use and again whenever any of
//! those tensors changes ([`Derived`]).
use crate::conv_bn::{fold, fold_sources};
use crate::derived::Derived;
use crate::packed_linear::grad_enabled;
use tch::{nn, Tensor};

/// The environment variable that turns the decomposition off (`0`): every call then
/// declines and the caller upsamples and concatenates (to compare the two paths).
pub const ENV_SWITCH: &str = "TERRAHOST_UPSAMPLE_CONV";

/// Whether `TERRAHOST_UPSAMPLE_CONV` leaves the decomposition on (anything but `0`).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(ENV_SWITCH).map_or(true, |v| v.trim() != "0"))
}

/// The output phases `(row parity, column parity)`, in the order their kernels are
/// stacked.
const PHASES: [(i64, i64); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

/// The kernels of the decomposed convolution.
struct Kernels {
    /// `[4 * O, C_x, 2, 2]`: phase `PHASES[p]` in rows `p * O ..`; `C_x` is where the
    /// weight was split.
    phases: Tensor,
    /// The bias of the phase convolution (the layer's bias, once per phase) when there
    /// is no skip; with a skip, the bias goes to the skip convolution.
    phase_bias: Option<Tensor>,
    /// `[O, C_skip, 3, 3]` and the layer's bias, when the layer has skip channels.
    skip: Option<(Tensor, Option<Tensor>)>,
}

/// Sums the three taps of `w` along `dim` into the two a low-resolution window of
/// phase `phase` reads (see the module docs).
fn collapse(w: &Tensor, dim: i64, phase: i64) -> Tensor {
    let tap = |i| w.narrow(dim, i, 1);
    match phase {
        0 => Tensor::cat(&[tap(0), tap(1) + tap(2)], dim),
        _ => Tensor::cat(&[tap(0) + tap(1), tap(2)], dim),
    }
}

impl Kernels {
    /// Splits `weight` (`[O, C_x + C_skip, 3, 3]`) after the first `c_x` input channels.
    /// A bfloat16 weight ([`crate::precision`]) is summed in float32 and stored in
    /// bfloat16 again.
    fn new(weight: &Tensor, bias: Option<Tensor>, c_x: i64) -> Self {
        let kind = weight.kind();
        let weight = &weight.to_kind(crate::precision::compute_kind(kind));
        let c_in = weight.size()[1];
        let wx = weight.narrow(1, 0, c_x);
        let phases: Vec<Tensor> = PHASES
            .iter()
            .map(|&(a, b)| collapse(&collapse(&wx, 2, a), 3, b))
            .collect();
        let phases = Tensor::cat(&phases, 0).to_kind(kind).contiguous();
        if c_in > c_x {
            let ws = weight.narrow(1, c_x, c_in - c_x).to_kind(kind).contiguous();
            Self {
                phases,
                phase_bias: None,
                skip: Some((ws, bias)),
            }
        } else {
            Self {
                phases,
                phase_bias: bias.map(|b| b.repeat([4])),
                skip: None,
            }
        }
    }

    fn shallow(&self) -> Self {
        Self {
            phases: self.phases.shallow_clone(),
            phase_bias: self.phase_bias.as_ref().map(Tensor::shallow_clone),
            skip: self
                .skip
                .as_ref()
                .map(|(w, b)| (w.shallow_clone(), b.as_ref().map(Tensor::shallow_clone))),
        }
    }
}

/// The cache of one layer's decomposed kernels; see the module docs.
#[derive(Debug, Default)]
pub struct UpsampleConcatConv {
    kernels: Derived<Kernels>,
}

impl UpsampleConcatConv {
    /// An empty cache, filled on the first inference call.
    pub fn new() -> Self {
        Self::default()
    }

    /// `bn(conv(cat([upsample_nearest_2x(x), skip], 1)))` for a 3x3 `conv` with padding 1,
    /// stride 1, dilation 1 and one group (the caller guarantees that geometry), and an
    /// optional eval-mode BatchNorm with its eps. `x` is `[B, C_x, H, W]`, `skip`
    /// `[B, C_skip, 2H, 2W]` (or `None` when the layer has only `C_x` input channels).
    ///
    /// `None` where this path does not apply, and the caller runs the plain one:
    /// autograd on, a kernel other than 3x3, shapes that do not fit together, or
    /// `TERRAHOST_UPSAMPLE_CONV=0`.
    pub fn forward(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        conv: &nn::Conv2D,
        bn: Option<(&nn::BatchNorm, f64)>,
    ) -> Option<Tensor> {
        if grad_enabled() || !enabled() {
            return None;
        }
        let (b, c_x, h, w) = x.size4().ok()?;
        let wsize = conv.ws.size();
        let &[o, c_in, 3, 3] = wsize.as_slice() else {
            return None;
        };
        let c_skip = match skip {
            Some(s) => {
                let (sb, cs, sh, sw) = s.size4().ok()?;
                if (sb, sh, sw) != (b, 2 * h, 2 * w) || s.kind() != x.kind() {
                    return None;
                }
                cs
            }
            None => 0,
        };
        if c_x + c_skip != c_in || c_x == 0 || h == 0 || w == 0 {
            return None;
        }
        let derive = || {
            Some(match bn {
                Some((bn, eps)) => {
                    let (weight, bias) = fold(conv, bn, eps);
                    Kernels::new(&weight, Some(bias), c_x)
                }
                None => Kernels::new(&conv.ws, conv.bs.as_ref().map(Tensor::shallow_clone), c_x),
            })
        };
        let kernels = match bn {
            Some((bn, _)) => self
                .kernels
                .get(&fold_sources(conv, bn), derive, Kernels::shallow),
            None => self.kernels.get(
                &[Some(&conv.ws), conv.bs.as_ref()],
                derive,
                Kernels::shallow,
            ),
        }?;
        if kernels.phases.size()[1] != c_x {
            // The cached split is another call's (a layer always splits the same way).
            return None;
        }
        // [B, 4 * O, H + 1, W + 1]: phase (a, b) at offset (a, b).
        // A GEMM where the low-resolution map is small (the first block's 7x7): the phase
        // kernels are the block's largest weight, which oneDNN would lay out on every call.
        let phases =
            crate::gemm_conv::conv2d_small(x, &kernels.phases, kernels.phase_bias.as_ref(), [1, 1])
                .ok()?;
        let (out, add) = match (skip, &kernels.skip) {
            (Some(s), Some((ws, bs))) => (
                s.f_conv2d(ws, bs.as_ref(), [1, 1], [1, 1], [1, 1], 1)
                    .ok()?,
                true,
            ),
            (None, None) => (
                Tensor::f_empty([b, o, 2 * h, 2 * w], (x.kind(), x.device())).ok()?,
                false,
            ),
            _ => return None,
        };
        // [B, O, H, 2, W, 2]: output row 2i + a, column 2j + c is grid[.., i, a, j, c].
        let grid = out.f_view([b, o, h, 2, w, 2]).ok()?;
        for (p, (a, c)) in PHASES.into_iter().enumerate() {
            let phase = phases
                .narrow(1, p as i64 * o, o)
                .narrow(2, a, h)
                .narrow(3, c, w);
            let mut dst = grid.select(5, c).select(3, a);
            if add {
                // The returned handle is `dst` itself.
                let _ = dst.f_add_(&phase).ok()?;
            } else {
                dst.f_copy_(&phase).ok()?;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn opts() -> (Kind, Device) {
        (Kind::Float, Device::Cpu)
    }

    /// The plain path: upsample, concatenate, convolve, normalise.
    fn plain(
        x: &Tensor,
        skip: Option<&Tensor>,
        conv: &nn::Conv2D,
        bn: Option<&nn::BatchNorm>,
    ) -> Tensor {
        let (_, _, h, w) = x.size4().unwrap();
        let up = x.upsample_nearest2d([2 * h, 2 * w], None, None);
        let cat = match skip {
            Some(s) => Tensor::cat(&[&up, s], 1),
            None => up,
        };
        let y = cat.apply(conv);
        match bn {
            Some(bn) => nn::ModuleT::forward_t(bn, &y, false),
            None => y,
        }
    }

    fn randomise(t: &Tensor, lo: f64) {
        tch::no_grad(|| {
            let r = Tensor::rand(t.size(), opts()) + lo;
            t.shallow_clone().copy_(&r);
        });
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        (a - b).abs().max().double_value(&[]) / scale
    }

    #[test]
    fn matches_upsample_concat_conv_with_and_without_skip_bias_and_batchnorm() {
        // (C_x, C_skip, O, H, W, bias, batchnorm): odd and non-square sizes, a 1x1 map,
        // no skip (the last U-Net block), a bias without a norm.
        let cases = [
            (6, 5, 7, 5, 3, false, true),
            (4, 0, 3, 4, 6, false, true),
            (3, 2, 4, 1, 1, true, false),
            (5, 0, 2, 3, 2, true, false),
            (8, 8, 6, 7, 7, false, false),
        ];
        for (c_x, c_s, o, h, w, bias, use_bn) in cases {
            let vs = nn::VarStore::new(Device::Cpu);
            let conv = nn::conv2d(
                vs.root() / "conv",
                c_x + c_s,
                o,
                3,
                nn::ConvConfig {
                    padding: 1,
                    bias,
                    ..Default::default()
                },
            );
            let bn = use_bn.then(|| nn::batch_norm2d(vs.root() / "bn", o, Default::default()));
            if let Some(bn) = &bn {
                randomise(&bn.running_mean, -0.5);
                randomise(&bn.running_var, 0.5);
                randomise(bn.ws.as_ref().unwrap(), 0.5);
                randomise(bn.bs.as_ref().unwrap(), -0.5);
            }
            let x = Tensor::randn([2, c_x, h, w], opts());
            let skip = (c_s > 0).then(|| Tensor::randn([2, c_s, 2 * h, 2 * w], opts()));
            let layer = UpsampleConcatConv::new();
            let expected = tch::no_grad(|| plain(&x, skip.as_ref(), &conv, bn.as_ref()));
            let got = tch::no_grad(|| {
                layer.forward(&x, skip.as_ref(), &conv, bn.as_ref().map(|bn| (bn, 1e-5)))
            })
            .expect("the decomposed path applies");
            assert_eq!(got.size(), expected.size());
            let err = max_rel(&expected, &got);
            assert!(
                err < 1e-5,
                "case {:?}: relative error {err}",
                (c_x, c_s, o, h, w)
            );

            // A weight loaded in place afterwards is used (the kernels are made again).
            tch::no_grad(|| {
                conv.ws
                    .shallow_clone()
                    .copy_(&Tensor::randn(conv.ws.size(), opts()));
            });
            let expected = tch::no_grad(|| plain(&x, skip.as_ref(), &conv, bn.as_ref()));
            let got = tch::no_grad(|| {
                layer.forward(&x, skip.as_ref(), &conv, bn.as_ref().map(|bn| (bn, 1e-5)))
            })
            .unwrap();
            assert!(max_rel(&expected, &got) < 1e-5, "after a weight load");
        }
    }

    #[test]
    fn declines_what_it_cannot_compute() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = nn::conv2d(vs.root() / "c", 6, 4, 3, cfg);
        let x = Tensor::randn([1, 4, 3, 3], opts());
        let skip = Tensor::randn([1, 2, 6, 6], opts());
        let layer = UpsampleConcatConv::new();
        // with autograd on (training, a gradient through the decoder)
        assert!(layer.forward(&x, Some(&skip), &conv, None).is_none());
        tch::no_grad(|| {
            // a skip that is not twice the size
            let odd = Tensor::randn([1, 2, 7, 6], opts());
            assert!(layer.forward(&x, Some(&odd), &conv, None).is_none());
            // channels that do not add up to the weight's
            assert!(layer.forward(&x, None, &conv, None).is_none());
            // a kernel other than 3x3
            let one = nn::conv2d(vs.root() / "one", 6, 4, 1, Default::default());
            assert!(layer.forward(&x, Some(&skip), &one, None).is_none());
            assert!(layer.forward(&x, Some(&skip), &conv, None).is_some());
        });
    }
}
