//! # terrahost-index
//!
//! Everything terrahost knows about its plugins that needs no libtorch: discovery of
//! the candidate files ([`discover`]), the host side of the out-of-process scan
//! ([`scan`]), the registry cache ([`cache`]), the scans' plain data ([`meta`]), the
//! merged registries as data ([`view`]) with TerraTorch's name resolution
//! ([`resolve`]), which plugins register and which are refused ([`register`]), and
//! what `plugins`, `list` and `show` print ([`render`], through [`out`]), and
//! which plugin files may load at all: their ownership and modes ([`trust`]) and their
//! bytes' sha256 against an allowlist ([`integrity`]).
//!
//! The `terrahost` binary of this crate is the light front ([`front`]): it maps no
//! libtorch (this crate depends on neither tch nor the plugin-api), answers the
//! metadata commands from the cache, and `exec`s the heavy `terrahost-engine`
//! ([`engine`]) for `build`, `run`, `predict` and the scans. The engine (crate
//! `terrahost`) depends on this crate and uses the same code for all of the above.
pub mod cache;
pub use terrahost_common as common;
pub mod discover;
pub mod engine;
pub mod front;
pub mod gather;
pub mod integrity;
pub mod meta;
pub mod out;
pub mod register;
pub mod render;
pub mod resolve;
pub mod scan;
pub mod trust;
pub mod view;
