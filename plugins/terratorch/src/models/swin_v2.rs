//! Mirrors torchvision's Swin Transformer V2 (`torchvision/models/swin_transformer.py`:
//! `SwinTransformer` with `SwinTransformerBlockV2`, `ShiftedWindowAttentionV2` and
//! `PatchMergingV2`) as TerraTorch 1.2.11 builds it for the Satlas weights in
//! `terratorch/models/backbones/torchgeo_swin_satlas.py`: `load_model` replaces
//! `features[0][0]` by `Conv2d(in_chans, embed_dim, 4, stride 4)`, `SwinEncoderWrapper`
//! returns the outputs of `features[i]` (channels last, `[B, H, W, C]`) for `i` in
//! `out_indices` (or the last for `-1`), and `load_swin_weights` loads a checkpoint with
//! `select_patch_embed_weights` on `features.0.0.weight`.
//!
//! V2 differs from V1 in the attention (cosine similarity scaled by a learned, clamped
//! `logit_scale`; a continuous position bias from a 2-layer MLP `cpb_mlp` over
//! log-spaced relative coordinates, `16 * sigmoid`; no key bias), in the block (norm after
//! attention and MLP) and in the patch merging (norm after the reduction).
use super::torchgeo_resnet::{
    checkpoint_file, drop_path, in_chans, keeps, load_checkpoint, model_bands, out_indices,
    pretrained_bands, warn_unused_indices, S2_MS_SATLAS, S2_RGB_SATLAS,
};
use serde_json::{json, Value};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};
use terrahost_layers::drop::dropout;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The arguments of torchvision's `SwinTransformer` (V2 block and merging) plus the
/// wrapper's `in_chans` and `out_indices`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Patch size of the embedding convolution.
    pub patch_size: i64,
    /// Width of the first stage.
    pub embed_dim: i64,
    /// Blocks per stage.
    pub depths: Vec<i64>,
    /// Attention heads per stage.
    pub num_heads: Vec<i64>,
    /// Attention window (square).
    pub window_size: i64,
    /// MLP hidden width over the block width.
    pub mlp_ratio: f64,
    /// Dropout after the attention projection and in the MLP (train mode only).
    pub dropout: f64,
    /// Dropout of the attention weights (train mode only).
    pub attention_dropout: f64,
    /// Stochastic depth, linear over all blocks (train mode only).
    pub stochastic_depth_prob: f64,
    /// Classifier outputs (`head`, in the state_dict only).
    pub num_classes: i64,
    /// Input channels of the patch embedding.
    pub in_chans: i64,
    /// The wrapper's `out_indices` over the 8 `features` (-1 = the last).
    pub out_indices: Vec<i64>,
}

impl Config {
    /// `swin_v2_t`.
    pub fn swin_v2_t() -> Self {
        Self {
            patch_size: 4,
            embed_dim: 96,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![3, 6, 12, 24],
            window_size: 8,
            mlp_ratio: 4.0,
            dropout: 0.0,
            attention_dropout: 0.0,
            stochastic_depth_prob: 0.2,
            num_classes: 1000,
            in_chans: 3,
            out_indices: vec![-1],
        }
    }
    /// `swin_v2_b`.
    pub fn swin_v2_b() -> Self {
        Self {
            embed_dim: 128,
            depths: vec![2, 2, 18, 2],
            num_heads: vec![4, 8, 16, 32],
            stochastic_depth_prob: 0.5,
            ..Self::swin_v2_t()
        }
    }

    /// Channels of the 8 `features`: embedding, stage 1, merging, stage 2, ...
    pub fn feature_channels(&self) -> Vec<i64> {
        (0..self.depths.len())
            .flat_map(|i| {
                let c = self.embed_dim << i;
                [c, c]
            })
            .collect()
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.mlp_ratio <= 0.0 {
            return bad(format!(
                "`mlp_ratio` must be positive, got {}",
                self.mlp_ratio
            ));
        }
        if self.num_classes < 1 {
            return bad(format!(
                "`num_classes` must be at least 1 (torchvision's head is always a Linear), got {}",
                self.num_classes
            ));
        }
        for (n, r) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&r) {
                return bad(format!("`{n}` must be in [0, 1), got {r}"));
            }
        }
        Ok(())
    }
}

