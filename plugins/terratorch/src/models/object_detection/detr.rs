//! TerraTorch's `detr` and `deformable-detr` frameworks (`framework == 'detr'` /
//! `'deformable-detr'` in `terratorch/models/object_detection_model_factory.py`, the wrappers
//! `TerraTorchDETR` and `TerraTorchDeformableDETR` of `terratorch/models/detr/terratorch_detr.py`,
//! TerraTorch 1.2.13), inference only, over a [`BackboneWrapper`]:
//!
//! * `detr`: a 1x1 `input_proj` of the last feature map, `PositionEmbeddingSine(d_model // 2)`,
//!   DETR's `Transformer`, `query_embed`, `class_embed` (`num_classes + 1`, the last is "no
//!   object") and the 3-layer `bbox_embed`; DETR's `PostProcess` gives every query as a
//!   detection (softmax, best real class).
//! * `deformable-detr`: per level a 1x1 conv + `GroupNorm(32)` `input_proj`, extra levels by
//!   stride-2 3x3 convs, the single-stage `DeformableTransformer`, `query_embed` of width
//!   `2 d_model`, `class_embed` (`num_classes`, sigmoid) and `bbox_embed` shared by all decoder
//!   layers (`class_embed.{i}`, `bbox_embed.{i}` hold one module), boxes relative to the
//!   queries' reference points; `PostProcess` keeps the top 100 scores over queries x classes.
//!
//! TerraTorch's Deformable DETR imports a CUDA-only extension (`MultiScaleDeformableAttention`)
//! for its sampling; terrahost runs the PyTorch path of the same sampling
//! (`ms_deform_attn_core_pytorch`) on every device, which is what the fixtures compare with.
//!
//! Labels are `0..num_classes` (no background class, unlike the R-CNNs). The boxes are in the
//! input's pixels (TerraTorch passes every image's input size). Parameters sit under
//! `torchvision_model.` as in TerraTorch's state_dict (DETR also keeps its loss's
//! `criterion.empty_weight` buffer there).
//!
//! `framework_*` arguments are the wrappers' keyword arguments, read in
//! [`super::detr_args`]: the loss-only ones are accepted with a warning, unknown ones are
//! refused as Python's `TypeError` refuses them, and `masks=True` (the segmentation head) is
//! refused as not ported.

use super::args::{warn_leftovers, Framework, Front};
use super::backbone_wrapper::BackboneWrapper;
use super::detr_args::invalid;
pub use super::detr_args::{read_config, DetrConfig};
use serde_json::{Map, Value};
use tch::{nn, Device, Kind, Tensor};
use terrahost_layers::detection::detr::deformable_transformer::{
    inverse_sigmoid, DeformableTransformer, DeformableTransformerConfig,
};
use terrahost_layers::detection::detr::mlp::Mlp;
use terrahost_layers::detection::detr::position_encoding::PositionEmbeddingSine;
use terrahost_layers::detection::detr::postprocess::{
    deformable_detr_postprocess, detr_postprocess, ImageDetections,
};
use terrahost_layers::detection::detr::transformer::Transformer;
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, DynModule, Model},
    ModuleBox, PluginError, Result,
};

/// The output names of one image, in order; image `i`'s are suffixed `.{i}`.
pub const PER_IMAGE_NAMES: [&str; 3] = ["boxes", "scores", "labels"];

/// `TerraTorchDeformableDETR`'s input projections normalise with `GroupNorm(32, d_model)`.
pub(super) const GROUPS: i64 = 32;

