//! The PAN (Pyramid Attention Network) decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/pan/decoder.py` (`PANDecoder`, `FPABlock`,
//! `GAUBlock`, `ConvBnRelu`) as `segmentation_models_pytorch/decoders/pan/model.py`
//! (`PAN`) builds it.
//!
//! TerraTorch (`terratorch/registry/smp_registry.py`) builds `smp.PAN` around a dummy
//! encoder whose channel list is the given one, with
//! `encoder_depth = len(channels) - 1`. The encoder's output stride is only checked:
//! smp passes it to the encoder (a dummy here) and never to the decoder.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::{
    sdk::{BuildCtx, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

use super::args;
use super::blocks::{conv2d, hw, Interpolation};
use super::checks::{check_channels, check_maps, check_width};
use super::wrapper::{self, SmpDecoderWrapper};

/// Configuration of [`PanDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder feature map, the full-resolution one first.
    pub encoder_channels: Vec<i64>,
    /// Channels of every block and of the output (smp's `decoder_channels`).
    pub decoder_channels: i64,
    /// Upsampling mode of the attention-upsample blocks (smp's `decoder_interpolation`;
    /// the feature-pyramid-attention block always uses bilinear).
    pub interpolation_mode: Interpolation,
    /// The encoder's output stride, 16 or 32 (smp's `encoder_output_stride`).
    pub output_stride: i64,
}

impl Config {
    /// smp's defaults (32 channels, bilinear, output stride 16).
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            decoder_channels: 32,
            interpolation_mode: Interpolation::Bilinear,
            output_stride: 16,
        }
    }

    /// smp's `encoder_depth`, as TerraTorch sets it.
    pub fn depth(&self) -> usize {
        self.encoder_channels.len().saturating_sub(1)
    }

    /// Checks what smp checks.
    pub fn validate(&self) -> Result<()> {
        if ![16, 32].contains(&self.output_stride) {
            return Err(PluginError::invalid_argument(format!(
                "`encoder_output_stride`: PAN support output stride 16 or 32, got {}",
                self.output_stride
            )));
        }
        if self.depth() < 3 {
            return Err(PluginError::invalid_argument(format!(
                "Encoder depth for PAN decoder cannot be less than 3, got {}. (The depth is the length of the \
                 channel list {:?} minus one; PAN drops the first two maps and needs two more.)",
                self.depth(),
                self.encoder_channels
            )));
        }
        check_channels("PAN", &self.encoder_channels, 4, "depth 3 or more")?;
        check_width("decoder_channels", self.decoder_channels)?;
        Ok(())
    }
}

/// PAN's `ConvBnRelu`: conv (with bias), `bn`, optional ReLU.
#[derive(Debug)]
struct ConvBnRelu {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    relu: bool,
}

impl ConvBnRelu {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, relu: bool) -> Self {
        Self {
            conv: conv2d(&p / "conv", c_in, c_out, k, k / 2, true),
            bn: batch_norm2d(&p / "bn", c_out, 1e-5, 0.1),
            relu,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.apply(&self.conv).apply_t(&self.bn, train);
        Ok(if self.relu { y.f_relu()? } else { y })
    }
}

/// `F.max_pool2d(x, 2, 2)`.
fn max_pool2(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?)
}

/// PAN's `FPABlock` (feature pyramid attention) on the deepest map: a global
/// branch, a 1x1 branch and a three-level 7/5/3 pyramid whose bilinear-upsampled
/// result gates the 1x1 branch. The map must be at least 8x8.
#[derive(Debug)]
struct FpaBlock {
    /// `branch1.1`: after global average pooling.
    branch1: ConvBnRelu,
    /// `mid.0`.
    mid: ConvBnRelu,
    /// `down1.1` (7x7 to one channel), `down2.1` (5x5), `down3.1`, `down3.2` (3x3).
    down1: ConvBnRelu,
    down2: ConvBnRelu,
    down3: [ConvBnRelu; 2],
    /// `conv2` (5x5), `conv1` (7x7).
    conv2: ConvBnRelu,
    conv1: ConvBnRelu,
}

