//! Box utilities of `torchvision/ops/boxes.py` for boxes in `(x1, y1, x2, y2)` format:
//! `box_area`, `box_iou`, `clip_boxes_to_image` and `remove_small_boxes`.
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// torchvision's `_upcast`: half-precision boxes are computed in float32 and small integer
/// types in int32, so that areas cannot overflow.
fn upcast(t: &Tensor) -> Result<Tensor> {
    Ok(match t.kind() {
        Kind::Float | Kind::Double | Kind::Int | Kind::Int64 => t.shallow_clone(),
        Kind::Half | Kind::BFloat16 => t.f_to_kind(Kind::Float)?,
        _ => t.f_to_kind(Kind::Int)?,
    })
}

/// Checks that the last dimension holds the four coordinates.
pub(crate) fn check_boxes(boxes: &Tensor, what: &str) -> Result<()> {
    if boxes.dim() == 0 || boxes.size().last() != Some(&4) {
        return Err(PluginError::invalid_argument(format!(
            "{what}: boxes must have shape [..., 4] (x1, y1, x2, y2), got {:?}",
            boxes.size()
        )));
    }
    Ok(())
}

/// `box_area`: `(x2 - x1) * (y2 - y1)` of boxes `[..., 4]`, computed in float32 for
/// half-precision boxes.
pub fn box_area(boxes: &Tensor) -> Result<Tensor> {
    check_boxes(boxes, "box_area")?;
    let b = upcast(boxes)?;
    let w = b.f_select(-1, 2)?.f_sub(&b.f_select(-1, 0)?)?;
    let h = b.f_select(-1, 3)?.f_sub(&b.f_select(-1, 1)?)?;
    Ok(w.f_mul(&h)?)
}

/// `box_iou`: the `[N, M]` intersection over union of `boxes1 [N, 4]` and `boxes2 [M, 4]`.
/// Two zero-area boxes give 0 / 0 = NaN, as upstream.
pub fn box_iou(boxes1: &Tensor, boxes2: &Tensor) -> Result<Tensor> {
    check_boxes(boxes1, "box_iou")?;
    check_boxes(boxes2, "box_iou")?;
    let area1 = box_area(boxes1)?;
    let area2 = box_area(boxes2)?;
    // [N, 1, 2] against [M, 2] -> [N, M, 2]
    let b1 = boxes1.f_unsqueeze(-2)?;
    let lt = b1
        .f_narrow(-1, 0, 2)?
        .f_maximum(&boxes2.f_narrow(-1, 0, 2)?)?;
    let rb = b1
        .f_narrow(-1, 2, 2)?
        .f_minimum(&boxes2.f_narrow(-1, 2, 2)?)?;
    let wh = upcast(&rb.f_sub(&lt)?)?.f_clamp_min(0)?;
    let inter = wh.f_select(-1, 0)?.f_mul(&wh.f_select(-1, 1)?)?;
    let union = area1.f_unsqueeze(-1)?.f_add(&area2)?.f_sub(&inter)?;
    Ok(inter.f_div(&union)?)
}

/// `clip_boxes_to_image`: clamps x to `[0, width]` and y to `[0, height]`; `size` is
/// `(height, width)`. Boxes keep their shape `[..., 4]`.
pub fn clip_boxes_to_image(boxes: &Tensor, size: (i64, i64)) -> Result<Tensor> {
    check_boxes(boxes, "clip_boxes_to_image")?;
    let (height, width) = size;
    let dim = boxes.dim() as i64;
    // boxes[..., 0::2] and boxes[..., 1::2]
    let xs = boxes.f_slice(-1, 0, 4, 2)?.f_clamp(0, width)?;
    let ys = boxes.f_slice(-1, 1, 4, 2)?.f_clamp(0, height)?;
    // [..., 2, 2] (x, y interleaved) -> [..., 4]
    Ok(Tensor::f_stack(&[xs, ys], dim)?.f_reshape(boxes.size())?)
}

/// `remove_small_boxes`: the int64 indices of the boxes `[N, 4]` whose width and height
/// are both at least `min_size`.
pub fn remove_small_boxes(boxes: &Tensor, min_size: f64) -> Result<Tensor> {
    check_boxes(boxes, "remove_small_boxes")?;
    let ws = boxes.f_select(-1, 2)?.f_sub(&boxes.f_select(-1, 0)?)?;
    let hs = boxes.f_select(-1, 3)?.f_sub(&boxes.f_select(-1, 1)?)?;
    let keep = ws.f_ge(min_size)?.f_logical_and(&hs.f_ge(min_size)?)?;
    // torch.where(keep)[0]
    Ok(keep.f_nonzero()?.f_select(1, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    // Elementwise float32 arithmetic in the same order as upstream: bit-identical results
    // are expected, so the tolerance is zero.
    #[test]
    fn box_area_and_box_iou_match_torchvision_with_nan_for_two_empty_boxes() {
        let f = fixture("boxes");
        let b1 = get(&f, "box_iou.boxes1");
        let b2 = get(&f, "box_iou.boxes2");
        assert_close(
            &box_area(b1).unwrap(),
            get(&f, "box_area.out"),
            0.0,
            "box_area",
        );
        let iou = box_iou(b1, b2).unwrap();
        assert_close(&iou, get(&f, "box_iou.out"), 0.0, "box_iou");
        assert!(iou.double_value(&[5, 4]).is_nan());
    }

    #[test]
    fn clip_boxes_to_image_matches_torchvision_on_boxes_outside_the_image() {
        let f = fixture("boxes");
        let size = get(&f, "clip.size");
        let (h, w) = (size.int64_value(&[0]), size.int64_value(&[1]));
        let got = clip_boxes_to_image(get(&f, "clip.boxes"), (h, w)).unwrap();
        assert_close(&got, get(&f, "clip.out"), 0.0, "clip_boxes_to_image");
    }

    #[test]
    fn remove_small_boxes_matches_torchvision() {
        let f = fixture("boxes");
        let b = get(&f, "remove_small.boxes");
        assert_same_indices(
            &remove_small_boxes(b, 1.0).unwrap(),
            get(&f, "remove_small.keep_1"),
            "1.0",
        );
        assert_same_indices(
            &remove_small_boxes(b, 1e-3).unwrap(),
            get(&f, "remove_small.keep_1e-3"),
            "1e-3",
        );
        let empty = Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu));
        let keep = remove_small_boxes(&empty, 1.0).unwrap();
        assert_eq!((keep.size(), keep.kind()), (vec![0], Kind::Int64));
    }

    #[test]
    fn malformed_boxes_are_refused() {
        let bad = Tensor::zeros([3, 5], (Kind::Float, tch::Device::Cpu));
        assert!(box_area(&bad).is_err());
        assert!(box_iou(&bad, &bad).is_err());
    }
}
