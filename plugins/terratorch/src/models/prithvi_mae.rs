//! Mirrors `terratorch/models/backbones/prithvi_mae.py` (TerraTorch 1.2.11): the 3-D
//! sin-cos position embeddings, the 3-D `PatchEmbed`, the `TemporalEncoder` and
//! `LocationEncoder`, the `PrithviViT` encoder (built from timm's `Block`, as in
//! `timm/models/vision_transformer.py`), the `MAEDecoder` and the `PrithviMAE` masked
//! autoencoder.
//!
//! State_dict keys are TerraTorch's: `patch_embed.proj.weight`, `cls_token`, the
//! `pos_embed` buffer, `blocks.{i}.attn.qkv.weight`, ... for the encoder, and the same
//! under `encoder.` / `decoder.` for the MAE.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, Module as _};
use tch::{Kind, Tensor};
pub use terrahost_layers::vit::Block;
use terrahost_layers::vit::{BlockConfig, LinearInit};
use terrahost_plugin_api::{PluginError, Result};

/// The constructor arguments shared by `PrithviViT`, `MAEDecoder` and `PrithviMAE`
/// (TerraTorch's `prithvi_cfgs` entries plus `_create_prithvi`'s overrides).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Image height and width.
    pub img_size: [i64; 2],
    /// Patch (tubelet) size: frames, height, width.
    pub patch_size: [i64; 3],
    /// Frames per sample the model is built for.
    pub num_frames: i64,
    /// Input channels (TerraTorch derives it from the band list).
    pub in_chans: i64,
    /// Token width of the encoder.
    pub embed_dim: i64,
    /// Number of encoder blocks.
    pub depth: i64,
    /// Attention heads of the encoder blocks.
    pub num_heads: i64,
    /// Token width of the MAE decoder.
    pub decoder_embed_dim: i64,
    /// Number of MAE decoder blocks.
    pub decoder_depth: i64,
    /// Attention heads of the MAE decoder blocks.
    pub decoder_num_heads: i64,
    /// Hidden width of the MLPs as a multiple of the token width.
    pub mlp_ratio: f64,
    /// `eps` of every LayerNorm (`nn.LayerNorm`'s 1e-5 in TerraTorch 1.2.11).
    pub norm_eps: f64,
    /// Which coordinate encoders to add: `time` and/or `location`.
    pub coords_encoding: Vec<String>,
    /// Whether the coordinate encoders' scale is a learned parameter (else a buffer of 1).
    pub coords_scale_learn: bool,
    /// Stochastic depth rate of every encoder block (not decayed over depth, as upstream).
    pub drop_path: f64,
    /// Fraction of patches the MAE masks.
    pub mask_ratio: f64,
    /// Whether the MAE loss normalises each target patch.
    pub norm_pix_loss: bool,
    /// Visual prompt tuning: learned prompt tokens inserted before every block.
    pub vpt: bool,
    /// Number of prompt tokens per block (needed when `vpt`).
    pub vpt_n_tokens: Option<i64>,
    /// Dropout on the prompt tokens (train mode only).
    pub vpt_dropout: f64,
}

impl Default for Config {
    /// TerraTorch's `_cfg()` defaults (the Prithvi-EO-2.0 100M shape).
    fn default() -> Self {
        Self {
            img_size: [224, 224],
            patch_size: [1, 16, 16],
            num_frames: 4,
            in_chans: 6,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            mlp_ratio: 4.0,
            norm_eps: 1e-5,
            coords_encoding: Vec::new(),
            coords_scale_learn: false,
            drop_path: 0.0,
            mask_ratio: 0.75,
            norm_pix_loss: false,
            vpt: false,
            vpt_n_tokens: None,
            vpt_dropout: 0.0,
        }
    }
}

impl Config {
    /// The patch grid (frames, rows, columns) of the input size the model is built for.
    pub fn grid_size(&self) -> [i64; 3] {
        let input = [self.num_frames, self.img_size[0], self.img_size[1]];
        [0, 1, 2].map(|i| input[i] / self.patch_size[i])
    }

    /// Whether `time` is among the coordinate encodings.
    pub fn temporal_encoding(&self) -> bool {
        self.coords_encoding.iter().any(|c| c == "time")
    }

    /// Whether `location` is among the coordinate encodings.
    pub fn location_encoding(&self) -> bool {
        self.coords_encoding.iter().any(|c| c == "location")
    }

