//! Deformable DETR's attention module, `MSDeformAttn`
//! (`terratorch/models/backbones/detr_ops/modules/ms_deform_attn.py`): the projections
//! around multi-scale deformable sampling ([`crate::detection::ms_deform_attn`], the PyTorch
//! path of TerraTorch's CUDA op), for two-coordinate reference points (the only kind
//! TerraTorch's single-stage Deformable DETR makes) and no padding mask.
//!
//! Keys under the module's path: `sampling_offsets`, `attention_weights`, `value_proj`,
//! `output_proj` (each `weight`, `bias`).
use crate::detection::ms_deform_attn::ms_deform_attn;
use tch::{nn, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// `MSDeformAttn(d_model, n_levels, n_heads, n_points)` (`ratio=1`).
#[derive(Debug)]
pub struct MSDeformAttn {
    sampling_offsets: nn::Linear,
    attention_weights: nn::Linear,
    value_proj: nn::Linear,
    output_proj: nn::Linear,
    d_model: i64,
    n_levels: i64,
    n_heads: i64,
    n_points: i64,
}

fn apply(l: &nn::Linear, x: &Tensor) -> Result<Tensor> {
    Ok(x.f_linear(&l.ws, l.bs.as_ref())?)
}

impl MSDeformAttn {
    /// The module under `p`; `d_model` must be divisible by `n_heads` (upstream's check).
    pub fn new(
        p: nn::Path,
        d_model: i64,
        n_levels: i64,
        n_heads: i64,
        n_points: i64,
    ) -> Result<Self> {
        if n_heads < 1 || d_model % n_heads != 0 || n_levels < 1 || n_points < 1 {
            return Err(PluginError::invalid_argument(format!(
                "MSDeformAttn: d_model must be divisible by n_heads, and levels and points positive; got d_model \
                 {d_model}, n_heads {n_heads}, n_levels {n_levels}, n_points {n_points}"
            )));
        }
        let lin = |name: &str, i, o| nn::linear(&p / name, i, o, Default::default());
        Ok(Self {
            sampling_offsets: lin(
                "sampling_offsets",
                d_model,
                n_heads * n_levels * n_points * 2,
            ),
            attention_weights: lin("attention_weights", d_model, n_heads * n_levels * n_points),
            value_proj: lin("value_proj", d_model, d_model),
            output_proj: lin("output_proj", d_model, d_model),
            d_model,
            n_levels,
            n_heads,
            n_points,
        })
    }

    /// `forward(query [N, Lq, C], reference_points [N, Lq, L, 2], input_flatten [N, S, C],
    /// spatial_shapes)` -> `[N, Lq, C]`.
    pub fn forward(
        &self,
        query: &Tensor,
        reference_points: &Tensor,
        input_flatten: &Tensor,
        spatial_shapes: &[(i64, i64)],
    ) -> Result<Tensor> {
        let (qs, is, rs) = (query.size(), input_flatten.size(), reference_points.size());
        let (m, l, p) = (self.n_heads, self.n_levels, self.n_points);
        if qs.len() != 3
            || is.len() != 3
            || qs[2] != self.d_model
            || is[2] != self.d_model
            || spatial_shapes.len() as i64 != l
            || rs != [qs[0], qs[1], l, 2]
        {
            return Err(PluginError::forward_failed(format!(
                "MSDeformAttn: expected query [N, Lq, {c}], input [N, S, {c}], reference points [N, Lq, {l}, 2] \
                 and {l} levels; got {qs:?}, {is:?}, {rs:?} and {spatial_shapes:?}",
                c = self.d_model
            )));
        }
        let (n, lq, s) = (qs[0], qs[1], is[1]);
        let value = apply(&self.value_proj, input_flatten)?.f_view([n, s, m, self.d_model / m])?;
        let offsets = apply(&self.sampling_offsets, query)?.f_view([n, lq, m, l, p, 2])?;
        let weights = apply(&self.attention_weights, query)?
            .f_view([n, lq, m, l * p])?
            .f_softmax(-1, None)?
            .f_view([n, lq, m, l, p])?;
        // The offsets are in pixels of each level: divided by (W, H) there.
        let normalizer: Vec<f32> = spatial_shapes
            .iter()
            .flat_map(|&(h, w)| [w as f32, h as f32])
            .collect();
        let normalizer = Tensor::f_from_slice(&normalizer)?
            .f_to_device(query.device())?
            .f_view([1, 1, 1, l, 1, 2])?;
        let locations = reference_points
            .f_view([n, lq, 1, l, 1, 2])?
            .f_add(&offsets.f_div(&normalizer)?)?;
        let out = ms_deform_attn(&value, spatial_shapes, &locations, &weights)?;
        apply(&self.output_proj, &out)
    }
}
