//! Mirrors TerraTorch 1.2.11's TerraMind backbone:
//! `terratorch/models/backbones/terramind/model/terramind_register.py` (the
//! `terramind_v1_tiny/small/base/large` presets, `build_terrammind_vit`, the band
//! selection of `select_modality_patch_embed_weights`), `terramind_vit.py`
//! (`TerraMindViT`: modalities, `merge_method`, the encoder), `encoder_embeddings.py`
//! (`ImageEncoderEmbedding`), `modality_info.py` (the raw image modalities) and
//! `tm_utils.py` (`Block`, `Attention`, `NormAttention`, `Mlp`, `GatedMlp`,
//! `LayerNorm`, the 2-D sin-cos embedding and `interpolate_pos_encoding`).
//!
//! Only raw image modalities are built (S2L1C, S2L2A, S1GRD, S1RTC, RGB, DEM, the
//! `MODALITY_INFO` keys with an `ImageEncoderEmbedding` such as `ndvi@264`, and new
//! modalities given as `{"name": channels}`). Modalities that need TerraMind's
//! tokenizers (`NDVI` and `LULC`, which upstream maps to `tok_ndvi@224`/`tok_lulc@224`,
//! `caption`, `coords`), `merge_method="dict"`, the `_tim` variants, `terramind_v01_*`,
//! the encoder-decoder and generation models and the tokenizers are refused with a
//! message that says they are not supported yet.
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};
// `tm_utils.LayerNorm(dim, eps=1e-6, bias=False)` keeps its bias as a zero buffer;
// `nn.Linear` with xavier-uniform weight and zero bias (upstream's `init_weights`).
use terrahost_layers::linear::Linear;
use terrahost_layers::norm::LayerNorm;
use terrahost_layers::vit::{Block, BlockConfig, LinearInit, MlpConfig, MlpKind};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, Entry, Model},
    ErrorKind, ModuleBox, ParamType, PluginError, Result,
};

/// The backbone presets this plugin registers.
pub const BACKBONES: [&str; 4] = [
    "terramind_v1_tiny",
    "terramind_v1_small",
    "terramind_v1_base",
    "terramind_v1_large",
];

/// TerraTorch's other TerraMind backbone registrations, refused by name.
pub const REFUSED_BACKBONES: [&str; 12] = [
    "terramind_v1_tiny_tim",
    "terramind_v1_small_tim",
    "terramind_v1_base_tim",
    "terramind_v1_large_tim",
    "terramind_v01_base",
    "terramind_v01_base_tim",
    // TerraTorch registers the v1 tokenizers as backbones too.
    "terramind_v1_tokenizer_s2l2a",
    "terramind_v1_tokenizer_s1rtc",
    "terramind_v1_tokenizer_s1grd",
    "terramind_v1_tokenizer_dem",
    "terramind_v1_tokenizer_lulc",
    "terramind_v1_tokenizer_ndvi",
];

/// TerraTorch's TerraMind full-model registrations (encoder-decoder, generation and
/// tokenizers), refused by name.
pub const REFUSED_FULL_MODELS: [&str; 21] = [
    "terramind_v1_tiny_encdec",
    "terramind_v1_small_encdec",
    "terramind_v1_base_encdec",
    "terramind_v1_large_encdec",
    "terramind_v1_tiny_generate",
    "terramind_v1_small_generate",
    "terramind_v1_base_generate",
    "terramind_v1_large_generate",
    "terramind_v01_base_generate",
    "terramind_v1_tokenizer_s2l2a",
    "terramind_v1_tokenizer_s1rtc",
    "terramind_v1_tokenizer_s1grd",
    "terramind_v1_tokenizer_dem",
    "terramind_v1_tokenizer_lulc",
    "terramind_v1_tokenizer_ndvi",
    "terramind_v01_tokenizer_s2l2a",
    "terramind_v01_tokenizer_s1grd",
    "terramind_v01_tokenizer_dem",
    "terramind_v01_tokenizer_lulc",
    "terramind_v01_caption_tokenizer",
    "terramind_v1_coords_tokenizer",
];

/// Why a refused TerraMind name is not built.
pub fn refusal(name: &str) -> String {
    let what = if name.contains("tokenizer") {
        "TerraMind's tokenizers (VQ-VAE / text) are"
    } else if name.ends_with("_tim") {
        "TerraMind's Thinking-in-Modalities (`_tim`) variants are"
    } else if name.contains("v01") {
        "TerraMind 0.1 (`terramind_v01_*`) is"
    } else if name.ends_with("_encdec") {
        "TerraMind's encoder-decoder models (`_encdec`) are"
    } else {
        "TerraMind's generation models (`_generate`) are"
    };
    format!(
        "`{name}` is a TerraTorch 1.2.11 registration that terrahost does not support yet: {what} not ported; \
         the TerraMind backbones available are {}",
        BACKBONES.join(", ")
    )
}

