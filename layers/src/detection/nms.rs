//! Non-maximum suppression: torchvision's `nms` (its CPU kernel,
//! `torchvision/csrc/ops/cpu/nms_kernel.cpp`) and `batched_nms` (`torchvision/ops/boxes.py`).
//!
//! Order of boxes with equal scores: torchvision 0.28's CPU kernel visits the boxes in the
//! order of a *stable* descending sort of the scores, so among exactly tied scores the box
//! with the lower index comes first (checked against torchvision on inputs of 3 to 5000
//! boxes with many ties; a non-stable sort orders them differently from 20 boxes on).
//! [`nms`] sorts the same way. `batched_nms` on more than 1000 boxes ends, as upstream,
//! with libtorch's default (non-stable) descending sort of the kept scores; [`batched_nms`]
//! calls that same libtorch sort, so ties come out as they do in torchvision with the same
//! libtorch build.
use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

use super::boxes::check_boxes;

/// The arithmetic the kernel runs in the boxes' own precision (float32 or float64).
trait Coord:
    tch::kind::Element
    + Copy
    + PartialOrd
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Add<Output = Self>
    + std::ops::Div<Output = Self>
    + Into<f64>
{
}
impl Coord for f32 {}
impl Coord for f64 {}

/// C++'s `std::max` (`a < b ? b : a`) and `std::min` (`b < a ? b : a`): with a NaN they
/// return the first argument, which decides what NaN coordinates do.
fn cmax<T: Coord>(a: T, b: T) -> T {
    if a < b {
        b
    } else {
        a
    }
}
fn cmin<T: Coord>(a: T, b: T) -> T {
    if b < a {
        b
    } else {
        a
    }
}

/// The greedy loop of the kernel over boxes visited in `order`.
fn greedy<T: Coord>(dets: &Tensor, order: &[i64], iou_threshold: f64) -> Result<Vec<i64>> {
    let col = |i: i64| -> Result<Vec<T>> { Ok(Vec::<T>::try_from(&dets.f_select(1, i)?)?) };
    let (x1, y1, x2, y2) = (col(0)?, col(1)?, col(2)?, col(3)?);
    let areas: Vec<T> = (0..x1.len())
        .map(|i| (x2[i] - x1[i]) * (y2[i] - y1[i]))
        .collect();
    let mut suppressed = vec![false; x1.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        let i = i as usize;
        if suppressed[i] {
            continue;
        }
        keep.push(i as i64);
        for &j in &order[pos + 1..] {
            let j = j as usize;
            if suppressed[j] {
                continue;
            }
            let xx1 = cmax(x1[i], x1[j]);
            let yy1 = cmax(y1[i], y1[j]);
            let xx2 = cmin(x2[i], x2[j]);
            let yy2 = cmin(y2[i], y2[j]);
            let w = cmax(T::ZERO, xx2 - xx1);
            let h = cmax(T::ZERO, yy2 - yy1);
            let inter = w * h;
            let ovr = inter / (areas[i] + areas[j] - inter);
            // IoU strictly above the threshold suppresses; NaN (two empty boxes) never does.
            if Into::<f64>::into(ovr) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    Ok(keep)
}

/// torchvision's `nms`: the int64 indices of the boxes `[N, 4]` (x1, y1, x2, y2) kept by
/// greedy non-maximum suppression, in decreasing order of `scores [N]`. A box is dropped
/// when its IoU with a kept, higher-scoring box is strictly greater than `iou_threshold`.
/// Boxes and scores are float32 or float64 (of one kind), as torchvision's CPU kernel
/// requires; under CPU autocast ([`crate::precision`]) they are first cast to float32,
/// as torchvision's autocast kernel does. The computation runs on the CPU and the
/// indices come back on the boxes' device. Empty input gives an empty index tensor.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Tensor> {
    let (boxes, scores) = &(
        crate::precision::autocast_to_float(boxes)?,
        crate::precision::autocast_to_float(scores)?,
    );
    check_boxes(boxes, "nms")?;
    if boxes.dim() != 2 || scores.dim() != 1 || scores.size()[0] != boxes.size()[0] {
        return Err(PluginError::invalid_argument(format!(
            "nms: expected boxes [N, 4] and scores [N], got {:?} and {:?}",
            boxes.size(),
            scores.size()
        )));
    }
    if boxes.kind() != scores.kind() || !matches!(boxes.kind(), Kind::Float | Kind::Double) {
        return Err(PluginError::invalid_argument(format!(
            "nms: boxes and scores must both be float32 or float64, got {:?} and {:?}",
            boxes.kind(),
            scores.kind()
        )));
    }
    let device = boxes.device();
    if boxes.size()[0] == 0 {
        return Ok(Tensor::f_empty([0], (Kind::Int64, device))?);
    }
    let dets = boxes.f_to_device(Device::Cpu)?;
    let (_, order) = scores
        .f_to_device(Device::Cpu)?
        .f_sort_stable(true, 0, true)?;
    let order = Vec::<i64>::try_from(&order)?;
    let keep = match boxes.kind() {
        Kind::Float => greedy::<f32>(&dets, &order, iou_threshold)?,
        _ => greedy::<f64>(&dets, &order, iou_threshold)?,
    };
    Ok(Tensor::from_slice(&keep).f_to_device(device)?)
}

/// torchvision's `batched_nms`: NMS within each category of `idxs [N]` (boxes of
/// different categories never suppress each other); int64 indices in decreasing order of
/// score. Like torchvision on the CPU, up to 1000 boxes are suppressed in one pass with
/// each category's boxes shifted apart (the coordinate trick, in the boxes' precision), and
/// more boxes one category at a time. That switch and the kernel are the CPU's whatever
/// the device (torchvision on CUDA switches at 25 000 boxes and runs its CUDA kernel,
/// whose order of tied boxes it does not guarantee).
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &Tensor,
    iou_threshold: f64,
) -> Result<Tensor> {
    check_boxes(boxes, "batched_nms")?;
    if idxs.dim() != 1 || idxs.size()[0] != boxes.size()[0] {
        return Err(PluginError::invalid_argument(format!(
            "batched_nms: expected idxs [N] for boxes {:?}, got {:?}",
            boxes.size(),
            idxs.size()
        )));
    }
    if boxes.numel() > 4000 {
        batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
    } else {
        batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)
    }
}

