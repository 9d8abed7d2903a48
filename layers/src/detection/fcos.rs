//! torchvision's FCOS, inference path (`torchvision/models/detection/fcos.py`): `FCOSHead`
//! (classification tower with class logits; regression tower with box distances and
//! centerness, GroupNorm after every convolution), `BoxLinearCoder` decoding, and
//! `postprocess_detections` (per level: `sqrt(sigmoid(class) * sigmoid(centerness))` over the
//! threshold, the top candidates, decoding, clipping; then NMS per class and the top
//! detections). The losses and the target assignment, which only training needs, are not
//! here.
use tch::nn::{self, Init};
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

use super::anchors::AnchorGenerator;
use super::boxes::{check_boxes, clip_boxes_to_image};
use super::image_list::original_image_sizes;
use super::roi_heads::{level_candidates, Detections};
use super::transform::{resize_boxes, GeneralizedRCNNTransform};
use crate::conv::{Conv2d, ConvSpec};

/// `BoxLinearCoder(normalize_by_size=True).decode(rel_codes [..., 4], boxes [..., 4])`:
/// distances `(left, top, right, bottom)` from each reference box's centre, in units of
/// its width and height, to boxes `(x1, y1, x2, y2)`.
pub fn box_linear_decode(rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
    check_boxes(boxes, "BoxLinearCoder.decode")?;
    check_boxes(rel_codes, "BoxLinearCoder.decode")?;
    let boxes = boxes.f_to_kind(rel_codes.kind())?;
    let col = |t: &Tensor, i: i64| t.f_select(-1, i);
    let ctr_x = col(&boxes, 0)?.f_add(&col(&boxes, 2)?)?.f_mul_scalar(0.5)?;
    let ctr_y = col(&boxes, 1)?.f_add(&col(&boxes, 3)?)?.f_mul_scalar(0.5)?;
    let w = col(&boxes, 2)?.f_sub(&col(&boxes, 0)?)?;
    let h = col(&boxes, 3)?.f_sub(&col(&boxes, 1)?)?;
    let size = Tensor::f_stack(&[&w, &h, &w, &h], -1)?;
    let rel = rel_codes.f_mul(&size)?;
    let parts = [
        ctr_x.f_sub(&col(&rel, 0)?)?,
        ctr_y.f_sub(&col(&rel, 1)?)?,
        ctr_x.f_add(&col(&rel, 2)?)?,
        ctr_y.f_add(&col(&rel, 3)?)?,
    ];
    Ok(Tensor::f_stack(&parts, -1)?)
}

/// `num_convs` x (3x3 convolution with bias `conv.{3i}`, `GroupNorm(groups)` `conv.{3i+1}`,
/// ReLU), torchvision's FCOS towers.
#[derive(Debug)]
struct Tower {
    layers: Vec<(Conv2d, Tensor, Tensor)>,
    groups: i64,
}

impl Tower {
    fn new(p: &nn::Path, c: i64, num_convs: i64, groups: i64) -> Self {
        let layers = (0..num_convs)
            .map(|i| {
                let conv = Conv2d::new(
                    p / "conv" / (3 * i),
                    ConvSpec::new(c, c, 3).padding(1),
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.01,
                    },
                    Some(Init::Const(0.0)),
                );
                let n = p / "conv" / (3 * i + 1);
                let w = n.var("weight", &[c], Init::Const(1.0));
                let b = n.var("bias", &[c], Init::Const(0.0));
                (conv, w, b)
            })
            .collect();
        Tower { layers, groups }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut t = x.shallow_clone();
        for (conv, w, b) in &self.layers {
            t = conv
                .forward(&t)?
                .f_group_norm(self.groups, Some(w), Some(b), 1e-5, true)?
                .f_relu()?;
        }
        Ok(t)
    }
}

/// `[N, A * C, H, W]` -> `[N, H * W * A, C]`.
fn flatten_level(t: &Tensor, c: i64) -> Result<Tensor> {
    let (n, h, w) = (t.size()[0], t.size()[2], t.size()[3]);
    Ok(t.f_view([n, -1, c, h, w])?
        .f_permute([0, 3, 4, 1, 2])?
        .f_reshape([n, -1, c])?)
}

fn head_conv(p: nn::Path, c: i64, out: i64, bias: f64) -> Conv2d {
    Conv2d::new(
        p,
        ConvSpec::new(c, out, 3).padding(1),
        Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        },
        Some(Init::Const(bias)),
    )
}

