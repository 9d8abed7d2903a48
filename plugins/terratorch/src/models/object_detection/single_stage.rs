//! TerraTorch's single-stage frameworks `fcos` and `retinanet`
//! (`terratorch/models/object_detection_model_factory.py`, 1.2.13): torchvision's `FCOS` /
//! `RetinaNet` (`terrahost_layers::detection::{fcos, retinanet}`) over a [`BackboneWrapper`],
//! with TerraTorch's anchors and heads and its stack-only `TerratorchGeneralizedRCNNTransform`
//! (no normalisation, resize or padding: the detections come out in the input's pixels).
//!
//! * `fcos`: one anchor per location of sizes 8, 16, 32, 64, 128, 256 (cut to the number of
//!   feature maps), aspect ratio 1; torchvision's default `FCOSHead` (4 convolutions with
//!   `GroupNorm(32)` per tower).
//! * `retinanet`: three sizes per level (16, 20, 25 / 32, 40, 50 / 64, 80, 101 /
//!   128, 161, 203 / 256, 322, 406 / 512, 645, 812, cut to the number of feature maps) with
//!   aspect ratios 0.5, 1, 2: nine anchors per location; `RetinaNetHead` with
//!   `norm_layer=partial(GroupNorm, 32)`.
//!
//! Neither has a background class: `num_classes` counts the classes and the labels run
//! from 0. Parameters sit under `torchvision_model.` (`backbone.*`, `head.*`), as
//! TerraTorch's `ObjectDetectionModel` names them.

use super::args::Framework;
use super::backbone_wrapper::BackboneWrapper;
use super::rcnn::images;
use serde_json::{Map, Value};
use tch::nn;
use tch::Tensor;
use terrahost_layers::detection::anchors::AnchorGenerator;
use terrahost_layers::detection::fcos::{FCOSHead, FCOS};
use terrahost_layers::detection::retinanet::{RetinaNet, RetinaNetHead};
use terrahost_layers::detection::roi_heads::Detections;
use terrahost_layers::detection::transform::GeneralizedRCNNTransform;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    PluginError, Result,
};

