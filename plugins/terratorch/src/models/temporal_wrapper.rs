//! TerraTorch's `TemporalWrapper` (`terratorch/models/utils.py`), which the factory puts
//! around a backbone with `backbone_use_temporal=True`: the backbone runs on every time
//! step of a `[B, C, T, H, W]` input (time folded into the batch), and each feature is
//! pooled over time (`mean`, `max`, `diff`, `concat` or `keep`), optionally after
//! averaging subsets of time steps. Its state_dict keys are the backbone's under
//! `encoder.`, as upstream's `self.encoder`.

use serde_json::{Map, Value};
use tch::Tensor;
use terrahost_plugin_api::{
    sdk::{DynModule, Model},
    PluginError, Result,
};

/// How features are pooled over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemporalPooling {
    Mean,
    Max,
    /// First minus second time step (exactly two, after subsets).
    Diff,
    /// Time steps stacked along the channels.
    Concat,
    /// `[B, T, ...]` kept as it is.
    Keep,
}

impl TemporalPooling {
    /// Parses upstream's names.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "mean" => Self::Mean,
            "max" => Self::Max,
            "diff" => Self::Diff,
            "concat" => Self::Concat,
            "keep" => Self::Keep,
            other => {
                return Err(PluginError::invalid_argument(format!(
                    "`backbone_temporal_pooling` `{other}` is not supported; choose one of mean, max, diff, keep, concat"
                )))
            }
        })
    }
}

/// The wrapper's options (`backbone_temporal_*` arguments of the factory).
#[derive(Clone, Debug, PartialEq)]
pub struct TemporalConfig {
    /// Pooling over time.
    pub pooling: TemporalPooling,
    /// Time steps, needed for `concat`'s channel count.
    pub n_timestamps: Option<i64>,
    /// A permutation applied to each feature before pooling (and undone after).
    pub features_permute_op: Option<Vec<i64>>,
    /// Lengths of consecutive time subsets averaged before pooling.
    pub subset_lengths: Option<Vec<i64>>,
}

impl TemporalConfig {
    /// Reads the `temporal_*` keys of the backbone arguments (prefix removed), as
    /// upstream's `_get_backbone` pops them; `temporal_concat` is deprecated and ignored.
    pub fn from_kwargs(kw: &Map<String, Value>) -> Result<Self> {
        let bad = |key: &str, what: &str| {
            PluginError::invalid_argument(format!("`backbone_temporal_{key}` must be {what}"))
        };
        let ints = |key: &str| -> Result<Option<Vec<i64>>> {
            match kw.get(&format!("temporal_{key}")) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|_| bad(key, "a list of integers")),
            }
        };
        let pooling = match kw.get("temporal_pooling") {
            None | Some(Value::Null) => TemporalPooling::Mean,
            Some(Value::String(s)) => TemporalPooling::parse(s)?,
            Some(_) => return Err(bad("pooling", "a string")),
        };
        let n_timestamps = match kw.get("temporal_n_timestamps") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("n_timestamps", "a positive integer"))?,
            ),
        };
        if kw.get("temporal_concat").is_some_and(|v| !v.is_null()) {
            terrahost_plugin_api::warn!("`backbone_temporal_concat` is deprecated upstream and ignored; use temporal_pooling=concat");
        }
        let cfg = Self {
            pooling,
            n_timestamps,
            features_permute_op: ints("features_permute_op")?,
            subset_lengths: ints("subset_lengths")?,
        };
        if let Some(lengths) = &cfg.subset_lengths {
            if pooling == TemporalPooling::Diff && lengths.len() != 2 {
                return Err(PluginError::invalid_argument(format!(
                    "`diff` pooling needs exactly two subsets in `backbone_temporal_subset_lengths`, got {lengths:?}"
                )));
            }
            if lengths.iter().any(|l| *l < 1) {
                return Err(bad("subset_lengths", "positive lengths"));
            }
            if let Some(n) = cfg
                .n_timestamps
                .filter(|n| lengths.iter().sum::<i64>() != *n)
            {
                return Err(PluginError::invalid_argument(format!(
                    "`backbone_temporal_subset_lengths` {lengths:?} must add up to `backbone_temporal_n_timestamps` ({n})"
                )));
            }
        }
        if let Some(p) = &cfg.features_permute_op {
            let mut sorted = p.clone();
            sorted.sort();
            if sorted != (0..p.len() as i64).collect::<Vec<_>>() {
                return Err(bad("features_permute_op", "a permutation of 0..n"));
            }
        }
        Ok(cfg)
    }
}

/// Runs a backbone on each time step and pools its features over time.
pub struct TemporalWrapper {
    encoder: DynModule,
    cfg: TemporalConfig,
    /// The inverse of `cfg.features_permute_op`, applied after pooling.
    reverse_permute_op: Option<Vec<i64>>,
    out_channels: Vec<i64>,
}

