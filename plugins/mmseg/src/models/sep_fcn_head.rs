//! mmsegmentation 1.2.2's `DepthwiseSeparableFCNHead`
//! (`mmseg/models/decode_heads/sep_fcn_head.py`, Fast-SCNN's head): `FCNHead`
//! (`fcn_head.py`) with every convolution replaced by mmcv's
//! `DepthwiseSeparableConvModule`.
use super::conv_module::{ActCfg, ConvModuleCfg, ConvOpts, DepthwiseSeparableConvModule};
use super::decode_head::{
    act_arg, arg_error, build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead,
};
use super::fcn_head;
use serde_json::Value;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// mmseg's `DepthwiseSeparableFCNHead`.
///
/// As upstream, the depthwise-separable convs get `norm_cfg` and `dw_act_cfg` (depthwise
/// activation) but not `act_cfg` nor `dilation`: their pointwise activation is always
/// ReLU and they are not dilated.
#[derive(Debug)]
pub struct SepFcnHead {
    base: BaseCfg,
    convs: Vec<DepthwiseSeparableConvModule>,
    conv_cat: Option<DepthwiseSeparableConvModule>,
    cls: ClsSeg,
}

impl SepFcnHead {
    /// Builds the head under `p` (`convs.N`, `conv_cat`, `conv_seg`).
    pub fn new(p: nn::Path, cfg: &fcn_head::Config, dw_act_cfg: Option<ActCfg>) -> Result<Self> {
        cfg.validate()?;
        if cfg.num_convs < 1 {
            return Err(PluginError::invalid_argument(format!(
                "argument `num_convs` must be >= 1 for DepthwiseSeparableFCNHead (it replaces convs[0]; mmseg fails \
                 with 0), got {}",
                cfg.num_convs
            )));
        }
        let base = cfg.base.clone();
        let c_in = base.in_ch();
        let (k, ch) = (cfg.fcn.kernel_size, base.channels);
        let opts = ConvOpts::padding(k / 2);
        let dw = ConvModuleCfg {
            norm_cfg: base.conv.norm_cfg.clone(),
            act_cfg: dw_act_cfg,
        };
        let pw = ConvModuleCfg {
            norm_cfg: base.conv.norm_cfg.clone(),
            act_cfg: Some(ActCfg::ReLU),
        };
        let cp = &p / "convs";
        let convs = (0..cfg.num_convs)
            .map(|i| {
                DepthwiseSeparableConvModule::new(
                    &cp / i,
                    if i == 0 { c_in } else { ch },
                    ch,
                    k,
                    opts,
                    &dw,
                    &pw,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv_cat = cfg
            .fcn
            .concat_input
            .then(|| {
                DepthwiseSeparableConvModule::new(&p / "conv_cat", c_in + ch, ch, k, opts, &dw, &pw)
            })
            .transpose()?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base,
            convs,
            conv_cat,
            cls,
        })
    }
}

impl DecodeHead for SepFcnHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let mut feats = x.shallow_clone();
        for conv in &self.convs {
            feats = conv.forward(&feats, train)?;
        }
        if let Some(conv_cat) = &self.conv_cat {
            // [B, C_in + channels, h, w] -> [B, channels, h, w]
            feats = conv_cat.forward(&Tensor::f_cat(&[&x, &feats], 1)?, train)?;
        }
        Ok(vec![self.cls.forward(&feats, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = fcn_head::Config::from_ctx(ctx)?;
    let dw_act = act_arg(ctx, "dw_act_cfg")?;
    if ctx.args.raw("dw_act_cfg").is_some_and(|v| !v.is_object()) {
        return Err(arg_error(
            ctx,
            "dw_act_cfg",
            "must be None or a dict like {\"type\": \"ReLU\"}",
        ));
    }
    build_wrapped(ctx, |p| SepFcnHead::new(p, &cfg, dw_act))
}

/// The `DepthwiseSeparableFCNHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "DepthwiseSeparableFCNHead",
        "FCNHead of mmsegmentation with depthwise-separable convs (Fast-SCNN's head; includes its own classifier): \
         num_convs depthwise-separable convs (depthwise: norm_cfg + dw_act_cfg; pointwise: norm_cfg + ReLU, as \
         upstream, which does not pass act_cfg or dilation to them), optionally fused with the input (conv_cat), \
         then dropout and conv_seg at the map's resolution.",
        build,
        |e| {
            fcn_head::declare(
                e
    .opt("dw_act_cfg", ParamType::ANY, Value::Null, "activation after the depthwise convs: None (none) or a dict")
            )
        },
        BaseParams::default(),
    )
}
