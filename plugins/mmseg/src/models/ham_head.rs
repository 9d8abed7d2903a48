//! mmsegmentation 1.2.2's `LightHamHead` (`mmseg/models/decode_heads/ham_head.py`,
//! SegNeXt): the maps are resized to the first one's size, concatenated, squeezed,
//! passed through a "Hamburger" (1x1 conv, non-negative matrix factorisation
//! `NMF2D`, 1x1 conv, residual) and aligned, built as TerraTorch's `MMSegRegistry`
//! builds it. It forces `input_transform="multiple_select"`.
//!
//! With `ham_kwargs.rand_init` true (mmseg's default) the NMF bases are drawn with
//! `torch.rand` at every forward, so outputs are random unless the caller seeds
//! libtorch's generator (`tch::manual_seed` here gives the same draws as
//! `torch.manual_seed` in Python). With `rand_init` false the bases are the buffer
//! `hamburger.ham.bases` `[MD_S, C / MD_S, MD_R]`; mmseg registers that buffer at
//! the first forward, here it exists from construction.
use super::conv_module::{ConvModule, ConvModuleCfg};
use super::decode_head::{
    build_wrapped, head_entry, normalize, resize, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// `ham_kwargs`: the arguments of mmseg's `NMF2D`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NmfArgs {
    /// Number of spatial groups the channels are split into (`MD_S`).
    pub md_s: i64,
    /// Rank of the factorisation (`MD_R`).
    pub md_r: i64,
    /// Multiplicative-update steps in training.
    pub train_steps: i64,
    /// Multiplicative-update steps in eval.
    pub eval_steps: i64,
    /// Draw fresh random bases at every forward.
    pub rand_init: bool,
}

impl NmfArgs {
    /// Parses `ham_kwargs` (mmseg's defaults for missing keys). `inv_t` is accepted
    /// and has no effect: `NMF2D` overrides it with 1.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let map = match v {
            Value::Null => {
                return Ok(Self {
                    md_s: 1,
                    md_r: 64,
                    train_steps: 6,
                    eval_steps: 7,
                    rand_init: true,
                })
            }
            Value::Object(m) => m,
            other => return Err(format!("must be a dict, got {other}")),
        };
        const KEYS: [&str; 6] = [
            "MD_S",
            "MD_R",
            "train_steps",
            "eval_steps",
            "inv_t",
            "rand_init",
        ];
        if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "key `{k}` is not an NMF2D argument (supported: {})",
                KEYS.join(", ")
            ));
        }
        let int = |k: &str, d: i64| match map.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| format!("`{k}` must be an integer, got {v}")),
        };
        let s = Self {
            md_s: int("MD_S", 1)?,
            md_r: int("MD_R", 64)?,
            train_steps: int("train_steps", 6)?,
            eval_steps: int("eval_steps", 7)?,
            rand_init: match map.get("rand_init") {
                None => true,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| format!("`rand_init` must be a bool, got {v}"))?,
            },
        };
        if let Some(v) = map.get("inv_t") {
            v.as_f64()
                .ok_or_else(|| format!("`inv_t` must be a number, got {v}"))?;
        }
        if s.md_s < 1 || s.md_r < 1 || s.train_steps < 0 || s.eval_steps < 0 {
            return Err(format!(
                "MD_S and MD_R must be positive and the step counts non-negative, got MD_S={}, MD_R={}, \
                 train_steps={}, eval_steps={}",
                s.md_s, s.md_r, s.train_steps, s.eval_steps
            ));
        }
        Ok(s)
    }
}

/// mmseg's `NMF2D`.
#[derive(Debug)]
struct Nmf2d {
    args: NmfArgs,
    bases: Option<Tensor>,
}

impl Nmf2d {
    fn new(p: nn::Path, c: i64, args: NmfArgs) -> Self {
        let bases = (!args.rand_init).then(|| {
            let mut b = p.zeros_no_train("bases", &[args.md_s, c / args.md_s, args.md_r]);
            tch::no_grad(|| {
                let init =
                    Self::random_bases(args.md_s, c / args.md_s, args.md_r).expect("fresh bases");
                b.copy_(&init);
            });
            b
        });
        Self { args, bases }
    }

    /// `rand(n, d, r)` with unit-norm columns (drawn on the CPU, as mmseg does).
    fn random_bases(n: i64, d: i64, r: i64) -> Result<Tensor> {
        normalize(&Tensor::rand([n, d, r], (Kind::Float, Device::Cpu)), 2.0, 1)
    }

