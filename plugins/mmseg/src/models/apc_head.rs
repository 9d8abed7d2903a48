//! mmsegmentation 1.2.2's `APCHead` (`mmseg/models/decode_heads/apc_head.py`,
//! APCNet): adaptive context modules (`ACM`) at several pooling scales, built as
//! TerraTorch's `MMSegRegistry` builds it.
use super::conv_module::{torch_conv2d, ConvModule, ConvModuleCfg};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// mmseg's `ACM`: region features pooled to `pool_scale`², mixed into every
/// position with learned (sigmoid) affinities.
#[derive(Debug)]
struct Acm {
    pool_scale: i64,
    channels: i64,
    pooled_redu_conv: ConvModule,
    input_redu_conv: ConvModule,
    global_info: ConvModule,
    gla: nn::Conv2D,
    residual_conv: ConvModule,
    fusion_conv: Option<ConvModule>,
}

impl Acm {
    fn new(
        p: nn::Path,
        pool_scale: i64,
        fusion: bool,
        c_in: i64,
        c: i64,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let cm = |name: &str, from: i64| ConvModule::new(&p / name, from, c, 1, 0, 1, cfg);
        Ok(Self {
            pool_scale,
            channels: c,
            pooled_redu_conv: cm("pooled_redu_conv", c_in)?,
            input_redu_conv: cm("input_redu_conv", c_in)?,
            global_info: cm("global_info", c)?,
            gla: torch_conv2d(&p / "gla", c, pool_scale * pool_scale, 1, 0, true),
            residual_conv: cm("residual_conv", c)?,
            fusion_conv: fusion.then(|| cm("fusion_conv", c)).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = self.pool_scale;
        let pooled = x.f_adaptive_avg_pool2d([s, s])?;
        let x = self.input_redu_conv.forward(x, train)?;
        let size = x.size();
        let (b, h, w) = (size[0], size[2], size[3]);
        // [B, C, s, s] -> [B, s*s, C]
        let pooled = self
            .pooled_redu_conv
            .forward(&pooled, train)?
            .f_reshape([b, self.channels, -1])?
            .f_permute([0, 2, 1])?;
        let global = self
            .global_info
            .forward(&x.f_adaptive_avg_pool2d([1, 1])?, train)?;
        let global = global.f_upsample_nearest2d([h, w], None, None)?;
        // [B, s*s, h, w] -> [B, h*w, s*s]
        let affinity = x
            .f_add(&global)?
            .apply(&self.gla)
            .f_permute([0, 2, 3, 1])?
            .f_reshape([b, -1, s * s])?
            .f_sigmoid()?;
        // [B, h*w, C] -> [B, C, h, w]
        let z = affinity
            .f_matmul(&pooled)?
            .f_permute([0, 2, 1])?
            .f_contiguous()?
            .f_reshape([b, self.channels, h, w])?;
        let z = self.residual_conv.forward(&z, train)?.f_add(&x)?.f_relu()?;
        match &self.fusion_conv {
            Some(f) => f.forward(&z, train),
            None => Ok(z),
        }
    }
}

/// mmseg's `APCHead`.
#[derive(Debug)]
pub struct ApcHead {
    base: BaseCfg,
    acm_modules: Vec<Acm>,
    bottleneck: ConvModule,
    conv_seg: ClsSeg,
}

impl ApcHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, pool_scales: &[i64], fusion: bool) -> Result<Self> {
        let (c_in, c) = (base.in_ch(), base.channels);
        let acm_modules = pool_scales
            .iter()
            .enumerate()
            .map(|(i, &s)| Acm::new(&p / "acm_modules" / i, s, fusion, c_in, c, &base.conv))
            .collect::<Result<Vec<_>>>()?;
        let n = pool_scales.len() as i64;
        Ok(Self {
            acm_modules,
            bottleneck: ConvModule::new(&p / "bottleneck", c_in + n * c, c, 3, 1, 1, &base.conv)?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }
}

impl DecodeHead for ApcHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let mut outs = vec![x.shallow_clone()];
        for acm in &self.acm_modules {
            outs.push(acm.forward(&x, train)?);
        }
        let y = self.bottleneck.forward(&Tensor::f_cat(&outs, 1)?, train)?;
        Ok(vec![self.conv_seg.forward(&y, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let scales = ctx.args.get::<Vec<i64>>("pool_scales")?;
    ctx.args.ensure(
        scales.iter().all(|&s| s >= 1),
        "pool_scales",
        format_args!("must be positive integers, got {scales:?}"),
    )?;
    let fusion = ctx.args.get("fusion")?;
    build_wrapped(ctx, |p| ApcHead::new(p, &base, &scales, fusion))
}

/// The `APCHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "APCHead",
        "Adaptive pyramid context decode head of mmsegmentation (APCNet; includes its own classifier): one adaptive \
         context module per pooling scale (pooled region features mixed into each position by learned affinities), \
         concatenated with the input, a bottleneck conv, then dropout and a 1x1 conv_seg to class logits at the \
         feature map's resolution.",
        build,
        |e| {
            e.opt("pool_scales", ParamType::INT_LIST, json!([1, 2, 3, 6]), "pooling scales of the context modules")
                .opt("fusion", ParamType::BOOL, json!(true), "add a 1x1 fusion conv to each context module")
        },
        BaseParams::default(),
    )
}
