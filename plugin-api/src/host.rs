//! The handle a build receives back to the host's registries.
use crate::error::PluginError;
use crate::module::ModuleBox;
use crate::params::{BuildRequest, EntryInfo};
use abi_stable::{
    sabi_trait,
    sabi_types::RRef,
    std_types::{RResult, RStr, RString, RVec},
};

/// The host's registries, as seen from inside a plugin. Names are resolved exactly as
/// the host resolves them (prefixes, fall-through, did-you-mean).
#[sabi_trait]
pub trait Host: Sync {
    /// Whether `registry` has `name`.
    fn contains(&self, registry: RStr<'_>, name: RStr<'_>) -> bool;

    /// The names in `registry`, prefixed (`timm_resnet18`).
    fn names(&self, registry: RStr<'_>) -> RVec<RString>;

    /// The doc and parameters of `name` in `registry`.
    fn describe(&self, registry: RStr<'_>, name: RStr<'_>) -> RResult<EntryInfo, PluginError>;

    /// Builds `name` from `registry`.
    #[sabi(last_prefix_field)]
    fn build(
        &self,
        registry: RStr<'_>,
        name: RStr<'_>,
        request: BuildRequest,
    ) -> RResult<ModuleBox, PluginError>;
}

/// A borrowed host handle.
pub type HostRef<'a> = Host_TO<'a, RRef<'a, ()>>;
