//! Writing outputs as TerraTorch's `save_prediction` (`terratorch/cli_tools.py`) does:
//! `<stem>_<suffix>.tif`, GeoTIFF with the input's size, CRS and transform, LZW,
//! nodata -1 where any input band equals the input's nodata, the requested dtype
//! (float values are truncated toward zero for integer types, as numpy's `astype`
//! does). Rows are written as they are finished; the file is written under a temporary
//! name in the output directory and renamed when complete, so a reader never sees a
//! partial output and an interrupted run leaves none behind.
use super::reader::SceneReader;
use crate::error::{HostError, Result};
use gdal::cpl::CslStringList;
use gdal::raster::{Buffer, GdalDataType};
use gdal::{Dataset, DriverManager};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The output data types `--out-dtype` takes (numpy / rasterio names).
pub fn parse_dtype(name: &str) -> Result<GdalDataType> {
    Ok(match name {
        "uint8" => GdalDataType::UInt8,
        "uint16" => GdalDataType::UInt16,
        "int16" => GdalDataType::Int16,
        "uint32" => GdalDataType::UInt32,
        "int32" => GdalDataType::Int32,
        "float32" => GdalDataType::Float32,
        "float64" => GdalDataType::Float64,
        other => {
            return Err(HostError::Usage(format!(
                "--out-dtype `{other}`: use one of uint8, uint16, int16, uint32, int32, float32, float64"
            )))
        }
    })
}

/// One output file being written.
pub struct OutputFile {
    ds: Option<Dataset>,
    tmp: PathBuf,
    pub path: PathBuf,
    dtype: GdalDataType,
    bands: usize,
    width: usize,
}

impl OutputFile {
    /// Creates the temporary file next to `path`, with `bands` bands and the scene's
    /// georeferencing.
    pub fn create(
        path: &Path,
        scene: &SceneReader,
        bands: usize,
        dtype: GdalDataType,
    ) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = crate::weights::partial_path(path);
        // GDAL creates the file by name: a planted link under the temporary name would
        // be followed, so whatever is there goes first. The final name is reached by a
        // rename, which replaces a link instead of following it.
        let _ = std::fs::remove_file(&tmp);
        let driver = DriverManager::get_driver_by_name("GTiff")
            .map_err(|e| HostError::Usage(format!("GDAL has no GTiff driver: {e}")))?;
        let mut opts = CslStringList::new();
        opts.add_name_value("COMPRESS", "LZW")
            .map_err(|e| HostError::Usage(e.to_string()))?;
        let make = |t: GdalDataType| -> gdal::errors::Result<Dataset> {
            macro_rules! c {
                ($ty:ty) => {
                    driver.create_with_band_type_with_options::<$ty, _>(
                        &tmp,
                        scene.width,
                        scene.height,
                        bands,
                        &opts,
                    )
                };
            }
            match t {
                GdalDataType::UInt8 => c!(u8),
                GdalDataType::UInt16 => c!(u16),
                GdalDataType::Int16 => c!(i16),
                GdalDataType::UInt32 => c!(u32),
                GdalDataType::Int32 => c!(i32),
                GdalDataType::Float64 => c!(f64),
                _ => c!(f32),
            }
        };
        let mut ds = make(dtype).map_err(|e| {
            HostError::Usage(format!(
                "cannot create {} in {} ({e}); is the output directory writable?",
                tmp.display(),
                dir.display()
            ))
        })?;
        let geo_err =
            |e: gdal::errors::GdalError| HostError::Usage(format!("{}: {e}", tmp.display()));
        if let Some(gt) = scene.geo_transform {
            ds.set_geo_transform(&gt).map_err(geo_err)?;
        }
        if !scene.projection.is_empty() {
            ds.set_projection(&scene.projection).map_err(geo_err)?;
        }
        for b in 1..=bands {
            let mut band = ds.rasterband(b).map_err(geo_err)?;
            band.set_no_data_value(Some(-1.0)).map_err(geo_err)?;
        }
        Ok(Self {
            ds: Some(ds),
            tmp,
            path: path.to_owned(),
            dtype,
            bands,
            width: scene.width,
        })
    }

    /// Writes scene rows `y0..` from `values` `[bands, n, width]` (any kind), with -1
    /// where `nodata` `[n, width]` is set.
    pub fn write_rows(&mut self, y0: usize, values: &Tensor, nodata: &Tensor) -> Result<()> {
        let mut v = values.to_kind(Kind::Double);
        if !matches!(self.dtype, GdalDataType::Float32 | GdalDataType::Float64) {
            v = v.trunc();
        }
        let v = v.masked_fill(&nodata.unsqueeze(0), -1.0).contiguous();
        let n = v.size()[1] as usize;
        let flat: Vec<f64> = v
            .flatten(0, -1)
            .try_into()
            .map_err(|e| HostError::Usage(format!("{e}")))?;
        let ds = self.ds.as_ref().expect("open until finished");
        for b in 0..self.bands {
            let mut band = ds
                .rasterband(b + 1)
                .map_err(|e| HostError::Usage(format!("{}: {e}", self.tmp.display())))?;
            let mut buf = Buffer::new(
                (self.width, n),
                flat[b * n * self.width..(b + 1) * n * self.width].to_vec(),
            );
            band.write((0, y0 as isize), (self.width, n), &mut buf)
                .map_err(|e| {
                    HostError::Usage(format!(
                        "cannot write {} (disk full?): {e}",
                        self.tmp.display()
                    ))
                })?;
        }
        Ok(())
    }

    /// Closes the file and renames it to its final name.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some(ds) = self.ds.take() {
            ds.close().map_err(|e| {
                HostError::Usage(format!("cannot finish {}: {e}", self.tmp.display()))
            })?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| HostError::io(&self.path, e))?;
        Ok(self.path.clone())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Not finished: leave no partial file behind.
        if let Some(ds) = self.ds.take() {
            drop(ds);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
