//! torchvision's R-CNN heads, inference path (`torchvision/models/detection/roi_heads.py`,
//! with the heads of `faster_rcnn.py` and `mask_rcnn.py`): `TwoMLPHead`,
//! `FastRCNNPredictor`, `RoIHeads.postprocess_detections` (decode, softmax, clip, drop the
//! background, score threshold, small boxes, NMS per class, top detections), the Mask R-CNN
//! branch (`MaskRCNNHeads`, `MaskRCNNPredictor`, `maskrcnn_inference`) and
//! `paste_masks_in_image`, which puts each box's mask into the image. The losses, the
//! proposal matching and sampling, which only training needs, are not here; nor are the
//! keypoint heads.
use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

use super::box_coder::BoxCoder;
use super::boxes::{check_boxes, clip_boxes_to_image, remove_small_boxes};
use super::nms::batched_nms;
use super::poolers::MultiScaleRoIAlign;
use crate::conv::{Conv2d, ConvSpec};
use crate::linear::fan_in_uniform;

/// `nn.Linear` computed as `F.linear` computes it (libtorch's `linear`), so that the class
/// scores that NMS orders are those of torchvision.
#[derive(Debug)]
struct PlainLinear {
    weight: Tensor,
    bias: Tensor,
}

impl PlainLinear {
    /// PyTorch's default init: weight and bias uniform in +-1/sqrt(in).
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let u = fan_in_uniform(c_in);
        PlainLinear {
            weight: p.var("weight", &[c_out, c_in], u),
            bias: p.var("bias", &[c_out], u),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
}

/// torchvision's `TwoMLPHead(in_channels, representation_size)`: the pooled features
/// flattened, then `fc6` and `fc7`, each followed by ReLU.
#[derive(Debug)]
pub struct TwoMLPHead {
    fc6: PlainLinear,
    fc7: PlainLinear,
}

impl TwoMLPHead {
    /// The head under `p` (keys `fc6.*`, `fc7.*`); `in_channels` is channels x pooled
    /// height x pooled width.
    pub fn new(p: nn::Path, in_channels: i64, representation_size: i64) -> Self {
        TwoMLPHead {
            fc6: PlainLinear::new(&p / "fc6", in_channels, representation_size),
            fc7: PlainLinear::new(&p / "fc7", representation_size, representation_size),
        }
    }

    /// `[K, C, PH, PW]` -> `[K, representation_size]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_flatten(1, -1)?;
        let x = self.fc6.forward(&x)?.f_relu()?;
        Ok(self.fc7.forward(&x)?.f_relu()?)
    }
}

/// torchvision's `FastRCNNPredictor(in_channels, num_classes)`: class logits (`cls_score`)
/// and per-class box deltas (`bbox_pred`), background included as class 0.
#[derive(Debug)]
pub struct FastRCNNPredictor {
    cls_score: PlainLinear,
    bbox_pred: PlainLinear,
}

impl FastRCNNPredictor {
    /// The predictor under `p` (keys `cls_score.*`, `bbox_pred.*`).
    pub fn new(p: nn::Path, in_channels: i64, num_classes: i64) -> Self {
        FastRCNNPredictor {
            cls_score: PlainLinear::new(&p / "cls_score", in_channels, num_classes),
            bbox_pred: PlainLinear::new(&p / "bbox_pred", in_channels, 4 * num_classes),
        }
    }

    /// `[K, D]` (or `[K, D, 1, 1]`) -> class logits `[K, num_classes]` and deltas
    /// `[K, 4 * num_classes]`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.dim() == 4 && x.size()[2..] != [1, 1] {
            return Err(PluginError::invalid_argument(format!(
                "FastRCNNPredictor: x has the wrong shape, expecting the last two dimensions to be \
                 [1, 1], got {:?}",
                x.size()
            )));
        }
        let x = x.f_flatten(1, -1)?;
        Ok((self.cls_score.forward(&x)?, self.bbox_pred.forward(&x)?))
    }
}

/// torchvision's `Conv2dNormActivation(c_in, c_out, 3, padding=dilation, dilation,
/// norm_layer)` with ReLU: the convolution under `0` (with a bias only without a norm),
/// an eval-mode `BatchNorm2d` (eps 1e-5) under `1` when `batch_norm`. Upstream's heads
/// initialise the convolution Kaiming normal (fan-out) with a zero bias.
#[derive(Debug)]
struct ConvNormRelu {
    conv: Conv2d,
    bn: Option<nn::BatchNorm>,
}

