//! What TerraTorch's `ObjectDetectionTask` does to a model's detections before it returns
//! them (`apply_nms_batch` / `apply_nms_sample` in `terratorch/tasks/object_detection_task.py`):
//! a second, task-level filter after the framework's own per-class NMS.

use tch::Tensor;
use terrahost_plugin_api::Result;

use super::nms::nms;
use super::roi_heads::Detections;

/// The task's defaults (`ObjectDetectionTask(iou_threshold=0.5, score_threshold=0.5)`).
pub const DEFAULT_IOU_THRESHOLD: f64 = 0.5;
/// See [`DEFAULT_IOU_THRESHOLD`].
pub const DEFAULT_SCORE_THRESHOLD: f64 = 0.5;

/// `apply_nms_sample`: keeps the detections whose score is strictly above
/// `score_threshold`, then runs [`nms`] over them at `iou_threshold` *without regard to the
/// class* (upstream calls `torchvision.ops.nms`, not `batched_nms`: a box of one class can
/// suppress an overlapping box of another). Masks follow their boxes. The result is in
/// NMS's order (decreasing score, ties by index).
pub fn apply_nms_sample(
    d: &Detections,
    iou_threshold: f64,
    score_threshold: f64,
) -> Result<Detections> {
    let keep_score = d.scores.f_gt(score_threshold)?;
    let pick = |t: &Tensor| t.f_index(&[Some(&keep_score)]);
    let (boxes, scores, labels) = (pick(&d.boxes)?, pick(&d.scores)?, pick(&d.labels)?);
    let masks = d.masks.as_ref().map(pick).transpose()?;
    let keep = nms(&boxes, &scores, iou_threshold)?;
    let take = |t: &Tensor| t.f_index_select(0, &keep);
    Ok(Detections {
        boxes: take(&boxes)?,
        scores: take(&scores)?,
        labels: take(&labels)?,
        masks: masks.as_ref().map(take).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    /// Against TerraTorch's own `apply_nms_sample` (run from its source by the fixture
    /// script): ties, scores exactly at the threshold, identical boxes of two classes,
    /// masks, and a threshold no score passes.
    #[test]
    fn apply_nms_sample_matches_terratorch() {
        let f = fixture("task_nms");
        let d = Detections {
            boxes: get(&f, "boxes").shallow_clone(),
            scores: get(&f, "scores").shallow_clone(),
            labels: get(&f, "labels").shallow_clone(),
            masks: Some(get(&f, "masks").shallow_clone()),
        };
        for i in 0..3 {
            let out = apply_nms_sample(
                &d,
                scalar(&f, &format!("iou.{i}")),
                scalar(&f, &format!("score_threshold.{i}")),
            )
            .unwrap();
            let want = |k: &str| get(&f, &format!("out.{i}.{k}"));
            assert_close(&out.boxes, want("boxes"), 0.0, "boxes");
            assert_close(&out.scores, want("scores"), 0.0, "scores");
            assert_same_indices(&out.labels, want("labels"), "labels");
            assert_close(out.masks.as_ref().unwrap(), want("masks"), 0.0, "masks");
        }
    }
}
