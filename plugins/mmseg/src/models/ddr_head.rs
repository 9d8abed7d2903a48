//! mmsegmentation 1.2.2's `DDRHead` (`mmseg/models/decode_heads/ddr_head.py`,
//! DDRNet's head), built as TerraTorch's `MMSegRegistry` builds it.
//!
//! As PIDHead (see [`super::pid_head`]), its forward depends on the mode: in eval it
//! takes one map (the c5 features) and returns the logits; in training it takes the
//! two DDRNet maps `(c3, c5)` and returns `(c5 logits, c3 auxiliary logits)`.
use super::conv_module::{torch_conv2d, ActCfg, NormCfg};
use super::decode_head::{build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead};
use super::pid_head::{expect_maps, prenorm_base, PreNormHead, EVAL};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, Result};

/// mmseg's `DDRHead`.
#[derive(Debug)]
pub struct DdrHead {
    base: BaseCfg,
    head: PreNormHead,
    aux_head: PreNormHead,
    conv_seg: ClsSeg,
    aux_cls_seg: nn::Conv2D,
}

impl DdrHead {
    /// Builds the head under `p` (`head.0`/`head.1`, `aux_head.0`/`aux_head.1`,
    /// `conv_seg`, `aux_cls_seg`).
    pub fn new(p: nn::Path, base: &BaseCfg, norm: &NormCfg, act: &ActCfg) -> Result<Self> {
        let (c_in, c) = (base.in_ch(), base.channels);
        let branch = |name: &str, from: i64| {
            PreNormHead::new(&p / name / 0, &p / name / 1, from, c, norm, act)
        };
        Ok(Self {
            head: branch("head", c_in)?,
            aux_head: branch("aux_head", c_in / 2)?,
            conv_seg: base.cls_seg(&p),
            aux_cls_seg: torch_conv2d(&p / "aux_cls_seg", c, base.seg_channels(), 1, 0, true),
            base: base.clone(),
        })
    }
}

impl DecodeHead for DdrHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let c_in = self.base.in_ch();
        if !train {
            expect_maps(xs, "DDRHead", EVAL, &[("c5", c_in)])?;
            return Ok(vec![self.head.logits(&xs[0], &self.conv_seg, train)?]);
        }
        expect_maps(
            xs,
            "DDRHead",
            "in training mode",
            &[("c3", c_in / 2), ("c5", c_in)],
        )?;
        let x_c = self.head.logits(&xs[1], &self.conv_seg, train)?;
        let x_s = self
            .aux_head
            .forward(&xs[0], train)?
            .apply(&self.aux_cls_seg);
        Ok(vec![x_c, x_s])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let why = "its auxiliary branch reads in_channels // 2";
    let (base, norm, act) = prenorm_base(ctx, 2, why)?;
    build_wrapped(ctx, |p| DdrHead::new(p, &base, &norm, &act))
}

/// The `DDRHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "DDRHead",
        "DDRNet's decode head of mmsegmentation (includes its own classifier). Eval mode (mmseg's inference path): \
         one map (c5) through BN-ReLU-conv3x3, BN-ReLU, dropout and conv_seg. Training mode: the two maps (c3, c5), \
         returning the c5 logits and the auxiliary c3 logits (aux_cls_seg), each at its map's resolution.",
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
