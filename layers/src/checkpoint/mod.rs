//! Reading checkpoints (state_dicts) from disk, for the host (`terrahost run --weights`)
//! and for plugins (`pretrained=true` with a local file).
//!
//! `.safetensors` files are read by tch. Files written by PyTorch's `torch.save`
//! (`.pt`, `.pth`, `.ckpt`, `.bin`) are read by the `torch_save` module: the zip archive
//! PyTorch has written since 1.6, whose `data.pkl` holds the dict of tensors.
use std::path::Path;
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};
pub use torch_save::conversion_hint;

mod torch_save;

/// The extensions read as `torch.save` archives.
pub const TORCH_SAVE_EXTENSIONS: [&str; 4] = ["pt", "pth", "ckpt", "bin"];

/// Reads the state_dict in `path`, as `(key, tensor)` pairs in file order.
///
/// A `torch.save` file may hold the state_dict itself or a dict that carries it under
/// `state_dict` (Lightning checkpoints) or `model`; those are unwrapped.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(PluginError::not_found(format!(
            "checkpoint {} does not exist or is not a file",
            path.display()
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => Tensor::read_safetensors(path).map_err(|e| {
            PluginError::invalid_argument(format!("cannot read {} as safetensors: {e}", path.display()))
        }),
        e if TORCH_SAVE_EXTENSIONS.contains(&e) => torch_save::read_state_dict(path),
        _ => Err(PluginError::invalid_argument(format!(
            "checkpoint {}: unknown format `.{ext}`; terrahost reads .safetensors and torch.save files \
             (.pt, .pth, .ckpt, .bin)",
            path.display()
        ))),
    }
}
