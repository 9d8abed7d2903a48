//! torchvision's `GeneralizedRCNN` inference (`torchvision/models/detection/
//! generalized_rcnn.py`) as Faster R-CNN and Mask R-CNN compose it (`faster_rcnn.py`,
//! `mask_rcnn.py`): transform -> backbone -> RPN -> RoI heads -> postprocess back to the
//! input sizes (boxes rescaled, masks pasted into the images). The backbone is the
//! caller's: a closure from the batched images to named feature maps, so that any
//! registry backbone (and neck) can feed it.
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

use super::anchors::AnchorGenerator;
use super::image_list::original_image_sizes;
use super::poolers::MultiScaleRoIAlign;
use super::roi_heads::{
    paste_masks_in_image, BoxHead, Detections, FastRCNNConvFCHead, FastRCNNPredictor, MaskBranch,
    MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead,
};
use super::rpn::{RPNHead, RegionProposalNetwork};
use super::transform::{resize_boxes, GeneralizedRCNNTransform};

/// The Mask R-CNN part of [`RCNNConfig`], with `MaskRCNN`'s defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskConfig {
    /// `mask_roi_pool`'s feature maps.
    pub featmap_names: Vec<String>,
    /// `mask_roi_pool`'s output size (14).
    pub output_size: i64,
    /// `mask_roi_pool`'s sampling ratio (2).
    pub sampling_ratio: i64,
    /// `MaskRCNNHeads` layers (256, 256, 256, 256).
    pub layers: Vec<i64>,
    /// `MaskRCNNHeads` dilation (1).
    pub dilation: i64,
    /// `MaskRCNNPredictor`'s `dim_reduced` (256).
    pub dim_reduced: i64,
    /// `MaskRCNNHeads` with `norm_layer=BatchNorm2d` (TerraTorch's); no norm by default.
    pub batch_norm: bool,
}

/// The box head of [`RCNNConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxHeadConfig {
    /// torchvision's default `TwoMLPHead(C * R * R, representation_size)` (1024).
    TwoMlp {
        /// Both linear layers' width.
        representation_size: i64,
    },
    /// `FastRCNNConvFCHead((C, R, R), conv_layers, fc_layers, norm_layer)` (TerraTorch's
    /// Mask R-CNN: [256, 256, 256, 256], [1024], BatchNorm2d).
    ConvFc {
        /// The 3x3 convolutions' channels.
        conv_layers: Vec<i64>,
        /// The linear layers' widths.
        fc_layers: Vec<i64>,
        /// A `BatchNorm2d` after each convolution.
        batch_norm: bool,
    },
}

impl Default for MaskConfig {
    fn default() -> Self {
        MaskConfig {
            featmap_names: ["0", "1", "2", "3"].map(String::from).to_vec(),
            output_size: 14,
            sampling_ratio: 2,
            layers: vec![256; 4],
            dilation: 1,
            dim_reduced: 256,
            batch_norm: false,
        }
    }
}

/// The arguments of torchvision's `FasterRCNN` / `MaskRCNN` that inference uses, with
/// their defaults; the heads are the default ones (`RPNHead`, `TwoMLPHead`,
/// `FastRCNNPredictor`, and for masks `MaskRCNNHeads`, `MaskRCNNPredictor`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RCNNConfig {
    /// Classes, background included (91).
    pub num_classes: i64,
    /// `min_size` (800).
    pub min_size: i64,
    /// `max_size` (1333).
    pub max_size: i64,
    /// `image_mean` (ImageNet's).
    pub image_mean: Vec<f64>,
    /// `image_std` (ImageNet's).
    pub image_std: Vec<f64>,
    /// TerraTorch's transform, which only stacks the images
    /// ([`GeneralizedRCNNTransform::stack_only`]); torchvision's by default.
    pub terratorch_transform: bool,
    /// Anchor sizes per feature level ((32,), (64,), (128,), (256,), (512,)).
    pub anchor_sizes: Vec<Vec<f64>>,
    /// Anchor aspect ratios per level ((0.5, 1, 2) on each).
    pub aspect_ratios: Vec<Vec<f64>>,
    /// `rpn_pre_nms_top_n_test` (1000).
    pub rpn_pre_nms_top_n_test: i64,
    /// `rpn_post_nms_top_n_test` (1000).
    pub rpn_post_nms_top_n_test: i64,
    /// `rpn_nms_thresh` (0.7).
    pub rpn_nms_thresh: f64,
    /// `rpn_score_thresh` (0).
    pub rpn_score_thresh: f64,
    /// `RPNHead`'s `conv_depth` (1; TerraTorch's Mask R-CNN: 2).
    pub rpn_conv_depth: usize,
    /// `box_roi_pool`'s feature maps ("0" to "3").
    pub box_featmap_names: Vec<String>,
    /// `box_roi_pool`'s output size (7).
    pub box_output_size: i64,
    /// `box_roi_pool`'s sampling ratio (2).
    pub box_sampling_ratio: i64,
    /// The box head (`TwoMLPHead` of width 1024).
    pub box_head: BoxHeadConfig,
    /// `box_score_thresh` (0.05).
    pub box_score_thresh: f64,
    /// `box_nms_thresh` (0.5).
    pub box_nms_thresh: f64,
    /// `box_detections_per_img` (100).
    pub box_detections_per_img: i64,
    /// Mask R-CNN's mask branch; `None` for Faster R-CNN.
    pub mask: Option<MaskConfig>,
}

