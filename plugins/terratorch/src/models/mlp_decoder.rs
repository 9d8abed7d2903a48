//! TerraTorch's MLP decoder: the feature maps concatenated along channels and mixed
//! back to one map's width by a linear layer and an activation.
//! Mirrors `terratorch/models/decoders/mlp_decoder.py` (`MLPDecoder`).

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, nn::Module as _, Device, Tensor};
use terrahost_plugin_api::{
    sdk::{Built, Entry, Model},
    ParamType, PluginError, Result,
};

use super::py_index;

/// The `torch.nn` activations `activation` may name (built with their defaults).
pub const ACTIVATIONS: [&str; 18] = [
    "ReLU",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "Identity",
    "LeakyReLU",
    "ELU",
    "SELU",
    "CELU",
    "Mish",
    "Hardswish",
    "Hardsigmoid",
    "ReLU6",
    "Softplus",
    "Softsign",
    "Tanhshrink",
    "LogSigmoid",
];

/// Arguments of [`MLPDecoder`], with upstream defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Stored and unused upstream.
    pub channels: i64,
    /// Stored and unused upstream.
    pub out_dim: i64,
    /// Name of a `torch.nn` activation (see [`ACTIVATIONS`]).
    pub activation: String,
    /// Whose width is the output width (Python index into the channel list).
    pub out_index: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channels: 100,
            out_dim: 100,
            activation: "ReLU".into(),
            out_index: -1,
        }
    }
}

/// Applies a named `torch.nn` activation with its default arguments.
fn activate(name: &str, x: &Tensor) -> Result<Tensor> {
    Ok(match name {
        "ReLU" => x.f_relu()?,
        "GELU" => x.f_gelu("none")?,
        "SiLU" => x.f_silu()?,
        "Sigmoid" => x.f_sigmoid()?,
        "Tanh" => x.f_tanh()?,
        "Identity" => x.shallow_clone(),
        "LeakyReLU" => x.f_leaky_relu()?,
        "ELU" => x.f_elu()?,
        "SELU" => x.f_selu()?,
        "CELU" => x.f_celu()?,
        "Mish" => x.f_mish()?,
        "Hardswish" => x.f_hardswish()?,
        "Hardsigmoid" => x.f_hardsigmoid()?,
        "ReLU6" => x.f_relu6()?,
        "Softplus" => x.f_softplus()?,
        "Softsign" => x.f_div(&(x.f_abs()? + 1.0))?,
        "Tanhshrink" => x.f_sub(&x.f_tanh()?)?,
        "LogSigmoid" => x.f_log_sigmoid()?,
        other => {
            return Err(PluginError::invalid_argument(format!(
                "activation {other:?} is not supported (available: {})",
                ACTIVATIONS.join(", ")
            )))
        }
    })
}

/// `cat(features, dim=1)` -> `Linear(C * n, C)` over channels -> activation, where
/// `C = embed_dim[out_index]`. Takes `[B, C_i, H, W]` maps or `[B, C_i]` vectors.
#[derive(Debug)]
pub struct MLPDecoder {
    hidden_layer: nn::Linear,
    activation: String,
    out_channels: i64,
}

impl MLPDecoder {
    /// Builds the decoder under `p` (its parameters are `hidden_layer.*`).
    pub fn new(p: nn::Path, embed_dim: &[i64], cfg: &Config) -> Result<Self> {
        if !ACTIVATIONS.contains(&cfg.activation.as_str()) {
            return Err(PluginError::invalid_argument(format!(
                "MLPDecoder: `activation` {:?} is not a supported torch.nn activation (available: {})",
                cfg.activation,
                ACTIVATIONS.join(", ")
            )));
        }
        let c = embed_dim[py_index(cfg.out_index, embed_dim.len(), "MLPDecoder: `out_index`")?];
        let n = embed_dim.len() as i64;
        Ok(Self {
            hidden_layer: nn::linear(&p / "hidden_layer", c * n, c, Default::default()),
            activation: cfg.activation.clone(),
            out_channels: c,
        })
    }
}

impl Model for MLPDecoder {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        let x = Tensor::f_cat(xs, 1)?;
        match x.dim() {
            4 => {
                // [B, C*n, H, W] -> [B, H, W, C*n] -> linear -> [B, C, H, W]
                let y = self.hidden_layer.forward(&x.f_permute([0, 2, 3, 1])?);
                Ok(vec![
                    activate(&self.activation, &y)?.f_permute([0, 3, 1, 2])?
                ])
            }
            2 => Ok(vec![activate(
                &self.activation,
                &self.hidden_layer.forward(&x),
            )?]),
            _ => Err(PluginError::forward_failed(format!(
                "MLPDecoder: expected 2D or 4D, got {:?}",
                x.size()
            ))),
        }
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.out_channels]
    }
}

/// The `MLPDecoder` registry entry.
pub(crate) fn entry() -> Entry {
    Entry::new(
        "MLPDecoder",
        "Concatenates all features along channels and maps them with one Linear layer and an activation to \
         the width of the map at `out_index` (its out_channels); takes [B, C, H, W] maps or [B, C] vectors.",
        |ctx| {
            let cfg = Config {
                channels: ctx.args.get("channels")?,
                out_dim: ctx.args.get("out_dim")?,
                activation: ctx.args.get("activation")?,
                out_index: ctx.args.get("out_index")?,
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = MLPDecoder::new(vs.root(), &ctx.channels, &cfg)?;
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        },
    )
    .opt("channels", ParamType::INT, json!(100), "stored and unused upstream")
    .opt("out_dim", ParamType::INT, json!(100), "stored and unused upstream")
    .opt("activation", ParamType::STR, json!("ReLU"), "name of a torch.nn activation (ReLU, GELU, SiLU, Tanh, ...)")
    .opt("out_index", ParamType::INT, json!(-1), "whose width is the output width (negative counts from the end)")
    .takes_channels()
}
