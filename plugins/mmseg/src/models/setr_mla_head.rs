//! mmsegmentation 1.2.2's `SETRMLAHead` (`mmseg/models/decode_heads/setr_mla_head.py`):
//! SETR's multi-level aggregation head. It fixes `input_transform="multiple_select"`.
use super::conv_module::ConvModule;
use super::decode_head::{
    build_wrapped, head_entry, upsample, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// mmseg's `SETRMLAHead`.
///
/// Input: the feature maps (one per channel-list entry via `in_index`), which must
/// have the same size. Output: logits at that size times `up_scale`.
#[derive(Debug)]
pub struct SetrMlaHead {
    base: BaseCfg,
    up_convs: Vec<[ConvModule; 2]>,
    up_scale: f64,
    cls: ClsSeg,
}

impl SetrMlaHead {
    /// Builds the head under `p` (`up_convs.N.{0,1}`, `conv_seg`).
    pub fn new(p: nn::Path, base: &BaseCfg, mla_channels: i64, up_scale: f64) -> Result<Self> {
        let n = base.in_channels.len() as i64;
        if mla_channels <= 0 || base.channels != n * mla_channels {
            return Err(PluginError::invalid_argument(format!(
                "argument `channels` ({}) must equal the number of selected maps ({n}) times `mla_channels` \
                 ({mla_channels})",
                base.channels
            )));
        }
        let up = &p / "up_convs";
        let up_convs = base
            .in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                Ok([
                    ConvModule::new(&up / i / 0, c, mla_channels, 3, 1, 1, &base.conv)?,
                    ConvModule::new(&up / i / 1, mla_channels, mla_channels, 3, 1, 1, &base.conv)?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            up_convs,
            up_scale,
            cls,
        })
    }
}

impl DecodeHead for SetrMlaHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = self.base.select(xs)?;
        let outs = inputs
            .iter()
            .zip(&self.up_convs)
            .map(|(x, [c0, c1])| {
                let y = c1.forward(&c0.forward(x, train)?, train)?;
                upsample(&y, self.up_scale, self.base.align_corners)
            })
            .collect::<Result<Vec<_>>>()?;
        // [B, n * mla_channels, H', W']
        let out = Tensor::f_cat(&outs, 1)?;
        Ok(vec![self.cls.forward(&out, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::MULTIPLE)?;
    let mla: i64 = ctx.args.get("mla_channels")?;
    let up_scale = super::setr_up_head::up_scale_arg(ctx)?;
    build_wrapped(ctx, |p| SetrMlaHead::new(p, &base, mla, up_scale))
}

/// The `SETRMLAHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "SETRMLAHead",
        "SETR's multi-level aggregation decode head of mmsegmentation (SETR-MLA; includes its own classifier): per \
         selected map two 3x3 ConvModules to mla_channels and a bilinear upsample by up_scale, concatenated (the maps \
         must have the same size), then dropout and conv_seg; channels must be n_maps * mla_channels.",
        build,
        |e| {
            e
    .opt("mla_channels", ParamType::INT, json!(128), "channels of each level's branch")
    .opt("up_scale", ParamType::FLOAT, json!(4), "scale factor of each branch's bilinear upsample")
        },
        BaseParams::multiple_select(),
    )
}
