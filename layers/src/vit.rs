//! timm's vision-transformer `Attention` and `Block` (`timm/models/vision_transformer.py`,
//! timm 1.0.31), written once for the ViTs that share them: timm's `VisionTransformer`,
//! TerraTorch's Prithvi (`terratorch/models/backbones/prithvi_mae.py`, which imports
//! timm's `Block`), DOFA (timm's `Block` again) and TerraMind (4M's `Block` / `Attention`
//! / `NormAttention` / `Mlp` / `GatedMlp` in `terratorch/models/backbones/terramind/model/
//! fm_vit.py`, which differ from timm's only in the options of [`BlockConfig`]) and the
//! blocks of TerraTorch's `SatMAEHead` (timm's again) and DINOv3's `SelfAttentionBlock`
//! (`dinov3/layers/block.py` / `attention.py`: timm's block with a masked key bias,
//! [`BlockConfig::mask_k_bias`], a SwiGLU or timm MLP, and RoPE through the hook).
//!
//! A block is pre-norm: `x + drop_path(ls1(attn(norm1(x))))`, then
//! `x + drop_path(ls2(mlp(norm2(x))))`. Keys: `norm1`, `attn.qkv`, `attn.q_norm`,
//! `attn.k_norm`, `attn.proj`, `ls1.gamma`, `norm2`, `mlp.*`, `ls2.gamma` (and the buffer
//! `attn.qkv.bias_mask` with [`BlockConfig::mask_k_bias`]).
//!
//! Two hooks stay open for families with other parts: the MLP is any [`FeedForward`]
//! ([`Block::with_mlp`], e.g. a SwiGLU with other key names), and attention takes an
//! optional [`Rope`] applied to q and k after their norms.
use crate::drop::{drop_path, layer_scale};
use crate::linear::{Act, Linear, Mlp};
use crate::norm::LayerNorm;
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::Result;

/// A rotary position embedding hook: gets q and k (`[B, heads, N, head_dim]`, after the
/// q/k norms) and returns them rotated. The caller builds it for the input's grid and
/// hands the same one to every block.
pub type Rope<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)>;

/// How the linear layers of a block are initialised (only matters without a checkpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearInit {
    /// timm's `init_weights`: truncated normal (std 0.02) weight, zero bias.
    Timm,
    /// The MAE-style `_init_weights` of Prithvi, DOFA and TerraMind: Xavier-uniform
    /// weight, zero bias.
    Xavier,
    /// `nn.Linear`'s own (weight and bias uniform in +-1/sqrt(fan_in)), where the model
    /// never re-initialises its blocks (TerraTorch's `SatMAEHead`).
    Torch,
}

impl LinearInit {
    fn linear(self, p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> Linear {
        match self {
            Self::Timm => Linear::timm(p, c_in, c_out, bias),
            Self::Xavier => Linear::xavier(p, c_in, c_out, bias),
            Self::Torch => Linear::torch(p, c_in, c_out, bias),
        }
    }
}

/// Which MLP a block builds under `mlp` ([`Block::with_mlp`] takes any other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// timm's `Mlp`: `fc2(drop(act(fc1(x))))`, dropout after fc2.
    Mlp,
    /// 4M's `GatedMlp`: `fc2(act(fc1(x)) * fc3(x))`, no dropout.
    Gated,
}

/// The MLP of a [`Block`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlpConfig {
    /// The MLP built.
    pub kind: MlpKind,
    /// Hidden width (`int(dim * mlp_ratio)` upstream; 4M's `GatedMlp` takes 2/3 of it).
    pub hidden: i64,
    /// The activation.
    pub act: Act,
    /// Biases of fc1 / fc2 (/ fc3).
    pub bias: bool,
    /// Dropout after the activation (timm's `Mlp` uses `proj_drop` here, 4M none).
    pub drop_hidden: f64,
    /// Dropout after fc2.
    pub drop_out: f64,
}

