//! mmsegmentation 1.2.2's `ANNHead` (`mmseg/models/decode_heads/ann_head.py`,
//! asymmetric non-local networks): an asymmetric fusion block (`AFNB`, high-level
//! queries over pyramid-pooled low-level keys) and an asymmetric pyramid block
//! (`APNB`), built as TerraTorch's `MMSegRegistry` builds it.
//!
//! ANNHead forces `input_transform="multiple_select"`: the channel list has two
//! entries (low, high) and `in_index` picks the two maps.
use super::conv_module::{ConvModule, ConvModuleCfg};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::self_attention_block::{AttentionSpec, SelfAttentionBlock};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// `AFNB` / `APNB`: attention stages (one per query scale) summed, then a 1x1
/// bottleneck over `[context, query features]`.
#[derive(Debug)]
struct PyramidBlock {
    stages: Vec<SelfAttentionBlock>,
    bottleneck: ConvModule,
}

impl PyramidBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        low: i64,
        high: i64,
        channels: i64,
        out: i64,
        n_stages: usize,
        key_pool_scales: &[i64],
        share_key_query: bool,
        bottleneck_in: i64,
        cfg: &ConvModuleCfg,
        bottleneck_cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let spec = AttentionSpec {
            share_key_query,
            key_pool_scales: Some(key_pool_scales.to_vec()),
            key_query_num_convs: 1,
            value_out_norm: false,
            ..AttentionSpec::new(low, high, channels, out)
        };
        let stages = (0..n_stages)
            .map(|i| SelfAttentionBlock::new(&(&p / "stages" / i), spec.clone(), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stages,
            bottleneck: ConvModule::new(
                &p / "bottleneck",
                bottleneck_in,
                out,
                1,
                0,
                1,
                bottleneck_cfg,
            )?,
        })
    }

    fn forward(&self, low: &Tensor, high: &Tensor, train: bool) -> Result<Tensor> {
        let mut context: Option<Tensor> = None;
        for stage in &self.stages {
            let prior = stage.forward(high, low, train)?;
            context = Some(match context {
                None => prior,
                Some(c) => c.f_add(&prior)?,
            });
        }
        let context = context.expect("at least one query scale (validated)");
        self.bottleneck
            .forward(&Tensor::f_cat(&[&context, high], 1)?, train)
    }
}

/// mmseg's `ANNHead`.
#[derive(Debug)]
pub struct AnnHead {
    base: BaseCfg,
    fusion: PyramidBlock,
    bottleneck: ConvModule,
    context: PyramidBlock,
    conv_seg: ClsSeg,
}

impl AnnHead {
    /// Builds the head under `p`.
    pub fn new(
        p: nn::Path,
        base: &BaseCfg,
        project: i64,
        n_stages: usize,
        key_pool_scales: &[i64],
    ) -> Result<Self> {
        let (low, high, c) = (base.in_channels[0], base.in_channels[1], base.channels);
        let cfg = &base.conv;
        let no_act = ConvModuleCfg {
            norm_cfg: cfg.norm_cfg.clone(),
            act_cfg: None,
        };
        Ok(Self {
            fusion: PyramidBlock::new(
                &p / "fusion",
                low,
                high,
                project,
                high,
                n_stages,
                key_pool_scales,
                false,
                2 * high,
                cfg,
                &no_act,
            )?,
            bottleneck: ConvModule::new(&p / "bottleneck", high, c, 3, 1, 1, cfg)?,
            context: PyramidBlock::new(
                &p / "context",
                c,
                c,
                project,
                c,
                n_stages,
                key_pool_scales,
                true,
                2 * c,
                cfg,
                cfg,
            )?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }
}

impl DecodeHead for AnnHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let maps = self.base.select(xs)?;
        let (low, high) = (&maps[0], &maps[1]);
        let y = self.fusion.forward(low, high, train)?;
        let y = y.f_feature_dropout(self.base.dropout_ratio, train)?;
        let y = self.bottleneck.forward(&y, train)?;
        let y = self.context.forward(&y, &y, train)?;
        Ok(vec![self.conv_seg.forward(&y, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(
        ctx,
        Inputs::Multiple {
            min: 2,
            exact: Some(2),
        },
    )?;
    let a = &ctx.args;
    let project: i64 = a.get("project_channels")?;
    a.ensure(
        project > 0,
        "project_channels",
        format_args!("must be positive, got {project}"),
    )?;
    let query_scales = ctx.args.get::<Vec<i64>>("query_scales")?;
    a.ensure(
        !query_scales.is_empty() && query_scales.iter().all(|&s| s == 1),
        "query_scales",
        format_args!(
            "must be a non-empty list of 1s, got {query_scales:?}: a query scale above 1 downsamples the queries, and \
             mmseg's attention block then reshapes the context to the wrong channel count and fails"
        ),
    )?;
    let key_pool_scales = ctx.args.get::<Vec<i64>>("key_pool_scales")?;
    a.ensure(
        !key_pool_scales.is_empty() && key_pool_scales.iter().all(|&s| s >= 1),
        "key_pool_scales",
        format_args!("must be a non-empty list of positive integers, got {key_pool_scales:?}"),
    )?;
    a.ensure(
        base.dropout_ratio > 0.0,
        "dropout_ratio",
        "must be above 0 for ANNHead: its forward calls the dropout layer, which mmseg does not build for 0",
    )?;
    build_wrapped(ctx, |p| {
        AnnHead::new(p, &base, project, query_scales.len(), &key_pool_scales)
    })
}

/// The `ANNHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "ANNHead",
        "Asymmetric non-local decode head of mmsegmentation (ANNNet; includes its own classifier). Reads two maps \
         (channel list [low, high], in_index with two indices): attention of the high-level map over pyramid-pooled \
         low-level keys (AFNB), dropout, a 3x3 conv, pyramid self-attention (APNB), then dropout and a 1x1 conv_seg \
         to class logits at the high-level map's resolution.",
        build,
        |e| {
            e.req("project_channels", ParamType::INT, "key/query width of the attention blocks (required)")
                .opt("query_scales", ParamType::INT_LIST, json!([1]), "one attention stage per entry; only 1 works in mmseg")
                .opt("key_pool_scales", ParamType::INT_LIST, json!([1, 3, 6, 8]), "pyramid pooling sizes of keys and values")
        },
        BaseParams::multiple_select(),
    )
}
