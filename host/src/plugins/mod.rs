//! Plugin libraries: discovery, the out-of-process scan, the registry cache, and
//! loading, as four steps in four modules.
//!
//! 1. [`discover`]: the candidate files in the plugin directories, each with its
//!    identity ([`discover::FileKey`]) and a look at its header that refuses what
//!    cannot be a shared library (empty, not ELF, truncated) without loading it.
//! 2. [`cache`]: a file whose key is in the registry cache is not scanned again; its
//!    stored outcome (a description or a refusal) is used as it is.
//! 3. [`scan`]: every other candidate is probed in a child process (the scanner),
//!    which dlopens it, checks its versions and sends back its manifest, sources and
//!    every entry's description over a private pipe. A crash, exit, hang or garbled
//!    reply refuses that one file, with the reason; the others are scanned on.
//! 4. [`load`]: the host registers every described plugin as [`load::LazySource`]s:
//!    names and descriptions come from the scan, so `plugins`, `list` and `show` load
//!    no library; the first build from a source dlopens its library in this process.
//!
//! Registration ([`crate::Host::add_plugin`]) then checks what depends on the other
//! plugins (a prefix or plugin name that is already taken), every time, from the
//! descriptions. Every refusal has a [`meta::kind`] code and one line of reason.
pub mod cache;
pub mod discover;
pub mod load;
pub mod meta;
pub mod scan;

use crate::host::Host;
use meta::{kind, Outcome, Refusal};
use std::path::PathBuf;
use std::time::Duration;

/// Who probes new and changed files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanner {
    /// The terrahost binary found by [`scan::find_scanner`].
    Auto,
    /// This executable, run as `EXE __scan FILE...`.
    Exe(PathBuf),
    /// This process itself: no isolation, a crashing library takes the host down.
    /// Only for embedders that trust every file in their plugin directories.
    InProcess,
}

/// How [`load_into`] finds, scans and caches plugins.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The registry cache file (`None`: no cache, scan every file).
    pub cache: Option<PathBuf>,
    /// Forget the cache and scan every file again.
    pub rescan: bool,
    /// How long one file may take to scan.
    pub scan_timeout: Duration,
    /// Who scans.
    pub scanner: Scanner,
}

impl Default for LoadOptions {
    /// No cache, the scan timeout from `TERRAHOST_SCAN_TIMEOUT` (else 30 s), the
    /// scanner found automatically.
    fn default() -> Self {
        Self {
            cache: None,
            rescan: false,
            scan_timeout: scan::timeout_from_env(),
            scanner: Scanner::Auto,
        }
    }
}

/// Finds the plugins in `dirs`, scans what the cache does not know, and registers
/// them into `host`. Refused files are recorded with their kind and reason; the rest
/// go on loading.
pub fn load_into(host: &mut Host, dirs: &[PathBuf], options: &LoadOptions) {
    let candidates = discover::candidates(dirs);
    let mut cache = match &options.cache {
        Some(p) => cache::Cache::open(p),
        None => cache::Cache::disabled(),
    };
    if options.rescan {
        cache.clear();
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; candidates.len()];
    let mut to_scan = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        match &c.key {
            Err(r) => outcomes[i] = Some(Outcome::Refused(r.clone())),
            Ok(key) => {
                if let Some(o) = cache.get(key) {
                    tracing::debug!(file = %c.path.display(), "from the plugin cache");
                    outcomes[i] = Some(o.clone());
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
        let scanned = run_scan(&options.scanner, &files, options.scan_timeout);
        for (&i, outcome) in to_scan.iter().zip(scanned) {
            let environmental =
                matches!(&outcome, Outcome::Refused(r) if r.kind == kind::SCANNER_FAILED);
            if !environmental {
                cache.insert(candidates[i].key.clone().unwrap(), outcome.clone());
            }
            outcomes[i] = Some(outcome);
        }
    }
    cache.save();
    for (c, outcome) in candidates.into_iter().zip(outcomes) {
        match outcome.expect("every candidate has an outcome") {
            Outcome::Refused(r) => host.reject(c.path, &r.kind, r.reason),
            Outcome::Plugin(info) => {
                let _span = tracing::info_span!("register", file = %c.path.display()).entered();
                let library = load::LazyLibrary::new(c.key.clone().unwrap());
                let sources = info
                    .sources
                    .iter()
                    .map(|s| load::LazySource::new(library.clone(), s).into_entry())
                    .collect();
                let name = info.manifest.name.clone();
                match host.try_add_plugin(
                    info.manifest.to_manifest(),
                    Some(c.path.clone()),
                    sources,
                ) {
                    Ok(()) => tracing::info!(plugin = %name, "plugin registered"),
                    Err(r) => host.reject(c.path, &r.kind, r.reason),
                }
            }
        }
    }
}

fn run_scan(scanner: &Scanner, files: &[PathBuf], timeout: Duration) -> Vec<Outcome> {
    let exe = match scanner {
        Scanner::InProcess => return files.iter().map(|f| load::describe(f)).collect(),
        Scanner::Exe(p) => Some(p.clone()),
        Scanner::Auto => scan::find_scanner(),
    };
    match exe {
        Some(exe) => scan::scan(&exe, files, timeout),
        None => files
            .iter()
            .map(|_| {
                Outcome::Refused(Refusal::new(
                    kind::SCANNER_FAILED,
                    format!(
                        "no plugin scanner: set {} to the terrahost binary that probes new plugin files",
                        scan::SCANNER_VAR
                    ),
                ))
            })
            .collect(),
    }
}
