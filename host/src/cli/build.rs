//! `terrahost build`.
use serde_json::{json, Map, Value};
use std::io::Write;
use terrahost::{api::params::describe_json, Host, HostError};

/// Parses `--channels 32,64,128`.
pub fn parse_channels(text: &str) -> Result<Vec<i64>, HostError> {
    text.split(',')
        .map(|c| {
            c.trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    HostError::Usage(format!(
                        "--channels: `{}` is not a positive integer (expected e.g. 64,128,256)",
                        c.trim()
                    ))
                })
        })
        .collect()
}

/// Parses `--args '{...}'` into a JSON object.
pub fn parse_args(text: Option<&str>) -> Result<Map<String, Value>, HostError> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(HostError::Usage(format!(
            "--args must be a JSON object like '{{\"num_classes\": 3}}', got {}",
            describe_json(&other)
        ))),
        Err(e) => Err(HostError::Usage(format!(
            "--args is not valid JSON ({e}); write it like '{{\"num_classes\": 3}}'"
        ))),
    }
}

pub fn run(
    host: &Host,
    registry: &str,
    name: &str,
    channels: Option<&str>,
    args: Option<&str>,
    json: bool,
) -> Result<(), HostError> {
    let channels = channels.map(parse_channels).transpose()?;
    let args = parse_args(args)?;
    let start = std::time::Instant::now();
    let module = host.build(registry, name, &args, channels.as_deref())?;
    let elapsed = start.elapsed();
    let state = module.state_dict();
    let params: i64 = module
        .module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum();
    if json {
        return crate::cli::print_json(&json!({
            "registry": registry,
            "name": name,
            "resolved": module.label(),
            "parameters": params,
            "tensors": state.len(),
            "out_channels": module.out_channels(),
            "includes_head": module.includes_head(),
            "build_ms": elapsed.as_secs_f64() * 1e3,
        }));
    }
    let print = || -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "built {registry} {} in {:.1} ms",
            module.label(),
            elapsed.as_secs_f64() * 1e3
        )?;
        writeln!(out, "  parameters:    {params}")?;
        writeln!(
            out,
            "  state_dict:    {} tensors (parameters and buffers)",
            state.len()
        )?;
        writeln!(out, "  out_channels:  {:?}", module.out_channels())?;
        writeln!(out, "  includes_head: {}", module.includes_head())?;
        out.flush()
    };
    print().map_err(crate::cli::stdout_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_validated() {
        assert_eq!(parse_channels("32, 64,128").unwrap(), vec![32, 64, 128]);
        let e = parse_channels("32,x").unwrap_err().to_string();
        assert!(e.contains("`x`"), "{e}");
        assert!(parse_channels("0").is_err());
    }

    #[test]
    fn args_must_be_an_object() {
        assert!(parse_args(Some("[1]"))
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert!(parse_args(Some("{bad"))
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert_eq!(parse_args(Some("{\"a\": 1}")).unwrap()["a"], 1);
    }
}
