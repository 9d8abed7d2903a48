//! TerraTorch's model for per-pixel tasks (segmentation, pixel-wise regression):
//! encoder -> neck(s) -> decoder -> head, then resized back to the input size.
//! Mirrors `terratorch/models/pixel_wise_model.py`.

use super::heads::{RegressionHead, SegmentationHead};
use super::trunk::{EncoderInputs, NamedEncoderInputs, Trunk};
use super::utils::{center_crop, image_size, Padding};
use serde_json::{Map, Value};
use tch::Tensor;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    Result,
};

/// The head of a pixel-wise model.
#[derive(Debug)]
pub enum PixelHead {
    /// For `task="segmentation"`.
    Segmentation(SegmentationHead),
    /// For `task="regression"`.
    Regression(RegressionHead),
}

impl PixelHead {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Segmentation(h) => h.forward_t(x, train),
            Self::Regression(h) => h.forward_t(x, train),
        }
    }

    fn out_channels(&self) -> i64 {
        match self {
            Self::Segmentation(h) => h.num_classes(),
            Self::Regression(h) => h.num_outputs(),
        }
    }
}

/// Options of [`PixelWiseModel`] besides its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelWiseOptions {
    /// Resize the prediction (bilinear) to the (padded) input size when they differ.
    pub rescale: bool,
    /// Output size `[H, W]`; by default the input size before padding.
    pub image_size_out: Option<[i64; 2]>,
    /// Input padding, when the backbone has a patch size.
    pub padding: Option<Padding>,
}

/// Encoder, necks, decoder and head for per-pixel predictions, plus auxiliary
/// decoders with their heads. Its own parameters are the heads' (`head.head.*`,
/// `aux_heads.{name}.1.head.*`); the rest belong to the [`Trunk`] children.
pub struct PixelWiseModel {
    trunk: Trunk,
    /// `None` when the decoder already includes a head.
    head: Option<PixelHead>,
    /// One per auxiliary decoder, in the trunk's order; `None` when it includes a head.
    aux_heads: Vec<Option<PixelHead>>,
    options: PixelWiseOptions,
}

impl PixelWiseModel {
    /// Assembles the model; a head is `None` when its decoder makes the prediction itself.
    pub fn new(
        trunk: Trunk,
        head: Option<PixelHead>,
        aux_heads: Vec<Option<PixelHead>>,
        options: PixelWiseOptions,
    ) -> Self {
        Self {
            trunk,
            head,
            aux_heads,
            options,
        }
    }

    /// The head's prediction resized to the (padded) input size, squeezed when it has
    /// one channel and cropped to the output size.
    fn finish(&self, mask: Tensor, input_size: [i64; 2], size_out: [i64; 2]) -> Result<Tensor> {
        let mut mask = mask;
        if self.options.rescale && image_size(&mask)? != input_size {
            // F.interpolate(mode="bilinear") with align_corners left unset (= False)
            mask = mask.f_upsample_bilinear2d(input_size, false, None, None)?;
        }
        if mask.dim() >= 2 && mask.size()[1] == 1 {
            mask = mask.f_squeeze_dim(1)?;
        }
        center_crop(&mask, size_out)
    }

    /// `[B, C, H, W]` (plus optional extra encoder inputs) -> the prediction
    /// `[B, K, H, W]` (`[B, H, W]` when `K` is 1), then one per auxiliary head.
    pub fn forward_t(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = EncoderInputs::new(xs, self.options.padding.as_ref(), "PixelWiseModel")?;
        let size_out = self.options.image_size_out.unwrap_or(inputs.image_size);
        let input_size = inputs.padded_size;
        let features = self.trunk.features(&inputs.tensors, input_size)?;
        self.decode_all(&features, input_size, size_out, train)
    }

    /// The same for named inputs (TerraTorch's dict by modality): each is padded, the
    /// sizes are upstream's `get_image_size` of the dict.
    pub fn forward_named_t(&self, xs: &[(String, Tensor)], train: bool) -> Result<Vec<Tensor>> {
        let inputs = NamedEncoderInputs::new(xs, self.options.padding.as_ref())?;
        let size_out = self.options.image_size_out.unwrap_or(inputs.image_size);
        let input_size = inputs.padded_size;
        let features = self.trunk.features_named(&inputs.tensors, input_size)?;
        self.decode_all(&features, input_size, size_out, train)
    }

    fn decode_all(
        &self,
        features: &[Tensor],
        input_size: [i64; 2],
        size_out: [i64; 2],
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let decoded = Trunk::decode(self.trunk.decoder(), features)?;
        let mask = match &self.head {
            Some(h) => h.forward_t(&decoded, train)?,
            None => decoded,
        };
        let mut out = vec![self.finish(mask, input_size, size_out)?];
        for ((_, decoder), head) in self.trunk.aux_decoders().zip(&self.aux_heads) {
            let decoded = Trunk::decode(decoder, features)?;
            let aux = match head {
                Some(h) => h.forward_t(&decoded, train)?,
                None => decoded,
            };
            out.push(self.finish(aux, input_size, size_out)?);
        }
        Ok(out)
    }
}

impl Model for PixelWiseModel {
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
            Some(h) => vec![h.out_channels()],
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
