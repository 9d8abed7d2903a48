//! The `mmseg` plugin: mmsegmentation decode heads (which include their own classifier), as TerraTorch's `MMSegRegistry` builds them.

pub mod models;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_attention_heads;
#[cfg(test)]
mod tests_decode_heads;
#[cfg(test)]
mod tests_fcn;
#[cfg(test)]
mod tests_segmenter_pid_ddr;

pub use models::decode_head::NUM_CLASSES_REQUIRED;
use terrahost_plugin_api::sdk::Catalog;

/// The `mmseg` entries of the `decoder` registry, sorted by name as in README.md
/// (which also lists the heads left out and why).
fn decoders() -> Catalog {
    Catalog::new("mmseg")
        .includes_heads()
        .add(models::ann_head::entry())
        .add(models::apc_head::entry())
        .add(models::aspp_head::aspp_entry())
        .add(models::da_head::entry())
        .add(models::ddr_head::entry())
        .add(models::dm_head::entry())
        .add(models::nl_head::dnl_entry())
        .add(models::dpt_head::entry())
        .add(models::aspp_head::sep_aspp_entry())
        .add(models::sep_fcn_head::entry())
        .add(models::ema_head::entry())
        .add(models::enc_head::entry())
        .add(models::fcn_head::entry())
        .add(models::fpn_head::entry())
        .add(models::gc_head::entry())
        .add(models::isa_head::entry())
        .add(models::lraspp_head::entry())
        .add(models::ham_head::entry())
        .add(models::nl_head::entry())
        .add(models::ocr_head::entry())
        .add(models::pid_head::entry())
        .add(models::psp_head::entry())
        .add(models::setr_mla_head::entry())
        .add(models::setr_up_head::entry())
        .add(models::stdc_head::entry())
        .add(models::segformer_head::entry())
        .add(models::segmenter_mask_head::entry())
        .add(models::uper_head::entry())
}

terrahost_plugin_api::declare_plugin! {
    name: "mmseg",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("decoder", "mmseg", decoders()),
    ],
}
