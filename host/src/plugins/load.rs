//! Loading a library into this process, and the sources that load it only when needed.
//!
//! [`open`] is the one place a plugin library is dlopened and checked: the scanner child
//! runs it to probe a file ([`describe`]), and the host runs it when a build first needs
//! one of the library's sources ([`LazySource`]). It checks, in order: that the dynamic
//! loader accepts the file and finds its dependencies, that it exports abi_stable's
//! root module, that the module's layout is the host's, then the manifest's versions
//! (plugin-api by semver; libtorch, C++ ABI and target exactly), and only then calls
//! the plugin's `sources()`. Libraries are never unloaded: modules built from them may
//! live until the process ends.
use super::discover::FileKey;
use super::meta::{self, kind, Outcome, PluginInfo, Refusal, RefusedName, SourceMeta};
use abi_stable::{
    library::{lib_header_from_path, LibraryError, RootModule},
    sabi_trait::TD_Opaque,
    std_types::{RResult, RStr, RString, RVec},
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
pub use terrahost_index::meta::first_line;
use terrahost_plugin_api::{
    BuildRequest, EntryInfo, HostRef, Manifest, ModuleBox, PluginError, PluginRoot_Ref, Source,
    SourceEntry, Source_TO,
};

/// How [`open`] asks the dynamic loader to bind symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Resolve every symbol now, so a missing one is a refusal and not a crash later
    /// (the scanner).
    Now,
    /// Resolve on first use, the loader's default (the host, after a successful scan).
    Lazy,
}

/// Opens `path`, checks it, and returns its manifest and sources.
pub fn open(path: &Path, binding: Binding) -> Result<(Manifest, Vec<SourceEntry>), Refusal> {
    // libloading first: it tells a file that is not a library (or whose dependencies
    // are missing) from a library that is not a terrahost plugin, with the loader's
    // own message. The handle is leaked on purpose: plugins are never unloaded.
    let lib = dlopen(path, binding).map_err(|e| dlopen_refusal(path, &e))?;
    let symbol = abi_stable::library::ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes();
    // SAFETY: we only test for the symbol's presence; it is not called through this type.
    let has_root = unsafe { lib.get::<*const ()>(symbol) }.is_ok();
    std::mem::forget(lib);
    if !has_root {
        return Err(Refusal::new(
            kind::NOT_A_PLUGIN,
            "not a terrahost plugin: the library exports no abi_stable root module \
             (a plugin's cdylib crate exports one with `terrahost_plugin_api::export_plugin!`)",
        ));
    }
    let header = lib_header_from_path(path).map_err(|e| library_refusal(&e))?;
    let root = header
        .init_root_module::<PluginRoot_Ref>()
        .map_err(|e| library_refusal(&e))?;
    let manifest = (root.manifest())();
    check_manifest(&manifest)?;
    let sources = (root.sources())().into_result().map_err(|e| {
        Refusal::new(
            kind::SOURCES_FAILED,
            format!(
                "plugin `{}` failed to create its sources: {}; the plugin is broken, ask its author",
                manifest.name,
                first_line(e.message())
            ),
        )
    })?;
    Ok((manifest, sources.into_vec()))
}

fn dlopen(path: &Path, binding: Binding) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: loading a library runs its initialisers. The scanner does this in a child
    // process; the host only for files whose scan succeeded.
    #[cfg(unix)]
    unsafe {
        use libloading::os::unix::{Library, RTLD_LAZY, RTLD_LOCAL, RTLD_NOW};
        let flags = match binding {
            Binding::Now => RTLD_NOW | RTLD_LOCAL,
            Binding::Lazy => RTLD_LAZY | RTLD_LOCAL,
        };
        Library::open(Some(path), flags).map(Into::into)
    }
    #[cfg(not(unix))]
    unsafe {
        let _ = binding;
        libloading::Library::new(path)
    }
}

/// The dynamic loader's refusal, classified: a missing dependency or symbol, or a file
/// that is not a loadable library at all.
fn dlopen_refusal(path: &Path, e: &libloading::Error) -> Refusal {
    classify_loader_message(path, &e.to_string())
}

