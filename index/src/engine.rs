//! The heavy binary, `terrahost-engine`: it links libtorch, runs the scans
//! (`__scan`), and does every command the front does not answer itself (`build`,
//! `run`, `predict`, `--help`). The front hands a command over as git and cargo hand
//! off subcommands: it `exec`s the engine with the same arguments, so the exit code,
//! stdin, stdout, stderr and signals are the engine's own.
use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable naming the engine executable (default: `terrahost-engine`
/// beside `terrahost`).
pub const ENGINE_VAR: &str = "TERRAHOST_ENGINE";

/// `terrahost-engine`, with the platform's executable suffix.
pub fn engine_file_name() -> String {
    format!("terrahost-engine{}", std::env::consts::EXE_SUFFIX)
}

/// The engine: `TERRAHOST_ENGINE` if set; else `terrahost-engine` beside this
/// executable, or one directory up (where cargo puts the binaries relative to test
/// executables in `target/<profile>/deps`).
pub fn find_engine() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENGINE_VAR).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let name = engine_file_name();
    [Some(dir.join(&name)), dir.parent().map(|d| d.join(&name))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

/// Replaces this process with the engine running `args`. Returns only on failure,
/// with a one-line message.
pub fn exec(args: &[OsString]) -> String {
    let Some(engine) = find_engine() else {
        return format!(
            "cannot find {} beside this terrahost; install both binaries together, or set {ENGINE_VAR} to its path",
            engine_file_name()
        );
    };
    exec_at(&engine, args)
}

/// [`exec`] with the engine at `engine`.
pub fn exec_at(engine: &std::path::Path, args: &[OsString]) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new(engine).args(args).exec();
        format!(
            "cannot run {}: {e}; install {} beside terrahost, or set {ENGINE_VAR} to its path",
            engine.display(),
            engine_file_name()
        )
    }
    #[cfg(not(unix))]
    {
        match std::process::Command::new(engine).args(args).status() {
            Ok(s) => std::process::exit(s.code().unwrap_or(1)),
            Err(e) => format!("cannot run {}: {e}", engine.display()),
        }
    }
}
