//! TerraTorch's `peft_config` dict (`_validate_terratorch_peft_config` of
//! `terratorch/models/peft_utils.py`) and the keyword arguments of PEFT's `LoraConfig`
//! that terrahost reproduces at inference.
use super::targets::Targets;
use serde_json::{Map, Value};
use terrahost_plugin_api::{params::describe_json, PluginError, Result};

/// The `peft_config` key, terrahost's own, that keeps the adapters separate. TerraTorch
/// reads only `method`, `replace_qkv` and `peft_config_kwargs` and ignores the rest, so
/// a config carrying it still runs there unchanged.
pub const MERGE_KEY: &str = "merge";

/// The keys of `peft_config`.
const KEYS: [&str; 4] = ["method", "replace_qkv", "peft_config_kwargs", MERGE_KEY];

/// The `LoraConfig` keywords terrahost reproduces.
const LORA_KWARGS: [&str; 7] = [
    "target_modules",
    "r",
    "lora_alpha",
    "lora_dropout",
    "bias",
    "modules_to_save",
    "use_rslora",
];

/// A validated LoRA `peft_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// `replace_qkv`: the suffix of the fused qkv linears to split (QKVSep).
    pub replace_qkv: Option<String>,
    /// `target_modules`.
    pub targets: Targets,
    /// `r`, the adapters' rank.
    pub r: i64,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout` (training mode of the unmerged path only).
    pub dropout: f64,
    /// `bias` (`none`, `all`, `lora_only`): which biases train; no effect on the forward.
    pub bias: String,
    /// `modules_to_save`: suffixes of modules kept whole (PEFT's `ModulesToSaveWrapper`).
    pub modules_to_save: Vec<String>,
    /// `use_rslora`: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Fold the adapters into the base weights (the default) or run them separately.
    pub merge: bool,
}

impl LoraSpec {
    /// PEFT's `scaling`: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("peft_config: {}", msg.into()))
}

/// Reads `peft_config`. Only `method: LORA` is built; any other method is refused naming
/// it, and so is a `peft_config_kwargs` keyword outside the ones terrahost reproduces.
/// Keys of `peft_config` that TerraTorch ignores are reported as warnings.
pub fn parse(value: &Value) -> Result<LoraSpec> {
    let Value::Object(cfg) = value else {
        return Err(invalid(format!(
            "must be a dict with `method`, got {}",
            describe_json(value)
        )));
    };
    let method = match cfg.get("method") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(invalid("`method` is required (e.g. LORA)")),
        Some(other) => {
            return Err(invalid(format!(
                "`method` must be a string, got {}",
                describe_json(other)
            )))
        }
    };
    if method != "LORA" {
        return Err(invalid(format!(
            "PEFT method `{method}` is not supported; terrahost builds `LORA` only"
        )));
    }
    for key in cfg.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        terrahost_plugin_api::warn!(
            "peft_config: key `{key}` is ignored (TerraTorch reads only method, replace_qkv and peft_config_kwargs)"
        );
    }
    let replace_qkv = match cfg.get("replace_qkv") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(invalid(format!(
                "`replace_qkv` must be the qkv linears' name suffix (e.g. qkv), got {}",
                describe_json(other)
            )))
        }
    };
    let merge = match cfg.get(MERGE_KEY) {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "`{MERGE_KEY}` must be true or false, got {}",
                describe_json(other)
            )))
        }
    };
    let empty = Map::new();
    let kwargs = match cfg.get("peft_config_kwargs") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(invalid(format!(
                "`peft_config_kwargs` must be a dict, got {}",
                describe_json(other)
            )))
        }
    };
    if let Some(k) = kwargs.keys().find(|k| !LORA_KWARGS.contains(&k.as_str())) {
        return Err(invalid(format!(
            "LoraConfig keyword `{k}` is not supported; terrahost reproduces {}",
            LORA_KWARGS.join(", ")
        )));
    }
    lora_kwargs(kwargs, replace_qkv, merge)
}

fn lora_kwargs(
    kwargs: &Map<String, Value>,
    replace_qkv: Option<String>,
    merge: bool,
) -> Result<LoraSpec> {
    let get = |k: &str| kwargs.get(k).filter(|v| !v.is_null());
    let wrong = |k: &str, what: &str, v: &Value| {
        invalid(format!(
            "`peft_config_kwargs.{k}` must be {what}, got {}",
            describe_json(v)
        ))
    };
    let targets = match get("target_modules") {
        // PEFT knows default targets only for the transformers architectures it lists.
        None => {
            return Err(invalid(
                "`peft_config_kwargs.target_modules` is required: PEFT has no default targets for these models",
            ))
        }
        Some(v) => Targets::from_json(v)?,
    };
    // LoraConfig's defaults: r=8, lora_alpha=8, lora_dropout=0.0, bias="none".
    let r = match get("r") {
        None => 8,
        Some(v) => match v.as_i64() {
            Some(r) if r > 0 => r,
            _ => return Err(wrong("r", "a positive integer", v)),
        },
    };
    let alpha = match get("lora_alpha") {
        None => 8.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| wrong("lora_alpha", "a number", v))?,
    };
    let dropout = match get("lora_dropout") {
        None => 0.0,
        Some(v) => match v.as_f64() {
            Some(p) if (0.0..1.0).contains(&p) => p,
            _ => return Err(wrong("lora_dropout", "a number in [0, 1)", v)),
        },
    };
    let bias = match get("bias") {
        None => "none".to_owned(),
        Some(Value::String(s)) if ["none", "all", "lora_only"].contains(&s.as_str()) => s.clone(),
        Some(v) => return Err(wrong("bias", "one of none, all, lora_only", v)),
    };
    let modules_to_save = match get("modules_to_save") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong("modules_to_save", "a list of module names", other)),
            })
            .collect::<Result<_>>()?,
        Some(v) => return Err(wrong("modules_to_save", "a list of module names", v)),
    };
    let use_rslora = match get("use_rslora") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong("use_rslora", "true or false", v)),
    };
    Ok(LoraSpec {
        replace_qkv,
        targets,
        r,
        alpha,
        dropout,
        bias,
        modules_to_save,
        use_rslora,
        merge,
    })
}
