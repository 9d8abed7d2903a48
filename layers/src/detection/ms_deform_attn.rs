//! Multi-scale deformable attention's sampling (Deformable DETR), as TerraTorch's
//! `ms_deform_attn_core_pytorch` computes it (`terratorch/models/backbones/detr_ops/functions/
//! ms_deform_attn_func.py`, the PyTorch path of its CUDA-only `MultiScaleDeformableAttention`
//! op): per level, bilinear `grid_sample` of every head's values at the sampling locations
//! (zeros outside, `align_corners=False`), then the attention-weighted sum over levels and
//! points. The projections around it (`MSDeformAttn`) belong to the model.
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

/// `ms_deform_attn_core_pytorch(value [N, S, M, D], spatial_shapes [(H, W); L],
/// sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P])` ->
/// `[N, Lq, M * D]`. `S` is the sum of the levels' `H * W` (row-major per level), the
/// locations are `(x, y)` in `[0, 1]` of each level's map.
pub fn ms_deform_attn(
    value: &Tensor,
    spatial_shapes: &[(i64, i64)],
    sampling_locations: &Tensor,
    attention_weights: &Tensor,
) -> Result<Tensor> {
    let vs = value.size();
    let ls = sampling_locations.size();
    let sizes: Vec<i64> = spatial_shapes.iter().map(|&(h, w)| h * w).collect();
    if vs.len() != 4
        || ls.len() != 6
        || ls[5] != 2
        || ls[0] != vs[0]
        || ls[2] != vs[2]
        || ls[3] != spatial_shapes.len() as i64
        || sizes.iter().sum::<i64>() != vs[1]
        || attention_weights.size() != ls[..5]
    {
        return Err(PluginError::invalid_argument(format!(
            "ms_deform_attn: expected value [N, S, M, D], sampling locations [N, Lq, M, L, P, 2] \
             and attention weights [N, Lq, M, L, P] with S the sum of H * W over the L levels \
             {spatial_shapes:?}; got {vs:?}, {ls:?} and {:?}",
            attention_weights.size()
        )));
    }
    let (n, m, d) = (vs[0], vs[2], vs[3]);
    let (lq, l, p) = (ls[1], ls[3], ls[4]);
    let values = value.f_split_with_sizes(&sizes, 1)?;
    let grids = sampling_locations.f_mul_scalar(2)?.f_sub_scalar(1)?;
    let mut sampled = Vec::with_capacity(spatial_shapes.len());
    for (lid, (&(h, w), v)) in spatial_shapes.iter().zip(&values).enumerate() {
        // [N, H*W, M, D] -> [N * M, D, H, W]
        let v = v
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?
            .f_reshape([n * m, d, h, w])?;
        // [N, Lq, M, P, 2] -> [N * M, Lq, P, 2]
        let grid = grids
            .f_select(3, lid as i64)?
            .f_transpose(1, 2)?
            .f_flatten(0, 1)?;
        // bilinear (0), zeros (0), align_corners=False: [N * M, D, Lq, P]
        sampled.push(v.f_grid_sampler(&grid, 0, 0, false)?);
    }
    let weights = attention_weights
        .f_transpose(1, 2)?
        .f_reshape([n * m, 1, lq, l * p])?;
    let out = Tensor::f_stack(&sampled, -2)?
        .f_flatten(-2, -1)?
        .f_mul(&weights)?
        .f_sum_dim_intlist(Some(&[-1i64][..]), false, None)?
        .f_view([n, m * d, lq])?;
    Ok(out.f_transpose(1, 2)?.f_contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::testutil::*;

    #[test]
    fn ms_deform_attn_matches_terratorchs_pytorch_path() {
        let f = fixture("ms_deform_attn");
        let s = get(&f, "shapes");
        let shapes: Vec<(i64, i64)> = (0..2)
            .map(|i| (s.int64_value(&[i, 0]), s.int64_value(&[i, 1])))
            .collect();
        let value = formula(&[2, 54, 2, 4], 0.4);
        let out =
            ms_deform_attn(&value, &shapes, get(&f, "locations"), get(&f, "weights")).unwrap();
        // grid_sample by libtorch on both sides, then the same products and sum.
        assert_close(&out, get(&f, "out"), 1e-6, "ms_deform_attn");
        assert_eq!(out.size(), [2, 5, 8]);
        // A wrong level layout is refused.
        assert!(ms_deform_attn(
            &value,
            &shapes[..1],
            get(&f, "locations"),
            get(&f, "weights")
        )
        .is_err());
    }
}
