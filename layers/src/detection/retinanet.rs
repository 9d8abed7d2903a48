//! torchvision's RetinaNet, inference path (`torchvision/models/detection/retinanet.py`):
//! `RetinaNetHead` (classification and regression towers, optionally with a norm layer,
//! as TerraTorch builds them with `GroupNorm(32)`), `postprocess_detections` (per level:
//! sigmoid scores over the threshold, the top candidates, decoding against the anchors,
//! clipping; then NMS per class and the top detections) and the forward composition over a
//! caller's backbone. The losses, which only training needs, are not here.
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

use super::anchors::AnchorGenerator;
use super::box_coder::BoxCoder;
use super::boxes::clip_boxes_to_image;
use super::image_list::original_image_sizes;
use super::roi_heads::{level_candidates, Detections};
use super::transform::{resize_boxes, GeneralizedRCNNTransform};
use crate::conv::{Conv2d, ConvSpec};

/// `Conv2dNormActivation(c, c, 3)` with ReLU: the convolution under `0` (a bias only without
/// a norm) and, with `groups`, a `GroupNorm(groups, c)` (eps 1e-5) under `1`.
#[derive(Debug)]
struct TowerConv {
    conv: Conv2d,
    group_norm: Option<(i64, Tensor, Tensor)>,
}

impl TowerConv {
    fn new(p: &nn::Path, c: i64, groups: Option<i64>) -> Self {
        let w = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let bias = groups.is_none().then_some(Init::Const(0.0));
        let conv = Conv2d::new(p / 0, ConvSpec::new(c, c, 3).padding(1), w, bias);
        let group_norm = groups.map(|g| {
            let n = p / 1;
            (
                g,
                n.var("weight", &[c], Init::Const(1.0)),
                n.var("bias", &[c], Init::Const(0.0)),
            )
        });
        TowerConv { conv, group_norm }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = self.conv.forward(x)?;
        let t = match &self.group_norm {
            Some((g, w, b)) => t.f_group_norm(*g, Some(w), Some(b), 1e-5, true)?,
            None => t,
        };
        Ok(t.f_relu()?)
    }
}

/// Four [`TowerConv`]s under `conv.{i}`, then a 3x3 convolution to `outputs` channels per
/// anchor, reshaped to `[N, H * W * A, outputs]` per level and concatenated over levels.
#[derive(Debug)]
struct Tower {
    conv: Vec<TowerConv>,
    last: Conv2d,
    outputs: i64,
}

impl Tower {
    fn new(
        p: &nn::Path,
        c: i64,
        num_anchors: i64,
        outputs: i64,
        last_name: &str,
        last_bias: f64,
        groups: Option<i64>,
    ) -> Self {
        let conv = (0..4)
            .map(|i| TowerConv::new(&(p / "conv" / i), c, groups))
            .collect();
        let last = Conv2d::new(
            p / last_name,
            ConvSpec::new(c, num_anchors * outputs, 3).padding(1),
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            Some(Init::Const(last_bias)),
        );
        Tower {
            conv,
            last,
            outputs,
        }
    }

    fn forward(&self, x: &[Tensor]) -> Result<Tensor> {
        let mut all = Vec::with_capacity(x.len());
        for features in x {
            let mut t = features.shallow_clone();
            for conv in &self.conv {
                t = conv.forward(&t)?;
            }
            let t = self.last.forward(&t)?;
            let (n, h, w) = (t.size()[0], t.size()[2], t.size()[3]);
            // [N, A * K, H, W] -> [N, H * W * A, K]
            all.push(
                t.f_view([n, -1, self.outputs, h, w])?
                    .f_permute([0, 3, 4, 1, 2])?
                    .f_reshape([n, -1, self.outputs])?,
            );
        }
        Ok(Tensor::f_cat(&all, 1)?)
    }
}

/// torchvision's `RetinaNetHead(in_channels, num_anchors, num_classes, norm_layer)`:
/// `classification_head` (`conv.*`, `cls_logits`) and `regression_head` (`conv.*`,
/// `bbox_reg`); `group_norm` is `norm_layer=partial(GroupNorm, groups)` (TerraTorch: 32).
#[derive(Debug)]
pub struct RetinaNetHead {
    classification: Tower,
    regression: Tower,
}

