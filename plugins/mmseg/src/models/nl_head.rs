//! mmsegmentation 1.2.2's `NLHead` (`mmseg/models/decode_heads/nl_head.py`) and
//! `DNLHead` (`mmseg/models/decode_heads/dnl_head.py`): FCNHeads whose two convs
//! enclose mmcv 2.1's `NonLocal2d` (`mmcv/cnn/bricks/non_local.py`) or mmseg's
//! `DisentangledNonLocal2d`, built as TerraTorch's `MMSegRegistry` builds them.
use super::conv_module::{torch_conv2d, ConvModule, ConvModuleCfg};
use super::decode_head::{
    build_wrapped, head_entry, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use super::fcn_head::{FcnArgs, FcnTrunk};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// How `NonLocal2d` weighs pairs of positions (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NlMode {
    /// softmax(x x^T) on the raw features (no theta/phi).
    Gaussian,
    /// softmax(theta phi^T), scaled by 1/sqrt(inter) with `use_scale`.
    EmbeddedGaussian,
    /// theta phi^T / N.
    DotProduct,
    /// relu(w [theta; phi]) / N.
    Concatenation,
}

impl NlMode {
    /// Parses mmcv's name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "gaussian" => Self::Gaussian,
            "embedded_gaussian" => Self::EmbeddedGaussian,
            "dot_product" => Self::DotProduct,
            "concatenation" => Self::Concatenation,
            other => {
                return Err(format!(
                    "must be \"gaussian\", \"embedded_gaussian\", \"dot_product\" or \"concatenation\", got {other:?}"
                ))
            }
        })
    }
}

/// mmcv's `NonLocal2d` (no sub-sampling): `x + conv_out(attention(x) g(x))`.
#[derive(Debug)]
pub struct NonLocal2d {
    g: ConvModule,
    theta: Option<ConvModule>,
    phi: Option<ConvModule>,
    conv_out: ConvModule,
    concat_project: Option<nn::Conv2D>,
    in_channels: i64,
    inter: i64,
    use_scale: bool,
    mode: NlMode,
    /// `DisentangledNonLocal2d`: the temperature and the unary `conv_mask`.
    disentangled: Option<(f64, nn::Conv2D)>,
}

impl NonLocal2d {
    /// mmseg's `DisentangledNonLocal2d` under `p` (adds `conv_mask`): whitened
    /// pairwise term with a temperature, plus a unary (global) term.
    pub fn disentangled(
        p: &nn::Path,
        c: i64,
        reduction: i64,
        use_scale: bool,
        mode: NlMode,
        temperature: f64,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let mut block = Self::new(p, c, reduction, use_scale, mode, cfg)?;
        block.disentangled = Some((temperature, torch_conv2d(p / "conv_mask", c, 1, 1, 0, true)));
        Ok(block)
    }

    /// Builds the block under `p` (`g`, `theta`, `phi`, `conv_out`, `concat_project`).
    pub fn new(
        p: &nn::Path,
        c: i64,
        reduction: i64,
        use_scale: bool,
        mode: NlMode,
        cfg: &ConvModuleCfg,
    ) -> Result<Self> {
        let inter = (c / reduction).max(1);
        let plain = ConvModuleCfg {
            norm_cfg: None,
            act_cfg: None,
        };
        let g = ConvModule::new(p / "g", c, inter, 1, 0, 1, &plain)?;
        let (theta, phi) = if mode == NlMode::Gaussian {
            (None, None)
        } else {
            (
                Some(ConvModule::new(p / "theta", c, inter, 1, 0, 1, &plain)?),
                Some(ConvModule::new(p / "phi", c, inter, 1, 0, 1, &plain)?),
            )
        };
        let out_cfg = ConvModuleCfg {
            norm_cfg: cfg.norm_cfg.clone(),
            act_cfg: None,
        };
        let conv_out = ConvModule::new(p / "conv_out", inter, c, 1, 0, 1, &out_cfg)?;
        // A ConvModule with bias=False and ReLU: only its conv has parameters.
        let concat_project = (mode == NlMode::Concatenation)
            .then(|| torch_conv2d(p / "concat_project" / "conv", inter * 2, 1, 1, 0, false));
        Ok(Self {
            g,
            theta,
            phi,
            conv_out,
            concat_project,
            in_channels: c,
            inter,
            use_scale,
            mode,
            disentangled: None,
        })
    }

