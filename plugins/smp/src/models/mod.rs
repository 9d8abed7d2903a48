//! Model families, one file each.

pub mod unet;
pub mod wrapper;
