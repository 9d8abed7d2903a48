//! The FPN decoder of segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/decoders/fpn/decoder.py` (`FPNDecoder`, `FPNBlock`,
//! `SegmentationBlock`, `Conv3x3GNReLU`, `MergeBlock`) as
//! `segmentation_models_pytorch/decoders/fpn/model.py` (`FPN`) builds it.
//!
//! TerraTorch (`terratorch/registry/smp_registry.py`) builds `smp.FPN` around a dummy
//! encoder whose channel list is the given one, with
//! `encoder_depth = len(channels) - 1`; the decoder reads the last four maps.
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

use super::args;
use super::blocks::{conv2d, dropout2d, hw, Interpolation};
use super::checks::{check_channels, check_maps, check_width};
use super::wrapper::{self, SmpDecoderWrapper};

/// How the four pyramid levels are merged (smp's `decoder_merge_policy`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MergePolicy {
    /// Sum: the output has `segmentation_channels` channels.
    Add,
    /// Concatenation: the output has `4 * segmentation_channels` channels.
    Cat,
}

/// Configuration of [`FpnDecoder`], with smp's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Channels of every encoder feature map, the full-resolution one first.
    pub encoder_channels: Vec<i64>,
    /// Channels of the pyramid (smp's `decoder_pyramid_channels`).
    pub pyramid_channels: i64,
    /// Channels of each segmentation branch (smp's `decoder_segmentation_channels`);
    /// a multiple of 32, as each branch uses `GroupNorm(32, C)`.
    pub segmentation_channels: i64,
    /// Merge of the four branches.
    pub merge_policy: MergePolicy,
    /// `Dropout2d` probability on the merged map (smp's `decoder_dropout`).
    pub dropout: f64,
    /// Top-down upsampling mode (smp's `decoder_interpolation`).
    pub interpolation_mode: Interpolation,
}

impl Config {
    /// Groups of every `GroupNorm` (fixed in smp).
    pub const GROUPS: i64 = 32;

    /// smp's defaults (pyramid 256, segmentation 128, "add", dropout 0.2, "nearest").
    pub fn new(encoder_channels: Vec<i64>) -> Self {
        Self {
            encoder_channels,
            pyramid_channels: 256,
            segmentation_channels: 128,
            merge_policy: MergePolicy::Add,
            dropout: 0.2,
            interpolation_mode: Interpolation::Nearest,
        }
    }

    /// smp's `encoder_depth`, as TerraTorch sets it.
    pub fn depth(&self) -> usize {
        self.encoder_channels.len().saturating_sub(1)
    }

    /// The channels of the decoder's output (smp's `FPNDecoder.out_channels`).
    pub fn out_channels(&self) -> i64 {
        match self.merge_policy {
            MergePolicy::Add => self.segmentation_channels,
            MergePolicy::Cat => 4 * self.segmentation_channels,
        }
    }

    /// Checks what smp and torch check when building.
    pub fn validate(&self) -> Result<()> {
        if self.depth() < 3 {
            return Err(PluginError::invalid_argument(format!(
                "Encoder depth for FPN decoder cannot be less than 3, got {}. (The depth is the length of the \
                 channel list {:?} minus one; FPN reads the last four maps.)",
                self.depth(),
                self.encoder_channels
            )));
        }
        check_channels("FPN", &self.encoder_channels, 4, "depth 3 or more")?;
        check_width("decoder_pyramid_channels", self.pyramid_channels)?;
        if self.segmentation_channels <= 0 || self.segmentation_channels % Self::GROUPS != 0 {
            return Err(PluginError::invalid_argument(format!(
                "`decoder_segmentation_channels` must be a positive multiple of {g}: each segmentation branch \
                 normalises with GroupNorm({g}, channels) (num_channels ({c}) must be divisible by num_groups ({g}))",
                c = self.segmentation_channels,
                g = Self::GROUPS
            )));
        }
        Ok(())
    }
}

/// smp's `Conv3x3GNReLU`: 3x3 conv (no bias), `GroupNorm(32)`, ReLU, then optionally
/// a bilinear x2 upsampling (align_corners=True). Named `block.0`, `block.1`.
#[derive(Debug)]
struct Conv3x3GnRelu {
    conv: nn::Conv2D,
    gn: nn::GroupNorm,
    upsample: bool,
}

