//! Mirrors `terratorch/models/backbones/mmearth_convnextv2.py` (TerraTorch 1.2.11, from
//! MMEarth-train's `models/convnextv2.py`): the `convnextv2_atto/femto/nano/tiny/base/large/huge`
//! and `convnext_pico` backbones, each `ConvNeXtV2(depths=..., dims=..., **kwargs)`.
//!
//! TerraTorch ships only MMEarth's dense network (the sparse MinkowskiEngine encoder of its
//! FCMAE pretraining is not part of it), and this file keeps that network's semantics as
//! TerraTorch runs it, including what differs from ConvNeXt V2 papers and timm:
//! * every `LayerNorm` is timm's channels-last `LayerNorm` (MMEarth's
//!   `data_format="channels_first"` is commented out upstream), so the stem's and the
//!   downsampling layers' norms, applied to `[B, C, H, W]` maps, normalise the last (width)
//!   dimension and need `W == dims[i]`; otherwise the forward fails, as in TerraTorch (with
//!   the presets' widths it fails for every input, at the latest at the second downsampling);
//! * a block's `grn` is timm's `GlobalResponseNormMlp(4 * dim)` (imported as `GRN`): a
//!   `fc1` / GELU / `GlobalResponseNorm` / `fc2` MLP of width `4 * dim`, not a bare GRN;
//! * `forward(x)` returns the classifier's logits `head(norm(mean_hw(x)))`, and
//!   `forward(x, mask)` (the pretraining call) the last stage's map of `x * (1 - mask)`.
//!
//! The registered functions take no `pretrained`, `model_bands` or `out_indices` (ConvNeXtV2
//! raises TypeError on them): terrahost refuses them by name, as any unknown argument.
use serde_json::{json, Map, Value};
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_layers::conv::{Conv2d, ConvSpec};
use terrahost_layers::drop::{drop_path, drop_path_rate};
use terrahost_layers::linear::{trunc_normal, Linear};
use terrahost_layers::norm::LayerNorm;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// `ConvNeXtV2`'s constructor arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Sets the stem's kernel and stride: `patch_size // 8`.
    pub patch_size: i64,
    /// Only read by the masked forward (the mask's upsampling factor).
    pub img_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// Classifier outputs (`head`; 0 makes an empty head, as `nn.Linear(d, 0)`).
    pub num_classes: i64,
    /// Blocks per stage (fixed by the preset).
    pub depths: Vec<i64>,
    /// Widths per stage (fixed by the preset).
    pub dims: Vec<i64>,
    /// Stochastic depth, linear over all blocks (train mode only).
    pub drop_path_rate: f64,
    /// Scales the classifier's initial weights (initialisation only).
    pub head_init_scale: f64,
    /// `stem_orig` (one patchify convolution) instead of `initial_conv` + `stem`.
    pub use_orig_stem: bool,
}

impl Config {
    fn preset(depths: [i64; 4], dims: [i64; 4]) -> Self {
        Self {
            patch_size: 32,
            img_size: 128,
            in_chans: 3,
            num_classes: 1000,
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            drop_path_rate: 0.0,
            head_init_scale: 1.0,
            use_orig_stem: false,
        }
    }