/// A `Conv2d(c_in, c_out, k, stride, padding=k // 2)` with bias.
struct Conv {
    conv: nn::Conv2D,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> Self {
        let padding = k / 2;
        let cfg = nn::ConvConfig {
            stride,
            padding,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(p, c_in, c_out, k, cfg),
            stride,
            padding,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.conv;
        Ok(x.f_conv2d(
            &c.ws,
            c.bs.as_ref(),
            [self.stride; 2],
            [self.padding; 2],
            [1; 2],
            1,
        )?)
    }
}

/// DETR's head on the last feature map.
struct DetrHead {
    input_proj: Conv,
    position: PositionEmbeddingSine,
    transformer: Transformer,
    query_embed: Tensor,
    class_embed: nn::Linear,
    bbox_embed: Mlp,
}

/// Deformable DETR's head on every feature map (and the extra levels).
struct DeformableHead {
    /// Per level: conv, GroupNorm weight and bias.
    input_proj: Vec<(Conv, Tensor, Tensor)>,
    position: PositionEmbeddingSine,
    transformer: DeformableTransformer,
    query_embed: Tensor,
    /// The last decoder layer's entry of the shared `class_embed.{i}` / `bbox_embed.{i}`.
    class_embed: nn::Linear,
    bbox_embed: Mlp,
}

enum Head {
    Detr(DetrHead),
    Deformable(DeformableHead),
}

/// The intermediates of one forward, for the parity tests.
pub struct DetrParts {
    /// DETR: `{"src_proj", "pos", "memory"}`; Deformable DETR: `src.{l}`, `pos.{l}`,
    /// `memory`, `reference_points`.
    pub named: Vec<(String, Tensor)>,
    /// The last decoder layer's output `[B, Q, d_model]`.
    pub hs: Tensor,
    /// `[B, Q, K]`.
    pub pred_logits: Tensor,
    /// `[B, Q, 4]` `cx, cy, w, h` relative to the image.
    pub pred_boxes: Tensor,
}

/// `ObjectDetectionModel(torchvision_model=TerraTorchDETR | TerraTorchDeformableDETR)` in eval
/// mode.
pub struct DetrModel {
    framework: Framework,
    backbone: BackboneWrapper,
    head: Head,
    num_classes: i64,
}

fn group_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.f_group_norm(GROUPS, Some(w), Some(b), 1e-5, true)?)
}

