//! TerraTorch's `SMPDecoderWrapper` from `terratorch/registry/smp_registry.py`.
//!
//! `SMPRegistry.build` creates a whole smp model around a dummy encoder, keeps only
//! `model.decoder` as the attribute `_smp_decoder`, and records the input channels
//! of the segmentation head smp made as `out_channels`. The segmentation head and
//! any auxiliary classification head are discarded, so neither is ported.
use tch::{nn, Tensor};
use terrahost_plugin_api::{sdk::Model, Result};

/// The attribute under which TerraTorch keeps the smp decoder: every parameter
/// name starts with `_smp_decoder.`.
pub const DECODER_ATTR: &str = "_smp_decoder";

/// An smp decoder as TerraTorch hands it out: forward delegates to the decoder and
/// `out_channels` is what the next (TerraTorch) head must accept.
#[derive(Debug)]
pub struct SmpDecoderWrapper<D> {
    decoder: D,
    out_channels: i64,
}

impl<D: Model> SmpDecoderWrapper<D> {
    /// Builds the decoder with `build` under `root / "_smp_decoder"` and wraps it.
    /// `out_channels` is the input width of smp's segmentation head for this decoder.
    pub fn new(root: nn::Path, out_channels: i64, build: impl FnOnce(nn::Path) -> Result<D>) -> Result<Self> {
        let decoder = build(&root / DECODER_ATTR)?;
        Ok(Self { decoder, out_channels })
    }

    /// The wrapped decoder.
    pub fn decoder(&self) -> &D {
        &self.decoder
    }
}

impl<D: Model> Model for SmpDecoderWrapper<D> {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.decoder.forward(xs, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.out_channels]
    }
}
