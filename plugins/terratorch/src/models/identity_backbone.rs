//! Mirrors `terratorch/models/backbones/identity_backbone.py` (TerraTorch 1.2.11):
//! `IdentityBackbone(out_channels=None)`, which returns its input as the only feature map, for
//! embedding workflows whose inputs already are features.
use serde_json::{json, Map, Value};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{Built, Entry, Model};
use terrahost_plugin_api::{ParamType, PluginError, Result};

/// Returns `[x]`; reports the `out_channels` it was given.
#[derive(Debug)]
pub struct IdentityBackbone {
    out_channels: Option<Vec<i64>>,
}

impl IdentityBackbone {
    /// An identity backbone that reports `out_channels` (TerraTorch keeps `None` as given).
    pub fn new(out_channels: Option<Vec<i64>>) -> Self {
        Self { out_channels }
    }
}

impl Model for IdentityBackbone {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => Ok(vec![x.shallow_clone()]),
            _ => Err(PluginError::invalid_argument(format!(
                "IdentityBackbone takes one tensor, got {} inputs",
                xs.len()
            ))),
        }
    }

    /// The `out_channels` given; empty when none was (TerraTorch's `None`), which leaves the
    /// channel count to whoever builds the next part.
    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone().unwrap_or_default()
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        // TerraTorch sets `patch_size = None`: the factory pads nothing
        m.insert("patch_size".into(), Value::Null);
        m
    }
}

/// The `IdentityBackbone` entry.
pub fn entry() -> Entry {
    Entry::new(
        "IdentityBackbone",
        "Returns the input tensor as the only feature map (TerraTorch's IdentityBackbone, for embedding workflows); \
         out_channels is reported as given.",
        |ctx| {
            let out_channels: Option<Vec<i64>> = ctx.args.opt("out_channels")?;
            let model = IdentityBackbone::new(out_channels);
            Ok(Built::new(ctx.qualified(), nn::VarStore::new(tch::Device::Cpu), model).boxed())
        },
    )
    .opt("out_channels", ParamType::INT_LIST, json!(null), "the channels to report (TerraTorch stores them as given)")
}
