//! Reading checkpoints (state_dicts) from disk, for the host (`terrahost run --weights`)
//! and for plugins (`pretrained=true` with a local file).
//!
//! `.safetensors` files are read by [`safetensors`], which checks every offset and size
//! against the file before allocating. Files written by PyTorch's `torch.save`
//! (`.pt`, `.pth`, `.ckpt`, `.bin`) are read by the `torch_save` module: the zip archive
//! PyTorch has written since 1.6, whose `data.pkl` holds the dict of tensors.
//!
//! A `torch.save` file is untrusted input: its reader runs no code, does not recurse on
//! the file's nesting, checks every declared size before allocating, and allocates at
//! most a budget: by default [`default_budget`] = 64 MiB + 4 x the file's size, or
//! `TERRAHOST_CHECKPOINT_BUDGET_MB` MiB when that variable is set ([`BUDGET_ENV`]), or
//! what the caller passes to [`read_state_dict_with_budget`].
use std::path::Path;
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};
pub use torch_save::{
    conversion_hint, default_budget, BUDGET_ENV, BUDGET_FILE_MULTIPLE, BUDGET_FLOOR,
};

pub mod safetensors;
mod torch_save;

/// The extensions read as `torch.save` archives.
pub const TORCH_SAVE_EXTENSIONS: [&str; 4] = ["pt", "pth", "ckpt", "bin"];

/// Reads the state_dict in `path`, as `(key, tensor)` pairs in file order.
///
/// A `torch.save` file may hold the state_dict itself or a dict that carries it under
/// `state_dict` (Lightning checkpoints) or `model`; those are unwrapped.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    read_state_dict_with_budget(path, None)
}

/// [`read_state_dict`] with the read budget of a `torch.save` file given in bytes
/// (`None`: [`BUDGET_ENV`] when set, else [`default_budget`] of the file's size). A file
/// that would need more is refused with an error that names the zip entry.
pub fn read_state_dict_with_budget(
    path: &Path,
    budget_bytes: Option<u64>,
) -> Result<Vec<(String, Tensor)>> {
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
        "safetensors" => safetensors::read(path).map_err(PluginError::invalid_argument),
        e if TORCH_SAVE_EXTENSIONS.contains(&e) => torch_save::read_state_dict_with_budget(path, budget_bytes),
        _ => Err(PluginError::invalid_argument(format!(
            "checkpoint {}: unknown format `.{ext}`; terrahost reads .safetensors and torch.save files \
             (.pt, .pth, .ckpt, .bin)",
            path.display()
        ))),
    }
}
