//! Discovery, cache and scan put together: what every candidate file in the plugin
//! directories is (a described plugin or a refusal), scanning only what the registry
//! cache does not know. The front and the engine both start here; they differ only in
//! who scans and how the cache's validity is checked ([`Validity`]).
use crate::cache::{Cache, Validity};
use crate::discover::{self, FileKey};
use crate::integrity::{self, Policy};
use crate::meta::{kind, Outcome, Refusal};
use crate::scan::Scanned;
use crate::trust;
use std::path::{Path, PathBuf};

/// One candidate file and what it is.
#[derive(Clone, Debug)]
pub struct Found {
    /// The path as found in the plugin directory.
    pub path: PathBuf,
    /// Its identity (`None` when it cannot even be looked at).
    pub key: Option<FileKey>,
    /// A described plugin or the refusal.
    pub outcome: Outcome,
}

/// Where the cache lives and how it is used.
pub struct CacheUse<'a> {
    /// The cache file (`None`: no cache).
    pub path: Option<&'a Path>,
    /// Forget it and scan everything.
    pub rescan: bool,
    /// When its entries may be used.
    pub validity: Validity,
}

/// Every candidate in `dirs`, in order, with its outcome. Files the cache does not
/// know are scanned with `scan` (in one call); what it finds is cached, except a
/// scanner that could not run (`scanner-failed`).
///
/// Before the cache is asked, each file's ownership and modes are checked
/// ([`trust::check`]); with an allowlist in force ([`Policy::from_env`]) a cached
/// plugin's recorded sha256, or a new file's hash, must be on it. Neither refusal is
/// cached: both depend on the file's surroundings and the policy, not its bytes, and
/// neither file is ever handed to the scanner.
pub fn gather(
    dirs: &[PathBuf],
    cache_use: &CacheUse<'_>,
    scan: &mut dyn FnMut(&[PathBuf]) -> Scanned,
) -> Vec<Found> {
    let candidates = discover::candidates(dirs);
    let mut cache = match cache_use.path {
        Some(p) => Cache::open(p, &cache_use.validity),
        None => Cache::disabled(),
    };
    if cache_use.rescan {
        cache.clear();
    }
    let policy = Policy::from_env();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; candidates.len()];
    let mut to_scan = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        match &c.key {
            Err(r) => outcomes[i] = Some(Outcome::Refused(r.clone())),
            Ok(key) => {
                if let Err(r) = trust::check(&c.path) {
                    outcomes[i] = Some(Outcome::Refused(r));
                } else if let Some(o) = cache.get(key) {
                    tracing::debug!(file = %c.path.display(), "from the plugin cache");
                    outcomes[i] = Some(match (o, policy.restricts()) {
                        (Outcome::Plugin(info), true) => {
                            match allowed(&policy, info.sha256.as_deref()) {
                                Ok(()) => o.clone(),
                                Err(r) => Outcome::Refused(r),
                            }
                        }
                        _ => o.clone(),
                    });
                } else if let Err(r) = allowed_before_scan(&policy, &key.path) {
                    outcomes[i] = Some(Outcome::Refused(r));
                } else if let Err(r) = discover::precheck(&key.path, key.size) {
                    cache.insert(key.clone(), Outcome::Refused(r.clone()));
                    outcomes[i] = Some(Outcome::Refused(r));
                } else {
                    to_scan.push(i);
                }
            }
        }
    }
    if !to_scan.is_empty() {
        let files: Vec<PathBuf> = to_scan
            .iter()
            .map(|&i| candidates[i].key.as_ref().unwrap().path.clone())
            .collect();
        let scanned = scan(&files);
        if let Some(v) = scanned.versions {
            cache.set_versions(v);
        }
        for (&i, outcome) in to_scan.iter().zip(scanned.outcomes) {
            let environmental =
                matches!(&outcome, Outcome::Refused(r) if r.kind == kind::SCANNER_FAILED);
            if !environmental {
                cache.insert(candidates[i].key.clone().unwrap(), outcome.clone());
            }
            outcomes[i] = Some(outcome);
        }
    }
    if cache.needs_versions() {
        // Something to write but no header to write it under (a cache that was
        // damaged, and no file needed a scan): ask the scanner who it is.
        if let Some(v) = scan(&[]).versions {
            cache.set_versions(v);
        }
    }
    cache.save();
    candidates
        .into_iter()
        .zip(outcomes)
        .map(|(c, o)| Found {
            path: c.path,
            key: c.key.ok(),
            outcome: o.expect("every candidate has an outcome"),
        })
        .collect()
}

/// With an allowlist in force, whether the file at `path` may be scanned: its hash
/// decides before the scanner opens it.
fn allowed_before_scan(policy: &Policy, path: &std::path::Path) -> Result<(), Refusal> {
    if !policy.restricts() {
        return Ok(());
    }
    let hash = integrity::sha256_file(path)
        .map_err(|e| Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}")))?;
    policy.check(&hash)
}

/// Whether a cached plugin with the recorded `sha256` may load under `policy`.
fn allowed(policy: &Policy, sha256: Option<&str>) -> Result<(), Refusal> {
    match sha256 {
        Some(h) => policy.check(h),
        None => Err(Refusal::new(
            kind::NOT_ALLOWED,
            "no sha256 was recorded when this file was scanned; run `terrahost plugins --rescan`",
        )),
    }
}