    /// The preset of a registered name.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "convnextv2_atto" => Self::preset([2, 2, 6, 2], [40, 80, 160, 320]),
            "convnextv2_femto" => Self::preset([2, 2, 6, 2], [48, 96, 192, 384]),
            "convnext_pico" => Self::preset([2, 2, 6, 2], [64, 128, 256, 512]),
            "convnextv2_nano" => Self::preset([2, 2, 8, 2], [80, 160, 320, 640]),
            "convnextv2_tiny" => Self::preset([3, 3, 9, 3], [96, 192, 384, 768]),
            "convnextv2_base" => Self::preset([3, 3, 27, 3], [128, 256, 512, 1024]),
            "convnextv2_large" => Self::preset([3, 3, 27, 3], [192, 384, 768, 1536]),
            "convnextv2_huge" => Self::preset([3, 3, 27, 3], [352, 704, 1408, 2816]),
            _ => return None,
        })
    }

    /// The stem's kernel and stride: `patch_size // 2 ** (num_stage - 1)`.
    pub fn stem_kernel(&self) -> i64 {
        self.patch_size / (1 << (self.depths.len() - 1))
    }

    /// The number of parameters the network has (what `sum(p.numel())` gives upstream).
    pub fn n_params(&self) -> i64 {
        let (c, d0) = (self.in_chans, self.dims[0]);
        let k = self.stem_kernel();
        let stem = if self.use_orig_stem {
            c * d0 * k * k + d0 + 2 * d0
        } else {
            (c * d0 * 9 + d0) + 2 * d0 + (d0 * k * k + d0) + 2 * d0
        };
        let down: i64 = (0..3)
            .map(|i| 2 * self.dims[i] + self.dims[i] * self.dims[i + 1] * 4 + self.dims[i + 1])
            .sum();
        let block = |d: i64| {
            let h = 4 * d;
            (d * 49 + d) + 2 * d + (d * h + h) + 2 * (h * h + h) + 2 * h + (h * d + d)
        };
        let stages: i64 = self
            .depths
            .iter()
            .zip(&self.dims)
            .map(|(&n, &d)| n * block(d))
            .sum();
        let last = *self.dims.last().unwrap_or(&0);
        stem + down + stages + 2 * last + last * self.num_classes + self.num_classes
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.in_chans < 1 {
            return bad(format!(
                "`in_chans` must be at least 1, got {}",
                self.in_chans
            ));
        }
        if self.stem_kernel() < 1 {
            return bad(format!(
                "`patch_size` {} gives a stem kernel of patch_size // 8 = 0 (PyTorch refuses it); use at least 8",
                self.patch_size
            ));
        }
        if self.num_classes < 0 {
            return bad(format!(
                "`num_classes` must be >= 0, got {}",
                self.num_classes
            ));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "`drop_path_rate` must be in [0, 1), got {}",
                self.drop_path_rate
            ));
        }
        Ok(())
    }
}

/// `nn.Conv2d` initialised as `_init_weights`: truncated normal (std 0.02) weight, zero bias.
fn conv(p: nn::Path, s: ConvSpec) -> Conv2d {
    Conv2d::new(p, s, trunc_normal(), Some(Init::Const(0.0)))
}

/// timm's `GlobalResponseNormMlp(dim)` (channels last): `fc1`, GELU, GRN, `fc2`.
#[derive(Debug)]
struct GrnMlp {
    fc1: Linear,
    weight: Tensor,
    bias: Tensor,
    fc2: Linear,
}

impl GrnMlp {
    fn new(p: nn::Path, dim: i64) -> Self {
        let g = &p / "grn";
        Self {
            fc1: Linear::timm(&p / "fc1", dim, dim, true),
            weight: g.var("weight", &[dim], Init::Const(0.0)),
            bias: g.var("bias", &[dim], Init::Const(0.0)),
            fc2: Linear::timm(&p / "fc2", dim, dim, true),
        }
    }

    /// `[B, H, W, C] -> [B, H, W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.fc1.forward(x)?.f_gelu("none")?;
        // GlobalResponseNorm: L2 norm over H, W per channel, over its mean across channels
        let g = x.f_norm_scalaropt_dim(2, [1, 2], true)?;
        let n = g.f_div(&(g.f_mean_dim(Some([-1i64].as_slice()), true, None)? + 1e-6))?;
        let y = &x + (&self.bias + &self.weight * (&x * n));
        self.fc2.forward(&y)
    }
}

/// `Block`: depthwise 7x7, LayerNorm, `pwconv1`, GELU, the GRN MLP, `pwconv2`, residual.
#[derive(Debug)]
struct Block {
    dwconv: Conv2d,
    norm: LayerNorm,
    pwconv1: Linear,
    grn: GrnMlp,
    pwconv2: Linear,
    drop_path: f64,
}

