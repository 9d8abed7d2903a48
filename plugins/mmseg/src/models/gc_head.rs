//! mmsegmentation 1.2.2's `GCHead` (`mmseg/models/decode_heads/gc_head.py`): an
//! FCNHead whose two convs enclose mmcv 2.1's `ContextBlock`
//! (`mmcv/cnn/bricks/context_block.py`), built as TerraTorch's `MMSegRegistry` builds it.
use super::conv_module::torch_conv2d;
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::fcn_head::{FcnArgs, FcnTrunk};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// `conv(C -> planes) -> LayerNorm([planes, 1, 1]) -> ReLU -> conv(planes -> C)`.
#[derive(Debug)]
struct Transform {
    conv0: nn::Conv2D,
    ln: nn::LayerNorm,
    conv3: nn::Conv2D,
}

impl Transform {
    fn new(p: nn::Path, c: i64, planes: i64) -> Self {
        Self {
            conv0: torch_conv2d(&p / 0, c, planes, 1, 0, true),
            ln: nn::layer_norm(&p / 1, vec![planes, 1, 1], Default::default()),
            conv3: torch_conv2d(&p / 3, planes, c, 1, 0, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.apply(&self.conv0)
            .apply(&self.ln)
            .f_relu()?
            .apply(&self.conv3))
    }
}

/// mmcv's `ContextBlock` (global context block of GCNet).
#[derive(Debug)]
pub struct ContextBlock {
    conv_mask: Option<nn::Conv2D>,
    channel_add_conv: Option<Transform>,
    channel_mul_conv: Option<Transform>,
}

impl ContextBlock {
    /// Builds the block under `p`; `att` selects attention pooling (else average).
    pub fn new(p: &nn::Path, c: i64, planes: i64, att: bool, add: bool, mul: bool) -> Self {
        Self {
            conv_mask: att.then(|| torch_conv2d(p / "conv_mask", c, 1, 1, 0, true)),
            channel_add_conv: add.then(|| Transform::new(p / "channel_add_conv", c, planes)),
            channel_mul_conv: mul.then(|| Transform::new(p / "channel_mul_conv", c, planes)),
        }
    }

    /// Applies the block; the output has the input's shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        let (b, c) = (s[0], s[1]);
        // [B, C, 1, 1]
        let context = match &self.conv_mask {
            Some(mask) => {
                // softmax over positions of a 1-channel mask, then a weighted sum
                let m = x
                    .apply(mask)
                    .f_reshape([b, 1, -1])?
                    .f_softmax(2, None)?
                    .f_unsqueeze(-1)?;
                x.f_reshape([b, 1, c, -1])?
                    .f_matmul(&m)?
                    .f_reshape([b, c, 1, 1])?
            }
            None => x.f_adaptive_avg_pool2d([1, 1])?,
        };
        let mut out = x.shallow_clone();
        if let Some(t) = &self.channel_mul_conv {
            out = out.f_mul(&t.forward(&context)?.f_sigmoid()?)?;
        }
        if let Some(t) = &self.channel_add_conv {
            out = out.f_add(&t.forward(&context)?)?;
        }
        Ok(out)
    }
}

/// mmseg's `GCHead`.
#[derive(Debug)]
pub struct GcHead {
    base: BaseCfg,
    trunk: FcnTrunk,
    gc_block: ContextBlock,
    conv_seg: ClsSeg,
}

impl DecodeHead for GcHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let y = self
            .trunk
            .forward(&x, train, |y| self.gc_block.forward(y))?;
        Ok(vec![self.conv_seg.forward(&y, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let f = FcnArgs::from_ctx(ctx)?;
    let a = &ctx.args;
    let ratio: f64 = a.get("ratio")?;
    // Python's int(channels * ratio)
    let planes = (base.channels as f64 * ratio).trunc() as i64;
    a.ensure(
        planes >= 1,
        "ratio",
        format_args!(
            "must make int(channels * ratio) at least 1, got ratio={ratio} with channels={}",
            base.channels
        ),
    )?;
    let pooling: String = a.get("pooling_type")?;
    a.ensure(
        pooling == "att" || pooling == "avg",
        "pooling_type",
        format_args!("must be \"att\" or \"avg\", got {pooling:?}"),
    )?;
    let fusion: Vec<String> = a.get("fusion_types")?;
    if fusion.is_empty()
        || fusion
            .iter()
            .any(|f| f != "channel_add" && f != "channel_mul")
    {
        return Err(PluginError::invalid_argument(format!(
            "argument `fusion_types` of `{}` must be a non-empty list of \"channel_add\" / \"channel_mul\", got {fusion:?}",
            ctx.qualified()
        )));
    }
    let add = fusion.iter().any(|f| f == "channel_add");
    let mul = fusion.iter().any(|f| f == "channel_mul");
    build_wrapped(ctx, |p| {
        let c = base.channels;
        Ok(GcHead {
            trunk: FcnTrunk::new(&p, base.in_ch(), c, 2, f, &base.conv)?,
            gc_block: ContextBlock::new(&(&p / "gc_block"), c, planes, pooling == "att", add, mul),
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    })
}

/// The `GCHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "GCHead",
        "Global-context decode head of mmsegmentation (GCNet; includes its own classifier): conv, a ContextBlock \
         (attention or average pooling to one context vector, added to / multiplied into every position), conv, \
         optional fusion with the input (conv_cat), then dropout and a 1x1 conv_seg to class logits at the feature \
         map's resolution.",
        build,
        |e| {
            FcnArgs::declare(
                e.opt("ratio", ParamType::FLOAT, json!(0.25), "bottleneck width of the context transforms, as a fraction of channels")
                    .opt("pooling_type", ParamType::STR, json!("att"), "context pooling: \"att\" (attention) or \"avg\"")
                    .opt(
                        "fusion_types",
                        ParamType::STR_LIST,
                        json!(["channel_add"]),
                        "how the context is fused: channel_add and/or channel_mul",
                    ),
            )
        },
        BaseParams::default(),
    )
}
