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
pub mod segformer;
pub mod unet;
pub mod unetplusplus;
pub mod upernet;
pub mod wrapper;
