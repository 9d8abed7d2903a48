//! Mirrors `terratorch/models/backbones/prithvi_vit.py` (TerraTorch 1.2.11): the
//! `prithvi_cfgs` presets, `_create_prithvi` (bands, `in_chans`, `num_frames`,
//! checkpoint loading, `out_indices`), and the `prithvi_eo_*` backbone and
//! `prithvi_eo_*_mae` full-model registrations.
//!
//! Differences, all documented in the entries: terrahost never downloads from the
//! Hugging Face hub (`pretrained=true` needs a local file through `ckpt_path` or
//! `pretrained_cfg_overlay={"file": ...}`, the latter being refused by TerraTorch 1.2.11);
//! `vit_adapter=true` is refused (it needs compiled deformable-attention ops); an
//! `in_chans` that disagrees with the band list is refused instead of being silently
//! replaced by `len(bands)`.
use super::prithvi_checkpoint::{self as ckpt, Band, FilterInfo, ModelVars};
use super::prithvi_mae::{optional_input, Config, Coords, PrithviMAE, PrithviViT};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use tch::{nn, Device, Tensor};
use terrahost_layers::checkpoint::read_state_dict;
use terrahost_plugin_api::{
    sdk::{BuildCtx, Built, Entry, Model},
    ModuleBox, ParamType, PluginError, Result,
};

/// The backbone presets registered by TerraTorch 1.2.11 (`prithvi_eo_v2_100` has a
/// config but no registration).
pub const BACKBONES: [&str; 8] = [
    "prithvi_eo_tiny",
    "prithvi_eo_v1_100",
    "prithvi_eo_v2_tiny_tl",
    "prithvi_eo_v2_100_tl",
    "prithvi_eo_v2_300",
    "prithvi_eo_v2_300_tl",
    "prithvi_eo_v2_600",
    "prithvi_eo_v2_600_tl",
];

/// The full-model registrations: `(entry name, preset)`.
pub const FULL_MODELS: [(&str, &str); 7] = [
    ("prithvi_eo_v1_100_mae", "prithvi_eo_v1_100"),
    ("prithvi_eo_v2_tiny_tl_mae", "prithvi_eo_v2_tiny_tl"),
    ("prithvi_eo_v2_100_tl_mae", "prithvi_eo_v2_100_tl"),
    ("prithvi_eo_v2_300_mae", "prithvi_eo_v2_300"),
    ("prithvi_eo_v2_300_tl_mae", "prithvi_eo_v2_300_tl"),
    ("prithvi_eo_v2_600_mae", "prithvi_eo_v2_600"),
    ("prithvi_eo_v2_600_tl_mae", "prithvi_eo_v2_600_tl"),
];

/// `prithvi_cfgs[name]`: the architecture of each preset. `num_frames` is the preset's;
/// `_create_prithvi` replaces it with its own argument (default 1).
pub fn preset(name: &str) -> Option<Config> {
    let base = Config::default();
    let tl = |c: Config| Config {
        coords_encoding: vec!["time".into(), "location".into()],
        coords_scale_learn: true,
        ..c
    };
    let big = |e, d, h| Config {
        embed_dim: e,
        depth: d,
        num_heads: h,
        ..Config::default()
    };
    Some(match name {
        "prithvi_eo_tiny" => Config {
            num_frames: 1,
            embed_dim: 256,
            depth: 4,
            num_heads: 4,
            decoder_embed_dim: 128,
            decoder_depth: 4,
            decoder_num_heads: 4,
            ..base
        },
        "prithvi_eo_v1_100" => Config {
            num_frames: 3,
            ..base
        },
        "prithvi_eo_v2_tiny_tl" => tl(Config {
            num_frames: 1,
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            ..base
        }),
        "prithvi_eo_v2_100" => base,
        "prithvi_eo_v2_100_tl" => tl(base),
        "prithvi_eo_v2_300" => big(1024, 24, 16),
        "prithvi_eo_v2_300_tl" => tl(big(1024, 24, 16)),
        "prithvi_eo_v2_600" => Config {
            patch_size: [1, 14, 14],
            ..big(1280, 32, 16)
        },
        "prithvi_eo_v2_600_tl" => tl(Config {
            patch_size: [1, 14, 14],
            ..big(1280, 32, 16)
        }),
        _ => return None,
    })
}

