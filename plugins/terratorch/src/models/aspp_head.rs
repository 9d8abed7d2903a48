//! TerraTorch's DeepLabV3-style atrous spatial pyramid pooling: the branch module, the
//! feature head and its segmentation and regression variants.
//! Mirrors `terratorch/models/decoders/aspp_head.py` (`ASPPModule`, `ASPPHead`,
//! `ASPPSegmentationHead`, `ASPPRegressionHead`).
//!
//! Upstream, `ASPPModule` and `ASPPHead` take `dilations` as their first positional
//! parameter, so the channel list a registry build passes them *is* their dilation
//! list; the two task heads take the channel list first, ignore it and read
//! `dilations` as a keyword. The entries here keep that behaviour.

use super::py_index;
use super::upernet_decoder::{resize_bilinear, ConvModule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::{
    params::describe_json,
    sdk::{BuildCtx, Built, Entry, Model},
    ParamType, PluginError, Result,
};

/// One `ConvModule` per dilation rate: 1x1 for rate 1, 3x3 with padding = rate otherwise.
#[derive(Debug)]
pub struct ASPPModule {
    branches: Vec<ConvModule>,
    channels: i64,
}

impl ASPPModule {
    /// Builds the branches under `p` (`model_sequence.{i}`).
    pub fn new(p: nn::Path, dilations: &[i64], in_channels: i64, channels: i64) -> Result<Self> {
        check_widths("ASPPModule", in_channels, channels)?;
        if dilations.is_empty() {
            return Err(PluginError::invalid_argument(
                "ASPPModule: the dilation list (the channel list given to the registry) is empty; pass e.g. 1,6,12,18",
            ));
        }
        if let Some(d) = dilations.iter().find(|&&d| d < 1) {
            return Err(PluginError::invalid_argument(format!(
                "ASPPModule: dilations must be >= 1, got {d} in {dilations:?}"
            )));
        }
        let seq = &p / "model_sequence";
        let branches = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let (k, pad) = if d == 1 { (1, 0) } else { (3, d) };
                ConvModule::new(&seq / i, in_channels, channels, k, pad, d)
            })
            .collect();
        Ok(Self { branches, channels })
    }

    /// One `[B, channels, H, W]` map per dilation.
    fn run(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.branches.iter().map(|b| b.forward(x, train)).collect()
    }
}

impl Model for ASPPModule {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => self.run(x, train),
            _ => Err(PluginError::forward_failed(format!(
                "ASPPModule takes one feature map (upstream forward(x) takes a tensor), got {}",
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.channels; self.branches.len()]
    }
}

fn check_widths(what: &str, in_channels: i64, channels: i64) -> Result<()> {
    for (name, v) in [("in_channels", in_channels), ("channels", channels)] {
        if v < 1 {
            return Err(PluginError::invalid_argument(format!(
                "{what}: `{name}` must be >= 1, got {v}"
            )));
        }
    }
    Ok(())
}

/// How the head picks its input from the feature list (upstream `input_transform`).
#[derive(Clone, Debug, PartialEq)]
pub enum InputTransform {
    /// `None`: the map at this (Python) index.
    Select(i64),
    /// `"resize_concat"`: these maps, resized to the first one's size and concatenated.
    ResizeConcat(Vec<i64>),
}

impl InputTransform {
    /// Reads `input_transform` and `in_index` as upstream combines them.
    pub fn parse(input_transform: Option<&str>, in_index: &Value) -> Result<Self> {
        let list =
            || -> Option<Vec<i64>> { in_index.as_array()?.iter().map(Value::as_i64).collect() };
        match (input_transform, in_index.as_i64()) {
            (None, Some(i)) => Ok(Self::Select(i)),
            (None, None) => Err(PluginError::invalid_argument(format!(
                "`in_index` must be one integer unless input_transform is \"resize_concat\", got {}",
                describe_json(in_index)
            ))),
            (Some("resize_concat"), _) => match list() {
                Some(l) if !l.is_empty() => Ok(Self::ResizeConcat(l)),
                _ => Err(PluginError::invalid_argument(format!(
                    "`in_index` must be a non-empty list of integers with input_transform \"resize_concat\", got {}",
                    describe_json(in_index)
                ))),
            },
            (Some("multiple_select"), _) => Err(PluginError::invalid_argument(
                "`input_transform` \"multiple_select\" hands a list of maps to the image pool, which fails \
                 upstream; use \"resize_concat\" or null",
            )),
            (Some(other), _) => Err(PluginError::invalid_argument(format!(
                "`input_transform` must be null or \"resize_concat\", got {other:?}"
            ))),
        }
    }
}

/// Arguments shared by the ASPP heads, with upstream defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct HeadConfig {
    /// Dilation rates of the ASPP branches.
    pub dilations: Vec<i64>,
    /// Channels of the selected (or concatenated) input map.
    pub in_channels: i64,
    /// Width of every branch and of the bottleneck.
    pub channels: i64,
    /// `align_corners` of the bilinear resizes.
    pub align_corners: bool,
    /// `Dropout2d` rate before the task head's classifier (training only).
    pub head_dropout_ratio: f64,
}