    /// The checks upstream makes with asserts (or would fail on later), as errors that
    /// name the argument.
    pub fn validate(&self, with_decoder: bool) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.patch_size.iter().any(|&p| p < 1) {
            return bad(format!(
                "patch_size must be positive, got {:?}",
                self.patch_size
            ));
        }
        if self.img_size.iter().any(|&s| s < 1) || self.num_frames < 1 {
            return bad(format!(
                "img_size and num_frames must be positive, got img_size={:?}, num_frames={}",
                self.img_size, self.num_frames
            ));
        }
        if self.grid_size().iter().any(|&g| g < 1) {
            return bad(format!(
                "patch_size {:?} is bigger than the input (num_frames, img_size) = ({}, {}, {})",
                self.patch_size, self.num_frames, self.img_size[0], self.img_size[1]
            ));
        }
        if self.in_chans < 1 {
            return bad(format!(
                "in_chans (the number of bands) must be positive, got {}",
                self.in_chans
            ));
        }
        let dims: Vec<(&str, i64, &str, i64)> = if with_decoder {
            vec![
                ("embed_dim", self.embed_dim, "num_heads", self.num_heads),
                (
                    "decoder_embed_dim",
                    self.decoder_embed_dim,
                    "decoder_num_heads",
                    self.decoder_num_heads,
                ),
            ]
        } else {
            vec![("embed_dim", self.embed_dim, "num_heads", self.num_heads)]
        };
        for (dn, d, hn, h) in dims {
            if d < 16 || d % 16 != 0 {
                return bad(format!(
                    "{dn} must be a positive multiple of 16 (the 3-D sin-cos position embedding splits it 6:6:4), got {d}"
                ));
            }
            if h < 1 || d % h != 0 {
                return bad(format!("{dn} ({d}) must be divisible by {hn} ({h})"));
            }
        }
        if self.depth < 1 || (with_decoder && self.decoder_depth < 0) {
            return bad(format!("depth must be >= 1, got {}", self.depth));
        }
        if self.mlp_ratio <= 0.0 {
            return bad(format!(
                "mlp_ratio must be positive, got {}",
                self.mlp_ratio
            ));
        }
        if let Some(c) = self
            .coords_encoding
            .iter()
            .find(|c| *c != "time" && *c != "location")
        {
            return bad(format!(
                "coords_encoding entries are `time` and `location`, got `{c}`"
            ));
        }
        if self.temporal_encoding() && self.patch_size[0] != 1 {
            return bad(format!(
                "with coords_encoding `time`, patch_size[0] must be 1, got {}",
                self.patch_size[0]
            ));
        }
        if !(0.0..=1.0).contains(&self.drop_path) {
            return bad(format!(
                "drop_path must be in [0, 1], got {}",
                self.drop_path
            ));
        }
        if with_decoder && !(0.0..1.0).contains(&self.mask_ratio) {
            return bad(format!(
                "mask_ratio must be in [0, 1), got {}",
                self.mask_ratio
            ));
        }
        if self.vpt && !with_decoder && self.vpt_n_tokens.is_none_or(|n| n < 1) {
            return bad("vpt_n_tokens must be given (>= 1) when vpt is true".into());
        }
        Ok(())
    }
}

// -------------------------------------------------------------------------------------
// Sin-cos embeddings
// -------------------------------------------------------------------------------------

/// `get_1d_sincos_pos_embed_from_grid` in float64 (numpy upstream): `[M] -> [M, D]`.
fn sincos_1d_f64(embed_dim: i64, pos: &Tensor) -> Tensor {
    let half = embed_dim / 2;
    let omega = Tensor::arange(half, (Kind::Double, pos.device())) / (embed_dim as f64 / 2.0);
    let omega = Tensor::pow_scalar(10000.0, &omega).reciprocal();
    let out = pos.reshape([-1, 1]) * omega.unsqueeze(0);
    Tensor::cat(&[out.sin(), out.cos()], 1)
}

/// `get_3d_sincos_pos_embed(embed_dim, grid, add_cls_token=True)` as float32
/// `[1, 1 + T*H*W, E]`; the width is split 6/16 (columns), 6/16 (rows), 4/16 (frames).
pub fn sincos_3d(embed_dim: i64, grid: [i64; 3]) -> Tensor {
    let [t, h, w] = grid;
    let opts = (Kind::Double, tch::Device::Cpu);
    let w_e = sincos_1d_f64(embed_dim / 16 * 6, &Tensor::arange(w, opts));
    let h_e = sincos_1d_f64(embed_dim / 16 * 6, &Tensor::arange(h, opts));
    let t_e = sincos_1d_f64(embed_dim / 16 * 4, &Tensor::arange(t, opts));
    // token order is (t, h, w) with w fastest
    let w_e = w_e.repeat([t * h, 1]);
    let h_e = h_e.repeat_interleave_self_int(w, 0, None).repeat([t, 1]);
    let t_e = t_e.repeat_interleave_self_int(h * w, 0, None);
    let pe = Tensor::cat(&[w_e, h_e, t_e], 1);
    let pe = Tensor::cat(&[Tensor::zeros([1, embed_dim], opts), pe], 0);
    pe.to_kind(Kind::Float).unsqueeze(0)
}

