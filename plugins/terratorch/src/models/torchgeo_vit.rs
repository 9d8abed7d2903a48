//! Mirrors `terratorch/models/backbones/torchgeo_vit.py` (TerraTorch 1.2.11): the
//! `ssl4eol_vit_small_patch16_224_*` and `ssl4eos12_vit_small_patch16_224_sentinel2_all_*`
//! backbones, each `ViTEncoderWrapper(torchgeo vit_small_patch16_224(in_chans=len(model_bands),
//! **kwargs))`, where torchgeo's builder (`torchgeo/models/vit.py`) is
//! `timm.create_model("vit_small_patch16_224", **kwargs)` (timm's
//! `timm/models/vision_transformer.py`), and `load_vit_weights` with
//! `select_patch_embed_weights` on `patch_embed.proj.weight` for `pretrained=True`.
//!
//! The network is timm's whole classifier model (its `head` included, so the wrapper's
//! `vit_model.*` keys load unchanged). The wrapper returns
//! `forward_intermediates(x, intermediates_only=True)`: the patch tokens after every block,
//! without the final norm, as `[B, D, H/p, W/p]` maps. It keeps `out_indices` and never reads
//! it, so every block is returned whatever `out_indices` says.
use super::torchgeo_bands::{
    LANDSAT_ETM_SR, LANDSAT_ETM_TOA, LANDSAT_OLI_SR, LANDSAT_OLI_TIRS_TOA, LANDSAT_TM_TOA, S2_ALL,
};
use super::torchgeo_resnet::{
    checkpoint_file, in_chans, load_checkpoint, model_bands, pretrained_bands,
};
use serde_json::{json, Map, Value};
use tch::nn::{self, Module};
use tch::Tensor;
use terrahost_layers::vit::{Block, BlockConfig};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// timm's `VisionTransformer` with the keywords of `vit_small_patch16_224` that TerraTorch
/// forwards and terrahost supports; the rest at timm's defaults (class token, learned
/// position embedding, `qkv_bias=True`, LayerNorm eps 1e-6, `global_pool="token"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Square input size the position embedding is made for (timm's `img_size`).
    pub img_size: i64,
    /// Square patch size.
    pub patch_size: i64,
    /// Input channels of the patch embedding.
    pub in_chans: i64,
    /// Token width.
    pub embed_dim: i64,
    /// Number of blocks.
    pub depth: i64,
    /// Attention heads per block.
    pub num_heads: i64,
    /// MLP hidden width over `embed_dim`.
    pub mlp_ratio: f64,
    /// Classifier outputs (`head`); 0 removes the classifier.
    pub num_classes: i64,
    /// Stochastic depth, linear over the blocks (train mode only).
    pub drop_path_rate: f64,
}

impl Config {
    /// timm `vit_small_patch16_224`.
    pub fn vit_small_patch16_224() -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 384,
            depth: 12,
            num_heads: 6,
            mlp_ratio: 4.0,
            num_classes: 1000,
            drop_path_rate: 0.0,
        }
    }

    fn grid(&self) -> i64 {
        self.img_size / self.patch_size
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        for (n, v) in [
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
        ] {
            if v < 1 {
                return bad(format!("`{n}` must be at least 1, got {v}"));
            }
        }
        if self.img_size < self.patch_size {
            return bad(format!(
                "`img_size` {} is smaller than `patch_size` {}: no patch fits",
                self.img_size, self.patch_size
            ));
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(format!(
                "`embed_dim` {} must be divisible by `num_heads` {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.num_classes < 0 {
            return bad(format!(
                "`num_classes` must be >= 0, got {}",
                self.num_classes
            ));
        }
        if self.mlp_ratio <= 0.0 {
            return bad(format!(
                "`mlp_ratio` must be positive, got {}",
                self.mlp_ratio
            ));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "`drop_path_rate` must be in [0, 1), got {}",
                self.drop_path_rate
            ));
        }
        Ok(())
    }
}

/// `ViTEncoderWrapper` around timm's ViT (the network under `vit_model`).
pub struct TorchgeoViT {
    cfg: Config,
    cls_token: Tensor,
    pos_embed: Tensor,
    proj: nn::Conv2D,
    blocks: Vec<Block>,
    model_bands: Vec<String>,
}

