//! What a plugin says about itself before the host calls anything else in it.
use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

/// One registry source a plugin contributes: `registry` is one of
/// [`crate::registry_names::ALL`], `prefix` its source name (`timm`, `smp`, ...).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct SourceDecl {
    /// The registry the source goes into.
    pub registry: RString,
    /// The prefix the source is known by in that registry.
    pub prefix: RString,
}

/// A plugin's identity and the versions it was built against.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The plugin's name (normally its main prefix).
    pub name: RString,
    /// The plugin's own semver version.
    pub version: RString,
    /// The plugin-api version it was compiled against ([`crate::API_VERSION`]).
    pub api_version: RString,
    /// The libtorch version it links ([`crate::TORCH_VERSION`]).
    pub torch_version: RString,
    /// The tch crate version it was built with.
    pub tch_version: RString,
    /// Whether its libtorch uses the C++11 string ABI.
    pub cxx11_abi: bool,
    /// The target triple it was compiled for.
    pub target: RString,
    /// The registry sources it contributes.
    pub sources: RVec<SourceDecl>,
}

/// The tch version of this workspace (pinned exactly in `[workspace.dependencies]`).
pub const TCH_VERSION: &str = "0.26.0";

impl Manifest {
    /// A manifest for plugin `name` at `version`, with this crate's build facts.
    pub fn current(name: &str, version: &str, sources: Vec<SourceDecl>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            api_version: crate::API_VERSION.into(),
            torch_version: crate::TORCH_VERSION.into(),
            tch_version: TCH_VERSION.into(),
            cxx11_abi: crate::TORCH_CXX11_ABI,
            target: crate::TARGET.into(),
            sources: sources.into(),
        }
    }
}
