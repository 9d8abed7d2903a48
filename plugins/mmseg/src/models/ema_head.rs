//! mmsegmentation 1.2.2's `EMAHead` (`mmseg/models/decode_heads/ema_head.py`,
//! EMANet): expectation-maximisation attention over a set of bases, built as
//! TerraTorch's `MMSegRegistry` builds it.
//!
//! The bases are a buffer (`ema_module.bases`, in the state_dict) drawn at
//! construction; in training each forward moves them towards the batch's bases
//! (momentum), as mmseg does (without the multi-process mean).
use super::conv_module::{ConvModule, ConvModuleCfg};
use super::decode_head::{
    head_entry, normalize, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs, MmsegDecoderWrapper,
};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// mmseg's `EMAModule`.
#[derive(Debug)]
pub struct EmaModule {
    bases: Tensor,
    num_stages: i64,
    momentum: f64,
}

impl EmaModule {
    /// Builds it under `p` with `num_bases` random unit-norm bases of `channels`.
    pub fn new(p: nn::Path, channels: i64, num_bases: i64, num_stages: i64, momentum: f64) -> Self {
        let mut bases = p.zeros_no_train("bases", &[1, channels, num_bases]);
        tch::no_grad(|| {
            let init = Tensor::randn([1, channels, num_bases], (Kind::Float, Device::Cpu))
                * (2.0 / num_bases as f64).sqrt();
            let init = normalize(&init, 2.0, 1).expect("normalising fresh bases");
            bases.copy_(&init.to_device(bases.device()));
        });
        Self {
            bases,
            num_stages,
            momentum,
        }
    }

    /// Reconstructs `feats` `[B, C, H, W]` from the bases after the EM iterations.
    pub fn forward(&self, feats: &Tensor, train: bool) -> Result<Tensor> {
        let s = feats.size();
        let (b, c) = (s[0], s[1]);
        // [B, C, N]
        let feats = feats.f_reshape([b, c, -1])?;
        let (bases, attention) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let mut bases = self.bases.f_repeat([b, 1, 1])?;
            let mut attention = Tensor::zeros([0], (Kind::Float, Device::Cpu));
            for _ in 0..self.num_stages {
                // [B, N, K]
                attention = feats.f_transpose(1, 2)?.f_bmm(&bases)?.f_softmax(2, None)?;
                let normed = normalize(&attention, 1.0, 1)?;
                // [B, C, K]
                bases = normalize(&feats.f_bmm(&normed)?, 2.0, 1)?;
            }
            Ok((bases, attention))
        })?;
        // [B, C, K] x [B, K, N] -> [B, C, H, W]
        let recon = bases
            .f_bmm(&attention.f_transpose(1, 2)?)?
            .f_reshape(s.as_slice())?;
        if train {
            tch::no_grad(|| -> Result<()> {
                let mean = normalize(
                    &bases.f_mean_dim(Some([0i64].as_slice()), true, None)?,
                    2.0,
                    1,
                )?;
                let updated =
                    (&self.bases * (1.0 - self.momentum)).f_add(&(mean * self.momentum))?;
                self.bases.shallow_clone().copy_(&updated);
                Ok(())
            })?;
        }
        Ok(recon)
    }
}

/// mmseg's `EMAHead`.
#[derive(Debug)]
pub struct EmaHead {
    base: BaseCfg,
    ema_module: EmaModule,
    ema_in_conv: ConvModule,
    ema_mid_conv: ConvModule,
    ema_out_conv: ConvModule,
    bottleneck: ConvModule,
    conv_cat: Option<ConvModule>,
    conv_seg: ClsSeg,
}

/// `EMAHead`'s own arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaArgs {
    /// Channels of the EMA module.
    pub ema_channels: i64,
    /// Number of bases.
    pub num_bases: i64,
    /// EM iterations.
    pub num_stages: i64,
    /// Fuse the input with the output (`conv_cat`).
    pub concat_input: bool,
    /// Momentum of the bases' update in training.
    pub momentum: f64,
}

