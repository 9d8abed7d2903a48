//! From raw pixel values to the model's input, as TerraTorch's
//! `GenericPixelWiseDataset.__getitem__` and the datamodule's `Normalize` do it: nodata
//! becomes NaN (`rioxarray.open_rasterio(masked=True)`), NaN becomes `no_data_replace`
//! when given, the `output_bands` are picked out of `dataset_bands`, the values go to
//! float32 and are multiplied by `constant_scale`, then `(x - means) / stds`.
//!
//! Multi-temporal scenes (`expand_temporal_dimension`) are T frames of the
//! `dataset_bands` stacked time-major in one file (all bands of frame 1, then frame 2,
//! ...), which TerraTorch rearranges `(time channels) h w -> channels time h w` before
//! picking the `output_bands` of every frame; its `Normalize` then applies (C,) means to
//! every frame and a (C, T) table frame by frame. Here the rows are held flattened
//! channel-major (`[C * T, n, w]`, plane `c * T + t`), so reading, padding and tiling
//! work on them as on single-time scenes, and [`Preprocess::model_input`] views a batch
//! as the model's `[B, C, T, h, w]`.
use super::data_config::{Band, DataArgs};
use crate::error::{HostError, Result};
use tch::{Kind, Tensor};
use terrahost_plugin_api::params::did_you_mean;

