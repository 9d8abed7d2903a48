//! The building blocks Clay v1 (`terratorch/models/backbones/clay_v1/`, the `timm`
//! plugin's `clay_v1_base`) and Clay v1.5 (`terratorch/models/backbones/clay_v15/`, the
//! `terratorch` plugin's `Clay1_5ModelFactory`) share: the sin-cos encodings of `utils.py`,
//! `FCBlock`, `WavesTransformer` and `DynamicEmbedding` of `factory.py`/`modules.py`, and one
//! layer of vit-pytorch's `Transformer`. The two versions differ in size (fixed for v1, the
//! factory's arguments for v1.5) and in what surrounds these blocks, not in the blocks.
//!
//! Keys are upstream's: a [`DynamicEmbedding`] under `patch_embedding` holds
//! `weight_generator.*` and `fclayer.*`; a [`TransformerLayer`] under `layers.{i}` holds
//! `0.norm`, `0.to_qkv`, `0.to_out`, `1.net.{0,1,3}`.

use crate::linear::Linear;
use crate::norm::{LayerNorm, TORCH_LN_EPS};
use crate::torch_transformer::TransformerEncoderLayer;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_plugin_api::Result;

/// Width of the wavelength embedding (`wave_dim`).
pub const WAVE_DIM: i64 = 128;
/// Latent weight tokens of the [`WavesTransformer`] (`num_latent_tokens`).
pub const LATENT_TOKENS: i64 = 128;
/// `DynamicEmbedding` scales the generated kernels by this before the convolution.
pub const KERNEL_SCALE: f64 = 0.02;

/// `posemb_sincos_1d(pos, dim)`: `[N] -> [N, dim]`, sin then cos, float32.
pub fn posemb_sincos_1d(pos: &Tensor, dim: i64) -> Result<Tensor> {
    let half = dim / 2;
    let omega = Tensor::f_arange(half, (pos.kind(), pos.device()))?.f_div_scalar(half - 1)?;
    let omega = Tensor::f_pow_scalar(10000, &omega)?.f_reciprocal()?;
    let scaled = pos.f_unsqueeze(1)?.f_mul(&omega.f_unsqueeze(0)?)?;
    Ok(Tensor::f_cat(&[scaled.f_sin()?, scaled.f_cos()?], 1)?.f_to_kind(Kind::Float)?)
}

/// `posemb_sincos_2d_with_gsd(h, w, dim, gsd)`: `[h*w, dim]` as (x sin, x cos, y sin,
/// y cos) in row-major token order, float32, on the CPU.
pub fn posemb_sincos_2d_with_gsd(h: i64, w: i64, dim: i64, gsd: f64) -> Result<Tensor> {
    let opts = (Kind::Float, tch::Device::Cpu);
    let quarter = dim / 4;
    let omega = Tensor::f_arange(quarter, opts)?.f_div_scalar(quarter - 1)?;
    // upstream: 1 / (10000 ** (2 * omega / dim)) * (gsd / 1.0)
    let omega = Tensor::f_pow_scalar(10000, &omega.f_mul_scalar(2)?.f_div_scalar(dim)?)?
        .f_reciprocal()?
        .f_mul_scalar(gsd)?;
    // meshgrid(arange(h), arange(w), indexing="ij"), flattened
    let y = Tensor::f_arange(h, opts)?.f_repeat_interleave_self_int(w, 0, None)?;
    let x = Tensor::f_arange(w, opts)?.f_repeat([h])?;
    let y = y.f_unsqueeze(1)?.f_mul(&omega.f_unsqueeze(0)?)?;
    let x = x.f_unsqueeze(1)?.f_mul(&omega.f_unsqueeze(0)?)?;
    Ok(Tensor::f_cat(
        &[x.f_sin()?, x.f_cos()?, y.f_sin()?, y.f_cos()?],
        1,
    )?)
}

/// `FCBlock`: `x + gelu(l2(gelu(l1(x))))`.
#[derive(Debug)]
pub struct FcBlock {
    l1: Linear,
    l2: Linear,
}

impl FcBlock {
    /// Two `size -> size` linears under `p` (`l1`, `l2`).
    pub fn new(p: nn::Path, size: i64) -> Self {
        Self {
            l1: Linear::torch(&p / "l1", size, size, true),
            l2: Linear::torch(&p / "l2", size, size, true),
        }
    }

    /// `x + gelu(l2(gelu(l1(x))))`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.l2.forward_gelu(&self.l1.forward_gelu(x)?)?;
        Ok(x.f_add(&y)?)
    }
}

/// `WavesTransformer` (encoder side, `is_decoder=False`): one `nn.TransformerEncoderLayer`
/// over learned weight tokens, the wavelength embeddings and a bias token; the kernels come
/// from the wavelengths' outputs and the bias from the bias token's.
#[derive(Debug)]
pub struct WavesTransformer {
    layer: TransformerEncoderLayer,
    fc_weight: Linear,
    fc_bias: Linear,
    weight_tokens: Tensor,
    bias_token: Tensor,
}

