//! `terrahost plugins`.
use serde_json::json;
use std::path::{Path, PathBuf};
use terrahost::{Host, HostError};

pub fn run(
    host: &Host,
    dirs: &[PathBuf],
    cache: Option<&Path>,
    json: bool,
) -> Result<(), HostError> {
    let loaded: Vec<_> = host
        .plugins()
        .iter()
        .map(|p| {
            json!({
                "name": p.manifest.name.as_str(),
                "version": p.manifest.version.as_str(),
                "path": p.path.as_ref().map(|p| p.display().to_string()),
                "api_version": p.manifest.api_version.as_str(),
                "torch_version": p.manifest.torch_version.as_str(),
                "sources": p.sources.iter().map(|(r, prefix, n)| json!({"registry": r, "prefix": prefix, "count": n})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let rejected: Vec<_> = host
        .rejected()
        .iter()
        .map(|r| json!({"path": r.path.display().to_string(), "kind": r.kind, "reason": r.reason}))
        .collect();
    if json {
        crate::cli::print_json(&json!({
            "loaded": loaded,
            "rejected": rejected,
            "cache": cache.map(|p| p.display().to_string()),
        }));
        return Ok(());
    }
    println!(
        "plugin directories: {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    );
    match cache {
        Some(p) => println!("registry cache: {}", p.display()),
        None => println!("registry cache: none"),
    }
    if host.plugins().is_empty() {
        println!("no plugins loaded");
    }
    for p in host.plugins() {
        let m = &p.manifest;
        println!(
            "{} {}  (plugin-api {}, libtorch {}, {})",
            m.name,
            m.version,
            m.api_version,
            m.torch_version,
            p.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "in-process".into())
        );
        for (r, prefix, n) in &p.sources {
            println!(
                "    {r:<14} {prefix:<12} {n} {}",
                if *n == 1 { "entry" } else { "entries" }
            );
        }
    }
    for r in host.rejected() {
        println!("refused {} [{}]: {}", r.path.display(), r.kind, r.reason);
    }
    Ok(())
}
