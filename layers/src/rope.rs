//! 2-D axial rotary position embedding (RoPE) without learned weights, as DINOv3 writes it
//! (`dinov3/layers/rope_position_encoding.py`, `RopePositionEmbedding`, and `rope_apply` /
//! `rope_rotate_half` in `dinov3/layers/attention.py`).
//!
//! Each patch at row `i`, column `j` of an `H` x `W` grid gets coordinates in [-1, 1]; a
//! head of width `D` gets `D / 4` frequencies (the `periods` buffer, a `state_dict` entry)
//! for each of the two axes. Queries and keys of the patch tokens are rotated by those
//! angles; tokens in front of the patches (class token, registers) are left alone.
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// How patch coordinates are scaled into [-1, 1] (`normalize_coords`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormalizeCoords {
    /// Both axes divided by `min(H, W)`.
    Min,
    /// Both axes divided by `max(H, W)`.
    Max,
    /// Rows divided by `H`, columns by `W` (DINOv3's published models).
    Separate,
}

impl NormalizeCoords {
    /// Parses the reference's names (`"min"`, `"max"`, `"separate"`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "min" => Ok(Self::Min),
            "max" => Ok(Self::Max),
            "separate" => Ok(Self::Separate),
            other => Err(PluginError::invalid_argument(format!(
                "RoPE normalize_coords {other:?} is not known; use \"min\", \"max\" or \"separate\""
            ))),
        }
    }
}

/// How the periods are set and which training-time coordinate augmentations run.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// `base`: periods `base^(2k / (D/2))`, `k < D/4`. Exclusive with the min/max pair.
    pub base: Option<f64>,
    /// `min_period` (with `max_period`): periods spread geometrically between the two.
    pub min_period: Option<f64>,
    /// `max_period` (with `min_period`).
    pub max_period: Option<f64>,
    /// Coordinate normalisation.
    pub normalize_coords: NormalizeCoords,
    /// Train mode only: a uniform shift in [-s, s] per axis is added to the coordinates.
    pub shift_coords: Option<f64>,
    /// Train mode only: each axis is scaled by a log-uniform factor in [1/j, j].
    pub jitter_coords: Option<f64>,
    /// Train mode only: both axes are scaled by one log-uniform factor in [1/r, r].
    pub rescale_coords: Option<f64>,
}

impl Default for RopeConfig {
    /// The reference's constructor defaults: `base=100`, separate normalisation, no
    /// augmentation.
    fn default() -> Self {
        Self {
            base: Some(100.0),
            min_period: None,
            max_period: None,
            normalize_coords: NormalizeCoords::Separate,
            shift_coords: None,
            jitter_coords: None,
            rescale_coords: None,
        }
    }
}

/// `RopePositionEmbedding`: holds the `periods` buffer (float32, `[D_head / 4]`) and
/// computes the sine and cosine tables for a patch grid.
#[derive(Debug)]
pub struct RopePositionEmbedding {
    periods: Tensor,
    cfg: RopeConfig,
}

impl RopePositionEmbedding {
    /// The embedding for heads of `embed_dim / num_heads` under `p`; its buffer is
    /// `p / "periods"`, initialised as the reference's `_init_weights` does. Refuses a
    /// width that is not a multiple of `4 * num_heads` and an inconsistent period
    /// specification, as the reference does.
    pub fn new(p: nn::Path, embed_dim: i64, num_heads: i64, cfg: RopeConfig) -> Result<Self> {
        if num_heads <= 0 || embed_dim % (4 * num_heads) != 0 {
            return Err(PluginError::invalid_argument(format!(
                "RoPE needs embed_dim ({embed_dim}) to be a multiple of 4 * num_heads ({num_heads})"
            )));
        }
        let both = cfg.min_period.is_some() && cfg.max_period.is_some();
        if cfg.base.is_some() == both {
            return Err(PluginError::invalid_argument(
                "RoPE needs either `base` or both `min_period` and `max_period`",
            ));
        }
        let d_head = embed_dim / num_heads;
        let initial = Self::initial_periods(d_head, &cfg)?;
        let mut periods = p.zeros_no_train("periods", &[d_head / 4]);
        tch::no_grad(|| periods.f_copy_(&initial))?;
        Ok(Self { periods, cfg })
    }

