//! A built component (backbone, neck, decoder, head or whole model) as an ABI object.
use crate::error::PluginError;
use crate::tensor::{RDevice, TensorHandle, TensorRef};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RResult, RString, RVec},
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

/// A named input tensor, moved across (TerraTorch's dict of tensors by modality, such as
/// `{"S2L2A": x, "S1GRD": y}`). Added in plugin-api 0.2.1.
#[repr(C)]
#[derive(StableAbi)]
pub struct NamedTensorHandle {
    /// The input's name (a modality such as `S2L2A`).
    pub name: RString,
    /// The tensor, moved.
    pub tensor: TensorHandle,
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

    /// Runs the module with keyword arguments, a JSON object such as
    /// `{"image_size": [224, 224]}` (what TerraTorch's model passes its necks).
    /// Modules that take none ignore them.
    fn forward_kw(
        &self,
        inputs: RVec<TensorHandle>,
        kwargs: RString,
    ) -> RResult<RVec<TensorHandle>, PluginError>;

    /// Facts about the built module that a composer needs, as a JSON object. Known keys:
    /// `patch_size` (a backbone's patch size, TerraTorch's `module.patch_size`, which the
    /// factory pads the input to a multiple of) and `img_size`.
    fn meta(&self) -> RString;

    /// The backbone's `prepare_features_for_image_model` (tokens to image-like maps), or
    /// `None` when the module has none.
    fn prepare_features(
        &self,
        inputs: RVec<TensorHandle>,
    ) -> RResult<ROption<RVec<TensorHandle>>, PluginError>;

    /// Runs the module on named inputs, in the caller's order (TerraTorch's
    /// `model({"S2L2A": x, "S1GRD": y}, **kwargs)`), with keyword arguments as in
    /// [`Module::forward_kw`]. Added in plugin-api 0.2.1, appended after the other
    /// methods so that plugins built against 0.2.0 still load: for their modules the
    /// vtable has no entry and this default body runs instead, which refuses with an
    /// error naming the inputs (the same error a module that takes no named inputs
    /// gives).
    fn forward_named(
        &self,
        inputs: RVec<NamedTensorHandle>,
        kwargs: RString,
    ) -> RResult<RVec<TensorHandle>, PluginError> {
        let _ = kwargs;
        let names: Vec<String> = inputs.iter().map(|n| format!("`{}`", n.name)).collect();
        RResult::RErr(PluginError::forward_failed(format!(
            "this module takes no named inputs (got {}): it runs on one tensor, or it was built by a \
             plugin compiled against plugin-api 0.2.0, which predates named inputs (rebuild the plugin); \
             pass a single tensor `input` instead",
            names.join(", ")
        )))
    }
}

/// An owned, type-erased module.
pub type ModuleBox = Module_TO<'static, RBox<()>>;
