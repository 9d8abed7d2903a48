//! A registry source: the set of entries one plugin contributes to one registry under
//! one prefix.
use crate::error::PluginError;
use crate::host::HostRef;
use crate::module::ModuleBox;
use crate::params::{BuildRequest, EntryInfo};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RStr, RString, RVec},
};

/// A set of buildable names, like TerraTorch's `Registry`.
#[sabi_trait]
pub trait Source: Send + Sync {
    /// The names, in registration order.
    fn names(&self) -> RVec<RString>;

    /// Whether `name` is in this source.
    fn contains(&self, name: RStr<'_>) -> bool;

    /// The entry's doc and parameters; a not-found error for an unknown name.
    fn describe(&self, name: RStr<'_>) -> RResult<EntryInfo, PluginError>;

    /// Builds `name`. `host` gives access to the host's registries so that the entry
    /// can build parts that other plugins provide.
    #[sabi(last_prefix_field)]
    fn build(
        &self,
        name: RStr<'_>,
        request: BuildRequest,
        host: HostRef<'_>,
    ) -> RResult<ModuleBox, PluginError>;
}

/// An owned, type-erased source.
pub type SourceBox = Source_TO<'static, RBox<()>>;
