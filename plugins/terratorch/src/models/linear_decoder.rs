//! TerraTorch's linear decoder: one transposed convolution that upsamples a feature map
//! straight to class logits.
//! Mirrors `terratorch/models/decoders/linear_decoder.py` (`LinearDecoder`).

use super::py_index;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::{
    sdk::{Built, Entry, Model},
    ParamType, PluginError, Result,
};

/// Arguments of [`LinearDecoder`]; `num_classes` and `upsampling_size` have no default upstream.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Output channels (the decoder's out_channels).
    pub num_classes: i64,
    /// Kernel size and stride of the transposed convolution (the upsampling factor).
    pub upsampling_size: i64,
    /// Which feature map to decode (Python index).
    pub in_index: i64,
}

/// `ConvTranspose2d(embed_dim[in_index], num_classes, k = s = upsampling_size)` on
/// `features[in_index]`. It ends in class logits, so it includes its head.
#[derive(Debug)]
pub struct LinearDecoder {
    conv: nn::ConvTranspose2D,
    in_index: i64,
    num_classes: i64,
}

impl LinearDecoder {
    /// Builds the decoder under `p` (its parameters are `conv.weight`, `conv.bias`).
    pub fn new(p: nn::Path, embed_dim: &[i64], cfg: &Config) -> Result<Self> {
        for (name, v) in [
            ("num_classes", cfg.num_classes),
            ("upsampling_size", cfg.upsampling_size),
        ] {
            if v < 1 {
                return Err(PluginError::invalid_argument(format!(
                    "LinearDecoder: `{name}` must be >= 1, got {v}"
                )));
            }
        }
        let c_in = embed_dim[py_index(cfg.in_index, embed_dim.len(), "LinearDecoder: `in_index`")?];
        let k = cfg.upsampling_size;
        let conv = nn::conv_transpose2d(
            &p / "conv",
            c_in,
            cfg.num_classes,
            k,
            nn::ConvTransposeConfig {
                stride: k,
                ..Default::default()
            },
        );
        Ok(Self {
            conv,
            in_index: cfg.in_index,
            num_classes: cfg.num_classes,
        })
    }
}

impl Model for LinearDecoder {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let k = py_index(self.in_index, xs.len(), "LinearDecoder: `in_index`").map_err(|e| {
            PluginError::forward_failed(format!(
                "{} (it received {} features)",
                e.message(),
                xs.len()
            ))
        })?;
        // [B, C, H, W] -> [B, num_classes, H * s, W * s]
        Ok(vec![xs[k].apply(&self.conv)])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.num_classes]
    }

    fn includes_head(&self) -> bool {
        true
    }
}

/// The `LinearDecoder` registry entry.
pub(crate) fn entry() -> Entry {
    Entry::new(
        "LinearDecoder",
        "One ConvTranspose2d (kernel = stride = upsampling_size) from the map at `in_index` straight to \
         `num_classes` logits; includes its head, out_channels is num_classes.",
        |ctx| {
            let cfg = Config {
                num_classes: ctx.args.get("num_classes")?,
                upsampling_size: ctx.args.get("upsampling_size")?,
                in_index: ctx.args.get("in_index")?,
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = LinearDecoder::new(vs.root(), &ctx.channels, &cfg)?;
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        },
    )
    .req("num_classes", ParamType::INT, "output channels (class logits)")
    .req("upsampling_size", ParamType::INT, "kernel size and stride of the transposed convolution")
    .opt("in_index", ParamType::INT, json!(-1), "which feature map to decode (negative counts from the end)")
    .takes_channels()
}
