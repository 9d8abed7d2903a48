//! The root module every plugin library exports.
use crate::error::PluginError;
use crate::manifest::Manifest;
use crate::source::SourceBox;
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RString, RVec},
    StableAbi,
};

/// One source a plugin registers, ready to use.
#[repr(C)]
#[derive(StableAbi)]
pub struct SourceEntry {
    /// The registry it goes into.
    pub registry: RString,
    /// Its prefix there.
    pub prefix: RString,
    /// The source itself.
    pub source: SourceBox,
}

/// The root module: a prefix type, so later plugin-api versions can append fields
/// after `sources` without breaking plugins built against this one.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRoot_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    /// Who the plugin is and what it was built against. Called before anything else;
    /// cheap and side-effect free.
    pub manifest: extern "C" fn() -> Manifest,

    /// Creates the plugin's registry sources. Called once, after the version checks.
    #[sabi(last_prefix_field)]
    pub sources: extern "C" fn() -> RResult<RVec<SourceEntry>, PluginError>,
}

impl RootModule for PluginRoot_Ref {
    declare_root_module_statics! {PluginRoot_Ref}
    const BASE_NAME: &'static str = "terrahost_plugin";
    const NAME: &'static str = "terrahost_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
