//! `terrahost show`.
use serde_json::json;
use terrahost::{Host, HostError};

pub fn run(host: &Host, registry: &str, name: &str, json: bool) -> Result<(), HostError> {
    let (qualified, info) = host.describe(registry, name)?;
    if json {
        let params: Vec<_> = info
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name.as_str(),
                    "type": p.ty.name(),
                    "required": p.is_required(),
                    "default": p.default_value(),
                    "doc": p.doc.as_str(),
                })
            })
            .collect();
        crate::cli::print_json(&json!({
            "registry": registry,
            "name": qualified,
            "doc": info.doc.as_str(),
            "takes_channels": info.takes_channels,
            "accepts_extra": info.accepts_extra,
            "parameters": params,
        }));
        return Ok(());
    }
    println!("{registry} {qualified}");
    if !info.doc.is_empty() {
        println!("  {}", info.doc);
    }
    if info.takes_channels {
        println!("  takes the channel list of its input features first (--channels)");
    }
    println!("  parameters:");
    if info.params.is_empty() {
        println!("    (none)");
    }
    let width = info.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in info.params.iter() {
        let default = match p.default.as_ref().into_option() {
            Some(d) => format!("= {d}"),
            None => "(required)".to_owned(),
        };
        println!(
            "    {:<width$}  {:<16} {:<24} {}",
            p.name,
            p.ty.name(),
            default,
            p.doc
        );
    }
    if info.accepts_extra {
        println!("    further keyword arguments are passed through");
    }
    Ok(())
}
