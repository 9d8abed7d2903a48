//! torchvision's `MultiScaleRoIAlign` (`torchvision/ops/poolers.py`): RoIAlign over a
//! feature pyramid, each box pooled from the level its size maps to (`LevelMapper`, eq. 1
//! of the FPN paper).
use std::sync::OnceLock;

use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

use super::boxes::box_area;
use super::roi_align::roi_align;

/// torchvision's `LevelMapper`: box `(x1, y1, x2, y2)` of size `s = sqrt(area)` goes to
/// level `floor(canonical_level + log2(s / canonical_scale) + eps)`, clamped to
/// `[k_min, k_max]`, counted from `k_min`.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelMapper {
    /// The finest level (`-log2` of the finest feature map's scale).
    pub k_min: i64,
    /// The coarsest level.
    pub k_max: i64,
    /// `canonical_scale` (224 in torchvision).
    pub canonical_scale: i64,
    /// `canonical_level` (4 in torchvision).
    pub canonical_level: i64,
    /// `eps` (1e-6), added in the boxes' precision.
    pub eps: f64,
}

impl LevelMapper {
    /// `initLevelMapper(k_min, k_max, canonical_scale, canonical_level)` with eps 1e-6.
    pub fn new(k_min: i64, k_max: i64, canonical_scale: i64, canonical_level: i64) -> Self {
        LevelMapper {
            k_min,
            k_max,
            canonical_scale,
            canonical_level,
            eps: 1e-6,
        }
    }

    /// The int64 level index (from 0) of every box of every image, concatenated.
    pub fn map(&self, boxlists: &[Tensor]) -> Result<Tensor> {
        let areas = boxlists.iter().map(box_area).collect::<Result<Vec<_>>>()?;
        let s = Tensor::f_cat(&areas, 0)?.f_sqrt()?;
        let eps = Tensor::from(self.eps)
            .f_to_kind(s.kind())?
            .f_to_device(s.device())?;
        let target = s
            .f_div_scalar(self.canonical_scale)?
            .f_log2()?
            .f_add_scalar(self.canonical_level)?
            .f_add(&eps)?
            .f_floor()?
            .f_clamp(self.k_min, self.k_max)?;
        Ok(target.f_to_kind(Kind::Int64)?.f_sub_scalar(self.k_min)?)
    }
}

/// torchvision's `_infer_scale`: the power of two nearest (in log2, computed in float32)
/// to `feature height / image height`.
pub fn infer_scale(feature: &Tensor, original_size: (i64, i64)) -> Result<f64> {
    let size = feature.size();
    if size.len() < 2 {
        return Err(PluginError::invalid_argument(format!(
            "MultiScaleRoIAlign: a feature map must be [N, C, H, W], got {size:?}"
        )));
    }
    let approx = size[size.len() - 2] as f64 / original_size.0 as f64;
    let e = Tensor::from(approx as f32)
        .f_log2()?
        .f_round()?
        .f_double_value(&[])?;
    Ok(2f64.powf(e))
}

/// torchvision's `MultiScaleRoIAlign` (inference): pools `output_size` features for every
/// box from the feature maps named in `featmap_names`. As upstream, the scales and the level
/// mapper are inferred from the first call's feature and image sizes and kept.
#[derive(Debug)]
pub struct MultiScaleRoIAlign {
    /// The feature maps to pool from (other entries of the input are ignored).
    pub featmap_names: Vec<String>,
    /// `(height, width)` of each pooled output.
    pub output_size: (i64, i64),
    /// RoIAlign's `sampling_ratio` (`<= 0`: adaptive).
    pub sampling_ratio: i64,
    /// The level mapper's `canonical_scale` (224).
    pub canonical_scale: i64,
    /// The level mapper's `canonical_level` (4).
    pub canonical_level: i64,
    setup: OnceLock<(Vec<f64>, LevelMapper)>,
}

impl MultiScaleRoIAlign {
    /// `MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio)` with torchvision's
    /// canonical scale 224 and level 4.
    pub fn new(featmap_names: &[&str], output_size: (i64, i64), sampling_ratio: i64) -> Self {
        MultiScaleRoIAlign {
            featmap_names: featmap_names.iter().map(|s| s.to_string()).collect(),
            output_size,
            sampling_ratio,
            canonical_scale: 224,
            canonical_level: 4,
            setup: OnceLock::new(),
        }
    }

