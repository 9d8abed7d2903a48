//! TerraTorch's `faster-rcnn` and `mask-rcnn` frameworks: torchvision's `FasterRCNN` /
//! `MaskRCNN` (`terrahost_layers::detection::faster_rcnn`) over a [`BackboneWrapper`],
//! with TerraTorch's `TerratorchGeneralizedRCNNTransform` (`terratorch/models/utils.py`),
//! which only stacks the images: no normalisation, no resize, no padding. The detections
//! therefore come out in the input's pixels, and `postprocess` only pastes the masks.
//!
//! Wrapped as TerraTorch's `ObjectDetectionModel`: every parameter sits under
//! `torchvision_model.` (`backbone.backbone.*`, `backbone.necks.{i}.*`, `rpn.*`,
//! `roi_heads.*`).

use super::args::Framework;
use super::backbone_wrapper::BackboneWrapper;
use serde_json::{Map, Value};
use tch::{Kind, Tensor};
use terrahost_layers::detection::faster_rcnn::GeneralizedRCNN;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    PluginError, Result,
};

/// `ObjectDetectionModel(torchvision_model=FasterRCNN | MaskRCNN)` in eval mode.
pub struct RcnnModel {
    framework: Framework,
    backbone: BackboneWrapper,
    rcnn: GeneralizedRCNN,
    num_classes: i64,
}

impl RcnnModel {
    /// Assembles the model; `rcnn`'s parameters live in the caller's `VarStore`.
    pub fn new(
        framework: Framework,
        backbone: BackboneWrapper,
        rcnn: GeneralizedRCNN,
        num_classes: i64,
    ) -> Self {
        Self {
            framework,
            backbone,
            rcnn,
            num_classes,
        }
    }
}

/// The images: one `[B, C, H, W]` tensor, or `[C, H, W]` tensors (of one size, which
/// TerraTorch's transform checks when it stacks them).
pub fn images(xs: &[Tensor]) -> Result<Vec<Tensor>> {
    let images = match xs {
            [x] if x.dim() == 4 => x.f_unbind(0)?,
            _ if !xs.is_empty() && xs.iter().all(|x| x.dim() == 3) => {
                xs.iter().map(Tensor::shallow_clone).collect()
            }
            _ => {
                return Err(PluginError::invalid_argument(format!(
                    "ObjectDetectionModel: expected one [B, C, H, W] tensor or [C, H, W] images, got shapes {:?}",
                    xs.iter().map(Tensor::size).collect::<Vec<_>>()
                )))
            }
        };
    if let Some(x) = images.iter().find(|x| {
        !matches!(
            x.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        )
    }) {
        return Err(PluginError::invalid_argument(format!(
            "ObjectDetectionModel: expected floating-point images, got {:?}",
            x.kind()
        )));
    }
    if images.is_empty() || images.iter().any(|x| x.numel() == 0) {
        return Err(PluginError::invalid_argument(
            "ObjectDetectionModel: empty batch or image",
        ));
    }
    Ok(images)
}

impl Model for RcnnModel {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        if train {
            return Err(super::eval_only(self.framework));
        }
        let images = images(xs)?;
        // TerraTorch's transform stacks the images (no normalisation, resize or padding),
        // so the detections come out in the input's pixels.
        let detections = terrahost_layers::precision::float32_heads(|| {
            self.rcnn
                .forward(&images, |batch| self.backbone.forward(batch))
        })?;
        let mut out = Vec::with_capacity(detections.len() * 4);
        for d in detections {
            out.push(d.boxes);
            out.push(d.scores);
            out.push(d.labels);
            if self.framework == Framework::MaskRcnn {
                out.push(d.masks.ok_or_else(|| {
                    PluginError::build_failed("ObjectDetectionModel: Mask R-CNN returned no masks")
                })?);
            }
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
