//! smp's shared building blocks (`segmentation_models_pytorch/base/modules.py` and
//! friends), from the shared layers crate: the `terratorch` plugin builds on them too.
pub use terrahost_layers::smp::blocks::*;