/// The band lists `_create_prithvi` settles on.
#[derive(Clone, Debug)]
pub struct Bands {
    /// The bands of the checkpoint (`pretrained_bands`).
    pub pretrained: Vec<Band>,
    /// The bands of the model's input (`model_bands`); `in_chans = len(model)`.
    pub model: Vec<Band>,
}

/// An argument that is an int or a list of `N` ints: a list must have `N` entries
/// (`shape` says which), an int `v` becomes `from_int(v)`.
fn int_or_list<const N: usize>(
    ctx: &BuildCtx<'_, '_>,
    name: &str,
    shape: &str,
    from_int: impl Fn(i64) -> [i64; N],
) -> Result<[i64; N]> {
    match ctx.args.raw(name) {
        Some(Value::Array(_)) => {
            let v: Vec<i64> = ctx.args.get(name)?;
            ctx.args.ensure(
                v.len() == N,
                name,
                format!("must be an int or {shape}, got {v:?}"),
            )?;
            Ok(std::array::from_fn(|i| v[i]))
        }
        Some(_) => Ok(from_int(ctx.args.get(name)?)),
        None => Err(PluginError::invalid_argument(format!(
            "`{}` needs `{name}`",
            ctx.qualified()
        ))),
    }
}

/// `img_size` as `to_2tuple` takes it.
fn img_size_arg(ctx: &BuildCtx<'_, '_>) -> Result<[i64; 2]> {
    int_or_list(ctx, "img_size", "[height, width]", |n| [n, n])
}

/// `patch_size`: an int `p` means `(1, p, p)`.
fn patch_size_arg(ctx: &BuildCtx<'_, '_>) -> Result<[i64; 3]> {
    int_or_list(ctx, "patch_size", "[frames, height, width]", |p| [1, p, p])
}

/// The band part of `_create_prithvi`.
fn bands_arg(ctx: &BuildCtx<'_, '_>) -> Result<Bands> {
    let pretrained = match ctx.args.raw("pretrained_bands") {
        Some(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
            ckpt::parse_bands(v, "pretrained_bands", false)?
        }
        Some(v) if !v.is_array() => ckpt::parse_bands(v, "pretrained_bands", false)?,
        _ => ckpt::default_pretrained_bands(),
    };
    let model = match ctx.args.raw("bands") {
        Some(v) => ckpt::parse_bands(v, "bands", true)?,
        None => pretrained.clone(),
    };
    ctx.args
        .ensure(!model.is_empty(), "bands", "must name at least one band")?;
    if let Some(n) = ctx.args.opt::<i64>("in_chans")? {
        ctx.args.ensure(
            n == model.len() as i64,
            "in_chans",
            format!(
                "is {n} but the model's bands number {} (TerraTorch sets in_chans = len(bands) and ignores \
                 in_chans; pass `bands` with {n} entries instead, or leave in_chans unset)",
                model.len()
            ),
        )?;
    }
    Ok(Bands { pretrained, model })
}

/// The model configuration from the preset and the entry's arguments.
fn config_arg(ctx: &BuildCtx<'_, '_>, base: &Config, bands: &Bands, mae: bool) -> Result<Config> {
    let a = &ctx.args;
    let mut cfg = Config {
        img_size: img_size_arg(ctx)?,
        patch_size: patch_size_arg(ctx)?,
        num_frames: a.get("num_frames")?,
        in_chans: bands.model.len() as i64,
        embed_dim: a.get("embed_dim")?,
        depth: a.get("depth")?,
        num_heads: a.get("num_heads")?,
        mlp_ratio: a.get("mlp_ratio")?,
        coords_encoding: a.get("coords_encoding")?,
        coords_scale_learn: a.get("coords_scale_learn")?,
        drop_path: a.get("drop_path")?,
        norm_eps: a.get_or("norm_eps", base.norm_eps)?,
        ..base.clone()
    };
    if mae {
        cfg.decoder_embed_dim = a.get("decoder_embed_dim")?;
        cfg.decoder_depth = a.get("decoder_depth")?;
        cfg.decoder_num_heads = a.get("decoder_num_heads")?;
        cfg.mask_ratio = a.get("mask_ratio")?;
        cfg.norm_pix_loss = a.get("norm_pix_loss")?;
    } else {
        cfg.vpt = a.get_or("vpt", false)?;
        cfg.vpt_n_tokens = a.opt("vpt_n_tokens")?;
        cfg.vpt_dropout = a.get_or("vpt_dropout", 0.0)?;
    }
    cfg.validate(mae)
        .map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))?;
    Ok(cfg)
}

