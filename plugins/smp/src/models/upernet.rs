//! The UPerNet decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/upernet/decoder.py` (`UPerNetDecoder`,
//! `PSPModule`, `LayerNorm2d`, `FPNLateralBlock`) as `decoders/upernet/model.py`
//! (`UPerNet`) builds it, wrapped by TerraTorch's `SMPRegistry` (see
//! [`super::wrapper`]).
use super::args;
use super::blocks::{Conv2dReLU, Interpolation, NormConfig};
use super::checks::{check_maps_from, check_width};
use super::wrapper::{self, SmpDecoderWrapper};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// Output sizes of the pyramid pooling branches (fixed in smp).
const PSP_SIZES: [i64; 4] = [1, 2, 3, 6];

/// Configuration of [`UPerNetDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder map, full resolution first (TerraTorch's channel list).
    pub encoder_channels: Vec<i64>,
    /// Width of every branch and of the output (`decoder_channels`, an int here).
    pub decoder_channels: i64,
    /// Normalisation inside `Conv2dReLU` (the PSP output conv always uses batchnorm).
    pub use_norm: NormConfig,
}

impl Config {
    /// smp's defaults (256 channels, batchnorm) for the given encoder channels.
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            decoder_channels: 256,
            use_norm: NormConfig::default(),
        }
    }

    /// Checks what smp checks, plus what would fail later.
    pub fn validate(&self) -> Result<()> {
        let depth = self.encoder_channels.len().saturating_sub(1);
        if depth < 3 {
            return Err(PluginError::invalid_argument(format!(
                "Encoder depth for UPerNet decoder cannot be less than 3, got {depth} (the depth is the length of \
                 the channel list {:?} minus one)",
                self.encoder_channels
            )));
        }
        if let Some(c) = self.encoder_channels[2..].iter().find(|&&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "channel counts must be positive, got {c} in {:?}",
                self.encoder_channels
            )));
        }
        check_width("decoder_channels", self.decoder_channels)?;
        Ok(())
    }
}

/// smp's `LayerNorm2d`: layer norm over channels of a `[B, C, H, W]` map (eps 1e-6).
#[derive(Debug)]
struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    c: i64,
}

impl LayerNorm2d {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            weight: p.var("weight", &[c], nn::Init::Const(1.)),
            bias: p.var("bias", &[c], nn::Init::Const(0.)),
            c,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [B, C, H, W] -> [B, H, W, C] -> norm -> [B, C, H, W]
        let y = x.f_permute([0, 2, 3, 1])?;
        let y = y.f_layer_norm([self.c], Some(&self.weight), Some(&self.bias), 1e-6, false)?;
        Ok(y.f_permute([0, 3, 1, 2])?)
    }
}

/// `F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)`.
fn bilinear(x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    Interpolation::Bilinear.resize(x, h, w)
}

/// smp's `PSPModule` of UPerNet: pooled branches, resized back and fused.
#[derive(Debug)]
struct PspModule {
    /// `blocks.N.1`: 1x1 `Conv2dReLU` after `AdaptiveAvgPool2d(PSP_SIZES[N])`.
    blocks: Vec<Conv2dReLU>,
    out_conv: Conv2dReLU,
}

impl PspModule {
    fn new(p: nn::Path, c_in: i64, c_out: i64, norm: &NormConfig) -> Self {
        let bp = &p / "blocks";
        let blocks = (0..PSP_SIZES.len())
            .map(|i| Conv2dReLU::with_kernel(&bp / i / 1, c_in, c_out, 1, norm))
            .collect();
        let c_cat = c_in + PSP_SIZES.len() as i64 * c_out;
        Self {
            blocks,
            out_conv: Conv2dReLU::with_kernel(
                &p / "out_conv",
                c_cat,
                c_out,
                3,
                &NormConfig::batchnorm(),
            ),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (h, w) = (x.size()[2], x.size()[3]);
        let mut pyramid = vec![x.shallow_clone()];
        for (block, s) in self.blocks.iter().zip(PSP_SIZES) {
            let y = block.forward(&x.f_adaptive_avg_pool2d([s, s])?, train)?;
            pyramid.push(bilinear(&y, h, w)?);
        }
        self.out_conv.forward(&Tensor::f_cat(&pyramid, 1)?, train)
    }
}

/// smp's `UPerNetDecoder`.
///
/// Input: the encoder's maps, full resolution first; the first two (1/1 and 1/2) are
/// ignored. Output: one `[B, decoder_channels, H2, W2]` map at the third map's size
/// (1/4 of the input for the usual encoders).
#[derive(Debug)]
pub struct UPerNetDecoder {
    feature_norms: Vec<LayerNorm2d>,
    psp: PspModule,
    /// `fpn_lateral_blocks.N.conv_norm_relu`, from the second-deepest map upwards.
    fpn_lateral_blocks: Vec<Conv2dReLU>,
    fpn_conv_blocks: Vec<Conv2dReLU>,
    fusion_block: Conv2dReLU,
    cfg: Config,
}

impl UPerNetDecoder {
    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let enc = &cfg.encoder_channels[2..];
        let c = cfg.decoder_channels;
        let norm = &cfg.use_norm;
        let np = &p / "feature_norms";
        let feature_norms = enc
            .iter()
            .enumerate()
            .map(|(i, &ci)| LayerNorm2d::new(&np / i, ci))
            .collect();
        let psp = PspModule::new(&p / "psp", *enc.last().expect("validated"), c, norm);
        let lateral: Vec<i64> = enc[..enc.len() - 1].iter().rev().copied().collect();
        let (lp, cp) = (&p / "fpn_lateral_blocks", &p / "fpn_conv_blocks");
        let fpn_lateral_blocks = lateral
            .iter()
            .enumerate()
            .map(|(i, &ci)| Conv2dReLU::with_kernel(&lp / i / "conv_norm_relu", ci, c, 1, norm))
            .collect();
        let fpn_conv_blocks = (0..lateral.len())
            .map(|i| Conv2dReLU::with_kernel(&cp / i, c, c, 3, norm))
            .collect();
        let fusion_block = Conv2dReLU::with_kernel(
            &p / "fusion_block",
            (lateral.len() as i64 + 1) * c,
            c,
            3,
            norm,
        );
        Ok(Self {
            feature_norms,
            psp,
            fpn_lateral_blocks,
            fpn_conv_blocks,
            fusion_block,
            cfg: cfg.clone(),
        })
    }
}

