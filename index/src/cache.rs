//! The registry cache: what each scan found, so a file is scanned once and not again
//! until it changes (GStreamer's `registry.bin`).
//!
//! One JSON file per user: `--cache PATH`, else `TERRAHOST_CACHE`, else
//! `$XDG_CACHE_HOME/terrahost/registry.json`, else `~/.cache/terrahost/registry.json`
//! (`--no-cache` or `TERRAHOST_CACHE=off`: none). Each entry is keyed on the file's
//! canonical path, size, mtime (ns), inode and device ([`FileKey`]); the whole file is
//! valid only for the host version, plugin-api version, libtorch version and scan
//! protocol written in its header. The engine (which links libtorch) checks those
//! versions against its own ([`Validity::Versions`]); the front, which cannot know
//! the libtorch version without mapping libtorch, checks the identity of the engine
//! that wrote the file or ran the scans instead ([`Validity::Engine`]): the same
//! engine file (path, size, mtime, inode) was built against the same versions. Entries hold the [`Outcome`]: a plugin's
//! manifest, sources and entry descriptions, or the refusal (so a file that crashed the
//! scanner stays refused, without being probed again, until it changes).
//!
//! Writes are atomic: a temporary file in the same directory (mode 0600), fsync,
//! rename over the old one, fsync of the directory. Two processes that write at once
//! leave one complete file, never a torn or mixed one. A cache that cannot be read,
//! does not parse or was written by another version is ignored with one warning on
//! stderr, and rewritten.
//!
//! The header's protocol and [`Versions`] are the scan's ([`crate::scan`]): this module
//! depends on the scan, never the other way round.
use crate::discover::FileKey;
use crate::meta::Outcome;
use crate::scan::{Versions, PROTOCOL};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment variable with the cache file's path (`off` for none).
pub const CACHE_VAR: &str = "TERRAHOST_CACHE";

const FORMAT: &str = "terrahost-registry-cache";

/// The default cache file: `$XDG_CACHE_HOME/terrahost/registry.json`, else
/// `~/.cache/terrahost/registry.json`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty() && Path::new(v).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("terrahost").join("registry.json"))
}

/// The cache file from `TERRAHOST_CACHE`: `Some(None)` when it says `off`, `None` when
/// it is unset or empty.
pub fn path_from_env() -> Option<Option<PathBuf>> {
    let v = std::env::var_os(CACHE_VAR).filter(|v| !v.is_empty())?;
    if v == "off" {
        Some(None)
    } else {
        Some(Some(PathBuf::from(v)))
    }
}

/// When a cache file's entries may be used.
#[derive(Clone, Debug)]
pub enum Validity {
    /// Written for these versions (the engine knows its own), and by the engine `engine`
    /// (recorded for the front).
    Versions {
        /// The versions.
        versions: Versions,
        /// The engine executable's identity, written into the header.
        engine: Option<FileKey>,
    },
    /// Written by (or from the scans of) exactly this engine executable: the front's
    /// check. The versions to write come from the engine's `hello`
    /// ([`Cache::set_versions`]) or from the valid header read.
    Engine(Option<FileKey>),
}

/// What the cache file's header must say for its entries to be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    format: String,
    protocol: u32,
    host_version: String,
    api_version: String,
    torch_version: String,
}

impl Header {
    fn new(versions: &Versions) -> Self {
        Self {
            format: FORMAT.to_owned(),
            protocol: PROTOCOL,
            host_version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: versions.api_version.clone(),
            torch_version: versions.torch_version.clone(),
        }
    }

    fn same_build(&self) -> bool {
        self.format == FORMAT
            && self.protocol == PROTOCOL
            && self.host_version == env!("CARGO_PKG_VERSION")
    }
}

impl CacheFile {
    /// Whether its entries may be used under `validity`.
    fn valid_for(&self, validity: &Validity) -> bool {
        let h = &self.header;
        h.same_build()
            && match validity {
                Validity::Versions { versions, .. } => {
                    h.api_version == versions.api_version
                        && h.torch_version == versions.torch_version
                }
                Validity::Engine(engine) => engine.is_some() && self.engine == *engine,
            }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: FileKey,
    outcome: Outcome,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    #[serde(flatten)]
    header: Header,
    /// The engine that wrote it or whose scans it holds. Not in the flattened header:
    /// serde's flatten buffers values and cannot hold the 128-bit mtime.
    #[serde(default)]
    engine: Option<FileKey>,
    entries: Vec<Entry>,
}

/// The cache in memory.
pub struct Cache {
    path: Option<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
    dirty: bool,
    engine: Option<FileKey>,
    /// The versions to write; `None` until known (the front before a scan).
    versions: Option<Versions>,
}

impl Cache {
    /// No cache: every lookup misses and nothing is written.
    pub fn disabled() -> Self {
        Self {
            path: None,
            entries: BTreeMap::new(),
            dirty: false,
            engine: None,
            versions: None,
        }
    }

