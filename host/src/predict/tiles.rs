//! Cutting a scene into chips exactly as TerraTorch 1.2.11 does
//! (`terratorch/tasks/tiled_inference.py`: `get_input_chips`, `get_blend_mask`, the delta
//! reduction of `prepare_tiled_inference_input` and the accumulation of
//! `generate_tiled_inference_output`).
//!
//! Coordinates are in the *frame*: the scene padded by `delta` on every side when
//! padding is on (TerraTorch pads the input tensor), else the scene itself. TerraTorch's
//! chip order is: the right-border column (one chip per grid row), the bottom row (one
//! per grid column), the bottom-right corner, then the grid row by row, where chips of
//! row 0 or column 0 are border chips. With `average_patches: false` the last chip in
//! that order wins at a pixel: each chip carries its `rank` in that order, so the chips
//! can be computed in any order (terrahost goes tile row by tile row) and still give
//! TerraTorch's result.
use super::data_config::{PadMode, Tiling};
use tch::{Device, Kind, Tensor};

/// One chip: where it is read and where its (cropped) prediction goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chip {
    /// Its index in TerraTorch's order.
    pub rank: usize,
    /// Top-left corner of the input window in the frame.
    pub row: usize,
    pub col: usize,
    /// The part of the chip's output that is kept: rows `crop_top..h_crop-crop_top`,
    /// columns `crop_left..w_crop-crop_left`.
    pub crop: usize,
    /// Whether it uses the inner blend mask (else the border one).
    pub inner: bool,
}

impl Chip {
    /// The frame rows its kept output covers.
    pub fn out_rows(&self, h_crop: usize) -> std::ops::Range<usize> {
        self.row + self.crop..self.row + h_crop - self.crop
    }
    /// The frame columns its kept output covers.
    pub fn out_cols(&self, w_crop: usize) -> std::ops::Range<usize> {
        self.col + self.crop..self.col + w_crop - self.crop
    }
}

/// The chips of one scene, with the masks and the frame's geometry.
#[derive(Debug)]
pub struct Plan {
    pub tiling: Tiling,
    /// delta after TerraTorch's reduction to the overlap.
    pub delta: usize,
    /// The offset of the scene in the frame (delta when padding, else 0).
    pub offset: usize,
    /// The frame's size (at least one crop: a scene smaller than the crop in one
    /// direction is extended by mirroring, where TerraTorch fails).
    pub frame_h: usize,
    pub frame_w: usize,
    /// The scene's size.
    pub h: usize,
    pub w: usize,
    /// Chips in TerraTorch's order (`chips[i].rank == i`).
    pub chips: Vec<Chip>,
    pub inner_mask: Tensor,
    pub border_mask: Tensor,
}

/// `range(0, n - crop - 1, stride)` (empty when `n < crop + 1`).
fn starts(n: usize, crop: usize, stride: usize) -> Vec<usize> {
    let end = n as i64 - crop as i64 - 1;
    (0..end.max(0) as usize).step_by(stride).collect()
}

/// TerraTorch's `get_blend_mask`: a cosine ramp over the overlap on every edge, outer
/// product of the two 1-D windows, plus 1e-6. Computed with libtorch's float32 ops in
/// the same order as TerraTorch's, so the values are the same.
pub fn blend_mask(
    h_crop: usize,
    h_stride: usize,
    w_crop: usize,
    w_stride: usize,
    delta: usize,
) -> Tensor {
    let window = |crop: usize, stride: usize| -> Tensor {
        let overlap = (crop / 2).min(crop - stride) as i64 - delta as i64;
        let n = (crop - 2 * delta) as i64;
        let pos = Tensor::arange(n, (Kind::Int64, Device::Cpu));
        let y = Tensor::ones([n], (Kind::Float, Device::Cpu));
        if overlap > 0 {
            let ov = overlap.min(n);
            // cos(pi * (pos + 1) / (ov + 1)) / 2 + 0.5, in float32
            let ramp = ((pos.narrow(0, 0, ov) + 1).to_kind(Kind::Float) * std::f64::consts::PI
                / (ov + 1) as f64)
                .cos()
                / 2.0
                + 0.5;
            y.narrow(0, 0, ov).copy_(&ramp.flip([0]));
            y.narrow(0, n - ov, ov).copy_(&ramp);
        }
        y
    };
    let y = window(h_crop, h_stride);
    let x = window(w_crop, w_stride);
    y.unsqueeze(1) * x.unsqueeze(0) + 1e-6
}

