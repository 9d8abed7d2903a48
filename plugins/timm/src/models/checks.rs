//! The argument checks the family `Config`s share, each as an error that names the
//! argument (upstream would assert, or fail later with a shape error).
use terrahost_plugin_api::{PluginError, Result};

/// Every `(name, value)` must be at least 1.
pub(crate) fn at_least_one(values: &[(&str, i64)]) -> Result<()> {
    match values.iter().find(|(_, v)| *v < 1) {
        Some((name, v)) => Err(PluginError::invalid_argument(format!(
            "`{name}` must be at least 1, got {v}"
        ))),
        None => Ok(()),
    }
}

/// Every `(name, rate)` (a dropout or drop-path probability) must be in [0, 1).
pub(crate) fn rates(values: &[(&str, f64)]) -> Result<()> {
    match values.iter().find(|(_, v)| !(0.0..1.0).contains(v)) {
        Some((name, v)) => Err(PluginError::invalid_argument(format!(
            "`{name}` must be in [0, 1), got {v}"
        ))),
        None => Ok(()),
    }
}

/// `mlp_ratio` must be a positive number.
pub(crate) fn mlp_ratio(v: f64) -> Result<()> {
    if v.is_nan() || v <= 0.0 {
        return Err(PluginError::invalid_argument(format!(
            "`mlp_ratio` must be positive, got {v}"
        )));
    }
    Ok(())
}