/// The local checkpoint for `pretrained=true`, from `ckpt_path` or
/// `pretrained_cfg_overlay={"file": ...}`.
fn checkpoint_file(ctx: &BuildCtx<'_, '_>) -> Result<Option<PathBuf>> {
    let pretrained: bool = ctx.args.get("pretrained")?;
    let ckpt_path: Option<String> = ctx.args.opt("ckpt_path")?;
    let overlay: Option<Map<String, Value>> = ctx.args.opt("pretrained_cfg_overlay")?;
    let overlay_file = match overlay.as_ref().and_then(|o| o.get("file")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(PluginError::invalid_argument(format!(
                "`{}`: pretrained_cfg_overlay.file must be a path (string), got {other}",
                ctx.qualified()
            )))
        }
    };
    if !pretrained {
        if let Some(p) = ckpt_path.or(overlay_file) {
            terrahost_plugin_api::warn!(
                "ckpt_path {p} is given but pretrained is false: ignoring it (as TerraTorch does)"
            );
        }
        return Ok(None);
    }
    match (ckpt_path, overlay_file) {
        (Some(a), Some(b)) if a != b => Err(PluginError::invalid_argument(format!(
            "`{}`: ckpt_path `{a}` and pretrained_cfg_overlay.file `{b}` name different checkpoints; give one",
            ctx.qualified()
        ))),
        (Some(a), _) | (None, Some(a)) => Ok(Some(PathBuf::from(a))),
        (None, None) => Err(PluginError::invalid_argument(format!(
            "`{}` with pretrained=true would download the Prithvi weights from the Hugging Face hub, and \
             terrahost makes no downloads: download the checkpoint yourself and pass its path with \
             ckpt_path=<file> (or pretrained_cfg_overlay={{\"file\": <file>}}), or build with pretrained=false \
             and load weights with `terrahost run --weights <file>`",
            ctx.qualified()
        ))),
    }
}

fn model_vars(vs: &nn::VarStore) -> ModelVars {
    vs.variables()
}

/// Reads `file`, applies TerraTorch's filter for the encoder (`mae = false`) or the
/// MAE, selects the patch-embedding bands and loads the result non-strictly.
pub fn load_checkpoint(
    vs: &mut nn::VarStore,
    file: &std::path::Path,
    cfg: &Config,
    bands: &Bands,
    mae: bool,
) -> Result<()> {
    let sd = read_state_dict(file)?;
    let vars = model_vars(vs);
    let info = FilterInfo {
        temporal_encoding: cfg.temporal_encoding(),
        location_encoding: cfg.location_encoding(),
    };
    let filtered = if mae {
        ckpt::filter_mae(sd, &vars, &info)
    } else {
        ckpt::filter_vit(sd, &vars, &info)
    };
    let selected =
        ckpt::select_patch_embed_weights(filtered, &vars, &bands.pretrained, &bands.model, !mae)?;
    ckpt::load_non_strict(vs, selected, &file.display().to_string())?;
    Ok(())
}

fn common_meta(cfg: &Config, bands: &Bands) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("patch_size".into(), json!(cfg.patch_size));
    m.insert("img_size".into(), json!(cfg.img_size));
    m.insert("num_frames".into(), json!(cfg.num_frames));
    m.insert("embed_dim".into(), json!(cfg.embed_dim));
    m.insert("in_chans".into(), json!(cfg.in_chans));
    m.insert(
        "model_bands".into(),
        Value::Array(bands.model.iter().map(Band::to_json).collect()),
    );
    m.insert(
        "pretrained_bands".into(),
        Value::Array(bands.pretrained.iter().map(Band::to_json).collect()),
    );
    m
}

/// The encoder-only model `_create_prithvi` returns: `forward` gives the tokens of the
/// blocks in `out_indices`.
pub struct PrithviBackbone {
    /// The encoder.
    pub vit: PrithviViT,
    out_indices: Vec<i64>,
    bands: Bands,
}