/// `_get_1d_sincos_embed_from_grid_torch`: the float32 version used for coordinates,
/// `[M] -> [M, D]`.
fn sincos_1d_torch(embed_dim: i64, pos: &Tensor) -> Result<Tensor> {
    let kind = pos.kind();
    let omega = Tensor::arange(embed_dim / 2, (kind, pos.device())) / (embed_dim as f64 / 2.0);
    let omega = Tensor::f_pow_scalar(10000.0, &omega)?.reciprocal();
    let out = pos.f_reshape([-1, 1])? * omega.unsqueeze(0);
    Ok(Tensor::cat(&[out.sin(), out.cos()], 1))
}

/// `_interpolate_pos_encoding`: adapts a `[1, 1+N, E]` position embedding built for
/// `grid` to an input of `shape` (frames, height, width). A different frame count
/// recomputes the sin-cos table; a different spatial grid resizes it bicubically.
fn interpolate_pos_encoding(
    pos_embed: &Tensor,
    grid: [i64; 3],
    patch: [i64; 3],
    shape: [i64; 3],
    embed_dim: i64,
) -> Result<Tensor> {
    let patches = [0, 1, 2].map(|i| shape[i] / patch[i]);
    if patches == grid {
        return Ok(pos_embed.shallow_clone());
    }
    let (new_grid, new_pe) = if patches[0] != grid[0] {
        let g = [patches[0], grid[1], grid[2]];
        (
            g,
            sincos_3d(pos_embed.size()[2], g)
                .to_device(pos_embed.device())
                .to_kind(pos_embed.kind()),
        )
    } else {
        (grid, pos_embed.shallow_clone())
    };
    let cls = new_pe.narrow(1, 0, 1);
    let rest = new_pe.narrow(1, 1, new_pe.size()[1] - 1);
    // [1, T*H*W, E] -> [T, E, H, W]
    let rest = rest
        .f_reshape([new_grid[0], new_grid[1], new_grid[2], embed_dim])?
        .permute([0, 3, 1, 2]);
    let rest = rest.f_upsample_bicubic2d([patches[1], patches[2]], true, None, None)?;
    let rest = rest.permute([0, 2, 3, 1]).f_reshape([1, -1, embed_dim])?;
    Ok(Tensor::cat(&[cls, rest], 1))
}

// -------------------------------------------------------------------------------------
// Building blocks
// -------------------------------------------------------------------------------------

/// `nn.Linear` initialised as upstream's `_init_weights`: Xavier-uniform weight, zero
/// bias (filled in parallel: most of a big Prithvi's build time is this fill).
fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    terrahost_layers::init::xavier_linear(p, i, o)
}

fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// A fixed (no-train) 3-D sin-cos position embedding `[1, 1 + T*H*W, dim]` for `grid`,
/// registered as the buffer `name` under `p`.
fn sincos_buffer(p: &nn::Path, name: &str, dim: i64, grid: [i64; 3]) -> Tensor {
    let pos = p.zeros_no_train(name, &[1, grid.iter().product::<i64>() + 1, dim]);
    tch::no_grad(|| pos.shallow_clone().copy_(&sincos_3d(dim, grid)));
    pos
}

/// `depth` transformer blocks of width `dim` under `p` (`blocks` / `decoder_blocks`).
fn block_stack(
    p: nn::Path,
    depth: i64,
    dim: i64,
    num_heads: i64,
    cfg: &Config,
    drop_path: f64,
) -> Vec<Block> {
    (0..depth)
        .map(|i| {
            block(
                &p / i,
                dim,
                num_heads,
                cfg.mlp_ratio,
                cfg.norm_eps,
                drop_path,
            )
        })
        .collect()
}

/// timm's vision-transformer `Block` as `PrithviViT` builds it (`qkv_bias=True`, no layer
/// scale, no qk-norm, GELU MLP, no dropout), with the MAE `_init_weights` (Xavier-uniform
/// linears): the shared [`Block`] of `terrahost_layers::vit`, under `p` (`blocks.{i}`).
pub fn block(
    p: nn::Path,
    dim: i64,
    num_heads: i64,
    mlp_ratio: f64,
    eps: f64,
    drop_path: f64,
) -> Block {
    let mut cfg = BlockConfig::timm(dim, num_heads, mlp_ratio);
    cfg.norm_eps = eps;
    cfg.init = LinearInit::Xavier;
    cfg.drop_path = drop_path;
    Block::new(p, &cfg)
}