impl std::fmt::Debug for TorchgeoViT {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchgeoViT")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl TorchgeoViT {
    /// Builds the network under `p` (the wrapper's `vit_model`), with timm's keys.
    pub fn new(p: nn::Path, cfg: &Config, model_bands: Vec<String>) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        // timm's init: class token N(0, 1e-6), position embedding trunc-normal(0.02)
        let cls_token = p.var(
            "cls_token",
            &[1, 1, d],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1e-6,
            },
        );
        let n = cfg.grid() * cfg.grid() + 1;
        let pos_embed = p.var(
            "pos_embed",
            &[1, n, d],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let conv = nn::ConvConfig {
            stride: cfg.patch_size,
            bias: true,
            ..Default::default()
        };
        let proj = nn::conv2d(
            &p / "patch_embed" / "proj",
            cfg.in_chans,
            d,
            cfg.patch_size,
            conv,
        );
        let blocks = (0..cfg.depth)
            .map(|i| {
                // timm: drop_path rates linear from 0 to drop_path_rate over the blocks
                let rate = if cfg.depth > 1 {
                    cfg.drop_path_rate * i as f64 / (cfg.depth - 1) as f64
                } else {
                    0.0
                };
                // timm's `vit_small_patch16_224` block: the shared Block with timm's init.
                let mut block = BlockConfig::timm(d, cfg.num_heads, cfg.mlp_ratio);
                block.norm_eps = 1e-6;
                block.drop_path = rate;
                Block::new(&p / "blocks" / i, &block)
            })
            .collect();
        // the final norm and the classifier: in the state_dict only, as forward_intermediates
        // (norm=False) reaches neither
        let _ = nn::layer_norm(
            &p / "norm",
            vec![d],
            nn::LayerNormConfig {
                eps: 1e-6,
                ..Default::default()
            },
        );
        if cfg.num_classes > 0 {
            let _ = nn::linear(&p / "head", d, cfg.num_classes, Default::default());
        }
        Ok(Self {
            cfg: cfg.clone(),
            cls_token,
            pos_embed,
            proj,
            blocks,
            model_bands,
        })
    }

    /// `forward_intermediates(x, intermediates_only=True)`: every block's patch tokens as
    /// `[B, D, H/p, W/p]`.
    pub fn intermediates(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let c = &self.cfg;
        let size = x.size();
        if size.len() != 4 || size[1] != c.in_chans {
            return Err(PluginError::forward_failed(format!(
                "the ViT expects an image [B, {}, {}, {}] (in_chans = len(model_bands) or `in_chans`), got {size:?}",
                c.in_chans, c.img_size, c.img_size
            )));
        }
        // timm's PatchEmbed (strict_img_size): the position embedding is never resampled
        if size[2] != c.img_size || size[3] != c.img_size {
            return Err(PluginError::forward_failed(format!(
                "input size {}x{} doesn't match the model's img_size {} (timm's PatchEmbed asserts it); build with \
                 img_size={} or resize the input",
                size[2], size[3], c.img_size, size[2]
            )));
        }
        let b = size[0];
        // [B, C, H, W] -> [B, D, h, w] -> [B, h*w, D]
        let t = self.proj.forward(x).flatten(2, 3).transpose(1, 2);
        let cls = self.cls_token.f_expand([b, -1, -1], false)?;
        let mut t = Tensor::f_cat(&[cls, t], 1)?.f_add(&self.pos_embed)?;
        let g = c.grid();
        let mut out = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            t = block.forward(&t, train)?;
            // [B, 1 + h*w, D] -> [B, D, h, w], the class token dropped
            let y = t
                .f_narrow(1, 1, g * g)?
                .f_reshape([b, g, g, c.embed_dim])?
                .f_permute([0, 3, 1, 2])?;
            out.push(y.f_contiguous()?);
        }
        Ok(out)
    }
}

