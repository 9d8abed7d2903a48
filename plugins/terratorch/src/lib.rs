//! The `terratorch` plugin: TerraTorch's own components: necks, decoders, heads and the EncoderDecoderFactory.

pub mod models;


use terrahost_plugin_api::sdk::Catalog;

/// The `terratorch` entries of the `backbone` registry.
fn backbones() -> Catalog {
    Catalog::new("terratorch")
}

/// The `terratorch` entries of the `neck` registry.
fn necks() -> Catalog {
    Catalog::new("terratorch")
}

/// The `terratorch` entries of the `decoder` registry.
fn decoders() -> Catalog {
    Catalog::new("terratorch")
}

/// The `terratorch` entries of the `full_model` registry.
fn full_models() -> Catalog {
    Catalog::new("terratorch")
}

/// The `terratorch` entries of the `model_factory` registry.
fn model_factories() -> Catalog {
    Catalog::new("terratorch")
}

terrahost_plugin_api::declare_plugin! {
    name: "terratorch",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("backbone", "terratorch", backbones()),
        ("neck", "terratorch", necks()),
        ("decoder", "terratorch", decoders()),
        ("full_model", "terratorch", full_models()),
        ("model_factory", "terratorch", model_factories()),
    ],
}
