//! What the timm plugin's tests share: building an entry through the plugin's own
//! catalog (no dlopen), parity checks against the reference fixtures, parameter counts,
//! state_dict lookups and scratch checkpoint files.
use serde_json::Value;
use std::path::PathBuf;
use tch::Tensor;
use terrahost_plugin_api::sdk::{DynModule, NoHost};
use terrahost_plugin_api::{BuildRequest, PluginError};

/// Builds `timm_<name>` with `args` (a JSON object) through the plugin's catalog.
pub(crate) fn build(name: &str, args: Value) -> Result<DynModule, PluginError> {
    let sources = crate::plugin_sources().unwrap();
    let entry = sources
        .iter()
        .find(|s| s.registry.as_str() == "backbone" && s.prefix.as_str() == "timm")
        .unwrap();
    let req = BuildRequest::new(args.as_object().unwrap(), None);
    let m = entry
        .source
        .build(name.into(), req, NoHost::handle())
        .into_result()?;
    Ok(DynModule::new(name, m))
}

/// The parity test of fixture `case` (`tests/fixtures/<case>`).
pub(crate) fn parity(case: &str) {
    terrahost_testkit::check_fixture(crate::plugin_sources().unwrap(), case);
}

/// The number of parameters (buffers not counted), as `sum(p.numel() for p in
/// model.parameters())`.
pub(crate) fn n_params(m: &DynModule) -> i64 {
    m.module()
        .named_parameters()
        .iter()
        .map(|nt| nt.tensor.with(|t| t.numel() as i64))
        .sum()
}

/// The tensor at `key` of a `(key, tensor)` list; panics naming the key when absent.
pub(crate) fn tensor(sd: &[(String, Tensor)], key: &str) -> Tensor {
    sd.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
        .shallow_clone()
}

/// The state_dict entry `key` of `m`.
pub(crate) fn get(m: &DynModule, key: &str) -> Tensor {
    tensor(&m.state_dict(), key)
}

/// A fresh scratch directory for one test (`tag` keeps concurrent tests apart).
pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `named` as `<scratch_dir(tag)>/<file>` and returns the path.
pub(crate) fn write_checkpoint(named: &[(String, Tensor)], tag: &str, file: &str) -> PathBuf {
    let path = scratch_dir(tag).join(file);
    Tensor::write_safetensors(named, &path).unwrap();
    path
}
