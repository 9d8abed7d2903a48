//! torchvision's `GeneralizedRCNNTransform` (`torchvision/models/detection/transform.py`),
//! inference path: normalise each image, resize it (bilinear) so that its short side is
//! `min_size` unless its long side would exceed `max_size`, batch the images zero-padded to
//! a multiple of `size_divisible`; and `postprocess`, which maps boxes back to the
//! original image sizes.
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

use super::boxes::check_boxes;
use super::image_list::ImageList;

/// `GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std, size_divisible,
/// fixed_size)` in eval mode.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneralizedRCNNTransform {
    /// The target short side; in eval mode upstream uses the last entry.
    pub min_size: Vec<i64>,
    /// The largest long side.
    pub max_size: i64,
    /// Per-channel mean subtracted first.
    pub image_mean: Vec<f64>,
    /// Per-channel standard deviation divided by.
    pub image_std: Vec<f64>,
    /// The batch's height and width are padded up to a multiple of this (32).
    pub size_divisible: i64,
    /// `(width, height)` every image is resized to instead, when given.
    pub fixed_size: Option<(i64, i64)>,
    /// TerraTorch's `TerratorchGeneralizedRCNNTransform` (`terratorch/models/utils.py`,
    /// 1.2.x), which TerraTorch's object-detection factory puts in every torchvision
    /// framework: `forward` only stacks the images, which must then have one shape (no
    /// normalisation, no resizing, no padding; the sizes above are unused). `postprocess`
    /// is torchvision's.
    pub stack_only: bool,
}

impl GeneralizedRCNNTransform {
    /// torchvision's constructor with `size_divisible` 32 and no `fixed_size`.
    pub fn new(min_size: i64, max_size: i64, image_mean: Vec<f64>, image_std: Vec<f64>) -> Self {
        GeneralizedRCNNTransform {
            min_size: vec![min_size],
            max_size,
            image_mean,
            image_std,
            size_divisible: 32,
            fixed_size: None,
            stack_only: false,
        }
    }

    /// TerraTorch's transform (see [`GeneralizedRCNNTransform::stack_only`]) with the
    /// arguments its factory keeps from torchvision's.
    pub fn terratorch(
        min_size: i64,
        max_size: i64,
        image_mean: Vec<f64>,
        image_std: Vec<f64>,
    ) -> Self {
        GeneralizedRCNNTransform {
            stack_only: true,
            ..Self::new(min_size, max_size, image_mean, image_std)
        }
    }

    /// `forward(images)`: images `[C, H, W]` (floating point, any sizes) to an
    /// [`ImageList`] of the normalised, resized and padded batch.
    pub fn forward(&self, images: &[Tensor]) -> Result<ImageList> {
        if images.is_empty() {
            return Err(PluginError::invalid_argument(
                "GeneralizedRCNNTransform: no images",
            ));
        }
        if self.stack_only {
            let shape = images[0].size();
            if shape.len() < 2 || images.iter().any(|i| i.size() != shape) {
                return Err(PluginError::invalid_argument(format!(
                    "TerratorchGeneralizedRCNNTransform: the images must all have one shape [C, H, \
                     W] to be stacked, got {:?}",
                    images.iter().map(|i| i.size()).collect::<Vec<_>>()
                )));
            }
            let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            return Ok(ImageList {
                tensors: Tensor::f_stack(images, 0)?,
                image_sizes: vec![(h, w); images.len()],
            });
        }
        let mut resized = Vec::with_capacity(images.len());
        for image in images {
            if image.dim() != 3 {
                return Err(PluginError::invalid_argument(format!(
                    "GeneralizedRCNNTransform: images are expected to be 3-D tensors [C, H, W], got {:?}",
                    image.size()
                )));
            }
            resized.push(self.resize(&self.normalize(image)?)?);
        }
        let image_sizes = resized.iter().map(|t| (t.size()[1], t.size()[2])).collect();
        Ok(ImageList {
            tensors: self.batch_images(&resized)?,
            image_sizes,
        })
    }

