//! DETR's encoder-decoder `Transformer` (`terratorch/models/detr/transformer.py`) as
//! TerraTorch's `TerraTorchDETR` builds it: post-norm layers (`normalize_before=False`),
//! ReLU, no encoder norm, a decoder `LayerNorm`, eval mode (dropout off), all-valid padding
//! masks. Position embeddings are added to queries and keys of every attention, never to
//! values; the decoder starts from a zero target with the learned queries as their position.
//!
//! Keys under the transformer's path: `encoder.layers.{i}.{self_attn, linear1, linear2,
//! norm1, norm2}`, `decoder.layers.{i}.{self_attn, multihead_attn, linear1, linear2, norm1,
//! norm2, norm3}`, `decoder.norm`.
use super::multihead_attention::MultiheadAttention;
use tch::{nn, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// `nn.LayerNorm`'s default epsilon, which the transformer layers keep.
const LN_EPS: f64 = 1e-5;

fn layer_norm(p: nn::Path, d: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![d],
        nn::LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
    )
}

/// `linear2(relu(linear1(x)))`.
#[derive(Debug)]
struct FeedForward {
    linear1: nn::Linear,
    linear2: nn::Linear,
}

impl FeedForward {
    fn new(p: &nn::Path, d_model: i64, dim_feedforward: i64) -> Self {
        Self {
            linear1: nn::linear(p / "linear1", d_model, dim_feedforward, Default::default()),
            linear2: nn::linear(p / "linear2", dim_feedforward, d_model, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x
            .f_linear(&self.linear1.ws, self.linear1.bs.as_ref())?
            .f_relu()?;
        Ok(h.f_linear(&self.linear2.ws, self.linear2.bs.as_ref())?)
    }
}

fn norm(ln: &nn::LayerNorm, x: &Tensor) -> Result<Tensor> {
    Ok(x.f_layer_norm(
        [x.size()[x.dim() - 1]],
        ln.ws.as_ref(),
        ln.bs.as_ref(),
        LN_EPS,
        true,
    )?)
}

/// `TransformerEncoderLayer.forward_post`.
#[derive(Debug)]
struct EncoderLayer {
    self_attn: MultiheadAttention,
    ffn: FeedForward,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
}

impl EncoderLayer {
    fn new(p: nn::Path, d: i64, nhead: i64, ffn: i64) -> Result<Self> {
        Ok(Self {
            self_attn: MultiheadAttention::new(&p / "self_attn", d, nhead)?,
            ffn: FeedForward::new(&p, d, ffn),
            norm1: layer_norm(&p / "norm1", d),
            norm2: layer_norm(&p / "norm2", d),
        })
    }

    fn forward(&self, src: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let qk = src.f_add(pos)?;
        let src = norm(
            &self.norm1,
            &src.f_add(&self.self_attn.forward(&qk, &qk, src)?)?,
        )?;
        norm(&self.norm2, &src.f_add(&self.ffn.forward(&src)?)?)
    }
}

/// `TransformerDecoderLayer.forward_post`.
#[derive(Debug)]
struct DecoderLayer {
    self_attn: MultiheadAttention,
    multihead_attn: MultiheadAttention,
    ffn: FeedForward,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
    norm3: nn::LayerNorm,
}

impl DecoderLayer {
    fn new(p: nn::Path, d: i64, nhead: i64, ffn: i64) -> Result<Self> {
        Ok(Self {
            self_attn: MultiheadAttention::new(&p / "self_attn", d, nhead)?,
            multihead_attn: MultiheadAttention::new(&p / "multihead_attn", d, nhead)?,
            ffn: FeedForward::new(&p, d, ffn),
            norm1: layer_norm(&p / "norm1", d),
            norm2: layer_norm(&p / "norm2", d),
            norm3: layer_norm(&p / "norm3", d),
        })
    }

    fn forward(
        &self,
        tgt: &Tensor,
        memory_k: &Tensor,
        memory: &Tensor,
        query_pos: &Tensor,
    ) -> Result<Tensor> {
        let qk = tgt.f_add(query_pos)?;
        let tgt = norm(
            &self.norm1,
            &tgt.f_add(&self.self_attn.forward(&qk, &qk, tgt)?)?,
        )?;
        let cross = self
            .multihead_attn
            .forward(&tgt.f_add(query_pos)?, memory_k, memory)?;
        let tgt = norm(&self.norm2, &tgt.f_add(&cross)?)?;
        norm(&self.norm3, &tgt.f_add(&self.ffn.forward(&tgt)?)?)
    }
}

/// DETR's `Transformer(d_model, nhead, num_encoder_layers, num_decoder_layers,
/// dim_feedforward)` in eval mode.
#[derive(Debug)]
pub struct Transformer {
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: nn::LayerNorm,
    d_model: i64,
}

impl Transformer {
    /// The transformer under `p` (TerraTorch: `torchvision_model.transformer`).
    pub fn new(
        p: nn::Path,
        d_model: i64,
        nhead: i64,
        num_encoder_layers: usize,
        num_decoder_layers: usize,
        dim_feedforward: i64,
    ) -> Result<Self> {
        let enc = &p / "encoder" / "layers";
        let dec = &p / "decoder" / "layers";
        Ok(Self {
            encoder: (0..num_encoder_layers)
                .map(|i| EncoderLayer::new(&enc / i, d_model, nhead, dim_feedforward))
                .collect::<Result<_>>()?,
            decoder: (0..num_decoder_layers)
                .map(|i| DecoderLayer::new(&dec / i, d_model, nhead, dim_feedforward))
                .collect::<Result<_>>()?,
            decoder_norm: layer_norm(&p / "decoder" / "norm", d_model),
            d_model,
        })
    }

    /// `forward(src [B, C, H, W], query_embed [Q, C], pos [B, C, H, W])` -> `(hs, memory)`:
    /// the normed last decoder output `[B, Q, C]` (the last entry of upstream's
    /// `[layers, B, Q, C]`; with intermediate outputs the last is the same normed output)
    /// and the encoder memory `[B, C, H, W]`.
    pub fn forward(
        &self,
        src: &Tensor,
        query_embed: &Tensor,
        pos: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let s = src.size();
        if s.len() != 4 || s[1] != self.d_model || pos.size() != s {
            return Err(PluginError::forward_failed(format!(
                "DETR Transformer: expected src and pos [B, {}, H, W], got {s:?} and {:?}",
                self.d_model,
                pos.size()
            )));
        }
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        // [B, C, H, W] -> [H*W, B, C]
        let seq = |t: &Tensor| -> Result<Tensor> { Ok(t.f_flatten(2, 3)?.f_permute([2, 0, 1])?) };
        let mut memory = seq(src)?;
        let pos = seq(pos)?;
        let query_pos = query_embed.f_unsqueeze(1)?.f_repeat([1, b, 1])?;
        for layer in &self.encoder {
            memory = layer.forward(&memory, &pos)?;
        }
        let memory_k = memory.f_add(&pos)?;
        let mut out = query_pos.f_zeros_like()?;
        for layer in &self.decoder {
            out = layer.forward(&out, &memory_k, &memory, &query_pos)?;
        }
        let hs = norm(&self.decoder_norm, &out)?.f_transpose(0, 1)?;
        let memory = memory
            .f_permute([1, 2, 0])?
            .f_contiguous()?
            .f_view([b, c, h, w])?;
        Ok((hs, memory))
    }
}