impl ConvNormRelu {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, dilation: i64, batch_norm: bool) -> Self {
        let spec = ConvSpec::new(c_in, c_out, 3)
            .padding(dilation)
            .dilation(dilation);
        let w = kaiming_normal_fan_out(c_out * 9);
        let bias = (!batch_norm).then_some(Init::Const(0.0));
        ConvNormRelu {
            conv: Conv2d::new(p / 0, spec, w, bias),
            bn: batch_norm.then(|| crate::norm::batch_norm2d(p / 1, c_out, 1e-5, 0.1)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = self.conv.forward(x)?;
        let t = match &self.bn {
            Some(bn) => t.f_batch_norm(
                bn.ws.as_ref(),
                bn.bs.as_ref(),
                Some(&bn.running_mean),
                Some(&bn.running_var),
                false,
                0.1,
                1e-5,
                true,
            )?,
            None => t,
        };
        Ok(t.f_relu()?)
    }
}

/// torchvision's `MaskRCNNHeads(in_channels, layers, dilation, norm_layer)`: one 3x3
/// convolution (padding = dilation) and ReLU per entry of `layers`, under the keys
/// `{i}.0.*`, with a `BatchNorm2d` under `{i}.1.*` when `batch_norm` (TerraTorch's
/// Mask R-CNN). These are torchvision's version-2 keys; it renames the older
/// `mask_fcn{i+1}.*` to them when a checkpoint is read.
#[derive(Debug)]
pub struct MaskRCNNHeads {
    convs: Vec<ConvNormRelu>,
}

impl MaskRCNNHeads {
    /// The heads under `p`, initialised as upstream (Kaiming normal, fan-out, zero biases).
    pub fn new(
        p: nn::Path,
        in_channels: i64,
        layers: &[i64],
        dilation: i64,
        batch_norm: bool,
    ) -> Self {
        let mut next = in_channels;
        let convs = layers
            .iter()
            .enumerate()
            .map(|(i, &features)| {
                let block = ConvNormRelu::new(&(&p / i), next, features, dilation, batch_norm);
                next = features;
                block
            })
            .collect();
        MaskRCNNHeads { convs }
    }

    /// `[K, C, H, W]` -> `[K, layers.last(), H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut t = x.shallow_clone();
        for conv in &self.convs {
            t = conv.forward(&t)?;
        }
        Ok(t)
    }
}

/// torchvision's `FastRCNNConvFCHead(input_size (C, H, W), conv_layers, fc_layers,
/// norm_layer)`: 3x3 convolutions with ReLU (`{i}.0`, and `BatchNorm2d` `{i}.1` when
/// `batch_norm`), flattened, then linear layers with ReLU (`{n_conv + 1 + 2j}`).
/// TerraTorch's Mask R-CNN uses it with four 256-channel convolutions, one 1024 linear
/// layer and BatchNorm2d.
#[derive(Debug)]
pub struct FastRCNNConvFCHead {
    convs: Vec<ConvNormRelu>,
    fcs: Vec<PlainLinear>,
}

impl FastRCNNConvFCHead {
    /// The head under `p`.
    pub fn new(
        p: nn::Path,
        input_size: (i64, i64, i64),
        conv_layers: &[i64],
        fc_layers: &[i64],
        batch_norm: bool,
    ) -> Self {
        let (c, h, w) = input_size;
        let mut prev = c;
        let convs = conv_layers
            .iter()
            .enumerate()
            .map(|(i, &cur)| {
                let block = ConvNormRelu::new(&(&p / i), prev, cur, 1, batch_norm);
                prev = cur;
                block
            })
            .collect();
        let mut prev = prev * h * w;
        let first_fc = conv_layers.len() + 1;
        let fcs = fc_layers
            .iter()
            .enumerate()
            .map(|(j, &cur)| {
                let fc = PlainLinear::new(&p / (first_fc + 2 * j), prev, cur);
                prev = cur;
                fc
            })
            .collect();
        FastRCNNConvFCHead { convs, fcs }
    }

    /// `[K, C, H, W]` -> `[K, fc_layers.last()]` (or the flattened convolution output
    /// without linear layers).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut t = x.shallow_clone();
        for conv in &self.convs {
            t = conv.forward(&t)?;
        }
        let mut t = t.f_flatten(1, -1)?;
        for fc in &self.fcs {
            t = fc.forward(&t)?.f_relu()?;
        }
        Ok(t)
    }
}

/// The box heads `RoIHeads` runs between the pooling and the predictor.
#[derive(Debug)]
pub enum BoxHead {
    /// torchvision's default ([`TwoMLPHead`]).
    TwoMLP(TwoMLPHead),
    /// Convolutions then linear layers ([`FastRCNNConvFCHead`]).
    ConvFC(FastRCNNConvFCHead),
}

impl BoxHead {
    /// The pooled features `[K, C, H, W]` to one representation per box `[K, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            BoxHead::TwoMLP(h) => h.forward(x),
            BoxHead::ConvFC(h) => h.forward(x),
        }
    }
}

impl From<TwoMLPHead> for BoxHead {
    fn from(h: TwoMLPHead) -> Self {
        BoxHead::TwoMLP(h)
    }
}

impl From<FastRCNNConvFCHead> for BoxHead {
    fn from(h: FastRCNNConvFCHead) -> Self {
        BoxHead::ConvFC(h)
    }
}

/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: normal(0, sqrt(2 / fan_out)).
fn kaiming_normal_fan_out(fan_out: i64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: (2.0 / fan_out.max(1) as f64).sqrt(),
    }
}

/// torchvision's `MaskRCNNPredictor(in_channels, dim_reduced, num_classes)`: a 2x2
/// transposed convolution at stride 2 (`conv5_mask`) and ReLU, then 1x1 convolution to
/// one mask logit map per class (`mask_fcn_logits`).
#[derive(Debug)]
pub struct MaskRCNNPredictor {
    conv5_weight: Tensor,
    conv5_bias: Tensor,
    mask_fcn_logits: Conv2d,
}

