//! The necks of `terratorch/models/necks.py` that turn the same-size maps of a plain
//! ViT into a pyramid: `InterpolateToPyramidal`, `MaxpoolToPyramidal`,
//! `LearnedInterpolateToPyramidal`; and `AddBottleneckLayer`, which adds a level.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module as _, nn::ModuleT as _, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// Arguments of [`InterpolateToPyramidal`], with upstream's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct InterpolateConfig {
    /// Factor between consecutive levels.
    pub scale_factor: i64,
    /// `F.interpolate` mode.
    pub mode: String,
}

impl Default for InterpolateConfig {
    fn default() -> Self {
        Self {
            scale_factor: 2,
            mode: "nearest".into(),
        }
    }
}

/// The `F.interpolate` modes [`interpolate_by`] supports for 4-D maps.
pub const MODES: [&str; 5] = ["nearest", "nearest-exact", "bilinear", "bicubic", "area"];

/// `F.interpolate(x, scale_factor=scale, mode=mode)` (align_corners unset): the output
/// size is `floor(size * scale)` and the kernels map coordinates with `scale` itself.
pub fn interpolate_by(x: &Tensor, scale: f64, mode: &str) -> Result<Tensor> {
    let s = x.size();
    if s.len() != 4 {
        return Err(PluginError::forward_failed(format!(
            "expected a map [B, C, H, W], got shape {s:?}"
        )));
    }
    let out = [
        (s[2] as f64 * scale).floor() as i64,
        (s[3] as f64 * scale).floor() as i64,
    ];
    Ok(match mode {
        "nearest" => x.f_upsample_nearest2d(out, Some(scale), Some(scale))?,
        "nearest-exact" => x.f_internal_upsample_nearest_exact2d(out, Some(scale), Some(scale))?,
        "bilinear" => x.f_upsample_bilinear2d(out, false, Some(scale), Some(scale))?,
        "bicubic" => x.f_upsample_bicubic2d(out, false, Some(scale), Some(scale))?,
        "area" => x.f_adaptive_avg_pool2d(out)?,
        other => {
            return Err(PluginError::invalid_argument(format!(
                "interpolation mode `{other}` is not one of nearest, nearest-exact, bilinear, bicubic, area"
            )))
        }
    })
}

/// Upsamples feature `i` of `n` by `scale_factor^(n-i)`.
#[derive(Debug)]
pub struct InterpolateToPyramidal {
    cfg: InterpolateConfig,
    out_channels: Vec<i64>,
}

