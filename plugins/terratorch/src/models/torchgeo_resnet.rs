//! Mirrors `terratorch/models/backbones/torchgeo_resnet.py` (TerraTorch 1.2.11): the
//! `ssl4eol_*`, `ssl4eos12_*`, `seco_*`, `fmow_*` and `satlas_resnet*` backbones, each
//! `ResNetEncoderWrapper(torchgeo resnet18/50/152(weights=None, in_chans=len(model_bands),
//! **kwargs))`, where torchgeo's builders are `timm.create_model("resnet18/50/152", ...)`
//! (`torchgeo/models/resnet.py`, timm's `timm/models/resnet.py`), and `load_resnet_weights`
//! with `select_patch_embed_weights` on `conv1.weight` for `pretrained=True`.
//!
//! The network is timm's full classifier model, the shared
//! [`terrahost_layers::resnet::ResNet`] with its `fc` (so TerraTorch's `resnet_model.*`
//! keys load unchanged); the wrapper runs `forward_intermediates` and keeps
//! the feature maps (stem, layer1..layer4) whose index is in `out_indices`, or the last one
//! for `-1`, in feature order. Other indices are ignored, as upstream.
use super::prithvi_checkpoint::{self as ckpt, StateDict};
use super::torchgeo_bands::{
    LANDSAT_ETM_SR, LANDSAT_ETM_TOA, LANDSAT_OLI_SR, LANDSAT_OLI_TIRS_TOA, LANDSAT_TM_TOA, S2_ALL,
};
use serde_json::{json, Value};
use tch::nn;
use tch::Tensor;
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_layers::resnet as net;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// torchgeo's band names mapped to TerraTorch's (`look_up_table` of both torchgeo files).
pub(crate) fn band_name(b: &str) -> Option<&'static str> {
    let b = b.rsplit('.').next().unwrap_or(b);
    Some(match b {
        "B01" | "B1" => "COASTAL_AEROSOL",
        "B02" | "B2" | "B" => "BLUE",
        "B03" | "B3" | "G" => "GREEN",
        "B04" | "B4" | "R" => "RED",
        "B05" | "B5" => "RED_EDGE_1",
        "B06" | "B6" => "RED_EDGE_2",
        "B07" | "B7" => "RED_EDGE_3",
        "B08" | "B8" => "NIR_BROAD",
        "B8A" | "B8a" => "NIR_NARROW",
        "B09" | "B9" => "WATER_VAPOR",
        "B10" => "CIRRUS",
        "B11" => "SWIR_1",
        "B12" => "SWIR_2",
        "VV" => "VV",
        "VH" => "VH",
        _ => return None,
    })
}

/// `get_pretrained_bands`: the checkpoint's band names in TerraTorch's vocabulary, or the
/// torchgeo band that TerraTorch 1.2.11 has no name for (it raises `KeyError` there).
pub(crate) fn pretrained_bands(raw: &[&str]) -> std::result::Result<Vec<String>, String> {
    raw.iter()
        .map(|b| {
            band_name(b)
                .map(str::to_owned)
                .ok_or_else(|| (*b).to_owned())
        })
        .collect()
}

