//! The `timm` plugin: timm backbones as feature extractors (`features_only`), with timm's state_dict keys.

pub mod models;
pub(crate) mod pretrained;
pub(crate) mod tags;

use terrahost_plugin_api::sdk::Catalog;

/// The `timm` entries of the `backbone` registry, family by family, and their `arch.tag`
/// names (see [`tags`]).
fn backbones() -> Catalog {
    tags::with_tags(backbone_entries())
}

/// The backbone entries, family by family.
fn backbone_entries() -> Catalog {
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

/// The `timm` entry of the `model_factory` registry.
fn model_factories() -> Catalog {
    Catalog::new("timm").add(models::timm_factory::entry())
}

terrahost_plugin_api::declare_plugin! {
    name: "timm",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("backbone", "timm", backbones()),
        ("model_factory", "timm", model_factories()),
    ],
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_clay;
#[cfg(test)]
mod tests_factory;
#[cfg(test)]
mod tests_resnet;
#[cfg(test)]
mod tests_vit_convnext;