impl Conv3x3GnRelu {
    fn new(p: nn::Path, c_in: i64, c_out: i64, upsample: bool) -> Self {
        let b = &p / "block";
        Self {
            conv: conv2d(&b / 0, c_in, c_out, 3, 1, false),
            gn: nn::group_norm(&b / 1, Config::GROUPS, c_out, Default::default()),
            upsample,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.apply(&self.conv);
        // PyTorch's F.group_norm refuses groups of a single value (their variance is
        // undefined), also in eval mode; refuse them the same way.
        let s = y.size();
        if s[0] * (s[1] / Config::GROUPS) * s[2] * s[3] == 1 {
            return Err(PluginError::forward_failed(format!(
                "FPN's GroupNorm({}, {}) would see a single value per group on a {:?} map (PyTorch refuses this: \
                 \"Expected more than 1 value per channel\"); feed larger feature maps or a bigger batch",
                Config::GROUPS,
                s[1],
                s
            )));
        }
        let y = y.apply(&self.gn).f_relu()?;
        if self.upsample {
            let (h, w) = hw(&y);
            Interpolation::Bilinear.resize_aligned(&y, 2 * h, 2 * w, true)
        } else {
            Ok(y)
        }
    }
}

/// smp's `FPNBlock`: upsample x2, add the 1x1-projected skip.
#[derive(Debug)]
struct FpnBlock {
    skip_conv: nn::Conv2D,
    mode: Interpolation,
}

impl FpnBlock {
    fn forward(&self, x: &Tensor, skip: &Tensor) -> Result<Tensor> {
        let (h, w) = hw(x);
        // F.interpolate(scale_factor=2.0): [h, w] -> [2h, 2w]
        let up = self.mode.resize(x, 2 * h, 2 * w)?;
        let skip = skip.apply(&self.skip_conv);
        if hw(&up) != hw(&skip) {
            return Err(PluginError::forward_failed(format!(
                "FPN doubles a {h}x{w} pyramid level to {}x{} but the next shallower feature map is {}x{}; each of \
                 the last four maps must be half the size of the one before it",
                2 * h,
                2 * w,
                hw(&skip).0,
                hw(&skip).1
            )));
        }
        Ok(up.f_add(&skip)?)
    }
}

/// smp's `FPNDecoder`: a top-down pyramid on the last four maps, one segmentation
/// branch per level (each brought to the finest level's size), merged.
///
/// Output: one `[B, out_channels, H, W]` map at the resolution of the fourth map
/// from the end (stride 4 for a standard encoder; smp's head upsamples it by 4).
#[derive(Debug)]
pub struct FpnDecoder {
    p5: nn::Conv2D,
    /// `p4`, `p3`, `p2`.
    blocks: Vec<FpnBlock>,
    /// `seg_blocks.0..3`, with 3, 2, 1 and 0 upsamplings.
    seg_blocks: Vec<Vec<Conv3x3GnRelu>>,
    cfg: Config,
}

impl FpnDecoder {
    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        // Deepest first: c5, c4, c3, c2.
        let enc: Vec<i64> = cfg.encoder_channels.iter().rev().copied().collect();
        let pc = cfg.pyramid_channels;
        let sc = cfg.segmentation_channels;
        let p5 = conv2d(&p / "p5", enc[0], pc, 1, 0, true);
        let blocks = ["p4", "p3", "p2"]
            .iter()
            .enumerate()
            .map(|(i, name)| FpnBlock {
                skip_conv: conv2d(&p / *name / "skip_conv", enc[i + 1], pc, 1, 0, true),
                mode: cfg.interpolation_mode,
            })
            .collect();
        let seg_p = &p / "seg_blocks";
        let seg_blocks = [3usize, 2, 1, 0]
            .iter()
            .enumerate()
            .map(|(i, &n_up)| {
                let q = &seg_p / i / "block";
                let mut convs = vec![Conv3x3GnRelu::new(&q / 0, pc, sc, n_up > 0)];
                convs.extend((1..n_up).map(|j| Conv3x3GnRelu::new(&q / j, sc, sc, true)));
                convs
            })
            .collect();
        Ok(Self {
            p5,
            blocks,
            seg_blocks,
            cfg: cfg.clone(),
        })
    }
}

