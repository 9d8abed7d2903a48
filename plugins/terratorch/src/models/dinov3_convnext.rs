//! Mirrors TerraTorch 1.2.11's `dinov3_convnext_*` registrations of
//! `terratorch/models/backbones/dinov3/dinov3_wrapper.py` (`DinoV3Wrapper` over a
//! ConvNeXt) and the network the wrapper loads through `torch.hub`: facebookresearch/
//! dinov3's `ConvNeXt` (`dinov3/models/convnext.py`: `Block`, its channels-first
//! `LayerNorm`, `get_intermediate_layers`) with the sizes of `convnext_sizes` and the
//! hub's `dinov3_convnext_{tiny,small,base,large}`.
//!
//! Keys sit under `dinov3.` (the wrapper's child). The final norm is registered twice
//! upstream (`norm` and `norms.3`, the last of the per-stage norms), so both keys exist
//! in every state_dict; here they are one tensor under two names, as in PyTorch.
//!
//! What `forward` returns is the wrapper's (`get_intermediate_layers(x, n=4,
//! return_class_token=...)`): for each of the four stages, its feature map as tokens
//! `[B, h*w, C_i]` (the last stage after the final norm, the others as they are), with
//! the stage's global average (the "class token", normed for the last stage) appended
//! last when `return_cls_token`. `out_channels` is the stage widths. The network has no
//! `patch_size` (upstream sets it to `None`), so TerraTorch's factory does not pad.
use super::dinov3::{available_memory, check_memory, load_strict, PREFIX};
use serde_json::{json, Map, Value};
use std::path::Path;
use tch::{nn, Device, Tensor};
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_layers::conv::{Conv2d, ConvSpec};
use terrahost_layers::linear::{trunc_normal, Linear};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

/// The registered names, in TerraTorch's registration order.
pub const NAMES: [&str; 4] = [
    "dinov3_convnext_base",
    "dinov3_convnext_large",
    "dinov3_convnext_small",
    "dinov3_convnext_tiny",
];

/// The epsilon of every norm of the network.
const EPS: f64 = 1e-6;

/// The architecture: blocks per stage, widths per stage, LayerScale init.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Input channels.
    pub in_chans: i64,
    /// Blocks of each of the four stages.
    pub depths: [i64; 4],
    /// Width of each stage.
    pub dims: [i64; 4],
    /// LayerScale init (`gamma`); 0 means no LayerScale.
    pub layer_scale_init_value: f64,
}

impl Config {
    /// `convnext_sizes[size]` as the hub's `dinov3_convnext_<size>` builds it.
    pub fn preset(name: &str) -> Option<Self> {
        let (depths, dims) = match name {
            "dinov3_convnext_tiny" => ([3, 3, 9, 3], [96, 192, 384, 768]),
            "dinov3_convnext_small" => ([3, 3, 27, 3], [96, 192, 384, 768]),
            "dinov3_convnext_base" => ([3, 3, 27, 3], [128, 256, 512, 1024]),
            "dinov3_convnext_large" => ([3, 3, 27, 3], [192, 384, 768, 1536]),
            _ => return None,
        };
        Some(Self {
            in_chans: 3,
            depths,
            dims,
            layer_scale_init_value: 1e-6,
        })
    }

    /// `sum(p.numel() for p in model.parameters())` (the shared final norm counted once).
    pub fn n_params(&self) -> i64 {
        let d = self.dims;
        let block = |c: i64| {
            let gamma = if self.layer_scale_init_value > 0.0 {
                c
            } else {
                0
            };
            (49 * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c) + gamma
        };
        let stem = self.in_chans * d[0] * 16 + d[0] + 2 * d[0];
        let downs: i64 = (1..4)
            .map(|i| 2 * d[i - 1] + 4 * d[i - 1] * d[i] + d[i])
            .sum();
        let blocks: i64 = (0..4).map(|i| self.depths[i] * block(d[i])).sum();
        stem + downs + blocks + 2 * d[3]
    }
}

/// ConvNeXt's `LayerNorm(data_format="channels_first")`: normalises the channels of an
/// NCHW map with the biased variance, written out as upstream computes it.
struct ChannelsFirstNorm {
    weight: Tensor,
    bias: Tensor,
}

impl ChannelsFirstNorm {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            weight: p.var("weight", &[c], nn::Init::Const(1.0)),
            bias: p.var("bias", &[c], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let u = x.f_mean_dim(1, true, None)?;
        let centred = x.f_sub(&u)?;
        let s = centred.f_square()?.f_mean_dim(1, true, None)?;
        let y = centred.f_div(&s.f_add_scalar(EPS)?.f_sqrt()?)?;
        let w = self.weight.f_view([-1, 1, 1])?;
        let b = self.bias.f_view([-1, 1, 1])?;
        Ok(y.f_mul(&w)?.f_add(&b)?)
    }
}

/// A LayerNorm over the last dimension (`nn.LayerNorm` / channels-last `LayerNorm`).
struct LastDimNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LastDimNorm {
    fn new(p: nn::Path, dim: i64) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            bias: p.var("bias", &[dim], nn::Init::Const(0.0)),
            dim,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), EPS, true)?)
    }
}