impl RetinaNetHead {
    /// The head under `p`, initialised as upstream (normal(0, 0.01) weights, the class
    /// logits' bias at the prior probability 0.01).
    pub fn new(
        p: &nn::Path,
        in_channels: i64,
        num_anchors: i64,
        num_classes: i64,
        group_norm: Option<i64>,
    ) -> Result<Self> {
        if let Some(g) = group_norm {
            if g <= 0 || in_channels % g != 0 {
                return Err(PluginError::invalid_argument(format!(
                    "RetinaNetHead: GroupNorm({g}) needs a channel count divisible by {g}, the \
                     backbone gives {in_channels}"
                )));
            }
        }
        let prior = -((1.0f64 - 0.01) / 0.01).ln();
        Ok(RetinaNetHead {
            classification: Tower::new(
                &(p / "classification_head"),
                in_channels,
                num_anchors,
                num_classes,
                "cls_logits",
                prior,
                group_norm,
            ),
            regression: Tower::new(
                &(p / "regression_head"),
                in_channels,
                num_anchors,
                4,
                "bbox_reg",
                0.0,
                group_norm,
            ),
        })
    }

    /// `cls_logits [N, sum H*W*A, num_classes]` and `bbox_regression [N, sum H*W*A, 4]`.
    pub fn forward(&self, x: &[Tensor]) -> Result<(Tensor, Tensor)> {
        Ok((self.classification.forward(x)?, self.regression.forward(x)?))
    }
}

/// torchvision's `RetinaNet` in eval mode.
#[derive(Debug)]
pub struct RetinaNet {
    /// `transform`.
    pub transform: GeneralizedRCNNTransform,
    /// `anchor_generator`.
    pub anchor_generator: AnchorGenerator,
    /// `head`.
    pub head: RetinaNetHead,
    /// Weights (1, 1, 1, 1).
    pub box_coder: BoxCoder,
    /// Class probabilities at or below this are dropped (0.05).
    pub score_thresh: f64,
    /// IoU threshold of the per-class NMS (0.5).
    pub nms_thresh: f64,
    /// Detections kept per image (300).
    pub detections_per_img: i64,
    /// Candidates kept per level before NMS (1000).
    pub topk_candidates: i64,
}

impl RetinaNet {
    /// The model with torchvision's defaults for the thresholds and counts.
    pub fn new(
        transform: GeneralizedRCNNTransform,
        anchor_generator: AnchorGenerator,
        head: RetinaNetHead,
    ) -> Self {
        RetinaNet {
            transform,
            anchor_generator,
            head,
            box_coder: BoxCoder::new([1.0; 4]),
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 300,
            topk_candidates: 1000,
        }
    }

    /// `forward(images)` in eval mode over the caller's `backbone` (the transformed batch
    /// to named feature maps, finest first): per image, its detections in its own pixel
    /// coordinates (labels from 0: RetinaNet has no background class).
    pub fn forward<F>(&self, images: &[Tensor], backbone: F) -> Result<Vec<Detections>>
    where
        F: FnOnce(&Tensor) -> Result<Vec<(String, Tensor)>>,
    {
        let original_sizes = original_image_sizes(images, "RetinaNet")?;
        let il = self.transform.forward(images)?;
        let features: Vec<Tensor> = backbone(&il.tensors)?.into_iter().map(|(_, t)| t).collect();
        if features.is_empty() {
            return Err(PluginError::invalid_argument(
                "RetinaNet: the backbone returned no feature maps",
            ));
        }
        let (cls_logits, bbox_regression) = self.head.forward(&features)?;
        let anchors = self.anchor_generator.forward(&il, &features)?;
        let hw: Vec<i64> = features.iter().map(|f| f.size()[2] * f.size()[3]).collect();
        let total: i64 = hw.iter().sum();
        let a = cls_logits.size()[1] / total.max(1);
        let per_level: Vec<i64> = hw.iter().map(|&x| x * a).collect();
        let dets = self.postprocess_detections(
            &cls_logits,
            &bbox_regression,
            &anchors,
            &per_level,
            &il.image_sizes,
        )?;
        dets.into_iter()
            .zip(&il.image_sizes)
            .zip(&original_sizes)
            .map(|((d, &s), &o)| {
                Ok(Detections {
                    boxes: resize_boxes(&d.boxes, s, o)?,
                    ..d
                })
            })
            .collect()
    }

