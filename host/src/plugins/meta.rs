//! What a scan learns about a library, as plain data: the manifest, the sources and
//! every entry's description. The scanner child sends it over its pipe, the registry
//! cache stores it, and the host registers [`crate::plugins::load::LazySource`]s from it,
//! so `plugins`, `list` and `show` never need the library itself.
//!
//! These mirror the ABI types of the plugin-api ([`Manifest`], [`EntryInfo`],
//! [`ParamSpec`]) field by field; a field added there must be added here.
use abi_stable::std_types::ROption;
use serde::{Deserialize, Serialize};
use terrahost_plugin_api::{EntryInfo, Manifest, ParamSpec, ParamType, SourceDecl};

/// Why a file was refused: a stable `kind` code and one line a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// One of the [`kind`] codes.
    pub kind: String,
    /// What was wrong and what to do about it, in one line.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `kind` with `reason`.
    pub fn new(kind: &str, reason: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The refusal codes, as `plugins --json` reports them next to the reason.
pub mod kind {
    /// A directory, device or other non-regular file with a library's name.
    pub const NOT_A_FILE: &str = "not-a-file";
    /// The file cannot be read (a symbolic-link loop, a dangling link, permissions).
    pub const UNREADABLE: &str = "unreadable";
    /// Not a shared library: empty, not ELF, truncated, wrong architecture.
    pub const NOT_A_LIBRARY: &str = "not-a-library";
    /// A shared library that needs another one the dynamic loader cannot find.
    pub const MISSING_DEPENDENCY: &str = "missing-dependency";
    /// A shared library without a terrahost root module.
    pub const NOT_A_PLUGIN: &str = "not-a-plugin";
    /// An abi_stable root module whose layout or abi_stable version is not the host's.
    pub const INCOMPATIBLE_ABI: &str = "incompatible-abi";
    /// A plugin built against a semver-incompatible plugin-api.
    pub const INCOMPATIBLE_API: &str = "incompatible-api";
    /// A plugin built against another libtorch (version or C++ ABI).
    pub const INCOMPATIBLE_TORCH: &str = "incompatible-torch";
    /// A plugin built for another target triple.
    pub const INCOMPATIBLE_TARGET: &str = "incompatible-target";
    /// A manifest with an empty name, a version that is not semver, or sources that do
    /// not match what the plugin registers.
    pub const INVALID_MANIFEST: &str = "invalid-manifest";
    /// The plugin's `sources()` returned an error or panicked.
    pub const SOURCES_FAILED: &str = "sources-failed";
    /// Loading it killed the scanner with a signal.
    pub const CRASHED: &str = "crashed";
    /// Loading it made the scanner exit (its initialisers called `exit`).
    pub const EXITED: &str = "exited";
    /// Loading it did not finish within the scan timeout.
    pub const TIMED_OUT: &str = "timed-out";
    /// The scanner's reply while loading it was malformed.
    pub const PROTOCOL: &str = "protocol";
    /// The scanner itself could not run (not the file's fault; never cached).
    pub const SCANNER_FAILED: &str = "scanner-failed";
    /// Another plugin already holds one of its prefixes in the same registry.
    pub const DUPLICATE_PREFIX: &str = "duplicate-prefix";
    /// Another plugin with the same name is already loaded.
    pub const DUPLICATE_PLUGIN: &str = "duplicate-plugin";
}

/// A plugin's manifest as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub torch_version: String,
    pub tch_version: String,
    pub cxx11_abi: bool,
    pub target: String,
    /// `(registry, prefix)` for each declared source.
    pub sources: Vec<(String, String)>,
}

impl From<&Manifest> for ManifestMeta {
    fn from(m: &Manifest) -> Self {
        Self {
            name: m.name.to_string(),
            version: m.version.to_string(),
            api_version: m.api_version.to_string(),
            torch_version: m.torch_version.to_string(),
            tch_version: m.tch_version.to_string(),
            cxx11_abi: m.cxx11_abi,
            target: m.target.to_string(),
            sources: m
                .sources
                .iter()
                .map(|d| (d.registry.to_string(), d.prefix.to_string()))
                .collect(),
        }
    }
}

