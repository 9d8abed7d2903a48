//! torchvision's `ImageList` (`torchvision/models/detection/image_list.py`).
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

/// A batch of images padded to one size, with each image's size before padding.
#[derive(Debug)]
pub struct ImageList {
    /// `[B, C, H, W]`, zero-padded at the bottom and right.
    pub tensors: Tensor,
    /// `(height, width)` of each image inside `tensors` (after resizing, before padding).
    pub image_sizes: Vec<(i64, i64)>,
}

/// `original_image_sizes` of the detection models' `forward`: each image's last two
/// dimensions `(H, W)`; `model` names the caller in the error for an image of fewer than two.
pub fn original_image_sizes(images: &[Tensor], model: &str) -> Result<Vec<(i64, i64)>> {
    images
        .iter()
        .map(|img| {
            let s = img.size();
            if s.len() < 2 {
                return Err(PluginError::invalid_argument(format!(
                    "{model}: expecting the last two dimensions of each image to be H and W, got {s:?}"
                )));
            }
            Ok((s[s.len() - 2], s[s.len() - 1]))
        })
        .collect()
}
