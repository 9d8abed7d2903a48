//! The DPT decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/dpt/decoder.py` (`DPTDecoder`,
//! `ReadoutConcatBlock`, `ReadoutAddBlock`, `ReadoutIgnoreBlock`, `ReassembleBlock`,
//! `ResidualConvBlock`, `FusionBlock`) as `decoders/dpt/model.py` (`DPT`) builds it,
//! kept under TerraTorch's `_smp_decoder` attribute (see [`super::wrapper`]).
//!
//! TerraTorch 1.2.11 cannot build `smp_DPT` itself: with its dummy encoder smp
//! raises "Only Timm encoders are supported for DPT"; overriding `encoder_name` with a
//! `tu-` ViT builds smp's model but then fails reading `segmentation_head[0]`
//! (`DPTSegmentationHead` is not a `Sequential`); and its wrapper's forward passes only
//! the feature list, while `DPTDecoder.forward` also needs the prefix tokens. This port
//! is what that wrapper would hold: the parameters are `_smp_decoder.<DPTDecoder key>`,
//! `out_channels` is `decoder_fusion_channels`, and the channel list is smp's
//! `encoder.out_channels` for a ViT encoder: one width per map, one fusion stage per
//! map. What smp reads from its ViT encoder (strides, prefix tokens) are arguments.
use super::args;
use super::blocks::{conv2d_with, xavier_linear};
use super::wrapper::{self, SmpDecoderWrapper};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// How the prefix (class) tokens enter the decoder (smp's `decoder_readout`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Readout {
    /// Concatenate the first prefix token to every pixel and project back (`Linear` + GELU).
    Cat,
    /// Add the mean of the prefix tokens to every pixel.
    Add,
    /// Ignore the prefix tokens.
    Ignore,
}

impl Readout {
    /// Parses smp's name.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "cat" => Ok(Self::Cat),
            "add" => Ok(Self::Add),
            "ignore" => Ok(Self::Ignore),
            other => {
                Err(format!("Invalid decoder readout mode. Must be one of: 'ignore', 'add', 'cat'. Got: {other:?}"))
            }
        }
    }
}

/// Configuration of [`DptDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Width of each encoder map (smp's `encoder.out_channels` of a ViT: one per stage).
    pub encoder_out_channels: Vec<i64>,
    /// Downsampling of each encoder map relative to the image (a ViT's patch size).
    pub encoder_output_strides: Vec<i64>,
    /// Whether the encoder has prefix tokens (a class token) given with each map.
    pub encoder_has_prefix_tokens: bool,
    /// Use of the prefix tokens.
    pub readout: Readout,
    /// Width of each map after its 1x1 projection, one per map.
    pub intermediate_channels: Vec<i64>,
    /// Width of every fusion stage and of the output.
    pub fusion_channels: i64,
}

impl Config {
    /// smp's defaults: `DPT()` with `vit_base_patch16_224`-like encoder widths.
    pub fn new(encoder_out_channels: Vec<i64>) -> Self {
        let n = encoder_out_channels.len();
        Self {
            encoder_out_channels,
            encoder_output_strides: vec![16; n],
            encoder_has_prefix_tokens: true,
            readout: Readout::Cat,
            intermediate_channels: vec![256, 512, 1024, 1024],
            fusion_channels: 256,
        }
    }

    /// Checks what smp checks, plus what would fail later.
    pub fn validate(&self) -> Result<()> {
        let n = self.encoder_out_channels.len();
        if n == 0 {
            return Err(PluginError::invalid_argument(
                "the DPT decoder needs at least one feature map",
            ));
        }
        if self.encoder_output_strides.len() != n || self.intermediate_channels.len() != n {
            return Err(PluginError::invalid_argument(format!(
                "encoder_out_channels, encoder_output_strides and intermediate_channels must have the same length: \
                 got the channel list {:?} ({n} maps), `encoder_output_strides` {:?} and \
                 `decoder_intermediate_channels` {:?}; give one value per map",
                self.encoder_out_channels, self.encoder_output_strides, self.intermediate_channels
            )));
        }
        let all = self
            .encoder_out_channels
            .iter()
            .chain(&self.intermediate_channels)
            .chain([&self.fusion_channels]);
        if let Some(c) = all.into_iter().find(|&&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "channel counts must be positive, got {c} (channels {:?}, decoder_intermediate_channels {:?}, \
                 decoder_fusion_channels {})",
                self.encoder_out_channels, self.intermediate_channels, self.fusion_channels
            )));
        }
        if let Some(s) = self.encoder_output_strides.iter().find(|&&s| s <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "`encoder_output_strides` must be positive, got {s} in {:?}",
                self.encoder_output_strides
            )));
        }
        Ok(())
    }

    /// Whether the forward needs the prefix tokens.
    fn needs_prefix_tokens(&self) -> bool {
        self.encoder_has_prefix_tokens && self.readout != Readout::Ignore
    }
}