impl MaskRCNNPredictor {
    /// The predictor under `p`, with upstream's weight init (Kaiming normal, fan-out) and
    /// PyTorch's default biases.
    pub fn new(p: nn::Path, in_channels: i64, dim_reduced: i64, num_classes: i64) -> Self {
        let c5 = &p / "conv5_mask";
        // ConvTranspose2d's weight is [in, out, 2, 2]: PyTorch's fan-out is in * 4 and the
        // bias bound 1/sqrt(out * 4).
        let conv5_weight = c5.var(
            "weight",
            &[in_channels, dim_reduced, 2, 2],
            kaiming_normal_fan_out(in_channels * 4),
        );
        let conv5_bias = c5.var("bias", &[dim_reduced], fan_in_uniform(dim_reduced * 4));
        let mask_fcn_logits = Conv2d::new(
            &p / "mask_fcn_logits",
            ConvSpec::new(dim_reduced, num_classes, 1),
            kaiming_normal_fan_out(num_classes),
            Some(fan_in_uniform(dim_reduced)),
        );
        MaskRCNNPredictor {
            conv5_weight,
            conv5_bias,
            mask_fcn_logits,
        }
    }

    /// `[K, C, H, W]` -> mask logits `[K, num_classes, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = x
            .f_conv_transpose2d(
                &self.conv5_weight,
                Some(&self.conv5_bias),
                [2, 2],
                [0, 0],
                [0, 0],
                1,
                [1, 1],
            )?
            .f_relu()?;
        self.mask_fcn_logits.forward(&t)
    }
}

/// Mask R-CNN's part of `RoIHeads`: pool the detections' boxes, run the head and the
/// predictor.
#[derive(Debug)]
pub struct MaskBranch {
    /// `mask_roi_pool` (torchvision: 14 x 14, sampling ratio 2).
    pub mask_roi_pool: MultiScaleRoIAlign,
    /// `mask_head`.
    pub mask_head: MaskRCNNHeads,
    /// `mask_predictor`.
    pub mask_predictor: MaskRCNNPredictor,
}

/// One image's detections: out of [`RoIHeads`] in the coordinates of the image the heads
/// saw, out of [`super::faster_rcnn::GeneralizedRCNN`] in the input image's.
#[derive(Debug)]
pub struct Detections {
    /// `[D, 4]` boxes `(x1, y1, x2, y2)`.
    pub boxes: Tensor,
    /// `[D]` class probabilities, in decreasing order.
    pub scores: Tensor,
    /// `[D]` int64 class indices (1.. ; 0 is the background).
    pub labels: Tensor,
    /// Mask R-CNN's mask probabilities of each box's class: `[D, 1, M, M]` out of the
    /// heads, `[D, 1, H, W]` pasted into the image after `GeneralizedRCNN`'s postprocess.
    pub masks: Option<Tensor>,
}

/// One feature level's candidates in RetinaNet's and FCOS's `postprocess_detections`: of
/// the level's flattened `[anchors * classes]` scores, those above `score_thresh`, at most
/// `topk_candidates` of them by score; returns (their scores, their anchors' indices, their
/// classes).
pub fn level_candidates(
    scores: &Tensor,
    num_classes: i64,
    score_thresh: f64,
    topk_candidates: i64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let keep = scores.f_gt(score_thresh)?;
    let s = scores.f_masked_select(&keep)?;
    let idxs = keep.f_nonzero()?.f_select(1, 0)?;
    let k = topk_candidates.min(idxs.size()[0]);
    let (s, order) = s.f_topk(k, 0, true, true)?;
    let idxs = idxs.f_index_select(0, &order)?;
    let anchor_idxs = idxs.f_div_scalar_mode(num_classes, "floor")?;
    let labels = idxs.f_remainder(num_classes)?;
    Ok((s, anchor_idxs, labels))
}

impl Detections {
    /// The end of RetinaNet's and FCOS's `postprocess_detections`: the candidates of every
    /// level together, `batched_nms` per class at `nms_thresh`, the best
    /// `detections_per_img` kept (no masks).
    pub fn after_batched_nms(
        boxes: &[Tensor],
        scores: &[Tensor],
        labels: &[Tensor],
        nms_thresh: f64,
        detections_per_img: i64,
    ) -> Result<Self> {
        let boxes = Tensor::f_cat(boxes, 0)?;
        let scores = Tensor::f_cat(scores, 0)?;
        let labels = Tensor::f_cat(labels, 0)?.f_to_kind(Kind::Int64)?;
        let keep = batched_nms(&boxes, &scores, &labels, nms_thresh)?;
        let keep = keep.f_narrow(0, 0, keep.size()[0].min(detections_per_img.max(0)))?;
        Ok(Self {
            boxes: boxes.f_index_select(0, &keep)?,
            scores: scores.f_index_select(0, &keep)?,
            labels: labels.f_index_select(0, &keep)?,
            masks: None,
        })
    }
}