/// `TemporalEncoder` / `LocationEncoder`: sin-cos embeddings of (year, day of year) or
/// (latitude, longitude), half the width each, times a scale (learned or a buffer of 1).
#[derive(Debug)]
pub struct CoordEncoder {
    embed_dim: i64,
    scale: Tensor,
}

impl CoordEncoder {
    /// An encoder of width `embed_dim` under `p`; `scale` is a parameter (initially 0.1)
    /// when `trainable_scale`, else a buffer of 1.
    pub fn new(p: nn::Path, embed_dim: i64, trainable_scale: bool) -> Self {
        let scale = if trainable_scale {
            p.var("scale", &[1], Init::Const(0.1))
        } else {
            let s = p.zeros_no_train("scale", &[1]);
            tch::no_grad(|| {
                let _ = s.shallow_clone().fill_(1.0);
            });
            s
        };
        Self { embed_dim, scale }
    }

    /// Checks that `coords` (the input `name`) is `[*lead, 2]` with `rank` dimensions
    /// (`want` spells the shape) and embeds each pair, half the width each, into
    /// `[prod(lead), E]`; returns `coords`' size too.
    fn embed_pairs(
        &self,
        coords: &Tensor,
        name: &str,
        want: &str,
        rank: usize,
    ) -> Result<(Vec<i64>, Tensor)> {
        let size = coords.size();
        if size.len() != rank || size[rank - 1] != 2 {
            return Err(PluginError::invalid_argument(format!(
                "{name} must have shape {want}, got {size:?}"
            )));
        }
        let last = rank as i64 - 1;
        let d1 = self.embed_dim / 2;
        let d2 = self.embed_dim - d1;
        let a = sincos_1d_torch(d1, &coords.select(last, 0).flatten(0, -1))?;
        let b = sincos_1d_torch(d2, &coords.select(last, 1).flatten(0, -1))?;
        Ok((size, Tensor::cat(&[a, b], -1)))
    }

    /// Temporal: `[B, T, 2]` -> `[B, T*tokens_per_frame, E]`.
    pub fn temporal(&self, coords: &Tensor, tokens_per_frame: i64) -> Result<Tensor> {
        let (size, e) = self.embed_pairs(coords, "temporal_coords", "[B, T, 2]", 3)?;
        let e = &self.scale * e.f_reshape([size[0], size[1], -1])?;
        Ok(e.f_repeat_interleave_self_int(tokens_per_frame, 1, None)?)
    }

    /// Location: `[B, 2]` -> `[B, 1, E]`.
    pub fn location(&self, coords: &Tensor) -> Result<Tensor> {
        let (size, e) = self.embed_pairs(coords, "location_coords", "[B, 2]", 2)?;
        Ok(&self.scale * e.f_reshape([size[0], 1, -1])?)
    }
}

/// The optional temporal and location encoders of the encoder (`*_embed_enc`) or the
/// decoder (`*_embed_dec`), as `coords_encoding` asks.
#[derive(Debug)]
struct CoordEncoders {
    temporal: Option<CoordEncoder>,
    location: Option<CoordEncoder>,
}

impl CoordEncoders {
    /// The encoders `temporal_embed_{side}` / `location_embed_{side}` of width `dim`.
    fn new(p: &nn::Path, side: &str, dim: i64, cfg: &Config) -> Self {
        let make = |kind: &str| {
            CoordEncoder::new(
                p / format!("{kind}_embed_{side}"),
                dim,
                cfg.coords_scale_learn,
            )
        };
        Self {
            temporal: cfg.temporal_encoding().then(|| make("temporal")),
            location: cfg.location_encoding().then(|| make("location")),
        }
    }

    /// Adds the coordinate embeddings given to the patch tokens `x` (`[B, L, E]`, no class
    /// token) of `frames` frames.
    fn add(&self, mut x: Tensor, coords: Coords<'_>, frames: i64) -> Result<Tensor> {
        if let (Some(enc), Some(tc)) = (&self.temporal, coords.temporal) {
            let per_frame = x.size()[1] / frames;
            x = x.f_add(&enc.temporal(tc, per_frame)?)?;
        }
        if let (Some(enc), Some(lc)) = (&self.location, coords.location) {
            x = x.f_add(&enc.location(lc)?)?;
        }
        Ok(x)
    }
}

/// An optional input: a tensor with no elements stands for Python's `None`.
pub fn optional_input(xs: &[Tensor], i: usize) -> Option<&Tensor> {
    xs.get(i).filter(|t| t.numel() > 0)
}

