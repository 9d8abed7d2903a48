//! The bytes of a plugin file, read once and held so that what is hashed is what is
//! loaded.
//!
//! Loading a library by its path reads the file again, so a file rewritten between a
//! check and the `dlopen` would run unchecked code. On Linux the file is instead opened
//! once, its ownership and mode are checked on that descriptor, its bytes are copied into
//! a sealed memfd (no write, grow or shrink can follow) while they are hashed, and the
//! dynamic loader opens the memfd as `/proc/self/fd/N`. The descriptor stays open for
//! the life of the process, as the library does: glibc recognises an already loaded
//! library by its name, and a reused `/proc/self/fd/N` must never name another one.
//!
//! A consequence for authors: `$ORIGIN` in a plugin's rpath names `/proc/self/fd`, not
//! the plugin's directory, so a plugin finds its dependencies through absolute rpaths or
//! the loader's search path (the plugins cargo builds use absolute rpaths).
//!
//! Elsewhere the library is hashed from one descriptor and loaded by its path, which
//! leaves the window open; the platforms without memfd are not deployment targets yet.
use std::path::{Path, PathBuf};
use terrahost_index::integrity;
use terrahost_index::meta::{kind, Refusal};

/// A plugin file's bytes, hashed, ready to be dlopened from [`Sealed::load_path`].
pub struct Sealed {
    /// The file as found (named in messages).
    pub path: PathBuf,
    /// The sha256 of the bytes that will be loaded.
    pub sha256: String,
    load_path: PathBuf,
    /// The memfd, kept open for as long as the process lives (see the module docs).
    #[cfg(target_os = "linux")]
    _fd: Option<std::os::fd::OwnedFd>,
}

impl Sealed {
    /// Reads the file at `path` once: checks that it is a regular file owned and moded
    /// as [`terrahost_index::trust`] requires (from the open descriptor, so the file
    /// checked is the file read), then copies and hashes it.
    pub fn open(path: &Path) -> Result<Self, Refusal> {
        let unreadable =
            |e: std::io::Error| Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}"));
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(Refusal::new(
                kind::NOT_A_FILE,
                "is not a regular file; plugin directories hold library files",
            ));
        }
        #[cfg(unix)]
        {
            let me = unsafe { libc::geteuid() };
            let judged = terrahost_index::trust::check_one(
                path,
                terrahost_index::trust::Mode::from(&meta),
                me,
                false,
            )
            .and_then(|()| terrahost_index::trust::check_strict(path));
            if let Err(r) = judged {
                if !terrahost_index::trust::insecure_allowed() {
                    return Err(r);
                }
            }
        }
        Self::copy(path, file)
    }

    #[cfg(target_os = "linux")]
    fn copy(path: &Path, mut file: std::fs::File) -> Result<Self, Refusal> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let name = c"terrahost-plugin";
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            // No memfd (an old kernel, a seccomp filter): hash from the descriptor and load
            // by path, as on other platforms.
            let sha256 = integrity::sha256_reader(&mut file)
                .map_err(|e| Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}")))?;
            return Ok(Self {
                path: path.to_path_buf(),
                sha256,
                load_path: path.to_path_buf(),
                _fd: None,
            });
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut memfd = std::fs::File::from(fd);
        let sha256 = copy_hashing(&mut file, &mut memfd)
            .map_err(|e| Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}")))?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(Refusal::new(
                kind::UNREADABLE,
                format!(
                    "cannot seal the copy of the library: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        let load_path = PathBuf::from(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            load_path,
            _fd: Some(memfd.into()),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn copy(path: &Path, file: std::fs::File) -> Result<Self, Refusal> {
        let sha256 = integrity::sha256_reader(file)
            .map_err(|e| Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            load_path: path.to_path_buf(),
        })
    }

    /// The path to give the dynamic loader.
    pub fn load_path(&self) -> &Path {
        &self.load_path
    }

    /// Keeps the descriptor open for the rest of the process (the library stays loaded).
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

/// The largest plugin file read: a library beyond it is refused rather than copied into
/// memory (release builds of the bundled plugins are tens of MB).
pub const MAX_LIBRARY_BYTES: u64 = 2 << 30;

/// Copies `from` into `to` in chunks and returns the sha256 of what was copied.
#[cfg(target_os = "linux")]
fn copy_hashing(from: &mut std::fs::File, to: &mut std::fs::File) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_LIBRARY_BYTES {
            return Err(std::io::Error::other(format!(
                "the file is larger than {} GiB, which no plugin library is",
                MAX_LIBRARY_BYTES >> 30
            )));
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_sealed_and_hashes_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.so");
        std::fs::write(&f, b"library bytes").unwrap();
        let s = Sealed::open(&f).unwrap();
        assert_eq!(s.sha256, integrity::sha256_hex(b"library bytes"));
        assert!(s.load_path().starts_with("/proc/self/fd"));
        // The file changes; the copy does not, and cannot be written.
        std::fs::write(&f, b"other bytes!!").unwrap();
        assert_eq!(std::fs::read(s.load_path()).unwrap(), b"library bytes");
        let w = std::fs::OpenOptions::new().write(true).open(s.load_path());
        let wrote = w.and_then(|mut w| std::io::Write::write_all(&mut w, b"x"));
        assert!(wrote.is_err(), "a sealed memfd refuses writes");
    }
}
