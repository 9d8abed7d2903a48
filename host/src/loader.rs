//! Finding and loading plugin libraries.
//!
//! 1. **Discovery**: the plugin directories are `--plugin-dir DIR` (repeatable), else
//!    the colon-separated `TERRAHOST_PLUGIN_PATH`, else [`default_plugin_dirs`]. In each
//!    directory, in order, every file with the platform's library suffix (`.so`,
//!    `.dylib`, `.dll`) is a candidate, sorted by file name so the load order is
//!    deterministic.
//! 2. **Load**: `libloading` opens the file (a file that is not a library is refused
//!    here) and looks for abi_stable's root-module symbol (a library that is not a
//!    plugin is refused here). Then `abi_stable` checks the root module's layout and
//!    initialises it with `lib_header_from_path(..)?.init_root_module()`. Libraries are
//!    never unloaded: modules built from them may live until the process ends.
//! 3. **Checks**: the plugin-api version must be semver-compatible with the host's;
//!    libtorch version, C++ ABI and target must match exactly.
//! 4. **Registration**: see [`Host::add_plugin`]. A refused plugin leaves the others
//!    loaded.
use crate::host::Host;
use abi_stable::library::{lib_header_from_path, RootModule};
use std::path::{Path, PathBuf};
use terrahost_plugin_api::{Manifest, PluginRoot_Ref, SourceEntry};

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

/// The candidate libraries in `dirs`: directories in order, files by name, each real
/// file once. Missing directories are skipped (and logged).
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let _span = tracing::info_span!("discover").entered();
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            tracing::debug!(dir = %dir.display(), "plugin directory does not exist or cannot be read");
            continue;
        };
        let mut files: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == LIB_SUFFIX))
            .collect();
        files.sort();
        for f in files {
            let key = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if seen.insert(key) {
                tracing::debug!(file = %f.display(), "candidate plugin");
                found.push(f);
            }
        }
    }
    found
}

/// Loads every candidate in `dirs` into `host`; refused files are recorded with their
/// reason and the rest go on loading.
pub fn load_into(host: &mut Host, dirs: &[PathBuf]) {
    for path in discover(dirs) {
        let _span = tracing::info_span!("load", file = %path.display()).entered();
        match load_library(&path) {
            Ok((manifest, sources)) => {
                let name = manifest.name.to_string();
                if let Err(e) = host.add_plugin(manifest, Some(path.clone()), sources) {
                    host.reject(path, e.to_string());
                } else {
                    tracing::info!(plugin = %name, "plugin loaded");
                }
            }
            Err(reason) => host.reject(path, reason),
        }
    }
}

/// Opens `path`, checks it, and returns its manifest and sources.
pub fn load_library(path: &Path) -> Result<(Manifest, Vec<SourceEntry>), String> {
    // libloading first: it tells a file that is not a library (or whose dependencies
    // are missing) from a library that is not a terrahost plugin, with the loader's
    // own message. The handle is leaked on purpose: plugins are never unloaded.
    // SAFETY: loading a library runs its initialisers; plugin directories are trusted
    // the way PATH is.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("not a loadable library: {e}"))?;
    let symbol = abi_stable::library::ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes();
    // SAFETY: we only test for the symbol's presence; it is not called through this type.
    let has_root = unsafe { lib.get::<*const ()>(symbol) }.is_ok();
    std::mem::forget(lib);
    if !has_root {
        return Err(
            "not a terrahost plugin: the library exports no abi_stable root module \
             (plugins declare one with `terrahost_plugin_api::declare_plugin!`)"
                .to_owned(),
        );
    }
    let header = lib_header_from_path(path).map_err(|e| format!("not a terrahost plugin: {e}"))?;
    let root = header.init_root_module::<PluginRoot_Ref>().map_err(|e| {
        format!(
            "incompatible plugin: {e} (the host expects `{}` from plugin-api {})",
            PluginRoot_Ref::NAME,
            terrahost_plugin_api::API_VERSION
        )
    })?;
    let manifest = (root.manifest())();
    check_manifest(&manifest)?;
    let sources = (root.sources())().into_result().map_err(|e| {
        format!(
            "plugin `{}` failed to create its sources: {e}",
            manifest.name
        )
    })?;
    Ok((manifest, sources.into_vec()))
}

