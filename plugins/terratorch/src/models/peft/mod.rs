//! LoRA fine-tunes: TerraTorch's `peft_config` (`terratorch/models/peft_utils.py`,
//! `get_peft_backbone`) for `EncoderDecoderFactory` (around the backbone) and
//! `FullModelFactory` (around the whole model).
//!
//! Design. The factory builds the backbone as usual, through the host, so it may come
//! from any plugin, and wraps it in a [`module::PeftModule`]. The wrapper reads the
//! backbone's `state_dict` keys, decides from them what PEFT would adapt
//! ([`targets`]: `target_modules` names, dotted suffixes, regexes and `all-linear`;
//! `modules_to_save`), and exposes the backbone's tensors under PEFT's keys
//! ([`layout`]: `base_model.model.` prefix, TerraTorch's QKVSep split of a fused qkv,
//! `base_layer`, `lora_A.default`, `lora_B.default`, `modules_to_save.default`,
//! `original_module`), so a checkpoint saved by TerraTorch from a LoRA fine-tune loads
//! unchanged with the host's strict loader. The split q/k/v weights are row views of
//! the fused weight, so the backbone itself keeps running its fused qkv.
//!
//! Inference. By default the adapters are folded into the backbone's weights once,
//! before the first forward after a load (`W += scale * B A`, with `scale =
//! lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`): the forward then costs
//! what the plain backbone costs. A weight is merged again only when it was overwritten
//! (its version counter moved, as a checkpoint load does), so loading a second
//! checkpoint works; after the merge, the `base_layer` keys hold the merged weights.
//! `peft_config: {merge: false}` (terrahost's key; TerraTorch ignores keys of
//! `peft_config` it does not read) keeps them separate: each forward computes
//! `base(x) + scale * B(A(dropout(x)))` in the linear layers themselves, through
//! [`terrahost_layers::lora`]. That needs a backbone whose linear layers are
//! `terrahost_layers` `PackedLinear`s in this plugin's library (the Prithvi ViTs); for
//! any other the first forward fails naming the layer, and merging (the default) is
//! what works.
pub mod config;
pub mod layout;
pub mod module;
pub mod targets;

use serde_json::Value;
use terrahost_plugin_api::reexports::abi_stable::sabi_trait::TD_Opaque;
use terrahost_plugin_api::{sdk::DynModule, ModuleBox, Module_TO, Result};

/// Wraps `inner` as TerraTorch's `get_peft_backbone(peft_config, inner)`.
pub fn wrap(inner: DynModule, peft_config: &Value) -> Result<DynModule> {
    wrap_spec(inner, &config::parse(peft_config)?)
}

/// [`wrap`] with a `peft_config` already read by [`config::parse`].
pub fn wrap_spec(inner: DynModule, spec: &config::LoraSpec) -> Result<DynModule> {
    let module = module::PeftModule::new(inner, spec)?;
    let label = format!("PeftModel({})", module.inner_label());
    let boxed: ModuleBox = Module_TO::from_value(module, TD_Opaque);
    Ok(DynModule::new(label, boxed))
}