    /// `normalize`: `(image - mean) / std` per channel, in the image's dtype.
    pub fn normalize(&self, image: &Tensor) -> Result<Tensor> {
        if !matches!(
            image.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(PluginError::invalid_argument(format!(
                "GeneralizedRCNNTransform: expected floating-point images (in [0, 1]), got {:?}",
                image.kind()
            )));
        }
        let c = image.size()[0];
        if self.image_mean.len() as i64 != c || self.image_std.len() as i64 != c {
            return Err(PluginError::invalid_argument(format!(
                "GeneralizedRCNNTransform: image_mean has {} and image_std {} entries but the image \
                 has {c} channels",
                self.image_mean.len(),
                self.image_std.len()
            )));
        }
        let (kind, device) = (image.kind(), image.device());
        let per_channel = |v: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v)
                .f_to_kind(kind)?
                .f_to_device(device)?
                .f_view([-1, 1, 1])?)
        };
        Ok(image
            .f_sub(&per_channel(&self.image_mean)?)?
            .f_div(&per_channel(&self.image_std)?)?)
    }

    /// `resize` in eval mode (`_resize_image_and_masks`): the scale factor is
    /// `min(min_size / short side, max_size / long side)` in float64, each output side
    /// `floor(side * scale)`, and the interpolation bilinear with `align_corners=False`
    /// between those sizes (torchvision asks `interpolate` to recompute the scale factor).
    pub fn resize(&self, image: &Tensor) -> Result<Tensor> {
        let (h, w) = (image.size()[1], image.size()[2]);
        let size = match self.fixed_size {
            Some((fw, fh)) => [fh, fw],
            None => {
                let min_size = *self.min_size.last().ok_or_else(|| {
                    PluginError::invalid_argument("GeneralizedRCNNTransform: min_size is empty")
                })?;
                if h == 0 || w == 0 {
                    return Err(PluginError::invalid_argument(format!(
                        "GeneralizedRCNNTransform: an image is empty ({:?})",
                        image.size()
                    )));
                }
                let scale =
                    (min_size as f64 / h.min(w) as f64).min(self.max_size as f64 / h.max(w) as f64);
                // interpolate's int(size * scale_factor)
                [(h as f64 * scale) as i64, (w as f64 * scale) as i64]
            }
        };
        if size[0] <= 0 || size[1] <= 0 {
            return Err(PluginError::invalid_argument(format!(
                "GeneralizedRCNNTransform: resizing {:?} gives an empty image {size:?}",
                image.size()
            )));
        }
        Ok(image
            .f_unsqueeze(0)?
            .f_upsample_bilinear2d(size, false, None, None)?
            .f_squeeze_dim(0)?)
    }

    /// `batch_images`: zero-pads every image to the largest height and width, rounded up
    /// to a multiple of `size_divisible`, and stacks them `[B, C, H, W]`.
    pub fn batch_images(&self, images: &[Tensor]) -> Result<Tensor> {
        let mut max = images[0].size();
        for img in &images[1..] {
            for (m, s) in max.iter_mut().zip(img.size()) {
                *m = (*m).max(s);
            }
        }
        let stride = self.size_divisible as f64;
        max[1] = ((max[1] as f64 / stride).ceil() * stride) as i64;
        max[2] = ((max[2] as f64 / stride).ceil() * stride) as i64;
        let first = &images[0];
        let batched = Tensor::f_zeros(
            [images.len() as i64, max[0], max[1], max[2]],
            (first.kind(), first.device()),
        )?;
        for (i, img) in images.iter().enumerate() {
            let s = img.size();
            let mut dst = batched
                .f_select(0, i as i64)?
                .f_narrow(0, 0, s[0])?
                .f_narrow(1, 0, s[1])?
                .f_narrow(2, 0, s[2])?;
            dst.f_copy_(img)?;
        }
        Ok(batched)
    }

    /// `postprocess` for boxes: each image's boxes from its size in the batch
    /// (`image_shapes`) back to its original size.
    pub fn postprocess(
        &self,
        boxes: &[Tensor],
        image_shapes: &[(i64, i64)],
        original_image_sizes: &[(i64, i64)],
    ) -> Result<Vec<Tensor>> {
        if boxes.len() != image_shapes.len() || boxes.len() != original_image_sizes.len() {
            return Err(PluginError::invalid_argument(format!(
                "GeneralizedRCNNTransform.postprocess: {} box lists for {} image shapes and {} original sizes",
                boxes.len(),
                image_shapes.len(),
                original_image_sizes.len()
            )));
        }
        boxes
            .iter()
            .zip(image_shapes)
            .zip(original_image_sizes)
            .map(|((b, &s), &o)| resize_boxes(b, s, o))
            .collect()
    }
}