    /// Applies the block; the output has the input's shape.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = x.size();
        let (n, inter, c) = (s[0], self.inter, self.in_channels);
        let dnl = self.disentangled.is_some();
        // [n, inter, N] -> [n, N, inter]
        let g_x = self
            .g
            .forward(x, train)?
            .f_reshape([n, inter, -1])?
            .f_permute([0, 2, 1])?;
        // position-centring of the disentangled block (over the N axis)
        let centre = |t: Tensor, dim: i64| -> Result<Tensor> {
            if dnl {
                Ok(t.f_sub(&t.f_mean_dim(Some([dim].as_slice()), true, None)?)?)
            } else {
                Ok(t)
            }
        };
        // the tensor the residual (and the unary mask) read
        let mut x_res = x.shallow_clone();
        let (theta_x, phi_x) = match (self.mode, &self.theta, &self.phi) {
            (NlMode::Gaussian, _, _) => {
                // theta and phi are views of x in mmseg, and the disentangled block
                // centres them in place: x itself is centred twice
                if dnl {
                    let x1 = centre(x.f_reshape([n, c, -1])?, -1)?;
                    x_res = centre(x1, -1)?.f_reshape(s.as_slice())?;
                }
                let flat = x_res.f_reshape([n, c, -1])?;
                (flat.f_permute([0, 2, 1])?, flat)
            }
            (NlMode::Concatenation, Some(theta), Some(phi)) => (
                centre(theta.forward(x, train)?.f_reshape([n, inter, -1, 1])?, -2)?,
                centre(phi.forward(x, train)?.f_reshape([n, inter, 1, -1])?, -1)?,
            ),
            (_, Some(theta), Some(phi)) => (
                centre(
                    theta
                        .forward(x, train)?
                        .f_reshape([n, inter, -1])?
                        .f_permute([0, 2, 1])?,
                    -2,
                )?,
                centre(phi.forward(x, train)?.f_reshape([n, inter, -1])?, -1)?,
            ),
            _ => {
                return Err(PluginError::forward_failed(
                    "NonLocal2d: theta/phi missing (not built)",
                ))
            }
        };
        let pairwise = match self.mode {
            NlMode::Gaussian => theta_x.f_matmul(&phi_x)?.f_softmax(-1, None)?,
            NlMode::Concatenation => {
                // [n, inter, N, 1] and [n, inter, 1, N], tiled to [n, inter, N, N]
                let (h, w) = (theta_x.size()[2], phi_x.size()[3]);
                let cat = Tensor::f_cat(
                    &[
                        theta_x.f_repeat([1, 1, 1, w])?,
                        phi_x.f_repeat([1, 1, h, 1])?,
                    ],
                    1,
                )?;
                let proj = self.concat_project.as_ref().expect("built with the mode");
                let pw = cat.apply(proj).f_relu()?;
                let ps = pw.size();
                pw.f_reshape([ps[0], ps[2], ps[3]])?
                    .f_div_scalar(ps[3] as f64)?
            }
            NlMode::DotProduct => {
                let pw = theta_x.f_matmul(&phi_x)?;
                let last = pw.size()[2] as f64;
                pw.f_div_scalar(last)?
            }
            NlMode::EmbeddedGaussian => {
                let pw = theta_x.f_matmul(&phi_x)?;
                let pw = if self.use_scale {
                    pw.f_div_scalar((inter as f64).sqrt())?
                } else {
                    pw
                };
                let pw = match &self.disentangled {
                    Some((temperature, _)) => pw.f_div_scalar(*temperature)?,
                    None => pw,
                };
                pw.f_softmax(-1, None)?
            }
        };
        // [n, N, inter] -> [n, inter, h, w]
        let mut y = pairwise
            .f_matmul(&g_x)?
            .f_permute([0, 2, 1])?
            .f_contiguous()?
            .f_reshape([n, inter, s[2], s[3]])?;
        if let Some((_, conv_mask)) = &self.disentangled {
            // unary term: one softmax-weighted mean of g(x) over positions
            let mask = x_res
                .apply(conv_mask)
                .f_reshape([n, 1, -1])?
                .f_softmax(-1, None)?;
            let unary = mask
                .f_matmul(&g_x)?
                .f_permute([0, 2, 1])?
                .f_contiguous()?
                .f_reshape([n, inter, 1, 1])?;
            y = y.f_add(&unary)?;
        }
        Ok(x_res.f_add(&self.conv_out.forward(&y, train)?)?)
    }
}