/// Shifts the boxes of category `c` by `c * (max coordinate + 1)` so that categories
/// cannot overlap, then one NMS.
fn batched_nms_coordinate_trick(
    boxes: &Tensor,
    scores: &Tensor,
    idxs: &Tensor,
    iou: f64,
) -> Result<Tensor> {
    if boxes.numel() == 0 {
        return Ok(Tensor::f_empty([0], (Kind::Int64, boxes.device()))?);
    }
    let max_coordinate = boxes.f_max()?;
    let one = Tensor::from(1i64)
        .f_to_kind(boxes.kind())?
        .f_to_device(boxes.device())?;
    let offsets = idxs
        .f_to_kind(boxes.kind())?
        .f_mul(&max_coordinate.f_add(&one)?)?;
    let shifted = boxes.f_add(&offsets.f_unsqueeze(1)?)?;
    nms(&shifted, scores, iou)
}

/// One NMS per category (in increasing order of category), then the survivors sorted by
/// decreasing score with libtorch's default sort, as upstream.
fn batched_nms_vanilla(boxes: &Tensor, scores: &Tensor, idxs: &Tensor, iou: f64) -> Result<Tensor> {
    let mut keep_mask = Tensor::f_zeros([scores.size()[0]], (Kind::Bool, scores.device()))?;
    let (classes, _, _) = idxs.f_internal_unique2(true, false, false)?;
    for class_id in Vec::<i64>::try_from(classes.f_to_kind(Kind::Int64)?)? {
        let curr = idxs.f_eq(class_id)?.f_nonzero()?.f_select(1, 0)?;
        let keep = nms(
            &boxes.f_index_select(0, &curr)?,
            &scores.f_index_select(0, &curr)?,
            iou,
        )?;
        let kept = curr.f_index_select(0, &keep)?;
        let _ = keep_mask.f_index_fill_(0, &kept, 1)?;
    }
    let keep_indices = keep_mask.f_nonzero()?.f_select(1, 0)?;
    let (_, order) = scores.f_index_select(0, &keep_indices)?.f_sort(0, true)?;
    Ok(keep_indices.f_index_select(0, &order)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    #[test]
    fn nms_keeps_the_same_boxes_in_the_same_order_as_torchvision() {
        let f = fixture("boxes");
        for case in [
            "random",
            "random_low",
            "random_high",
            "ties",
            "identical",
            "zero_area",
            "at_threshold",
            "below_threshold",
            "empty",
            "float64",
        ] {
            let keep = nms(
                get(&f, &format!("nms.{case}.boxes")),
                get(&f, &format!("nms.{case}.scores")),
                scalar(&f, &format!("nms.{case}.iou")),
            )
            .unwrap();
            assert_same_indices(&keep, get(&f, &format!("nms.{case}.keep")), case);
        }
    }

    #[test]
    fn tied_scores_are_visited_in_index_order() {
        // Three identical boxes with one score: the first index survives.
        let b = Tensor::from_slice(&[0f32, 0., 2., 2.])
            .reshape([1, 4])
            .repeat([3, 1]);
        let s = Tensor::from_slice(&[0.5f32, 0.5, 0.5]);
        assert_eq!(
            Vec::<i64>::try_from(nms(&b, &s, 0.5).unwrap()).unwrap(),
            [0]
        );
    }

    #[test]
    fn batched_nms_matches_torchvision_on_both_of_its_paths() {
        let f = fixture("boxes");
        for case in ["trick", "empty"] {
            let keep = batched_nms(
                get(&f, &format!("batched_nms.{case}.boxes")),
                get(&f, &format!("batched_nms.{case}.scores")),
                get(&f, &format!("batched_nms.{case}.idxs")),
                scalar(&f, &format!("batched_nms.{case}.iou")),
            )
            .unwrap();
            assert_same_indices(&keep, get(&f, &format!("batched_nms.{case}.keep")), case);
        }
        // The > 1000 boxes path, inputs rebuilt from the fixture script's formula.
        let xy = formula(&[1100, 2], 0.1)
            .f_add_scalar(1.0)
            .unwrap()
            .f_mul_scalar(100.0)
            .unwrap();
        let wh = formula(&[1100, 2], 0.6)
            .f_add_scalar(1.0)
            .unwrap()
            .f_mul_scalar(20.0)
            .unwrap()
            .f_add_scalar(5.0)
            .unwrap();
        let boxes = Tensor::cat(&[xy.shallow_clone(), &xy + wh], 1);
        let scores = formula(&[1100], 1.9)
            .f_add_scalar(1.0)
            .unwrap()
            .f_mul_scalar(32.0)
            .unwrap()
            .floor()
            .f_div_scalar(64.0)
            .unwrap();
        let idxs = Tensor::arange(1100, (Kind::Int64, Device::Cpu))
            .f_mul_scalar(7)
            .unwrap()
            .remainder(5);
        let keep = batched_nms(
            &boxes,
            &scores,
            &idxs,
            scalar(&f, "batched_nms.vanilla.iou"),
        )
        .unwrap();
        assert_same_indices(&keep, get(&f, "batched_nms.vanilla.keep"), "vanilla");
    }

    #[test]
    fn nms_refuses_mismatched_or_integer_inputs() {
        let b = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        assert!(nms(&b, &Tensor::zeros([2], (Kind::Float, Device::Cpu)), 0.5).is_err());
        assert!(nms(&b, &Tensor::zeros([3], (Kind::Double, Device::Cpu)), 0.5).is_err());
        let bi = Tensor::zeros([3, 4], (Kind::Int64, Device::Cpu));
        assert!(nms(&bi, &Tensor::zeros([3], (Kind::Int64, Device::Cpu)), 0.5).is_err());
    }
}
