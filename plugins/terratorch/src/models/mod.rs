//! Model families, one file each, plus the small helpers they share.

pub mod aspp_head;
pub mod clay1_5_model_factory;
pub mod clay_model_factory;
pub mod clay_v15;
pub mod dinov3;
pub mod dinov3_convnext;
pub mod dofa_vit;
pub mod embedding_output_model;
pub mod encoder_decoder_factory;
pub mod fcn_decoder;
pub mod full_model_factory;
pub mod generic_model_factory;
pub mod generic_unet_model_factory;
pub mod heads;
pub mod identity_backbone;
pub mod identity_decoder;
pub mod linear_decoder;
pub mod mlp_decoder;
pub mod mmearth_convnextv2;
pub mod necks;
pub mod object_detection;
pub mod peft;
pub mod pixel_wise_model;
pub mod prithvi_checkpoint;
pub mod prithvi_mae;
pub mod prithvi_model_factory;
pub mod prithvi_vit;
pub mod satmae_head;
pub mod scalar_output_model;
pub mod swin_v2;
pub mod temporal_wrapper;
pub mod terramind;
pub mod torchgeo_bands;
pub mod torchgeo_resnet;
pub mod torchgeo_vit;
pub mod trunk;
pub mod unet;
pub mod unet_decoder;
pub mod upernet_decoder;
pub mod utils;

use terrahost_plugin_api::{PluginError, Result};

/// Resolves a Python-style index (negative counts from the end) into a list of `len`
/// items; `what` names the argument in the error.
pub(crate) fn py_index(index: i64, len: usize, what: &str) -> Result<usize> {
    let len_i = len as i64;
    let resolved = if index < 0 { index + len_i } else { index };
    if (0..len_i).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(PluginError::invalid_argument(format!(
            "{what} {index} is out of range for a list of {len} item(s) (valid: {} to {})",
            -len_i,
            len_i - 1
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::py_index;

    #[test]
    fn python_indices_resolve_like_python() {
        assert_eq!(py_index(-1, 3, "i").unwrap(), 2);
        assert_eq!(py_index(0, 3, "i").unwrap(), 0);
        assert_eq!(py_index(-3, 3, "i").unwrap(), 0);
        assert!(py_index(3, 3, "i").is_err());
        let e = py_index(-4, 3, "index").unwrap_err();
        assert!(
            e.message().contains("index -4") && e.message().contains("3 item"),
            "{e}"
        );
    }
}