/// The activation of the MLP (`nn.GELU`, exact, or `nn.SiLU`).
pub use terrahost_layers::linear::Act;

/// How the per-modality tokens are merged (`merge_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Mean over the image modalities (the default).
    Mean,
    /// Maximum over the image modalities.
    Max,
    /// Concatenated along the embedding dim (missing modalities get `missing_mod_token`).
    Concat,
    /// `None`: all tokens of all modalities, unsplit.
    Keep,
}

/// One input modality: the name a caller uses, the `MODALITY_INFO` key it maps to
/// (the `encoder_embeddings` key of the state_dict), its channels and patch size.
#[derive(Clone, Debug, PartialEq)]
pub struct Modality {
    /// The name in the input dict (`S2L2A`).
    pub name: String,
    /// The layer key (`untok_sen2l2a@224`).
    pub key: String,
    /// Input channels (after band selection).
    pub channels: i64,
    /// Patch size (16 for every pretrained modality).
    pub patch_size: i64,
}

/// The raw image entries of upstream's `MODALITY_INFO`: key, channels, patch size.
const RAW_IMAGE_MODALITIES: [(&str, i64); 16] = [
    ("sen1grd@264", 2),
    ("sen1rtc@264", 2),
    ("sen2l2a@264", 12),
    ("sen2l1c@264", 13),
    ("sen2rgb@264", 3),
    ("lulc@264", 9),
    ("dem@264", 1),
    ("ndvi@264", 1),
    ("untok_sen2l2a@224", 12),
    ("untok_sen2l1c@224", 13),
    ("untok_sen2rgb@224", 3),
    ("untok_sen1grd@224", 2),
    ("untok_sen1rtc@224", 2),
    ("untok_dem@224", 1),
    ("rgb@224", 3),
    ("rgb@448", 3),
];

/// `PRETRAINED_BANDS` of `terramind_register.py`: the modalities whose patch embedding
/// `bands` re-sizes, with their pretrained band names.
pub fn pretrained_bands(key: &str) -> Option<&'static [&'static str]> {
    const S2L2A: [&str; 12] = [
        "COASTAL_AEROSOL",
        "BLUE",
        "GREEN",
        "RED",
        "RED_EDGE_1",
        "RED_EDGE_2",
        "RED_EDGE_3",
        "NIR_BROAD",
        "NIR_NARROW",
        "WATER_VAPOR",
        "SWIR_1",
        "SWIR_2",
    ];
    const S2L1C: [&str; 13] = [
        "COASTAL_AEROSOL",
        "BLUE",
        "GREEN",
        "RED",
        "RED_EDGE_1",
        "RED_EDGE_2",
        "RED_EDGE_3",
        "NIR_BROAD",
        "NIR_NARROW",
        "WATER_VAPOR",
        "CIRRUS",
        "SWIR_1",
        "SWIR_2",
    ];
    match key {
        "untok_sen2l2a@224" => Some(&S2L2A),
        "untok_sen2l1c@224" => Some(&S2L1C),
        "untok_sen2rgb@224" => Some(&["RED", "GREEN", "BLUE"]),
        "untok_sen1grd@224" | "untok_sen1rtc@224" => Some(&["VV", "VH"]),
        "untok_dem@224" => Some(&["DEM"]),
        _ => None,
    }
}