impl Model for FpnDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let n = self.cfg.encoder_channels.len();
        check_maps(
            "FPN",
            xs,
            &self.cfg.encoder_channels,
            &[n - 4, n - 3, n - 2, n - 1],
        )?;
        // Top-down: p5 from c5, then p4, p3, p2 each from the level above and its skip.
        let mut levels = vec![xs[n - 1].apply(&self.p5)];
        for (i, block) in self.blocks.iter().enumerate() {
            let next = block.forward(levels.last().expect("non-empty"), &xs[n - 2 - i])?;
            levels.push(next);
        }
        let branches = levels
            .iter()
            .zip(&self.seg_blocks)
            .map(|(x, convs)| {
                convs
                    .iter()
                    .try_fold(x.shallow_clone(), |y, c| c.forward(&y))
            })
            .collect::<Result<Vec<_>>>()?;
        let merged = match self.cfg.merge_policy {
            // torch.stack(x).sum(0)
            MergePolicy::Add => Tensor::f_stack(&branches, 0)?.f_sum_dim_intlist(0, false, None)?,
            // 4 x [B, C, H, W] -> [B, 4C, H, W]
            MergePolicy::Cat => Tensor::f_cat(&branches, 1)?,
        };
        Ok(vec![dropout2d(merged, self.cfg.dropout, train)?])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.out_channels()]
    }
}

fn config(ctx: &BuildCtx<'_, '_>) -> Result<Config> {
    let mut cfg = Config::new(ctx.channels.clone());
    cfg.pyramid_channels = ctx.args.get("decoder_pyramid_channels")?;
    cfg.segmentation_channels = ctx.args.get("decoder_segmentation_channels")?;
    let policy: String = ctx.args.get("decoder_merge_policy")?;
    cfg.merge_policy = match policy.as_str() {
        "add" => MergePolicy::Add,
        "cat" => MergePolicy::Cat,
        other => {
            return Err(PluginError::invalid_argument(format!(
            "argument `decoder_merge_policy` of `{}` must be one of: ['add', 'cat'], got {other:?}",
            ctx.qualified()
        )))
        }
    };
    cfg.dropout = ctx.args.get("decoder_dropout")?;
    args::check_dropout(ctx, "decoder_dropout", cfg.dropout)?;
    cfg.interpolation_mode = args::interpolation(ctx)?;
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
    let out = cfg.out_channels();
    Ok((Box::new(FpnDecoder::new(p, &cfg)?), out))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = config(ctx)?;
    let out = cfg.out_channels();
    // smp's segmentation head reads FPNDecoder.out_channels.
    SmpDecoderWrapper::build(ctx, out, |p| FpnDecoder::new(p, &cfg))
}

/// The `smp_FPN` entry of the decoder registry.
pub(crate) fn entry() -> Entry {
    wrapper::entry(
        "FPN",
        "Feature Pyramid Network decoder of segmentation_models_pytorch (smp.FPN's decoder, as TerraTorch's \
             SMPRegistry wraps it): a top-down pyramid over the last four feature maps (each half the size of the \
             one before), a conv-GroupNorm-ReLU branch per level brought to the finest level's size, merged by sum \
             or concatenation; needs at least four maps and returns one map at the fourth-from-last map's \
             resolution.",
        build,
    )
    .opt("decoder_pyramid_channels", ParamType::INT, json!(256), "channels of the pyramid levels")
    .opt(
        "decoder_segmentation_channels",
        ParamType::INT,
        json!(128),
        "channels of each segmentation branch (a multiple of 32: GroupNorm(32))",
    )
    .opt(
        "decoder_merge_policy",
        ParamType::STR,
        json!("add"),
        "\"add\" (output: segmentation channels) or \"cat\" (output: 4 x segmentation channels)",
    )
    .opt("decoder_dropout", ParamType::FLOAT, json!(0.2), "Dropout2d probability on the merged map")
    .opt(
        "decoder_interpolation",
        ParamType::STR,
        json!("nearest"),
        "top-down upsampling mode: \"nearest\", \"bilinear\", \"bicubic\", \"area\" or \"nearest-exact\"",
    )
}
