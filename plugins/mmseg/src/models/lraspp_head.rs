//! mmsegmentation 1.2.2's `LRASPPHead` (`mmseg/models/decode_heads/lraspp_head.py`):
//! MobileNetV3's Lite R-ASPP head. Unlike the heads that fix it, it requires the
//! argument `input_transform="multiple_select"`.
use super::conv_module::{ActCfg, ConvModule, ConvModuleCfg, ConvOpts};
use super::decode_head::{
    arg_error, build_wrapped, head_entry, resize, BaseCfg, BaseParams, ClsSeg, DecodeHead,
    InputTransform, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The image pool's `AvgPool2d(kernel_size=49, stride=(16, 20))`.
const POOL_KERNEL: i64 = 49;
const POOL_STRIDE: [i64; 2] = [16, 20];

/// mmseg's `LRASPPHead`.
///
/// Input: the feature maps (one per channel-list entry via `in_index`); the last
/// one must be at least 49 x 49 px (the image pool's kernel). Output: logits at the
/// first selected map's resolution.
#[derive(Debug)]
pub struct LrasppHead {
    base: BaseCfg,
    convs: Vec<nn::Conv2D>,
    conv_ups: Vec<ConvModule>,
    conv_up_input: nn::Conv2D,
    aspp_conv: ConvModule,
    image_pool: ConvModule,
    cls: ClsSeg,
}

impl LrasppHead {
    /// Builds the head under `p` (`convs.convN`, `conv_ups.conv_upN`, `conv_up_input`,
    /// `aspp_conv`, `image_pool.1`, `conv_seg`).
    pub fn new(p: nn::Path, base: &BaseCfg, branch_channels: &[i64]) -> Result<Self> {
        if base.input_transform != Some(InputTransform::MultipleSelect) {
            return Err(PluginError::invalid_argument(format!(
                "argument `input_transform` must be \"multiple_select\" for LRASPPHead, got {:?}",
                base.input_transform.map(|t| t.name())
            )));
        }
        let n = base.in_channels.len();
        if branch_channels.len() + 1 != n || branch_channels.iter().any(|&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "argument `branch_channels` must have one positive entry per channel-list entry but the last \
                 ({} for {:?}), got {branch_channels:?}",
                n - 1,
                base.in_channels
            )));
        }
        // mmseg builds image_pool for in_channels[2] but runs it on the last map
        if n < 3 || base.in_channels[2] != base.in_channels[n - 1] {
            return Err(PluginError::invalid_argument(format!(
                "LRASPPHead builds its image pool for the third channel-list entry and applies it to the last map, so \
                 it needs at least three entries with the third equal to the last; got {:?}",
                base.in_channels
            )));
        }
        let ch = base.channels;
        let no_bias = ConvOpts {
            bias: Some(false),
            ..ConvOpts::default()
        };
        let (cp, up) = (&p / "convs", &p / "conv_ups");
        let mut convs = Vec::new();
        let mut conv_ups = Vec::new();
        for (i, &b) in branch_channels.iter().enumerate() {
            let cfg = nn::ConvConfig {
                bias: false,
                ..Default::default()
            };
            convs.push(nn::conv2d(
                &cp / format!("conv{i}"),
                base.in_channels[i],
                b,
                1,
                cfg,
            ));
            conv_ups.push(ConvModule::with_opts(
                &up / format!("conv_up{i}"),
                ch + b,
                ch,
                1,
                no_bias,
                &base.conv,
            )?);
        }
        let conv_up_input = nn::conv2d(&p / "conv_up_input", ch, ch, 1, Default::default());
        let last = base.in_channels[n - 1];
        let aspp_conv = ConvModule::with_opts(&p / "aspp_conv", last, ch, 1, no_bias, &base.conv)?;
        let pool_cfg = ConvModuleCfg {
            norm_cfg: None,
            act_cfg: Some(ActCfg::Sigmoid),
        };
        let image_pool = ConvModule::with_opts(
            &p / "image_pool" / 1,
            base.in_channels[2],
            ch,
            1,
            no_bias,
            &pool_cfg,
        )?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            convs,
            conv_ups,
            conv_up_input,
            aspp_conv,
            image_pool,
            cls,
        })
    }
}

impl DecodeHead for LrasppHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = self.base.select(xs)?;
        let ac = self.base.align_corners;
        let x = &inputs[inputs.len() - 1];
        let s = x.size();
        if s[2] < POOL_KERNEL || s[3] < POOL_KERNEL {
            return Err(PluginError::forward_failed(format!(
                "LRASPPHead's image pool is a {POOL_KERNEL} x {POOL_KERNEL} average pool: the last selected map must \
                 be at least that large, got {}x{}",
                s[2], s[3]
            )));
        }
        let pooled = x.f_avg_pool2d(
            [POOL_KERNEL, POOL_KERNEL],
            POOL_STRIDE,
            [0, 0],
            false,
            true,
            None::<i64>,
        )?;
        let gate = resize(&self.image_pool.forward(&pooled, train)?, s[2], s[3], ac)?;
        let mut y = self
            .aspp_conv
            .forward(x, train)?
            .f_mul(&gate)?
            .apply(&self.conv_up_input);
        for i in (0..self.convs.len()).rev() {
            let si = inputs[i].size();
            y = resize(&y, si[2], si[3], ac)?;
            // [B, channels + branch_channels[i], h_i, w_i] -> [B, channels, h_i, w_i]
            y = self.conv_ups[i].forward(
                &Tensor::f_cat(&[&y, &inputs[i].apply(&self.convs[i])], 1)?,
                train,
            )?;
        }
        Ok(vec![self.cls.forward(&y, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    // checked before the BaseDecodeHead arguments, whose message would not name the fix
    let transform: Option<String> = ctx.args.opt("input_transform")?;
    if transform.as_deref() != Some("multiple_select") {
        return Err(arg_error(
            ctx,
            "input_transform",
            format!("must be \"multiple_select\" for LRASPPHead (with in_index as a list), got {transform:?}"),
        ));
    }
    let base = BaseCfg::from_ctx(ctx, Inputs::Declared)?;
    let branch: Vec<i64> = ctx.args.get("branch_channels")?;
    build_wrapped(ctx, |p| LrasppHead::new(p, &base, &branch))
}

/// The `LRASPPHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "LRASPPHead",
        "Lite R-ASPP decode head of mmsegmentation (MobileNetV3; includes its own classifier): the last selected map \
         gated by a sigmoid image pool (49 x 49 average pool, stride (16, 20): the map must be at least 49 px), then \
         upsampled step by step to the earlier maps and fused with their 1x1 branch convs, then dropout and \
         conv_seg. Needs input_transform=\"multiple_select\" and at least three maps.",
        build,
        |e| {
            e
    .opt(
        "branch_channels",
        ParamType::INT_LIST,
        json!([32, 64]),
        "channels of the 1x1 branch conv of each map but the last",
    )
        },
        BaseParams {
            input_transform_doc:
                "must be \"multiple_select\" (mmseg's default None is refused by LRASPPHead)",
            in_index_doc: "the feature maps to read, one index per channel-list entry",
            ..BaseParams::default()
        },
    )
}
