//! The necks of `terratorch/models/necks.py` that reshape tokens: `ReshapeTokensToImage`
//! (tokens to maps), `AggregateTokens` (tokens to one vector per layer) and
//! `PermuteDims`.

use crate::models::py_index;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::Tensor;
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

/// Arguments of [`ReshapeTokensToImage`], with upstream's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct ReshapeTokensConfig {
    /// Drop the first (CLS) token.
    pub remove_cls_token: bool,
    /// Time steps the tokens cover; they end up stacked along the channels.
    pub effective_time_dim: i64,
    /// Grid height in tokens; `None` infers it.
    pub h: Option<i64>,
    /// Inputs carry a separate time dimension `[B, T, N, E]`.
    pub temporal_inputs: bool,
}

impl Default for ReshapeTokensConfig {
    fn default() -> Self {
        Self {
            remove_cls_token: true,
            effective_time_dim: 1,
            h: None,
            temporal_inputs: false,
        }
    }
}

/// Reshapes tokens `[B, (T H W), E]` into maps `[B, T*E, H, W]`. Maps (4-D or more)
/// pass through untouched.
#[derive(Debug)]
pub struct ReshapeTokensToImage {
    cfg: ReshapeTokensConfig,
    out_channels: Vec<i64>,
}

impl ReshapeTokensToImage {
    /// Upstream keeps the channel list as it is.
    pub fn new(channel_list: &[i64], cfg: &ReshapeTokensConfig) -> Result<Self> {
        if cfg.effective_time_dim < 1 {
            return Err(PluginError::invalid_argument(format!(
                "ReshapeTokensToImage: effective_time_dim must be >= 1, got {}",
                cfg.effective_time_dim
            )));
        }
        if let Some(h) = cfg.h.filter(|h| *h < 1) {
            return Err(PluginError::invalid_argument(format!(
                "ReshapeTokensToImage: h must be >= 1, got {h}"
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            out_channels: channel_list.to_vec(),
        })
    }

    /// The grid height for `tokens_per_timestep` tokens: `h`, a square root, or what the
    /// image size implies. `Ok(None)` means "the first token is not a CLS token after
    /// all": upstream then retries without removing it.
    fn grid_height(
        &self,
        tokens_per_timestep: i64,
        image_size: Option<[i64; 2]>,
    ) -> Result<Option<i64>> {
        if let Some(h) = self.cfg.h {
            return Ok(Some(h));
        }
        let root = (tokens_per_timestep as f64).sqrt();
        if root.fract() == 0.0 {
            return Ok(Some(root as i64));
        }
        let Some([img_h, img_w]) = image_size else {
            return Err(PluginError::forward_failed(format!(
                "ReshapeTokensToImage: {tokens_per_timestep} tokens per time step do not form a square grid, and \
                 no image_size was given to infer it (pass `h`, or run the neck inside a model)"
            )));
        };
        let patch = ((img_h * img_w) as f64 / tokens_per_timestep as f64).sqrt();
        if patch.fract() != 0.0 {
            return Ok(None);
        }
        Ok(Some((img_h as f64 / patch).floor() as i64))
    }

    fn reshape(
        &self,
        x: &Tensor,
        remove_cls: bool,
        image_size: Option<[i64; 2]>,
    ) -> Result<Option<Tensor>> {
        let x = if remove_cls {
            x.f_narrow(1, 1, x.size()[1] - 1)?
        } else {
            x.shallow_clone()
        };
        let (b, e) = (x.size()[0], *x.size().last().unwrap());
        let x = x.f_reshape([b, -1, e])?;
        let tokens = x.size()[1];
        let t = self.cfg.effective_time_dim;
        let Some(h) = self.grid_height(tokens / t, image_size)? else {
            return Ok(None);
        };
        if h < 1 || tokens % (t * h) != 0 {
            return Err(PluginError::forward_failed(format!(
                "ReshapeTokensToImage: {tokens} tokens cannot be arranged as {t} time step(s) x {h} rows"
            )));
        }
        let w = tokens / (t * h);
        // [B, (T H W), E] -> [B, T, H, W, E] -> [B, T, E, H, W] -> [B, T*E, H, W]
        let y = x
            .f_reshape([b, t, h, w, e])?
            .f_permute([0, 1, 4, 2, 3])?
            .f_reshape([b, t * e, h, w])?;
        Ok(Some(y))
    }
}

/// With `temporal_inputs`, folds the time dimension into the batch, `[B, T, ...]` ->
/// `[(B T), ...]`, and returns `T` for [`unfold_time`].
fn fold_time(x: &Tensor, temporal_inputs: bool) -> Result<(Tensor, Option<i64>)> {
    if !temporal_inputs {
        return Ok((x.shallow_clone(), None));
    }
    let s = x.size();
    if s.len() < 2 {
        return Err(PluginError::forward_failed(format!(
            "temporal_inputs: expected features [B, T, ...], got shape {s:?}"
        )));
    }
    let mut flat = vec![s[0] * s[1]];
    flat.extend_from_slice(&s[2..]);
    Ok((x.f_reshape(&flat)?, Some(s[1])))
}

/// Undoes [`fold_time`]: `[(B T), ...]` -> `[B, T, ...]`.
fn unfold_time(y: Tensor, timesteps: Option<i64>) -> Result<Tensor> {
    let Some(t) = timesteps else { return Ok(y) };
    let s = y.size();
    let mut shape = vec![s[0] / t, t];
    shape.extend_from_slice(&s[1..]);
    Ok(y.f_reshape(&shape)?)
}

/// `image_size` from the forward keyword arguments, as `[H, W]`.
fn image_size_kwarg(kwargs: &Map<String, Value>) -> Result<Option<[i64; 2]>> {
    match kwargs.get("image_size") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value::<[i64; 2]>(v.clone())
            .map(Some)
            .map_err(|_| {
                PluginError::invalid_argument(format!(
                    "image_size must be [height, width], got {v}"
                ))
            }),
    }
}

impl Model for ReshapeTokensToImage {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.forward_kw(xs, &Map::new(), train)
    }

