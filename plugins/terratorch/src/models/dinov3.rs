//! Mirrors TerraTorch 1.2.11's `terratorch/models/backbones/dinov3/dinov3_wrapper.py`
//! (`DinoV3Wrapper` and its `dinov3_vit*` registrations) and the network the wrapper loads
//! through `torch.hub`: facebookresearch/dinov3's `DinoVisionTransformer`
//! (`dinov3/models/vision_transformer.py`, with `dinov3/layers/attention.py`, `block.py`,
//! `ffn_layers.py`, `layer_scale.py`, `patch_embed.py`, `rope_position_encoding.py`), built
//! with the presets of `dinov3/hub/backbones.py`.
//!
//! Keys: the wrapper holds the network as `self.dinov3`, so every key sits under
//! `dinov3.` (TerraTorch's `state_dict`); a Meta checkpoint given as `ckpt_path` holds the
//! network's own keys (`blocks.0.attn.qkv.weight`, `storage_tokens`, `rope_embed.periods`,
//! `blocks.0.attn.qkv.bias_mask`, ...) and loads strictly under that prefix, as
//! `torch.hub.load(..., weights=ckpt_path)` loads it into the network.
//!
//! What `forward` returns is the wrapper's: for every block, the block's output after the
//! final norm, patch tokens only (`[B, h*w, D]`), and with `return_cls_token` the class
//! token appended **last** (`[B, h*w + 1, D]`: upstream's docstring says "first", its code
//! concatenates it after the patches; the code is what runs).
//!
//! Differences, stated in the entries' docs: `ckpt_path` may be left out (TerraTorch makes
//! it a required argument that may be `None`); keywords the wrapper swallows are refused,
//! except `pretrained`, which TerraTorch's factory configs pass (accepted with a warning);
//! for `dinov3_vitl16` a checkpoint whose file name carries no `-<hash>.pth` is not refused:
//! whether it has the SAT-493M `local_cls_norm` is read from its keys; a model whose
//! float32 parameters would not fit in the available memory is refused before it is built.
use serde_json::{json, Map, Value};
use std::path::Path;
use tch::{nn, Device, Tensor};
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_layers::conv::Conv2d;
use terrahost_layers::norm::LayerNorm;
use terrahost_layers::rope::{self, RopeConfig, RopePositionEmbedding};
use terrahost_layers::swiglu::SwiGluFfn;
use terrahost_layers::vit::{Block, BlockConfig};
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

/// The registered names, in TerraTorch's registration order.
pub const NAMES: [&str; 7] = [
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16plus",
    "dinov3_vitl16",
    "dinov3_vith16plus",
    "dinov3_vit7b16",
];

/// The key prefix of the network inside the wrapper (`DinoV3Wrapper.dinov3`).
pub const PREFIX: &str = "dinov3";

/// The hash in the file name of the SAT-493M `dinov3_vitl16` checkpoint, the one whose
/// network has a `local_cls_norm` (`dinov3_vitl16` in `hub/backbones.py`).
pub const VITL16_SAT_HASH: &str = "eadcf0ff";

/// The feed-forward network of the blocks (`ffn_layer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    /// `"mlp"`: fc1, exact GELU, fc2.
    Mlp,
    /// `"swiglu"` (`align_to` 8) and `"swiglu32"` / `"swiglu64"` / `"swiglu128"`.
    SwiGlu {
        /// The multiple the hidden width is rounded up to.
        align_to: i64,
    },
}

impl Ffn {
    /// The reference's `ffn_layer` names.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "mlp" => Self::Mlp,
            "swiglu" => Self::SwiGlu { align_to: 8 },
            "swiglu32" => Self::SwiGlu { align_to: 32 },
            "swiglu64" => Self::SwiGlu { align_to: 64 },
            "swiglu128" => Self::SwiGlu { align_to: 128 },
            other => {
                return Err(PluginError::invalid_argument(format!(
                    "ffn_layer {other:?} is not known; use mlp, swiglu, swiglu32, swiglu64 or swiglu128"
                )))
            }
        })
    }
}

