//! The host: TerraTorch's five registries, filled by plugins.
//!
//! This module knows nothing of plugin files: [`crate::plugins`] finds, scans and
//! loads them and registers what they bring through [`Host::try_add_plugin`] (it also
//! adds [`Host::load`] and [`Host::load_with`]), so the dependency goes one way.
use crate::registry::{MultiSourceRegistry, Registry};
use abi_stable::{
    sabi_trait::TD_Opaque,
    sabi_types::RRef,
    std_types::{RResult, RStr, RString, RVec},
};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use terrahost_index::meta::Refusal;
use terrahost_index::register::{self, Candidate, Registered, SourceClaim};
use terrahost_plugin_api::{
    registry_names as names, sdk::DynModule, BuildRequest, EntryInfo, HostRef, Host_TO, Manifest,
    ModuleBox, PluginError, Result, SourceEntry,
};

/// A plugin that loaded and registered its sources.
#[derive(Clone, Debug)]
pub struct LoadedPlugin {
    /// What the plugin says about itself.
    pub manifest: Manifest,
    /// The library it came from (`None` for an in-process plugin).
    pub path: Option<PathBuf>,
    /// `(registry, prefix, number of entries)` for each source it registered.
    pub sources: Vec<(String, String, usize)>,
    /// The sha256 of the library's bytes as scanned (`None` for an in-process plugin).
    pub sha256: Option<String>,
}

/// A file that was not loaded, and why.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// The file.
    pub path: PathBuf,
    /// The refusal's code ([`terrahost_index::meta::kind`]): `crashed`, `not-a-plugin`, ...
    pub kind: String,
    /// Why it was refused, in one line a user can act on.
    pub reason: String,
}

