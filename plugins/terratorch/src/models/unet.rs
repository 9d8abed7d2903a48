//! Mirrors `terratorch/models/backbones/unet.py` (TerraTorch 1.2.11, after mmsegmentation's
//! UNet backbone) with the blocks of `terratorch/models/backbones/utils.py`
//! (`BasicConvBlock`, `UpConvBlock`) and `ConvModule` of `terratorch/models/decoders/utils.py`.
//!
//! As TerraTorch runs it: every `ConvModule` is conv (no bias), `BatchNorm2d`, ReLU whatever
//! `conv_cfg`/`norm_cfg`/`act_cfg` say (`BasicConvBlock` does not pass them on); with the
//! default `upsample_cfg=None` every decoder stage upsamples with a transposed convolution
//! (kernel 4, stride 2) even where the encoder did not downsample; `pretrained`/`init_cfg`
//! are stored and never applied (the class is a plain `nn.Module`). The backbone returns the
//! bottleneck map and every decoder stage's output, deepest first.
use serde_json::{json, Map, Value};
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// `UNet`'s constructor arguments that shape the network.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Input channels.
    pub in_channels: i64,
    /// Channels of the first stage; stage `i` has `out_channels * 2**i`.
    pub out_channels: i64,
    /// Encoder stages.
    pub num_stages: usize,
    /// Stride of each encoder stage's first convolution (1 or 2).
    pub strides: Vec<i64>,
    /// Convolutions per encoder stage.
    pub enc_num_convs: Vec<i64>,
    /// Convolutions per decoder stage.
    pub dec_num_convs: Vec<i64>,
    /// Max-pooling before encoder stages 1.. (where their stride is 1).
    pub downsamples: Vec<bool>,
    /// Dilation of the encoder stages' later convolutions.
    pub enc_dilations: Vec<i64>,
    /// Dilation of the decoder stages' later convolutions.
    pub dec_dilations: Vec<i64>,
    /// Keeps the BatchNorms in eval mode while training.
    pub norm_eval: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 64,
            num_stages: 5,
            strides: vec![1; 5],
            enc_num_convs: vec![2; 5],
            dec_num_convs: vec![2; 4],
            downsamples: vec![true; 4],
            enc_dilations: vec![1; 5],
            dec_dilations: vec![1; 4],
            norm_eval: false,
        }
    }
}

impl Config {
    /// `[out_channels * 2**i for i in reversed(range(num_stages))]`.
    pub fn feature_channels(&self) -> Vec<i64> {
        (0..self.num_stages)
            .rev()
            .map(|i| self.out_channels << i)
            .collect()
    }

    /// The whole downsampling rate the input size must be divisible by.
    pub fn downsample_rate(&self) -> i64 {
        (1..self.num_stages)
            .filter(|&i| self.strides[i] == 2 || self.downsamples[i - 1])
            .fold(1, |r, _| r * 2)
    }

    /// Upstream's length assertions, each naming its argument.
    fn validate(&self) -> Result<()> {
        let n = self.num_stages;
        if n < 1 {
            return Err(PluginError::invalid_argument(
                "`num_stages` must be at least 1",
            ));
        }
        for (name, len, want) in [
            ("strides", self.strides.len(), n),
            ("enc_num_convs", self.enc_num_convs.len(), n),
            ("dec_num_convs", self.dec_num_convs.len(), n - 1),
            ("downsamples", self.downsamples.len(), n - 1),
            ("enc_dilations", self.enc_dilations.len(), n),
            ("dec_dilations", self.dec_dilations.len(), n - 1),
        ] {
            if len != want {
                return Err(PluginError::invalid_argument(format!(
                    "the length of `{name}` ({len}) must be {want} with num_stages = {n} (TerraTorch asserts it)"
                )));
            }
        }
        if self.in_channels < 1 || self.out_channels < 1 {
            return Err(PluginError::invalid_argument(
                "`in_channels` and `out_channels` must be at least 1",
            ));
        }
        if self.strides.iter().any(|&s| s != 1 && s != 2) {
            return Err(PluginError::invalid_argument(format!(
                "`strides` must hold 1 or 2, got {:?}",
                self.strides
            )));
        }
        let all = self.enc_num_convs.iter().chain(&self.dec_num_convs);
        if all.clone().any(|&c| c < 1) {
            return Err(PluginError::invalid_argument(
                "`enc_num_convs` and `dec_num_convs` must be at least 1 each",
            ));
        }
        Ok(())
    }
}

/// The convolution of a `ConvModule`.
#[derive(Debug)]
enum Conv {
    Plain(nn::Conv2D),
    Transposed(nn::ConvTranspose2D),
}

/// `ConvModule`: convolution (no bias), BatchNorm, ReLU.
#[derive(Debug)]
struct ConvModule {
    conv: Conv,
    norm: nn::BatchNorm,
}