fn classify_loader_message(path: &Path, msg: &str) -> Refusal {
    // glibc names a missing dependency as "<dep>: cannot open shared object file: ..."
    // (sometimes after "<path>: "), an unresolved symbol as "<path>: undefined symbol: <sym>".
    let own = path.display().to_string();
    let rest = msg
        .strip_prefix(&own)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(msg);
    if let Some((dep, _)) = rest.split_once(": cannot open shared object file") {
        if dep != own {
            return Refusal::new(
                kind::MISSING_DEPENDENCY,
                format!(
                    "the library needs `{dep}`, which the dynamic loader cannot find; install it or add its directory to the library's rpath (or LD_LIBRARY_PATH)"
                ),
            );
        }
    }
    if let Some((_, sym)) = rest.split_once("undefined symbol: ") {
        return Refusal::new(
            kind::MISSING_DEPENDENCY,
            format!(
                "the library needs the symbol `{}`, which none of its dependencies provide; it was built against another version of a library it links",
                first_line(sym)
            ),
        );
    }
    Refusal::new(
        kind::NOT_A_LIBRARY,
        format!("not a loadable library: {}", first_line(rest)),
    )
}

/// abi_stable's errors in one line (its `Display` of a layout mismatch is a dump of
/// both type layouts, dozens of lines).
fn library_refusal(e: &LibraryError) -> Refusal {
    let api = terrahost_plugin_api::API_VERSION;
    let expected = format!(
        "the host expects root module `{}` from plugin-api {api}",
        PluginRoot_Ref::NAME
    );
    match e {
        LibraryError::AbiInstability(_) => Refusal::new(
            kind::INCOMPATIBLE_ABI,
            format!("incompatible plugin: its root module `{}` is laid out differently from plugin-api {api}'s (abi_stable's layout check failed); rebuild the plugin against plugin-api {api}", PluginRoot_Ref::NAME),
        ),
        LibraryError::InvalidAbiHeader(_) => Refusal::new(
            kind::INCOMPATIBLE_ABI,
            format!("incompatible plugin: its root-module symbol is not an abi_stable 0.11 header (garbage, or another abi_stable major); {expected}"),
        ),
        LibraryError::InvalidCAbi { .. } => Refusal::new(
            kind::INCOMPATIBLE_ABI,
            "incompatible plugin: it was compiled with a C ABI that differs from the host's (another Rust compiler?); rebuild it with the host's toolchain",
        ),
        LibraryError::IncompatibleVersionNumber {
            library_name,
            expected_version,
            actual_version,
        } => Refusal::new(
            kind::INCOMPATIBLE_API,
            format!("incompatible plugin: its root module `{library_name}` is version {actual_version}, the host needs {expected_version}; rebuild the plugin against plugin-api {}", terrahost_plugin_api::API_VERSION),
        ),
        LibraryError::ParseVersionError(v) => Refusal::new(
            kind::INVALID_MANIFEST,
            format!("the plugin's root-module version cannot be parsed: {}", first_line(&v.to_string())),
        ),
        LibraryError::RootModule { err, .. } => Refusal::new(
            kind::NOT_A_PLUGIN,
            format!("the library's root-module constructor failed: {}", first_line(&err.to_string())),
        ),
        LibraryError::Many(all) => match all.first() {
            Some(first) => library_refusal(first),
            None => Refusal::new(kind::NOT_A_PLUGIN, "not a terrahost plugin"),
        },
        other => Refusal::new(
            kind::NOT_A_PLUGIN,
            format!("not a terrahost plugin: {}", first_line(&other.to_string())),
        ),
    }
}

