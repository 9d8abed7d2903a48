//! Mirrors `terratorch/models/backbones/dofa_vit.py` (TerraTorch 1.2.11): the
//! `dofa_{small,base,large}_patch16_224` backbone registrations, `waves_list` /
//! `get_wavelenghts` (`model_bands` -> wavelengths), `DOFAEncoderWrapper` (what they return)
//! and `load_dofa_weights`; and the network they wrap, torchgeo's `DOFA`
//! (`torchgeo/models/dofa.py`): `DOFAEmbedding` (the wavelength-conditioned dynamic patch
//! embedding: sin-cos embedding of the wavelengths, `FCResLayer`, the
//! `TransformerWeightGenerator`, a convolution with the generated kernels), the class token,
//! the position embedding and timm's ViT `Block`s.
//!
//! Every key sits under `dofa_model.` (the wrapper's child), including the parts the
//! wrapper never runs (`fc_norm` or `norm`, `head`), so checkpoints load unchanged.
//!
//! Differences, all stated in the entries' docs: `pretrained=true` loads only a local
//! `ckpt_data` file (terrahost makes no downloads); `out_indices` entries that
//! `DOFAEncoderWrapper.forward` would silently skip (negative ones other than -1, indices
//! past the last block, repeats) are refused, so the outputs always match `out_channels`.
use super::prithvi_checkpoint::{self as ckpt, StateDict};
use super::prithvi_mae::{self, Block};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_layers::torch_transformer::TransformerEncoderLayer;
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

pub use terrahost_layers::wavelengths::WAVES_LIST;

/// The registered names, in TerraTorch's registration order.
pub const NAMES: [&str; 3] = [
    "dofa_small_patch16_224",
    "dofa_base_patch16_224",
    "dofa_large_patch16_224",
];

/// Width of the wavelength embedding (`DOFAEmbedding(dynamic_embed_dim=128)`, fixed
/// whatever `DOFA`'s own `dynamic_embed_dim` says).
pub const WAVE_DIM: i64 = 128;
/// Learned weight tokens of the weight generator (`wt_num`).
pub const WEIGHT_TOKENS: i64 = 128;
/// Heads of the weight generator's transformer layer.
pub const GENERATOR_HEADS: i64 = 4;
/// `DOFAEmbedding.scaler`: the generated kernels and bias are multiplied by it.
pub const SCALER: f64 = 0.01;

/// `get_wavelenghts`: the wavelength of each band name (the part after the last `.`, so
/// `HLSBands.RED` is `RED`), or an error naming the unknown band.
pub fn wavelengths(model_bands: &[String]) -> Result<Vec<f64>> {
    model_bands
        .iter()
        .map(|b| {
            let key = b.rsplit('.').next().unwrap_or(b);
            WAVES_LIST
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, w)| *w)
                .ok_or_else(|| {
                    let known: Vec<&str> = WAVES_LIST.iter().map(|(n, _)| *n).collect();
                    PluginError::invalid_argument(format!(
                        "`model_bands` entry {b:?} is not a band DOFA knows the wavelength of; use one of {}",
                        known.join(", ")
                    ))
                })
        })
        .collect()
}

/// The architecture of a `DOFA` plus the wrapper's choices.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Input size the position embedding is made for (`img_size`, square).
    pub img_size: i64,
    /// Patch size = kernel and stride of the dynamic convolution.
    pub patch_size: i64,
    /// Token width.
    pub embed_dim: i64,
    /// Transformer blocks.
    pub depth: i64,
    /// Attention heads per block.
    pub num_heads: i64,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Classes of the (unused) classification head; 0 means no head (`nn.Identity`).
    pub num_classes: i64,
    /// `fc_norm` (true) or `norm` (false), neither of which the wrapper runs.
    pub global_pool: bool,
    /// The wavelength (µm) of each input channel.
    pub wavelengths: Vec<f64>,
    /// Blocks whose tokens are returned: block indices or -1 (the last block).
    pub out_indices: Vec<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Self::preset_dims(768, 12, 12)
    }
}