/// ConvNeXt's `Block`: depthwise 7x7 convolution, channels-last LayerNorm, pointwise MLP
/// (4x, exact GELU), LayerScale, residual. Stochastic depth is 0 in every preset.
struct Block {
    dwconv: Conv2d,
    norm: LastDimNorm,
    pwconv1: Linear,
    pwconv2: Linear,
    gamma: Option<Tensor>,
}

impl Block {
    fn new(p: nn::Path, c: i64, ls: f64) -> Self {
        let spec = ConvSpec::new(c, c, 7).padding(3).groups(c);
        Self {
            dwconv: Conv2d::new(
                &p / "dwconv",
                spec,
                trunc_normal(),
                Some(nn::Init::Const(0.0)),
            ),
            norm: LastDimNorm::new(&p / "norm", c),
            pwconv1: Linear::timm(&p / "pwconv1", c, 4 * c, true),
            pwconv2: Linear::timm(&p / "pwconv2", 4 * c, c, true),
            gamma: (ls > 0.0).then(|| p.var("gamma", &[c], nn::Init::Const(ls))),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [B, C, H, W] -> [B, H, W, C] -> ... -> [B, C, H, W]
        let y = self.dwconv.forward(x)?.f_permute([0, 2, 3, 1])?;
        let y = self.norm.forward(&y)?;
        let y = self.pwconv2.forward(&self.pwconv1.forward_gelu(&y)?)?;
        let y = match &self.gamma {
            Some(g) => y.f_mul(g)?,
            None => y,
        };
        Ok(x.f_add(&y.f_permute([0, 3, 1, 2])?)?)
    }
}

/// One `downsample_layers[i]`: the stem (4x4 convolution, stride 4, then a channels-first
/// norm) or a downsampling (norm, then 2x2 convolution, stride 2).
enum Downsample {
    Stem(Conv2d, ChannelsFirstNorm),
    Down(ChannelsFirstNorm, Conv2d),
}

impl Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Stem(conv, norm) => norm.forward(&conv.forward(x)?),
            Self::Down(norm, conv) => conv.forward(&norm.forward(x)?),
        }
    }
}

/// dinov3's `ConvNeXt` without its (identity) head.
pub struct ConvNeXt {
    cfg: Config,
    downsample_layers: Vec<Downsample>,
    stages: Vec<Vec<Block>>,
    norm: LastDimNorm,
}

impl ConvNeXt {
    /// Builds the network under `p` with the reference's `init_weights` distributions
    /// (truncated-normal convolutions and linear layers, zero biases, unit norms,
    /// LayerScale at its init value).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        if cfg.in_chans <= 0
            || cfg.dims.iter().any(|&d| d <= 0)
            || cfg.depths.iter().any(|&d| d < 0)
        {
            return Err(PluginError::invalid_argument(format!(
                "ConvNeXt needs positive in_chans and widths and depths >= 0, got {cfg:?}"
            )));
        }
        let d = cfg.dims;
        let conv = |p: nn::Path, c_in, c_out, k| {
            let spec = ConvSpec::new(c_in, c_out, k).stride(k);
            Conv2d::new(p, spec, trunc_normal(), Some(nn::Init::Const(0.0)))
        };
        let dl = &p / "downsample_layers";
        let mut downsample_layers = vec![Downsample::Stem(
            conv(&dl / 0 / 0, cfg.in_chans, d[0], 4),
            ChannelsFirstNorm::new(&dl / 0 / 1, d[0]),
        )];
        for i in 1..4 {
            downsample_layers.push(Downsample::Down(
                ChannelsFirstNorm::new(&dl / i / 0, d[i - 1]),
                conv(&dl / i / 1, d[i - 1], d[i], 2),
            ));
        }
        let stages = (0..4)
            .map(|i| {
                (0..cfg.depths[i])
                    .map(|j| Block::new(&p / "stages" / i / j, d[i], cfg.layer_scale_init_value))
                    .collect()
            })
            .collect();
        let norm = LastDimNorm::new(&p / "norm", d[3]);
        // `self.norms.append(self.norm)`: the same module, so the same tensors, under
        // `norms.3` too (not trainable twice).
        let alias = &p / "norms" / 3;
        let _ = alias.add("weight", norm.weight.shallow_clone(), false);
        let _ = alias.add("bias", norm.bias.shallow_clone(), false);
        Ok(Self {
            cfg: cfg.clone(),
            downsample_layers,
            stages,
            norm,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `get_intermediate_layers(x, n=4, return_class_token=...)` with the wrapper's
    /// concatenation (see the module docs).
    pub fn wrapper_outputs(&self, x: &Tensor, return_cls_token: bool) -> Result<Vec<Tensor>> {
        let size = x.size();
        if size.len() != 4 || size[1] != self.cfg.in_chans {
            return Err(PluginError::invalid_argument(format!(
                "DINOv3 ConvNeXt takes images [B, {}, H, W], got a tensor of shape {size:?}",
                self.cfg.in_chans
            )));
        }
        let mut x = x.shallow_clone();
        let mut out = Vec::with_capacity(4);
        for (i, (down, stage)) in self.downsample_layers.iter().zip(&self.stages).enumerate() {
            x = down.forward(&x)?;
            for blk in stage {
                x = blk.forward(&x)?;
            }
            // [B, C] pooled, [B, C, h, w] -> [B, h*w, C]
            let pooled = x.f_mean_dim([-2i64, -1].as_slice(), false, None)?;
            let tokens = x.f_flatten(2, 3)?.f_permute([0, 2, 1])?;
            let (pooled, tokens) = if i == 3 {
                (self.norm.forward(&pooled)?, self.norm.forward(&tokens)?)
            } else {
                (pooled, tokens)
            };
            out.push(if return_cls_token {
                Tensor::f_cat(&[tokens, pooled.f_unsqueeze(1)?], 1)?
            } else {
                tokens
            });
        }
        Ok(out)
    }
}

/// `DinoV3Wrapper` over a ConvNeXt.
pub struct DinoV3ConvNeXtBackbone {
    /// The network.
    pub net: ConvNeXt,
    /// Whether each output ends with the pooled token.
    pub return_cls_token: bool,
}

impl Model for DinoV3ConvNeXtBackbone {
    /// `xs[0]`: image `[B, 3, H, W]`; one output per stage.
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let x = xs
            .first()
            .ok_or_else(|| PluginError::invalid_argument("DINOv3 ConvNeXt needs an input image"))?;
        self.net.wrapper_outputs(x, self.return_cls_token)
    }

    /// The stage widths (`ConvNeXt.embed_dims`, the wrapper's `out_channels`).
    fn out_channels(&self) -> Vec<i64> {
        self.net.cfg.dims.to_vec()
    }

    /// No `patch_size`: upstream's is `None`, so the factory finds none and does not pad.
    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("depths".into(), json!(self.net.cfg.depths));
        m.insert("dims".into(), json!(self.net.cfg.dims));
        m.insert("in_chans".into(), json!(self.net.cfg.in_chans));
        m.insert("return_cls_token".into(), json!(self.return_cls_token));
        m
    }
}

