//! The `smp` plugin: segmentation_models_pytorch decoders, wrapped as TerraTorch's `SMPRegistry` wraps them.

pub mod models;


use terrahost_plugin_api::sdk::Catalog;

/// The `smp` entries of the `decoder` registry.
fn decoders() -> Catalog {
    Catalog::new("smp")
}

terrahost_plugin_api::declare_plugin! {
    name: "smp",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("decoder", "smp", decoders()),
    ],
}
