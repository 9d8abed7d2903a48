//! The parts a TerraTorch task model gets from the host (encoder, necks, decoder and
//! auxiliary decoders, each possibly from another plugin) and the way features flow
//! through them. Mirrors the shared parts of `terratorch/models/pixel_wise_model.py`
//! and `scalar_output_model.py`.

use super::utils::{image_size, Padding};
use serde_json::{json, Map, Value};
use tch::Tensor;
use terrahost_plugin_api::{sdk::DynModule, PluginError, Result};

/// Encoder, necks, decoder and auxiliary decoders. Their `state_dict` prefixes are
/// `encoder`, `neck.{i}` (upstream keeps necks in one `NeckSequential`), `decoder`,
/// and `aux_heads.{name}.0` (upstream wraps each auxiliary decoder and its head in an
/// `nn.Sequential`).
pub struct Trunk {
    /// encoder, necks..., decoder, aux decoders..., with their prefixes.
    parts: Vec<(String, DynModule)>,
    n_necks: usize,
    aux_names: Vec<String>,
}

impl Trunk {
    /// Assembles the trunk. `aux` holds the auxiliary decoders by name, in order.
    pub fn new(
        encoder: DynModule,
        necks: Vec<DynModule>,
        decoder: DynModule,
        aux: Vec<(String, DynModule)>,
    ) -> Self {
        let n_necks = necks.len();
        let mut parts = vec![("encoder".to_owned(), encoder)];
        parts.extend(
            necks
                .into_iter()
                .enumerate()
                .map(|(i, n)| (format!("neck.{i}"), n)),
        );
        parts.push(("decoder".to_owned(), decoder));
        let aux_names = aux.iter().map(|(n, _)| n.clone()).collect();
        parts.extend(
            aux.into_iter()
                .map(|(name, d)| (format!("aux_heads.{name}.0"), d)),
        );
        Self {
            parts,
            n_necks,
            aux_names,
        }
    }

    /// The encoder.
    pub fn encoder(&self) -> &DynModule {
        &self.parts[0].1
    }

    /// The necks, in order.
    pub fn necks(&self) -> impl Iterator<Item = &DynModule> {
        self.parts[1..1 + self.n_necks].iter().map(|(_, m)| m)
    }

    /// The decoder.
    pub fn decoder(&self) -> &DynModule {
        &self.parts[1 + self.n_necks].1
    }

    /// The auxiliary decoders with their names, in order.
    pub fn aux_decoders(&self) -> impl Iterator<Item = (&str, &DynModule)> {
        self.aux_names
            .iter()
            .map(String::as_str)
            .zip(self.parts[2 + self.n_necks..].iter().map(|(_, m)| m))
    }

    /// The names of the model's outputs: `output`, then `aux_{name}` per auxiliary head.
    pub fn output_names(&self) -> Vec<String> {
        std::iter::once("output".to_owned())
            .chain(self.aux_names.iter().map(|n| format!("aux_{n}")))
            .collect()
    }

    /// The task model's `meta`: its `output_names`, and the encoder's `input_names`
    /// (the modalities a multimodal backbone takes by name) when it has them.
    pub fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("output_names".into(), json!(self.output_names()));
        if let Some(names) = self.encoder().meta().get("input_names") {
            m.insert("input_names".into(), names.clone());
        }
        m
    }

    /// Every part with its `state_dict` prefix (for `Model::children`).
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

    /// The features the decoders see: the encoder's outputs for `xs` (the image, then
    /// any extra encoder inputs such as temporal and location coordinates) passed
    /// through the necks, which also get the (padded) `image_size`. Without necks, a
    /// backbone's own `prepare_features_for_image_model` is applied if it has one, as
    /// upstream does for backwards compatibility.
    pub fn features(&self, xs: &[Tensor], image_size: [i64; 2]) -> Result<Vec<Tensor>> {
        let features = self.encoder().forward(xs)?;
        self.through_necks(features, image_size)
    }

    /// [`Trunk::features`] for named inputs (TerraTorch's dict of tensors by modality),
    /// which go to the encoder by name.
    pub fn features_named(
        &self,
        xs: &[(String, Tensor)],
        image_size: [i64; 2],
    ) -> Result<Vec<Tensor>> {
        let features = self.encoder().forward_named(xs, &Map::new())?;
        self.through_necks(features, image_size)
    }

    fn through_necks(
        &self,
        mut features: Vec<Tensor>,
        image_size: [i64; 2],
    ) -> Result<Vec<Tensor>> {
        if self.n_necks == 0 {
            if let Some(prepared) = self.encoder().prepare_features(&features)? {
                features = prepared;
            }
            return Ok(features);
        }
        let mut kwargs = Map::new();
        kwargs.insert("image_size".into(), json!(image_size));
        for neck in self.necks() {
            features = neck.forward_kw(&features, &kwargs)?;
        }
        Ok(features)
    }

    /// Runs one decoder on the features; a task model needs exactly one tensor back.
    pub fn decode(decoder: &DynModule, features: &[Tensor]) -> Result<Tensor> {
        let mut out = decoder.forward(features)?;
        if out.len() != 1 {
            return Err(PluginError::forward_failed(format!(
                "decoder `{}` returned {} tensors; a task model needs exactly one",
                decoder.label(),
                out.len()
            )));
        }
        Ok(out.remove(0))
    }
}