/// The `model_bands` argument: a list (its length is `in_chans`), compared with the
/// checkpoint's band names as strings.
pub(crate) fn model_bands(ctx: &BuildCtx<'_, '_>) -> Result<Vec<String>> {
    let v = ctx.args.raw("model_bands").ok_or_else(|| {
        PluginError::invalid_argument(format!(
            "`{}` needs `model_bands`, the list of the input's bands (e.g. [\"RED\", \"GREEN\", \"BLUE\"])",
            ctx.qualified()
        ))
    })?;
    let items = v.as_array().ok_or_else(|| {
        PluginError::invalid_argument(format!(
            "`model_bands` of `{}` must be a list of band names, got {v}",
            ctx.qualified()
        ))
    })?;
    Ok(items
        .iter()
        .map(|b| match b {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect())
}

/// `in_chans` (a timm/torchvision keyword) when given, else `len(model_bands)`.
pub(crate) fn in_chans(ctx: &BuildCtx<'_, '_>, bands: &[String]) -> Result<i64> {
    let c: i64 = ctx.args.get_or("in_chans", bands.len() as i64)?;
    ctx.args.ensure(
        c >= 1,
        "in_chans",
        format!("must be at least 1 (or give a non-empty `model_bands`), got {c}"),
    )?;
    Ok(c)
}

/// The wrapper's `out_indices` (`None` or empty means `[-1]`).
pub(crate) fn out_indices(ctx: &BuildCtx<'_, '_>) -> Result<Vec<i64>> {
    let v: Option<Vec<i64>> = ctx.args.opt("out_indices")?;
    Ok(match v {
        Some(v) if !v.is_empty() => v,
        _ => vec![-1],
    })
}

/// Whether feature `i` of `n` is returned: `i in out_indices`, or the last one for `-1`.
pub(crate) fn keeps(out_indices: &[i64], i: usize, n: usize) -> bool {
    out_indices.contains(&(i as i64)) || (i + 1 == n && out_indices.contains(&-1))
}

/// Warns about the indices TerraTorch's wrapper silently ignores.
pub(crate) fn warn_unused_indices(name: &str, out_indices: &[i64], n: usize) {
    let unused: Vec<i64> = out_indices
        .iter()
        .copied()
        .filter(|&i| i != -1 && !(0..n as i64).contains(&i))
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            "`{name}`: out_indices {unused:?} name no feature (0..{}; -1 = the last) and are ignored, as in TerraTorch",
            n - 1
        );
    }
}

/// The local checkpoint of `pretrained=true` (`ckpt_data`); TerraTorch would otherwise
/// download torchgeo's weights, which terrahost never does.
pub(crate) fn checkpoint_file(ctx: &BuildCtx<'_, '_>) -> Result<Option<String>> {
    let pretrained: bool = ctx.args.get("pretrained")?;
    let file: Option<String> = ctx.args.opt("ckpt_data")?;
    if let Some(w) = ctx.args.raw("weights") {
        if pretrained {
            return Err(PluginError::invalid_argument(format!(
                "`{}`: `weights` ({w}) picks torchgeo weights to download, which terrahost never does; remove it: \
                 pretrained=true loads ckpt_data with the band set of the entry's own weights",
                ctx.qualified()
            )));
        }
        tracing::warn!(
            "`{}`: weights {w} is only read with pretrained=true; ignoring it (as TerraTorch does)",
            ctx.qualified()
        );
    }
    match (pretrained, file) {
        (false, Some(f)) => {
            tracing::warn!("`{}`: ckpt_data {f} is ignored because pretrained is false (as in TerraTorch)", ctx.qualified());
            Ok(None)
        }
        (false, None) => Ok(None),
        (true, Some(f)) if f.contains("https://") || f.contains("http://") => Err(PluginError::invalid_argument(format!(
            "`{}`: ckpt_data {f} is a URL; terrahost does not download checkpoints: download it and give the local path",
            ctx.qualified()
        ))),
        (true, Some(f)) => Ok(Some(f)),
        (true, None) => Err(PluginError::invalid_argument(format!(
            "`{}` with pretrained=true would download torchgeo's weights, and terrahost never downloads: give \
             ckpt_data=<local checkpoint file> (.pt/.pth/.safetensors), or build with pretrained=false",
            ctx.qualified()
        ))),
    }
}

