//! What a plugin file's bytes are: their sha256, and the allowlist of hashes that may
//! load.
//!
//! The scanner hashes the bytes it loads (from one open descriptor, see the engine's
//! `plugins::sealed`), the registry cache keeps that hash with the scan, and the engine
//! hashes the bytes it loads again and refuses them when they differ from what was
//! scanned. With an allowlist (`--allowlist FILE` or `TERRAHOST_PLUGIN_ALLOWLIST=FILE`,
//! lines in `sha256sum`'s format), only libraries whose hash is listed load; the others
//! are refused as `not-allowed`, before anything opens them as a library.
use crate::meta::{kind, Refusal};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The environment variable naming the allowlist file. `--allowlist FILE` sets it, so
/// the scanner child and the engine inherit it.
pub const ALLOWLIST_VAR: &str = "TERRAHOST_PLUGIN_ALLOWLIST";

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The lowercase hex sha256 of everything `reader` yields.
pub fn sha256_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The lowercase hex sha256 of the file at `path`.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_reader(std::fs::File::open(path)?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hashes that may load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    /// Where it was read from (named in refusals).
    pub path: PathBuf,
    hashes: HashSet<String>,
}

impl Allowlist {
    /// Parses `text` (from `path`): one `HASH  NAME` or `HASH *NAME` line per library, as
    /// `sha256sum` writes them; blank lines and `#` comments are skipped. Only the hash
    /// counts: the name is for people.
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let mut hashes = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hash = line.split_whitespace().next().unwrap_or("");
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{}:{}: not a sha256sum line (expected 64 hex digits, then the file name); write one with `sha256sum FILE`",
                    path.display(),
                    i + 1
                ));
            }
            hashes.insert(hash.to_ascii_lowercase());
        }
        Ok(Self {
            path: path.to_path_buf(),
            hashes,
        })
    }

    /// Reads the allowlist at `path`: a regular file of at most 16 MiB.
    pub fn read(path: &Path) -> Result<Self, String> {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("allowlist {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "allowlist {} is not a regular file",
                path.display()
            ));
        }
        if meta.len() > 16 << 20 {
            return Err(format!(
                "allowlist {} is {} bytes; an allowlist of sha256sum lines is far smaller (limit 16 MiB)",
                path.display(),
                meta.len()
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("allowlist {}: {e}", path.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| format!("allowlist {} is not UTF-8 text", path.display()))?;
        Self::parse(path, &text)
    }

    /// The allowlist `TERRAHOST_PLUGIN_ALLOWLIST` names, if any.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var_os(ALLOWLIST_VAR).filter(|v| !v.is_empty()) {
            Some(p) => Self::read(Path::new(&p)).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `sha256` (lowercase hex) is listed.
    pub fn allows(&self, sha256: &str) -> bool {
        self.hashes.contains(sha256)
    }

    /// `Ok` when `sha256` is listed, else the `not-allowed` refusal that names it.
    pub fn check(&self, sha256: &str) -> Result<(), Refusal> {
        if self.allows(sha256) {
            return Ok(());
        }
        Err(Refusal::new(
            kind::NOT_ALLOWED,
            format!(
                "sha256 {sha256} is not in the allowlist {}; if you trust this library, add the line `sha256sum FILE` prints for it",
                self.path.display()
            ),
        ))
    }
}

/// The policy every process applies: the allowlist named in the environment. An
/// allowlist that cannot be read refuses everything (with its reason), rather than
/// silently allowing everything.
#[derive(Clone, Debug)]
pub enum Policy {
    /// No allowlist: every hash may load.
    Open,
    /// Only these hashes.
    Allow(Allowlist),
    /// The allowlist named could not be read.
    Broken(String),
}

impl Policy {
    /// The policy from `TERRAHOST_PLUGIN_ALLOWLIST`.
    pub fn from_env() -> Self {
        match Allowlist::from_env() {
            Ok(None) => Self::Open,
            Ok(Some(a)) => Self::Allow(a),
            Err(e) => Self::Broken(e),
        }
    }

    /// Whether an allowlist is in force (so files must be hashed before they are scanned).
    pub fn restricts(&self) -> bool {
        !matches!(self, Self::Open)
    }

    /// Whether the library with `sha256` may load.
    pub fn check(&self, sha256: &str) -> Result<(), Refusal> {
        match self {
            Self::Open => Ok(()),
            Self::Allow(a) => a.check(sha256),
            Self::Broken(e) => Err(Refusal::new(kind::NOT_ALLOWED, e.clone())),
        }
    }
}

/// Writes `rows` (`(sha256, path)`) to `out` in `sha256sum`'s format, atomically: a
/// temporary file beside it, then a rename over it (a symbolic link at `out` is
/// replaced, not followed).
pub fn write_allowlist(out: &Path, rows: &[(String, PathBuf)]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut text = String::from(
        "# terrahost plugin allowlist (sha256sum format): terrahost plugins --allowlist-out\n",
    );
    for (hash, path) in rows {
        text.push_str(&format!("{hash}  {}\n", path.display()));
    }
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "allowlist".into()),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_reader(&b"abc"[..]).unwrap(), sha256_hex(b"abc"));
    }

    #[test]
    fn allowlists_read_sha256sum_lines() {
        let h = sha256_hex(b"abc");
        let a = Allowlist::parse(
            Path::new("a.txt"),
            &format!(
                "# comment\n\n{}  lib.so\n{} *other.so\n",
                h.to_uppercase(),
                "0".repeat(64)
            ),
        )
        .unwrap();
        assert!(a.allows(&h));
        let e = a.check(&sha256_hex(b"abd")).unwrap_err();
        assert_eq!(e.kind, kind::NOT_ALLOWED);
        assert!(
            e.reason.contains(&sha256_hex(b"abd")) && e.reason.contains("a.txt"),
            "{}",
            e.reason
        );
        let e = Allowlist::parse(Path::new("a.txt"), "abc lib.so\n").unwrap_err();
        assert!(e.starts_with("a.txt:1: not a sha256sum line"), "{e}");
    }

    #[test]
    fn a_written_allowlist_reads_back_and_replaces_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let out = dir.path().join("allow.txt");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &out).unwrap();
        let h = sha256_hex(b"x");
        write_allowlist(&out, &[(h.clone(), PathBuf::from("/p/x.so"))]).unwrap();
        assert!(Allowlist::read(&out).unwrap().allows(&h));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
