//! torchvision's `AnchorGenerator` (`torchvision/models/detection/anchor_utils.py`): the
//! reference boxes of the RPN and RetinaNet, one set of cell anchors per feature level
//! repeated over the level's grid.
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

use super::image_list::ImageList;

/// `AnchorGenerator(sizes, aspect_ratios)`: per feature level, anchors of every size and
/// aspect ratio (`height / width`) centred on each cell of the level's grid.
#[derive(Debug)]
pub struct AnchorGenerator {
    /// The anchor sizes (square roots of the areas) of each level.
    pub sizes: Vec<Vec<f64>>,
    /// The aspect ratios of each level.
    pub aspect_ratios: Vec<Vec<f64>>,
    /// `[sizes * ratios, 4]` float32 anchors centred on 0, per level (`cell_anchors`).
    pub cell_anchors: Vec<Tensor>,
}

impl AnchorGenerator {
    /// Builds the cell anchors; `sizes` and `aspect_ratios` need one entry per level.
    pub fn new(sizes: Vec<Vec<f64>>, aspect_ratios: Vec<Vec<f64>>) -> Result<Self> {
        if sizes.len() != aspect_ratios.len() {
            return Err(PluginError::invalid_argument(format!(
                "AnchorGenerator: {} levels of sizes but {} of aspect ratios; give one of each per \
                 feature map",
                sizes.len(),
                aspect_ratios.len()
            )));
        }
        let cell_anchors = sizes
            .iter()
            .zip(&aspect_ratios)
            .map(|(s, a)| generate_anchors(s, a))
            .collect::<Result<Vec<_>>>()?;
        Ok(AnchorGenerator {
            sizes,
            aspect_ratios,
            cell_anchors,
        })
    }

    /// `num_anchors_per_location`: sizes x ratios per level.
    pub fn num_anchors_per_location(&self) -> Vec<i64> {
        self.sizes
            .iter()
            .zip(&self.aspect_ratios)
            .map(|(s, a)| (s.len() * a.len()) as i64)
            .collect()
    }

    /// `grid_anchors`: for each level of grid `(h, w)` and stride `(sh, sw)`, the cell
    /// anchors shifted to every cell, `[h * w * A, 4]` in row-major cell order. The shifts
    /// are int32, as upstream computes them.
    pub fn grid_anchors(
        &self,
        grid_sizes: &[(i64, i64)],
        strides: &[(i64, i64)],
    ) -> Result<Vec<Tensor>> {
        if grid_sizes.len() != self.cell_anchors.len() || strides.len() != grid_sizes.len() {
            return Err(PluginError::invalid_argument(format!(
                "AnchorGenerator: {} feature maps but anchors for {} levels; there must be one set \
                 of sizes and aspect ratios per feature map",
                grid_sizes.len(),
                self.cell_anchors.len()
            )));
        }
        let mut out = Vec::with_capacity(grid_sizes.len());
        for ((&(gh, gw), &(sh, sw)), base) in grid_sizes.iter().zip(strides).zip(&self.cell_anchors)
        {
            let device = base.device();
            let shifts_x = Tensor::f_arange(gw, (Kind::Int, device))?.f_mul_scalar(sw)?;
            let shifts_y = Tensor::f_arange(gh, (Kind::Int, device))?.f_mul_scalar(sh)?;
            let grid = Tensor::f_meshgrid_indexing(&[shifts_y, shifts_x], "ij")?;
            let (shift_y, shift_x) = (grid[0].f_reshape([-1])?, grid[1].f_reshape([-1])?);
            let shifts = Tensor::f_stack(&[&shift_x, &shift_y, &shift_x, &shift_y], 1)?;
            // [cells, 1, 4] + [1, A, 4] -> [cells * A, 4]
            let anchors = shifts
                .f_view([-1, 1, 4])?
                .f_add(&base.f_view([1, -1, 4])?)?;
            out.push(anchors.f_reshape([-1, 4])?);
        }
        Ok(out)
    }

    /// `forward(image_list, feature_maps)`: the anchors of every level concatenated, one
    /// tensor per image (all equal), in the feature maps' dtype and device. Each level's
    /// stride is the padded batch size floor-divided by its grid size.
    pub fn forward(&self, images: &ImageList, feature_maps: &[Tensor]) -> Result<Vec<Tensor>> {
        let size = images.tensors.size();
        if size.len() != 4 || feature_maps.iter().any(|f| f.dim() != 4) || feature_maps.is_empty() {
            return Err(PluginError::invalid_argument(format!(
                "AnchorGenerator: expected images [B, C, H, W] and feature maps [B, C, h, w], got {size:?} and {:?}",
                feature_maps.iter().map(|f| f.size()).collect::<Vec<_>>()
            )));
        }
        let (ih, iw) = (size[2], size[3]);
        let grid_sizes: Vec<(i64, i64)> = feature_maps
            .iter()
            .map(|f| (f.size()[2], f.size()[3]))
            .collect();
        if grid_sizes.iter().any(|&(h, w)| h == 0 || w == 0) {
            return Err(PluginError::invalid_argument(
                "AnchorGenerator: a feature map has an empty grid",
            ));
        }
        let strides: Vec<(i64, i64)> = grid_sizes.iter().map(|&(h, w)| (ih / h, iw / w)).collect();
        let (kind, device) = (feature_maps[0].kind(), feature_maps[0].device());
        let cells = self
            .cell_anchors
            .iter()
            .map(|c| c.f_to_kind(kind)?.f_to_device(device))
            .collect::<Result<Vec<_>, _>>()?;
        let generator = AnchorGenerator {
            sizes: self.sizes.clone(),
            aspect_ratios: self.aspect_ratios.clone(),
            cell_anchors: cells,
        };
        let all = Tensor::f_cat(&generator.grid_anchors(&grid_sizes, &strides)?, 0)?;
        Ok((0..images.image_sizes.len())
            .map(|_| all.shallow_clone())
            .collect())
    }
}

