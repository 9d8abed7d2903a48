//! torchvision's detection operators and building blocks, written with `tch`: what
//! TerraTorch's object-detection frameworks (Faster R-CNN, Mask R-CNN, RetinaNet, FCOS)
//! run between a backbone and their detections.
//!
//! Each file mirrors one upstream piece and matches its CPU results:
//!
//! * [`boxes`]: `box_area`, `box_iou`, `clip_boxes_to_image`, `remove_small_boxes`
//!   (`torchvision/ops/boxes.py`);
//! * [`nms`]: `nms` and `batched_nms` (`torchvision/ops/boxes.py` and the CPU kernel
//!   `torchvision/csrc/ops/cpu/nms_kernel.cpp`);
//! * [`roi_align`]: `roi_align` (`torchvision/csrc/ops/cpu/roi_align_kernel.cpp`);
//! * [`poolers`]: `MultiScaleRoIAlign` and its `LevelMapper` (`torchvision/ops/poolers.py`);
//! * [`box_coder`]: `BoxCoder` (`torchvision/models/detection/_utils.py`);
//! * [`anchors`]: `AnchorGenerator` (`torchvision/models/detection/anchor_utils.py`), over
//!   an [`image_list::ImageList`];
//! * [`transform`]: `GeneralizedRCNNTransform`'s inference path
//!   (`torchvision/models/detection/transform.py`);
//! * [`rpn`]: `RPNHead` and `RegionProposalNetwork`'s inference path
//!   (`torchvision/models/detection/rpn.py`);
//! * [`roi_heads`]: `TwoMLPHead`, `FastRCNNPredictor`, `RoIHeads`' inference path (boxes
//!   and masks), `MaskRCNNHeads`, `MaskRCNNPredictor`, `maskrcnn_inference` and
//!   `paste_masks_in_image` (`torchvision/models/detection/roi_heads.py`,
//!   `faster_rcnn.py`, `mask_rcnn.py`);
//! * [`faster_rcnn`]: `GeneralizedRCNN`'s inference, composed as `FasterRCNN` and
//!   `MaskRCNN` compose it, over a caller's backbone
//!   (`torchvision/models/detection/generalized_rcnn.py`);
//! * [`retinanet`]: `RetinaNetHead` (with TerraTorch's GroupNorm) and `RetinaNet`'s
//!   inference (`torchvision/models/detection/retinanet.py`);
//! * [`fcos`]: `FCOSHead`, `BoxLinearCoder` decoding and `FCOS`'s inference
//!   (`torchvision/models/detection/fcos.py`);
//! * [`ms_deform_attn`]: multi-scale deformable attention's sampling (TerraTorch's
//!   `ms_deform_attn_core_pytorch`, for Deformable DETR);
//! * [`detr`]: TerraTorch's DETR and Deformable DETR (position encoding, transformers,
//!   box head, postprocess);
//! * [`object_detection_task`]: `ObjectDetectionTask.apply_nms_sample`, TerraTorch's
//!   task-level score threshold and class-agnostic NMS after the framework.
//!
//! The tests load `tests/fixtures/detection_ops/*.safetensors`, written by
//! `scripts/reference/detection_ops_fixtures.py` with torchvision.
pub mod anchors;
pub mod box_coder;
pub mod boxes;
pub mod detr;
pub mod faster_rcnn;
pub mod fcos;
pub mod image_list;
pub mod ms_deform_attn;
pub mod nms;
pub mod object_detection_task;
pub mod poolers;
pub mod retinanet;
pub mod roi_align;
pub mod roi_heads;
pub mod rpn;
pub mod transform;

