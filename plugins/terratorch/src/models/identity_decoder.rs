//! The pass-through decoder: hands one feature map straight to the head.
//! Mirrors `terratorch/models/decoders/identity_decoder.py`.

use super::py_index;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// Arguments of [`IdentityDecoder`], with upstream defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Which feature map to return (Python index).
    pub out_index: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { out_index: -1 }
    }
}

/// Returns `features[out_index]` unchanged; it has no parameters.
#[derive(Debug)]
pub struct IdentityDecoder {
    out_index: i64,
    out_channels: i64,
}

impl IdentityDecoder {
    /// A decoder for features with channels `embed_dim`.
    pub fn new(embed_dim: &[i64], cfg: &Config) -> Result<Self> {
        let k = py_index(
            cfg.out_index,
            embed_dim.len(),
            "IdentityDecoder: `out_index`",
        )?;
        Ok(Self {
            out_index: cfg.out_index,
            out_channels: embed_dim[k],
        })
    }
}

impl Model for IdentityDecoder {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let k =
            py_index(self.out_index, xs.len(), "IdentityDecoder: `out_index`").map_err(|e| {
                PluginError::forward_failed(format!(
                    "{} (it received {} features)",
                    e.message(),
                    xs.len()
                ))
            })?;
        Ok(vec![xs[k].shallow_clone()])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.out_channels]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn returns_the_selected_map() {
        let dec = IdentityDecoder::new(&[32, 64, 128], &Config { out_index: 1 }).unwrap();
        assert_eq!(dec.out_channels(), vec![64]);
        let xs: Vec<Tensor> = (0..3)
            .map(|i| Tensor::full([1], i as f64, (Kind::Float, Device::Cpu)))
            .collect();
        assert_eq!(dec.forward(&xs, false).unwrap()[0].double_value(&[0]), 1.0);
        assert_eq!(
            IdentityDecoder::new(&[32, 64, 128], &Config::default())
                .unwrap()
                .out_channels(),
            vec![128]
        );
        assert!(IdentityDecoder::new(&[32], &Config { out_index: 3 }).is_err());
    }
}
