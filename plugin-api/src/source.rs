//! A registry source: the set of entries one plugin contributes to one registry under
//! one prefix.
use crate::error::PluginError;
use crate::host::HostRef;
use crate::module::ModuleBox;
use crate::params::{BuildRequest, EntryInfo};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RStr, RString, RVec, Tuple2},
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

    /// The names this source knows but does not build (`Catalog::refuses`), each with
    /// its reason, so that a scan can record them and a host answering from the scan
    /// gives the same "not supported" answer (plugin-api 0.2.2). After the last prefix
    /// field: a source from an older plugin has no such method and answers none.
    fn refusals(&self) -> RVec<Tuple2<RString, RString>> {
        RVec::new()
    }
}

/// An owned, type-erased source.
pub type SourceBox = Source_TO<'static, RBox<()>>;