/// `build_modality_embeddings`' name resolution for a string modality: the
/// `MODALITY_INFO` key and its channels, or why it cannot be built.
pub fn resolve_modality(name: &str) -> Result<(String, i64)> {
    if let Some((k, c)) = RAW_IMAGE_MODALITIES.iter().find(|(k, _)| *k == name) {
        return Ok(((*k).to_owned(), *c));
    }
    let renamed = name
        .to_lowercase()
        .replace("s2", "sen2")
        .replace("s1", "sen1")
        .replace("location", "coords");
    let key = if renamed.contains("sen2l2a") {
        "untok_sen2l2a@224"
    } else if renamed.contains("sen2l1c") {
        "untok_sen2l1c@224"
    } else if renamed.contains("sen1rtc") {
        "untok_sen1rtc@224"
    } else if renamed.contains("sen1") {
        "untok_sen1grd@224"
    } else if renamed.contains("rgb") {
        "untok_sen2rgb@224"
    } else if renamed.contains("dem") {
        "untok_dem@224"
    } else if renamed.contains("lulc") {
        "tok_lulc@224"
    } else if renamed.contains("ndvi") {
        "tok_ndvi@224"
    } else if renamed.contains("caption") {
        "caption"
    } else if renamed.contains("coord") {
        "coords"
    } else if name.starts_with("tok_") || name == "det" {
        name
    } else {
        return Err(PluginError::invalid_argument(format!(
            "unknown TerraMind modality `{name}`: use one of S2L1C, S2L2A, S1GRD, S1RTC, RGB, DEM (or a \
             MODALITY_INFO key such as untok_sen2l2a@224, or {{\"<name>\": <channels>}} for a new modality)"
        )));
    };
    match RAW_IMAGE_MODALITIES.iter().find(|(k, _)| *k == key) {
        Some((k, c)) => Ok(((*k).to_owned(), *c)),
        None => Err(PluginError::new(
            ErrorKind::NOT_SUPPORTED,
            format!(
                "TerraMind modality `{name}` maps to `{key}`, which needs TerraMind's tokenizer or a sequence \
                 embedding; tokenized and sequence modalities are not supported yet (raw image modalities are: \
                 S2L1C, S2L2A, S1GRD, S1RTC, RGB, DEM)"
            ),
        )),
    }
}

/// The architecture and options of a `TerraMindViT`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `img_size` (square), which sizes the position embeddings.
    pub img_size: i64,
    /// The modalities, in upstream's order.
    pub modalities: Vec<Modality>,
    /// `merge_method`.
    pub merge: Merge,
    /// Token width.
    pub dim: i64,
    /// Number of encoder blocks.
    pub encoder_depth: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// MLP hidden width over `dim`.
    pub mlp_ratio: f64,
    /// Bias on `qkv`.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub proj_bias: bool,
    /// Bias on the MLP linears.
    pub mlp_bias: bool,
    /// MLP activation.
    pub act: Act,
    /// SwiGLU-style gated MLP (`fc1`, `fc2`, `fc3`).
    pub gated_mlp: bool,
    /// LayerNorm of queries and keys (`NormAttention`).
    pub qk_norm: bool,
    /// The final LayerNorm (`encoder_norm`).
    pub encoder_norm: bool,
    /// Stochastic depth at the last block (linear from 0).
    pub drop_path_rate: f64,
    /// Dropout after the attention projection and the MLP (non-gated).
    pub drop_rate: f64,
    /// Dropout of the attention weights.
    pub attn_drop_rate: f64,
}

impl Config {
    /// The architecture of preset `name` (`terramind_v1_base`), with one `image`
    /// modality of 3 channels until the caller sets its own.
    pub fn preset(name: &str) -> Option<Self> {
        let (depth, dim, heads, big) = match name {
            "terramind_v1_tiny" => (12, 192, 3, false),
            "terramind_v1_small" => (12, 384, 6, false),
            "terramind_v1_base" => (12, 768, 12, true),
            "terramind_v1_large" => (24, 1024, 16, true),
            _ => return None,
        };
        Some(Self {
            img_size: 224,
            modalities: vec![Modality {
                name: "image".into(),
                key: "image".into(),
                channels: 3,
                patch_size: 16,
            }],
            merge: Merge::Mean,
            dim,
            encoder_depth: depth,
            num_heads: heads,
            mlp_ratio: 4.0,
            qkv_bias: !big,
            proj_bias: !big,
            mlp_bias: !big,
            act: if big { Act::Silu } else { Act::Gelu },
            gated_mlp: big,
            qk_norm: false,
            encoder_norm: true,
            drop_path_rate: 0.0,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
        })
    }

    /// The `encoder_embeddings` keys, in order, without repeats.
    fn embedding_keys(&self) -> Vec<&Modality> {
        let mut seen: Vec<&Modality> = Vec::new();
        for m in &self.modalities {
            match seen.iter_mut().find(|s| s.key == m.key) {
                // a later modality with the same key replaces the layer (a dict insert)
                Some(s) => *s = m,
                None => seen.push(m),
            }
        }
        seen
    }

    /// `out_channels`: `dim` per block (times the image modalities for `concat`).
    pub fn out_channels(&self) -> Vec<i64> {
        let width = match self.merge {
            Merge::Concat => self.dim * self.embedding_keys().len() as i64,
            _ => self.dim,
        };
        vec![width; self.encoder_depth as usize]
    }
}