/// `define_relative_position_index`: for each pair of tokens of a `w`x`w` window, the
/// row of the bias table of their offset.
pub fn relative_position_index(w: i64) -> Tensor {
    let n = w * w;
    let mut v = Vec::with_capacity((n * n) as usize);
    for a in 0..n {
        for b in 0..n {
            let (dh, dw) = (a / w - b / w + w - 1, a % w - b % w + w - 1);
            v.push(dh * (2 * w - 1) + dw);
        }
    }
    Tensor::from_slice(&v)
}

/// `define_relative_position_bias_table` of V2: the offsets in `[-(w-1), w-1]`,
/// normalised to `[-8, 8]` and log-spaced: `sign(x) * log2(|x| + 1) / 3`, as
/// `[1, 2w-1, 2w-1, 2]` (float32, in upstream's order of operations).
pub fn relative_coords_table(w: i64) -> Tensor {
    let r = Tensor::arange_start(-(w - 1), w, (Kind::Float, tch::Device::Cpu));
    let grid = Tensor::meshgrid_indexing(&[&r, &r], "ij");
    let t = Tensor::stack(&grid, 0)
        .permute([1, 2, 0])
        .contiguous()
        .unsqueeze(0);
    let t = t / (w - 1) as f64 * 8.0;
    t.sign() * (t.abs() + 1.0).log2() / 3.0
}

fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    )
}

fn layer_norm(p: nn::Path, c: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![c], Default::default())
}

/// `ShiftedWindowAttentionV2`.
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    logit_scale: Tensor,
    cpb0: nn::Linear,
    cpb2: nn::Linear,
    coords_table: Tensor,
    index: Tensor,
    heads: i64,
    window: i64,
    shift: i64,
    attention_dropout: f64,
    dropout: f64,
}

impl Attention {
    fn new(p: nn::Path, dim: i64, heads: i64, cfg: &Config, shift: i64) -> Self {
        let w = cfg.window_size;
        let qkv = linear(&p / "qkv", dim, dim * 3, true);
        let proj = linear(&p / "proj", dim, dim, true);
        let coords_table = p.add("relative_coords_table", relative_coords_table(w), false);
        let index = p.add("relative_position_index", relative_position_index(w), false);
        let logit_scale = p.var("logit_scale", &[heads, 1, 1], nn::Init::Const(10f64.ln()));
        let cpb0 = linear(&p / "cpb_mlp" / 0, 2, 512, true);
        let cpb2 = linear(&p / "cpb_mlp" / 2, 512, heads, false);
        Self {
            qkv,
            proj,
            logit_scale,
            cpb0,
            cpb2,
            coords_table,
            index,
            heads,
            window: w,
            shift,
            attention_dropout: cfg.attention_dropout,
            dropout: cfg.dropout,
        }
    }

    /// `get_relative_position_bias`: `[1, heads, N, N]`.
    fn position_bias(&self) -> Result<Tensor> {
        let n = self.window * self.window;
        let table = self
            .cpb2
            .forward(&self.cpb0.forward(&self.coords_table).f_relu()?)
            .f_view([-1, self.heads])?;
        let bias = table
            .f_index_select(0, &self.index.to_kind(Kind::Int64))?
            .f_view([n, n, -1])?
            .f_permute([2, 0, 1])?
            .contiguous()
            .unsqueeze(0);
        Ok(bias.f_sigmoid()? * 16.0)
    }