impl EmaHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, e: EmaArgs) -> Result<Self> {
        let (c_in, c, ce) = (base.in_ch(), base.channels, e.ema_channels);
        let cfg = &base.conv;
        let no_act = ConvModuleCfg {
            norm_cfg: cfg.norm_cfg.clone(),
            act_cfg: None,
        };
        let plain = ConvModuleCfg {
            norm_cfg: None,
            act_cfg: None,
        };
        Ok(Self {
            ema_module: EmaModule::new(
                &p / "ema_module",
                ce,
                e.num_bases,
                e.num_stages,
                e.momentum,
            ),
            ema_in_conv: ConvModule::new(&p / "ema_in_conv", c_in, ce, 3, 1, 1, cfg)?,
            ema_mid_conv: ConvModule::new(&p / "ema_mid_conv", ce, ce, 1, 0, 1, &plain)?,
            ema_out_conv: ConvModule::new(&p / "ema_out_conv", ce, ce, 1, 0, 1, &no_act)?,
            bottleneck: ConvModule::new(&p / "bottleneck", ce, c, 3, 1, 1, cfg)?,
            conv_cat: e
                .concat_input
                .then(|| ConvModule::new(&p / "conv_cat", c_in + c, c, 3, 1, 1, cfg))
                .transpose()?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }
}

impl DecodeHead for EmaHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let identity = self.ema_in_conv.forward(&x, train)?;
        let feats = self.ema_mid_conv.forward(&identity, train)?;
        let recon = self.ema_module.forward(&feats, train)?.f_relu()?;
        let recon = self.ema_out_conv.forward(&recon, train)?;
        let out = self
            .bottleneck
            .forward(&identity.f_add(&recon)?.f_relu()?, train)?;
        let out = match &self.conv_cat {
            Some(cat) => cat.forward(&Tensor::f_cat(&[&x, &out], 1)?, train)?,
            None => out,
        };
        Ok(vec![self.conv_seg.forward(&out, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let a = &ctx.args;
    let e = EmaArgs {
        ema_channels: a.get("ema_channels")?,
        num_bases: a.get("num_bases")?,
        num_stages: a.get("num_stages")?,
        concat_input: a.get("concat_input")?,
        momentum: a.get("momentum")?,
    };
    a.ensure(
        e.ema_channels > 0,
        "ema_channels",
        format_args!("must be positive, got {}", e.ema_channels),
    )?;
    a.ensure(
        e.num_bases > 0,
        "num_bases",
        format_args!("must be positive, got {}", e.num_bases),
    )?;
    a.ensure(
        e.num_stages >= 1,
        "num_stages",
        format_args!("must be at least 1, got {}", e.num_stages),
    )?;
    a.ensure(
        (0.0..=1.0).contains(&e.momentum),
        "momentum",
        format_args!("must be in [0, 1], got {}", e.momentum),
    )?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MmsegDecoderWrapper::new(vs.root(), |p| EmaHead::new(p, &base, e))?;
    // mmseg freezes ema_mid_conv's parameters.
    for (name, t) in vs.variables() {
        if name.starts_with("decoder.ema_mid_conv.") {
            let _ = t.set_requires_grad(false);
        }
    }
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// The `EMAHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "EMAHead",
        "Expectation-maximisation attention decode head of mmsegmentation (EMANet; includes its own classifier): \
         conv, EM iterations that fit num_bases bases to the features and reconstruct them, residual fusion, \
         bottleneck conv, optional fusion with the input, then dropout and a 1x1 conv_seg to class logits at the \
         feature map's resolution. The bases are a random buffer (ema_module.bases), updated in training.",
        build,
        |e| {
            e.req("ema_channels", ParamType::INT, "channels of the EMA module (required)")
                .req("num_bases", ParamType::INT, "number of bases (required)")
                .req("num_stages", ParamType::INT, "number of EM iterations, at least 1 (required)")
                .opt("concat_input", ParamType::BOOL, json!(true), "fuse the input with the output (conv_cat)")
                .opt("momentum", ParamType::FLOAT, json!(0.1), "momentum of the bases' update in training")
        },
        BaseParams::default(),
    )
}
