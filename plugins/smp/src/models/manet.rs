//! The MA-Net decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/manet/decoder.py` (`MAnetDecoder`,
//! `PABBlock`, `MFABBlock`, `DecoderBlock`) as `decoders/manet/model.py` (`MAnet`)
//! builds it, wrapped by TerraTorch's `SMPRegistry` (see [`super::wrapper`]).
use super::args;
use super::blocks::{conv2d, Conv2dReLU, Interpolation, NormConfig, SqueezeExcite};
use super::checks::{check_maps_from, check_stages, check_width};
use super::unet::block_channels;
use super::wrapper::{self, SmpDecoderWrapper};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// Configuration of [`MAnetDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder map, full resolution first (TerraTorch's channel list).
    pub encoder_channels: Vec<i64>,
    /// Output channels of each decoder block, deepest first.
    pub decoder_channels: Vec<i64>,
    /// Squeeze ratio of the MFAB blocks' SE branches (smp's model keeps 16).
    pub reduction: i64,
    /// Normalisation inside `Conv2dReLU`.
    pub use_norm: NormConfig,
    /// Channels of the position-attention block's query/key maps.
    pub pab_channels: i64,
    /// Mode of the 2x upsampling in each block.
    pub interpolation_mode: Interpolation,
}

impl Config {
    /// smp's defaults (`decoder_channels=(256, 128, 64, 32, 16)`, `pab_channels=64`,
    /// batchnorm, nearest) for the given encoder channels.
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            decoder_channels: vec![256, 128, 64, 32, 16],
            reduction: 16,
            use_norm: NormConfig::default(),
            pab_channels: 64,
            interpolation_mode: Interpolation::Nearest,
        }
    }

    /// Checks what smp checks, plus what would fail later.
    pub fn validate(&self) -> Result<()> {
        check_stages(
            "MAnet",
            &self.encoder_channels,
            &self.decoder_channels,
            1,
            "two feature maps",
        )?;
        check_width("decoder_pab_channels", self.pab_channels)?;
        Ok(())
    }
}

/// smp's `PABBlock`: position attention over all pixels of the deepest map.
#[derive(Debug)]
struct PabBlock {
    top_conv: nn::Conv2D,
    center_conv: nn::Conv2D,
    bottom_conv: nn::Conv2D,
    out_conv: nn::Conv2D,
    in_channels: i64,
}

impl PabBlock {
    fn new(p: nn::Path, c: i64, pab: i64) -> Self {
        Self {
            top_conv: conv2d(&p / "top_conv", c, pab, 1, 0, true),
            center_conv: conv2d(&p / "center_conv", c, pab, 1, 0, true),
            bottom_conv: conv2d(&p / "bottom_conv", c, c, 3, 1, true),
            out_conv: conv2d(&p / "out_conv", c, c, 3, 1, true),
            in_channels: c,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
        // [B, P, HW], [B, HW, P], [B, HW, C]
        let top = x.apply(&self.top_conv).f_flatten(2, -1)?;
        let center = x
            .apply(&self.center_conv)
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?;
        let bottom = x
            .apply(&self.bottom_conv)
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?;
        // [B, HW, HW], softmax over all HW*HW entries of each sample (as smp does)
        let map = center.f_matmul(&top)?;
        let map = map
            .f_view([b, -1])?
            .f_softmax(1, None::<Kind>)?
            .f_view([b, h * w, h * w])?;
        // [B, HW, C] -> [B, C, H, W] by a plain reshape (smp does not transpose back)
        let att = map
            .f_matmul(&bottom)?
            .f_reshape([b, self.in_channels, h, w])?;
        Ok(x.f_add(&att)?.apply(&self.out_conv))
    }
}

/// smp's `MFABBlock` (a block with a skip) or plain `DecoderBlock` (the last one).
#[derive(Debug)]
struct Block {
    /// `hl_conv`: 3x3 `Conv2dReLU` (in -> in), then 1x1 (in -> skip); MFAB only.
    hl: Option<(Conv2dReLU, Conv2dReLU, SqueezeExcite, SqueezeExcite)>,
    conv1: Conv2dReLU,
    conv2: Conv2dReLU,
    interpolation: Interpolation,
}

impl Block {
    fn new(p: nn::Path, c_in: i64, c_skip: i64, c_out: i64, cfg: &Config) -> Self {
        let norm = &cfg.use_norm;
        if c_skip > 0 {
            let r = (c_skip / cfg.reduction).max(1);
            let hl = &p / "hl_conv";
            Self {
                hl: Some((
                    Conv2dReLU::with_kernel(&hl / 0, c_in, c_in, 3, norm),
                    Conv2dReLU::with_kernel(&hl / 1, c_in, c_skip, 1, norm),
                    SqueezeExcite::new(&p / "SE_hl", c_skip, r),
                    SqueezeExcite::new(&p / "SE_ll", c_skip, r),
                )),
                conv1: Conv2dReLU::new(&p / "conv1", 2 * c_skip, c_out, norm),
                conv2: Conv2dReLU::new(&p / "conv2", c_out, c_out, norm),
                interpolation: cfg.interpolation_mode,
            }
        } else {
            Self {
                hl: None,
                conv1: Conv2dReLU::new(&p / "conv1", c_in, c_out, norm),
                conv2: Conv2dReLU::new(&p / "conv2", c_out, c_out, norm),
                interpolation: cfg.interpolation_mode,
            }
        }
    }

    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let up = |x: &Tensor| {
            self.interpolation
                .resize(x, 2 * x.size()[2], 2 * x.size()[3])
        };
        let x = match (&self.hl, skip) {
            (Some((c0, c1, se_hl, se_ll)), Some(skip)) => {
                let x = c1.forward(&c0.forward(x, train)?, train)?;
                let x = up(&x)?;
                // Both SE gates, summed, scale the upsampled deep features.
                let att = se_hl.forward(&x)?.f_add(&se_ll.forward(skip)?)?;
                Tensor::f_cat(&[&x.f_mul(&att)?, skip], 1)?
            }
            (Some((c0, c1, _, _)), None) => up(&c1.forward(&c0.forward(x, train)?, train)?)?,
            (None, Some(skip)) => Tensor::f_cat(&[&up(x)?, skip], 1)?,
            (None, None) => up(x)?,
        };
        let x = self.conv1.forward(&x, train)?;
        self.conv2.forward(&x, train)
    }
}