    /// `shifted_window_attention` with `logit_scale`: `[B, H, W, C]` -> same.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x.size4()?;
        let ws = self.window;
        let pad_r = (ws - w % ws) % ws;
        let pad_b = (ws - h % ws) % ws;
        let x = x.f_constant_pad_nd([0, 0, 0, pad_r, 0, pad_b])?;
        let (ph, pw) = (h + pad_b, w + pad_r);
        let sh = if ws >= ph { 0 } else { self.shift };
        let sw = if ws >= pw { 0 } else { self.shift };
        let x = if sh + sw > 0 {
            x.f_roll([-sh, -sw], [1, 2])?
        } else {
            x
        };
        let nw = (ph / ws) * (pw / ws);
        let n = ws * ws;
        let x = x
            .f_view([b, ph / ws, ws, pw / ws, ws, c])?
            .f_permute([0, 1, 3, 2, 4, 5])?
            .f_reshape([b * nw, n, c])?;
        let qkv_bias = self.qkv.bs.as_ref().map(|bias| {
            let bias = bias.copy();
            let len = bias.numel() as i64 / 3;
            let _ = bias.narrow(0, len, len).fill_(0.0);
            bias
        });
        let qkv = x
            .f_linear(&self.qkv.ws, qkv_bias.as_ref())?
            .f_reshape([b * nw, n, 3, self.heads, c / self.heads])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let normalize = |t: &Tensor| -> Result<Tensor> {
            let norm = t
                .f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)?
                .f_clamp_min(1e-12)?;
            Ok(t.f_div(&norm)?)
        };
        let attn = normalize(&q)?.f_matmul(&normalize(&k)?.f_transpose(-2, -1)?)?;
        let scale = self.logit_scale.f_clamp_max(100f64.ln())?.f_exp()?;
        let mut attn = attn.f_mul(&scale)?.f_add(&self.position_bias()?)?;
        if sh + sw > 0 {
            let mask = shift_mask(ph, pw, ws, sh, sw, x.device())?;
            attn = attn
                .f_view([b, nw, self.heads, n, n])?
                .f_add(&mask.unsqueeze(1).unsqueeze(0))?
                .f_view([-1, self.heads, n, n])?;
        }
        let attn = dropout(
            attn.f_softmax(-1, Kind::Float)?,
            self.attention_dropout,
            train,
        )?;
        let y = attn
            .f_matmul(&v)?
            .f_transpose(1, 2)?
            .f_reshape([b * nw, n, c])?;
        let y = dropout(self.proj.forward(&y), self.dropout, train)?;
        let y = y
            .f_view([b, ph / ws, pw / ws, ws, ws, c])?
            .f_permute([0, 1, 3, 2, 4, 5])?
            .f_reshape([b, ph, pw, c])?;
        let y = if sh + sw > 0 {
            y.f_roll([sh, sw], [1, 2])?
        } else {
            y
        };
        Ok(y.f_slice(1, 0, h, 1)?.f_slice(2, 0, w, 1)?.contiguous())
    }
}

/// The attention mask of the shifted windows: `[num_windows, N, N]`, 0 within a region
/// and -100 across regions.
fn shift_mask(ph: i64, pw: i64, ws: i64, sh: i64, sw: i64, device: tch::Device) -> Result<Tensor> {
    // The region of each padded row / column: [0, -ws), [-ws, -shift), [-shift, end);
    // with no shift along a dimension upstream's last slice `[-0:]` covers it all.
    let region = |len: i64, shift: i64| -> Vec<i64> {
        (0..len)
            .map(|i| {
                if shift == 0 {
                    2
                } else if i < len - ws {
                    0
                } else if i < len - shift {
                    1
                } else {
                    2
                }
            })
            .collect()
    };
    let (rh, rw) = (region(ph, sh), region(pw, sw));
    let mut img = Vec::with_capacity((ph * pw) as usize);
    for a in &rh {
        for c in &rw {
            img.push((a * 3 + c) as f32);
        }
    }
    let m = Tensor::from_slice(&img)
        .f_view([ph / ws, ws, pw / ws, ws])?
        .f_permute([0, 2, 1, 3])?
        .f_reshape([(ph / ws) * (pw / ws), ws * ws])?;
    let diff = m.unsqueeze(1).f_sub(&m.unsqueeze(2))?;
    Ok(diff
        .ne(0.0)
        .to_kind(Kind::Float)
        .f_mul_scalar(-100.0)?
        .to_device(device))
}