/// A borrowed registry of either kind.
pub enum RegistryRef<'a> {
    /// `backbone`, `neck`, `decoder`, `full_model`.
    Multi(&'a MultiSourceRegistry),
    /// `model_factory`.
    Plain(&'a Registry),
}

/// The host: the registries, the plugins that filled them and the files refused.
pub struct Host {
    backbone: MultiSourceRegistry,
    neck: MultiSourceRegistry,
    decoder: MultiSourceRegistry,
    full_model: MultiSourceRegistry,
    model_factory: Registry,
    plugins: Vec<LoadedPlugin>,
    rejected: Vec<Rejected>,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// A host with empty registries.
    pub fn new() -> Self {
        crate::mkl_dispatch::keep();
        Self {
            backbone: MultiSourceRegistry::new(names::BACKBONE),
            neck: MultiSourceRegistry::new(names::NECK),
            decoder: MultiSourceRegistry::new(names::DECODER),
            full_model: MultiSourceRegistry::new(names::FULL_MODEL),
            model_factory: Registry::new(names::MODEL_FACTORY),
            plugins: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// A host whose plugins are linked into this process (no dlopen): for tests,
    /// benchmarks and embedding. Each item is a manifest and the plugin's sources.
    pub fn with_plugins(plugins: Vec<(Manifest, Vec<SourceEntry>)>) -> Result<Self> {
        let mut host = Self::new();
        for (manifest, sources) in plugins {
            host.add_plugin(manifest, None, sources)?;
        }
        Ok(host)
    }

    /// The plugins that loaded, in load order.
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// The files that were refused, with reasons.
    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }

    /// Records a file refused (and already reported) by the scan or registration
    /// checks of `crate::plugins::load_into`.
    pub(crate) fn record_rejected(&mut self, path: PathBuf, kind: &str, reason: String) {
        self.rejected.push(Rejected {
            path,
            kind: kind.to_owned(),
            reason,
        });
    }

    /// Records a refused file with its [`terrahost_index::meta::kind`] code.
    pub fn reject(&mut self, path: PathBuf, kind: &str, reason: String) {
        tracing::warn!(path = %path.display(), %kind, %reason, "plugin refused");
        self.rejected.push(Rejected {
            path,
            kind: kind.to_owned(),
            reason,
        });
    }

    /// The registry called `name`.
    pub fn registry(&self, name: &str) -> Option<RegistryRef<'_>> {
        Some(match name {
            names::BACKBONE => RegistryRef::Multi(&self.backbone),
            names::NECK => RegistryRef::Multi(&self.neck),
            names::DECODER => RegistryRef::Multi(&self.decoder),
            names::FULL_MODEL => RegistryRef::Multi(&self.full_model),
            names::MODEL_FACTORY => RegistryRef::Plain(&self.model_factory),
            _ => return None,
        })
    }

    fn multi_mut(&mut self, name: &str) -> Option<&mut MultiSourceRegistry> {
        match name {
            names::BACKBONE => Some(&mut self.backbone),
            names::NECK => Some(&mut self.neck),
            names::DECODER => Some(&mut self.decoder),
            names::FULL_MODEL => Some(&mut self.full_model),
            _ => None,
        }
    }

    fn unknown_registry(name: &str) -> PluginError {
        PluginError::not_found(terrahost_index::resolve::unknown_registry_message(name))
    }

    /// Registers a plugin's sources: all of them or, if any is refused (a prefix that
    /// another plugin holds, an unknown registry, a source the manifest did not
    /// declare), none.
    pub fn add_plugin(
        &mut self,
        manifest: Manifest,
        path: Option<PathBuf>,
        sources: Vec<SourceEntry>,
    ) -> Result<()> {
        self.try_add_plugin(manifest, path, sources)
            .map_err(|r| PluginError::invalid_argument(r.reason))
    }

    /// [`Host::add_plugin`], with the refusal's [`terrahost_index::meta::kind`] code
    /// (`duplicate-plugin`, `duplicate-prefix`, `invalid-manifest`). What may register is
    /// decided by [`terrahost_index::register::check`], the code the front runs on the
    /// scans' data.
    pub fn try_add_plugin(
        &mut self,
        manifest: Manifest,
        path: Option<PathBuf>,
        sources: Vec<SourceEntry>,
    ) -> std::result::Result<(), Refusal> {
        let plugin = manifest.name.to_string();
        let _span = tracing::info_span!("register", plugin = %plugin).entered();
        let candidate = Candidate {
            plugin: &plugin,
            declared: manifest
                .sources
                .iter()
                .map(|d| (d.registry.as_str(), d.prefix.as_str()))
                .collect(),
            sources: sources
                .iter()
                .map(|s| SourceClaim {
                    registry: s.registry.as_str(),
                    prefix: s.prefix.as_str(),
                    names: s
                        .source
                        .names()
                        .into_iter()
                        .map(|n| n.into_string())
                        .collect(),
                })
                .collect(),
        };
        register::check(&Held(self), &candidate)?;
        let mut registered = Vec::new();
        for s in sources {
            let (registry, prefix) = (s.registry.to_string(), s.prefix.to_string());
            let count = s.source.names().len();
            match self.multi_mut(&registry) {
                Some(r) => r.register_source(&prefix, &plugin, s.source),
                None => self
                    .model_factory
                    .register_source(&prefix, &plugin, s.source),
            }
            .map_err(|e| {
                Refusal::new(terrahost_index::meta::kind::INVALID_MANIFEST, e.to_string())
            })?;
            tracing::info!(%registry, %prefix, entries = count, "source registered");
            registered.push((registry, prefix, count));
        }
        // Every prefix any plugin declares is a source name, in every registry: so
        // `mmseg_X` in a registry mmseg does not serve is reported as a missing source.
        for d in manifest.sources.iter() {
            for r in [
                &mut self.backbone,
                &mut self.neck,
                &mut self.decoder,
                &mut self.full_model,
            ] {
                r.note_prefix(d.prefix.as_str());
            }
        }
        self.plugins.push(LoadedPlugin {
            manifest,
            path,
            sources: registered,
            sha256: None,
        });
        Ok(())
    }

    /// Records the sha256 of the library `path` was scanned from (shown by `plugins`).
    pub(crate) fn note_sha256(&mut self, path: &std::path::Path, sha256: Option<String>) {
        if let Some(p) = self
            .plugins
            .iter_mut()
            .find(|p| p.path.as_deref() == Some(path))
        {
            p.sha256 = sha256;
        }
    }

    /// Whether `registry` has `name`.
    pub fn contains(&self, registry: &str, name: &str) -> bool {
        match self.registry(registry) {
            Some(RegistryRef::Multi(r)) => r.contains(name),
            Some(RegistryRef::Plain(r)) => r.contains(name),
            None => false,
        }
    }

    /// The qualified name and description of `name` in `registry`.
    pub fn describe(&self, registry: &str, name: &str) -> Result<(String, EntryInfo)> {
        match self.registry(registry) {
            Some(RegistryRef::Multi(r)) => r.describe(name),
            Some(RegistryRef::Plain(r)) => Ok((name.to_owned(), r.describe(name)?)),
            None => Err(Self::unknown_registry(registry)),
        }
    }

    /// Builds `name` from `registry` with keyword `args` (and the channel list for
    /// decoders and necks). The result is labelled with its qualified name.
    pub fn build(
        &self,
        registry: &str,
        name: &str,
        args: &Map<String, Value>,
        channels: Option<&[i64]>,
    ) -> Result<DynModule> {
        let (qualified, module) =
            self.build_raw(registry, name, BuildRequest::new(args, channels))?;
        Ok(DynModule::new(qualified, module))
    }

    fn build_raw(
        &self,
        registry: &str,
        name: &str,
        request: BuildRequest,
    ) -> Result<(String, ModuleBox)> {
        self.warn_ignored(registry, name, &request);
        let callbacks = Callbacks(self);
        let handle: HostRef<'_> = Host_TO::from_ptr(RRef::new(&callbacks), TD_Opaque);
        let (qualified, module) = match self.registry(registry) {
            Some(RegistryRef::Multi(r)) => r.build(name, request, handle)?,
            Some(RegistryRef::Plain(r)) => (name.to_owned(), r.build(name, request, handle)?),
            None => return Err(Self::unknown_registry(registry)),
        };
        // What the plugin warned about while building (its own `tracing` reaches nobody).
        if let Ok(serde_json::Value::Object(meta)) = serde_json::from_str(module.meta().as_str()) {
            for w in terrahost_plugin_api::warnings::from_meta(&meta) {
                tracing::warn!("`{qualified}`: {w}");
            }
        }
        Ok((qualified, module))
    }

    /// Warns once per build about each argument the entry accepts and ignores (as
    /// TerraTorch's constructors swallow them through `**kwargs`). The entry's own
    /// validation drops them; a lookup error is left to the build to report.
    fn warn_ignored(&self, registry: &str, name: &str, request: &BuildRequest) {
        let (Ok((qualified, info)), Ok(args)) =
            (self.describe(registry, name), request.parse_args())
        else {
            return;
        };
        for key in info.ignored_in(&args) {
            tracing::warn!(
                "`{qualified}` ignores argument `{key}` (TerraTorch accepts it and does not use it)"
            );
        }
    }

    /// All names of `registry` (prefixed for multi-source registries).
    pub fn names(&self, registry: &str) -> Vec<String> {
        match self.registry(registry) {
            Some(RegistryRef::Multi(r)) => r.iter().collect(),
            Some(RegistryRef::Plain(r)) => r.iter().map(str::to_owned).collect(),
            None => Vec::new(),
        }
    }
}

/// What the host holds, as [`register::check`] asks for it.
struct Held<'a>(&'a Host);

