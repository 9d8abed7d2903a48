//! mmsegmentation 1.2.2's `DPTHead` (`mmseg/models/decode_heads/dpt_head.py`): the
//! Dense Prediction Transformer decoder with its `ReassembleBlocks`,
//! `FeatureFusionBlock`s and `PreActResidualConvUnit`s.
//!
//! mmseg feeds it four `(feature map, class token)` pairs from a ViT. Across the
//! plugin boundary inputs are a flat tensor list, so the pairs come interleaved:
//! `map0, cls0, map1, cls1, ...` (maps `[B, embed_dims, h, w]`, tokens
//! `[B, embed_dims]`). With `readout_type="ignore"` the tokens are unused and the
//! four maps alone are accepted too.
use super::conv_module::{ActCfg, ConvModule, ConvModuleCfg, ConvOpts};
use super::decode_head::{
    arg_error, build_wrapped, check_map, head_entry, py_index, resize, BaseCfg, BaseParams, ClsSeg,
    DecodeHead, InIndex, InputTransform, Inputs,
};
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The number of reassemble/fusion stages DPT has (fixed by its resize layers).
const STAGES: usize = 4;

/// How the class token enters the patch features (`readout_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// Dropped.
    Ignore,
    /// Added to every patch feature.
    Add,
    /// Concatenated to every patch feature and projected back (Linear + GELU).
    Project,
}

impl Readout {
    /// Parses mmseg's name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ignore" => Ok(Self::Ignore),
            "add" => Ok(Self::Add),
            "project" => Ok(Self::Project),
            other => Err(format!(
                "must be \"ignore\", \"add\" or \"project\", got {other:?}"
            )),
        }
    }
}

/// The resize layer of one reassemble stage.
#[derive(Debug)]
enum Resize {
    Up(nn::ConvTranspose2D),
    Identity,
    Down(nn::Conv2D),
}

/// mmcv's `ConvModule` with `order=('act', 'conv', 'norm')`: the activation goes first.
#[derive(Debug)]
struct PreActConv {
    act: Option<ActCfg>,
    conv: ConvModule,
}

