//! `SelectIndices` (`terratorch/models/necks.py`): keep some of the features.

use crate::models::py_index;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// Arguments of [`SelectIndices`].
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct SelectIndicesConfig {
    /// Which features to keep, in order (Python indices: negative counts from the end).
    pub indices: Vec<i64>,
}

/// Keeps the features at `indices` (in that order) and drops the rest.
#[derive(Debug)]
pub struct SelectIndices {
    indices: Vec<i64>,
    out_channels: Vec<i64>,
}

impl SelectIndices {
    /// A neck for features with channels `channel_list`.
    pub fn new(channel_list: &[i64], cfg: &SelectIndicesConfig) -> Result<Self> {
        let out_channels = Self::process_channel_list(&cfg.indices, channel_list)?;
        Ok(Self {
            indices: cfg.indices.clone(),
            out_channels,
        })
    }

    /// The channel list after selection (upstream `process_channel_list`).
    pub fn process_channel_list(indices: &[i64], channel_list: &[i64]) -> Result<Vec<i64>> {
        indices
            .iter()
            .map(|&i| Ok(channel_list[py_index(i, channel_list.len(), "SelectIndices: index")?]))
            .collect()
    }
}

impl Model for SelectIndices {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        // Indices resolve against the features actually received, as in Python.
        self.indices
            .iter()
            .map(|&i| {
                let k = py_index(i, xs.len(), "SelectIndices: index").map_err(|e| {
                    PluginError::forward_failed(format!(
                        "{} (it received {} features)",
                        e.message(),
                        xs.len()
                    ))
                })?;
                Ok(xs[k].shallow_clone())
            })
            .collect()
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn selects_features_and_channels() {
        let neck = SelectIndices::new(
            &[16, 32, 64, 128],
            &SelectIndicesConfig {
                indices: vec![1, -1],
            },
        )
        .unwrap();
        assert_eq!(neck.out_channels(), vec![32, 128]);
        let xs: Vec<Tensor> = (0..4)
            .map(|i| Tensor::full([1, 1], i as f64, (Kind::Float, Device::Cpu)))
            .collect();
        let ys = neck.forward(&xs, false).unwrap();
        assert_eq!(ys.len(), 2);
        assert_eq!(ys[0].double_value(&[0, 0]), 1.0);
        assert_eq!(ys[1].double_value(&[0, 0]), 3.0);
        // fewer features than promised at forward time is an error, not a panic
        assert!(neck.forward(&xs[..1], false).is_err());
    }

    #[test]
    fn out_of_range_index_is_refused_at_build() {
        let e =
            SelectIndices::new(&[16, 32], &SelectIndicesConfig { indices: vec![2] }).unwrap_err();
        assert!(
            e.message().contains("index 2") && e.message().contains("2 item"),
            "{e}"
        );
    }
}
