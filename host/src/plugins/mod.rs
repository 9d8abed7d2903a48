//! Plugin libraries: discovery, the out-of-process scan, the registry cache, and
//! loading, as four steps in four modules. The first three need no libtorch and live
//! in `terrahost-index` (re-exported here), which the `terrahost` front shares;
//! [`load`] and the scanner child ([`scan::serve`]) are the engine's.
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
//! descriptions, with [`terrahost_index::register`], the front's code; several files
//! with the same plugin name are settled there too ([`terrahost_index::register::choose`]:
//! the highest version, then the file found first). Every refusal has a [`meta::kind`]
//! code and one line of reason.
//!
//! This module depends on [`crate::host`] (it fills a [`Host`], and adds [`Host::load`]
//! and [`Host::load_with`] to it), never the other way round.
pub use terrahost_index::{cache, discover};
pub mod load;
pub mod meta;
pub mod scan;
pub mod sealed;

use crate::host::Host;
use meta::{Outcome, Refusal};
use std::path::{Path, PathBuf};
use std::time::Duration;
use terrahost_index::gather::{self, CacheUse};
use terrahost_index::view::View;

/// Who probes new and changed files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanner {
    /// The `terrahost-engine` binary found by [`scan::find_scanner`].
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

impl Host {
    /// Finds the plugins in `dirs`, scans each in a child process, and registers
    /// them, with the default [`LoadOptions`] (no registry cache). See
    /// [`crate::plugins`].
    pub fn load(dirs: &[PathBuf]) -> Self {
        Self::load_with(dirs, &LoadOptions::default())
    }

    /// [`Host::load`] with explicit options (cache file, timeout, scanner).
    pub fn load_with(dirs: &[PathBuf], options: &LoadOptions) -> Self {
        let mut host = Self::new();
        load_into(&mut host, dirs, options);
        host
    }
}

/// Finds the plugins in `dirs`, scans what the cache does not know, and registers
/// them into `host`. Refused files are recorded with their kind and reason; the rest
/// go on loading. Which plugins register and which are refused is decided as the front
/// decides it ([`View`]), so both binaries list the same plugins.
pub fn load_into(host: &mut Host, dirs: &[PathBuf], options: &LoadOptions) {
    let scanner_exe = match &options.scanner {
        Scanner::InProcess => std::env::current_exe().ok(),
        Scanner::Exe(p) => Some(p.clone()),
        Scanner::Auto => scan::find_scanner(),
    };
    // The header names this engine, so the front (which cannot check libtorch's
    // version) accepts what it wrote.
    let engine = std::env::current_exe()
        .ok()
        .filter(|e| {
            e.file_name()
                .is_some_and(|n| n == terrahost_index::engine::engine_file_name().as_str())
        })
        .or_else(terrahost_index::engine::find_engine)
        .and_then(|e| discover::FileKey::of(&e).ok());
    let cache_use = CacheUse {
        path: options.cache.as_deref(),
        rescan: options.rescan,
        validity: cache::Validity::Versions {
            versions: scan::versions(),
            engine,
        },
    };
    let found = gather::gather(dirs, &cache_use, &mut |files| {
        let outcomes = run_scan(
            &options.scanner,
            scanner_exe.as_deref(),
            files,
            options.scan_timeout,
        );
        scan::Scanned {
            outcomes,
            versions: Some(scan::versions()),
        }
    });
    let view = View::new(&found);
    let mut refused: std::collections::HashMap<&Path, &Refusal> = view
        .rejected()
        .iter()
        .map(|r| (r.path.as_path(), &r.refusal))
        .collect();
    for f in &found {
        if let Some(r) = refused.remove(f.path.as_path()) {
            host.record_rejected(f.path.clone(), &r.kind, r.reason.clone());
            continue;
        }
        let Outcome::Plugin(info) = &f.outcome else {
            continue;
        };
        let _span = tracing::info_span!("register", file = %f.path.display()).entered();
        let library = load::LazyLibrary::new(
            f.key.clone().expect("a described file has a key"),
            info.sha256.clone(),
        );
        let sources = info
            .sources
            .iter()
            .map(|s| load::LazySource::new(library.clone(), s).into_entry())
            .collect();
        let name = info.manifest.name.clone();
        match host.try_add_plugin(
            meta::to_manifest(&info.manifest),
            Some(f.path.clone()),
            sources,
        ) {
            Ok(()) => {
                host.note_sha256(&f.path, info.sha256.clone());
                tracing::info!(plugin = %name, "plugin registered")
            }
            Err(r) => host.reject(f.path.clone(), &r.kind, r.reason),
        }
    }
}

fn run_scan(
    scanner: &Scanner,
    exe: Option<&Path>,
    files: &[PathBuf],
    timeout: Duration,
) -> Vec<Outcome> {
    if *scanner == Scanner::InProcess {
        return files.iter().map(|f| load::describe(f)).collect();
    }
    match exe {
        Some(exe) => scan::scan(exe, files, timeout),
        None => terrahost_index::front::no_scanner(files).outcomes,
    }
}