/// smp's `MAnetDecoder`.
///
/// Input: the encoder's maps, full resolution first, each half the size of the one
/// before. Output: one `[B, decoder_channels[-1], H0, W0]` map.
#[derive(Debug)]
pub struct MAnetDecoder {
    center: PabBlock,
    blocks: Vec<Block>,
    cfg: Config,
}

impl MAnetDecoder {
    /// Builds the decoder under `p` (parameters `p.center....`, `p.blocks.N....`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let head = *cfg.encoder_channels.last().expect("validated");
        let center = PabBlock::new(&p / "center", head, cfg.pab_channels);
        let bp = &p / "blocks";
        let blocks = block_channels(&cfg.encoder_channels, &cfg.decoder_channels)
            .into_iter()
            .enumerate()
            .map(|(i, (ci, cs, co))| Block::new(&bp / i, ci, cs, co, cfg))
            .collect();
        Ok(Self {
            center,
            blocks,
            cfg: cfg.clone(),
        })
    }
}

impl Model for MAnetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        check_maps_from("MAnet", xs, &self.cfg.encoder_channels, 1)?;
        let feats: Vec<&Tensor> = xs[1..].iter().rev().collect();
        let mut x = self.center.forward(feats[0])?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, feats.get(i + 1).copied(), train)?;
        }
        Ok(vec![x])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![*self.cfg.decoder_channels.last().unwrap_or(&0)]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.decoder_channels = ctx.args.get("decoder_channels")?;
    cfg.pab_channels = ctx.args.get("decoder_pab_channels")?;
    ctx.args.ensure(
        cfg.pab_channels > 0,
        "decoder_pab_channels",
        format_args!("must be positive, got {}", cfg.pab_channels),
    )?;
    cfg.use_norm = args::use_norm(ctx)?;
    cfg.interpolation_mode = args::interpolation(ctx)?;
    args::check_stage_channels(ctx, &cfg.decoder_channels)?;
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
    let out = *cfg.decoder_channels.last().unwrap_or(&0);
    Ok((Box::new(MAnetDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = *cfg.decoder_channels.last().unwrap_or(&0);
    SmpDecoderWrapper::build(ctx, out, |p| MAnetDecoder::new(p, &cfg))
}

/// The `smp_MAnet` entry.
pub(crate) fn entry() -> Entry {
    let e = wrapper::entry(
        "MAnet",
        "MA-Net decoder of segmentation_models_pytorch (smp.MAnet's decoder, as TerraTorch's SMPRegistry wraps it): \
         position attention on the deepest map, then multi-scale fusion attention blocks that upsample 2x and merge \
         each shallower map (full resolution first, each half the previous size; depth = number of maps - 1); \
         returns one map with decoder_channels[-1] channels at the first map's resolution.",
        build,
    )
    .opt(
        "decoder_channels",
        ParamType::INT_LIST,
        json!([256, 128, 64, 32, 16]),
        "output channels of each decoder block, deepest first; one per block (len(channels) - 1 values)",
    )
    .opt(
        "decoder_pab_channels",
        ParamType::INT,
        json!(64),
        "channels of the position attention block's query and key projections",
    );
    args::declare_use_norm(e).opt(
        "decoder_interpolation",
        ParamType::STR,
        json!("nearest"),
        "2x upsampling mode: \"nearest\", \"bilinear\", \"bicubic\", \"area\" or \"nearest-exact\"",
    )
}
