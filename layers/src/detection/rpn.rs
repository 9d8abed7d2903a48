//! torchvision's region proposal network, inference path (`torchvision/models/detection/
//! rpn.py`): `RPNHead`, `concat_box_prediction_layers` and `RegionProposalNetwork`'s
//! proposal selection (top-n per level, decode, clip, drop small boxes, score threshold,
//! NMS per level, post-NMS top-n). The losses and the anchor matching, which only training
//! needs, are not here.
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

use super::anchors::AnchorGenerator;
use super::box_coder::BoxCoder;
use super::boxes::{clip_boxes_to_image, remove_small_boxes};
use super::image_list::ImageList;
use super::nms::batched_nms;
use crate::conv::{Conv2d, ConvSpec};

/// torchvision's `RPNHead(in_channels, num_anchors, conv_depth)`: `conv_depth` 3x3
/// convolutions with ReLU (`conv.{i}.0`), then 1x1 convolutions to `num_anchors`
/// objectness logits (`cls_logits`) and `4 * num_anchors` box deltas (`bbox_pred`).
#[derive(Debug)]
pub struct RPNHead {
    conv: Vec<Conv2d>,
    cls_logits: Conv2d,
    bbox_pred: Conv2d,
}

impl RPNHead {
    /// The head under `p`, initialised as upstream (normal(0, 0.01) weights, zero biases).
    pub fn new(p: nn::Path, in_channels: i64, num_anchors: i64, conv_depth: usize) -> Self {
        let w = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let b = Some(Init::Const(0.0));
        let conv = (0..conv_depth)
            .map(|i| {
                // Conv2dNormActivation without a norm: Sequential(Conv2d, ReLU), bias on.
                let spec = ConvSpec::new(in_channels, in_channels, 3).padding(1);
                Conv2d::new(&p / "conv" / i / 0, spec, w, b)
            })
            .collect();
        let cls_logits = Conv2d::new(
            &p / "cls_logits",
            ConvSpec::new(in_channels, num_anchors, 1),
            w,
            b,
        );
        let bbox_pred = Conv2d::new(
            &p / "bbox_pred",
            ConvSpec::new(in_channels, 4 * num_anchors, 1),
            w,
            b,
        );
        RPNHead {
            conv,
            cls_logits,
            bbox_pred,
        }
    }

    /// Per feature level, the objectness logits `[N, A, H, W]` and deltas `[N, 4A, H, W]`.
    pub fn forward(&self, x: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut logits = Vec::with_capacity(x.len());
        let mut bbox_reg = Vec::with_capacity(x.len());
        for feature in x {
            let mut t = feature.shallow_clone();
            for conv in &self.conv {
                t = conv.forward(&t)?.f_relu()?;
            }
            logits.push(self.cls_logits.forward(&t)?);
            bbox_reg.push(self.bbox_pred.forward(&t)?);
        }
        Ok((logits, bbox_reg))
    }
}

/// `permute_and_flatten`: `[N, A * C, H, W]` -> `[N, H * W * A, C]` (cell-major, anchor
/// fastest, as the anchors are laid out).
fn permute_and_flatten(layer: &Tensor, n: i64, c: i64, h: i64, w: i64) -> Result<Tensor> {
    Ok(layer
        .f_view([n, -1, c, h, w])?
        .f_permute([0, 3, 4, 1, 2])?
        .f_reshape([n, -1, c])?)
}

/// `concat_box_prediction_layers`: every level's class logits and deltas flattened and
/// concatenated, `[N * sum(H*W*A), C]` and `[N * sum(H*W*A), 4]`.
pub fn concat_box_prediction_layers(
    box_cls: &[Tensor],
    box_regression: &[Tensor],
) -> Result<(Tensor, Tensor)> {
    if box_cls.len() != box_regression.len() || box_cls.is_empty() {
        return Err(PluginError::invalid_argument(format!(
            "concat_box_prediction_layers: {} levels of logits and {} of deltas",
            box_cls.len(),
            box_regression.len()
        )));
    }
    let mut cls = Vec::with_capacity(box_cls.len());
    let mut reg = Vec::with_capacity(box_cls.len());
    for (c, r) in box_cls.iter().zip(box_regression) {
        let (s, rs) = (c.size(), r.size());
        if s.len() != 4 || rs.len() != 4 || rs[1] % 4 != 0 || rs[1] == 0 || s[1] % (rs[1] / 4) != 0
        {
            return Err(PluginError::invalid_argument(format!(
                "concat_box_prediction_layers: logits {s:?} and deltas {rs:?} do not describe one anchor count"
            )));
        }
        let a = rs[1] / 4;
        cls.push(permute_and_flatten(c, s[0], s[1] / a, s[2], s[3])?);
        reg.push(permute_and_flatten(r, s[0], 4, s[2], s[3])?);
    }
    let cls = Tensor::f_cat(&cls, 1)?;
    let cls = cls.f_reshape([-1, cls.size()[2]])?;
    Ok((cls, Tensor::f_cat(&reg, 1)?.f_reshape([-1, 4])?))
}

