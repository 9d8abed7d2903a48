//! Mirrors `terratorch/models/backbones/clay_v1/` (TerraTorch 1.2.11): `embedder.py`
//! (`Embedder`, `_make_clay`, the timm registration of `clay_v1_base`, `transform_state_dict`,
//! `prepare_features_for_image_model`), `modules.py` (`Datacuber`, `WAVELENGTHS`,
//! `EmbeddingEncoder` / `Encoder`, `DynamicEmbedding`, `WavesTransformer`, `FCBlock`,
//! `Transformer`, `Attention`, `FeedForward`) and `utils.py` (`posemb_sincos_1d`,
//! `posemb_sincos_2d_with_gsd`), as TerraTorch's timm registry returns it
//! (`TimmBackboneWrapper` over `features_only=True`: the keys are the Embedder's,
//! `clay_encoder.*`).
//!
//! The forward is `Embedder.forward_features(x, time, latlon, waves, gsd)`: inputs 1 to 4
//! are `time` [B, 4], `latlon` [B, 4], `waves` [C] and `gsd` (one number); an empty tensor
//! or a missing input means `None` (zeros, zeros, the bands' wavelengths, 1.0). `waves`
//! and `gsd` may also come as forward keywords.
use super::layers::{dropout, LayerNorm, TORCH_LN_EPS};
use crate::pretrained::{self, LoadPretrained};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_layers::clay::{posemb_sincos_2d_with_gsd, DynamicEmbedding, TransformerLayer};
use terrahost_layers::wavelengths::WAVES_LIST;
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// `WAVELENGTHS` of `clay_v1/modules.py`: band name -> central wavelength (µm). Upstream
/// it is Clay's own lowercase names followed by TerraTorch's `waves_list`; the latter is
/// [`WAVES_LIST`] (DOFA's), shared rather than copied. A band in neither (an int, say)
/// gets 0.0.
pub const WAVELENGTHS: [(&str, f64); 12] = [
    ("blue", 0.493),
    ("green", 0.56),
    ("red", 0.665),
    ("rededge1", 0.704),
    ("rededge2", 0.74),
    ("rededge3", 0.783),
    ("nir", 0.842),
    ("nir08", 0.865),
    ("swir16", 1.61),
    ("swir22", 2.19),
    ("vv", 3.5),
    ("vh", 4.0),
];

/// `Embedder`'s default bands.
pub const DEFAULT_BANDS: [&str; 6] = ["blue", "green", "red", "nir", "swir16", "swir22"];

/// Clay v1 base: patch 8, width 768, 12 layers of 12 heads of 64, MLP ratio 4.
pub const PATCH_SIZE: i64 = 8;
/// Token width.
pub const DIM: i64 = 768;
/// Transformer layers.
pub const DEPTH: i64 = 12;
/// Attention heads.
pub const HEADS: i64 = 12;
/// Width of each head.
pub const DIM_HEAD: i64 = 64;
/// MLP hidden width / DIM.
pub const MLP_RATIO: f64 = 4.0;

/// `Datacuber._parse_wavelengths`: the wavelength of each band (0.0 when unknown).
pub fn wavelengths(bands: &[Value]) -> Vec<f64> {
    bands
        .iter()
        .map(|b| {
            b.as_str()
                .and_then(|s| WAVELENGTHS.iter().chain(&WAVES_LIST).find(|(n, _)| *n == s))
                .map_or(0.0, |(_, w)| *w)
        })
        .collect()
}

