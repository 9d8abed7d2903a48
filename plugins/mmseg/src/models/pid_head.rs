//! mmsegmentation 1.2.2's `PIDHead` and `BasePIDHead`
//! (`mmseg/models/decode_heads/pid_head.py`, PIDNet's head), built as TerraTorch's
//! `MMSegRegistry` builds it.
//!
//! Its forward depends on the mode. In eval mmseg runs only the integral branch on one
//! tensor (the `i` map); TerraTorch's wrapper passes its input on unchanged, so the
//! head takes one map here in eval. In training it takes the three PIDNet maps
//! `(p, i, d)` and returns the three logits `(p, i, d)`.
use super::conv_module::{
    torch_conv2d, ActCfg, ConvModule, ConvModuleCfg, ConvOpts, NormCfg, NormLayer,
};
use super::decode_head::{
    arg_error, build_wrapped, check_map, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead,
    Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// mmseg's `BasePIDHead` (and DDRHead's `_make_base_head`): a 3x3 `ConvModule` in
/// mmcv's order norm -> act -> conv, then a norm and an activation of its own.
#[derive(Debug)]
pub struct PreNormHead {
    conv: ConvModule,
    norm: NormLayer,
    act: ActCfg,
}

impl PreNormHead {
    /// The `ConvModule` at `conv_p` (norm over `c_in`, conv to `c`), the norm at `norm_p`.
    pub fn new(
        conv_p: nn::Path,
        norm_p: nn::Path,
        c_in: i64,
        c: i64,
        norm: &NormCfg,
        act: &ActCfg,
    ) -> Result<Self> {
        let cfg = ConvModuleCfg {
            norm_cfg: Some(norm.clone()),
            act_cfg: Some(act.clone()),
        };
        let opts = ConvOpts {
            padding: 1,
            norm_first: true,
            ..ConvOpts::default()
        };
        Ok(Self {
            conv: ConvModule::with_opts(conv_p, c_in, c, 3, opts, &cfg)?,
            norm: NormLayer::new(norm_p, norm, c)?,
            act: act.clone(),
        })
    }

    /// `[B, c_in, H, W] -> [B, c, H, W]`, then `cls` (mmseg's eval path).
    pub fn logits(&self, x: &Tensor, cls: &ClsSeg, train: bool) -> Result<Tensor> {
        cls.forward(&self.forward(x, train)?, train)
    }

    /// `[B, c_in, H, W] -> [B, c, H, W]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv.forward(x, train)?;
        self.act.apply(&self.norm.forward(&y, train))
    }
}

/// The configuration of PIDHead/DDRHead: one map (positional, so no input transform)
/// of at least `min_channels`, and the required `norm_cfg` and `act_cfg` (mmcv cannot
/// build their standalone norm and activation from None). `why` says what needs the
/// channels.
pub(crate) fn prenorm_base(
    ctx: &BuildCtx<'_, '_>,
    min_channels: i64,
    why: &str,
) -> Result<(BaseCfg, NormCfg, ActCfg)> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let norm = base.conv.norm_cfg.clone().ok_or_else(|| {
        arg_error(
            ctx,
            "norm_cfg",
            "must be a norm dict such as {\"type\": \"BN\"}: the head builds a norm layer from it",
        )
    })?;
    let act = base.conv.act_cfg.clone().ok_or_else(|| {
        arg_error(
            ctx,
            "act_cfg",
            "must be an activation dict such as {\"type\": \"ReLU\"}: the head builds an activation from it",
        )
    })?;
    if base.input_transform.is_some() || base.in_ch() < min_channels {
        return Err(PluginError::invalid_argument(format!(
            "`{}` takes one map of at least {min_channels} channels ({why}); got the channel list {:?} with \
             input_transform={:?}",
            ctx.qualified(),
            base.in_channels,
            base.input_transform.map(|t| t.name())
        )));
    }
    Ok((base, norm, act))
}