/// The optional coordinate inputs of a Prithvi model (`None` where not given).
#[derive(Clone, Copy, Debug, Default)]
pub struct Coords<'a> {
    /// `temporal_coords` `[B, T, 2]`: year and day of year per frame.
    pub temporal: Option<&'a Tensor>,
    /// `location_coords` `[B, 2]`: latitude and longitude.
    pub location: Option<&'a Tensor>,
}

impl<'a> Coords<'a> {
    /// The coordinates among a module's inputs: `xs[1]` temporal, `xs[2]` location (empty
    /// tensors stand for `None`).
    pub fn from_inputs(xs: &'a [Tensor]) -> Self {
        Self {
            temporal: optional_input(xs, 1),
            location: optional_input(xs, 2),
        }
    }
}

// -------------------------------------------------------------------------------------
// Encoder
// -------------------------------------------------------------------------------------

/// `PrithviViT`: 3-D patch embedding, fixed sin-cos position embedding, optional
/// temporal/location encodings, a class token and `depth` transformer blocks.
#[derive(Debug)]
pub struct PrithviViT {
    cfg: Config,
    proj_w: Tensor,
    proj_b: Tensor,
    cls_token: Tensor,
    pos_embed: Tensor,
    coords: CoordEncoders,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    vpt_prompts: Vec<Tensor>,
}

impl PrithviViT {
    /// Builds the encoder under `p` (the root for a backbone, `encoder` inside the MAE).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        let e = cfg.embed_dim;
        let [pt, ph, pw] = cfg.patch_size;
        let pe = &p / "patch_embed" / "proj";
        let fan_in = cfg.in_chans * pt * ph * pw;
        // xavier_uniform on the [E, C*pt*ph*pw] view, as `initialize_weights`
        let bound = (6.0 / (fan_in + e) as f64).sqrt();
        let proj_w = pe.var(
            "weight",
            &[e, cfg.in_chans, pt, ph, pw],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        // the bias keeps nn.Conv3d's default initialisation
        let b_bound = 1.0 / (fan_in as f64).sqrt();
        let proj_b = pe.var(
            "bias",
            &[e],
            Init::Uniform {
                lo: -b_bound,
                up: b_bound,
            },
        );
        let cls_token = p.var(
            "cls_token",
            &[1, 1, e],
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let pos_embed = sincos_buffer(&p, "pos_embed", e, cfg.grid_size());
        let coords = CoordEncoders::new(&p, "enc", e, cfg);
        let blocks = block_stack(
            &p / "blocks",
            cfg.depth,
            e,
            cfg.num_heads,
            cfg,
            cfg.drop_path,
        );
        let norm = layer_norm(&p / "norm", e, cfg.norm_eps);
        let vpt_prompts = if cfg.vpt {
            let n = cfg.vpt_n_tokens.unwrap_or(0);
            let val = (6.0 / (3 * ph * pw + e) as f64).sqrt();
            (0..cfg.depth)
                .map(|i| {
                    (&p / "vpt_prompt_embeddings").var(
                        &i.to_string(),
                        &[1, n, e],
                        Init::Uniform { lo: -val, up: val },
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            cfg: cfg.clone(),
            proj_w,
            proj_b,
            cls_token,
            pos_embed,
            coords,
            blocks,
            norm,
            vpt_prompts,
        })
    }

    /// The configuration the encoder was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// TerraTorch's `out_channels`: `embed_dim * grid_size[0]` for every block.
    pub fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.embed_dim * self.cfg.grid_size()[0]; self.cfg.depth as usize]
    }

    /// Adds the time axis to a 4-D input when the model is built for one frame, and
    /// checks the rank otherwise. Returns the 5-D input and whether a time axis was added.
    pub fn to_5d(&self, x: &Tensor) -> Result<(Tensor, bool)> {
        match x.dim() {
            4 if self.cfg.num_frames == 1 => Ok((x.unsqueeze(2), true)),
            5 => Ok((x.shallow_clone(), false)),
            4 => Err(PluginError::invalid_argument(format!(
                "the model is built for num_frames={} and needs a 5-D input [B, C, T, H, W], got {:?}",
                self.cfg.num_frames,
                x.size()
            ))),
            _ => Err(PluginError::invalid_argument(format!(
                "the input must be [B, C, H, W] or [B, C, T, H, W], got {:?}",
                x.size()
            ))),
        }
    }

    /// Patch embedding, position embedding and coordinate encodings (no class token):
    /// `[B, C, T, H, W] -> ([B, L, E], position embedding with its class slot)`.
    fn embed(&self, x: &Tensor, coords: Coords<'_>) -> Result<(Tensor, Tensor)> {
        let size = x.size();
        let c = size[1];
        if c != self.cfg.in_chans {
            return Err(PluginError::invalid_argument(format!(
                "the input has {c} channels but the model was built for in_chans={} (the number of bands)",
                self.cfg.in_chans
            )));
        }
        let shape = [size[2], size[3], size[4]];
        let [pt, ph, pw] = self.cfg.patch_size;
        if shape[0] < pt || shape[1] < ph || shape[2] < pw {
            return Err(PluginError::invalid_argument(format!(
                "the input (T, H, W) = {shape:?} is smaller than patch_size {:?}",
                self.cfg.patch_size
            )));
        }
        if shape[0] % pt != 0 || shape[1] % ph != 0 || shape[2] % pw != 0 {
            tracing::warn!(
                "input {shape:?} is not divisible by patch size {:?}; the border is ignored",
                self.cfg.patch_size
            );
        }
        // [B, C, T, H, W] -> [B, E, T', H', W'] -> [B, L, E]
        let x = x.f_conv3d(
            &self.proj_w,
            Some(&self.proj_b),
            [pt, ph, pw],
            [0, 0, 0],
            [1, 1, 1],
            1,
        )?;
        let mut x = x.flatten(2, -1).transpose(1, 2);
        let pos = interpolate_pos_encoding(
            &self.pos_embed,
            self.cfg.grid_size(),
            self.cfg.patch_size,
            shape,
            self.cfg.embed_dim,
        )?;
        x = x.f_add(&pos.narrow(1, 1, pos.size()[1] - 1))?;
        let x = self.coords.add(x, coords, self.cfg.num_frames)?;
        Ok((x, pos))
    }

    /// Prepends the class token (plus its position embedding).
    fn with_cls(&self, x: &Tensor, pos: &Tensor) -> Tensor {
        let cls = (&self.cls_token + pos.narrow(1, 0, 1)).expand([x.size()[0], -1, -1], false);
        Tensor::cat(&[cls, x.shallow_clone()], 1)
    }

    /// `forward_features`: the token sequence `[B, 1+L, E]` after every block; the last
    /// one after the final LayerNorm.
    pub fn forward_features(
        &self,
        x: &Tensor,
        coords: Coords<'_>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let (x, _) = self.to_5d(x)?;
        let (x, pos) = self.embed(&x, coords)?;
        let mut x = self.with_cls(&x, &pos);
        let b = x.size()[0];
        let mut out = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(prompt) = self.vpt_prompts.get(i) {
                let n = prompt.size()[1];
                let prompt = prompt
                    .expand([b, -1, -1], false)
                    .dropout(self.cfg.vpt_dropout, train);
                let rest = x.narrow(1, 1, x.size()[1] - 1);
                x = Tensor::cat(&[x.narrow(1, 0, 1), prompt, rest], 1);
                x = block.forward(&x, train)?;
                let rest = x.narrow(1, 1 + n, x.size()[1] - 1 - n);
                x = Tensor::cat(&[x.narrow(1, 0, 1), rest], 1);
            } else {
                x = block.forward(&x, train)?;
            }
            out.push(x.copy());
        }
        if let Some(last) = out.last_mut() {
            *last = self.norm.forward(&x);
        }
        Ok(out)
    }

