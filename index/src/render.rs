//! What `plugins`, `list` and `show` print, text and `--json`, written once for both
//! binaries: the front renders its [`crate::view::View`], the engine its `Host`, each
//! handing over the same plain rows. Everything goes to a locked stdout with
//! `writeln!`, and a failed write is returned, never a panic ([`crate::out`]: a closed
//! stdout ends the command quietly).
use crate::common::registry_names;
use crate::meta::EntryMeta;
use crate::out::Failure;
use globset::{Glob, GlobMatcher};
use serde_json::{json, Map, Value};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) -> io::Result<()> {
    crate::out::line(serde_json::to_string_pretty(value).expect("JSON values serialize"))
}

/// A plugin that loaded, for `plugins`.
pub struct LoadedRow<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Its file (`None` for an in-process plugin).
    pub path: Option<&'a Path>,
    /// The plugin-api it was built against.
    pub api_version: &'a str,
    /// The libtorch it was built against.
    pub torch_version: &'a str,
    /// `(registry, prefix, number of entries)` per source.
    pub sources: &'a [(String, String, usize)],
    /// The sha256 of the library's bytes as scanned (`None` for an in-process plugin).
    pub sha256: Option<&'a str>,
}

/// A refused file, for `plugins`.
pub struct RejectedRow<'a> {
    /// The file.
    pub path: &'a Path,
    /// The refusal's kind code.
    pub kind: &'a str,
    /// The reason.
    pub reason: &'a str,
}