impl Default for RCNNConfig {
    fn default() -> Self {
        RCNNConfig {
            num_classes: 91,
            min_size: 800,
            max_size: 1333,
            image_mean: vec![0.485, 0.456, 0.406],
            image_std: vec![0.229, 0.224, 0.225],
            terratorch_transform: false,
            anchor_sizes: [32.0, 64.0, 128.0, 256.0, 512.0]
                .iter()
                .map(|&s| vec![s])
                .collect(),
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 5],
            rpn_pre_nms_top_n_test: 1000,
            rpn_post_nms_top_n_test: 1000,
            rpn_nms_thresh: 0.7,
            rpn_score_thresh: 0.0,
            rpn_conv_depth: 1,
            box_featmap_names: ["0", "1", "2", "3"].map(String::from).to_vec(),
            box_output_size: 7,
            box_sampling_ratio: 2,
            box_head: BoxHeadConfig::TwoMlp {
                representation_size: 1024,
            },
            box_score_thresh: 0.05,
            box_nms_thresh: 0.5,
            box_detections_per_img: 100,
            mask: None,
        }
    }
}

impl RCNNConfig {
    /// The `faster-rcnn` framework of TerraTorch's `ObjectDetectionModelFactory` (1.2.x)
    /// for a backbone (with necks) that gives `levels` feature maps named `feat0`, `feat1`,
    /// ... and images of `in_channels` bands: one anchor size per level from (32, 64, 128,
    /// 256, 512) with ratios (0.5, 1, 2), a 7 x 7 pooler over `feat0`..`feat3`, TerraTorch's
    /// stack-only transform (mean 0, std 1 per band, unused), torchvision's defaults for the
    /// rest. The factory's `framework_*` arguments override fields of the result.
    pub fn terratorch_faster_rcnn(num_classes: i64, levels: usize, in_channels: usize) -> Self {
        let sizes: Vec<Vec<f64>> = [32.0, 64.0, 128.0, 256.0, 512.0]
            .iter()
            .take(levels)
            .map(|&s| vec![s])
            .collect();
        RCNNConfig {
            num_classes,
            image_mean: vec![0.0; in_channels],
            image_std: vec![1.0; in_channels],
            terratorch_transform: true,
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; sizes.len()],
            anchor_sizes: sizes,
            box_featmap_names: ["feat0", "feat1", "feat2", "feat3"]
                .map(String::from)
                .to_vec(),
            ..RCNNConfig::default()
        }
    }

    /// The `mask-rcnn` framework of the same factory: [`RCNNConfig::terratorch_faster_rcnn`]
    /// with an RPN head of two convolutions, `FastRCNNConvFCHead` ([256] x 4 convolutions,
    /// [1024], BatchNorm2d), `MaskRCNNHeads` ([256] x 4, BatchNorm2d) and the box pooler
    /// (7 x 7) for the masks too.
    pub fn terratorch_mask_rcnn(num_classes: i64, levels: usize, in_channels: usize) -> Self {
        let base = Self::terratorch_faster_rcnn(num_classes, levels, in_channels);
        RCNNConfig {
            rpn_conv_depth: 2,
            box_head: BoxHeadConfig::ConvFc {
                conv_layers: vec![256; 4],
                fc_layers: vec![1024],
                batch_norm: true,
            },
            mask: Some(MaskConfig {
                featmap_names: base.box_featmap_names.clone(),
                output_size: base.box_output_size,
                sampling_ratio: base.box_sampling_ratio,
                batch_norm: true,
                ..MaskConfig::default()
            }),
            ..base
        }
    }
}