/// The `Embedder` arguments that matter.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// The (square) image size the position encoding is made for.
    pub img_size: i64,
    /// Frames per sample, used only by `prepare_features_for_image_model`.
    pub num_frames: i64,
    /// The bands, as given (names, or anything else, which gets wavelength 0.0).
    pub bands: Vec<Value>,
    /// Layers whose tokens are returned (Python indices, any order, repeats allowed).
    pub out_indices: Vec<i64>,
    /// Visual prompt tuning: learned prompt tokens inserted before every layer.
    pub vpt: bool,
    /// Prompt tokens per layer (required with `vpt`).
    pub vpt_n_tokens: Option<i64>,
    /// Dropout on the prompt tokens (train mode only).
    pub vpt_dropout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            img_size: 256,
            num_frames: 1,
            bands: DEFAULT_BANDS.iter().map(|b| json!(b)).collect(),
            out_indices: (0..DEPTH).collect(),
            vpt: false,
            vpt_n_tokens: None,
            vpt_dropout: 0.0,
        }
    }
}

impl Config {
    /// `clay_v1_base` as registered.
    pub fn clay_v1_base() -> Self {
        Self::default()
    }

    /// The patch grid side (`EmbeddingEncoder.grid_size`).
    pub fn grid_size(&self) -> i64 {
        self.img_size / PATCH_SIZE
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.img_size < PATCH_SIZE {
            return bad(format!(
                "`img_size` {} is smaller than Clay's patch size {PATCH_SIZE}",
                self.img_size
            ));
        }
        if self.bands.is_empty() {
            return bad("`bands` must name at least one band".into());
        }
        if self.num_frames < 1 {
            return bad(format!(
                "`num_frames` must be >= 1, got {}",
                self.num_frames
            ));
        }
        for &i in &self.out_indices {
            if !(-DEPTH..DEPTH).contains(&i) {
                return bad(format!(
                    "`out_indices` contains {i}, but Clay has {DEPTH} layers: use 0..{} or -{DEPTH}..-1",
                    DEPTH - 1
                ));
            }
        }
        if self.vpt {
            match self.vpt_n_tokens {
                None => return bad("vpt_n_tokens must be provided when using VPT".into()),
                Some(n) if n < 1 => return bad(format!("`vpt_n_tokens` must be >= 1, got {n}")),
                _ => {}
            }
        }
        if !(0.0..1.0).contains(&self.vpt_dropout) {
            return bad(format!(
                "`vpt_dropout` must be in [0, 1), got {}",
                self.vpt_dropout
            ));
        }
        Ok(())
    }
}

/// The Clay v1 encoder as `TimmBackboneWrapper(Embedder)` returns it.
#[derive(Debug)]
pub struct ClayEmbedder {
    cfg: Config,
    waves: Vec<f64>,
    cls_token: Tensor,
    patch_embedding: DynamicEmbedding,
    layers: Vec<TransformerLayer>,
    norm: LayerNorm,
    prompts: Vec<Tensor>,
}

/// The optional inputs of a forward (`None` where not given).
#[derive(Default)]
pub struct Extras<'a> {
    /// `time` `[B, 4]`.
    pub time: Option<&'a Tensor>,
    /// `latlon` `[B, 4]`.
    pub latlon: Option<&'a Tensor>,
    /// `waves` `[C]` (µm).
    pub waves: Option<Tensor>,
    /// `gsd`.
    pub gsd: Option<f64>,
}

fn non_empty(xs: &[Tensor], i: usize) -> Option<&Tensor> {
    xs.get(i).filter(|t| t.numel() > 0)
}

