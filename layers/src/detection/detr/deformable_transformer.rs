//! Deformable DETR's `DeformableTransformer` (`terratorch/models/detr/deformable_transformer.py`)
//! as TerraTorch's `TerraTorchDeformableDETR` builds it: single-stage (`two_stage=False`),
//! no iterative box refinement (the decoder's `bbox_embed` is `None`), ReLU, eval mode, and
//! all-valid padding masks, so every level's valid ratio is exactly 1 and the reference
//! points never change across decoder layers.
//!
//! Keys under the transformer's path: `level_embed`, `reference_points`,
//! `encoder.layers.{i}.{self_attn, norm1, linear1, linear2, norm2}`,
//! `decoder.layers.{i}.{cross_attn, norm1, self_attn, norm2, linear1, linear2, norm3}`.
use super::ms_deform_attn::MSDeformAttn;
use super::multihead_attention::MultiheadAttention;
use tch::{nn, Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

const LN_EPS: f64 = 1e-5;

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(p, i, o, Default::default())
}

fn layer_norm(p: nn::Path, d: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], Default::default())
}

fn apply(l: &nn::Linear, x: &Tensor) -> Result<Tensor> {
    Ok(x.f_linear(&l.ws, l.bs.as_ref())?)
}

fn norm(ln: &nn::LayerNorm, x: &Tensor) -> Result<Tensor> {
    let d = x.size()[x.dim() - 1];
    Ok(x.f_layer_norm([d], ln.ws.as_ref(), ln.bs.as_ref(), LN_EPS, true)?)
}

/// `norm(x + linear2(relu(linear1(x))))`, the layers' `forward_ffn`.
fn ffn(
    linear1: &nn::Linear,
    linear2: &nn::Linear,
    ln: &nn::LayerNorm,
    x: &Tensor,
) -> Result<Tensor> {
    let h = apply(linear2, &apply(linear1, x)?.f_relu()?)?;
    norm(ln, &x.f_add(&h)?)
}

/// `DeformableTransformerEncoderLayer`.
#[derive(Debug)]
struct EncoderLayer {
    self_attn: MSDeformAttn,
    norm1: nn::LayerNorm,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm2: nn::LayerNorm,
}

/// `DeformableTransformerDecoderLayer`.
#[derive(Debug)]
struct DecoderLayer {
    cross_attn: MSDeformAttn,
    norm1: nn::LayerNorm,
    self_attn: MultiheadAttention,
    norm2: nn::LayerNorm,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm3: nn::LayerNorm,
}

/// The sizes of a [`DeformableTransformer`].
#[derive(Clone, Copy, Debug)]
pub struct DeformableTransformerConfig {
    /// Width.
    pub d_model: i64,
    /// Attention heads.
    pub nhead: i64,
    /// Encoder layers.
    pub num_encoder_layers: usize,
    /// Decoder layers (at least one: upstream stacks the decoder's outputs).
    pub num_decoder_layers: usize,
    /// Feed-forward width.
    pub dim_feedforward: i64,
    /// Feature levels.
    pub num_feature_levels: i64,
    /// Sampling points per head and level (encoder and decoder alike in TerraTorch).
    pub n_points: i64,
}

/// `DeformableTransformer` in eval mode.
#[derive(Debug)]
pub struct DeformableTransformer {
    level_embed: Tensor,
    reference_points: nn::Linear,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    cfg: DeformableTransformerConfig,
}

/// What the Deformable DETR head needs from the transformer.
#[derive(Debug)]
pub struct DeformableOutput {
    /// The last decoder layer's output `[B, Q, C]`.
    pub hs: Tensor,
    /// The queries' reference points `[B, Q, 2]` (sigmoid), the same for every layer.
    pub reference_points: Tensor,
    /// The encoder's output `[B, S, C]` (levels flattened in order).
    pub memory: Tensor,
}

