//! TerraTorch's registries, made stricter.
//!
//! * [`Registry`]: a set of names that can build them (TerraTorch's `Registry`). It is
//!   mutable ([`Registry::register`]) for entries defined in the host process, and it
//!   can also merge plugin sources whose names then live in one flat namespace (the
//!   `model_factory` registry).
//! * [`MultiSourceRegistry`]: ordered sources keyed by prefix (TerraTorch's
//!   `MultiSourceRegistry`): `timm_resnet18` routes to the `timm` source, a bare name is
//!   searched source by source in registration order.
//!
//! Stricter than TerraTorch: "not found" and "construction failed" are different error
//! kinds; a bare name falls through to the next source only when it is *not found*,
//! never when its build fails; a prefixed name is checked for existence; unknown names
//! get did-you-mean suggestions; and a prefix that belongs to a plugin that is not
//! installed is reported as such.
//!
//! The resolution itself is [`terrahost_index::resolve`], the code the libtorch-free
//! front runs on the scans' data: one implementation for both binaries.
use std::collections::HashMap;
use terrahost_index::register;
pub use terrahost_index::resolve::WELL_KNOWN_PREFIXES;
use terrahost_index::resolve::{self, not_found_message, Lookup, SourceView};
use terrahost_plugin_api::{
    sdk::{Catalog, Entry},
    BuildRequest, EntryInfo, ErrorKind, HostRef, ModuleBox, PluginError, Result, Source, SourceBox,
};

/// One source of a registry: a plugin's (or the host's) set of entries under a prefix.
pub struct SourceSlot {
    /// The prefix (`timm`).
    pub prefix: String,
    /// The plugin that registered it (`host` for in-process sources).
    pub plugin: String,
    /// The entries.
    pub source: SourceBox,
}

impl SourceSlot {
    /// The entry names, in the source's order.
    pub fn names(&self) -> Vec<String> {
        self.source
            .names()
            .into_iter()
            .map(|s| s.into_string())
            .collect()
    }

