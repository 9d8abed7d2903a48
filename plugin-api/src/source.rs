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

/// The reserved name whose [`Source::describe`] lists the names a source knows but does
/// not build (`Catalog::refuses`), each with its reason (plugin-api 0.2.3), so that a
/// scan can record them and a host answering from the scan gives the same "not
/// supported" answer. The list is JSON (`[[name, reason], ...]`) in the entry's `doc`.
/// A source from an older plugin answers not-found: it has none to tell.
///
/// Why a reserved name and not a new vtable method: `abi_stable` 0.11 refuses a library
/// whose prefix types have fewer fields than the host's (see
/// [`crate::module::INPUT_NAMES_KWARG`]). plugin-api 0.2.2 appended `Source::refusals`,
/// and a 0.2.2 host refused every plugin built against 0.2.1 as `incompatible-abi`;
/// 0.2.3 takes the method out again, so the vtable is 0.2.1's and plugins built against
/// 0.2.0 to 0.2.2 all load.
pub const REFUSALS_NAME: &str = "__refusals__";

/// The entry that [`Source::describe`] returns for [`REFUSALS_NAME`].
pub fn refusals_entry<'a>(refused: impl IntoIterator<Item = (&'a str, &'a str)>) -> EntryInfo {
    let mut list: Vec<(&str, &str)> = refused.into_iter().collect();
    list.sort();
    EntryInfo {
        name: REFUSALS_NAME.into(),
        doc: serde_json::to_string(&list)
            .expect("strings serialise")
            .into(),
        takes_channels: false,
        params: RVec::new(),
        accepts_extra: false,
        includes_head: false,
    }
}

/// The names `source` refuses, with their reasons, sorted by name: none for a source
/// that predates [`REFUSALS_NAME`] or answers it with anything but the list.
pub fn refusals_of(source: &SourceBox) -> Vec<(String, String)> {
    match source.describe(REFUSALS_NAME.into()).into_result() {
        Ok(info) if info.name.as_str() == REFUSALS_NAME => {
            serde_json::from_str(info.doc.as_str()).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}
