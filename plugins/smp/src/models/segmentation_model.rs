//! smp's whole models, from segmentation_models_pytorch 0.6.0:
//! `segmentation_models_pytorch/base/model.py` (`SegmentationModel`: encoder, decoder,
//! segmentation head, optional classification head, `check_input_shape`),
//! `base/heads.py` (`SegmentationHead`, `ClassificationHead`), `base/modules.py`
//! (`Activation`) and the constructors in `decoders/*/model.py` (`Unet`, `FPN`,
//! `DeepLabV3`, ...), which decide each model's encoder arguments, decoder and head.
//!
//! The decoders are this plugin's (each family's `full_model_decoder`, fed the encoder's
//! `out_channels` as smp feeds them); the encoders are smp's ResNets
//! ([`super::resnet_encoder`]). Keys: `encoder.*`, `decoder.*`, `segmentation_head.0.*`
//! and, with `aux_params`, `classification_head.3.*`.
use super::resnet_encoder::{self, ResNetEncoder};
use super::{deeplabv3, fpn, linknet, manet, pan, pspnet, segformer, unet, unetplusplus, upernet};
use serde_json::{Map, Value};
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::args::Args;
use terrahost_plugin_api::sdk::{BuildCtx, Entry, Model, NoHost};
use terrahost_plugin_api::{PluginError, Result};

/// How a model's segmentation head upsamples (`SegmentationHead(upsampling=...)`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Upsampling {
    /// The model has no `upsampling` argument; the head does not upsample.
    None,
    /// An `upsampling` argument with this default.
    Arg(i64),
    /// DeepLabV3's `upsampling=None`: `2 ** depth` for depth <= 3, else the output stride.
    DeepLabV3,
}

type MakeDecoder = fn(&BuildCtx<'_, '_>, nn::Path) -> Result<(Box<dyn Model>, i64)>;

/// What one smp model class does around its decoder.
#[derive(Clone, Copy)]
pub struct Arch {
    /// The class name (`smp.Unet`).
    pub name: &'static str,
    decoder_entry: fn() -> Entry,
    make_decoder: MakeDecoder,
    head_kernel: i64,
    upsampling: Upsampling,
    default_depth: usize,
    /// Default `encoder_output_stride` of the models that dilate their encoder.
    output_stride: Option<i64>,
    /// `requires_divisible_input_shape` (false only for Unet).
    divisible: bool,
    /// PSPNet builds the classification head on `if aux_params:`, the others on `is not None`.
    aux_if_truthy: bool,
}

fn dlv3(ctx: &BuildCtx<'_, '_>, p: nn::Path) -> Result<(Box<dyn Model>, i64)> {
    deeplabv3::full_model_decoder(ctx, p, deeplabv3::Variant::DeepLabV3)
}

fn dlv3plus(ctx: &BuildCtx<'_, '_>, p: nn::Path) -> Result<(Box<dyn Model>, i64)> {
    deeplabv3::full_model_decoder(ctx, p, deeplabv3::Variant::DeepLabV3Plus)
}

const fn arch(
    name: &'static str,
    decoder_entry: fn() -> Entry,
    make_decoder: MakeDecoder,
    head_kernel: i64,
    upsampling: Upsampling,
) -> Arch {
    Arch {
        name,
        decoder_entry,
        make_decoder,
        head_kernel,
        upsampling,
        default_depth: 5,
        output_stride: None,
        divisible: true,
        aux_if_truthy: false,
    }
}

