//! The `mmseg` plugin: mmsegmentation decode heads (which include their own classifier), as TerraTorch's `MMSegRegistry` builds them.

pub mod models;


use terrahost_plugin_api::sdk::Catalog;

/// The `mmseg` entries of the `decoder` registry.
fn decoders() -> Catalog {
    Catalog::new("mmseg")
}

terrahost_plugin_api::declare_plugin! {
    name: "mmseg",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("decoder", "mmseg", decoders()),
    ],
}
