//! TerraTorch's `BackboneWrapper` (`terratorch/models/object_detection_model_factory.py`):
//! a registry backbone followed by its necks (upstream's `NeckSequential`), with the
//! neck-processed `channel_list` and `out_channels = channel_list[-1]`.
//!
//! torchvision's R-CNNs take the wrapper's output as named feature maps: TerraTorch gets
//! the names from its last neck, `FeaturePyramidNetworkNeck`, whose torchvision
//! `FeaturePyramidNetwork` returns an `OrderedDict` keyed `feat0`, `feat1`, ... (a plain
//! list would fail in torchvision's RPN, which calls `.values()` on it). The wrapper here
//! names the maps the same way.

use tch::Tensor;
use terrahost_layers::precision;
use terrahost_plugin_api::{sdk::DynModule, PluginError, Result};

/// The neck whose output TerraTorch's detection frameworks can take.
pub const FPN_NECK: &str = "FeaturePyramidNetworkNeck";

/// Backbone and necks, with their `state_dict` prefixes under `prefix`:
/// `{prefix}.backbone` and `{prefix}.necks.{i}`.
pub struct BackboneWrapper {
    /// `backbone`, then `necks.{i}`, with the full prefixes.
    pub(crate) parts: Vec<(String, DynModule)>,
    /// The channel list after the last neck.
    pub channel_list: Vec<i64>,
}

impl BackboneWrapper {
    /// Wraps a built backbone and its necks; `channel_list` is the last neck's.
    pub fn new(
        prefix: &str,
        backbone: DynModule,
        necks: Vec<DynModule>,
        channel_list: Vec<i64>,
    ) -> Result<Self> {
        if channel_list.is_empty() {
            return Err(PluginError::build_failed(format!(
                "BackboneWrapper: backbone `{}` and its necks report no channels; the detection frameworks need \
                 out_channels = channel_list[-1]",
                backbone.label()
            )));
        }
        let mut parts = vec![(format!("{prefix}.backbone"), backbone)];
        parts.extend(
            necks
                .into_iter()
                .enumerate()
                .map(|(i, n)| (format!("{prefix}.necks.{i}"), n)),
        );
        Ok(Self {
            parts,
            channel_list,
        })
    }

    /// `out_channels`: the last entry of the channel list.
    pub fn out_channels(&self) -> i64 {
        *self.channel_list.last().unwrap_or(&0)
    }

    /// `forward(x)`: the backbone, then each neck in turn; the maps named `feat{i}`.
    /// Under `--precision bf16` this is the part that runs in bfloat16
    /// ([`precision::body`]; the detector's heads run in float32), and the maps come out
    /// as float32.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let features = precision::body(|| -> Result<Vec<Tensor>> {
            let mut features = self.parts[0].1.forward(std::slice::from_ref(x))?;
            for (_, neck) in &self.parts[1..] {
                features = neck.forward(&features)?;
            }
            Ok(features)
        })?;
        Ok(features
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("feat{i}"), precision::widen(t)))
            .collect())
    }

    /// The `state_dict` prefix of the backbone and necks (the `bf16_prefixes` of the
    /// detector's `meta`).
    pub fn prefix(&self) -> String {
        let backbone = &self.parts[0].0;
        format!(
            "{}.",
            backbone.strip_suffix(".backbone").unwrap_or(backbone)
        )
    }

    /// The parts with their prefixes (for `Model::children`).
    pub fn children(&self) -> Vec<(&str, &DynModule)> {
        self.parts.iter().map(|(p, m)| (p.as_str(), m)).collect()
    }

    /// The same, mutably.
    pub fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        self.parts
            .iter_mut()
            .map(|(p, m)| (p.as_str(), m))
            .collect()
    }
}