impl Config {
    fn preset_dims(embed_dim: i64, depth: i64, num_heads: i64) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            num_classes: 45,
            global_pool: true,
            wavelengths: vec![0.665, 0.56, 0.49],
            out_indices: vec![-1],
        }
    }

    /// torchgeo `dofa_small_patch16_224`.
    pub fn dofa_small_patch16_224() -> Self {
        Self::preset_dims(384, 12, 6)
    }
    /// torchgeo `dofa_base_patch16_224`.
    pub fn dofa_base_patch16_224() -> Self {
        Self::preset_dims(768, 12, 12)
    }
    /// torchgeo `dofa_large_patch16_224`.
    pub fn dofa_large_patch16_224() -> Self {
        Self::preset_dims(1024, 24, 16)
    }
    /// The preset called `name`.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "dofa_small_patch16_224" => Self::dofa_small_patch16_224(),
            "dofa_base_patch16_224" => Self::dofa_base_patch16_224(),
            "dofa_large_patch16_224" => Self::dofa_large_patch16_224(),
            _ => return None,
        })
    }

    /// `DOFA.num_patches`: the tokens the position embedding covers, besides the class token.
    pub fn num_patches(&self) -> i64 {
        (self.img_size / self.patch_size).pow(2)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.img_size < self.patch_size {
            return bad(format!(
                "`img_size` {} is smaller than the patch size {}: there would be no patch",
                self.img_size, self.patch_size
            ));
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.mlp_ratio.is_nan()
            || self.mlp_ratio <= 0.0
            || (self.embed_dim as f64 * self.mlp_ratio) < 1.0
        {
            return bad(format!(
                "`mlp_ratio` must be positive, got {}",
                self.mlp_ratio
            ));
        }
        if self.num_classes < 0 {
            return bad(format!(
                "`num_classes` must be >= 0, got {}",
                self.num_classes
            ));
        }
        if self.wavelengths.is_empty() {
            return bad("`model_bands` must name at least one band".into());
        }
        check_out_indices(&self.out_indices, self.depth)
    }
}

/// The `out_indices` `DOFAEncoderWrapper.forward` honours one output each for: block
/// indices `0..depth` and -1 (the last block), without repeats (counting -1 as the last).
fn check_out_indices(out_indices: &[i64], depth: i64) -> Result<()> {
    let mut seen = Vec::new();
    for &i in out_indices {
        let idx = if i == -1 { depth - 1 } else { i };
        if !(0..depth).contains(&idx) {
            return Err(PluginError::invalid_argument(format!(
                "`out_indices` contains {i}, but DOFA's wrapper returns blocks 0..{} or -1 (the last) only: TerraTorch \
                 would silently return nothing for it; use 0..{} or -1",
                depth - 1,
                depth - 1
            )));
        }
        if seen.contains(&idx) {
            return Err(PluginError::invalid_argument(format!(
                "`out_indices` {out_indices:?} names block {idx} twice (-1 is block {}): TerraTorch would return \
                 it once and report one out_channels entry too many",
                depth - 1
            )));
        }
        seen.push(idx);
    }
    Ok(())
}

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    terrahost_layers::init::xavier_linear(p, i, o)
}

/// torchgeo's `position_embedding(embed_dim, pos)`: `[M] -> [M, D]`, sin then cos, in
/// float32 as upstream.
pub fn position_embedding(embed_dim: i64, pos: &Tensor) -> Result<Tensor> {
    let half = embed_dim / 2;
    let omega = Tensor::f_arange(half, (Kind::Float, pos.device()))?
        .f_div_scalar(embed_dim as f64 / 2.0)?;
    let omega = Tensor::f_pow_scalar(10000, &omega)?.f_reciprocal()?;
    // outer product: [M, 1] * [1, D/2]
    let out = pos.f_reshape([-1, 1])?.f_mul(&omega.f_unsqueeze(0)?)?;
    Ok(Tensor::f_cat(&[out.f_sin()?, out.f_cos()?], 1)?)
}

/// `FCResLayer`: `x + relu(w2(relu(w1(x))))`.
#[derive(Debug)]
struct FcResLayer {
    w1: nn::Linear,
    w2: nn::Linear,
}

