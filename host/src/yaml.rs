//! Parsing the YAML users give (configs, `--set` values) into JSON values, with the two
//! checks serde_yaml does not make for us:
//! - nesting: flow collections (`[[[[...`) nested deeper than [`MAX_DEPTH`] are refused
//!   before parsing. libyaml's scanner is quadratic in that depth: a 200 KB config
//!   nested 10^5 deep took minutes before serde_yaml's own recursion limit answered.
//!   (Block nesting reaches that limit quickly, and is left to it.)
//! - non-finite numbers: `.nan`, `.inf` and `-.inf` have no JSON value and would
//!   silently become `null`; they are refused with the key that holds them.
use serde_json::Value;

/// The deepest nesting of flow collections accepted (serde_yaml's own recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Parses `text` into a JSON value. Errors are one line (without the `what:` prefix
/// the caller adds).
pub fn parse(text: &str) -> Result<Value, String> {
    check_flow_depth(text)?;
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    check_finite(&yaml, &mut Vec::new())?;
    serde_yaml::from_str(text).map_err(|e| e.to_string())
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

fn check_finite(v: &serde_yaml::Value, path: &mut Vec<String>) -> Result<(), String> {
    match v {
        serde_yaml::Value::Number(n) => match n.as_f64() {
            Some(f) if !f.is_finite() => Err(format!(
                "`{}` is {}; terrahost takes finite numbers only (YAML's .nan and .inf have no JSON value)",
                if path.is_empty() { "(top level)".to_owned() } else { path.join(".") },
                if f.is_nan() { ".nan" } else if f > 0.0 { ".inf" } else { "-.inf" }
            )),
            _ => Ok(()),
        },
        serde_yaml::Value::Sequence(s) => {
            for (i, x) in s.iter().enumerate() {
                path.push(i.to_string());
                check_finite(x, path)?;
                path.pop();
            }
            Ok(())
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, x) in m {
                path.push(match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                });
                check_finite(x, path)?;
                path.pop();
            }
            Ok(())
        }
        serde_yaml::Value::Tagged(t) => check_finite(&t.value, path),
        _ => Ok(()),
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
}
