//! A built component (backbone, neck, decoder, head or whole model) as an ABI object.
use crate::error::PluginError;
use crate::tensor::{RDevice, TensorHandle, TensorRef};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RString, RVec},
    StableAbi,
};

/// A named parameter or buffer, borrowed from the module that owns it. The name is the
/// PyTorch `state_dict` key of the reference implementation.
#[repr(C)]
#[derive(StableAbi)]
pub struct NamedTensor<'a> {
    /// The `state_dict` key, e.g. `encoder.layer1.0.conv1.weight`.
    pub name: RString,
    /// The tensor, borrowed.
    pub tensor: TensorRef<'a>,
}

/// A module built by a plugin. Implemented by the SDK's adapter; called by the host and
/// by other plugins (a factory that composes parts from several plugins).
#[sabi_trait]
pub trait Module: Send {
    /// Runs the module. Inputs are moved in (the caller keeps its own references by
    /// passing shallow clones); outputs are moved out.
    fn forward(&self, inputs: RVec<TensorHandle>) -> RResult<RVec<TensorHandle>, PluginError>;

    /// The channels of each output, as TerraTorch's `out_channels` (a decoder has one).
    fn out_channels(&self) -> RVec<i64>;

    /// Whether the module already ends in a head that makes the final prediction (so a
    /// factory adds none).
    fn includes_head(&self) -> bool;

    /// The learnable parameters, by `state_dict` key, sorted.
    fn named_parameters(&self) -> RVec<NamedTensor<'_>>;

    /// The buffers (BatchNorm statistics, fixed embeddings), by `state_dict` key, sorted.
    fn named_buffers(&self) -> RVec<NamedTensor<'_>>;

    /// Switches training mode (dropout, BatchNorm statistics) on or off.
    fn set_train(&mut self, train: bool);

    /// Moves every parameter and buffer to `device`.
    #[sabi(last_prefix_field)]
    fn to_device(&mut self, device: RDevice) -> RResult<(), PluginError>;
}

/// An owned, type-erased module.
pub type ModuleBox = Module_TO<'static, RBox<()>>;
