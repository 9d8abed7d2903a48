//! mmsegmentation 1.2.2's `OCRHead` (`mmseg/models/decode_heads/ocr_head.py`,
//! OCRNet), a cascade head (`cascade_decode_head.py`): object-contextual
//! representations gathered with the previous head's class probabilities.
//!
//! mmseg calls it as `forward(inputs, prev_output)`. TerraTorch's
//! `MMsegDecoderWrapper.forward(x)` passes one argument only, so TerraTorch itself
//! cannot run this head (a `TypeError`). Here the convention is: the LAST input
//! tensor is `prev_output` (`[B, K, h, w]`, the previous head's logits at the
//! selected feature map's resolution); the tensors before it are the feature maps
//! that `in_index` selects from.
use super::conv_module::{ConvModule, ConvModuleCfg};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::self_attention_block::{AttentionSpec, SelfAttentionBlock};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// mmseg's `ObjectAttentionBlock` (with `scale` 1: no query downsampling).
#[derive(Debug)]
struct ObjectAttentionBlock {
    attn: SelfAttentionBlock,
    bottleneck: ConvModule,
}

impl ObjectAttentionBlock {
    fn new(p: nn::Path, c: i64, ocr_channels: i64, cfg: &ConvModuleCfg) -> Result<Self> {
        let spec = AttentionSpec::new(c, c, ocr_channels, c);
        Ok(Self {
            attn: SelfAttentionBlock::new(&p, spec, cfg)?,
            bottleneck: ConvModule::new(&p / "bottleneck", 2 * c, c, 1, 0, 1, cfg)?,
        })
    }

    fn forward(&self, query: &Tensor, key: &Tensor, train: bool) -> Result<Tensor> {
        let context = self.attn.forward(query, key, train)?;
        self.bottleneck
            .forward(&Tensor::f_cat(&[&context, query], 1)?, train)
    }
}

/// mmseg's `OCRHead`.
#[derive(Debug)]
pub struct OcrHead {
    base: BaseCfg,
    scale: f64,
    bottleneck: ConvModule,
    object_context_block: ObjectAttentionBlock,
    conv_seg: ClsSeg,
}

impl DecodeHead for OcrHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let Some((prev, maps)) = xs.split_last().filter(|(_, m)| !m.is_empty()) else {
            return Err(PluginError::forward_failed(
                "OCRHead needs the feature maps followed by prev_output (the previous head's logits) as the last \
                 input tensor",
            ));
        };
        let x = self.base.select(maps)?.remove(0);
        let feats = self.bottleneck.forward(&x, train)?;
        let (fs, ps) = (feats.size(), prev.size());
        if ps.len() != 4 || ps[0] != fs[0] || ps[2] * ps[3] != fs[2] * fs[3] {
            return Err(PluginError::forward_failed(format!(
                "prev_output (the last input) must be [B, K, h, w] logits at the selected map's resolution ({:?}), \
                 got shape {ps:?}",
                [fs[0], -1, fs[2], fs[3]]
            )));
        }
        // SpatialGatherModule: class-weighted sums of the features -> [B, C, K, 1]
        let (b, k) = (ps[0], ps[1]);
        let probs = prev
            .f_reshape([b, k, -1])?
            .f_mul_scalar(self.scale)?
            .f_softmax(2, None)?;
        let f = feats.f_reshape([fs[0], fs[1], -1])?.f_permute([0, 2, 1])?;
        let context = probs
            .f_matmul(&f)?
            .f_permute([0, 2, 1])?
            .f_contiguous()?
            .f_unsqueeze(3)?;
        let object_context = self.object_context_block.forward(&feats, &context, train)?;
        Ok(vec![self.conv_seg.forward(&object_context, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let a = &ctx.args;
    let ocr_channels: i64 = a.get("ocr_channels")?;
    a.ensure(
        ocr_channels > 0,
        "ocr_channels",
        format_args!("must be positive, got {ocr_channels}"),
    )?;
    let scale: f64 = a.get("scale")?;
    a.ensure(
        scale <= 1.0,
        "scale",
        format_args!(
            "must be at most 1, got {scale}: with scale > 1 mmseg's ObjectAttentionBlock resizes without a size and \
             fails"
        ),
    )?;
    build_wrapped(ctx, |p| {
        let (c_in, c) = (base.in_ch(), base.channels);
        Ok(OcrHead {
            scale,
            bottleneck: ConvModule::new(&p / "bottleneck", c_in, c, 3, 1, 1, &base.conv)?,
            object_context_block: ObjectAttentionBlock::new(
                &p / "object_context_block",
                c,
                ocr_channels,
                &base.conv,
            )?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    })
}

/// The `OCRHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "OCRHead",
        "Object-contextual representation decode head of mmsegmentation (OCRNet; a cascade head that includes its own \
         classifier). Inputs: the feature maps, then prev_output (the previous head's [B, K, h, w] logits at the \
         selected map's resolution) as the LAST tensor. A bottleneck conv, class-region context gathered with \
         softmax(scale * prev_output), object attention, then dropout and a 1x1 conv_seg to class logits.",
        build,
        |e| {
            e.req("ocr_channels", ParamType::INT, "key/query width of the object attention block (required)").opt(
                "scale",
                ParamType::FLOAT,
                json!(1),
                "multiplies prev_output before the softmax (values > 1 fail in mmseg)",
            )
        },
        BaseParams::default(),
    )
}