impl FcResLayer {
    fn new(p: nn::Path, dim: i64) -> Self {
        Self {
            w1: linear(&p / "w1", dim, dim),
            w2: linear(&p / "w2", dim, dim),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.apply(&self.w1).f_relu()?.apply(&self.w2).f_relu()?;
        Ok(x.f_add(&y)?)
    }
}

/// `TransformerWeightGenerator`: one transformer layer over [weight tokens, wavelength
/// embeddings, bias token]; the wavelengths' outputs (plus their embeddings) give the
/// kernels, the bias token's output the bias.
#[derive(Debug)]
struct WeightGenerator {
    layer: TransformerEncoderLayer,
    fc_weight: nn::Linear,
    fc_bias: nn::Linear,
    weight_tokens: Tensor,
    bias_token: Tensor,
}

impl WeightGenerator {
    fn new(p: nn::Path, input_dim: i64, output_dim: i64, embed_dim: i64) -> Result<Self> {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            layer: TransformerEncoderLayer::new(
                &p / "transformer_encoder" / "layers" / 0,
                input_dim,
                GENERATOR_HEADS,
            )?,
            fc_weight: linear(&p / "fc_weight", input_dim, output_dim),
            fc_bias: linear(&p / "fc_bias", input_dim, embed_dim),
            weight_tokens: p.var("weight_tokens", &[WEIGHT_TOKENS, input_dim], init),
            bias_token: p.var("bias_token", &[1, input_dim], init),
        })
    }

    /// `[C, wave_dim]` -> (weights `[C, k*k*D]`, bias `[D]`).
    fn forward(&self, waves: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = waves.size()[0];
        let x = Tensor::f_cat(&[&self.weight_tokens, waves, &self.bias_token], 0)?;
        let out = self.layer.forward(&x)?;
        let weights = out
            .f_narrow(0, WEIGHT_TOKENS, c)?
            .f_add(waves)?
            .apply(&self.fc_weight);
        let bias = out.f_get(WEIGHT_TOKENS + c)?.apply(&self.fc_bias);
        Ok((weights, bias))
    }
}

/// `DOFAEmbedding`: the patch embedding whose kernels are generated from the input's
/// wavelengths.
#[derive(Debug)]
pub struct DofaEmbedding {
    weight_generator: WeightGenerator,
    fclayer: FcResLayer,
    kernel_size: i64,
    embed_dim: i64,
}

impl DofaEmbedding {
    /// The embedding under `p` (`dofa_model.patch_embed`).
    pub fn new(p: nn::Path, kernel_size: i64, embed_dim: i64) -> Result<Self> {
        Ok(Self {
            weight_generator: WeightGenerator::new(
                &p / "weight_generator",
                WAVE_DIM,
                kernel_size * kernel_size * embed_dim,
                embed_dim,
            )?,
            fclayer: FcResLayer::new(&p / "fclayer", WAVE_DIM),
            kernel_size,
            embed_dim,
        })
    }

    /// The kernels `[D, C, k, k]` and bias `[D]` for the wavelengths `[C]` (µm, float32),
    /// both already scaled by [`SCALER`].
    pub fn dynamic_weights(&self, wavelengths: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = wavelengths.size()[0];
        let k = self.kernel_size;
        let waves = position_embedding(WAVE_DIM, &wavelengths.f_mul_scalar(1000)?)?;
        let waves = self.fclayer.forward(&waves)?;
        let (weight, bias) = self.weight_generator.forward(&waves)?;
        // [C, k*k*D] -> [C, k, k, D] -> [D, C, k, k]
        let weight = weight
            .f_view([c, k, k, self.embed_dim])?
            .f_permute([3, 0, 1, 2])?
            .f_mul_scalar(SCALER)?;
        let bias = bias.f_view([self.embed_dim])?.f_mul_scalar(SCALER)?;
        Ok((weight, bias))
    }

    /// `[B, C, H, W]` -> `[B, N, D]` (stride `k`, padding 1, as upstream).
    pub fn forward(&self, x: &Tensor, wavelengths: &Tensor) -> Result<Tensor> {
        let (weight, bias) = self.dynamic_weights(wavelengths)?;
        let k = self.kernel_size;
        let y = x.f_conv2d(&weight, Some(&bias), [k, k], [1, 1], [1, 1], 1)?;
        Ok(y.f_flatten(2, 3)?.f_transpose(1, 2)?)
    }
}

/// `DOFAEncoderWrapper` around torchgeo's `DOFA`: returns the tokens `[B, 1 + N, D]`
/// (class token first) after each block of `out_indices`, in network order.
pub struct DofaEncoder {
    cfg: Config,
    model_bands: Vec<String>,
    patch_embed: DofaEmbedding,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
}