    /// The same with another `canonical_scale` and `canonical_level`.
    pub fn with_canonical(mut self, canonical_scale: i64, canonical_level: i64) -> Self {
        self.canonical_scale = canonical_scale;
        self.canonical_level = canonical_level;
        self
    }

    /// The scales and level mapper (`_setup_scales`) once they are known.
    pub fn scales(&self) -> Option<&(Vec<f64>, LevelMapper)> {
        self.setup.get()
    }

    /// `forward(x, boxes, image_shapes) -> [K, C, PH, PW]`: `x` holds the named feature
    /// maps in the pyramid's order (finest first), `boxes` one `[K_i, 4]` tensor per image
    /// in the transformed images' coordinates, `image_shapes` each image's `(height, width)`
    /// after the transform. The result's rows follow the boxes, image after image.
    pub fn forward(
        &self,
        x: &[(String, Tensor)],
        boxes: &[Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<Tensor> {
        // Upstream keeps the input's order, not featmap_names's.
        let feats: Vec<&Tensor> = x
            .iter()
            .filter(|(k, _)| self.featmap_names.iter().any(|n| n == k))
            .map(|(_, t)| t)
            .collect();
        if feats.is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "MultiScaleRoIAlign: none of the feature maps {:?} is in the input (it has {:?})",
                self.featmap_names,
                x.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
            )));
        }
        let (scales, mapper) = match self.setup.get() {
            Some(s) => s,
            None => {
                let s = self.setup_scales(&feats, image_shapes)?;
                self.setup.get_or_init(|| s)
            }
        };
        let rois = convert_to_roi_format(boxes)?;
        let (ph, pw) = self.output_size;
        if feats.len() == 1 {
            return roi_align(
                feats[0],
                &rois,
                self.output_size,
                scales[0],
                self.sampling_ratio,
                false,
            );
        }
        let levels = mapper.map(boxes)?;
        let first = feats[0];
        let mut result = Tensor::f_zeros(
            [rois.size()[0], first.size()[1], ph, pw],
            (first.kind(), first.device()),
        )?;
        for (level, (feat, &scale)) in feats.iter().zip(scales).enumerate() {
            let idx = levels.f_eq(level as i64)?.f_nonzero()?.f_select(1, 0)?;
            let pooled = roi_align(
                feat,
                &rois.f_index_select(0, &idx)?,
                self.output_size,
                scale,
                self.sampling_ratio,
                false,
            )?;
            result = result.f_index_copy(0, &idx, &pooled.f_to_kind(result.kind())?)?;
        }
        Ok(result)
    }

    /// `_setup_scales`: each level's scale from the largest image height, and the level
    /// range from the first and last scales.
    fn setup_scales(
        &self,
        feats: &[&Tensor],
        image_shapes: &[(i64, i64)],
    ) -> Result<(Vec<f64>, LevelMapper)> {
        if image_shapes.is_empty() {
            return Err(PluginError::invalid_argument(
                "MultiScaleRoIAlign: images list should not be empty",
            ));
        }
        let max_h = image_shapes.iter().map(|s| s.0).max().unwrap_or(0);
        let max_w = image_shapes.iter().map(|s| s.1).max().unwrap_or(0);
        let scales = feats
            .iter()
            .map(|f| infer_scale(f, (max_h, max_w)))
            .collect::<Result<Vec<_>>>()?;
        // -log2(scale) in float32, truncated by int().
        let level = |s: f64| -> Result<i64> {
            Ok(Tensor::from(s as f32)
                .f_log2()?
                .f_neg()?
                .f_double_value(&[])?
                .trunc() as i64)
        };
        let (first, last) = (scales[0], scales[scales.len() - 1]);
        let mapper = LevelMapper::new(
            level(first)?,
            level(last)?,
            self.canonical_scale,
            self.canonical_level,
        );
        Ok((scales, mapper))
    }
}