    /// The MAE encoder pass (`PrithviViT.forward`): embeds, keeps a random
    /// `1 - mask_ratio` share of the tokens (ordered by `noise`, random when `None`),
    /// runs the blocks and the final norm. Returns `(latent, mask, ids_restore)`.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        coords: Coords<'_>,
        mask_ratio: f64,
        noise: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (x, _) = self.to_5d(x)?;
        let (x, pos) = self.embed(&x, coords)?;
        let (x, mask, ids_restore) = random_masking(&x, mask_ratio, noise)?;
        let mut x = self.with_cls(&x, &pos);
        for block in &self.blocks {
            x = block.forward(&x, train)?;
        }
        Ok((self.norm.forward(&x), mask, ids_restore))
    }

    /// `prepare_features_for_image_model`: drops the class token and folds the tokens of
    /// each frame into a map, `[B, 1+T*h*w, E] -> [B, T*E, h, w]` (h = floor(sqrt(h*w))).
    pub fn prepare_features(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        let t = self.cfg.num_frames / self.cfg.patch_size[0];
        let e = self.cfg.embed_dim;
        features
            .iter()
            .map(|x| {
                let (b, n, _) = x.size3()?;
                let tokens = x.narrow(1, 1, n - 1);
                let per_step = (n - 1) / t;
                let h = (per_step as f64).sqrt() as i64;
                if h == 0 || (n - 1) % (t * h) != 0 {
                    return Err(PluginError::invalid_argument(format!(
                        "cannot fold {} tokens into {t} frame(s) of {h} rows",
                        n - 1
                    )));
                }
                let w = (n - 1) / (t * h);
                // [B, (t h w), E] -> [B, t, E, h, w] -> [B, t*E, h, w]
                Ok(tokens
                    .f_reshape([b, t, h, w, e])?
                    .permute([0, 1, 4, 2, 3])
                    .f_reshape([b, t * e, h, w])?)
            })
            .collect()
    }
}