/// `generate_anchors(scales, aspect_ratios)`: `[ratios * scales, 4]` boxes
/// `(-w/2, -h/2, w/2, h/2)` with `h = scale * sqrt(ratio)`, `w = scale / sqrt(ratio)`,
/// computed in float32 and rounded half to even as `torch.round` does.
pub fn generate_anchors(scales: &[f64], aspect_ratios: &[f64]) -> Result<Tensor> {
    let scales = Tensor::from_slice(scales).f_to_kind(Kind::Float)?;
    let ratios = Tensor::from_slice(aspect_ratios).f_to_kind(Kind::Float)?;
    let h_ratios = ratios.f_sqrt()?;
    // `1 / h_ratios` is `reciprocal() * 1` in PyTorch.
    let w_ratios = h_ratios.f_reciprocal()?;
    let ws = w_ratios
        .f_unsqueeze(1)?
        .f_mul(&scales.f_unsqueeze(0)?)?
        .f_view([-1])?;
    let hs = h_ratios
        .f_unsqueeze(1)?
        .f_mul(&scales.f_unsqueeze(0)?)?
        .f_view([-1])?;
    let base = Tensor::f_stack(
        &[
            ws.f_neg()?,
            hs.f_neg()?,
            ws.shallow_clone(),
            hs.shallow_clone(),
        ],
        1,
    )?;
    Ok(base.f_div_scalar(2)?.f_round()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;
    use tch::Device;

    fn images(b: i64, h: i64, w: i64, sizes: Vec<(i64, i64)>) -> ImageList {
        ImageList {
            tensors: Tensor::zeros([b, 3, h, w], (Kind::Float, Device::Cpu)),
            image_sizes: sizes,
        }
    }

    // Anchors are rounded integers plus integer shifts: equality is exact.
    #[test]
    fn fpn_anchors_equal_torchvision() {
        let f = fixture("anchors");
        let sizes = [32.0, 64.0, 128.0, 256.0, 512.0]
            .iter()
            .map(|&s| vec![s])
            .collect();
        let ag = AnchorGenerator::new(sizes, vec![vec![0.5, 1.0, 2.0]; 5]).unwrap();
        assert_eq!(ag.num_anchors_per_location(), [3; 5]);
        for (i, c) in ag.cell_anchors.iter().enumerate() {
            assert_close(c, get(&f, &format!("fpn.cell.{i}")), 0.0, "cell anchors");
        }
        let il = images(2, 64, 32, vec![(64, 30), (60, 32)]);
        let mut feats: Vec<Tensor> = [4, 8, 16, 32]
            .iter()
            .map(|s| Tensor::zeros([2, 4, 64 / s, 32 / s], (Kind::Float, Device::Cpu)))
            .collect();
        feats.push(Tensor::zeros([2, 4, 1, 1], (Kind::Float, Device::Cpu)));
        let anchors = ag.forward(&il, &feats).unwrap();
        assert_eq!(anchors.len(), 2);
        for a in &anchors {
            assert_close(a, get(&f, "fpn.anchors"), 0.0, "fpn anchors");
        }
    }

    #[test]
    fn odd_ratios_several_sizes_and_a_stride_that_does_not_divide_the_image() {
        let f = fixture("anchors");
        let ag = AnchorGenerator::new(vec![vec![45.0, 90.0, 33.0]], vec![vec![0.3, 1.0, 1.7, 4.0]])
            .unwrap();
        assert_close(
            &ag.cell_anchors[0],
            get(&f, "odd.cell.0"),
            0.0,
            "cell anchors",
        );
        let feats = [Tensor::zeros([1, 4, 7, 5], (Kind::Float, Device::Cpu))];
        let anchors = ag
            .forward(&images(1, 50, 38, vec![(50, 38)]), &feats)
            .unwrap();
        assert_close(&anchors[0], get(&f, "odd.anchors"), 0.0, "anchors");
    }

    #[test]
    fn a_level_count_mismatch_is_refused() {
        let ag = AnchorGenerator::new(vec![vec![32.0]], vec![vec![1.0]]).unwrap();
        let feats = [
            Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu)),
            Tensor::zeros([1, 4, 4, 4], (Kind::Float, Device::Cpu)),
        ];
        assert!(ag
            .forward(&images(1, 32, 32, vec![(32, 32)]), &feats)
            .is_err());
        assert!(AnchorGenerator::new(vec![vec![32.0]], vec![]).is_err());
    }
}
