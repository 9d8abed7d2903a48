//! torchvision's `roi_align` as its CPU kernel computes it
//! (`torchvision/csrc/ops/cpu/roi_align_kernel.cpp` and `roi_align_common.h`), vectorised
//! with libtorch ops instead of a loop over output elements.
//!
//! The kernel averages, in every output bin, `grid_h x grid_w` bilinear samples. RoIs that
//! share a sampling grid are processed together: their sample coordinates are built as
//! tensors (one row per RoI and bin), the four neighbours of each sample are gathered from
//! a channels-last copy of the feature map, and the samples are summed in the kernel's
//! order (`iy` outer, `ix` inner, `((w1*v1 + w2*v2) + w3*v3) + w4*v4` each), with the same
//! float operations in the input's precision. The results are bit-identical to
//! torchvision's on the fixtures and on 1000 RoIs x 256 channels of an FPN-sized map, with
//! both sampling rules. Each grid step is accumulated in place in reused buffers, which
//! makes it as fast as torchvision's single-threaded kernel at `sampling_ratio` 2 (the
//! R-CNN heads' setting); the adaptive grid, with many small groups, is about 1.7x slower.
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// One axis (rows or columns) of the samples at one grid step: the kernel's
/// `pre_calc_for_bilinear_interpolate` for that axis, for every RoI of a group and every
/// output bin along the axis (`[G, P]` tensors).
struct Axis {
    /// `-1 <= coordinate <= size` (false for NaN): samples outside give 0.
    valid: Tensor,
    low: Tensor,
    high: Tensor,
    /// The weight of `high` (`ly`) and of `low` (`hy = 1 - ly`).
    l: Tensor,
    h: Tensor,
}

impl Axis {
    fn new(coord: &Tensor, size: i64) -> Result<Self> {
        let valid = coord.f_ge(-1.0)?.f_logical_and(&coord.f_le(size)?)?;
        // y <= 0 -> 0; NaN and out-of-range samples are masked by `valid` below.
        let zero = Tensor::f_zeros([], (coord.kind(), coord.device()))?;
        let c = zero.f_where_self(&coord.f_le(0)?, coord)?;
        let c = c.f_where_self(&valid, &zero)?;
        // (int)y truncates; y >= 0 here.
        let low = c.f_trunc()?.f_to_kind(Kind::Int64)?;
        let at_end = low.f_ge(size - 1)?;
        let last = Tensor::f_full([], size - 1, (Kind::Int64, coord.device()))?;
        let high = last.f_where_self(&at_end, &low.f_add_scalar(1)?)?;
        let low = last.f_where_self(&at_end, &low)?;
        let c = last.f_to_kind(coord.kind())?.f_where_self(&at_end, &c)?;
        let l = c.f_sub(&low.f_to_kind(coord.kind())?)?;
        let h = l.f_neg()?.f_add_scalar(1.0)?;
        Ok(Axis {
            valid,
            low,
            high,
            l,
            h,
        })
    }
}

