//! `terrahost plugins`, as the engine answers it (the front answers it from the cache;
//! both print through [`terrahost_index::render::plugins`]).
use std::path::{Path, PathBuf};
use terrahost::{Host, HostError};
use terrahost_index::render::{self, LoadedRow, RejectedRow};

pub fn run(
    host: &Host,
    dirs: &[PathBuf],
    cache: Option<&Path>,
    json: bool,
    strict: bool,
    allowlist_out: Option<&Path>,
) -> Result<(), HostError> {
    let loaded: Vec<LoadedRow> = host
        .plugins()
        .iter()
        .map(|p| LoadedRow {
            name: p.manifest.name.as_str(),
            version: p.manifest.version.as_str(),
            path: p.path.as_deref(),
            api_version: p.manifest.api_version.as_str(),
            torch_version: p.manifest.torch_version.as_str(),
            sources: &p.sources,
            sha256: p.sha256.as_deref(),
        })
        .collect();
    if let Some(out) = allowlist_out {
        render::allowlist_out(out, &loaded).map_err(HostError::Usage)?;
    }
    let rejected: Vec<RejectedRow> = host
        .rejected()
        .iter()
        .map(|r| RejectedRow {
            path: &r.path,
            kind: &r.kind,
            reason: &r.reason,
        })
        .collect();
    render::plugins(dirs, cache, &loaded, &rejected, json).map_err(super::stdout_error)?;
    // `--strict`: the front's rule and message.
    match strict
        .then(|| terrahost_index::front::strict_failure(rejected.len()))
        .flatten()
    {
        Some(m) => Err(HostError::Usage(m)),
        None => Ok(()),
    }
}
