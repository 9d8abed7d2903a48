//! The names the loader had before discovery, scan, cache and load became
//! [`crate::plugins`]; kept so existing code keeps compiling.
pub use crate::plugins::discover::{
    default_plugin_dirs, discover, plugin_dirs, LIB_SUFFIX, PLUGIN_PATH_VAR,
};
pub use crate::plugins::load::check_manifest;
