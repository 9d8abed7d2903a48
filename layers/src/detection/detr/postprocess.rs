//! The `PostProcess` modules of DETR (`terratorch/models/detr/detr.py`) and Deformable DETR
//! (`terratorch/models/detr/deformable_detr.py`): from `pred_logits` and `pred_boxes`
//! (`cx, cy, w, h` relative to the image) to per-image `scores`, `labels` and `boxes`
//! (`x1, y1, x2, y2` in pixels of a `height x width` image). TerraTorch's wrappers pass every
//! image's own input size, so the boxes come out in input pixels.
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// One image's detections.
#[derive(Debug)]
pub struct ImageDetections {
    /// `[D, 4]` `x1, y1, x2, y2` in pixels.
    pub boxes: Tensor,
    /// `[D]`.
    pub scores: Tensor,
    /// `[D]` int64 class indices.
    pub labels: Tensor,
}

/// How many detections Deformable DETR's `PostProcess` keeps per image (a constant there).
pub const DEFORMABLE_TOP_K: i64 = 100;

fn check(logits: &Tensor, boxes: &Tensor) -> Result<(i64, i64, i64)> {
    let (ls, bs) = (logits.size(), boxes.size());
    if ls.len() != 3 || bs.len() != 3 || bs[2] != 4 || ls[..2] != bs[..2] {
        return Err(PluginError::forward_failed(format!(
            "DETR PostProcess: expected pred_logits [B, Q, K] and pred_boxes [B, Q, 4], got {ls:?} and {bs:?}"
        )));
    }
    Ok((ls[0], ls[1], ls[2]))
}

/// `box_convert(b, "cxcywh", "xyxy")` scaled by `(w, h, w, h)`: `[..., 4] -> [..., 4]`.
fn to_pixels(b: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let c = b.f_unbind(-1)?;
    let (cx, cy, w, h) = (&c[0], &c[1], &c[2], &c[3]);
    let (hw, hh) = (w.f_mul_scalar(0.5)?, h.f_mul_scalar(0.5)?);
    let xyxy = Tensor::f_stack(
        &[
            cx.f_sub(&hw)?,
            cy.f_sub(&hh)?,
            cx.f_add(&hw)?,
            cy.f_add(&hh)?,
        ],
        -1,
    )?;
    // Upstream scales by an int64 tensor of sizes, which promotes to the boxes' float kind.
    let scale = Tensor::f_from_slice(&[width, height, width, height])?.f_to_kind(b.kind())?;
    Ok(xyxy.f_mul(&scale.f_to_device(b.device())?)?)
}

/// DETR's `PostProcess`: softmax over the classes, the no-object class (the last) dropped,
/// each query's best class and its probability; every query is a detection, in query order.
pub fn detr_postprocess(
    pred_logits: &Tensor,
    pred_boxes: &Tensor,
    height: i64,
    width: i64,
) -> Result<Vec<ImageDetections>> {
    let (_, _, k) = check(pred_logits, pred_boxes)?;
    let prob = pred_logits.f_softmax(-1, None)?;
    let (scores, labels) = prob.f_slice(2, 0, k - 1, 1)?.f_max_dim(-1, false)?;
    let boxes = to_pixels(pred_boxes, height, width)?;
    (0..scores.size()[0])
        .map(|i| {
            Ok(ImageDetections {
                boxes: boxes.f_get(i)?,
                scores: scores.f_get(i)?,
                labels: labels.f_get(i)?.f_to_kind(Kind::Int64)?,
            })
        })
        .collect()
}