impl FpaBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self {
            branch1: ConvBnRelu::new(&p / "branch1" / 1, c_in, c_out, 1, true),
            mid: ConvBnRelu::new(&p / "mid" / 0, c_in, c_out, 1, true),
            down1: ConvBnRelu::new(&p / "down1" / 1, c_in, 1, 7, true),
            down2: ConvBnRelu::new(&p / "down2" / 1, 1, 1, 5, true),
            down3: [
                ConvBnRelu::new(&p / "down3" / 1, 1, 1, 3, true),
                ConvBnRelu::new(&p / "down3" / 2, 1, 1, 3, true),
            ],
            conv2: ConvBnRelu::new(&p / "conv2", 1, 1, 5, true),
            conv1: ConvBnRelu::new(&p / "conv1", 1, 1, 7, true),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (h, w) = hw(x);
        if h < 8 || w < 8 {
            return Err(PluginError::forward_failed(format!(
                "PAN's feature pyramid attention max-pools the deepest feature map three times, so it must be at \
                 least 8x8; got {h}x{w}"
            )));
        }
        let up = |t: &Tensor, h: i64, w: i64| Interpolation::Bilinear.resize_aligned(t, h, w, true);
        // [B, C, h, w] -> [B, C', 1, 1] -> [B, C', h, w]
        let global = up(
            &self
                .branch1
                .forward(&x.f_adaptive_avg_pool2d([1, 1])?, train)?,
            h,
            w,
        )?;
        let middle = self.mid.forward(x, train)?;
        // One-channel pyramid at h/2, h/4, h/8.
        let x1 = self.down1.forward(&max_pool2(x)?, train)?;
        let x2 = self.down2.forward(&max_pool2(&x1)?, train)?;
        let x3 = self.down3[1].forward(&self.down3[0].forward(&max_pool2(&x2)?, train)?, train)?;
        let x3 = up(&x3, h / 4, w / 4)?;
        let y = self.conv2.forward(&x2, train)?.f_add(&x3)?;
        let y = up(&y, h / 2, w / 2)?;
        let y = y.f_add(&self.conv1.forward(&x1, train)?)?;
        let y = up(&y, h, w)?;
        Ok(y.f_mul(&middle)?.f_add(&global)?)
    }
}

/// PAN's `GAUBlock` (global attention upsample): the deeper result is upsampled and
/// added to the 3x3-convolved shallower map gated by the deeper result's global context.
#[derive(Debug)]
struct GauBlock {
    /// `conv1.1`: 1x1 conv-BN (no ReLU) on the pooled deeper map, then a sigmoid.
    gate: ConvBnRelu,
    /// `conv2`: 3x3 conv-BN-ReLU on the shallower map.
    conv: ConvBnRelu,
    mode: Interpolation,
}

impl GauBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, mode: Interpolation) -> Self {
        Self {
            gate: ConvBnRelu::new(&p / "conv1" / 1, c_out, c_out, 1, false),
            conv: ConvBnRelu::new(&p / "conv2", c_in, c_out, 3, true),
            mode,
        }
    }

    /// `x`: the shallower encoder map; `y`: the deeper decoder result.
    fn forward(&self, x: &Tensor, y: &Tensor, train: bool) -> Result<Tensor> {
        let (h, w) = hw(x);
        // align_corners=True only for bilinear (smp passes None otherwise).
        let y_up = self
            .mode
            .resize_aligned(y, h, w, self.mode == Interpolation::Bilinear)?;
        let x = self.conv.forward(x, train)?;
        // [B, C, h', w'] -> [B, C, 1, 1] gate
        let gate = self
            .gate
            .forward(&y.f_adaptive_avg_pool2d([1, 1])?, train)?
            .f_sigmoid()?;
        Ok(y_up.f_add(&x.f_mul(&gate)?)?)
    }
}

/// smp's `PANDecoder`: feature pyramid attention on the deepest map, then up to three
/// attention-upsample blocks (`gau3` for depth 5 or more, `gau2` for 4 or more,
/// `gau1`) on maps 4, 3 and 2.
///
/// Output: one `[B, decoder_channels, h, w]` map at the resolution of map 2
/// (stride 4 for a standard encoder; smp's head upsamples it by 4).
#[derive(Debug)]
pub struct PanDecoder {
    fpa: FpaBlock,
    /// `(map index, block)`, applied in order: gau3, gau2, gau1 (those that exist).
    gaus: Vec<(usize, GauBlock)>,
    cfg: Config,
}

