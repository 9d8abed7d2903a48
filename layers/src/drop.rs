//! Regularisers that act in training only: `nn.Dropout`, stochastic depth
//! (`drop_path`, in timm's and mmcv's variants, which draw their masks differently) and
//! LayerScale.
use tch::Tensor;
use terrahost_plugin_api::Result;

/// timm's `drop_path`: zeroes whole samples of a residual branch with probability `p`
/// and rescales the survivors by 1 / (1 - p); the identity outside training.
pub fn drop_path(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p == 0.0 || !train {
        return Ok(x);
    }
    let keep = 1.0 - p;
    // [B, 1, ..., 1] mask, one draw per sample.
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size().first().copied().unwrap_or(1);
    let mut mask = Tensor::f_empty(shape.as_slice(), (x.kind(), x.device()))?;
    let _ = mask.f_bernoulli_float_(keep)?;
    Ok(x.f_mul(&mask.f_div_scalar(keep)?)?)
}

/// mmcv's `drop_path` (`mmcv/cnn/bricks/drop.py`): the same expectation as timm's,
/// but the mask is `floor(keep + rand)`, so with one seed it draws other samples than
/// [`drop_path`] does; mmseg's heads use this one.
pub fn drop_path_mmcv(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p <= 0.0 || !train {
        return Ok(x);
    }
    let keep = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size().first().copied().unwrap_or(1);
    let mask = Tensor::f_rand(shape.as_slice(), (x.kind(), x.device()))?
        .f_add_scalar(keep)?
        .f_floor()?;
    Ok(x.f_div_scalar(keep)?.f_mul(&mask)?)
}

/// `nn.Dropout(p)`: active in train mode only.
pub fn dropout(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if p == 0.0 || !train {
        return Ok(x);
    }
    Ok(x.f_dropout(p, train)?)
}

/// The stochastic-depth rate of block `i` of `total`: `linspace(0, rate, total)[i]`, as
/// `calculate_drop_path_rates` spreads it over all blocks of a network.
pub fn drop_path_rate(rate: f64, i: i64, total: i64) -> f64 {
    if total > 1 {
        rate * i as f64 / (total - 1) as f64
    } else {
        0.0
    }
}

/// A residual branch optionally scaled by a LayerScale `gamma` (broadcast over the last
/// dimension).
pub fn layer_scale(y: Tensor, gamma: Option<&Tensor>) -> Result<Tensor> {
    Ok(match gamma {
        Some(g) => y.f_mul(g)?,
        None => y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn drop_path_is_the_identity_outside_training() {
        let x = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
        for f in [drop_path, drop_path_mmcv, dropout] {
            let y = f(x.shallow_clone(), 0.5, false).unwrap();
            assert!(y.equal(&x));
        }
    }

    #[test]
    fn drop_path_keeps_or_drops_whole_samples_scaled_by_the_keep_probability() {
        tch::manual_seed(0);
        let x = Tensor::ones([64, 5], (Kind::Float, Device::Cpu));
        for f in [drop_path, drop_path_mmcv] {
            let y = f(x.shallow_clone(), 0.5, true).unwrap();
            // Every row is all 0 or all 2 (1 / keep), and both occur.
            let rows: Vec<f64> =
                Vec::<f64>::try_from(y.sum_dim_intlist([1i64].as_slice(), false, Kind::Double))
                    .unwrap();
            assert!(
                rows.iter().all(|r| *r == 0.0 || (*r - 10.0).abs() < 1e-6),
                "{rows:?}"
            );
            assert!(rows.contains(&0.0) && rows.iter().any(|r| *r > 0.0));
        }
    }

    #[test]
    fn drop_path_rates_rise_linearly_over_the_blocks() {
        assert_eq!(drop_path_rate(0.3, 0, 4), 0.0);
        assert!((drop_path_rate(0.3, 3, 4) - 0.3).abs() < 1e-12);
        assert_eq!(drop_path_rate(0.3, 0, 1), 0.0);
    }
}