/// A task model's named inputs (by modality) made ready for the encoder.
pub struct NamedEncoderInputs {
    /// Every input padded as upstream's `pad_images` pads a dict (tensors of fewer than
    /// 4 dims pass unchanged), in the caller's order.
    pub tensors: Vec<(String, Tensor)>,
    /// upstream's `get_image_size` of the inputs before padding.
    pub image_size: [i64; 2],
    /// The same after padding.
    pub padded_size: [i64; 2],
}

/// `get_image_size` of a dict: the `[H, W]` of the 4-D and 5-D tensors; when they
/// differ, the largest by area (the first of equal ones, as Python's stable sort).
pub fn named_image_size(xs: &[(String, Tensor)]) -> Result<[i64; 2]> {
    let mut best: Option<[i64; 2]> = None;
    for (_, t) in xs {
        if matches!(t.dim(), 4 | 5) {
            let s = image_size(t)?;
            if best.is_none_or(|b| s[0] * s[1] > b[0] * b[1]) {
                best = Some(s);
            }
        }
    }
    best.ok_or_else(|| {
        PluginError::forward_failed(format!(
            "No image modality among inputs {:?}. TerraTorch expects image inputs in shapes: [B, C, H, W] or \
             [B, C, T, H, W]",
            xs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
        ))
    })
}

impl NamedEncoderInputs {
    /// Pads every input when the model has a `padding`.
    pub fn new(xs: &[(String, Tensor)], padding: Option<&Padding>) -> Result<Self> {
        let unpadded = named_image_size(xs)?;
        let tensors = xs
            .iter()
            .map(|(n, t)| {
                let t = match padding {
                    Some(p) => p.apply(t)?,
                    None => t.shallow_clone(),
                };
                Ok((n.clone(), t))
            })
            .collect::<Result<Vec<_>>>()?;
        let padded_size = named_image_size(&tensors)?;
        Ok(Self {
            tensors,
            image_size: unpadded,
            padded_size,
        })
    }
}

/// A task model's inputs made ready for the encoder.
pub struct EncoderInputs {
    /// The image, padded, then the extra encoder inputs (temporal and location
    /// coordinates) as they came.
    pub tensors: Vec<Tensor>,
    /// The image's `[H, W]` before padding (what per-pixel outputs are cropped to).
    pub image_size: [i64; 2],
    /// The `[H, W]` after padding (what the necks get and outputs are resized to).
    pub padded_size: [i64; 2],
}

impl EncoderInputs {
    /// Splits `xs` into the image and at most two extra inputs, and pads the image as
    /// upstream's `pad_images` does when the model has a `padding`. `model` names the
    /// task model in the error.
    pub fn new(xs: &[Tensor], padding: Option<&Padding>, model: &str) -> Result<Self> {
        let (x, extra) = match xs {
            [x, rest @ ..] if rest.len() <= 2 => (x, rest),
            _ => {
                return Err(PluginError::forward_failed(format!(
                    "a {model} takes the image, optionally followed by temporal_coords and location_coords; got {} tensors",
                    xs.len()
                )))
            }
        };
        let unpadded = image_size(x)?;
        let x = match padding {
            Some(p) => p.apply(x)?,
            None => x.shallow_clone(),
        };
        let padded_size = image_size(&x)?;
        let mut tensors = vec![x];
        tensors.extend(extra.iter().map(Tensor::shallow_clone));
        Ok(Self {
            tensors,
            image_size: unpadded,
            padded_size,
        })
    }
}
