//! The Clay v1.5 encoder as TerraTorch 1.2.12+ uses it downstream: `Encoder` of
//! `terratorch/models/backbones/clay_v15/model.py` (with `DynamicEmbedding` and
//! `WavesTransformer` of `factory.py`, vit-pytorch's `Transformer` of `backbone.py`, the
//! sin-cos encodings of `utils.py`), run as `ClayMAEBackbone` of
//! `terratorch/models/clay1_5_model_factory.py` does: no masking, the wavelengths and GSD of one
//! platform's metadata, zero time and lat/lon, the class token dropped, one `[B, dim, h, w]` map.
//!
//! The arithmetic is Clay v1's (the `timm` plugin's `clay_v1_base`), with the width, depth,
//! heads, head width, MLP ratio and patch size as arguments instead of the base preset; the
//! keys are `encoder_module.*` under the backbone, as upstream's wrapper names them.

use serde_json::{json, Map, Value};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_layers::linear::Linear;
use terrahost_layers::norm::{LayerNorm, TORCH_LN_EPS};
use terrahost_layers::torch_transformer::TransformerEncoderLayer;
use terrahost_plugin_api::sdk::Model;
use terrahost_plugin_api::{PluginError, Result};

/// The wavelength embedding width (`wave_dim`, fixed by `Encoder`).
const WAVE_DIM: i64 = 128;
/// The latent tokens of the weight generator (`num_latent_tokens`, fixed by `Encoder`).
const LATENT_TOKENS: i64 = 128;
/// `DynamicEmbedding` scales the generated kernels by this before the convolution.
const KERNEL_SCALE: f64 = 0.02;
/// Time (4) and lat/lon (4) values appended to every token's position encoding.
const METADATA_DIMS: i64 = 8;

/// The encoder's size: the factory's `dim`, `depth`, `heads`, `dim_head`, `mlp_ratio` and
/// `patch_size`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Token width.
    pub dim: i64,
    /// Transformer layers.
    pub depth: i64,
    /// Attention heads.
    pub heads: i64,
    /// Width of one head.
    pub dim_head: i64,
    /// MLP width over `dim`.
    pub mlp_ratio: f64,
    /// Patch size of the dynamic embedding.
    pub patch_size: i64,
}

impl Config {
    /// Checks what the reference asserts or what would fail later with a shape error.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.dim <= METADATA_DIMS || (self.dim - METADATA_DIMS) % 4 != 0 {
            return bad(format!(
                "Clay v1.5: `dim` {} must exceed 8 with dim - 8 a multiple of 4 (the 2-D sin-cos position \
                 encoding takes dim - 8 values; time and lat/lon the other 8)",
                self.dim
            ));
        }
        for (name, v) in [
            ("depth", self.depth),
            ("heads", self.heads),
            ("dim_head", self.dim_head),
            ("patch_size", self.patch_size),
        ] {
            if v < 1 {
                return bad(format!("Clay v1.5: `{name}` must be at least 1, got {v}"));
            }
        }
        // NaN fails too: int(dim * nan) raises upstream
        if self.mlp_ratio.is_nan() || (self.dim as f64 * self.mlp_ratio) < 1.0 {
            return bad(format!(
                "Clay v1.5: `mlp_ratio` {} gives no MLP width for dim {}",
                self.mlp_ratio, self.dim
            ));
        }
        Ok(())
    }
}

/// `posemb_sincos_1d(pos, dim)`: `[N] -> [N, dim]`, sin then cos, float32.
fn posemb_sincos_1d(pos: &Tensor, dim: i64) -> Result<Tensor> {
    let half = dim / 2;
    let omega = Tensor::f_arange(half, (Kind::Float, pos.device()))?.f_div_scalar(half - 1)?;
    let omega = Tensor::f_pow_scalar(10000, &omega)?.f_reciprocal()?;
    let scaled = pos.f_unsqueeze(1)?.f_mul(&omega.f_unsqueeze(0)?)?;
    Ok(Tensor::f_cat(&[scaled.f_sin()?, scaled.f_cos()?], 1)?.f_to_kind(Kind::Float)?)
}