/// The version checks, each with both sides' values in the message.
pub fn check_manifest(m: &Manifest) -> Result<(), String> {
    let name = m.name.as_str();
    if name.is_empty() {
        return Err("the plugin's manifest has an empty name".to_owned());
    }
    semver::Version::parse(m.version.as_str()).map_err(|e| {
        format!(
            "plugin `{name}` declares version {:?}, which is not semver: {e}",
            m.version.as_str()
        )
    })?;
    let host_api = semver::Version::parse(terrahost_plugin_api::API_VERSION)
        .expect("our own version is semver");
    let plugin_api = semver::Version::parse(m.api_version.as_str()).map_err(|e| {
        format!(
            "plugin `{name}` has an invalid plugin-api version {:?}: {e}",
            m.api_version.as_str()
        )
    })?;
    // A plugin built against plugin-api P runs on a host with API H when H is a
    // semver-compatible release at least as new as P (it may use fields P added).
    let req = semver::VersionReq::parse(&format!("^{plugin_api}"))
        .expect("a caret requirement of a valid version");
    if !req.matches(&host_api) {
        return Err(format!(
            "plugin `{name}` was built against plugin-api {plugin_api}, which is not compatible with this host's plugin-api {host_api}; rebuild the plugin against plugin-api {host_api}"
        ));
    }
    if m.torch_version.as_str() != terrahost_plugin_api::TORCH_VERSION {
        return Err(format!(
            "plugin `{name}` was built against libtorch {}, but the host uses libtorch {}; both must link the same libtorch",
            m.torch_version,
            terrahost_plugin_api::TORCH_VERSION
        ));
    }
    if m.cxx11_abi != terrahost_plugin_api::TORCH_CXX11_ABI {
        return Err(format!(
            "plugin `{name}` was built with _GLIBCXX_USE_CXX11_ABI={}, the host with {}; rebuild it against the host's libtorch",
            u8::from(m.cxx11_abi),
            u8::from(terrahost_plugin_api::TORCH_CXX11_ABI)
        ));
    }
    if m.target.as_str() != terrahost_plugin_api::TARGET {
        return Err(format!(
            "plugin `{name}` was built for target {}, the host for {}",
            m.target,
            terrahost_plugin_api::TARGET
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(api: &str, torch: &str) -> Manifest {
        let mut m = Manifest::current("p", "1.0.0", vec![]);
        m.api_version = api.into();
        m.torch_version = torch.into();
        m
    }

    #[test]
    fn api_versions_are_checked_with_semver() {
        let ours = terrahost_plugin_api::API_VERSION;
        assert!(check_manifest(&manifest(ours, terrahost_plugin_api::TORCH_VERSION)).is_ok());
        let e =
            check_manifest(&manifest("99.0.0", terrahost_plugin_api::TORCH_VERSION)).unwrap_err();
        assert!(e.contains("99.0.0") && e.contains(ours), "{e}");
        assert!(check_manifest(&manifest(
            "not-a-version",
            terrahost_plugin_api::TORCH_VERSION
        ))
        .is_err());
    }

    #[test]
    fn the_plugin_version_must_be_semver() {
        let mut m = manifest(
            terrahost_plugin_api::API_VERSION,
            terrahost_plugin_api::TORCH_VERSION,
        );
        m.version = "one".into();
        assert!(check_manifest(&m).unwrap_err().contains("not semver"));
    }

    #[test]
    fn libtorch_version_must_match_exactly() {
        let e = check_manifest(&manifest(terrahost_plugin_api::API_VERSION, "2.12.0")).unwrap_err();
        assert!(
            e.contains("2.12.0") && e.contains(terrahost_plugin_api::TORCH_VERSION),
            "{e}"
        );
    }

    #[test]
    fn discovery_is_sorted_and_filters_by_suffix() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.so", "a.so", "notes.txt", "c.so.bak"] {
            std::fs::write(
                dir.path().join(f.replace(".so", &format!(".{LIB_SUFFIX}"))),
                b"x",
            )
            .unwrap();
        }
        let found = discover(&[dir.path().to_path_buf(), dir.path().to_path_buf()]);
        let names: Vec<String> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![format!("a.{LIB_SUFFIX}"), format!("b.{LIB_SUFFIX}")]
        );
    }

    #[test]
    fn cli_dirs_win_over_the_environment() {
        let dirs = plugin_dirs(&[PathBuf::from("/x")]);
        assert_eq!(dirs, vec![PathBuf::from("/x")]);
    }
}