/// `resize_boxes(boxes [N, 4], original_size, new_size)`: x scaled by `new_w / orig_w`
/// and y by `new_h / orig_h`, the ratios computed in float32 as upstream computes them.
pub fn resize_boxes(
    boxes: &Tensor,
    original_size: (i64, i64),
    new_size: (i64, i64),
) -> Result<Tensor> {
    check_boxes(boxes, "resize_boxes")?;
    let device = boxes.device();
    let ratio = |new: i64, orig: i64| -> Result<Tensor> {
        let n = Tensor::from(new as f32).f_to_device(device)?;
        Ok(n.f_div(&Tensor::from(orig as f32).f_to_device(device)?)?)
    };
    let (rh, rw) = (
        ratio(new_size.0, original_size.0)?,
        ratio(new_size.1, original_size.1)?,
    );
    let col = |i: i64| boxes.f_select(1, i);
    let parts = [
        col(0)?.f_mul(&rw)?,
        col(1)?.f_mul(&rh)?,
        col(2)?.f_mul(&rw)?,
        col(3)?.f_mul(&rh)?,
    ];
    Ok(Tensor::f_stack(&parts, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    fn sizes(t: &Tensor) -> Vec<(i64, i64)> {
        (0..t.size()[0])
            .map(|i| (t.int64_value(&[i, 0]), t.int64_value(&[i, 1])))
            .collect()
    }

    // Normalisation and libtorch's upsample_bilinear2d between the same sizes: the same ops
    // as upstream, bit-identical on the fixtures; 1e-5 for other CPUs' vector paths.
    const TOL: f64 = 1e-5;

    #[test]
    fn transform_resizes_odd_sizes_down_and_batches_them_as_torchvision() {
        let f = fixture("transform");
        let mean = vec![0.485, 0.456, 0.406];
        let std = vec![0.229, 0.224, 0.225];
        let images = [
            formula_image(&[3, 21, 30], 0.2),
            formula_image(&[3, 27, 14], 0.7),
        ];
        let t = GeneralizedRCNNTransform::new(20, 30, mean, std);
        let il = t.forward(&images).unwrap();
        assert_eq!(il.image_sizes, sizes(get(&f, "down.image_sizes")));
        assert_close(&il.tensors, get(&f, "down.images"), TOL, "down");
        let boxes = [
            get(&f, "post.boxes.0").shallow_clone(),
            get(&f, "post.boxes.1").shallow_clone(),
        ];
        let post = t
            .postprocess(&boxes, &il.image_sizes, &[(21, 30), (27, 14)])
            .unwrap();
        assert_close(&post[0], get(&f, "post.out.0"), 0.0, "postprocess 0");
        assert_close(&post[1], get(&f, "post.out.1"), 0.0, "postprocess 1");
    }

    #[test]
    fn transform_with_a_fixed_size_takes_it_as_width_and_height() {
        let f = fixture("transform");
        let images = [
            formula_image(&[3, 21, 30], 0.2),
            formula_image(&[3, 27, 14], 0.7),
        ];
        let mut t = GeneralizedRCNNTransform::new(
            20,
            30,
            vec![0.485, 0.456, 0.406],
            vec![0.229, 0.224, 0.225],
        );
        t.fixed_size = Some((23, 17));
        let il = t.forward(&images).unwrap();
        assert_eq!(il.image_sizes, sizes(get(&f, "fixed.image_sizes")));
        assert_eq!(il.image_sizes, [(17, 23), (17, 23)]);
        assert_close(&il.tensors, get(&f, "fixed.images"), TOL, "fixed");
    }

    #[test]
    fn transform_upscales_with_another_size_divisible() {
        let f = fixture("transform");
        let mut t =
            GeneralizedRCNNTransform::new(24, 100, vec![0.5, 0.4, 0.3], vec![0.2, 0.3, 0.25]);
        t.size_divisible = 16;
        let il = t.forward(&[formula(&[3, 13, 19], 1.1)]).unwrap();
        assert_eq!(il.image_sizes, sizes(get(&f, "up.image_sizes")));
        assert_close(&il.tensors, get(&f, "up.images"), TOL, "up");
    }

    #[test]
    fn transform_refuses_integer_images_and_wrong_channel_counts() {
        let t = GeneralizedRCNNTransform::new(20, 30, vec![0.0; 3], vec![1.0; 3]);
        let int_image = Tensor::zeros([3, 8, 8], (Kind::Uint8, tch::Device::Cpu));
        assert!(t.forward(&[int_image]).is_err());
        assert!(t
            .forward(&[Tensor::zeros([4, 8, 8], (Kind::Float, tch::Device::Cpu))])
            .is_err());
        assert!(t.forward(&[]).is_err());
    }

    #[test]
    fn terratorchs_transform_only_stacks() {
        let t = GeneralizedRCNNTransform::terratorch(800, 1333, vec![0.0; 3], vec![1.0; 3]);
        let a = formula(&[3, 30, 31], 0.3);
        let b = formula(&[3, 30, 31], 1.2);
        let il = t.forward(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(il.image_sizes, [(30, 31), (30, 31)]);
        assert_close(&il.tensors, &Tensor::stack(&[a, b], 0), 0.0, "stacked");
        let c = formula(&[3, 30, 32], 0.3);
        assert!(t.forward(&[il.tensors.get(0), c]).is_err());
    }
}