/// FCOS's anchor size per level (TerraTorch's table), cut to the number of levels.
const FCOS_SIZES: [f64; 6] = [8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// RetinaNet's three anchor sizes per level (TerraTorch's table), cut to the number of levels.
const RETINANET_SIZES: [[f64; 3]; 6] = [
    [16.0, 20.0, 25.0],
    [32.0, 40.0, 50.0],
    [64.0, 80.0, 101.0],
    [128.0, 161.0, 203.0],
    [256.0, 322.0, 406.0],
    [512.0, 645.0, 812.0],
];

/// `partial(torch.nn.GroupNorm, 32)`: TerraTorch's norm layer in RetinaNet's head (FCOS's
/// head has the same by torchvision's default).
const GROUP_NORM_GROUPS: i64 = 32;

/// torchvision's inference settings of `FCOS` / `RetinaNet` that `framework_*` arguments set.
#[derive(Clone, Debug, PartialEq)]
pub struct SingleStageConfig {
    /// `score_thresh`: scores at or below are dropped (FCOS 0.2, RetinaNet 0.05).
    pub score_thresh: f64,
    /// `nms_thresh`: IoU of the per-class NMS (FCOS 0.6, RetinaNet 0.5).
    pub nms_thresh: f64,
    /// `detections_per_img` (FCOS 100, RetinaNet 300).
    pub detections_per_img: i64,
    /// `topk_candidates` per level before NMS (1000).
    pub topk_candidates: i64,
}

impl SingleStageConfig {
    /// torchvision's constructor defaults for `framework` (`fcos` or `retinanet`).
    pub fn torchvision(framework: Framework) -> Self {
        match framework {
            Framework::Fcos => Self {
                score_thresh: 0.2,
                nms_thresh: 0.6,
                detections_per_img: 100,
                topk_candidates: 1000,
            },
            _ => Self {
                score_thresh: 0.05,
                nms_thresh: 0.5,
                detections_per_img: 300,
                topk_candidates: 1000,
            },
        }
    }

    /// Sets `key` (a `framework_` argument without its prefix) when it is one of these
    /// settings; `Ok(false)` when it is not.
    pub fn read(&mut self, key: &str, v: &Value) -> Result<bool> {
        match key {
            "score_thresh" => self.score_thresh = super::args::float_arg(key, v)?,
            "nms_thresh" => self.nms_thresh = super::args::float_arg(key, v)?,
            "detections_per_img" => self.detections_per_img = super::args::int_arg(key, v)?,
            "topk_candidates" => self.topk_candidates = super::args::int_arg(key, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The anchor generator TerraTorch gives `framework` over `levels` feature maps (at most 6).
pub fn anchor_generator(framework: Framework, levels: usize) -> Result<AnchorGenerator> {
    let max = match framework {
        Framework::Fcos => FCOS_SIZES.len(),
        _ => RETINANET_SIZES.len(),
    };
    if levels > max {
        return Err(PluginError::invalid_argument(format!(
            "ObjectDetectionModelFactory: the necks give {levels} feature maps but TerraTorch's {} anchor \
             generator has sizes for at most {max} (torchvision: there needs to be a match between the number \
             of feature maps passed and the number of sizes / aspect ratios specified); use fewer levels",
            framework.name()
        )));
    }
    match framework {
        Framework::Fcos => {
            // TerraTorch passes `((1.0,),) * 6 * len(sizes)` ratios, longer than the sizes;
            // torchvision's AnchorGenerator zips them with the sizes, so each level gets
            // the one ratio 1.0 and the extra entries are never read.
            let sizes = FCOS_SIZES[..levels].iter().map(|&s| vec![s]).collect();
            AnchorGenerator::new(sizes, vec![vec![1.0]; levels])
        }
        _ => {
            let sizes = RETINANET_SIZES[..levels]
                .iter()
                .map(|s| s.to_vec())
                .collect();
            AnchorGenerator::new(sizes, vec![vec![0.5, 1.0, 2.0]; levels])
        }
    }
}

/// The head TerraTorch gives `fcos` / `retinanet` (`head.*` under `torchvision_model`).
#[derive(Debug)]
pub enum Head {
    /// torchvision's default `FCOSHead(C, 1, num_classes)`.
    Fcos(FCOSHead),
    /// `RetinaNetHead(C, 9, num_classes, norm_layer=partial(GroupNorm, 32))`.
    RetinaNet(RetinaNetHead),
}

impl Head {
    /// The head of `framework` under `p / "head"` for `channels`-channel maps.
    pub fn new(
        p: &nn::Path,
        framework: Framework,
        channels: i64,
        num_classes: i64,
    ) -> Result<Self> {
        let context = |e: PluginError| e.context(format_args!("ObjectDetectionModelFactory"));
        Ok(match framework {
            Framework::Fcos => Head::Fcos(
                FCOSHead::new(&(p / "head"), channels, 1, num_classes, 4).map_err(context)?,
            ),
            _ => Head::RetinaNet(
                RetinaNetHead::new(
                    &(p / "head"),
                    channels,
                    9,
                    num_classes,
                    Some(GROUP_NORM_GROUPS),
                )
                .map_err(context)?,
            ),
        })
    }

    /// `head(features)` upstream over the maps (finest first): `cls_logits [N, sum, K]`,
    /// `bbox_regression [N, sum, 4]` and, for FCOS, `bbox_ctrness [N, sum, 1]`.
    pub fn outputs(&self, features: &[Tensor]) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(match self {
            Head::Fcos(h) => {
                let o = h.forward(features)?;
                vec![
                    ("cls_logits", o.cls_logits),
                    ("bbox_regression", o.bbox_regression),
                    ("bbox_ctrness", o.bbox_ctrness),
                ]
            }
            Head::RetinaNet(h) => {
                let (c, r) = h.forward(features)?;
                vec![("cls_logits", c), ("bbox_regression", r)]
            }
        })
    }
}

/// The torchvision model inside TerraTorch's `ObjectDetectionModel`.
enum Detector {
    Fcos(FCOS),
    RetinaNet(RetinaNet),
}

/// `ObjectDetectionModel(torchvision_model=FCOS | RetinaNet)` in eval mode.
pub struct SingleStageModel {
    framework: Framework,
    backbone: BackboneWrapper,
    detector: Detector,
    num_classes: i64,
}

impl SingleStageModel {
    /// TerraTorch's `fcos` / `retinanet` over `backbone`, its head's parameters under
    /// `p` (`torchvision_model`), with `cfg`'s inference settings.
    pub fn new(
        p: &nn::Path,
        framework: Framework,
        backbone: BackboneWrapper,
        num_classes: i64,
        in_channels: i64,
        cfg: &SingleStageConfig,
    ) -> Result<Self> {
        let anchors = anchor_generator(framework, backbone.channel_list.len())?;
        // The transform's sizes are kept by TerraTorch and never used (stack only).
        let transform = GeneralizedRCNNTransform::terratorch(
            800,
            1333,
            vec![0.0; in_channels as usize],
            vec![1.0; in_channels as usize],
        );
        let detector = match Head::new(p, framework, backbone.out_channels(), num_classes)? {
            Head::Fcos(head) => Detector::Fcos(FCOS {
                score_thresh: cfg.score_thresh,
                nms_thresh: cfg.nms_thresh,
                detections_per_img: cfg.detections_per_img,
                topk_candidates: cfg.topk_candidates,
                ..FCOS::new(transform, anchors, head)
            }),
            Head::RetinaNet(head) => Detector::RetinaNet(RetinaNet {
                score_thresh: cfg.score_thresh,
                nms_thresh: cfg.nms_thresh,
                detections_per_img: cfg.detections_per_img,
                topk_candidates: cfg.topk_candidates,
                ..RetinaNet::new(transform, anchors, head)
            }),
        };
        Ok(Self {
            framework,
            backbone,
            detector,
            num_classes,
        })
    }
}

impl Model for SingleStageModel {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        if train {
            return Err(super::eval_only(self.framework));
        }
        let images = images(xs)?;
        let backbone = |batch: &Tensor| self.backbone.forward(batch);
        let detections: Vec<Detections> =
            terrahost_layers::precision::float32_heads(|| match &self.detector {
                Detector::Fcos(m) => m.forward(&images, backbone),
                Detector::RetinaNet(m) => m.forward(&images, backbone),
            })?;
        let mut out = Vec::with_capacity(detections.len() * 3);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_terratorchs_tables_and_refuse_a_seventh_level() {
        // FCOS: one anchor per location; size 8 at ratio 1 is (-4, -4, 4, 4).
        let ag = anchor_generator(Framework::Fcos, 4).unwrap();
        assert_eq!(
            ag.sizes,
            vec![vec![8.0], vec![16.0], vec![32.0], vec![64.0]]
        );
        assert_eq!(ag.cell_anchors[0].size(), [1, 4]);
        let first: Vec<f32> = Vec::try_from(ag.cell_anchors[0].reshape([-1])).unwrap();
        assert_eq!(first, [-4.0, -4.0, 4.0, 4.0]);
        // RetinaNet: three sizes by three ratios; the first is size 16 at ratio 0.5:
        // w = 16 * sqrt(2) = 22.63, h = 16 / sqrt(2) = 11.31, halved and rounded.
        let ag = anchor_generator(Framework::RetinaNet, 6).unwrap();
        assert_eq!(ag.sizes[5], vec![512.0, 645.0, 812.0]);
        assert_eq!(ag.cell_anchors[0].size(), [9, 4]);
        let first: Vec<f32> = Vec::try_from(ag.cell_anchors[0].get(0)).unwrap();
        assert_eq!(first, [-11.0, -6.0, 11.0, 6.0]);
        for fw in [Framework::Fcos, Framework::RetinaNet] {
            let e = anchor_generator(fw, 7).unwrap_err().to_string();
            assert!(
                e.contains("7 feature maps") && e.contains("at most 6"),
                "{e}"
            );
        }
    }
}
