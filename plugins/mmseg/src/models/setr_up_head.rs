//! mmsegmentation 1.2.2's `SETRUPHead` (`mmseg/models/decode_heads/setr_up_head.py`):
//! SETR's progressive-upsampling head, a LayerNorm over the channels of a ViT map,
//! then `num_convs` x (ConvModule + bilinear upsample).
use super::conv_module::ConvModule;
use super::decode_head::{self, arg_error, base_params, head_entry, BaseCfg, BaseParams, ClsSeg};
use super::fcn_head::MmsegDecoderWrapper;
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The LayerNorm of `norm_layer` (mmcv's `LN`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LnCfg {
    /// Added to the variance.
    pub eps: f64,
    /// Whether its affine weights are trained.
    pub requires_grad: bool,
}

impl LnCfg {
    /// Parses a `norm_layer` dict; only `LN` normalises the `[N, H*W, C]` tokens SETR
    /// gives it.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let m = v.as_object().ok_or_else(|| {
            format!("must be a dict like {{\"type\": \"LN\", \"eps\": 1e-6}}, got {v}")
        })?;
        match m.get("type").and_then(Value::as_str) {
            Some("LN") => {}
            other => {
                return Err(format!(
                    "type {other:?} is not supported: SETRUPHead normalises [N, H*W, C] tokens, which only \"LN\" does"
                ))
            }
        }
        if let Some(k) = m
            .keys()
            .find(|k| !["type", "eps", "requires_grad"].contains(&k.as_str()))
        {
            return Err(format!(
                "key `{k}` is not supported for type \"LN\" (supported: eps, requires_grad)"
            ));
        }
        let eps = match m.get("eps") {
            None | Some(Value::Null) => 1e-5,
            Some(e) => e
                .as_f64()
                .ok_or_else(|| format!("`eps` must be a number, got {e}"))?,
        };
        let requires_grad = match m.get("requires_grad") {
            None | Some(Value::Null) => true,
            Some(r) => r
                .as_bool()
                .ok_or_else(|| format!("`requires_grad` must be a bool, got {r}"))?,
        };
        Ok(Self { eps, requires_grad })
    }
}

/// mmseg's `SETRUPHead`.
///
/// Input: the feature maps (one selected, or several with `resize_concat`).
/// Output: logits at the map's resolution times `up_scale ^ num_convs`.
#[derive(Debug)]
pub struct SetrUpHead {
    base: BaseCfg,
    norm: nn::LayerNorm,
    up_convs: Vec<ConvModule>,
    up_scale: f64,
    cls: ClsSeg,
}

impl SetrUpHead {
    /// Builds the head under `p` (`norm`, `up_convs.N.0`, `conv_seg`).
    pub fn new(
        p: nn::Path,
        base: &BaseCfg,
        ln: LnCfg,
        num_convs: i64,
        up_scale: f64,
        kernel_size: i64,
    ) -> Result<Self> {
        base.require_single("SETRUPHead")?;
        if kernel_size != 1 && kernel_size != 3 {
            return Err(PluginError::invalid_argument(format!(
                "argument `kernel_size` must be 1 or 3, got {kernel_size}"
            )));
        }
        if num_convs < 0 {
            return Err(PluginError::invalid_argument(format!(
                "argument `num_convs` must be >= 0, got {num_convs}"
            )));
        }
        let c_in = base.single_in_channels();
        if num_convs == 0 && c_in != base.channels {
            return Err(PluginError::invalid_argument(format!(
                "argument `num_convs` 0 needs `channels` ({}) equal to the input channels ({c_in})",
                base.channels
            )));
        }
        let norm = nn::layer_norm(
            &p / "norm",
            vec![c_in],
            nn::LayerNormConfig {
                eps: ln.eps,
                ..Default::default()
            },
        );
        if !ln.requires_grad {
            for t in norm.ws.iter().chain(norm.bs.iter()) {
                let _ = t.set_requires_grad(false);
            }
        }
        let up = &p / "up_convs";
        let up_convs = (0..num_convs)
            .map(|i| {
                let c = if i == 0 { c_in } else { base.channels };
                ConvModule::new(
                    &up / i / 0,
                    c,
                    base.channels,
                    kernel_size,
                    (kernel_size - 1) / 2,
                    1,
                    &base.conv,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let cls = ClsSeg::new(&p, base.channels, base.seg_channels(), base.dropout_ratio);
        Ok(Self {
            base: base.clone(),
            norm,
            up_convs,
            up_scale,
            cls,
        })
    }
}

impl Model for SetrUpHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        // LayerNorm over channels: [N, C, H, W] -> [N, H, W, C] -> back
        let mut x = x
            .f_permute([0, 2, 3, 1])?
            .apply(&self.norm)
            .f_permute([0, 3, 1, 2])?
            .f_contiguous()?;
        for conv in &self.up_convs {
            x = decode_head::upsample(
                &conv.forward(&x, train)?,
                self.up_scale,
                self.base.align_corners,
            )?;
        }
        Ok(vec![self.cls.forward(&x, train)?])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.base.seg_channels()]
    }

    fn includes_head(&self) -> bool {
        true
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, None)?;
    let ln = LnCfg::from_json(ctx.args.raw("norm_layer").unwrap_or(&Value::Null))
        .map_err(|why| arg_error(ctx, "norm_layer", why))?;
    let num_convs: i64 = ctx.args.get("num_convs")?;
    let up_scale: f64 = ctx.args.get("up_scale")?;
    if !(up_scale > 0.0 && up_scale.is_finite()) {
        return Err(arg_error(
            ctx,
            "up_scale",
            format!("must be a positive number, got {up_scale}"),
        ));
    }
    let kernel_size: i64 = ctx.args.get("kernel_size")?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = MmsegDecoderWrapper::new(vs.root(), |p| {
        SetrUpHead::new(p, &base, ln, num_convs, up_scale, kernel_size)
    })
    .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// The `SETRUPHead` entry.
pub(crate) fn entry() -> Entry {
    let e = head_entry(
        "SETRUPHead",
        "SETR's progressive-upsampling decode head of mmsegmentation (SETR-Naive/PUP; includes its own classifier): \
         a LayerNorm over the channels of the selected map, then num_convs x (ConvModule, bilinear upsample by \
         up_scale), dropout and conv_seg.",
        build,
    )
    .opt(
        "norm_layer",
        ParamType::DICT,
        json!({"type": "LN", "eps": 1e-6, "requires_grad": true}),
        "the norm over the input's channels: {type: LN, eps, requires_grad}",
    )
    .opt("num_convs", ParamType::INT, json!(1), "number of conv + upsample stages")
    .opt("up_scale", ParamType::FLOAT, json!(4), "scale factor of each bilinear upsample")
    .opt("kernel_size", ParamType::INT, json!(3), "kernel size of the convs: 1 or 3");
    base_params(
        e,
        &BaseParams {
            init_cfg: json!([
                {"type": "Constant", "val": 1.0, "bias": 0, "layer": "LayerNorm"},
                {"type": "Normal", "std": 0.01, "override": {"name": "conv_seg"}}
            ]),
            ..BaseParams::default()
        },
    )
}
