//! TerraTorch's SatMAE reconstruction decoder: the masked-autoencoder decoder that
//! restores the masked tokens, runs transformer blocks and unpatchifies to an image.
//! Mirrors `terratorch/models/decoders/satmae_head.py` (`SatMAEHead`), whose blocks are
//! `timm/models/vision_transformer.py`'s `Block` (`Attention`, `Mlp`) of timm 1.0.31.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, nn::Module as _, Device, Kind, Tensor};
use terrahost_layers::vit::{Block, BlockConfig, LinearInit};
use terrahost_plugin_api::{
    sdk::{Built, Entry, Model},
    ParamType, PluginError, Result,
};

/// Arguments of [`SatMAEHead`]; upstream gives most of them a `None` default that fails,
/// so they are required here.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// Width of the encoder tokens (the one entry of the channel list).
    pub embed_dim: i64,
    /// Width of the decoder tokens (TerraTorch's `out_channels` of this module).
    pub out_channels: i64,
    /// Whether `decoder_embed` has a bias.
    pub bias: bool,
    /// Attention heads per block.
    pub num_heads: i64,
    /// Hidden width of each block's MLP as a multiple of `out_channels`.
    pub mlp_ratio: f64,
    /// Side of the square patches the output image is assembled from.
    pub patch_size: i64,
    /// Number of patches of the full (unmasked) sequence.
    pub num_patches: i64,
    /// Number of transformer blocks.
    pub depth: i64,
    /// Channels of the reconstructed image.
    pub in_chans: i64,
}

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps: 1e-5,
            ..Default::default()
        },
    )
}

/// timm's pre-norm transformer `Block` as `SatMAEHead` builds it (qkv bias, no layer
/// scale, no drop path, `nn.LayerNorm` eps 1e-5, `nn.Linear`'s own init): the shared
/// [`Block`] of `terrahost_layers::vit`.
fn block(p: nn::Path, dim: i64, num_heads: i64, mlp_ratio: f64) -> Block {
    let mut cfg = BlockConfig::timm(dim, num_heads, mlp_ratio);
    cfg.norm_eps = 1e-5;
    cfg.init = LinearInit::Torch;
    Block::new(p, &cfg)
}

/// The SatMAE decoder. `forward` takes `[tokens, ids_restore]`: the encoder's kept
/// tokens `[B, 1 + kept, embed_dim]` (class token first) and the unshuffle indices
/// `[B, num_patches]`; it returns the reconstructed image
/// `[B, in_chans, h * patch_size, h * patch_size]` with `h = sqrt(num_patches)`.
#[derive(Debug)]
pub struct SatMAEHead {
    decoder_embed: nn::Linear,
    mask_token: Tensor,
    decoder_pos_embed: Tensor,
    blocks: Vec<Block>,
    decoder_norm: nn::LayerNorm,
    decoder_pred: nn::Linear,
    cfg: Config,
}