    /// The periods the reference computes at construction, in float32.
    pub fn initial_periods(d_head: i64, cfg: &RopeConfig) -> Result<Tensor> {
        let n = d_head / 4;
        let opts = (Kind::Float, tch::Device::Cpu);
        Ok(match (cfg.base, cfg.min_period, cfg.max_period) {
            (Some(base), _, _) => {
                // base ** (2 * arange(D/4) / (D/2)), each step in float32 as upstream
                let exponent = Tensor::f_arange(n, opts)?
                    .f_mul_scalar(2.0)?
                    .f_div_scalar((d_head / 2) as f64)?;
                Tensor::f_pow_scalar(base, &exponent)?
            }
            (None, Some(lo), Some(hi)) => {
                let ratio = hi / lo;
                let exponents = Tensor::f_linspace(0.0, 1.0, n, opts)?;
                Tensor::f_pow_scalar(ratio, &exponents)?
                    .f_div_scalar(ratio)?
                    .f_mul_scalar(hi)?
            }
            _ => {
                return Err(PluginError::invalid_argument(
                    "RoPE needs either `base` or both `min_period` and `max_period`",
                ))
            }
        })
    }

    /// The `periods` buffer.
    pub fn periods(&self) -> &Tensor {
        &self.periods
    }

    /// `forward(H=h, W=w)`: `(sin, cos)`, each `[h * w, D_head]`, rows in row-major
    /// patch order. In train mode the configured coordinate augmentations draw new
    /// random factors on every call, as upstream.
    pub fn sin_cos(&self, h: i64, w: i64, train: bool) -> Result<(Tensor, Tensor)> {
        let device = self.periods.device();
        let opts = (Kind::Float, device);
        let (dh, dw) = match self.cfg.normalize_coords {
            NormalizeCoords::Max => (h.max(w), h.max(w)),
            NormalizeCoords::Min => (h.min(w), h.min(w)),
            NormalizeCoords::Separate => (h, w),
        };
        // [H], [W]: patch centres over the normaliser
        let ch = Tensor::f_arange_start_step(0.5, h as f64, 1.0, opts)?.f_div_scalar(dh as f64)?;
        let cw = Tensor::f_arange_start_step(0.5, w as f64, 1.0, opts)?.f_div_scalar(dw as f64)?;
        let grid = Tensor::f_meshgrid_indexing(&[ch, cw], "ij")?;
        // [H, W, 2] -> [HW, 2], shifted from [0, 1] to [-1, 1]
        let mut coords = Tensor::f_stack(&grid, -1)?
            .f_flatten(0, 1)?
            .f_mul_scalar(2.0)?
            .f_sub_scalar(1.0)?;
        if train {
            if let Some(s) = self.cfg.shift_coords {
                let shift = Tensor::f_empty([2], opts)?.f_uniform_(-s, s)?;
                coords = coords.f_add(&shift.f_unsqueeze(0)?)?;
            }
            if let Some(j) = self.cfg.jitter_coords {
                let m = j.ln();
                let f = Tensor::f_empty([2], opts)?.f_uniform_(-m, m)?.f_exp()?;
                coords = coords.f_mul(&f.f_unsqueeze(0)?)?;
            }
            if let Some(r) = self.cfg.rescale_coords {
                let m = r.ln();
                let f = Tensor::f_empty([1], opts)?.f_uniform_(-m, m)?.f_exp()?;
                coords = coords.f_mul(&f)?;
            }
        }
        // [HW, 2, D/4] -> [HW, D/2] -> [HW, D]: per axis, then the whole repeated twice
        let angles = coords
            .f_unsqueeze(-1)?
            .f_mul_scalar(2.0 * std::f64::consts::PI)?
            .f_div(&self.periods.f_view([1, 1, -1])?)?
            .f_flatten(1, 2)?
            .f_tile([1, 2])?;
        Ok((angles.f_sin()?, angles.f_cos()?))
    }
}

/// `rope_rotate_half`: `[x0 .. x(n-1), xn .. x(2n-1)]` becomes `[-xn .. -x(2n-1), x0 ..
/// x(n-1)]` over the last dimension.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let halves = x.f_chunk(2, -1)?;
    Ok(Tensor::f_cat(
        &[halves[1].f_neg()?, halves[0].shallow_clone()],
        -1,
    )?)
}

