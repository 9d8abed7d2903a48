//! Reading checkpoints (state_dicts) from disk, for the host (`terrahost run --weights`)
//! and for plugins (`pretrained=true` with a local file).
//!
//! `.safetensors` files are read by tch. Files written by PyTorch's `torch.save`
//! (`.pt`, `.pth`, `.ckpt`, `.bin`) are read by the `torch_pickle` module: the zip archive
//! PyTorch has written since 1.6, whose `data.pkl` holds the dict of tensors.
use crate::error::{PluginError, Result};
use std::path::Path;
use tch::Tensor;

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
        e if TORCH_SAVE_EXTENSIONS.contains(&e) => crate::torch_pickle::read_state_dict(path),
        _ => Err(PluginError::invalid_argument(format!(
            "checkpoint {}: unknown format `.{ext}`; terrahost reads .safetensors and torch.save files \
             (.pt, .pth, .ckpt, .bin)",
            path.display()
        ))),
    }
}

/// The command that converts a `torch.save` checkpoint at `path` into `.safetensors`,
/// for the errors that cannot read one.
pub fn conversion_hint(path: &Path) -> String {
    format!(
        "convert it with python -c \"import torch, safetensors.torch as st; sd = torch.load('{}', map_location='cpu'); \
         sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() for k, v in sd.items()}}, 'model.safetensors')\"",
        path.display()
    )
}