/// The version checks, each with both sides' values in the message.
pub fn check_manifest(m: &Manifest) -> Result<(), Refusal> {
    let invalid = |r: String| Refusal::new(kind::INVALID_MANIFEST, r);
    let name = m.name.as_str();
    if name.is_empty() {
        return Err(invalid(
            "the plugin's manifest has an empty name".to_owned(),
        ));
    }
    semver::Version::parse(m.version.as_str()).map_err(|e| {
        invalid(format!(
            "plugin `{name}` declares version {:?}, which is not semver: {e}",
            m.version.as_str()
        ))
    })?;
    let host_api = semver::Version::parse(terrahost_plugin_api::API_VERSION)
        .expect("our own version is semver");
    let plugin_api = semver::Version::parse(m.api_version.as_str()).map_err(|e| {
        Refusal::new(
            kind::INCOMPATIBLE_API,
            format!(
                "plugin `{name}` has an invalid plugin-api version {:?}: {e}",
                m.api_version.as_str()
            ),
        )
    })?;
    // A plugin built against plugin-api P runs on a host with API H when H is a
    // semver-compatible release at least as new as P (it may use fields P added).
    let req = semver::VersionReq::parse(&format!("^{plugin_api}"))
        .expect("a caret requirement of a valid version");
    if !req.matches(&host_api) {
        return Err(Refusal::new(kind::INCOMPATIBLE_API, format!(
            "plugin `{name}` was built against plugin-api {plugin_api}, which is not compatible with this host's plugin-api {host_api}; rebuild the plugin against plugin-api {host_api}"
        )));
    }
    if m.torch_version.as_str() != terrahost_plugin_api::TORCH_VERSION {
        return Err(Refusal::new(kind::INCOMPATIBLE_TORCH, format!(
            "plugin `{name}` was built against libtorch {}, but the host uses libtorch {}; both must link the same libtorch",
            m.torch_version,
            terrahost_plugin_api::TORCH_VERSION
        )));
    }
    if m.cxx11_abi != terrahost_plugin_api::TORCH_CXX11_ABI {
        return Err(Refusal::new(kind::INCOMPATIBLE_TORCH, format!(
            "plugin `{name}` was built with _GLIBCXX_USE_CXX11_ABI={}, the host with {}; rebuild it against the host's libtorch",
            u8::from(m.cxx11_abi),
            u8::from(terrahost_plugin_api::TORCH_CXX11_ABI)
        )));
    }
    if m.target.as_str() != terrahost_plugin_api::TARGET {
        return Err(Refusal::new(
            kind::INCOMPATIBLE_TARGET,
            format!(
                "plugin `{name}` was built for target {}, the host for {}; rebuild it for {}",
                m.target,
                terrahost_plugin_api::TARGET,
                terrahost_plugin_api::TARGET
            ),
        ));
    }
    Ok(())
}

/// Describes loaded sources as data: names and every entry's description.
pub fn describe_sources(
    manifest: &Manifest,
    sources: &[SourceEntry],
) -> Result<PluginInfo, Refusal> {
    let mut out = Vec::new();
    for s in sources {
        let mut entries = Vec::new();
        for name in s.source.names() {
            let info = s
                .source
                .describe(name.as_rstr())
                .into_result()
                .map_err(|e| {
                    Refusal::new(
                        kind::SOURCES_FAILED,
                        format!(
                            "plugin `{}` lists `{name}` in source `{}` but cannot describe it: {}",
                            manifest.name,
                            s.prefix,
                            first_line(e.message())
                        ),
                    )
                })?;
            entries.push(meta::entry_meta(&info));
        }
        let refusals = terrahost_plugin_api::source::refusals_of(&s.source)
            .into_iter()
            .map(|(name, why)| RefusedName { name, why })
            .collect();
        out.push(SourceMeta {
            registry: s.registry.to_string(),
            prefix: s.prefix.to_string(),
            entries,
            refusals,
        });
    }
    Ok(PluginInfo {
        manifest: meta::manifest_meta(manifest),
        sources: out,
    })
}

/// Probes `path` in this process: what the scanner child runs for each file.
pub fn describe(path: &Path) -> Outcome {
    match open(path, Binding::Now).and_then(|(m, s)| describe_sources(&m, &s)) {
        Ok(info) => Outcome::Plugin(info),
        Err(r) => Outcome::Refused(r),
    }
}

