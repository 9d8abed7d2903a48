//! TerraTorch's fully convolutional decoder: a stack of 2x transposed-conv upsampling
//! blocks applied to one feature map.
//! Mirrors `terratorch/models/decoders/fcn_decoder.py`.

use super::py_index;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module as _, Tensor};
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// Arguments of [`FCNDecoder`], with upstream defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Width of every block.
    pub channels: i64,
    /// Number of upsampling blocks (each doubles height and width).
    pub num_convs: i64,
    /// Which feature map of the input list to decode (Python index).
    pub in_index: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channels: 256,
            num_convs: 4,
            in_index: -1,
        }
    }
}

/// LayerNorm over the channel dim of a `[B, C, H, W]` map (upstream `Norm2d`).
#[derive(Debug)]
struct Norm2d {
    ln: nn::LayerNorm,
}

impl Norm2d {
    fn new(p: nn::Path, dim: i64) -> Self {
        let cfg = nn::LayerNormConfig {
            eps: 1e-6,
            ..Default::default()
        };
        Self {
            ln: nn::layer_norm(p / "ln", vec![dim], cfg),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [B, C, H, W] -> [B, H, W, C] -> norm -> back
        let y = self.ln.forward(&x.f_permute([0, 2, 3, 1])?);
        Ok(y.f_permute([0, 3, 1, 2])?.f_contiguous()?)
    }
}

/// One block: ConvTranspose2d(k2, s2) -> Conv2d(3x3) -> Norm2d -> GELU.
#[derive(Debug)]
struct UpscaleBlock {
    up: nn::ConvTranspose2D,
    conv: nn::Conv2D,
    norm: Norm2d,
}

impl UpscaleBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let up_cfg = nn::ConvTransposeConfig {
            stride: 2,
            ..Default::default()
        };
        let conv_cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Self {
            up: nn::conv_transpose2d(&p / 0, c_in, c_out, 2, up_cfg),
            conv: nn::conv2d(&p / 1, c_out, c_out, 3, conv_cfg),
            norm: Norm2d::new(&p / 2, c_out),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.up.forward(x);
        let x = self.conv.forward(&x);
        Ok(self.norm.forward(&x)?.f_gelu("none")?)
    }
}

/// Decodes `features[in_index]` with `num_convs` upsampling blocks of width `channels`.
#[derive(Debug)]
pub struct FCNDecoder {
    blocks: Vec<UpscaleBlock>,
    in_index: i64,
    channels: i64,
}

impl FCNDecoder {
    /// Builds the decoder for features with channels `embed_dim` under `p` (its
    /// parameters are `convs.{i}.{0,1,2.ln}.*`).
    pub fn new(p: nn::Path, embed_dim: &[i64], cfg: &Config) -> Result<Self> {
        if cfg.num_convs < 1 {
            return Err(PluginError::invalid_argument(format!(
                "FCNDecoder: `num_convs` must be >= 1, got {}",
                cfg.num_convs
            )));
        }
        if cfg.channels < 1 {
            return Err(PluginError::invalid_argument(format!(
                "FCNDecoder: `channels` must be >= 1, got {}",
                cfg.channels
            )));
        }
        let c_in = embed_dim[py_index(cfg.in_index, embed_dim.len(), "FCNDecoder: `in_index`")?];
        let convs = &p / "convs";
        let blocks = (0..cfg.num_convs)
            .map(|i| {
                UpscaleBlock::new(
                    &convs / i,
                    if i == 0 { c_in } else { cfg.channels },
                    cfg.channels,
                )
            })
            .collect();
        Ok(Self {
            blocks,
            in_index: cfg.in_index,
            channels: cfg.channels,
        })
    }
}

impl Model for FCNDecoder {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let k = py_index(self.in_index, xs.len(), "FCNDecoder: `in_index`").map_err(|e| {
            PluginError::forward_failed(format!(
                "{} (it received {} features)",
                e.message(),
                xs.len()
            ))
        })?;
        let mut x = xs[k].shallow_clone();
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(vec![x])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.channels]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn state_dict_keys_match_the_reference() {
        // Printed from terratorch 1.2.11: FCNDecoder([4, 8], channels=6, num_convs=2, in_index=0)
        let reference = [
            ("convs.0.0.weight", vec![4, 6, 2, 2]),
            ("convs.0.0.bias", vec![6]),
            ("convs.0.1.weight", vec![6, 6, 3, 3]),
            ("convs.0.1.bias", vec![6]),
            ("convs.0.2.ln.weight", vec![6]),
            ("convs.0.2.ln.bias", vec![6]),
            ("convs.1.0.weight", vec![6, 6, 2, 2]),
            ("convs.1.0.bias", vec![6]),
            ("convs.1.1.weight", vec![6, 6, 3, 3]),
            ("convs.1.1.bias", vec![6]),
            ("convs.1.2.ln.weight", vec![6]),
            ("convs.1.2.ln.bias", vec![6]),
        ];
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            channels: 6,
            num_convs: 2,
            in_index: 0,
        };
        let dec = FCNDecoder::new(vs.root(), &[4, 8], &cfg).unwrap();
        let mut ours: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        ours.sort();
        let mut theirs: Vec<(String, Vec<i64>)> = reference
            .iter()
            .map(|(k, s)| (k.to_string(), s.clone()))
            .collect();
        theirs.sort();
        assert_eq!(ours, theirs);
        assert_eq!(dec.out_channels(), vec![6]);
        let xs = [
            Tensor::zeros([2, 4, 3, 5], (Kind::Float, Device::Cpu)),
            Tensor::zeros([2, 8, 1, 1], (Kind::Float, Device::Cpu)),
        ];
        let y = dec.forward(&xs, false).unwrap();
        assert_eq!(y[0].size(), vec![2, 6, 12, 20]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let e = FCNDecoder::new(
            vs.root(),
            &[4],
            &Config {
                num_convs: 0,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message().contains("num_convs"), "{e}");
        let e = FCNDecoder::new(
            vs.root(),
            &[4],
            &Config {
                in_index: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.message().contains("in_index"), "{e}");
    }
}