/// Checks that `head` got one map per `(name, channels)` entry of `maps` (`mode`
/// says when it takes them) and that each has its channels.
pub(crate) fn expect_maps(
    xs: &[Tensor],
    head: &str,
    mode: &str,
    maps: &[(&str, i64)],
) -> Result<()> {
    if xs.len() != maps.len() {
        let names: Vec<&str> = maps.iter().map(|(n, _)| *n).collect();
        return Err(PluginError::forward_failed(format!(
            "{head} takes {} map(s) ({}) {mode}, got {} tensor(s)",
            maps.len(),
            names.join(", "),
            xs.len()
        )));
    }
    for (x, (name, c)) in xs.iter().zip(maps) {
        check_map(x, *c, &format!("the {name} map"))?;
    }
    Ok(())
}

/// When PIDHead and DDRHead take one map.
pub(crate) const EVAL: &str = "in eval mode (mmseg's inference path)";

/// mmseg's `PIDHead`.
#[derive(Debug)]
pub struct PidHead {
    base: BaseCfg,
    i_head: PreNormHead,
    p_head: PreNormHead,
    d_head: PreNormHead,
    conv_seg: ClsSeg,
    p_cls_seg: nn::Conv2D,
    d_cls_seg: nn::Conv2D,
}

impl PidHead {
    /// Builds the head under `p` (`i_head`, `p_head`, `d_head`, `conv_seg`,
    /// `p_cls_seg`, `d_cls_seg`).
    pub fn new(p: nn::Path, base: &BaseCfg, norm: &NormCfg, act: &ActCfg) -> Result<Self> {
        let (c_in, c) = (base.in_ch(), base.channels);
        let branch = |name: &str, from: i64, to: i64, act: &ActCfg| {
            PreNormHead::new(&p / name / "conv", &p / name / "norm", from, to, norm, act)
        };
        Ok(Self {
            i_head: branch("i_head", c_in, c, act)?,
            p_head: branch("p_head", c_in / 2, c, act)?,
            // mmseg builds d_head with BasePIDHead's default activation
            d_head: branch("d_head", c_in / 2, c_in / 4, &ActCfg::ReLU)?,
            conv_seg: base.cls_seg(&p),
            p_cls_seg: torch_conv2d(&p / "p_cls_seg", c, base.seg_channels(), 1, 0, true),
            d_cls_seg: torch_conv2d(&p / "d_cls_seg", c_in / 4, 1, 1, 0, true),
            base: base.clone(),
        })
    }
}

impl DecodeHead for PidHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let c_in = self.base.in_ch();
        if !train {
            expect_maps(xs, "PIDHead", EVAL, &[("i", c_in)])?;
            return Ok(vec![self.i_head.logits(&xs[0], &self.conv_seg, train)?]);
        }
        let maps = [("p", c_in / 2), ("i", c_in), ("d", c_in / 2)];
        expect_maps(xs, "PIDHead", "in training mode", &maps)?;
        let p = self.p_head.forward(&xs[0], train)?.apply(&self.p_cls_seg);
        let i = self.i_head.logits(&xs[1], &self.conv_seg, train)?;
        let d = self.d_head.forward(&xs[2], train)?.apply(&self.d_cls_seg);
        Ok(vec![p, i, d])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let why = "its p and d branches read in_channels // 2 and make in_channels // 4";
    let (base, norm, act) = prenorm_base(ctx, 4, why)?;
    build_wrapped(ctx, |p| PidHead::new(p, &base, &norm, &act))
}

/// The `PIDHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "PIDHead",
        "PIDNet's decode head of mmsegmentation (includes its own classifier). Eval mode (mmseg's inference path): \
         one map, the integral branch, through BN-ReLU-conv3x3, BN-ReLU, dropout and conv_seg. Training mode: the \
         three maps (p, i, d), returning the p logits (p_cls_seg), i logits (conv_seg) and the 1-channel boundary \
         logits (d_cls_seg), each at its map's resolution.",
        build,
        |e| e,
        BaseParams {
            norm_cfg: json!({"type": "BN"}),
            act_cfg: json!({"type": "ReLU", "inplace": true}),
            in_index_doc: "unused: the head takes its maps positionally",
            input_transform_doc: "must be None: the head takes its maps positionally",
            ..BaseParams::default()
        },
    )
}
