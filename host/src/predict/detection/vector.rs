//! Detections as georeferenced vector features, through GDAL/OGR: a GeoPackage (the
//! default) or GeoJSON, one layer `detections`, one feature per detection with the fields
//! `label` (integer), `class_name` (string, null without `class_names`), `score` (real)
//! and `scene` (the source path). The geometry is the box, or Mask R-CNN's mask
//! polygonised at 0.5 (`GDALPolygonize`), in the scene's CRS through its geotransform.
//! The file is written under a temporary name beside the final one and renamed when
//! complete, as the GeoTIFF outputs are.
use crate::error::{HostError, Result};
use gdal::spatial_ref::SpatialRef;
use gdal::vector::{
    Feature, Geometry, LayerAccess, LayerOptions, OGRFieldType, OGRwkbGeometryType,
};
use gdal::DriverManager;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The vector formats `--vector-format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorFormat {
    /// OGC GeoPackage (`.gpkg`), the default.
    Gpkg,
    /// GeoJSON (`.geojson`).
    GeoJson,
}

impl VectorFormat {
    /// `gpkg` or `geojson`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "gpkg" => Ok(Self::Gpkg),
            "geojson" => Ok(Self::GeoJson),
            other => Err(HostError::Usage(format!(
                "--vector-format `{other}`: use gpkg (GeoPackage, the default) or geojson"
            ))),
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Gpkg => "gpkg",
            Self::GeoJson => "geojson",
        }
    }

    fn driver(self) -> &'static str {
        match self {
            Self::Gpkg => "GPKG",
            Self::GeoJson => "GeoJSON",
        }
    }
}

/// The layer every output holds.
pub const LAYER: &str = "detections";

/// Scene pixel `(col, row)` to CRS coordinates through the affine geotransform.
pub fn to_crs(gt: &[f64; 6], col: f64, row: f64) -> (f64, f64) {
    (
        gt[0] + col * gt[1] + row * gt[2],
        gt[3] + col * gt[4] + row * gt[5],
    )
}

/// The polygon of a pixel box `(x1, y1, x2, y2)` in the CRS.
pub fn box_polygon(gt: &[f64; 6], b: [f64; 4]) -> Result<Geometry> {
    let ring = [
        (b[0], b[1]),
        (b[2], b[1]),
        (b[2], b[3]),
        (b[0], b[3]),
        (b[0], b[1]),
    ];
    let pts: Vec<String> = ring
        .iter()
        .map(|&(c, r)| {
            let (x, y) = to_crs(gt, c, r);
            format!("{x:?} {y:?}")
        })
        .collect();
    Geometry::from_wkt(&format!("POLYGON (({}))", pts.join(", "))).map_err(gdal_err)
}

fn gdal_err(e: gdal::errors::GdalError) -> HostError {
    HostError::Usage(format!("GDAL: {e}"))
}

/// The pixels of `mask` (`[h, w]` probabilities of a tile whose top-left pixel is scene
/// pixel `(x0, y0)`) above 0.5, as TerraTorch thresholds masks, polygonised into one
/// multipolygon in the CRS. `None` when no pixel is above 0.5.
pub fn mask_polygon(
    gt: &[f64; 6],
    mask: &Tensor,
    x0: usize,
    y0: usize,
) -> Result<Option<Geometry>> {
    let (h, w) = (mask.size()[0] as usize, mask.size()[1] as usize);
    let bits: Vec<u8> = Vec::<u8>::try_from(
        mask.gt(0.5)
            .to_kind(Kind::Uint8)
            .contiguous()
            .flatten(0, -1),
    )
    .map_err(|e| HostError::Usage(format!("mask: {e}")))?;
    if !bits.contains(&1) {
        return Ok(None);
    }
    let mem = DriverManager::get_driver_by_name("MEM").map_err(gdal_err)?;
    let mut raster = mem
        .create_with_band_type::<u8, _>("", w, h, 1)
        .map_err(gdal_err)?;
    let (ox, oy) = to_crs(gt, x0 as f64, y0 as f64);
    raster
        .set_geo_transform(&[ox, gt[1], gt[2], oy, gt[4], gt[5]])
        .map_err(gdal_err)?;
    let mut band = raster.rasterband(1).map_err(gdal_err)?;
    let mut buf = gdal::raster::Buffer::new((w, h), bits);
    band.write((0, 0), (w, h), &mut buf).map_err(gdal_err)?;
    let mut polys = DriverManager::get_driver_by_name("Memory")
        .map_err(gdal_err)?
        .create_vector_only("")
        .map_err(gdal_err)?;
    let mut layer = polys
        .create_layer(LayerOptions {
            name: "mask",
            ty: OGRwkbGeometryType::wkbPolygon,
            ..Default::default()
        })
        .map_err(gdal_err)?;
    layer
        .create_defn_fields(&[("v", OGRFieldType::OFTInteger)])
        .map_err(gdal_err)?;
    // SAFETY: the band and the layer live until the call returns; the band is its own
    // mask, so only the pixels set to 1 become polygons.
    let err = unsafe {
        let b = band.c_rasterband();
        gdal_sys::GDALPolygonize(
            b,
            b,
            layer.c_layer(),
            0,
            std::ptr::null_mut(),
            None,
            std::ptr::null_mut(),
        )
    };
    if err != gdal_sys::CPLErr::CE_None {
        return Err(HostError::Usage("GDALPolygonize failed on a mask".into()));
    }
    let mut multi = Geometry::empty(OGRwkbGeometryType::wkbMultiPolygon).map_err(gdal_err)?;
    for f in layer.features() {
        if let Some(g) = f.geometry() {
            multi.add_geometry(g.clone()).map_err(gdal_err)?;
        }
    }
    Ok(Some(multi))
}

/// One feature to write.
pub struct Detection {
    pub geometry: Geometry,
    pub label: i64,
    pub score: f64,
}

/// Writes `detections` to `path` (through a temporary file renamed into place); an empty
/// list still writes the layer with its fields and CRS. `projection` is the scene's WKT
/// ("" for none); `class_names[label]` names a label; `masks` chooses the layer's
/// geometry type (multipolygons, else polygons).
pub fn write(
    path: &Path,
    format: VectorFormat,
    projection: &str,
    scene: &str,
    class_names: Option<&[String]>,
    masks: bool,
    detections: &[Detection],
) -> Result<PathBuf> {
    let ext = format.extension();
    let tmp = PathBuf::from(format!(
        "{}.{ext}",
        crate::weights::partial_path(path).display()
    ));
    // Whatever is under the temporary name goes first: GDAL would write through a link.
    let _ = std::fs::remove_file(&tmp);
    let fail = |what: &str, e: gdal::errors::GdalError| {
        HostError::Usage(format!(
            "cannot {what} {} ({e}); is the output directory writable?",
            tmp.display()
        ))
    };
    // Removes the temporary file unless it was renamed into place, also when a panic
    // (GDAL, libtorch) ends the scene halfway: no partial file stays behind.
    struct Partial<'a>(&'a Path);
    impl Drop for Partial<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _partial = Partial(&tmp);
    let result = (|| -> Result<()> {
        let driver =
            DriverManager::get_driver_by_name(format.driver()).map_err(|e| fail("create", e))?;
        let mut ds = driver
            .create_vector_only(&tmp)
            .map_err(|e| fail("create", e))?;
        let srs = if projection.is_empty() {
            None
        } else {
            let mut s = SpatialRef::from_wkt(projection).map_err(|e| fail("set the CRS of", e))?;
            // Coordinates go x (easting/longitude), y (northing/latitude), as the
            // geotransform gives them, whatever the CRS's official axis order.
            s.set_axis_mapping_strategy(
                gdal::spatial_ref::AxisMappingStrategy::TraditionalGisOrder,
            );
            Some(s)
        };
        let ty = if masks {
            OGRwkbGeometryType::wkbMultiPolygon
        } else {
            OGRwkbGeometryType::wkbPolygon
        };
        {
            let layer = ds
                .create_layer(LayerOptions {
                    name: LAYER,
                    srs: srs.as_ref(),
                    ty,
                    ..Default::default()
                })
                .map_err(|e| fail("create a layer in", e))?;
            layer
                .create_defn_fields(&[
                    ("label", OGRFieldType::OFTInteger64),
                    ("class_name", OGRFieldType::OFTString),
                    ("score", OGRFieldType::OFTReal),
                    ("scene", OGRFieldType::OFTString),
                ])
                .map_err(|e| fail("add fields to", e))?;
        }
        // One transaction: GeoPackage commits every feature on its own otherwise.
        unsafe { gdal_sys::GDALDatasetStartTransaction(ds.c_dataset(), 0) };
        let layer = ds.layer(0).map_err(|e| fail("open the layer of", e))?;
        for d in detections {
            let defn = layer.defn();
            let mut f = Feature::new(defn).map_err(|e| fail("write", e))?;
            f.set_field_integer64(0, d.label)
                .map_err(|e| fail("write", e))?;
            match class_names.and_then(|n| usize::try_from(d.label).ok().and_then(|i| n.get(i))) {
                Some(name) => f.set_field_string(1, name).map_err(|e| fail("write", e))?,
                None => f.set_field_null(1).map_err(|e| fail("write", e))?,
            }
            f.set_field_double(2, d.score)
                .map_err(|e| fail("write", e))?;
            f.set_field_string(3, scene).map_err(|e| fail("write", e))?;
            f.set_geometry(d.geometry.clone())
                .map_err(|e| fail("write", e))?;
            f.create(&layer).map_err(|e| fail("write", e))?;
        }
        let rc = unsafe { gdal_sys::GDALDatasetCommitTransaction(ds.c_dataset()) };
        if rc != gdal_sys::OGRErr::OGRERR_NONE
            && rc != gdal_sys::OGRErr::OGRERR_UNSUPPORTED_OPERATION
        {
            return Err(HostError::Usage(format!(
                "cannot write {} (disk full?)",
                tmp.display()
            )));
        }
        ds.close().map_err(|e| fail("finish", e))?;
        Ok(())
    })();
    result?;
    std::fs::rename(&tmp, path).map_err(|e| HostError::io(path, e))?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT: [f64; 6] = [500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0];

    #[test]
    fn masks_are_polygonised_above_one_half_in_scene_coordinates() {
        // A tile whose top-left is scene pixel (10, 20); mask pixels at columns 2..5 of
        // rows 1..3 are above 0.5, one pixel is exactly 0.5 (not above, as TerraTorch's `>`).
        let mask = Tensor::zeros([8, 8], (Kind::Float, tch::Device::Cpu));
        let _ = mask.narrow(0, 1, 2).narrow(1, 2, 3).fill_(0.9);
        let _ = mask.narrow(0, 6, 1).narrow(1, 6, 1).fill_(0.5);
        let g = mask_polygon(&GT, &mask, 10, 20).unwrap().unwrap();
        assert_eq!(g.geometry_type(), OGRwkbGeometryType::wkbMultiPolygon);
        assert!((g.area() - 6.0 * 100.0).abs() < 1e-9, "{}", g.area());
        let e = g.envelope();
        assert_eq!(
            [e.MinX, e.MinY, e.MaxX, e.MaxY],
            [500120.0, 3999770.0, 500150.0, 3999790.0]
        );
        let empty = Tensor::full([4, 4], 0.5, (Kind::Float, tch::Device::Cpu));
        assert!(mask_polygon(&GT, &empty, 0, 0).unwrap().is_none());
    }

    #[test]
    fn boxes_go_through_the_geotransform() {
        let g = box_polygon(&GT, [1.0, 2.0, 4.5, 6.0]).unwrap();
        let e = g.envelope();
        assert_eq!(
            [e.MinX, e.MinY, e.MaxX, e.MaxY],
            [500010.0, 3999940.0, 500045.0, 3999980.0]
        );
        assert!(VectorFormat::parse("shp").is_err());
    }
}
