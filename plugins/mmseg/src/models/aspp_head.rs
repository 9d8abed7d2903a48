//! mmsegmentation 1.2.2's `ASPPHead` (`mmseg/models/decode_heads/aspp_head.py`,
//! DeepLabV3) and `DepthwiseSeparableASPPHead`
//! (`mmseg/models/decode_heads/sep_aspp_head.py`, DeepLabV3+), on top of
//! `BaseDecodeHead` (see [`super::decode_head`]).
use super::conv_module::{ConvModule, ConvOpts, DepthwiseSeparableConvModule};
use super::decode_head::{
    arg_error, build_wrapped, check_map, head_entry, resize, BaseCfg, BaseParams, ClsSeg,
    DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// One branch of the ASPP module: a plain `ConvModule` (1x1 for dilation 1, else
/// 3x3 dilated), or a depthwise-separable one in DeepLabV3+.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a handful of branches, built once
enum Branch {
    Plain(ConvModule),
    Separable(DepthwiseSeparableConvModule),
}

impl Branch {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Plain(m) => m.forward(x, train),
            Self::Separable(m) => m.forward(x, train),
        }
    }
}

/// The DeepLabV3+ additions: the low-level `c1_bottleneck` and the two
/// depthwise-separable `sep_bottleneck` convs.
#[derive(Debug)]
struct Plus {
    c1_in_channels: i64,
    c1_bottleneck: Option<ConvModule>,
    sep_bottleneck: [DepthwiseSeparableConvModule; 2],
}

/// mmseg's `ASPPHead` and, with `c1_*` given, `DepthwiseSeparableASPPHead`.
///
/// Input: the feature maps; the selected one goes through image pooling and the
/// dilated branches. Output: logits at the selected map's resolution, or (with a
/// `c1_bottleneck`) at `inputs[0]`'s.
#[derive(Debug)]
pub struct AsppHead {
    base: BaseCfg,
    image_pool: ConvModule,
    aspp_modules: Vec<Branch>,
    bottleneck: ConvModule,
    plus: Option<Plus>,
    cls: ClsSeg,
}

/// The DeepLabV3+ arguments of `DepthwiseSeparableASPPHead`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SepCfg {
    /// Channels of `inputs[0]` for the low-level branch; 0 for none.
    pub c1_in_channels: i64,
    /// Output channels of `c1_bottleneck`.
    pub c1_channels: i64,
}

impl AsppHead {
    /// Builds the head under `p`: `ASPPHead` when `sep` is `None`, else
    /// `DepthwiseSeparableASPPHead`.
    pub fn new(
        p: nn::Path,
        base: &BaseCfg,
        dilations: &[i64],
        sep: Option<SepCfg>,
    ) -> Result<Self> {
        if dilations.is_empty() || dilations.iter().any(|&d| d <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "argument `dilations` must be a non-empty list of positive dilations, got {dilations:?}"
            )));
        }
        let (c_in, ch, conv) = (base.in_ch(), base.channels, &base.conv);
        let image_pool = ConvModule::new(&p / "image_pool" / 1, c_in, ch, 1, 0, 1, conv)?;
        let ap = &p / "aspp_modules";
        let aspp_modules = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                Ok(match (d, sep) {
                    (1, _) => Branch::Plain(ConvModule::new(&ap / i, c_in, ch, 1, 0, 1, conv)?),
                    (_, None) => Branch::Plain(ConvModule::new(&ap / i, c_in, ch, 3, d, d, conv)?),
                    (_, Some(_)) => Branch::Separable(DepthwiseSeparableConvModule::new(
                        &ap / i,
                        c_in,
                        ch,
                        3,
                        ConvOpts {
                            padding: d,
                            dilation: d,
                            ..ConvOpts::default()
                        },
                        conv,
                        conv,
                    )?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bottleneck = ConvModule::new(
            &p / "bottleneck",
            (dilations.len() as i64 + 1) * ch,
            ch,
            3,
            1,
            1,
            conv,
        )?;
        let plus = sep
            .map(|s| -> Result<Plus> {
                if s.c1_in_channels < 0 || s.c1_channels < 0 {
                    return Err(PluginError::invalid_argument(format!(
                        "arguments `c1_in_channels` ({}) and `c1_channels` ({}) must be >= 0",
                        s.c1_in_channels, s.c1_channels
                    )));
                }
                if s.c1_in_channels == 0 && s.c1_channels != 0 {
                    return Err(PluginError::invalid_argument(format!(
                        "argument `c1_channels` must be 0 when `c1_in_channels` is 0 (no low-level branch), got {}: \
                         sep_bottleneck would expect channels + c1_channels inputs and mmseg's forward fails",
                        s.c1_channels
                    )));
                }
                let c1_bottleneck = (s.c1_in_channels > 0)
                    .then(|| ConvModule::new(&p / "c1_bottleneck", s.c1_in_channels, s.c1_channels, 1, 0, 1, conv))
                    .transpose()?;
                let sp = &p / "sep_bottleneck";
                let pad1 = ConvOpts::padding(1);
                let sep_bottleneck = [
                    DepthwiseSeparableConvModule::new(&sp / 0, ch + s.c1_channels, ch, 3, pad1, conv, conv)?,
                    DepthwiseSeparableConvModule::new(&sp / 1, ch, ch, 3, pad1, conv, conv)?,
                ];
                Ok(Plus { c1_in_channels: s.c1_in_channels, c1_bottleneck, sep_bottleneck })
            })
            .transpose()?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            image_pool,
            aspp_modules,
            bottleneck,
            plus,
            cls,
        })
    }
}