/// Deformable DETR's `PostProcess`: sigmoid scores, the top 100 over queries x classes
/// (decreasing), each with its query's box and the class as label. Upstream's `topk` fails
/// when there are fewer than 100 candidates; so does this, with the reason.
pub fn deformable_detr_postprocess(
    pred_logits: &Tensor,
    pred_boxes: &Tensor,
    height: i64,
    width: i64,
) -> Result<Vec<ImageDetections>> {
    let (b, q, k) = check(pred_logits, pred_boxes)?;
    if q * k < DEFORMABLE_TOP_K {
        return Err(PluginError::invalid_argument(format!(
            "Deformable DETR PostProcess keeps the top {DEFORMABLE_TOP_K} of num_queries x num_classes scores, but \
             there are only {q} x {k} = {} (upstream: torch.topk 'selected index k out of range'); use more \
             queries or classes",
            q * k
        )));
    }
    let prob = pred_logits.f_sigmoid()?.f_view([b, q * k])?;
    let (scores, index) = prob.f_topk(DEFORMABLE_TOP_K, 1, true, true)?;
    let query = index.f_floor_divide_scalar(k)?;
    let labels = index.f_remainder(k)?;
    let boxes = to_pixels(pred_boxes, height, width)?.f_gather(
        1,
        &query.f_unsqueeze(-1)?.f_repeat([1, 1, 4])?,
        false,
    )?;
    (0..b)
        .map(|i| {
            Ok(ImageDetections {
                boxes: boxes.f_get(i)?,
                scores: scores.f_get(i)?,
                labels: labels.f_get(i)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A centred 0.2 x 0.4 box on a 10 (high) x 20 (wide) image is x 8..12, y 3..7.
    fn boxes(q: i64) -> Tensor {
        Tensor::from_slice(&[0.5f32, 0.5, 0.2, 0.4])
            .view([1, 1, 4])
            .repeat([1, q, 1])
    }

    #[test]
    fn detr_postprocess_drops_the_no_object_class() {
        // Query 0: the no-object logit is the largest but never a label; query 1: class 0.
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 5.0, 2.0, 0.0, 0.0]).view([1, 2, 3]);
        let d = detr_postprocess(&logits, &boxes(2), 10, 20).unwrap();
        assert_eq!(Vec::<i64>::try_from(&d[0].labels).unwrap(), [1, 0]);
        let e = |a: f64, b: f64, c: f64| a.exp() / (a.exp() + b.exp() + c.exp());
        let want = [e(1.0, 0.0, 5.0), e(2.0, 0.0, 0.0)];
        for (g, w) in Vec::<f32>::try_from(&d[0].scores).unwrap().iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        let b = Vec::<f32>::try_from(d[0].boxes.flatten(0, 1)).unwrap();
        for (g, w) in b.iter().zip([8.0f32, 3.0, 12.0, 7.0, 8.0, 3.0, 12.0, 7.0]) {
            assert!((g - w).abs() < 1e-5, "{b:?}");
        }
    }

    #[test]
    fn deformable_postprocess_keeps_the_top_100_query_class_pairs() {
        // 2 queries x 50 classes, logits increasing with the flat index: the best pair is
        // query 1, class 49, then query 1, class 48, ...; the 51st is query 0, class 49.
        let logits = Tensor::arange(100, (Kind::Float, tch::Device::Cpu))
            .f_div_scalar(10.0)
            .unwrap()
            .view([1, 2, 50]);
        let d = deformable_detr_postprocess(&logits, &boxes(2), 10, 20).unwrap();
        let labels = Vec::<i64>::try_from(&d[0].labels).unwrap();
        assert_eq!(labels.len(), 100);
        assert_eq!((labels[0], labels[1], labels[50]), (49, 48, 49));
        let s = Vec::<f32>::try_from(&d[0].scores).unwrap();
        assert!((s[0] as f64 - 1.0 / (1.0 + (-9.9f64).exp())).abs() < 1e-6);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        // 2 x 49 = 98 candidates are too few for upstream's top 100.
        let short = logits.narrow(2, 0, 49);
        let e = deformable_detr_postprocess(&short, &boxes(2), 10, 20).unwrap_err();
        assert!(e.to_string().contains("2 x 49 = 98"), "{e}");
    }
}