/// `_convert_to_roi_format`: the boxes of all images as `[K, 5]` rows `(image index, x1,
/// y1, x2, y2)`.
pub fn convert_to_roi_format(boxes: &[Tensor]) -> Result<Tensor> {
    if boxes.is_empty() {
        return Err(PluginError::invalid_argument(
            "MultiScaleRoIAlign: no box lists (one per image)",
        ));
    }
    let concat = Tensor::f_cat(boxes, 0)?;
    let ids = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| Tensor::f_full([b.size()[0], 1], i as f64, (concat.kind(), concat.device())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::f_cat(&[Tensor::f_cat(&ids, 0)?, concat], 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    /// The named feature maps, the boxes per image and the image shapes.
    type Inputs = (Vec<(String, Tensor)>, Vec<Tensor>, Vec<(i64, i64)>);

    fn inputs() -> Inputs {
        let f = fixture("multiscale_roi_align");
        let shapes: [[i64; 4]; 4] = [[2, 2, 56, 64], [2, 2, 28, 32], [2, 2, 14, 16], [2, 2, 7, 8]];
        let mut x: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), formula(s, 0.1 * i as f64)))
            .collect();
        x.push(("pool".into(), formula(&[2, 2, 4, 4], 0.9)));
        let boxes = vec![
            get(&f, "boxes.0").shallow_clone(),
            get(&f, "boxes.1").shallow_clone(),
        ];
        let s = get(&f, "image_shapes");
        let shapes = (0..2)
            .map(|i| (s.int64_value(&[i, 0]), s.int64_value(&[i, 1])))
            .collect();
        (x, boxes, shapes)
    }

    // RoIAlign is bit-identical to torchvision here (see roi_align's tests); 1e-5 allows a
    // libtorch built with fused multiply-adds.
    const TOL: f64 = 1e-5;

    #[test]
    fn multi_scale_roi_align_matches_torchvision_across_levels() {
        let f = fixture("multiscale_roi_align");
        let (x, boxes, shapes) = inputs();
        let pool = MultiScaleRoIAlign::new(&["0", "1", "2", "3"], (7, 7), 2);
        assert_close(
            &pool.forward(&x, &boxes, &shapes).unwrap(),
            get(&f, "out.default"),
            TOL,
            "default",
        );
        let (scales, mapper) = pool.scales().unwrap();
        assert_eq!(scales, &[0.25, 0.125, 0.0625, 0.03125]);
        assert_eq!((mapper.k_min, mapper.k_max), (2, 5));
        // The boxes reach every level.
        let levels = Vec::<i64>::try_from(mapper.map(&boxes).unwrap()).unwrap();
        for l in 0..4 {
            assert!(levels.contains(&l), "no box on level {l}: {levels:?}");
        }
        let empty = [
            Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu)),
        ];
        assert_close(
            &pool.forward(&x, &empty, &shapes).unwrap(),
            get(&f, "out.empty"),
            0.0,
            "empty",
        );
    }

    #[test]
    fn multi_scale_roi_align_with_one_level_or_another_canonical_scale() {
        let f = fixture("multiscale_roi_align");
        let (x, boxes, shapes) = inputs();
        let one = MultiScaleRoIAlign::new(&["1"], (3, 5), 0);
        assert_close(
            &one.forward(&x, &boxes, &shapes).unwrap(),
            get(&f, "out.one_level"),
            TOL,
            "one level",
        );
        let c64 = MultiScaleRoIAlign::new(&["0", "1", "2", "3"], (4, 4), -1).with_canonical(64, 3);
        assert_close(
            &c64.forward(&x, &boxes, &shapes).unwrap(),
            get(&f, "out.canonical64"),
            TOL,
            "canonical 64",
        );
    }

    #[test]
    fn multi_scale_roi_align_needs_its_feature_maps_and_images() {
        let (x, boxes, shapes) = inputs();
        assert!(MultiScaleRoIAlign::new(&["p9"], (7, 7), 2)
            .forward(&x, &boxes, &shapes)
            .is_err());
        assert!(MultiScaleRoIAlign::new(&["0"], (7, 7), 2)
            .forward(&x, &boxes, &[])
            .is_err());
    }
}
