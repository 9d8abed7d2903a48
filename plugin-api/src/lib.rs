#![doc = include_str!("../README.md")]
//!
//! ## The crate
//!
//! The one crate that the `terrahost` host and every plugin share. It has two halves:
//!
//! * **The stable ABI** ([`root`], [`source`], [`module`], [`host`], [`tensor`],
//!   [`error`], [`params`], [`manifest`]): `#[repr(C)]` / [`abi_stable::StableAbi`] types
//!   and `#[sabi_trait]` objects, the only things that cross the boundary between the
//!   host and a plugin library. `abi_stable` checks their layout when a plugin loads.
//! * **The SDK** ([`sdk`], [`args`]): plain Rust helpers that turn a `tch` model into an
//!   ABI module, a list of entries into a registry source, and a few lines into a whole
//!   plugin ([`declare_plugin!`], [`export_plugin!`]).
//!
//! Nothing else lives here: the layers and kernels that models share (PyTorch-compatible
//! layers, fused inference kernels, the checkpoint reader) are in `terrahost-layers`, an
//! ordinary library outside the ABI. This crate's version is the ABI's version: it
//! changes only when the boundary changes (see `COMPATIBILITY.md`).
//!
//! Rules that keep the boundary sound (see the Architecture section of the README): tensors cross as
//! owned or borrowed handles to one `at::Tensor`, never copied; no panic unwinds across
//! (every exported entry point runs in `catch_unwind`); arguments cross as a JSON value
//! tree; and both sides record the plugin-api, libtorch and C++ ABI versions they were
//! built with, which the host checks before it calls into a plugin.

#![allow(non_camel_case_types)]
#![allow(non_local_definitions)] // emitted by `#[sabi_trait]` // abi_stable names generated types `X_Ref`, `X_TO`.

pub mod args;
pub mod error;
pub mod host;
pub mod manifest;
pub mod module;
pub mod params;
pub mod root;
pub mod sdk;
pub mod source;
pub mod tensor;
pub mod warnings;

pub use args::Args;
pub use error::{ErrorKind, PluginError, Result};
pub use host::{Host, HostRef, Host_TO};
pub use manifest::{Manifest, SourceDecl};
pub use module::{
    Module, ModuleBox, Module_TO, NamedTensor, INPUT_NAMES_KWARG, PLUGIN_API_META_KEY,
};
pub use params::{BuildRequest, EntryInfo, ParamSpec, ParamType};
pub use root::{PluginRoot, PluginRoot_Ref, SourceEntry};
pub use source::{Source, SourceBox, Source_TO};
pub use tensor::{RDevice, TensorHandle, TensorRef};

/// Re-exported so that a plugin crate needs no other dependency and uses exactly the
/// versions this crate was built with: `tch` is pinned to `=0.26.0` (libtorch 2.13.0),
/// because a plugin and the host must link the same libtorch.
pub mod reexports {
    pub use abi_stable;
    pub use serde_json;
    pub use tch;
}

/// The plugin-api version this crate is (semver). A plugin built against a version
/// that is not semver-compatible with the host's is refused.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The libtorch version this crate was compiled against (for example `2.13.0`).
pub const TORCH_VERSION: &str = env!("TERRAHOST_TORCH_VERSION");
/// Whether libtorch was built with the C++11 string ABI (`_GLIBCXX_USE_CXX11_ABI=1`).
pub const TORCH_CXX11_ABI: bool = matches!(env!("TERRAHOST_TORCH_CXX11_ABI").as_bytes(), b"1");
/// The directory of the libtorch shared libraries this crate was linked against.
pub const TORCH_LIB_DIR: &str = env!("TERRAHOST_TORCH_LIB");
/// The Rust target triple this crate was compiled for.
pub const TARGET: &str = env!("TERRAHOST_TARGET");

pub use params::common::registry_names;
