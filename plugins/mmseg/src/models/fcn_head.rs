//! mmsegmentation 1.2.2's `FCNHead` (`mmseg/models/decode_heads/fcn_head.py`) on top
//! of `BaseDecodeHead` (see [`super::decode_head`]), and the pieces of it that its
//! subclasses reuse (`NLHead`, `GCHead`, `STDCHead`, `DepthwiseSeparableFCNHead`):
//! the `kernel_size`/`concat_input`/`dilation` arguments and the `convs` + `conv_cat`
//! trunk.
use super::conv_module::{ConvModule, ConvModuleCfg, NormCfg};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, InIndex, Inputs,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The `FCNHead` arguments its subclasses keep (`NLHead` and `GCHead` fix
/// `num_convs=2` themselves).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq)]
pub struct FcnArgs {
    /// Kernel size of the convs and of `conv_cat`.
    pub kernel_size: i64,
    /// Fuse the input with the convs' output (`conv_cat`).
    pub concat_input: bool,
    /// Dilation of the convs in `convs`.
    pub dilation: i64,
}

impl Default for FcnArgs {
    /// mmseg's defaults.
    fn default() -> Self {
        Self {
            kernel_size: 3,
            concat_input: true,
            dilation: 1,
        }
    }
}

impl FcnArgs {
    /// Reads and checks them.
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>) -> Result<Self> {
        let a = &ctx.args;
        let s = Self {
            kernel_size: a.get("kernel_size")?,
            concat_input: a.get("concat_input")?,
            dilation: a.get("dilation")?,
        };
        a.ensure(
            s.kernel_size > 0,
            "kernel_size",
            format_args!("must be positive, got {}", s.kernel_size),
        )?;
        a.ensure(
            s.dilation > 0,
            "dilation",
            format_args!("must be a positive integer, got {}", s.dilation),
        )?;
        Ok(s)
    }

    /// Declares them with FCNHead's defaults.
    pub fn declare(e: Entry) -> Entry {
        e.opt(
            "kernel_size",
            ParamType::INT,
            json!(3),
            "kernel size of the convs and of conv_cat",
        )
        .opt(
            "concat_input",
            ParamType::BOOL,
            json!(true),
            "concatenate the input with the convs' output and fuse them (conv_cat)",
        )
        .opt(
            "dilation",
            ParamType::INT,
            json!(1),
            "dilation of the convs",
        )
    }
}

/// Configuration of [`FcnHead`], with mmseg's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// The `BaseDecodeHead` part.
    #[serde(flatten)]
    pub base: BaseCfg,
    /// Number of convs before the optional concatenation.
    pub num_convs: i64,
    /// Kernel size, `concat_input`, dilation.
    #[serde(flatten)]
    pub fcn: FcnArgs,
}

impl Config {
    /// mmseg's defaults for a head on one feature map of `in_channels` channels.
    pub fn new(in_channels: i64, channels: i64, num_classes: i64) -> Self {
        Self {
            base: BaseCfg::new(in_channels, channels, num_classes),
            num_convs: 2,
            fcn: FcnArgs::default(),
        }
    }

    /// The decode head of mmseg's `configs/_base_/models/fcn_r50-d8.py` (Cityscapes:
    /// 19 classes, on ResNet-50's last stage, SyncBN).
    pub fn fcn_r50_d8() -> Self {
        let mut cfg = Self::new(2048, 512, 19);
        cfg.base.in_index = InIndex::One(3);
        cfg.base.conv.norm_cfg = Some(NormCfg::BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            requires_grad: true,
        });
        cfg
    }

    /// Reads the arguments declared by [`declare`] (FCNHead reads one tensor).
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>) -> Result<Self> {
        let cfg = Self {
            base: BaseCfg::from_ctx(ctx, Inputs::One)?,
            num_convs: ctx.args.get("num_convs")?,
            fcn: FcnArgs::from_ctx(ctx)?,
        };
        cfg.validate()
            .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
        Ok(cfg)
    }

    /// What FCNHead asserts besides `BaseDecodeHead`.
    pub fn validate(&self) -> Result<()> {
        self.base.validate("FCNHead", Inputs::One)?;
        let bad = |what: String| Err(PluginError::invalid_argument(format!("argument {what}")));
        if self.num_convs < 0 {
            return bad(format!("`num_convs` must be >= 0, got {}", self.num_convs));
        }
        if self.fcn.kernel_size <= 0 || self.fcn.dilation <= 0 {
            return bad(format!(
                "`kernel_size` and `dilation` must be positive, got {} and {}",
                self.fcn.kernel_size, self.fcn.dilation
            ));
        }
        if self.num_convs == 0 && self.base.in_ch() != self.base.channels {
            return bad(format!(
                "`num_convs`: 0 needs `channels` ({}) equal to the input channels ({})",
                self.base.channels,
                self.base.in_ch()
            ));
        }
        Ok(())
    }
}