/// `terrahost plugins`.
pub fn plugins(
    dirs: &[PathBuf],
    cache: Option<&Path>,
    loaded: &[LoadedRow<'_>],
    rejected: &[RejectedRow<'_>],
    json: bool,
) -> io::Result<()> {
    if json {
        let loaded: Vec<_> = loaded
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "version": p.version,
                    "path": p.path.map(|p| p.display().to_string()),
                    "api_version": p.api_version,
                    "torch_version": p.torch_version,
                    "sha256": p.sha256,
                    "sources": p.sources.iter().map(|(r, prefix, n)| json!({"registry": r, "prefix": prefix, "count": n})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let rejected: Vec<_> = rejected
            .iter()
            .map(|r| json!({"path": r.path.display().to_string(), "kind": r.kind, "reason": r.reason}))
            .collect();
        return print_json(&json!({
            "loaded": loaded,
            "rejected": rejected,
            "cache": cache.map(|p| p.display().to_string()),
        }));
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "plugin directories: {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    )?;
    match cache {
        Some(p) => writeln!(out, "registry cache: {}", p.display()),
        None => writeln!(out, "registry cache: none"),
    }?;
    if loaded.is_empty() {
        writeln!(out, "no plugins loaded")?;
    }
    for p in loaded {
        writeln!(
            out,
            "{} {}  (plugin-api {}, libtorch {}, {})",
            p.name,
            p.version,
            p.api_version,
            p.torch_version,
            p.path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "in-process".into())
        )?;
        for (r, prefix, n) in p.sources {
            writeln!(
                out,
                "    {r:<14} {prefix:<12} {n} {}",
                if *n == 1 { "entry" } else { "entries" }
            )?;
        }
    }
    for r in rejected {
        writeln!(
            out,
            "refused {} [{}]: {}",
            r.path.display(),
            r.kind,
            r.reason
        )?;
    }
    out.flush()
}

/// `plugins --allowlist-out FILE`: writes the allowlist of the libraries that loaded
/// (`sha256sum` lines) and says so on stderr.
pub fn allowlist_out(out: &Path, loaded: &[LoadedRow<'_>]) -> Result<(), String> {
    let rows: Vec<(String, std::path::PathBuf)> = loaded
        .iter()
        .filter_map(|p| Some((p.sha256?.to_owned(), p.path?.to_path_buf())))
        .collect();
    crate::integrity::write_allowlist(out, &rows)
        .map_err(|e| format!("cannot write the allowlist {}: {e}", out.display()))?;
    eprintln!(
        "wrote {} {} to {}",
        rows.len(),
        if rows.len() == 1 {
            "library"
        } else {
            "libraries"
        },
        out.display()
    );
    Ok(())
}

/// One source of a registry as listed.
pub struct Group {
    /// Its prefix.
    pub prefix: String,
    /// The plugin that registered it.
    pub plugin: String,
    /// Its names, in order.
    pub names: Vec<String>,
}

/// `terrahost list`: `groups(registry)` gives each registry's sources in search
/// order (`None` for an unknown registry). Errors are one line for the user.
pub fn list(
    registry: Option<&str>,
    filter: Option<&str>,
    json: bool,
    groups: &dyn Fn(&str) -> Option<Vec<Group>>,
) -> Result<(), Failure> {
    let registries: Vec<&str> = match registry {
        Some(r) if groups(r).is_some() => vec![r],
        Some(r) => {
            return Err(Failure::Message(format!(
                "there is no registry `{r}`; choose one of {}",
                registry_names::ALL.join(", ")
            )))
        }
        None => registry_names::ALL.to_vec(),
    };
    let matcher = filter
        .map(|f| Glob::new(f).map(|g| g.compile_matcher()))
        .transpose()
        .map_err(|e| Failure::Message(format!("--filter: invalid glob: {e}")))?;
    let filtered = |r: &str| -> Vec<Group> {
        let keep = |m: Option<&GlobMatcher>, prefix: &str, name: &str| {
            m.is_none_or(|g| g.is_match(name) || g.is_match(format!("{prefix}_{name}")))
        };
        groups(r)
            .unwrap_or_default()
            .into_iter()
            .map(|g| Group {
                names: g
                    .names
                    .into_iter()
                    .filter(|n| keep(matcher.as_ref(), &g.prefix, n))
                    .collect(),
                ..g
            })
            // A group of in-process names is shown only when it has any (as before).
            .filter(|g| g.prefix != "host" || !g.names.is_empty())
            .collect()
    };
    if json {
        let mut out = Map::new();
        for r in &registries {
            let list: Vec<Value> = filtered(r)
                .into_iter()
                .map(|g| json!({"prefix": g.prefix, "plugin": g.plugin, "names": g.names}))
                .collect();
            out.insert((*r).to_owned(), Value::Array(list));
        }
        print_json(&Value::Object(out))?;
        return Ok(());
    }
    let mut out = io::stdout().lock();
    for r in &registries {
        let gs = filtered(r);
        let total: usize = gs.iter().map(|g| g.names.len()).sum();
        let sources = if gs.len() == 1 { "source" } else { "sources" };
        let entries = if total == 1 { "entry" } else { "entries" };
        writeln!(out, "{r} ({} {sources}, {total} {entries})", gs.len())?;
        for g in gs {
            let names = if g.names.is_empty() {
                "-".to_owned()
            } else {
                g.names.join(", ")
            };
            writeln!(out, "  {:<11} [{}] {names}", g.prefix, g.plugin)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `terrahost show`: the entry `qualified` of `registry`.
pub fn show(registry: &str, qualified: &str, info: &EntryMeta, json: bool) -> io::Result<()> {
    if json {
        let params: Vec<_> = info
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "type": p.type_name(),
                    "required": p.default.is_none(),
                    "default": p.default_value(),
                    "doc": p.doc,
                })
            })
            .collect();
        return print_json(&json!({
            "registry": registry,
            "name": qualified,
            "doc": info.doc,
            "takes_channels": info.takes_channels,
            "accepts_extra": info.accepts_extra,
            "parameters": params,
        }));
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{registry} {qualified}")?;
    if !info.doc.is_empty() {
        writeln!(out, "  {}", info.doc)?;
    }
    if info.takes_channels {
        writeln!(
            out,
            "  takes the channel list of its input features first (--channels)"
        )?;
    }
    writeln!(out, "  parameters:")?;
    if info.params.is_empty() {
        writeln!(out, "    (none)")?;
    }
    let width = info.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &info.params {
        let default = match &p.default {
            Some(d) => format!("= {d}"),
            None => "(required)".to_owned(),
        };
        writeln!(
            out,
            "    {:<width$}  {:<16} {:<24} {}",
            p.name,
            p.type_name(),
            default,
            p.doc
        )?;
    }
    if info.accepts_extra {
        writeln!(out, "    further keyword arguments are passed through")?;
    }
    out.flush()
}