impl DecodeHead for AsppHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let size = x.size();
        let pooled = self
            .image_pool
            .forward(&x.f_adaptive_avg_pool2d([1, 1])?, train)?;
        let mut outs = vec![resize(&pooled, size[2], size[3], self.base.align_corners)?];
        for b in &self.aspp_modules {
            outs.push(b.forward(&x, train)?);
        }
        // [B, (n_dilations + 1) * channels, H, W] -> [B, channels, H, W]
        let mut out = self.bottleneck.forward(&Tensor::f_cat(&outs, 1)?, train)?;
        if let Some(plus) = &self.plus {
            if let Some(c1) = &plus.c1_bottleneck {
                // the low-level map is always the first of the full input list
                let x0 = &xs[0];
                check_map(x0, plus.c1_in_channels, "inputs[0] (the c1 map)")?;
                let c1 = c1.forward(x0, train)?;
                let s = c1.size();
                out = resize(&out, s[2], s[3], self.base.align_corners)?;
                out = Tensor::f_cat(&[&out, &c1], 1)?;
            }
            for m in &plus.sep_bottleneck {
                out = m.forward(&out, train)?;
            }
        }
        Ok(vec![self.cls.forward(&out, train)?])
    }
}

fn dilations_arg(ctx: &BuildCtx<'_, '_>) -> Result<Vec<i64>> {
    let d: Vec<i64> = ctx.args.get("dilations")?;
    if d.is_empty() || d.iter().any(|&v| v <= 0) {
        return Err(arg_error(
            ctx,
            "dilations",
            format!("must be a non-empty list of positive dilations, got {d:?}"),
        ));
    }
    Ok(d)
}

fn build(ctx: &BuildCtx<'_, '_>, separable: bool) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let dilations = dilations_arg(ctx)?;
    let sep = if separable {
        let s = SepCfg {
            c1_in_channels: ctx.args.get("c1_in_channels")?,
            c1_channels: ctx.args.get("c1_channels")?,
        };
        if s.c1_in_channels < 0 {
            return Err(arg_error(
                ctx,
                "c1_in_channels",
                format!(
                    "must be >= 0 (0: no low-level branch), got {}",
                    s.c1_in_channels
                ),
            ));
        }
        Some(s)
    } else {
        None
    };
    build_wrapped(ctx, |p| AsppHead::new(p, &base, &dilations, sep))
}

fn with_dilations(e: Entry) -> Entry {
    e.opt(
        "dilations",
        ParamType::INT_LIST,
        json!([1, 6, 12, 18]),
        "dilation of each ASPP branch (1: a 1x1 conv)",
    )
}

/// The `ASPPHead` entry.
pub(crate) fn aspp_entry() -> Entry {
    head_entry(
        "ASPPHead",
        "Atrous spatial pyramid pooling decode head of mmsegmentation (DeepLabV3; includes its own classifier): \
         global average pooling plus one ConvModule per dilation on the selected map, concatenated, fused by a 3x3 \
         bottleneck, then dropout and conv_seg at the map's resolution.",
        |ctx| build(ctx, false),
        with_dilations,
        BaseParams::default(),
    )
}

/// The `DepthwiseSeparableASPPHead` entry.
pub(crate) fn sep_aspp_entry() -> Entry {
    head_entry(
        "DepthwiseSeparableASPPHead",
        "DeepLabV3+ decode head of mmsegmentation (includes its own classifier): ASPP with depthwise-separable \
         dilated branches on the selected map; its output is resized to inputs[0] (always the first map of the \
         input list) and concatenated with c1_bottleneck(inputs[0]), then two depthwise-separable 3x3 convs, \
         dropout and conv_seg at inputs[0]'s resolution.",
        |ctx| build(ctx, true),
        |e| {
            with_dilations(e
    .req("c1_in_channels", ParamType::INT, "channels of inputs[0], the low-level map (0: no low-level branch)")
    .req("c1_channels", ParamType::INT, "output channels of c1_bottleneck (0 when c1_in_channels is 0)"))
        },
        BaseParams::default(),
    )
}