/// `rope_apply`: `x * cos + rotate_half(x) * sin`.
pub fn apply(x: &Tensor, sin: &Tensor, cos: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

/// `SelfAttention.apply_rope` on one of `q` / `k` (`[B, heads, N, D_head]`): the last
/// `sin.size(0)` tokens are rotated, the tokens before them (class token, registers)
/// pass unchanged. The rotation runs in the tables' dtype and the result is cast back.
pub fn apply_to_patches(x: &Tensor, sin: &Tensor, cos: &Tensor) -> Result<Tensor> {
    let n = x.size()[2];
    let hw = sin.size()[0];
    let prefix = n - hw;
    if prefix < 0 {
        return Err(PluginError::invalid_argument(format!(
            "RoPE tables cover {hw} patches but the sequence has only {n} tokens"
        )));
    }
    let kind = x.kind();
    let xr = x.f_to_kind(sin.kind())?;
    let rotated = apply(&xr.f_narrow(2, prefix, hw)?, sin, cos)?;
    let out = Tensor::f_cat(&[xr.f_narrow(2, 0, prefix)?, rotated], 2)?;
    Ok(out.f_to_kind(kind)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn base_periods_follow_the_formula() {
        // D_head 16: base^(2k/8), k < 4 -> 1, 100^0.25, 100^0.5, 100^0.75
        let p = RopePositionEmbedding::initial_periods(16, &RopeConfig::default()).unwrap();
        let v = Vec::<f32>::try_from(&p).unwrap();
        let want = [1.0, 100f64.powf(0.25), 10.0, 100f64.powf(0.75)];
        for (a, b) in v.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5 * b, "{v:?}");
        }
    }

    #[test]
    fn min_max_periods_span_the_range() {
        let cfg = RopeConfig {
            base: None,
            min_period: Some(0.5),
            max_period: Some(8.0),
            ..RopeConfig::default()
        };
        let v = Vec::<f32>::try_from(&RopePositionEmbedding::initial_periods(32, &cfg).unwrap())
            .unwrap();
        assert_eq!(v.len(), 8);
        assert!(
            (v[0] - 0.5).abs() < 1e-6 && (v[7] - 8.0).abs() < 1e-5,
            "{v:?}"
        );
        let both = RopeConfig {
            base: Some(100.0),
            ..cfg
        };
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(RopePositionEmbedding::new(vs.root(), 64, 2, both).is_err());
        assert!(RopePositionEmbedding::new(vs.root(), 60, 2, RopeConfig::default()).is_err());
    }

    #[test]
    fn tables_rotate_each_axis_by_its_coordinate() {
        let vs = nn::VarStore::new(Device::Cpu);
        let rope = RopePositionEmbedding::new(vs.root(), 8, 1, RopeConfig::default()).unwrap();
        // D_head 8: periods 100^(2k/4) = [1, 10]; grid 1 x 2 -> row coord 0, columns -0.5, 0.5
        let (sin, cos) = rope.sin_cos(1, 2, false).unwrap();
        assert_eq!(sin.size(), vec![2, 8]);
        let s = Vec::<f32>::try_from(&sin.flatten(0, 1)).unwrap();
        let c = Vec::<f32>::try_from(&cos.flatten(0, 1)).unwrap();
        let tau = 2.0 * std::f64::consts::PI;
        // token 1 (column 0.5): [h/1, h/10, w/1, w/10] angles, twice
        let want = [0.0, 0.0, tau * 0.5, tau * 0.5 / 10.0];
        for k in 0..8 {
            let a = want[k % 4];
            assert!((s[8 + k] as f64 - a.sin()).abs() < 1e-6, "{s:?}");
            assert!((c[8 + k] as f64 - a.cos()).abs() < 1e-6, "{c:?}");
        }
        // the class token in front is untouched, the patch tokens are rotated
        let x = Tensor::ones([1, 1, 3, 8], (Kind::Float, Device::Cpu));
        let y = apply_to_patches(&x, &sin, &cos).unwrap();
        assert!(y.narrow(2, 0, 1).equal(&x.narrow(2, 0, 1)));
        assert!(!y.narrow(2, 2, 1).equal(&x.narrow(2, 2, 1)));
        // a rotation keeps the norm of each pair
        let n0 = x
            .narrow(2, 2, 1)
            .square()
            .sum(Kind::Float)
            .double_value(&[]);
        let n1 = y
            .narrow(2, 2, 1)
            .square()
            .sum(Kind::Float)
            .double_value(&[]);
        assert!((n0 - n1).abs() < 1e-5);
    }

    #[test]
    fn rescaling_changes_the_tables_in_train_mode_only() {
        let cfg = RopeConfig {
            rescale_coords: Some(2.0),
            ..RopeConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let rope = RopePositionEmbedding::new(vs.root(), 16, 1, cfg).unwrap();
        let (a, _) = rope.sin_cos(3, 3, false).unwrap();
        let (b, _) = rope.sin_cos(3, 3, false).unwrap();
        assert!(a.equal(&b));
        tch::manual_seed(1);
        let (c, _) = rope.sin_cos(3, 3, true).unwrap();
        assert!(!a.allclose(&c, 1e-6, 1e-6, false));
    }
}