/// Everything that shapes a [`Block`] and its [`Attention`]; [`BlockConfig::timm`] gives
/// timm's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    /// Token width.
    pub dim: i64,
    /// Attention heads (`dim` must be a multiple).
    pub num_heads: i64,
    /// Bias of the fused qkv projection.
    pub qkv_bias: bool,
    /// DINOv3's `mask_k_bias` (`LinearKMaskedBias`): the qkv bias is multiplied by the
    /// buffer `qkv.bias_mask` (1 for q and v, 0 for k unless a checkpoint says otherwise)
    /// before it is added, so keys get no bias. Only with `qkv_bias`.
    pub mask_k_bias: bool,
    /// Bias of the output projection.
    pub proj_bias: bool,
    /// LayerNorm over each head's q and k (`q_norm` / `k_norm`).
    pub qk_norm: bool,
    /// Epsilon of every LayerNorm of the block.
    pub norm_eps: f64,
    /// Whether the LayerNorms have a learned bias; TerraMind's are `LayerNorm(bias=False)`
    /// (a zero buffer, see [`LayerNorm::without_bias`]).
    pub norm_bias: bool,
    /// How the linear layers are initialised.
    pub init: LinearInit,
    /// Dropout on the attention weights (train mode only).
    pub attn_drop: f64,
    /// Dropout after the output projection.
    pub proj_drop: f64,
    /// LayerScale init values (`ls1` / `ls2`); `None` or 0 means no LayerScale, as
    /// `if init_values` upstream.
    pub init_values: Option<f64>,
    /// Stochastic depth rate of this block (train mode only).
    pub drop_path: f64,
    /// The MLP.
    pub mlp: MlpConfig,
}

impl BlockConfig {
    /// timm's `Block(dim, num_heads, mlp_ratio)` with every other argument at timm's
    /// `VisionTransformer` default: qkv bias, no qk-norm, LayerNorm eps 1e-6, GELU MLP,
    /// no dropout, no LayerScale, no drop path.
    pub fn timm(dim: i64, num_heads: i64, mlp_ratio: f64) -> Self {
        Self {
            dim,
            num_heads,
            qkv_bias: true,
            mask_k_bias: false,
            proj_bias: true,
            qk_norm: false,
            norm_eps: crate::norm::LN_EPS,
            norm_bias: true,
            init: LinearInit::Timm,
            attn_drop: 0.0,
            proj_drop: 0.0,
            init_values: None,
            drop_path: 0.0,
            mlp: MlpConfig {
                kind: MlpKind::Mlp,
                hidden: (dim as f64 * mlp_ratio) as i64,
                act: Act::Gelu,
                bias: true,
                drop_hidden: 0.0,
                drop_out: 0.0,
            },
        }
    }

    fn norm(&self, p: nn::Path, dim: i64) -> LayerNorm {
        if self.norm_bias {
            LayerNorm::new(p, dim, self.norm_eps)
        } else {
            LayerNorm::without_bias(p, dim, self.norm_eps)
        }
    }
}

/// A block's MLP: timm's [`Mlp`], [`GatedMlp`], or a family's own (SwiGLU, ...).
pub trait FeedForward: std::fmt::Debug + Send {
    /// `[B, N, dim] -> [B, N, dim]`.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
}

impl FeedForward for crate::swiglu::SwiGluFfn {
    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        crate::swiglu::SwiGluFfn::forward(self, x)
    }
}

impl FeedForward for Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Mlp::forward(self, x, train)
    }
}

/// 4M's `GatedMlp` (TerraMind): `fc2(act(fc1(x)) * fc3(x))`.
#[derive(Debug)]
pub struct GatedMlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    act: Act,
}

impl GatedMlp {
    /// The layers `fc1` (dim -> hidden), `fc2` (hidden -> dim) and `fc3` (dim -> hidden,
    /// the gate) under `p`.
    pub fn new(p: nn::Path, dim: i64, cfg: &MlpConfig, init: LinearInit) -> Self {
        Self {
            fc1: init.linear(&p / "fc1", dim, cfg.hidden, cfg.bias),
            fc2: init.linear(&p / "fc2", cfg.hidden, dim, cfg.bias),
            fc3: init.linear(&p / "fc3", dim, cfg.hidden, cfg.bias),
            act: cfg.act,
        }
    }
}

impl FeedForward for GatedMlp {
    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let gate = self.fc3.forward(x)?;
        let h = self.act.forward_linear(&self.fc1, x)?.f_mul(&gate)?;
        self.fc2.forward(&h)
    }
}

/// The qkv bias of [`BlockConfig::mask_k_bias`]: added as `bias * bias_mask`.
#[derive(Debug)]
struct MaskedBias {
    bias: Tensor,
    mask: Tensor,
}

/// timm's `Attention`: fused qkv projection, optional per-head q/k LayerNorm, scaled
/// dot-product attention (scale `head_dim ** -0.5`), output projection.
#[derive(Debug)]
pub struct Attention {
    qkv: Linear,
    /// With `mask_k_bias`, the qkv bias, split off `qkv` so that it is masked first.
    qkv_masked_bias: Option<MaskedBias>,
    q_norm: Option<LayerNorm>,
    k_norm: Option<LayerNorm>,
    proj: Linear,
    num_heads: i64,
    attn_drop: f64,
    proj_drop: f64,
}