    /// Whether the source has `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(name.into())
    }

    /// The source's reason for refusing `name`, when it knows the name but does not
    /// build it ([`ErrorKind::NOT_SUPPORTED`] from `describe`, plugin-api 0.2.1); older
    /// sources answer not-found, which gives `None`.
    pub fn refusal(&self, name: &str) -> Option<PluginError> {
        match self.source.describe(name.into()).into_result() {
            Err(e) if e.kind == terrahost_plugin_api::ErrorKind::NOT_SUPPORTED => Some(e),
            _ => None,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.source.names().len()
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SourceView for SourceSlot {
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn plugin(&self) -> &str {
        &self.plugin
    }
    fn names(&self) -> Vec<String> {
        SourceSlot::names(self)
    }
    fn contains(&self, name: &str) -> bool {
        SourceSlot::contains(self, name)
    }
    fn refusal(&self, name: &str) -> Option<String> {
        SourceSlot::refusal(self, name).map(|e| e.message.into_string())
    }
    fn own_error(&self, name: &str) -> Option<String> {
        self.source
            .describe(name.into())
            .into_result()
            .err()
            .map(|e| e.message.into_string())
    }
}

/// The resolution's answer as the plugin-api's error kinds.
fn lookup_error(l: Lookup) -> PluginError {
    match l {
        Lookup::NotFound(m) => PluginError::not_found(m),
        Lookup::NotSupported(m) => PluginError::new(ErrorKind::NOT_SUPPORTED, m),
    }
}

/// TerraTorch's `MultiSourceRegistry`: ordered sources keyed by prefix.
pub struct MultiSourceRegistry {
    name: String,
    sources: Vec<SourceSlot>,
    known_prefixes: Vec<String>,
}

impl MultiSourceRegistry {
    /// An empty registry called `name` (used in messages).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            sources: Vec::new(),
            known_prefixes: WELL_KNOWN_PREFIXES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The registry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a source to the search order. TerraTorch searches its own source first, then
    /// the optional ones in the order it adds them (timm, smp, mmseg); terrahost keeps
    /// that order whatever order the plugins load in ([`WELL_KNOWN_PREFIXES`]), and puts
    /// any other prefix after them, in load order. A prefix that already exists is
    /// refused, naming the plugin that holds it.
    pub fn register_source(&mut self, prefix: &str, plugin: &str, source: SourceBox) -> Result<()> {
        self.check_prefix(prefix, plugin)?;
        self.note_prefix(prefix);
        let at = resolve::insertion_index(self.keys(), prefix);
        self.sources.insert(
            at,
            SourceSlot {
                prefix: prefix.to_owned(),
                plugin: plugin.to_owned(),
                source,
            },
        );
        Ok(())
    }

    /// Fails if `prefix` cannot be registered (already present, or not a valid prefix):
    /// [`terrahost_index::register::check_prefix`], the rule both binaries apply.
    pub fn check_prefix(&self, prefix: &str, plugin: &str) -> Result<()> {
        register::check_prefix(
            &self.name,
            prefix,
            plugin,
            self.get(prefix).map(|s| s.plugin.as_str()),
        )
        .map_err(|r| PluginError::invalid_argument(r.reason))
    }

    /// Remembers `prefix` as a source name, so a missing plugin can be reported as such.
    pub fn note_prefix(&mut self, prefix: &str) {
        if !self.known_prefixes.iter().any(|p| p == prefix) {
            self.known_prefixes.push(prefix.to_owned());
        }
    }

    /// The prefixes, in search order (TerraTorch's `keys()`).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.prefix.as_str())
    }

    /// The sources, in search order.
    pub fn sources(&self) -> &[SourceSlot] {
        &self.sources
    }

    /// The source with `prefix` (TerraTorch's `registry[prefix]`).
    pub fn get(&self, prefix: &str) -> Option<&SourceSlot> {
        self.sources.iter().find(|s| s.prefix == prefix)
    }

    /// The number of entries over all sources.
    pub fn len(&self) -> usize {
        self.sources.iter().map(SourceSlot::len).sum()
    }

    /// Whether there are no entries at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries as `prefix_name`, sources in order.
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        self.sources.iter().flat_map(|s| {
            s.names()
                .into_iter()
                .map(move |n| format!("{}_{n}", s.prefix))
        })
    }

    /// `(source, rest)` when the part before the first `_` is a registered prefix.
    pub fn parse_prefix<'n>(&self, name: &'n str) -> Option<(&SourceSlot, &'n str)> {
        resolve::parse_prefix(&self.sources, name)
    }

    /// Whether `name` (prefixed or bare) can be built.
    pub fn contains(&self, name: &str) -> bool {
        resolve::contains(&self.sources, name)
    }

    /// The source that holds `name` and the name inside it (TerraTorch's
    /// `find_registry`). Bare names are searched in order.
    pub fn find(&self, name: &str) -> Result<(&SourceSlot, String)> {
        resolve::find(&self.name, &self.sources, &self.known_prefixes, name).map_err(lookup_error)
    }

    /// The qualified name (`timm_resnet18`) and description of `name`.
    pub fn describe(&self, name: &str) -> Result<(String, EntryInfo)> {
        let (slot, rest) = self.find(name)?;
        let info = slot.source.describe(rest.as_str().into()).into_result()?;
        Ok((format!("{}_{rest}", slot.prefix), info))
    }

    /// Builds `name`. A bare name goes to the first source that has it; if that build
    /// fails, the error is returned (no fall-through).
    pub fn build(
        &self,
        name: &str,
        request: BuildRequest,
        host: HostRef<'_>,
    ) -> Result<(String, ModuleBox)> {
        let (slot, rest) = self.find(name)?;
        let qualified = format!("{}_{rest}", slot.prefix);
        let _span = tracing::info_span!("build", registry = %self.name, entry = %qualified, plugin = %slot.plugin).entered();
        let module = slot
            .source
            .build(rest.as_str().into(), request, host)
            .into_result()?;
        Ok((qualified, module))
    }
}

/// Where a flat registry's name lives.
#[derive(Clone, Copy)]
enum Origin {
    Local,
    Slot(usize),
}

