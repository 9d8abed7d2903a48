//! The `smp` plugin: segmentation_models_pytorch decoders, wrapped as TerraTorch's `SMPRegistry` wraps them.

pub mod models;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_deeplab_fpn_linknet_pspnet_pan;
#[cfg(test)]
mod tests_dpt_manet_segformer_upernet_unetpp;
#[cfg(test)]
mod tests_factory;

use terrahost_plugin_api::sdk::Catalog;

/// The `smp` entries of the `decoder` registry.
fn decoders() -> Catalog {
    Catalog::new("smp")
        .add(models::unet::entry())
        .add(models::deeplabv3::deeplabv3_entry())
        .add(models::deeplabv3::deeplabv3plus_entry())
        .add(models::fpn::entry())
        .add(models::linknet::entry())
        .add(models::pspnet::entry())
        .add(models::pan::entry())
        .add(models::dpt::entry())
        .add(models::manet::entry())
        .add(models::segformer::entry())
        .add(models::upernet::entry())
        .add(models::unetplusplus::entry())
}

/// The `smp` entries of the `model_factory` registry.
fn model_factories() -> Catalog {
    Catalog::new("smp").add(models::smp_model_factory::entry())
}

terrahost_plugin_api::declare_plugin! {
    name: "smp",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("decoder", "smp", decoders()),
        ("model_factory", "smp", model_factories()),
    ],
}
