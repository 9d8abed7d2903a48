//! mmsegmentation 1.2.2's `STDCHead` (`mmseg/models/decode_heads/stdc_head.py`): an
//! `FCNHead` (`fcn_head.py`) whose extra tensors serve only its boundary loss. Its
//! forward is FCNHead's; the fixed `laplacian_kernel` buffer and `fusion_kernel`
//! parameter are kept (not trained) so that mmseg checkpoints load strictly.
use super::decode_head::{arg_error, build_wrapped, head_entry, BaseCfg, BaseParams, DecodeHead};
use super::fcn_head::{self, FcnHead};
use serde_json::json;
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// mmseg's `STDCHead`.
#[derive(Debug)]
pub struct StdcHead {
    fcn: FcnHead,
    _laplacian_kernel: Tensor,
    _fusion_kernel: Tensor,
}

impl StdcHead {
    /// Builds the FCNHead part and the two fixed loss tensors under `p`.
    pub fn new(p: nn::Path, cfg: &fcn_head::Config) -> Result<Self> {
        let fcn = FcnHead::new(p.clone(), cfg)?;
        let fixed = |name: &str, values: &[f32], shape: &[i64]| -> Result<Tensor> {
            let mut t = p.f_zeros_no_train(name, shape)?;
            tch::no_grad(|| {
                t.f_copy_(
                    &Tensor::from_slice(values)
                        .reshape(shape)
                        .to_kind(Kind::Float),
                )
            })?;
            Ok(t)
        };
        let laplacian_kernel = fixed(
            "laplacian_kernel",
            &[-1., -1., -1., -1., 8., -1., -1., -1., -1.],
            &[1, 1, 3, 3],
        )?;
        let fusion_kernel = fixed("fusion_kernel", &[0.6, 0.3, 0.1], &[1, 3, 1, 1])?;
        Ok(Self {
            fcn,
            _laplacian_kernel: laplacian_kernel,
            _fusion_kernel: fusion_kernel,
        })
    }
}

impl DecodeHead for StdcHead {
    fn base(&self) -> &BaseCfg {
        self.fcn.base()
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.fcn.forward(xs, train)
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let cfg = fcn_head::Config::from_ctx(ctx)?;
    let t: f64 = ctx.args.get("boundary_threshold")?;
    if !t.is_finite() {
        return Err(arg_error(
            ctx,
            "boundary_threshold",
            format!("must be a finite number, got {t}"),
        ));
    }
    build_wrapped(ctx, |p| StdcHead::new(p, &cfg))
}

/// The `STDCHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "STDCHead",
        "STDC's detail head of mmsegmentation (includes its own classifier): FCNHead's network (convs, optional \
         conv_cat, dropout, conv_seg); its laplacian_kernel and fusion_kernel tensors only build boundary targets \
         for mmseg's loss and are kept for checkpoint compatibility.",
        build,
        |e| {
            fcn_head::declare(
                e
    .opt(
        "boundary_threshold",
        ParamType::FLOAT,
        json!(0.1),
        "threshold of the boundary targets of mmseg's loss; accepted for config compatibility, no effect on forward",
    )
            )
        },
        BaseParams::default(),
    )
}
