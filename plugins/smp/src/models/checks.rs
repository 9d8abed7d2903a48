//! The checks every smp decoder makes, from the shared layers crate.
pub use terrahost_layers::smp::checks::*;
