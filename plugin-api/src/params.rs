//! Self-description of registry entries: each entry lists its parameters (name, type,
//! default, doc), so the host can print help and validate arguments before any plugin
//! code runs. The same validation runs again inside the plugin (the SDK), so a plugin
//! never sees arguments it did not declare.
use crate::error::{PluginError, Result};
use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde_json::{Map, Value};
use std::fmt;

/// The type of a parameter. A `u8` newtype so later versions can add types.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamType(pub u8);

impl ParamType {
    /// Any JSON value; the entry checks it itself.
    pub const ANY: Self = Self(0);
    /// A boolean.
    pub const BOOL: Self = Self(1);
    /// An integer.
    pub const INT: Self = Self(2);
    /// A number (an integer is accepted too).
    pub const FLOAT: Self = Self(3);
    /// A string.
    pub const STR: Self = Self(4);
    /// A list of integers.
    pub const INT_LIST: Self = Self(5);
    /// A list of numbers.
    pub const FLOAT_LIST: Self = Self(6);
    /// A list of strings.
    pub const STR_LIST: Self = Self(7);
    /// A JSON object.
    pub const DICT: Self = Self(8);
    /// A list of JSON objects.
    pub const DICT_LIST: Self = Self(9);
    /// An integer or a list of integers.
    pub const INT_OR_INT_LIST: Self = Self(10);
    /// Accepted and ignored: the upstream constructor swallows this keyword through
    /// `**kwargs` and never reads it. The host warns, naming it, and drops it before
    /// the entry is built; the entry never sees it.
    pub const IGNORED: Self = Self(11);

    /// The Python-style name shown by `terrahost show`.
    pub fn name(self) -> &'static str {
        // The table is shared with the libtorch-free front, which prints it from a scan.
        common::param_type_name(self.0)
    }

    /// Whether `v` has this type. `null` (Python's `None`) is accepted for every type;
    /// whether the entry accepts `None` is its own business.
    pub fn accepts(self, v: &Value) -> bool {
        let all = |pred: fn(&Value) -> bool| v.as_array().is_some_and(|a| a.iter().all(pred));
        v.is_null()
            || match self {
                Self::BOOL => v.is_boolean(),
                Self::INT => v.is_i64() || v.is_u64(),
                Self::FLOAT => v.is_number(),
                Self::STR => v.is_string(),
                Self::INT_LIST => all(|x| x.is_i64() || x.is_u64()),
                Self::FLOAT_LIST => all(Value::is_number),
                Self::STR_LIST => all(Value::is_string),
                Self::DICT => v.is_object(),
                Self::DICT_LIST => all(Value::is_object),
                Self::INT_OR_INT_LIST => {
                    v.is_i64() || v.is_u64() || all(|x| x.is_i64() || x.is_u64())
                }
                _ => true,
            }
    }
}

impl fmt::Debug for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One parameter of a registry entry.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The keyword, as in the upstream Python signature.
    pub name: RString,
    /// Its type.
    pub ty: ParamType,
    /// The default as JSON text; `None` for a required parameter.
    pub default: ROption<RString>,
    /// One line of help.
    pub doc: RString,
}

impl ParamSpec {
    /// A parameter with a default (given as a JSON value).
    pub fn optional(name: &str, ty: ParamType, default: Value, doc: &str) -> Self {
        Self {
            name: name.into(),
            ty,
            default: ROption::RSome(default.to_string().into()),
            doc: doc.into(),
        }
    }
    /// A parameter that must be given.
    pub fn required(name: &str, ty: ParamType, doc: &str) -> Self {
        Self {
            name: name.into(),
            ty,
            default: ROption::RNone,
            doc: doc.into(),
        }
    }
    /// A keyword the upstream constructor accepts through `**kwargs` and ignores
    /// ([`ParamType::IGNORED`]); `why` says so in `terrahost show`.
    pub fn ignored(name: &str, why: &str) -> Self {
        Self {
            name: name.into(),
            ty: ParamType::IGNORED,
            default: ROption::RSome("null".into()),
            doc: why.into(),
        }
    }
    /// Whether the parameter has no default.
    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }
    /// The default, parsed.
    pub fn default_value(&self) -> Option<Value> {
        self.default
            .as_ref()
            .into_option()
            .and_then(|s| serde_json::from_str(s.as_str()).ok())
    }
}

