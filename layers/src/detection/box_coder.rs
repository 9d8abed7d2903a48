//! torchvision's `BoxCoder` (`torchvision/models/detection/_utils.py`): box regression
//! deltas `(dx, dy, dw, dh)` relative to reference boxes, weighted per coordinate.
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

use super::boxes::check_boxes;

/// `BoxCoder(weights, bbox_xform_clip)`: decodes (and encodes) deltas against reference
/// boxes in `(x1, y1, x2, y2)` format. The RPN uses weights `(1, 1, 1, 1)`, the R-CNN box
/// head `(10, 10, 5, 5)`.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`: the deltas are divided by them when decoding.
    pub weights: [f64; 4],
    /// The largest `dw`, `dh` before `exp` (`log(1000 / 16)`), so boxes cannot explode.
    pub bbox_xform_clip: f64,
}

impl BoxCoder {
    /// `BoxCoder(weights)` with torchvision's default clip `log(1000 / 16)`.
    pub fn new(weights: [f64; 4]) -> Self {
        BoxCoder {
            weights,
            bbox_xform_clip: (1000.0f64 / 16.0).ln(),
        }
    }

    /// `decode_single(rel_codes [N, 4 * k], boxes [N, 4]) -> [N, 4 * k]`: the boxes
    /// predicted by `k` sets of deltas per reference box, in the deltas' dtype.
    pub fn decode_single(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        check_boxes(boxes, "BoxCoder.decode_single")?;
        if rel_codes.dim() != 2
            || rel_codes.size()[1] % 4 != 0
            || rel_codes.size()[0] != boxes.size()[0]
        {
            return Err(PluginError::invalid_argument(format!(
                "BoxCoder.decode_single: expected rel_codes [N, 4 * k] for boxes {:?}, got {:?}",
                boxes.size(),
                rel_codes.size()
            )));
        }
        let boxes = boxes.f_to_kind(rel_codes.kind())?;
        let col = |i: i64| boxes.f_select(1, i);
        let widths = col(2)?.f_sub(&col(0)?)?;
        let heights = col(3)?.f_sub(&col(1)?)?;
        let ctr_x = col(0)?.f_add(&widths.f_mul_scalar(0.5)?)?;
        let ctr_y = col(1)?.f_add(&heights.f_mul_scalar(0.5)?)?;
        let [wx, wy, ww, wh] = self.weights;
        let n = rel_codes.size()[1];
        // rel_codes[:, i::4] / weight
        let delta = |i: i64, wgt: f64| -> Result<Tensor> {
            Ok(rel_codes.f_slice(1, i, n, 4)?.f_div_scalar(wgt)?)
        };
        let dx = delta(0, wx)?;
        let dy = delta(1, wy)?;
        let dw = delta(2, ww)?.f_clamp_max(self.bbox_xform_clip)?;
        let dh = delta(3, wh)?.f_clamp_max(self.bbox_xform_clip)?;
        let (widths, heights) = (widths.f_unsqueeze(1)?, heights.f_unsqueeze(1)?);
        let pred_ctr_x = dx.f_mul(&widths)?.f_add(&ctr_x.f_unsqueeze(1)?)?;
        let pred_ctr_y = dy.f_mul(&heights)?.f_add(&ctr_y.f_unsqueeze(1)?)?;
        let pred_w = dw.f_exp()?.f_mul(&widths)?;
        let pred_h = dh.f_exp()?.f_mul(&heights)?;
        // Upstream multiplies by a 0-dim tensor 0.5 of the same dtype.
        let half = Tensor::from(0.5)
            .f_to_kind(pred_h.kind())?
            .f_to_device(pred_h.device())?;
        let c_to_c_h = half.f_mul(&pred_h)?;
        let c_to_c_w = half.f_mul(&pred_w)?;
        let parts = [
            pred_ctr_x.f_sub(&c_to_c_w)?,
            pred_ctr_y.f_sub(&c_to_c_h)?,
            pred_ctr_x.f_add(&c_to_c_w)?,
            pred_ctr_y.f_add(&c_to_c_h)?,
        ];
        // [N, k, 4] -> [N, 4 * k]
        Ok(Tensor::f_stack(&parts, 2)?.f_flatten(1, -1)?)
    }

    /// `decode(rel_codes, boxes) -> [sum K_i, k, 4]`: `boxes` holds one `[K_i, 4]` tensor per
    /// image, `rel_codes` the deltas of all their boxes (any shape with `sum K_i * 4 * k`
    /// elements).
    pub fn decode(&self, rel_codes: &Tensor, boxes: &[Tensor]) -> Result<Tensor> {
        let concat = Tensor::f_cat(boxes, 0)?;
        let box_sum: i64 = boxes.iter().map(|b| b.size()[0]).sum();
        let codes = if box_sum > 0 {
            rel_codes.f_reshape([box_sum, -1])?
        } else {
            rel_codes.shallow_clone()
        };
        let pred = self.decode_single(&codes, &concat)?;
        Ok(if box_sum > 0 {
            pred.f_reshape([box_sum, -1, 4])?
        } else {
            pred
        })
    }