/// `DeformableTransformerEncoder.get_reference_points` with valid ratios 1: each level's
/// pixel centres divided by its size, `[1, S, 2]` as `(x, y)`.
fn encoder_reference_points(shapes: &[(i64, i64)], device: tch::Device) -> Result<Tensor> {
    let opts = (Kind::Float, device);
    let mut refs = Vec::with_capacity(shapes.len());
    for &(h, w) in shapes {
        let ys = Tensor::f_linspace(0.5, h as f64 - 0.5, h, opts)?;
        let xs = Tensor::f_linspace(0.5, w as f64 - 0.5, w, opts)?;
        let grid = Tensor::f_meshgrid_indexing(&[ys, xs], "ij")?;
        let ry = grid[0].f_reshape([1, -1])?.f_div_scalar(h as f64)?;
        let rx = grid[1].f_reshape([1, -1])?.f_div_scalar(w as f64)?;
        refs.push(Tensor::f_stack(&[rx, ry], -1)?);
    }
    Ok(Tensor::f_cat(&refs, 1)?)
}

impl DeformableTransformer {
    /// The transformer under `p` (TerraTorch: `torchvision_model.transformer`).
    pub fn new(p: nn::Path, cfg: DeformableTransformerConfig) -> Result<Self> {
        let d = cfg.d_model;
        if cfg.num_decoder_layers == 0 {
            return Err(PluginError::invalid_argument(
                "DeformableTransformer: num_decoder_layers must be at least 1 (upstream stacks the decoder \
                 layers' outputs: torch.stack of an empty list)",
            ));
        }
        let attn =
            |q: nn::Path| MSDeformAttn::new(q, d, cfg.num_feature_levels, cfg.nhead, cfg.n_points);
        let enc = &p / "encoder" / "layers";
        let encoder = (0..cfg.num_encoder_layers)
            .map(|i| {
                let q = &enc / i;
                Ok(EncoderLayer {
                    self_attn: attn(&q / "self_attn")?,
                    norm1: layer_norm(&q / "norm1", d),
                    linear1: linear(&q / "linear1", d, cfg.dim_feedforward),
                    linear2: linear(&q / "linear2", cfg.dim_feedforward, d),
                    norm2: layer_norm(&q / "norm2", d),
                })
            })
            .collect::<Result<_>>()?;
        let dec = &p / "decoder" / "layers";
        let decoder = (0..cfg.num_decoder_layers)
            .map(|i| {
                let q = &dec / i;
                Ok(DecoderLayer {
                    cross_attn: attn(&q / "cross_attn")?,
                    norm1: layer_norm(&q / "norm1", d),
                    self_attn: MultiheadAttention::new(&q / "self_attn", d, cfg.nhead)?,
                    norm2: layer_norm(&q / "norm2", d),
                    linear1: linear(&q / "linear1", d, cfg.dim_feedforward),
                    linear2: linear(&q / "linear2", cfg.dim_feedforward, d),
                    norm3: layer_norm(&q / "norm3", d),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            level_embed: p.var(
                "level_embed",
                &[cfg.num_feature_levels, d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            reference_points: linear(&p / "reference_points", d, 2),
            encoder,
            decoder,
            cfg,
        })
    }

    /// `forward(srcs, masks=all valid, pos_embeds, query_embed [Q, 2C])`: `srcs` and
    /// `pos_embeds` are one `[B, C, H_l, W_l]` map per level.
    pub fn forward(
        &self,
        srcs: &[Tensor],
        pos_embeds: &[Tensor],
        query_embed: &Tensor,
    ) -> Result<DeformableOutput> {
        let c = self.cfg.d_model;
        let levels = self.cfg.num_feature_levels as usize;
        if srcs.len() != levels || pos_embeds.len() != levels {
            return Err(PluginError::forward_failed(format!(
                "DeformableTransformer: expected {levels} feature levels, got {} maps and {} position embeddings",
                srcs.len(),
                pos_embeds.len()
            )));
        }
        let mut shapes = Vec::with_capacity(levels);
        let mut flat = Vec::with_capacity(levels);
        let mut flat_pos = Vec::with_capacity(levels);
        for (lvl, (src, pos)) in srcs.iter().zip(pos_embeds).enumerate() {
            let s = src.size();
            if s.len() != 4 || s[1] != c || pos.size() != s || s[0] != srcs[0].size()[0] {
                return Err(PluginError::forward_failed(format!(
                    "DeformableTransformer: level {lvl}: expected map and position embedding [B, {c}, H, W], got \
                     {s:?} and {:?}",
                    pos.size()
                )));
            }
            shapes.push((s[2], s[3]));
            // [B, C, H, W] -> [B, H*W, C]
            flat.push(src.f_flatten(2, 3)?.f_transpose(1, 2)?);
            let level = self.level_embed.f_get(lvl as i64)?.f_view([1, 1, -1])?;
            flat_pos.push(pos.f_flatten(2, 3)?.f_transpose(1, 2)?.f_add(&level)?);
        }
        let b = srcs[0].size()[0];
        let mut memory = Tensor::f_cat(&flat, 1)?;
        let pos = Tensor::f_cat(&flat_pos, 1)?;

        // Encoder: every pixel attends around its own centre on every level.
        let s = memory.size()[1];
        let enc_ref = encoder_reference_points(&shapes, memory.device())?
            .f_unsqueeze(2)?
            .f_expand([b, s, levels as i64, 2], false)?;
        for layer in &self.encoder {
            let a = layer
                .self_attn
                .forward(&memory.f_add(&pos)?, &enc_ref, &memory, &shapes)?;
            let x = norm(&layer.norm1, &memory.f_add(&a)?)?;
            memory = ffn(&layer.linear1, &layer.linear2, &layer.norm2, &x)?;
        }

        // Decoder: the query embedding splits into position and content.
        let qe = query_embed.size();
        if qe.len() != 2 || qe[1] != 2 * c {
            return Err(PluginError::forward_failed(format!(
                "DeformableTransformer: expected query_embed [Q, {}], got {qe:?}",
                2 * c
            )));
        }
        let parts = query_embed.f_split(c, 1)?;
        let query_pos = parts[0].f_unsqueeze(0)?.f_expand([b, qe[0], c], false)?;
        let mut tgt = parts[1].f_unsqueeze(0)?.f_expand([b, qe[0], c], false)?;
        let reference_points = apply(&self.reference_points, &query_pos)?.f_sigmoid()?;
        let dec_ref = reference_points
            .f_unsqueeze(2)?
            .f_expand([b, qe[0], levels as i64, 2], false)?;
        for layer in &self.decoder {
            let qk = tgt.f_add(&query_pos)?.f_transpose(0, 1)?;
            let a = layer
                .self_attn
                .forward(&qk, &qk, &tgt.f_transpose(0, 1)?)?
                .f_transpose(0, 1)?;
            let x = norm(&layer.norm2, &tgt.f_add(&a)?)?;
            let a = layer
                .cross_attn
                .forward(&x.f_add(&query_pos)?, &dec_ref, &memory, &shapes)?;
            let x = norm(&layer.norm1, &x.f_add(&a)?)?;
            tgt = ffn(&layer.linear1, &layer.linear2, &layer.norm3, &x)?;
        }
        Ok(DeformableOutput {
            hs: tgt,
            reference_points,
            memory,
        })
    }
}

/// Deformable DETR's `_inverse_sigmoid(x, eps=1e-5)`: `log(x / (1 - x))` with both clamped.
pub fn inverse_sigmoid(x: &Tensor) -> Result<Tensor> {
    let x = x.f_clamp(0.0, 1.0)?;
    let x1 = x.f_clamp_min(1e-5)?;
    let x2 = x.f_neg()?.f_add_scalar(1.0)?.f_clamp_min(1e-5)?;
    Ok(x1.f_div(&x2)?.f_log()?)
}