/// torchvision's `FCOSHead(in_channels, num_anchors, num_classes, num_convs=4)` with its
/// default `GroupNorm(32)`: `classification_head` (`conv.*`, `cls_logits`) and
/// `regression_head` (`conv.*`, `bbox_reg`, `bbox_ctrness`).
#[derive(Debug)]
pub struct FCOSHead {
    cls_tower: Tower,
    cls_logits: Conv2d,
    reg_tower: Tower,
    bbox_reg: Conv2d,
    bbox_ctrness: Conv2d,
    num_classes: i64,
}

/// What [`FCOSHead::forward`] returns, over all levels.
#[derive(Debug)]
pub struct FCOSHeadOutput {
    /// `[N, sum H*W*A, num_classes]`.
    pub cls_logits: Tensor,
    /// `[N, sum H*W*A, 4]`, after ReLU.
    pub bbox_regression: Tensor,
    /// `[N, sum H*W*A, 1]`.
    pub bbox_ctrness: Tensor,
}

impl FCOSHead {
    /// The head under `p`, initialised as upstream.
    pub fn new(
        p: &nn::Path,
        in_channels: i64,
        num_anchors: i64,
        num_classes: i64,
        num_convs: i64,
    ) -> Result<Self> {
        let groups = 32;
        if in_channels % groups != 0 {
            return Err(PluginError::invalid_argument(format!(
                "FCOSHead: its GroupNorm(32) needs a channel count divisible by 32, the backbone \
                 gives {in_channels}"
            )));
        }
        let c = p / "classification_head";
        let r = p / "regression_head";
        let prior = -((1.0f64 - 0.01) / 0.01).ln();
        Ok(FCOSHead {
            cls_tower: Tower::new(&c, in_channels, num_convs, groups),
            cls_logits: head_conv(
                &c / "cls_logits",
                in_channels,
                num_anchors * num_classes,
                prior,
            ),
            reg_tower: Tower::new(&r, in_channels, num_convs, groups),
            bbox_reg: head_conv(&r / "bbox_reg", in_channels, num_anchors * 4, 0.0),
            bbox_ctrness: head_conv(&r / "bbox_ctrness", in_channels, num_anchors, 0.0),
            num_classes,
        })
    }

    /// The head's outputs for every level, concatenated.
    pub fn forward(&self, x: &[Tensor]) -> Result<FCOSHeadOutput> {
        let (mut cls, mut reg, mut ctr) = (Vec::new(), Vec::new(), Vec::new());
        for features in x {
            let c = self
                .cls_logits
                .forward(&self.cls_tower.forward(features)?)?;
            cls.push(flatten_level(&c, self.num_classes)?);
            let t = self.reg_tower.forward(features)?;
            reg.push(flatten_level(&self.bbox_reg.forward(&t)?.f_relu()?, 4)?);
            ctr.push(flatten_level(&self.bbox_ctrness.forward(&t)?, 1)?);
        }
        Ok(FCOSHeadOutput {
            cls_logits: Tensor::f_cat(&cls, 1)?,
            bbox_regression: Tensor::f_cat(&reg, 1)?,
            bbox_ctrness: Tensor::f_cat(&ctr, 1)?,
        })
    }
}

/// torchvision's `FCOS` in eval mode.
#[derive(Debug)]
pub struct FCOS {
    /// `transform`.
    pub transform: GeneralizedRCNNTransform,
    /// `anchor_generator` (one anchor per location).
    pub anchor_generator: AnchorGenerator,
    /// `head`.
    pub head: FCOSHead,
    /// Scores at or below this are dropped (0.2).
    pub score_thresh: f64,
    /// IoU threshold of the per-class NMS (0.6).
    pub nms_thresh: f64,
    /// Detections kept per image (100).
    pub detections_per_img: i64,
    /// Candidates kept per level before NMS (1000).
    pub topk_candidates: i64,
}

impl FCOS {
    /// The model with torchvision's defaults for the thresholds and counts.
    pub fn new(
        transform: GeneralizedRCNNTransform,
        anchor_generator: AnchorGenerator,
        head: FCOSHead,
    ) -> Self {
        FCOS {
            transform,
            anchor_generator,
            head,
            score_thresh: 0.2,
            nms_thresh: 0.6,
            detections_per_img: 100,
            topk_candidates: 1000,
        }
    }

