//! Discovery: which files in the plugin directories are candidates, what identifies
//! each one (the registry cache's key), and a cheap look at the file's header that
//! refuses what cannot be a shared library before anything is loaded.
//!
//! The plugin directories are `--plugin-dir DIR` (repeatable), else the colon-separated
//! `TERRAHOST_PLUGIN_PATH`, else [`default_plugin_dirs`]. In each directory, in order,
//! every entry whose name ends in the platform's library suffix (`.so`, `.dylib`,
//! `.dll`) is a candidate, sorted by name so the order is deterministic. An entry with
//! that name that is not a regular file (a directory, a symbolic-link loop) is a
//! candidate too, and is refused with its reason rather than skipped silently.
use crate::meta::{kind, Refusal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The environment variable with colon-separated plugin directories.
pub const PLUGIN_PATH_VAR: &str = "TERRAHOST_PLUGIN_PATH";

/// The platform's shared-library suffix, without the dot.
pub const LIB_SUFFIX: &str = std::env::consts::DLL_EXTENSION;

/// Where plugins are looked for when neither `--plugin-dir` nor
/// `TERRAHOST_PLUGIN_PATH` is given: `plugins/` next to the directory that holds the
/// `terrahost` executable (so `target/release/terrahost` finds `target/plugins/`),
/// then `~/.local/share/terrahost/plugins`.
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(parent) = exe.parent().and_then(Path::parent) {
            dirs.push(parent.join("plugins"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/share/terrahost/plugins"));
    }
    dirs
}

/// The plugin directories: `cli` if any were given, else `TERRAHOST_PLUGIN_PATH`, else
/// the defaults.
pub fn plugin_dirs(cli: &[PathBuf]) -> Vec<PathBuf> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    match std::env::var_os(PLUGIN_PATH_VAR) {
        Some(v) if !v.is_empty() => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        _ => default_plugin_dirs(),
    }
}

/// What identifies one version of a file: the registry cache reuses a scan only while
/// all of these are unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    /// The canonical path (symbolic links resolved).
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
    /// Device number (0 where the platform has none).
    pub device: u64,
    /// Status-change time, nanoseconds since the epoch (0 where the platform has
    /// none). No user can set it back, so a file rewritten in place with its size,
    /// inode and mtime restored still gets a new key and is scanned again.
    #[serde(default)]
    pub ctime_ns: i128,
}

impl FileKey {
    /// The key of the file at `path` as it is now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let canonical = std::fs::canonicalize(path)?;
        let m = std::fs::metadata(&canonical)?;
        Ok(Self::from_metadata(canonical, &m))
    }

    fn from_metadata(path: PathBuf, m: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (mtime_ns, inode, device, ctime_ns) = {
            use std::os::unix::fs::MetadataExt;
            (
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                m.ino(),
                m.dev(),
                i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            )
        };
        #[cfg(not(unix))]
        let (mtime_ns, inode, device, ctime_ns) = (
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128),
            0,
            0,
            0,
        );
        Self {
            path,
            size: m.len(),
            mtime_ns,
            inode,
            device,
            ctime_ns,
        }
    }
}

/// A candidate file: its key, or why it cannot even be looked at.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The path as found in the plugin directory.
    pub path: PathBuf,
    /// The file's identity, or the refusal.
    pub key: Result<FileKey, Refusal>,
}

/// The candidates in `dirs`: directories in order, entries by name, each real file
/// once. Missing directories are skipped (and logged).
pub fn candidates(dirs: &[PathBuf]) -> Vec<Candidate> {
    let _span = tracing::info_span!("discover").entered();
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            tracing::debug!(dir = %dir.display(), "plugin directory does not exist or cannot be read");
            continue;
        };
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == LIB_SUFFIX))
            .collect();
        paths.sort();
        for path in paths {
            let candidate = Candidate {
                key: key_of(&path),
                path,
            };
            let id = match &candidate.key {
                Ok(k) => k.path.clone(),
                Err(_) => candidate.path.clone(),
            };
            if seen.insert(id) {
                tracing::debug!(file = %candidate.path.display(), "candidate plugin");
                found.push(candidate);
            }
        }
    }
    found
}

/// The candidate paths in `dirs` (see [`candidates`]).
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    candidates(dirs).into_iter().map(|c| c.path).collect()
}

fn key_of(path: &Path) -> Result<FileKey, Refusal> {
    let m = std::fs::metadata(path).map_err(|e| unreadable(path, &e))?;
    if m.is_dir() {
        return Err(Refusal::new(
            kind::NOT_A_FILE,
            "is a directory, not a library file; remove it or rename it so it does not end in `.so`"
                .replace(".so", &format!(".{LIB_SUFFIX}")),
        ));
    }
    if !m.is_file() {
        return Err(Refusal::new(
            kind::NOT_A_FILE,
            "is not a regular file (a device, socket or pipe); plugin directories hold library files",
        ));
    }
    FileKey::of(path).map_err(|e| unreadable(path, &e))
}

fn unreadable(path: &Path, e: &std::io::Error) -> Refusal {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Refusal::new(
            kind::UNREADABLE,
            "is a symbolic link that loops back on itself; point it at a library file or remove it",
        );
    }
    if is_link && e.kind() == std::io::ErrorKind::NotFound {
        let target = std::fs::read_link(path)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        return Refusal::new(
            kind::UNREADABLE,
            format!("is a dangling symbolic link{target}; point it at a library file or remove it"),
        );
    }
    Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}"))
}