impl Block {
    fn new(p: nn::Path, dim: i64, drop_path: f64) -> Self {
        Self {
            dwconv: conv(
                &p / "dwconv",
                ConvSpec::new(dim, dim, 7).padding(3).groups(dim),
            ),
            norm: LayerNorm::new(&p / "norm", dim, 1e-6),
            pwconv1: Linear::timm(&p / "pwconv1", dim, 4 * dim, true),
            grn: GrnMlp::new(&p / "grn", 4 * dim),
            pwconv2: Linear::timm(&p / "pwconv2", 4 * dim, dim, true),
            drop_path,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // [B, C, H, W] -> [B, H, W, C]
        let y = self.dwconv.forward(x)?.f_permute([0, 2, 3, 1])?;
        let y = self
            .pwconv1
            .forward(&self.norm.forward(&y)?)?
            .f_gelu("none")?;
        let y = self.pwconv2.forward(&self.grn.forward(&y)?)?;
        // [B, H, W, C] -> [B, C, H, W]
        let y = y.f_permute([0, 3, 1, 2])?;
        Ok(x + drop_path(y, self.drop_path, train)?)
    }
}

/// The stem: `stem_orig` or `initial_conv` (3x3 conv, LayerNorm, GELU) + `stem`
/// (depthwise patchify conv, LayerNorm). Its LayerNorms act on the last (width) dimension.
#[derive(Debug)]
enum Stem {
    Orig(Conv2d, LayerNorm),
    Initial {
        conv: Conv2d,
        norm: LayerNorm,
        dw: Conv2d,
        dw_norm: LayerNorm,
    },
}

/// MMEarth's dense `ConvNeXtV2`, as TerraTorch registers it.
#[derive(Debug)]
pub struct ConvNeXtV2 {
    cfg: Config,
    stem: Stem,
    downsample: Vec<(LayerNorm, Conv2d)>,
    stages: Vec<Vec<Block>>,
    norm: LayerNorm,
    head: Linear,
}

/// Says why a forward failed where TerraTorch's fails the same way.
fn explain(e: PluginError) -> PluginError {
    if e.message().contains("normalized_shape") {
        PluginError::forward_failed(format!(
            "{}; TerraTorch's MMEarth ConvNeXtV2 applies channels-last LayerNorms to [B, C, H, W] maps in its stem \
             and downsampling layers, so they normalise the width, which must equal the stage's channels (the same \
             forward fails in TerraTorch 1.2.11)",
            e.message()
        ))
    } else {
        e
    }
}

impl ConvNeXtV2 {
    /// Builds the network under `p` with TerraTorch's keys.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let (dims, d0, k) = (&cfg.dims, cfg.dims[0], cfg.stem_kernel());
        let stem = if cfg.use_orig_stem {
            let s = &p / "stem_orig";
            Stem::Orig(
                conv(&s / 0, ConvSpec::new(cfg.in_chans, d0, k).stride(k)),
                LayerNorm::new(&s / 1, d0, 1e-6),
            )
        } else {
            let (i, s) = (&p / "initial_conv", &p / "stem");
            Stem::Initial {
                conv: conv(&i / 0, ConvSpec::new(cfg.in_chans, d0, 3)),
                norm: LayerNorm::new(&i / 1, d0, 1e-6),
                dw: conv(
                    &s / 0,
                    ConvSpec::new(d0, d0, k).stride(k).padding(k / 2).groups(d0),
                ),
                dw_norm: LayerNorm::new(&s / 1, d0, 1e-6),
            }
        };
        let downsample = (0..3)
            .map(|i| {
                let q = &p / "downsample_layers" / i;
                (
                    LayerNorm::new(&q / 0, dims[i], 1e-6),
                    conv(&q / 1, ConvSpec::new(dims[i], dims[i + 1], 2).stride(2)),
                )
            })
            .collect();
        let total: i64 = cfg.depths.iter().sum();
        let mut cur = 0;
        let stages = cfg
            .depths
            .iter()
            .zip(dims)
            .enumerate()
            .map(|(i, (&n, &d))| {
                let stage: Vec<Block> = (0..n)
                    .map(|j| {
                        let rate = drop_path_rate(cfg.drop_path_rate, cur + j, total);
                        Block::new(&p / "stages" / i / j, d, rate)
                    })
                    .collect();
                cur += n;
                stage
            })
            .collect();
        let last = *dims.last().expect("4 stages");
        let norm = LayerNorm::new(&p / "norm", last, 1e-6);
        let s = cfg.head_init_scale;
        let head = Linear::with_inits(
            &p / "head",
            last,
            cfg.num_classes,
            true,
            Init::Randn {
                mean: 0.0,
                stdev: 0.02 * s,
            },
            Init::Const(0.0),
        );
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            downsample,
            stages,
            norm,
            head,
        })
    }

    /// The stem (`stem_orig`, or `initial_conv` then `stem`).
    pub fn stem(&self, x: &Tensor) -> Result<Tensor> {
        match &self.stem {
            Stem::Orig(c, n) => n.forward(&c.forward(x)?),
            Stem::Initial {
                conv,
                norm,
                dw,
                dw_norm,
            } => {
                let y = norm.forward(&conv.forward(x)?)?.f_gelu("none")?;
                dw_norm.forward(&dw.forward(&y)?)
            }
        }
    }

    /// `initial_conv` alone (conv, last-dim LayerNorm, GELU); `None` with `use_orig_stem`.
    pub fn initial_conv(&self, x: &Tensor) -> Option<Result<Tensor>> {
        match &self.stem {
            Stem::Orig(..) => None,
            Stem::Initial { conv, norm, .. } => Some(
                conv.forward(x)
                    .and_then(|y| norm.forward(&y))
                    .and_then(|y| Ok(y.f_gelu("none")?)),
            ),
        }
    }

    /// `downsample_layers[i]`: last-dim LayerNorm, then a 2x2 stride-2 convolution.
    pub fn downsample(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let (n, c) = &self.downsample[i];
        c.forward(&n.forward(x)?)
    }

    /// `stages[i]`.
    pub fn stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for b in &self.stages[i] {
            y = b.forward(&y, train)?;
        }
        Ok(y)
    }

    /// `head(norm(x))` on pooled features `[B, dims[-1]]`.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.norm.forward(x)?)
    }

    /// The stem and the four stages: `[B, dims[-1], h, w]`.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.stage(0, &self.stem(x)?, train)?;
        for i in 0..3 {
            y = self.stage(i + 1, &self.downsample(i, &y)?, train)?;
        }
        Ok(y)
    }

    /// `upsample_mask` + `x * (1 - mask)`: the mask `[B, L]` (L a square) over patches of
    /// `img_size // sqrt(L)` pixels.
    fn masked(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let size = mask.size();
        if size.len() != 2 {
            return Err(PluginError::forward_failed(format!(
                "the mask must be [B, num_patches], got {size:?} (upstream asserts len(mask.shape) == 2)"
            )));
        }
        let p = (size[1] as f64).sqrt() as i64;
        let scale = (self.cfg.img_size as f64 / (size[1] as f64).sqrt()).floor() as i64;
        let m = mask
            .f_reshape([-1, p, p])?
            .f_repeat_interleave_self_int(scale, 1, None)?
            .f_repeat_interleave_self_int(scale, 2, None)?
            .f_unsqueeze(1)?
            .f_to_kind(x.kind())?;
        Ok(x.f_mul(&(1.0 - m))?)
    }
}