impl PrithviBackbone {
    /// Wraps `vit`; `out_indices` default to every block. Indices are Python indices
    /// (negative from the end) and are checked here rather than at the first forward.
    pub fn new(vit: PrithviViT, out_indices: Option<Vec<i64>>, bands: Bands) -> Result<Self> {
        let depth = vit.config().depth as usize;
        let out_indices = out_indices.unwrap_or_else(|| (0..depth as i64).collect());
        for &i in &out_indices {
            super::py_index(i, depth, "out_indices entry")?;
        }
        Ok(Self {
            vit,
            out_indices,
            bands,
        })
    }
}

impl Model for PrithviBackbone {
    /// `xs[0]`: image `[B, C, H, W]` or `[B, C, T, H, W]`; `xs[1]`: `temporal_coords`
    /// `[B, T, 2]`; `xs[2]`: `location_coords` `[B, 2]` (empty tensors stand for `None`).
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x = xs
            .first()
            .ok_or_else(|| PluginError::invalid_argument("Prithvi needs an input image"))?;
        let feats = self
            .vit
            .forward_features(x, Coords::from_inputs(xs), train)?;
        self.out_indices
            .iter()
            .map(|&i| {
                Ok(feats[super::py_index(i, feats.len(), "out_indices entry")?].shallow_clone())
            })
            .collect()
    }

    fn out_channels(&self) -> Vec<i64> {
        self.vit.out_channels()
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = common_meta(self.vit.config(), &self.bands);
        m.insert("out_indices".into(), json!(self.out_indices));
        m
    }

    fn prepare_features(&self, xs: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        Some(self.vit.prepare_features(xs))
    }
}

/// The MAE full model: `forward` returns `[loss, reconstruction, mask]`.
pub struct PrithviMAEModel {
    /// The masked autoencoder.
    pub mae: PrithviMAE,
    cfg: Config,
    bands: Bands,
}

impl PrithviMAEModel {
    fn run(&self, xs: &[Tensor], mask_ratio: f64, train: bool) -> Result<Vec<Tensor>> {
        // TerraTorch 1.2.12+ semantics: a ratio of 0 masks no patch, so the loss (a mean
        // over masked patches) is 0/0; refused whether it came from the keyword or from
        // the model's own `mask_ratio`.
        if mask_ratio == 0.0 {
            return Err(PluginError::invalid_argument(
                "Prithvi MAE: mask_ratio 0.0 masks no patch and leaves the reconstruction loss undefined, so \
                 TerraTorch 1.2.12 and later refuse it (1.2.11 read a 0.0 keyword as the model's default): pass \
                 a ratio in (0, 1), or null for the model's own mask_ratio",
            ));
        }
        let x = xs
            .first()
            .ok_or_else(|| PluginError::invalid_argument("Prithvi MAE needs an input image"))?;
        self.mae.forward(
            x,
            Coords::from_inputs(xs),
            mask_ratio,
            optional_input(xs, 3),
            train,
        )
    }
}

impl Model for PrithviMAEModel {
    /// `xs[0]`: image; `xs[1]`: `temporal_coords`; `xs[2]`: `location_coords`; `xs[3]`:
    /// the masking noise `[B, L]` (terrahost's addition, `random_masking`'s `noise`;
    /// random when absent). Empty tensors stand for `None`.
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.run(xs, self.cfg.mask_ratio, train)
    }

    /// Keyword `mask_ratio` as in TerraTorch 1.2.13's `PrithviMAE.forward`: null (or
    /// absent) means the model's `mask_ratio`, 0.0 is refused (1.2.11's
    /// `mask_ratio or self.mask_ratio` read 0.0 as the default; see the README).
    fn forward_kw(
        &self,
        xs: &[Tensor],
        kwargs: &Map<String, Value>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let mut ratio = self.cfg.mask_ratio;
        for (k, v) in kwargs {
            match (k.as_str(), v) {
                ("mask_ratio", Value::Null) => {}
                ("mask_ratio", v) => {
                    let r = v.as_f64().ok_or_else(|| {
                        PluginError::invalid_argument(format!("forward keyword mask_ratio must be a number, got {v}"))
                    })?;
                    // 0.0 passes here and is refused by `run` with the reason.
                    if !(0.0..1.0).contains(&r) {
                        return Err(PluginError::invalid_argument(format!(
                            "forward keyword mask_ratio must be in (0, 1), or null for the model's own, got {r}"
                        )));
                    }
                    ratio = r;
                }
                (other, _) => {
                    return Err(PluginError::invalid_argument(format!(
                        "unknown forward keyword `{other}` (Prithvi MAE takes mask_ratio; coordinates go in as inputs 1 and 2)"
                    )))
                }
            }
        }
        self.run(xs, ratio, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.mae.encoder.out_channels()
    }

    fn includes_head(&self) -> bool {
        true
    }

    fn meta(&self) -> Map<String, Value> {
        let mut m = common_meta(&self.cfg, &self.bands);
        m.insert("mask_ratio".into(), json!(self.cfg.mask_ratio));
        m
    }
}

