//! A library that exports an abi_stable root module under terrahost's module name and
//! version but with another layout (different fields): abi_stable's check refuses it,
//! and the host must say so in one line, not with abi_stable's dump of both layouts.
#![allow(non_camel_case_types)]
use abi_stable::{
    declare_root_module_statics, export_root_module,
    library::RootModule,
    package_version_strings,
    prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings,
    std_types::{RString, RVec},
    StableAbi,
};

/// Not terrahost's `PluginRoot`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = WrongRoot_Ref)))]
#[sabi(missing_field(panic))]
pub struct WrongRoot {
    /// A number instead of a manifest.
    pub answer: extern "C" fn() -> u64,
    /// Names instead of sources.
    #[sabi(last_prefix_field)]
    pub names: extern "C" fn() -> RVec<RString>,
}

impl RootModule for WrongRoot_Ref {
    declare_root_module_statics! {WrongRoot_Ref}
    const BASE_NAME: &'static str = "terrahost_plugin";
    const NAME: &'static str = "terrahost_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

extern "C" fn answer() -> u64 {
    42
}

extern "C" fn names() -> RVec<RString> {
    RVec::new()
}

/// The root module.
#[export_root_module]
pub fn root() -> WrongRoot_Ref {
    WrongRoot { answer, names }.leak_into_prefix()
}
