//! Which plugin files may be loaded at all, judged from their ownership and modes the way
//! OpenSSH's `StrictModes` judges `authorized_keys`: loading a library runs its code, so a
//! file that someone other than root or the invoking user could have written is refused
//! before anything opens it, in the scanner as well as in the engine.
//!
//! The rule, for the file and for every directory above it (both along the path as found
//! in the plugin directory and along its canonical path, so a symbolic link cannot lead
//! around it):
//! - owned by root or by the effective user;
//! - not writable by group or others, except a root-owned directory with the sticky bit
//!   (`/tmp`), where nobody can replace another user's entry;
//! - the file itself is a regular file.
//!
//! `--allow-insecure-plugins` or `TERRAHOST_ALLOW_INSECURE_PLUGINS=1` turns the check off
//! (each insecure file is then loaded with a warning).
use crate::meta::{kind, Refusal};
use std::path::{Path, PathBuf};

/// The environment variable that turns the check off (`1`, `true` or `yes`). The
/// `--allow-insecure-plugins` flag sets it, so the scanner child inherits the choice.
pub const ALLOW_INSECURE_VAR: &str = "TERRAHOST_ALLOW_INSECURE_PLUGINS";

/// Whether `TERRAHOST_ALLOW_INSECURE_PLUGINS` turns the check off.
pub fn insecure_allowed() -> bool {
    std::env::var(ALLOW_INSECURE_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// What [`check`] looks at for one path: the fields of `lstat`/`fstat` that matter.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// Owner uid.
    pub uid: u32,
    /// Permission bits and file type (`st_mode`).
    pub mode: u32,
}

#[cfg(unix)]
impl From<&std::fs::Metadata> for Mode {
    fn from(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            uid: m.uid(),
            mode: m.mode(),
        }
    }
}

/// Checks the plugin file `path` (as found) and the directories above it. With the
/// check turned off ([`insecure_allowed`]) a failure is logged as a warning instead.
pub fn check(path: &Path) -> Result<(), Refusal> {
    match check_strict(path) {
        Err(r) if insecure_allowed() => {
            tracing::warn!(file = %path.display(), "loading an insecure plugin file ({ALLOW_INSECURE_VAR}): {}", r.reason);
            Ok(())
        }
        other => other,
    }
}

/// [`check`] without the opt-out.
#[cfg(unix)]
pub fn check_strict(path: &Path) -> Result<(), Refusal> {
    let me = unsafe { libc::geteuid() };
    let meta = std::fs::metadata(path)
        .map_err(|e| Refusal::new(kind::UNREADABLE, format!("cannot be read: {e}")))?;
    check_one(path, Mode::from(&meta), me, false)?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut dirs: Vec<PathBuf> = ancestors(path);
    for d in ancestors(&canonical) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for dir in dirs {
        // lstat: a symbolic link among the directories is judged by what it points at
        // through the canonical walk; the link itself cannot be written through.
        let Ok(m) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if m.file_type().is_symlink() {
            continue;
        }
        check_one(&dir, Mode::from(&m), me, true)?;
    }
    Ok(())
}

/// Without unix ownership there is nothing to check.
#[cfg(not(unix))]
pub fn check_strict(_path: &Path) -> Result<(), Refusal> {
    Ok(())
}

/// The directories above `path`, nearest first, made absolute.
fn ancestors(path: &Path) -> Vec<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    abs.ancestors().skip(1).map(Path::to_path_buf).collect()
}

/// The rule for one path whose `lstat`/`fstat` gave `m`, for the effective user `me`.
pub fn check_one(path: &Path, m: Mode, me: u32, is_dir: bool) -> Result<(), Refusal> {
    const S_IFMT: u32 = 0o170_000;
    const S_IFREG: u32 = 0o100_000;
    const S_ISVTX: u32 = 0o1000;
    let what = if is_dir { "directory" } else { "plugin file" };
    let perms = m.mode & 0o7777;
    if !is_dir && m.mode & S_IFMT != S_IFREG {
        return Err(Refusal::new(
            kind::NOT_A_FILE,
            format!(
                "{} is not a regular file; plugin directories hold library files",
                path.display()
            ),
        ));
    }
    if m.uid != 0 && m.uid != me {
        return Err(insecure(format!(
            "{what} {} is owned by uid {}, not by root or by you (uid {me}); if you trust it, run `chown {me} {}`",
            path.display(),
            m.uid,
            path.display()
        )));
    }
    let sticky_root_dir = is_dir && m.uid == 0 && perms & S_ISVTX != 0;
    if perms & 0o022 != 0 && !sticky_root_dir {
        let who = match perms & 0o022 {
            0o020 => "its group",
            0o002 => "others",
            _ => "its group and others",
        };
        return Err(insecure(format!(
            "{what} {} is writable by {who} (mode {:04o}); if you trust it, run `chmod go-w {}`",
            path.display(),
            perms,
            path.display()
        )));
    }
    Ok(())
}

fn insecure(reason: String) -> Refusal {
    Refusal::new(
        kind::INSECURE,
        format!("{reason} (or pass --allow-insecure-plugins)"),
    )
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(uid: u32, mode: u32) -> Mode {
        Mode { uid, mode }
    }

    #[test]
    fn the_rule_for_one_path() {
        let p = Path::new("/p/x.so");
        let file = 0o100_000;
        assert!(check_one(p, mode(0, file | 0o755), 1000, false).is_ok());
        assert!(check_one(p, mode(1000, file | 0o700), 1000, false).is_ok());
        let e = check_one(p, mode(1001, file | 0o755), 1000, false).unwrap_err();
        assert_eq!(e.kind, kind::INSECURE);
        assert!(
            e.reason.contains("owned by uid 1001") && e.reason.contains("chown 1000 /p/x.so"),
            "{}",
            e.reason
        );
        let e = check_one(p, mode(1000, file | 0o775), 1000, false).unwrap_err();
        assert!(
            e.reason.contains("writable by its group") && e.reason.contains("mode 0775"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("chmod go-w /p/x.so"), "{}", e.reason);
        let e = check_one(p, mode(1000, file | 0o777), 1000, false).unwrap_err();
        assert!(e.reason.contains("its group and others"), "{}", e.reason);
        // /tmp: root-owned, sticky, world-writable: fine as a directory, not as a file.
        assert!(check_one(Path::new("/tmp"), mode(0, 0o40_000 | 0o1777), 1000, true).is_ok());
        assert!(check_one(
            Path::new("/tmp/d"),
            mode(1000, 0o40_000 | 0o1777),
            1000,
            true
        )
        .is_err());
        assert!(check_one(p, mode(0, file | 0o1777), 1000, false).is_err());
        let e = check_one(p, mode(1000, 0o010_000 | 0o600), 1000, false).unwrap_err();
        assert_eq!(e.kind, kind::NOT_A_FILE);
    }

    #[test]
    fn a_writable_directory_above_the_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("p.so");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_strict(&f).is_ok());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_strict(&f).unwrap_err();
        assert!(
            e.reason.contains("directory") && e.reason.contains("plugins"),
            "{}",
            e.reason
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_strict(&f).unwrap_err();
        assert!(
            e.reason.contains("plugin file") && e.reason.contains("0666"),
            "{}",
            e.reason
        );
        // A link from a safe directory to a file in an unsafe one is judged by both walks.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let other = tmp.path().join("safe");
        std::fs::create_dir(&other).unwrap();
        let link = other.join("p.so");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(check_strict(&link).is_ok());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(check_strict(&link).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