    /// `forward(images)` in eval mode over the caller's `backbone`: per image, its
    /// detections in its own pixel coordinates (labels from 0).
    pub fn forward<F>(&self, images: &[Tensor], backbone: F) -> Result<Vec<Detections>>
    where
        F: FnOnce(&Tensor) -> Result<Vec<(String, Tensor)>>,
    {
        let original_sizes = original_image_sizes(images, "FCOS")?;
        let il = self.transform.forward(images)?;
        let features: Vec<Tensor> = backbone(&il.tensors)?.into_iter().map(|(_, t)| t).collect();
        if features.is_empty() {
            return Err(PluginError::invalid_argument(
                "FCOS: the backbone returned no feature maps",
            ));
        }
        let out = self.head.forward(&features)?;
        let anchors = self.anchor_generator.forward(&il, &features)?;
        // Upstream splits by H * W per level: one anchor per location.
        let per_level: Vec<i64> = features.iter().map(|f| f.size()[2] * f.size()[3]).collect();
        let dets = self.postprocess_detections(&out, &anchors, &per_level, &il.image_sizes)?;
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

    /// `postprocess_detections` over the head's outputs, one `[sum, 4]` anchor tensor per
    /// image, `sum` split by `num_anchors_per_level`.
    pub fn postprocess_detections(
        &self,
        head: &FCOSHeadOutput,
        anchors: &[Tensor],
        num_anchors_per_level: &[i64],
        image_shapes: &[(i64, i64)],
    ) -> Result<Vec<Detections>> {
        if anchors.len() != image_shapes.len() || head.cls_logits.size()[0] != anchors.len() as i64
        {
            return Err(PluginError::invalid_argument(format!(
                "FCOS.postprocess_detections: {} images of logits, {} of anchors, {} image shapes",
                head.cls_logits.size()[0],
                anchors.len(),
                image_shapes.len()
            )));
        }
        let mut out = Vec::with_capacity(anchors.len());
        for (index, (anchors, &shape)) in anchors.iter().zip(image_shapes).enumerate() {
            let i = index as i64;
            let split = |t: &Tensor| {
                t.f_select(0, i)?
                    .f_split_with_sizes(num_anchors_per_level, 0)
            };
            let logits = split(&head.cls_logits)?;
            let regression = split(&head.bbox_regression)?;
            let ctrness = split(&head.bbox_ctrness)?;
            let anchors = anchors.f_split_with_sizes(num_anchors_per_level, 0)?;
            let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
            for (((logits, regression), ctrness), anchors) in
                logits.iter().zip(&regression).zip(&ctrness).zip(&anchors)
            {
                let num_classes = logits.size()[1];
                let all = logits
                    .f_sigmoid()?
                    .f_mul(&ctrness.f_sigmoid()?)?
                    .f_sqrt()?
                    .f_flatten(0, -1)?;
                let (s, anchor_idxs, l) =
                    level_candidates(&all, num_classes, self.score_thresh, self.topk_candidates)?;
                let b = box_linear_decode(
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
    fn fcos_as_terratorch_builds_it_matches_torchvision() {
        let f = fixture("fcos");
        let vs = nn::VarStore::new(Device::Cpu);
        let head = FCOSHead::new(&(vs.root() / "head"), 32, 1, 3, 4).unwrap();
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                var.copy_(&formula_weight(&name, &var.size()));
            }
        });
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert_eq!(names.len(), 2 * 4 * 4 + 2 + 4);
        assert!(names.contains(&"head.classification_head.conv.10.bias".to_string()));
        assert!(names.contains(&"head.regression_head.bbox_ctrness.weight".to_string()));
        let ag = AnchorGenerator::new(vec![vec![8.0], vec![16.0]], vec![vec![1.0]; 2]).unwrap();
        let transform = GeneralizedRCNNTransform::terratorch(800, 1333, vec![0.0; 3], vec![1.0; 3]);
        let mut model = FCOS::new(transform, ag, head);
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
            let out = model.head.forward(&feats).unwrap();
            assert_eq!(out.cls_logits.size(), [2, 64 + 16, 3]);
            // GroupNorm and convolutions by libtorch on both sides.
            for (got, name) in [
                (&out.cls_logits, "cls_logits"),
                (&out.bbox_regression, "bbox_regression"),
                (&out.bbox_ctrness, "bbox_ctrness"),
            ] {
                assert_close(&got.narrow(1, 0, 32), get(&f, name), 1e-5, name);
            }
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
    fn box_linear_decode_scales_distances_by_the_box_size() {
        let anchors = Tensor::from_slice(&[0f32, 0., 10., 20.]).reshape([1, 4]);
        let codes = Tensor::from_slice(&[0.5f32, 0.25, 1.0, 0.5]).reshape([1, 4]);
        let out = box_linear_decode(&codes, &anchors).unwrap();
        // centre (5, 10), size (10, 20): (5 - 5, 10 - 5, 5 + 10, 10 + 10)
        let want = Tensor::from_slice(&[0f32, 5., 15., 20.]).reshape([1, 4]);
        assert_close(&out, &want, 0.0, "decode");
    }
}