/// torchvision's `RoIHeads` in eval mode, for boxes and (with [`MaskBranch`]) masks.
#[derive(Debug)]
pub struct RoIHeads {
    /// `box_roi_pool` (torchvision: 7 x 7, sampling ratio 2).
    pub box_roi_pool: MultiScaleRoIAlign,
    /// `box_head`.
    pub box_head: BoxHead,
    /// `box_predictor`.
    pub box_predictor: FastRCNNPredictor,
    /// Weights (10, 10, 5, 5).
    pub box_coder: BoxCoder,
    /// Class probabilities at or below this are dropped (`box_score_thresh`, 0.05).
    pub score_thresh: f64,
    /// IoU threshold of the per-class NMS (`box_nms_thresh`, 0.5).
    pub nms_thresh: f64,
    /// Detections kept per image (`box_detections_per_img`, 100).
    pub detections_per_img: i64,
    /// The Mask R-CNN branch, if any.
    pub mask: Option<MaskBranch>,
}

impl RoIHeads {
    /// The box part with torchvision's box coder weights (10, 10, 5, 5); add masks with
    /// [`RoIHeads::with_mask`].
    pub fn new(
        box_roi_pool: MultiScaleRoIAlign,
        box_head: impl Into<BoxHead>,
        box_predictor: FastRCNNPredictor,
        score_thresh: f64,
        nms_thresh: f64,
        detections_per_img: i64,
    ) -> Self {
        RoIHeads {
            box_roi_pool,
            box_head: box_head.into(),
            box_predictor,
            box_coder: BoxCoder::new([10.0, 10.0, 5.0, 5.0]),
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask: None,
        }
    }

    /// The same with the Mask R-CNN branch.
    pub fn with_mask(mut self, mask: MaskBranch) -> Self {
        self.mask = Some(mask);
        self
    }

    /// `forward(features, proposals, image_shapes)`: `features` the named feature maps
    /// (finest first), `proposals` one `[P_i, 4]` tensor per image and `image_shapes`
    /// each image's `(height, width)` in the batch; per image, its detections.
    pub fn forward(
        &self,
        features: &[(String, Tensor)],
        proposals: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<Vec<Detections>> {
        let box_features = self
            .box_roi_pool
            .forward(features, proposals, image_shapes)?;
        let box_features = self.box_head.forward(&box_features)?;
        let (class_logits, box_regression) = self.box_predictor.forward(&box_features)?;
        let dets =
            self.postprocess_detections(&class_logits, &box_regression, proposals, image_shapes)?;
        let mut result: Vec<Detections> = dets
            .into_iter()
            .map(|(boxes, scores, labels)| Detections {
                boxes,
                scores,
                labels,
                masks: None,
            })
            .collect();
        if let Some(m) = &self.mask {
            let boxes: Vec<Tensor> = result.iter().map(|d| d.boxes.shallow_clone()).collect();
            let x = m.mask_roi_pool.forward(features, &boxes, image_shapes)?;
            let x = m.mask_head.forward(&x)?;
            let mask_logits = m.mask_predictor.forward(&x)?;
            let labels: Vec<Tensor> = result.iter().map(|d| d.labels.shallow_clone()).collect();
            for (d, probs) in result
                .iter_mut()
                .zip(maskrcnn_inference(&mask_logits, &labels)?)
            {
                d.masks = Some(probs);
            }
        }
        Ok(result)
    }

    /// `postprocess_detections(class_logits [K, C], box_regression [K, 4C], proposals,
    /// image_shapes)`: per image, `(boxes [D, 4], scores [D], labels [D])`. Every
    /// (proposal, foreground class) pair is a candidate; candidates with a probability
    /// above `score_thresh` and sides of at least 0.01 go through NMS per class, and the
    /// first `detections_per_img` survivors in decreasing score are kept.
    pub fn postprocess_detections(
        &self,
        class_logits: &Tensor,
        box_regression: &Tensor,
        proposals: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<Vec<(Tensor, Tensor, Tensor)>> {
        if proposals.len() != image_shapes.len() || proposals.is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "RoIHeads.postprocess_detections: {} proposal lists for {} image shapes",
                proposals.len(),
                image_shapes.len()
            )));
        }
        let device = class_logits.device();
        let num_classes = *class_logits.size().last().unwrap_or(&0);
        let boxes_per_image: Vec<i64> = proposals.iter().map(|p| p.size()[0]).collect();
        let total: i64 = boxes_per_image.iter().sum();
        if class_logits.dim() != 2 || class_logits.size()[0] != total || num_classes < 1 {
            return Err(PluginError::invalid_argument(format!(
                "RoIHeads.postprocess_detections: class logits {:?} for {total} proposals",
                class_logits.size()
            )));
        }
        // [K, C, 4]; torchvision leaves it [0, 4C] without proposals, which gives the same
        // empty results.
        let pred_boxes = self
            .box_coder
            .decode(box_regression, proposals)?
            .f_reshape([total, num_classes, 4])?;
        let pred_scores = class_logits.f_softmax(-1, None::<Kind>)?;
        let boxes_list = pred_boxes.f_split_with_sizes(&boxes_per_image, 0)?;
        let scores_list = pred_scores.f_split_with_sizes(&boxes_per_image, 0)?;
        let mut out = Vec::with_capacity(proposals.len());
        for ((boxes, scores), &shape) in boxes_list.iter().zip(&scores_list).zip(image_shapes) {
            let boxes = clip_boxes_to_image(boxes, shape)?;
            let labels = Tensor::f_arange(num_classes, (Kind::Int64, device))?
                .f_view([1, -1])?
                .f_expand_as(scores)?;
            // Drop the background, then every (proposal, class) pair is one candidate.
            let boxes = boxes.f_narrow(1, 1, num_classes - 1)?.f_reshape([-1, 4])?;
            let scores = scores.f_narrow(1, 1, num_classes - 1)?.f_reshape([-1])?;
            let labels = labels.f_narrow(1, 1, num_classes - 1)?.f_reshape([-1])?;
            let inds = scores
                .f_gt(self.score_thresh)?
                .f_nonzero()?
                .f_select(1, 0)?;
            let (boxes, scores, labels) = take(&boxes, &scores, &labels, &inds)?;
            let keep = remove_small_boxes(&boxes, 1e-2)?;
            let (boxes, scores, labels) = take(&boxes, &scores, &labels, &keep)?;
            let keep = batched_nms(&boxes, &scores, &labels, self.nms_thresh)?;
            let n = keep.size()[0].min(self.detections_per_img.max(0));
            let keep = keep.f_narrow(0, 0, n)?;
            out.push(take(&boxes, &scores, &labels, &keep)?);
        }
        Ok(out)
    }
}