/// `SwinTransformerBlockV2`: post-norm residual attention and MLP.
struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    drop_path: f64,
    dropout: f64,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm1.forward(&self.attn.forward(x, train)?);
        let x = x.f_add(&drop_path(y, self.drop_path, train)?)?;
        let h = dropout(self.fc1.forward(&x).f_gelu("none")?, self.dropout, train)?;
        let h = dropout(self.fc2.forward(&h), self.dropout, train)?;
        let y = self.norm2.forward(&h);
        Ok(x.f_add(&drop_path(y, self.drop_path, train)?)?)
    }
}

/// One entry of `features`.
enum Feature {
    /// `features.0`: Conv2d, Permute to channels last, LayerNorm.
    Embed(nn::Conv2D, nn::LayerNorm),
    /// A stage of blocks.
    Stage(Vec<Block>),
    /// `PatchMergingV2`: 2x2 neighbourhood concatenated, reduced, then normalised.
    Merge(nn::Linear, nn::LayerNorm),
}

impl Feature {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Feature::Embed(conv, norm) => {
                Ok(norm.forward(&conv.forward(x).f_permute([0, 2, 3, 1])?))
            }
            Feature::Stage(blocks) => {
                let mut y = x.shallow_clone();
                for b in blocks {
                    y = b.forward(&y, train)?;
                }
                Ok(y)
            }
            Feature::Merge(reduction, norm) => {
                let (_, h, w, _) = x.size4()?;
                let x = x.f_constant_pad_nd([0, 0, 0, w % 2, 0, h % 2])?;
                let pick = |i: i64, j: i64| -> Result<Tensor> {
                    let (hh, ww) = (x.size()[1], x.size()[2]);
                    Ok(x.f_slice(1, i, hh, 2)?.f_slice(2, j, ww, 2)?)
                };
                let cat = Tensor::f_cat(&[pick(0, 0)?, pick(1, 0)?, pick(0, 1)?, pick(1, 1)?], -1)?;
                Ok(norm.forward(&reduction.forward(&cat)))
            }
        }
    }
}

/// `SwinEncoderWrapper` around torchvision's Swin Transformer V2.
pub struct SwinV2 {
    cfg: Config,
    features: Vec<Feature>,
}

impl SwinV2 {
    /// Builds the network under `p` (the wrapper's `swin_model`) with torchvision's keys.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let fp = &p / "features";
        let e = cfg.embed_dim;
        let conv = nn::conv2d(
            &fp / 0 / 0,
            cfg.in_chans,
            e,
            cfg.patch_size,
            nn::ConvConfig {
                stride: cfg.patch_size,
                ..Default::default()
            },
        );
        let mut features = vec![Feature::Embed(conv, layer_norm(&fp / 0 / 2, e))];
        let total: i64 = cfg.depths.iter().sum();
        let mut idx = 0i64;
        let stages = cfg.depths.len();
        for (s, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            let dim = e << s;
            let sp = &fp / features.len();
            let mut blocks = Vec::new();
            for j in 0..depth {
                let bp = &sp / j;
                let shift = if j % 2 == 0 { 0 } else { cfg.window_size / 2 };
                let hidden = (dim as f64 * cfg.mlp_ratio) as i64;
                let sd = if total > 1 {
                    cfg.stochastic_depth_prob * idx as f64 / (total - 1) as f64
                } else {
                    0.0
                };
                blocks.push(Block {
                    norm1: layer_norm(&bp / "norm1", dim),
                    attn: Attention::new(&bp / "attn", dim, heads, cfg, shift),
                    norm2: layer_norm(&bp / "norm2", dim),
                    fc1: linear(&bp / "mlp" / 0, dim, hidden, true),
                    fc2: linear(&bp / "mlp" / 3, hidden, dim, true),
                    drop_path: sd,
                    dropout: cfg.dropout,
                });
                idx += 1;
            }
            features.push(Feature::Stage(blocks));
            if s + 1 < stages {
                let mp = &fp / features.len();
                features.push(Feature::Merge(
                    linear(&mp / "reduction", 4 * dim, 2 * dim, false),
                    layer_norm(&mp / "norm", 2 * dim),
                ));
            }
        }
        let num_features = e << (stages - 1);
        // The classifier part: in the state_dict only (the wrapper never runs it).
        let _ = layer_norm(&p / "norm", num_features);
        let _ = linear(&p / "head", num_features, cfg.num_classes, true);
        Ok(Self {
            cfg: cfg.clone(),
            features,
        })
    }
}