impl ClayEmbedder {
    /// Builds it under `p` (the wrapper level: keys start with `clay_encoder.`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let e = &p / "clay_encoder";
        let t = &e / "transformer";
        let prompts = if cfg.vpt {
            let n = cfg.vpt_n_tokens.unwrap_or(1);
            let val = (6.0 / (3 * 8 * 8 + DIM) as f64).sqrt();
            let pp = &t / "vpt_prompt_embeddings";
            (0..DEPTH)
                .map(|i| {
                    pp.var(
                        &i.to_string(),
                        &[1, n, DIM],
                        Init::Uniform { lo: -val, up: val },
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            cfg: cfg.clone(),
            waves: wavelengths(&cfg.bands),
            cls_token: e.var(
                "cls_token",
                &[1, 1, DIM],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            patch_embedding: DynamicEmbedding::new(&e / "patch_embedding", PATCH_SIZE, DIM)?,
            norm: LayerNorm::new(&t / "norm", DIM, TORCH_LN_EPS),
            layers: (0..DEPTH)
                .map(|i| TransformerLayer::new(&t / "layers" / i, DIM, HEADS, DIM_HEAD, MLP_RATIO))
                .collect(),
            prompts,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `Embedder.forward_features(x, time, latlon, waves, gsd)`: the tokens `[B, 1+N, 768]`
    /// of the `out_indices` layers (the last layer's after the final norm).
    pub fn forward_features(
        &self,
        x: &Tensor,
        extras: Extras<'_>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let size = x.size();
        if size.len() != 4 {
            return Err(PluginError::forward_failed(format!(
                "Clay takes one [B, C, H, W] image batch, got a tensor of shape {size:?}"
            )));
        }
        let (b, dev) = (size[0], x.device());
        let waves = match extras.waves {
            Some(w) => w.f_to_device(dev)?,
            None => {
                let w: Vec<f32> = self.waves.iter().map(|&v| v as f32).collect();
                Tensor::from_slice(&w).f_to_device(dev)?
            }
        };
        if waves.dim() != 1 || waves.size()[0] != size[1] {
            return Err(PluginError::forward_failed(format!(
                "the input has {} channels but Clay got {} wavelengths (from `bands` {:?} or the `waves` input); \
                 give one band per channel",
                size[1],
                waves.numel(),
                self.cfg.bands
            )));
        }
        let zeros = || Tensor::f_zeros([b, 4], (Kind::Float, dev));
        let time = match extras.time {
            Some(t) => t.shallow_clone(),
            None => zeros()?,
        };
        let latlon = match extras.latlon {
            Some(t) => t.shallow_clone(),
            None => zeros()?,
        };
        let gsd = extras.gsd.unwrap_or(1.0);

        let patches = self.patch_embedding.forward(x, &waves)?;
        let l = patches.size()[1];
        let g = self.cfg.grid_size();
        if l != g * g {
            return Err(PluginError::forward_failed(format!(
                "a {}x{} input gives {l} patches, but Clay was built with img_size={} ({} patches in its position \
                 encoding); build it with img_size={} or resize the input",
                size[2],
                size[3],
                self.cfg.img_size,
                g * g,
                size[2]
            )));
        }
        // [L, D-8] and [B, 8] -> [B, L, D]
        let pos = posemb_sincos_2d_with_gsd(g, g, DIM - 8, gsd)?
            .f_to_device(dev)?
            .f_unsqueeze(0)?
            .f_expand([b, -1, -1], false)?;
        let time_latlon = Tensor::f_hstack(&[time, latlon])?
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(1)?
            .f_expand([b, l, 8], false)?;
        let patches = patches.f_add(&Tensor::f_cat(&[pos, time_latlon], -1)?)?;
        let cls = self.cls_token.f_expand([b, 1, DIM], false)?;
        let mut t = Tensor::f_cat(&[cls, patches], 1)?;

        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(prompt) = self.prompts.get(i) {
                let n = t.size()[1];
                let prompt = dropout(
                    prompt.f_expand([b, -1, -1], false)?,
                    self.cfg.vpt_dropout,
                    train,
                )?;
                t = Tensor::f_cat(&[t.f_narrow(1, 0, 1)?, prompt, t.f_narrow(1, 1, n - 1)?], 1)?;
            }
            t = layer.forward(&t)?;
            if !self.prompts.is_empty() {
                let p = self.cfg.vpt_n_tokens.unwrap_or(0);
                let n = t.size()[1];
                t = Tensor::f_cat(&[t.f_narrow(1, 0, 1)?, t.f_narrow(1, 1 + p, n - 1 - p)?], 1)?;
            }
            out.push(t.shallow_clone());
        }
        let last = out.len() - 1;
        out[last] = self.norm.forward(&t)?;
        self.cfg
            .out_indices
            .iter()
            .map(|&i| {
                let idx = if i < 0 { i + DEPTH } else { i } as usize;
                Ok(out[idx].shallow_clone())
            })
            .collect()
    }

    /// `Embedder.prepare_features_for_image_model`: the last feature without its class
    /// token as `[B, 768 * num_frames, s, s]`, `s = sqrt(N / num_frames)`.
    pub fn prepare(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        let last = features.last().ok_or_else(|| {
            PluginError::invalid_argument("prepare_features_for_image_model got no features")
        })?;
        let (b, n, _) = last.size3()?;
        let tokens = last.f_narrow(1, 1, n - 1)?;
        let s = (((n - 1) / self.cfg.num_frames) as f64).sqrt() as i64;
        Ok(vec![tokens
            .f_permute([0, 2, 1])?
            .f_reshape([b, -1, s, s])?])
    }
}

fn gsd_value(v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| {
        PluginError::invalid_argument(format!("forward keyword gsd must be a number, got {v}"))
    })
}

impl Model for ClayEmbedder {
    /// `xs[0]`: image `[B, C, H, W]`; optional `xs[1]` time `[B, 4]`, `xs[2]` latlon
    /// `[B, 4]`, `xs[3]` waves `[C]`, `xs[4]` gsd (one value); empty tensors mean None.
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.forward_kw(xs, &Map::new(), train)
    }

    /// Keywords `waves` (list of µm) and `gsd` (number), as `forward_features` takes them.
    fn forward_kw(
        &self,
        xs: &[Tensor],
        kwargs: &Map<String, Value>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let x = xs
            .first()
            .ok_or_else(|| PluginError::invalid_argument("Clay needs an input image"))?;
        if xs.len() > 5 {
            return Err(PluginError::invalid_argument(format!(
                "Clay takes at most 5 inputs (image, time, latlon, waves, gsd), got {}",
                xs.len()
            )));
        }
        let mut extras = Extras {
            time: non_empty(xs, 1),
            latlon: non_empty(xs, 2),
            waves: non_empty(xs, 3)
                .map(|w| w.f_to_kind(Kind::Float))
                .transpose()?,
            gsd: non_empty(xs, 4)
                .map(|g| g.f_double_value(&[0]))
                .transpose()?,
        };
        for (k, v) in kwargs {
            match (k.as_str(), v) {
                (_, Value::Null) => {}
                ("waves", Value::Array(a)) => {
                    let w: Option<Vec<f32>> = a.iter().map(|v| v.as_f64().map(|f| f as f32)).collect();
                    let w = w.ok_or_else(|| {
                        PluginError::invalid_argument(format!("forward keyword waves must be a list of numbers, got {v}"))
                    })?;
                    extras.waves = Some(Tensor::from_slice(&w));
                }
                ("gsd", v) => extras.gsd = Some(gsd_value(v)?),
                (other, _) => {
                    return Err(PluginError::invalid_argument(format!(
                        "unknown forward keyword `{other}` (Clay takes waves and gsd; time and latlon go in as inputs 1 and 2)"
                    )))
                }
            }
        }
        if xs.get(4).is_some_and(|g| g.numel() > 1) {
            return Err(PluginError::invalid_argument(
                "the gsd input must hold one value",
            ));
        }
        self.forward_features(x, extras, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![DIM; self.cfg.out_indices.len()]
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        // what TerraTorch's factory finds on the first submodule with a `patch_size` (the encoder's)
        m.insert("patch_size".into(), json!(PATCH_SIZE));
        m.insert("img_size".into(), json!(self.cfg.img_size));
        m.insert("num_frames".into(), json!(self.cfg.num_frames));
        m.insert("bands".into(), json!(self.cfg.bands));
        m.insert("waves".into(), json!(self.waves));
        m.insert("out_indices".into(), json!(self.cfg.out_indices));
        m
    }

    fn prepare_features(&self, xs: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        Some(self.prepare(xs))
    }
}

impl LoadPretrained for ClayEmbedder {
    /// `Embedder.transform_state_dict` then a strict load: the checkpoint's
    /// `model.encoder.*` keys become `clay_encoder.*` (everything else is dropped) and the
    /// model keeps its own VPT prompts.
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()> {
        let mut given: BTreeMap<String, Tensor> = weights
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("model.encoder.")
                    .map(|r| (format!("clay_encoder.{r}"), v))
            })
            .collect();
        for (k, v) in vs.variables() {
            if k.contains("vpt_prompt_embeddings") {
                given.insert(k, v.copy());
            }
        }
        pretrained::load_strict(vs, given, "Clay encoder")
    }
}

/// Builds `clay_v1_base` from the validated arguments.
fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let a = &ctx.args;
    let features_only: bool = a.get("features_only")?;
    a.ensure(
        features_only,
        "features_only",
        "must be true: with features_only=false TerraTorch's timm registry cannot wrap the Embedder (its \
         feature_info is a plain list)",
    )?;
    let known: Vec<&str> = ctx.args.map().keys().map(String::as_str).collect();
    for k in known {
        if !PARAMS.contains(&k) {
            tracing::warn!(
                "`{}` ignores argument `{k}` (TerraTorch's Embedder swallows every unknown keyword through **kwargs)",
                ctx.qualified()
            );
        }
    }
    let bands: Vec<Value> = match a.raw("bands") {
        None | Some(Value::Null) => DEFAULT_BANDS.iter().map(|b| json!(b)).collect(),
        Some(Value::Array(v)) => v.clone(),
        Some(other) => {
            return Err(PluginError::invalid_argument(format!(
                "`bands` must be a list, got {other}"
            )))
        }
    };
    let out_indices = match a.opt::<Vec<i64>>("out_indices")? {
        Some(v) => v,
        None => (0..DEPTH).collect(),
    };
    let cfg = Config {
        img_size: a.get("img_size")?,
        num_frames: a.get("num_frames")?,
        bands,
        out_indices,
        vpt: a.get("vpt")?,
        vpt_n_tokens: a.opt("vpt_n_tokens")?,
        vpt_dropout: a.get("vpt_dropout")?,
    };
    let ckpt_path: Option<String> = a.opt("ckpt_path")?;
    a.ensure(
        !(ckpt_path.is_some() && a.get::<bool>("pretrained")?),
        "ckpt_path",
        "and pretrained=true both load weights (upstream the pretrained weights would overwrite ckpt_path's); \
         give one",
    )?;
    let built = pretrained::build_model(ctx, |p| ClayEmbedder::new(p, &cfg))?;
    if let Some(file) = ckpt_path {
        load_clay_weights(&built, std::path::Path::new(&file))
            .map_err(|e| e.context(format_args!("`{}` ckpt_path `{file}`", ctx.qualified())))?;
    }
    Ok(built)
}