/// 4M's `Block`: pre-norm attention (`Attention`, or `NormAttention` with qk-norm) and MLP
/// (`Mlp` or `GatedMlp`), each with a residual connection. It is timm's block with other
/// options (bias-free LayerNorms, optional biases, Xavier init), so it is the shared
/// [`Block`] of `terrahost_layers::vit`.
fn block(p: nn::Path, cfg: &Config, drop_path: f64) -> Block {
    let hidden = (cfg.dim as f64 * cfg.mlp_ratio) as i64;
    let mut b = BlockConfig::timm(cfg.dim, cfg.num_heads, cfg.mlp_ratio);
    b.qkv_bias = cfg.qkv_bias;
    b.proj_bias = cfg.proj_bias;
    b.qk_norm = cfg.qk_norm;
    b.norm_eps = 1e-6;
    b.norm_bias = false;
    b.init = LinearInit::Xavier;
    b.attn_drop = cfg.attn_drop_rate;
    b.proj_drop = cfg.drop_rate;
    b.drop_path = drop_path;
    b.mlp = MlpConfig {
        kind: if cfg.gated_mlp {
            MlpKind::Gated
        } else {
            MlpKind::Mlp
        },
        // GatedMlp: int(2 * hidden / 3)
        hidden: if cfg.gated_mlp {
            (2.0 * hidden as f64 / 3.0) as i64
        } else {
            hidden
        },
        act: cfg.act,
        bias: cfg.mlp_bias,
        // 4M's Mlp drops only after fc2; its GatedMlp never.
        drop_hidden: 0.0,
        drop_out: if cfg.gated_mlp { 0.0 } else { cfg.drop_rate },
    };
    Block::new(p, &b)
}

/// `build_2d_sincos_posemb(h, w, dim)`: `[1, h*w, dim]`, computed in float32 as
/// upstream does (its default dtype).
pub fn sincos_2d(h: i64, w: i64, dim: i64) -> Tensor {
    let opts = (Kind::Float, tch::Device::Cpu);
    let grid_w = Tensor::arange(w, opts);
    let grid_h = Tensor::arange(h, opts);
    // meshgrid(grid_w, grid_h, indexing="ij"): shapes (W, H)
    let gw = grid_w.unsqueeze(1).expand([w, h], false).reshape([-1]);
    let gh = grid_h.unsqueeze(0).expand([w, h], false).reshape([-1]);
    let pos_dim = dim / 4;
    let omega = Tensor::arange(pos_dim, opts) / pos_dim as f64;
    let omega = (Tensor::from(10000.0f32).pow(&omega)).reciprocal();
    let out_w = gw.unsqueeze(1) * omega.unsqueeze(0);
    let out_h = gh.unsqueeze(1) * omega.unsqueeze(0);
    Tensor::cat(&[out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], 1).unsqueeze(0)
}

/// `ImageEncoderEmbedding`: a bias-free linear projection of `patch x patch x C`
/// patches (`proj`), a fixed sin-cos position embedding (`pos_emb`, a buffer) and a
/// learned modality embedding (`mod_emb`).
#[derive(Debug)]
struct ImageEmbedding {
    proj: Linear,
    pos_emb: Tensor,
    mod_emb: Tensor,
    patch: i64,
    channels: i64,
    image_size: i64,
    dim: i64,
}

