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
        .refuses("CCHead", needs_mmcv_op("CrissCrossAttention"))
        .refuses("PSAHead", needs_mmcv_op("PSAMask"))
        .refuses("PointHead", needs_mmcv_op("point_sample"))
        .refuses(
            "SideAdapterCLIPHead",
            "SideAdapterCLIPHead needs mmcv's compiled op `point_sample` and a CLIP model, which this plugin does not have",
        )
        .refuses("Mask2FormerHead", NEEDS_MMDET)
        .refuses("MaskFormerHead", NEEDS_MMDET)
        .refuses(
            "IterativeDecodeHead",
            "TerraTorch cannot build it either: K-Net's IterativeDecodeHead skips BaseDecodeHead.__init__, so the in_channels/num_classes TerraTorch passes are a TypeError",
        )
        .refuses(
            "KernelUpdateHead",
            "not a decoder: K-Net's refinement stage, forward(feats, kernels, masks)",
        )
        .refuses(
            "KernelUpdator",
            "not a decoder: a block of K-Net's KernelUpdateHead, without num_classes",
        )
        .refuses(
            "VPDDepthHead",
            "TerraTorch cannot build it either: it takes no num_classes, which TerraTorch requires of every mmseg head",
        )
}

/// The reason for a head that needs one of mmcv's compiled ops (`mmcv.ops`), which
/// mmcv-lite, and so this plugin, does not have.
fn needs_mmcv_op(op: &str) -> String {
    format!("needs mmcv's compiled op `{op}` (mmcv.ops), which this plugin does not implement")
}

/// The reason for MaskFormer's heads.
const NEEDS_MMDET: &str =
    "needs the mmdet package (MaskFormer's transformer decoder and matcher), outside this plugin";

terrahost_plugin_api::declare_plugin! {
    name: "mmseg",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("decoder", "mmseg", decoders()),
    ],
}