/// `load_resnet_weights` / `load_swin_weights` with a local `ckpt_data`: the classifier
/// (`head_keys`) is dropped where its shape differs from the model's,
/// `select_patch_embed_weights(..., proj_key)` rebuilds the first convolution for
/// `model_bands` (columns of bands found among the checkpoint's bands are copied, the others
/// get a fresh Xavier-uniform draw), and `load_state_dict(strict=False)` follows. The
/// checkpoint's keys are the bare network's; `prefix` is where the wrapper holds it.
pub(crate) fn load_checkpoint(
    vs: &mut nn::VarStore,
    file: &str,
    prefix: &str,
    proj_key: &str,
    head_keys: &[&str],
    pretrained: &[String],
    model_bands: &[String],
) -> Result<()> {
    let sd = read_state_dict(std::path::Path::new(file))?;
    let vars = vs.variables();
    let mut kept = Vec::with_capacity(sd.len());
    for (k, v) in sd {
        let full = format!("{prefix}{k}");
        if head_keys.contains(&k.as_str()) && vars.get(&full).is_none_or(|t| t.size() != v.size()) {
            tracing::info!("removing key {k} from pretrained checkpoint");
            continue;
        }
        kept.push((full, v));
    }
    let mut sd = StateDict::from_pairs(kept);
    let full_proj = format!("{prefix}{proj_key}");
    let ckpt_w = sd
        .get(&full_proj)
        .map(Tensor::shallow_clone)
        .ok_or_else(|| {
            PluginError::invalid_argument(format!(
                "could not find key for patch embed weight in state_dict: checkpoint {file} has no `{proj_key}`"
            ))
        })?;
    let own = vars.get(&full_proj).ok_or_else(|| {
        PluginError::invalid_argument(format!("the model has no first convolution `{full_proj}`"))
    })?;
    let temp = tch::no_grad(|| own.detach().copy());
    let (ms, cs) = (temp.size(), ckpt_w.size());
    let compatible =
        ms.len() == cs.len() && (0..ms.len()).filter(|&i| i != 1).all(|i| ms[i] == cs[i]);
    if compatible {
        tch::no_grad(|| {
            let fan_in: i64 = ms[1..].iter().product();
            let bound = (6.0 / (fan_in + ms[0]) as f64).sqrt();
            let _ = temp.shallow_clone().uniform_(-bound, bound);
            for (index, band) in model_bands.iter().enumerate() {
                if let Some(src) = pretrained.iter().position(|b| b == band) {
                    if (src as i64) < cs[1] && (index as i64) < ms[1] {
                        temp.select(1, index as i64)
                            .copy_(&ckpt_w.select(1, src as i64).to_kind(temp.kind()));
                    }
                }
            }
        });
    } else {
        tracing::warn!(
            "incompatible shapes between the first convolution of the model {ms:?} and of the checkpoint {cs:?}; \
             keeping the model's weights"
        );
    }
    sd.insert(full_proj, temp);
    ckpt::load_non_strict(vs, sd, file)?;
    Ok(())
}

pub use terrahost_layers::resnet::BlockKind;

/// timm's ResNet with the keywords TerraTorch's torchgeo entries pass on to
/// `timm.create_model` that terrahost supports; the rest at timm's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Residual block type.
    pub block: BlockKind,
    /// Blocks per stage (timm's `layers`).
    pub layers: Vec<i64>,
    /// Input channels of `conv1`.
    pub in_chans: i64,
    /// Classifier outputs (`fc`); 0 removes the classifier.
    pub num_classes: i64,
    /// timm's `global_pool`: `catavgmax` doubles the classifier input.
    pub global_pool: String,
    /// Dropout before the classifier (never on the feature maps).
    pub drop_rate: f64,
    /// Stochastic depth, linear over all blocks (train mode only).
    pub drop_path_rate: f64,
    /// Zero-initialise the last norm of each residual branch (initialisation only).
    pub zero_init_last: bool,
    /// The wrapper's `out_indices` (0 = stem, 1..4 = layer1..layer4, -1 = the last).
    pub out_indices: Vec<i64>,
}

impl Config {
    fn new(block: BlockKind, layers: &[i64]) -> Self {
        Self {
            block,
            layers: layers.to_vec(),
            in_chans: 3,
            num_classes: 1000,
            global_pool: "avg".into(),
            drop_rate: 0.0,
            drop_path_rate: 0.0,
            zero_init_last: true,
            out_indices: vec![-1],
        }
    }
    /// timm `resnet18`.
    pub fn resnet18() -> Self {
        Self::new(BlockKind::Basic, &[2, 2, 2, 2])
    }
    /// timm `resnet50`.
    pub fn resnet50() -> Self {
        Self::new(BlockKind::Bottleneck, &[3, 4, 6, 3])
    }
    /// timm `resnet152`.
    pub fn resnet152() -> Self {
        Self::new(BlockKind::Bottleneck, &[3, 8, 36, 3])
    }

    /// `feature_info` channels: stem, layer1..layer4.
    pub fn feature_channels(&self) -> Vec<i64> {
        self.net_config().feature_channels()
    }