    /// `encode_single(reference_boxes [N, 4], proposals [N, 4]) -> [N, 4]`: the weighted
    /// deltas that turn each proposal into its reference box (the training targets).
    pub fn encode_single(&self, reference_boxes: &Tensor, proposals: &Tensor) -> Result<Tensor> {
        check_boxes(reference_boxes, "BoxCoder.encode_single")?;
        check_boxes(proposals, "BoxCoder.encode_single")?;
        let (kind, device) = (reference_boxes.kind(), reference_boxes.device());
        // Upstream turns the weights into a tensor of the boxes' dtype first.
        let weight = |w: f64| -> Result<Tensor> {
            Ok(Tensor::from(w).f_to_kind(kind)?.f_to_device(device)?)
        };
        let [wx, wy, ww, wh] = self.weights;
        let (wx, wy, ww, wh) = (weight(wx)?, weight(wy)?, weight(ww)?, weight(wh)?);
        let geometry = |b: &Tensor| -> Result<[Tensor; 4]> {
            let col = |i: i64| -> Result<Tensor> { Ok(b.f_select(1, i)?.f_unsqueeze(1)?) };
            let w = col(2)?.f_sub(&col(0)?)?;
            let h = col(3)?.f_sub(&col(1)?)?;
            let cx = col(0)?.f_add(&w.f_mul_scalar(0.5)?)?;
            let cy = col(1)?.f_add(&h.f_mul_scalar(0.5)?)?;
            Ok([w, h, cx, cy])
        };
        let [ex_w, ex_h, ex_cx, ex_cy] = geometry(proposals)?;
        let [gt_w, gt_h, gt_cx, gt_cy] = geometry(reference_boxes)?;
        let dx = wx.f_mul(&gt_cx.f_sub(&ex_cx)?)?.f_div(&ex_w)?;
        let dy = wy.f_mul(&gt_cy.f_sub(&ex_cy)?)?.f_div(&ex_h)?;
        let dw = ww.f_mul(&gt_w.f_div(&ex_w)?.f_log()?)?;
        let dh = wh.f_mul(&gt_h.f_div(&ex_h)?.f_log()?)?;
        Ok(Tensor::f_cat(&[dx, dy, dw, dh], 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    // The same libtorch elementwise ops in upstream's order: bit-identical on the fixtures
    // (a zero-width reference box decodes to the same NaN/inf pattern); 1e-5 leaves room for
    // `exp`/`log` implementations that differ in the last bit between CPUs, on boxes of
    // magnitude ~100 (relative 1e-7).
    const TOL: f64 = 1e-5;

    #[test]
    fn box_coder_decodes_and_encodes_as_torchvision() {
        let f = fixture("box_coder");
        let (boxes, codes) = (get(&f, "boxes"), get(&f, "codes"));
        for name in ["rcnn", "rpn"] {
            let w = get(&f, &format!("{name}.weights"));
            let coder = BoxCoder::new([0, 1, 2, 3].map(|i| w.double_value(&[i])));
            let single = coder.decode_single(codes, boxes).unwrap();
            assert_close(
                &single,
                get(&f, &format!("{name}.decode_single")),
                TOL,
                name,
            );
            let per_image = [boxes.narrow(0, 0, 5), boxes.narrow(0, 5, 7)];
            let decoded = coder.decode(codes, &per_image).unwrap();
            assert_close(&decoded, get(&f, &format!("{name}.decode")), TOL, name);
            let enc = coder
                .encode_single(get(&f, &format!("{name}.reference")), boxes)
                .unwrap();
            assert_close(&enc, get(&f, &format!("{name}.encode_single")), TOL, name);
        }
    }

    #[test]
    fn large_width_deltas_are_clipped() {
        let coder = BoxCoder::new([1.0; 4]);
        let boxes = Tensor::from_slice(&[0f32, 0., 10., 10.]).reshape([1, 4]);
        let codes = Tensor::from_slice(&[0f32, 0., 50., 0.]).reshape([1, 4]);
        let out = coder.decode_single(&codes, &boxes).unwrap();
        // width 10 * 1000 / 16 = 625 around the centre 5
        assert!((out.double_value(&[0, 2]) - (5.0 + 312.5)).abs() < 1e-3);
    }
}
