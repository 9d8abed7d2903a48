//! From raw pixel values to the model's input, as TerraTorch's
//! `GenericPixelWiseDataset.__getitem__` and the datamodule's `Normalize` do it: nodata
//! becomes NaN (`rioxarray.open_rasterio(masked=True)`), NaN becomes `no_data_replace`
//! when given, the `output_bands` are picked out of `dataset_bands`, the values go to
//! float32 and are multiplied by `constant_scale`, then `(x - means) / stds`.
use super::data_config::{Band, DataArgs};
use crate::error::{HostError, Result};
use tch::{Kind, Tensor};
use terrahost_plugin_api::params::did_you_mean;

/// The per-pixel transformation of one scene's bands.
#[derive(Debug)]
pub struct Preprocess {
    /// Which file bands go to the model, in order (`None`: all of them).
    pub indices: Option<Vec<i64>>,
    /// The number of channels the model gets.
    pub channels: usize,
    nodata: Option<f64>,
    no_data_replace: Option<f64>,
    scale: f64,
    /// `[C, 1, 1]` float32, when normalising.
    means: Option<Tensor>,
    stds: Option<Tensor>,
}

impl Preprocess {
    /// Checks the scene's band count against the config and resolves the band names.
    /// `file_bands` is the scene's band count, `nodata` its nodata value.
    pub fn new(data: &DataArgs, file_bands: usize, nodata: Option<f64>) -> Result<Self> {
        let usage = |m: String| HostError::Usage(m);
        let indices = match (&data.dataset_bands, &data.output_bands) {
            (_, None) => None,
            (_, Some(out)) if out.is_empty() => None,
            (None, Some(_)) => {
                return Err(usage(
                    "`output_bands` is given without `dataset_bands`; TerraTorch needs dataset_bands to find them"
                        .into(),
                ))
            }
            (Some(ds), Some(out)) => {
                let mut idx = Vec::new();
                for b in out {
                    match ds.iter().position(|d| d == b) {
                        Some(i) => idx.push(i as i64),
                        None => {
                            let names: Vec<String> = ds.iter().map(Band::to_string).collect();
                            let hint = did_you_mean(&b.to_string(), names.iter().map(String::as_str))
                                .map(|s| format!(" (did you mean `{s}`?)"))
                                .unwrap_or_default();
                            return Err(usage(format!(
                                "output band `{b}` is not one of dataset_bands [{}]{hint}; output bands must be a \
                                 subset of dataset bands",
                                names.join(", ")
                            )));
                        }
                    }
                }
                Some(idx)
            }
        };
        if let Some(ds) = &data.dataset_bands {
            if ds.len() != file_bands {
                return Err(usage(format!(
                    "the scene has {file_bands} bands but the config's dataset_bands names {}: [{}]",
                    ds.len(),
                    ds.iter().map(Band::to_string).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let channels = indices.as_ref().map_or(file_bands, Vec::len);
        let (means, stds) = match (&data.means, &data.stds) {
            (Some(m), Some(s)) => {
                if m.len() != channels {
                    return Err(usage(format!(
                        "the model gets {channels} bands from this scene but the config has {} means and stds",
                        m.len()
                    )));
                }
                let t = |v: &[f64]| {
                    Tensor::from_slice(v)
                        .to_kind(Kind::Float)
                        .view([channels as i64, 1, 1])
                };
                (Some(t(m)), Some(t(s)))
            }
            _ => (None, None),
        };
        Ok(Self {
            indices,
            channels,
            nodata,
            no_data_replace: data.no_data_replace,
            scale: data.constant_scale,
            means,
            stds,
        })
    }

    /// `[bands, n, w]` float64 raw values -> `[C, n, w]` float32 model input.
    pub fn apply(&self, raw: &Tensor) -> Tensor {
        let mut x = raw.shallow_clone();
        if let Some(v) = self.nodata.filter(|v| !v.is_nan()) {
            x = x.masked_fill(&raw.eq(v), f64::NAN);
        }
        if let Some(r) = self.no_data_replace {
            x = x.nan_to_num(r, f64::INFINITY, f64::NEG_INFINITY);
            // nan_to_num also maps +-inf; put genuine infinities back.
            x = x.where_self(&raw.isinf().logical_not(), raw);
        }
        if let Some(idx) = &self.indices {
            x = x.index_select(0, &Tensor::from_slice(idx));
        }
        let mut x = x.to_kind(Kind::Float);
        if self.scale != 1.0 {
            // numpy: float32 array * Python float -> float32
            x *= Tensor::from(self.scale as f32);
        }
        if let (Some(m), Some(s)) = (&self.means, &self.stds) {
            x = (x - m) / s;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DataArgs {
        DataArgs {
            img_grep: "*".into(),
            constant_scale: 0.5,
            dataset_bands: Some(vec![
                Band::Name("A".into()),
                Band::Index(1),
                Band::Name("B".into()),
            ]),
            output_bands: Some(vec![Band::Name("B".into()), Band::Name("A".into())]),
            no_data_replace: Some(4.0),
            means: Some(vec![1.0, 2.0]),
            stds: Some(vec![2.0, 4.0]),
            ..Default::default()
        }
    }

    #[test]
    fn nodata_replace_select_scale_normalise_in_terratorchs_order() {
        let p = Preprocess::new(&args(), 3, Some(0.0)).unwrap();
        assert_eq!(p.indices, Some(vec![2, 0]));
        // band A = [0 (nodata), 6], band 1 = [1, 1], band B = [10, 0 (nodata)]
        let raw = Tensor::from_slice(&[0.0f64, 6.0, 1.0, 1.0, 10.0, 0.0]).view([3, 1, 2]);
        let x = p.apply(&raw);
        let v: Vec<f32> = x.flatten(0, -1).try_into().unwrap();
        // B: (10*0.5-1)/2 = 2, (4*0.5-1)/2 = 0.5; A: (4*0.5-2)/4 = 0, (6*0.5-2)/4 = 0.25
        assert_eq!(v, vec![2.0, 0.5, 0.0, 0.25]);
    }

    #[test]
    fn unknown_band_and_wrong_band_count_are_named() {
        let mut a = args();
        a.output_bands = Some(vec![Band::Name("C".into())]);
        let e = Preprocess::new(&a, 3, None).unwrap_err().to_string();
        assert!(e.contains("output band `C`"), "{e}");
        let e = Preprocess::new(&args(), 4, None).unwrap_err().to_string();
        assert!(e.contains("4 bands") && e.contains("names 3"), "{e}");
    }
}