impl InterpolateToPyramidal {
    /// Upstream keeps the channel list as it is.
    pub fn new(channel_list: &[i64], cfg: &InterpolateConfig) -> Result<Self> {
        if cfg.scale_factor < 1 {
            return Err(PluginError::invalid_argument(format!(
                "InterpolateToPyramidal: scale_factor must be >= 1, got {}",
                cfg.scale_factor
            )));
        }
        if !MODES.contains(&cfg.mode.as_str()) {
            return Err(PluginError::invalid_argument(format!(
                "InterpolateToPyramidal: mode `{}` is not one of {}",
                cfg.mode,
                MODES.join(", ")
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            out_channels: channel_list.to_vec(),
        })
    }
}

impl Model for InterpolateToPyramidal {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let n = xs.len() as i32;
        xs.iter()
            .enumerate()
            .map(|(i, x)| {
                interpolate_by(
                    x,
                    (self.cfg.scale_factor as f64).powi(n - i as i32),
                    &self.cfg.mode,
                )
            })
            .collect()
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}

/// Arguments of [`MaxpoolToPyramidal`], with upstream's default.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct MaxpoolConfig {
    /// Pooling factor between consecutive levels.
    pub kernel_size: i64,
}

impl Default for MaxpoolConfig {
    fn default() -> Self {
        Self { kernel_size: 2 }
    }
}

/// Max-pools feature `i` by `kernel_size^i`; the first is kept as it is.
#[derive(Debug)]
pub struct MaxpoolToPyramidal {
    kernel_size: i64,
    out_channels: Vec<i64>,
}

impl MaxpoolToPyramidal {
    /// Upstream keeps the channel list as it is.
    pub fn new(channel_list: &[i64], cfg: &MaxpoolConfig) -> Result<Self> {
        if cfg.kernel_size < 1 {
            return Err(PluginError::invalid_argument(format!(
                "MaxpoolToPyramidal: kernel_size must be >= 1, got {}",
                cfg.kernel_size
            )));
        }
        Ok(Self {
            kernel_size: cfg.kernel_size,
            out_channels: channel_list.to_vec(),
        })
    }
}

impl Model for MaxpoolToPyramidal {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        xs.iter()
            .enumerate()
            .map(|(i, x)| {
                if i == 0 {
                    return Ok(x.copy());
                }
                let k = self.kernel_size.pow(i as u32);
                Ok(x.f_max_pool2d([k, k], [k, k], [0, 0], [1, 1], false)?)
            })
            .collect()
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}

/// Appends `Conv2d(C, C/2, 1)(features[-1])` as one more feature.
#[derive(Debug)]
pub struct AddBottleneckLayer {
    bottleneck: nn::Conv2D,
    out_channels: Vec<i64>,
}

impl AddBottleneckLayer {
    /// Parameters `bottleneck.weight` / `bottleneck.bias` under `p`.
    pub fn new(p: nn::Path, channel_list: &[i64]) -> Result<Self> {
        let &last = channel_list.last().ok_or_else(|| {
            PluginError::invalid_argument("AddBottleneckLayer: the channel list is empty")
        })?;
        if last < 2 {
            return Err(PluginError::invalid_argument(format!(
                "AddBottleneckLayer: the last feature has {last} channel(s); it needs at least 2 to halve"
            )));
        }
        let bottleneck = nn::conv2d(&p / "bottleneck", last, last / 2, 1, Default::default());
        let mut out_channels = channel_list.to_vec();
        out_channels.push(last / 2);
        Ok(Self {
            bottleneck,
            out_channels,
        })
    }
}

impl Model for AddBottleneckLayer {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let last = xs
            .last()
            .ok_or_else(|| PluginError::forward_failed("AddBottleneckLayer: no features"))?;
        let mut out: Vec<Tensor> = xs.iter().map(Tensor::shallow_clone).collect();
        out.push(self.bottleneck.forward(last));
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}

/// Four same-size maps to a pyramid: x4 (`fpn1`), x2 (`fpn2`), x1 (`fpn3`) and /2 (`fpn4`).
#[derive(Debug)]
pub struct LearnedInterpolateToPyramidal {
    fpn1_up1: nn::ConvTranspose2D,
    fpn1_bn: nn::BatchNorm,
    fpn1_up2: nn::ConvTranspose2D,
    fpn2_up: nn::ConvTranspose2D,
    out_channels: Vec<i64>,
}

impl LearnedInterpolateToPyramidal {
    /// Parameters under `fpn1.{0,1,3}` and `fpn2.0`, as upstream's `nn.Sequential`s.
    pub fn new(p: nn::Path, channel_list: &[i64]) -> Result<Self> {
        let &[c0, c1, c2, c3] = channel_list else {
            return Err(PluginError::invalid_argument(format!(
                "LearnedInterpolateToPyramidal takes exactly 4 features, got a channel list of {}: {channel_list:?} \
                 (select 4 with a SelectIndices neck first)",
                channel_list.len()
            )));
        };
        if c0 < 4 || c1 < 2 {
            return Err(PluginError::invalid_argument(format!(
                "LearnedInterpolateToPyramidal: feature 0 needs >= 4 channels and feature 1 >= 2, got {channel_list:?}"
            )));
        }
        let up = nn::ConvTransposeConfig {
            stride: 2,
            ..Default::default()
        };
        let fpn1 = &p / "fpn1";
        Ok(Self {
            fpn1_up1: nn::conv_transpose2d(&fpn1 / 0, c0, c0 / 2, 2, up),
            fpn1_bn: batch_norm2d(&fpn1 / 1, c0 / 2, 1e-5, 0.1),
            fpn1_up2: nn::conv_transpose2d(&fpn1 / 3, c0 / 2, c0 / 4, 2, up),
            fpn2_up: nn::conv_transpose2d(&p / "fpn2" / 0, c1, c1 / 2, 2, up),
            out_channels: vec![c0 / 4, c1 / 2, c2, c3],
        })
    }
}

impl Model for LearnedInterpolateToPyramidal {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let [x0, x1, x2, x3] = xs else {
            return Err(PluginError::forward_failed(format!(
                "LearnedInterpolateToPyramidal takes exactly 4 features, got {}",
                xs.len()
            )));
        };
        let y0 = self.fpn1_up2.forward(
            &self
                .fpn1_bn
                .forward_t(&self.fpn1_up1.forward(x0), train)
                .gelu("none"),
        );
        let y1 = self.fpn2_up.forward(x1);
        let y3 = x3.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
        Ok(vec![y0, y1, x2.shallow_clone(), y3])
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}