impl Attention {
    /// The attention of a block configured by `cfg`, under `p` (`qkv`, `q_norm`,
    /// `k_norm`, `proj`; `qkv.bias_mask` with `mask_k_bias`).
    pub fn new(p: nn::Path, cfg: &BlockConfig) -> Self {
        let d = cfg.dim;
        let head_dim = d / cfg.num_heads;
        let mut qkv = cfg.init.linear(&p / "qkv", d, 3 * d, cfg.qkv_bias);
        let mut qkv_masked_bias = None;
        if cfg.mask_k_bias {
            let (weight_only, bias) = qkv.split_bias();
            qkv = weight_only;
            qkv_masked_bias = bias.map(|bias| {
                // what DINOv3's `init_weights_vit` writes: keep q and v, zero k
                let mask = (&p / "qkv").ones_no_train("bias_mask", &[3 * d]);
                tch::no_grad(|| {
                    let _ = mask.narrow(0, d, d).fill_(0.0);
                });
                MaskedBias { bias, mask }
            });
        }
        Self {
            qkv,
            qkv_masked_bias,
            q_norm: cfg.qk_norm.then(|| cfg.norm(&p / "q_norm", head_dim)),
            k_norm: cfg.qk_norm.then(|| cfg.norm(&p / "k_norm", head_dim)),
            proj: cfg.init.linear(&p / "proj", d, d, cfg.proj_bias),
            num_heads: cfg.num_heads,
            attn_drop: cfg.attn_drop,
            proj_drop: cfg.proj_drop,
        }
    }

    /// `[B, N, C] -> [B, N, C]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, None)
    }

    /// The same, with q and k rotated by `rope` (after their norms) when given.
    pub fn forward_with(&self, x: &Tensor, train: bool, rope: Option<Rope<'_>>) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        let hd = c / self.num_heads;
        // [B, N, 3C] -> [3, B, heads, N, head_dim]
        let mut qkv = self.qkv.forward(x)?;
        if let Some(MaskedBias { bias, mask }) = &self.qkv_masked_bias {
            qkv = qkv.f_add(&bias.f_mul(&mask.f_to_kind(bias.kind())?)?)?;
        }
        let qkv = qkv
            .f_reshape([b, n, 3, self.num_heads, hd])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (mut q, mut k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        if let Some(rope) = rope {
            (q, k) = rope(&q, &k)?;
        }
        let drop = if train { self.attn_drop } else { 0.0 };
        let y = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, drop, false, None, false,
        )?;
        // [B, heads, N, head_dim] -> [B, N, C]
        let y = y.f_transpose(1, 2)?.f_reshape([b, n, c])?;
        crate::drop::dropout(self.proj.forward(&y)?, self.proj_drop, train)
    }
}

/// timm's pre-norm transformer `Block` (see the module docs).
#[derive(Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: Box<dyn FeedForward>,
    ls2: Option<Tensor>,
    drop_path: f64,
}

impl Block {
    /// A block under `p` with the MLP `cfg.mlp` describes (keys `mlp.fc1`, `mlp.fc2`,
    /// and `mlp.fc3` for the gated one).
    pub fn new(p: nn::Path, cfg: &BlockConfig) -> Self {
        Self::with_mlp(p, cfg, |p| {
            let m = &cfg.mlp;
            match m.kind {
                MlpKind::Mlp => Box::new(
                    Mlp::new(
                        cfg.init.linear(&p / "fc1", cfg.dim, m.hidden, m.bias),
                        cfg.init.linear(&p / "fc2", m.hidden, cfg.dim, m.bias),
                        0.0,
                    )
                    .with_act(m.act)
                    .with_drops(m.drop_hidden, m.drop_out),
                ),
                MlpKind::Gated => Box::new(GatedMlp::new(p, cfg.dim, m, cfg.init)),
            }
        })
    }

