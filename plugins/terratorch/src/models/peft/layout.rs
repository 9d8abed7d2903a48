//! The `state_dict` layout of PEFT's model around a backbone, computed from the
//! backbone's own keys: TerraTorch's `replace_qkv` (QKVSep), then PEFT's LoRA layers and
//! `ModulesToSaveWrapper`s, all under `base_model.model.`.
//!
//! | backbone key | PEFT key |
//! |---|---|
//! | `blocks.0.attn.qkv.weight` (replace_qkv) | `...qkv.q_linear.weight`, `k_linear`, `v_linear` (row blocks) |
//! | `M.weight`, `M.bias` of a LoRA target `M` | `M.base_layer.weight`, `M.base_layer.bias`, plus `M.lora_A.default.weight` `[r, in]` and `M.lora_B.default.weight` `[out, r]` |
//! | `S.x` of a module `S` kept whole | `S.modules_to_save.default.x` (the copy that runs) and `S.original_module.x` (kept, unused) |
use super::config::LoraSpec;
use super::targets::{excluded_by_modules_to_save, module_tree, saved, Targets};
use std::collections::BTreeSet;
use terrahost_plugin_api::{PluginError, Result};

/// The prefix PEFT's `PeftModel` puts before the wrapped model's keys.
pub const PREFIX: &str = "base_model.model.";

/// Where the tensor behind a PEFT key lives.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A backbone tensor, whole.
    Inner(String),
    /// Rows `start..start + len` of a backbone tensor (QKVSep's q/k/v of a fused qkv).
    Rows {
        /// The backbone key.
        key: String,
        /// First row.
        start: i64,
        /// Number of rows.
        len: i64,
    },
    /// `lora_A` of adapter `i` of [`Layout::adapters`].
    LoraA(usize),
    /// `lora_B` of adapter `i`.
    LoraB(usize),
    /// `original_module` copy of a backbone tensor (loaded, never run).
    Original(String),
}

/// One key of the PEFT model.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The `state_dict` key (with [`PREFIX`]).
    pub name: String,
    /// A parameter (else a buffer).
    pub param: bool,
    /// Where it lives.
    pub source: Source,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// One LoRA adapter: the backbone weight it adds to, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSite {
    /// The PEFT module name (after QKVSep), for messages.
    pub module: String,
    /// The backbone key of the weight.
    pub weight: String,
    /// Row block of that weight (QKVSep), or `None` for all rows.
    pub rows: Option<(i64, i64)>,
    /// `in_features`.
    pub in_features: i64,
    /// `out_features` of this adapter (the block's rows).
    pub out_features: i64,
}

/// The whole layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Every key, sorted.
    pub entries: Vec<Entry>,
    /// The adapters, in module order.
    pub adapters: Vec<AdapterSite>,
}

/// A backbone tensor: key, shape, parameter or buffer.
pub type InnerTensor = (String, Vec<i64>, bool);

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("peft_config: {}", msg.into()))
}

/// A tensor as PEFT sees it before the LoRA and modules_to_save renames.
struct Viewed {
    name: String,
    shape: Vec<i64>,
    param: bool,
    source: Source,
}

/// QKVSep: each linear whose module name ends with `.{suffix}` becomes three linears
/// `q_linear`, `k_linear`, `v_linear` over its row blocks.
fn split_qkv(inner: &[InnerTensor], suffix: Option<&str>) -> Result<Vec<Viewed>> {
    let tree = module_tree(inner.iter().map(|(k, s, _)| (k.as_str(), s.as_slice())));
    let mut split = BTreeSet::new();
    if let Some(suffix) = suffix {
        let dotted = format!(".{suffix}");
        for (name, info) in &tree {
            if !name.ends_with(&dotted) {
                continue;
            }
            match info.linear() {
                Some((o, i)) if o == 3 * i => {
                    split.insert(name.clone());
                }
                Some((o, i)) => {
                    return Err(invalid(format!(
                        "replace_qkv: `{name}` has {o} output features for {i} inputs; the output features must be \
                         3 times the input features for Q, K, V separation"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "replace_qkv: `{name}` is not a linear layer; only a qkv nn.Linear can be replaced"
                    )))
                }
            }
        }
        if split.is_empty() {
            terrahost_plugin_api::warn!(
                "peft_config: replace_qkv was `{suffix}` but no module was found ending with that pattern"
            );
        }
    }
    let mut out = Vec::new();
    for (key, shape, param) in inner {
        let (module, local) = key.rsplit_once('.').unwrap_or(("", key));
        if !split.contains(module) {
            out.push(Viewed {
                name: key.clone(),
                shape: shape.clone(),
                param: *param,
                source: Source::Inner(key.clone()),
            });
            continue;
        }
        let d = shape[0] / 3;
        for (i, part) in ["q_linear", "k_linear", "v_linear"].iter().enumerate() {
            let mut s = shape.clone();
            s[0] = d;
            out.push(Viewed {
                name: format!("{module}.{part}.{local}"),
                shape: s,
                param: *param,
                source: Source::Rows {
                    key: key.clone(),
                    start: i as i64 * d,
                    len: d,
                },
            });
        }
    }
    Ok(out)
}