impl ManifestMeta {
    /// The ABI manifest again.
    pub fn to_manifest(&self) -> Manifest {
        Manifest {
            name: self.name.as_str().into(),
            version: self.version.as_str().into(),
            api_version: self.api_version.as_str().into(),
            torch_version: self.torch_version.as_str().into(),
            tch_version: self.tch_version.as_str().into(),
            cxx11_abi: self.cxx11_abi,
            target: self.target.as_str().into(),
            sources: self
                .sources
                .iter()
                .map(|(r, p)| SourceDecl {
                    registry: r.as_str().into(),
                    prefix: p.as_str().into(),
                })
                .collect(),
        }
    }
}

/// One parameter of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamMeta {
    pub name: String,
    /// [`ParamType`]'s code.
    pub ty: u8,
    /// The default as JSON text; `None` when required.
    pub default: Option<String>,
    pub doc: String,
}

/// One entry's description ([`EntryInfo`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub name: String,
    pub doc: String,
    pub takes_channels: bool,
    pub accepts_extra: bool,
    pub includes_head: bool,
    pub params: Vec<ParamMeta>,
}

impl From<&EntryInfo> for EntryMeta {
    fn from(e: &EntryInfo) -> Self {
        Self {
            name: e.name.to_string(),
            doc: e.doc.to_string(),
            takes_channels: e.takes_channels,
            accepts_extra: e.accepts_extra,
            includes_head: e.includes_head,
            params: e
                .params
                .iter()
                .map(|p| ParamMeta {
                    name: p.name.to_string(),
                    ty: p.ty.0,
                    default: p.default.as_ref().into_option().map(|d| d.to_string()),
                    doc: p.doc.to_string(),
                })
                .collect(),
        }
    }
}

impl EntryMeta {
    /// The ABI description again.
    pub fn to_info(&self) -> EntryInfo {
        EntryInfo {
            name: self.name.as_str().into(),
            doc: self.doc.as_str().into(),
            takes_channels: self.takes_channels,
            params: self
                .params
                .iter()
                .map(|p| ParamSpec {
                    name: p.name.as_str().into(),
                    ty: ParamType(p.ty),
                    default: match &p.default {
                        Some(d) => ROption::RSome(d.as_str().into()),
                        None => ROption::RNone,
                    },
                    doc: p.doc.as_str().into(),
                })
                .collect(),
            accepts_extra: self.accepts_extra,
            includes_head: self.includes_head,
        }
    }
}

/// One source: where it goes and its entries, in the source's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    pub registry: String,
    pub prefix: String,
    pub entries: Vec<EntryMeta>,
}

/// Everything a scan learns about a plugin library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub manifest: ManifestMeta,
    pub sources: Vec<SourceMeta>,
}

/// What a scan of one file concluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A plugin that passed every check, described.
    Plugin(PluginInfo),
    /// A file that was refused.
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_descriptions_survive_the_round_trip() {
        let info = EntryInfo {
            name: "x".into(),
            doc: "an entry".into(),
            takes_channels: true,
            params: vec![
                ParamSpec::optional("a", ParamType::INT, serde_json::json!(3), "a number"),
                ParamSpec::required("b", ParamType::STR_LIST, "names"),
                ParamSpec::ignored("c", "swallowed"),
            ]
            .into(),
            accepts_extra: true,
            includes_head: false,
        };
        let meta = EntryMeta::from(&info);
        let text = serde_json::to_string(&meta).unwrap();
        let back: EntryMeta = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_info(), info);
        let m = Manifest::current(
            "p",
            "1.0.0",
            vec![SourceDecl {
                registry: "neck".into(),
                prefix: "p".into(),
            }],
        );
        assert_eq!(ManifestMeta::from(&m).to_manifest(), m);
    }
}