    fn forward_kw(
        &self,
        xs: &[Tensor],
        kwargs: &Map<String, Value>,
        _train: bool,
    ) -> Result<Vec<Tensor>> {
        let image_size = image_size_kwarg(kwargs)?;
        let mut out = Vec::with_capacity(xs.len());
        for x in xs {
            let (x, timesteps) = fold_time(x, self.cfg.temporal_inputs)?;
            if x.dim() >= 4 {
                out.push(x);
                continue;
            }
            if x.dim() != 3 {
                return Err(PluginError::forward_failed(format!(
                    "ReshapeTokensToImage: expected tokens [B, N, C] or maps [B, C, H, W], got shape {:?}",
                    x.size()
                )));
            }
            // Upstream: when the tokens do not fit the image with a CLS token removed,
            // assume there was none and try again.
            let y = match self.reshape(&x, self.cfg.remove_cls_token, image_size)? {
                Some(y) => y,
                None if self.cfg.remove_cls_token => {
                    tracing::warn!("ReshapeTokensToImage: cannot infer the grid with a CLS token; retrying without removing one");
                    self.reshape(&x, false, image_size)?
                        .ok_or_else(|| grid_error(&x, image_size))?
                }
                None => return Err(grid_error(&x, image_size)),
            };
            out.push(unfold_time(y, timesteps)?);
        }
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}

fn grid_error(x: &Tensor, image_size: Option<[i64; 2]>) -> PluginError {
    PluginError::forward_failed(format!(
        "ReshapeTokensToImage: cannot infer the token grid from {} tokens with image_size {image_size:?}",
        x.size()[1]
    ))
}

/// How [`AggregateTokens`] pools.
#[derive(Clone, Debug, PartialEq)]
pub enum Pooling {
    Mean,
    Max,
    Min,
    /// The first token.
    Cls,
    /// The token at this index.
    Index(i64),
}

impl Pooling {
    fn parse(v: &Value) -> Result<Self> {
        match v {
            Value::Number(n) if n.is_i64() => Ok(Pooling::Index(n.as_i64().unwrap())),
            Value::String(s) => match s.to_lowercase().as_str() {
                "mean" => Ok(Pooling::Mean),
                "max" => Ok(Pooling::Max),
                "min" => Ok(Pooling::Min),
                "cls" => Ok(Pooling::Cls),
                other => Err(PluginError::invalid_argument(format!(
                    "AggregateTokens: pooling `{other}` is not one of mean, max, min, CLS or a token index"
                ))),
            },
            other => Err(PluginError::invalid_argument(format!(
                "AggregateTokens: pooling must be a string (mean, max, min, CLS) or a token index, got {other}"
            ))),
        }
    }
}

/// Arguments of [`AggregateTokens`], with upstream's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct AggregateTokensConfig {
    /// `mean`, `max`, `min`, `CLS` or a token index.
    pub pooling: Value,
    /// Layers to pool (an int or a list); `None` uses `index`.
    pub indices: Option<Value>,
    /// Deprecated single layer index (default -1).
    pub index: Option<i64>,
    /// Drop the first token before pooling.
    pub drop_cls: bool,
    /// Inputs carry a separate time dimension `[B, T, ...]`.
    pub temporal_inputs: bool,
}

impl Default for AggregateTokensConfig {
    fn default() -> Self {
        Self {
            pooling: Value::from("mean"),
            indices: None,
            index: Some(-1),
            drop_cls: false,
            temporal_inputs: false,
        }
    }
}

/// Pools each selected layer's tokens into one embedding `[B, E]` (or `[B, T, E]`).
#[derive(Debug)]
pub struct AggregateTokens {
    pooling: Pooling,
    indices: Vec<i64>,
    drop_cls: bool,
    temporal_inputs: bool,
    out_channels: Vec<i64>,
}

