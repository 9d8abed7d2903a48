//! mmsegmentation 1.2.2's `PSPHead` and its pyramid pooling module `PPM`
//! (`mmseg/models/decode_heads/psp_head.py`), on top of `BaseDecodeHead`
//! (see [`super::decode_head`]).
use super::conv_module::{ConvModule, ConvModuleCfg};
use super::decode_head::{
    arg_error, build_wrapped, head_entry, resize, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// mmseg's `PPM`: for each pool scale, adaptive average pooling to `s` x `s`, a 1x1
/// `ConvModule` (`N.1`), and a bilinear resize back to the input's size.
#[derive(Debug)]
pub struct Ppm {
    scales: Vec<i64>,
    convs: Vec<ConvModule>,
    align_corners: bool,
}

impl Ppm {
    /// One branch per entry of `pool_scales` under `p / N / 1`.
    pub fn new(
        p: &nn::Path,
        pool_scales: &[i64],
        c_in: i64,
        channels: i64,
        conv: &ConvModuleCfg,
        align_corners: bool,
    ) -> Result<Self> {
        if pool_scales.is_empty() || pool_scales.iter().any(|&s| s <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "argument `pool_scales` must be a non-empty list of positive sizes, got {pool_scales:?}"
            )));
        }
        let convs = (0..pool_scales.len())
            .map(|i| ConvModule::new(p / i as i64 / 1, c_in, channels, 1, 0, 1, conv))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            scales: pool_scales.to_vec(),
            convs,
            align_corners,
        })
    }

    /// One `[B, channels, H, W]` map per pool scale.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let size = x.size();
        self.scales
            .iter()
            .zip(&self.convs)
            .map(|(&s, conv)| {
                let pooled = conv.forward(&x.f_adaptive_avg_pool2d([s, s])?, train)?;
                resize(&pooled, size[2], size[3], self.align_corners)
            })
            .collect()
    }
}

/// mmseg's `PSPHead`: the selected map, concatenated with its pyramid-pooled
/// versions, fused by a 3x3 `bottleneck` and classified (`conv_seg`) at the map's
/// resolution.
#[derive(Debug)]
pub struct PspHead {
    base: BaseCfg,
    psp_modules: Ppm,
    bottleneck: ConvModule,
    cls: ClsSeg,
}

impl PspHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, pool_scales: &[i64]) -> Result<Self> {
        let c_in = base.in_ch();
        let psp_modules = Ppm::new(
            &(&p / "psp_modules"),
            pool_scales,
            c_in,
            base.channels,
            &base.conv,
            base.align_corners,
        )?;
        let bottleneck = ConvModule::new(
            &p / "bottleneck",
            c_in + pool_scales.len() as i64 * base.channels,
            base.channels,
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
            cls,
        })
    }
}

impl DecodeHead for PspHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let mut outs = vec![x.shallow_clone()];
        outs.extend(self.psp_modules.forward(&x, train)?);
        // [B, C_in + n_scales * channels, H, W] -> [B, channels, H, W]
        let feats = self.bottleneck.forward(&Tensor::f_cat(&outs, 1)?, train)?;
        Ok(vec![self.cls.forward(&feats, train)?])
    }
}

/// Reads `pool_scales`.
pub(crate) fn pool_scales_arg(ctx: &BuildCtx<'_, '_>) -> Result<Vec<i64>> {
    let s: Vec<i64> = ctx.args.get("pool_scales")?;
    if s.is_empty() || s.iter().any(|&v| v <= 0) {
        return Err(arg_error(
            ctx,
            "pool_scales",
            format!("must be a non-empty list of positive sizes, got {s:?}"),
        ));
    }
    Ok(s)
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let scales = pool_scales_arg(ctx)?;
    build_wrapped(ctx, |p| PspHead::new(p, &base, &scales))
}

/// The `PSPHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "PSPHead",
        "Pyramid pooling decode head of mmsegmentation (PSPNet; includes its own classifier): the selected map plus \
         its average-pooled versions at pool_scales (1x1 ConvModule each, resized back), fused by a 3x3 bottleneck, \
         then dropout and conv_seg at the map's resolution.",
        build,
        |e| {
            e
    .opt("pool_scales", ParamType::INT_LIST, json!([1, 2, 3, 6]), "output sizes of the adaptive average pools")
        },
        BaseParams::default(),
    )
}