impl WavesTransformer {
    /// Under `p`, generating `output_dim` kernel values per band and an `embed_dim` bias.
    pub fn new(p: nn::Path, output_dim: i64, embed_dim: i64) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            layer: TransformerEncoderLayer::new(&p / "encoder" / "layers" / 0, WAVE_DIM, 4)?,
            fc_weight: Linear::torch(&p / "fc_weight", WAVE_DIM, output_dim, true),
            fc_bias: Linear::torch(&p / "fc_bias", WAVE_DIM, embed_dim, true),
            weight_tokens: p.var("weight_tokens", &[LATENT_TOKENS, WAVE_DIM], init),
            bias_token: p.var("bias_token", &[1, WAVE_DIM], init),
        })
    }

    /// `[C, wave_dim]` -> (weights `[C, output_dim]`, bias `[embed_dim]`).
    pub fn forward(&self, waves: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = waves.size()[0];
        let x = Tensor::f_cat(&[&self.weight_tokens, waves, &self.bias_token], 0)?;
        let out = self.layer.forward(&x)?;
        // the wavelengths' outputs plus their inputs (a residual upstream)
        let tokens =
            out.f_narrow(0, LATENT_TOKENS, c)?
                .f_add(&x.f_narrow(0, LATENT_TOKENS, c)?)?;
        let weights = self.fc_weight.forward(&tokens)?;
        let bias = self.fc_bias.forward(&out.f_get(LATENT_TOKENS + c)?)?;
        Ok((weights, bias))
    }
}

/// `DynamicEmbedding` (encoder side): a `patch_size` x `patch_size` convolution whose
/// kernels and bias are generated from the bands' wavelengths, so one network takes any
/// set of bands.
#[derive(Debug)]
pub struct DynamicEmbedding {
    weight_generator: WavesTransformer,
    fclayer: FcBlock,
    patch_size: i64,
    dim: i64,
}

impl DynamicEmbedding {
    /// Under `p` (`patch_embedding`), for tokens of width `dim`.
    pub fn new(p: nn::Path, patch_size: i64, dim: i64) -> Result<Self> {
        Ok(Self {
            weight_generator: WavesTransformer::new(
                &p / "weight_generator",
                patch_size * patch_size * dim,
                dim,
            )?,
            fclayer: FcBlock::new(&p / "fclayer", WAVE_DIM),
            patch_size,
            dim,
        })
    }

    /// `[B, C, H, W]` with the wavelengths `waves` `[C]` (µm) -> `[B, (H/k)*(W/k), dim]`.
    pub fn forward(&self, x: &Tensor, waves: &Tensor) -> Result<Tensor> {
        let c = waves.size()[0];
        let k = self.patch_size;
        let w = self.fclayer.forward(&posemb_sincos_1d(waves, WAVE_DIM)?)?;
        let (weight, bias) = self.weight_generator.forward(&w)?;
        // "cin (cout k1 k2) -> cout cin k1 k2"
        let weight = weight
            .f_view([c, self.dim, k, k])?
            .f_permute([1, 0, 2, 3])?
            .f_mul_scalar(KERNEL_SCALE)?;
        let y = x.f_conv2d(&weight, Some(&bias), [k, k], [0, 0], [1, 1], 1)?;
        Ok(y.f_flatten(2, 3)?.f_transpose(1, 2)?)
    }
}

/// One layer of vit-pytorch's `Transformer` (lucidrains): `Attention` (its own pre-norm,
/// no biases) then `FeedForward` (`net`: LayerNorm, Linear, GELU, Linear).
///
/// Not the shared [`crate::vit::Block`]: the module tree gives other keys (`{i}.0.norm`,
/// `{i}.0.to_qkv`, `{i}.0.to_out`, `{i}.1.net.0..3`), the attention width is
/// `heads * dim_head` rather than the token width, and there is no drop path or
/// LayerScale. Only the arithmetic is the same.
#[derive(Debug)]
pub struct TransformerLayer {
    attn_norm: LayerNorm,
    to_qkv: Linear,
    to_out: Linear,
    ff_norm: LayerNorm,
    ff1: Linear,
    ff2: Linear,
    heads: i64,
    dim_head: i64,
}

impl TransformerLayer {
    /// Under `p` (`layers.{i}`): tokens of width `dim`, `heads` heads of `dim_head`, an
    /// MLP of `int(dim * mlp_ratio)`.
    pub fn new(p: nn::Path, dim: i64, heads: i64, dim_head: i64, mlp_ratio: f64) -> Self {
        let a = &p / 0;
        let f = &p / 1 / "net";
        let inner = dim_head * heads;
        // int(dim * mlp_ratio) upstream
        let hidden = (dim as f64 * mlp_ratio) as i64;
        Self {
            attn_norm: LayerNorm::new(&a / "norm", dim, TORCH_LN_EPS),
            to_qkv: Linear::torch(&a / "to_qkv", dim, inner * 3, false),
            to_out: Linear::torch(&a / "to_out", inner, dim, false),
            ff_norm: LayerNorm::new(&f / 0, dim, TORCH_LN_EPS),
            ff1: Linear::torch(&f / 1, dim, hidden, true),
            ff2: Linear::torch(&f / 3, hidden, dim, true),
            heads,
            dim_head,
        }
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.size3()?;
        let x = self.attn_norm.forward(x)?;
        // [B, N, 3 * h * d] -> [3, B, h, N, d]: chunk(3) then "b n (h d) -> b h n d"
        let qkv = self
            .to_qkv
            .forward(&x)?
            .f_reshape([b, n, 3, self.heads, self.dim_head])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let y = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        )?;
        // "b h n d -> b n (h d)"
        let y = y
            .f_transpose(1, 2)?
            .f_reshape([b, n, self.heads * self.dim_head])?;
        self.to_out.forward(&y)
    }

    /// `x = attn(x) + x; x = ff(x) + x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.attention(x)?.f_add(x)?;
        let y = self
            .ff2
            .forward(&self.ff1.forward_gelu(&self.ff_norm.forward(&x)?)?)?;
        Ok(y.f_add(&x)?)
    }
}
