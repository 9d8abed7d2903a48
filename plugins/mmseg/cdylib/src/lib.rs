//! The `mmseg` plugin library: exports the sources declared in the `terrahost-mmseg` crate.
terrahost_plugin_api::export_plugin!(terrahost_mmseg);
