//! mmsegmentation 1.2.2's `EncHead` (`mmseg/models/decode_heads/enc_head.py`,
//! EncNet) with its `Encoding` layer (`mmseg/models/utils/encoding.py`), built as
//! TerraTorch's `MMSegRegistry` builds it.
//!
//! EncHead forces `input_transform="multiple_select"`. With `use_se_loss` (the
//! default) its `forward` returns `(seg_logits, se_logits)` in training and eval
//! alike (mmseg's `predict` keeps the first; TerraTorch's wrapper calls `forward`),
//! so the module returns both: `[B, out_channels, h, w]` and `[B, num_classes]`.
use super::conv_module::{torch_linear, ConvModule, NormCfg, NormLayer};
use super::decode_head::{
    build_wrapped, head_entry, resize, BaseCfg, BaseParams, ClsSeg, DecodeHead, Inputs,
};
use serde_json::json;
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, Result};

/// mmseg's `Encoding`: soft-assigns every position to `num_codes` codewords and
/// sums the residuals per codeword.
#[derive(Debug)]
struct Encoding {
    codewords: Tensor,
    scale: Tensor,
}

impl Encoding {
    fn new(p: nn::Path, c: i64, k: i64) -> Self {
        let std = 1.0 / ((k * c) as f64).sqrt();
        Self {
            codewords: p.var(
                "codewords",
                &[k, c],
                nn::Init::Uniform { lo: -std, up: std },
            ),
            scale: p.var("scale", &[k], nn::Init::Uniform { lo: -1.0, up: 0.0 }),
        }
    }

    /// `[B, C, H, W]` -> `[B, K, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        let (k, c) = (self.codewords.size()[0], s[1]);
        // [B, N, C] -> residuals [B, N, K, C]
        let x = x
            .f_reshape([s[0], c, -1])?
            .f_transpose(1, 2)?
            .f_contiguous()?;
        let residual = x
            .f_unsqueeze(2)?
            .f_sub(&self.codewords.f_reshape([1, 1, k, c])?)?;
        let l2 = residual.f_pow_tensor_scalar(2)?.f_sum_dim_intlist(
            Some([3i64].as_slice()),
            false,
            None::<Kind>,
        )?;
        let weights = self
            .scale
            .f_reshape([1, 1, k])?
            .f_mul(&l2)?
            .f_softmax(2, None)?;
        Ok(weights
            .f_unsqueeze(3)?
            .f_mul(&residual)?
            .f_sum_dim_intlist(Some([1i64].as_slice()), false, None::<Kind>)?)
    }
}

/// mmseg's `EncModule`.
#[derive(Debug)]
struct EncModule {
    encoding_project: ConvModule,
    encoding: Encoding,
    norm: NormLayer,
    fc: nn::Linear,
}

impl EncModule {
    fn new(p: nn::Path, c: i64, num_codes: i64, base: &BaseCfg) -> Result<Self> {
        // the 1-d twin of the head's norm (BN -> BN1d, GN stays GN); BN1d without one
        let norm_cfg = base.conv.norm_cfg.clone().unwrap_or(NormCfg::BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            requires_grad: true,
        });
        Ok(Self {
            encoding_project: ConvModule::new(&p / "encoding_project", c, c, 1, 0, 1, &base.conv)?,
            encoding: Encoding::new(&p / "encoding" / 0, c, num_codes),
            norm: NormLayer::new(&p / "encoding" / 1, &norm_cfg, num_codes)?.one_d(),
            fc: torch_linear(&p / "fc" / 0, c, c, true),
        })
    }

    /// Returns `(encoding_feat [B, C], output [B, C, H, W])`.
    fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let proj = self.encoding_project.forward(x, train)?;
        let enc = self
            .norm
            .forward(&self.encoding.forward(&proj)?, train)
            .f_relu()?;
        let feat = enc.f_mean_dim(Some([1i64].as_slice()), false, None::<Kind>)?;
        let s = x.size();
        let gamma = feat
            .apply(&self.fc)
            .f_sigmoid()?
            .f_reshape([s[0], s[1], 1, 1])?;
        let out = x.f_add(&x.f_mul(&gamma)?)?.f_relu()?;
        Ok((feat, out))
    }
}

