//! mmsegmentation 1.2.2's `SegmenterMaskTransformerHead`
//! (`mmseg/models/decode_heads/segmenter_mask_head.py`, Segmenter's mask transformer),
//! with the `TransformerEncoderLayer` it stacks (`mmseg/models/backbones/vit.py`),
//! made of mmcv 2.1's `MultiheadAttention` and `FFN` (`mmcv/cnn/bricks/transformer.py`,
//! around `torch.nn.MultiheadAttention`) and `DropPath` (`mmcv/cnn/bricks/drop.py`).
use super::conv_module::{torch_linear, ActCfg, ConvModuleCfg, LnCfg};
use super::decode_head::{
    arg_error, build_wrapped, head_entry, normalize, BaseCfg, BaseParams, DecodeHead, Inputs,
};
use serde_json::{json, Value};
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

use terrahost_layers::drop::{drop_path_mmcv as drop_path, dropout};

/// `torch.nn.MultiheadAttention` (batch first, self-attention) inside mmcv's
/// `MultiheadAttention` (`attn.attn.*`), with its residual.
#[derive(Debug)]
struct SelfAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Option<Tensor>,
    out_proj: nn::Linear,
    num_heads: i64,
    attn_drop: f64,
    proj_drop: f64,
}

impl SelfAttention {
    fn new(
        p: nn::Path,
        dims: i64,
        num_heads: i64,
        bias: bool,
        attn_drop: f64,
        proj_drop: f64,
    ) -> Self {
        let a = &p / "attn";
        // torch's _reset_parameters: xavier-uniform in_proj, zero biases.
        let bound = (6.0 / (dims + 3 * dims) as f64).sqrt();
        let in_proj_weight = a.var(
            "in_proj_weight",
            &[3 * dims, dims],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let in_proj_bias = bias.then(|| a.var("in_proj_bias", &[3 * dims], nn::Init::Const(0.)));
        Self {
            in_proj_weight,
            in_proj_bias,
            out_proj: torch_linear(&a / "out_proj", dims, dims, bias),
            num_heads,
            attn_drop,
            proj_drop,
        }
    }

    /// `identity + proj_drop(attn(x))` for `x` `[B, N, E]`, `identity` `[B, N, E]`. The
    /// projections stay float32 under `--precision int8`, as PyTorch's dynamic
    /// quantization leaves `nn.MultiheadAttention`'s.
    fn forward(&self, x: &Tensor, identity: &Tensor, train: bool) -> Result<Tensor> {
        terrahost_layers::precision::float32_under_int8(|| self.forward_inner(x, identity, train))
    }

    fn forward_inner(&self, x: &Tensor, identity: &Tensor, train: bool) -> Result<Tensor> {
        let s = x.size();
        let (b, n, e) = (s[0], s[1], s[2]);
        let h = self.num_heads;
        // [B, N, 3E] -> 3 x [B, H, N, E/H]
        let qkv = x.f_linear(&self.in_proj_weight, self.in_proj_bias.as_ref())?;
        let heads = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_reshape([b, n, h, e / h])?.f_permute([0, 2, 1, 3])?)
        };
        let chunks = qkv.f_chunk(3, -1)?;
        let q = heads(&chunks[0])?.f_mul_scalar(((e / h) as f64).powf(-0.5))?;
        let (k, v) = (heads(&chunks[1])?, heads(&chunks[2])?);
        let attn = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_softmax(-1, None)?;
        let attn = dropout(attn, self.attn_drop, train)?;
        // [B, H, N, E/H] -> [B, N, E]
        let out = attn
            .f_matmul(&v)?
            .f_permute([0, 2, 1, 3])?
            .f_reshape([b, n, e])?
            .apply(&self.out_proj);
        Ok(identity.f_add(&dropout(out, self.proj_drop, train)?)?)
    }
}

/// mmcv's `FFN`: `num_fcs - 1` x (Linear, activation, Dropout) then Linear and
/// Dropout, added to the identity through `DropPath`.
#[derive(Debug)]
struct Ffn {
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
    act: ActCfg,
    drop: f64,
    drop_path: f64,
}

