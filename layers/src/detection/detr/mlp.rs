//! DETR's box head, `MLP(input_dim, hidden_dim, output_dim, num_layers)`
//! (`terratorch/models/detr/detr.py`, the same class in `deformable_detr.py`): linear layers
//! `layers.{i}` with ReLU between them.
use tch::{nn, Tensor};
use terrahost_plugin_api::Result;

/// `MLP`: `num_layers` linear layers, ReLU after all but the last.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    /// The layers under `p / "layers" / i`.
    pub fn new(
        p: nn::Path,
        input_dim: i64,
        hidden_dim: i64,
        output_dim: i64,
        num_layers: usize,
    ) -> Self {
        let dims: Vec<i64> = std::iter::once(input_dim)
            .chain(std::iter::repeat(hidden_dim).take(num_layers.saturating_sub(1)))
            .chain(std::iter::once(output_dim))
            .collect();
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(&p / "layers" / i, w[0], w[1], Default::default()))
            .collect();
        Self { layers }
    }

    /// `[..., input_dim] -> [..., output_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = x.f_linear(&l.ws, l.bs.as_ref())?;
            if i + 1 < self.layers.len() {
                x = x.f_relu()?;
            }
        }
        Ok(x)
    }
}