/// Looks at the file's header without loading it: an empty file, a file that is not
/// ELF, an ELF file that is not a shared library, or one cut short (its segments reach
/// past the end of the file: loading such a file would crash with SIGBUS) is refused
/// here. Other platforms' formats are left to the dynamic loader.
pub fn precheck(path: &Path, size: u64) -> Result<(), Refusal> {
    if size == 0 {
        return Err(not_a_library("the file is empty (0 bytes)"));
    }
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let bytes = read_prefix(path, 64 * 1024).map_err(|e| unreadable(path, &e))?;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(not_a_library(
            "the file is not an ELF shared library (wrong magic bytes)",
        ));
    }
    // ELF64, little endian: check the program headers. Other classes go to the loader.
    if bytes.len() < 64 || bytes[4] != 2 || bytes[5] != 1 {
        return Ok(());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let e_type = u16_at(0x10);
    if e_type != 3 {
        let what = match e_type {
            1 => "a relocatable object (.o)",
            2 => "an executable",
            4 => "a core dump",
            _ => "not a shared object",
        };
        return Err(not_a_library(&format!(
            "the file is ELF but {what}, not a shared library"
        )));
    }
    let (phoff, phentsize, phnum) = (u64_at(&bytes, 0x20), u16_at(0x36), u16_at(0x38));
    let ph_end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if ph_end > size {
        return Err(truncated(ph_end, size));
    }
    let table = if ph_end as usize <= bytes.len() {
        bytes[phoff as usize..ph_end as usize].to_vec()
    } else {
        read_range(path, phoff, ph_end).map_err(|e| unreadable(path, &e))?
    };
    let mut need = ph_end;
    for i in 0..phnum as usize {
        let h = &table[i * phentsize as usize..];
        if h.len() < 0x28 {
            break;
        }
        let p_type = u32::from_le_bytes(h[0..4].try_into().unwrap());
        if p_type == 1 {
            // PT_LOAD: offset + size in the file
            need = need.max(u64_at(h, 0x08).saturating_add(u64_at(h, 0x20)));
        }
    }
    if need > size {
        return Err(truncated(need, size));
    }
    Ok(())
}

fn truncated(need: u64, size: u64) -> Refusal {
    not_a_library(&format!(
        "the file is truncated: its ELF headers need {need} bytes but it has {size}; copy the library again"
    ))
}

fn not_a_library(what: &str) -> Refusal {
    Refusal::new(
        kind::NOT_A_LIBRARY,
        format!("not a loadable library: {what}"),
    )
}

fn read_prefix(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut buf = vec![0; (end - start) as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib(name: &str) -> String {
        name.replace(".so", &format!(".{LIB_SUFFIX}"))
    }

    #[test]
    fn discovery_is_sorted_and_filters_by_suffix() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.so", "a.so", "notes.txt", "c.so.bak"] {
            std::fs::write(dir.path().join(lib(f)), b"x").unwrap();
        }
        let found = discover(&[dir.path().to_path_buf(), dir.path().to_path_buf()]);
        let names: Vec<String> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![lib("a.so"), lib("b.so")]);
    }

    #[test]
    fn cli_dirs_win_over_the_environment() {
        let dirs = plugin_dirs(&[PathBuf::from("/x")]);
        assert_eq!(dirs, vec![PathBuf::from("/x")]);
    }

    #[cfg(unix)]
    #[test]
    fn directories_and_link_loops_are_candidates_refused_with_a_kind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(lib("x.so"))).unwrap();
        std::os::unix::fs::symlink(lib("loop.so"), dir.path().join(lib("loop.so"))).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join(lib("dangling.so"))).unwrap();
        let found = candidates(&[dir.path().to_path_buf()]);
        let kind_of = |n: &str| {
            found
                .iter()
                .find(|c| c.path.ends_with(lib(n)))
                .unwrap()
                .key
                .clone()
                .unwrap_err()
        };
        assert_eq!(kind_of("x.so").kind, kind::NOT_A_FILE);
        let l = kind_of("loop.so");
        assert_eq!(l.kind, kind::UNREADABLE);
        assert!(l.reason.contains("loops"), "{}", l.reason);
        let d = kind_of("dangling.so");
        assert!(
            d.reason.contains("dangling") && d.reason.contains("nowhere"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_key_changes_with_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.so");
        std::fs::write(&f, b"one").unwrap();
        let k1 = FileKey::of(&f).unwrap();
        assert_eq!(k1, FileKey::of(&f).unwrap());
        std::fs::write(&f, b"three").unwrap();
        assert_ne!(k1, FileKey::of(&f).unwrap());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_precheck_refuses_empty_foreign_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let check = |bytes: &[u8]| {
            let f = dir.path().join("f.so");
            std::fs::write(&f, bytes).unwrap();
            precheck(&f, bytes.len() as u64)
        };
        let e = check(b"").unwrap_err();
        assert!(e.reason.contains("empty"), "{}", e.reason);
        let e = check(b"not an ELF file").unwrap_err();
        assert!(e.reason.contains("not a loadable library"), "{}", e.reason);
        // A real shared library (this test's libc) passes; its first 4096 bytes do not.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
        ]
        .iter()
        .find_map(|p| std::fs::read(p).ok());
        if let Some(libc) = libc {
            assert!(check(&libc).is_ok());
            let e = check(&libc[..4096]).unwrap_err();
            assert!(e.reason.contains("truncated"), "{}", e.reason);
        }
        // The test executable is a PIE: ELF type 3 as well, so it passes; its header cut short does not.
        let e = check(&exe[..100]).unwrap_err();
        assert_eq!(e.kind, kind::NOT_A_LIBRARY);
    }
}