/// torchvision's `GeneralizedRCNN` in eval mode.
#[derive(Debug)]
pub struct GeneralizedRCNN {
    /// `transform`.
    pub transform: GeneralizedRCNNTransform,
    /// `rpn`.
    pub rpn: RegionProposalNetwork,
    /// `roi_heads`.
    pub roi_heads: RoIHeads,
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl GeneralizedRCNN {
    /// Composes the three parts.
    pub fn new(
        transform: GeneralizedRCNNTransform,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
    ) -> Self {
        GeneralizedRCNN {
            transform,
            rpn,
            roi_heads,
        }
    }

    /// `FasterRCNN` (or `MaskRCNN` when `cfg.mask` is set) over a backbone of
    /// `out_channels` channels, its parameters under `p` with torchvision's keys
    /// (`rpn.head.*`, `roi_heads.box_head.*`, `roi_heads.box_predictor.*`,
    /// `roi_heads.mask_head.*`, `roi_heads.mask_predictor.*`; the backbone's are the
    /// caller's).
    pub fn from_config(p: &nn::Path, out_channels: i64, cfg: &RCNNConfig) -> Result<Self> {
        let mut transform = GeneralizedRCNNTransform::new(
            cfg.min_size,
            cfg.max_size,
            cfg.image_mean.clone(),
            cfg.image_std.clone(),
        );
        transform.stack_only = cfg.terratorch_transform;
        let anchors = AnchorGenerator::new(cfg.anchor_sizes.clone(), cfg.aspect_ratios.clone())?;
        let per_location = anchors.num_anchors_per_location();
        let num_anchors = per_location[0];
        if per_location.iter().any(|&n| n != num_anchors) {
            return Err(PluginError::invalid_argument(format!(
                "FasterRCNN: the RPN head needs the same number of anchors at every level, the \
                 anchor sizes and aspect ratios give {per_location:?}"
            )));
        }
        let head = RPNHead::new(
            p / "rpn" / "head",
            out_channels,
            num_anchors,
            cfg.rpn_conv_depth,
        );
        let rpn = RegionProposalNetwork::new(
            anchors,
            head,
            cfg.rpn_pre_nms_top_n_test,
            cfg.rpn_post_nms_top_n_test,
            cfg.rpn_nms_thresh,
            cfg.rpn_score_thresh,
        );
        let r = p / "roi_heads";
        let res = cfg.box_output_size;
        let (box_head, representation): (BoxHead, i64) = match &cfg.box_head {
            BoxHeadConfig::TwoMlp {
                representation_size,
            } => (
                TwoMLPHead::new(
                    &r / "box_head",
                    out_channels * res * res,
                    *representation_size,
                )
                .into(),
                *representation_size,
            ),
            BoxHeadConfig::ConvFc {
                conv_layers,
                fc_layers,
                batch_norm,
            } => {
                let width = match (fc_layers.last(), conv_layers.last()) {
                    (Some(&fc), _) => fc,
                    (None, Some(&c)) => c * res * res,
                    (None, None) => out_channels * res * res,
                };
                let head = FastRCNNConvFCHead::new(
                    &r / "box_head",
                    (out_channels, res, res),
                    conv_layers,
                    fc_layers,
                    *batch_norm,
                );
                (head.into(), width)
            }
        };
        let mut roi_heads = RoIHeads::new(
            MultiScaleRoIAlign::new(
                &names(&cfg.box_featmap_names),
                (res, res),
                cfg.box_sampling_ratio,
            ),
            box_head,
            FastRCNNPredictor::new(&r / "box_predictor", representation, cfg.num_classes),
            cfg.box_score_thresh,
            cfg.box_nms_thresh,
            cfg.box_detections_per_img,
        );
        if let Some(m) = &cfg.mask {
            let last = *m.layers.last().ok_or_else(|| {
                PluginError::invalid_argument("MaskRCNN: the mask head needs at least one layer")
            })?;
            roi_heads = roi_heads.with_mask(MaskBranch {
                mask_roi_pool: MultiScaleRoIAlign::new(
                    &names(&m.featmap_names),
                    (m.output_size, m.output_size),
                    m.sampling_ratio,
                ),
                mask_head: MaskRCNNHeads::new(
                    &r / "mask_head",
                    out_channels,
                    &m.layers,
                    m.dilation,
                    m.batch_norm,
                ),
                mask_predictor: MaskRCNNPredictor::new(
                    &r / "mask_predictor",
                    last,
                    m.dim_reduced,
                    cfg.num_classes,
                ),
            });
        }
        Ok(GeneralizedRCNN::new(transform, rpn, roi_heads))
    }

    /// `forward(images)` in eval mode: `images` are `[C, H, W]` float tensors (any sizes),
    /// `backbone` maps the transformed batch `[B, C, H', W']` to named feature maps, finest
    /// first (every map goes to the RPN; the RoI pools take theirs by name). Per image, the
    /// detections in its own pixel coordinates, with masks `[D, 1, H, W]` pasted into the
    /// image for Mask R-CNN.
    pub fn forward<F>(&self, images: &[Tensor], backbone: F) -> Result<Vec<Detections>>
    where
        F: FnOnce(&Tensor) -> Result<Vec<(String, Tensor)>>,
    {
        let mut times = crate::stage_times::StageTimes::start("GeneralizedRCNN");
        let original_sizes = original_image_sizes(images, "GeneralizedRCNN")?;
        let images = self.transform.forward(images)?;
        times.lap("transform");
        let features = backbone(&images.tensors)?;
        times.lap("backbone_and_necks");
        if features.is_empty() {
            return Err(PluginError::invalid_argument(
                "GeneralizedRCNN: the backbone returned no feature maps",
            ));
        }
        let maps: Vec<Tensor> = features.iter().map(|(_, t)| t.shallow_clone()).collect();
        let (proposals, _) = self.rpn.forward(&images, &maps)?;
        times.lap("rpn");
        let detections = self
            .roi_heads
            .forward(&features, &proposals, &images.image_sizes)?;
        times.lap("roi_heads");
        let out = self.postprocess(detections, &images.image_sizes, &original_sizes);
        times.lap("postprocess");
        out
    }

    /// `transform.postprocess`: boxes from the batch's image sizes back to the originals,
    /// then masks pasted into the original images (padding 1).
    pub fn postprocess(
        &self,
        detections: Vec<Detections>,
        image_shapes: &[(i64, i64)],
        original_image_sizes: &[(i64, i64)],
    ) -> Result<Vec<Detections>> {
        if detections.len() != image_shapes.len() || detections.len() != original_image_sizes.len()
        {
            return Err(PluginError::invalid_argument(format!(
                "GeneralizedRCNN.postprocess: {} detection lists for {} image shapes and {} \
                 original sizes",
                detections.len(),
                image_shapes.len(),
                original_image_sizes.len()
            )));
        }
        detections
            .into_iter()
            .zip(image_shapes)
            .zip(original_image_sizes)
            .map(|((d, &s), &o)| {
                let boxes = resize_boxes(&d.boxes, s, o)?;
                let masks = match &d.masks {
                    Some(m) => Some(paste_masks_in_image(m, &boxes, o, 1)?),
                    None => None,
                };
                Ok(Detections {
                    boxes,
                    scores: d.scores,
                    labels: d.labels,
                    masks,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;
    use std::collections::HashMap;
    use tch::{Device, Kind};

    /// The fixture's models: 4-channel backbone with two levels (strides 4 and 8), images
    /// resized to 64..96, anchors 16 and 32, RPN top 60 / 25, the RoI heads of
    /// `roi_heads`' fixture (4 classes, 6 detections per image).
    fn config(mask: bool) -> RCNNConfig {
        RCNNConfig {
            num_classes: 4,
            min_size: 64,
            max_size: 96,
            anchor_sizes: vec![vec![16.0], vec![32.0]],
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 2],
            rpn_pre_nms_top_n_test: 60,
            rpn_post_nms_top_n_test: 25,
            box_featmap_names: vec!["0".into(), "1".into()],
            box_head: BoxHeadConfig::TwoMlp {
                representation_size: 16,
            },
            box_score_thresh: 0.2,
            box_detections_per_img: 6,
            mask: mask.then(|| MaskConfig {
                featmap_names: vec!["0".into(), "1".into()],
                output_size: 7,
                layers: vec![8, 8],
                dim_reduced: 6,
                ..MaskConfig::default()
            }),
            ..RCNNConfig::default()
        }
    }

    fn model(vs: &nn::VarStore, f: &HashMap<String, Tensor>, mask: bool) -> GeneralizedRCNN {
        model_from(vs, f, &config(mask))
    }

    fn model_from(
        vs: &nn::VarStore,
        f: &HashMap<String, Tensor>,
        cfg: &RCNNConfig,
    ) -> GeneralizedRCNN {
        let m = GeneralizedRCNN::from_config(&vs.root(), 4, cfg).unwrap();
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                var.copy_(get(f, &format!("w.{name}")));
            }
        });
        m
    }

    /// The fixture's `TinyBackbone`: relu(conv 3x3 stride 4) and relu(conv 3x3 stride 2).
    fn backbone(f: &HashMap<String, Tensor>, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let conv = |x: &Tensor, c: &str, stride: i64| -> Result<Tensor> {
            Ok(x.f_conv2d(
                get(f, &format!("w.backbone.{c}.weight")),
                Some(get(f, &format!("w.backbone.{c}.bias"))),
                [stride, stride],
                [1, 1],
                [1, 1],
                1,
            )?
            .f_relu()?)
        };
        let a = conv(x, "c1", 4)?;
        let b = conv(&a, "c2", 2)?;
        Ok(vec![("0".into(), a), ("1".into(), b)])
    }

    fn images() -> Vec<Tensor> {
        vec![
            formula_image(&[3, 30, 40], 0.3),
            formula_image(&[3, 36, 28], 1.2),
        ]
    }

    // Boxes in pixels of magnitude ~40 after two box codings and a rescale: 1e-4 is within
    // the brief's 1e-3 px; scores and mask probabilities 1e-5 (libtorch kernels on both
    // sides, another reduction order at most).
    const BOX_TOL: f64 = 1e-4;
    const TOL: f64 = 1e-5;

    #[test]
    fn mask_rcnn_matches_torchvision_end_to_end() {
        let f = fixture("rcnn");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs, &f, true);
        let mut keys: Vec<String> = vs.variables().into_keys().collect();
        keys.sort();
        assert_eq!(keys, fixture_keys(&f), "torchvision's state_dict keys");
        let images = images();
        tch::no_grad(|| {
            // The RPN's proposals on their own.
            let il = model.transform.forward(&images).unwrap();
            let feats = backbone(&f, &il.tensors).unwrap();
            let maps: Vec<Tensor> = feats.iter().map(|(_, t)| t.shallow_clone()).collect();
            let (proposals, _) = model.rpn.forward(&il, &maps).unwrap();
            for (i, p) in proposals.iter().enumerate() {
                assert_close(p, get(&f, &format!("proposals.{i}")), BOX_TOL, "proposals");
            }
            let dets = model.forward(&images, |x| backbone(&f, x)).unwrap();
            for (i, d) in dets.iter().enumerate() {
                let pre = format!("mask.{i}");
                assert!(d.boxes.size()[0] > 0);
                assert_close(&d.boxes, get(&f, &format!("{pre}.boxes")), BOX_TOL, &pre);
                assert_close(&d.scores, get(&f, &format!("{pre}.scores")), TOL, &pre);
                assert_same_indices(&d.labels, get(&f, &format!("{pre}.labels")), &pre);
                let masks = d.masks.as_ref().unwrap();
                assert_eq!(masks.size()[2..], images[i].size()[1..]);
                assert_close(masks, get(&f, &format!("{pre}.masks")), TOL, &pre);
            }
        });
    }

    #[test]
    fn mask_rcnn_with_terratorchs_transform_matches() {
        // TerraTorch's factory replaces the transform with one that only stacks the images:
        // no normalisation, no resizing to 64..96, no padding (two 30 x 31 images).
        let f = fixture("rcnn");
        let cfg = RCNNConfig {
            terratorch_transform: true,
            ..config(true)
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model_from(&vs, &f, &cfg);
        let img = |phase: f64| formula_image(&[3, 30, 31], phase);
        let images = [img(0.3), img(1.2)];
        let dets = tch::no_grad(|| model.forward(&images, |x| backbone(&f, x))).unwrap();
        for (i, d) in dets.iter().enumerate() {
            let pre = format!("tt.{i}");
            assert_close(&d.boxes, get(&f, &format!("{pre}.boxes")), BOX_TOL, &pre);
            assert_close(&d.scores, get(&f, &format!("{pre}.scores")), TOL, &pre);
            assert_same_indices(&d.labels, get(&f, &format!("{pre}.labels")), &pre);
            assert_eq!(d.masks.as_ref().unwrap().size(), [6, 1, 30, 31]);
        }
        let masks = dets[0].masks.as_ref().unwrap().narrow(0, 0, 2);
        assert_close(&masks, get(&f, "tt.0.masks"), TOL, "tt masks");
    }

    #[test]
    fn faster_rcnn_matches_torchvision_end_to_end() {
        let f = fixture("rcnn");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs, &f, false);
        assert_eq!(vs.variables().len(), 14);
        let images = images();
        let dets = tch::no_grad(|| model.forward(&images, |x| backbone(&f, x))).unwrap();
        for (i, d) in dets.iter().enumerate() {
            let pre = format!("faster.{i}");
            assert!(d.masks.is_none());
            assert_close(&d.boxes, get(&f, &format!("{pre}.boxes")), BOX_TOL, &pre);
            assert_close(&d.scores, get(&f, &format!("{pre}.scores")), TOL, &pre);
            assert_same_indices(&d.labels, get(&f, &format!("{pre}.labels")), &pre);
        }
        let labels = Vec::<i64>::try_from(get(&f, "faster.1.labels")).unwrap();
        assert!(labels.contains(&1) && labels.contains(&3), "{labels:?}");
    }

    #[test]
    fn mask_rcnn_without_detections_gives_empty_pasted_masks() {
        // Every score under the threshold: torchvision's postprocess then returns masks
        // [0, 1, H, W] of the input's size.
        let f = fixture("rcnn");
        let cfg = RCNNConfig {
            box_score_thresh: 0.999,
            ..config(true)
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model_from(&vs, &f, &cfg);
        let images = images();
        let dets = tch::no_grad(|| model.forward(&images, |x| backbone(&f, x))).unwrap();
        for (d, img) in dets.iter().zip(&images) {
            assert_eq!(d.boxes.size(), [0, 4]);
            assert_eq!(d.labels.size(), [0]);
            let masks = d.masks.as_ref().unwrap();
            assert_eq!(masks.size(), [0, 1, img.size()[1], img.size()[2]]);
        }
    }

    #[test]
    fn generalized_rcnn_refuses_a_backbone_without_features() {
        let f = fixture("rcnn");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs, &f, false);
        let img = Tensor::zeros([3, 20, 20], (Kind::Float, Device::Cpu));
        assert!(model.forward(&[img], |_| Ok(vec![])).is_err());
        let cfg = RCNNConfig {
            anchor_sizes: vec![vec![16.0], vec![32.0, 64.0]],
            aspect_ratios: vec![vec![1.0]; 2],
            ..config(false)
        };
        assert!(GeneralizedRCNN::from_config(&vs.root(), 4, &cfg).is_err());
    }

    /// State-dict keys of the fixture's model other than the backbone's, sorted.
    fn fixture_keys(f: &HashMap<String, Tensor>) -> Vec<String> {
        let mut w: Vec<String> = f
            .keys()
            .filter_map(|k| k.strip_prefix("w."))
            .filter(|k| !k.starts_with("backbone."))
            .map(String::from)
            .collect();
        w.sort();
        w
    }

    #[test]
    fn mask_rcnn_with_terratorchs_heads_matches_torchvision() {
        // TerraTorch's Mask R-CNN heads at fixture size: RPNHead with two convolutions,
        // FastRCNNConvFCHead and MaskRCNNHeads with BatchNorm2d, one 7 x 7 pooler for boxes
        // and masks.
        let f = fixture("rcnn_bn");
        let cfg = RCNNConfig {
            rpn_conv_depth: 2,
            box_head: BoxHeadConfig::ConvFc {
                conv_layers: vec![4, 4],
                fc_layers: vec![16],
                batch_norm: true,
            },
            box_detections_per_img: 4,
            mask: Some(MaskConfig {
                featmap_names: vec!["0".into(), "1".into()],
                output_size: 7,
                layers: vec![8, 8],
                dim_reduced: 6,
                batch_norm: true,
                ..MaskConfig::default()
            }),
            ..config(true)
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model_from(&vs, &f, &cfg);
        let mut keys: Vec<String> = vs.variables().into_keys().collect();
        keys.sort();
        assert_eq!(keys, fixture_keys(&f), "torchvision's state_dict keys");
        let images = images();
        tch::no_grad(|| {
            let il = model.transform.forward(&images).unwrap();
            let feats = backbone(&f, &il.tensors).unwrap();
            let maps: Vec<Tensor> = feats.iter().map(|(_, t)| t.shallow_clone()).collect();
            let (proposals, _) = model.rpn.forward(&il, &maps).unwrap();
            let pooled = model
                .roi_heads
                .box_roi_pool
                .forward(&feats, &proposals, &il.image_sizes)
                .unwrap();
            let head = model.roi_heads.box_head.forward(&pooled).unwrap();
            assert_close(&head, get(&f, "box_head"), TOL, "box head");
            let dets = model.forward(&images, |x| backbone(&f, x)).unwrap();
            for (i, d) in dets.iter().enumerate() {
                let pre = format!("bn.{i}");
                assert_eq!(d.boxes.size()[0], 4);
                assert_close(&d.boxes, get(&f, &format!("{pre}.boxes")), BOX_TOL, &pre);
                assert_close(&d.scores, get(&f, &format!("{pre}.scores")), TOL, &pre);
                assert_same_indices(&d.labels, get(&f, &format!("{pre}.labels")), &pre);
                let masks = d.masks.as_ref().unwrap();
                assert_close(masks, get(&f, &format!("{pre}.masks")), TOL, &pre);
            }
        });
    }

    #[test]
    fn terratorch_presets_follow_its_factory() {
        // terratorch/models/object_detection_model_factory.py (1.2.11).
        let f = RCNNConfig::terratorch_faster_rcnn(3, 4, 6);
        assert_eq!(f.anchor_sizes, [[32.0], [64.0], [128.0], [256.0]]);
        assert_eq!(f.aspect_ratios.len(), 4);
        assert_eq!(f.box_featmap_names, ["feat0", "feat1", "feat2", "feat3"]);
        assert!(f.terratorch_transform && f.mask.is_none());
        assert_eq!((f.image_mean.len(), f.image_std[5]), (6, 1.0));
        assert_eq!(f.rpn_conv_depth, 1);
        let m = RCNNConfig::terratorch_mask_rcnn(3, 7, 6);
        assert_eq!(m.anchor_sizes.len(), 5);
        assert_eq!(m.rpn_conv_depth, 2);
        let mask = m.mask.as_ref().unwrap();
        assert_eq!(
            (mask.output_size, mask.layers.len(), mask.batch_norm),
            (7, 4, true)
        );
        // The whole Mask R-CNN builds with torchvision's keys at TerraTorch's widths.
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = RCNNConfig::terratorch_mask_rcnn(3, 4, 6);
        GeneralizedRCNN::from_config(&vs.root(), 256, &cfg).unwrap();
        let vars = vs.variables();
        assert_eq!(vars["roi_heads.box_head.5.weight"].size(), [1024, 256 * 49]);
        assert_eq!(
            vars["roi_heads.box_predictor.cls_score.weight"].size(),
            [3, 1024]
        );
        assert_eq!(vars["roi_heads.mask_head.3.1.running_var"].size(), [256]);
        assert_eq!(vars["rpn.head.conv.1.0.weight"].size(), [256, 256, 3, 3]);
    }
}
