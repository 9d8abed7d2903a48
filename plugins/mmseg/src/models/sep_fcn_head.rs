//! mmsegmentation 1.2.2's `DepthwiseSeparableFCNHead`
//! (`mmseg/models/decode_heads/sep_fcn_head.py`, Fast-SCNN's head): `FCNHead`
//! (`fcn_head.py`) with every convolution replaced by mmcv's
//! `DepthwiseSeparableConvModule`.
use super::conv_module::{ActCfg, ConvModuleCfg, ConvOpts, DepthwiseSeparableConvModule};
use super::decode_head::{act_arg, arg_error, fcn_params, head_entry, BaseCfg, ClsSeg};
use super::fcn_head::{self, MmsegDecoderWrapper};
use serde_json::Value;
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The `BaseDecodeHead` view of an FCNHead configuration (for input selection).
pub(crate) fn fcn_base(cfg: &fcn_head::Config) -> BaseCfg {
    BaseCfg {
        in_channels: cfg.in_channels.clone(),
        channels: cfg.channels,
        num_classes: cfg.num_classes,
        out_channels: cfg.out_channels,
        dropout_ratio: cfg.dropout_ratio,
        conv: cfg.conv.clone(),
        in_index: cfg.in_index.clone(),
        input_transform: cfg.input_transform,
        align_corners: cfg.align_corners,
    }
}

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
        let base = fcn_base(cfg);
        let c_in = base.single_in_channels();
        let (k, ch) = (cfg.kernel_size, cfg.channels);
        let opts = ConvOpts::padding(k / 2);
        let dw = ConvModuleCfg {
            norm_cfg: cfg.conv.norm_cfg.clone(),
            act_cfg: dw_act_cfg,
        };
        let pw = ConvModuleCfg {
            norm_cfg: cfg.conv.norm_cfg.clone(),
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
            .concat_input
            .then(|| {
                DepthwiseSeparableConvModule::new(&p / "conv_cat", c_in + ch, ch, k, opts, &dw, &pw)
            })
            .transpose()?;
        let cls = ClsSeg::new(&p, ch, base.seg_channels(), base.dropout_ratio);
        Ok(Self {
            base,
            convs,
            conv_cat,
            cls,
        })
    }
}

impl Model for SepFcnHead {
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

    fn out_channels(&self) -> Vec<i64> {
        vec![self.base.seg_channels()]
    }

    fn includes_head(&self) -> bool {
        true
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = crate::fcn_config(ctx)?;
    let dw_act = act_arg(ctx, "dw_act_cfg")?;
    if ctx.args.raw("dw_act_cfg").is_some_and(|v| !v.is_object()) {
        return Err(arg_error(
            ctx,
            "dw_act_cfg",
            "must be None or a dict like {\"type\": \"ReLU\"}",
        ));
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MmsegDecoderWrapper::new(vs.root(), |p| SepFcnHead::new(p, &cfg, dw_act))
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// The `DepthwiseSeparableFCNHead` entry.
pub(crate) fn entry() -> Entry {
    let e = head_entry(
        "DepthwiseSeparableFCNHead",
        "FCNHead of mmsegmentation with depthwise-separable convs (Fast-SCNN's head; includes its own classifier): \
         num_convs depthwise-separable convs (depthwise: norm_cfg + dw_act_cfg; pointwise: norm_cfg + ReLU, as \
         upstream, which does not pass act_cfg or dilation to them), optionally fused with the input (conv_cat), \
         then dropout and conv_seg at the map's resolution.",
        build,
    )
    .opt("dw_act_cfg", ParamType::ANY, Value::Null, "activation after the depthwise convs: None (none) or a dict");
    fcn_params(e)
}