/// The smp model classes this plugin builds whole (smp's `DPT` needs a timm ViT encoder
/// and is refused, see [`arch_named`]).
pub const ARCHS: [Arch; 11] = [
    Arch {
        divisible: false,
        ..arch(
            "Unet",
            unet::entry,
            unet::full_model_decoder,
            3,
            Upsampling::None,
        )
    },
    arch(
        "UnetPlusPlus",
        unetplusplus::entry,
        unetplusplus::full_model_decoder,
        3,
        Upsampling::None,
    ),
    arch(
        "MAnet",
        manet::entry,
        manet::full_model_decoder,
        3,
        Upsampling::None,
    ),
    arch(
        "Linknet",
        linknet::entry,
        linknet::full_model_decoder,
        1,
        Upsampling::None,
    ),
    arch(
        "FPN",
        fpn::entry,
        fpn::full_model_decoder,
        1,
        Upsampling::Arg(4),
    ),
    Arch {
        default_depth: 3,
        aux_if_truthy: true,
        ..arch(
            "PSPNet",
            pspnet::entry,
            pspnet::full_model_decoder,
            3,
            Upsampling::Arg(8),
        )
    },
    Arch {
        output_stride: Some(8),
        ..arch(
            "DeepLabV3",
            deeplabv3::deeplabv3_entry,
            dlv3,
            1,
            Upsampling::DeepLabV3,
        )
    },
    Arch {
        output_stride: Some(16),
        ..arch(
            "DeepLabV3Plus",
            deeplabv3::deeplabv3plus_entry,
            dlv3plus,
            1,
            Upsampling::Arg(4),
        )
    },
    Arch {
        output_stride: Some(16),
        ..arch(
            "PAN",
            pan::entry,
            pan::full_model_decoder,
            3,
            Upsampling::Arg(4),
        )
    },
    arch(
        "UPerNet",
        upernet::entry,
        upernet::full_model_decoder,
        1,
        Upsampling::Arg(4),
    ),
    arch(
        "Segformer",
        segformer::entry,
        segformer::full_model_decoder,
        1,
        Upsampling::Arg(4),
    ),
];

/// The model classes smp exports (`segmentation_models_pytorch.__init__`).
pub const SMP_MODELS: [&str; 12] = [
    "Unet",
    "UnetPlusPlus",
    "MAnet",
    "Linknet",
    "FPN",
    "PSPNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "PAN",
    "UPerNet",
    "Segformer",
    "DPT",
];

/// The other public attributes of `segmentation_models_pytorch` (what `getattr(smp, name)`
/// finds that is not a model class).
const SMP_OTHER_ATTRS: [&str; 8] = [
    "datasets",
    "encoders",
    "decoders",
    "losses",
    "metrics",
    "from_pretrained",
    "create_model",
    "__version__",
];

/// The model class `name`, or why it cannot be built.
pub fn arch_named(name: &str, encoder: &str) -> Result<Arch> {
    if let Some(a) = ARCHS.iter().find(|a| a.name == name) {
        return Ok(*a);
    }
    if name == "DPT" {
        return Err(PluginError::invalid_argument(format!(
            "Only Timm encoders are supported for DPT. Encoder name must start with 'tu-', got {encoder} \
             (smp.DPT needs a timm ViT encoder, which the smp plugin does not have)"
        )));
    }
    if SMP_OTHER_ATTRS.contains(&name) {
        return Err(PluginError::invalid_argument(format!(
            "`{name}` is an attribute of segmentation_models_pytorch but not a model class; model must be one \
             of {}",
            SMP_MODELS.join(", ")
        )));
    }
    Err(PluginError::invalid_argument(format!(
        "Decoder {name} is not supported in SMP. (smp's models: {})",
        SMP_MODELS.join(", ")
    )))
}

/// smp's `Activation` after the segmentation head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `None` or `"identity"`.
    Identity,
    /// `"sigmoid"`.
    Sigmoid,
    /// `"softmax2d"`: softmax over channels.
    Softmax2d,
    /// `"softmax"`: `nn.Softmax(dim=None)`, which on a 4-D map takes dim 1.
    Softmax,
    /// `"logsoftmax"`: `nn.LogSoftmax(dim=None)`, dim 1 on a 4-D map.
    LogSoftmax,
    /// `"tanh"`.
    Tanh,
    /// `"argmax2d"`: the class index per pixel, `[B, H, W]` int64.
    Argmax2d,
    /// `"clamp"`: `torch.clamp(x, 0, 1)`.
    Clamp,
}

impl Activation {
    /// Reads smp's `activation` argument.
    pub fn parse(v: &Value) -> Result<Self> {
        let name = match v {
            Value::Null => return Ok(Self::Identity),
            Value::String(s) => s.as_str(),
            other => {
                return Err(PluginError::invalid_argument(format!(
                    "`activation` must be a name or None (smp also takes a Python callable, which a config cannot \
                     hold), got {other}"
                )))
            }
        };
        Ok(match name {
            "identity" => Self::Identity,
            "sigmoid" => Self::Sigmoid,
            "softmax2d" => Self::Softmax2d,
            "softmax" => Self::Softmax,
            "logsoftmax" => Self::LogSoftmax,
            "tanh" => Self::Tanh,
            "argmax2d" => Self::Argmax2d,
            "clamp" => Self::Clamp,
            "argmax" => {
                return Err(PluginError::invalid_argument(
                    "activation \"argmax\" (torch.argmax with dim=None) reduces the mask to one index, and \
                     TerraTorch's SMPModelWrapper then fails reading its channel dimension; use \"argmax2d\"",
                ))
            }
            other => {
                return Err(PluginError::invalid_argument(format!(
                    "Activation should be callable/sigmoid/softmax/logsoftmax/tanh/argmax/argmax2d/clamp/None; \
                     got {other}"
                )))
            }
        })
    }

