//! The `timm` plugin library: exports the sources declared in the `terrahost-timm` crate.
terrahost_plugin_api::export_plugin!(terrahost_timm);