    /// A block under `p` whose MLP `mlp` builds under `p.mlp` (`cfg.mlp` is not read).
    pub fn with_mlp(
        p: nn::Path,
        cfg: &BlockConfig,
        mlp: impl FnOnce(nn::Path) -> Box<dyn FeedForward>,
    ) -> Self {
        let d = cfg.dim;
        let ls = |name: &str| {
            cfg.init_values
                .filter(|&v| v != 0.0)
                .map(|v| (&p / name).var("gamma", &[d], Init::Const(v)))
        };
        // Built in timm's module order, so that a seeded random init draws the same.
        let norm1 = cfg.norm(&p / "norm1", d);
        let attn = Attention::new(&p / "attn", cfg);
        let ls1 = ls("ls1");
        let norm2 = cfg.norm(&p / "norm2", d);
        let mlp = mlp(&p / "mlp");
        let ls2 = ls("ls2");
        Self {
            norm1,
            attn,
            ls1,
            norm2,
            mlp,
            ls2,
            drop_path: cfg.drop_path,
        }
    }

    /// `[B, N, C] -> [B, N, C]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, None)
    }

    /// The same, with `rope` applied in the attention (see [`Attention::forward_with`]).
    pub fn forward_with(&self, x: &Tensor, train: bool, rope: Option<Rope<'_>>) -> Result<Tensor> {
        let y = layer_scale(
            self.attn
                .forward_with(&self.norm1.forward(x)?, train, rope)?,
            self.ls1.as_ref(),
        )?;
        let x = x.f_add(&drop_path(y, self.drop_path, train)?)?;
        let y = layer_scale(
            self.mlp.forward(&self.norm2.forward(&x)?, train)?,
            self.ls2.as_ref(),
        )?;
        Ok(x.f_add(&drop_path(y, self.drop_path, train)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn keys(vs: &nn::VarStore) -> Vec<(String, Vec<i64>)> {
        let mut k: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        k.sort();
        k
    }

    #[test]
    fn timm_block_has_timm_keys_and_keeps_the_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = BlockConfig::timm(16, 2, 4.0);
        cfg.qk_norm = true;
        cfg.init_values = Some(1e-5);
        let b = Block::new(vs.root() / "blocks" / 0, &cfg);
        let expected: Vec<(String, Vec<i64>)> = [
            ("attn.k_norm.bias", vec![8]),
            ("attn.k_norm.weight", vec![8]),
            ("attn.proj.bias", vec![16]),
            ("attn.proj.weight", vec![16, 16]),
            ("attn.q_norm.bias", vec![8]),
            ("attn.q_norm.weight", vec![8]),
            ("attn.qkv.bias", vec![48]),
            ("attn.qkv.weight", vec![48, 16]),
            ("ls1.gamma", vec![16]),
            ("ls2.gamma", vec![16]),
            ("mlp.fc1.bias", vec![64]),
            ("mlp.fc1.weight", vec![64, 16]),
            ("mlp.fc2.bias", vec![16]),
            ("mlp.fc2.weight", vec![16, 64]),
            ("norm1.bias", vec![16]),
            ("norm1.weight", vec![16]),
            ("norm2.bias", vec![16]),
            ("norm2.weight", vec![16]),
        ]
        .into_iter()
        .map(|(k, s)| (format!("blocks.0.{k}"), s))
        .collect();
        assert_eq!(keys(&vs), expected);
        let x = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
        assert_eq!(b.forward(&x, false).unwrap().size(), [2, 5, 16]);
    }

    #[test]
    fn terramind_options_give_bias_free_norms_and_a_gated_mlp() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = BlockConfig::timm(12, 3, 4.0);
        cfg.qkv_bias = false;
        cfg.proj_bias = false;
        cfg.norm_bias = false;
        cfg.init = LinearInit::Xavier;
        cfg.mlp.kind = MlpKind::Gated;
        cfg.mlp.hidden = 32;
        cfg.mlp.bias = false;
        cfg.mlp.act = Act::Silu;
        let b = Block::new(vs.root(), &cfg);
        let k = keys(&vs);
        let names: Vec<&str> = k.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "attn.proj.weight",
                "attn.qkv.weight",
                "mlp.fc1.weight",
                "mlp.fc2.weight",
                "mlp.fc3.weight",
                "norm1.bias",
                "norm1.weight",
                "norm2.bias",
                "norm2.weight",
            ]
        );
        // The bias of a bias-free LayerNorm is a buffer, not a trainable variable.
        assert_eq!(vs.trainable_variables().len(), names.len() - 2);
        let x = Tensor::randn([1, 4, 12], (Kind::Float, Device::Cpu));
        assert_eq!(b.forward(&x, false).unwrap().size(), [1, 4, 12]);
    }

    #[test]
    fn attention_matches_the_formula_and_calls_the_rope_hook() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = BlockConfig::timm(8, 2, 2.0);
        let attn = Attention::new(vs.root(), &cfg);
        let x = Tensor::randn([1, 3, 8], (Kind::Float, Device::Cpu));
        let v = vs.variables();
        // softmax(q k^T / sqrt(hd)) v per head, by hand.
        let qkv = x.linear(&v["qkv.weight"], Some(&v["qkv.bias"]));
        let qkv = qkv.reshape([1, 3, 3, 2, 4]).permute([2, 0, 3, 1, 4]);
        let (q, k, vv) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let a = (q.matmul(&k.transpose(-2, -1)) / 2.0).softmax(-1, Kind::Float);
        let y = a.matmul(&vv).transpose(1, 2).reshape([1, 3, 8]);
        let want = y.linear(&v["proj.weight"], Some(&v["proj.bias"]));
        let got = attn.forward(&x, false).unwrap();
        assert!(got.allclose(&want, 1e-5, 1e-5, false));
        // A hook that zeroes q makes attention uniform: every token gets mean(v).
        let calls = std::cell::Cell::new(0);
        let hook = |q: &Tensor, k: &Tensor| {
            calls.set(calls.get() + 1);
            Ok((q.zeros_like(), k.shallow_clone()))
        };
        let got = attn.forward_with(&x, false, Some(&hook)).unwrap();
        let y = vv
            .mean_dim(-2, true, Kind::Float)
            .expand([1, 2, 3, 4], false);
        let want = y
            .transpose(1, 2)
            .reshape([1, 3, 8])
            .linear(&v["proj.weight"], Some(&v["proj.bias"]));
        assert_eq!(calls.get(), 1);
        assert!(got.allclose(&want, 1e-5, 1e-5, false));
    }

    #[test]
    fn mask_k_bias_keeps_the_keys_and_leaves_k_without_bias() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = BlockConfig::timm(8, 2, 2.0);
        cfg.mask_k_bias = true;
        let attn = Attention::new(vs.root(), &cfg);
        let k = keys(&vs);
        let names: Vec<&str> = k.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "proj.bias",
                "proj.weight",
                "qkv.bias",
                "qkv.bias_mask",
                "qkv.weight"
            ]
        );
        // the mask is a buffer: 1 for q and v, 0 for k
        assert_eq!(vs.trainable_variables().len(), 4);
        let v = vs.variables();
        let mut m = [1f32; 24];
        m[8..16].fill(0.0);
        let want_mask = Tensor::from_slice(&m);
        assert!(v["qkv.bias_mask"].equal(&want_mask));
        // With a non-zero bias, the masked attention equals an unmasked one whose k bias is
        // zero.
        tch::no_grad(|| {
            v["qkv.bias"]
                .shallow_clone()
                .copy_(&Tensor::randn([24], (Kind::Float, Device::Cpu)));
        });
        let vs2 = nn::VarStore::new(Device::Cpu);
        let plain = Attention::new(vs2.root(), &BlockConfig::timm(8, 2, 2.0));
        let v2 = vs2.variables();
        tch::no_grad(|| {
            for k in ["qkv.weight", "proj.weight", "proj.bias"] {
                v2[k].shallow_clone().copy_(&v[k]);
            }
            v2["qkv.bias"]
                .shallow_clone()
                .copy_(&(&v["qkv.bias"] * &want_mask));
        });
        let x = Tensor::randn([1, 3, 8], (Kind::Float, Device::Cpu));
        let got = tch::no_grad(|| attn.forward(&x, false)).unwrap();
        let want = tch::no_grad(|| plain.forward(&x, false)).unwrap();
        assert!(got.allclose(&want, 1e-6, 1e-6, false));
    }

    #[test]
    fn with_mlp_takes_another_feed_forward() {
        #[derive(Debug)]
        struct Zero;
        impl FeedForward for Zero {
            fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
                Ok(x.zeros_like())
            }
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = BlockConfig::timm(8, 2, 4.0);
        let b = Block::with_mlp(vs.root(), &cfg, |_| Box::new(Zero));
        assert!(!vs.variables().keys().any(|k| k.starts_with("mlp.")));
        let x = Tensor::randn([1, 3, 8], (Kind::Float, Device::Cpu));
        // The MLP branch adds nothing: x + attn(norm1(x)), norm1 at its init (1, 0).
        let normed = x.layer_norm([8], None::<Tensor>, None::<Tensor>, 1e-6, false);
        let want = &x + b.attn.forward(&normed, false).unwrap();
        let y = b.forward(&x, false).unwrap();
        assert!(y.allclose(&want, 1e-5, 1e-5, false));
    }
}