    /// `postprocess_detections`: `cls_logits [N, sum, K]`, `bbox_regression [N, sum, 4]`,
    /// one `[sum, 4]` anchor tensor per image, `sum` split by `num_anchors_per_level`.
    pub fn postprocess_detections(
        &self,
        cls_logits: &Tensor,
        bbox_regression: &Tensor,
        anchors: &[Tensor],
        num_anchors_per_level: &[i64],
        image_shapes: &[(i64, i64)],
    ) -> Result<Vec<Detections>> {
        if anchors.len() != image_shapes.len() || cls_logits.size()[0] != anchors.len() as i64 {
            return Err(PluginError::invalid_argument(format!(
                "RetinaNet.postprocess_detections: {} images of logits, {} of anchors, {} image \
                 shapes",
                cls_logits.size()[0],
                anchors.len(),
                image_shapes.len()
            )));
        }
        let mut out = Vec::with_capacity(anchors.len());
        for (index, (anchors, &shape)) in anchors.iter().zip(image_shapes).enumerate() {
            let logits = cls_logits
                .f_select(0, index as i64)?
                .f_split_with_sizes(num_anchors_per_level, 0)?;
            let regression = bbox_regression
                .f_select(0, index as i64)?
                .f_split_with_sizes(num_anchors_per_level, 0)?;
            let anchors = anchors.f_split_with_sizes(num_anchors_per_level, 0)?;
            let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
            for ((logits, regression), anchors) in logits.iter().zip(&regression).zip(&anchors) {
                let num_classes = logits.size()[1];
                let all = logits.f_sigmoid()?.f_flatten(0, -1)?;
                let (s, anchor_idxs, l) =
                    level_candidates(&all, num_classes, self.score_thresh, self.topk_candidates)?;
                let b = self.box_coder.decode_single(
                    &regression.f_index_select(0, &anchor_idxs)?,
                    &anchors.f_index_select(0, &anchor_idxs)?,
                )?;
                boxes.push(clip_boxes_to_image(&b, shape)?);
                scores.push(s);
                labels.push(l);
            }
            out.push(Detections::after_batched_nms(
                &boxes,
                &scores,
                &labels,
                self.nms_thresh,
                self.detections_per_img,
            )?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;
    use tch::Device;

    #[test]
    fn retinanet_as_terratorch_builds_it_matches_torchvision() {
        let f = fixture("retinanet");
        let vs = nn::VarStore::new(Device::Cpu);
        let head = RetinaNetHead::new(&(vs.root() / "head"), 32, 9, 3, Some(32)).unwrap();
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                var.copy_(&formula_weight(&name, &var.size()));
            }
        });
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names.len(), 2 * (4 * 3 + 2));
        assert!(names.contains(&"head.classification_head.conv.3.1.weight".to_string()));
        assert!(names.contains(&"head.regression_head.bbox_reg.bias".to_string()));
        let ag = AnchorGenerator::new(
            vec![vec![16.0, 20.0, 25.0], vec![32.0, 40.0, 50.0]],
            vec![vec![0.5, 1.0, 2.0]; 2],
        )
        .unwrap();
        let transform = GeneralizedRCNNTransform::terratorch(800, 1333, vec![0.0; 3], vec![1.0; 3]);
        let mut model = RetinaNet::new(transform, ag, head);
        model.detections_per_img = 20;
        let img = |phase: f64| formula_image(&[3, 30, 31], phase);
        let images = [img(0.3), img(1.2)];
        tch::no_grad(|| {
            let il = model.transform.forward(&images).unwrap();
            let feats: Vec<Tensor> = wide_tiny_backbone(&il.tensors)
                .unwrap()
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            let (cls, reg) = model.head.forward(&feats).unwrap();
            assert_eq!(cls.size(), [2, (64 + 16) * 9, 3]);
            // GroupNorm and convolutions by libtorch on both sides.
            assert_close(&cls.narrow(1, 0, 32), get(&f, "cls_logits"), 1e-5, "cls");
            assert_close(
                &reg.narrow(1, 0, 32),
                get(&f, "bbox_regression"),
                1e-5,
                "reg",
            );
            let dets = model.forward(&images, wide_tiny_backbone).unwrap();
            for (i, d) in dets.iter().enumerate() {
                let pre = format!("out.{i}");
                assert_close(&d.boxes, get(&f, &format!("{pre}.boxes")), 1e-4, &pre);
                assert_close(&d.scores, get(&f, &format!("{pre}.scores")), 1e-5, &pre);
                assert_same_indices(&d.labels, get(&f, &format!("{pre}.labels")), &pre);
            }
        });
    }

    #[test]
    fn retinanet_head_refuses_channels_that_groupnorm_cannot_split() {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(RetinaNetHead::new(&vs.root(), 48, 9, 3, Some(32)).is_err());
        assert!(RetinaNetHead::new(&vs.root(), 48, 9, 3, None).is_ok());
    }
}
