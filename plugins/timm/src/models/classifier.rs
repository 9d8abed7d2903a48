//! Mirrors timm's classifier models (timm 1.0.31): what `timm.create_model(arch,
//! num_classes=..., in_chans=..., global_pool=..., drop_rate=...)` returns without
//! `features_only`. The heads are `timm/layers/classifier.py` (`create_classifier`,
//! `ClassifierHead`, `NormMlpClassifierHead`) with `timm/layers/adaptive_avgmax_pool.py`
//! (`SelectAdaptivePool2d`), and each family's `forward_features` / `forward_head`:
//! `resnet.py` (`global_pool`, dropout, `fc`), `vision_transformer.py` (`norm`, token or
//! average pooling, `fc_norm`, `head`), `convnext.py` (`head.norm` after the pooling,
//! `head.fc`) and `swin_transformer.py` (`norm`, channels-last pooling, `head.fc`), and
//! TerraTorch's `MMSegSwinTransformer.forward` (`terratorch/models/backbones/
//! swin_encoder_decoder.py`; `prithvi_swin_B/L`, which TerraTorch registers into timm): the
//! last stage's normed channels-last output through `head` (pooling, dropout, `head.fc`).
//!
//! The trunks are the families' own networks with every stage built and the classifier's
//! (unflattened) parameter names, so the keys are those of the timm classifier's
//! state_dict. `num_classes=0` leaves the final linear out (timm's `Identity`), and the
//! model returns the pooled features.
use super::convnext::{self, ConvNeXt};
use super::layers::{dropout, LayerNorm, Linear, LN_EPS};
use super::prithvi_swin::{self, PrithviSwin};
use super::resnet::{self, ResNet};
use super::swin::{self, SwinTransformer};
use super::vit::{self, VisionTransformer};
use serde_json::json;
use tch::nn;
use tch::{Device, Tensor};
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Built, Catalog, Entry, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// `torch.nn.LayerNorm`'s default eps (timm Swin's `norm_layer`).
const TORCH_LN_EPS: f64 = 1e-5;

/// `SelectAdaptivePool2d`'s pool types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    /// `""`: no pooling (the map or tokens go to the linear as they are).
    Identity,
    /// `"avg"`.
    Avg,
    /// `"max"`.
    Max,
    /// `"avgmax"`: the mean of both.
    AvgMax,
    /// `"catavgmax"`: both, concatenated (twice the features).
    CatAvgMax,
}