/// `nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias)` with smp's initialisation.
fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias,
        ..Default::default()
    };
    conv2d_with(p, c_in, c_out, k, cfg)
}

/// The resampling step of a `ReassembleBlock`.
#[derive(Debug)]
enum Resample {
    /// `nn.ConvTranspose2d(k=s, stride=s)` for an upsampling factor above 1.
    Up(nn::ConvTranspose2D),
    /// `nn.Identity()` for a factor of exactly 1.
    Identity,
    /// `nn.Conv2d(k=3, stride=int(1 / factor), padding=1)` below 1.
    Down(nn::Conv2D),
}

/// smp's `ReassembleBlock`: 1x1 projection, resampling to 1/4, 1/8, ... of the
/// image, 3x3 projection to the fusion width.
#[derive(Debug)]
struct ReassembleBlock {
    project_to_out_channel: nn::Conv2D,
    upsample: Resample,
    project_to_feature_dim: nn::Conv2D,
}

impl ReassembleBlock {
    fn new(p: nn::Path, c_in: i64, c_mid: i64, c_out: i64, factor: f64) -> Self {
        let upsample = if factor > 1.0 {
            // Truncated as smp does (`int(upsample_factor)`).
            let s = factor as i64;
            let cfg = nn::ConvTransposeConfig {
                stride: s,
                ws_init: nn::init::DEFAULT_KAIMING_UNIFORM,
                bs_init: nn::Init::Const(0.),
                ..Default::default()
            };
            Resample::Up(nn::conv_transpose2d(&p / "upsample", c_mid, c_mid, s, cfg))
        } else if factor == 1.0 {
            Resample::Identity
        } else {
            Resample::Down(conv(
                &p / "upsample",
                c_mid,
                c_mid,
                3,
                (1.0 / factor) as i64,
                1,
                true,
            ))
        };
        Self {
            project_to_out_channel: conv(&p / "project_to_out_channel", c_in, c_mid, 1, 1, 0, true),
            upsample,
            project_to_feature_dim: conv(
                &p / "project_to_feature_dim",
                c_mid,
                c_out,
                3,
                1,
                1,
                false,
            ),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x.apply(&self.project_to_out_channel);
        let x = match &self.upsample {
            Resample::Up(m) => x.apply(m),
            Resample::Identity => x,
            Resample::Down(m) => x.apply(m),
        };
        x.apply(&self.project_to_feature_dim)
    }
}

/// smp's `ResidualConvBlock`: `x + BN(conv(relu(BN(conv(relu(x))))))`.
#[derive(Debug)]
struct ResidualConvBlock {
    conv_1: nn::Conv2D,
    batch_norm_1: nn::BatchNorm,
    conv_2: nn::Conv2D,
    batch_norm_2: nn::BatchNorm,
}

impl ResidualConvBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            conv_1: conv(&p / "conv_1", c, c, 3, 1, 1, false),
            batch_norm_1: batch_norm2d(&p / "batch_norm_1", c, 1e-5, 0.1),
            conv_2: conv(&p / "conv_2", c, c, 3, 1, 1, false),
            batch_norm_2: batch_norm2d(&p / "batch_norm_2", c, 1e-5, 0.1),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x
            .f_relu()?
            .apply(&self.conv_1)
            .apply_t(&self.batch_norm_1, train);
        let y = y
            .f_relu()?
            .apply(&self.conv_2)
            .apply_t(&self.batch_norm_2, train);
        Ok(y.f_add(x)?)
    }
}

/// smp's `FusionBlock`: residual blocks around the sum with the deeper stage's
/// output, 2x bilinear upsampling (`align_corners=True`), 1x1 projection.
#[derive(Debug)]
struct FusionBlock {
    residual_conv_block1: ResidualConvBlock,
    residual_conv_block2: ResidualConvBlock,
    project: nn::Conv2D,
}

