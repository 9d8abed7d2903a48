//! `terrahost list`.
use globset::{Glob, GlobMatcher};
use serde_json::{json, Map, Value};
use terrahost::{api::registry_names, Host, HostError, RegistryRef};

/// One source of a registry as listed: prefix, plugin, names.
struct Group {
    prefix: String,
    plugin: String,
    names: Vec<String>,
}

fn groups(host: &Host, registry: &str, filter: Option<&GlobMatcher>) -> Vec<Group> {
    let keep = |prefix: &str, name: &str| {
        filter.is_none_or(|g| g.is_match(name) || g.is_match(format!("{prefix}_{name}")))
    };
    let slots = match host.registry(registry) {
        Some(RegistryRef::Multi(r)) => r.sources(),
        Some(RegistryRef::Plain(r)) => r.sources(),
        None => return Vec::new(),
    };
    let mut out: Vec<Group> = slots
        .iter()
        .map(|s| Group {
            prefix: s.prefix.clone(),
            plugin: s.plugin.clone(),
            names: s
                .names()
                .into_iter()
                .filter(|n| keep(&s.prefix, n))
                .collect(),
        })
        .collect();
    if let Some(RegistryRef::Plain(r)) = host.registry(registry) {
        let local: Vec<String> = r
            .local_names()
            .into_iter()
            .filter(|n| keep("host", n))
            .collect();
        if !local.is_empty() {
            out.push(Group {
                prefix: "host".into(),
                plugin: "host".into(),
                names: local,
            });
        }
    }
    out
}

pub fn run(
    host: &Host,
    registry: Option<&str>,
    filter: Option<&str>,
    json: bool,
) -> Result<(), HostError> {
    let registries: Vec<&str> = match registry {
        Some(r) if host.registry(r).is_some() => vec![r],
        Some(r) => {
            return Err(HostError::Usage(format!(
                "there is no registry `{r}`; choose one of {}",
                registry_names::ALL.join(", ")
            )))
        }
        None => registry_names::ALL.to_vec(),
    };
    let matcher = filter
        .map(|f| Glob::new(f).map(|g| g.compile_matcher()))
        .transpose()
        .map_err(|e| HostError::Usage(format!("--filter: invalid glob: {e}")))?;
    if json {
        let mut out = Map::new();
        for r in &registries {
            let list: Vec<Value> = groups(host, r, matcher.as_ref())
                .into_iter()
                .map(|g| json!({"prefix": g.prefix, "plugin": g.plugin, "names": g.names}))
                .collect();
            out.insert((*r).to_owned(), Value::Array(list));
        }
        crate::cli::print_json(&Value::Object(out));
        return Ok(());
    }
    for r in &registries {
        let gs = groups(host, r, matcher.as_ref());
        let total: usize = gs.iter().map(|g| g.names.len()).sum();
        let sources = if gs.len() == 1 { "source" } else { "sources" };
        let entries = if total == 1 { "entry" } else { "entries" };
        println!("{r} ({} {sources}, {total} {entries})", gs.len());
        for g in gs {
            let names = if g.names.is_empty() {
                "-".to_owned()
            } else {
                g.names.join(", ")
            };
            println!("  {:<11} [{}] {names}", g.prefix, g.plugin);
        }
    }
    Ok(())
}