impl Pool {
    /// The pool type `s`, if it is one of `allowed` (each family's `forward_head` takes
    /// its own set).
    fn parse(s: &str, allowed: &[&str], family: &str) -> Result<Self> {
        let p = match s {
            "" => Self::Identity,
            "avg" => Self::Avg,
            "max" => Self::Max,
            "avgmax" => Self::AvgMax,
            "catavgmax" => Self::CatAvgMax,
            _ => Self::Identity,
        };
        if !allowed.contains(&s) {
            return Err(PluginError::invalid_argument(format!(
                "`global_pool` {s:?} is not available for a timm {family} classifier in terrahost; use one of {}",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(p)
    }

    /// How many times the channels the pooled features have (`feat_mult`).
    fn feat_mult(self) -> i64 {
        if self == Self::CatAvgMax {
            2
        } else {
            1
        }
    }

    /// Pools a map over its spatial dims (`[B, C, H, W]`, or `[B, H, W, C]` when `nhwc`)
    /// into `[B, C * feat_mult]`; `Identity` returns the map.
    fn forward(self, x: &Tensor, nhwc: bool) -> Result<Tensor> {
        let dims: &[i64] = if nhwc { &[1, 2] } else { &[2, 3] };
        let avg = || x.f_mean_dim(dims, false, None);
        let max = || x.f_amax(dims, false);
        Ok(match self {
            Self::Identity => x.shallow_clone(),
            Self::Avg => avg()?,
            Self::Max => max()?,
            Self::AvgMax => avg()?.f_add(&max()?)?.f_mul_scalar(0.5)?,
            Self::CatAvgMax => Tensor::f_cat(&[avg()?, max()?], 1)?,
        })
    }
}

/// The family's trunk, built with every stage.
#[derive(Debug)]
enum Trunk {
    ResNet(Box<ResNet>),
    Vit(Box<VisionTransformer>),
    ConvNeXt(ConvNeXt),
    Swin(SwinTransformer),
    PrithviSwin(PrithviSwin),
}

/// A timm classifier: trunk, the family's norm and pooling, dropout and the final linear.
#[derive(Debug)]
pub struct Classifier {
    trunk: Trunk,
    in_chans: i64,
    /// `norm` before the pooling (ViT without fc_norm, Swin).
    norm: Option<LayerNorm>,
    pool: Pool,
    /// The ViT's pooling: `token` (the class token), else `pool` over the patch tokens.
    vit_token_pool: bool,
    /// The ViT's prefix tokens (class and register), left out of the average.
    num_prefix_tokens: i64,
    /// The norm after the pooling (ViT `fc_norm`, ConvNeXt `head.norm`).
    post_norm: Option<LayerNorm>,
    drop_rate: f64,
    fc: Option<Linear>,
    num_classes: i64,
}

/// Which family an entry builds.
#[derive(Clone, Copy, Debug)]
enum Family {
    ResNet,
    Vit,
    ConvNeXt,
    Swin,
    PrithviSwin,
}

impl Classifier {
    fn forward_x(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = |v: Vec<Tensor>| {
            v.into_iter()
                .last()
                .ok_or_else(|| PluginError::forward_failed("the trunk returned no features"))
        };
        let y = match &self.trunk {
            Trunk::ResNet(m) => self.pool.forward(&last(m.features(x, train)?)?, false)?,
            Trunk::ConvNeXt(m) => self.pool.forward(&last(m.features(x, train)?)?, false)?,
            Trunk::Swin(m) => {
                // [B, H, W, C], normed over C, pooled over H, W.
                let y = last(m.features(x, train)?)?;
                let y = self.norm.as_ref().expect("Swin has a norm").forward(&y)?;
                self.pool.forward(&y, true)?
            }
            // The last stage's normed output, [B, H, W, C], pooled over H, W.
            Trunk::PrithviSwin(m) => self.pool.forward(&last(m.features(x, train)?)?, true)?,
            Trunk::Vit(m) => {
                // [B, prefix + N, D]
                let mut t = m.tokens(x, train)?;
                if let Some(n) = &self.norm {
                    t = n.forward(&t)?;
                }
                if self.vit_token_pool {
                    t.f_select(1, 0)?
                } else if self.pool == Pool::Identity {
                    t
                } else {
                    let n = t.size()[1];
                    let patches =
                        t.f_narrow(1, self.num_prefix_tokens, n - self.num_prefix_tokens)?;
                    match self.pool {
                        Pool::Avg => patches.f_mean_dim(1, false, None)?,
                        Pool::Max => patches.f_amax(1, false)?,
                        _ => patches
                            .f_mean_dim(1, false, None)?
                            .f_add(&patches.f_amax(1, false)?)?
                            .f_mul_scalar(0.5)?,
                    }
                }
            }
        };
        let y = match &self.post_norm {
            Some(n) => n.forward(&y)?,
            None => y,
        };
        let y = dropout(y, self.drop_rate, train)?;
        match &self.fc {
            Some(fc) => fc.forward(&y),
            None => Ok(y),
        }
    }
}

impl Model for Classifier {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        match xs {
            [x] => Ok(vec![self.forward_x(x, train)?]),
            _ => Err(PluginError::invalid_argument(format!(
                "a timm classifier takes one input tensor [B, {}, H, W], got {}",
                self.in_chans,
                xs.len()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.num_classes]
    }

    fn includes_head(&self) -> bool {
        true
    }
}

/// Builds the classifier of `family` from the validated arguments under `p`.
fn build_classifier(
    ctx: &BuildCtx<'_, '_>,
    p: nn::Path,
    family: Family,
    arch: &str,
) -> Result<Classifier> {
    let a = &ctx.args;
    let num_classes: i64 = a.get("num_classes")?;
    a.ensure(
        num_classes >= 0,
        "num_classes",
        format!("must be >= 0 (0 leaves the classifier out), got {num_classes}"),
    )?;
    let drop_rate: f64 = a.get("drop_rate")?;
    let global_pool: String = a.get("global_pool")?;
    let fc = |p: nn::Path, n_in: i64| {
        (num_classes > 0).then(|| Linear::timm(p, n_in, num_classes, true))
    };
    let none = |pool: Pool| {
        if pool == Pool::Identity && num_classes > 0 {
            Err(PluginError::invalid_argument(format!(
                "`global_pool` \"\" (no pooling) with num_classes={num_classes}: timm allows no pooling only \
                 when the classifier is removed (num_classes=0)"
            )))
        } else {
            Ok(())
        }
    };
    let fc_layer;
    let (mut norm, mut post_norm) = (None, None);
    let (mut vit_token_pool, mut num_prefix_tokens) = (false, 0);
    let (trunk, in_chans, pool) = match family {
        Family::ResNet => {
            let base = resnet::Config::preset(arch).expect("known ResNet preset");
            let cfg = resnet::config(ctx, base)?;
            let pool = Pool::parse(
                &global_pool,
                &["avg", "max", "avgmax", "catavgmax", ""],
                "ResNet",
            )?;
            none(pool)?;
            let n = *cfg.feature_channels().last().expect("features") * pool.feat_mult();
            fc_layer = fc(&p / "fc", n);
            (
                Trunk::ResNet(Box::new(ResNet::new(p, &cfg)?)),
                cfg.in_chans,
                pool,
            )
        }
        Family::ConvNeXt => {
            let cfg = convnext::config(ctx)?;
            // NormMlpClassifierHead: LayerNorm2d(num_features) after the pooling, so the pooled
            // features must keep the channel count.
            let pool = Pool::parse(&global_pool, &["avg", "max", "avgmax"], "ConvNeXt")?;
            let n = *cfg.dims.last().expect("dims");
            post_norm = Some(LayerNorm::new(&p / "head" / "norm", n, LN_EPS));
            fc_layer = fc(&p / "head" / "fc", n);
            let trunk = Trunk::ConvNeXt(ConvNeXt::with_names(p, &cfg, false)?);
            (trunk, cfg.in_chans, pool)
        }
        Family::Swin => {
            let base = swin::Config::named(arch).expect("known Swin preset");
            let cfg = swin::config(ctx, base)?;
            let pool = Pool::parse(&global_pool, &["avg", "max", "avgmax", "catavgmax"], "Swin")?;
            let n = *cfg.feature_channels().last().expect("features");
            norm = Some(LayerNorm::new(&p / "norm", n, TORCH_LN_EPS));
            fc_layer = fc(&p / "head" / "fc", n * pool.feat_mult());
            let trunk = Trunk::Swin(SwinTransformer::with_names(p, &cfg, false)?);
            (trunk, cfg.in_chans, pool)
        }
        Family::PrithviSwin => {
            let base = prithvi_swin::Config::named(arch).expect("known Prithvi Swin preset");
            let cfg = prithvi_swin::config(ctx, base)?;
            let pool = Pool::parse(
                &global_pool,
                &["avg", "max", "avgmax", "catavgmax"],
                "Prithvi Swin",
            )?;
            let n = *cfg.feature_channels().last().expect("features");
            fc_layer = fc(&p / "head" / "fc", n * pool.feat_mult());
            let trunk = Trunk::PrithviSwin(PrithviSwin::with_names(p, &cfg, false)?);
            (trunk, cfg.in_chans, pool)
        }
        Family::Vit => {
            let cfg = vit::config(ctx)?;
            let gp = cfg.global_pool.as_str();
            let pool = Pool::parse(gp, &["token", "avg", "max", "avgmax", ""], "ViT")?;
            vit_token_pool = gp == "token";
            num_prefix_tokens = cfg.num_prefix_tokens();
            // fc_norm=None: the norm moves after the pooling for avg / avgmax / max.
            let fc_norm = ["avg", "avgmax", "max"].contains(&gp);
            let d = cfg.embed_dim;
            if fc_norm {
                post_norm = Some(LayerNorm::new(&p / "fc_norm", d, LN_EPS));
            } else {
                norm = Some(LayerNorm::new(&p / "norm", d, LN_EPS));
            }
            fc_layer = fc(&p / "head", d);
            let trunk = Trunk::Vit(Box::new(VisionTransformer::new(p, &cfg)?));
            (trunk, cfg.in_chans, pool)
        }
    };
    Ok(Classifier {
        trunk,
        in_chans,
        norm,
        pool,
        vit_token_pool,
        num_prefix_tokens,
        post_norm,
        drop_rate,
        fc: fc_layer,
        num_classes,
    })
}

/// The classifier entry `arch` of `family`: the backbone entry's parameters (its
/// architecture keywords) without the feature selection, plus `num_classes` and, where
/// the backbone entry has none, `global_pool`.
fn entry(arch: &'static str, family: Family, backbone: Entry, global_pool: &str) -> Entry {
    let doc = format!(
        "timm {arch} as a classifier (timm.create_model(\"{arch}\", num_classes=..., in_chans=...)): the \
         network with every stage, global pooling and a linear layer, with timm's classifier keys."
    );
    let mut e = Entry::new(arch, &doc, move |ctx| -> Result<ModuleBox> {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build_classifier(ctx, vs.root(), family, arch)
            .map_err(|e| e.context(format_args!("timm classifier `{arch}`")))?;
        Ok(Built::new(ctx.qualified(), vs, model).boxed())
    });
    let skip = [
        "features_only",
        "out_indices",
        "pretrained",
        "pretrained_cfg_overlay",
    ];
    let mut has_pool = false;
    for p in backbone.info().params.iter() {
        if skip.contains(&p.name.as_str()) {
            continue;
        }
        has_pool |= p.name.as_str() == "global_pool";
        let mut p = p.clone();
        if p.name.as_str() == "drop_rate" {
            p.doc = "dropout before the final linear (train mode only)".into();
        }
        e = e.param(p);
    }
    if !has_pool {
        e = e.opt(
            "global_pool",
            ParamType::STR,
            json!(global_pool),
            "global pooling: avg, max, avgmax (and catavgmax where the family allows it)",
        );
    }
    e.opt(
        "num_classes",
        ParamType::INT,
        json!(1000),
        "classes of the final linear layer (0: no linear, the pooled features come out)",
    )
}

/// The timm classifiers, one per architecture the plugin builds as a classifier, with the
/// `arch.tag` names (see [`crate::tags`]). TimmModelFactory builds from this catalog.
pub(crate) fn catalog() -> Catalog {
    let mut c = Catalog::new("timm");
    for arch in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
        c = c.add(entry(arch, Family::ResNet, resnet::entry(arch), "avg"));
    }
    for arch in [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_large_patch16_224",
    ] {
        c = c.add(entry(arch, Family::Vit, vit::entry(arch), "token"));
    }
    for arch in [
        "convnext_tiny",
        "convnext_small",
        "convnext_base",
        "convnext_large",
        "convnext_xlarge",
    ] {
        c = c.add(entry(arch, Family::ConvNeXt, convnext::entry(arch), "avg"));
    }
    for arch in [
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224",
    ] {
        c = c.add(entry(arch, Family::Swin, swin::entry(arch), "avg"));
    }
    for arch in ["prithvi_swin_B", "prithvi_swin_L"] {
        let e = entry(arch, Family::PrithviSwin, prithvi_swin::entry(arch), "avg");
        c = c.add(e);
    }
    crate::tags::with_tags(c)
}
