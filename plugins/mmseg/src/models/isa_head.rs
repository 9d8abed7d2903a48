//! mmsegmentation 1.2.2's `ISAHead` (`mmseg/models/decode_heads/isa_head.py`):
//! interlaced sparse self-attention (a global relation between local groups, then
//! a local relation inside them), built as TerraTorch's `MMSegRegistry` builds it.
use super::conv_module::{ConvModule, ConvModuleCfg};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::self_attention_block::{AttentionSpec, Project, SelfAttentionBlock};
use serde_json::json;
use tch::{nn, IndexOp, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// ISA's `SelfAttentionBlock` with its `output_project`.
#[derive(Debug)]
struct IsaBlock {
    attn: SelfAttentionBlock,
    output_project: Project,
}

impl IsaBlock {
    fn new(p: nn::Path, c: i64, isa_channels: i64, cfg: &ConvModuleCfg) -> Result<Self> {
        let spec = AttentionSpec {
            value_out_norm: false,
            with_out: false,
            ..AttentionSpec::new(c, c, isa_channels, c)
        };
        Ok(Self {
            attn: SelfAttentionBlock::new(&p, spec, cfg)?,
            output_project: Project::new(&p / "output_project", c, c, 1, true, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.output_project
            .forward(&self.attn.forward(x, x, train)?, train)
    }
}

/// mmseg's `ISAHead`.
#[derive(Debug)]
pub struct IsaHead {
    base: BaseCfg,
    down_factor: (i64, i64),
    in_conv: ConvModule,
    global_relation: IsaBlock,
    local_relation: IsaBlock,
    out_conv: ConvModule,
    conv_seg: ClsSeg,
}

impl DecodeHead for IsaHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let x = self.in_conv.forward(&x, train)?;
        let residual = x.shallow_clone();
        let s = x.size();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let (loc_h, loc_w) = self.down_factor;
        let (glb_h, glb_w) = ((h + loc_h - 1) / loc_h, (w + loc_w - 1) / loc_w);
        let (pad_h, pad_w) = (glb_h * loc_h - h, glb_w * loc_w - w);
        let padded = pad_h > 0 || pad_w > 0;
        let x = if padded {
            x.f_constant_pad_nd([pad_w / 2, pad_w - pad_w / 2, pad_h / 2, pad_h - pad_h / 2])?
        } else {
            x
        };
        // global relation between positions that share a place in their local group
        let x = x
            .f_reshape([n, c, glb_h, loc_h, glb_w, loc_w])?
            .f_permute([0, 3, 5, 1, 2, 4])?;
        let x = self
            .global_relation
            .forward(&x.f_reshape([-1, c, glb_h, glb_w])?, train)?;
        // local relation inside each group
        let x = x
            .f_reshape([n, loc_h, loc_w, c, glb_h, glb_w])?
            .f_permute([0, 4, 5, 3, 1, 2])?;
        let x = self
            .local_relation
            .forward(&x.f_reshape([-1, c, loc_h, loc_w])?, train)?;
        let x = x
            .f_reshape([n, glb_h, glb_w, c, loc_h, loc_w])?
            .f_permute([0, 3, 1, 4, 2, 5])?;
        let x = x.f_reshape([n, c, glb_h * loc_h, glb_w * loc_w])?;
        let x = if padded {
            x.i((.., .., pad_h / 2..pad_h / 2 + h, pad_w / 2..pad_w / 2 + w))
        } else {
            x
        };
        let x = self
            .out_conv
            .forward(&Tensor::f_cat(&[&x, &residual], 1)?, train)?;
        Ok(vec![self.conv_seg.forward(&x, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let isa_channels: i64 = ctx.args.get("isa_channels")?;
    ctx.args.ensure(
        isa_channels > 0,
        "isa_channels",
        format_args!("must be positive, got {isa_channels}"),
    )?;
    let df = ctx.args.get::<Vec<i64>>("down_factor")?;
    ctx.args.ensure(
        df.len() == 2 && df.iter().all(|&d| d >= 1),
        "down_factor",
        format_args!("must be two positive integers (local group height, width), got {df:?}"),
    )?;
    build_wrapped(ctx, |p| {
        let (c_in, c) = (base.in_ch(), base.channels);
        Ok(IsaHead {
            down_factor: (df[0], df[1]),
            in_conv: ConvModule::new(&p / "in_conv", c_in, c, 3, 1, 1, &base.conv)?,
            global_relation: IsaBlock::new(&p / "global_relation", c, isa_channels, &base.conv)?,
            local_relation: IsaBlock::new(&p / "local_relation", c, isa_channels, &base.conv)?,
            out_conv: ConvModule::new(&p / "out_conv", 2 * c, c, 1, 0, 1, &base.conv)?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    })
}

/// The `ISAHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "ISAHead",
        "Interlaced sparse self-attention decode head of mmsegmentation (includes its own classifier): conv, \
         self-attention across local groups of down_factor positions, then within each group (the map is padded to \
         a multiple of down_factor and cropped back), fused with the conv's output, then dropout and a 1x1 conv_seg \
         to class logits at the feature map's resolution.",
        build,
        |e| {
            e.req("isa_channels", ParamType::INT, "key/query width of the attention blocks (required)").opt(
                "down_factor",
                ParamType::INT_LIST,
                json!([8, 8]),
                "size (height, width) of the local groups",
            )
        },
        BaseParams::default(),
    )
}
