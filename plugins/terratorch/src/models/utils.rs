//! Input padding and output cropping shared by TerraTorch's task models.
//! Mirrors `terratorch/models/utils.py` (`pad_images`, `center_crop`, `get_image_size`).

use serde_json::Value;
use tch::Tensor;
use terrahost_plugin_api::{params::describe_json, PluginError, Result};

/// The padding modes `torch.nn.functional.pad` understands.
pub const PADDING_MODES: [&str; 4] = ["constant", "reflect", "replicate", "circular"];

/// A backbone's patch size as TerraTorch uses it for padding: `(t, h, w)`, where an
/// integer `p` or a one-element list means `(1, p, p)` and two elements mean `(1, h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchSize {
    /// Temporal patch size (1 unless three values were given).
    pub t: i64,
    /// Patch height.
    pub h: i64,
    /// Patch width.
    pub w: i64,
}

impl PatchSize {
    /// Reads `backbone_patch_size`. Like Python's truthiness test upstream, `null`, `0`
    /// and `[]` mean "no patch size" (no padding); other values must be positive
    /// integers, alone or in a list of 1 to 3.
    pub fn from_json(v: &Value) -> Result<Option<Self>> {
        let bad = || {
            PluginError::invalid_argument(format!(
                "`patch_size` must be a positive integer or a list of 1 to 3 positive integers, got {}",
                describe_json(v)
            ))
        };
        let ints: Vec<i64> = match v {
            Value::Null => return Ok(None),
            Value::Number(n) => match n.as_i64() {
                Some(0) => return Ok(None),
                Some(p) => vec![p],
                None => return Err(bad()),
            },
            Value::Array(a) if a.is_empty() => return Ok(None),
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_i64().ok_or_else(bad))
                .collect::<Result<_>>()?,
            _ => return Err(bad()),
        };
        if ints.iter().any(|&p| p <= 0) {
            return Err(bad());
        }
        match ints[..] {
            [p] => Ok(Some(Self { t: 1, h: p, w: p })),
            [h, w] => Ok(Some(Self { t: 1, h, w })),
            [t, h, w] => Ok(Some(Self { t, h, w })),
            _ => Err(bad()),
        }
    }
}

/// Checks a padding mode name.
pub fn check_padding_mode(mode: &str) -> Result<()> {
    if PADDING_MODES.contains(&mode) {
        Ok(())
    } else {
        Err(PluginError::invalid_argument(format!(
            "padding mode `{mode}` is not one of {}",
            PADDING_MODES.join(", ")
        )))
    }
}

/// Pads images (`[B, C, H, W]` or `[B, C, T, H, W]`) so that height and width become
/// multiples of twice the patch size (decoders often need an even number of patches)
/// and time a multiple of the temporal patch size. Padding is split evenly, the extra
/// pixel going to the bottom/right. Tensors with fewer than 4 dims pass unchanged.
pub fn pad_images(x: &Tensor, patch: &PatchSize, mode: &str) -> Result<Tensor> {
    let dims = x.size();
    let nd = dims.len();
    if nd < 4 {
        return Ok(x.shallow_clone());
    }
    let (p_t, p_h, p_w) = (patch.t, patch.h * 2, patch.w * 2);
    if p_t > 1 && nd < 5 {
        return Err(PluginError::invalid_argument(format!(
            "a temporal patch size of {p_t} needs inputs shaped [B, C, T, H, W], got {dims:?}"
        )));
    }
    let (h, w) = (dims[nd - 2], dims[nd - 1]);
    let t = if nd > 4 { dims[nd - 3] } else { 1 };
    let t_pad = (p_t - t % p_t) % p_t;
    let h_pad = (p_h - h % p_h) % p_h;
    let w_pad = (p_w - w % p_w) % p_w;
    let (top, left) = (h_pad / 2, w_pad / 2);
    let (bottom, right) = (h_pad - top, w_pad - left);
    if t_pad > 0 {
        // Upstream pads each sample [C, T, H, W] as one unbatched 3-D volume; folding
        // the leading dims into a batch of such volumes is the same operation.
        let flat = x.f_reshape([-1, dims[nd - 4], t, h, w])?;
        let padded = flat.f_pad([left, right, top, bottom, 0, t_pad], mode, None)?;
        let mut shape = dims[..nd - 3].to_vec();
        shape.extend([t + t_pad, h + h_pad, w + w_pad]);
        Ok(padded.f_reshape(shape)?)
    } else if h_pad > 0 || w_pad > 0 {
        // Per sample upstream pads the last two dims of [C, (T,) H, W] as 2-D images.
        let c = dims[nd - 3];
        let flat = x.f_reshape([-1, c, h, w])?;
        let padded = flat.f_pad([left, right, top, bottom], mode, None)?;
        let mut shape = dims[..nd - 2].to_vec();
        shape.extend([h + h_pad, w + w_pad]);
        Ok(padded.f_reshape(shape)?)
    } else {
        Ok(x.shallow_clone())
    }
}

/// How inputs are padded before the encoder: to multiples of twice `patch` with `mode`.
#[derive(Clone, Debug, PartialEq)]
pub struct Padding {
    /// The backbone's patch size.
    pub patch: PatchSize,
    /// A `torch.nn.functional.pad` mode (`reflect` by default upstream).
    pub mode: String,
}

