//! mmsegmentation 1.2.2's `FCNHead` (`mmseg/models/decode_heads/fcn_head.py`) with
//! the parts of `BaseDecodeHead` (`mmseg/models/decode_heads/decode_head.py`) that
//! its forward uses: input selection (`in_index`, `input_transform`), `cls_seg`
//! (Dropout2d + 1x1 `conv_seg`). The losses, sampler and `predict` post-processing
//! are training/inference utilities of mmseg's segmentor and are not part of the
//! module TerraTorch uses.
//!
//! TerraTorch builds it through `terratorch/registry/mmseg_registry.py`
//! (`MMSegRegistry.build`): `num_classes` is required, a one-entry channel list
//! becomes the int `in_channels`, and the head is kept as the attribute `decoder`
//! of `MMsegDecoderWrapper`, so every parameter name starts with `decoder.`.
use super::conv_module::{ConvModule, ConvModuleCfg};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// The attribute under which TerraTorch's `MMsegDecoderWrapper` keeps the head.
pub const WRAPPER_ATTR: &str = "decoder";

/// How the head picks its input from the list of feature maps (`input_transform`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputTransform {
    /// Resize the selected maps to the first one's size (bilinear) and concatenate them.
    ResizeConcat,
    /// Pass the selected maps on as a list (FCNHead cannot use this; see [`Config::validate`]).
    MultipleSelect,
}

impl InputTransform {
    /// Parses mmseg's name; `None` is no transform (one selected map).
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "resize_concat" => Ok(Self::ResizeConcat),
            "multiple_select" => Ok(Self::MultipleSelect),
            other => Err(format!(
                "must be None, \"resize_concat\" or \"multiple_select\", got {other:?}"
            )),
        }
    }
}

/// Which feature map(s) the head reads (`in_index`); negative indices count from
/// the end, as in Python.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum InIndex {
    /// One map (with no input transform).
    One(i64),
    /// Several maps (with an input transform), one per channel-list entry.
    Many(Vec<i64>),
}

/// Configuration of [`FcnHead`], with mmseg's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// The channel list TerraTorch passes (one entry, or one per `in_index` entry
    /// with an input transform).
    pub in_channels: Vec<i64>,
    /// Width of the convolutions before `conv_seg` (required in mmseg).
    pub channels: i64,
    /// Number of classes (required by TerraTorch).
    pub num_classes: i64,
    /// Channels of `conv_seg`: `num_classes`, or 1 for binary segmentation.
    pub out_channels: Option<i64>,
    /// Threshold of binary predictions (mmseg's `predict` only).
    pub threshold: Option<f64>,
    /// Number of convolutions before the optional concatenation.
    pub num_convs: i64,
    /// Kernel size of those convolutions and of `conv_cat`.
    pub kernel_size: i64,
    /// Concatenate the input with the convolutions' output and fuse them (`conv_cat`).
    pub concat_input: bool,
    /// Dilation of the convolutions in `convs`.
    pub dilation: i64,
    /// Dropout2d probability before `conv_seg` (training only).
    pub dropout_ratio: f64,
    /// Norm and activation of every `ConvModule`.
    pub conv: ConvModuleCfg,
    /// Which input(s) to read.
    pub in_index: InIndex,
    /// How to combine several inputs.
    pub input_transform: Option<InputTransform>,
    /// `align_corners` of the bilinear resize in `resize_concat`.
    pub align_corners: bool,
}

impl Config {
    /// mmseg's defaults for a head on one feature map of `in_channels` channels.
    pub fn new(in_channels: i64, channels: i64, num_classes: i64) -> Self {
        Self {
            in_channels: vec![in_channels],
            channels,
            num_classes,
            out_channels: None,
            threshold: None,
            num_convs: 2,
            kernel_size: 3,
            concat_input: true,
            dilation: 1,
            dropout_ratio: 0.1,
            conv: ConvModuleCfg::default(),
            in_index: InIndex::One(-1),
            input_transform: None,
            align_corners: false,
        }
    }

    /// The decode head of mmseg's `configs/_base_/models/fcn_r50-d8.py` (Cityscapes:
    /// 19 classes, on ResNet-50's last stage, SyncBN).
    pub fn fcn_r50_d8() -> Self {
        Self {
            in_index: InIndex::One(3),
            conv: ConvModuleCfg {
                norm_cfg: Some(super::conv_module::NormCfg::BatchNorm {
                    eps: 1e-5,
                    momentum: 0.1,
                    requires_grad: true,
                }),
                ..ConvModuleCfg::default()
            },
            ..Self::new(2048, 512, 19)
        }
    }