/// The rows `idx` of boxes, scores and labels.
fn take(
    boxes: &Tensor,
    scores: &Tensor,
    labels: &Tensor,
    idx: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        boxes.f_index_select(0, idx)?,
        scores.f_index_select(0, idx)?,
        labels.f_index_select(0, idx)?,
    ))
}

/// `maskrcnn_inference(mask_logits [K, C, M, M], labels)`: the sigmoid of each box's
/// own class channel, `[D_i, 1, M, M]` per image (`labels` holds one `[D_i]` tensor per
/// image, `K = sum D_i`).
pub fn maskrcnn_inference(mask_logits: &Tensor, labels: &[Tensor]) -> Result<Vec<Tensor>> {
    let per_image: Vec<i64> = labels.iter().map(|l| l.size()[0]).collect();
    let num_masks = mask_logits.size()[0];
    if mask_logits.dim() != 4 || per_image.iter().sum::<i64>() != num_masks || labels.is_empty() {
        return Err(PluginError::invalid_argument(format!(
            "maskrcnn_inference: mask logits {:?} for {} labels",
            mask_logits.size(),
            per_image.iter().sum::<i64>()
        )));
    }
    let prob = mask_logits.f_sigmoid()?;
    let labels = Tensor::f_cat(labels, 0)?;
    let index = Tensor::f_arange(num_masks, (Kind::Int64, labels.device()))?;
    // mask_prob[index, labels][:, None]
    let selected = prob.f_index(&[Some(index), Some(labels)])?.f_unsqueeze(1)?;
    Ok(selected.f_split_with_sizes(&per_image, 0)?)
}

/// `expand_boxes(boxes, scale)`: each box scaled by `scale` about its centre, in the
/// boxes' precision (the half-sizes multiplied by `scale` as upstream does in place).
pub fn expand_boxes(boxes: &Tensor, scale: f64) -> Result<Tensor> {
    check_boxes(boxes, "expand_boxes")?;
    let col = |i: i64| boxes.f_select(1, i);
    let w_half = col(2)?.f_sub(&col(0)?)?.f_mul_scalar(0.5)?;
    let h_half = col(3)?.f_sub(&col(1)?)?.f_mul_scalar(0.5)?;
    let x_c = col(2)?.f_add(&col(0)?)?.f_mul_scalar(0.5)?;
    let y_c = col(3)?.f_add(&col(1)?)?.f_mul_scalar(0.5)?;
    let w_half = w_half.f_mul_scalar(scale)?;
    let h_half = h_half.f_mul_scalar(scale)?;
    let parts = [
        x_c.f_sub(&w_half)?,
        y_c.f_sub(&h_half)?,
        x_c.f_add(&w_half)?,
        y_c.f_add(&h_half)?,
    ];
    Ok(Tensor::f_stack(&parts, 1)?)
}

/// `expand_masks(mask, padding)`: the masks `[N, 1, M, M]` zero-padded by `padding` on
/// every side, and the scale `(M + 2 padding) / M` that the boxes grow by to match.
pub fn expand_masks(mask: &Tensor, padding: i64) -> Result<(Tensor, f64)> {
    let m = *mask.size().last().unwrap_or(&0);
    if m <= 0 {
        return Err(PluginError::invalid_argument(format!(
            "expand_masks: masks must be [N, 1, M, M] with M > 0, got {:?}",
            mask.size()
        )));
    }
    let scale = (m + 2 * padding) as f64 / m as f64;
    Ok((mask.f_constant_pad_nd([padding; 4])?, scale))
}