/// The architecture of a `DinoVisionTransformer` (the arguments `_make_dinov3_vit` passes
/// on; `drop_path_rate` is 0 in every preset and cannot be changed through TerraTorch, so
/// it is not represented).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Patch size of the patch embedding (and the factory's padding multiple).
    pub patch_size: i64,
    /// Input channels.
    pub in_chans: i64,
    /// Token width.
    pub embed_dim: i64,
    /// Number of blocks.
    pub depth: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// FFN hidden width as a multiple of `embed_dim` (before SwiGLU's 2/3 and rounding).
    pub ffn_ratio: f64,
    /// Bias of `qkv`.
    pub qkv_bias: bool,
    /// Bias of the attention's `proj`.
    pub proj_bias: bool,
    /// Biases of the FFN's layers.
    pub ffn_bias: bool,
    /// LayerScale init value; `None`: no LayerScale (`ls1`/`ls2` are identities).
    pub layerscale_init: Option<f64>,
    /// LayerNorm epsilon (`"layernormbf16"`: 1e-5, `"layernorm"`: 1e-6).
    pub norm_eps: f64,
    /// The FFN kind.
    pub ffn: Ffn,
    /// Register ("storage") tokens after the class token.
    pub n_storage_tokens: i64,
    /// `mask_k_bias`: the key part of the qkv bias is multiplied by the `bias_mask`
    /// buffer (zeros), so keys get no bias.
    pub mask_k_bias: bool,
    /// `untie_global_and_local_cls_norm`: the network has a `local_cls_norm`, used only in
    /// DINO training on local crops, never by the wrapper (its keys must load).
    pub untie_global_and_local_cls_norm: bool,
    /// The rotary position embedding.
    pub rope: RopeConfig,
}

impl Config {
    /// The preset of a registered name (`dinov3/hub/backbones.py`), with the weights'
    /// default (LVD-1689M) choice of `untie_global_and_local_cls_norm`.
    pub fn preset(name: &str) -> Option<Self> {
        let base = Self {
            patch_size: 16,
            in_chans: 3,
            embed_dim: 384,
            depth: 12,
            num_heads: 6,
            ffn_ratio: 4.0,
            qkv_bias: true,
            proj_bias: true,
            ffn_bias: true,
            layerscale_init: Some(1e-5),
            norm_eps: 1e-5,
            ffn: Ffn::Mlp,
            n_storage_tokens: 4,
            mask_k_bias: true,
            untie_global_and_local_cls_norm: false,
            rope: RopeConfig {
                rescale_coords: Some(2.0),
                ..RopeConfig::default()
            },
        };
        let swiglu = Ffn::SwiGlu { align_to: 8 };
        Some(match name {
            "dinov3_vits16" => base,
            "dinov3_vits16plus" => Self {
                ffn_ratio: 6.0,
                ffn: swiglu,
                ..base
            },
            "dinov3_vitb16" => Self {
                embed_dim: 768,
                num_heads: 12,
                ..base
            },
            "dinov3_vitl16" => Self {
                embed_dim: 1024,
                depth: 24,
                num_heads: 16,
                ..base
            },
            "dinov3_vitl16plus" => Self {
                embed_dim: 1024,
                depth: 24,
                num_heads: 16,
                ffn_ratio: 6.0,
                ffn: swiglu,
                ..base
            },
            "dinov3_vith16plus" => Self {
                embed_dim: 1280,
                depth: 32,
                num_heads: 20,
                ffn_ratio: 6.0,
                ffn: swiglu,
                ..base
            },
            "dinov3_vit7b16" => Self {
                embed_dim: 4096,
                depth: 40,
                num_heads: 32,
                ffn_ratio: 3.0,
                qkv_bias: false,
                ffn: Ffn::SwiGlu { align_to: 64 },
                untie_global_and_local_cls_norm: true,
                ..base
            },
            _ => return None,
        })
    }

    /// The FFN's nominal hidden width, `int(embed_dim * ffn_ratio)`.
    pub fn ffn_hidden(&self) -> i64 {
        (self.embed_dim as f64 * self.ffn_ratio) as i64
    }

    /// The shared block's configuration for `SelfAttentionBlock` (in eval mode, and in
    /// train mode without stochastic depth: every preset has `drop_path_rate=0`): timm's
    /// pre-norm block with DINOv3's biases, norm eps, LayerScale and masked key bias. The
    /// MLP part describes `"mlp"` (fc1, exact GELU, fc2); SwiGLU is built in its place.
    pub fn block_config(&self) -> BlockConfig {
        let mut b = BlockConfig::timm(self.embed_dim, self.num_heads, self.ffn_ratio);
        b.qkv_bias = self.qkv_bias;
        b.mask_k_bias = self.mask_k_bias;
        b.proj_bias = self.proj_bias;
        b.norm_eps = self.norm_eps;
        b.init_values = self.layerscale_init;
        b.mlp.hidden = self.ffn_hidden();
        b.mlp.bias = self.ffn_bias;
        b
    }