impl DetrModel {
    /// Builds the head for `backbone` under `vs`'s `torchvision_model`.
    pub fn new(vs: &nn::VarStore, backbone: BackboneWrapper, cfg: &DetrConfig) -> Result<Self> {
        let root = vs.root() / "torchvision_model";
        let d = cfg.d_model;
        let position = PositionEmbeddingSine::detr(d);
        let layers = |n: i64| n as usize;
        let head = if cfg.framework == Framework::DeformableDetr {
            let channels = &backbone.channel_list;
            let n_backbone = channels.len() as i64;
            let levels = cfg.num_feature_levels.unwrap_or(n_backbone);
            if levels < n_backbone {
                return Err(invalid(format!(
                    "`framework_num_feature_levels` ({levels}) is below the {n_backbone} feature maps of the \
                     backbone and necks; TerraTorch projects every map and then fails indexing level_embed. \
                     Give at least {n_backbone} or leave it unset"
                )));
            }
            let mut input_proj = Vec::new();
            for (l, &c) in channels.iter().enumerate() {
                let p = &root / "input_proj" / l;
                input_proj.push((
                    Conv::new(&p / 0, c, d, 1, 1),
                    (&p / 1).var("weight", &[d], nn::Init::Const(1.0)),
                    (&p / 1).var("bias", &[d], nn::Init::Const(0.0)),
                ));
            }
            let mut c_in = *channels.last().unwrap_or(&d);
            for l in n_backbone..levels {
                let p = &root / "input_proj" / l;
                input_proj.push((
                    Conv::new(&p / 0, c_in, d, 3, 2),
                    (&p / 1).var("weight", &[d], nn::Init::Const(1.0)),
                    (&p / 1).var("bias", &[d], nn::Init::Const(0.0)),
                ));
                c_in = d;
            }
            let transformer = DeformableTransformer::new(
                &root / "transformer",
                DeformableTransformerConfig {
                    d_model: d,
                    nhead: cfg.nhead,
                    num_encoder_layers: layers(cfg.num_encoder_layers),
                    num_decoder_layers: layers(cfg.num_decoder_layers),
                    dim_feedforward: cfg.dim_feedforward,
                    num_feature_levels: levels,
                    n_points: cfg.n_points,
                },
            )?;
            let query_embed = (&root / "query_embed").var(
                "weight",
                &[cfg.num_queries, 2 * d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            );
            // One module per decoder layer in the state_dict, all the same module upstream:
            // every copy is registered (checkpoints carry them all), the last one is applied.
            let mut class_embed = None;
            let mut bbox_embed = None;
            for i in 0..cfg.num_decoder_layers {
                class_embed = Some(nn::linear(
                    &root / "class_embed" / i,
                    d,
                    cfg.num_classes,
                    Default::default(),
                ));
                bbox_embed = Some(Mlp::new(&root / "bbox_embed" / i, d, d, 4, 3));
            }
            let (Some(class_embed), Some(bbox_embed)) = (class_embed, bbox_embed) else {
                return Err(invalid("deformable-detr needs at least one decoder layer"));
            };
            Head::Deformable(DeformableHead {
                input_proj,
                position,
                transformer,
                query_embed,
                class_embed,
                bbox_embed,
            })
        } else {
            let c = backbone.out_channels();
            let head = DetrHead {
                input_proj: Conv::new(&root / "input_proj", c, d, 1, 1),
                position,
                transformer: Transformer::new(
                    &root / "transformer",
                    d,
                    cfg.nhead,
                    layers(cfg.num_encoder_layers),
                    layers(cfg.num_decoder_layers),
                    cfg.dim_feedforward,
                )?,
                query_embed: (&root / "query_embed").var(
                    "weight",
                    &[cfg.num_queries, d],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                ),
                class_embed: nn::linear(
                    &root / "class_embed",
                    d,
                    cfg.num_classes + 1,
                    Default::default(),
                ),
                bbox_embed: Mlp::new(&root / "bbox_embed", d, d, 4, 3),
            };
            // SetCriterion's class weights (ones, `eos_coef` for no-object): a buffer in
            // TerraTorch's state_dict that only the loss reads.
            let _ = (&root / "criterion").var(
                "empty_weight",
                &[cfg.num_classes + 1],
                nn::Init::Const(1.0),
            );
            Head::Detr(head)
        };
        Ok(Self {
            framework: cfg.framework,
            backbone,
            head,
            num_classes: cfg.num_classes,
        })
    }

    /// The input: one floating-point `[B, C, H, W]` tensor, as TerraTorch's DETRs take it.
    fn images<'a>(&self, xs: &'a [Tensor]) -> Result<&'a Tensor> {
        match xs {
            [x] if x.dim() == 4
                && x.numel() > 0
                && matches!(
                    x.kind(),
                    Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
                ) =>
            {
                Ok(x)
            }
            _ => Err(PluginError::invalid_argument(format!(
                "ObjectDetectionModel ({}): expected one non-empty floating-point [B, C, H, W] tensor, got {:?}",
                self.framework.name(),
                xs.iter().map(|x| (x.size(), x.kind())).collect::<Vec<_>>()
            ))),
        }
    }

    /// The forward up to `pred_logits` / `pred_boxes`, with the intermediates.
    pub fn forward_parts(&self, x: &Tensor) -> Result<DetrParts> {
        let features: Vec<Tensor> = self
            .backbone
            .forward(x)?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let last = features.last().ok_or_else(|| {
            PluginError::forward_failed(
                "ObjectDetectionModel: the backbone and necks returned no feature maps",
            )
        })?;
        match &self.head {
            Head::Detr(h) => {
                let src = h.input_proj.forward(last)?;
                let pos = h.position.forward(&src)?;
                let (hs, memory) = h.transformer.forward(&src, &h.query_embed, &pos)?;
                let pred_logits = hs.f_linear(&h.class_embed.ws, h.class_embed.bs.as_ref())?;
                let pred_boxes = h.bbox_embed.forward(&hs)?.f_sigmoid()?;
                Ok(DetrParts {
                    named: vec![
                        ("src_proj".into(), src),
                        ("pos".into(), pos),
                        ("memory".into(), memory),
                    ],
                    hs,
                    pred_logits,
                    pred_boxes,
                })
            }
            Head::Deformable(h) => {
                if features.len() > h.input_proj.len() {
                    return Err(PluginError::forward_failed(format!(
                        "ObjectDetectionModel: the backbone and necks returned {} feature maps, built for {}",
                        features.len(),
                        h.input_proj.len()
                    )));
                }
                let mut srcs = Vec::with_capacity(h.input_proj.len());
                for (l, (c, w, b)) in h.input_proj.iter().enumerate() {
                    // Backbone levels project their own map; the first extra level the last
                    // backbone map, the next ones the previous projection.
                    let input = match features.get(l) {
                        Some(f) => f,
                        None if l == features.len() => last,
                        None => &srcs[l - 1],
                    };
                    srcs.push(group_norm(&c.forward(input)?, w, b)?);
                }
                let pos: Vec<Tensor> = srcs
                    .iter()
                    .map(|s| h.position.forward(s))
                    .collect::<Result<_>>()?;
                let out = h.transformer.forward(&srcs, &pos, &h.query_embed)?;
                let pred_logits = out
                    .hs
                    .f_linear(&h.class_embed.ws, h.class_embed.bs.as_ref())?;
                let tmp = h.bbox_embed.forward(&out.hs)?;
                // Boxes relative to the reference points: the centre offsets in logit space.
                let reference = inverse_sigmoid(&out.reference_points)?;
                let centre = tmp.f_slice(2, 0, 2, 1)?.f_add(&reference)?;
                let pred_boxes =
                    Tensor::f_cat(&[centre, tmp.f_slice(2, 2, 4, 1)?], 2)?.f_sigmoid()?;
                let mut named: Vec<(String, Tensor)> = Vec::new();
                for (l, (s, p)) in srcs.into_iter().zip(pos).enumerate() {
                    named.push((format!("src.{l}"), s));
                    named.push((format!("pos.{l}"), p));
                }
                named.push(("memory".into(), out.memory));
                named.push(("reference_points".into(), out.reference_points));
                Ok(DetrParts {
                    named,
                    hs: out.hs,
                    pred_logits,
                    pred_boxes,
                })
            }
        }
    }
}

