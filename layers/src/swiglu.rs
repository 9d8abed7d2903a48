//! The SwiGLU feed-forward network as DINOv3 writes it (`dinov3/layers/ffn_layers.py`,
//! `SwiGLUFFN`): `w3(silu(w1(x)) * w2(x))`, with a hidden width of two thirds of the
//! nominal one rounded up to a multiple of `align_to`. Keys `w1`, `w2`, `w3`.
use crate::linear::Linear;
use tch::{nn, Tensor};
use terrahost_plugin_api::Result;

/// The hidden width `SwiGLUFFN` builds for a nominal `hidden_features` (`int(dim *
/// ffn_ratio)`): `d = int(hidden * 2 / 3)`, rounded up to a multiple of `align_to`.
pub fn hidden_width(hidden_features: i64, align_to: i64) -> i64 {
    // Python's int(h * 2 / 3): true division of an exact integer, then truncation.
    let d = ((hidden_features * 2) as f64 / 3.0) as i64;
    d + (align_to - d % align_to) % align_to
}

/// `SwiGLUFFN(in_features=dim, hidden_features=hidden, bias, align_to)`: three linear
/// layers, the first two from `dim` to [`hidden_width`], the last back to `dim`.
#[derive(Debug)]
pub struct SwiGluFfn {
    w1: Linear,
    w2: Linear,
    w3: Linear,
}

impl SwiGluFfn {
    /// The FFN under `p` with the init DINOv3's `init_weights_vit` gives linear layers
    /// (truncated normal, std 0.02; zero bias).
    pub fn new(p: nn::Path, dim: i64, hidden_features: i64, bias: bool, align_to: i64) -> Self {
        let h = hidden_width(hidden_features, align_to);
        Self {
            w1: Linear::timm(&p / "w1", dim, h, bias),
            w2: Linear::timm(&p / "w2", dim, h, bias),
            w3: Linear::timm(&p / "w3", h, dim, bias),
        }
    }

    /// `w3(silu(w1(x)) * w2(x))` over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.w1.forward(x)?.f_silu()?;
        let hidden = gate.f_mul(&self.w2.forward(x)?)?;
        self.w3.forward(&hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn hidden_widths_are_the_references() {
        // dinov3_vits16plus: 384 * 6 -> 1536 (align 8); vith16plus: 1280 * 6 -> 5120;
        // vit7b16: 4096 * 3 with align 64 -> 8192; and a width that needs rounding.
        assert_eq!(hidden_width(2304, 8), 1536);
        assert_eq!(hidden_width(7680, 8), 5120);
        assert_eq!(hidden_width(12288, 64), 8192);
        assert_eq!(hidden_width(100, 8), 72); // int(66.67) = 66 -> 72
    }

    #[test]
    fn forward_is_gated_silu() {
        let vs = nn::VarStore::new(Device::Cpu);
        let f = SwiGluFfn::new(vs.root(), 4, 12, true, 8);
        let keys: std::collections::BTreeSet<String> = vs.variables().into_keys().collect();
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            [
                "w1.bias",
                "w1.weight",
                "w2.bias",
                "w2.weight",
                "w3.bias",
                "w3.weight"
            ]
        );
        assert_eq!(vs.variables()["w1.weight"].size(), vec![8, 4]);
        let x = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu));
        let v = vs.variables();
        let lin = |k: &str, x: &Tensor| {
            x.linear(&v[&format!("{k}.weight")], Some(&v[&format!("{k}.bias")]))
        };
        let want = lin("w3", &(lin("w1", &x).silu() * lin("w2", &x)));
        let got = tch::no_grad(|| f.forward(&x)).unwrap();
        assert!(got.allclose(&want, 1e-5, 1e-6, false));
    }
}
