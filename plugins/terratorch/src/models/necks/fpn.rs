//! `FeaturePyramidNetworkNeck` (`terratorch/models/necks.py`), which wraps torchvision's
//! `FeaturePyramidNetwork` (`torchvision/ops/feature_pyramid_network.py`, no extra
//! blocks): keys `fpn.inner_blocks.{i}.0.*` and `fpn.layer_blocks.{i}.0.*`.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module as _, Tensor};
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// Arguments of [`FeaturePyramidNetworkNeck`], with upstream's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct FpnConfig {
    /// Channels of every output level.
    pub out_channel: i64,
    /// Upstream returns an `OrderedDict` when true; the maps are the same.
    pub output_ordered_dict: bool,
}

impl Default for FpnConfig {
    fn default() -> Self {
        Self {
            out_channel: 256,
            output_ordered_dict: true,
        }
    }
}

/// A feature pyramid network over every input level.
#[derive(Debug)]
pub struct FeaturePyramidNetworkNeck {
    /// 1x1 lateral convs, one per level.
    inner: Vec<nn::Conv2D>,
    /// 3x3 output convs, one per level.
    layer: Vec<nn::Conv2D>,
    out_channels: Vec<i64>,
}

impl FeaturePyramidNetworkNeck {
    /// Parameters under `p / "fpn"`.
    pub fn new(p: nn::Path, channel_list: &[i64], cfg: &FpnConfig) -> Result<Self> {
        if channel_list.is_empty() || channel_list.iter().any(|&c| c < 1) {
            return Err(PluginError::invalid_argument(format!(
                "FeaturePyramidNetworkNeck: every level needs >= 1 channel, got {channel_list:?}"
            )));
        }
        if cfg.out_channel < 1 {
            return Err(PluginError::invalid_argument(format!(
                "FeaturePyramidNetworkNeck: out_channel must be >= 1, got {}",
                cfg.out_channel
            )));
        }
        let fpn = &p / "fpn";
        let pad1 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let inner = channel_list
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                nn::conv2d(
                    &fpn / "inner_blocks" / i / 0,
                    c,
                    cfg.out_channel,
                    1,
                    Default::default(),
                )
            })
            .collect();
        let layer = (0..channel_list.len())
            .map(|i| {
                nn::conv2d(
                    &fpn / "layer_blocks" / i / 0,
                    cfg.out_channel,
                    cfg.out_channel,
                    3,
                    pad1,
                )
            })
            .collect();
        Ok(Self {
            inner,
            layer,
            out_channels: vec![cfg.out_channel; channel_list.len()],
        })
    }
}

impl Model for FeaturePyramidNetworkNeck {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let n = self.inner.len();
        if xs.len() != n {
            return Err(PluginError::forward_failed(format!(
                "FeaturePyramidNetworkNeck was built for {n} levels but received {}",
                xs.len()
            )));
        }
        // Top-down: start from the coarsest level, upsample (nearest) and add each lateral.
        let mut last_inner = self.inner[n - 1].forward(&xs[n - 1]);
        let mut out = vec![self.layer[n - 1].forward(&last_inner)];
        for i in (0..n - 1).rev() {
            let lateral = self.inner[i].forward(&xs[i]);
            let size = &lateral.size()[2..];
            let top_down = last_inner.f_upsample_nearest2d(size, None, None)?;
            last_inner = lateral + top_down;
            out.insert(0, self.layer[i].forward(&last_inner));
        }
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}