#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use tch::{Kind, Tensor};

    /// The tensors of `tests/fixtures/detection_ops/<group>.safetensors`, by name.
    pub fn fixture(group: &str) -> HashMap<String, Tensor> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/detection_ops")
            .join(format!("{group}.safetensors"));
        Tensor::read_safetensors(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .collect()
    }

    /// One named tensor of a fixture.
    pub fn get<'a>(f: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
        f.get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
    }

    /// A float64 scalar stored as a one-element tensor (thresholds).
    pub fn scalar(f: &HashMap<String, Tensor>, name: &str) -> f64 {
        get(f, name).double_value(&[0])
    }

    /// The fixture script's `formula`: sin(0.37 * i + phase) over the flat index, float32,
    /// with the same libtorch ops so the values are identical.
    pub fn formula(shape: &[i64], phase: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        Tensor::arange(n, (Kind::Float, tch::Device::Cpu))
            .f_mul_scalar(0.37)
            .unwrap()
            .f_add_scalar(phase)
            .unwrap()
            .sin()
            .reshape(shape)
    }

    /// The fixture script's test images: `(formula(shape, phase) + 1) / 2`, in [0, 1].
    pub fn formula_image(shape: &[i64], phase: f64) -> Tensor {
        formula(shape, phase)
            .f_add_scalar(1.0)
            .unwrap()
            .f_div_scalar(2.0)
            .unwrap()
    }

    /// The fixture script's `formula_weights`: `formula(shape, 0.05 * len(key))` scaled by
    /// 1 / sqrt(fan-in) for weights of two or more dimensions, 0.5 otherwise.
    pub fn formula_weight(key: &str, shape: &[i64]) -> Tensor {
        let scale = if shape.len() > 1 {
            1.0 / (shape[1..].iter().product::<i64>() as f64).sqrt()
        } else {
            0.5
        };
        formula(shape, 0.05 * key.len() as f64)
            .f_mul_scalar(scale)
            .unwrap()
    }

    /// The fixture script's `WideTinyBackbone` (two 3x3 convolutions of 32 channels with
    /// ReLU, strides 4 and 2) with formula weights: feature maps "0" and "1".
    pub fn wide_tiny_backbone(x: &Tensor) -> terrahost_plugin_api::Result<Vec<(String, Tensor)>> {
        let conv =
            |x: &Tensor, c: &str, c_in: i64, stride: i64| -> terrahost_plugin_api::Result<Tensor> {
                let w = formula_weight(&format!("backbone.{c}.weight"), &[32, c_in, 3, 3]);
                let b = formula_weight(&format!("backbone.{c}.bias"), &[32]);
                Ok(
                    x.f_conv2d(&w, Some(&b), [stride, stride], [1, 1], [1, 1], 1)?
                        .f_relu()?,
                )
            };
        let a = conv(x, "c1", 3, 4)?;
        let b = conv(&a, "c2", 32, 2)?;
        Ok(vec![("0".into(), a), ("1".into(), b)])
    }

    /// Exact equality of integer tensors (indices), with a readable message.
    pub fn assert_same_indices(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.kind(), Kind::Int64, "{what}: kind");
        let g = Vec::<i64>::try_from(got.flatten(0, -1)).unwrap();
        let w = Vec::<i64>::try_from(want.to_kind(Kind::Int64).flatten(0, -1)).unwrap();
        assert_eq!(g, w, "{what}");
    }

    /// Same shape and dtype, and every element within `tol` of the reference (NaN where
    /// the reference is NaN).
    pub fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
        assert_eq!(got.size(), want.size(), "{what}: shape");
        assert_eq!(got.kind(), want.kind(), "{what}: dtype");
        if want.numel() == 0 {
            return;
        }
        let g = got.to_kind(Kind::Double);
        let w = want.to_kind(Kind::Double);
        let nan_g = g.isnan();
        let nan_w = w.isnan();
        assert!(
            nan_g.equal(&nan_w),
            "{what}: NaN pattern differs\n got {g}\nwant {w}"
        );
        let diff = (g.nan_to_num(0.0, None, None) - w.nan_to_num(0.0, None, None))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= tol, "{what}: max abs difference {diff} > {tol}");
    }
}