impl FusionBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            residual_conv_block1: ResidualConvBlock::new(&p / "residual_conv_block1", c),
            residual_conv_block2: ResidualConvBlock::new(&p / "residual_conv_block2", c),
            project: conv(&p / "project", c, c, 1, 1, 0, true),
        }
    }

    fn forward(&self, x: &Tensor, previous: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let mut x = self.residual_conv_block1.forward(x, train)?;
        if let Some(prev) = previous {
            if prev.size() != x.size() {
                return Err(PluginError::forward_failed(format!(
                    "DPT fusion: the deeper stage gives {:?} but this stage is {:?}; the maps' sizes and \
                     `encoder_output_strides` must put map i at 1/2^(i+2) of the image",
                    prev.size(),
                    x.size()
                )));
            }
            x = x.f_add(prev)?;
        }
        let x = self.residual_conv_block2.forward(&x, train)?;
        let (h, w) = (x.size()[2], x.size()[3]);
        // With align_corners=True the scale factor does not enter the sampling grid.
        let x = x.f_upsample_bilinear2d([2 * h, 2 * w], true, None, None)?;
        Ok(x.apply(&self.project))
    }
}

/// smp's `DPTDecoder`.
///
/// Input: the encoder's `N` maps `[B, C_i, H_i, W_i]`, followed, when the encoder has
/// prefix tokens and the readout uses them, by their `N` prefix tokens `[B, P, C_i]`
/// (the second list smp's ViT encoder returns). Output: one
/// `[B, fusion_channels, 2 H', 2 W']` map, where `H'` is the size of the first
/// reassembled map (1/4 of the image), i.e. half the image size.
#[derive(Debug)]
pub struct DptDecoder {
    /// `projection_blocks.N.project.0` (readout "cat" only).
    projection: Vec<Option<nn::Linear>>,
    reassemble_blocks: Vec<ReassembleBlock>,
    fusion_blocks: Vec<FusionBlock>,
    cfg: Config,
}

impl DptDecoder {
    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.encoder_out_channels.len();
        let pp = &p / "projection_blocks";
        let projection = cfg
            .encoder_out_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (cfg.readout == Readout::Cat).then(|| {
                    let c_in = if cfg.encoder_has_prefix_tokens {
                        2 * c
                    } else {
                        c
                    };
                    xavier_linear(&pp / i / "project" / 0, c_in, c)
                })
            })
            .collect();
        let rp = &p / "reassemble_blocks";
        let reassemble_blocks = (0..n)
            .map(|i| {
                let factor = cfg.encoder_output_strides[i] as f64 / 2f64.powi(i as i32 + 2);
                ReassembleBlock::new(
                    &rp / i,
                    cfg.encoder_out_channels[i],
                    cfg.intermediate_channels[i],
                    cfg.fusion_channels,
                    factor,
                )
            })
            .collect();
        let fp = &p / "fusion_blocks";
        let fusion_blocks = (0..n)
            .map(|i| FusionBlock::new(&fp / i, cfg.fusion_channels))
            .collect();
        Ok(Self {
            projection,
            reassemble_blocks,
            fusion_blocks,
            cfg: cfg.clone(),
        })
    }

    /// The readout step of map `i` (`[B, C, H, W]`, prefix tokens `[B, P, C]`).
    fn readout(&self, i: usize, x: &Tensor, tokens: Option<&Tensor>) -> Result<Tensor> {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        Ok(match (self.cfg.readout, tokens) {
            (Readout::Cat, tokens) => {
                let lin = self.projection[i].as_ref().expect("built for cat");
                // [B, C, H, W] -> [B, HW, C]
                let mut f = x.f_reshape([b, c, -1])?.f_transpose(1, 2)?;
                if let Some(t) = tokens {
                    // The first prefix token, repeated for every pixel: [B, HW, 2C].
                    let t = t.f_narrow(1, 0, 1)?.f_expand_as(&f)?;
                    f = Tensor::f_cat(&[&f, &t], 2)?;
                }
                let f = f.apply(lin).f_gelu("none")?;
                // [B, HW, C] -> [B, C, H, W]
                f.f_transpose(1, 2)?.f_reshape([b, -1, h, w])?
            }
            (Readout::Add, Some(t)) => {
                x.f_add(&t.f_mean_dim(1, false, None)?.f_view([b, c, 1, 1])?)?
            }
            (Readout::Add, None) | (Readout::Ignore, _) => x.shallow_clone(),
        })
    }
}