    /// The cache at `path`, valid under `validity`. A missing file is an empty cache; an
    /// unreadable, corrupt or foreign one is ignored with one warning and rewritten on
    /// [`Cache::save`].
    pub fn open(path: &Path, validity: &Validity) -> Self {
        let (engine, versions) = match validity {
            Validity::Versions { versions, engine } => (engine.clone(), Some(versions.clone())),
            Validity::Engine(engine) => (engine.clone(), None),
        };
        let mut cache = Self {
            path: Some(path.to_path_buf()),
            entries: BTreeMap::new(),
            dirty: false,
            engine,
            versions,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return cache,
            Err(e) => {
                tracing::warn!("ignoring the plugin cache {}: {e}", path.display());
                cache.dirty = true;
                return cache;
            }
        };
        match serde_json::from_slice::<CacheFile>(&bytes) {
            Ok(file) if file.valid_for(validity) => {
                if cache.versions.is_none() {
                    cache.versions = Some(Versions {
                        api_version: file.header.api_version.clone(),
                        torch_version: file.header.torch_version.clone(),
                    });
                }
                // A header without this engine's identity is rewritten with it.
                cache.dirty = file.engine != cache.engine;
                cache.entries = file
                    .entries
                    .into_iter()
                    .map(|e| (e.key.path.clone(), e))
                    .collect();
            }
            Ok(file) => {
                let h = &file.header;
                let this = match validity {
                    Validity::Versions { versions, .. } => format!(
                        "this is {} ({}, {}, {})",
                        env!("CARGO_PKG_VERSION"),
                        versions.api_version,
                        versions.torch_version,
                        PROTOCOL
                    ),
                    Validity::Engine(_) if h.same_build() => {
                        "by another terrahost-engine than the one beside this terrahost".to_owned()
                    }
                    Validity::Engine(_) => format!(
                        "this is {} (protocol {})",
                        env!("CARGO_PKG_VERSION"),
                        PROTOCOL
                    ),
                };
                tracing::warn!(
                    "ignoring the plugin cache {}: written by terrahost {} (plugin-api {}, libtorch {}, protocol {}), {this}; rescanning",
                    path.display(), h.host_version, h.api_version, h.torch_version, h.protocol,
                );
                cache.dirty = true;
            }
            Err(e) => {
                tracing::warn!(
                    "ignoring the plugin cache {}: it is not a terrahost plugin cache or is damaged ({e}); rescanning",
                    path.display()
                );
                cache.dirty = true;
            }
        }
        cache
    }

    /// The file this cache lives in (`None` when disabled).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The versions to write into the header (the scanner's, from its `hello`).
    pub fn set_versions(&mut self, versions: Versions) {
        if self.versions.as_ref() != Some(&versions) {
            self.dirty = true;
            self.versions = Some(versions);
        }
    }

    /// Whether [`Cache::save`] would write and needs the versions first (the front
    /// with no valid header read and no scan run yet).
    pub fn needs_versions(&self) -> bool {
        self.path.is_some() && self.dirty && self.versions.is_none()
    }

    /// The outcome stored for exactly this version of the file.
    pub fn get(&self, key: &FileKey) -> Option<&Outcome> {
        self.entries
            .get(&key.path)
            .filter(|e| e.key == *key)
            .map(|e| &e.outcome)
    }

    /// Stores the outcome for `key` (replacing any older version of the file).
    pub fn insert(&mut self, key: FileKey, outcome: Outcome) {
        if self.path.is_none() {
            return;
        }
        self.entries
            .insert(key.path.clone(), Entry { key, outcome });
        self.dirty = true;
    }

