//! mmsegmentation 1.2.2's `DAHead` (`mmseg/models/decode_heads/da_head.py`, DANet):
//! a position-attention branch (`PAM`) and a channel-attention branch (`CAM`), built
//! as TerraTorch's `MMSegRegistry` builds it.
//!
//! Its `forward` returns three logit maps, `(pam_cam, pam, cam)`, in training and
//! in eval alike; mmseg's `predict` keeps the first, but TerraTorch's wrapper calls
//! `forward`, so the module here returns all three, in that order.
use super::conv_module::{ConvModule, Scale};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::self_attention_block::{AttentionSpec, SelfAttentionBlock};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// mmseg's `DAHead`.
#[derive(Debug)]
pub struct DaHead {
    base: BaseCfg,
    pam_in_conv: ConvModule,
    pam: SelfAttentionBlock,
    pam_gamma: Scale,
    pam_out_conv: ConvModule,
    pam_conv_seg: ClsSeg,
    cam_in_conv: ConvModule,
    cam_gamma: Scale,
    cam_out_conv: ConvModule,
    cam_conv_seg: ClsSeg,
    conv_seg: ClsSeg,
}

impl DaHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, pam_channels: i64) -> Result<Self> {
        let (c_in, c) = (base.in_ch(), base.channels);
        let conv = |name: &str, from: i64| ConvModule::new(&p / name, from, c, 3, 1, 1, &base.conv);
        let pam_spec = AttentionSpec {
            key_query_num_convs: 1,
            key_query_norm: false,
            value_out_norm: false,
            matmul_norm: false,
            with_out: false,
            ..AttentionSpec::new(c, c, pam_channels, c)
        };
        Ok(Self {
            pam_in_conv: conv("pam_in_conv", c_in)?,
            pam: SelfAttentionBlock::new(&(&p / "pam"), pam_spec, &base.conv)?,
            pam_gamma: Scale::new(&p / "pam" / "gamma", 0.0),
            pam_out_conv: conv("pam_out_conv", c)?,
            // the branch classifiers have num_classes channels, whatever out_channels is
            pam_conv_seg: ClsSeg::new(&p / "pam_conv_seg", c, base.num_classes, base.dropout_ratio),
            cam_in_conv: conv("cam_in_conv", c_in)?,
            cam_gamma: Scale::new(&p / "cam" / "gamma", 0.0),
            cam_out_conv: conv("cam_out_conv", c)?,
            cam_conv_seg: ClsSeg::new(&p / "cam_conv_seg", c, base.num_classes, base.dropout_ratio),
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }

    /// `CAM`: attention between channels, `gamma * out + x`.
    fn cam(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        // [B, C, N]
        let q = x.f_reshape([s[0], s[1], -1])?;
        let energy = q.f_bmm(&q.f_permute([0, 2, 1])?)?;
        let (max, _) = energy.f_max_dim(-1, true)?;
        let attention = max
            .f_expand_as(&energy)?
            .f_sub(&energy)?
            .f_softmax(-1, None)?;
        let out = attention.f_bmm(&q)?.f_reshape(s.as_slice())?;
        Ok(self.cam_gamma.forward(&out)?.f_add(x)?)
    }
}

impl DecodeHead for DaHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let pam_feat = self.pam_in_conv.forward(&x, train)?;
        let pam_feat = self
            .pam_gamma
            .forward(&self.pam.forward(&pam_feat, &pam_feat, train)?)?
            .f_add(&pam_feat)?;
        let pam_feat = self.pam_out_conv.forward(&pam_feat, train)?;
        let pam_out = self.pam_conv_seg.forward(&pam_feat, train)?;

        let cam_feat = self.cam_in_conv.forward(&x, train)?;
        let cam_feat = self.cam_out_conv.forward(&self.cam(&cam_feat)?, train)?;
        let cam_out = self.cam_conv_seg.forward(&cam_feat, train)?;

        let pam_cam_out = self.conv_seg.forward(&pam_feat.f_add(&cam_feat)?, train)?;
        Ok(vec![pam_cam_out, pam_out, cam_out])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![
            self.base.seg_channels(),
            self.base.num_classes,
            self.base.num_classes,
        ]
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let pam_channels: i64 = ctx.args.get("pam_channels")?;
    ctx.args.ensure(
        pam_channels > 0,
        "pam_channels",
        format_args!("must be positive, got {pam_channels}"),
    )?;
    build_wrapped(ctx, |p| DaHead::new(p, &base, pam_channels))
}

/// The `DAHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "DAHead",
        "Dual-attention decode head of mmsegmentation (DANet; includes its own classifiers): a position-attention \
         branch and a channel-attention branch, each conv -> attention -> conv; returns three logit maps at the \
         feature map's resolution: the classifier on the sum of both branches (the prediction), then the PAM and \
         the CAM branch's own logits (num_classes channels each, used by mmseg's auxiliary losses).",
        build,
        |e| e.req("pam_channels", ParamType::INT, "key/query width of the position attention module (required)"),
        BaseParams::default(),
    )
}