impl TemporalWrapper {
    /// Wraps `encoder`. `concat` multiplies the channels by `n_timestamps`, which it
    /// therefore needs (upstream leaves `out_channels` unset without it, and the factory
    /// then fails).
    pub fn new(encoder: DynModule, cfg: TemporalConfig) -> Result<Self> {
        let inner = encoder.out_channels();
        let out_channels = match (cfg.pooling, cfg.n_timestamps) {
            (TemporalPooling::Concat, Some(n)) => inner.iter().map(|c| c * n).collect(),
            (TemporalPooling::Concat, None) => {
                return Err(PluginError::invalid_argument(
                    "`backbone_temporal_pooling=concat` needs `backbone_temporal_n_timestamps` to know the channel count",
                ))
            }
            _ => inner,
        };
        let reverse_permute_op = cfg.features_permute_op.as_ref().map(|op| {
            let mut r = vec![0; op.len()];
            for (i, &p) in op.iter().enumerate() {
                r[p as usize] = i as i64;
            }
            r
        });
        Ok(Self {
            encoder,
            cfg,
            reverse_permute_op,
            out_channels,
        })
    }

    fn permute(t: Tensor, op: Option<&[i64]>) -> Result<Tensor> {
        match op {
            None => Ok(t),
            Some(op) if op.len() == t.dim() => Ok(t.f_permute(op)?),
            Some(op) => Err(PluginError::forward_failed(format!(
                "TemporalWrapper: features_permute_op {op:?} has {} dims but a feature has shape {:?}",
                op.len(),
                t.size()
            ))),
        }
    }

    /// `[B*T, C, H, W]` -> `[B, T, C, H, W]`; tokens `[B*T, L, C]` -> `[B, T, C, L, 1]`.
    fn reshape_5d(t: &Tensor, b: i64, steps: i64) -> Result<Tensor> {
        let s = t.size();
        match s[..] {
            [_, c, h, w] => Ok(t.f_reshape([b, steps, c, h, w])?),
            [_, l, c] => Ok(t
                .f_reshape([b, steps, l, c])?
                .f_permute([0, 1, 3, 2])?
                .f_unsqueeze(-1)?),
            _ => Err(PluginError::forward_failed(format!(
                "TemporalWrapper: expected features of 3 or 4 dims, got shape {s:?}"
            ))),
        }
    }

    fn pool(&self, stacked: Tensor) -> Result<Tensor> {
        let steps = stacked.size()[1];
        let stacked = match &self.cfg.subset_lengths {
            None => stacked,
            Some(lengths) => {
                if lengths.iter().sum::<i64>() != steps {
                    return Err(PluginError::forward_failed(format!(
                        "TemporalWrapper: subset_lengths {lengths:?} must add up to the {steps} time steps"
                    )));
                }
                let means = stacked
                    .f_split_with_sizes(lengths, 1)?
                    .iter()
                    .map(|s| s.f_mean_dim(Some([1i64].as_slice()), false, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Tensor::f_stack(&means, 1)?
            }
        };
        Ok(match self.cfg.pooling {
            TemporalPooling::Concat => stacked.f_flatten(1, 2)?,
            TemporalPooling::Max => stacked.f_amax([1i64], false)?,
            TemporalPooling::Mean => stacked.f_mean_dim(Some([1i64].as_slice()), false, None)?,
            TemporalPooling::Keep => stacked,
            TemporalPooling::Diff => {
                if stacked.size()[1] != 2 {
                    return Err(PluginError::forward_failed(format!(
                        "TemporalWrapper: `diff` pooling needs exactly two time steps (after subsets), got {}; \
                         use backbone_temporal_subset_lengths to make two",
                        stacked.size()[1]
                    )));
                }
                stacked.f_select(1, 0)? - stacked.f_select(1, 1)?
            }
        })
    }
}

impl Model for TemporalWrapper {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let x = match xs {
            [x] => x,
            _ => {
                return Err(PluginError::forward_failed(format!(
                    "TemporalWrapper takes one input [B, C, T, H, W], got {} tensors",
                    xs.len()
                )))
            }
        };
        let &[b, c, steps, h, w] = &x.size()[..] else {
            return Err(PluginError::forward_failed(format!(
                "TemporalWrapper expects an input [B, C, T, H, W], got shape {:?}",
                x.size()
            )));
        };
        // [B, C, T, H, W] -> [B*T, C, H, W]
        let flat = x
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([b * steps, c, h, w])?;
        let features = self.encoder.forward(&[flat])?;
        features
            .into_iter()
            .map(|f| {
                let f = Self::permute(f, self.cfg.features_permute_op.as_deref())?;
                let pooled = self.pool(Self::reshape_5d(&f, b, steps)?)?;
                let pooled = Self::permute(pooled, self.reverse_permute_op.as_deref())?;
                // tokens: drop the helper dim and put the channels last again. Upstream
                // decides by a last dim of 1, so a map one pixel wide is treated the same.
                if pooled.size().last() == Some(&1) {
                    Ok(pooled.f_squeeze_dim(-1)?.f_movedim([-1], [-2])?)
                } else {
                    Ok(pooled)
                }
            })
            .collect()
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }

    /// The wrapped backbone's facts (its `patch_size`, which the factory pads to:
    /// upstream finds it among the wrapper's submodules).
    fn meta(&self) -> Map<String, Value> {
        self.encoder.meta()
    }

    fn children(&self) -> Vec<(&str, &DynModule)> {
        vec![("encoder", &self.encoder)]
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        vec![("encoder", &mut self.encoder)]
    }
}
