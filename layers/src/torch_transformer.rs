//! Mirrors PyTorch's `torch.nn.TransformerEncoderLayer` (`torch/nn/modules/transformer.py`,
//! torch 2.13) as the wavelength weight generators of DOFA (`torchgeo/models/dofa.py`,
//! `TransformerWeightGenerator`) and Clay (`terratorch/models/backbones/clay_v1/modules.py`,
//! `WavesTransformer`) use it: one post-norm layer (`norm_first=False`), GELU, no dropout,
//! on an unbatched `[L, d_model]` sequence (so PyTorch takes its standard path, never the
//! fused "fast path", which needs a batched input).
//!
//! Keys, under the layer's path (`...transformer_encoder.layers.0`): `self_attn.in_proj_weight`,
//! `self_attn.in_proj_bias`, `self_attn.out_proj.{weight,bias}`, `linear1`, `linear2`,
//! `norm1`, `norm2`.
use tch::{nn, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// `nn.TransformerEncoderLayer`'s default `dim_feedforward`.
pub const DIM_FEEDFORWARD: i64 = 2048;

/// `nn.LayerNorm`'s default epsilon (`layer_norm_eps` of the layer).
pub const LAYER_NORM_EPS: f64 = 1e-5;

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps: LAYER_NORM_EPS,
            ..Default::default()
        },
    )
}

/// One `nn.TransformerEncoderLayer(d_model, nhead, activation="gelu", dropout=0,
/// norm_first=False)`: `x = norm1(x + self_attn(x)); x = norm2(x + linear2(gelu(linear1(x))))`.
#[derive(Debug)]
pub struct TransformerEncoderLayer {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
    d_model: i64,
    nhead: i64,
}

impl TransformerEncoderLayer {
    /// A layer of width `d_model` with `nhead` heads and the default feed-forward width
    /// under `p` (e.g. `transformer_encoder.layers.0`).
    pub fn new(p: nn::Path, d_model: i64, nhead: i64) -> Result<Self> {
        if d_model < 1 || nhead < 1 || d_model % nhead != 0 {
            return Err(PluginError::invalid_argument(format!(
                "a TransformerEncoderLayer needs d_model divisible by nhead, got {d_model} and {nhead}"
            )));
        }
        let attn = &p / "self_attn";
        let bound = (6.0 / (d_model + 3 * d_model) as f64).sqrt();
        let in_proj_weight = attn.var(
            "in_proj_weight",
            &[3 * d_model, d_model],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let in_proj_bias = attn.var("in_proj_bias", &[3 * d_model], nn::Init::Const(0.0));
        let lin = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        Ok(Self {
            in_proj_weight,
            in_proj_bias,
            out_proj: lin(&attn / "out_proj", d_model, d_model),
            linear1: lin(&p / "linear1", d_model, DIM_FEEDFORWARD),
            linear2: lin(&p / "linear2", DIM_FEEDFORWARD, d_model),
            norm1: layer_norm(&p / "norm1", d_model),
            norm2: layer_norm(&p / "norm2", d_model),
            d_model,
            nhead,
        })
    }

    /// Multi-head self-attention (`F.multi_head_attention_forward` with one packed input
    /// projection and `need_weights=False`): `[L, E] -> [L, E]`. Its projections stay
    /// float32 under `--precision int8`, as PyTorch's dynamic quantization leaves them.
    fn self_attn(&self, x: &Tensor) -> Result<Tensor> {
        crate::precision::float32_under_int8(|| self.self_attn_inner(x))
    }

    fn self_attn_inner(&self, x: &Tensor) -> Result<Tensor> {
        let (l, e) = x.size2()?;
        let (h, hd) = (self.nhead, e / self.nhead);
        // [L, 3E] -> [3, 1, heads, L, head_dim]
        let qkv = x
            .f_linear(&self.in_proj_weight, Some(&self.in_proj_bias))?
            .f_reshape([l, 3, h, hd])?
            .f_permute([1, 2, 0, 3])?
            .f_unsqueeze(1)?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let y = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        )?;
        // [1, heads, L, head_dim] -> [L, E]
        let y = y
            .f_permute([2, 0, 1, 3])?
            .f_contiguous()?
            .f_reshape([l, e])?;
        Ok(y.apply(&self.out_proj))
    }

    /// `[L, d_model] -> [L, d_model]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 2 || size[1] != self.d_model {
            return Err(PluginError::forward_failed(format!(
                "the wavelength transformer takes a [L, {}] sequence, got {size:?}",
                self.d_model
            )));
        }
        let x = x.f_add(&self.self_attn(x)?)?.apply(&self.norm1);
        let ff = x.apply(&self.linear1).f_gelu("none")?.apply(&self.linear2);
        Ok(x.f_add(&ff)?.apply(&self.norm2))
    }
}