/// `posemb_sincos_2d_with_gsd(h, w, dim, gsd)`: `[h*w, dim]` as (x sin, x cos, y sin, y cos)
/// in row-major token order, float32.
fn posemb_sincos_2d_with_gsd(h: i64, w: i64, dim: i64, gsd: f64) -> Result<Tensor> {
    let opts = (Kind::Float, tch::Device::Cpu);
    let quarter = dim / 4;
    let omega = Tensor::f_arange(quarter, opts)?.f_div_scalar(quarter - 1)?;
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
struct FcBlock {
    l1: Linear,
    l2: Linear,
}

impl FcBlock {
    fn new(p: nn::Path, size: i64) -> Self {
        Self {
            l1: Linear::torch(&p / "l1", size, size, true),
            l2: Linear::torch(&p / "l2", size, size, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.l2.forward_gelu(&self.l1.forward_gelu(x)?)?;
        Ok(x.f_add(&y)?)
    }
}

/// `WavesTransformer` (encoder side): kernels and bias generated from the wavelengths.
#[derive(Debug)]
struct WavesTransformer {
    layer: TransformerEncoderLayer,
    fc_weight: Linear,
    fc_bias: Linear,
    weight_tokens: Tensor,
    bias_token: Tensor,
}

impl WavesTransformer {
    fn new(p: nn::Path, output_dim: i64, embed_dim: i64) -> Result<Self> {
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

    /// `[C, wave_dim]` -> (weights `[C, dim*k*k]`, bias `[dim]`).
    fn forward(&self, waves: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = waves.size()[0];
        let x = Tensor::f_cat(&[&self.weight_tokens, waves, &self.bias_token], 0)?;
        let out = self.layer.forward(&x)?;
        let tokens =
            out.f_narrow(0, LATENT_TOKENS, c)?
                .f_add(&x.f_narrow(0, LATENT_TOKENS, c)?)?;
        let weights = self.fc_weight.forward(&tokens)?;
        let bias = self.fc_bias.forward(&out.f_get(LATENT_TOKENS + c)?)?;
        Ok((weights, bias))
    }
}

/// One vit-pytorch `Transformer` layer: `Attention` (its own pre-norm, no biases) then
/// `FeedForward` (`net`: LayerNorm, Linear, GELU, Linear). Not the shared ViT `Block`: the
/// keys (`{i}.0.to_qkv`, `{i}.1.net.1`) and the attention width (`heads * dim_head`) differ.
#[derive(Debug)]
struct Layer {
    attn_norm: LayerNorm,
    to_qkv: Linear,
    to_out: Linear,
    ff_norm: LayerNorm,
    ff1: Linear,
    ff2: Linear,
    heads: i64,
    dim_head: i64,
}

impl Layer {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let a = &p / 0;
        let f = &p / 1 / "net";
        let inner = cfg.dim_head * cfg.heads;
        // int(dim * mlp_ratio) upstream
        let hidden = (cfg.dim as f64 * cfg.mlp_ratio) as i64;
        Self {
            attn_norm: LayerNorm::new(&a / "norm", cfg.dim, TORCH_LN_EPS),
            to_qkv: Linear::torch(&a / "to_qkv", cfg.dim, inner * 3, false),
            to_out: Linear::torch(&a / "to_out", inner, cfg.dim, false),
            ff_norm: LayerNorm::new(&f / 0, cfg.dim, TORCH_LN_EPS),
            ff1: Linear::torch(&f / 1, cfg.dim, hidden, true),
            ff2: Linear::torch(&f / 3, hidden, cfg.dim, true),
            heads: cfg.heads,
            dim_head: cfg.dim_head,
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.attention(x)?.f_add(x)?;
        let y = self
            .ff2
            .forward(&self.ff1.forward_gelu(&self.ff_norm.forward(&x)?)?)?;
        Ok(y.f_add(&x)?)
    }
}

/// `ClayMAEBackbone`: the Clay v1.5 `Encoder` (keys `encoder_module.*`) for one platform.
#[derive(Debug)]
pub struct ClayV15Backbone {
    cfg: Config,
    cls_token: Tensor,
    fclayer: FcBlock,
    weight_generator: WavesTransformer,
    layers: Vec<Layer>,
    norm: LayerNorm,
    /// The platform's wavelengths, in channel order.
    waves: Vec<f64>,
    gsd: f64,
}

impl ClayV15Backbone {
    /// The encoder under `p` (the backbone's root), for a platform with these wavelengths
    /// (one per input channel) and ground sample distance.
    pub fn new(p: nn::Path, cfg: Config, waves: Vec<f64>, gsd: f64) -> Result<Self> {
        cfg.validate()?;
        let e = &p / "encoder_module";
        let pe = &e / "patch_embedding";
        let t = &e / "transformer";
        let output_dim = cfg.patch_size * cfg.patch_size * cfg.dim;
        Ok(Self {
            cls_token: e.var(
                "cls_token",
                &[1, 1, cfg.dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            weight_generator: WavesTransformer::new(&pe / "weight_generator", output_dim, cfg.dim)?,
            fclayer: FcBlock::new(&pe / "fclayer", WAVE_DIM),
            layers: (0..cfg.depth)
                .map(|i| Layer::new(&t / "layers" / i, &cfg))
                .collect(),
            norm: LayerNorm::new(&t / "norm", cfg.dim, TORCH_LN_EPS),
            cfg,
            waves,
            gsd,
        })
    }

    /// `DynamicEmbedding.forward`: `[B, C, H, W]` -> `[B, (H/k)*(W/k), dim]`.
    fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.cfg.patch_size;
        // torch.tensor(list of floats): float32
        let waves = Tensor::from_slice(&self.waves)
            .f_to_kind(Kind::Float)?
            .f_to_device(x.device())?;
        let c = self.waves.len() as i64;
        let w = self.fclayer.forward(&posemb_sincos_1d(&waves, WAVE_DIM)?)?;
        let (weight, bias) = self.weight_generator.forward(&w)?;
        // "cin (cout k1 k2) -> cout cin k1 k2"
        let weight = weight
            .f_view([c, self.cfg.dim, k, k])?
            .f_permute([1, 0, 2, 3])?
            .f_mul_scalar(KERNEL_SCALE)?;
        let y = x.f_conv2d(&weight, Some(&bias), [k, k], [0, 0], [1, 1], 1)?;
        Ok(y.f_flatten(2, 3)?.f_transpose(1, 2)?)
    }

    /// The whole downstream forward: `[B, C, H, W]` -> `[B, dim, g, g]` with `g = sqrt(L)`.
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.size()[0];
        let patches = self.patch_embed(x)?;
        let (_, l, d) = patches.size3()?;
        // upstream takes the grid as int(sqrt(L)): square inputs only
        let g = (l as f64).sqrt() as i64;
        if g * g != l {
            return Err(PluginError::forward_failed(format!(
                "Clay v1.5: the input gives {l} patches, not a square grid; Clay v1.5's encoder takes square \
                 images (H = W, after padding to the patch size {})",
                self.cfg.patch_size
            )));
        }
        let pos = posemb_sincos_2d_with_gsd(g, g, self.cfg.dim - METADATA_DIMS, self.gsd)?
            .f_to_device(x.device())?;
        // time and lat/lon are zeros downstream: the last 8 values of every token's encoding
        let meta = Tensor::f_zeros([l, METADATA_DIMS], (Kind::Float, x.device()))?;
        let enc = Tensor::f_cat(&[pos, meta], 1)?.f_unsqueeze(0)?;
        let patches = patches.f_add(&enc)?;
        let cls = self.cls_token.f_expand([b, 1, d], false)?;
        let mut t = Tensor::f_cat(&[cls, patches], 1)?;
        for layer in &self.layers {
            t = layer.forward(&t)?;
        }
        let t = self.norm.forward(&t)?;
        // drop the class token; [B, L, D] -> [B, D, g, g]
        Ok(t.f_narrow(1, 1, l)?
            .f_transpose(1, 2)?
            .f_reshape([b, d, g, g])?)
    }
}

impl Model for ClayV15Backbone {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let x = xs.first().ok_or_else(|| {
            PluginError::invalid_argument("Clay v1.5 takes the image as its first input")
        })?;
        Ok(vec![self.features(x)?])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.dim]
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("patch_size".into(), json!(self.cfg.patch_size));
        m.insert("dim".into(), json!(self.cfg.dim));
        m.insert("waves".into(), json!(self.waves));
        m.insert("gsd".into(), json!(self.gsd));
        m
    }
}
