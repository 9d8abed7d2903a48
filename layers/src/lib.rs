//! # terrahost-layers
//!
//! What terrahost plugins share that is not part of the plugin ABI: PyTorch-compatible
//! layers written with `tch` (their parameter names are PyTorch's `state_dict` keys),
//! the fused kernels that make inference fast, and the checkpoint reader.
//!
//! It is an ordinary library: a plugin links its own copy, and a new version of this
//! crate never changes whether a plugin loads (that is `terrahost-plugin-api`'s
//! version alone).
//!
//! * Layers with PyTorch's keys: [`norm`] (LayerNorm, BatchNorm2d), [`linear`] (Linear,
//!   timm's Mlp and their initialisations), [`conv`] (Conv2d), [`drop`] (dropout,
//!   stochastic depth, LayerScale), [`torch_transformer`] (`nn.TransformerEncoderLayer`),
//!   [`wavelengths`] (TerraTorch's band wavelengths), [`rope`] (DINOv3's 2-D rotary
//!   position embedding) and [`swiglu`] (the SwiGLU feed-forward network).
//! * Networks several plugins build: [`resnet`] (timm's and torchvision's ResNet),
//!   [`vit`] (timm's ViT `Attention` and `Block`) and [`clay`] (Clay v1's and v1.5's
//!   dynamic embedding and transformer layer).
//! * smp's shared parts ([`smp`]): its decoder blocks and its U-Net decoder, which both
//!   the `smp` and the `terratorch` plugins build.
//! * Checkpoints: [`checkpoint`] reads `.safetensors` and `torch.save` files (the pickle
//!   inside is interpreted, never executed).
//! * Initialisation and inference: [`init`] (parallel initialisation of big layers),
//!   [`inference`] (libtorch's inference mode), [`precision`] (float32, or bfloat16
//!   through libtorch's CPU autocast with the weights converted once).
//! * Fused inference kernels: [`packed_linear`] (a linear on a weight packed once: MKL's,
//!   or oneDNN's with GELU fused), [`conv_bn`] (Conv2d + BatchNorm2d folded), [`upsample_conv`] (a nearest 2x
//!   upsampling + concatenation + 3x3 convolution run at low resolution), [`gemm_conv`]
//!   (a convolution over few pixels as one GEMM per image), and
//!   [`derived`] (keeps such inference copies in step with the parameters).
//!   [`stage_times`] times the stages of a forward for benchmarks, when asked;
//!   [`op_profile`] records libtorch's operators as a Chrome trace.
//! * Object detection ([`detection`]): torchvision's NMS, RoIAlign, MultiScaleRoIAlign,
//!   box coding, anchors, the detection models' image transform, the region proposal
//!   network, the R-CNN box and mask heads and their composition (Faster and Mask R-CNN
//!   inference over a caller's backbone), RetinaNet's and FCOS's inference, and
//!   multi-scale deformable attention's sampling.
pub mod checkpoint;
pub mod clay;
pub mod conv;
pub mod conv_bn;
pub mod derived;
pub mod detection;
pub mod drop;
pub mod gemm_conv;
pub mod inference;
pub mod init;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod op_profile;
pub mod packed_linear;
pub mod precision;
pub mod resnet;
pub mod rope;
pub mod smp;
pub mod stage_times;
pub mod swiglu;
pub mod torch_transformer;
pub mod upsample_conv;
pub mod vit;
pub mod wavelengths;
