//! Mirrors the checkpoint handling of TerraTorch 1.2.11 for Prithvi:
//! `checkpoint_filter_fn_vit` / `checkpoint_filter_fn_mae`
//! (`terratorch/models/backbones/prithvi_vit.py`), `select_patch_embed_weights` and its
//! helpers (`terratorch/models/backbones/select_patch_embed_weights.py`), the band
//! conversions of `_create_prithvi` (`HLSBands.try_convert_to_hls_bands_enum`,
//! `terratorch/datasets/utils.py`), and `load_state_dict(strict=False)`.
use serde_json::Value;
use std::collections::HashMap;
use tch::{nn, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// The HLS band names (`HLSBands`).
pub const HLS_BANDS: [&str; 15] = [
    "COASTAL_AEROSOL",
    "BLUE",
    "GREEN",
    "RED",
    "RED_EDGE_1",
    "RED_EDGE_2",
    "RED_EDGE_3",
    "NIR_BROAD",
    "NIR_NARROW",
    "SWIR_1",
    "SWIR_2",
    "WATER_VAPOR",
    "CIRRUS",
    "THERMAL_INFRARED_1",
    "THERMAL_INFRARED_2",
];

/// The bands the Prithvi checkpoints were trained on (`PRETRAINED_BANDS`).
pub const PRETRAINED_BANDS: [&str; 6] = ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"];

/// One band as TerraTorch compares them: an `HLSBands` member, a plain string, or an
/// index. An `HLSBands` member never equals the string of its name (Python `Enum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Band {
    /// An `HLSBands` member.
    Hls(String),
    /// A string that was not converted to `HLSBands`.
    Name(String),
    /// A band index.
    Index(i64),
}

impl Band {
    /// How the band prints (`HLSBands.RED`, `'VV'`, `3`).
    pub fn display(&self) -> String {
        match self {
            Band::Hls(s) => format!("HLSBands.{s}"),
            Band::Name(s) => format!("'{s}'"),
            Band::Index(i) => i.to_string(),
        }
    }

    /// The band as JSON (names as strings).
    pub fn to_json(&self) -> Value {
        match self {
            Band::Hls(s) | Band::Name(s) => Value::String(s.clone()),
            Band::Index(i) => Value::from(*i),
        }
    }
}

/// The default `PRETRAINED_BANDS`, as `HLSBands` members.
pub fn default_pretrained_bands() -> Vec<Band> {
    PRETRAINED_BANDS
        .iter()
        .map(|s| Band::Hls((*s).to_owned()))
        .collect()
}

/// Parses a band list from JSON. `convert` applies `try_convert_to_hls_bands_enum`
/// (done for the model's `bands`, not for `pretrained_bands`, as upstream).
pub fn parse_bands(v: &Value, arg: &str, convert: bool) -> Result<Vec<Band>> {
    let items = v.as_array().ok_or_else(|| {
        PluginError::invalid_argument(format!(
            "`{arg}` must be a list of band names (strings) or indices (ints)"
        ))
    })?;
    items
        .iter()
        .map(|b| match b {
            Value::String(s) if convert && HLS_BANDS.contains(&s.as_str()) => {
                Ok(Band::Hls(s.clone()))
            }
            Value::String(s) => Ok(Band::Name(s.clone())),
            Value::Number(n) if n.is_i64() => Ok(Band::Index(n.as_i64().unwrap_or_default())),
            other => Err(PluginError::invalid_argument(format!(
                "`{arg}` entries must be band names (strings) or indices (ints), got {other}"
            ))),
        })
        .collect()
}

/// An insertion-ordered state_dict where a repeated key overwrites in place (a Python
/// dict).
#[derive(Default)]
pub struct StateDict {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    /// From `(key, tensor)` pairs in order.
    pub fn from_pairs(pairs: Vec<(String, Tensor)>) -> Self {
        let mut sd = Self::default();
        for (k, v) in pairs {
            sd.insert(k, v);
        }
        sd
    }

    /// Sets `key`, keeping its position when it exists.
    pub fn insert(&mut self, key: String, v: Tensor) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = v,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, v));
            }
        }
    }

    /// The tensor at `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The pairs in order.
    pub fn into_pairs(self) -> Vec<(String, Tensor)> {
        self.entries
    }
}

/// The model's own tensors by state_dict key (the VarStore's variables).
pub type ModelVars = HashMap<String, Tensor>;

/// What the filters need to know about the model.
pub struct FilterInfo {
    /// Whether the model has a temporal encoder.
    pub temporal_encoding: bool,
    /// Whether the model has a location encoder.
    pub location_encoding: bool,
}

