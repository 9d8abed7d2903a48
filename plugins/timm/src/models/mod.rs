//! Model families, one file each, and the pieces they share (`layers`, `features`,
//! `swin_layers`).

pub(crate) mod checks;
pub mod classifier;
pub mod clay;
pub mod convnext;
pub(crate) mod features;
pub(crate) mod layers;
pub mod prithvi_swin;
pub mod prithvi_vit;
pub mod resnet;
pub mod swin;
pub(crate) mod swin_layers;
pub mod timm_factory;
pub mod vit;