impl PanDecoder {
    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.encoder_channels;
        let c = cfg.decoder_channels;
        let fpa = FpaBlock::new(&p / "fpa", *ch.last().expect("validated"), c);
        let depth = cfg.depth();
        let mut gaus = Vec::new();
        // smp drops the first two maps; gauK reads map K + 1 of the rest.
        if depth == 5 {
            gaus.push((
                4,
                GauBlock::new(&p / "gau3", ch[4], c, cfg.interpolation_mode),
            ));
        }
        if depth >= 4 {
            gaus.push((
                3,
                GauBlock::new(&p / "gau2", ch[3], c, cfg.interpolation_mode),
            ));
        }
        gaus.push((
            2,
            GauBlock::new(&p / "gau1", ch[2], c, cfg.interpolation_mode),
        ));
        Ok(Self {
            fpa,
            gaus,
            cfg: cfg.clone(),
        })
    }
}

impl Model for PanDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let n = self.cfg.encoder_channels.len();
        let mut used: Vec<usize> = self.gaus.iter().map(|(i, _)| *i).collect();
        used.push(n - 1);
        check_maps("PAN", xs, &self.cfg.encoder_channels, &used)?;
        let mut out = self.fpa.forward(&xs[n - 1], train)?;
        for (i, gau) in &self.gaus {
            out = gau.forward(&xs[*i], &out, train)?;
        }
        Ok(vec![out])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.decoder_channels]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    // smp pops the deprecated `upscale_mode` from its kwargs; it wins when given.
    let (name, mode) = match ctx.args.opt::<String>("upscale_mode")? {
        Some(m) => ("upscale_mode", m),
        None => (
            "decoder_interpolation",
            ctx.args.get::<String>("decoder_interpolation")?,
        ),
    };
    cfg.interpolation_mode = args::interpolation_named(ctx, name, &mode)?;
    cfg.output_stride = ctx.args.get("encoder_output_stride")?;
    args::in_entry(ctx, cfg.validate())?;
    Ok(cfg)
}

/// The decoder smp's full model builds from `ctx` (the encoder's channels and the model's
/// keyword arguments) under `p`, with the input channels of its segmentation head.
pub(crate) fn full_model_decoder(
    ctx: &BuildCtx<'_, '_>,
    p: nn::Path,
) -> Result<(Box<dyn Model>, i64)> {
    let cfg = config(ctx)?;
    let out = cfg.decoder_channels;
    Ok((Box::new(PanDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = cfg.decoder_channels;
    // smp's segmentation head reads decoder_channels.
    SmpDecoderWrapper::build(ctx, out, |p| PanDecoder::new(p, &cfg))
}

/// The `smp_PAN` entry of the decoder registry.
pub(crate) fn entry() -> Entry {
    wrapper::entry(
            "PAN",
            "Pyramid Attention Network decoder of segmentation_models_pytorch (smp.PAN's decoder, as TerraTorch's \
             SMPRegistry wraps it): feature pyramid attention on the deepest map (at least 8x8), then \
             global-attention upsampling through maps 4 (depth 5), 3 (depth 4+) and 2; needs at least four maps \
             and returns one map with decoder_channels channels at map 2's resolution.",
            build,
        )
        .opt("decoder_channels", ParamType::INT, json!(32), "channels of every block and of the output")
        .opt(
            "decoder_interpolation",
            ParamType::STR,
            json!("bilinear"),
            "upsampling mode of the attention-upsample blocks: \"bilinear\", \"nearest\", \"bicubic\", \"area\" or \"nearest-exact\"",
        )
        .opt(
            "encoder_output_stride",
            ParamType::INT,
            json!(16),
            "the encoder's output stride, 16 or 32 (checked only: smp's decoder does not use it)",
        )
        .opt(
            "upscale_mode",
            ParamType::STR,
            Value::Null,
            "deprecated alias of decoder_interpolation; overrides it when given",
        )
}