/// A library whose scan succeeded, opened on first use.
pub struct LazyLibrary {
    key: FileKey,
    sources: OnceLock<Result<Vec<SourceEntry>, String>>,
}

impl LazyLibrary {
    /// The library scanned as `key`.
    pub fn new(key: FileKey) -> Arc<Self> {
        Arc::new(Self {
            key,
            sources: OnceLock::new(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.key.path
    }

    /// Whether it has been loaded into this process.
    pub fn is_loaded(&self) -> bool {
        self.sources.get().is_some_and(Result::is_ok)
    }

    /// Its sources, loading it the first time (once, whichever thread asks first). A
    /// file that changed since it was scanned is not loaded.
    pub fn sources(&self) -> Result<&[SourceEntry], &str> {
        self.sources
            .get_or_init(|| {
                let path = &self.key.path;
                let _span = tracing::info_span!("load", file = %path.display()).entered();
                match FileKey::of(path) {
                    Ok(now) if now == self.key => {}
                    _ => {
                        return Err(format!(
                            "{} changed since it was scanned; run the command again",
                            path.display()
                        ))
                    }
                }
                let (_, sources) = open(path, Binding::Lazy)
                    .map_err(|r| format!("{}: {}", path.display(), r.reason))?;
                tracing::info!("plugin library loaded");
                Ok(sources)
            })
            .as_ref()
            .map(Vec::as_slice)
            .map_err(String::as_str)
    }
}

/// A registry source answered from a scan (names, descriptions) whose builds go to the
/// real source, loading its library on the first build.
pub struct LazySource {
    library: Arc<LazyLibrary>,
    registry: String,
    prefix: String,
    names: Vec<RString>,
    infos: Vec<EntryInfo>,
    index: HashMap<String, usize>,
    refusals: Vec<RefusedName>,
}

impl LazySource {
    /// The source `meta` of `library`.
    pub fn new(library: Arc<LazyLibrary>, meta: &SourceMeta) -> Self {
        Self {
            library,
            registry: meta.registry.clone(),
            prefix: meta.prefix.clone(),
            names: meta
                .entries
                .iter()
                .map(|e| e.name.as_str().into())
                .collect(),
            infos: meta.entries.iter().map(super::meta::to_info).collect(),
            index: meta
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.name.clone(), i))
                .collect(),
            refusals: meta.refusals.clone(),
        }
    }

    /// As a registry entry the host can register.
    pub fn into_entry(self) -> SourceEntry {
        SourceEntry {
            registry: self.registry.as_str().into(),
            prefix: self.prefix.as_str().into(),
            source: Source_TO::from_value(self, TD_Opaque),
        }
    }

    fn not_found(&self, name: &str) -> PluginError {
        PluginError::not_found(format!("`{name}` is not in source `{}`", self.prefix))
    }

    /// Whether `name` is one the scan cannot list but the live source may resolve: timm's
    /// `arch.tag` names, whose `arch` is a scanned entry. Those, and only those, load
    /// the library to be answered, so metadata commands on listed names stay lazy.
    fn resolved_live(&self, name: &str) -> bool {
        name.split_once('.')
            .is_some_and(|(arch, _)| self.index.contains_key(arch))
    }

    /// Runs `f` on the live source (loading the library on first use).
    fn with_live<T>(
        &self,
        name: &str,
        f: impl FnOnce(&terrahost_plugin_api::SourceBox) -> RResult<T, PluginError>,
    ) -> RResult<T, PluginError> {
        let sources = match self.library.sources() {
            Ok(s) => s,
            Err(e) => {
                return RResult::RErr(PluginError::build_failed(format!(
                    "cannot use `{}_{name}`: its plugin library could not be loaded: {e}",
                    self.prefix
                )))
            }
        };
        match sources
            .iter()
            .find(|s| s.registry.as_str() == self.registry && s.prefix.as_str() == self.prefix)
        {
            Some(s) => f(&s.source),
            None => RResult::RErr(PluginError::build_failed(format!(
                "{} no longer provides source `{}` in the {} registry that its scan found; run `terrahost plugins --rescan`",
                self.library.path().display(),
                self.prefix,
                self.registry
            ))),
        }
    }
}

impl Source for LazySource {
    fn names(&self) -> RVec<RString> {
        self.names.iter().cloned().collect()
    }

