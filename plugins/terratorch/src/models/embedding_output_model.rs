//! TerraTorch's model for `task="embedding_generation"`: the encoder and the necks,
//! whose features are the output. Mirrors `terratorch/models/embedding_output_model.py`.

use super::trunk::{EncoderInputs, NamedEncoderInputs};
use super::utils::Padding;
use serde_json::{Map, Value};
use tch::Tensor;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    Result,
};

/// Encoder and necks; every feature the last neck returns is an output.
pub struct EmbeddingOutputModel {
    /// `encoder`, then `neck.{i}`.
    parts: Vec<(String, DynModule)>,
    padding: Option<Padding>,
}

impl EmbeddingOutputModel {
    /// Assembles the model.
    pub fn new(encoder: DynModule, necks: Vec<DynModule>, padding: Option<Padding>) -> Self {
        let mut parts = vec![("encoder".to_owned(), encoder)];
        parts.extend(
            necks
                .into_iter()
                .enumerate()
                .map(|(i, n)| (format!("neck.{i}"), n)),
        );
        Self { parts, padding }
    }
}

impl Model for EmbeddingOutputModel {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let inputs = EncoderInputs::new(xs, self.padding.as_ref(), "EmbeddingOutputModel")?;
        let features = self.parts[0].1.forward(&inputs.tensors)?;
        self.necks(features)
    }

    fn forward_named(
        &self,
        xs: &[(String, Tensor)],
        _kwargs: &Map<String, Value>,
        _train: bool,
    ) -> Result<Vec<Tensor>> {
        let inputs = NamedEncoderInputs::new(xs, self.padding.as_ref())?;
        let features = self.parts[0]
            .1
            .forward_named(&inputs.tensors, &Map::new())?;
        self.necks(features)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.parts
            .last()
            .map(|(_, m)| m.out_channels())
            .unwrap_or_default()
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(names) = self.parts[0].1.meta().get("input_names") {
            m.insert("input_names".into(), names.clone());
        }
        m
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        self.parts.iter().map(|(p, m)| (p.as_str(), m)).collect()
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        self.parts
            .iter_mut()
            .map(|(p, m)| (p.as_str(), m))
            .collect()
    }
}

impl EmbeddingOutputModel {
    fn necks(&self, mut features: Vec<Tensor>) -> Result<Vec<Tensor>> {
        // Upstream calls the necks without image_size here (and applies no
        // prepare_features_for_image_model when there are none).
        for (_, neck) in &self.parts[1..] {
            features = neck.forward(&features)?;
        }
        Ok(features)
    }
}
