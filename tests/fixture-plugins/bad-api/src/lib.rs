//! A plugin that claims to be built against the next major plugin-api version: the
//! host must refuse it, naming both versions, without calling into its sources.
use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    std_types::{RResult, RVec},
};
use terrahost_plugin_api::{Manifest, PluginError, PluginRoot, PluginRoot_Ref, SourceEntry};

/// The next semver-incompatible version after ours (for 0.x the minor is the major).
fn next_major() -> String {
    let parts: Vec<u64> = terrahost_plugin_api::API_VERSION
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    if parts[0] == 0 {
        format!("0.{}.0", parts[1] + 1)
    } else {
        format!("{}.0.0", parts[0] + 1)
    }
}

extern "C" fn manifest() -> Manifest {
    let mut m = Manifest::current("bad-api", "0.1.0", vec![]);
    m.api_version = next_major().into();
    m
}

extern "C" fn sources() -> RResult<RVec<SourceEntry>, PluginError> {
    // Never reached: the host refuses the plugin on its manifest.
    RResult::RErr(PluginError::build_failed(
        "the host should not have called this",
    ))
}

/// The root module.
#[export_root_module]
pub fn root() -> PluginRoot_Ref {
    PluginRoot { manifest, sources }.leak_into_prefix()
}