/// `ASPPHead`: image pooling + ASPP branches, concatenated and fused by a 3x3 bottleneck.
#[derive(Debug)]
pub struct ASPPHead {
    image_pool: ConvModule,
    aspp: ASPPModule,
    bottleneck: ConvModule,
    transform: InputTransform,
    align_corners: bool,
    channels: i64,
}

impl ASPPHead {
    /// Builds the head under `p` (`image_pool.1`, `aspp_modules.model_sequence.{i}`, `bottleneck`).
    pub fn new(p: &nn::Path, cfg: &HeadConfig, transform: InputTransform) -> Result<Self> {
        check_widths("ASPPHead", cfg.in_channels, cfg.channels)?;
        let aspp = ASPPModule::new(
            p / "aspp_modules",
            &cfg.dilations,
            cfg.in_channels,
            cfg.channels,
        )?;
        let n = cfg.dilations.len() as i64 + 1;
        Ok(Self {
            image_pool: ConvModule::new(
                p / "image_pool" / 1,
                cfg.in_channels,
                cfg.channels,
                1,
                0,
                1,
            ),
            aspp,
            bottleneck: ConvModule::new(p / "bottleneck", n * cfg.channels, cfg.channels, 3, 1, 1),
            transform,
            align_corners: cfg.align_corners,
            channels: cfg.channels,
        })
    }

    fn pick(xs: &[Tensor], i: i64) -> Result<&Tensor> {
        let k = py_index(i, xs.len(), "`in_index`").map_err(|e| {
            PluginError::forward_failed(format!(
                "{} (the head received {} maps)",
                e.message(),
                xs.len()
            ))
        })?;
        Ok(&xs[k])
    }

    /// Upstream `_transform_inputs`.
    fn select(&self, xs: &[Tensor]) -> Result<Tensor> {
        match &self.transform {
            InputTransform::Select(i) => Ok(Self::pick(xs, *i)?.shallow_clone()),
            InputTransform::ResizeConcat(idx) => {
                let picked: Vec<&Tensor> = idx
                    .iter()
                    .map(|&i| Self::pick(xs, i))
                    .collect::<Result<_>>()?;
                let size = picked[0].size()[2..].to_vec();
                let resized: Vec<Tensor> = picked
                    .iter()
                    .map(|x| resize_bilinear(x, &size, self.align_corners))
                    .collect::<Result<_>>()?;
                Ok(Tensor::f_cat(&resized, 1)?)
            }
        }
    }

    /// Upstream `_forward_feature`: `[B, in_channels, H, W]` -> `[B, channels, H, W]`.
    fn features(&self, xs: &[Tensor], train: bool) -> Result<Tensor> {
        let x = self.select(xs)?;
        let size = x.size()[2..].to_vec();
        let pooled = self
            .image_pool
            .forward(&x.f_adaptive_avg_pool2d([1, 1])?, train)?;
        let mut outs = vec![resize_bilinear(&pooled, &size, self.align_corners)?];
        outs.extend(self.aspp.run(&x, train)?);
        self.bottleneck.forward(&Tensor::f_cat(&outs, 1)?, train)
    }
}