/// torchvision's `RegionProposalNetwork` in eval mode: proposals and their objectness
/// probabilities for each image.
#[derive(Debug)]
pub struct RegionProposalNetwork {
    /// The anchors, one set per feature level.
    pub anchor_generator: AnchorGenerator,
    /// The convolutional head.
    pub head: RPNHead,
    /// Weights (1, 1, 1, 1).
    pub box_coder: BoxCoder,
    /// Proposals kept per level before NMS (`pre_nms_top_n["testing"]`).
    pub pre_nms_top_n: i64,
    /// Proposals kept per image after NMS (`post_nms_top_n["testing"]`).
    pub post_nms_top_n: i64,
    /// IoU threshold of the per-level NMS.
    pub nms_thresh: f64,
    /// Smallest objectness probability kept.
    pub score_thresh: f64,
    /// Smallest box side kept (1e-3).
    pub min_size: f64,
}

impl RegionProposalNetwork {
    /// The network with the testing top-n values, torchvision's `min_size` 1e-3 and box
    /// coder weights (1, 1, 1, 1).
    pub fn new(
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        pre_nms_top_n: i64,
        post_nms_top_n: i64,
        nms_thresh: f64,
        score_thresh: f64,
    ) -> Self {
        RegionProposalNetwork {
            anchor_generator,
            head,
            box_coder: BoxCoder::new([1.0; 4]),
            pre_nms_top_n,
            post_nms_top_n,
            nms_thresh,
            score_thresh,
            min_size: 1e-3,
        }
    }

    /// `forward(images, features)`: per image, the proposals `[P, 4]` (in the batch's
    /// coordinates, clipped to the image) and their objectness probabilities `[P]`, in
    /// decreasing order of probability.
    pub fn forward(
        &self,
        images: &ImageList,
        features: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let (objectness, pred_bbox_deltas) = self.head.forward(features)?;
        let anchors = self.anchor_generator.forward(images, features)?;
        let num_images = anchors.len() as i64;
        let num_anchors_per_level: Vec<i64> = objectness
            .iter()
            .map(|o| o.size()[1..].iter().product())
            .collect();
        let (objectness, pred_bbox_deltas) =
            concat_box_prediction_layers(&objectness, &pred_bbox_deltas)?;
        let proposals = self
            .box_coder
            .decode(&pred_bbox_deltas, &anchors)?
            .f_view([num_images, -1, 4])?;
        self.filter_proposals(
            &proposals,
            &objectness,
            &images.image_sizes,
            &num_anchors_per_level,
        )
    }

    /// `_get_top_n_idx`: the indices of the `pre_nms_top_n` highest logits of each level
    /// (libtorch's `topk`, as upstream), offset to index all levels, `[N, sum top-n]`.
    fn top_n_idx(&self, objectness: &Tensor, num_anchors_per_level: &[i64]) -> Result<Tensor> {
        let mut r = Vec::with_capacity(num_anchors_per_level.len());
        let mut offset = 0;
        for ob in objectness.f_split_with_sizes(num_anchors_per_level, 1)? {
            let num_anchors = ob.size()[1];
            let k = self.pre_nms_top_n.min(num_anchors);
            let (_, idx) = ob.f_topk(k, 1, true, true)?;
            r.push(idx.f_add_scalar(offset)?);
            offset += num_anchors;
        }
        Ok(Tensor::f_cat(&r, 1)?)
    }

    /// `filter_proposals(proposals [N, A, 4], objectness [N * A, 1], image_shapes,
    /// num_anchors_per_level)`: the selected boxes and probabilities per image.
    pub fn filter_proposals(
        &self,
        proposals: &Tensor,
        objectness: &Tensor,
        image_shapes: &[(i64, i64)],
        num_anchors_per_level: &[i64],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let num_images = proposals.size()[0];
        if image_shapes.len() as i64 != num_images {
            return Err(PluginError::invalid_argument(format!(
                "RegionProposalNetwork: {num_images} images of proposals but {} image shapes",
                image_shapes.len()
            )));
        }
        let device = proposals.device();
        let objectness = objectness.f_reshape([num_images, -1])?;
        let levels = num_anchors_per_level
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::f_full([n], i as i64, (Kind::Int64, device)))
            .collect::<Result<Vec<_>, _>>()?;
        let levels = Tensor::f_cat(&levels, 0)?;
        let top_n_idx = self.top_n_idx(&objectness, num_anchors_per_level)?;
        let objectness = objectness.f_gather(1, &top_n_idx, false)?;
        let prob = objectness.f_sigmoid()?;
        let mut final_boxes = Vec::with_capacity(num_images as usize);
        let mut final_scores = Vec::with_capacity(num_images as usize);
        for (i, &shape) in image_shapes.iter().enumerate() {
            let idx = top_n_idx.f_select(0, i as i64)?;
            let boxes = proposals.f_select(0, i as i64)?.f_index_select(0, &idx)?;
            let scores = prob.f_select(0, i as i64)?;
            let lvl = levels.f_index_select(0, &idx)?;
            let boxes = clip_boxes_to_image(&boxes, shape)?;
            let keep = remove_small_boxes(&boxes, self.min_size)?;
            let (boxes, scores, lvl) = select(&boxes, &scores, &lvl, &keep)?;
            let keep = scores
                .f_ge(self.score_thresh)?
                .f_nonzero()?
                .f_select(1, 0)?;
            let (boxes, scores, lvl) = select(&boxes, &scores, &lvl, &keep)?;
            let keep = batched_nms(&boxes, &scores, &lvl, self.nms_thresh)?;
            let keep = keep.f_narrow(0, 0, keep.size()[0].min(self.post_nms_top_n))?;
            final_boxes.push(boxes.f_index_select(0, &keep)?);
            final_scores.push(scores.f_index_select(0, &keep)?);
        }
        Ok((final_boxes, final_scores))
    }
}

