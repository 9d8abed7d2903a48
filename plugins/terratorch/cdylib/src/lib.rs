//! The `terratorch` plugin library: exports the sources declared in the `terrahost-terratorch` crate.
terrahost_plugin_api::export_plugin!(terrahost_terratorch);