impl Ffn {
    fn new(
        p: nn::Path,
        dims: i64,
        ff: i64,
        num_fcs: i64,
        act: ActCfg,
        drop: f64,
        drop_path: f64,
    ) -> Self {
        let l = &p / "layers";
        let hidden = (0..num_fcs - 1)
            .map(|i| torch_linear(&l / i / 0, if i == 0 { dims } else { ff }, ff, true))
            .collect();
        Self {
            hidden,
            out: torch_linear(&l / (num_fcs - 1), ff, dims, true),
            act,
            drop,
            drop_path,
        }
    }

    fn forward(&self, x: &Tensor, identity: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.shallow_clone();
        for fc in &self.hidden {
            y = dropout(self.act.apply(&y.apply(fc))?, self.drop, train)?;
        }
        let y = dropout(y.apply(&self.out), self.drop, train)?;
        Ok(identity.f_add(&drop_path(y, self.drop_path, train)?)?)
    }
}

/// mmseg's ViT `TransformerEncoderLayer` (pre-norm): `x + attn(ln1(x))`, then
/// `x + ffn(ln2(x))`.
#[derive(Debug)]
pub struct TransformerEncoderLayer {
    ln1: nn::LayerNorm,
    attn: SelfAttention,
    ln2: nn::LayerNorm,
    ffn: Ffn,
}

impl TransformerEncoderLayer {
    /// Builds the layer under `p` (`ln1`, `attn.attn`, `ln2`, `ffn.layers`).
    pub fn new(p: &nn::Path, c: &SegmenterCfg, drop_path: f64) -> Self {
        let e = c.embed_dims;
        Self {
            ln1: c.norm.build(p / "ln1", e),
            attn: SelfAttention::new(
                p / "attn",
                e,
                c.num_heads,
                c.qkv_bias,
                c.attn_drop_rate,
                c.drop_rate,
            ),
            ln2: c.norm.build(p / "ln2", e),
            ffn: Ffn::new(
                p / "ffn",
                e,
                c.mlp_ratio * e,
                c.num_fcs,
                c.act.clone(),
                c.drop_rate,
                drop_path,
            ),
        }
    }

    /// `[B, N, E] -> [B, N, E]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.attn.forward(&x.apply(&self.ln1), x, train)?;
        self.ffn.forward(&x.apply(&self.ln2), &x, train)
    }
}

/// The arguments of `SegmenterMaskTransformerHead` besides `BaseDecodeHead`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmenterCfg {
    /// Number of transformer layers.
    pub num_layers: i64,
    /// Attention heads per layer.
    pub num_heads: i64,
    /// Width of the tokens.
    pub embed_dims: i64,
    /// FFN hidden width as a multiple of `embed_dims`.
    pub mlp_ratio: i64,
    /// Largest stochastic-depth rate (the last layer's; linear from 0).
    pub drop_path_rate: f64,
    /// Dropout after the attention projection and in the FFNs.
    pub drop_rate: f64,
    /// Dropout on the attention weights.
    pub attn_drop_rate: f64,
    /// Linear layers per FFN (at least 2).
    pub num_fcs: i64,
    /// Biases in the attention projections.
    pub qkv_bias: bool,
    /// Activation of the FFNs.
    pub act: ActCfg,
    /// The LayerNorms.
    pub norm: LnCfg,
}

/// mmseg's `SegmenterMaskTransformerHead`.
///
/// Input: the feature maps (one selected, `[B, C, H, W]`). Output: `[B, num_classes,
/// H, W]` masks, the (normalised) scalar products of patch and class embeddings.
#[derive(Debug)]
pub struct SegmenterMaskTransformerHead {
    base: BaseCfg,
    layers: Vec<TransformerEncoderLayer>,
    dec_proj: nn::Linear,
    cls_emb: Tensor,
    patch_proj: nn::Linear,
    classes_proj: nn::Linear,
    decoder_norm: nn::LayerNorm,
    mask_norm: nn::LayerNorm,
}