impl Model for SwinV2 {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = match xs {
            [x] if x.dim() == 4 && x.size()[1] == self.cfg.in_chans => x,
            _ => {
                return Err(PluginError::invalid_argument(format!(
                    "the Swin V2 backbone takes one image [B, {}, H, W] (in_chans = len(model_bands) or `in_chans`), \
                     got {:?}",
                    self.cfg.in_chans,
                    xs.iter().map(Tensor::size).collect::<Vec<_>>()
                )))
            }
        };
        let n = self.features.len();
        let mut y = x.shallow_clone();
        let mut out = Vec::new();
        for (i, f) in self.features.iter().enumerate() {
            y = f.forward(&y, train)?;
            if keeps(&self.cfg.out_indices, i, n) {
                out.push(y.shallow_clone());
            }
        }
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        let ch = self.cfg.feature_channels();
        let n = ch.len();
        ch.into_iter()
            .enumerate()
            .filter(|(i, _)| keeps(&self.cfg.out_indices, *i, n))
            .map(|(_, c)| c)
            .collect()
    }
}

const LANDSAT: &[&str] = &[
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
];
const NAIP: &[&str] = &["R", "G", "B"];
const S1: &[&str] = &["VH", "VV"];

/// (name, architecture, default torchgeo weights, their bands).
const SPECS: &[(&str, &str, &str, &[&str])] = &[
    (
        "satlas_swin_t_sentinel2_mi_ms",
        "t",
        "Swin_V2_T_Weights.SENTINEL2_MI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    (
        "satlas_swin_t_sentinel2_mi_rgb",
        "t",
        "Swin_V2_T_Weights.SENTINEL2_MI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    (
        "satlas_swin_t_sentinel2_si_ms",
        "t",
        "Swin_V2_T_Weights.SENTINEL2_SI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    (
        "satlas_swin_t_sentinel2_si_rgb",
        "t",
        "Swin_V2_T_Weights.SENTINEL2_SI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    (
        "satlas_swin_b_sentinel2_mi_ms",
        "b",
        "Swin_V2_B_Weights.SENTINEL2_MI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    (
        "satlas_swin_b_sentinel2_mi_rgb",
        "b",
        "Swin_V2_B_Weights.SENTINEL2_MI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    (
        "satlas_swin_b_sentinel2_si_ms",
        "b",
        "Swin_V2_B_Weights.SENTINEL2_SI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    (
        "satlas_swin_b_sentinel2_si_rgb",
        "b",
        "Swin_V2_B_Weights.SENTINEL2_SI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    (
        "satlas_swin_b_naip_mi_rgb",
        "b",
        "Swin_V2_B_Weights.NAIP_RGB_MI_SATLAS",
        NAIP,
    ),
    (
        "satlas_swin_b_naip_si_rgb",
        "b",
        "Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS",
        NAIP,
    ),
    (
        "satlas_swin_b_landsat_mi_ms",
        "b",
        "Swin_V2_B_Weights.LANDSAT_MI_SATLAS",
        LANDSAT,
    ),
    // TerraTorch 1.2.11 gives this name the single-image Landsat weights.
    (
        "satlas_swin_b_landsat_mi_rgb",
        "b",
        "Swin_V2_B_Weights.LANDSAT_SI_SATLAS",
        LANDSAT,
    ),
    (
        "satlas_swin_b_sentinel1_mi",
        "b",
        "Swin_V2_B_Weights.SENTINEL1_MI_SATLAS",
        S1,
    ),
    (
        "satlas_swin_b_sentinel1_si",
        "b",
        "Swin_V2_B_Weights.SENTINEL1_SI_SATLAS",
        S1,
    ),
];