/// Builds the encoder-only model (`encoder_only=True`) from `cfg`, loading a checkpoint
/// when asked.
pub fn build_backbone(
    name: &str,
    cfg: &Config,
    bands: Bands,
    out_indices: Option<Vec<i64>>,
    checkpoint: Option<&std::path::Path>,
) -> Result<ModuleBox> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let vit = PrithviViT::new(vs.root(), cfg)?;
    if let Some(file) = checkpoint {
        load_checkpoint(&mut vs, file, cfg, &bands, false)?;
    }
    let model = PrithviBackbone::new(vit, out_indices, bands)?;
    Ok(Built::new(name, vs, model).boxed())
}

/// Builds the MAE (`encoder_only=False`) from `cfg`, loading a checkpoint when asked.
pub fn build_mae(
    name: &str,
    cfg: &Config,
    bands: Bands,
    checkpoint: Option<&std::path::Path>,
) -> Result<ModuleBox> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mae = PrithviMAE::new(vs.root(), cfg)?;
    if let Some(file) = checkpoint {
        load_checkpoint(&mut vs, file, cfg, &bands, true)?;
    }
    Ok(Built::new(
        name,
        vs,
        PrithviMAEModel {
            mae,
            cfg: cfg.clone(),
            bands,
        },
    )
    .boxed())
}

fn build_entry(
    ctx: &BuildCtx<'_, '_>,
    base: &Config,
    full_model: bool,
    backbone_name: &str,
) -> Result<ModuleBox> {
    let a = &ctx.args;
    if a.get_or::<bool>("vit_adapter", false)? {
        return Err(PluginError::invalid_argument(format!(
            "`{}`: vit_adapter=true (PrithviViTAdapter) needs compiled multi-scale deformable attention ops, \
             which terrahost does not have; leave vit_adapter=false",
            ctx.qualified()
        )));
    }
    let encoder_only: bool = a.get_or("encoder_only", !full_model)?;
    if full_model && encoder_only {
        return Err(PluginError::invalid_argument(format!(
            "`{}`: encoder_only=true: use the backbone `{backbone_name}` for encoder-only models",
            ctx.qualified()
        )));
    }
    let bands = bands_arg(ctx)?;
    let cfg = config_arg(ctx, base, &bands, !encoder_only)?;
    let file = checkpoint_file(ctx)?;
    let out_indices: Option<Vec<i64>> = if full_model {
        None
    } else {
        a.opt("out_indices")?
    };
    let built = if encoder_only {
        build_backbone(&ctx.qualified(), &cfg, bands, out_indices, file.as_deref())
    } else {
        a.ensure(
            out_indices.is_none(),
            "out_indices",
            "cannot be given for an MAE model (encoder_only=false)",
        )?;
        build_mae(&ctx.qualified(), &cfg, bands, file.as_deref())
    };
    built.map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))
}

/// Builds the encoder-only model (or the MAE when the entry has `encoder_only=false`)
/// from an entry's validated arguments, with `base` as the preset; the entry must
/// declare [`common_params`] and `out_indices`.
pub fn build_encoder_from_ctx(ctx: &BuildCtx<'_, '_>, base: &Config) -> Result<ModuleBox> {
    build_entry(ctx, base, false, "")
}

