//! `torch.nn.MultiheadAttention` (`torch/nn/modules/activation.py`, torch 2.13) as DETR's
//! transformers call it: sequence-first `[L, N, E]` inputs, separate query, key and value
//! tensors (query and key carry position embeddings, the value does not), no masks (the
//! wrappers' padding masks are all false), eval mode. That is PyTorch's general path of
//! `F.multi_head_attention_forward` with `need_weights=True`: the packed projection split in
//! three, the query scaled by `1/sqrt(head_dim)`, `bmm`, softmax, `bmm`, `out_proj`.
//!
//! Keys under the module's path: `in_proj_weight`, `in_proj_bias`, `out_proj.{weight,bias}`.
use tch::{nn, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// `nn.MultiheadAttention(embed_dim, num_heads)` (bias, no extra key/value biases).
#[derive(Debug)]
pub struct MultiheadAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    embed_dim: i64,
    num_heads: i64,
}

impl MultiheadAttention {
    /// The module under `p`; `embed_dim` must be divisible by `num_heads` (PyTorch asserts it).
    pub fn new(p: nn::Path, embed_dim: i64, num_heads: i64) -> Result<Self> {
        if embed_dim < 1 || num_heads < 1 || embed_dim % num_heads != 0 {
            return Err(PluginError::invalid_argument(format!(
                "MultiheadAttention: embed_dim must be divisible by num_heads, got {embed_dim} and {num_heads}"
            )));
        }
        let bound = (6.0 / (4 * embed_dim) as f64).sqrt();
        let u = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let out = &p / "out_proj";
        let out_bound = 1.0 / (embed_dim as f64).sqrt();
        Ok(Self {
            in_proj_weight: p.var("in_proj_weight", &[3 * embed_dim, embed_dim], u),
            in_proj_bias: p.var("in_proj_bias", &[3 * embed_dim], nn::Init::Const(0.0)),
            out_proj_weight: out.var(
                "weight",
                &[embed_dim, embed_dim],
                nn::Init::Uniform {
                    lo: -out_bound,
                    up: out_bound,
                },
            ),
            out_proj_bias: out.var("bias", &[embed_dim], nn::Init::Const(0.0)),
            embed_dim,
            num_heads,
        })
    }

    /// `attn(query [Lq, N, E], key [Lk, N, E], value [Lk, N, E])[0] -> [Lq, N, E]`.
    pub fn forward(&self, query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
        let (qs, ks, vs) = (query.size(), key.size(), value.size());
        let e = self.embed_dim;
        if qs.len() != 3 || ks.len() != 3 || ks != vs || qs[1] != ks[1] || qs[2] != e || ks[2] != e
        {
            return Err(PluginError::forward_failed(format!(
                "MultiheadAttention: expected query [Lq, N, {e}] and key and value [Lk, N, {e}], got {qs:?}, \
                 {ks:?} and {vs:?}"
            )));
        }
        let (lq, n, lk) = (qs[0], qs[1], ks[0]);
        let (h, hd) = (self.num_heads, e / self.num_heads);
        let w = self.in_proj_weight.f_chunk(3, 0)?;
        let b = self.in_proj_bias.f_chunk(3, 0)?;
        // [L, N, E] -> [N * heads, L, head_dim]
        let heads = |x: &Tensor, i: usize, l: i64| -> Result<Tensor> {
            Ok(x.f_linear(&w[i], Some(&b[i]))?
                .f_view([l, n * h, hd])?
                .f_transpose(0, 1)?)
        };
        let q = heads(query, 0, lq)?;
        let k = heads(key, 1, lk)?;
        let v = heads(value, 2, lk)?;
        let q = q.f_mul_scalar((1.0 / hd as f64).sqrt())?;
        let attn = q.f_bmm(&k.f_transpose(-2, -1)?)?.f_softmax(-1, None)?;
        let out = attn
            .f_bmm(&v)?
            .f_transpose(0, 1)?
            .f_contiguous()?
            .f_view([lq * n, e])?
            .f_linear(&self.out_proj_weight, Some(&self.out_proj_bias))?;
        Ok(out.f_view([lq, n, e])?)
    }
}