impl AggregateTokens {
    /// Upstream passes the channel list on unchanged (its `process_channel_list` does
    /// not apply the layer selection), and so does this.
    pub fn new(channel_list: &[i64], cfg: &AggregateTokensConfig) -> Result<Self> {
        let pooling = Pooling::parse(&cfg.pooling)?;
        // Upstream's `indices or index`: whatever Python finds falsy (null, an empty
        // list, and also the int 0) falls back to `index`.
        let indices: Vec<i64> = match &cfg.indices {
            Some(Value::Number(n)) if n.as_i64() == Some(0) => vec![cfg.index.unwrap_or(-1)],
            Some(Value::Number(n)) if n.is_i64() => vec![n.as_i64().unwrap()],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        PluginError::invalid_argument(format!(
                            "AggregateTokens: indices must be integers, got {v}"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            Some(Value::Array(_)) | Some(Value::Null) | None => vec![cfg.index.unwrap_or(-1)],
            Some(other) => {
                return Err(PluginError::invalid_argument(format!(
                    "AggregateTokens: indices must be an int or a list of ints, got {other}"
                )))
            }
        };
        for &i in &indices {
            py_index(i, channel_list.len(), "AggregateTokens: index")?;
        }
        if cfg.drop_cls && pooling == Pooling::Cls {
            return Err(PluginError::invalid_argument(
                "AggregateTokens: drop_cls=true is incompatible with pooling='cls' (the CLS token would be dropped)",
            ));
        }
        Ok(Self {
            pooling,
            indices,
            drop_cls: cfg.drop_cls,
            temporal_inputs: cfg.temporal_inputs,
            out_channels: channel_list.to_vec(),
        })
    }

    fn pool(&self, feat: &Tensor) -> Result<Tensor> {
        let d = feat.dim() as i64;
        Ok(match self.pooling {
            Pooling::Mean => feat.f_mean_dim(Some([1i64].as_slice()), false, None)?,
            Pooling::Max => feat.f_amax([1i64], false)?,
            Pooling::Min => feat.f_amin([1i64], false)?,
            Pooling::Cls => feat.f_select(d - 2, 0)?,
            Pooling::Index(i) => {
                let n = feat.size()[(d - 2) as usize];
                feat.f_select(
                    d - 2,
                    py_index(i, n as usize, "AggregateTokens: pooling token index")? as i64,
                )?
            }
        })
    }
}

impl Model for AggregateTokens {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.indices.len());
        for &index in &self.indices {
            let feat = if xs.len() > 1 {
                &xs[py_index(index, xs.len(), "AggregateTokens: index").map_err(|e| {
                    PluginError::forward_failed(format!(
                        "{} (it received {} features)",
                        e.message(),
                        xs.len()
                    ))
                })?]
            } else {
                xs.first()
                    .ok_or_else(|| PluginError::forward_failed("AggregateTokens: no features"))?
            };
            let (mut feat, timesteps) = fold_time(feat, self.temporal_inputs)?;
            let s = feat.size();
            if feat.dim() == 4 {
                // [B, C, H, W] -> [B, (H W), C]
                feat = feat.f_flatten(2, 3)?.f_transpose(1, 2)?;
            } else if feat.dim() == 5 {
                // [B, C, T, H, W] -> [B, (H W), T, C]
                feat =
                    feat.f_permute([0, 3, 4, 2, 1])?
                        .f_reshape([s[0], s[3] * s[4], s[2], s[1]])?;
            }
            if self.drop_cls {
                let d = feat.dim() as i64;
                let n = feat.size()[(d - 2) as usize];
                feat = feat.f_narrow(d - 2, 1, n - 1)?;
            }
            out.push(unfold_time(self.pool(&feat)?, timesteps)?);
        }
        Ok(out)
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}

/// Permutes the dimensions of every feature.
#[derive(Debug)]
pub struct PermuteDims {
    new_order: Vec<i64>,
    out_channels: Vec<i64>,
}

impl PermuteDims {
    /// Upstream keeps the channel list as it is.
    pub fn new(channel_list: &[i64], new_order: Vec<i64>) -> Result<Self> {
        let mut sorted = new_order.clone();
        sorted.sort();
        if sorted != (0..new_order.len() as i64).collect::<Vec<_>>() {
            return Err(PluginError::invalid_argument(format!(
                "PermuteDims: new_order {new_order:?} is not a permutation of 0..{}",
                new_order.len()
            )));
        }
        Ok(Self {
            new_order,
            out_channels: channel_list.to_vec(),
        })
    }
}

impl Model for PermuteDims {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        xs.iter()
            .map(|x| {
                if x.dim() != self.new_order.len() {
                    return Err(PluginError::forward_failed(format!(
                        "PermuteDims: new_order {:?} has {} dims but a feature has shape {:?}",
                        self.new_order,
                        self.new_order.len(),
                        x.size()
                    )));
                }
                Ok(x.f_permute(&self.new_order)?.f_contiguous()?)
            })
            .collect()
    }

    fn out_channels(&self) -> Vec<i64> {
        self.out_channels.clone()
    }
}
