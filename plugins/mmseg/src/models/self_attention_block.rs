//! mmsegmentation 1.2.2's generic `SelfAttentionBlock`
//! (`mmseg/models/utils/self_attention_block.py`): attention of query features over
//! key features through 1x1 projections, used by the NL-style heads (ANNHead's AFNB
//! and APNB, OCRHead's object attention, ISAHead, ...).
use super::conv_module::{torch_conv2d, ConvModule, ConvModuleCfg};
use tch::{nn, Tensor};
use terrahost_plugin_api::Result;

/// One projection layer of a [`SelfAttentionBlock`].
#[derive(Debug)]
enum ProjLayer {
    Plain(nn::Conv2D),
    Module(ConvModule),
}

/// `SelfAttentionBlock.build_project`: `num_convs` 1x1 convs (plain with bias, or
/// `ConvModule`s); one conv sits at `p` itself, several at `p.0`, `p.1`, ...
#[derive(Debug)]
pub struct Project {
    layers: Vec<ProjLayer>,
}

impl Project {
    /// Builds the projection from `c_in` to `c_out`.
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        num_convs: usize,
        module: bool,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let layers = (0..num_convs.max(1))
            .map(|i| {
                let lp = if num_convs > 1 { &p / i } else { p.clone() };
                let c = if i == 0 { c_in } else { c_out };
                Ok(if module {
                    ProjLayer::Module(ConvModule::new(lp, c, c_out, 1, 0, 1, cfg)?)
                } else {
                    ProjLayer::Plain(torch_conv2d(lp, c, c_out, 1, 0, true))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Applies the convs in order.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for l in &self.layers {
            y = match l {
                ProjLayer::Plain(c) => y.apply(c),
                ProjLayer::Module(m) => m.forward(&y, train)?,
            };
        }
        Ok(y)
    }
}

/// The constructor arguments of mmseg's `SelfAttentionBlock`.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    /// Channels of the key (and value) features.
    pub key_in_channels: i64,
    /// Channels of the query features.
    pub query_in_channels: i64,
    /// Channels of the key/query projections.
    pub channels: i64,
    /// Channels of the output.
    pub out_channels: i64,
    /// Whether key and query share one projection (`query_project` is `key_project`).
    pub share_key_query: bool,
    /// Max-pool kernel applied to the projected query.
    pub query_downsample: Option<i64>,
    /// Pyramid pooling (ANN's `PPMConcat`) applied to the projected key and value.
    pub key_pool_scales: Option<Vec<i64>>,
    /// Convs in each key/query projection.
    pub key_query_num_convs: usize,
    /// Convs in the value (and out) projections.
    pub value_out_num_convs: usize,
    /// Key/query projections are `ConvModule`s (else plain convs with bias).
    pub key_query_norm: bool,
    /// Value/out projections are `ConvModule`s.
    pub value_out_norm: bool,
    /// Scale the similarity by `channels ** -0.5`.
    pub matmul_norm: bool,
    /// Project the context from `channels` to `out_channels` (`out_project`).
    pub with_out: bool,
}

impl AttentionSpec {
    /// Attention from `query_in_channels` over `key_in_channels` through `channels`-wide
    /// projections to `out_channels`, with OCR's settings for the rest: two-conv
    /// key/query and one-conv value/out `ConvModule` projections, the similarity scaled
    /// by `channels ** -0.5`, an `out_project`, no sharing, downsampling or pooling.
    pub fn new(
        key_in_channels: i64,
        query_in_channels: i64,
        channels: i64,
        out_channels: i64,
    ) -> Self {
        Self {
            key_in_channels,
            query_in_channels,
            channels,
            out_channels,
            share_key_query: false,
            query_downsample: None,
            key_pool_scales: None,
            key_query_num_convs: 2,
            value_out_num_convs: 1,
            key_query_norm: true,
            value_out_norm: true,
            matmul_norm: true,
            with_out: true,
        }
    }
}

/// mmseg's `SelfAttentionBlock`: softmax(q k^T) v over flattened positions.
#[derive(Debug)]
pub struct SelfAttentionBlock {
    key_project: Project,
    query_project: Project,
    value_project: Project,
    out_project: Option<Project>,
    spec: AttentionSpec,
}

impl SelfAttentionBlock {
    /// Builds the block under `p` (`key_project`, `query_project`, `value_project`, `out_project`).
    pub fn new(p: &nn::Path, spec: AttentionSpec, cfg: &ConvModuleCfg) -> Result<Self> {
        let s = &spec;
        let key_project = Project::new(
            p / "key_project",
            s.key_in_channels,
            s.channels,
            s.key_query_num_convs,
            s.key_query_norm,
            cfg,
        )?;
        // A shared projection is one module under two names in PyTorch's state_dict;
        // both keys exist here too (see `forward` for which one is used).
        let query_project = Project::new(
            p / "query_project",
            s.query_in_channels,
            s.channels,
            s.key_query_num_convs,
            s.key_query_norm,
            cfg,
        )?;
        let value_project = Project::new(
            p / "value_project",
            s.key_in_channels,
            if s.with_out {
                s.channels
            } else {
                s.out_channels
            },
            s.value_out_num_convs,
            s.value_out_norm,
            cfg,
        )?;
        let out_project = s
            .with_out
            .then(|| {
                Project::new(
                    p / "out_project",
                    s.channels,
                    s.out_channels,
                    s.value_out_num_convs,
                    s.value_out_norm,
                    cfg,
                )
            })
            .transpose()?;
        Ok(Self {
            key_project,
            query_project,
            value_project,
            out_project,
            spec,
        })
    }

    /// ANN's `PPMConcat`: adaptive average pools, flattened and concatenated.
    fn key_pool(&self, x: &Tensor) -> Result<Tensor> {
        match &self.spec.key_pool_scales {
            None => Ok(x.shallow_clone()),
            Some(scales) => {
                let (b, c) = (x.size()[0], x.size()[1]);
                let outs = scales
                    .iter()
                    .map(|&s| Ok(x.f_adaptive_avg_pool2d([s, s])?.f_reshape([b, c, -1])?))
                    .collect::<Result<Vec<_>>>()?;
                // [B, C, sum(s*s)]
                Ok(Tensor::f_cat(&outs, 2)?)
            }
        }
    }

    /// Attention of `query_feats` over `key_feats`; the context takes the query's
    /// spatial size.
    pub fn forward(&self, query_feats: &Tensor, key_feats: &Tensor, train: bool) -> Result<Tensor> {
        let qsize = query_feats.size();
        let b = qsize[0];
        let mut query = self.query_project.forward(query_feats, train)?;
        if let Some(k) = self.spec.query_downsample {
            query = query.f_max_pool2d([k, k], [k, k], [0, 0], [1, 1], false)?;
        }
        let qs = query.size();
        // [B, C, h, w] -> [B, h*w, C]
        let query = query.f_reshape([qs[0], qs[1], -1])?.f_permute([0, 2, 1])?;
        // PyTorch loads a shared module's weights twice, the `query_project` keys
        // last, so those are the ones in effect.
        let key_proj = if self.spec.share_key_query {
            &self.query_project
        } else {
            &self.key_project
        };
        let mut key = key_proj.forward(key_feats, train)?;
        let mut value = self.value_project.forward(key_feats, train)?;
        if self.spec.key_pool_scales.is_some() {
            key = self.key_pool(&key)?;
            value = self.key_pool(&value)?;
        }
        let (ks, vs) = (key.size(), value.size());
        let key = key.f_reshape([ks[0], ks[1], -1])?;
        let value = value.f_reshape([vs[0], vs[1], -1])?.f_permute([0, 2, 1])?;
        let mut sim = query.f_matmul(&key)?;
        if self.spec.matmul_norm {
            sim = sim.f_mul_scalar((self.spec.channels as f64).powf(-0.5))?;
        }
        let sim = sim.f_softmax(-1, None)?;
        // [B, Nq, C'] -> [B, C', h, w]
        let context = sim.f_matmul(&value)?.f_permute([0, 2, 1])?.f_contiguous()?;
        let context = context.f_reshape([b, -1, qsize[2], qsize[3]])?;
        match &self.out_project {
            Some(p) => p.forward(&context, train),
            None => Ok(context),
        }
    }
}
