//! # terrahost
//!
//! A dynamic plugin host for TerraTorch-style model registries. Plugins are shared
//! libraries that contribute *sources* (prefixes such as `timm` or `smp`) to the host's
//! registries (`backbone`, `neck`, `decoder`, `full_model`, `model_factory`). The host
//! finds them at runtime and probes each in a child process ([`plugins`]), checks that they were built against a compatible
//! plugin-api and the same libtorch, merges them into TerraTorch's registries
//! ([`registry`]), and builds and runs models whose parts come from different plugins
//! ([`Host::build`], [`weights`], [`config`]); [`output_names`] says how their outputs are
//! named where they are written.
//!
//! Which crate does what: `abi_stable` defines and checks the binary interface,
//! `libloading` opens candidate files and tells "not a library" from "not a plugin",
//! `semver` decides plugin-api compatibility, `tch` runs the tensors, and `tracing`
//! reports discovery, loading, registration and builds.

pub mod config;
pub mod error;
pub mod host;
pub mod limits;
pub mod mkl_dispatch;
pub mod output_names;
pub mod plugins;
pub mod precision;
pub mod predict;
pub mod registry;
pub mod weights;
pub mod yaml;

pub use error::HostError;
pub use host::{Host, LoadedPlugin, RegistryRef, Rejected};
pub use plugins::LoadOptions;
pub use registry::{MultiSourceRegistry, Registry, SourceSlot};
pub use terrahost_plugin_api as api;
pub use terrahost_plugin_api::sdk::DynModule;
