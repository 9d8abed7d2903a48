//! TerraTorch's model for per-image outputs (classification, scalar regression):
//! encoder -> neck(s) -> decoder -> pooled head.
//! Mirrors `terratorch/models/scalar_output_model.py`.

use super::heads::ScalarHead;
use super::pixel_wise_model::{Padding, Trunk};
use tch::Tensor;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    PluginError, Result,
};

/// Encoder, necks, decoder and a [`ScalarHead`]. Its own parameters are the head's
/// (`head.head.*`); the rest belong to the [`Trunk`] children.
pub struct ScalarOutputModel {
    trunk: Trunk,
    /// `None` when the decoder already includes a head.
    head: Option<ScalarHead>,
    padding: Option<Padding>,
}

impl ScalarOutputModel {
    /// Assembles the model.
    pub fn new(trunk: Trunk, head: Option<ScalarHead>, padding: Option<Padding>) -> Self {
        Self { trunk, head, padding }
    }

    /// `[B, C, H, W] -> [B, K]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match &self.padding {
            Some(p) => p.apply(x)?,
            None => x.shallow_clone(),
        };
        let decoded = self.trunk.decode(&x)?;
        match &self.head {
            Some(h) => h.forward_t(&decoded, train),
            None => Ok(decoded),
        }
    }
}

impl Model for ScalarOutputModel {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => Ok(vec![self.forward_t(x, train)?]),
            _ => Err(PluginError::forward_failed(format!(
                "a ScalarOutputModel takes one image tensor, got {}",
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        match &self.head {
            Some(h) => vec![h.num_outputs()],
            None => self.trunk.decoder().out_channels(),
        }
    }

    fn includes_head(&self) -> bool {
        true
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        self.trunk.children()
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        self.trunk.children_mut()
    }
}
