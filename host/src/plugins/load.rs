//! Loading a library into this process, and the sources that load it only when needed.
//!
//! [`open`] is the one place a plugin library is dlopened and checked: the scanner child
//! runs it to probe a file ([`describe`]), and the host runs it when a build first needs
//! one of the library's sources ([`LazySource`]). It checks, in order: that the dynamic
//! loader accepts the file and finds its dependencies, that it exports abi_stable's
//! root module, that the plugin-api version it was built against (abi_stable's header
//! of the root module carries it) is semver-compatible with the host's, that the module's
//! layout is the host's (a mismatch is reported in one line naming the first type that
//! differs), then the manifest's versions (plugin-api by semver again; libtorch, C++ ABI
//! and target exactly), and only then calls the plugin's `sources()`. Libraries are never unloaded: modules built from them may
//! live until the process ends.
use super::discover::FileKey;
use super::meta::{self, kind, Outcome, PluginInfo, Refusal, RefusedName, SourceMeta};
use super::sealed::Sealed;
use abi_stable::{
    abi_stability::abi_checking::{
        check_layout_compatibility, AbiInstability, AbiInstabilityErrors, ExpectedFound,
    },
    library::{lib_header_from_path, LibHeader, LibraryError, RootModule},
    sabi_trait::TD_Opaque,
    std_types::{RResult, RStr, RString, RVec},
    type_layout::{TLData, TLFieldOrFunction, TypeLayout},
    StableAbi,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use terrahost_index::integrity::Policy;
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

/// Opens the library whose bytes `sealed` holds, checks it, and returns its manifest
/// and sources. The bytes are kept for the life of the process once the dynamic loader
/// has mapped them.
pub fn open(sealed: Sealed, binding: Binding) -> Result<(Manifest, Vec<SourceEntry>), Refusal> {
    let path = sealed.load_path().to_path_buf();
    let result = open_path(&path, binding);
    // Whatever the outcome, the loader may hold the name `/proc/self/fd/N`: keep the
    // descriptor, so the name is never reused for other bytes.
    sealed.keep();
    result
}

/// [`open`] for a path the dynamic loader reads itself.
fn open_path(path: &Path, binding: Binding) -> Result<(Manifest, Vec<SourceEntry>), Refusal> {
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
    // The version first: a plugin built against another 0.y is told so, instead of being
    // refused with the first type whose layout differs (abi_stable checks the layout
    // first for a newer 0.y, and a layout message never mentions the version).
    let plugin_api = header.version_strings().version.as_str();
    check_api_version(plugin_api)?;
    let root = header
        .init_root_module::<PluginRoot_Ref>()
        .map_err(|e| match e {
            LibraryError::AbiInstability(_) => layout_refusal(header, plugin_api),
            other => library_refusal(&other),
        })?;
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

/// Whether a plugin built against plugin-api `plugin` may run in this host: `^plugin`
/// must accept the host's version (the same 0.y, or the same major from 1.0, and the host
/// at least as new). Checked on the root module's version before its layout.
pub fn check_api_version(plugin: &str) -> Result<(), Refusal> {
    let host = semver::Version::parse(terrahost_plugin_api::API_VERSION)
        .expect("our own version is semver");
    let p = semver::Version::parse(plugin).map_err(|e| {
        Refusal::new(
            kind::INCOMPATIBLE_API,
            format!(
                "incompatible plugin: its root module declares plugin-api version {plugin:?}, which is not semver ({e}); rebuild it against plugin-api {host}"
            ),
        )
    })?;
    let req = semver::VersionReq::parse(&format!("^{p}"))
        .expect("a caret requirement of a valid version");
    if req.matches(&host) {
        return Ok(());
    }
    let line = |v: &semver::Version| {
        if v.major == 0 {
            format!("0.{}", v.minor)
        } else {
            v.major.to_string()
        }
    };
    let (pl, hl) = (line(&p), line(&host));
    Err(Refusal::new(
        kind::INCOMPATIBLE_API,
        if pl != hl {
            format!(
                "incompatible plugin: built against plugin-api {p}; this host loads {hl}.x (rebuild the plugin against plugin-api {hl})"
            )
        } else {
            format!(
                "incompatible plugin: built against plugin-api {p}, newer than this host's {host} (it may rely on what {host} lacks); upgrade terrahost, or rebuild the plugin against plugin-api {host}"
            )
        },
    ))
}

/// Layouts that went out under one version number, and how to name the older one when a
/// plugin's layout differs at that type: (plugin-api version, type, description).
const KNOWN_LAYOUT_VARIANTS: &[(&str, &str, &str)] = &[(
    "0.2.0",
    "EntryInfo",
    "an early 0.2.0, from before `EntryInfo::includes_head`",
)];

/// abi_stable's layout check failed: the refusal in one line, naming the first type that
/// differs and how (abi_stable's own message dumps both layouts over dozens of lines).
fn layout_refusal(header: &LibHeader, plugin_api: &str) -> Refusal {
    let host = terrahost_plugin_api::API_VERSION;
    let found = header.layout().and_then(|found| {
        check_layout_compatibility(<PluginRoot_Ref as StableAbi>::LAYOUT, found).err()
    });
    let Some(diff) = found.as_ref().and_then(layout_difference) else {
        return Refusal::new(
            kind::INCOMPATIBLE_ABI,
            format!("incompatible plugin: its root module `{}` is laid out differently from plugin-api {host}'s (abi_stable's layout check failed; the plugin was built against plugin-api {plugin_api}); rebuild it against plugin-api {host}", PluginRoot_Ref::NAME),
        );
    };
    let variant = KNOWN_LAYOUT_VARIANTS
        .iter()
        .find(|(v, ty, _)| *v == plugin_api && *ty == diff.ty)
        .map(|(_, _, what)| format!(" ({what})"))
        .unwrap_or_default();
    Refusal::new(
        kind::INCOMPATIBLE_ABI,
        format!(
            "incompatible plugin: plugin-api's types are laid out differently from this host's at `{}`: {}; the plugin was built against plugin-api {plugin_api}{variant}; rebuild it against plugin-api {host}",
            diff.ty, diff.what
        ),
    )
}

/// The first difference of a failed layout check.
#[derive(Debug, PartialEq, Eq)]
pub struct LayoutDifference {
    /// The host's type that differs (`EntryInfo`; a vtable as `Source_trait::VTable`).
    pub ty: String,
    /// How, with the plugin's value first and the host's second.
    pub what: String,
}

/// The difference to report from abi_stable's errors: a structural one (fields, variants,
/// names, kinds of data) before a size or alignment (which a structural change deeper
/// down causes in every type that contains it), then the deepest, then the first found.
pub fn layout_difference(errs: &AbiInstabilityErrors) -> Option<LayoutDifference> {
    let mut best: Option<(u8, std::cmp::Reverse<usize>, usize, usize)> = None;
    for (i, e) in errs.errors.iter().enumerate() {
        for (j, err) in e.errs.iter().enumerate() {
            let rank = match err {
                AbiInstability::Size(_) | AbiInstability::Alignment(_) => 1,
                AbiInstability::TagError { .. }
                | AbiInstability::ExtraCheckError(_)
                | AbiInstability::NoneExtraChecks
                | AbiInstability::ReentrantLayoutCheckingCall
                | AbiInstability::CyclicTypeChecking { .. } => 2,
                _ => 0,
            };
            let key = (rank, std::cmp::Reverse(e.stack_trace.len()), i, j);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
    }
    let (_, _, i, j) = best?;
    let e = &errs.errors[i];
    let err = &e.errs[j];
    // The types the error is about: those of the innermost field on the stack (the root
    // when the stack is empty). An error about a function pointer's parameters has the
    // function on top.
    let (expected, found): (Option<&'static TypeLayout>, Option<&'static TypeLayout>) =
        match e.stack_trace.last() {
            None => (Some(errs.interface), Some(errs.implementation)),
            Some(ExpectedFound { expected, found }) => match (expected, found) {
                (TLFieldOrFunction::Field(x), TLFieldOrFunction::Field(y)) => {
                    (Some(x.layout()), Some(y.layout()))
                }
                _ => (None, None),
            },
        };
    let ty = match (expected, e.stack_trace.last()) {
        (Some(t), _) => type_name(t),
        (
            None,
            Some(ExpectedFound {
                expected: TLFieldOrFunction::Function(f),
                ..
            }),
        ) => {
            format!("fn {}", f.name)
        }
        _ => "?".to_owned(),
    };
    let what = match err {
        AbiInstability::FieldCountMismatch(c) => {
            let names = |l: Option<&'static TypeLayout>| -> Vec<&'static str> {
                let Some(l) = l else { return Vec::new() };
                match l.data() {
                    TLData::Struct { fields } | TLData::Union { fields } => {
                        fields.iter().map(|f| f.name()).collect()
                    }
                    TLData::PrefixType(p) => p.fields.iter().map(|f| f.name()).collect(),
                    TLData::Enum(en) => en.fields.iter().map(|f| f.name()).collect(),
                    _ => Vec::new(),
                }
            };
            let (h, p) = (names(expected), names(found));
            let missing: Vec<String> = h
                .iter()
                .filter(|n| !p.contains(n))
                .map(|n| format!("`{n}`"))
                .collect();
            let extra: Vec<String> = p
                .iter()
                .filter(|n| !h.contains(n))
                .map(|n| format!("`{n}`"))
                .collect();
            let mut notes = Vec::new();
            if !missing.is_empty() {
                notes.push(format!("{} missing", missing.join(", ")));
            }
            if !extra.is_empty() {
                notes.push(format!("{} not in the host's", extra.join(", ")));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            format!("field count {}, host has {}{notes}", c.found, c.expected)
        }
        AbiInstability::UnexpectedField(f) => format!(
            "field `{}` where the host has `{}`",
            f.found.name(),
            f.expected.name()
        ),
        AbiInstability::Name(n) => format!("the plugin has type `{}` there", n.found),
        AbiInstability::Package(p) => format!(
            "the type comes from crate `{}`, the host's from `{}`",
            p.found, p.expected
        ),
        AbiInstability::PackageVersion(v) => format!(
            "the type comes from version {} of its crate, the host's from {}",
            v.found, v.expected
        ),
        AbiInstability::Size(s) => format!("size {}, host has {}", s.found, s.expected),
        AbiInstability::Alignment(a) => {
            format!("alignment {}, host has {}", a.found, a.expected)
        }
        AbiInstability::MismatchedPrefixSize(s) => {
            format!("a prefix of {} field(s), host has {}", s.found, s.expected)
        }
        AbiInstability::TooManyVariants(v) => {
            format!("{} variant(s), host has {}", v.found, v.expected)
        }
        AbiInstability::UnexpectedVariant(v) => {
            format!("variant `{}` where the host has `{}`", v.found, v.expected)
        }
        AbiInstability::TLDataDiscriminant(d) => {
            format!("a {:?} where the host has a {:?}", d.found, d.expected)
        }
        AbiInstability::MismatchedPrimitive(d) => {
            format!("primitive {:?}, host has {:?}", d.found, d.expected)
        }
        AbiInstability::ReprAttr(r) => {
            format!("repr {:?}, host has {:?}", r.found, r.expected)
        }
        AbiInstability::FnQualifierMismatch(_) => {
            "a function pointer differs in `unsafe` or other qualifiers".to_owned()
        }
        other => {
            let dbg = format!("{other:?}");
            let word = dbg.split(['(', ' ', '{']).next().unwrap_or("a difference");
            format!("abi_stable reports {word}")
        }
    };
    Some(LayoutDifference { ty, what })
}

/// A type's name for messages: `EntryInfo`; a `#[sabi_trait]`'s vtable with the trait's
/// module (`Source_trait::VTable`), since every trait's vtable is called `VTable`.
fn type_name(t: &'static TypeLayout) -> String {
    let name = t.full_type().to_string();
    if t.name().starts_with("VTable") {
        let path = t.mod_path().to_string();
        if let Some(module) = path.rsplit("::").next().filter(|m| !m.is_empty()) {
            return format!("{module}::{name}");
        }
    }
    name
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
        sha256: None,
    })
}

/// Probes `path` in this process: what the scanner child runs for each file. The file
/// is read once ([`Sealed`]: ownership and modes checked on the open descriptor, bytes
/// hashed); with an allowlist in force its hash must be listed before it is loaded;
/// the description carries the hash of the bytes loaded.
pub fn describe(path: &Path) -> Outcome {
    let described = Sealed::open(path).and_then(|sealed| {
        Policy::from_env().check(&sealed.sha256)?;
        let sha256 = sealed.sha256.clone();
        let (m, s) = open(sealed, Binding::Now)?;
        let mut info = describe_sources(&m, &s)?;
        info.sha256 = Some(sha256);
        Ok(info)
    });
    match described {
        Ok(info) => Outcome::Plugin(info),
        Err(r) => Outcome::Refused(r),
    }
}

/// A library whose scan succeeded, opened on first use.
pub struct LazyLibrary {
    key: FileKey,
    sha256: Option<String>,
    sources: OnceLock<Result<Vec<SourceEntry>, String>>,
}

impl LazyLibrary {
    /// The library scanned as `key`, whose scanned bytes hashed to `sha256`.
    pub fn new(key: FileKey, sha256: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            key,
            sha256,
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
    /// file that changed since it was scanned is not loaded: its key (size, times,
    /// inode) must be the scanned one, and the bytes read for loading must hash to the
    /// scanned bytes' sha256.
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
                let refused = |r: Refusal| format!("{}: {}", path.display(), r.reason);
                let sealed = Sealed::open(path).map_err(refused)?;
                if self.sha256.as_deref() != Some(sealed.sha256.as_str()) {
                    return Err(format!(
                        "{} changed since it was scanned (its bytes hash to {}, not to the scanned {}); run the command again",
                        path.display(),
                        sealed.sha256,
                        self.sha256.as_deref().unwrap_or("(none recorded)")
                    ));
                }
                Policy::from_env().check(&sealed.sha256).map_err(refused)?;
                let (_, sources) = open(sealed, Binding::Lazy).map_err(refused)?;
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

    #[test]
    fn bytes_that_hash_differently_from_the_scan_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lib.so");
        std::fs::write(&f, b"the bytes scanned").unwrap();
        let key = FileKey::of(&f).unwrap();
        let scanned = terrahost_index::integrity::sha256_hex(b"other bytes");
        let lib = LazyLibrary::new(key, Some(scanned.clone()));
        let Err(e) = lib.sources() else {
            panic!("loaded")
        };
        assert!(
            e.contains("changed since it was scanned") && e.contains(&scanned),
            "{e}"
        );
        assert!(!lib.is_loaded());
        // No hash recorded at all (a cache from before hashes): not loaded either.
        let lib = LazyLibrary::new(FileKey::of(&f).unwrap(), None);
        assert!(lib
            .sources()
            .is_err_and(|e| e.contains("changed since it was scanned")));
    }

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
    fn the_root_module_version_is_checked_before_the_layout() {
        let host = semver::Version::parse(terrahost_plugin_api::API_VERSION).unwrap();
        assert!(check_api_version(terrahost_plugin_api::API_VERSION).is_ok());
        // An older release of the same 0.y loads (then its layout is checked).
        assert!(check_api_version(&format!("{}.{}.0", host.major, host.minor)).is_ok());
        // Another 0.y: refused by version, naming both lines.
        let next = format!("{}.{}.0", host.major, host.minor + 1);
        let e = check_api_version(&next).unwrap_err();
        assert_eq!(e.kind, kind::INCOMPATIBLE_API);
        let line = format!("{}.{}", host.major, host.minor);
        assert_eq!(
            e.reason,
            format!(
                "incompatible plugin: built against plugin-api {next}; this host loads {line}.x (rebuild the plugin against plugin-api {line})"
            )
        );
        let older = format!("{}.{}.0", host.major, host.minor.saturating_sub(1));
        if older != format!("{}.{}.0", host.major, host.minor) {
            assert_eq!(
                check_api_version(&older).unwrap_err().kind,
                kind::INCOMPATIBLE_API
            );
        }
        // A newer patch of our line: the plugin may use what this host lacks.
        let newer = format!("{}.{}.{}", host.major, host.minor, host.patch + 1);
        let e = check_api_version(&newer).unwrap_err();
        assert_eq!(e.kind, kind::INCOMPATIBLE_API);
        assert!(
            e.reason.contains(&newer) && e.reason.contains("upgrade terrahost"),
            "{e:?}"
        );
        let e = check_api_version("zero").unwrap_err();
        assert_eq!(e.kind, kind::INCOMPATIBLE_API);
        assert!(e.reason.contains("\"zero\""), "{e:?}");
    }

    /// Two versions of a small boundary: `v1` as an early plugin saw it, `v2` as the host
    /// sees it now (a field appended to a struct reached through a function pointer of a
    /// prefix type), `v3` with a method appended to the prefix type itself.
    #[allow(dead_code)]
    mod boundary {
        pub mod v1 {
            use abi_stable::{std_types::RString, StableAbi};
            #[repr(C)]
            #[derive(StableAbi)]
            pub struct EntryInfo {
                pub name: RString,
                pub takes_channels: bool,
            }
            #[repr(C)]
            #[derive(StableAbi)]
            #[sabi(kind(Prefix))]
            pub struct Root {
                #[sabi(last_prefix_field)]
                pub describe: extern "C" fn() -> EntryInfo,
            }
        }
        pub mod v2 {
            use abi_stable::{std_types::RString, StableAbi};
            #[repr(C)]
            #[derive(StableAbi)]
            pub struct EntryInfo {
                pub name: RString,
                pub takes_channels: bool,
                pub includes_head: bool,
            }
            #[repr(C)]
            #[derive(StableAbi)]
            #[sabi(kind(Prefix))]
            pub struct Root {
                #[sabi(last_prefix_field)]
                pub describe: extern "C" fn() -> EntryInfo,
            }
        }
        pub mod v3 {
            use abi_stable::{std_types::RString, StableAbi};
            #[repr(C)]
            #[derive(StableAbi)]
            pub struct EntryInfo {
                pub name: RString,
                pub takes_channels: bool,
            }
            #[repr(C)]
            #[derive(StableAbi)]
            #[sabi(kind(Prefix))]
            pub struct Root {
                #[sabi(last_prefix_field)]
                pub describe: extern "C" fn() -> EntryInfo,
                pub refusals: extern "C" fn() -> RString,
            }
        }
    }

    #[test]
    fn a_layout_mismatch_names_the_type_and_the_missing_field() {
        use boundary::*;
        // The host (interface) has includes_head, the plugin (implementation) does not.
        let errs = check_layout_compatibility(
            <v2::Root_Ref as StableAbi>::LAYOUT,
            <v1::Root_Ref as StableAbi>::LAYOUT,
        )
        .unwrap_err();
        // abi_stable reports the size of the containing types too; the field count of
        // the innermost type is what to tell.
        assert_eq!(
            layout_difference(&errs),
            Some(LayoutDifference {
                ty: "EntryInfo".to_owned(),
                what: "field count 2, host has 3 (`includes_head` missing)".to_owned(),
            }),
            "{errs}"
        );
        // The other way round: the plugin has a field the host does not know.
        let errs = check_layout_compatibility(
            <v1::Root_Ref as StableAbi>::LAYOUT,
            <v2::Root_Ref as StableAbi>::LAYOUT,
        )
        .unwrap_err();
        let d = layout_difference(&errs).unwrap();
        assert_eq!(d.ty, "EntryInfo");
        assert_eq!(
            d.what,
            "field count 3, host has 2 (`includes_head` not in the host's)"
        );
    }

    #[test]
    fn a_prefix_type_with_fewer_methods_than_the_host_is_named() {
        use boundary::*;
        // A host whose prefix type has a method more than the plugin's refuses it
        // (what made a 0.2.2 host refuse 0.2.1 plugins) ...
        let errs = check_layout_compatibility(
            <v3::Root_Ref as StableAbi>::LAYOUT,
            <v1::Root_Ref as StableAbi>::LAYOUT,
        )
        .unwrap_err();
        let d = layout_difference(&errs).unwrap();
        assert!(d.ty.contains("Root"), "{d:?}");
        assert_eq!(d.what, "field count 1, host has 2 (`refusals` missing)");
        // ... and a plugin with a method more than the host's loads.
        assert!(check_layout_compatibility(
            <v1::Root_Ref as StableAbi>::LAYOUT,
            <v3::Root_Ref as StableAbi>::LAYOUT,
        )
        .is_ok());
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