/// What `describe` returns: an entry's documentation and parameters.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct EntryInfo {
    /// The entry's name inside its source (no prefix).
    pub name: RString,
    /// One paragraph of help.
    pub doc: RString,
    /// Whether the entry takes a channel list first (decoders and necks do), like
    /// `DECODER_REGISTRY.build("FCNDecoder", [32, 64])` in TerraTorch.
    pub takes_channels: bool,
    /// Its keyword parameters, in signature order.
    pub params: RVec<ParamSpec>,
    /// Whether unknown keyword arguments are passed through instead of refused (for
    /// entries that forward `**kwargs` to a documented inner constructor).
    pub accepts_extra: bool,
    /// Whether the entry makes the final prediction itself, as TerraTorch's
    /// `includes_head` of its registry says (true for mmseg's decode heads): a factory
    /// then passes it `num_classes` and adds no head.
    pub includes_head: bool,
}

impl EntryInfo {
    /// The given arguments that this entry accepts and ignores ([`ParamType::IGNORED`]),
    /// in the order given.
    pub fn ignored_in<'a>(&self, args: &'a Map<String, Value>) -> Vec<&'a str> {
        args.keys()
            .filter(|k| {
                self.params
                    .iter()
                    .any(|p| p.ty == ParamType::IGNORED && p.name.as_str() == k.as_str())
            })
            .map(String::as_str)
            .collect()
    }

    /// Checks `args` against the parameters and returns them with defaults filled in.
    /// Ignored parameters ([`ParamType::IGNORED`]) are dropped.
    ///
    /// Errors name the argument: an unknown keyword (with a did-you-mean), a wrong
    /// type, or a missing required one.
    pub fn validate(
        &self,
        qualified: &str,
        args: &Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (key, value) in args {
            match self.params.iter().find(|p| p.name.as_str() == key) {
                Some(p) if !p.ty.accepts(value) => {
                    return Err(PluginError::invalid_argument(format!(
                        "argument `{key}` of `{qualified}` must be {}, got {}",
                        p.ty,
                        describe_json(value)
                    )))
                }
                Some(p) if p.ty == ParamType::IGNORED => continue,
                Some(_) => {}
                None if self.accepts_extra => {}
                None => {
                    let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                    let hint = did_you_mean(key, names.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    return Err(PluginError::invalid_argument(format!(
                        "unknown argument `{key}` for `{qualified}`{hint}; it accepts: {}",
                        if names.is_empty() {
                            "no arguments".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
            }
            out.insert(key.clone(), value.clone());
        }
        for p in self.params.iter().filter(|p| p.ty != ParamType::IGNORED) {
            match out.get(p.name.as_str()) {
                // An explicit `null` is Python's `None`: kept as given, except where
                // the parameter is required.
                Some(Value::Null) if p.is_required() => {
                    return Err(PluginError::invalid_argument(format!(
                        "`{qualified}` needs argument `{}` ({}), got null: {}",
                        p.name, p.ty, p.doc
                    )))
                }
                Some(_) => {}
                None => match p.default_value() {
                    Some(d) => {
                        out.insert(p.name.to_string(), d);
                    }
                    None => {
                        return Err(PluginError::invalid_argument(format!(
                            "`{qualified}` needs argument `{}` ({}): {}",
                            p.name, p.ty, p.doc
                        )))
                    }
                },
            }
        }
        Ok(out)
    }
}

/// What a build receives besides the entry name: the keyword arguments (a JSON object)
/// and, for decoders and necks, the channel list that comes first.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct BuildRequest {
    /// The keyword arguments, as the text of one JSON object.
    pub args: RString,
    /// The channel list of the features that flow in (decoders, necks).
    pub channels: ROption<RVec<i64>>,
}

impl BuildRequest {
    /// A request from parsed parts.
    pub fn new(args: &Map<String, Value>, channels: Option<&[i64]>) -> Self {
        Self {
            args: Value::Object(args.clone()).to_string().into(),
            channels: channels.map(|c| RVec::from(c.to_vec())).into(),
        }
    }
    /// The arguments, parsed. Anything but a JSON object is an invalid argument.
    pub fn parse_args(&self) -> Result<Map<String, Value>> {
        match serde_json::from_str::<Value>(self.args.as_str()) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(PluginError::invalid_argument(format!(
                "arguments must be a JSON object, got {}",
                describe_json(&other)
            ))),
            Err(e) => Err(PluginError::invalid_argument(format!(
                "arguments are not valid JSON: {e}"
            ))),
        }
    }
    /// The channel list, if any.
    pub fn channels(&self) -> Option<Vec<i64>> {
        self.channels.as_ref().into_option().map(|c| c.to_vec())
    }
}

/// "a string \"abc\"", "an integer 3", ... for error messages.
pub fn describe_json(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_owned(),
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    let mut text = v.to_string();
    if text.len() > 60 {
        text.truncate(57);
        text.push_str("...");
    }
    format!("{kind} {text}")
}

pub(crate) use terrahost_common as common;
pub use terrahost_common::{did_you_mean, edit_distance, suggestions};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> EntryInfo {
        EntryInfo {
            name: "FCNDecoder".into(),
            doc: "".into(),
            takes_channels: true,
            accepts_extra: false,
            includes_head: false,
            params: vec![
                ParamSpec::optional("channels", ParamType::INT, json!(256), "width"),
                ParamSpec::required("num_classes", ParamType::INT, "number of classes"),
                ParamSpec::optional("dilations", ParamType::INT_LIST, json!([1, 2]), "rates"),
            ]
            .into(),
        }
    }

    #[test]
    fn fills_defaults_and_keeps_given_values() {
        let args = json!({"num_classes": 3}).as_object().unwrap().clone();
        let out = info().validate("FCNDecoder", &args).unwrap();
        assert_eq!(out["channels"], json!(256));
        assert_eq!(out["num_classes"], json!(3));
        assert_eq!(out["dilations"], json!([1, 2]));
    }

    #[test]
    fn wrong_type_names_the_argument_and_the_type() {
        let args = json!({"num_classes": 3, "channels": "wide"})
            .as_object()
            .unwrap()
            .clone();
        let e = info().validate("FCNDecoder", &args).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::INVALID_ARGUMENT);
        assert!(
            e.message().contains("`channels`") && e.message().contains("int"),
            "{e}"
        );
        assert!(e.message().contains("a string"), "{e}");
    }

    #[test]
    fn unknown_argument_suggests_the_close_one() {
        let args = json!({"num_clases": 3}).as_object().unwrap().clone();
        let e = info().validate("FCNDecoder", &args).unwrap_err();
        assert!(e.message().contains("unknown argument `num_clases`"), "{e}");
        assert!(e.message().contains("did you mean `num_classes`"), "{e}");
    }

    #[test]
    fn missing_required_argument_is_named() {
        let e = info().validate("FCNDecoder", &Map::new()).unwrap_err();
        assert!(e.message().contains("needs argument `num_classes`"), "{e}");
    }

    #[test]
    fn explicit_null_is_kept_as_none_but_not_for_required_arguments() {
        let args = json!({"num_classes": 3, "channels": null})
            .as_object()
            .unwrap()
            .clone();
        let out = info().validate("FCNDecoder", &args).unwrap();
        assert_eq!(out["channels"], Value::Null);
        let args = json!({"num_classes": null}).as_object().unwrap().clone();
        let e = info().validate("FCNDecoder", &args).unwrap_err();
        assert!(
            e.message().contains("`num_classes`") && e.message().contains("null"),
            "{e}"
        );
    }

    #[test]
    fn ignored_arguments_are_named_and_dropped() {
        let mut i = info();
        i.params
            .push(ParamSpec::ignored("in_channels", "swallowed by **kwargs"));
        let args = json!({"num_classes": 3, "in_channels": 6})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(i.ignored_in(&args), vec!["in_channels"]);
        let out = i.validate("FCNDecoder", &args).unwrap();
        assert!(!out.contains_key("in_channels"), "{out:?}");
        assert_eq!(out["num_classes"], json!(3));
        // Not given: not filled in either.
        let out = i
            .validate("FCNDecoder", json!({"num_classes": 3}).as_object().unwrap())
            .unwrap();
        assert!(!out.contains_key("in_channels"));
    }

    #[test]
    fn list_element_types_are_checked() {
        let args = json!({"num_classes": 3, "dilations": [1, "x"]})
            .as_object()
            .unwrap()
            .clone();
        assert!(info().validate("FCNDecoder", &args).is_err());
    }

    #[test]
    fn suggestions_prefer_close_names() {
        let names = ["resnet18", "resnet34", "resnet50", "FCNDecoder"];
        assert_eq!(did_you_mean("resnet19", names), Some("resnet18"));
        assert_eq!(did_you_mean("zzzzzzzz", names), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