    fn forward(self, x: Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x,
            Self::Sigmoid => x.f_sigmoid()?,
            Self::Softmax2d | Self::Softmax => x.f_softmax(1, Kind::Float)?,
            Self::LogSoftmax => x.f_log_softmax(1, Kind::Float)?,
            Self::Tanh => x.f_tanh()?,
            Self::Argmax2d => x.f_argmax(1, false)?,
            Self::Clamp => x.f_clamp(0, 1)?,
        })
    }
}

/// smp's `SegmentationHead`: `Conv2d(c_in, classes, k, padding=k // 2)` (key `0`),
/// bilinear `Upsample(scale_factor, align_corners=True)` when the factor exceeds 1,
/// and the activation.
#[derive(Debug)]
pub struct SegmentationHead {
    conv: nn::Conv2D,
    padding: i64,
    upsampling: i64,
    activation: Activation,
}

impl SegmentationHead {
    /// Builds the head under `p` (keys `p.0.weight`, `p.0.bias`; Xavier-uniform weight and
    /// zero bias, as smp's `initialize_head`).
    pub fn new(
        p: nn::Path,
        c_in: i64,
        classes: i64,
        k: i64,
        upsampling: i64,
        activation: Activation,
    ) -> Self {
        let conv = nn::conv2d(
            &p / 0,
            c_in,
            classes,
            k,
            nn::ConvConfig {
                padding: k / 2,
                ws_init: xavier_uniform(c_in * k * k, classes * k * k),
                bs_init: nn::Init::Const(0.),
                ..Default::default()
            },
        );
        Self {
            conv,
            padding: k / 2,
            upsampling,
            activation,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.conv;
        let mut y = x.f_conv2d(
            &c.ws,
            c.bs.as_ref(),
            [1, 1],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?;
        if self.upsampling > 1 {
            let (h, w) = (y.size()[2], y.size()[3]);
            let s = self.upsampling as f64;
            y = y.f_upsample_bilinear2d(
                [h * self.upsampling, w * self.upsampling],
                true,
                Some(s),
                Some(s),
            )?;
        }
        self.activation.forward(y)
    }
}

/// `nn.init.xavier_uniform_` as an `nn::Init`: uniform in `±sqrt(6 / (fan_in + fan_out))`
/// (a convolution's fans include its kernel area).
fn xavier_uniform(fan_in: i64, fan_out: i64) -> nn::Init {
    let bound = (6.0 / ((fan_in + fan_out).max(1) as f64)).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// smp's `ClassificationHead(in_channels, classes, pooling, dropout, activation)` from
/// `aux_params`: pool, flatten, dropout, `Linear` (key `3`), activation. TerraTorch's
/// wrapper drops its output, so only its parameters matter.
#[derive(Debug)]
pub struct ClassificationHead {
    _linear: nn::Linear,
    /// The settings smp was given.
    pub params: Map<String, Value>,
}

impl ClassificationHead {
    /// Checks `aux_params` as `ClassificationHead.__init__` does and builds the head under `p`.
    pub fn new(p: nn::Path, c_in: i64, params: &Map<String, Value>) -> Result<Self> {
        const KNOWN: [&str; 4] = ["classes", "pooling", "dropout", "activation"];
        if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(PluginError::invalid_argument(format!(
                "aux_params: ClassificationHead.__init__() got an unexpected keyword argument '{k}' (it takes \
                 classes, pooling, dropout, activation)"
            )));
        }
        let classes = match params.get("classes") {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|c| c >= 0) => n.as_i64().unwrap_or(0),
            None => {
                return Err(PluginError::invalid_argument(
                    "aux_params: ClassificationHead.__init__() missing 1 required positional argument: 'classes'",
                ))
            }
            Some(other) => {
                return Err(PluginError::invalid_argument(format!(
                    "aux_params: `classes` must be a non-negative int, got {other}"
                )))
            }
        };
        match params.get("pooling") {
            None => {}
            Some(Value::String(s)) if s == "avg" || s == "max" => {}
            Some(other) => {
                return Err(PluginError::invalid_argument(format!(
                    "aux_params: Pooling should be one of ('max', 'avg'), got {}.",
                    other
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| other.to_string())
                )))
            }
        }
        if let Some(d) = params.get("dropout").filter(|v| !v.is_null()) {
            match d.as_f64() {
                Some(d) if (0.0..=1.0).contains(&d) => {}
                _ => {
                    return Err(PluginError::invalid_argument(format!(
                        "aux_params: dropout probability has to be between 0 and 1, but got {d}"
                    )))
                }
            }
        }
        if let Some(a) = params.get("activation") {
            Activation::parse(a).map_err(|e| e.context("aux_params"))?;
        }
        let linear = nn::linear(
            &p / 3,
            c_in,
            classes,
            nn::LinearConfig {
                ws_init: xavier_uniform(c_in, classes),
                bs_init: Some(nn::Init::Const(0.)),
                bias: true,
            },
        );
        Ok(Self {
            _linear: linear,
            params: params.clone(),
        })
    }
}

