//! mmsegmentation 1.2.2's `SETRUPHead` (`mmseg/models/decode_heads/setr_up_head.py`):
//! SETR's progressive-upsampling head, a LayerNorm over the channels of a ViT map,
//! then `num_convs` x (ConvModule + bilinear upsample).
use super::conv_module::{ConvModule, LnCfg};
use super::decode_head::{
    arg_error, build_wrapped, head_entry, upsample, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::{json, Value};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

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
        let c_in = base.in_ch();
        if num_convs == 0 && c_in != base.channels {
            return Err(PluginError::invalid_argument(format!(
                "argument `num_convs` 0 needs `channels` ({}) equal to the input channels ({c_in})",
                base.channels
            )));
        }
        let norm = ln.build(&p / "norm", c_in);
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
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            norm,
            up_convs,
            up_scale,
            cls,
        })
    }
}

impl DecodeHead for SetrUpHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        // LayerNorm over channels: [N, C, H, W] -> [N, H, W, C] -> back
        let mut x = x
            .f_permute([0, 2, 3, 1])?
            .apply(&self.norm)
            .f_permute([0, 3, 1, 2])?
            .f_contiguous()?;
        for conv in &self.up_convs {
            x = upsample(
                &conv.forward(&x, train)?,
                self.up_scale,
                self.base.align_corners,
            )?;
        }
        Ok(vec![self.cls.forward(&x, train)?])
    }
}

/// Reads `up_scale`, the factor of a bilinear upsample (SETRUPHead, SETRMLAHead).
pub(crate) fn up_scale_arg(ctx: &BuildCtx<'_, '_>) -> Result<f64> {
    let up_scale: f64 = ctx.args.get("up_scale")?;
    if !(up_scale > 0.0 && up_scale.is_finite()) {
        return Err(arg_error(
            ctx,
            "up_scale",
            format!("must be a positive number, got {up_scale}"),
        ));
    }
    Ok(up_scale)
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::One)?;
    let ln = LnCfg::from_json(ctx.args.raw("norm_layer").unwrap_or(&Value::Null))
        .map_err(|why| arg_error(ctx, "norm_layer", why))?;
    let num_convs: i64 = ctx.args.get("num_convs")?;
    let up_scale = up_scale_arg(ctx)?;
    let kernel_size: i64 = ctx.args.get("kernel_size")?;
    build_wrapped(ctx, |p| {
        SetrUpHead::new(p, &base, ln, num_convs, up_scale, kernel_size)
    })
}

/// The `SETRUPHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "SETRUPHead",
        "SETR's progressive-upsampling decode head of mmsegmentation (SETR-Naive/PUP; includes its own classifier): \
         a LayerNorm over the channels of the selected map, then num_convs x (ConvModule, bilinear upsample by \
         up_scale), dropout and conv_seg.",
        build,
        |e| {
            e
    .opt(
        "norm_layer",
        ParamType::DICT,
        json!({"type": "LN", "eps": 1e-6, "requires_grad": true}),
        "the norm over the input's channels: {type: LN, eps, requires_grad}",
    )
    .opt("num_convs", ParamType::INT, json!(1), "number of conv + upsample stages")
    .opt("up_scale", ParamType::FLOAT, json!(4), "scale factor of each bilinear upsample")
    .opt("kernel_size", ParamType::INT, json!(3), "kernel size of the convs: 1 or 3")
        },
        BaseParams {
            init_cfg: json!([
                {"type": "Constant", "val": 1.0, "bias": 0, "layer": "LayerNorm"},
                {"type": "Normal", "std": 0.01, "override": {"name": "conv_seg"}}
            ]),
            ..BaseParams::default()
        },
    )
}
