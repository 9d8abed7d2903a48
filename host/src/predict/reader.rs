//! Reading scenes through GDAL, a window of rows at a time: every format and TIFF
//! compression GDAL reads (GeoTIFF, COG, striped or tiled), any pixel type from uint8 to
//! float64. Values are read as float64 (exact for every integer type up to 32 bits),
//! so the nodata comparison is exact, as rasterio's is on the native type.
use crate::error::{HostError, Result};
use gdal::raster::GdalDataType;
use gdal::Dataset;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// An open scene.
pub struct SceneReader {
    path: PathBuf,
    ds: Dataset,
    pub width: usize,
    pub height: usize,
    pub bands: usize,
    /// Band 1's nodata value (rasterio's `src.nodata`, what TerraTorch compares with).
    pub nodata: Option<f64>,
    /// The affine geotransform, if the file has one.
    pub geo_transform: Option<[f64; 6]>,
    /// The CRS as WKT ("" when the file has none).
    pub projection: String,
    pub data_type: GdalDataType,
}

fn raster_err(path: &Path, what: impl std::fmt::Display) -> HostError {
    HostError::Usage(format!("{}: {what}", path.display()))
}

/// GDAL reports errors on stderr itself unless told otherwise; terrahost reports them
/// once, in its own error naming the file, so GDAL's messages go to the debug log. Also
/// caps GDAL's block cache at 256 MB (`GDAL_CACHEMAX` in the environment overrides).
fn route_gdal_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gdal::config::set_error_handler(|class, number, msg| {
            tracing::debug!("GDAL {class:?} {number}: {msg}");
        });
        // GDAL's block cache defaults to 5% of the machine's memory; streaming needs
        // about one block row of the input, so cap it unless the user chose a size.
        if std::env::var_os("GDAL_CACHEMAX").is_none() {
            let _ = gdal::config::set_config_option("GDAL_CACHEMAX", "256");
        }
    });
    super::raster_policy::lock_down_gdal();
}

/// GDAL's own reason, without the crate's wrapping.
fn reason(e: &gdal::errors::GdalError) -> String {
    let text = e.to_string();
    match text.split_once("Error msg: ") {
        Some((_, msg)) => msg.trim_matches(|c| c == '\'' || c == ' ').to_owned(),
        None => text,
    }
}

impl SceneReader {
    /// Opens `path`; an error names the file and says why it is not a usable raster.
    pub fn open(path: &Path) -> Result<Self> {
        route_gdal_messages();
        super::raster_policy::check_before_open(path)
            .map_err(|why| raster_err(path, format!("refused: {why}")))?;
        let ds = Dataset::open(path).map_err(|e| {
            let why = reason(&e);
            if why.is_empty() {
                raster_err(
                    path,
                    "not a raster GDAL can read (no GDAL driver recognises the file)",
                )
            } else {
                raster_err(path, format!("not a raster GDAL can read ({why})"))
            }
        })?;
        super::raster_policy::check_after_open(path, &ds)
            .map_err(|why| raster_err(path, format!("refused: {why}")))?;
        let (width, height) = ds.raster_size();
        let bands = ds.raster_count();
        if bands == 0 || width == 0 || height == 0 {
            return Err(raster_err(
                path,
                format!("not a raster scene ({bands} bands, {width} x {height} pixels)"),
            ));
        }
        let band = ds
            .rasterband(1)
            .map_err(|e| raster_err(path, format!("cannot read band 1 ({e})")))?;
        let nodata = band.no_data_value();
        let data_type = band.band_type();
        let geo_transform = ds.geo_transform().ok();
        let projection = ds.projection();
        Ok(Self {
            path: path.to_owned(),
            ds,
            width,
            height,
            bands,
            nodata,
            geo_transform,
            projection,
            data_type,
        })
    }

    /// Rows `y0..y0+n` of every band, `[bands, n, width]` float64.
    ///
    /// One `GDALDatasetRasterIO` over all bands, straight into the tensor: in a
    /// pixel-interleaved file (GeoTIFF's default for multi-band scenes) each tile holds
    /// every band, and a read band by band decompressed each tile once per band (six
    /// times for an HLS scene), then copied the whole window once more.
    pub fn read_rows(&self, y0: usize, n: usize) -> Result<Tensor> {
        let w = self.width;
        let out = Tensor::zeros(
            [self.bands as i64, n as i64, w as i64],
            (Kind::Double, tch::Device::Cpu),
        );
        let too_big = || raster_err(&self.path, "the scene is too large for GDAL's RasterIO");
        let (x_size, y_off, y_size) = (
            i32::try_from(w).map_err(|_| too_big())?,
            i32::try_from(y0).map_err(|_| too_big())?,
            i32::try_from(n).map_err(|_| too_big())?,
        );
        // SAFETY: `out` is a contiguous float64 tensor of bands * n * w elements, the
        // size GDAL writes with the default (band-sequential) spacings and a null band
        // list (all bands); the dataset handle lives as long as `self`.
        let err = unsafe {
            gdal_sys::GDALDatasetRasterIO(
                self.ds.c_dataset(),
                gdal_sys::GDALRWFlag::GF_Read,
                0,
                y_off,
                x_size,
                y_size,
                out.data_ptr(),
                x_size,
                y_size,
                gdal_sys::GDALDataType::GDT_Float64,
                self.bands as i32,
                std::ptr::null_mut(),
                0,
                0,
                0,
            )
        };
        if err != gdal_sys::CPLErr::CE_None {
            let msg = unsafe { std::ffi::CStr::from_ptr(gdal_sys::CPLGetLastErrorMsg()) }
                .to_string_lossy()
                .into_owned();
            return Err(raster_err(
                &self.path,
                format!(
                    "cannot read rows {y0}..{} (truncated or corrupt file?): {msg}",
                    y0 + n
                ),
            ));
        }
        Ok(out)
    }

    /// Pixels where any band equals the nodata value (TerraTorch's output nodata mask),
    /// `[n, width]` bool.
    pub fn nodata_mask(&self, raw: &Tensor) -> Tensor {
        match self.nodata {
            Some(v) if !v.is_nan() => raw.eq(v).any_dim(0, false),
            _ => Tensor::zeros([raw.size()[1], raw.size()[2]], (Kind::Bool, raw.device())),
        }
    }
}
