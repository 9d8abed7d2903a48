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

/// The keyword of [`Module::forward_kw`] that marks named inputs (plugin-api 0.2.1):
/// `{"__input_names__": ["S2L2A", "S1GRD"]}` names `inputs` one by one, which makes them
/// TerraTorch's dict of tensors by modality, in that order. A module built with the
/// plugin-api 0.2.1 SDK or later dispatches such a call to `Model::forward_named` and
/// reports [`PLUGIN_API_META_KEY`] in its [`Module::meta`]; a module without that key
/// predates named inputs (it would ignore the names), so callers must not send them to
/// it ([`crate::sdk::DynModule::forward_named`] refuses instead).
///
/// Why a keyword and not a new vtable method: `abi_stable` 0.11 checks, when a library
/// loads, that the host's prefix types (this vtable among them) have no more fields than
/// the library's ("too many fields; expected 13, found 12"), so appending a method would
/// make every plugin built against 0.2.0 fail to load in a 0.2.1 host. The keyword keeps
/// the layout unchanged.
pub const INPUT_NAMES_KWARG: &str = "__input_names__";

/// The [`Module::meta`] key holding the plugin-api version a module was built with
/// (added by the SDK from 0.2.1 on). Its presence means the module understands
/// [`INPUT_NAMES_KWARG`].
pub const PLUGIN_API_META_KEY: &str = "plugin_api";

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
    /// Modules that take none ignore them. With [`INPUT_NAMES_KWARG`] the inputs are
    /// named (plugin-api 0.2.1).
    fn forward_kw(
        &self,
        inputs: RVec<TensorHandle>,
        kwargs: RString,
    ) -> RResult<RVec<TensorHandle>, PluginError>;

    /// Facts about the built module that a composer needs, as a JSON object. Known keys:
    /// `patch_size` (a backbone's patch size, TerraTorch's `module.patch_size`, which the
    /// factory pads the input to a multiple of), `img_size`, and `bf16_prefixes` (the
    /// `state_dict` prefixes whose weights `--precision bf16` stores in bfloat16, for a
    /// model that keeps the rest in float32; all of them when absent).
    fn meta(&self) -> RString;

    /// The backbone's `prepare_features_for_image_model` (tokens to image-like maps), or
    /// `None` when the module has none.
    fn prepare_features(
        &self,
        inputs: RVec<TensorHandle>,
    ) -> RResult<ROption<RVec<TensorHandle>>, PluginError>;
}

/// An owned, type-erased module.
pub type ModuleBox = Module_TO<'static, RBox<()>>;