impl Model for DetrModel {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        if train {
            return Err(super::eval_only(self.framework));
        }
        let x = self.images(xs)?;
        let s = x.size();
        let (h, w) = (s[2], s[3]);
        // Under `--precision bf16` the backbone and necks run in bfloat16, the
        // transformer and the heads in float32 (see `BackboneWrapper::forward`).
        let parts = terrahost_layers::precision::float32_heads(|| self.forward_parts(x))?;
        let detections: Vec<ImageDetections> = match self.head {
            Head::Detr(_) => detr_postprocess(&parts.pred_logits, &parts.pred_boxes, h, w)?,
            Head::Deformable(_) => {
                deformable_detr_postprocess(&parts.pred_logits, &parts.pred_boxes, h, w)?
            }
        };
        let mut out = Vec::with_capacity(detections.len() * PER_IMAGE_NAMES.len());
        for d in detections {
            out.extend([d.boxes, d.scores, d.labels]);
        }
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.num_classes]
    }

    fn includes_head(&self) -> bool {
        true
    }

    fn meta(&self) -> Map<String, Value> {
        super::model_meta(self.framework, &self.backbone)
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        self.backbone.children()
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        self.backbone.children_mut()
    }
}

/// Builds a `detr` or `deformable-detr` model from the shared front of the arguments.
pub fn build(ctx: &BuildCtx<'_, '_>, front: Front) -> Result<ModuleBox> {
    let cfg = read_config(
        front.framework,
        front.num_classes.as_ref(),
        &front.framework_kwargs,
    )?;
    warn_leftovers(&front.rest);
    let wrapper = super::backbone_wrapper(
        ctx,
        &front.backbone,
        &front.backbone_kwargs,
        &front.temporal,
        &front.necks,
    )?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = DetrModel::new(&vs, wrapper, &cfg)
        .map_err(|e| e.context(format_args!("ObjectDetectionModelFactory")))?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}