impl FilterInfo {
    /// Whether `key` belongs to a coordinate encoder the model does not have (both filters
    /// drop those).
    fn lacks_encoder_of(&self, key: &str) -> bool {
        (!self.temporal_encoding && key.contains("temporal_embed"))
            || (!self.location_encoding && key.contains("location_embed"))
    }
}

/// Whether a (V1-style) checkpoint key belongs to the MAE decoder, as both filters
/// tell: `decoder` or `_dec` in the name, or the mask token.
fn is_decoder_key(k: &str) -> bool {
    k.contains("decoder") || k.contains("_dec") || k == "mask_token"
}

/// `checkpoint_filter_fn_vit` up to (not including) `select_patch_embed_weights`:
/// turns an MAE (or V1) checkpoint into the encoder's keys.
pub fn filter_vit(sd: Vec<(String, Tensor)>, vars: &ModelVars, info: &FilterInfo) -> StateDict {
    let mut clean = StateDict::default();
    for (k, mut v) in sd {
        let k = k.replace("_timm_module.", "");
        if k.contains("pos_embed") {
            // the position embedding is fixed and depends on the model's grid
            if let Some(own) = vars.get("pos_embed") {
                v = own.shallow_clone();
            }
        }
        if is_decoder_key(&k) {
            continue;
        }
        if info.lacks_encoder_of(&k) {
            continue;
        }
        if k.starts_with("encoder.") {
            clean.insert(k.replace("encoder.", ""), v);
        } else {
            clean.insert(k, v);
        }
    }
    let mut vpt: Vec<(&String, &Tensor)> = vars
        .iter()
        .filter(|(k, _)| k.contains("vpt_prompt_embeddings"))
        .collect();
    vpt.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in vpt {
        clean.insert(k.clone(), v.shallow_clone());
    }
    clean
}

/// `checkpoint_filter_fn_mae` up to `select_patch_embed_weights`: puts V1-style keys
/// under `encoder.` / `decoder.`.
pub fn filter_mae(sd: Vec<(String, Tensor)>, vars: &ModelVars, info: &FilterInfo) -> StateDict {
    let mut clean = StateDict::default();
    for (k, mut v) in sd {
        let k = k.replace("_timm_module.", "");
        if k.contains("decoder_pos_embed") {
            if let Some(own) = vars.get("decoder.decoder_pos_embed") {
                v = own.shallow_clone();
            }
        } else if k.contains("pos_embed") {
            if let Some(own) = vars.get("encoder.pos_embed") {
                v = own.shallow_clone();
            }
        }
        if info.lacks_encoder_of(&k) {
            continue;
        }
        if k.starts_with("encoder.") || k.starts_with("decoder.") {
            clean.insert(k, v);
        } else if is_decoder_key(&k) {
            clean.insert(format!("decoder.{k}"), v);
        } else {
            clean.insert(format!("encoder.{k}"), v);
        }
    }
    clean
}

const PROJ_SUFFIXES: [&str; 2] = ["patch_embed.proj.weight", "patch_embed.projection.weight"];

/// `get_common_prefix`: the dotted components every key but the last shares.
fn common_prefix<'a>(keys: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut keys: Vec<&str> = keys.collect();
    keys.pop();
    let mut sets = keys
        .iter()
        .map(|k| k.split('.').collect::<std::collections::BTreeSet<_>>());
    let first = sets.next()?;
    let common = sets.fold(first, |acc, s| acc.intersection(&s).copied().collect());
    match common.len() {
        0 => None,
        1 => common.into_iter().next().map(|p| format!("{p}.")),
        // upstream joins a Python set here (arbitrary order); sorted is as good
        _ => Some(common.into_iter().collect::<Vec<_>>().join(".")),
    }
}