impl Plan {
    /// The plan for an `h x w` scene. `None` when the scene fits one chip: TerraTorch
    /// then runs the model once on the whole scene.
    pub fn new(tiling: &Tiling, h: usize, w: usize) -> Option<Self> {
        let t = tiling.clone();
        if h <= t.h_crop && w <= t.w_crop {
            return None;
        }
        let (hc, wc, hs, ws) = (t.h_crop, t.w_crop, t.h_stride, t.w_stride);
        // "delta is higher than overlap, reducing delta"
        let mut delta = t.delta;
        if (hc - hs) / 2 < delta || (wc - ws) / 2 < delta {
            delta = ((hc - hs) / 2).min((wc - ws) / 2);
            tracing::warn!(
                "tiled inference: delta is higher than overlap, reducing delta to {delta}"
            );
        }
        let padding = t.padding != PadMode::None;
        let offset = if padding { delta } else { 0 };
        let frame_h = (h + 2 * offset).max(hc);
        let frame_w = (w + 2 * offset).max(wc);
        let (inner_mask, border_mask) = if t.blend_overlaps {
            let inner = blend_mask(hc, hs, wc, ws, delta);
            let border = if padding {
                inner.shallow_clone()
            } else {
                blend_mask(hc, hs, wc, ws, 0)
            };
            (inner, border)
        } else {
            let inner = Tensor::ones(
                [(hc - 2 * delta) as i64, (wc - 2 * delta) as i64],
                (Kind::Float, Device::Cpu),
            );
            let border = if padding {
                inner.shallow_clone()
            } else {
                Tensor::ones([hc as i64, wc as i64], (Kind::Float, Device::Cpu))
            };
            (inner, border)
        };
        // With padding, border chips are cropped by delta as the inner ones are.
        let border_crop = if padding { delta } else { 0 };
        let rows = starts(frame_h, hc, hs);
        let cols = starts(frame_w, wc, ws);
        let (last_r, last_c) = (frame_h - hc, frame_w - wc);
        let mut chips = Vec::new();
        let mut push = |row: usize, col: usize, inner: bool| {
            let rank = chips.len();
            chips.push(Chip {
                rank,
                row,
                col,
                crop: if inner { delta } else { border_crop },
                inner,
            });
        };
        for &r in &rows {
            push(r, last_c, false);
        }
        for &c in &cols {
            push(last_r, c, false);
        }
        push(last_r, last_c, false);
        for &r in &rows {
            for &c in &cols {
                push(r, c, !(r == 0 || c == 0));
            }
        }
        Some(Self {
            tiling: t,
            delta,
            offset,
            frame_h,
            frame_w,
            h,
            w,
            chips,
            inner_mask,
            border_mask,
        })
    }

    /// The chips grouped by their input row, rows ascending (the order terrahost reads
    /// and computes them in).
    pub fn chip_rows(&self) -> Vec<(usize, Vec<usize>)> {
        let mut rows: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for c in &self.chips {
            rows.entry(c.row).or_default().push(c.rank);
        }
        rows.into_iter()
            .map(|(r, mut v)| {
                v.sort_by_key(|&i| self.chips[i].col);
                (r, v)
            })
            .collect()
    }

    /// The blend mask of a chip.
    pub fn mask(&self, chip: &Chip) -> &Tensor {
        if chip.inner {
            &self.inner_mask
        } else {
            &self.border_mask
        }
    }

    /// The scene row (or column) a frame row maps to: shifted by the offset, mirrored
    /// at the edges as torch's `reflect` (repeatedly, for frames larger than twice the
    /// scene) or clamped as `replicate`.
    pub fn source_index(&self, frame: usize, n: usize) -> usize {
        source_index(frame as i64 - self.offset as i64, n, self.tiling.padding)
    }
}