    /// The channels `conv_seg` produces.
    pub fn seg_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.num_classes)
    }

    /// The channels the convolutions receive (`self.in_channels` in mmseg).
    fn effective_in_channels(&self) -> i64 {
        match self.input_transform {
            Some(InputTransform::ResizeConcat) => self.in_channels.iter().sum(),
            _ => self.in_channels.first().copied().unwrap_or(0),
        }
    }

    /// Checks what mmseg asserts, with messages that say what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, what: String| {
            Err(PluginError::invalid_argument(format!(
                "argument `{name}` {what}"
            )))
        };
        if self.in_channels.is_empty() || self.in_channels.iter().any(|&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "the channel list must be non-empty with positive entries, got {:?}",
                self.in_channels
            )));
        }
        if self.channels <= 0 {
            return bad(
                "channels",
                format!("must be positive, got {}", self.channels),
            );
        }
        if self.num_classes <= 0 {
            return bad(
                "num_classes",
                format!(
                    "must be positive, got {} (use 1 for regression)",
                    self.num_classes
                ),
            );
        }
        if self.num_convs < 0 {
            return bad("num_convs", format!("must be >= 0, got {}", self.num_convs));
        }
        if self.kernel_size <= 0 {
            return bad(
                "kernel_size",
                format!("must be positive, got {}", self.kernel_size),
            );
        }
        if self.dilation <= 0 {
            return bad(
                "dilation",
                format!("must be a positive integer, got {}", self.dilation),
            );
        }
        if !(0.0..=1.0).contains(&self.dropout_ratio) {
            return bad(
                "dropout_ratio",
                format!("must be in [0, 1], got {}", self.dropout_ratio),
            );
        }
        if let Some(out) = self.out_channels {
            if out != self.num_classes && out != 1 {
                return bad(
                    "out_channels",
                    format!(
                        "must equal num_classes, or be 1 for binary segmentation (num_classes=2); got \
                         out_channels={out} and num_classes={}",
                        self.num_classes
                    ),
                );
            }
        }
        match (self.input_transform, &self.in_index) {
            (None, _) if self.in_channels.len() != 1 => {
                return Err(PluginError::invalid_argument(format!(
                    "without `input_transform`, FCNHead reads one feature map, so the channel list must have one \
                     entry (TerraTorch passes it to mmseg as an int); got {:?}. Select one map first (for example \
                     with a SelectIndices neck) or set input_transform=\"resize_concat\" with one `in_index` per entry",
                    self.in_channels
                )))
            }
            (None, InIndex::Many(ix)) => {
                return bad("in_index", format!("must be one integer when `input_transform` is None, got {ix:?}"))
            }
            (Some(InputTransform::MultipleSelect), _) => {
                return bad(
                    "input_transform",
                    "\"multiple_select\" is not usable with FCNHead: it keeps in_channels as a list and FCNHead \
                     builds its convolutions from a single channel count (mmseg fails too); use \"resize_concat\""
                        .to_owned(),
                )
            }
            (Some(InputTransform::ResizeConcat), _) if self.in_channels.len() < 2 => {
                return Err(PluginError::invalid_argument(format!(
                    "input_transform=\"resize_concat\" needs a channel list with one entry per `in_index` entry; a \
                     one-entry list {:?} becomes a single int in TerraTorch, which mmseg rejects",
                    self.in_channels
                )))
            }
            (Some(InputTransform::ResizeConcat), InIndex::One(i)) => {
                return bad(
                    "in_index",
                    format!("must be a list (one index per channel-list entry) with \"resize_concat\", got {i}"),
                )
            }
            (Some(InputTransform::ResizeConcat), InIndex::Many(ix)) if ix.len() != self.in_channels.len() => {
                return bad(
                    "in_index",
                    format!("must have one entry per channel-list entry ({:?}), got {ix:?}", self.in_channels),
                )
            }
            _ => {}
        }
        if self.num_convs == 0 && self.effective_in_channels() != self.channels {
            return bad(
                "num_convs",
                format!(
                    "0 needs `channels` ({}) equal to the input channels ({})",
                    self.channels,
                    self.effective_in_channels()
                ),
            );
        }
        Ok(())
    }
}

/// Resolves a Python-style index into a list of `len` items.
fn py_index(i: i64, len: usize) -> Result<usize> {
    let n = len as i64;
    let j = if i < 0 { i + n } else { i };
    if (0..n).contains(&j) {
        Ok(j as usize)
    } else {
        Err(PluginError::forward_failed(format!(
            "in_index {i} is out of range for {len} feature map(s)"
        )))
    }
}

/// mmseg's `FCNHead`: `num_convs` ConvModules, optionally `conv_cat` over
/// `[input, convs(input)]`, then Dropout2d and a 1x1 `conv_seg` to class logits.
///
/// Input: the list of feature maps. Output: one `[B, out_channels, h, w]` logit map
/// at the selected (first selected) map's resolution; it is not resized.
#[derive(Debug)]
pub struct FcnHead {
    convs: Vec<ConvModule>,
    conv_cat: Option<ConvModule>,
    conv_seg: nn::Conv2D,
    cfg: Config,
}