/// An smp model with a ResNet encoder, as `smp.<Arch>(encoder_name=..., ...)` builds it.
pub struct SegmentationModel {
    /// The model class.
    pub arch: Arch,
    encoder: ResNetEncoder,
    decoder: Box<dyn Model>,
    head: SegmentationHead,
    classification_head: Option<ClassificationHead>,
    divisible: bool,
}

impl std::fmt::Debug for SegmentationModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentationModel")
            .field("arch", &self.arch.name)
            .field("encoder", self.encoder.config())
            .finish()
    }
}

/// The keyword arguments a model class reads itself (the rest of its signature belongs
/// to its decoder entry); anything else lands in smp's `**kwargs`, which `get_encoder`
/// swallows for smp's own encoders.
pub fn model_keys(arch: &Arch) -> Vec<&'static str> {
    let mut keys = vec![
        "encoder_name",
        "encoder_depth",
        "encoder_weights",
        "in_channels",
        "classes",
        "activation",
        "aux_params",
    ];
    if arch.upsampling != Upsampling::None {
        keys.push("upsampling");
    }
    if arch.output_stride.is_none() {
        // Not the model's, but a named parameter of the `get_encoder` its **kwargs reach.
        keys.push("output_stride");
    }
    keys
}

/// The decoder entry's parameters that the model class passes on (its `aux_*`
/// arguments are TerraTorch's SMPRegistry's, not the model's).
fn decoder_keys(entry: &Entry) -> Vec<String> {
    entry
        .info()
        .params
        .iter()
        .map(|p| p.name.to_string())
        .filter(|n| !n.starts_with("aux_"))
        .collect()
}

/// The `**kwargs` of the model class `arch`: the given keys it reads neither itself nor
/// through its decoder.
pub fn unread_keys<'a>(arch: &Arch, kwargs: &'a Map<String, Value>) -> Vec<&'a str> {
    let own = model_keys(arch);
    let dec = decoder_keys(&(arch.decoder_entry)());
    kwargs
        .keys()
        .map(String::as_str)
        .filter(|k| !own.contains(k) && !dec.iter().any(|d| d == k))
        .collect()
}