impl Padding {
    /// Pads `x` (see [`pad_images`]).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        pad_images(x, &self.patch, &self.mode)
    }
}

/// The spatial size `[H, W]` of an image batch (its last two dims).
pub fn image_size(x: &Tensor) -> Result<[i64; 2]> {
    let dims = x.size();
    match dims[..] {
        [.., h, w] => Ok([h, w]),
        _ => Err(PluginError::invalid_argument(format!(
            "expected an image tensor with spatial dims [.., H, W], got shape {dims:?}"
        ))),
    }
}

/// Crops the centre `[h_out, w_out]` of the last two dims; a dim already smaller than
/// the target is kept whole (as Python slicing past the end does).
pub fn center_crop(x: &Tensor, out: [i64; 2]) -> Result<Tensor> {
    let [h, w] = image_size(x)?;
    let nd = x.dim() as i64;
    let [h_out, w_out] = out;
    let top = (h - h_out).div_euclid(2).max(0);
    let left = (w - w_out).div_euclid(2).max(0);
    let cropped = x
        .f_narrow(nd - 2, top, h_out.min(h - top).max(0))?
        .f_narrow(nd - 1, left, w_out.min(w - left).max(0))?;
    Ok(cropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tch::{Device, Kind};

    fn ramp(shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        Tensor::arange(n, (Kind::Float, Device::Cpu)).reshape(shape)
    }

    #[test]
    fn patch_size_forms() {
        assert_eq!(
            PatchSize::from_json(&json!(16)).unwrap(),
            Some(PatchSize { t: 1, h: 16, w: 16 })
        );
        assert_eq!(
            PatchSize::from_json(&json!([8])).unwrap(),
            Some(PatchSize { t: 1, h: 8, w: 8 })
        );
        assert_eq!(
            PatchSize::from_json(&json!([4, 8])).unwrap(),
            Some(PatchSize { t: 1, h: 4, w: 8 })
        );
        assert_eq!(
            PatchSize::from_json(&json!([2, 4, 8])).unwrap(),
            Some(PatchSize { t: 2, h: 4, w: 8 })
        );
        assert_eq!(PatchSize::from_json(&json!(0)).unwrap(), None);
        assert_eq!(PatchSize::from_json(&json!(null)).unwrap(), None);
        assert!(PatchSize::from_json(&json!([1, 2, 3, 4])).is_err());
        assert!(PatchSize::from_json(&json!("16")).is_err());
        assert!(PatchSize::from_json(&json!(-2)).is_err());
    }

    #[test]
    fn pads_to_twice_the_patch_size_split_evenly() {
        // 10x7 with patch 2 -> multiples of 4: 12x8, pads (top 1, bottom 1, left 0, right 1)
        let x = ramp(&[1, 1, 10, 7]);
        let y = pad_images(&x, &PatchSize { t: 1, h: 2, w: 2 }, "constant").unwrap();
        assert_eq!(y.size(), vec![1, 1, 12, 8]);
        // the first row is padding, the original (0,0) moves to (1,0)
        assert_eq!(y.double_value(&[0, 0, 0, 0]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 1, 1]), 1.0);
        assert_eq!(y.double_value(&[0, 0, 11, 7]), 0.0);
        // reflect mirrors without repeating the edge: padded row 0 equals original row 1
        let r = pad_images(&x, &PatchSize { t: 1, h: 2, w: 2 }, "reflect").unwrap();
        assert_eq!(r.double_value(&[0, 0, 0, 0]), 7.0);
        // already divisible: unchanged
        let z = pad_images(
            &ramp(&[2, 3, 8, 8]),
            &PatchSize { t: 1, h: 4, w: 2 },
            "reflect",
        )
        .unwrap();
        assert_eq!(z.size(), vec![2, 3, 8, 8]);
    }

    #[test]
    fn pads_time_and_space_of_5d_inputs() {
        let x = ramp(&[2, 3, 3, 6, 6]);
        let y = pad_images(&x, &PatchSize { t: 2, h: 2, w: 2 }, "constant").unwrap();
        assert_eq!(y.size(), vec![2, 3, 4, 8, 8]);
        let y = pad_images(&x, &PatchSize { t: 1, h: 2, w: 2 }, "reflect").unwrap();
        assert_eq!(y.size(), vec![2, 3, 3, 8, 8]);
        assert!(pad_images(
            &ramp(&[1, 1, 4, 4]),
            &PatchSize { t: 2, h: 2, w: 2 },
            "constant"
        )
        .is_err());
    }

    #[test]
    fn center_crop_matches_python_slicing() {
        let x = ramp(&[1, 1, 6, 5]);
        let y = center_crop(&x, [4, 3]).unwrap();
        assert_eq!(y.size(), vec![1, 1, 4, 3]);
        assert_eq!(y.double_value(&[0, 0, 0, 0]), 6.0); // row 1, col 1
                                                        // a target larger than the tensor keeps it whole
        assert_eq!(center_crop(&x, [9, 9]).unwrap().size(), vec![1, 1, 6, 5]);
        assert!(check_padding_mode("reflect").is_ok());
        assert!(check_padding_mode("mirror").is_err());
    }
}