impl Model for ConvNeXtV2 {
    /// `[x]`: the logits `[B, num_classes]`; `[x, mask]`: the last stage's map.
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let out = match xs {
            [x] => self.features(x, train).and_then(|y| {
                self.head(&y.f_mean_dim(Some([-2i64, -1].as_slice()), false, None)?)
            }),
            [x, mask] => self.masked(x, mask).and_then(|x| self.features(&x, train)),
            _ => {
                return Err(PluginError::invalid_argument(format!(
                    "ConvNeXtV2 takes the image, or the image and a patch mask, got {} inputs",
                    xs.len()
                )))
            }
        };
        Ok(vec![out.map_err(explain)?])
    }

    /// What `forward(x)` returns: the logits.
    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.num_classes]
    }

    fn meta(&self) -> Map<String, Value> {
        let c = &self.cfg;
        let mut m = Map::new();
        m.insert("dims".into(), json!(c.dims));
        m.insert("depths".into(), json!(c.depths));
        m.insert("patch_size".into(), json!(c.patch_size));
        m.insert("img_size".into(), json!(c.img_size));
        m
    }
}

/// The registered names, in TerraTorch's order.
pub const NAMES: [&str; 8] = [
    "convnextv2_atto",
    "convnextv2_femto",
    "convnext_pico",
    "convnextv2_nano",
    "convnextv2_tiny",
    "convnextv2_base",
    "convnextv2_large",
    "convnextv2_huge",
];

