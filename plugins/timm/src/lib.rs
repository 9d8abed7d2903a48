//! The `timm` plugin: timm backbones as feature extractors (`features_only`), with timm's state_dict keys.

pub mod models;


use terrahost_plugin_api::sdk::Catalog;

/// The `timm` entries of the `backbone` registry.
fn backbones() -> Catalog {
    Catalog::new("timm")
}

terrahost_plugin_api::declare_plugin! {
    name: "timm",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("backbone", "timm", backbones()),
    ],
}