/// Declares `num_convs` and [`FcnArgs`] (after `own`'s parameters), for FCNHead and
/// the subclasses that keep `num_convs`.
pub fn declare(e: Entry) -> Entry {
    FcnArgs::declare(e.opt(
        "num_convs",
        ParamType::INT,
        json!(2),
        "number of convs before the classifier (0 needs channels == input channels)",
    ))
}

/// FCNHead's layers before `cls_seg`: `convs.N` and the optional `conv_cat`.
#[derive(Debug)]
pub struct FcnTrunk {
    convs: Vec<ConvModule>,
    conv_cat: Option<ConvModule>,
}

impl FcnTrunk {
    /// `num_convs` convs under `p` from `c_in` input channels to `channels`, and
    /// `conv_cat` with `concat_input`.
    pub fn new(
        p: &nn::Path,
        c_in: i64,
        channels: i64,
        num_convs: i64,
        f: FcnArgs,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let k = f.kernel_size;
        let convs = (0..num_convs)
            .map(|i| {
                let c = if i == 0 { c_in } else { channels };
                ConvModule::new(
                    p / "convs" / i,
                    c,
                    channels,
                    k,
                    (k / 2) * f.dilation,
                    f.dilation,
                    cfg,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv_cat = f
            .concat_input
            .then(|| ConvModule::new(p / "conv_cat", c_in + channels, channels, k, k / 2, 1, cfg))
            .transpose()?;
        Ok(Self { convs, conv_cat })
    }

    /// `convs.0 -> block -> convs.1.. -> conv_cat([x, .])`; subclasses put their
    /// block after the first conv.
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        block: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut block = Some(block);
        let mut y = x.shallow_clone();
        for conv in &self.convs {
            y = conv.forward(&y, train)?;
            if let Some(b) = block.take() {
                y = b(&y)?;
            }
        }
        match &self.conv_cat {
            // [B, C_in, h, w] ++ [B, channels, h, w] -> [B, channels, h, w]
            Some(cat) => cat.forward(&Tensor::f_cat(&[x, &y], 1)?, train),
            None => Ok(y),
        }
    }
}

/// mmseg's `FCNHead`: `num_convs` ConvModules, optionally `conv_cat` over
/// `[input, convs(input)]`, then Dropout2d and a 1x1 `conv_seg` to class logits.
///
/// Input: the list of feature maps. Output: one `[B, out_channels, h, w]` logit map
/// at the selected (first selected) map's resolution; it is not resized.
#[derive(Debug)]
pub struct FcnHead {
    trunk: FcnTrunk,
    cls: ClsSeg,
    cfg: Config,
}

impl FcnHead {
    /// Builds the head under `p` (`p.convs.N`, `p.conv_cat`, `p.conv_seg`).
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let b = &cfg.base;
        Ok(Self {
            trunk: FcnTrunk::new(&p, b.in_ch(), b.channels, cfg.num_convs, cfg.fcn, &b.conv)?,
            cls: b.cls_seg(&p),
            cfg: cfg.clone(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl DecodeHead for FcnHead {
    fn base(&self) -> &BaseCfg {
        &self.cfg.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.cfg.base.select_one(xs)?;
        let feats = self.trunk.forward(&x, train, |y| Ok(y.shallow_clone()))?;
        Ok(vec![self.cls.forward(&feats, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = Config::from_ctx(ctx)?;
    build_wrapped(ctx, |p| FcnHead::new(p, &cfg))
}

/// The `FCNHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "FCNHead",
        "Fully convolutional decode head of mmsegmentation (FCNHead, wrapped as TerraTorch's MMSegRegistry wraps \
         it; includes its own classifier): num_convs conv-norm-act blocks on the selected feature map, optionally \
         fused with the input (concat_input), then dropout and a 1x1 conv_seg to num_classes logits at the \
         feature map's resolution (not resized).",
        build,
        declare,
        BaseParams::default(),
    )
}