impl SegmenterMaskTransformerHead {
    /// Builds the head under `p`.
    pub fn new(p: nn::Path, base: &BaseCfg, c: &SegmenterCfg) -> Result<Self> {
        let (e, k) = (c.embed_dims, base.num_classes);
        // torch.linspace(0, drop_path_rate, num_layers)
        let dpr = |i: i64| {
            if c.num_layers > 1 {
                c.drop_path_rate * i as f64 / (c.num_layers - 1) as f64
            } else {
                0.0
            }
        };
        let layers = (0..c.num_layers)
            .map(|i| TransformerEncoderLayer::new(&(&p / "layers" / i), c, dpr(i)))
            .collect();
        Ok(Self {
            layers,
            dec_proj: torch_linear(&p / "dec_proj", base.in_ch(), e, true),
            cls_emb: p.var(
                "cls_emb",
                &[1, k, e],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            ),
            patch_proj: torch_linear(&p / "patch_proj", e, e, false),
            classes_proj: torch_linear(&p / "classes_proj", e, e, false),
            decoder_norm: c.norm.build(&p / "decoder_norm", e),
            mask_norm: c.norm.build(&p / "mask_norm", k),
            base: base.clone(),
        })
    }
}

impl DecodeHead for SegmenterMaskTransformerHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = self.base.select_one(xs)?;
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let k = self.base.num_classes;
        // [B, C, H, W] -> [B, H*W, C] -> [B, H*W, E]
        let x = x
            .f_permute([0, 2, 3, 1])?
            .f_contiguous()?
            .f_view([b, -1, c])?
            .apply(&self.dec_proj);
        let cls_emb = self.cls_emb.f_expand([b, -1, -1], false)?;
        // [B, H*W + K, E]
        let mut x = Tensor::f_cat(&[&x, &cls_emb], 1)?;
        for layer in &self.layers {
            x = layer.forward(&x, train)?;
        }
        let x = x.apply(&self.decoder_norm);
        let n = x.size()[1];
        let patches = x.f_narrow(1, 0, n - k)?.apply(&self.patch_proj);
        let classes = x.f_narrow(1, n - k, k)?.apply(&self.classes_proj);
        let patches = normalize(&patches, 2.0, 2)?;
        let classes = normalize(&classes, 2.0, 2)?;
        // [B, H*W, K] -> [B, K, H, W]
        let masks = patches
            .f_matmul(&classes.f_transpose(1, 2)?)?
            .apply(&self.mask_norm);
        Ok(vec![masks
            .f_permute([0, 2, 1])?
            .f_contiguous()?
            .f_view([b, -1, h, w])?])
    }

    fn out_channels(&self) -> Vec<i64> {
        // the masks have num_classes channels whatever out_channels says
        vec![self.base.num_classes]
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    // norm_cfg and act_cfg belong to this head (LN, GELU); BaseDecodeHead keeps its
    // defaults, which no layer here uses.
    let base = BaseCfg::from_ctx_with(ctx, Inputs::One, ConvModuleCfg::default())?;
    if base.input_transform.is_some() {
        return Err(arg_error(
            ctx,
            "input_transform",
            "must be None: SegmenterMaskTransformerHead builds dec_proj from in_channels as an int (mmseg fails \
             with a list); pass one map",
        ));
    }
    let a = &ctx.args;
    let act = ActCfg::from_json(a.raw("act_cfg").unwrap_or(&Value::Null))
        .map_err(|why| arg_error(ctx, "act_cfg", why))?
        .ok_or_else(|| {
            arg_error(
                ctx,
                "act_cfg",
                "must be an activation dict: the FFNs need one",
            )
        })?;
    let norm = LnCfg::from_json(a.raw("norm_cfg").unwrap_or(&Value::Null))
        .map_err(|why| arg_error(ctx, "norm_cfg", why))?;
    let c = SegmenterCfg {
        num_layers: a.get("num_layers")?,
        num_heads: a.get("num_heads")?,
        embed_dims: a.get("embed_dims")?,
        mlp_ratio: a.get("mlp_ratio")?,
        drop_path_rate: a.get("drop_path_rate")?,
        drop_rate: a.get("drop_rate")?,
        attn_drop_rate: a.get("attn_drop_rate")?,
        num_fcs: a.get("num_fcs")?,
        qkv_bias: a.get("qkv_bias")?,
        act,
        norm,
    };
    a.ensure(
        c.num_layers >= 0,
        "num_layers",
        format_args!("must be >= 0, got {}", c.num_layers),
    )?;
    a.ensure(
        c.num_heads > 0 && c.embed_dims > 0 && c.embed_dims % c.num_heads == 0,
        "num_heads",
        format_args!(
            "must be positive and divide embed_dims, got num_heads={} and embed_dims={}",
            c.num_heads, c.embed_dims
        ),
    )?;
    a.ensure(
        c.mlp_ratio > 0,
        "mlp_ratio",
        format_args!("must be a positive integer, got {}", c.mlp_ratio),
    )?;
    a.ensure(
        c.num_fcs >= 2,
        "num_fcs",
        format_args!(
            "must be at least 2 (mmcv's FFN asserts it), got {}",
            c.num_fcs
        ),
    )?;
    for (name, v) in [
        ("drop_path_rate", c.drop_path_rate),
        ("drop_rate", c.drop_rate),
        ("attn_drop_rate", c.attn_drop_rate),
    ] {
        if !(0.0..1.0).contains(&v) {
            return Err(PluginError::invalid_argument(format!(
                "argument `{name}` of `{}` must be in [0, 1), got {v}",
                ctx.qualified()
            )));
        }
    }
    build_wrapped(ctx, |p| SegmenterMaskTransformerHead::new(p, &base, &c))
}

/// The `SegmenterMaskTransformerHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "SegmenterMaskTransformerHead",
        "Segmenter's mask transformer decode head of mmsegmentation (includes its own classifier): the selected map's \
         tokens, projected to embed_dims (dec_proj) and joined by one learned embedding per class (cls_emb), pass \
         num_layers pre-norm ViT encoder layers; the normalised patch and class embeddings' scalar products, \
         LayerNorm-ed over the classes, are the [B, num_classes, H, W] masks at the map's resolution. `channels` \
         is required by mmseg but unused.",
        build,
        |e| {
            e.req("num_layers", ParamType::INT, "number of transformer layers")
                .req("num_heads", ParamType::INT, "attention heads per layer (must divide embed_dims)")
                .req("embed_dims", ParamType::INT, "width of the tokens")
                .opt("mlp_ratio", ParamType::INT, json!(4), "FFN hidden width as a multiple of embed_dims")
                .opt(
                    "drop_path_rate",
                    ParamType::FLOAT,
                    json!(0.1),
                    "stochastic depth of the last layer's FFN, linear from 0 (training only)",
                )
                .opt("drop_rate", ParamType::FLOAT, json!(0.0), "dropout after attention and in the FFNs (training only)")
                .opt("attn_drop_rate", ParamType::FLOAT, json!(0.0), "dropout on the attention weights (training only)")
                .opt("num_fcs", ParamType::INT, json!(2), "linear layers per FFN (at least 2)")
                .opt("qkv_bias", ParamType::BOOL, json!(true), "biases in the attention projections")
                .opt("init_std", ParamType::FLOAT, json!(0.02), "std of mmseg's init_weights; unused, as TerraTorch never calls it")
        },
        BaseParams {
            norm_cfg: json!({"type": "LN"}),
            norm_cfg_doc: "the LayerNorms of the head: {type: LN, eps, requires_grad}",
            act_cfg: json!({"type": "GELU"}),
            act_cfg_doc: "activation of the FFNs: {type: GELU|ReLU|...}",
            ..BaseParams::default()
        },
    )
}
