//! Which modules PEFT adapts and which it keeps whole, decided by name exactly as PEFT
//! 0.21 decides it: `check_target_module_exists` (`peft/tuners/tuners_utils.py`) for
//! `target_modules`, `_maybe_include_all_linear_layers` for `"all-linear"`, and
//! `_set_trainable` (`peft/utils/other.py`) for `modules_to_save`.
//!
//! The module tree is read off the backbone's `state_dict` keys (a module is every
//! dotted prefix of a key), since a backbone built by another plugin exposes nothing
//! else. A module is a linear layer when its only tensors are a 2-D `weight` and
//! optionally a 1-D `bias`, and it has no submodules; an `nn.Embedding` (a bare 2-D
//! `weight`) would pass for a bias-free linear, which none of the ViT backbones has.
use regex_automata::meta::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use terrahost_plugin_api::{params::describe_json, PluginError, Result};

/// `target_modules`.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// A list: a module is targeted when its name is in it or ends with `.` + an entry.
    Names(Vec<String>),
    /// A string: a regular expression the whole module name must match (`re.fullmatch`).
    Pattern(String),
    /// `"all-linear"` (any case): every linear layer.
    AllLinear,
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::invalid_argument(format!("peft_config: {}", msg.into()))
}

/// Compiles a Python pattern for `re.match` (`fullmatch = false`, anchored at the start)
/// or `re.fullmatch` (anchored at both ends). Python syntax that Rust's regex engine
/// lacks (look-around, back-references) is refused naming the pattern.
fn compile(pattern: &str, fullmatch: bool, what: &str) -> Result<Regex> {
    let anchored = if fullmatch {
        format!(r"\A(?:{pattern})\z")
    } else {
        format!(r"\A(?:{pattern})")
    };
    Regex::new(&anchored).map_err(|e| {
        invalid(format!(
            "{what} `{pattern}` is not a regular expression terrahost can match \
             (look-around and back-references are not supported): {e}"
        ))
    })
}

impl Targets {
    /// Reads `target_modules`: a list of names or one string (`all-linear` or a regex).
    pub fn from_json(v: &Value) -> Result<Self> {
        match v {
            Value::String(s) if s.to_lowercase() == "all-linear" => Ok(Self::AllLinear),
            Value::String(s) => {
                compile(s, true, "`target_modules`")?;
                Ok(Self::Pattern(s.clone()))
            }
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid(format!(
                        "`target_modules` entries must be module names, got {}",
                        describe_json(other)
                    ))),
                })
                .collect::<Result<_>>()
                .map(Self::Names),
            other => Err(invalid(format!(
                "`target_modules` must be a list of module names or a regex string, got {}",
                describe_json(other)
            ))),
        }
    }

    /// Whether PEFT targets the module `key` (for [`Targets::AllLinear`], whether `key`
    /// is a linear layer: `is_linear`).
    pub fn matches(&self, key: &str, is_linear: bool) -> Result<bool> {
        Ok(match self {
            Self::AllLinear => is_linear,
            Self::Pattern(p) => compile(p, true, "`target_modules`")?.is_match(key),
            Self::Names(names) => {
                names.iter().any(|n| n == key)
                    || names.iter().any(|n| key.ends_with(&format!(".{n}")))
            }
        })
    }
}