impl Model for TorchgeoViT {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => self.intermediates(x, train),
            _ => Err(PluginError::invalid_argument(format!(
                "the ViT takes one image tensor, got {} inputs",
                xs.len()
            ))),
        }
    }

    /// `[num_chs for feature_info]`: the width of every block.
    fn out_channels(&self) -> Vec<i64> {
        vec![self.cfg.embed_dim; self.cfg.depth as usize]
    }

    fn meta(&self) -> Map<String, Value> {
        let c = &self.cfg;
        let mut m = Map::new();
        // the wrapper's `vit_meta` is vit_s_meta whatever the keywords; the network's own
        // patch_size (what the factory pads to) is reported beside it
        m.insert(
            "vit_meta".into(),
            json!({"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}),
        );
        m.insert("patch_size".into(), json!(c.patch_size));
        m.insert("img_size".into(), json!(c.img_size));
        m.insert("embed_dim".into(), json!(c.embed_dim));
        m.insert("model_bands".into(), json!(self.model_bands));
        m
    }
}

/// One registered name and the bands of the torchgeo weights it defaults to
/// (`ViTSmall16_Weights.*.meta["bands"]`).
struct Spec {
    name: &'static str,
    weights: &'static str,
    bands: &'static [&'static str],
}

const SPECS: &[Spec] = &[
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_tm_toa_moco",
        weights: "ViTSmall16_Weights.LANDSAT_TM_TOA_MOCO",
        bands: LANDSAT_TM_TOA,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_tm_toa_simclr",
        weights: "ViTSmall16_Weights.LANDSAT_TM_TOA_SIMCLR",
        bands: LANDSAT_TM_TOA,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_etm_toa_moco",
        weights: "ViTSmall16_Weights.LANDSAT_ETM_TOA_MOCO",
        bands: LANDSAT_ETM_TOA,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_etm_toa_simclr",
        weights: "ViTSmall16_Weights.LANDSAT_ETM_TOA_SIMCLR",
        bands: LANDSAT_ETM_TOA,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_etm_sr_moco",
        weights: "ViTSmall16_Weights.LANDSAT_ETM_SR_MOCO",
        bands: LANDSAT_ETM_SR,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_etm_sr_simclr",
        weights: "ViTSmall16_Weights.LANDSAT_ETM_SR_SIMCLR",
        bands: LANDSAT_ETM_SR,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_oli_tirs_toa_simclr",
        weights: "ViTSmall16_Weights.LANDSAT_OLI_TIRS_TOA_SIMCLR",
        bands: LANDSAT_OLI_TIRS_TOA,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_oli_sr_moco",
        weights: "ViTSmall16_Weights.LANDSAT_OLI_SR_MOCO",
        bands: LANDSAT_OLI_SR,
    },
    Spec {
        name: "ssl4eol_vit_small_patch16_224_landsat_oli_sr_simclr",
        weights: "ViTSmall16_Weights.LANDSAT_OLI_SR_SIMCLR",
        bands: LANDSAT_OLI_SR,
    },
    Spec {
        name: "ssl4eos12_vit_small_patch16_224_sentinel2_all_dino",
        weights: "ViTSmall16_Weights.SENTINEL2_ALL_DINO",
        bands: S2_ALL,
    },
    Spec {
        name: "ssl4eos12_vit_small_patch16_224_sentinel2_all_moco",
        weights: "ViTSmall16_Weights.SENTINEL2_ALL_MOCO",
        bands: S2_ALL,
    },
];

fn build(ctx: &BuildCtx<'_, '_>, spec: &Spec) -> Result<ModuleBox> {
    let a = &ctx.args;
    let bands = model_bands(ctx)?;
    let cfg = Config {
        img_size: a.get("img_size")?,
        patch_size: a.get("patch_size")?,
        in_chans: in_chans(ctx, &bands)?,
        embed_dim: a.get("embed_dim")?,
        depth: a.get("depth")?,
        num_heads: a.get("num_heads")?,
        mlp_ratio: a.get("mlp_ratio")?,
        num_classes: a.get("num_classes")?,
        drop_path_rate: a.get("drop_path_rate")?,
    };
    if let Some(v) = a.raw("out_indices") {
        if !v.is_null() {
            warn_ignored_out_indices(&ctx.qualified(), v);
        }
    }
    let file = checkpoint_file(ctx)?;
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let model = TorchgeoViT::new(vs.root() / "vit_model", &cfg, bands.clone())
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    if let Some(file) = file {
        let pretrained = pretrained_bands(spec.bands).map_err(|b| {
            PluginError::invalid_argument(format!(
                "`{}` with pretrained=true fails in TerraTorch 1.2.11: the band {b:?} of {} has no entry in its band \
                 look-up table (KeyError); build with pretrained=false and load the checkpoint with --weights",
                ctx.qualified(),
                spec.weights
            ))
        })?;
        load_checkpoint(
            &mut vs,
            &file,
            "vit_model.",
            "patch_embed.proj.weight",
            &["head.weight", "head.bias"],
            &pretrained,
            &bands,
        )?;
    }
    Ok(Built::new(ctx.qualified(), vs, model).boxed())
}