impl Registered for Held<'_> {
    fn plugin_file(&self, name: &str) -> Option<Option<&Path>> {
        self.0
            .plugins
            .iter()
            .find(|p| p.manifest.name.as_str() == name)
            .map(|p| p.path.as_deref())
    }
    fn prefix_holder(&self, registry: &str, prefix: &str) -> Option<&str> {
        match self.0.registry(registry)? {
            RegistryRef::Multi(r) => r.get(prefix).map(|s| s.plugin.as_str()),
            RegistryRef::Plain(_) => None,
        }
    }
    fn name_holder(&self, name: &str) -> Option<&str> {
        self.0.model_factory.holder(name)
    }
}

/// The host as plugins see it, through the ABI.
struct Callbacks<'a>(&'a Host);

impl terrahost_plugin_api::Host for Callbacks<'_> {
    fn contains(&self, registry: RStr<'_>, name: RStr<'_>) -> bool {
        self.0.contains(registry.as_str(), name.as_str())
    }

    fn names(&self, registry: RStr<'_>) -> RVec<RString> {
        self.0
            .names(registry.as_str())
            .into_iter()
            .map(RString::from)
            .collect()
    }

    fn describe(&self, registry: RStr<'_>, name: RStr<'_>) -> RResult<EntryInfo, PluginError> {
        self.0
            .describe(registry.as_str(), name.as_str())
            .map(|(_, info)| info)
            .into()
    }

    fn build(
        &self,
        registry: RStr<'_>,
        name: RStr<'_>,
        request: BuildRequest,
    ) -> RResult<ModuleBox, PluginError> {
        self.0
            .build_raw(registry.as_str(), name.as_str(), request)
            .map(|(_, m)| m)
            .into()
    }
}