    /// The shared network's configuration: timm's defaults but for the keywords above,
    /// all four stages and timm's classifier `fc` (in the state_dict, never run).
    fn net_config(&self) -> net::Config {
        let mut c = net::Config::new(self.block, &self.layers);
        c.in_chans = self.in_chans;
        c.drop_path_rate = self.drop_path_rate;
        c.zero_init_last = self.zero_init_last;
        c.classifier = (self.num_classes > 0).then(|| net::Classifier {
            num_classes: self.num_classes,
            // `""` (no pooling) sizes `fc` as "avg" does; the head never runs here.
            global_pool: net::GlobalPool::parse(&self.global_pool).unwrap_or(net::GlobalPool::Avg),
            drop_rate: self.drop_rate,
        });
        c
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.layers.len() != 4 || self.layers.iter().any(|&n| n < 1) {
            return bad(format!(
                "`layers` must be 4 positive block counts, got {:?}",
                self.layers
            ));
        }
        if self.num_classes < 0 {
            return bad(format!(
                "`num_classes` must be >= 0, got {}",
                self.num_classes
            ));
        }
        if !["", "avg", "max", "avgmax", "catavgmax"].contains(&self.global_pool.as_str()) {
            return bad(format!(
                "`global_pool` must be one of \"avg\", \"max\", \"avgmax\", \"catavgmax\" or \"\", got {:?}",
                self.global_pool
            ));
        }
        for (n, r) in [
            ("drop_rate", self.drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&r) {
                return bad(format!("`{n}` must be in [0, 1), got {r}"));
            }
        }
        Ok(())
    }
}

pub(crate) use terrahost_layers::drop::drop_path;

/// `ResNetEncoderWrapper` around timm's ResNet (the shared
/// [`terrahost_layers::resnet::ResNet`], classifier included).
pub struct TorchgeoResNet {
    cfg: Config,
    net: net::ResNet,
}

impl TorchgeoResNet {
    /// Builds the network under `p` (the wrapper's `resnet_model`), with timm's keys.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            net: net::ResNet::new(p, &cfg.net_config())?,
        })
    }

    /// All five feature maps of `forward_intermediates` (stem, layer1..layer4).
    pub fn intermediates(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let (d, c) = (x.dim(), x.size().get(1).copied().unwrap_or(0));
        if d != 4 || c != self.cfg.in_chans {
            return Err(PluginError::invalid_argument(format!(
                "the ResNet expects an image [B, {}, H, W] (in_chans = len(model_bands) or `in_chans`), got {:?}",
                self.cfg.in_chans,
                x.size()
            )));
        }
        self.net.forward_features(x, train, net::NUM_STAGES)
    }
}

impl Model for TorchgeoResNet {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = match xs {
            [x] => x,
            _ => {
                return Err(PluginError::invalid_argument(format!(
                    "the ResNet takes one image tensor, got {} inputs",
                    xs.len()
                )))
            }
        };
        let all = self.intermediates(x, train)?;
        let n = all.len();
        Ok(all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keeps(&self.cfg.out_indices, *i, n))
            .map(|(_, t)| t)
            .collect())
    }

    fn out_channels(&self) -> Vec<i64> {
        let ch = self.cfg.feature_channels();
        let n = ch.len();
        ch.into_iter()
            .enumerate()
            .filter(|(i, _)| keeps(&self.cfg.out_indices, *i, n))
            .map(|(_, c)| c)
            .collect()
    }
}

/// One registered name: its architecture, the torchgeo weights it defaults to and their
/// bands (`weights.meta["bands"]`, with TerraTorch's overrides).
struct Spec {
    name: &'static str,
    arch: &'static str,
    weights: &'static str,
    bands: Option<&'static [&'static str]>,
}

const S2_ALL_TT: &[&str] = &[
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
];
const S2_RGB: &[&str] = &["B4", "B3", "B2"];
pub(crate) const S2_RGB_SATLAS: &[&str] = &["B04", "B03", "B02"];
pub(crate) const S2_MS_SATLAS: &[&str] = &[
    "B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12",
];
const S1: &[&str] = &["VV", "VH"];

const fn spec(
    name: &'static str,
    arch: &'static str,
    weights: &'static str,
    bands: &'static [&'static str],
) -> Spec {
    Spec {
        name,
        arch,
        weights,
        bands: Some(bands),
    }
}