/// Builds the entry `name` from its validated arguments.
fn build(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<ModuleBox> {
    let qualified = ctx.qualified();
    let cfg =
        Config::preset(name).expect("a DINOv3 ConvNeXt entry is registered only for a preset");
    let return_cls_token: bool = ctx.args.get("return_cls_token")?;
    let ckpt: Option<String> = ctx.args.opt("ckpt_path")?;
    let ckpt_bytes = ckpt
        .as_ref()
        .and_then(|f| std::fs::metadata(f).ok())
        .map_or(0, |m| m.len());
    check_memory(&qualified, cfg.n_params(), ckpt_bytes, available_memory())?;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ConvNeXt::new(vs.root() / PREFIX, &cfg)
        .map_err(|e| e.context(format_args!("`{qualified}`")))?;
    if let Some(f) = ckpt {
        let pairs = read_state_dict(Path::new(&f))
            .map_err(|e| e.context(format_args!("`{qualified}` ckpt_path")))?;
        load_strict(&vs, pairs, PREFIX, &f)
            .map_err(|e| e.context(format_args!("`{qualified}`")))?;
    }
    let model = DinoV3ConvNeXtBackbone {
        net,
        return_cls_token,
    };
    Ok(Built::new(qualified, vs, model).boxed())
}

/// The registry entry `name` (one of [`NAMES`]).
pub fn entry(name: &'static str) -> Entry {
    let c = Config::preset(name).expect("a DINOv3 ConvNeXt entry is registered only for a preset");
    let doc = format!(
        "DINOv3 ConvNeXt `{name}` (facebookresearch/dinov3 through TerraTorch's DinoV3Wrapper; depths {:?}, widths \
         {:?}, about {:.0}M parameters). Input [B, 3, H, W]; returns for each of the 4 stages its map as tokens \
         [B, h*w, C_i] (the last after the final norm), with the stage's average pooled token appended LAST when \
         return_cls_token. Weights load from a local Meta checkpoint (ckpt_path, strict); without it they are \
         random, as upstream.",
        c.depths,
        c.dims,
        c.n_params() as f64 / 1e6
    );
    Entry::new(name, &doc, move |ctx| build(ctx, name))
        .opt(
            "ckpt_path",
            ParamType::STR,
            Value::Null,
            "local Meta DINOv3 checkpoint (.pth or .safetensors, the network's own keys), loaded strictly; \
             null: random weights (TerraTorch requires the keyword, None allowed)",
        )
        .opt(
            "return_cls_token",
            ParamType::BOOL,
            json!(true),
            "append the stage's average pooled token after its tokens in every output",
        )
        .ignores(
            "pretrained",
            "swallowed by DinoV3Wrapper's **kwargs and never read: weights come from ckpt_path only",
        )
}

/// The backbone entries, in TerraTorch's registration order.
pub fn entries() -> Vec<Entry> {
    NAMES.iter().map(|n| entry(n)).collect()
}