/// `roi_align(input [N, C, H, W], rois [K, 5], output_size, spatial_scale, sampling_ratio,
/// aligned) -> [K, C, PH, PW]`, each RoI `(batch_index, x1, y1, x2, y2)` in input
/// coordinates (scaled by `spatial_scale`). `sampling_ratio <= 0` samples
/// `ceil(roi_size / output_size)` points per bin and axis (the adaptive grid); `aligned`
/// shifts the box by -0.5 pixel and keeps malformed boxes as they are instead of growing
/// them to 1 x 1.
///
/// Same kinds for input and RoIs, as upstream. Unlike torchvision, whose kernel reads
/// outside the feature map then, a batch index outside `[0, N)` is an error. An RoI's
/// cost grows with its adaptive grid as upstream; the detection models clip proposals to
/// the image first, which bounds it.
pub fn roi_align(
    input: &Tensor,
    rois: &Tensor,
    output_size: (i64, i64),
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<Tensor> {
    let kind = input.kind();
    let (wide_input, wide_rois) = (
        crate::precision::autocast_to_float(input)?,
        crate::precision::autocast_to_float(rois)?,
    );
    if wide_input.kind() != kind || wide_rois.kind() != rois.kind() {
        // torchvision's autocast kernel: float32 operands, the result in the input's kind.
        return Ok(roi_align(
            &wide_input,
            &wide_rois,
            output_size,
            spatial_scale,
            sampling_ratio,
            aligned,
        )?
        .f_to_kind(kind)?);
    }
    let (ph_n, pw_n) = output_size;
    if input.dim() != 4 || rois.dim() != 2 || rois.size()[1] != 5 {
        return Err(PluginError::invalid_argument(format!(
            "roi_align: expected input [N, C, H, W] and rois [K, 5], got {:?} and {:?}",
            input.size(),
            rois.size()
        )));
    }
    if input.kind() != rois.kind()
        || !matches!(input.kind(), Kind::Float | Kind::Double | Kind::Half)
    {
        return Err(PluginError::invalid_argument(format!(
            "roi_align: input and rois must have one floating kind (float32, float64 or \
             float16), got {:?} and {:?}",
            input.kind(),
            rois.kind()
        )));
    }
    if ph_n <= 0 || pw_n <= 0 {
        return Err(PluginError::invalid_argument(format!(
            "roi_align: output_size must be positive, got {output_size:?}"
        )));
    }
    let (n, c, h, w) = (
        input.size()[0],
        input.size()[1],
        input.size()[2],
        input.size()[3],
    );
    let k = rois.size()[0];
    let kind = input.kind();
    let device = input.device();
    let opts = (kind, device);
    if k == 0 || c == 0 {
        return Ok(Tensor::f_zeros([k, c, ph_n, pw_n], opts)?);
    }
    if h == 0 || w == 0 {
        return Err(PluginError::invalid_argument(format!(
            "roi_align: the feature map is empty ({:?})",
            input.size()
        )));
    }
    let rois = rois.f_to_device(device)?;
    // (int)rois[:, 0]: truncation.
    let batch = rois.f_select(1, 0)?.f_trunc()?;
    let out_of_range = batch
        .f_lt(0)?
        .f_logical_or(&batch.f_ge(n)?)?
        .f_logical_or(&batch.f_isnan()?)?;
    if out_of_range.f_any()?.f_int64_value(&[])? != 0 {
        return Err(PluginError::invalid_argument(format!(
            "roi_align: an RoI's batch index is outside [0, {n}) (the input has {n} images)"
        )));
    }
    let batch = batch.f_to_kind(Kind::Int64)?;

    // The kernel's per-RoI quantities, in the input's precision.
    let scale = Tensor::from(spatial_scale)
        .f_to_kind(kind)?
        .f_to_device(device)?;
    let offset = Tensor::from(if aligned { 0.5 } else { 0.0 })
        .f_to_kind(kind)?
        .f_to_device(device)?;
    let coord =
        |i: i64| -> Result<Tensor> { Ok(rois.f_select(1, i)?.f_mul(&scale)?.f_sub(&offset)?) };
    let (start_w, start_h, end_w, end_h) = (coord(1)?, coord(2)?, coord(3)?, coord(4)?);
    let mut roi_w = end_w.f_sub(&start_w)?;
    let mut roi_h = end_h.f_sub(&start_h)?;
    if !aligned {
        // Malformed RoIs are forced to 1 x 1.
        roi_w = roi_w.f_clamp_min(1.0)?;
        roi_h = roi_h.f_clamp_min(1.0)?;
    }
    let bin_h = roi_h.f_div_scalar(ph_n)?;
    let bin_w = roi_w.f_div_scalar(pw_n)?;
    let (grid_h, grid_w) = if sampling_ratio > 0 {
        (
            vec![sampling_ratio; k as usize],
            vec![sampling_ratio; k as usize],
        )
    } else {
        (adaptive_grid(&roi_h, ph_n)?, adaptive_grid(&roi_w, pw_n)?)
    };

    // RoIs grouped by sampling grid; an empty grid (0 samples) leaves zeros.
    let mut groups: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
    for (i, (&gh, &gw)) in grid_h.iter().zip(&grid_w).enumerate() {
        if gh > 0 && gw > 0 {
            groups.entry((gh, gw)).or_default().push(i as i64);
        }
    }
    // [N*H*W, C]: one row per pixel, so the four neighbours of all samples are row gathers.
    let feat = input
        .f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_view([n * h * w, c])?;
    let mut out = Tensor::f_zeros([k, ph_n, pw_n, c], opts)?;
    let ph = Tensor::f_arange(ph_n, (Kind::Int64, device))?.f_to_kind(kind)?;
    let pw = Tensor::f_arange(pw_n, (Kind::Int64, device))?.f_to_kind(kind)?;
    for ((gh, gw), members) in groups {
        let idx = Tensor::from_slice(&members).f_to_device(device)?;
        let pick =
            |t: &Tensor| -> Result<Tensor> { Ok(t.f_index_select(0, &idx)?.f_unsqueeze(1)?) };
        let (sh, sw, bh, bw) = (
            pick(&start_h)?,
            pick(&start_w)?,
            pick(&bin_h)?,
            pick(&bin_w)?,
        );
        // [G, 1, 1]: the first row of each RoI's image.
        let base = batch
            .f_index_select(0, &idx)?
            .f_mul_scalar(h * w)?
            .f_view([-1, 1, 1])?;
        // roi_start + p * bin_size: [G, P]
        let y0 = sh.f_add(&ph.f_unsqueeze(0)?.f_mul(&bh)?)?;
        let x0 = sw.f_add(&pw.f_unsqueeze(0)?.f_mul(&bw)?)?;
        // + (i + .5) * bin_size / grid, one tensor per grid step.
        let step = |start: &Tensor, bin: &Tensor, i: i64, g: i64, size: i64| -> Result<Axis> {
            let d = bin.f_mul_scalar(i as f64 + 0.5)?.f_div_scalar(g)?;
            Axis::new(&start.f_add(&d)?, size)
        };
        let ys = (0..gh)
            .map(|iy| step(&y0, &bh, iy, gh, h))
            .collect::<Result<Vec<_>>>()?;
        let xs = (0..gw)
            .map(|ix| step(&x0, &bw, ix, gw, w))
            .collect::<Result<Vec<_>>>()?;
        // The kernel's `output_val`, from 0, one sample added at a time.
        let rows = members.len() as i64 * ph_n * pw_n;
        let mut acc = Tensor::f_zeros([rows, c], opts)?;
        let mut val = Tensor::f_empty([rows, c], opts)?;
        let mut tmp = Tensor::f_empty([rows, c], opts)?;
        for y in &ys {
            for x in &xs {
                add_bilinear_sample(&mut acc, (&mut val, &mut tmp), &feat, &base, w, (y, x))?;
            }
        }
        // count = grid_h * grid_w (>= 1 here): the average.
        let avg = acc.f_div_scalar(gh * gw)?.f_view([-1, ph_n, pw_n, c])?;
        out = out.f_index_copy(0, &idx, &avg)?;
    }
    // [K, PH, PW, C] -> [K, C, PH, PW]
    Ok(out.f_permute([0, 3, 1, 2])?.f_contiguous()?)
}

/// `(int)ceil(roi_size / pooled_size)` per RoI. A value that does not fit an `int` (NaN,
/// infinite or huge sizes) converts to `INT_MIN` on x86, which leaves the bin empty; it is
/// given 0 samples here. Negative values mean no samples too.
fn adaptive_grid(roi_size: &Tensor, pooled: i64) -> Result<Vec<i64>> {
    let g = roi_size
        .f_div_scalar(pooled)?
        .f_ceil()?
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?;
    Ok(Vec::<f64>::try_from(&g)?
        .into_iter()
        .map(|v| {
            if v.is_finite() && v < i32::MAX as f64 && v > 0.0 {
                v as i64
            } else {
                0
            }
        })
        .collect())
}

/// Adds one sample per RoI and bin to `acc` (`[G*PH*PW, C]`): the four neighbours' values
/// weighted as the kernel weights them, `((w1*v1 + w2*v2) + w3*v3) + w4*v4`, computed in
/// the scratch buffers `val` and `tmp` (in place, so a step allocates no feature-sized
/// tensor). A sample outside the map has weights 0 and position 0, as upstream (so a
/// non-finite value there still propagates).
fn add_bilinear_sample(
    acc: &mut Tensor,
    bufs: (&mut Tensor, &mut Tensor),
    feat: &Tensor,
    base: &Tensor,
    width: i64,
    (y, x): (&Axis, &Axis),
) -> Result<()> {
    let (val, tmp) = bufs;
    // [G, PH, 1] and [G, 1, PW] -> [G, PH, PW]
    let valid = y
        .valid
        .f_unsqueeze(2)?
        .f_logical_and(&x.valid.f_unsqueeze(1)?)?;
    let zero_w = Tensor::f_zeros([], (y.l.kind(), y.l.device()))?;
    let zero_i = Tensor::f_zeros([], (Kind::Int64, y.low.device()))?;
    // w * input[rows] into `out`.
    let term =
        |out: &mut Tensor, wy: &Tensor, wx: &Tensor, iy: &Tensor, ix: &Tensor| -> Result<()> {
            let wgt = wy.f_unsqueeze(2)?.f_mul(&wx.f_unsqueeze(1)?)?;
            let wgt = wgt.f_where_self(&valid, &zero_w)?.f_view([-1, 1])?;
            let pos = iy
                .f_unsqueeze(2)?
                .f_mul_scalar(width)?
                .f_add(&ix.f_unsqueeze(1)?)?;
            let rows = pos
                .f_where_self(&valid, &zero_i)?
                .f_add(base)?
                .f_view([-1])?;
            let _ = feat.f_index_select_out(out, 0, &rows)?;
            let _ = out.f_mul_(&wgt)?;
            Ok(())
        };
    term(val, &y.h, &x.h, &y.low, &x.low)?;
    term(tmp, &y.h, &x.l, &y.low, &x.high)?;
    let _ = val.f_add_(tmp)?;
    term(tmp, &y.l, &x.h, &y.high, &x.low)?;
    let _ = val.f_add_(tmp)?;
    term(tmp, &y.l, &x.l, &y.high, &x.high)?;
    let _ = val.f_add_(tmp)?;
    let _ = acc.f_add_(val)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    // The kernel's float operations are reproduced in its order, and on the machine that
    // wrote the fixtures the results are bit-identical (checked with a zero tolerance). A
    // libtorch or torchvision built with fused multiply-adds may differ in the last bits;
    // 1e-5 absolute on values of magnitude <= 1 allows that and nothing more.
    const TOL: f64 = 1e-5;

    #[test]
    fn roi_align_matches_torchvision_for_every_sampling_alignment_and_scale() {
        let f = fixture("roi_align");
        let (x, rois) = (get(&f, "x"), get(&f, "rois"));
        let mut n = 0;
        for ratio in [0i64, 2, -1] {
            for aligned in [false, true] {
                for scale in [1.0f64, 0.5] {
                    for (ph, pw) in [(3i64, 4i64), (2, 2)] {
                        let key = format!("out.r{ratio}.a{}.s{scale:?}.{ph}x{pw}", aligned as u8);
                        let got = roi_align(x, rois, (ph, pw), scale, ratio, aligned).unwrap();
                        assert_close(&got, get(&f, &key), TOL, &key);
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 24);
    }

    #[test]
    fn roi_align_handles_no_rois_float64_and_float16() {
        let f = fixture("roi_align");
        let x = get(&f, "x");
        let empty = Tensor::zeros([0, 5], (Kind::Float, Device::Cpu));
        assert_close(
            &roi_align(x, &empty, (3, 4), 1.0, 2, false).unwrap(),
            get(&f, "out.empty"),
            0.0,
            "empty",
        );
        let got = roi_align(
            &x.to_kind(Kind::Double),
            &get(&f, "rois").to_kind(Kind::Double),
            (3, 4),
            0.5,
            0,
            true,
        )
        .unwrap();
        assert_close(&got, get(&f, "out.float64"), 1e-12, "float64");
        // float16 rounds after every operation on both sides; 1e-3 is one unit in the last
        // place at magnitude 1.
        let got = roi_align(
            &x.to_kind(Kind::Half),
            &get(&f, "rois").to_kind(Kind::Half),
            (3, 4),
            0.5,
            0,
            false,
        )
        .unwrap();
        assert_close(&got, get(&f, "out.float16"), 1e-3, "float16");
    }

    #[test]
    fn roi_align_refuses_a_batch_index_outside_the_input() {
        let x = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
        for b in [2.0f32, -1.0, f32::NAN] {
            let rois = Tensor::from_slice(&[b, 0., 0., 2., 2.]).reshape([1, 5]);
            assert!(
                roi_align(&x, &rois, (2, 2), 1.0, 2, false).is_err(),
                "batch index {b}"
            );
        }
    }
}
