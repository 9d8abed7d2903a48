//! Model families, one file each.

pub mod convnext;
pub mod prithvi_swin;
pub mod prithvi_vit;
pub mod resnet;
pub mod swin;
pub mod vit;