/// PEFT never adapts a module inside (or equal to) one of `modules_to_save`: a name
/// with a component matching `m` (`re.match(rf"(^|.*\.){m}($|\..*)", key)`, `m` taken
/// as a regex as PEFT does).
pub fn excluded_by_modules_to_save(modules_to_save: &[String], key: &str) -> Result<bool> {
    for m in modules_to_save {
        let re = compile(
            &format!(r"(^|.*\.){m}($|\..*)"),
            false,
            "`modules_to_save` entry",
        )?;
        if re.is_match(key) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `modules_to_save` keeps the module `key` whole: PEFT's plain
/// `key.endswith(target_key)`, without a dot (so `norm` also matches `prenorm`).
/// PEFT runs this over the module names after the LoRA layers are in place, which adds
/// `base_layer`, `lora_A`, `lora_A.default`, ...; terrahost matches the names before,
/// which differs only for entries such as `default` or `lora_A` that PEFT itself refuses
/// or that would wrap its own adapter layers.
pub fn saved(modules_to_save: &[String], key: &str) -> bool {
    modules_to_save.iter().any(|m| key.ends_with(m.as_str()))
}

/// A module of the tree read off `state_dict` keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModuleInfo {
    /// Its own tensors: local name (`weight`) and shape.
    pub tensors: BTreeMap<String, Vec<i64>>,
    /// Whether any key lies deeper below it.
    pub has_children: bool,
}

impl ModuleInfo {
    /// `(out_features, in_features)` when this is a linear layer (see the module docs).
    pub fn linear(&self) -> Option<(i64, i64)> {
        if self.has_children {
            return None;
        }
        let w = self.tensors.get("weight")?;
        let bias_ok = match self.tensors.get("bias") {
            None => self.tensors.len() == 1,
            Some(b) => self.tensors.len() == 2 && b.len() == 1 && b.first() == w.first(),
        };
        match w[..] {
            [o, i] if bias_ok => Some((o, i)),
            _ => None,
        }
    }
}

/// The module tree of `keys` (name and shape of every tensor), by module name; the root
/// module is `""`, as in `named_modules()`.
pub fn module_tree<'a>(
    keys: impl IntoIterator<Item = (&'a str, &'a [i64])>,
) -> BTreeMap<String, ModuleInfo> {
    let mut tree: BTreeMap<String, ModuleInfo> = BTreeMap::new();
    for (key, shape) in keys {
        let (module, local) = key.rsplit_once('.').unwrap_or(("", key));
        tree.entry(module.to_owned())
            .or_default()
            .tensors
            .insert(local.to_owned(), shape.to_vec());
        // Every ancestor is a container.
        let mut rest = module;
        loop {
            let parent = rest.rsplit_once('.').map_or("", |(p, _)| p);
            if rest.is_empty() {
                break;
            }
            tree.entry(parent.to_owned()).or_default().has_children = true;
            rest = parent;
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn targets(v: Value) -> Targets {
        Targets::from_json(&v).unwrap()
    }

    // Cases from PEFT's own behaviour (tests/test_tuners_utils.py
    // `REGEX_TEST_CASES`, checked against peft 0.21.2's check_target_module_exists).
    #[test]
    fn names_match_exactly_or_as_a_dotted_suffix() {
        let t = targets(json!(["q", "attn.proj"]));
        assert!(t.matches("q", true).unwrap());
        assert!(t.matches("blocks.0.attn.q", true).unwrap());
        assert!(
            !t.matches("blocks.0.attn.qkv", true).unwrap(),
            "no bare suffix"
        );
        assert!(!t.matches("blocks.0.attnq", true).unwrap());
        assert!(t.matches("blocks.3.attn.proj", true).unwrap());
        assert!(!t.matches("patch_embed.proj", true).unwrap());
        assert!(!t.matches("attn", true).unwrap());
    }

    #[test]
    fn a_string_is_a_full_match_regex() {
        let t = targets(json!(r"blocks\.\d+\.(attn\.qkv|mlp\.fc2)"));
        assert!(t.matches("blocks.0.attn.qkv", true).unwrap());
        assert!(t.matches("blocks.11.mlp.fc2", true).unwrap());
        assert!(
            !t.matches("encoder.blocks.0.attn.qkv", true).unwrap(),
            "anchored at the start"
        );
        assert!(
            !t.matches("blocks.0.attn.qkv.q_linear", true).unwrap(),
            "anchored at the end"
        );
        // A plain name as a string is a regex too: only the exact name matches.
        let t = targets(json!("qkv"));
        assert!(t.matches("qkv", true).unwrap());
        assert!(!t.matches("blocks.0.attn.qkv", true).unwrap());
        let t = targets(json!(".*qkv"));
        assert!(t.matches("blocks.0.attn.qkv", true).unwrap());
    }

    #[test]
    fn all_linear_takes_every_linear_layer() {
        let t = targets(json!("ALL-LINEAR"));
        assert_eq!(t, Targets::AllLinear);
        assert!(t.matches("anything", true).unwrap());
        assert!(!t.matches("norm", false).unwrap());
    }

    #[test]
    fn bad_targets_are_refused() {
        let e = Targets::from_json(&json!(r"(?<=blocks)\.qkv")).unwrap_err();
        assert!(e.message().contains("(?<=blocks)"), "{e}");
        let e = Targets::from_json(&json!(3)).unwrap_err();
        assert!(e.message().contains("target_modules"), "{e}");
    }

    #[test]
    fn modules_to_save_exclude_by_component_and_keep_by_plain_suffix() {
        let m = vec!["norm".to_owned()];
        assert!(excluded_by_modules_to_save(&m, "norm").unwrap());
        assert!(excluded_by_modules_to_save(&m, "encoder.norm").unwrap());
        assert!(excluded_by_modules_to_save(&m, "norm.inner").unwrap());
        assert!(!excluded_by_modules_to_save(&m, "blocks.0.norm1").unwrap());
        assert!(saved(&m, "norm"));
        assert!(saved(&m, "blocks.0.prenorm"), "PEFT's endswith has no dot");
        assert!(!saved(&m, "blocks.0.norm1"));
    }

    #[test]
    fn the_tree_knows_linears_and_containers() {
        let keys = [
            ("blocks.0.attn.qkv.weight", vec![96, 32]),
            ("blocks.0.attn.qkv.bias", vec![96]),
            ("blocks.0.norm1.weight", vec![32]),
            ("patch_embed.proj.weight", vec![32, 6, 1, 4, 4]),
            ("cls_token", vec![1, 1, 32]),
        ];
        let tree = module_tree(keys.iter().map(|(k, s)| (*k, s.as_slice())));
        assert_eq!(tree["blocks.0.attn.qkv"].linear(), Some((96, 32)));
        assert_eq!(tree["blocks.0.attn"].linear(), None);
        assert!(tree["blocks.0.attn"].has_children);
        assert!(tree[""].has_children);
        assert!(tree[""].tensors.contains_key("cls_token"));
        assert_eq!(tree["blocks.0.norm1"].linear(), None);
        assert_eq!(tree["patch_embed.proj"].linear(), None);
    }
}
