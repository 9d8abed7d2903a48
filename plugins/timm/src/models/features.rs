//! Mirrors the feature selection of `timm/models/_features.py` (timm 1.0.31):
//! `feature_take_indices` (what `out_indices` means), the checks `FeatureListNet` /
//! `FeatureGetterNet` make on their input, and the keyword parameters every
//! `features_only` backbone entry shares.
use serde_json::{json, Value};
use tch::Tensor;
use terrahost_plugin_api::params::ParamType;
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{PluginError, Result};

/// The order rule of a family's `out_indices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Strictly increasing: `FeatureListNet` returns features in network order whatever
    /// the order given, while its `out_channels` follows the order given, so any other
    /// order would describe the outputs wrongly.
    Increasing,
    /// Any order without repeats (`FeatureGetterNet` returns each taken block once).
    Distinct,
}

/// What a family calls its features, for messages: `model` ("a ResNet"), `unit`
/// ("features", "blocks", "stages") and an optional `legend` of the indices.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taps<'a> {
    pub(crate) model: &'a str,
    pub(crate) unit: &'a str,
    pub(crate) legend: &'a str,
    pub(crate) order: Order,
}

impl Taps<'_> {
    /// `out_indices` made non-negative against `n` features and checked as timm's
    /// `feature_take_indices` does, plus this family's order rule.
    pub(crate) fn resolve(&self, given: &[i64], n: i64) -> Result<Vec<i64>> {
        let bad = |m: String| Err(PluginError::invalid_argument(m));
        if given.is_empty() {
            return bad(format!(
                "`out_indices` is empty; give at least one {} index (0..{}){}",
                self.unit.trim_end_matches('s'),
                n - 1,
                self.legend
            ));
        }
        let mut out: Vec<i64> = Vec::with_capacity(given.len());
        for &i in given {
            let idx = if i < 0 { n + i } else { i };
            if !(0..n).contains(&idx) {
                return bad(format!(
                    "`out_indices` contains {i}, but {} has {n} {}: use 0..{}{} or -{n}..-1",
                    self.model,
                    self.unit,
                    n - 1,
                    self.legend
                ));
            }
            match self.order {
                Order::Increasing if out.last().is_some_and(|&prev| idx <= prev) => {
                    return bad(format!(
                        "`out_indices` {given:?} must be strictly increasing (after counting negative ones from \
                         the end): features come out in network order"
                    ));
                }
                Order::Distinct if out.contains(&idx) => {
                    return bad(format!(
                        "`out_indices` {given:?} names {} {idx} twice; each is returned once",
                        self.unit.trim_end_matches('s')
                    ));
                }
                _ => {}
            }
            out.push(idx);
        }
        Ok(out)
    }

    /// `out_indices` as timm's entry takes it (a list, negative from the end, or an int
    /// `k` for the last `k` of `n`), resolved and checked; absent means all `n`.
    pub(crate) fn out_indices_arg(&self, ctx: &BuildCtx<'_, '_>, n: i64) -> Result<Vec<i64>> {
        let a = &ctx.args;
        let given = match a.raw("out_indices") {
            None | Some(Value::Null) => return Ok((0..n).collect()),
            Some(Value::Array(_)) => a.get::<Vec<i64>>("out_indices")?,
            Some(_) => {
                let k: i64 = a.get("out_indices")?;
                a.ensure(
                    (1..=n).contains(&k),
                    "out_indices",
                    format!(
                        "as an int takes the last k of the {n} {} and must be 1..={n}, got {k}",
                        self.unit
                    ),
                )?;
                (n - k..n).collect()
            }
        };
        self.resolve(&given, n)
    }

    /// The single input tensor of `xs` (a backbone takes one image batch).
    pub(crate) fn single<'x>(&self, xs: &'x [Tensor], in_chans: i64) -> Result<&'x Tensor> {
        match xs {
            [x] => Ok(x),
            _ => Err(PluginError::invalid_argument(format!(
                "{} backbone takes exactly one input tensor [B, {in_chans}, H, W], got {}",
                self.model,
                xs.len()
            ))),
        }
    }

    /// Checks that `x` is a `[B, in_chans, H, W]` image batch; returns its size.
    pub(crate) fn check_image(&self, x: &Tensor, in_chans: i64) -> Result<Vec<i64>> {
        let size = x.size();
        if size.len() != 4 {
            return Err(PluginError::forward_failed(format!(
                "{} takes one [B, C, H, W] image batch, got a tensor of shape {size:?}",
                self.model
            )));
        }
        if size[1] != in_chans {
            return Err(PluginError::forward_failed(format!(
                "the input has {} channels but {} was built with in_chans={in_chans} (input shape {size:?}); \
                 build it with in_chans={} or pass a {in_chans}-channel image",
                size[1], self.model, size[1]
            )));
        }
        Ok(size)
    }
}

/// The entries of `all` at the (resolved, non-negative) `indices`.
pub(crate) fn pick(all: &[i64], indices: &[i64]) -> Vec<i64> {
    indices.iter().map(|&i| all[i as usize]).collect()
}

/// Refuses `features_only=false`: terrahost's timm backbones are feature extractors;
/// `returns` says what they return.
pub(crate) fn require_features_only(ctx: &BuildCtx<'_, '_>, returns: &str) -> Result<()> {
    let features_only: bool = ctx.args.get("features_only")?;
    ctx.args.ensure(
        features_only,
        "features_only",
        format!(
            "must be true: terrahost backbones are feature extractors returning {returns} (a classifier model \
             is not available)"
        ),
    )
}

/// The keyword parameters every timm backbone entry takes: `features_only`, `pretrained`
/// and `pretrained_cfg_overlay` (see [`crate::pretrained`]).
pub(crate) fn common_params(e: Entry, returns: &str) -> Entry {
    e.opt(
        "features_only",
        ParamType::BOOL,
        json!(true),
        &format!("return {returns} (only true is supported)"),
    )
    .opt(
        "pretrained",
        ParamType::BOOL,
        json!(false),
        "load pretrained weights (needs pretrained_cfg_overlay.file; no downloads)",
    )
    .opt(
        "pretrained_cfg_overlay",
        ParamType::DICT,
        Value::Null,
        "overrides of the pretrained config; `file` names a local checkpoint (.safetensors or torch.save)",
    )
}

/// `img_size` as timm takes it: an int or `[height, width]`.
pub(crate) fn img_size_arg(ctx: &BuildCtx<'_, '_>) -> Result<(i64, i64)> {
    let a = &ctx.args;
    match a.raw("img_size") {
        Some(Value::Array(_)) => {
            let v: Vec<i64> = a.get("img_size")?;
            a.ensure(
                v.len() == 2,
                "img_size",
                format!("as a list must be [height, width], got {v:?}"),
            )?;
            Ok((v[0], v[1]))
        }
        _ => {
            let s: i64 = a.get("img_size")?;
            Ok((s, s))
        }
    }
}

/// The child `name` `i` of `p`: `name_i` as timm's `FeatureListNet(flatten_sequential=True)`
/// names it (`flat`), or `name.i` as the classifier model does.
pub(crate) fn child<'a>(
    p: &tch::nn::Path<'a>,
    name: &str,
    i: usize,
    flat: bool,
) -> tch::nn::Path<'a> {
    if flat {
        p / format!("{name}_{i}")
    } else {
        p / name / i
    }
}