/// `Embedder.load_clay_weights(ckpt_path)`: every `model.encoder.*` tensor of the checkpoint
/// whose name and shape match a parameter of the encoder is copied into it; the others are
/// reported (as upstream prints them) and keep their values.
fn load_clay_weights(module: &ModuleBox, file: &std::path::Path) -> Result<()> {
    let sd: BTreeMap<String, Tensor> = terrahost_layers::checkpoint::read_state_dict(file)?
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("model.encoder.").map(|r| (r.to_owned(), v)))
        .collect();
    let params = module.named_parameters();
    tch::no_grad(|| -> Result<()> {
        for nt in params.iter() {
            let name = nt.name.as_str();
            let Some(inner) = name.strip_prefix("clay_encoder.") else {
                continue;
            };
            nt.tensor.with(|dst| -> Result<()> {
                match sd.get(inner) {
                    Some(src) if src.size() == dst.size() => {
                        dst.shallow_clone()
                            .f_copy_(&src.f_to_kind(dst.kind())?.f_to_device(dst.device())?)?;
                    }
                    _ => tracing::warn!(
                        "No matching parameter for {inner} with size {:?}",
                        dst.size()
                    ),
                }
                Ok(())
            })?;
        }
        Ok(())
    })
}

/// The declared parameters (anything else is swallowed, with a warning).
const PARAMS: [&str; 11] = [
    "features_only",
    "pretrained",
    "pretrained_cfg_overlay",
    "img_size",
    "num_frames",
    "bands",
    "out_indices",
    "vpt",
    "vpt_n_tokens",
    "vpt_dropout",
    "ckpt_path",
];