const SPECS: &[Spec] = &[
    spec(
        "ssl4eol_resnet18_landsat_tm_toa_moco",
        "resnet18",
        "ResNet18_Weights.LANDSAT_TM_TOA_MOCO",
        LANDSAT_TM_TOA,
    ),
    spec(
        "ssl4eol_resnet18_landsat_tm_toa_simclr",
        "resnet18",
        "ResNet18_Weights.LANDSAT_TM_TOA_SIMCLR",
        LANDSAT_TM_TOA,
    ),
    spec(
        "ssl4eol_resnet18_landsat_etm_toa_moco",
        "resnet18",
        "ResNet18_Weights.LANDSAT_ETM_TOA_MOCO",
        LANDSAT_ETM_TOA,
    ),
    spec(
        "ssl4eol_resnet18_landsat_etm_toa_simclr",
        "resnet18",
        "ResNet18_Weights.LANDSAT_ETM_TOA_SIMCLR",
        LANDSAT_ETM_TOA,
    ),
    spec(
        "ssl4eol_resnet18_landsat_etm_sr_moco",
        "resnet18",
        "ResNet18_Weights.LANDSAT_ETM_SR_MOCO",
        LANDSAT_ETM_SR,
    ),
    spec(
        "ssl4eol_resnet18_landsat_etm_sr_simclr",
        "resnet18",
        "ResNet18_Weights.LANDSAT_ETM_SR_SIMCLR",
        LANDSAT_ETM_SR,
    ),
    spec(
        "ssl4eol_resnet18_landsat_oli_tirs_toa_moco",
        "resnet18",
        "ResNet18_Weights.LANDSAT_OLI_TIRS_TOA_MOCO",
        LANDSAT_OLI_TIRS_TOA,
    ),
    spec(
        "ssl4eol_resnet18_landsat_oli_tirs_toa_simclr",
        "resnet18",
        "ResNet18_Weights.LANDSAT_OLI_TIRS_TOA_SIMCLR",
        LANDSAT_OLI_TIRS_TOA,
    ),
    spec(
        "ssl4eol_resnet18_landsat_oli_sr_moco",
        "resnet18",
        "ResNet18_Weights.LANDSAT_OLI_SR_MOCO",
        LANDSAT_OLI_SR,
    ),
    spec(
        "ssl4eol_resnet18_landsat_oli_sr_simclr",
        "resnet18",
        "ResNet18_Weights.LANDSAT_OLI_SR_SIMCLR",
        LANDSAT_OLI_SR,
    ),
    spec(
        "ssl4eos12_resnet18_sentinel2_all_moco",
        "resnet18",
        "ResNet18_Weights.SENTINEL2_ALL_MOCO",
        S2_ALL,
    ),
    spec(
        "ssl4eos12_resnet18_sentinel2_rgb_moco",
        "resnet18",
        "ResNet18_Weights.SENTINEL2_RGB_MOCO",
        S2_RGB,
    ),
    spec(
        "seco_resnet18_sentinel2_rgb_seco",
        "resnet18",
        "ResNet18_Weights.SENTINEL2_RGB_SECO",
        S2_RGB,
    ),
    Spec {
        name: "fmow_resnet50_fmow_rgb_gassl",
        arch: "resnet50",
        weights: "ResNet50_Weights.FMOW_RGB_GASSL",
        bands: None,
    },
    spec(
        "ssl4eol_resnet50_landsat_tm_toa_moco",
        "resnet50",
        "ResNet50_Weights.LANDSAT_TM_TOA_MOCO",
        LANDSAT_TM_TOA,
    ),
    spec(
        "ssl4eol_resnet50_landsat_tm_toa_simclr",
        "resnet50",
        "ResNet50_Weights.LANDSAT_TM_TOA_SIMCLR",
        LANDSAT_TM_TOA,
    ),
    spec(
        "ssl4eol_resnet50_landsat_etm_toa_moco",
        "resnet50",
        "ResNet50_Weights.LANDSAT_ETM_TOA_MOCO",
        LANDSAT_ETM_TOA,
    ),
    spec(
        "ssl4eol_resnet50_landsat_etm_toa_simclr",
        "resnet50",
        "ResNet50_Weights.LANDSAT_ETM_TOA_SIMCLR",
        LANDSAT_ETM_TOA,
    ),
    spec(
        "ssl4eol_resnet50_landsat_etm_sr_moco",
        "resnet50",
        "ResNet50_Weights.LANDSAT_ETM_SR_MOCO",
        LANDSAT_ETM_SR,
    ),
    spec(
        "ssl4eol_resnet50_landsat_etm_sr_simclr",
        "resnet50",
        "ResNet50_Weights.LANDSAT_ETM_SR_SIMCLR",
        LANDSAT_ETM_SR,
    ),
    spec(
        "ssl4eol_resnet50_landsat_oli_tirs_toa_moco",
        "resnet50",
        "ResNet50_Weights.LANDSAT_OLI_TIRS_TOA_MOCO",
        LANDSAT_OLI_TIRS_TOA,
    ),
    spec(
        "ssl4eol_resnet50_landsat_oli_tirs_toa_simclr",
        "resnet50",
        "ResNet50_Weights.LANDSAT_OLI_TIRS_TOA_SIMCLR",
        LANDSAT_OLI_TIRS_TOA,
    ),
    spec(
        "ssl4eol_resnet50_landsat_oli_sr_moco",
        "resnet50",
        "ResNet50_Weights.LANDSAT_OLI_SR_MOCO",
        LANDSAT_OLI_SR,
    ),
    spec(
        "ssl4eol_resnet50_landsat_oli_sr_simclr",
        "resnet50",
        "ResNet50_Weights.LANDSAT_OLI_SR_SIMCLR",
        LANDSAT_OLI_SR,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel1_all_decur",
        "resnet50",
        "ResNet50_Weights.SENTINEL1_ALL_DECUR",
        S1,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel1_all_moco",
        "resnet50",
        "ResNet50_Weights.SENTINEL1_ALL_MOCO",
        S1,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel2_all_decur",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_ALL_DECUR",
        S2_ALL_TT,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel2_all_dino",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_ALL_DINO",
        S2_ALL_TT,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel2_all_moco",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_ALL_MOCO",
        S2_ALL_TT,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel2_all_softcon",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_ALL_SOFTCON",
        S2_ALL_TT,
    ),
    spec(
        "ssl4eos12_resnet50_sentinel2_rgb_moco",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_RGB_MOCO",
        S2_RGB,
    ),
    spec(
        "seco_resnet50_sentinel2_rgb_seco",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_RGB_SECO",
        S2_RGB,
    ),
    spec(
        "satlas_resnet50_sentinel2_mi_ms_satlas",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_MI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    spec(
        "satlas_resnet50_sentinel2_mi_rgb_satlas",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_MI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    spec(
        "satlas_resnet50_sentinel2_si_ms_satlas",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_SI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    spec(
        "satlas_resnet50_sentinel2_si_rgb_satlas",
        "resnet50",
        "ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    spec(
        "satlas_resnet152_sentinel2_mi_ms",
        "resnet152",
        "ResNet152_Weights.SENTINEL2_MI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    spec(
        "satlas_resnet152_sentinel2_mi_rgb",
        "resnet152",
        "ResNet152_Weights.SENTINEL2_MI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
    spec(
        "satlas_resnet152_sentinel2_si_ms_satlas",
        "resnet152",
        "ResNet152_Weights.SENTINEL2_SI_MS_SATLAS",
        S2_MS_SATLAS,
    ),
    spec(
        "satlas_resnet152_sentinel2_si_rgb_satlas",
        "resnet152",
        "ResNet152_Weights.SENTINEL2_SI_RGB_SATLAS",
        S2_RGB_SATLAS,
    ),
];

fn base(arch: &str) -> Config {
    match arch {
        "resnet18" => Config::resnet18(),
        "resnet50" => Config::resnet50(),
        _ => Config::resnet152(),
    }
}

fn build(ctx: &BuildCtx<'_, '_>, spec: &Spec) -> Result<ModuleBox> {
    let a = &ctx.args;
    let bands = model_bands(ctx)?;
    let b = base(spec.arch);
    let cfg = Config {
        layers: a.get_or("layers", b.layers.clone())?,
        in_chans: in_chans(ctx, &bands)?,
        num_classes: a.get("num_classes")?,
        global_pool: a.get("global_pool")?,
        drop_rate: a.get("drop_rate")?,
        drop_path_rate: a.get("drop_path_rate")?,
        zero_init_last: a.get("zero_init_last")?,
        out_indices: out_indices(ctx)?,
        ..b
    };
    warn_unused_indices(&ctx.qualified(), &cfg.out_indices, 5);
    let file = checkpoint_file(ctx)?;
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let model = TorchgeoResNet::new(vs.root() / "resnet_model", &cfg)?;
    if let Some(file) = file {
        let pretrained = match spec.bands {
            None => Vec::new(),
            Some(raw) => pretrained_bands(raw).map_err(|b| {
                PluginError::invalid_argument(format!(
                    "`{}` with pretrained=true fails in TerraTorch 1.2.11: the band {b:?} of {} has no entry in its \
                     band look-up table (KeyError); build with pretrained=false and load the checkpoint with --weights",
                    ctx.qualified(),
                    spec.weights
                ))
            })?,
        };
        load_checkpoint(
            &mut vs,
            &file,
            "resnet_model.",
            "conv1.weight",
            &["fc.weight", "fc.bias"],
            &pretrained,
            &bands,
        )?;
    }
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

fn entry(spec: &'static Spec) -> Entry {
    let b = base(spec.arch);
    let bands = match spec.bands {
        Some(raw) => match pretrained_bands(raw) {
            Ok(names) => format!("{} ({})", raw.join(", "), names.join(", ")),
            Err(_) => format!(
                "{} (not loadable by TerraTorch 1.2.11: no band names for them)",
                raw.join(", ")
            ),
        },
        None => "none recorded (no band is matched when loading)".into(),
    };
    let doc = format!(
        "TerraTorch's torchgeo {} backbone ResNetEncoderWrapper(timm {}), default weights {} with bands {bands}; \
         in_chans = len(model_bands); returns the maps (stem, layer1..layer4: {:?} channels) named by out_indices. \
         Keys resnet_model.* with timm's classifier fc. Other timm keywords (output_stride, stem_type, ...) are \
         not supported.",
        spec.arch,
        spec.arch,
        spec.weights,
        b.feature_channels()
    );
    Entry::new(spec.name, &doc, move |ctx| build(ctx, spec))
        .req("model_bands", ParamType::ANY, "the input's bands (a list); in_chans = len(model_bands), and with pretrained=true the first convolution's columns are picked by band name")
        .opt("pretrained", ParamType::BOOL, json!(false), "load ckpt_data (terrahost never downloads torchgeo's weights)")
        .opt("weights", ParamType::ANY, Value::Null, "torchgeo weights enum; only read with pretrained=true, where terrahost refuses it (no downloads)")
        .opt("ckpt_data", ParamType::STR, Value::Null, "local checkpoint of the bare timm ResNet (.pt/.pth/.safetensors), loaded when pretrained=true")
        .opt("out_indices", ParamType::INT_LIST, Value::Null, "features to return: 0 = stem, 1..4 = layer1..layer4, -1 = the last (default [-1]); others are ignored, as upstream")
        .opt("in_chans", ParamType::INT, Value::Null, "timm: input channels (default len(model_bands))")
        .opt("layers", ParamType::INT_LIST, json!(b.layers), "timm: blocks per stage")
        .opt("num_classes", ParamType::INT, json!(1000), "timm: classifier outputs (fc; 0 = no classifier); unused by the features")
        .opt("global_pool", ParamType::STR, json!("avg"), "timm: classifier pooling (catavgmax doubles fc's input); unused by the features")
        .opt("drop_rate", ParamType::FLOAT, json!(0.0), "timm: dropout before the classifier; no effect on the features")
        .opt("drop_path_rate", ParamType::FLOAT, json!(0.0), "timm: stochastic depth, linear over the blocks (train mode only)")
        .opt("zero_init_last", ParamType::BOOL, json!(true), "timm: zero-initialise the last norm of each residual branch")
}

/// The backbone entries of this family.
pub fn entries() -> Vec<Entry> {
    SPECS.iter().map(entry).collect()
}