/// The per-pixel transformation of one scene's bands.
#[derive(Debug)]
pub struct Preprocess {
    /// Which file bands go to the model, in order (`None`: all of them); for a
    /// multi-temporal scene, plane `c * T + t` is channel `c` of frame `t`.
    pub indices: Option<Vec<i64>>,
    /// The number of channels the model gets (per frame).
    pub channels: usize,
    /// T, the number of frames, for a multi-temporal scene.
    pub frames: Option<usize>,
    /// The planes [`Preprocess::apply`] gives: `channels * frames` (or `channels`).
    pub planes: usize,
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
        let selected = match (&data.dataset_bands, &data.output_bands) {
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
        let names = |ds: &[Band]| {
            ds.iter()
                .map(Band::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (indices, channels, frames) = if data.expand_temporal_dimension {
            let ds = data.dataset_bands.as_deref().ok_or_else(|| {
                usage(
                    "expand_temporal_dimension needs `dataset_bands` (the bands of one frame)"
                        .into(),
                )
            })?;
            let per_frame = ds.len();
            // einops' rearrange fails when the bands do not split into whole frames.
            if per_frame == 0 || !file_bands.is_multiple_of(per_frame) {
                return Err(usage(format!(
                    "the scene has {file_bands} bands, which is not a whole number of frames of the {per_frame} \
                     dataset_bands [{}] (expand_temporal_dimension: T frames stacked time-major); give scenes of \
                     T x {per_frame} bands or fix dataset_bands",
                    names(ds)
                )));
            }
            let frames = file_bands / per_frame;
            let picked: Vec<i64> = selected.unwrap_or_else(|| (0..per_frame as i64).collect());
            let idx = temporal_indices(&picked, per_frame, frames);
            (Some(idx), picked.len(), Some(frames))
        } else {
            if let Some(ds) = &data.dataset_bands {
                if ds.len() != file_bands {
                    return Err(usage(format!(
                        "the scene has {file_bands} bands but the config's dataset_bands names {}: [{}]",
                        ds.len(),
                        names(ds)
                    )));
                }
            }
            let channels = selected.as_ref().map_or(file_bands, Vec::len);
            (selected, channels, None)
        };
        let planes = channels * frames.unwrap_or(1);
        let (means, stds) = match (&data.means, &data.stds) {
            (Some(m), Some(s)) => {
                let t = |v: &[f64]| stats_planes(v, data.stats_frames, channels, frames);
                (Some(t(m).map_err(usage)?), Some(t(s).map_err(usage)?))
            }
            _ => (None, None),
        };
        Ok(Self {
            indices,
            channels,
            frames,
            planes,
            nodata,
            no_data_replace: data.no_data_replace,
            scale: data.constant_scale,
            means,
            stds,
        })
    }

    /// `[bands, n, w]` float64 raw values -> `[planes, n, w]` float32 model input.
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

    /// A batch `[B, planes, h, w]` as the model takes it: `[B, C, T, h, w]` for a
    /// multi-temporal scene, else unchanged.
    pub fn model_input(&self, batch: Tensor) -> Tensor {
        match self.frames {
            Some(t) => {
                let s = batch.size();
                batch.reshape([s[0], self.channels as i64, t as i64, s[2], s[3]])
            }
            None => batch,
        }
    }
}

/// The file bands of a time-major stack of `frames` frames of `per_frame` bands, for
/// the per-frame band indices `picked`, in the channel-major order of the model's
/// `[C, T]`: plane `c * frames + t` is file band `t * per_frame + picked[c]`
/// (TerraTorch's `(time channels) -> channels time`, then `[..., filter_indices]`).
pub fn temporal_indices(picked: &[i64], per_frame: usize, frames: usize) -> Vec<i64> {
    picked
        .iter()
        .flat_map(|&c| (0..frames).map(move |t| (t * per_frame) as i64 + c))
        .collect()
}

/// Means or stds as one value per plane, `[planes, 1, 1]` float32, as TerraTorch's
/// `Normalize` broadcasts them: a single value applies to every plane (`[1, 1, 1]`); a
/// list of C values applies to every frame; a (C, T)
/// table frame by frame on a multi-temporal scene, and averaged over T (in float32, as
/// `means.mean(dim=1)`) on a single-time one.
fn stats_planes(
    v: &[f64],
    table_frames: Option<usize>,
    channels: usize,
    frames: Option<usize>,
) -> std::result::Result<Tensor, String> {
    let c = channels as i64;
    let f32s = Tensor::from_slice(v).to_kind(Kind::Float);
    if table_frames.is_none() && v.len() == 1 {
        // torch broadcasts a single value over every band (and frame).
        return Ok(f32s.view([1, 1, 1]));
    }
    let rows = table_frames.map_or(v.len(), |t| v.len() / t);
    if rows != channels {
        let what = match table_frames {
            Some(t) => format!("a {rows} x {t} table of means and stds"),
            None => format!("{} means and stds", v.len()),
        };
        return Err(format!(
            "the model gets {channels} bands from this scene but the config has {what}"
        ));
    }
    let per_plane = match (table_frames, frames) {
        (None, None) => f32s,
        (None, Some(t)) => f32s.repeat_interleave_self_int(t as i64, 0, None),
        (Some(tt), Some(t)) if tt == t => f32s,
        (Some(tt), Some(t)) => {
            return Err(format!(
            "the scene has {t} frames but the config's means and stds are a table for {tt} frames"
        ))
        }
        (Some(tt), None) => f32s.view([c, tt as i64]).mean_dim(1, false, Kind::Float),
    };
    Ok(per_plane.view([-1, 1, 1]))
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

    fn temporal_args() -> DataArgs {
        // 3 bands per frame, 2 of them to the model, in another order.
        DataArgs {
            img_grep: "*".into(),
            constant_scale: 1.0,
            dataset_bands: Some(vec![
                Band::Name("A".into()),
                Band::Name("B".into()),
                Band::Name("C".into()),
            ]),
            output_bands: Some(vec![Band::Name("C".into()), Band::Name("A".into())]),
            expand_temporal_dimension: true,
            ..Default::default()
        }
    }

    #[test]
    fn time_major_frames_become_channels_by_time() {
        // File: frame 0 = A0 B0 C0, frame 1 = A1 B1 C1 (bands 0..6). The model's [C, T]
        // is [[C0, C1], [A0, A1]]: file bands 2, 5, 0, 3.
        assert_eq!(temporal_indices(&[2, 0], 3, 2), vec![2, 5, 0, 3]);
        let p = Preprocess::new(&temporal_args(), 6, None).unwrap();
        assert_eq!((p.channels, p.frames, p.planes), (2, Some(2), 4));
        // band b holds the value 10 * b at its one pixel
        let raw = Tensor::from_slice(&[0.0f64, 10.0, 20.0, 30.0, 40.0, 50.0]).view([6, 1, 1]);
        let x = p.model_input(p.apply(&raw).unsqueeze(0));
        assert_eq!(x.size(), vec![1, 2, 2, 1, 1]);
        let v: Vec<f32> = x.flatten(0, -1).try_into().unwrap();
        assert_eq!(v, vec![20.0, 50.0, 0.0, 30.0]);
    }

    #[test]
    fn temporal_means_broadcast_over_time_or_per_frame() {
        let raw = Tensor::from_slice(&[0.0f64, 10.0, 20.0, 30.0, 40.0, 50.0]).view([6, 1, 1]);
        let mut a = temporal_args();
        // (C,) = one value per output band, for every frame
        a.means = Some(vec![20.0, 0.0]);
        a.stds = Some(vec![10.0, 10.0]);
        let p = Preprocess::new(&a, 6, None).unwrap();
        let v: Vec<f32> = p.apply(&raw).flatten(0, -1).try_into().unwrap();
        assert_eq!(v, vec![0.0, 3.0, 0.0, 3.0]);
        // (C, T) table: row c, column t
        a.means = Some(vec![20.0, 50.0, 0.0, 10.0]);
        a.stds = Some(vec![1.0, 1.0, 1.0, 2.0]);
        a.stats_frames = Some(2);
        let p = Preprocess::new(&a, 6, None).unwrap();
        let v: Vec<f32> = p.apply(&raw).flatten(0, -1).try_into().unwrap();
        assert_eq!(v, vec![0.0, 0.0, 0.0, 10.0]);
        // one value for every band and frame, as torch broadcasts it
        a.means = Some(vec![10.0]);
        a.stds = Some(vec![10.0]);
        a.stats_frames = None;
        let p = Preprocess::new(&a, 6, None).unwrap();
        let v: Vec<f32> = p.apply(&raw).flatten(0, -1).try_into().unwrap();
        assert_eq!(v, vec![1.0, 4.0, -1.0, 2.0]);
        a.means = Some(vec![20.0, 50.0, 0.0, 10.0]);
        a.stds = Some(vec![1.0, 1.0, 1.0, 2.0]);
        a.stats_frames = Some(2);
        // a table for 2 frames on a scene of 3
        let e = Preprocess::new(&a, 9, None).unwrap_err().to_string();
        assert!(e.contains("3 frames") && e.contains("2 frames"), "{e}");
        // single-time scene with a (C, T) table: averaged over T
        let mut s = args();
        s.means = Some(vec![1.0, 3.0, 2.0, 6.0]);
        s.stds = Some(vec![2.0, 2.0, 4.0, 4.0]);
        s.stats_frames = Some(2);
        let p = Preprocess::new(&s, 3, Some(0.0)).unwrap();
        let raw = Tensor::from_slice(&[0.0f64, 6.0, 1.0, 1.0, 10.0, 0.0]).view([3, 1, 2]);
        let v: Vec<f32> = p.apply(&raw).flatten(0, -1).try_into().unwrap();
        // same as means [2, 4], stds [2, 4]: B: (5-2)/2, (2-2)/2; A: (2-4)/4, (3-4)/4
        assert_eq!(v, vec![1.5, 0.0, -0.5, -0.25]);
    }

    #[test]
    fn a_band_count_that_is_not_whole_frames_is_refused() {
        let e = Preprocess::new(&temporal_args(), 7, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("7 bands") && e.contains("not a whole number of frames of the 3"),
            "{e}"
        );
        // empty output_bands: every band of each frame
        let mut a = temporal_args();
        a.output_bands = Some(vec![]);
        let p = Preprocess::new(&a, 6, None).unwrap();
        assert_eq!(p.indices, Some(vec![0, 3, 1, 4, 2, 5]));
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
