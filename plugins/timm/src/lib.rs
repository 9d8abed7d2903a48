//! The `timm` plugin: timm backbones as feature extractors (`features_only`), with timm's state_dict keys.

pub mod models;
pub(crate) mod pretrained;

use terrahost_plugin_api::sdk::Catalog;

/// The `timm` entries of the `backbone` registry, family by family.
fn backbones() -> Catalog {
    [
        models::resnet::entries(),
        models::vit::entries(),
        models::convnext::entries(),
        models::swin::entries(),
        models::prithvi_swin::entries(),
        models::prithvi_vit::entries(),
        vec![models::clay::entry()],
    ]
    .into_iter()
    .flatten()
    .fold(Catalog::new("timm"), Catalog::add)
}

terrahost_plugin_api::declare_plugin! {
    name: "timm",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("backbone", "timm", backbones()),
    ],
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_clay;
#[cfg(test)]
mod tests_timm_a;
