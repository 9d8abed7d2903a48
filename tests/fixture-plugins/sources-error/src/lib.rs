//! A plugin whose `sources()` returns an error: the host must refuse it with that
//! error's message.
use terrahost_plugin_api::{Manifest, PluginError, SourceDecl, SourceEntry};

/// A valid manifest with one backbone source.
pub fn plugin_manifest() -> Manifest {
    Manifest::current(
        "sources-error",
        "0.1.0",
        vec![SourceDecl {
            registry: "backbone".into(),
            prefix: "serror".into(),
        }],
    )
}

/// Fails to create the sources.
pub fn plugin_sources() -> terrahost_plugin_api::Result<Vec<SourceEntry>> {
    Err(PluginError::build_failed(
        "deliberate error: the weights directory it needs does not exist",
    ))
}

terrahost_plugin_api::export_plugin!(crate);