impl PreActConv {
    fn new(p: nn::Path, c: i64, cfg: &ConvModuleCfg) -> Result<Self> {
        let inner = ConvModuleCfg {
            norm_cfg: cfg.norm_cfg.clone(),
            act_cfg: None,
        };
        let opts = ConvOpts {
            padding: 1,
            bias: Some(false),
            ..ConvOpts::default()
        };
        Ok(Self {
            act: cfg.act_cfg.clone(),
            conv: ConvModule::with_opts(p, c, c, 3, opts, &inner)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match &self.act {
            Some(a) => a.apply(x)?,
            None => x.shallow_clone(),
        };
        self.conv.forward(&x, train)
    }
}

/// `PreActResidualConvUnit`: two pre-activation 3x3 convs plus the input.
#[derive(Debug)]
struct ResUnit {
    conv1: PreActConv,
    conv2: PreActConv,
}

impl ResUnit {
    fn new(p: nn::Path, c: i64, cfg: &ConvModuleCfg) -> Result<Self> {
        Ok(Self {
            conv1: PreActConv::new(&p / "conv1", c, cfg)?,
            conv2: PreActConv::new(&p / "conv2", c, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self
            .conv2
            .forward(&self.conv1.forward(x, train)?, train)?
            .f_add(x)?)
    }
}

/// `FeatureFusionBlock`: optionally adds a residual-refined skip map, refines, x2
/// bilinear upsample (align_corners=True), 1x1 projection.
#[derive(Debug)]
struct Fusion {
    res_conv_unit1: Option<ResUnit>,
    res_conv_unit2: ResUnit,
    project: ConvModule,
}

impl Fusion {
    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        if let (Some(skip), Some(unit)) = (skip, &self.res_conv_unit1) {
            let (s, k) = (x.size(), skip.size());
            let res = if s != k {
                resize(skip, s[2], s[3], false)?
            } else {
                skip.shallow_clone()
            };
            x = x.f_add(&unit.forward(&res, train)?)?;
        }
        x = self.res_conv_unit2.forward(&x, train)?;
        let s = x.size();
        x = resize(&x, s[2] * 2, s[3] * 2, true)?;
        self.project.forward(&x, train)
    }
}

/// DPT's own arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct DptCfg {
    /// Channels of the ViT features (and class tokens).
    pub embed_dims: i64,
    /// Channels of the four reassembled maps.
    pub post_process_channels: Vec<i64>,
    /// How the class token is used.
    pub readout: Readout,
}

/// mmseg's `DPTHead`.
///
/// Output: logits at 32x the patch grid's size (stage maps 4x, 2x, 1x, 1/2x of the
/// grid, then four x2 fusion upsamples from the coarsest).
#[derive(Debug)]
pub struct DptHead {
    base: BaseCfg,
    cfg: DptCfg,
    projects: Vec<ConvModule>,
    resize_layers: Vec<Resize>,
    readout_projects: Vec<nn::Linear>,
    convs: Vec<ConvModule>,
    fusion_blocks: Vec<Fusion>,
    project: ConvModule,
    cls: ClsSeg,
}

impl DptHead {
    /// Builds the head under `p` (`reassemble_blocks.*`, `convs.N`, `fusion_blocks.N.*`,
    /// `project`, `conv_seg`). `base.conv` carries DPTHead's own `norm_cfg`/`act_cfg`.
    pub fn new(p: nn::Path, base: &BaseCfg, cfg: &DptCfg) -> Result<Self> {
        if base.input_transform != Some(InputTransform::MultipleSelect)
            || base.in_channels.len() != STAGES
        {
            return Err(PluginError::invalid_argument(format!(
                "DPTHead reads four (map, class token) pairs: it needs input_transform=\"multiple_select\", \
                 in_index=[0, 1, 2, 3] and a channel list of four entries; got input_transform={:?} and channels {:?}",
                base.input_transform.map(|t| t.name()),
                base.in_channels
            )));
        }
        let e = cfg.embed_dims;
        if e <= 0 {
            return Err(PluginError::invalid_argument(format!(
                "argument `embed_dims` must be positive, got {e}"
            )));
        }
        if let Some(c) = base.in_channels.iter().find(|&&c| c != e) {
            return Err(PluginError::invalid_argument(format!(
                "every channel-list entry must equal `embed_dims` ({e}): DPTHead projects embed_dims-channel ViT \
                 features; got {c} in {:?}",
                base.in_channels
            )));
        }
        let ppc = &cfg.post_process_channels;
        if ppc.len() != STAGES || ppc.iter().any(|&c| c <= 0) {
            return Err(PluginError::invalid_argument(format!(
                "argument `post_process_channels` must have four positive entries (one per reassemble stage), got \
                 {ppc:?}"
            )));
        }
        let rp = &p / "reassemble_blocks";
        let plain = ConvModuleCfg {
            norm_cfg: None,
            act_cfg: None,
        };
        let projects = ppc
            .iter()
            .enumerate()
            .map(|(i, &c)| ConvModule::new(&rp / "projects" / i, e, c, 1, 0, 1, &plain))
            .collect::<Result<Vec<_>>>()?;
        let rl = &rp / "resize_layers";
        let up = |i: usize, k: i64| {
            let tcfg = nn::ConvTransposeConfig {
                stride: k,
                ..Default::default()
            };
            Resize::Up(nn::conv_transpose2d(&rl / i, ppc[i], ppc[i], k, tcfg))
        };
        let down = nn::conv2d(
            &rl / 3,
            ppc[3],
            ppc[3],
            3,
            nn::ConvConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            },
        );
        let resize_layers = vec![up(0, 4), up(1, 2), Resize::Identity, Resize::Down(down)];
        let readout_projects = if cfg.readout == Readout::Project {
            (0..STAGES)
                .map(|i| {
                    nn::linear(
                        &rp / "readout_projects" / i / 0,
                        2 * e,
                        e,
                        Default::default(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let ch = base.channels;
        let convs = ppc
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let opts = ConvOpts {
                    padding: 1,
                    bias: Some(false),
                    ..ConvOpts::default()
                };
                ConvModule::with_opts(&p / "convs" / i, c, ch, 3, opts, &plain)
            })
            .collect::<Result<Vec<_>>>()?;
        let fp = &p / "fusion_blocks";
        let fusion_blocks = (0..STAGES)
            .map(|i| {
                let bp = &fp / i;
                Ok(Fusion {
                    // the first block has no skip input: mmseg sets its res_conv_unit1 to None
                    res_conv_unit1: (i > 0)
                        .then(|| ResUnit::new(&bp / "res_conv_unit1", ch, &base.conv))
                        .transpose()?,
                    res_conv_unit2: ResUnit::new(&bp / "res_conv_unit2", ch, &base.conv)?,
                    project: ConvModule::with_opts(
                        &bp / "project",
                        ch,
                        ch,
                        1,
                        ConvOpts {
                            bias: Some(true),
                            ..ConvOpts::default()
                        },
                        &plain,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // the final project has norm_cfg and ConvModule's default ReLU, not act_cfg
        let project_cfg = ConvModuleCfg {
            norm_cfg: base.conv.norm_cfg.clone(),
            act_cfg: Some(ActCfg::ReLU),
        };
        let project = ConvModule::new(&p / "project", ch, ch, 3, 1, 1, &project_cfg)?;
        let cls = base.cls_seg(&p);
        Ok(Self {
            base: base.clone(),
            cfg: cfg.clone(),
            projects,
            resize_layers,
            readout_projects,
            convs,
            fusion_blocks,
            project,
            cls,
        })
    }

    /// Splits the flat input list into `(map, class token)` pairs.
    fn pairs<'a>(&self, xs: &'a [Tensor]) -> Result<Vec<(&'a Tensor, Option<&'a Tensor>)>> {
        if xs.len() == 2 * STAGES {
            Ok(xs.chunks(2).map(|c| (&c[0], Some(&c[1]))).collect())
        } else if xs.len() == STAGES && self.cfg.readout == Readout::Ignore {
            Ok(xs.iter().map(|x| (x, None)).collect())
        } else {
            Err(PluginError::forward_failed(format!(
                "DPTHead takes four (map, class token) pairs as a flat list map0, cls0, ..., map3, cls3 (8 tensors){}; \
                 got {} tensors",
                if self.cfg.readout == Readout::Ignore { ", or the four maps alone with readout_type=\"ignore\"" } else { "" },
                xs.len()
            )))
        }
    }

    /// `ReassembleBlocks` on one pair.
    fn reassemble(&self, i: usize, x: &Tensor, cls: Option<&Tensor>) -> Result<Tensor> {
        let e = self.cfg.embed_dims;
        check_map(x, e, "each DPTHead feature map")?;
        let shape = x.size();
        let token = || -> Result<&Tensor> {
            let t = cls.ok_or_else(|| PluginError::forward_failed("the class token is missing"))?;
            if t.size() != [shape[0], e] {
                return Err(PluginError::forward_failed(format!(
                    "each DPTHead class token must be [B, {e}] = {:?}, got shape {:?}",
                    [shape[0], e],
                    t.size()
                )));
            }
            Ok(t)
        };
        let x = match self.cfg.readout {
            Readout::Ignore => x.shallow_clone(),
            // [B, C, H*W] + [B, C, 1]
            Readout::Add => x
                .f_flatten(2, -1)?
                .f_add(&token()?.f_unsqueeze(-1)?)?
                .f_reshape(&shape)?,
            Readout::Project => {
                // [B, H*W, C] ++ [B, H*W, C] -> Linear -> GELU -> [B, C, H, W]
                let t = x.f_flatten(2, -1)?.f_permute([0, 2, 1])?;
                let readout = token()?.f_unsqueeze(1)?.f_expand_as(&t)?;
                let y = Tensor::f_cat(&[&t, &readout], -1)?
                    .apply(&self.readout_projects[i])
                    .f_gelu("none")?;
                y.f_permute([0, 2, 1])?.f_reshape(&shape)?
            }
        };
        let x = self.projects[i].forward(&x, false)?;
        Ok(match &self.resize_layers[i] {
            Resize::Up(t) => x.apply(t),
            Resize::Identity => x,
            Resize::Down(c) => x.apply(c),
        })
    }
}

impl DecodeHead for DptHead {
    fn base(&self) -> &BaseCfg {
        &self.base
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let pairs = self.pairs(xs)?;
        let ix = match &self.base.in_index {
            InIndex::Many(ix) => ix,
            InIndex::One(_) => {
                return Err(PluginError::forward_failed(
                    "in_index must be a list (not validated)",
                ))
            }
        };
        let feats = ix
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let (x, cls) = pairs[py_index(k, pairs.len())?];
                let y = self.reassemble(i, x, cls)?;
                self.convs[i].forward(&y, train)
            })
            .collect::<Result<Vec<_>>>()?;
        let n = feats.len();
        let mut out = self.fusion_blocks[0].forward(&feats[n - 1], None, train)?;
        for i in 1..self.fusion_blocks.len() {
            out = self.fusion_blocks[i].forward(&out, Some(&feats[n - 1 - i]), train)?;
        }
        let out = self.project.forward(&out, train)?;
        Ok(vec![self.cls.forward(&out, train)?])
    }
}

fn build(ctx: &BuildCtx<'_, '_>) -> Result<ModuleBox> {
    let base = BaseCfg::from_ctx(ctx, Inputs::Declared)?;
    let a = &ctx.args;
    let readout = Readout::parse(&a.get::<String>("readout_type")?)
        .map_err(|why| arg_error(ctx, "readout_type", why))?;
    if a.get::<bool>("expand_channels")? {
        return Err(arg_error(
            ctx,
            "expand_channels",
            "true is not supported: mmseg builds its convs with float channel counts (channel * 2**i) that do not \
             match the reassembled maps, and fails; leave it false",
        ));
    }
    let patch_size: i64 = a.get("patch_size")?;
    if patch_size <= 0 {
        return Err(arg_error(
            ctx,
            "patch_size",
            format!("must be positive, got {patch_size}"),
        ));
    }
    let cfg = DptCfg {
        embed_dims: a.get("embed_dims")?,
        post_process_channels: a.get("post_process_channels")?,
        readout,
    };
    build_wrapped(ctx, |p| DptHead::new(p, &base, &cfg))
}

/// The `DPTHead` entry.
pub(crate) fn entry() -> Entry {
    head_entry(
        "DPTHead",
        "Dense Prediction Transformer decode head of mmsegmentation (includes its own classifier): four ViT \
         (feature map, class token) pairs, given as a flat list map0, cls0, ..., map3, cls3 (maps alone with \
         readout_type=\"ignore\"), are reassembled to 4x, 2x, 1x and 1/2x the patch grid, fused coarse to fine by \
         residual fusion blocks (each upsampling x2), projected, then dropout and conv_seg. Needs \
         input_transform=\"multiple_select\", in_index=[0, 1, 2, 3] and four channel-list entries equal to \
         embed_dims.",
        build,
        |e| {
            e
    .opt("embed_dims", ParamType::INT, json!(768), "channels of the ViT features and class tokens")
    .opt(
        "post_process_channels",
        ParamType::INT_LIST,
        json!([96, 192, 384, 768]),
        "channels of the four reassembled maps",
    )
    .opt("readout_type", ParamType::STR, json!("ignore"), "use of the class token: \"ignore\", \"add\" or \"project\"")
    .opt("patch_size", ParamType::INT, json!(16), "the ViT's patch size (stored by mmseg, unused by forward)")
    .opt("expand_channels", ParamType::BOOL, json!(false), "only false works (mmseg fails with true)")
        },
        BaseParams {
            norm_cfg: json!({"type": "BN"}),
            in_index_doc: "the four (map, token) pairs to read, e.g. [0, 1, 2, 3]",
            input_transform_doc: "must be \"multiple_select\" (DPTHead reads a list of pairs)",
            ..BaseParams::default()
        },
    )
}