impl ConvModule {
    fn conv3(p: nn::Path, c_in: i64, c_out: i64, stride: i64, dilation: i64, padding: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding,
            dilation,
            bias: false,
            ..Default::default()
        };
        Self {
            conv: Conv::Plain(nn::conv2d(&p / "conv", c_in, c_out, 3, cfg)),
            norm: batch_norm2d(&p / "norm", c_out, 1e-5, 0.1),
        }
    }

    /// The upsampling `ConvModule(transpose=True, kernel_size=4, scale_factor=2)`.
    fn up(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let cfg = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        Self {
            conv: Conv::Transposed(nn::conv_transpose2d(&p / "conv", c_in, c_out, 4, cfg)),
            norm: batch_norm2d(&p / "norm", c_out, 1e-5, 0.1),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.conv {
            Conv::Plain(c) => c.forward(x),
            Conv::Transposed(c) => c.forward(x),
        };
        Ok(self.norm.forward_t(&y, train).f_relu()?)
    }
}

/// `BasicConvBlock`: `num_convs` 3x3 `ConvModule`s, the first with the stride and dilation 1.
#[derive(Debug)]
struct BasicConvBlock(Vec<ConvModule>);

impl BasicConvBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, num_convs: i64, stride: i64, dilation: i64) -> Self {
        Self(
            (0..num_convs)
                .map(|i| {
                    let q = &p / "convs" / i;
                    if i == 0 {
                        ConvModule::conv3(q, c_in, c_out, stride, 1, 1)
                    } else {
                        ConvModule::conv3(q, c_out, c_out, 1, dilation, dilation)
                    }
                })
                .collect(),
        )
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for c in &self.0 {
            y = c.forward(&y, train)?;
        }
        Ok(y)
    }
}

/// One encoder stage: an optional 2x2 max-pooling, then a `BasicConvBlock`.
#[derive(Debug)]
struct EncStage {
    pool: bool,
    block: BasicConvBlock,
}

/// `UpConvBlock`: upsample `x`, concatenate after the skip, `BasicConvBlock`.
#[derive(Debug)]
struct UpConvBlock {
    upsample: ConvModule,
    conv_block: BasicConvBlock,
}

/// TerraTorch's `UNet` backbone.
#[derive(Debug)]
pub struct UNet {
    cfg: Config,
    encoder: Vec<EncStage>,
    decoder: Vec<UpConvBlock>,
}

impl UNet {
    /// Builds the network under `p` with TerraTorch's keys (`encoder.*`, `decoder.*`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let (mut encoder, mut decoder) = (Vec::new(), Vec::new());
        let mut c_in = cfg.in_channels;
        for i in 0..cfg.num_stages {
            let c = cfg.out_channels << i;
            let pool = i != 0 && cfg.strides[i] == 1 && cfg.downsamples[i - 1];
            if i != 0 {
                let (d, skip) = (&p / "decoder" / (i - 1), cfg.out_channels << (i - 1));
                decoder.push(UpConvBlock {
                    upsample: ConvModule::up(&d / "upsample", c, skip),
                    conv_block: BasicConvBlock::new(
                        &d / "conv_block",
                        2 * skip,
                        skip,
                        cfg.dec_num_convs[i - 1],
                        1,
                        cfg.dec_dilations[i - 1],
                    ),
                });
            }
            // the max-pooling holds index 0 of the stage's Sequential when present
            let q = &p / "encoder" / i / usize::from(pool);
            let block = BasicConvBlock::new(
                q,
                c_in,
                c,
                cfg.enc_num_convs[i],
                cfg.strides[i],
                cfg.enc_dilations[i],
            );
            encoder.push(EncStage { pool, block });
            c_in = c;
        }
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder,
        })
    }
}