/// See [`Plan::source_index`]; `s` is already shifted.
pub fn source_index(s: i64, n: usize, mode: PadMode) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    match mode {
        PadMode::Replicate => s.clamp(0, n - 1) as usize,
        // Reflect, and the extension of a too-small scene without padding.
        _ => {
            let period = 2 * (n - 1);
            let m = s.rem_euclid(period);
            (if m < n { m } else { period - m }) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiling(hc: usize, hs: usize, delta: usize, padding: PadMode) -> Tiling {
        Tiling {
            h_crop: hc,
            w_crop: hc,
            h_stride: hs,
            w_stride: hs,
            delta,
            average_patches: true,
            blend_overlaps: false,
            batch_size: 4,
            padding,
        }
    }

    #[test]
    fn chip_order_is_right_column_bottom_row_corner_then_grid() {
        // 10 x 12 scene, crop 4, stride 3, no padding: grid rows range(0, 5, 3) = [0, 3],
        // columns range(0, 7, 3) = [0, 3, 6].
        let p = Plan::new(&tiling(4, 3, 0, PadMode::None), 10, 12).unwrap();
        let got: Vec<(usize, usize, bool)> =
            p.chips.iter().map(|c| (c.row, c.col, c.inner)).collect();
        let want = vec![
            (0, 8, false),
            (3, 8, false),
            (6, 0, false),
            (6, 3, false),
            (6, 6, false),
            (6, 8, false),
            (0, 0, false),
            (0, 3, false),
            (0, 6, false),
            (3, 0, false),
            (3, 3, true),
            (3, 6, true),
        ];
        assert_eq!(got, want);
        assert!(p.chips.iter().enumerate().all(|(i, c)| c.rank == i));
    }

    #[test]
    fn padding_adds_delta_around_and_crops_every_chip() {
        let p = Plan::new(&tiling(8, 4, 2, PadMode::Reflect), 10, 10).unwrap();
        assert_eq!((p.frame_h, p.frame_w, p.offset), (14, 14, 2));
        assert!(p.chips.iter().all(|c| c.crop == 2));
        assert_eq!(p.inner_mask.size(), vec![4, 4]);
        // reflect: frame row 0 is scene row 2, frame row 1 scene row 1
        assert_eq!(p.source_index(0, 10), 2);
        assert_eq!(p.source_index(1, 10), 1);
        assert_eq!(p.source_index(2, 10), 0);
        assert_eq!(p.source_index(12, 10), 8);
    }

    #[test]
    fn delta_is_reduced_to_the_overlap() {
        let p = Plan::new(&tiling(8, 6, 3, PadMode::Reflect), 20, 20).unwrap();
        assert_eq!(p.delta, 1);
    }

    #[test]
    fn a_scene_that_fits_one_chip_is_not_tiled() {
        assert!(Plan::new(&tiling(32, 24, 4, PadMode::Reflect), 32, 20).is_none());
        // smaller than the crop in one direction only: extended to one crop
        let p = Plan::new(&tiling(32, 24, 4, PadMode::None), 20, 50).unwrap();
        assert_eq!(p.frame_h, 32);
    }

    #[test]
    fn blend_mask_matches_terratorchs_formula() {
        // crop 8, stride 4, delta 0: overlap min(4, 4) = 4, ramp cos(pi*(k+1)/5)/2+0.5
        let m = blend_mask(8, 4, 8, 4, 0);
        let ramp: Vec<f64> = (0..4)
            .map(|k| (std::f64::consts::PI * (k as f64 + 1.0) / 5.0).cos() / 2.0 + 0.5)
            .collect();
        let window = [
            ramp[3], ramp[2], ramp[1], ramp[0], ramp[0], ramp[1], ramp[2], ramp[3],
        ];
        for i in 0..8 {
            for j in 0..8 {
                let want = window[i] * window[j] + 1e-6;
                let got = m.double_value(&[i as i64, j as i64]);
                assert!((got - want).abs() < 1e-6, "({i},{j}): {got} vs {want}");
            }
        }
    }
}