impl Model for UPerNetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let want = &self.cfg.encoder_channels;
        // The 1/1 and 1/2 maps are not used, so only their count matters.
        check_maps_from("UPerNet", xs, want, 2)?;
        // Skip the 1/1 and 1/2 maps, then normalise each of the rest.
        let feats: Vec<Tensor> = xs[2..]
            .iter()
            .zip(&self.feature_norms)
            .map(|(x, n)| n.forward(x))
            .collect::<Result<_>>()?;
        let psp_out = self.psp.forward(feats.last().expect("depth >= 3"), train)?;
        // Top-down: upsample the running state to each shallower map and add its lateral.
        let mut fpn = vec![psp_out];
        for (lat, block) in feats[..feats.len() - 1]
            .iter()
            .rev()
            .zip(&self.fpn_lateral_blocks)
        {
            let l = block.forward(lat, train)?;
            let (h, w) = (l.size()[2], l.size()[3]);
            let state = bilinear(fpn.last().expect("non-empty"), h, w)?;
            fpn.push(state.f_add(&l)?);
        }
        for (f, conv) in fpn.iter_mut().skip(1).zip(&self.fpn_conv_blocks) {
            *f = conv.forward(f, train)?;
        }
        let target = fpn.last().expect("non-empty").size();
        let (h, w) = (target[2], target[3]);
        // Shallowest first, as smp reverses before concatenating.
        let resized: Vec<Tensor> = fpn
            .iter()
            .rev()
            .map(|f| bilinear(f, h, w))
            .collect::<Result<_>>()?;
        let y = self
            .fusion_block
            .forward(&Tensor::f_cat(&resized, 1)?, train)?;
        Ok(vec![y])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.decoder_channels]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    ctx.args.ensure(
        cfg.decoder_channels > 0,
        "decoder_channels",
        format_args!(
            "must be a positive int (UPerNet uses one width everywhere), got {}",
            cfg.decoder_channels
        ),
    )?;
    cfg.use_norm = args::use_norm(ctx)?;
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
    Ok((Box::new(UPerNetDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = cfg.decoder_channels;
    SmpDecoderWrapper::build(ctx, out, |p| UPerNetDecoder::new(p, &cfg))
}

/// The `smp_UPerNet` entry.
pub(crate) fn entry() -> Entry {
    let e = wrapper::entry(
        "UPerNet",
        "UPerNet decoder of segmentation_models_pytorch (smp.UPerNet's decoder, as TerraTorch's SMPRegistry wraps \
         it): ignores the first two maps (full resolution first; depth = number of maps - 1 >= 3), layer-normalises \
         the rest, runs pyramid pooling on the deepest and an FPN top-down path, and fuses all levels; returns one \
         map with decoder_channels channels at the third map's resolution.",
        build,
    )
    .opt("decoder_channels", ParamType::INT, json!(256), "width of every branch and of the output (one int)");
    // smp.UPerNet has no deprecated `decoder_use_batchnorm` (it would reach the encoder and fail).
    e.opt(
        "decoder_use_norm",
        ParamType::ANY,
        json!("batchnorm"),
        "norm after each conv: true/false, \"batchnorm\", \"identity\", \"layernorm\", \"instancenorm\", or {\"type\": ..., **kwargs}",
    )
}