/// Python's `a[start:stop]` bounds on a length `len`: negative indices count from the end,
/// then both clamp to `[0, len]`. Returns `(start, length)`.
fn py_slice(start: i64, stop: i64, len: i64) -> (i64, i64) {
    let norm = |i: i64| if i < 0 { (i + len).max(0) } else { i.min(len) };
    let (s, e) = (norm(start), norm(stop));
    (s, (e - s).max(0))
}

/// `paste_mask_in_image(mask [M, M], box (int64 x1, y1, x2, y2), im_mask [im_h, im_w])`:
/// the mask resized (bilinear, `align_corners=False`) to the box's `(y2 - y1 + 1) x
/// (x2 - x1 + 1)` pixels and written into the zero image `im_mask` at the box, clipped to
/// the image. As upstream, a box entirely outside the image is an error (the two slices
/// differ in size).
fn paste_mask_in_image(mask: &Tensor, b: [i64; 4], im_mask: &Tensor) -> Result<()> {
    let (im_h, im_w) = (im_mask.size()[0], im_mask.size()[1]);
    let w = (b[2] - b[0] + 1).max(1);
    let h = (b[3] - b[1] + 1).max(1);
    let resized = mask
        .f_expand([1, 1, -1, -1], false)?
        .f_upsample_bilinear2d([h, w], false, None, None)?
        .f_select(0, 0)?
        .f_select(0, 0)?;
    let (x_0, x_1) = (b[0].max(0), (b[2] + 1).min(im_w));
    let (y_0, y_1) = (b[1].max(0), (b[3] + 1).min(im_h));
    // im_mask[y_0:y_1, x_0:x_1] = mask[y_0 - y1 : y_1 - y1, x_0 - x1 : x_1 - x1]
    let (dy, dh) = py_slice(y_0, y_1, im_h);
    let (dx, dw) = py_slice(x_0, x_1, im_w);
    let (sy, sh) = py_slice(y_0 - b[1], y_1 - b[1], h);
    let (sx, sw) = py_slice(x_0 - b[0], x_1 - b[0], w);
    let src = resized.f_narrow(0, sy, sh)?.f_narrow(1, sx, sw)?;
    let mut dst = im_mask.f_narrow(0, dy, dh)?.f_narrow(1, dx, dw)?;
    dst.f_copy_(&src).map_err(|e| {
        PluginError::invalid_argument(format!(
            "paste_masks_in_image: the box {b:?} (expanded, in pixels) does not overlap the \
             {im_h} x {im_w} image: {e}"
        ))
    })?;
    Ok(())
}

