//! mmsegmentation 1.2.2's `FPNHead` (`mmseg/models/decode_heads/fpn_head.py`): the
//! semantic FPN head of Panoptic FPN. It fixes `input_transform="multiple_select"`.
use super::conv_module::ConvModule;
use super::decode_head::{
    arg_error, build_wrapped, head_entry, resize, upsample, BaseCfg, BaseParams, ClsSeg,
    DecodeHead, Inputs,
};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// One scale head: `ConvModule`s, each followed by a x2 bilinear upsample unless the
/// level has the finest stride.
#[derive(Debug)]
struct ScaleHead {
    convs: Vec<ConvModule>,
    upsample: bool,
}

/// mmseg's `FPNHead`.
///
/// Input: the feature maps, finest first (`feature_strides[0]` is the smallest).
/// Output: logits at the first selected map's resolution.
#[derive(Debug)]
pub struct FpnHead {
    base: BaseCfg,
    scale_heads: Vec<ScaleHead>,
    cls: ClsSeg,
}

/// mmseg's head length of a level: `max(1, int(log2(s_i) - log2(s_0)))`.
fn head_length(s: i64, s0: i64) -> i64 {
    (((s as f64).log2() - (s0 as f64).log2()) as i64).max(1)
}

impl FpnHead {
    /// Builds the head under `p` (`scale_heads.I.K`, `conv_seg`).
    pub fn new(p: nn::Path, base: &BaseCfg, feature_strides: &[i64]) -> Result<Self> {
        if feature_strides.len() != base.in_channels.len() {
            return Err(PluginError::invalid_argument(format!(
                "argument `feature_strides` must have one entry per channel-list entry ({:?}), got {feature_strides:?}",
                base.in_channels
            )));
        }
        let s0 = feature_strides[0];
        if feature_strides.iter().any(|&s| s <= 0) || feature_strides.iter().any(|&s| s < s0) {
            return Err(PluginError::invalid_argument(format!(
                "argument `feature_strides` must be positive with the smallest first (mmseg asserts \
                 min(feature_strides) == feature_strides[0]), got {feature_strides:?}"
            )));
        }
        let ch = base.channels;
        let hp = &p / "scale_heads";
        let scale_heads = feature_strides
            .iter()
            .zip(&base.in_channels)
            .enumerate()
            .map(|(i, (&s, &c))| {
                let upsample = s != s0;
                // the upsample layers take Sequential slots between the convs
                let step = if upsample { 2 } else { 1 };
                let convs = (0..head_length(s, s0))
                    .map(|k| {
                        let c_in = if k == 0 { c } else { ch };
                        ConvModule::new(&hp / i / (k * step), c_in, ch, 3, 1, 1, &base.conv)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(ScaleHead { convs, upsample })
            })
            .collect::<Result<Vec<_>>>()?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            scale_heads,
            cls,
        })
    }
}

impl DecodeHead for FpnHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = self.base.select(xs)?;
        let ac = self.base.align_corners;
        let run = |head: &ScaleHead, x: &Tensor| -> Result<Tensor> {
            let mut y = x.shallow_clone();
            for conv in &head.convs {
                y = conv.forward(&y, train)?;
                if head.upsample {
                    y = upsample(&y, 2.0, ac)?;
                }
            }
            Ok(y)
        };
        let mut out = run(&self.scale_heads[0], &inputs[0])?;
        let s = out.size();
        for (head, x) in self.scale_heads.iter().zip(&inputs).skip(1) {
            out = out.f_add(&resize(&run(head, x)?, s[2], s[3], ac)?)?;
        }
        Ok(vec![self.cls.forward(&out, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::MULTIPLE)?;
    let strides: Vec<i64> = ctx.args.get("feature_strides")?;
    if strides.len() != base.in_channels.len() {
        return Err(arg_error(
            ctx,
            "feature_strides",
            format!(
                "must have one entry per channel-list entry ({:?}), got {strides:?}",
                base.in_channels
            ),
        ));
    }
    build_wrapped(ctx, |p| FpnHead::new(p, &base, &strides))
}

/// The `FPNHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "FPNHead",
        "Semantic FPN decode head of mmsegmentation (Panoptic FPN; includes its own classifier): per selected map a \
         scale head of 3x3 ConvModules, each followed by a x2 bilinear upsample for the coarser levels, summed at the \
         first map's resolution, then dropout and conv_seg. Needs in_index as a list (one per channel-list entry).",
        build,
        |e| {
            e
    .req(
        "feature_strides",
        ParamType::INT_LIST,
        "stride of each selected map, smallest first (e.g. [4, 8, 16, 32])",
    )
        },
        BaseParams::multiple_select(),
    )
}