impl Model for ASPPHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        Ok(vec![self.features(xs, train)?])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.channels]
    }
}

/// `ASPPSegmentationHead` / `ASPPRegressionHead`: the ASPP features, `Dropout2d`, and a
/// 1x1 conv (`conv_seg` or `conv_reg`) to the output channels.
#[derive(Debug)]
pub struct ASPPTaskHead {
    head: ASPPHead,
    classifier: nn::Conv2D,
    dropout: f64,
    out: i64,
}

impl ASPPTaskHead {
    /// Builds the head under `p`; `classifier` names the final conv (`conv_seg`, `conv_reg`).
    pub fn new(
        p: nn::Path,
        cfg: &HeadConfig,
        transform: InputTransform,
        classifier: &str,
        out: i64,
    ) -> Result<Self> {
        if out < 1 {
            return Err(PluginError::invalid_argument(format!(
                "the number of outputs of `{classifier}` must be >= 1, got {out}"
            )));
        }
        if !(0.0..=1.0).contains(&cfg.head_dropout_ratio) {
            return Err(PluginError::invalid_argument(format!(
                "`head_dropout_ratio` must be between 0 and 1, got {}",
                cfg.head_dropout_ratio
            )));
        }
        let head = ASPPHead::new(&p, cfg, transform)?;
        let classifier = nn::conv2d(&p / classifier, cfg.channels, out, 1, Default::default());
        Ok(Self {
            head,
            classifier,
            dropout: cfg.head_dropout_ratio,
            out,
        })
    }
}

impl Model for ASPPTaskHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let f = self.head.features(xs, train)?;
        // Upstream only creates the dropout for a positive rate.
        let f = if self.dropout > 0.0 {
            f.f_feature_dropout(self.dropout, train)?
        } else {
            f
        };
        Ok(vec![f.apply(&self.classifier)])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.out]
    }
}

/// Reads the keyword arguments every ASPP head shares.
fn head_args(ctx: &BuildCtx<'_, '_>, dilations: Vec<i64>) -> Result<(HeadConfig, InputTransform)> {
    let input_transform: Option<String> = ctx.args.opt("input_transform")?;
    let in_index = ctx.args.raw("in_index").cloned().unwrap_or(json!(-1));
    let transform = InputTransform::parse(input_transform.as_deref(), &in_index).map_err(|e| {
        PluginError::invalid_argument(format!("`{}`: {}", ctx.qualified(), e.message()))
    })?;
    let cfg = HeadConfig {
        dilations,
        in_channels: ctx.args.get("in_channels")?,
        channels: ctx.args.get("channels")?,
        align_corners: ctx.args.get("align_corners")?,
        head_dropout_ratio: ctx.args.get("head_dropout_ratio")?,
    };
    Ok((cfg, transform))
}

/// Adds the keyword parameters every ASPP head shares (after `dilations`).
fn head_params(e: Entry) -> Entry {
    e.req(
        "in_channels",
        ParamType::INT,
        "channels of the selected input map (upstream default None fails)",
    )
    .req(
        "channels",
        ParamType::INT,
        "width of the ASPP branches and bottleneck (upstream default None fails)",
    )
}

fn head_tail_params(e: Entry) -> Entry {
    e.opt("align_corners", ParamType::BOOL, json!(false), "align_corners of the bilinear resizes")
        .opt("head_dropout_ratio", ParamType::FLOAT, json!(0.3), "Dropout2d rate before the final 1x1 conv (training only)")
        .opt(
            "input_transform",
            ParamType::STR,
            Value::Null,
            "null (use the map at in_index) or \"resize_concat\" (resize the maps at in_index to the first and concatenate)",
        )
        .opt("in_index", ParamType::INT_OR_INT_LIST, json!(-1), "which map(s) to use (a list with \"resize_concat\")")
        .takes_channels()
}

