//! TerraTorch's model for per-pixel tasks (segmentation, pixel-wise regression):
//! encoder -> neck(s) -> decoder -> head, then resized back to the input size.
//! Mirrors `terratorch/models/pixel_wise_model.py`.

use super::heads::{RegressionHead, SegmentationHead};
use super::utils::{center_crop, image_size, pad_images, PatchSize};
use tch::Tensor;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    PluginError, Result,
};

/// How inputs are padded before the encoder: to multiples of twice `patch` with `mode`.
#[derive(Clone, Debug, PartialEq)]
pub struct Padding {
    /// The backbone's patch size.
    pub patch: PatchSize,
    /// A `torch.nn.functional.pad` mode (`reflect` by default upstream).
    pub mode: String,
}

impl Padding {
    /// Pads `x` (see [`pad_images`]).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        pad_images(x, &self.patch, &self.mode)
    }
}

/// The parts a task model gets from the host: encoder, optional necks and decoder,
/// each a module that may come from another plugin. Their `state_dict` prefixes are
/// `encoder`, `neck.{i}` (upstream keeps necks in one `NeckSequential`) and `decoder`.
pub struct Trunk {
    parts: Vec<(String, DynModule)>,
}

impl Trunk {
    /// Assembles the trunk.
    pub fn new(encoder: DynModule, necks: Vec<DynModule>, decoder: DynModule) -> Self {
        let mut parts = vec![("encoder".to_owned(), encoder)];
        parts.extend(necks.into_iter().enumerate().map(|(i, n)| (format!("neck.{i}"), n)));
        parts.push(("decoder".to_owned(), decoder));
        Self { parts }
    }

    /// The encoder.
    pub fn encoder(&self) -> &DynModule {
        &self.parts[0].1
    }

    /// The necks, in order.
    pub fn necks(&self) -> impl Iterator<Item = &DynModule> {
        self.parts[1..self.parts.len() - 1].iter().map(|(_, m)| m)
    }

    /// The decoder.
    pub fn decoder(&self) -> &DynModule {
        &self.parts[self.parts.len() - 1].1
    }

    /// Every part with its `state_dict` prefix (for [`Model::children`]).
    pub fn children(&self) -> Vec<(&str, &DynModule)> {
        self.parts.iter().map(|(p, m)| (p.as_str(), m)).collect()
    }

    /// The same, mutably.
    pub fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        self.parts.iter_mut().map(|(p, m)| (p.as_str(), m)).collect()
    }

    /// encoder -> necks -> decoder; the decoder must return one tensor.
    pub fn decode(&self, x: &Tensor) -> Result<Tensor> {
        let mut features = self.encoder().forward(std::slice::from_ref(x))?;
        for neck in self.necks() {
            features = neck.forward(&features)?;
        }
        let mut out = self.decoder().forward(&features)?;
        if out.len() != 1 {
            return Err(PluginError::forward_failed(format!(
                "decoder `{}` returned {} tensors; a task model needs exactly one",
                self.decoder().label(),
                out.len()
            )));
        }
        Ok(out.remove(0))
    }
}

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

/// Encoder, necks, decoder and head for per-pixel predictions. Its own parameters are
/// the head's (`head.head.*`); the rest belong to the [`Trunk`] children.
pub struct PixelWiseModel {
    trunk: Trunk,
    /// `None` when the decoder already includes a head.
    head: Option<PixelHead>,
    options: PixelWiseOptions,
}

impl PixelWiseModel {
    /// Assembles the model; `head` is `None` when the decoder makes the prediction itself.
    pub fn new(trunk: Trunk, head: Option<PixelHead>, options: PixelWiseOptions) -> Self {
        Self { trunk, head, options }
    }

    /// `[B, C, H, W] -> [B, K, H, W]`, or `[B, H, W]` when `K` is 1.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size_out = match self.options.image_size_out {
            Some(s) => s,
            None => image_size(x)?,
        };
        let x = match &self.options.padding {
            Some(p) => p.apply(x)?,
            None => x.shallow_clone(),
        };
        let input_size = image_size(&x)?;
        let decoded = self.trunk.decode(&x)?;
        let mut mask = match &self.head {
            Some(h) => h.forward_t(&decoded, train)?,
            None => decoded,
        };
        if self.options.rescale && image_size(&mask)? != input_size {
            // F.interpolate(mode="bilinear") with align_corners left unset (= False)
            mask = mask.f_upsample_bilinear2d(input_size, false, None, None)?;
        }
        if mask.dim() >= 2 && mask.size()[1] == 1 {
            mask = mask.f_squeeze_dim(1)?;
        }
        center_crop(&mask, size_out)
    }
}

impl Model for PixelWiseModel {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => Ok(vec![self.forward_t(x, train)?]),
            _ => Err(PluginError::forward_failed(format!("a PixelWiseModel takes one image tensor, got {}", xs.len()))),
        }
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