/// TerraTorch's wrapper stores `out_indices` and never reads it; terrahost says so.
fn warn_ignored_out_indices(name: &str, v: &Value) {
    let msg = format!(
        "`{name}`: out_indices {v} is ignored, as TerraTorch's ViTEncoderWrapper ignores it: every block's output is \
         returned (select some with the SelectIndices neck)"
    );
    tracing::warn!("{msg}");
    terrahost_plugin_api::warn!("{msg}");
}

fn entry(spec: &'static Spec) -> Entry {
    let b = Config::vit_small_patch16_224();
    let bands = match pretrained_bands(spec.bands) {
        Ok(names) => format!("{} ({})", spec.bands.join(", "), names.join(", ")),
        Err(_) => format!(
            "{} (not loadable by TerraTorch 1.2.11: no band names for them)",
            spec.bands.join(", ")
        ),
    };
    let doc = format!(
        "TerraTorch's torchgeo ViT-S/16 backbone ViTEncoderWrapper(timm vit_small_patch16_224), default weights {} \
         with bands {bands}; in_chans = len(model_bands); returns every block's patch tokens as [B, embed_dim, \
         img_size/16, img_size/16] maps (out_indices is ignored, as upstream). Keys vit_model.* with timm's \
         classifier head. Other timm keywords (dynamic_img_size, global_pool, class_token, ...) are not supported.",
        spec.weights
    );
    Entry::new(spec.name, &doc, move |ctx| build(ctx, spec))
        .req("model_bands", ParamType::ANY, "the input's bands (a list); in_chans = len(model_bands), and with pretrained=true the patch embedding's columns are picked by band name")
        .opt("pretrained", ParamType::BOOL, json!(false), "load ckpt_data (terrahost never downloads torchgeo's weights)")
        .opt("weights", ParamType::ANY, Value::Null, "torchgeo weights enum; only read with pretrained=true, where terrahost refuses it (no downloads)")
        .opt("ckpt_data", ParamType::STR, Value::Null, "local checkpoint of the bare timm ViT (.pt/.pth/.safetensors), loaded when pretrained=true")
        .opt("out_indices", ParamType::ANY, Value::Null, "accepted and ignored, as TerraTorch's ViTEncoderWrapper ignores it (every block is returned)")
        .opt("in_chans", ParamType::INT, Value::Null, "timm: input channels (default len(model_bands))")
        .opt("img_size", ParamType::INT, json!(b.img_size), "timm: the square input size; the input must have it (timm's PatchEmbed asserts it)")
        .opt("patch_size", ParamType::INT, json!(b.patch_size), "timm: square patch size")
        .opt("embed_dim", ParamType::INT, json!(b.embed_dim), "timm: token width")
        .opt("depth", ParamType::INT, json!(b.depth), "timm: number of blocks (and of returned maps)")
        .opt("num_heads", ParamType::INT, json!(b.num_heads), "timm: attention heads")
        .opt("mlp_ratio", ParamType::FLOAT, json!(b.mlp_ratio), "timm: MLP hidden width over embed_dim")
        .opt("num_classes", ParamType::INT, json!(b.num_classes), "timm: classifier outputs (head; 0 = no classifier); unused by the features")
        .opt("drop_rate", ParamType::FLOAT, json!(0.0), "timm: dropout before the classifier; no effect on the features")
        .opt("drop_path_rate", ParamType::FLOAT, json!(0.0), "timm: stochastic depth, linear over the blocks (train mode only)")
}

/// The backbone entries of this family.
pub fn entries() -> Vec<Entry> {
    SPECS.iter().map(entry).collect()
}
