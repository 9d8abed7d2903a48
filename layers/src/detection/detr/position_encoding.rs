//! DETR's sinusoidal position encoding, `PositionEmbeddingSine`
//! (`terratorch/models/detr/position_encoding.py`), for maps without padding: TerraTorch's
//! DETR wrappers always pass an all-valid mask, so the running counts along each axis are
//! `1..=H` and `1..=W`.
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// `PositionEmbeddingSine(num_pos_feats, temperature, normalize, scale)`.
#[derive(Clone, Debug)]
pub struct PositionEmbeddingSine {
    /// Channels per axis; the encoding has twice as many (y first, then x).
    pub num_pos_feats: i64,
    /// The base of the frequencies (upstream default 10000).
    pub temperature: f64,
    /// Whether the coordinates are divided by the map's extent and multiplied by `scale`.
    pub normalize: bool,
    /// The factor of the normalised coordinates (upstream default 2 pi).
    pub scale: f64,
}

impl PositionEmbeddingSine {
    /// As TerraTorch's DETR wrappers build it: `PositionEmbeddingSine(d_model // 2,
    /// normalize=True)`.
    pub fn detr(d_model: i64) -> Self {
        Self {
            num_pos_feats: d_model / 2,
            temperature: 10000.0,
            normalize: true,
            scale: 2.0 * std::f64::consts::PI,
        }
    }

    /// `[B, C, H, W] -> [B, 2 * num_pos_feats, H, W]` (float32; only the shape of `x` is read).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || self.num_pos_feats < 2 || self.num_pos_feats % 2 != 0 {
            return Err(PluginError::invalid_argument(format!(
                "PositionEmbeddingSine: expected a [B, C, H, W] map and an even num_pos_feats >= 2, got {s:?} \
                 and {}",
                self.num_pos_feats
            )));
        }
        let (b, h, w) = (s[0], s[2], s[3]);
        let opts = (Kind::Float, x.device());
        // The cumulative sums of an all-valid mask: 1..=H down the rows, 1..=W along them.
        let mut y = Tensor::f_arange_start(1, h + 1, opts)?
            .f_view([1, h, 1])?
            .f_expand([b, h, w], false)?;
        let mut xe = Tensor::f_arange_start(1, w + 1, opts)?
            .f_view([1, 1, w])?
            .f_expand([b, h, w], false)?;
        if self.normalize {
            let eps = 1e-6;
            // Upstream divides by the last count plus eps, then multiplies by the scale.
            y = y.f_div_scalar(h as f64 + eps)?.f_mul_scalar(self.scale)?;
            xe = xe.f_div_scalar(w as f64 + eps)?.f_mul_scalar(self.scale)?;
        }
        let n = self.num_pos_feats;
        let dim_t = Tensor::f_arange(n, opts)?
            .f_floor_divide_scalar(2)?
            .f_mul_scalar(2)?
            .f_div_scalar(n as f64)?;
        let dim_t = Tensor::f_pow_scalar(self.temperature, &dim_t)?;
        let interleave = |e: &Tensor| -> Result<Tensor> {
            // [B, H, W, n]: sin of the even channels and cos of the odd ones, interleaved.
            let p = e.f_unsqueeze(-1)?.f_div(&dim_t)?;
            let sin = p.f_slice(3, 0, n, 2)?.f_sin()?;
            let cos = p.f_slice(3, 1, n, 2)?.f_cos()?;
            Ok(Tensor::f_stack(&[sin, cos], 4)?.f_flatten(3, 4)?)
        };
        let pos = Tensor::f_cat(&[interleave(&y)?, interleave(&xe)?], 3)?;
        Ok(pos.f_permute([0, 3, 1, 2])?.f_contiguous()?)
    }
}