/// `random_masking`: keeps the `int(L * (1 - mask_ratio))` tokens with the smallest noise.
/// Returns the kept tokens `[B, keep, E]`, the mask `[B, L]` (1 = removed) and the
/// permutation that restores the original order.
pub fn random_masking(
    x: &Tensor,
    mask_ratio: f64,
    noise: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, d) = x.size3()?;
    let keep = (l as f64 * (1.0 - mask_ratio)) as i64;
    let noise = match noise {
        Some(n) => {
            if n.size() != [b, l] {
                return Err(PluginError::invalid_argument(format!(
                    "the masking noise must have shape [B, L] = [{b}, {l}] (one value per patch), got {:?}",
                    n.size()
                )));
            }
            n.to_device(x.device())
        }
        None => Tensor::rand([b, l], (Kind::Float, x.device())),
    };
    let ids_shuffle = noise.argsort(1, false);
    let ids_restore = ids_shuffle.argsort(1, false);
    let ids_keep = ids_shuffle.narrow(1, 0, keep);
    let kept = x.f_gather(1, &ids_keep.unsqueeze(-1).repeat([1, 1, d]), false)?;
    let mask = Tensor::ones([b, l], (x.kind(), x.device()));
    let _ = mask.narrow(1, 0, keep).fill_(0.0);
    let mask = mask.f_gather(1, &ids_restore, false)?;
    Ok((kept, mask, ids_restore))
}

// -------------------------------------------------------------------------------------
// Decoder and MAE
// -------------------------------------------------------------------------------------

/// `MAEDecoder`: embeds the kept tokens, fills the masked positions with the mask
/// token, restores the order, adds position (and coordinate) embeddings, runs its
/// blocks and predicts the pixels of every patch.
#[derive(Debug)]
pub struct MAEDecoder {
    cfg: Config,
    decoder_embed: nn::Linear,
    mask_token: Tensor,
    decoder_pos_embed: Tensor,
    coords: CoordEncoders,
    blocks: Vec<Block>,
    decoder_norm: nn::LayerNorm,
    decoder_pred: nn::Linear,
}

impl MAEDecoder {
    /// Builds the decoder under `p` (`decoder`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        let d = cfg.decoder_embed_dim;
        let grid = cfg.grid_size();
        let [pt, ph, pw] = cfg.patch_size;
        let decoder_embed = linear(&p / "decoder_embed", cfg.embed_dim, d);
        let mask_token = p.var(
            "mask_token",
            &[1, 1, d],
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let decoder_pos_embed = sincos_buffer(&p, "decoder_pos_embed", d, grid);
        let coords = CoordEncoders::new(&p, "dec", d, cfg);
        let blocks = block_stack(
            &p / "decoder_blocks",
            cfg.decoder_depth,
            d,
            cfg.decoder_num_heads,
            cfg,
            0.0,
        );
        let decoder_norm = layer_norm(&p / "decoder_norm", d, cfg.norm_eps);
        let decoder_pred = linear(&p / "decoder_pred", d, pt * ph * pw * cfg.in_chans);
        Ok(Self {
            cfg: cfg.clone(),
            decoder_embed,
            mask_token,
            decoder_pos_embed,
            coords,
            blocks,
            decoder_norm,
            decoder_pred,
        })
    }

    /// `[B, 1+keep, E]` latent -> `[B, L, pt*ph*pw*C]` patch predictions; `shape` is the
    /// input's (frames, height, width).
    pub fn forward(
        &self,
        latent: &Tensor,
        ids_restore: &Tensor,
        coords: Coords<'_>,
        shape: [i64; 3],
        train: bool,
    ) -> Result<Tensor> {
        let x = self.decoder_embed.forward(latent);
        let (b, n, d) = x.size3()?;
        let l = ids_restore.size()[1];
        let cls = x.narrow(1, 0, 1);
        let mask_tokens = self.mask_token.repeat([b, l + 1 - n, 1]);
        let x = Tensor::cat(&[x.narrow(1, 1, n - 1), mask_tokens], 1);
        // unshuffle: [B, L, D]
        let mut x = x.f_gather(1, &ids_restore.unsqueeze(-1).repeat([1, 1, d]), false)?;
        let pos = interpolate_pos_encoding(
            &self.decoder_pos_embed,
            self.cfg.grid_size(),
            self.cfg.patch_size,
            shape,
            d,
        )?;
        let cls = cls + pos.narrow(1, 0, 1);
        x = x.f_add(&pos.narrow(1, 1, pos.size()[1] - 1))?;
        // the decoder's frame count is grid_size[0] * patch_size[0]
        let frames = self.cfg.grid_size()[0] * self.cfg.patch_size[0];
        let x = self.coords.add(x, coords, frames)?;
        let mut x = Tensor::cat(&[cls, x], 1);
        for block in &self.blocks {
            x = block.forward(&x, train)?;
        }
        let pred = self.decoder_pred.forward(&self.decoder_norm.forward(&x));
        Ok(pred.narrow(1, 1, pred.size()[1] - 1))
    }
}