    /// Forgets every entry (`terrahost plugins --rescan`).
    pub fn clear(&mut self) {
        if !self.entries.is_empty() {
            self.dirty = true;
        }
        self.entries.clear();
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache if anything changed, dropping entries whose file is gone.
    /// Failing to write is a warning, never an error.
    pub fn save(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let before = self.entries.len();
        self.entries.retain(|p, _| p.exists());
        if !self.dirty && self.entries.len() == before {
            return;
        }
        let Some(versions) = &self.versions else {
            tracing::debug!("the plugin cache is not written: the scanner's versions are unknown");
            return;
        };
        let file = CacheFile {
            header: Header::new(versions),
            engine: self.engine.clone(),
            entries: std::mem::take(&mut self.entries).into_values().collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("the cache serializes");
        self.entries = file
            .entries
            .into_iter()
            .map(|e| (e.key.path.clone(), e))
            .collect();
        match write_atomically(&path, &bytes) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("cannot write the plugin cache {}: {e}", path.display()),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, mode 0600.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{kind, Refusal};

    fn v() -> Validity {
        Validity::Versions {
            versions: Versions {
                api_version: "1.2.3".into(),
                torch_version: "9.9.9".into(),
            },
            engine: None,
        }
    }

    fn key(dir: &Path, name: &str, content: &[u8]) -> FileKey {
        let f = dir.join(name);
        std::fs::write(&f, content).unwrap();
        FileKey::of(&f).unwrap()
    }

    fn refused(r: &str) -> Outcome {
        Outcome::Refused(Refusal::new(kind::CRASHED, r))
    }

    #[test]
    fn entries_survive_a_save_and_miss_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/registry.json");
        let k = key(dir.path(), "a.so", b"one");
        let mut c = Cache::open(&path, &v());
        assert!(c.is_empty());
        c.insert(k.clone(), refused("boom"));
        c.save();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let c = Cache::open(&path, &v());
        assert_eq!(c.get(&k), Some(&refused("boom")));
        let changed = key(dir.path(), "a.so", b"two!");
        assert_eq!(c.get(&changed), None);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn the_front_uses_entries_written_by_its_own_engine_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let engine = key(dir.path(), "terrahost-engine", b"an engine");
        let other = key(dir.path(), "other-engine", b"another engine");
        let k = key(dir.path(), "a.so", b"one");
        let Validity::Versions { versions, .. } = v() else {
            unreachable!()
        };
        let by_engine = Validity::Versions {
            versions: versions.clone(),
            engine: Some(engine.clone()),
        };
        let mut c = Cache::open(&path, &by_engine);
        c.insert(k.clone(), refused("x"));
        c.save();
        let front = Cache::open(&path, &Validity::Engine(Some(engine.clone())));
        assert_eq!(front.get(&k), Some(&refused("x")));
        assert!(!front.needs_versions());
        assert!(Cache::open(&path, &Validity::Engine(Some(other))).is_empty());
        assert!(Cache::open(&path, &Validity::Engine(None)).is_empty());
        // The front writes what its engine's scan said, under the engine's versions.
        std::fs::remove_file(&path).unwrap();
        let mut front = Cache::open(&path, &Validity::Engine(Some(engine.clone())));
        front.insert(k.clone(), refused("y"));
        assert!(front.needs_versions());
        front.set_versions(versions);
        front.save();
        assert_eq!(Cache::open(&path, &by_engine).get(&k), Some(&refused("y")));
        assert_eq!(
            Cache::open(&path, &Validity::Engine(Some(engine))).get(&k),
            Some(&refused("y"))
        );
    }

    #[test]
    fn damaged_and_foreign_caches_are_ignored_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let k = key(dir.path(), "a.so", b"one");
        let mut c = Cache::open(&path, &v());
        c.insert(k.clone(), refused("x"));
        c.save();
        let good = std::fs::read(&path).unwrap();
        for bad in [
            good[..good.len() / 2].to_vec(),
            b"\x00\x01garbage".to_vec(),
            String::from_utf8(good.clone())
                .unwrap()
                .replace(env!("CARGO_PKG_VERSION"), "0.0.0-other")
                .into_bytes(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let mut c = Cache::open(&path, &v());
            assert!(c.get(&k).is_none());
            c.save();
            let c = Cache::open(&path, &v());
            assert!(c.is_empty() && c.get(&k).is_none());
            // The rewritten file is a valid, current cache again.
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(v["host_version"], env!("CARGO_PKG_VERSION"));
        }
    }

    #[test]
    fn entries_of_removed_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let k = key(dir.path(), "a.so", b"one");
        let mut c = Cache::open(&path, &v());
        c.insert(k.clone(), refused("x"));
        c.save();
        std::fs::remove_file(&k.path).unwrap();
        let mut c = Cache::open(&path, &v());
        assert_eq!(c.len(), 1);
        c.save();
        assert_eq!(Cache::open(&path, &v()).len(), 0);
    }

    #[test]
    fn concurrent_writers_leave_one_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                let big = vec![b'a' + i as u8; 200_000];
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        write_atomically(&path, &big).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 200_000);
        assert!(bytes.iter().all(|b| *b == bytes[0]), "a mixed file");
    }
}
