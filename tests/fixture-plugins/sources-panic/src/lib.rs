//! A plugin whose `sources()` panics: its manifest is valid, so the host gets as far as
//! creating its sources, where the SDK turns the panic into an error value.
use terrahost_plugin_api::{Manifest, SourceDecl, SourceEntry};

/// A valid manifest with one backbone source.
pub fn plugin_manifest() -> Manifest {
    Manifest::current(
        "sources-panic",
        "0.1.0",
        vec![SourceDecl {
            registry: "backbone".into(),
            prefix: "spanic".into(),
        }],
    )
}

/// Panics instead of creating the sources.
pub fn plugin_sources() -> terrahost_plugin_api::Result<Vec<SourceEntry>> {
    panic!("deliberate panic in sources()")
}

terrahost_plugin_api::export_plugin!(crate);