/// `PrithviMAE`: the encoder (`encoder.`) and the MAE decoder (`decoder.`).
#[derive(Debug)]
pub struct PrithviMAE {
    /// The encoder.
    pub encoder: PrithviViT,
    /// The decoder.
    pub decoder: MAEDecoder,
}

impl PrithviMAE {
    /// Builds both halves under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        let enc_cfg = Config {
            vpt: false,
            ..cfg.clone()
        };
        Ok(Self {
            encoder: PrithviViT::new(&p / "encoder", &enc_cfg)?,
            decoder: MAEDecoder::new(&p / "decoder", cfg)?,
        })
    }

    fn cfg(&self) -> &Config {
        &self.encoder.cfg
    }

    /// `patchify`: `[B, C, T, H, W] -> [B, L, pt*ph*pw*C]` (channels fastest).
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        let [s, p, q] = self.cfg().patch_size;
        let size = x.size();
        let (b, c, t, h, w) = (size[0], size[1], size[2] / s, size[3] / p, size[4] / q);
        // b c (t s) (h p) (w q) -> b (t h w) (s p q c)
        Ok(x.f_reshape([b, c, t, s, h, p, w, q])?
            .permute([0, 2, 4, 6, 3, 5, 7, 1])
            .f_reshape([b, t * h * w, s * p * q * c])?)
    }

    /// `unpatchify`: `[B, L, pt*ph*pw*C] -> [B, C, T, H, W]` for an image of `hw`.
    pub fn unpatchify(&self, x: &Tensor, hw: [i64; 2]) -> Result<Tensor> {
        let [s, p, q] = self.cfg().patch_size;
        let (b, l, k) = x.size3()?;
        let (h, w) = (hw[0] / p, hw[1] / q);
        let t = l / (h * w);
        let c = k / (s * p * q);
        // b (t h w) (s p q c) -> b c (t s) (h p) (w q)
        Ok(x.f_reshape([b, t, h, w, s, p, q, c])?
            .permute([0, 7, 1, 4, 2, 5, 3, 6])
            .f_reshape([b, c, t * s, h * p, w * q])?)
    }

    /// `forward_loss`: mean squared error over the masked patches.
    pub fn forward_loss(&self, x: &Tensor, pred: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut target = self.patchify(x)?;
        if self.cfg().norm_pix_loss {
            let mean = target.mean_dim(-1, true, Kind::Float);
            let var = target.var_dim(-1, true, true);
            target = (target - mean) / (var + 1.0e-6).sqrt();
        }
        let loss = pred
            .f_sub(&target)?
            .square()
            .mean_dim(-1, false, Kind::Float);
        Ok((loss * mask).sum(Kind::Float) / mask.sum(Kind::Float))
    }

    /// `PrithviMAE.forward`: returns `[loss, reconstruction, mask]`: the loss is a
    /// scalar, the reconstruction has the input's shape and the mask is the input's
    /// shape without channels (1 = masked pixel). A 4-D input of a one-frame model gives
    /// 4-D / 3-D outputs, as upstream.
    pub fn forward(
        &self,
        x: &Tensor,
        coords: Coords<'_>,
        mask_ratio: f64,
        noise: Option<&Tensor>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let (x, added) = self.encoder.to_5d(x)?;
        let size = x.size();
        let (latent, mask, ids_restore) = self
            .encoder
            .forward_masked(&x, coords, mask_ratio, noise, train)?;
        let pred = self.decoder.forward(
            &latent,
            &ids_restore,
            coords,
            [size[2], size[3], size[4]],
            train,
        )?;
        let loss = self.forward_loss(&x, &pred, &mask)?;
        let hw = [size[3], size[4]];
        let k = pred.size()[2];
        let mask = self
            .unpatchify(&mask.unsqueeze(-1).repeat([1, 1, k]), hw)?
            .select(1, 0);
        let mut pred = self.unpatchify(&pred, hw)?;
        let mut mask = mask;
        if added {
            pred = pred.squeeze_dim(2);
            mask = mask.squeeze_dim(1);
        }
        Ok(vec![loss, pred, mask])
    }
}