    /// One multiplicative update of the coefficients.
    fn update_coef(x: &Tensor, bases: &Tensor, coef: &Tensor) -> Result<Tensor> {
        let num = x.f_transpose(1, 2)?.f_bmm(bases)?;
        let den = coef.f_bmm(&bases.f_transpose(1, 2)?.f_bmm(bases)?)?;
        Ok(coef.f_mul(&num)?.f_div(&den.f_add_scalar(1e-6)?)?)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = x.size();
        let (b, c) = (s[0], s[1]);
        let (md_s, d) = (self.args.md_s, c / self.args.md_s);
        // [B*S, D, N]
        let x = x.f_reshape([b * md_s, d, -1])?;
        let mut bases = match &self.bases {
            Some(buf) => buf.f_repeat([b, 1, 1])?,
            None => Self::random_bases(b * md_s, d, self.args.md_r)?.f_to_device(x.device())?,
        };
        let mut coef = x.f_transpose(1, 2)?.f_bmm(&bases)?.f_softmax(-1, None)?;
        let steps = if train {
            self.args.train_steps
        } else {
            self.args.eval_steps
        };
        for _ in 0..steps {
            coef = Self::update_coef(&x, &bases, &coef)?;
            let num = x.f_bmm(&coef)?;
            let den = bases.f_bmm(&coef.f_transpose(1, 2)?.f_bmm(&coef)?)?;
            bases = bases.f_mul(&num)?.f_div(&den.f_add_scalar(1e-6)?)?;
        }
        let coef = Self::update_coef(&x, &bases, &coef)?;
        Ok(bases
            .f_bmm(&coef.f_transpose(1, 2)?)?
            .f_reshape(s.as_slice())?)
    }
}

/// mmseg's `LightHamHead`.
#[derive(Debug)]
pub struct LightHamHead {
    base: BaseCfg,
    squeeze: ConvModule,
    ham_in: ConvModule,
    ham: Nmf2d,
    ham_out: ConvModule,
    align: ConvModule,
    conv_seg: ClsSeg,
}

impl LightHamHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, ham_channels: i64, nmf: NmfArgs) -> Result<Self> {
        let (cfg, c, h) = (&base.conv, base.channels, ham_channels);
        let hp = &p / "hamburger";
        Ok(Self {
            squeeze: ConvModule::new(
                &p / "squeeze",
                base.in_channels.iter().sum(),
                h,
                1,
                0,
                1,
                cfg,
            )?,
            ham_in: ConvModule::new(
                &hp / "ham_in",
                h,
                h,
                1,
                0,
                1,
                &ConvModuleCfg {
                    norm_cfg: None,
                    act_cfg: None,
                },
            )?,
            ham: Nmf2d::new(&hp / "ham", h, nmf),
            ham_out: ConvModule::new(
                &hp / "ham_out",
                h,
                h,
                1,
                0,
                1,
                &ConvModuleCfg {
                    norm_cfg: cfg.norm_cfg.clone(),
                    act_cfg: None,
                },
            )?,
            align: ConvModule::new(&p / "align", h, c, 1, 0, 1, cfg)?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }
}

impl DecodeHead for LightHamHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let maps = self.base.select(xs)?;
        let size = maps[0].size();
        let resized = maps
            .iter()
            .map(|m| resize(m, size[2], size[3], self.base.align_corners))
            .collect::<Result<Vec<_>>>()?;
        let x = self.squeeze.forward(&Tensor::f_cat(&resized, 1)?, train)?;
        // Hamburger: relu(x + ham_out(nmf(relu(ham_in(x)))))
        let enjoy = self.ham_in.forward(&x, train)?.f_relu()?;
        let enjoy = self
            .ham_out
            .forward(&self.ham.forward(&enjoy, train)?, train)?;
        let x = x.f_add(&enjoy)?.f_relu()?;
        let y = self.align.forward(&x, train)?;
        Ok(vec![self.conv_seg.forward(&y, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::MULTIPLE)?;
    let a = &ctx.args;
    let ham_channels: i64 = a.get("ham_channels")?;
    a.ensure(
        ham_channels > 0,
        "ham_channels",
        format_args!("must be positive, got {ham_channels}"),
    )?;
    let nmf = NmfArgs::from_json(a.raw("ham_kwargs").unwrap_or(&Value::Null)).map_err(|why| {
        PluginError::invalid_argument(format!(
            "argument `ham_kwargs` of `{}`: {why}",
            ctx.qualified()
        ))
    })?;
    a.ensure(
        ham_channels % nmf.md_s == 0,
        "ham_kwargs",
        format_args!(
            "MD_S ({}) must divide ham_channels ({ham_channels})",
            nmf.md_s
        ),
    )?;
    build_wrapped(ctx, |p| LightHamHead::new(p, &base, ham_channels, nmf))
}

/// The `LightHamHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "LightHamHead",
        "SegNeXt's light Hamburger decode head from mmsegmentation (includes its own classifier). Reads several maps \
         (in_index with one index per channel-list entry), resizes them to the first one's size, concatenates and \
         squeezes them, applies a Hamburger (non-negative matrix factorisation between two 1x1 convs, residual), \
         aligns, then dropout and a 1x1 conv_seg to class logits at the first map's resolution. With \
         ham_kwargs.rand_init (default) the NMF starts from fresh torch.rand bases at every forward.",
        build,
        |e| {
            e.opt("ham_channels", ParamType::INT, json!(512), "channels of the Hamburger").opt(
                "ham_kwargs",
                ParamType::DICT,
                json!({}),
                "NMF2D arguments: MD_S (1), MD_R (64), train_steps (6), eval_steps (7), inv_t (ignored), rand_init (true)",
            )
        },
        BaseParams::multiple_select(),
    )
}
