//! Typed access to validated keyword arguments, for the code inside plugins.
use crate::error::{PluginError, Result};
use crate::params::describe_json;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Keyword arguments after validation: every declared parameter is present (given or
/// defaulted). Getters name the argument in their errors.
#[derive(Clone, Debug, Default)]
pub struct Args {
    entry: String,
    map: Map<String, Value>,
}

impl Args {
    /// Wraps validated arguments of entry `entry`.
    pub fn new(entry: impl Into<String>, map: Map<String, Value>) -> Self {
        Self {
            entry: entry.into(),
            map,
        }
    }

    /// The entry these arguments are for.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// The raw map.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The raw value of `name` (`None` if absent or null).
    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// `name`, deserialized; an error if it is absent or has the wrong shape.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        match self.raw(name) {
            Some(v) => self.parse(name, v),
            None => Err(PluginError::invalid_argument(format!(
                "`{}` needs argument `{name}`",
                self.entry
            ))),
        }
    }

    /// `name`, deserialized, or `None` when absent or null.
    pub fn opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.raw(name).map(|v| self.parse(name, v)).transpose()
    }

    /// `name`, or `default` when absent or null.
    pub fn get_or<T: DeserializeOwned>(&self, name: &str, default: T) -> Result<T> {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    fn parse<T: DeserializeOwned>(&self, name: &str, v: &Value) -> Result<T> {
        serde_json::from_value(v.clone()).map_err(|e| {
            PluginError::invalid_argument(format!(
                "argument `{name}` of `{}` has the wrong type: {e}; got {}",
                self.entry,
                describe_json(v)
            ))
        })
    }

    /// A range check that names the argument.
    pub fn ensure(&self, ok: bool, name: &str, what: impl std::fmt::Display) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(PluginError::invalid_argument(format!(
                "argument `{name}` of `{}` {what}",
                self.entry
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_getters_name_the_argument() {
        let a = Args::new(
            "X",
            json!({"n": 3, "s": "a", "l": [1, 2]})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(a.get::<i64>("n").unwrap(), 3);
        assert_eq!(a.get::<Vec<i64>>("l").unwrap(), vec![1, 2]);
        assert_eq!(a.get_or::<i64>("missing", 7).unwrap(), 7);
        let e = a.get::<i64>("s").unwrap_err();
        assert!(e.message().contains("`s`"), "{e}");
        let e = a.get::<i64>("missing").unwrap_err();
        assert!(e.message().contains("`missing`"), "{e}");
    }
}