fn build(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<ModuleBox> {
    let a = &ctx.args;
    let base = Config::named(name).expect("an entry is registered only for a preset");
    let cfg = Config {
        patch_size: a.get("patch_size")?,
        img_size: a.get("img_size")?,
        in_chans: a.get("in_chans")?,
        num_classes: a.get("num_classes")?,
        drop_path_rate: a.get("drop_path_rate")?,
        head_init_scale: a.get("head_init_scale")?,
        use_orig_stem: a.get("use_orig_stem")?,
        ..base
    };
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = ConvNeXtV2::new(vs.root(), &cfg)
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

fn entry(name: &'static str) -> Entry {
    let b = Config::named(name).expect("a preset");
    let doc = format!(
        "TerraTorch's MMEarth ConvNeXtV2 (dense; depths {:?}, dims {:?}): forward(x) returns the classifier's logits, \
         forward(x, mask) the last stage's map. As in TerraTorch, the stem and downsampling LayerNorms normalise the \
         width of [B, C, H, W] maps, so the forward fails unless the width equals each stage's channels, and each \
         block's `grn` is timm's GlobalResponseNormMlp. Takes no pretrained, model_bands or out_indices (upstream \
         raises TypeError).",
        b.depths, b.dims
    );
    Entry::new(name, &doc, move |ctx| build(ctx, name))
        .opt(
            "patch_size",
            ParamType::INT,
            json!(b.patch_size),
            "the stem's kernel and stride are patch_size // 8",
        )
        .opt(
            "img_size",
            ParamType::INT,
            json!(b.img_size),
            "only read by forward(x, mask): the mask's patch size is img_size // sqrt(num_patches)",
        )
        .opt(
            "in_chans",
            ParamType::INT,
            json!(b.in_chans),
            "input channels",
        )
        .opt(
            "num_classes",
            ParamType::INT,
            json!(b.num_classes),
            "classifier outputs (head)",
        )
        .opt(
            "drop_path_rate",
            ParamType::FLOAT,
            json!(0.0),
            "stochastic depth, linear over all blocks (train mode only)",
        )
        .opt(
            "head_init_scale",
            ParamType::FLOAT,
            json!(1.0),
            "scales the classifier's initial weights (initialisation only)",
        )
        .opt(
            "use_orig_stem",
            ParamType::BOOL,
            json!(false),
            "one patchify convolution (stem_orig) instead of initial_conv + stem",
        )
}

/// The backbone entries of this family.
pub fn entries() -> Vec<Entry> {
    NAMES.iter().map(|&n| entry(n)).collect()
}
