//! mmsegmentation 1.2.2's `DMHead` (`mmseg/models/decode_heads/dm_head.py`, DMNet):
//! dynamic convolution modules (`DCM`) whose depthwise filters are generated from
//! the input, built as TerraTorch's `MMSegRegistry` builds it.
use super::conv_module::{torch_conv2d, ActCfg, ConvModule, ConvModuleCfg, NormLayer};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// mmseg's `DCM`: a `filter_size`² depthwise filter per sample and channel.
#[derive(Debug)]
struct Dcm {
    filter_size: i64,
    filter_gen_conv: nn::Conv2D,
    input_redu_conv: ConvModule,
    norm: Option<NormLayer>,
    act: ActCfg,
    fusion_conv: Option<ConvModule>,
}

impl Dcm {
    fn new(
        p: nn::Path,
        filter_size: i64,
        fusion: bool,
        c_in: i64,
        c: i64,
        cfg: &ConvModuleCfg,
        act: &ActCfg,
    ) -> Result<Self> {
        Ok(Self {
            filter_size,
            filter_gen_conv: torch_conv2d(&p / "filter_gen_conv", c_in, c, 1, 0, true),
            input_redu_conv: ConvModule::new(&p / "input_redu_conv", c_in, c, 1, 0, 1, cfg)?,
            norm: cfg
                .norm_cfg
                .as_ref()
                .map(|n| NormLayer::new(&p / "norm", n, c))
                .transpose()?,
            act: act.clone(),
            fusion_conv: fusion
                .then(|| ConvModule::new(&p / "fusion_conv", c, c, 1, 0, 1, cfg))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let fs = self.filter_size;
        let filters = x
            .f_adaptive_avg_pool2d([fs, fs])?
            .apply(&self.filter_gen_conv);
        let x = self.input_redu_conv.forward(x, train)?;
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        // every (sample, channel) pair is one group of a grouped conv
        let x = x.f_reshape([1, b * c, h, w])?;
        let filters = filters.f_reshape([b * c, 1, fs, fs])?;
        let pad = (fs - 1) / 2;
        // even filters pad one more on the left and top
        let p2d = if (fs - 1) % 2 == 0 {
            [pad, pad, pad, pad]
        } else {
            [pad + 1, pad, pad + 1, pad]
        };
        let x = x.f_constant_pad_nd(p2d)?;
        let out = x
            .f_conv2d(&filters, None::<Tensor>, [1, 1], [0, 0], [1, 1], b * c)?
            .f_reshape([b, c, h, w])?;
        let out = match &self.norm {
            Some(n) => n.forward(&out, train),
            None => out,
        };
        let out = self.act.apply(&out)?;
        match &self.fusion_conv {
            Some(f) => f.forward(&out, train),
            None => Ok(out),
        }
    }
}

/// mmseg's `DMHead`.
#[derive(Debug)]
pub struct DmHead {
    base: BaseCfg,
    dcm_modules: Vec<Dcm>,
    bottleneck: ConvModule,
    conv_seg: ClsSeg,
}

impl DecodeHead for DmHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let mut outs = vec![x.shallow_clone()];
        for dcm in &self.dcm_modules {
            outs.push(dcm.forward(&x, train)?);
        }
        let y = self.bottleneck.forward(&Tensor::f_cat(&outs, 1)?, train)?;
        Ok(vec![self.conv_seg.forward(&y, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let sizes = ctx.args.get::<Vec<i64>>("filter_sizes")?;
    ctx.args.ensure(
        sizes.iter().all(|&s| s >= 1),
        "filter_sizes",
        format_args!("must be positive integers, got {sizes:?}"),
    )?;
    let fusion = ctx.args.get("fusion")?;
    // DCM builds its activation alone, and mmcv cannot build one from None.
    let act = base.conv.act_cfg.clone().ok_or_else(|| {
        PluginError::invalid_argument(format!(
            "argument `act_cfg` of `{}` must not be None: DMHead's dynamic conv modules need an activation (mmcv \
             fails to build one from None)",
            ctx.qualified()
        ))
    })?;
    build_wrapped(ctx, |p| {
        let (c_in, c) = (base.in_ch(), base.channels);
        let dcm_modules = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| Dcm::new(&p / "dcm_modules" / i, s, fusion, c_in, c, &base.conv, &act))
            .collect::<Result<Vec<_>>>()?;
        Ok(DmHead {
            dcm_modules,
            bottleneck: ConvModule::new(
                &p / "bottleneck",
                c_in + sizes.len() as i64 * c,
                c,
                3,
                1,
                1,
                &base.conv,
            )?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    })
}

/// The `DMHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "DMHead",
        "Dynamic multi-scale filter decode head of mmsegmentation (DMNet; includes its own classifier): one dynamic \
         conv module per filter size (depthwise filters generated from the pooled input), concatenated with the \
         input, a bottleneck conv, then dropout and a 1x1 conv_seg to class logits at the feature map's resolution.",
        build,
        |e| {
            e.opt("filter_sizes", ParamType::INT_LIST, json!([1, 3, 5, 7]), "sizes of the generated filters")
                .opt("fusion", ParamType::BOOL, json!(false), "add a 1x1 fusion conv to each dynamic conv module")
        },
        BaseParams::default(),
    )
}