/// The layout of PEFT's model around a backbone with the tensors `inner`.
pub fn layout(inner: &[InnerTensor], spec: &LoraSpec) -> Result<Layout> {
    let viewed = split_qkv(inner, spec.replace_qkv.as_deref())?;
    let tree = module_tree(viewed.iter().map(|v| (v.name.as_str(), v.shape.as_slice())));

    // LoRA targets (check_target_module_exists, then the layer-type check of
    // `_create_new_module`).
    let mut targets: Vec<String> = Vec::new();
    for (name, info) in &tree {
        if excluded_by_modules_to_save(&spec.modules_to_save, name)? {
            continue;
        }
        let linear = info.linear();
        if !spec.targets.matches(name, linear.is_some())? {
            continue;
        }
        if linear.is_none() {
            let what = if name.is_empty() {
                "the backbone itself"
            } else {
                name.as_str()
            };
            return Err(invalid(format!(
                "target_modules selects `{what}`, which is not a linear layer; terrahost adapts linear layers only \
                 (PEFT's LoRA for convolutions and embeddings is not supported)"
            )));
        }
        targets.push(name.clone());
    }
    if targets.is_empty() {
        let shown = match &spec.targets {
            Targets::Names(n) => format!("{n:?}"),
            Targets::Pattern(p) => format!("`{p}`"),
            Targets::AllLinear => "all-linear".to_owned(),
        };
        return Err(invalid(format!(
            "target modules {shown} not found in the base model; check the target modules (PEFT raises the same)"
        )));
    }

    // modules_to_save (_set_trainable): the outermost match of each branch.
    let mut kept: Vec<String> = Vec::new();
    for name in tree.keys().filter(|n| !n.is_empty()) {
        if !saved(&spec.modules_to_save, name) {
            continue;
        }
        if let Some(outer) = kept.iter().find(|k| name.starts_with(&format!("{k}."))) {
            return Err(invalid(format!(
                "modules_to_save keeps both `{outer}` and its submodule `{name}` whole; PEFT cannot wrap both"
            )));
        }
        if let Some(t) = targets
            .iter()
            .find(|t| *t == name || t.starts_with(&format!("{name}.")))
        {
            return Err(invalid(format!(
                "`{t}` is both a LoRA target and inside `{name}`, which modules_to_save keeps whole"
            )));
        }
        kept.push(name.clone());
    }
    for m in &spec.modules_to_save {
        if !kept.iter().any(|k| k.ends_with(m.as_str())) {
            terrahost_plugin_api::warn!(
                "peft_config: modules_to_save entry `{m}` matches no module of the backbone; it has no effect"
            );
        }
    }

    let mut entries = Vec::new();
    let mut adapters = Vec::new();
    for v in viewed {
        let (module, local) = v.name.rsplit_once('.').unwrap_or(("", &v.name));
        if targets.iter().any(|t| t == module) {
            entries.push(Entry {
                name: format!("{PREFIX}{module}.base_layer.{local}"),
                param: v.param,
                source: v.source.clone(),
                shape: v.shape.clone(),
            });
            if local == "weight" {
                let (weight, rows) = match &v.source {
                    Source::Inner(k) => (k.clone(), None),
                    Source::Rows { key, start, len } => (key.clone(), Some((*start, *len))),
                    other => {
                        return Err(PluginError::build_failed(format!(
                            "peft: the weight of `{module}` comes from {other:?}, not from the backbone"
                        )))
                    }
                };
                let i = adapters.len();
                adapters.push(AdapterSite {
                    module: module.to_owned(),
                    weight,
                    rows,
                    in_features: v.shape[1],
                    out_features: v.shape[0],
                });
                let r = spec.r;
                entries.push(Entry {
                    name: format!("{PREFIX}{module}.lora_A.default.weight"),
                    param: true,
                    source: Source::LoraA(i),
                    shape: vec![r, v.shape[1]],
                });
                entries.push(Entry {
                    name: format!("{PREFIX}{module}.lora_B.default.weight"),
                    param: true,
                    source: Source::LoraB(i),
                    shape: vec![v.shape[0], r],
                });
            }
            continue;
        }
        let keeper = kept.iter().find(|k| v.name.starts_with(&format!("{k}.")));
        match keeper {
            Some(k) => {
                let rest = &v.name[k.len() + 1..];
                let Source::Inner(key) = &v.source else {
                    return Err(invalid(format!(
                        "`{k}` is kept whole by modules_to_save but holds a split qkv (`{}`); terrahost keeps \
                         whole modules of the backbone only",
                        v.name
                    )));
                };
                entries.push(Entry {
                    name: format!("{PREFIX}{k}.modules_to_save.default.{rest}"),
                    param: v.param,
                    source: v.source.clone(),
                    shape: v.shape.clone(),
                });
                entries.push(Entry {
                    name: format!("{PREFIX}{k}.original_module.{rest}"),
                    param: v.param,
                    source: Source::Original(key.clone()),
                    shape: v.shape.clone(),
                });
            }
            None => entries.push(Entry {
                name: format!("{PREFIX}{}", v.name),
                param: v.param,
                source: v.source,
                shape: v.shape,
            }),
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Layout { entries, adapters })
}