    /// The block `p` (`blocks.<i>`): keys `norm1`, `attn.qkv` (with the buffer
    /// `attn.qkv.bias_mask` under `mask_k_bias`), `attn.proj`, `ls1.gamma`, `norm2`,
    /// `mlp.fc1` / `mlp.fc2` or `mlp.w1` / `mlp.w2` / `mlp.w3`, `ls2.gamma`.
    fn block(&self, p: nn::Path) -> Block {
        let cfg = self.block_config();
        match self.ffn {
            Ffn::Mlp => Block::new(p, &cfg),
            Ffn::SwiGlu { align_to } => Block::with_mlp(p, &cfg, |p| {
                Box::new(SwiGluFfn::new(
                    p,
                    self.embed_dim,
                    self.ffn_hidden(),
                    self.ffn_bias,
                    align_to,
                ))
            }),
        }
    }

    /// The number of parameters (`sum(p.numel() for p in model.parameters())`; the
    /// buffers `rope_embed.periods` and `bias_mask` are not parameters).
    pub fn n_params(&self) -> i64 {
        let d = self.embed_dim;
        let b = |on: bool, n: i64| if on { n } else { 0 };
        let norm = 2 * d;
        let h = self.ffn_hidden();
        let ffn = match self.ffn {
            Ffn::Mlp => d * h + b(self.ffn_bias, h) + h * d + b(self.ffn_bias, d),
            Ffn::SwiGlu { align_to } => {
                let h = terrahost_layers::swiglu::hidden_width(h, align_to);
                2 * (d * h + b(self.ffn_bias, h)) + h * d + b(self.ffn_bias, d)
            }
        };
        let block = norm
            + 3 * d * d
            + b(self.qkv_bias, 3 * d)
            + d * d
            + b(self.proj_bias, d)
            + b(self.layerscale_init.is_some(), 2 * d)
            + norm
            + ffn;
        let patch = self.in_chans * self.patch_size * self.patch_size * d + d;
        let tokens = d + self.n_storage_tokens * d + d; // cls, storage, mask_token
        let norms = norm + b(self.untie_global_and_local_cls_norm, norm);
        patch + tokens + self.depth * block + norms
    }

    /// Refuses what the reference would refuse or cannot run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if self.patch_size <= 0 || self.in_chans <= 0 || self.depth < 0 {
            return bad(format!(
                "DINOv3 needs a positive patch_size and in_chans and a depth >= 0, got {}, {}, {}",
                self.patch_size, self.in_chans, self.depth
            ));
        }
        if self.num_heads <= 0 || self.embed_dim % (4 * self.num_heads) != 0 {
            return bad(format!(
                "DINOv3's RoPE needs embed_dim ({}) to be a multiple of 4 * num_heads ({})",
                self.embed_dim, self.num_heads
            ));
        }
        if self.n_storage_tokens < 0 {
            return bad(format!(
                "n_storage_tokens must be >= 0, got {}",
                self.n_storage_tokens
            ));
        }
        Ok(())
    }
}