/// The `clay_v1_base` entry.
pub(crate) fn entry() -> Entry {
    let doc = "Clay v1 base (TerraTorch's clay_v1, registered into timm): patch 8, width 768, 12 layers; the patch \
               embedding's kernels are generated from the bands' wavelengths, and a 2-D sin-cos encoding scaled by \
               gsd plus time and latlon is added. Inputs: image [B, len(bands), img_size, img_size], then optional \
               time [B, 4], latlon [B, 4], waves [C] and gsd [1] (empty tensor = None; also keywords waves, gsd). \
               Returns the tokens [B, 1 + (img_size/8)^2, 768] of each out_indices layer (the last after the final \
               norm). Every keyword it does not know is accepted and ignored with a warning, as the Embedder swallows \
               **kwargs.";
    Entry::new("clay_v1_base", doc, build)
        .opt(
            "features_only",
            ParamType::BOOL,
            json!(true),
            "must be true (TerraTorch's timm registry passes it)",
        )
        .opt(
            "pretrained",
            ParamType::BOOL,
            json!(false),
            "load a Clay checkpoint (needs pretrained_cfg_overlay.file; no downloads)",
        )
        .opt(
            "pretrained_cfg_overlay",
            ParamType::DICT,
            Value::Null,
            "`file`: a local Clay checkpoint (its model.encoder.* keys are loaded, strictly)",
        )
        .opt(
            "img_size",
            ParamType::INT,
            json!(256),
            "the square image size the position encoding is made for",
        )
        .opt(
            "num_frames",
            ParamType::INT,
            json!(1),
            "frames per sample (only prepare_features_for_image_model uses it)",
        )
        .opt(
            "bands",
            ParamType::ANY,
            json!(DEFAULT_BANDS),
            "the input's bands; names in Clay's WAVELENGTHS give their wavelength, anything else 0.0",
        )
        .opt(
            "out_indices",
            ParamType::INT_LIST,
            Value::Null,
            "layers whose tokens are returned (Python indices, any order; default all 12)",
        )
        .opt(
            "vpt",
            ParamType::BOOL,
            json!(false),
            "visual prompt tuning: learned prompt tokens before every layer",
        )
        .opt(
            "vpt_n_tokens",
            ParamType::INT,
            Value::Null,
            "prompt tokens per layer (required with vpt)",
        )
        .opt(
            "vpt_dropout",
            ParamType::FLOAT,
            json!(0.0),
            "dropout on the prompt tokens (train mode only)",
        )
        .opt(
            "ckpt_path",
            ParamType::STR,
            Value::Null,
            "a Clay checkpoint loaded as Embedder.load_clay_weights does (matching model.encoder.* parameters copied, others kept), whatever pretrained says",
        )
        .ignores(
            "in_chans",
            "swallowed by the Embedder (timm sets it to 3 by default); the channel count comes from `bands`",
        )
        .ignores("num_classes", "swallowed by the Embedder (no classifier)")
        .ignores(
            "model_bands",
            "stored by _make_clay on the model and never used",
        )
        .ignores(
            "pretrained_bands",
            "stored by _make_clay on the model and never used",
        )
        .accepts_extra()
}