/// The parameters every Prithvi entry takes, with the preset's defaults.
pub fn common_params(e: Entry, base: &Config) -> Entry {
    e.opt("pretrained", ParamType::BOOL, json!(false), "load a checkpoint (needs ckpt_path; terrahost does not download)")
        .opt("ckpt_path", ParamType::STR, Value::Null, "local checkpoint (.pt/.pth/.safetensors) loaded when pretrained=true; filtered and band-selected as TerraTorch does")
        .opt("pretrained_cfg_overlay", ParamType::DICT, Value::Null, "{\"file\": <path>}: same as ckpt_path (terrahost only; TerraTorch 1.2.11 refuses this argument)")
        .opt("bands", ParamType::ANY, Value::Null, "the input's bands (HLS band names or ints); in_chans = len(bands); default: the pretrained bands")
        .opt("pretrained_bands", ParamType::ANY, Value::Null, "the checkpoint's bands (default BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2); names stay strings, as upstream")
        .opt("in_chans", ParamType::INT, Value::Null, "input channels; must equal len(bands) (TerraTorch derives it from the bands)")
        .opt("num_frames", ParamType::INT, json!(1), "frames per sample the model is built for (a 4-D input needs 1)")
        .opt("img_size", ParamType::INT_OR_INT_LIST, json!(base.img_size[0]), "image size: an int or [height, width]")
        .opt("patch_size", ParamType::INT_OR_INT_LIST, json!(base.patch_size), "patch size [frames, height, width] (an int p means [1, p, p])")
        .opt("embed_dim", ParamType::INT, json!(base.embed_dim), "token width (a multiple of 16)")
        .opt("depth", ParamType::INT, json!(base.depth), "number of transformer blocks")
        .opt("num_heads", ParamType::INT, json!(base.num_heads), "attention heads (must divide embed_dim)")
        .opt("mlp_ratio", ParamType::FLOAT, json!(base.mlp_ratio), "MLP hidden width as a multiple of embed_dim")
        .opt("coords_encoding", ParamType::STR_LIST, json!(base.coords_encoding), "coordinate encoders to add: \"time\" and/or \"location\"")
        .opt("coords_scale_learn", ParamType::BOOL, json!(base.coords_scale_learn), "learn the coordinate encoders' scale (else a fixed buffer of 1)")
        .opt("drop_path", ParamType::FLOAT, json!(0.0), "stochastic depth rate of every encoder block (train mode only)")
        .opt("norm_eps", ParamType::FLOAT, json!(base.norm_eps), "LayerNorm epsilon (terrahost only: TerraTorch takes a norm_layer class; the timm plugin's old prithvi_vit_* names build this entry with 1e-6)")
        .opt("vit_adapter", ParamType::BOOL, json!(false), "PrithviViTAdapter (not supported: needs compiled deformable attention)")
        .ignores("drop_path_rate", SWALLOWED_DROP_PATH_RATE)
        .ignores("in_channels", SWALLOWED)
        .ignores("pretrain_img_size", SWALLOWED)
        .ignores("band_patch_size", SWALLOWED)
}

/// Why the Prithvi entries accept keywords they never read: `_create_prithvi` puts every
/// keyword it does not name into the model's arguments, and `PrithviViT.__init__` /
/// `PrithviMAE.__init__` swallow whatever they do not declare through `**kwargs`.
/// Upstream therefore accepts any keyword; terrahost accepts (and warns about) the ones
/// TerraTorch's own configs pass, and refuses other unknown names (typos).
const SWALLOWED: &str = "swallowed by PrithviViT/PrithviMAE's **kwargs in TerraTorch 1.2.11 and never read (in_chans is len(bands))";
const SWALLOWED_DROP_PATH_RATE: &str =
    "swallowed by PrithviViT/PrithviMAE's **kwargs in TerraTorch 1.2.11 and never read (the keyword is drop_path)";

