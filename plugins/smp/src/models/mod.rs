//! Model families, one file each.

pub mod args;
pub mod blocks;
pub mod checks;
pub mod deeplabv3;
pub mod dpt;
pub mod fpn;
pub mod linknet;
pub mod manet;
pub mod pan;
pub mod pspnet;
pub mod resnet_encoder;
pub mod segformer;
pub mod segmentation_model;
pub mod smp_model_factory;
pub mod unet;
pub mod unetplusplus;
pub mod upernet;
pub mod wrapper;
