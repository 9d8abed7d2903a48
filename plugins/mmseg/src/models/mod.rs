//! Model families, one file each.

pub mod conv_module;
pub mod fcn_head;