/// The rows `keep` of boxes, scores and levels.
fn select(
    boxes: &Tensor,
    scores: &Tensor,
    lvl: &Tensor,
    keep: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        boxes.f_index_select(0, keep)?,
        scores.f_index_select(0, keep)?,
        lvl.f_index_select(0, keep)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;
    use tch::Device;

    /// The fixture's RPN: anchors 16 and 32 with ratios (0.5, 1, 2), a head on 4 channels
    /// with the fixture's weights, pre-NMS top 20, post-NMS top 4, NMS 0.6, score 0.7.
    fn rpn(vs: &nn::VarStore) -> RegionProposalNetwork {
        let f = fixture("rpn");
        let ag = AnchorGenerator::new(vec![vec![16.0], vec![32.0]], vec![vec![0.5, 1.0, 2.0]; 2])
            .unwrap();
        let head = RPNHead::new(vs.root(), 4, 3, 1);
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                var.copy_(get(&f, &format!("head.{name}")));
            }
        });
        RegionProposalNetwork::new(ag, head, 20, 4, 0.6, 0.7)
    }

    // Convolutions run libtorch's kernels on both sides; 1e-5 absolute on logits of
    // magnitude ~1 covers a different reduction order (other thread count or CPU).
    const TOL: f64 = 1e-5;

    #[test]
    fn rpn_head_and_proposals_match_torchvision() {
        let f = fixture("rpn");
        let vs = nn::VarStore::new(Device::Cpu);
        let rpn = rpn(&vs);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "bbox_pred.bias",
                "bbox_pred.weight",
                "cls_logits.bias",
                "cls_logits.weight",
                "conv.0.0.bias",
                "conv.0.0.weight"
            ]
        );
        let feats = [formula(&[2, 4, 8, 12], 0.4), formula(&[2, 4, 4, 6], 1.3)];
        let (objectness, deltas) = rpn.head.forward(&feats).unwrap();
        for i in 0..2 {
            assert_close(
                &objectness[i],
                get(&f, &format!("objectness.{i}")),
                TOL,
                "objectness",
            );
            assert_close(&deltas[i], get(&f, &format!("deltas.{i}")), TOL, "deltas");
        }
        let s = get(&f, "image_sizes");
        let images = ImageList {
            tensors: Tensor::zeros([2, 3, 32, 48], (Kind::Float, Device::Cpu)),
            image_sizes: (0..2)
                .map(|i| (s.int64_value(&[i, 0]), s.int64_value(&[i, 1])))
                .collect(),
        };
        let (boxes, scores) = tch::no_grad(|| rpn.forward(&images, &feats)).unwrap();
        for i in 0..2 {
            // Boxes in pixels of magnitude ~50: 1e-4 absolute is float32's resolution there.
            assert_close(
                &boxes[i],
                get(&f, &format!("proposals.{i}")),
                1e-4,
                "proposals",
            );
            assert_close(&scores[i], get(&f, &format!("scores.{i}")), TOL, "scores");
        }
    }

    #[test]
    fn top_n_per_level_limits_the_proposals() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut rpn = rpn(&vs);
        rpn.post_nms_top_n = 2;
        rpn.score_thresh = 0.0;
        let feats = [formula(&[2, 4, 8, 12], 0.4), formula(&[2, 4, 4, 6], 1.3)];
        let images = ImageList {
            tensors: Tensor::zeros([2, 3, 32, 48], (Kind::Float, Device::Cpu)),
            image_sizes: vec![(32, 45), (29, 48)],
        };
        let (boxes, scores) = tch::no_grad(|| rpn.forward(&images, &feats)).unwrap();
        assert!(boxes.iter().all(|b| b.size() == [2, 4]));
        for s in &scores {
            assert!(s.double_value(&[0]) >= s.double_value(&[1]));
        }
    }
}