impl FcnHead {
    /// Builds the head under `p` (`p.convs.N`, `p.conv_cat`, `p.conv_seg`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let c_in = cfg.effective_in_channels();
        let k = cfg.kernel_size;
        let convs_p = &p / "convs";
        let convs = (0..cfg.num_convs)
            .map(|i| {
                let c = if i == 0 { c_in } else { cfg.channels };
                ConvModule::new(
                    &convs_p / i,
                    c,
                    cfg.channels,
                    k,
                    (k / 2) * cfg.dilation,
                    cfg.dilation,
                    &cfg.conv,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv_cat = cfg
            .concat_input
            .then(|| {
                ConvModule::new(
                    &p / "conv_cat",
                    c_in + cfg.channels,
                    cfg.channels,
                    k,
                    k / 2,
                    1,
                    &cfg.conv,
                )
            })
            .transpose()?;
        // mmseg's init_cfg for conv_seg only applies when init_weights() is called,
        // which TerraTorch does not do: PyTorch's default Conv2d init.
        let bound = 1.0 / (cfg.channels as f64).sqrt();
        let conv_seg = nn::conv2d(
            &p / "conv_seg",
            cfg.channels,
            cfg.seg_channels(),
            1,
            nn::ConvConfig {
                ws_init: nn::Init::Kaiming {
                    dist: nn::init::NormalOrUniform::Uniform,
                    fan: nn::init::FanInOut::FanIn,
                    non_linearity: nn::init::NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
                },
                bs_init: nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                ..Default::default()
            },
        );
        Ok(Self {
            convs,
            conv_cat,
            conv_seg,
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Checks a selected map against its channel-list entry.
    fn check_map(&self, x: &Tensor, index: i64, channels: i64) -> Result<()> {
        let size = x.size();
        if size.len() != 4 || size[1] != channels {
            return Err(PluginError::forward_failed(format!(
                "feature map at in_index {index} must be [B, {channels}, H, W], got shape {size:?}"
            )));
        }
        Ok(())
    }

    /// mmseg's `_transform_inputs`.
    fn transform_inputs(&self, xs: &[Tensor]) -> Result<Tensor> {
        match (&self.cfg.input_transform, &self.cfg.in_index) {
            (Some(InputTransform::ResizeConcat), InIndex::Many(ix)) => {
                let selected = ix
                    .iter()
                    .zip(&self.cfg.in_channels)
                    .map(|(&i, &c)| {
                        let x = &xs[py_index(i, xs.len())?];
                        self.check_map(x, i, c)?;
                        Ok(x)
                    })
                    .collect::<Result<Vec<&Tensor>>>()?;
                let size = selected[0].size();
                let (h, w) = (size[2], size[3]);
                // every map (the first too) goes through the bilinear resize, as in mmseg
                let resized = selected
                    .iter()
                    .map(|x| x.f_upsample_bilinear2d([h, w], self.cfg.align_corners, None, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                // -> [B, sum(in_channels), h, w]
                Ok(Tensor::f_cat(&resized, 1)?)
            }
            (None, InIndex::One(i)) => {
                let x = &xs[py_index(*i, xs.len())?];
                self.check_map(x, *i, self.cfg.in_channels[0])?;
                Ok(x.shallow_clone())
            }
            _ => Err(PluginError::forward_failed(
                "unsupported in_index/input_transform combination (not validated)",
            )),
        }
    }
}

impl Model for FcnHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.transform_inputs(xs)?;
        let mut feats = x.shallow_clone();
        for conv in &self.convs {
            feats = conv.forward(&feats, train)?;
        }
        if let Some(conv_cat) = &self.conv_cat {
            // [B, C_in, h, w] ++ [B, channels, h, w] -> [B, channels, h, w]
            feats = conv_cat.forward(&Tensor::f_cat(&[&x, &feats], 1)?, train)?;
        }
        if self.cfg.dropout_ratio > 0.0 {
            feats = feats.f_feature_dropout(self.cfg.dropout_ratio, train)?;
        }
        Ok(vec![feats.apply(&self.conv_seg)])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.seg_channels()]
    }

    fn includes_head(&self) -> bool {
        true
    }
}

/// TerraTorch's `MMsegDecoderWrapper`: holds the head as `decoder` and says that it
/// includes its own classifier.
#[derive(Debug)]
pub struct MmsegDecoderWrapper<D> {
    decoder: D,
}

impl<D: Model> MmsegDecoderWrapper<D> {
    /// Builds the head with `build` under `root / "decoder"`.
    pub fn new(root: nn::Path, build: impl FnOnce(nn::Path) -> Result<D>) -> Result<Self> {
        Ok(Self {
            decoder: build(&root / WRAPPER_ATTR)?,
        })
    }

    /// The wrapped head.
    pub fn decoder(&self) -> &D {
        &self.decoder
    }
}

impl<D: Model> Model for MmsegDecoderWrapper<D> {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.decoder.forward(xs, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.decoder.out_channels()
    }

    fn includes_head(&self) -> bool {
        true
    }
}