impl std::fmt::Debug for DofaEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DofaEncoder")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl DofaEncoder {
    /// Builds the wrapper under `p`; the network sits under `p / "dofa_model"`.
    pub fn new(p: nn::Path, cfg: &Config, model_bands: Vec<String>) -> Result<Self> {
        cfg.validate()?;
        let m = &p / "dofa_model";
        let d = cfg.embed_dim;
        let eps = 1e-6;
        let norm = |name: &str| {
            nn::layer_norm(
                &m / name,
                vec![d],
                nn::LayerNormConfig {
                    eps,
                    ..Default::default()
                },
            )
        };
        // Built for their keys only: DOFAEncoderWrapper never runs them.
        let _ = norm(if cfg.global_pool { "fc_norm" } else { "norm" });
        if cfg.num_classes > 0 {
            let _ = linear(&m / "head", d, cfg.num_classes);
        }
        let patch_embed = DofaEmbedding::new(&m / "patch_embed", cfg.patch_size, d)?;
        let cls_token = m.zeros("cls_token", &[1, 1, d]);
        // requires_grad=False upstream, but a parameter (in `parameters()` and the state_dict)
        let pos_embed = m.zeros("pos_embed", &[1, cfg.num_patches() + 1, d]);
        let blocks = (0..cfg.depth)
            .map(|i| {
                prithvi_mae::block(&m / "blocks" / i, d, cfg.num_heads, cfg.mlp_ratio, eps, 0.0)
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            model_bands,
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `DOFAEncoderWrapper.forward(x)`.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let cfg = &self.cfg;
        let size = x.size();
        let c = cfg.wavelengths.len() as i64;
        if size.len() != 4 || size[1] != c {
            return Err(PluginError::forward_failed(format!(
                "DOFA was built for {c} bands ({}) and takes [B, {c}, H, W], got a tensor of shape {size:?}",
                self.model_bands.join(", ")
            )));
        }
        let waves: Vec<f32> = cfg.wavelengths.iter().map(|&w| w as f32).collect();
        let waves = Tensor::from_slice(&waves).f_to_device(x.device())?;
        let t = self.patch_embed.forward(x, &waves)?;
        let (b, n) = (size[0], t.size()[1]);
        if n != cfg.num_patches() {
            return Err(PluginError::forward_failed(format!(
                "a {}x{} input gives {n} patches, but DOFA was built with img_size={} ({} patches in its position \
                 embedding, which it does not interpolate); build it with img_size={} or resize the input",
                size[2],
                size[3],
                cfg.img_size,
                cfg.num_patches(),
                size[2]
            )));
        }
        let t = t.f_add(&self.pos_embed.f_narrow(1, 1, n)?)?;
        let cls = self
            .cls_token
            .f_add(&self.pos_embed.f_narrow(1, 0, 1)?)?
            .f_expand([b, -1, -1], false)?;
        let mut t = Tensor::f_cat(&[cls, t], 1)?;
        let last = self.blocks.len() as i64 - 1;
        let mut outs = Vec::with_capacity(cfg.out_indices.len());
        for (i, block) in self.blocks.iter().enumerate() {
            t = block.forward(&t, train)?;
            let i = i as i64;
            if cfg.out_indices.contains(&i) || (i == last && cfg.out_indices.contains(&-1)) {
                outs.push(t.shallow_clone());
            }
        }
        Ok(outs)
    }
}

impl Model for DofaEncoder {
    /// `xs[0]`: the image `[B, len(model_bands), img_size, img_size]`.
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => self.forward_features(x, train),
            _ => Err(PluginError::invalid_argument(format!(
                "DOFA takes one input tensor (the image), got {}",
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.embed_dim; self.cfg.out_indices.len()]
    }

    fn meta(&self) -> Map<String, Value> {
        let c = &self.cfg;
        let mut m = Map::new();
        // what TerraTorch's factory finds on the first submodule with a `patch_size` (DOFA's)
        m.insert("patch_size".into(), json!(c.patch_size));
        m.insert("img_size".into(), json!(c.img_size));
        m.insert("embed_dim".into(), json!(c.embed_dim));
        m.insert("model_bands".into(), json!(self.model_bands));
        m.insert("wavelengths".into(), json!(c.wavelengths));
        m.insert("out_indices".into(), json!(c.out_indices));
        m
    }
}

/// `resize_pos_embed`: the grid part of a `[1, 1 + old*old, D]` position embedding resized
/// to `new` (`mode`, `align_corners=False`), the class token kept.
pub fn resize_pos_embed(pos: &Tensor, new: (i64, i64), old: i64, mode: &str) -> Result<Tensor> {
    let size = pos.size();
    if size.len() != 3 || size[1] < old * old + 1 {
        return Err(PluginError::invalid_argument(format!(
            "cannot resize a position embedding of shape {size:?} from a {old}x{old} grid"
        )));
    }
    let d = size[2];
    let cls = pos.f_narrow(1, 0, 1)?;
    // [1, old*old, D] -> [1, D, old, old]
    let grid = pos
        .f_narrow(1, size[1] - old * old, old * old)?
        .f_reshape([1, old, old, d])?
        .f_permute([0, 3, 1, 2])?;
    let grid = match mode {
        "bilinear" => grid.f_upsample_bilinear2d([new.0, new.1], false, None, None)?,
        "bicubic" => grid.f_upsample_bicubic2d([new.0, new.1], false, None, None)?,
        other => {
            return Err(PluginError::invalid_argument(format!(
            "`pos_interpolation_mode` {other:?} is not supported; use \"bilinear\" or \"bicubic\""
        )))
        }
    };
    let grid = grid.f_flatten(2, 3)?.f_transpose(1, 2)?;
    Ok(Tensor::f_cat(&[cls, grid], 1)?)
}

/// `load_dofa_weights` with a local `ckpt_data` file: a mismatched `head` is dropped, the
/// position embedding is resized when `img_size` is not 224 and its shape differs, and
/// the rest loads as `load_state_dict(strict=False)` (shape mismatches are errors).
pub fn load_checkpoint(
    vs: &mut nn::VarStore,
    file: &std::path::Path,
    cfg: &Config,
    mode: &str,
) -> Result<()> {
    let vars = vs.variables();
    let model_shape = |k: &str| vars.get(&format!("dofa_model.{k}")).map(Tensor::size);
    let mut sd = StateDict::default();
    let pairs = read_state_dict(file)?;
    let pos_shape = model_shape("pos_embed");
    for (k, v) in pairs {
        if (k == "head.weight" || k == "head.bias") && model_shape(&k) != Some(v.size()) {
            tracing::info!("Removing key {k} from pretrained checkpoint");
            continue;
        }
        let v = if k == "pos_embed" && cfg.img_size != 224 && pos_shape != Some(v.size()) {
            let n = v.size().get(1).copied().unwrap_or(1);
            let old = ((n - 1) as f64).sqrt() as i64;
            let g = cfg.img_size / cfg.patch_size;
            resize_pos_embed(&v, (g, g), old, mode)
                .map_err(|e| e.context("`pos_embed` of the checkpoint"))?
        } else {
            v
        };
        sd.insert(format!("dofa_model.{k}"), v);
    }
    let (missing, unexpected) = ckpt::load_non_strict(vs, sd, &file.display().to_string())?;
    tracing::info!(
        "DOFA checkpoint {}: missing keys {missing:?}, unexpected keys {unexpected:?}",
        file.display()
    );
    Ok(())
}

/// Builds the entry `name` from its validated arguments.
fn build(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<ModuleBox> {
    let a = &ctx.args;
    let qualified = ctx.qualified();
    let base = Config::preset(name).expect("a DOFA entry is registered only for a preset");
    let model_bands: Vec<String> = a.get("model_bands")?;
    let out_indices = match a.opt::<Vec<i64>>("out_indices")? {
        Some(v) if !v.is_empty() => v,
        _ => vec![-1],
    };
    let cfg = Config {
        img_size: a.get("img_size")?,
        mlp_ratio: a.get("mlp_ratio")?,
        num_classes: a.get("num_classes")?,
        global_pool: a.get("global_pool")?,
        wavelengths: wavelengths(&model_bands)?,
        out_indices,
        ..base
    };
    let mode: String = a.get("pos_interpolation_mode")?;
    let pretrained: bool = a.get("pretrained")?;
    let ckpt_data: Option<String> = a.opt("ckpt_data")?;
    let weights: Option<Value> = a.opt("weights")?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = DofaEncoder::new(vs.root(), &cfg, model_bands)
        .map_err(|e| e.context(format_args!("`{qualified}`")))?;
    if pretrained {
        match (ckpt_data, weights) {
            (Some(url), _) if url.contains("https://hf.co/") || url.starts_with("http") => {
                return Err(PluginError::invalid_argument(format!(
                    "`{qualified}`: ckpt_data {url} would be downloaded, and terrahost makes no downloads: download \
                     it yourself and pass its local path as ckpt_data"
                )))
            }
            (Some(file), _) => load_checkpoint(&mut vs, std::path::Path::new(&file), &cfg, &mode)
                .map_err(|e| e.context(format_args!("`{qualified}` ckpt_data `{file}`")))?,
            (None, Some(w)) if !w.is_null() => {
                return Err(PluginError::invalid_argument(format!(
                    "`{qualified}` with pretrained=true and weights={w} would download torchgeo's DOFA weights, and \
                     terrahost makes no downloads: download the checkpoint and pass it as ckpt_data=<file>, or build \
                     with pretrained=false and load weights with `terrahost run --weights <file>`"
                )))
            }
            (None, _) => tracing::warn!(
                "`{qualified}`: pretrained=true without ckpt_data or weights: no weights to load (as TerraTorch)"
            ),
        }
    }
    Ok(Built::new(qualified, vs, model).boxed())
}

/// The registry entry `name` (one of [`NAMES`]).
pub fn entry(name: &'static str) -> Entry {
    let base = Config::preset(name).expect("a DOFA entry is registered only for a preset");
    let doc = format!(
        "DOFA ViT `{name}` (torchgeo; embed_dim {}, depth {}, heads {}, patch 16): the patch embedding's kernels are \
         generated from the wavelengths of `model_bands`, so one model takes any band set. Input [B, \
         len(model_bands), img_size, img_size]; returns the tokens [B, 1 + (img_size/16)^2, {}] (class token \
         first) after each block in out_indices (block indices or -1, in network order). The position embedding \
         is not interpolated: the input must be img_size. terrahost refuses out_indices TerraTorch would skip \
         silently, and loads pretrained weights only from a local ckpt_data file.",
        base.embed_dim, base.depth, base.num_heads, base.embed_dim
    );
    let known: Vec<&str> = WAVES_LIST.iter().map(|(n, _)| *n).collect();
    let overridden = |k: &str, v: i64| {
        format!("accepted and overridden: torchgeo's {name} sets {k}={v} whatever is passed")
    };
    let e = Entry::new(name, &doc, move |ctx| build(ctx, name))
        .req(
            "model_bands",
            ParamType::STR_LIST,
            &format!(
                "the input's bands, by name (the part after the last `.` counts): {}",
                known.join(", ")
            ),
        )
        .opt(
            "pretrained",
            ParamType::BOOL,
            json!(false),
            "load weights (needs a local ckpt_data file; terrahost does not download)",
        )
        .opt(
            "ckpt_data",
            ParamType::STR,
            Value::Null,
            "local checkpoint of the DOFA model (torch.save or .safetensors), loaded when pretrained=true",
        )
        .opt(
            "weights",
            ParamType::ANY,
            if name == "dofa_small_patch16_224" {
                Value::Null
            } else {
                json!("DOFA_MAE")
            },
            "torchgeo weights to download when pretrained=true without ckpt_data (refused: no downloads)",
        )
        .opt(
            "out_indices",
            ParamType::INT_LIST,
            Value::Null,
            "blocks whose tokens are returned: indices 0..depth-1 or -1 for the last (default [-1])",
        )
        .opt(
            "pos_interpolation_mode",
            ParamType::STR,
            json!("bilinear"),
            "how a checkpoint's position embedding is resized to img_size (\"bilinear\" or \"bicubic\")",
        )
        .opt(
            "img_size",
            ParamType::INT,
            json!(224),
            "input size (square) the position embedding is made for",
        )
        .opt(
            "mlp_ratio",
            ParamType::FLOAT,
            json!(4.0),
            "MLP hidden width as a multiple of embed_dim",
        )
        .opt(
            "num_classes",
            ParamType::INT,
            json!(45),
            "classes of DOFA's classification head (its `head` keys; the wrapper never runs it); 0: no head",
        )
        .opt(
            "global_pool",
            ParamType::BOOL,
            json!(true),
            "true: DOFA has `fc_norm`, false: `norm` (keys only; the wrapper runs neither)",
        )
        .ignores(
            "drop_rate",
            "DOFA's head dropout: the wrapper never runs the head",
        )
        .ignores(
            "dynamic_embed_dim",
            "stored by DOFA, but its patch embedding is always built with 128",
        )
        .ignores("patch_size", &overridden("patch_size", 16))
        .ignores("embed_dim", &overridden("embed_dim", base.embed_dim))
        .ignores("depth", &overridden("depth", base.depth))
        .ignores("num_heads", &overridden("num_heads", base.num_heads));
    if name == "dofa_small_patch16_224" {
        e.ignores(
            "input_size",
            "a parameter of TerraTorch's dofa_small_patch16_224 that it overwrites (img_size counts)",
        )
    } else {
        e
    }
}

/// The backbone entries, in TerraTorch's registration order.
pub fn entries() -> Vec<Entry> {
    NAMES.iter().map(|n| entry(n)).collect()
}
