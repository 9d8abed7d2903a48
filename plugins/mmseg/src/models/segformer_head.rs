//! mmsegmentation 1.2.2's `SegformerHead`
//! (`mmseg/models/decode_heads/segformer_head.py`): SegFormer's all-MLP decoder,
//! 1x1 convs per level, resized to the first map and fused. It fixes
//! `input_transform="multiple_select"`.
use super::conv_module::{ActCfg, ConvModule, ConvModuleCfg};
use super::decode_head::{
    arg_error, build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// The resize mode of `SegformerHead` (`interpolate_mode`). mmseg always passes
/// `align_corners`, which PyTorch allows only for the interpolating modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterpolateMode {
    /// `'bilinear'`.
    Bilinear,
    /// `'bicubic'`.
    Bicubic,
}

impl InterpolateMode {
    /// Parses mmseg's name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bilinear" => Ok(Self::Bilinear),
            "bicubic" => Ok(Self::Bicubic),
            "nearest" | "area" | "nearest-exact" => Err(format!(
                "{s:?} is not usable: SegformerHead always passes align_corners to F.interpolate, which PyTorch \
                 refuses for {s:?}; use \"bilinear\" or \"bicubic\""
            )),
            other => Err(format!("must be \"bilinear\" or \"bicubic\", got {other:?}")),
        }
    }
}

/// mmseg's `SegformerHead`.
///
/// Input: the feature maps (one per channel-list entry via `in_index`). Output:
/// logits at the first selected map's resolution.
#[derive(Debug)]
pub struct SegformerHead {
    base: BaseCfg,
    mode: InterpolateMode,
    convs: Vec<ConvModule>,
    fusion_conv: ConvModule,
    cls: ClsSeg,
}

impl SegformerHead {
    /// Builds the head under `p` (`convs.N`, `fusion_conv`, `conv_seg`).
    pub fn new(p: nn::Path, base: &BaseCfg, mode: InterpolateMode) -> Result<Self> {
        let ch = base.channels;
        let cp = &p / "convs";
        let convs = base
            .in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| ConvModule::new(&cp / i, c, ch, 1, 0, 1, &base.conv))
            .collect::<Result<Vec<_>>>()?;
        // fusion_conv gets norm_cfg but ConvModule's default activation, not act_cfg
        let fusion_cfg = ConvModuleCfg {
            norm_cfg: base.conv.norm_cfg.clone(),
            act_cfg: Some(ActCfg::ReLU),
        };
        let n = base.in_channels.len() as i64;
        let fusion_conv = ConvModule::new(&p / "fusion_conv", ch * n, ch, 1, 0, 1, &fusion_cfg)?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            mode,
            convs,
            fusion_conv,
            cls,
        })
    }
}

impl DecodeHead for SegformerHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = self.base.select(xs)?;
        let s = inputs[0].size();
        let ac = self.base.align_corners;
        let outs = inputs
            .iter()
            .zip(&self.convs)
            .map(|(x, conv)| {
                let y = conv.forward(x, train)?;
                Ok(match self.mode {
                    InterpolateMode::Bilinear => {
                        y.f_upsample_bilinear2d([s[2], s[3]], ac, None, None)?
                    }
                    InterpolateMode::Bicubic => {
                        y.f_upsample_bicubic2d([s[2], s[3]], ac, None, None)?
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // [B, n * channels, h0, w0] -> [B, channels, h0, w0]
        let out = self.fusion_conv.forward(&Tensor::f_cat(&outs, 1)?, train)?;
        Ok(vec![self.cls.forward(&out, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::MULTIPLE)?;
    let mode = InterpolateMode::parse(&ctx.args.get::<String>("interpolate_mode")?)
        .map_err(|why| arg_error(ctx, "interpolate_mode", why))?;
    build_wrapped(ctx, |p| SegformerHead::new(p, &base, mode))
}

/// The `SegformerHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "SegformerHead",
        "SegFormer's all-MLP decode head of mmsegmentation (includes its own classifier): a 1x1 ConvModule per \
         selected map, each resized to the first selected map, concatenated and fused by a 1x1 fusion_conv (norm_cfg, \
         ReLU), then dropout and conv_seg. Needs in_index as a list (one per channel-list entry, at least two).",
        build,
        |e| {
            e
    .opt(
        "interpolate_mode",
        ParamType::STR,
        json!("bilinear"),
        "resize mode of the per-level outputs: \"bilinear\" or \"bicubic\"",
    )
        },
        BaseParams::multiple_select(),
    )
}
