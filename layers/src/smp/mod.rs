//! segmentation_models_pytorch's shared parts that more than one plugin builds: smp's
//! building blocks ([`blocks`]: `Conv2dReLU`, attention, the norms and resize modes its
//! decoders accept), the checks its decoders make ([`checks`]), and its U-Net decoder
//! ([`unet_decoder`]), which TerraTorch's `UNetDecoder` is built on.
pub mod blocks;
pub mod checks;
pub mod unet_decoder;