/// The `terratorch` backbone entry `name` (`prithvi_eo_*`).
pub fn backbone_entry(name: &'static str) -> Entry {
    let base =
        preset(name).expect("a Prithvi backbone entry is registered only for a known preset");
    let d = &base;
    let doc = format!(
        "Prithvi ViT encoder `{name}` (embed_dim {}, depth {}, heads {}, patch {:?}{}). Inputs: image [B, C, H, W] \
         or [B, C, T, H, W], then optional temporal_coords [B, T, 2] and location_coords [B, 2] (an empty tensor \
         means None). Returns the tokens [B, 1+N, embed_dim] after each block in out_indices (the last after \
         the final norm). encoder_only=false builds the MAE instead.",
        d.embed_dim,
        d.depth,
        d.num_heads,
        d.patch_size,
        if d.coords_encoding.is_empty() { "" } else { ", time and location encoders" }
    );
    let b = base.clone();
    let e = Entry::new(name, &doc, move |ctx| build_entry(ctx, &b, false, name));
    let e = common_params(e, &base)
        .opt(
            "out_indices",
            ParamType::INT_LIST,
            Value::Null,
            "blocks whose tokens are returned (Python indices; default all)",
        )
        .opt(
            "encoder_only",
            ParamType::BOOL,
            json!(true),
            "true: the ViT encoder; false: the MAE (encoder + decoder)",
        )
        .opt(
            "vpt",
            ParamType::BOOL,
            json!(false),
            "visual prompt tuning: learned prompt tokens before every block",
        )
        .opt(
            "vpt_n_tokens",
            ParamType::INT,
            Value::Null,
            "prompt tokens per block (required with vpt)",
        )
        .opt(
            "vpt_dropout",
            ParamType::FLOAT,
            json!(0.0),
            "dropout on the prompt tokens (train mode only)",
        );
    mae_params(e, &base, " (encoder_only=false only)")
}

/// The MAE decoder's parameters (`decoder_*`, `mask_ratio`, `norm_pix_loss`) with the
/// preset's defaults; `note` is appended to each doc line.
fn mae_params(e: Entry, base: &Config, note: &str) -> Entry {
    let doc = |d: &str| format!("{d}{note}");
    e.opt(
        "decoder_embed_dim",
        ParamType::INT,
        json!(base.decoder_embed_dim),
        &doc("MAE decoder width (a multiple of 16)"),
    )
    .opt(
        "decoder_depth",
        ParamType::INT,
        json!(base.decoder_depth),
        &doc("MAE decoder blocks"),
    )
    .opt(
        "decoder_num_heads",
        ParamType::INT,
        json!(base.decoder_num_heads),
        &doc("MAE decoder heads"),
    )
    .opt(
        "mask_ratio",
        ParamType::FLOAT,
        json!(base.mask_ratio),
        &doc("share of patches the MAE masks (0 <= r < 1)"),
    )
    .opt(
        "norm_pix_loss",
        ParamType::BOOL,
        json!(base.norm_pix_loss),
        &doc("MAE loss on per-patch normalised targets"),
    )
}

/// The `terratorch` full-model entry `name` (`<preset>_mae`).
pub fn full_model_entry(name: &'static str, preset_name: &'static str) -> Entry {
    let base =
        preset(preset_name).expect("a Prithvi MAE entry is registered only for a known preset");
    let doc = format!(
        "Prithvi masked autoencoder `{preset_name}` (encoder embed_dim {}, depth {}; decoder {}, depth {}). Inputs: \
         image [B, C, H, W] or [B, C, T, H, W], optional temporal_coords [B, T, 2], location_coords [B, 2] and \
         masking noise [B, L] (empty tensor = None; without noise the mask is random). Returns [loss, \
         reconstruction (input shape), mask (input shape without channels, 1 = masked)].",
        base.embed_dim, base.depth, base.decoder_embed_dim, base.decoder_depth
    );
    let b = base.clone();
    let e = Entry::new(name, &doc, move |ctx| {
        build_entry(ctx, &b, true, preset_name)
    });
    let e = common_params(e, &base).opt(
        "encoder_only",
        ParamType::BOOL,
        json!(false),
        "must be false (use the backbone for an encoder only)",
    );
    mae_params(e, &base, "")
}

/// The backbone entries, in TerraTorch's registration order.
pub fn backbone_entries() -> Vec<Entry> {
    BACKBONES.iter().map(|n| backbone_entry(n)).collect()
}

/// The full-model entries.
pub fn full_model_entries() -> Vec<Entry> {
    FULL_MODELS
        .iter()
        .map(|(n, p)| full_model_entry(n, p))
        .collect()
}