impl SegmentationModel {
    /// `smp.<arch>(**kwargs)` under `p` with the ResNet encoder `kwargs["encoder_name"]`.
    /// `kwargs` holds the model's keyword arguments as TerraTorch passes them
    /// (`encoder_name`, `encoder_weights`, `in_channels`, `classes` and the `smp_*` ones);
    /// keys the model does not read must have been removed ([`unread_keys`]).
    pub fn new(p: nn::Path, arch: Arch, kwargs: &Map<String, Value>) -> Result<Self> {
        let get = |k: &str| kwargs.get(k).filter(|v| !v.is_null());
        let int = |k: &str, default: i64| -> Result<i64> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.as_i64().ok_or_else(|| {
                    PluginError::invalid_argument(format!("`{k}` must be an int, got {v}"))
                }),
            }
        };
        let encoder_name = get("encoder_name")
            .and_then(Value::as_str)
            .unwrap_or("resnet34");
        let mut enc_cfg = resnet_encoder::Config::named(encoder_name).ok_or_else(|| {
            PluginError::invalid_argument(format!(
                "`{encoder_name}` is not one of smp's ResNet encoders ({})",
                resnet_encoder::NAMES.join(", ")
            ))
        })?;
        let depth = int("encoder_depth", arch.default_depth as i64)?;
        if !(1..=5).contains(&depth) {
            return Err(PluginError::invalid_argument(format!(
                "ResNetEncoder depth should be in range [1, 5], got {depth}"
            )));
        }
        enc_cfg.depth = depth as usize;
        enc_cfg.in_channels = int("in_channels", 3)?;
        let classes = int("classes", 1)?;
        if classes <= 0 {
            return Err(PluginError::invalid_argument(format!(
                "`classes` must be positive (the segmentation head's output channels), got {classes}"
            )));
        }

        // The decoder's arguments, validated against its entry (defaults filled in).
        let entry = (arch.decoder_entry)();
        let dec_keys = decoder_keys(&entry);
        let dec_args: Map<String, Value> = kwargs
            .iter()
            .filter(|(k, _)| dec_keys.iter().any(|d| d == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let qualified = format!("smp_{}", arch.name);
        let dec_args = entry.info().validate(&qualified, &dec_args)?;
        match arch.output_stride {
            Some(default) => {
                enc_cfg.output_stride = match dec_args.get("encoder_output_stride") {
                    Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
                    _ => default,
                };
            }
            None => enc_cfg.output_stride = int("output_stride", 32)?,
        }
        // The model's own checks (DeepLabV3's and PAN's output stride) come before the
        // encoder's, as in smp; the decoder only needs the encoder's channels.
        let channels = enc_cfg.out_channels();
        let ctx = BuildCtx {
            name: arch.name,
            prefix: "smp",
            args: Args::new(qualified, dec_args.clone()),
            channels: channels.clone(),
            host: NoHost::handle(),
        };
        let (decoder, head_in) = (arch.make_decoder)(&ctx, &p / "decoder")?;
        let encoder = ResNetEncoder::new(&p / "encoder", &enc_cfg)?;

        let upsampling = match arch.upsampling {
            Upsampling::None => 1,
            Upsampling::Arg(default) => int("upsampling", default)?,
            Upsampling::DeepLabV3 => match get("upsampling") {
                Some(_) => int("upsampling", 1)?,
                None if depth <= 3 => 1 << depth,
                None => enc_cfg.output_stride,
            },
        };
        let activation = Activation::parse(kwargs.get("activation").unwrap_or(&Value::Null))?;
        let head = SegmentationHead::new(
            &p / "segmentation_head",
            head_in,
            classes,
            arch.head_kernel,
            upsampling,
            activation,
        );
        let aux = match kwargs.get("aux_params") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() && arch.aux_if_truthy => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(other) => {
                return Err(PluginError::invalid_argument(format!(
                    "`aux_params` must be a dict of ClassificationHead arguments, got {other}"
                )))
            }
        };
        let classification_head = aux
            .map(|m| {
                ClassificationHead::new(
                    &p / "classification_head",
                    *channels.last().unwrap_or(&0),
                    &m,
                )
            })
            .transpose()?;
        Ok(Self {
            arch,
            encoder,
            decoder,
            head,
            classification_head,
            divisible: arch.divisible,
        })
    }

    /// The encoder's channels (`encoder.out_channels`).
    pub fn encoder_channels(&self) -> Vec<i64> {
        self.encoder.config().out_channels()
    }

    /// Whether smp built the classification head (`aux_params`).
    pub fn has_classification_head(&self) -> bool {
        self.classification_head.is_some()
    }

    /// smp's `check_input_shape`: the size must be divisible by `encoder.output_stride`.
    fn check_input_shape(&self, x: &Tensor) -> Result<()> {
        if !self.divisible {
            return Ok(());
        }
        let size = x.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let os = self.encoder.config().reduction();
        if h % os != 0 || w % os != 0 {
            let up = |v: i64| if v % os != 0 { (v / os + 1) * os } else { v };
            return Err(PluginError::forward_failed(format!(
                "Wrong input shape height={h}, width={w}. Expected image height and width divisible by {os}. \
                 Consider pad your images to shape ({}, {}).",
                up(h),
                up(w)
            )));
        }
        Ok(())
    }

    /// The mask logits `[B, classes, H', W']` (the classification head's labels are not
    /// computed: TerraTorch's wrapper discards them).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if x.dim() != 4 {
            return Err(PluginError::forward_failed(format!(
                "smp models take [B, C, H, W], got shape {:?}",
                x.size()
            )));
        }
        self.check_input_shape(x)?;
        let features = self.encoder.forward(x, train)?;
        let decoded = self.decoder.forward(&features, train)?;
        let y = decoded.into_iter().next().ok_or_else(|| {
            PluginError::forward_failed(format!("the {} decoder returned no map", self.arch.name))
        })?;
        self.head.forward(&y)
    }
}
