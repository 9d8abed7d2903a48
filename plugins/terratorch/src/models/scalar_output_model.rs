//! TerraTorch's model for per-image outputs (classification, scalar regression):
//! encoder -> neck(s) -> decoder -> pooled head.
//! Mirrors `terratorch/models/scalar_output_model.py`.

use super::heads::ScalarHead;
use super::trunk::{EncoderInputs, NamedEncoderInputs, Trunk};
use super::utils::Padding;
use serde_json::{Map, Value};
use tch::Tensor;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    Result,
};

/// Encoder, necks, decoder and a [`ScalarHead`]. Its own parameters are the head's
/// (`head.head.*`); the rest belong to the [`Trunk`] children.
pub struct ScalarOutputModel {
    trunk: Trunk,
    /// `None` when the decoder already includes a head.
    head: Option<ScalarHead>,
    /// One per auxiliary decoder, in the trunk's order; `None` when it includes a head.
    aux_heads: Vec<Option<ScalarHead>>,
    padding: Option<Padding>,
}

impl ScalarOutputModel {
    /// Assembles the model.
    pub fn new(
        trunk: Trunk,
        head: Option<ScalarHead>,
        aux_heads: Vec<Option<ScalarHead>>,
        padding: Option<Padding>,
    ) -> Self {
        Self {
            trunk,
            head,
            aux_heads,
            padding,
        }
    }

    /// `[B, C, H, W]` (plus optional extra encoder inputs) -> `[B, K]`, then one per
    /// auxiliary head.
    pub fn forward_t(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = EncoderInputs::new(xs, self.padding.as_ref(), "ScalarOutputModel")?;
        let features = self.trunk.features(&inputs.tensors, inputs.padded_size)?;
        self.heads(&features, train)
    }

    /// The same for named inputs (TerraTorch's dict by modality), each padded.
    pub fn forward_named_t(&self, xs: &[(String, Tensor)], train: bool) -> Result<Vec<Tensor>> {
        let inputs = NamedEncoderInputs::new(xs, self.padding.as_ref())?;
        let features = self
            .trunk
            .features_named(&inputs.tensors, inputs.padded_size)?;
        self.heads(&features, train)
    }

    fn heads(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let run = |decoder, head: &Option<ScalarHead>| -> Result<Tensor> {
            let decoded = Trunk::decode(decoder, features)?;
            match head {
                Some(h) => h.forward_t(&decoded, train),
                None => Ok(decoded),
            }
        };
        let mut out = vec![run(self.trunk.decoder(), &self.head)?];
        for ((_, decoder), head) in self.trunk.aux_decoders().zip(&self.aux_heads) {
            out.push(run(decoder, head)?);
        }
        Ok(out)
    }
}

impl Model for ScalarOutputModel {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.forward_t(xs, train)
    }

    fn forward_named(
        &self,
        xs: &[(String, Tensor)],
        _kwargs: &Map<String, Value>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        self.forward_named_t(xs, train)
    }

    fn meta(&self) -> Map<String, Value> {
        self.trunk.meta()
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