impl SatMAEHead {
    /// Builds the decoder under `p`.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        let positive = [
            ("embed_dim (the channel list)", cfg.embed_dim),
            ("out_channels", cfg.out_channels),
            ("num_heads", cfg.num_heads),
            ("patch_size", cfg.patch_size),
            ("num_patches", cfg.num_patches),
            ("in_chans", cfg.in_chans),
        ];
        for (name, v) in positive {
            if v < 1 {
                return Err(PluginError::invalid_argument(format!(
                    "SatMAEHead: `{name}` must be >= 1, got {v}"
                )));
            }
        }
        if cfg.depth < 0 {
            return Err(PluginError::invalid_argument(format!(
                "SatMAEHead: `depth` must be >= 0, got {}",
                cfg.depth
            )));
        }
        if cfg.out_channels % cfg.num_heads != 0 {
            return Err(PluginError::invalid_argument(format!(
                "SatMAEHead: `out_channels` ({}) must be divisible by `num_heads` ({})",
                cfg.out_channels, cfg.num_heads
            )));
        }
        // A NaN ratio casts to 0 as well.
        if ((cfg.out_channels as f64 * cfg.mlp_ratio) as i64) < 1 {
            return Err(PluginError::invalid_argument(format!(
                "SatMAEHead: `mlp_ratio` must give an MLP width >= 1, got {}",
                cfg.mlp_ratio
            )));
        }
        let d = cfg.out_channels;
        let blocks_p = &p / "decoder_blocks";
        Ok(Self {
            decoder_embed: nn::linear(
                &p / "decoder_embed",
                cfg.embed_dim,
                d,
                nn::LinearConfig {
                    bias: cfg.bias,
                    ..Default::default()
                },
            ),
            mask_token: p.zeros("mask_token", &[1, 1, d]),
            // A fixed (not trained) parameter upstream: it is in the state_dict.
            decoder_pos_embed: p.zeros_no_train("decoder_pos_embed", &[1, cfg.num_patches + 1, d]),
            blocks: (0..cfg.depth)
                .map(|i| block(&blocks_p / i, d, cfg.num_heads, cfg.mlp_ratio))
                .collect(),
            decoder_norm: layer_norm(&p / "decoder_norm", d),
            decoder_pred: nn::linear(
                &p / "decoder_pred",
                d,
                cfg.patch_size * cfg.patch_size * cfg.in_chans,
                Default::default(),
            ),
            cfg: cfg.clone(),
        })
    }

    fn run(&self, tokens: &Tensor, ids_restore: &Tensor) -> Result<Tensor> {
        let fail = |m: String| Err(PluginError::forward_failed(format!("SatMAEHead: {m}")));
        let (ts, is) = (tokens.size(), ids_restore.size());
        if ts.len() != 3 || ts[1] < 1 || ts[2] != self.cfg.embed_dim {
            return fail(format!(
                "tokens must be [B, 1 + kept, {}], got {ts:?}",
                self.cfg.embed_dim
            ));
        }
        if is.len() != 2 || is[0] != ts[0] || is[1] != self.cfg.num_patches || ts[1] - 1 > is[1] {
            return fail(format!(
                "ids_restore must be [B, num_patches] = [{}, {}] (at least as many as the {} kept tokens), got {is:?}",
                ts[0],
                self.cfg.num_patches,
                ts[1] - 1
            ));
        }
        let ids = match ids_restore.kind() {
            Kind::Int64 => ids_restore.shallow_clone(),
            Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => {
                ids_restore.f_to_kind(Kind::Int64)?
            }
            k => return fail(format!("ids_restore must hold integer indices, got {k:?}")),
        };
        let (b, l) = (ts[0], ts[1]);
        let n = is[1];
        let d = self.cfg.out_channels;
        // [B, L, E] -> [B, L, D]
        let x = self.decoder_embed.forward(tokens);
        let mask_tokens = self.mask_token.f_repeat([b, n + 1 - l, 1])?;
        // Kept tokens (no class token) then mask tokens, put back in the original order.
        let rest = Tensor::f_cat(&[x.f_narrow(1, 1, l - 1)?, mask_tokens], 1)?;
        let index = ids.f_unsqueeze(-1)?.f_repeat([1, 1, d])?;
        let rest = rest.f_gather(1, &index, false)?;
        let mut x =
            Tensor::f_cat(&[x.f_narrow(1, 0, 1)?, rest], 1)?.f_add(&self.decoder_pos_embed)?;
        for blk in &self.blocks {
            x = blk.forward(&x, false)?;
        }
        let x = self.decoder_pred.forward(&self.decoder_norm.forward(&x));
        // Drop the class token: [B, N, p*p*c].
        let x = x.f_narrow(1, 1, n)?;
        let h = (n as f64).sqrt() as i64;
        if h * h != n {
            return fail(format!("num_patches {n} is not a square number of patches"));
        }
        let (p, c) = (self.cfg.patch_size, self.cfg.in_chans);
        // [B, h, w, p, q, c] -> [B, c, h, p, w, q] -> [B, c, h*p, w*q]
        let x = x
            .f_reshape([b, h, h, p, p, c])?
            .f_permute([0, 5, 1, 3, 2, 4])?;
        Ok(x.f_reshape([b, c, h * p, h * p])?)
    }
}

impl Model for SatMAEHead {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [tokens, ids_restore] => Ok(vec![self.run(tokens, ids_restore)?]),
            _ => Err(PluginError::forward_failed(format!(
                "SatMAEHead takes two inputs, the kept tokens [B, 1 + kept, embed_dim] and ids_restore \
                 [B, num_patches], got {}",
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        // As upstream: the decoder width, not the image channels.
        vec![self.cfg.out_channels]
    }
}

/// The `SatMAEHead` registry entry.
pub(crate) fn entry() -> Entry {
    Entry::new(
        "SatMAEHead",
        "SatMAE masked-autoencoder decoder: embeds the kept tokens, restores the masked ones with \
         ids_restore, adds fixed position embeddings, runs `depth` transformer blocks and unpatchifies to \
         [B, in_chans, H, W]. Forward takes [tokens, ids_restore]; the channel list is the one token width.",
        |ctx| {
            let embed_dim = match ctx.channels[..] {
                [c] => c,
                ref other => {
                    return Err(PluginError::invalid_argument(format!(
                        "`{}` takes the encoder's token width as a one-element channel list, got {other:?}",
                        ctx.qualified()
                    )))
                }
            };
            let cfg = Config {
                embed_dim,
                out_channels: ctx.args.get("out_channels")?,
                bias: ctx.args.get("bias")?,
                num_heads: ctx.args.get("num_heads")?,
                mlp_ratio: ctx.args.get("mlp_ratio")?,
                patch_size: ctx.args.get("patch_size")?,
                num_patches: ctx.args.get("num_patches")?,
                depth: ctx.args.get("depth")?,
                in_chans: ctx.args.get("in_chans")?,
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = SatMAEHead::new(vs.root(), &cfg)?;
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        },
    )
    .req("out_channels", ParamType::INT, "width of the decoder tokens (upstream default None fails)")
    .opt("bias", ParamType::BOOL, json!(true), "whether decoder_embed has a bias")
    .req("num_heads", ParamType::INT, "attention heads per block")
    .req("mlp_ratio", ParamType::FLOAT, "MLP hidden width as a multiple of out_channels")
    .req("patch_size", ParamType::INT, "side of the square patches of the output image")
    .opt("num_patches", ParamType::INT, json!(1), "patches of the full sequence (a square number)")
    .req("depth", ParamType::INT, "number of transformer blocks")
    .req("in_chans", ParamType::INT, "channels of the reconstructed image")
    .takes_channels()
}
