//! Parsing the YAML users give (configs, `--set` values) into JSON values, with the two
//! checks serde_yaml does not make for us:
//! - nesting: flow collections (`[[[[...`) nested deeper than [`MAX_DEPTH`] are refused
//!   before parsing. libyaml's scanner is quadratic in that depth: a 200 KB config
//!   nested 10^5 deep took minutes before serde_yaml's own recursion limit answered.
//!   (Block nesting reaches that limit quickly, and is left to it.)
//! - non-finite numbers: `.nan`, `.inf` and `-.inf` have no JSON value and would
//!   silently become `null`; they are refused with the key that holds them.
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The deepest nesting of flow collections accepted (serde_yaml's own recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Parses `text` into a JSON value. Errors are one line (without the `what:` prefix
/// the caller adds). A key given twice in one mapping keeps its last value, as PyYAML
/// (and so TerraTorch) reads it: TerraTorch's own configs have such keys.
pub fn parse(text: &str) -> Result<Value, String> {
    check_flow_depth(text)?;
    let de = serde_yaml::Deserializer::from_str(text);
    Node {
        path: &mut Vec::new(),
    }
    .deserialize(de)
    .map_err(|e| e.to_string())
}

/// Refuses text whose `[`/`{` nesting goes deeper than [`MAX_DEPTH`]. Brackets inside
/// quoted strings are counted too: a config with more than 128 unclosed brackets in
/// its strings is not one anybody writes.
fn check_flow_depth(text: &str) -> Result<(), String> {
    let mut depth = 0usize;
    for (line, l) in text.lines().enumerate() {
        for c in l.chars() {
            match c {
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(format!(
                            "collections nested more than {MAX_DEPTH} deep (line {}); a TerraTorch config needs a handful of levels",
                            line + 1
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// One node of the document, deserialized straight into a JSON value (no
/// intermediate YAML tree, whose mappings refuse repeated keys), with the path of keys
/// that leads to it for the error on a non-finite number.
struct Node<'p> {
    path: &'p mut Vec<String>,
}

impl Node<'_> {
    fn at(&self) -> String {
        if self.path.is_empty() {
            "(top level)".to_owned()
        } else {
            self.path.join(".")
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value that JSON can hold")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(E::custom(format!(
                "`{}` is {}; terrahost takes finite numbers only (YAML's .nan and .inf have no JSON value)",
                self.at(),
                if v.is_nan() { ".nan" } else if v > 0.0 { ".inf" } else { "-.inf" }
            ))),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.push(items.len().to_string());
            let item = seq.next_element_seed(Node {
                path: &mut *self.path,
            });
            self.path.pop();
            match item? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.path.push(key.clone());
            let value = map.next_value_seed(Node {
                path: &mut *self.path,
            });
            self.path.pop();
            // A repeated key: the last value wins, as in PyYAML.
            object.insert(key, value?);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_at_once() {
        let text = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = std::time::Instant::now();
        let e = parse(&text).unwrap_err();
        assert!(e.contains("nested more than 128"), "{e}");
        assert!(t.elapsed().as_secs() < 5);
        assert!(parse(&format!("a: {}1{}", "[".repeat(20), "]".repeat(20))).is_ok());
    }

    #[test]
    fn nan_and_inf_are_refused_with_their_key() {
        let e = parse("model:\n  init_args:\n    x: .nan\n").unwrap_err();
        assert!(e.contains("`model.init_args.x` is .nan"), "{e}");
        let e = parse("means: [1.0, -.inf]\n").unwrap_err();
        assert!(e.contains("`means.1` is -.inf"), "{e}");
        assert_eq!(parse("a: 1.5\n").unwrap(), serde_json::json!({"a": 1.5}));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_pyyaml_does() {
        // TerraTorch's integrationtests/configs/test_prithvi_swinL_model_factory_config.yaml
        // gives `trainer.max_epochs` twice.
        let v = parse("trainer:\n  max_epochs: 1\n  devices: 1\n  max_epochs: 3\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"trainer": {"max_epochs": 3, "devices": 1}})
        );
        assert_eq!(
            parse("a: ~\nb: [1, x, true]\nc: {d: 2}\n").unwrap(),
            serde_json::json!({"a": null, "b": [1, "x", true], "c": {"d": 2}})
        );
    }
}