fn base(arch: &str) -> Config {
    if arch == "t" {
        Config::swin_v2_t()
    } else {
        Config::swin_v2_b()
    }
}

fn build(
    ctx: &BuildCtx<'_, '_>,
    arch: &str,
    bands_raw: &'static [&'static str],
) -> Result<ModuleBox> {
    let a = &ctx.args;
    let bands = model_bands(ctx)?;
    let cfg = Config {
        in_chans: in_chans(ctx, &bands)?,
        mlp_ratio: a.get("mlp_ratio")?,
        dropout: a.get("dropout")?,
        attention_dropout: a.get("attention_dropout")?,
        num_classes: a.get("num_classes")?,
        out_indices: out_indices(ctx)?,
        ..base(arch)
    };
    warn_unused_indices(&ctx.qualified(), &cfg.out_indices, 8);
    let file = checkpoint_file(ctx)?;
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let model = SwinV2::new(vs.root() / "swin_model", &cfg)?;
    if let Some(file) = file {
        let pretrained = pretrained_bands(bands_raw).map_err(|b| {
            PluginError::invalid_argument(format!("band {b:?} has no TerraTorch name"))
        })?;
        load_checkpoint(
            &mut vs,
            &file,
            "swin_model.",
            "features.0.0.weight",
            &["head.weight", "head.bias"],
            &pretrained,
            &bands,
        )?;
    }
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

fn entry(
    name: &'static str,
    arch: &'static str,
    weights: &str,
    bands: &'static [&'static str],
) -> Entry {
    let b = base(arch);
    let names = pretrained_bands(bands).unwrap_or_default().join(", ");
    let doc = format!(
        "TerraTorch's Satlas backbone SwinEncoderWrapper(torchvision swin_v2_{arch}: embed_dim {}, depths {:?}, \
         heads {:?}, window 8), default weights {weights} with bands {} ({names}); in_chans = len(model_bands). \
         Returns the outputs of features[i] (channels last, [B, H, W, C]; {:?} channels) for i in out_indices. \
         Keys swin_model.* with torchvision's norm and head.",
        b.embed_dim,
        b.depths,
        b.num_heads,
        bands.join(", "),
        b.feature_channels()
    );
    Entry::new(name, &doc, move |ctx| build(ctx, arch, bands))
        .req("model_bands", ParamType::ANY, "the input's bands (a list); in_chans = len(model_bands), and with pretrained=true the patch embedding's columns are picked by band name")
        .opt("pretrained", ParamType::BOOL, json!(false), "load ckpt_data (terrahost never downloads torchgeo's weights)")
        .opt("weights", ParamType::ANY, Value::Null, "torchgeo weights enum; only read with pretrained=true, where terrahost refuses it (no downloads)")
        .opt("ckpt_data", ParamType::STR, Value::Null, "local checkpoint of the bare torchvision Swin V2 (.pt/.pth/.safetensors), loaded when pretrained=true")
        .opt("out_indices", ParamType::INT_LIST, Value::Null, "features to return: 0 = embedding, 1/3/5/7 = stages, 2/4/6 = patch merging, -1 = the last (default [-1]); others are ignored, as upstream")
        .opt("in_chans", ParamType::INT, Value::Null, "input channels of the patch embedding (default len(model_bands))")
        .opt("mlp_ratio", ParamType::FLOAT, json!(4.0), "torchvision: MLP hidden width over the block width")
        .opt("dropout", ParamType::FLOAT, json!(0.0), "torchvision: dropout after the attention projection and in the MLP (train mode only)")
        .opt("attention_dropout", ParamType::FLOAT, json!(0.0), "torchvision: dropout of the attention weights (train mode only)")
        .opt("num_classes", ParamType::INT, json!(1000), "torchvision: classifier outputs (head; unused by the features)")
}

/// The backbone entries of this family.
pub fn entries() -> Vec<Entry> {
    SPECS
        .iter()
        .map(|&(n, a, w, b)| entry(n, a, w, b))
        .collect()
}