/// mmseg's `EncHead`.
#[derive(Debug)]
pub struct EncHead {
    base: BaseCfg,
    bottleneck: ConvModule,
    lateral: Option<(Vec<ConvModule>, ConvModule)>,
    enc_module: EncModule,
    se_layer: Option<nn::Linear>,
    conv_seg: ClsSeg,
}

impl EncHead {
    /// Builds the head under `p`.
    pub fn new(
        p: nn::Path,
        base: &BaseCfg,
        num_codes: i64,
        use_se_loss: bool,
        add_lateral: bool,
    ) -> Result<Self> {
        let (ins, c, cfg) = (&base.in_channels, base.channels, &base.conv);
        let lateral = if add_lateral {
            let convs = ins[..ins.len() - 1]
                .iter()
                .enumerate()
                .map(|(i, &ci)| ConvModule::new(&p / "lateral_convs" / i, ci, c, 1, 0, 1, cfg))
                .collect::<Result<Vec<_>>>()?;
            Some((
                convs,
                ConvModule::new(&p / "fusion", ins.len() as i64 * c, c, 3, 1, 1, cfg)?,
            ))
        } else {
            None
        };
        Ok(Self {
            bottleneck: ConvModule::new(&p / "bottleneck", ins[ins.len() - 1], c, 3, 1, 1, cfg)?,
            lateral,
            enc_module: EncModule::new(&p / "enc_module", c, num_codes, base)?,
            se_layer: use_se_loss.then(|| torch_linear(&p / "se_layer", c, base.num_classes, true)),
            conv_seg: base.cls_seg(&p),
            base: base.clone(),
        })
    }
}

impl DecodeHead for EncHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let maps = self.base.select(xs)?;
        let mut feat = self.bottleneck.forward(&maps[maps.len() - 1], train)?;
        if let Some((convs, fusion)) = &self.lateral {
            let fs = feat.size();
            let mut all = vec![feat.shallow_clone()];
            for (conv, x) in convs.iter().zip(&maps) {
                all.push(resize(
                    &conv.forward(x, train)?,
                    fs[2],
                    fs[3],
                    self.base.align_corners,
                )?);
            }
            feat = fusion.forward(&Tensor::f_cat(&all, 1)?, train)?;
        }
        let (encode_feat, out) = self.enc_module.forward(&feat, train)?;
        let out = self.conv_seg.forward(&out, train)?;
        Ok(match &self.se_layer {
            Some(se) => vec![out, encode_feat.apply(se)],
            None => vec![out],
        })
    }

    fn out_channels(&self) -> Vec<i64> {
        let mut c = vec![self.base.seg_channels()];
        if self.se_layer.is_some() {
            c.push(self.base.num_classes);
        }
        c
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::MULTIPLE)?;
    let a = &ctx.args;
    let num_codes: i64 = a.get("num_codes")?;
    a.ensure(
        num_codes > 0,
        "num_codes",
        format_args!("must be positive, got {num_codes}"),
    )?;
    let (use_se_loss, add_lateral) = (a.get("use_se_loss")?, a.get("add_lateral")?);
    build_wrapped(ctx, |p| {
        EncHead::new(p, &base, num_codes, use_se_loss, add_lateral)
    })
}

/// The `EncHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "EncHead",
        "Context-encoding decode head of mmsegmentation (EncNet; includes its own classifier). Reads several maps \
         (in_index with one index per channel-list entry): a 3x3 conv on the last, optional lateral fusion of the \
         others, an encoding layer whose codeword statistics rescale the channels, then dropout and a 1x1 conv_seg \
         to class logits at the last map's resolution. With use_se_loss it also returns [B, num_classes] \
         semantic-encoding logits as a second output.",
        build,
        |e| {
            e.opt("num_codes", ParamType::INT, json!(32), "number of codewords of the encoding layer")
                .opt("use_se_loss", ParamType::BOOL, json!(true), "add se_layer and return its [B, num_classes] logits second")
                .opt("add_lateral", ParamType::BOOL, json!(false), "fuse the other maps through lateral 1x1 convs")
                .opt(
                    "loss_se_decode",
                    ParamType::ANY,
                    json!({"type": "CrossEntropyLoss", "use_sigmoid": true, "loss_weight": 0.2}),
                    "mmseg's SE loss config; accepted for config compatibility, unused",
                )
        },
        BaseParams::multiple_select(),
    )
}
