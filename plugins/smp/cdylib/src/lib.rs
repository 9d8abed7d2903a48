//! The `smp` plugin library: exports the sources declared in the `terrahost-smp` crate.
terrahost_plugin_api::export_plugin!(terrahost_smp);
