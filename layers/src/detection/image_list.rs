//! torchvision's `ImageList` (`torchvision/models/detection/image_list.py`).
use tch::Tensor;

/// A batch of images padded to one size, with each image's size before padding.
#[derive(Debug)]
pub struct ImageList {
    /// `[B, C, H, W]`, zero-padded at the bottom and right.
    pub tensors: Tensor,
    /// `(height, width)` of each image inside `tensors` (after resizing, before padding).
    pub image_sizes: Vec<(i64, i64)>,
}