/// `select_patch_embed_weights`: rebuilds the patch-embedding weight for the model's
/// bands. Columns of bands found in `pretrained_bands` are copied from the checkpoint;
/// the others keep a fresh Xavier-uniform initialisation. A checkpoint whose weight
/// differs in other than the channel dimension keeps the model's weight (with a warning).
pub fn select_patch_embed_weights(
    mut sd: StateDict,
    vars: &ModelVars,
    pretrained_bands: &[Band],
    model_bands: &[Band],
    encoder_only: bool,
) -> Result<StateDict> {
    let proj_key = sd
        .keys()
        .find(|k| PROJ_SUFFIXES.iter().any(|s| k.ends_with(s)))
        .map(str::to_owned)
        .ok_or_else(|| {
            PluginError::invalid_argument(
                "could not find the patch embedding weight (`patch_embed.proj.weight`) in the checkpoint",
            )
        })?;
    let prefix = if encoder_only {
        PROJ_SUFFIXES
            .iter()
            .find(|s| proj_key.ends_with(*s))
            .map(|s| proj_key.replace(s, ""))
    } else {
        common_prefix(sd.keys())
    };
    let ckpt_w = sd
        .get(&proj_key)
        .map(Tensor::shallow_clone)
        .unwrap_or_else(|| Tensor::zeros([0], tch::kind::FLOAT_CPU));
    let mut model_keys: Vec<&String> = vars
        .keys()
        .filter(|k| PROJ_SUFFIXES.iter().any(|s| k.ends_with(s)))
        .collect();
    model_keys.sort();
    let model_key = model_keys
        .first()
        .map(|k| k.as_str())
        .unwrap_or(proj_key.as_str());
    let own = vars.get(model_key).ok_or_else(|| {
        PluginError::invalid_argument(format!(
            "the model has no patch embedding weight `{model_key}`"
        ))
    })?;
    let temp = tch::no_grad(|| own.detach().copy());
    let (ms, cs) = (temp.size(), ckpt_w.size());
    let compatible =
        ms.len() == cs.len() && (0..ms.len()).filter(|&i| i != 1).all(|i| ms[i] == cs[i]);
    if compatible {
        tch::no_grad(|| {
            let out = ms[0];
            let fan_in: i64 = ms[1..].iter().product();
            let bound = (6.0 / (fan_in + out) as f64).sqrt();
            let _ = temp.shallow_clone().uniform_(-bound, bound);
            let mut matched = 0;
            for (index, band) in model_bands.iter().enumerate() {
                if let Some(src) = pretrained_bands.iter().position(|b| b == band) {
                    if (src as i64) < cs[1] && (index as i64) < ms[1] {
                        temp.select(1, index as i64)
                            .copy_(&ckpt_w.select(1, src as i64).to_kind(temp.kind()));
                        matched += 1;
                    }
                }
            }
            if matched == 0 {
                terrahost_plugin_api::warn!(
                    "no band of {:?} is among the pretrained bands {:?}: the patch embedding keeps a random \
                     initialisation (note that band names given in `pretrained_bands` stay strings and do not \
                     match HLS band names, as in TerraTorch)",
                    model_bands.iter().map(Band::display).collect::<Vec<_>>(),
                    pretrained_bands.iter().map(Band::display).collect::<Vec<_>>()
                );
            }
        });
    } else {
        terrahost_plugin_api::warn!(
            "incompatible shapes between the patch embedding of the model {ms:?} and of the checkpoint {cs:?}; \
             keeping the model's weights"
        );
    }
    sd.insert(proj_key, temp);
    match prefix {
        Some(p) if !p.is_empty() => Ok(StateDict::from_pairs(
            sd.into_pairs()
                .into_iter()
                .map(|(k, v)| (k.replace(&p, ""), v))
                .collect(),
        )),
        _ => Ok(sd),
    }
}

/// `model.load_state_dict(sd, strict=False)`: copies every key the model has (a shape
/// mismatch is an error, as in PyTorch) and logs missing and unexpected keys. Returns
/// `(missing, unexpected)`.
pub fn load_non_strict(
    vs: &mut nn::VarStore,
    sd: StateDict,
    source: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let vars = vs.variables();
    let mut unexpected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut mismatched = Vec::new();
    for (k, v) in sd.into_pairs() {
        match vars.get(&k) {
            Some(dst) => {
                if dst.size() != v.size() {
                    mismatched.push(format!(
                        "`{k}`: checkpoint {:?}, model {:?}",
                        v.size(),
                        dst.size()
                    ));
                    continue;
                }
                tch::no_grad(|| {
                    dst.shallow_clone()
                        .copy_(&v.to_kind(dst.kind()).to_device(dst.device()))
                });
                seen.insert(k);
            }
            None => unexpected.push(k),
        }
    }
    if !mismatched.is_empty() {
        return Err(PluginError::invalid_argument(format!(
            "checkpoint {source} does not fit the model: size mismatch for {}",
            mismatched.join(", ")
        )));
    }
    let mut missing: Vec<String> = vars
        .keys()
        .filter(|k| !seen.contains(*k))
        .cloned()
        .collect();
    missing.sort();
    if !missing.is_empty() {
        terrahost_plugin_api::warn!("missing keys in checkpoint {source}: {missing:?}");
    }
    if !unexpected.is_empty() {
        terrahost_plugin_api::warn!("unexpected keys in checkpoint {source}: {unexpected:?}");
    }
    Ok((missing, unexpected))
}
