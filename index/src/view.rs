//! The merged registries as data: what the engine's `Host` would hold, built from the
//! scans ([`crate::gather`]) without loading a library. The front answers `plugins`,
//! `list` and `show` from it.
//!
//! Which plugins register and which are refused is [`crate::register`], the code the
//! engine's `terrahost::Host::try_add_plugin` runs too: one file per plugin name
//! ([`crate::register::choose`]: the highest version, then the file found first), then
//! `duplicate-plugin`, `invalid-manifest` and `duplicate-prefix`; a refused plugin
//! registers nothing. The engine's `load_into` takes its refusals from this view, so both
//! binaries refuse the same files for the same reasons. Name resolution is
//! [`crate::resolve::find`], the same code the engine runs. `tests/tests/front.rs` runs a
//! corpus of commands through both binaries and checks the answers are identical.
use crate::common::registry_names as names;
use crate::gather::Found;
use crate::meta::{EntryMeta, ManifestMeta, Outcome, PluginInfo, Refusal, SourceMeta};
use crate::register::{self, Candidate, Declared, Registered, SourceClaim};
use crate::resolve::{self, Lookup, SourceView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One source, as data.
pub struct DataSource {
    /// The prefix.
    pub prefix: String,
    /// The plugin that registered it.
    pub plugin: String,
    entries: Vec<EntryMeta>,
    index: HashMap<String, usize>,
    refusals: HashMap<String, String>,
}

impl DataSource {
    fn new(meta: &SourceMeta, plugin: &str) -> Self {
        Self {
            prefix: meta.prefix.clone(),
            plugin: plugin.to_owned(),
            index: meta
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.name.clone(), i))
                .collect(),
            entries: meta.entries.clone(),
            refusals: meta
                .refusals
                .iter()
                .map(|r| (r.name.clone(), r.why.clone()))
                .collect(),
        }
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&EntryMeta> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

impl SourceView for DataSource {
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn plugin(&self) -> &str {
        &self.plugin
    }
    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn refusal(&self, name: &str) -> Option<String> {
        self.refusals.get(name).cloned()
    }
    fn own_error(&self, _name: &str) -> Option<String> {
        // Only the live source knows (timm's pretrained tags); the front hands names
        // with a dot to the engine ([`needs_engine`]).
        None
    }
}

/// Whether answering a question about `name` needs the live plugin: a name with a dot
/// (timm's `arch.tag`) resolves through the source's own code, which a scan cannot list.
pub fn needs_engine(name: &str) -> bool {
    name.contains('.')
}

/// A multi-source registry as data.
pub struct MultiView {
    name: String,
    sources: Vec<DataSource>,
    known_prefixes: Vec<String>,
}

impl MultiView {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            sources: Vec::new(),
            known_prefixes: resolve::WELL_KNOWN_PREFIXES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// The sources, in search order.
    pub fn sources(&self) -> &[DataSource] {
        &self.sources
    }

    fn note_prefix(&mut self, prefix: &str) {
        if !self.known_prefixes.iter().any(|p| p == prefix) {
            self.known_prefixes.push(prefix.to_owned());
        }
    }

    fn add(&mut self, source: DataSource) {
        let at = resolve::insertion_index(
            self.sources.iter().map(|s| s.prefix.as_str()),
            &source.prefix,
        );
        self.note_prefix(&source.prefix.clone());
        self.sources.insert(at, source);
    }

    /// The qualified name and description of `name`.
    pub fn describe(&self, name: &str) -> Result<(String, &EntryMeta), Lookup> {
        let (slot, rest) = resolve::find(&self.name, &self.sources, &self.known_prefixes, name)?;
        let entry = slot.entry(&rest).expect("find returns a contained name");
        Ok((format!("{}_{rest}", slot.prefix), entry))
    }
}

/// The flat `model_factory` registry as data: one namespace over all sources.
pub struct FlatView {
    name: String,
    sources: Vec<DataSource>,
    index: HashMap<String, usize>,
    order: Vec<String>,
}

impl FlatView {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            sources: Vec::new(),
            index: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// The sources, in registration order.
    pub fn sources(&self) -> &[DataSource] {
        &self.sources
    }

    fn add(&mut self, source: DataSource) {
        let slot = self.sources.len();
        for e in &source.entries {
            self.index.insert(e.name.clone(), slot);
            self.order.push(e.name.clone());
        }
        self.sources.push(source);
    }

    /// The description of `name`.
    pub fn describe(&self, name: &str) -> Result<&EntryMeta, Lookup> {
        if let Some(&s) = self.index.get(name) {
            return Ok(self.sources[s].entry(name).expect("indexed"));
        }
        // A name a source knows and refuses gets the source's reason, as the engine's
        // registry answers `build`.
        match self.sources.iter().find_map(|s| s.refusal(name)) {
            Some(why) => Err(Lookup::NotSupported(why)),
            None => Err(Lookup::NotFound(resolve::not_found_message(
                name,
                &self.name,
                &self.order,
            ))),
        }
    }
}

/// A plugin that registered its sources.
#[derive(Clone, Debug)]
pub struct ViewPlugin {
    /// Its manifest.
    pub manifest: ManifestMeta,
    /// Its file.
    pub path: PathBuf,
    /// `(registry, prefix, number of entries)` per source.
    pub sources: Vec<(String, String, usize)>,
    /// The sha256 of its bytes as scanned.
    pub sha256: Option<String>,
}

/// A refused file.
#[derive(Clone, Debug)]
pub struct ViewRejected {
    /// The file.
    pub path: PathBuf,
    /// Why, with its kind.
    pub refusal: Refusal,
}

/// A registry of either kind.
pub enum RegistryView<'a> {
    /// `backbone`, `neck`, `decoder`, `full_model`.
    Multi(&'a MultiView),
    /// `model_factory`.
    Flat(&'a FlatView),
}

/// The five registries, the plugins in them and the refused files.
pub struct View {
    multi: [MultiView; 4],
    model_factory: FlatView,
    plugins: Vec<ViewPlugin>,
    rejected: Vec<ViewRejected>,
}

impl Registered for View {
    fn plugin_file(&self, name: &str) -> Option<Option<&Path>> {
        self.plugins
            .iter()
            .find(|p| p.manifest.name == name)
            .map(|p| Some(p.path.as_path()))
    }
    fn prefix_holder(&self, registry: &str, prefix: &str) -> Option<&str> {
        let r = &self.multi[Self::multi_index(registry)?];
        r.sources
            .iter()
            .find(|s| s.prefix == prefix)
            .map(|s| s.plugin.as_str())
    }
    fn name_holder(&self, name: &str) -> Option<&str> {
        let r = &self.model_factory;
        r.index.get(name).map(|&s| r.sources[s].plugin.as_str())
    }
}

impl View {
    /// Registers every described plugin of `found`, in order; records every refusal.
    pub fn new(found: &[Found]) -> Self {
        let mut view = Self {
            multi: [
                names::BACKBONE,
                names::NECK,
                names::DECODER,
                names::FULL_MODEL,
            ]
            .map(MultiView::new),
            model_factory: FlatView::new(names::MODEL_FACTORY),
            plugins: Vec::new(),
            rejected: Vec::new(),
        };
        // One file per plugin name: the others are refused before anything registers.
        let described: Vec<(usize, Declared)> = found
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match &f.outcome {
                Outcome::Plugin(info) => Some((
                    i,
                    Declared {
                        plugin: &info.manifest.name,
                        version: &info.manifest.version,
                        path: &f.path,
                    },
                )),
                Outcome::Refused(_) => None,
            })
            .collect();
        let losers: HashMap<usize, register::Loser> =
            register::choose(&described.iter().map(|(_, d)| *d).collect::<Vec<_>>())
                .into_iter()
                .map(|l| (described[l.index].0, l))
                .collect();
        let mut refusals: Vec<Option<Refusal>> = found
            .iter()
            .enumerate()
            .map(|(i, f)| match &f.outcome {
                Outcome::Refused(r) => Some(r.clone()),
                Outcome::Plugin(_) if losers.contains_key(&i) => None,
                Outcome::Plugin(info) => view.add(f.path.clone(), info).err(),
            })
            .collect();
        for (&i, l) in &losers {
            let (w, winner) = described[l.winner];
            let loser = &described[l.index].1;
            refusals[i] = Some(register::duplicate_refusal(
                loser,
                &winner,
                l.why,
                refusals[w].is_some(),
            ));
        }
        for (f, refused) in found.iter().zip(refusals) {
            if let Some(refusal) = refused {
                tracing::warn!(path = %f.path.display(), kind = %refusal.kind, reason = %refusal.reason, "plugin refused");
                view.rejected.push(ViewRejected {
                    path: f.path.clone(),
                    refusal,
                });
            }
        }
        view
    }

    fn multi_index(name: &str) -> Option<usize> {
        register::MULTI.iter().position(|n| *n == name)
    }

    /// Registers a plugin's sources: all of them or none ([`register::check`]).
    fn add(&mut self, path: PathBuf, info: &PluginInfo) -> Result<(), Refusal> {
        let plugin = info.manifest.name.as_str();
        let candidate = Candidate {
            plugin,
            declared: info
                .manifest
                .sources
                .iter()
                .map(|(r, p)| (r.as_str(), p.as_str()))
                .collect(),
            sources: info
                .sources
                .iter()
                .map(|s| SourceClaim {
                    registry: &s.registry,
                    prefix: &s.prefix,
                    names: s.entries.iter().map(|e| e.name.clone()).collect(),
                })
                .collect(),
        };
        register::check(self, &candidate)?;
        let mut registered = Vec::new();
        for s in &info.sources {
            let source = DataSource::new(s, plugin);
            match Self::multi_index(&s.registry) {
                Some(i) => self.multi[i].add(source),
                None => self.model_factory.add(source),
            }
            registered.push((s.registry.clone(), s.prefix.clone(), s.entries.len()));
        }
        for (_, prefix) in &info.manifest.sources {
            for r in &mut self.multi {
                r.note_prefix(prefix);
            }
        }
        self.plugins.push(ViewPlugin {
            manifest: info.manifest.clone(),
            path,
            sources: registered,
            sha256: info.sha256.clone(),
        });
        Ok(())
    }

    /// The plugins that registered, in load order.
    pub fn plugins(&self) -> &[ViewPlugin] {
        &self.plugins
    }

    /// The refused files, in discovery order.
    pub fn rejected(&self) -> &[ViewRejected] {
        &self.rejected
    }

    /// The registry called `name`.
    pub fn registry(&self, name: &str) -> Option<RegistryView<'_>> {
        if name == names::MODEL_FACTORY {
            return Some(RegistryView::Flat(&self.model_factory));
        }
        Self::multi_index(name).map(|i| RegistryView::Multi(&self.multi[i]))
    }

    /// The qualified name and description of `name` in `registry`.
    pub fn describe(&self, registry: &str, name: &str) -> Result<(String, &EntryMeta), Lookup> {
        match self.registry(registry) {
            Some(RegistryView::Multi(r)) => r.describe(name),
            Some(RegistryView::Flat(r)) => r.describe(name).map(|e| (name.to_owned(), e)),
            None => Err(Lookup::NotFound(resolve::unknown_registry_message(
                registry,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::kind;

    fn plugin(name: &str, version: &str, path: &str, prefix: &str) -> Found {
        Found {
            path: PathBuf::from(path),
            key: None,
            outcome: Outcome::Plugin(PluginInfo {
                manifest: ManifestMeta {
                    name: name.into(),
                    version: version.into(),
                    api_version: "0.2.0".into(),
                    torch_version: "2.13.0".into(),
                    tch_version: "0.26.0".into(),
                    cxx11_abi: true,
                    target: "x".into(),
                    sources: vec![("backbone".into(), prefix.into())],
                },
                sha256: None,
                sources: vec![SourceMeta {
                    registry: "backbone".into(),
                    prefix: prefix.into(),
                    entries: vec![EntryMeta {
                        name: format!("{name}_{version}"),
                        doc: String::new(),
                        takes_channels: false,
                        accepts_extra: false,
                        includes_head: false,
                        params: Vec::new(),
                    }],
                    refusals: Vec::new(),
                }],
            }),
        }
    }

    fn refused(view: &View) -> Vec<(String, String, String)> {
        view.rejected()
            .iter()
            .map(|r| {
                (
                    r.path.display().to_string(),
                    r.refusal.kind.clone(),
                    r.refusal.reason.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn of_two_files_with_one_plugin_name_the_higher_version_registers() {
        let view = View::new(&[
            plugin("smp", "0.2.0", "/a/libsmp.so", "smp"),
            plugin("smp", "0.3.0", "/b/libsmp.so", "smp"),
        ]);
        let loaded: Vec<_> = view
            .plugins()
            .iter()
            .map(|p| (p.path.display().to_string(), p.manifest.version.clone()))
            .collect();
        assert_eq!(loaded, [("/b/libsmp.so".to_owned(), "0.3.0".to_owned())]);
        let r = refused(&view);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].0.as_str(), r[0].1.as_str()),
            ("/a/libsmp.so", kind::DUPLICATE_PLUGIN)
        );
        assert_eq!(
            r[0].2,
            "two files declare plugin `smp`: /b/libsmp.so (version 0.3.0) is loaded and this \
             one, /a/libsmp.so (version 0.2.0), is not, because the higher version wins; \
             remove the older copy"
        );
        // The chosen file's entries are the ones served.
        assert!(view.describe("backbone", "smp_smp_0.3.0").is_ok());
        assert!(view.describe("backbone", "smp_smp_0.2.0").is_err());
    }

    #[test]
    fn a_chosen_file_that_is_refused_itself_is_not_said_to_load() {
        let view = View::new(&[
            plugin("timm", "0.2.0", "/a/libtimm.so", "timm"),
            plugin("dup", "0.2.0", "/a/libzdup.so", "timm"),
            plugin("dup", "0.1.0", "/b/libdup.so", "dup"),
        ]);
        let r = refused(&view);
        assert_eq!(
            r.iter()
                .map(|r| (r.0.as_str(), r.1.as_str()))
                .collect::<Vec<_>>(),
            [
                ("/a/libzdup.so", kind::DUPLICATE_PREFIX),
                ("/b/libdup.so", kind::DUPLICATE_PLUGIN)
            ]
        );
        assert!(
            r[1].2
                .contains("/a/libzdup.so (version 0.2.0) was chosen (and then refused itself"),
            "{}",
            r[1].2
        );
    }
}