impl Model for DptDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let want = &self.cfg.encoder_out_channels;
        let n = want.len();
        let (maps, tokens) = if xs.len() == 2 * n {
            (&xs[..n], Some(&xs[n..]))
        } else if xs.len() == n && !self.cfg.needs_prefix_tokens() {
            (xs, None)
        } else {
            let how = if self.cfg.needs_prefix_tokens() {
                format!("{n} maps followed by their {n} prefix tokens [B, P, C]")
            } else {
                format!("{n} maps (optionally followed by {n} prefix-token tensors, which are then ignored)")
            };
            return Err(PluginError::forward_failed(format!(
                "the DPT decoder was built for {how} (channels {want:?}, readout {:?}, encoder_has_prefix_tokens \
                 {}) but got {} tensors",
                self.cfg.readout,
                self.cfg.encoder_has_prefix_tokens,
                xs.len()
            )));
        };
        // Prefix tokens only reach the readout when the encoder has them (smp passes None otherwise).
        let tokens = tokens.filter(|_| self.cfg.encoder_has_prefix_tokens);
        let mut processed = Vec::with_capacity(n);
        for (i, x) in maps.iter().enumerate() {
            let s = x.size();
            if s.len() != 4 || s[1] != want[i] {
                return Err(PluginError::forward_failed(format!(
                    "feature map {i} must be [B, {}, H, W] (channels {want:?}), got shape {s:?}",
                    want[i]
                )));
            }
            let t = tokens.map(|t| &t[i]);
            if let Some(t) = t {
                let ts = t.size();
                if ts.len() != 3 || ts[0] != s[0] || ts[2] != s[1] || ts[1] == 0 {
                    return Err(PluginError::forward_failed(format!(
                        "prefix tokens {i} must be [B, P, C] = [{}, P >= 1, {}], got shape {ts:?}",
                        s[0], s[1]
                    )));
                }
            }
            let y = self.readout(i, x, t)?;
            processed.push(self.reassemble_blocks[i].forward(&y));
        }
        // Fuse from the deepest stage up.
        let mut fused: Option<Tensor> = None;
        for (block, x) in self.fusion_blocks.iter().zip(processed.iter().rev()) {
            fused = Some(block.forward(x, fused.as_ref(), train)?);
        }
        Ok(vec![fused.expect("at least one map")])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.fusion_channels]
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let q = ctx.qualified();
    let mut cfg = Config::new(ctx.channels.clone());
    if let Some(s) = ctx.args.opt::<Vec<i64>>("encoder_output_strides")? {
        cfg.encoder_output_strides = s;
    }
    cfg.encoder_has_prefix_tokens = ctx.args.get("encoder_has_prefix_tokens")?;
    let readout: String = ctx.args.get("decoder_readout")?;
    cfg.readout = Readout::parse(&readout).map_err(|why| {
        PluginError::invalid_argument(format!("argument `decoder_readout` of `{q}`: {why}"))
    })?;
    cfg.intermediate_channels = ctx.args.get("decoder_intermediate_channels")?;
    cfg.fusion_channels = ctx.args.get("decoder_fusion_channels")?;
    ctx.args.ensure(
        cfg.fusion_channels > 0,
        "decoder_fusion_channels",
        format_args!("must be positive, got {}", cfg.fusion_channels),
    )?;
    args::check_positive(
        ctx,
        "decoder_intermediate_channels",
        &cfg.intermediate_channels,
    )?;
    args::in_entry(ctx, cfg.validate())?;
    let out = cfg.fusion_channels;
    SmpDecoderWrapper::build(ctx, out, |p| DptDecoder::new(p, &cfg))
}

/// The `smp_DPT` entry.
pub(crate) fn entry() -> Entry {
    wrapper::entry(
        "DPT",
        "DPT decoder of segmentation_models_pytorch (smp.DPT's decoder under TerraTorch's `_smp_decoder` key; \
         TerraTorch 1.2.11 itself cannot build or run it): for a ViT encoder, the channel list is one width per \
         intermediate map (smp's encoder.out_channels, e.g. [768] * 4); forward takes those maps, followed by their \
         prefix (class) tokens [B, P, C] when encoder_has_prefix_tokens and decoder_readout is not \"ignore\"; \
         reassembles map i to 1/2^(i+2) of the image, fuses them deepest first and returns one map with \
         decoder_fusion_channels channels at half the image size.",
        build,
    )
    .opt(
        "decoder_readout",
        ParamType::STR,
        json!("cat"),
        "use of the prefix tokens: \"cat\" (concatenate + Linear/GELU), \"add\" (add their mean) or \"ignore\"",
    )
    .opt(
        "decoder_intermediate_channels",
        ParamType::INT_LIST,
        json!([256, 512, 1024, 1024]),
        "width of each map after its 1x1 projection, one per map",
    )
    .opt("decoder_fusion_channels", ParamType::INT, json!(256), "width of the fusion stages and of the output")
    .opt(
        "encoder_output_strides",
        ParamType::INT_LIST,
        Value::Null,
        "downsampling of each map relative to the image, which smp reads from the ViT (its patch size); \
         default 16 for every map",
    )
    .opt(
        "encoder_has_prefix_tokens",
        ParamType::BOOL,
        json!(true),
        "whether the encoder has prefix (class) tokens, which smp reads from the ViT; with \"cat\" it doubles \
         the projection's input width",
    )
}