impl Model for UNet {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = match xs {
            [x] => x,
            _ => {
                return Err(PluginError::invalid_argument(format!(
                    "UNet takes one image tensor, got {} inputs",
                    xs.len()
                )))
            }
        };
        let size = x.size();
        let rate = self.cfg.downsample_rate();
        if size.len() != 4 || size[2] % rate != 0 || size[3] % rate != 0 {
            return Err(PluginError::forward_failed(format!(
                "the input image size {:?} should be [B, C, H, W] with H and W divisible by the whole downsample rate \
                 {rate} (num_stages {}, strides {:?}, downsamples {:?}), as TerraTorch asserts",
                size, self.cfg.num_stages, self.cfg.strides, self.cfg.downsamples
            )));
        }
        // norm_eval keeps the BatchNorms on their running statistics while training
        let bn_train = train && !self.cfg.norm_eval;
        let mut y = x.shallow_clone();
        let mut enc = Vec::with_capacity(self.encoder.len());
        for s in &self.encoder {
            if s.pool {
                y = y.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
            }
            y = s.block.forward(&y, bn_train)?;
            enc.push(y.shallow_clone());
        }
        let mut out = vec![y.shallow_clone()];
        for (i, d) in self.decoder.iter().enumerate().rev() {
            let up = d.upsample.forward(&y, bn_train)?;
            y = d
                .conv_block
                .forward(&Tensor::f_cat(&[&enc[i], &up], 1)?, bn_train)?;
            out.push(y.shallow_clone());
        }
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.cfg.feature_channels()
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("downsample_rate".into(), json!(self.cfg.downsample_rate()));
        m
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let a = &ctx.args;
    let cfg = Config {
        in_channels: a.get("in_channels")?,
        out_channels: a.get("out_channels")?,
        num_stages: a.get("num_stages")?,
        strides: a.get("strides")?,
        enc_num_convs: a.get("enc_num_convs")?,
        dec_num_convs: a.get("dec_num_convs")?,
        downsamples: a.get("downsamples")?,
        enc_dilations: a.get("enc_dilations")?,
        dec_dilations: a.get("dec_dilations")?,
        norm_eval: a.get("norm_eval")?,
    };
    for name in ["dcn", "plugins"] {
        if a.raw(name).is_some_and(|v| !v.is_null()) {
            return Err(PluginError::invalid_argument(format!(
                "`{name}` must be null: TerraTorch's UNet asserts it is None (\"Not implemented yet.\")"
            )));
        }
    }
    if a.raw("upsample_cfg").is_some_and(|v| !v.is_null()) {
        return Err(PluginError::invalid_argument(
            "`upsample_cfg` other than null (mmseg's build_upsample_layer) is not supported; with null every \
             decoder stage upsamples with TerraTorch's transposed ConvModule",
        ));
    }
    let pretrained = a.raw("pretrained").filter(|v| !v.is_null());
    let init_cfg = a.raw("init_cfg").filter(|v| !v.is_null());
    match pretrained {
        Some(Value::String(s)) => {
            if init_cfg.is_some() {
                return Err(PluginError::invalid_argument(
                    "`init_cfg` and `pretrained` cannot be set at the same time (TerraTorch asserts it)",
                ));
            }
            let msg = format!(
                "`{}`: pretrained={s:?} is stored as an init_cfg that TerraTorch's UNet (a plain nn.Module) never \
                 applies; no weights are loaded (load them with --weights)",
                ctx.qualified()
            );
            tracing::warn!("{msg}");
            terrahost_plugin_api::warn!("{msg}");
        }
        Some(other) => {
            return Err(PluginError::invalid_argument(format!(
                "`pretrained` must be a str or None (TerraTorch raises TypeError), got {other}"
            )))
        }
        None => {}
    }
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model =
        UNet::new(vs.root(), &cfg).map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// The `UNet` backbone entry.
pub fn entry() -> Entry {
    let d = Config::default();
    Entry::new(
        "UNet",
        "TerraTorch's UNet backbone (mmseg's): conv-BN-ReLU encoder stages with max-pooling or strided convolutions, \
         decoder stages that upsample with a transposed conv, concatenate the skip and convolve; returns the \
         bottleneck and every decoder output, deepest first (out_channels [out_channels * 2**i for i in reversed \
         stages]). conv_cfg/norm_cfg/act_cfg are ignored as upstream ignores them; upsample_cfg must be null.",
        build,
    )
    .opt("in_channels", ParamType::INT, json!(d.in_channels), "input channels")
    .opt("out_channels", ParamType::INT, json!(d.out_channels), "channels of the first stage (stage i: out_channels * 2**i)")
    .opt("num_stages", ParamType::INT, json!(d.num_stages), "encoder stages")
    .opt("strides", ParamType::INT_LIST, json!(d.strides), "stride (1 or 2) of each encoder stage's first convolution")
    .opt("enc_num_convs", ParamType::INT_LIST, json!(d.enc_num_convs), "convolutions per encoder stage")
    .opt("dec_num_convs", ParamType::INT_LIST, json!(d.dec_num_convs), "convolutions per decoder stage")
    .opt("downsamples", ParamType::ANY, json!(d.downsamples), "max-pool before encoder stages 1.. (where their stride is 1)")
    .opt("enc_dilations", ParamType::INT_LIST, json!(d.enc_dilations), "dilation of each encoder stage's later convolutions")
    .opt("dec_dilations", ParamType::INT_LIST, json!(d.dec_dilations), "dilation of each decoder stage's later convolutions")
    .opt("norm_eval", ParamType::BOOL, json!(false), "keep the BatchNorms on their running statistics in train mode")
    .opt("upsample_cfg", ParamType::ANY, Value::Null, "must be null (the transposed-conv upsampling); mmseg upsample configs are not supported")
    .opt("dcn", ParamType::ANY, Value::Null, "must be null, as upstream asserts")
    .opt("plugins", ParamType::ANY, Value::Null, "must be null, as upstream asserts")
    .opt("pretrained", ParamType::ANY, Value::Null, "a path is stored and never loaded, as upstream; anything but a string or null is refused")
    .opt("init_cfg", ParamType::ANY, Value::Null, "stored and never applied, as upstream")
    .ignores("with_cp", "gradient checkpointing: saves memory in training only, the numbers are the same")
    .ignores("conv_cfg", "TerraTorch's BasicConvBlock does not pass it to its ConvModules")
    .ignores("norm_cfg", "TerraTorch's BasicConvBlock does not pass it to its ConvModules (always BatchNorm2d)")
    .ignores("act_cfg", "TerraTorch's BasicConvBlock does not pass it to its ConvModules (always ReLU)")
}