/// TerraTorch's plain `Registry`: one flat set of names. Entries come from
/// [`Registry::register`] (in-process, mutable) or from merged plugin sources.
pub struct Registry {
    name: String,
    local: Catalog,
    slots: Vec<SourceSlot>,
    order: Vec<(String, Origin)>,
    index: HashMap<String, usize>,
}

impl Registry {
    /// An empty registry called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            local: Catalog::new("host"),
            slots: Vec::new(),
            order: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The registry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers an in-process entry under its own name (TerraTorch's `@register`). An
    /// empty or duplicate name is refused.
    pub fn register(&mut self, entry: Entry) -> Result<()> {
        let name = entry.info().name.to_string();
        if self.index.contains_key(&name) {
            return Err(PluginError::invalid_argument(format!(
                "`{name}` is already in the {} registry",
                self.name
            )));
        }
        self.local.try_add(entry)?;
        self.index.insert(name.clone(), self.order.len());
        self.order.push((name, Origin::Local));
        Ok(())
    }

    /// The plugin that holds `name` (`host` for an in-process entry).
    pub fn holder(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| match self.order[i].1 {
            Origin::Local => "host",
            Origin::Slot(s) => self.slots[s].plugin.as_str(),
        })
    }

    /// Fails if any name of `source` is already present, naming both plugins
    /// ([`terrahost_index::register::check_names`], the rule both binaries apply).
    pub fn check_source(&self, source: &SourceBox, plugin: &str) -> Result<()> {
        let names: Vec<String> = source
            .names()
            .into_iter()
            .map(|n| n.into_string())
            .collect();
        register::check_names(&self.name, &names, plugin, |n| self.holder(n))
            .map_err(|r| PluginError::invalid_argument(r.reason))
    }

    /// Merges a plugin source's names into the registry. Refused as a whole if any of
    /// its names is already present.
    pub fn register_source(&mut self, prefix: &str, plugin: &str, source: SourceBox) -> Result<()> {
        self.check_source(&source, plugin)?;
        let slot = self.slots.len();
        for name in source.names() {
            self.index.insert(name.to_string(), self.order.len());
            self.order.push((name.into_string(), Origin::Slot(slot)));
        }
        self.slots.push(SourceSlot {
            prefix: prefix.to_owned(),
            plugin: plugin.to_owned(),
            source,
        });
        Ok(())
    }

    /// The merged plugin sources, in order.
    pub fn sources(&self) -> &[SourceSlot] {
        &self.slots
    }

    /// The names of in-process entries, in order.
    pub fn local_names(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(_, o)| matches!(o, Origin::Local))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The number of names.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The names, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|(n, _)| n.as_str())
    }

    fn origin(&self, name: &str) -> Result<Origin> {
        match self.index.get(name) {
            Some(&i) => Ok(self.order[i].1),
            None => {
                // a name a source knows and refuses gets the source's reason, as in the
                // multi-source registries
                if let Some(e) = self.slots.iter().find_map(|s| s.refusal(name)) {
                    return Err(e);
                }
                let names: Vec<String> = self.iter().map(str::to_owned).collect();
                Err(PluginError::not_found(not_found_message(
                    name, &self.name, &names,
                )))
            }
        }
    }

    /// The description of `name`.
    pub fn describe(&self, name: &str) -> Result<EntryInfo> {
        match self.origin(name)? {
            Origin::Local => self.local.describe(name.into()).into_result(),
            Origin::Slot(s) => self.slots[s].source.describe(name.into()).into_result(),
        }
    }

    /// Builds `name`; an unknown name is a not-found error that names it.
    pub fn build(&self, name: &str, request: BuildRequest, host: HostRef<'_>) -> Result<ModuleBox> {
        let origin = self.origin(name)?;
        let _span = tracing::info_span!("build", registry = %self.name, entry = %name).entered();
        match origin {
            Origin::Local => self.local.build(name.into(), request, host).into_result(),
            Origin::Slot(s) => self.slots[s]
                .source
                .build(name.into(), request, host)
                .into_result(),
        }
    }
}
