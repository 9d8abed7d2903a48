//! The Clay v1.5 encoder as TerraTorch 1.2.12+ uses it downstream: `Encoder` of
//! `terratorch/models/backbones/clay_v15/model.py` (with `DynamicEmbedding` and
//! `WavesTransformer` of `factory.py`, vit-pytorch's `Transformer` of `backbone.py`, the
//! sin-cos encodings of `utils.py`), run as `ClayMAEBackbone` of
//! `terratorch/models/clay1_5_model_factory.py` does: no masking, the wavelengths and GSD of one
//! platform's metadata, zero time and lat/lon, the class token dropped, one `[B, dim, h, w]` map.
//!
//! The blocks are Clay v1's (`terrahost_layers::clay`, which the `timm` plugin's
//! `clay_v1_base` builds too), with the width, depth, heads, head width, MLP ratio and patch
//! size as arguments instead of the base preset; the keys are `encoder_module.*` under the
//! backbone, as upstream's wrapper names them.

use serde_json::{json, Map, Value};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_layers::clay::{posemb_sincos_2d_with_gsd, DynamicEmbedding, TransformerLayer};
use terrahost_layers::norm::{LayerNorm, TORCH_LN_EPS};
use terrahost_plugin_api::sdk::Model;
use terrahost_plugin_api::{PluginError, Result};

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

/// `ClayMAEBackbone`: the Clay v1.5 `Encoder` (keys `encoder_module.*`) for one platform.
#[derive(Debug)]
pub struct ClayV15Backbone {
    cfg: Config,
    cls_token: Tensor,
    patch_embedding: DynamicEmbedding,
    layers: Vec<TransformerLayer>,
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
        let t = &e / "transformer";
        Ok(Self {
            cls_token: e.var(
                "cls_token",
                &[1, 1, cfg.dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            patch_embedding: DynamicEmbedding::new(
                &e / "patch_embedding",
                cfg.patch_size,
                cfg.dim,
            )?,
            layers: (0..cfg.depth)
                .map(|i| {
                    TransformerLayer::new(
                        &t / "layers" / i,
                        cfg.dim,
                        cfg.heads,
                        cfg.dim_head,
                        cfg.mlp_ratio,
                    )
                })
                .collect(),
            norm: LayerNorm::new(&t / "norm", cfg.dim, TORCH_LN_EPS),
            cfg,
            waves,
            gsd,
        })
    }

    /// `DynamicEmbedding.forward` on the platform's wavelengths: `[B, C, H, W]` ->
    /// `[B, (H/k)*(W/k), dim]`.
    fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        // torch.tensor(list of floats): float32
        let waves = Tensor::from_slice(&self.waves)
            .f_to_kind(Kind::Float)?
            .f_to_device(x.device())?;
        self.patch_embedding.forward(x, &waves)
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