/// mmseg's `NLHead`.
#[derive(Debug)]
pub struct NlHead {
    base: BaseCfg,
    trunk: FcnTrunk,
    nl_block: NonLocal2d,
    conv_seg: ClsSeg,
}

impl NlHead {
    /// Builds the head under `p`.
    pub fn new(
        p: nn::Path,
        base: &BaseCfg,
        f: FcnArgs,
        reduction: i64,
        use_scale: bool,
        mode: NlMode,
    ) -> Result<Self> {
        let c = base.channels;
        Ok(Self {
            trunk: FcnTrunk::new(&p, base.in_ch(), c, 2, f, &base.conv)?,
            nl_block: NonLocal2d::new(
                &(&p / "nl_block"),
                c,
                reduction,
                use_scale,
                mode,
                &base.conv,
            )?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }
}

impl DecodeHead for NlHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let y = self
            .trunk
            .forward(&x, train, |y| self.nl_block.forward(y, train))?;
        Ok(vec![self.conv_seg.forward(&y, train)?])
    }
}

/// The arguments NLHead and DNLHead share: `reduction`, `use_scale` and `mode`.
fn nl_args(ctx: &BuildCtx<'_, '_>) -> Result<(i64, bool, NlMode)> {
    let a = &ctx.args;
    let reduction: i64 = a.get("reduction")?;
    a.ensure(
        reduction >= 1,
        "reduction",
        format_args!("must be a positive integer, got {reduction}"),
    )?;
    let mode = NlMode::parse(&a.get::<String>("mode")?).map_err(|why| {
        PluginError::invalid_argument(format!("argument `mode` of `{}` {why}", ctx.qualified()))
    })?;
    Ok((reduction, a.get("use_scale")?, mode))
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let f = FcnArgs::from_ctx(ctx)?;
    let (reduction, use_scale, mode) = nl_args(ctx)?;
    build_wrapped(ctx, |p| {
        NlHead::new(p, &base, f, reduction, use_scale, mode)
    })
}

fn build_dnl(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let f = FcnArgs::from_ctx(ctx)?;
    let (reduction, use_scale, mode) = nl_args(ctx)?;
    let temperature: f64 = ctx.args.get("temperature")?;
    ctx.args.ensure(
        temperature != 0.0,
        "temperature",
        "must not be 0 (the attention logits are divided by it)",
    )?;
    build_wrapped(ctx, |p| {
        let c = base.channels;
        Ok(NlHead {
            trunk: FcnTrunk::new(&p, base.in_ch(), c, 2, f, &base.conv)?,
            nl_block: NonLocal2d::disentangled(
                &(&p / "dnl_block"),
                c,
                reduction,
                use_scale,
                mode,
                temperature,
                &base.conv,
            )?,
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    })
}

/// Declares the arguments NLHead and DNLHead share (see [`nl_args`]).
fn nl_params(e: Entry) -> Entry {
    e.opt(
        "reduction",
        ParamType::INT,
        json!(2),
        "channel reduction of the non-local projections",
    )
    .opt(
        "use_scale",
        ParamType::BOOL,
        json!(true),
        "scale embedded-gaussian logits by 1/sqrt(channels)",
    )
    .opt(
        "mode",
        ParamType::STR,
        json!("embedded_gaussian"),
        "pairwise function: gaussian, embedded_gaussian, dot_product or concatenation",
    )
}

/// The `DNLHead` entry.
pub(crate) fn dnl_entry() -> Entry {
    head_entry(
        "DNLHead",
        "Disentangled non-local decode head of mmsegmentation (DNLNet; includes its own classifier): conv, a \
         disentangled non-local block (position-whitened pairwise attention with a temperature, plus a unary global \
         term), conv, optional fusion with the input (conv_cat), then dropout and a 1x1 conv_seg to class logits at \
         the feature map's resolution.",
        build_dnl,
        |e| {
            FcnArgs::declare(
                nl_params(e).opt(
                    "temperature",
                    ParamType::FLOAT,
                    json!(0.05),
                    "divides the embedded-gaussian logits",
                ),
            )
        },
        BaseParams::default(),
    )
}

/// The `NLHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "NLHead",
        "Non-local decode head of mmsegmentation (NLNet; includes its own classifier): conv, a NonLocal2d \
         self-attention block over all positions, conv, optional fusion with the input (conv_cat), then dropout and \
         a 1x1 conv_seg to class logits at the feature map's resolution.",
        build,
        |e| {
            FcnArgs::declare(
                nl_params(e),
            )
        },
        BaseParams::default(),
    )
}
