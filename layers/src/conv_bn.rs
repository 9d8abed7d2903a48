//! A convolution followed by an eval-mode `BatchNorm2d`, folded into one convolution for
//! inference: `w' = w * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`
//! per output channel. The folded pair saves the normalisation's pass over the
//! activation (in PyTorch's profile of the catalog model at batch 8, BatchNorm is about
//! 1% of the forward; the saving was too small to show in `forward_pairs.py`). The
//! folded copy is made on first use and again whenever any of the six tensors changes
//! (a checkpoint load, a device move), so the parameters stay the `state_dict` entries.
//! It runs only without autograd and in eval mode; anything else takes the plain path
//! (`conv`, then `batch_norm`), with the same numbers to float rounding.
use crate::derived::Derived;
use crate::packed_linear::grad_enabled;
use tch::{nn, Tensor};

/// The convolution's geometry (`nn.Conv2d`'s stride, padding, dilation and groups).
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
}

impl ConvGeometry {
    /// Stride 1, dilation 1, one group, the given zero padding.
    pub fn padded(padding: i64) -> Self {
        Self {
            stride: 1,
            padding,
            dilation: 1,
            groups: 1,
        }
    }
}

/// The six tensors a fold is made from, in a fixed order (the [`Derived`] sources).
pub fn fold_sources<'a>(conv: &'a nn::Conv2D, bn: &'a nn::BatchNorm) -> [Option<&'a Tensor>; 6] {
    [
        Some(&conv.ws),
        conv.bs.as_ref(),
        bn.ws.as_ref(),
        bn.bs.as_ref(),
        Some(&bn.running_mean),
        Some(&bn.running_var),
    ]
}

/// The weight and bias of the one convolution that computes eval-mode `bn(conv(x))`
/// (see the module docs); `eps` is the BatchNorm's. A bfloat16 weight
/// ([`crate::precision`]) is folded in float32 and stored in bfloat16 again.
pub fn fold(conv: &nn::Conv2D, bn: &nn::BatchNorm, eps: f64) -> (Tensor, Tensor) {
    let scale = (&bn.running_var + eps).rsqrt();
    let scale = match &bn.ws {
        Some(gamma) => scale * gamma,
        None => scale,
    };
    let shift = match &conv.bs {
        Some(b) => b - &bn.running_mean,
        None => -&bn.running_mean,
    } * &scale;
    let shift = match &bn.bs {
        Some(beta) => shift + beta,
        None => shift,
    };
    let kind = conv.ws.kind();
    let weight =
        conv.ws.to_kind(crate::precision::compute_kind(kind)) * scale.reshape([-1, 1, 1, 1]);
    (weight.to_kind(kind), shift)
}

/// `bn(conv(x))` with the folding described in the module docs.
#[derive(Debug, Default)]
pub struct ConvBn {
    folded: Derived<(Tensor, Tensor)>,
}

impl ConvBn {
    /// A folding cache, empty until the first inference call.
    pub fn new() -> Self {
        Self::default()
    }

    /// `bn(conv(x))`: in training (`train`, which also updates the running statistics)
    /// or with autograd on, the two layers as they are; otherwise the folded
    /// convolution. `eps` is the BatchNorm's.
    pub fn forward(
        &self,
        x: &Tensor,
        conv: &nn::Conv2D,
        geometry: ConvGeometry,
        bn: &nn::BatchNorm,
        eps: f64,
        train: bool,
    ) -> Tensor {
        let g = geometry;
        let conv_with = |w: &Tensor, b: Option<&Tensor>| {
            x.conv2d(
                w,
                b,
                [g.stride; 2],
                [g.padding; 2],
                [g.dilation; 2],
                g.groups,
            )
        };
        let plain = || nn::ModuleT::forward_t(bn, &conv_with(&conv.ws, conv.bs.as_ref()), train);
        if train || grad_enabled() {
            return plain();
        }
        let folded = self.folded.get(
            &fold_sources(conv, bn),
            || Some(fold(conv, bn, eps)),
            |(w, b)| (w.shallow_clone(), b.shallow_clone()),
        );
        match folded {
            Some((w, b)) => conv_with(&w, Some(&b)),
            None => plain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn folded_and_plain_agree_and_track_changes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(
            vs.root() / "c",
            5,
            7,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: false,
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(vs.root() / "bn", 7, Default::default());
        tch::no_grad(|| {
            bn.running_mean
                .shallow_clone()
                .copy_(&Tensor::randn([7], (Kind::Float, Device::Cpu)));
            bn.running_var
                .shallow_clone()
                .copy_(&(Tensor::rand([7], (Kind::Float, Device::Cpu)) + 0.5));
            bn.ws
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::randn([7], (Kind::Float, Device::Cpu)));
            bn.bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::randn([7], (Kind::Float, Device::Cpu)));
        });
        let x = Tensor::randn([2, 5, 9, 9], (Kind::Float, Device::Cpu));
        let f = ConvBn::new();
        let g = ConvGeometry::padded(1);
        let plain = tch::no_grad(|| nn::ModuleT::forward_t(&bn, &x.apply(&conv), false));
        let folded = tch::no_grad(|| f.forward(&x, &conv, g, &bn, 1e-5, false));
        assert!(f.folded.is_ready(), "the folded path ran");
        assert!((&plain - &folded).abs().max().double_value(&[]) < 1e-5);
        // new statistics (a checkpoint load) are folded again
        tch::no_grad(|| {
            let _ = bn.running_var.shallow_clone().fill_(2.0);
        });
        let plain = tch::no_grad(|| nn::ModuleT::forward_t(&bn, &x.apply(&conv), false));
        let folded = tch::no_grad(|| f.forward(&x, &conv, g, &bn, 1e-5, false));
        assert!((&plain - &folded).abs().max().double_value(&[]) < 1e-5);
        // with autograd on, the plain path keeps the graph
        assert!(f.forward(&x, &conv, g, &bn, 1e-5, false).requires_grad());
    }
}
