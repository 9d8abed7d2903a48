//! What a scan learns about a library, as plain data: the manifest, the sources and
//! every entry's description. The scanner child sends it over its pipe, the registry
//! cache stores it, the front answers `plugins`, `list` and `show` from it, and the
//! engine registers lazy sources from it, so none of them needs the library itself.
//!
//! These mirror the ABI types of the plugin-api (`Manifest`, `EntryInfo`, `ParamSpec`)
//! field by field; the engine converts (`terrahost::plugins::meta`). A field added there
//! must be added here.
use serde::{Deserialize, Serialize};

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
    /// The file, or a directory above it, could be written by someone other than root
    /// or the invoking user ([`crate::trust`]).
    pub const INSECURE: &str = "insecure-permissions";
    /// An allowlist is in force and the file's sha256 is not on it
    /// ([`crate::integrity`]).
    pub const NOT_ALLOWED: &str = "not-allowed";
}

/// A plugin's manifest as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMeta {
    /// The plugin's name.
    pub name: String,
    /// Its version (semver).
    pub version: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// The libtorch version it was built against.
    pub torch_version: String,
    /// The tch version it was built against.
    pub tch_version: String,
    /// Whether it was built with `_GLIBCXX_USE_CXX11_ABI=1`.
    pub cxx11_abi: bool,
    /// The target triple it was built for.
    pub target: String,
    /// `(registry, prefix)` for each declared source.
    pub sources: Vec<(String, String)>,
}

/// One parameter of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamMeta {
    /// The keyword.
    pub name: String,
    /// plugin-api's `ParamType` code (see [`crate::common::param_type_name`]).
    pub ty: u8,
    /// The default as JSON text; `None` when required.
    pub default: Option<String>,
    /// One line of help.
    pub doc: String,
}

impl ParamMeta {
    /// The type's name as `show` prints it.
    pub fn type_name(&self) -> &'static str {
        crate::common::param_type_name(self.ty)
    }

    /// The default, parsed (`None` when required or not valid JSON).
    pub fn default_value(&self) -> Option<serde_json::Value> {
        self.default
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }
}

/// One entry's description (plugin-api's `EntryInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The name inside its source.
    pub name: String,
    /// Its documentation.
    pub doc: String,
    /// Whether it takes the channel list first (decoders, necks).
    pub takes_channels: bool,
    /// Whether unknown keyword arguments are passed through.
    pub accepts_extra: bool,
    /// Whether it makes the final prediction itself.
    pub includes_head: bool,
    /// Its parameters, in order.
    pub params: Vec<ParamMeta>,
}

/// A name a source knows but does not build (`Catalog::refuses`): describing it
/// answers "not supported" with `why`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedName {
    /// The name inside its source.
    pub name: String,
    /// Why it is not built, and what to use instead.
    pub why: String,
}

/// One source: where it goes and its entries, in the source's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// The registry it goes into.
    pub registry: String,
    /// Its prefix.
    pub prefix: String,
    /// Its entries.
    pub entries: Vec<EntryMeta>,
    /// The names it refuses, with the reasons.
    #[serde(default)]
    pub refusals: Vec<RefusedName>,
}

/// Everything a scan learns about a plugin library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Its manifest.
    pub manifest: ManifestMeta,
    /// Its sources, as its `sources()` returned them.
    pub sources: Vec<SourceMeta>,
    /// The sha256 of the bytes the scanner loaded (lowercase hex): the engine loads
    /// the library only if its bytes hash the same.
    #[serde(default)]
    pub sha256: Option<String>,
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

/// The first non-empty line of `text`, trimmed and at most 200 characters: how a
/// library's or the loader's message becomes a one-line reason.
pub fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        out.push('…');
    }
    out
}