/// `DinoVisionTransformer`: patch embedding, class and register tokens, blocks with RoPE,
/// the final norm. Keys are the reference's, under the path it was built at.
pub struct DinoVisionTransformer {
    cfg: Config,
    patch_embed: Conv2d,
    cls_token: Tensor,
    storage_tokens: Option<Tensor>,
    mask_token: Tensor,
    rope_embed: RopePositionEmbedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl DinoVisionTransformer {
    /// Builds the network under `p` with the reference's `init_weights` distributions
    /// (truncated-normal linear layers, class and register tokens with std 0.02, a zero
    /// mask token, LayerScale at its init value). `local_cls_norm`, when the config
    /// unties it, exists for its keys only.
    pub fn new(p: nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let tok = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let storage_tokens = (cfg.n_storage_tokens > 0)
            .then(|| p.var("storage_tokens", &[1, cfg.n_storage_tokens, d], tok));
        let blocks = (0..cfg.depth)
            .map(|i| cfg.block(&p / "blocks" / i))
            .collect();
        if cfg.untie_global_and_local_cls_norm {
            let _ = LayerNorm::new(&p / "local_cls_norm", d, cfg.norm_eps);
        }
        Ok(Self {
            patch_embed: Conv2d::patchify(
                &p / "patch_embed" / "proj",
                cfg.in_chans,
                d,
                cfg.patch_size,
                cfg.patch_size,
                true,
            ),
            cls_token: p.var("cls_token", &[1, 1, d], tok),
            storage_tokens,
            mask_token: p.var("mask_token", &[1, d], nn::Init::Const(0.0)),
            rope_embed: RopePositionEmbedding::new(
                &p / "rope_embed",
                d,
                cfg.num_heads,
                cfg.rope.clone(),
            )?,
            blocks,
            norm: LayerNorm::new(&p / "norm", d, cfg.norm_eps),
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `prepare_tokens_with_masks(x)` without masks: `[B, 1 + n_storage + h*w, D]` and
    /// the patch grid `(h, w)`.
    fn prepare_tokens(&self, x: &Tensor) -> Result<(Tensor, i64, i64)> {
        let size = x.size();
        if size.len() != 4 || size[1] != self.cfg.in_chans {
            return Err(PluginError::invalid_argument(format!(
                "DINOv3 takes images [B, {}, H, W], got a tensor of shape {size:?}",
                self.cfg.in_chans
            )));
        }
        // [B, C, H, W] -> [B, D, h, w] -> [B, h*w, D]
        let y = self.patch_embed.forward(x)?;
        let (b, _, h, w) = y.size4()?;
        let y = y.f_flatten(2, 3)?.f_transpose(1, 2)?;
        // `cls_token + 0 * mask_token`, as upstream writes it when no mask is given
        let cls = self
            .cls_token
            .f_add(&self.mask_token.f_mul_scalar(0.0)?)?
            .f_expand([b, -1, -1], false)?;
        let mut parts = vec![cls];
        if let Some(s) = &self.storage_tokens {
            parts.push(s.f_expand([b, -1, -1], false)?);
        }
        parts.push(y);
        Ok((Tensor::f_cat(&parts, 1)?, h, w))
    }

    /// `_get_intermediate_layers_not_chunked(x, n=range(depth))`: the output of every
    /// block, before the final norm. In train mode the RoPE tables are drawn again for
    /// each block (their coordinate augmentation is random), as upstream.
    pub fn block_outputs(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let (mut x, h, w) = self.prepare_tokens(x)?;
        let fixed = if train {
            None
        } else {
            Some(self.rope_embed.sin_cos(h, w, false)?)
        };
        let mut out = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let drawn;
            let (sin, cos) = match &fixed {
                Some(r) => r,
                None => {
                    drawn = self.rope_embed.sin_cos(h, w, true)?;
                    &drawn
                }
            };
            // `SelfAttention.apply_rope`: patch tokens of q and k rotated, the class and
            // register tokens left as they are
            let rope = |q: &Tensor, k: &Tensor| -> Result<(Tensor, Tensor)> {
                Ok((
                    rope::apply_to_patches(q, sin, cos)?,
                    rope::apply_to_patches(k, sin, cos)?,
                ))
            };
            x = blk.forward_with(&x, train, Some(&rope))?;
            out.push(x.shallow_clone());
        }
        Ok(out)
    }

    /// `get_intermediate_layers(x, n=range(depth), return_class_token=...)` followed by
    /// the wrapper's concatenation: per block, the normed patch tokens `[B, h*w, D]`,
    /// with the normed class token appended last when `return_cls_token`.
    pub fn wrapper_outputs(
        &self,
        x: &Tensor,
        return_cls_token: bool,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let first_patch = 1 + self.cfg.n_storage_tokens;
        self.block_outputs(x, train)?
            .iter()
            .map(|o| {
                let o = self.norm.forward(o)?;
                let n = o.size()[1];
                let patches = o.f_narrow(1, first_patch, n - first_patch)?;
                if return_cls_token {
                    // [B, hw, D] ++ [B, 1, D]
                    Ok(Tensor::f_cat(&[patches, o.f_narrow(1, 0, 1)?], 1)?)
                } else {
                    Ok(patches)
                }
            })
            .collect()
    }
}

/// `DinoV3Wrapper`: the network under `dinov3.` and what `forward` returns.
pub struct DinoV3Backbone {
    /// The network.
    pub vit: DinoVisionTransformer,
    /// Whether each output ends with the class token.
    pub return_cls_token: bool,
}

impl Model for DinoV3Backbone {
    /// `xs[0]`: image `[B, 3, H, W]`; one output per block (see the module docs).
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = xs
            .first()
            .ok_or_else(|| PluginError::invalid_argument("DINOv3 needs an input image"))?;
        self.vit.wrapper_outputs(x, self.return_cls_token, train)
    }

    /// `[embed_dim] * depth`, the wrapper's `out_channels`.
    fn out_channels(&self) -> Vec<i64> {
        vec![self.vit.cfg.embed_dim; self.vit.cfg.depth as usize]
    }

    /// `patch_size` is what TerraTorch's factory finds on the network
    /// (`DinoVisionTransformer.patch_size`) and pads the input to.
    fn meta(&self) -> Map<String, Value> {
        let c = &self.vit.cfg;
        let mut m = Map::new();
        m.insert("patch_size".into(), json!(c.patch_size));
        m.insert("embed_dim".into(), json!(c.embed_dim));
        m.insert("depth".into(), json!(c.depth));
        m.insert("in_chans".into(), json!(c.in_chans));
        m.insert("n_storage_tokens".into(), json!(c.n_storage_tokens));
        m.insert("return_cls_token".into(), json!(self.return_cls_token));
        m
    }
}

/// Loads a state_dict into the variables under `prefix.` of `vs`, strictly, as
/// `load_state_dict(strict=True)` does: every variable must be in the checkpoint with
/// its shape, and the checkpoint may hold nothing else. Values are converted to the
/// variables' dtype. `source` names the checkpoint in errors.
pub fn load_strict(
    vs: &nn::VarStore,
    pairs: Vec<(String, Tensor)>,
    prefix: &str,
    source: &str,
) -> Result<()> {
    let vars = vs.variables();
    let key = |k: &str| format!("{prefix}.{k}");
    let mut unexpected = Vec::new();
    let mut wrong = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &pairs {
        match vars.get(&key(k)) {
            None => unexpected.push(k.clone()),
            Some(t) => {
                if t.size() != v.size() {
                    wrong.push(format!(
                        "{k} (checkpoint {:?}, model {:?})",
                        v.size(),
                        t.size()
                    ));
                }
                seen.insert(key(k));
            }
        }
    }
    let mut missing: Vec<String> = vars
        .keys()
        .filter(|k| !seen.contains(*k))
        .map(|k| k[prefix.len() + 1..].to_owned())
        .collect();
    missing.sort();
    if !(missing.is_empty() && unexpected.is_empty() && wrong.is_empty()) {
        let list = |what: &str, v: &[String]| {
            (!v.is_empty()).then(|| {
                let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
                let more = if v.len() > 8 {
                    format!(" and {} more", v.len() - 8)
                } else {
                    String::new()
                };
                format!("{what} {}{more}", shown.join(", "))
            })
        };
        let parts: Vec<String> = [
            list("missing keys:", &missing),
            list("unexpected keys:", &unexpected),
            list("wrong shapes:", &wrong),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Err(PluginError::invalid_argument(format!(
            "checkpoint {source} does not fit the model (loaded strictly, as upstream): {}",
            parts.join("; ")
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for (k, v) in pairs {
            let mut dst = vars[&key(&k)].shallow_clone();
            dst.f_copy_(&v.f_to_kind(dst.kind())?.f_to_device(dst.device())?)?;
        }
        Ok(())
    })
}

/// Whether a `dinov3_vitl16` checkpoint is the SAT-493M one (its network has a
/// `local_cls_norm`): upstream reads the 8-character hash before `.pth` in the file
/// name; a name without one is decided by the checkpoint's keys (upstream refuses it).
pub fn vitl16_unties_cls_norm(file: &Path, keys: &[String]) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match filename_hash(name) {
        Some(h) => h == VITL16_SAT_HASH,
        None => keys.iter().any(|k| k.starts_with("local_cls_norm.")),
    }
}

/// The hash upstream's `re.findall(r"-(.{8}).pth", name)` finds, when it finds exactly
/// one: a `-`, eight characters (the hash), any character and `pth`.
fn filename_hash(name: &str) -> Option<String> {
    let c: Vec<char> = name.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 13 <= c.len() {
        let window = &c[i..i + 13];
        if window[0] == '-' && !window[1..10].contains(&'\n') && window[10..] == ['p', 't', 'h'] {
            found.push(window[1..9].iter().collect::<String>());
            i += 13; // findall's matches do not overlap
        } else {
            i += 1;
        }
    }
    (found.len() == 1).then(|| found.remove(0))
}

/// The bytes of available memory (`MemAvailable` of `/proc/meminfo`), where the system
/// reports it.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses to build `name` when its float32 parameters (plus a checkpoint of
/// `checkpoint_bytes` read next to them) need more than `available` bytes.
pub fn check_memory(
    name: &str,
    n_params: i64,
    checkpoint_bytes: u64,
    available: Option<u64>,
) -> Result<()> {
    let params = n_params.max(0) as u64 * 4;
    let need = params + checkpoint_bytes;
    match available {
        Some(avail) if need > avail => {
            let gb = |b: u64| b as f64 / 1e9;
            let ckpt = if checkpoint_bytes > 0 {
                format!(" plus {:.1} GB of checkpoint", gb(checkpoint_bytes))
            } else {
                String::new()
            };
            Err(PluginError::build_failed(format!(
                "`{name}` needs about {:.1} GB ({n_params} float32 parameters x 4 bytes{ckpt}) but only {:.1} GB of \
                 memory is available; build it on a machine with more memory",
                gb(need),
                gb(avail)
            )))
        }
        _ => Ok(()),
    }
}

/// Builds the entry `name` from its validated arguments.
fn build(ctx: &BuildCtx<'_, '_>, name: &str) -> Result<ModuleBox> {
    let qualified = ctx.qualified();
    let mut cfg = Config::preset(name).expect("a DINOv3 entry is registered only for a preset");
    let return_cls_token: bool = ctx.args.get("return_cls_token")?;
    let ckpt: Option<String> = ctx.args.opt("ckpt_path")?;
    let ckpt_bytes = match &ckpt {
        Some(f) => std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
        None => 0,
    };
    check_memory(&qualified, cfg.n_params(), ckpt_bytes, available_memory())?;
    let pairs = match &ckpt {
        Some(f) => Some(
            read_state_dict(Path::new(f))
                .map_err(|e| e.context(format_args!("`{qualified}` ckpt_path")))?,
        ),
        None => None,
    };
    if let (Some(f), Some(p)) = (&ckpt, &pairs) {
        if name == "dinov3_vitl16" {
            let keys: Vec<String> = p.iter().map(|(k, _)| k.clone()).collect();
            cfg.untie_global_and_local_cls_norm = vitl16_unties_cls_norm(Path::new(f), &keys);
        }
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let vit = DinoVisionTransformer::new(vs.root() / PREFIX, &cfg)
        .map_err(|e| e.context(format_args!("`{qualified}`")))?;
    if let (Some(f), Some(p)) = (ckpt, pairs) {
        load_strict(&vs, p, PREFIX, &f).map_err(|e| e.context(format_args!("`{qualified}`")))?;
    }
    let model = DinoV3Backbone {
        vit,
        return_cls_token,
    };
    Ok(Built::new(qualified, vs, model).boxed())
}

/// The registry entry `name` (one of [`NAMES`]).
pub fn entry(name: &'static str) -> Entry {
    let c = Config::preset(name).expect("a DINOv3 entry is registered only for a preset");
    let ffn = match c.ffn {
        Ffn::Mlp => "MLP".to_owned(),
        Ffn::SwiGlu { align_to } => format!("SwiGLU (align {align_to})"),
    };
    let doc = format!(
        "DINOv3 ViT `{name}` (facebookresearch/dinov3 through TerraTorch's DinoV3Wrapper; embed_dim {}, depth {}, \
         heads {}, {ffn} FFN x{}, {} register tokens, RoPE, patch 16, about {:.0}M parameters). Input [B, 3, H, W]; \
         returns for every block the final-normed patch tokens [B, (H/16)*(W/16), {}], with the class token appended \
         LAST when return_cls_token (as TerraTorch's code does). Weights load from a local Meta checkpoint \
         (ckpt_path, strict); without it the weights are random, as upstream.",
        c.embed_dim,
        c.depth,
        c.num_heads,
        c.ffn_ratio,
        c.n_storage_tokens,
        c.n_params() as f64 / 1e6,
        c.embed_dim,
    );
    Entry::new(name, &doc, move |ctx| build(ctx, name))
        .opt(
            "ckpt_path",
            ParamType::STR,
            Value::Null,
            "local Meta DINOv3 checkpoint (.pth or .safetensors, the network's own keys), loaded strictly; \
             null: random weights (TerraTorch requires the keyword, None allowed)",
        )
        .opt(
            "return_cls_token",
            ParamType::BOOL,
            json!(true),
            "append the normed class token after the patch tokens of every output",
        )
        .ignores(
            "pretrained",
            "swallowed by DinoV3Wrapper's **kwargs and never read: weights come from ckpt_path only",
        )
}

/// The backbone entries, in TerraTorch's registration order.
pub fn entries() -> Vec<Entry> {
    NAMES.iter().map(|n| entry(n)).collect()
}