    fn contains(&self, name: RStr<'_>) -> bool {
        self.index.contains_key(name.as_str())
            || (self.resolved_live(name.as_str())
                && self
                    .with_live(name.as_str(), |s| RResult::ROk(s.contains(name)))
                    .into_result()
                    .unwrap_or(false))
    }

    fn describe(&self, name: RStr<'_>) -> RResult<EntryInfo, PluginError> {
        if name.as_str() == terrahost_plugin_api::source::REFUSALS_NAME {
            return RResult::ROk(terrahost_plugin_api::source::refusals_entry(
                self.refusals
                    .iter()
                    .map(|r| (r.name.as_str(), r.why.as_str())),
            ));
        }
        if let Some(r) = self.refusals.iter().find(|r| r.name == name.as_str()) {
            return RResult::RErr(PluginError::new(
                terrahost_plugin_api::ErrorKind::NOT_SUPPORTED,
                r.why.clone(),
            ));
        }
        match self.index.get(name.as_str()) {
            Some(&i) => RResult::ROk(self.infos[i].clone()),
            None if self.resolved_live(name.as_str()) => {
                self.with_live(name.as_str(), |s| s.describe(name))
            }
            None => RResult::RErr(self.not_found(name.as_str())),
        }
    }

    fn build(
        &self,
        name: RStr<'_>,
        request: BuildRequest,
        host: HostRef<'_>,
    ) -> RResult<ModuleBox, PluginError> {
        if !self.index.contains_key(name.as_str()) && !self.resolved_live(name.as_str()) {
            return RResult::RErr(self.not_found(name.as_str()));
        }
        self.with_live(name.as_str(), |s| s.build(name, request, host))
    }
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
        assert_eq!(e.kind, kind::INCOMPATIBLE_API);
        assert!(
            e.reason.contains("99.0.0") && e.reason.contains(ours),
            "{e:?}"
        );
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
        let e = check_manifest(&m).unwrap_err();
        assert_eq!(e.kind, kind::INVALID_MANIFEST);
        assert!(e.reason.contains("not semver"));
    }

    #[test]
    fn libtorch_version_must_match_exactly() {
        let e = check_manifest(&manifest(terrahost_plugin_api::API_VERSION, "2.12.0")).unwrap_err();
        assert_eq!(e.kind, kind::INCOMPATIBLE_TORCH);
        assert!(
            e.reason.contains("2.12.0") && e.reason.contains(terrahost_plugin_api::TORCH_VERSION),
            "{e:?}"
        );
    }

    #[test]
    fn loader_messages_are_classified() {
        let p = Path::new("/p/libx.so");
        let r = classify_loader_message(
            p,
            "/p/libx.so: libdep.so: cannot open shared object file: No such file or directory",
        );
        assert_eq!(r.kind, kind::MISSING_DEPENDENCY);
        assert!(r.reason.contains("`libdep.so`"), "{}", r.reason);
        let r = classify_loader_message(
            p,
            "libdep.so: cannot open shared object file: No such file or directory",
        );
        assert_eq!(r.kind, kind::MISSING_DEPENDENCY);
        assert!(r.reason.contains("`libdep.so`"), "{}", r.reason);
        let r = classify_loader_message(p, "/p/libx.so: undefined symbol: frob\n");
        assert_eq!(r.kind, kind::MISSING_DEPENDENCY);
        assert!(r.reason.contains("`frob`"), "{}", r.reason);
        let r = classify_loader_message(p, "/p/libx.so: invalid ELF header");
        assert_eq!(r.kind, kind::NOT_A_LIBRARY);
        assert_eq!(r.reason, "not a loadable library: invalid ELF header");
        assert_eq!(first_line("\n\n  first \nsecond"), "first");
    }
}