/// The `ASPPModule` registry entry.
pub(crate) fn module_entry() -> Entry {
    Entry::new(
        "ASPPModule",
        "The ASPP branches alone: one conv-BN-ReLU per dilation rate (1x1 for rate 1, 3x3 dilated otherwise) \
         applied to one map, returning one map per rate. As upstream, whose first parameter is `dilations`, \
         the channel list given to the registry is the dilation list.",
        |ctx| {
            let in_channels: i64 = ctx.args.get("in_channels")?;
            let channels: i64 = ctx.args.get("channels")?;
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ASPPModule::new(vs.root(), &ctx.channels, in_channels, channels)?;
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        },
    )
    .req("in_channels", ParamType::INT, "channels of the input map")
    .req("channels", ParamType::INT, "width of every branch")
    .opt("conv_cfg", ParamType::ANY, Value::Null, "accepted and unused, as upstream (required there)")
    .opt("norm_cfg", ParamType::ANY, Value::Null, "accepted and unused, as upstream (required there)")
    .opt("act_cfg", ParamType::ANY, Value::Null, "accepted and unused, as upstream (required there)")
    .takes_channels()
}

/// The `ASPPHead` registry entry.
pub(crate) fn head_entry() -> Entry {
    head_tail_params(
        head_params(Entry::new(
            "ASPPHead",
            "DeepLabV3 ASPP features: image pooling plus one dilated conv-BN-ReLU branch per rate on the map at \
             `in_index`, fused by a 3x3 bottleneck to `channels` (no classifier). As upstream, whose first \
             parameter is `dilations`, the channel list given to the registry is the dilation list.",
            |ctx| {
                let (cfg, transform) = head_args(ctx, ctx.channels.clone())?;
                let vs = nn::VarStore::new(Device::Cpu);
                let model = ASPPHead::new(&vs.root(), &cfg, transform)?;
                Ok(Built::new(ctx.qualified(), vs, model).boxed())
            },
        ))
        .opt("out_dim", ParamType::INT, json!(3), "stored and unused upstream"),
    )
}

/// The `ASPPSegmentationHead` registry entry.
pub(crate) fn segmentation_entry() -> Entry {
    head_tail_params(
        head_params(
            Entry::new(
                "ASPPSegmentationHead",
                "DeepLabV3 head for segmentation: ASPP features of the map at `in_index`, Dropout2d and a 1x1 \
                 `conv_seg` to `num_classes` logits at that map's size. The channel list is unused (as upstream); \
                 give `in_channels`.",
                |ctx| {
                    let (cfg, transform) = head_args(ctx, ctx.args.get("dilations")?)?;
                    let n: i64 = ctx.args.get("num_classes")?;
                    let vs = nn::VarStore::new(Device::Cpu);
                    let model = ASPPTaskHead::new(vs.root(), &cfg, transform, "conv_seg", n)?;
                    Ok(Built::new(ctx.qualified(), vs, model).boxed())
                },
            )
            .opt("dilations", ParamType::INT_LIST, json!([1, 6, 12, 18]), "dilation rates of the ASPP branches"),
        )
        .opt("num_classes", ParamType::INT, json!(2), "output channels of conv_seg"),
    )
}

/// The `ASPPRegressionHead` registry entry.
pub(crate) fn regression_entry() -> Entry {
    head_tail_params(
        head_params(
            Entry::new(
                "ASPPRegressionHead",
                "DeepLabV3 head for pixel-wise regression: ASPP features of the map at `in_index`, Dropout2d and \
                 a 1x1 `conv_reg` to `out_channels`. The channel list is unused (as upstream); give `in_channels`.",
                |ctx| {
                    let (cfg, transform) = head_args(ctx, ctx.args.get("dilations")?)?;
                    let n: i64 = ctx.args.get("out_channels")?;
                    let vs = nn::VarStore::new(Device::Cpu);
                    let model = ASPPTaskHead::new(vs.root(), &cfg, transform, "conv_reg", n)?;
                    Ok(Built::new(ctx.qualified(), vs, model).boxed())
                },
            )
            .opt("dilations", ParamType::INT_LIST, json!([1, 6, 12, 18]), "dilation rates of the ASPP branches"),
        )
        .opt("out_channels", ParamType::INT, json!(1), "output channels of conv_reg"),
    )
}
