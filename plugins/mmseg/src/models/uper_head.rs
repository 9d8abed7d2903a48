//! mmsegmentation 1.2.2's `UPerHead` (`mmseg/models/decode_heads/uper_head.py`):
//! UPerNet's decode head, a pyramid pooling module on the last map plus an FPN over
//! the others. It fixes `input_transform="multiple_select"`.
use super::conv_module::ConvModule;
use super::decode_head::{
    build_wrapped, head_entry, resize, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::psp_head::{pool_scales_arg, Ppm};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// mmseg's `UPerHead`.
///
/// Input: the feature maps; `in_index` selects one per channel-list entry, finest
/// first. Output: `[B, out_channels, h0, w0]` logits at the first selected map's
/// resolution.
#[derive(Debug)]
pub struct UperHead {
    base: BaseCfg,
    psp_modules: Ppm,
    bottleneck: ConvModule,
    lateral_convs: Vec<ConvModule>,
    fpn_convs: Vec<ConvModule>,
    fpn_bottleneck: ConvModule,
    cls: ClsSeg,
}

impl UperHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, pool_scales: &[i64]) -> Result<Self> {
        let ch = base.channels;
        let n = base.in_channels.len();
        let last = base.in_channels[n - 1];
        let psp_modules = Ppm::new(
            &(&p / "psp_modules"),
            pool_scales,
            last,
            ch,
            &base.conv,
            base.align_corners,
        )?;
        let bottleneck = ConvModule::new(
            &p / "bottleneck",
            last + pool_scales.len() as i64 * ch,
            ch,
            3,
            1,
            1,
            &base.conv,
        )?;
        let (lp, fp) = (&p / "lateral_convs", &p / "fpn_convs");
        let mut lateral_convs = Vec::new();
        let mut fpn_convs = Vec::new();
        for (i, &c) in base.in_channels[..n - 1].iter().enumerate() {
            lateral_convs.push(ConvModule::new(&lp / i, c, ch, 1, 0, 1, &base.conv)?);
            fpn_convs.push(ConvModule::new(&fp / i, ch, ch, 3, 1, 1, &base.conv)?);
        }
        let fpn_bottleneck = ConvModule::new(
            &p / "fpn_bottleneck",
            n as i64 * ch,
            ch,
            3,
            1,
            1,
            &base.conv,
        )?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            psp_modules,
            bottleneck,
            lateral_convs,
            fpn_convs,
            fpn_bottleneck,
            cls,
        })
    }
}

impl DecodeHead for UperHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = self.base.select(xs)?;
        let ac = self.base.align_corners;
        let mut laterals = self
            .lateral_convs
            .iter()
            .zip(&inputs)
            .map(|(conv, x)| conv.forward(x, train))
            .collect::<Result<Vec<_>>>()?;
        // pyramid pooling on the coarsest map
        let top = &inputs[inputs.len() - 1];
        let mut psp = vec![top.shallow_clone()];
        psp.extend(self.psp_modules.forward(top, train)?);
        laterals.push(self.bottleneck.forward(&Tensor::f_cat(&psp, 1)?, train)?);
        // top-down: add each level, upsampled, to the next finer one
        let n = laterals.len();
        for i in (1..n).rev() {
            let s = laterals[i - 1].size();
            let up = resize(&laterals[i], s[2], s[3], ac)?;
            laterals[i - 1] = laterals[i - 1].f_add(&up)?;
        }
        let mut outs = self
            .fpn_convs
            .iter()
            .zip(&laterals)
            .map(|(conv, x)| conv.forward(x, train))
            .collect::<Result<Vec<_>>>()?;
        outs.push(laterals[n - 1].shallow_clone());
        let s = outs[0].size();
        for o in outs.iter_mut().skip(1) {
            *o = resize(o, s[2], s[3], ac)?;
        }
        // [B, n * channels, h0, w0] -> [B, channels, h0, w0]
        let feats = self
            .fpn_bottleneck
            .forward(&Tensor::f_cat(&outs, 1)?, train)?;
        Ok(vec![self.cls.forward(&feats, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::MULTIPLE)?;
    let scales = pool_scales_arg(ctx)?;
    build_wrapped(ctx, |p| UperHead::new(p, &base, &scales))
}

/// The `UPerHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "UPerHead",
        "Unified perceptual parsing decode head of mmsegmentation (UPerNet; includes its own classifier): a pyramid \
         pooling module on the last selected map and an FPN (1x1 lateral convs, top-down bilinear sums, 3x3 fpn \
         convs) over all of them, concatenated at the finest resolution and fused by a 3x3 fpn_bottleneck, then \
         dropout and conv_seg. Needs in_index as a list (one per channel-list entry, at least two).",
        build,
        |e| {
            e
    .opt("pool_scales", ParamType::INT_LIST, json!([1, 2, 3, 6]), "output sizes of the pyramid pooling module")
        },
        BaseParams::multiple_select(),
    )
}