impl ImageEmbedding {
    fn new(p: nn::Path, m: &Modality, image_size: i64, dim: i64) -> Result<Self> {
        if dim % 4 != 0 {
            return Err(PluginError::invalid_argument(format!(
                "TerraMind: the token width {dim} must be divisible by 4 for the 2-D sin-cos position embedding"
            )));
        }
        let g = image_size / m.patch_size;
        let pos_emb = p.zeros_no_train("pos_emb", &[1, g * g, dim]);
        tch::no_grad(|| pos_emb.shallow_clone().copy_(&sincos_2d(g, g, dim)));
        Ok(Self {
            proj: Linear::xavier(
                &p / "proj",
                m.channels * m.patch_size * m.patch_size,
                dim,
                false,
            ),
            pos_emb,
            mod_emb: p.var(
                "mod_emb",
                &[1, 1, dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            patch: m.patch_size,
            channels: m.channels,
            image_size,
            dim,
        })
    }

    /// `[B, C, H, W]` -> `(x, emb)`, both `[B, (H/p)*(W/p), D]`.
    fn forward(&self, name: &str, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.size4().map_err(|_| {
            PluginError::forward_failed(format!(
                "TerraMind input `{name}` must be [B, C, H, W], got shape {:?}",
                x.size()
            ))
        })?;
        let p = self.patch;
        if c != self.channels {
            return Err(PluginError::forward_failed(format!(
                "TerraMind input `{name}` has {c} channels, but its patch embedding takes {} (set `bands` for the \
                 modality to change that)",
                self.channels
            )));
        }
        if h % p != 0 || w % p != 0 {
            return Err(PluginError::forward_failed(format!(
                "Image sizes {h}x{w} must be divisible by patch sizes {p}x{p} (TerraMind input `{name}`)"
            )));
        }
        let (nh, nw) = (h / p, w / p);
        // "b d (nh ph) (nw pw) -> b (nh nw) (ph pw d)"
        let patches = x
            .f_reshape([b, c, nh, p, nw, p])?
            .f_permute([0, 2, 4, 3, 5, 1])?
            .f_reshape([b, nh * nw, p * p * c])?;
        let tokens = self.proj.forward(&patches)?;
        let pos = if (h, w) != (self.image_size, self.image_size) {
            self.interpolated_pos(h, w)?
        } else {
            self.pos_emb.shallow_clone()
        };
        // x + emb, with emb = pos_emb + mod_emb repeated over the batch
        Ok(tokens + (pos + &self.mod_emb))
    }

    /// `interpolate_pos_encoding`: bicubic resize of the square position grid.
    fn interpolated_pos(&self, h: i64, w: i64) -> Result<Tensor> {
        let n = self.pos_emb.size()[1];
        let side = (n as f64).sqrt() as i64;
        let grid = self
            .pos_emb
            .f_reshape([1, side, side, self.dim])?
            .f_permute([0, 3, 1, 2])?;
        let resized =
            grid.f_upsample_bicubic2d([h / self.patch, w / self.patch], false, None, None)?;
        Ok(resized
            .f_permute([0, 2, 3, 1])?
            .f_reshape([1, -1, self.dim])?)
    }
}

/// `TerraMindViT` for raw image modalities.
#[derive(Debug)]
pub struct TerraMindViT {
    cfg: Config,
    /// By `encoder_embeddings` key, in the state_dict's order.
    embeddings: Vec<(String, ImageEmbedding)>,
    missing_mod_token: Option<Tensor>,
    blocks: Vec<Block>,
    encoder_norm: Option<LayerNorm>,
}

impl TerraMindViT {
    /// Builds the model under `p` (keys `encoder_embeddings.<key>.*`, `encoder.<i>.*`,
    /// `encoder_norm.*`, `missing_mod_token` for `concat`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        if cfg.num_heads <= 0 || cfg.dim % cfg.num_heads != 0 {
            return Err(PluginError::invalid_argument(format!(
                "TerraMind: num_heads {} must divide the token width {}",
                cfg.num_heads, cfg.dim
            )));
        }
        let emb = &p / "encoder_embeddings";
        let embeddings = cfg
            .embedding_keys()
            .into_iter()
            .map(|m| {
                Ok((
                    m.key.clone(),
                    ImageEmbedding::new(&emb / m.key.as_str(), m, cfg.img_size, cfg.dim)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let missing_mod_token = (cfg.merge == Merge::Concat).then(|| {
            p.var(
                "missing_mod_token",
                &[cfg.dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
        });
        let depth = cfg.encoder_depth;
        let blocks = (0..depth)
            .map(|i| {
                // torch.linspace(0, drop_path_rate, depth)
                let dpr = if depth > 1 {
                    cfg.drop_path_rate * i as f64 / (depth - 1) as f64
                } else {
                    0.0
                };
                block(&p / "encoder" / i, cfg, dpr)
            })
            .collect();
        let encoder_norm = cfg
            .encoder_norm
            .then(|| LayerNorm::without_bias(&p / "encoder_norm", cfg.dim, 1e-6));
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            missing_mod_token,
            blocks,
            encoder_norm,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The input names the model knows (its `mod_name_mapping` keys), in order.
    pub fn input_names(&self) -> Vec<String> {
        self.cfg.modalities.iter().map(|m| m.name.clone()).collect()
    }

    /// `forward(d)`: the named inputs (unknown names are dropped with a warning, as
    /// upstream does) -> the output of every block (the last after `encoder_norm`),
    /// merged over modalities by `merge_method`.
    pub fn forward_named(&self, d: &[(String, Tensor)], train: bool) -> Result<Vec<Tensor>> {
        let mut known: Vec<(&str, &Tensor, &ImageEmbedding)> = Vec::new();
        for (name, t) in d {
            match self.cfg.modalities.iter().find(|m| &m.name == name) {
                Some(m) => {
                    let emb = &self
                        .embeddings
                        .iter()
                        .find(|(k, _)| *k == m.key)
                        .expect("every modality has an embedding")
                        .1;
                    // a repeated name replaces the earlier tensor in place (a dict update)
                    match known.iter_mut().find(|(n, _, _)| *n == name.as_str()) {
                        Some(slot) => *slot = (name.as_str(), t, emb),
                        None => known.push((name.as_str(), t, emb)),
                    }
                }
                None => tracing::warn!("Unknown input modality: {name}. Ignoring input."),
            }
        }
        if known.is_empty() {
            return Err(PluginError::forward_failed(format!(
                "No valid inputs provided: TerraMind takes {} (got {})",
                self.input_names().join(", "),
                d.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut tokens = Vec::with_capacity(known.len());
        let mut counts = Vec::with_capacity(known.len());
        for (name, t, emb) in &known {
            let x = emb.forward(name, t)?;
            counts.push(x.size()[1]);
            tokens.push(x);
        }
        let mut x = Tensor::f_cat(&tokens, 1)?; // [B, N, D]
        let mut out = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            x = block.forward(&x, train)?;
            out.push(x.shallow_clone());
        }
        if let (Some(norm), Some(last)) = (&self.encoder_norm, out.last_mut()) {
            *last = norm.forward(&x)?;
        }
        let unstack = |x: &Tensor| -> Result<Tensor> {
            // split by modality and stack: [B, M, N, D] (every supported modality is an image)
            let parts = x.f_split_with_sizes(&counts, 1)?;
            Ok(Tensor::f_stack(&parts, 1)?)
        };
        match self.cfg.merge {
            Merge::Keep => Ok(out),
            Merge::Mean => out
                .iter()
                .map(|x| Ok(unstack(x)?.f_mean_dim(1, false, None)?))
                .collect(),
            Merge::Max => out
                .iter()
                .map(|x| Ok(unstack(x)?.f_amax(1, false)?))
                .collect(),
            Merge::Concat => {
                let n_image = self.embeddings.len();
                out.iter()
                    .map(|x| {
                        let mut s = unstack(x)?;
                        if known.len() < n_image {
                            let (b, _, n, _) = s.size4()?;
                            let missing = self
                                .missing_mod_token
                                .as_ref()
                                .expect("concat has a missing_mod_token")
                                .f_repeat([b, (n_image - known.len()) as i64, n, 1])?;
                            s = Tensor::f_cat(&[s, missing], 1)?;
                        }
                        Ok(Tensor::f_cat(&s.unbind(1), -1)?)
                    })
                    .collect()
            }
        }
    }
}

/// The registered backbone: TerraMindViT plus what a composer needs to know.
pub struct TerraMindBackbone {
    vit: TerraMindViT,
}

impl Model for TerraMindBackbone {
    /// One tensor is the first modality (upstream: `d = {self.modalities[0]: d}`).
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => {
                let first = self.vit.cfg.modalities[0].name.clone();
                self.vit.forward_named(&[(first, x.shallow_clone())], train)
            }
            _ => Err(PluginError::forward_failed(format!(
                "TerraMind takes one tensor (its first modality, `{}`) or named inputs by modality ({}); got {} \
                 positional tensors",
                self.vit.cfg.modalities[0].name,
                self.vit.input_names().join(", "),
                xs.len()
            ))),
        }
    }

    fn forward_named(
        &self,
        xs: &[(String, Tensor)],
        _kwargs: &Map<String, Value>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        self.vit.forward_named(xs, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.vit.cfg.out_channels()
    }

    /// `patch_size` is what upstream's factory finds first in `backbone.modules()`:
    /// the first patch embedding's; `input_names` are the modalities.
    fn meta(&self) -> Map<String, Value> {
        let p = self.vit.cfg.embedding_keys()[0].patch_size;
        let mut m = Map::new();
        m.insert("patch_size".into(), json!([p, p]));
        m.insert("img_size".into(), json!(self.vit.cfg.img_size));
        m.insert("input_names".into(), json!(self.vit.input_names()));
        m
    }
}

/// Parses `modalities` (a list of names and `{name: channels}` dicts, one dict, or
/// null/empty for `{"image": in_chans}`).
fn modalities_arg(v: &Value, in_chans: i64, patch_size: i64) -> Result<Vec<Modality>> {
    let items: Vec<Value> = match v {
        Value::Null => vec![],
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![v.clone()],
        other => {
            return Err(PluginError::invalid_argument(format!(
                "Modalities must be None, a list of modality keys or a dict with ints/embedding layers; got {other}"
            )))
        }
    };
    if items.is_empty() {
        return Ok(vec![Modality {
            name: "image".into(),
            key: "image".into(),
            channels: in_chans,
            patch_size,
        }]);
    }
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::String(name) => {
                let (key, channels) = resolve_modality(&name)?;
                out.push(Modality {
                    name,
                    key,
                    channels,
                    patch_size: 16,
                });
            }
            Value::Object(map) => {
                for (name, c) in map {
                    let channels = c.as_i64().filter(|c| *c > 0).ok_or_else(|| {
                        PluginError::invalid_argument(format!(
                            "a new TerraMind modality is given as {{\"<name>\": <num_channels>}}; `{name}` has {c}"
                        ))
                    })?;
                    if name.contains('.') {
                        return Err(PluginError::invalid_argument(format!(
                            "TerraMind modality name `{name}` cannot contain `.` (it becomes a state_dict key)"
                        )));
                    }
                    out.push(Modality {
                        key: name.clone(),
                        name,
                        channels,
                        patch_size,
                    });
                }
            }
            other => {
                return Err(PluginError::invalid_argument(format!(
                    "Modalities must be provided as a list of strings and dicts; found {other}"
                )))
            }
        }
    }
    Ok(out)
}

/// `select_modality_patch_embed_weights`' resizing: a modality in `bands` whose layer
/// has pretrained bands takes `len(bands)` channels.
fn apply_bands(mods: &mut [Modality], bands: &Map<String, Value>) -> Result<()> {
    for (name, list) in bands {
        let list = list.as_array().ok_or_else(|| {
            PluginError::invalid_argument(format!(
                "`bands` of modality `{name}` must be a list of band names or indices, got {list}"
            ))
        })?;
        let key = mods
            .iter()
            .find(|m| &m.name == name)
            .map(|m| m.key.clone())
            .ok_or_else(|| {
                PluginError::invalid_argument(format!(
                    "`bands` names modality `{name}`, which is not among the modalities ({})",
                    mods.iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if pretrained_bands(&key).is_none() {
            continue; // upstream: "Cannot load band weights for modality ..., not found in pretrained bands."
        }
        for m in mods.iter_mut().filter(|m| m.key == key) {
            m.channels = list.len() as i64;
        }
    }
    Ok(())
}

fn merge_arg(v: &Value) -> Result<Merge> {
    match v {
        Value::Null => Ok(Merge::Keep),
        Value::String(s) => match s.as_str() {
            "mean" => Ok(Merge::Mean),
            "max" => Ok(Merge::Max),
            "concat" => Ok(Merge::Concat),
            "dict" => Err(PluginError::new(
                ErrorKind::NOT_SUPPORTED,
                "TerraMind `merge_method=\"dict\"` (a dict of tokens per modality and block) is not supported \
                 yet; use mean, max, concat or null",
            )),
            other => Err(PluginError::invalid_argument(format!(
                "Merging method {other} is not implemented. Select one of mean, max, concat, dict, or None."
            ))),
        },
        other => Err(PluginError::invalid_argument(format!(
            "`merge_method` must be a string or null, got {other}"
        ))),
    }
}

/// Builds the backbone from a registry entry's arguments.
fn build(ctx: &BuildCtx<'_, '_>, base: &Config) -> Result<ModuleBox> {
    let q = ctx.qualified();
    let named = |e: PluginError| {
        let kind = e.kind;
        PluginError::new(kind, format!("`{q}`: {}", e.message()))
    };
    if ctx.args.get::<bool>("pretrained")? {
        return Err(PluginError::invalid_argument(format!(
            "`{q}` with pretrained=true would download the TerraMind weights from the Hugging Face hub, and \
             terrahost makes no downloads: build with pretrained=false and load the weights with \
             `terrahost run --weights <file>`"
        )));
    }
    if ctx.args.opt::<String>("ckpt_path")?.is_some() {
        return Err(PluginError::new(
            ErrorKind::NOT_SUPPORTED,
            format!("`{q}`: ckpt_path is not supported yet; load the checkpoint with `terrahost run --weights <file>`"),
        ));
    }
    let modality_drop_rate: f64 = ctx.args.get("modality_drop_rate")?;
    if !(0.0..=1.0).contains(&modality_drop_rate) {
        return Err(named(PluginError::invalid_argument(
            "modality_drop_rate must be in [0, 1]",
        )));
    }
    if modality_drop_rate > 0.0 {
        return Err(named(PluginError::new(
            ErrorKind::NOT_SUPPORTED,
            "modality_drop_rate > 0 (random modality dropping in training) is not supported yet",
        )));
    }
    let patch_size: i64 = ctx.args.get("patch_size")?;
    let in_chans: i64 = ctx.args.get("in_chans")?;
    let mut modalities = modalities_arg(
        ctx.args.raw("modalities").unwrap_or(&Value::Null),
        in_chans,
        patch_size,
    )
    .map_err(named)?;
    if let Some(bands) = ctx.args.opt::<Map<String, Value>>("bands")? {
        apply_bands(&mut modalities, &bands).map_err(named)?;
    }
    let cfg = Config {
        img_size: ctx.args.get("img_size")?,
        modalities,
        merge: merge_arg(ctx.args.raw("merge_method").unwrap_or(&Value::Null)).map_err(named)?,
        qk_norm: ctx.args.get("qk_norm")?,
        encoder_norm: ctx.args.get("encoder_norm")?,
        drop_path_rate: ctx.args.get("drop_path_rate")?,
        drop_rate: ctx.args.get("drop_rate")?,
        attn_drop_rate: ctx.args.get("attn_drop_rate")?,
        ..base.clone()
    };
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vit = TerraMindViT::new(vs.root(), &cfg).map_err(named)?;
    Ok(Built::new(q.clone(), vs, TerraMindBackbone { vit }).boxed())
}

/// The `terratorch` backbone entry `name` (`terramind_v1_*`).
pub fn backbone_entry(name: &'static str) -> Entry {
    let base =
        Config::preset(name).expect("a TerraMind entry is registered only for a known preset");
    let doc = format!(
        "TerraMind 1.0 encoder `{name}` (TerraMindViT: dim {}, depth {}, heads {}, {} MLP, {}). Takes one \
         tensor [B, C, H, W] (the first modality) or named inputs by modality (S2L2A, S1GRD, ...: TerraTorch's \
         dict of tensors); returns the tokens [B, (H/16)*(W/16), dim] after every block (the last after the \
         final norm), merged over the modalities by merge_method. Raw image modalities only (tokenized ones, \
         merge_method=dict, pretrained downloads and ckpt_path are refused).",
        base.dim,
        base.encoder_depth,
        base.num_heads,
        if base.gated_mlp { "SwiGLU" } else { "GELU" },
        if base.qkv_bias { "with biases" } else { "no biases" },
    );
    Entry::new(name, &doc, move |ctx| build(ctx, &base))
        .opt("pretrained", ParamType::BOOL, json!(false), "load the released weights (refused: terrahost does not download; use `run --weights`)")
        .opt("ckpt_path", ParamType::STR, Value::Null, "a local checkpoint (not supported yet; use `run --weights`)")
        .opt("modalities", ParamType::ANY, Value::Null, "input modalities: names (S2L1C, S2L2A, S1GRD, S1RTC, RGB, DEM or a MODALITY_INFO key) and {\"<name>\": <channels>} dicts; null means {\"image\": in_chans}")
        .opt("bands", ParamType::DICT, Value::Null, "{<modality>: [bands]}: a pretrained modality's patch embedding takes len(bands) channels")
        .opt("merge_method", ParamType::ANY, json!("mean"), "how modality tokens merge: mean, max, concat or null (dict is not supported yet)")
        .opt("img_size", ParamType::INT, json!(224), "image size of the position embeddings (other sizes are interpolated)")
        .opt("patch_size", ParamType::INT, json!(16), "patch size of new {\"<name>\": <channels>} modalities (pretrained ones use 16)")
        .opt("in_chans", ParamType::INT, json!(3), "channels of the default `image` modality (when modalities is empty)")
        .opt("drop_path_rate", ParamType::FLOAT, json!(0.0), "stochastic depth rate (train mode)")
        .opt("drop_rate", ParamType::FLOAT, json!(0.0), "dropout rate (train mode)")
        .opt("attn_drop_rate", ParamType::FLOAT, json!(0.0), "attention dropout rate (train mode)")
        .opt("modality_drop_rate", ParamType::FLOAT, json!(0.0), "random modality dropping in training (only 0 is supported)")
        .opt("qk_norm", ParamType::BOOL, json!(false), "LayerNorm on queries and keys (NormAttention)")
        .opt("encoder_norm", ParamType::BOOL, json!(true), "final LayerNorm on the last block's output")
}

/// Every TerraMind backbone entry.
pub fn backbone_entries() -> Vec<Entry> {
    BACKBONES.iter().map(|n| backbone_entry(n)).collect()
}