/// torchvision's `paste_masks_in_image(masks [N, 1, M, M], boxes [N, 4], (im_h, im_w),
/// padding)` (its eager path, one box at a time): each mask padded by `padding`, its box
/// expanded to match and truncated to whole pixels, and the mask resized into the box
/// within a `[N, 1, im_h, im_w]` zero image. Boxes partly outside the image are clipped;
/// a box wholly outside is an error, as upstream. Each mask is resized to its box's size
/// in pixels: callers pass boxes inside the image, as the detectors do. Upstream builds one
/// image per box and stacks them; here each box is pasted straight into its slice of the
/// output (the same values, one image-sized buffer per box less at the peak).
pub fn paste_masks_in_image(
    masks: &Tensor,
    boxes: &Tensor,
    img_shape: (i64, i64),
    padding: i64,
) -> Result<Tensor> {
    check_boxes(boxes, "paste_masks_in_image")?;
    if masks.dim() != 4 || masks.size()[1] != 1 || masks.size()[0] != boxes.size()[0] {
        return Err(PluginError::invalid_argument(format!(
            "paste_masks_in_image: expected masks [N, 1, M, M] for boxes {:?}, got {:?}",
            boxes.size(),
            masks.size()
        )));
    }
    let (im_h, im_w) = img_shape;
    let (masks, scale) = expand_masks(masks, padding)?;
    let boxes = expand_boxes(boxes, scale)?.f_to_kind(Kind::Int64)?;
    let n = boxes.size()[0];
    let out = Tensor::f_zeros([n, 1, im_h, im_w], (masks.kind(), masks.device()))?;
    let coords = Vec::<i64>::try_from(boxes.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    for (i, b) in coords.chunks(4).enumerate() {
        let i = i as i64;
        let mask = masks.f_select(0, i)?.f_select(0, 0)?;
        let im_mask = out.f_select(0, i)?.f_select(0, 0)?;
        paste_mask_in_image(&mask, [b[0], b[1], b[2], b[3]], &im_mask)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;
    use std::collections::HashMap;
    use tch::Device;

    /// The fixture's heads: two levels of 4 channels, 7 x 7 pooling, TwoMLPHead(196, 16),
    /// 4 classes, a two-layer mask head of 8 channels and a predictor of 6; weights from the
    /// fixture's `w.*`.
    fn heads(vs: &nn::VarStore, f: &HashMap<String, Tensor>, score: f64, dets: i64) -> RoIHeads {
        let p = vs.root();
        let heads = RoIHeads::new(
            MultiScaleRoIAlign::new(&["0", "1"], (7, 7), 2),
            TwoMLPHead::new(&p / "box_head", 4 * 49, 16),
            FastRCNNPredictor::new(&p / "box_predictor", 16, 4),
            score,
            0.5,
            dets,
        )
        .with_mask(MaskBranch {
            mask_roi_pool: MultiScaleRoIAlign::new(&["0", "1"], (7, 7), 2),
            mask_head: MaskRCNNHeads::new(&p / "mask_head", 4, &[8, 8], 1, false),
            mask_predictor: MaskRCNNPredictor::new(&p / "mask_predictor", 8, 6, 4),
        });
        load(vs, f);
        heads
    }

    /// Copies the fixture's `w.<name>` into every variable (all must be there).
    pub(crate) fn load(vs: &nn::VarStore, f: &HashMap<String, Tensor>) {
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                var.copy_(get(f, &format!("w.{name}")));
            }
        });
    }

    fn features() -> Vec<(String, Tensor)> {
        vec![
            ("0".into(), formula(&[2, 4, 16, 24], 0.2)),
            ("1".into(), formula(&[2, 4, 8, 12], 0.9)),
        ]
    }

    fn image_shapes(f: &HashMap<String, Tensor>) -> Vec<(i64, i64)> {
        let s = get(f, "image_shapes");
        (0..2)
            .map(|i| (s.int64_value(&[i, 0]), s.int64_value(&[i, 1])))
            .collect()
    }

    // Linear layers and convolutions run libtorch's kernels on both sides; 1e-5 on values
    // of magnitude ~1 covers another reduction order (thread count, CPU).
    const TOL: f64 = 1e-5;
    // Boxes in pixels of magnitude ~100: 1e-4 is float32's resolution there (the brief's
    // 1e-3 px with a margin).
    const BOX_TOL: f64 = 1e-4;

    fn assert_detections(got: &Detections, f: &HashMap<String, Tensor>, prefix: &str) {
        assert_close(
            &got.boxes,
            get(f, &format!("{prefix}.boxes")),
            BOX_TOL,
            prefix,
        );
        assert_close(
            &got.scores,
            get(f, &format!("{prefix}.scores")),
            TOL,
            prefix,
        );
        assert_same_indices(&got.labels, get(f, &format!("{prefix}.labels")), prefix);
        assert_close(
            got.masks.as_ref().unwrap(),
            get(f, &format!("{prefix}.masks")),
            TOL,
            prefix,
        );
    }

    #[test]
    fn roi_heads_match_torchvision_step_by_step() {
        let f = fixture("roi_heads");
        let vs = nn::VarStore::new(Device::Cpu);
        let heads = heads(&vs, &f, 0.2, 10);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names.len(), 16);
        assert!(names.contains(&"mask_head.1.0.weight".to_string()));
        assert!(names.contains(&"mask_predictor.conv5_mask.bias".to_string()));
        let feats = features();
        let shapes = image_shapes(&f);
        let props = [
            get(&f, "proposals.0").shallow_clone(),
            get(&f, "proposals.1").shallow_clone(),
        ];
        tch::no_grad(|| {
            let pooled = heads.box_roi_pool.forward(&feats, &props, &shapes).unwrap();
            assert_close(&pooled, get(&f, "box_features"), TOL, "box features");
            let head = heads.box_head.forward(&pooled).unwrap();
            assert_close(&head, get(&f, "box_head"), TOL, "box head");
            let (logits, deltas) = heads.box_predictor.forward(&head).unwrap();
            assert_close(&logits, get(&f, "class_logits"), TOL, "class logits");
            assert_close(&deltas, get(&f, "box_regression"), TOL, "box regression");
            let decoded = heads.box_coder.decode(&deltas, &props).unwrap();
            assert_close(&decoded, get(&f, "decoded"), BOX_TOL, "decoded");
            let dets = heads.forward(&feats, &props, &shapes).unwrap();
            assert_eq!(dets.len(), 2);
            for (i, d) in dets.iter().enumerate() {
                assert_eq!(d.boxes.size()[0], 10, "the top-10 cut applies");
                assert_detections(d, &f, &format!("out.{i}"));
                // Decoded boxes are clipped to the image.
                let (h, w) = shapes[i];
                assert!(d.boxes.max().double_value(&[]) <= w.max(h) as f64);
                assert!(d.boxes.min().double_value(&[]) >= 0.0);
            }
            // The mask head's features for the detections.
            let boxes: Vec<Tensor> = dets.iter().map(|d| d.boxes.shallow_clone()).collect();
            let m = heads.mask.as_ref().unwrap();
            let x = m.mask_roi_pool.forward(&feats, &boxes, &shapes).unwrap();
            assert_close(
                &m.mask_head.forward(&x).unwrap().narrow(0, 0, 8),
                get(&f, "mask_head"),
                TOL,
                "mask head",
            );
        });
        // Several labels are detected, and boxes touch the image borders.
        let labels = Vec::<i64>::try_from(get(&f, "out.0.labels")).unwrap();
        assert!(labels.contains(&2) && labels.contains(&3));
    }

    #[test]
    fn roi_heads_without_proposals_or_above_every_score() {
        let f = fixture("roi_heads");
        let feats = features();
        let shapes = image_shapes(&f);
        let props = [
            get(&f, "proposals.0").shallow_clone(),
            get(&f, "proposals.1").shallow_clone(),
        ];
        let vs = nn::VarStore::new(Device::Cpu);
        let heads10 = heads(&vs, &f, 0.2, 10);
        let none = [
            Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
            props[1].shallow_clone(),
        ];
        let dets = tch::no_grad(|| heads10.forward(&feats, &none, &shapes)).unwrap();
        for (i, d) in dets.iter().enumerate() {
            assert_detections(d, &f, &format!("none.{i}"));
        }
        assert_eq!(dets[0].boxes.size(), [0, 4]);
        // No image has proposals.
        let empty = [none[0].shallow_clone(), none[0].shallow_clone()];
        let dets = tch::no_grad(|| heads10.forward(&feats, &empty, &shapes)).unwrap();
        for d in &dets {
            assert_eq!(d.boxes.size(), [0, 4]);
            assert_eq!(d.labels.kind(), Kind::Int64);
            assert_eq!(d.masks.as_ref().unwrap().size(), [0, 1, 14, 14]);
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let high = heads(&vs, &f, 0.99, 10);
        let dets = tch::no_grad(|| high.forward(&feats, &props, &shapes)).unwrap();
        for (i, d) in dets.iter().enumerate() {
            assert_eq!(d.boxes.size(), [0, 4]);
            assert_eq!(d.scores.size(), [0]);
            assert_close(
                d.masks.as_ref().unwrap(),
                get(&f, &format!("high.{i}.masks")),
                0.0,
                "high",
            );
        }
    }

    #[test]
    fn roi_heads_with_1200_candidates_take_batched_nms_per_class() {
        let f = fixture("roi_heads");
        let vs = nn::VarStore::new(Device::Cpu);
        let heads = heads(&vs, &f, 0.0, 100);
        let feats: Vec<(String, Tensor)> = features()
            .into_iter()
            .map(|(k, v)| (k, v.narrow(0, 0, 1)))
            .collect();
        let xy = formula(&[400, 2], 0.3)
            .f_add_scalar(1.0)
            .unwrap()
            .f_mul_scalar(30.0)
            .unwrap();
        let wh = formula(&[400, 2], 1.1)
            .f_add_scalar(1.0)
            .unwrap()
            .f_mul_scalar(12.0)
            .unwrap()
            .f_add_scalar(2.0)
            .unwrap();
        let props = [Tensor::cat(&[xy.shallow_clone(), &xy + wh], 1)];
        let shapes = image_shapes(&f);
        let dets = tch::no_grad(|| heads.forward(&feats, &props, &shapes[..1])).unwrap();
        let d = &dets[0];
        assert_close(&d.boxes, get(&f, "many.boxes"), BOX_TOL, "many boxes");
        assert_close(&d.scores, get(&f, "many.scores"), TOL, "many scores");
        assert_same_indices(&d.labels, get(&f, "many.labels"), "many labels");
    }

    #[test]
    fn paste_masks_in_image_matches_torchvision_inside_and_across_the_borders() {
        let f = fixture("paste_masks");
        let masks = formula(&[8, 1, 14, 14], 0.5).sigmoid();
        let boxes = get(&f, "boxes");
        // Bilinear resizing by libtorch on both sides, then copies: bit-identical here.
        let out = paste_masks_in_image(&masks, boxes, (30, 41), 1).unwrap();
        assert_close(&out, get(&f, "out"), 1e-6, "padding 1");
        let out2 =
            paste_masks_in_image(&masks.narrow(0, 1, 2), &boxes.narrow(0, 1, 2), (30, 41), 2)
                .unwrap();
        assert_close(&out2, get(&f, "out.padding2"), 1e-6, "padding 2");
        let empty = paste_masks_in_image(
            &Tensor::zeros([0, 1, 14, 14], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
            (30, 41),
            1,
        )
        .unwrap();
        assert_close(&empty, get(&f, "empty"), 0.0, "empty");
        // Partly outside boxes do reach the image; wholly outside ones are refused, as
        // torchvision refuses them.
        assert!(out.select(0, 2).sum(Kind::Double).double_value(&[]) > 0.0);
        let outside = Tensor::from_slice(&[50f32, 5., 60., 10.]).reshape([1, 4]);
        assert!(paste_masks_in_image(&masks.narrow(0, 0, 1), &outside, (30, 41), 1).is_err());
    }

    #[test]
    fn maskrcnn_inference_selects_each_label_channel() {
        let logits = formula(&[3, 4, 2, 2], 0.1);
        let labels = [Tensor::from_slice(&[2i64]), Tensor::from_slice(&[0i64, 3])];
        let out = maskrcnn_inference(&logits, &labels).unwrap();
        assert_eq!(out[0].size(), [1, 1, 2, 2]);
        assert_eq!(out[1].size(), [2, 1, 2, 2]);
        let want = logits.get(2).get(3).sigmoid();
        assert_close(&out[1].get(1).get(0), &want, 0.0, "row 2, class 3");
        assert!(maskrcnn_inference(&logits, &labels[..1]).is_err());
    }
}
