//! `terrahost predict` for `ObjectDetectionTask`: detections on GeoTIFF scenes, written as
//! georeferenced vector features.
//!
//! The scene is read and preprocessed by the segmentation pipeline's stages
//! ([`super::reader`], [`super::bands`]), a tile row at a time. Each tile goes through the
//! model, whose per-image outputs are `boxes` (`[D, 4]` x1, y1, x2, y2 in the tile's
//! pixels), `scores`, `labels` and, for Mask R-CNN, `masks` (`[D, 1, h, w]`
//! probabilities). Then, per tile, the task's own filter (TerraTorch's
//! `ObjectDetectionTask.apply_nms_sample`: scores above `score_threshold`, class-agnostic
//! NMS at `iou_threshold`), the edge rule of [`grid`] (a box cut by an inner tile edge
//! that its neighbour sees whole is left to the neighbour), the boxes moved to scene
//! pixels, and, over the whole scene, class-wise NMS (torchvision's `batched_nms`) at
//! `iou_threshold`, which merges an object seen by two overlapping tiles into one
//! detection. [`vector`] writes the features.
//!
//! **How this differs from TerraTorch.** TerraTorch's detection predict path
//! (`ObjectDetectionTask.predict_step`) has no tiling: each datamodule image goes
//! through the model whole and the task's filter runs on its detections. A scene that
//! fits one tile is predicted exactly so here (one forward, the task's filter, nothing
//! else), and gives TerraTorch's boxes, scores and labels. A larger scene is cut into
//! overlapping tiles (TerraTorch would run it whole, or fail for lack of memory); the
//! edge rule and the scene-wide class-wise NMS are terrahost's, and the backbone sees
//! each tile without the context beyond it. TerraTorch's predict also writes no files
//! for detection; the vector output is terrahost's.
pub mod grid;
pub mod vector;

use super::bands::Preprocess;
use super::data_config::{DetectionArgs, PredictConfig};
use super::reader::SceneReader;
use super::SceneReport;
use crate::error::{HostError, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use terrahost_layers::detection::nms::batched_nms;
use terrahost_layers::detection::object_detection_task::apply_nms_sample;
use terrahost_layers::detection::roi_heads::Detections;
use terrahost_layers::precision::Precision;
use terrahost_plugin_api::sdk::DynModule;
use vector::VectorFormat;

/// What one detection scene needs besides its path.
pub struct DetectJob<'a> {
    pub model: &'a DynModule,
    pub config: &'a PredictConfig,
    pub settings: &'a DetectionArgs,
    pub device: Device,
    /// float32, or bfloat16 under CPU autocast (see [`crate::precision::prepare`]).
    pub precision: Precision,
    /// The output file and its format.
    pub output: PathBuf,
    pub format: VectorFormat,
    /// Called with (tiles done, tiles in the scene).
    pub progress: &'a dyn Fn(usize, usize),
}

/// Refuses settings under which the edge rule would lose objects.
pub fn check_settings(d: &DetectionArgs) -> Result<()> {
    let (th, tw) = d.tile;
    let (oh, ow) = d.overlap;
    if th == 0 || tw == 0 {
        return Err(HostError::Usage(
            "the detection tile must be at least 1 x 1 pixels".into(),
        ));
    }
    if 2 * oh > th || 2 * ow > tw {
        return Err(HostError::Usage(format!(
            "the tile overlap ({oh} x {ow} pixels) is more than half the tile ({th} x {tw}); objects up to \
             the overlap are whole in a tile only when the overlap is at most half the tile: lower \
             --tile-overlap or the config's stride"
        )));
    }
    Ok(())
}

/// One detection in scene pixels, with its mask (tile-local probabilities `[h, w]` and
/// the tile's top-left scene pixel).
struct Found {
    bbox: [f64; 4],
    score: f64,
    label: i64,
    mask: Option<(Tensor, usize, usize)>,
}

/// The model's detections of each image of a batch, by `output_names_per_image`.
fn forward(job: &DetectJob<'_>, batch: Tensor) -> Result<Vec<Detections>> {
    let (model, device) = (job.model, job.device);
    let n = batch.size()[0] as usize;
    let names = crate::output_names::per_image(&model.meta());
    let pos = |k: &str| names.iter().position(|n| n == k);
    let (Some(b), Some(s), Some(l)) = (pos("boxes"), pos("scores"), pos("labels")) else {
        return Err(HostError::Usage(
            "the model does not give boxes, scores and labels per image; predict with ObjectDetectionTask \
             needs an ObjectDetectionModelFactory model"
                .into(),
        ));
    };
    let m = pos("masks");
    let x = batch.to_device(device);
    let out =
        terrahost_layers::inference::inference_mode(|| job.precision.run(|| model.forward(&[x])))?;
    if out.len() != n * names.len() {
        return Err(HostError::Usage(format!(
            "the model gave {} outputs for {n} images of {} each ({})",
            out.len(),
            names.len(),
            names.join(", ")
        )));
    }
    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
    Ok(out
        .chunks(names.len())
        .map(|o| Detections {
            boxes: cpu(&o[b]).to_kind(Kind::Float),
            scores: cpu(&o[s]).to_kind(Kind::Float),
            labels: cpu(&o[l]).to_kind(Kind::Int64),
            masks: m.map(|i| cpu(&o[i]).to_kind(Kind::Float)),
        })
        .collect())
}

/// Predicts one scene into `job.output`.
pub fn predict_scene(job: &DetectJob<'_>, input: &Path) -> Result<SceneReport> {
    let scene = SceneReader::open(input)?;
    let data = &job.config.data;
    let nodata = if data.keep_nodata_values {
        None
    } else {
        scene.nodata
    };
    let named = |e: HostError| HostError::Usage(format!("{}: {e}", input.display()));
    let pre = Preprocess::new(data, scene.bands, nodata).map_err(named)?;
    let d = job.settings;
    let tiles = grid::tiles(scene.height, scene.width, d.tile, d.overlap);
    let tile_h = tiles[0].height;
    crate::limits::check_tensor(
        &format!(
            "a strip of {tile_h} rows of the scene ({} x {} pixels, {} bands)",
            scene.width, scene.height, scene.bands
        ),
        &[scene.bands as i64, tile_h as i64, scene.width as i64],
        8,
    )
    .map_err(|e| HostError::Usage(format!("{}: {e}", input.display())))?;
    let mut warnings = Vec::new();
    if scene.projection.is_empty() {
        warnings.push(format!(
            "{}: the scene has no CRS; its detections carry no georeferencing",
            input.display()
        ));
    }
    let several = tiles.len() > 1;
    let mut found: Vec<Found> = Vec::new();
    let mut pending: Vec<(usize, Tensor)> = Vec::new();
    let mut done = 0usize;
    (job.progress)(0, tiles.len());
    let mut run = |pending: &mut Vec<(usize, Tensor)>, found: &mut Vec<Found>| -> Result<()> {
        let batch: Vec<(usize, Tensor)> = std::mem::take(pending);
        let x = pre.model_input(Tensor::stack(
            &batch
                .iter()
                .map(|(_, t)| t.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        ));
        let dets = forward(job, x)?;
        for ((ti, _), det) in batch.iter().zip(dets) {
            let tile = &tiles[*ti];
            let kept = apply_nms_sample(&det, d.iou_threshold, d.score_threshold)?;
            let boxes =
                Vec::<f64>::try_from(kept.boxes.to_kind(Kind::Double).contiguous().view([-1]))
                    .map_err(|e| HostError::Usage(format!("boxes: {e}")))?;
            let scores = Vec::<f64>::try_from(kept.scores.to_kind(Kind::Double))
                .map_err(|e| HostError::Usage(format!("scores: {e}")))?;
            let labels = Vec::<i64>::try_from(&kept.labels)
                .map_err(|e| HostError::Usage(format!("labels: {e}")))?;
            for (i, (&score, &label)) in scores.iter().zip(&labels).enumerate() {
                let b = [
                    boxes[4 * i],
                    boxes[4 * i + 1],
                    boxes[4 * i + 2],
                    boxes[4 * i + 3],
                ];
                if several && tile.leaves_to_neighbour(b) {
                    continue;
                }
                let (x0, y0) = (tile.x0 as f64, tile.y0 as f64);
                found.push(Found {
                    bbox: [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0],
                    score,
                    label,
                    mask: kept
                        .masks
                        .as_ref()
                        .map(|m| (m.get(i as i64).get(0), tile.x0, tile.y0)),
                });
            }
        }
        done += batch.len();
        (job.progress)(done, tiles.len());
        Ok(())
    };
    let mut row_start = 0;
    while row_start < tiles.len() {
        let y0 = tiles[row_start].y0;
        let row_end = tiles[row_start..]
            .iter()
            .position(|t| t.y0 != y0)
            .map_or(tiles.len(), |p| row_start + p);
        let raw = scene.read_rows(y0, tile_h)?;
        let rows = pre.apply(&raw);
        for (ti, t) in tiles.iter().enumerate().take(row_end).skip(row_start) {
            pending.push((ti, rows.narrow(2, t.x0 as i64, t.width as i64)));
            if pending.len() >= d.batch_size {
                run(&mut pending, &mut found)?;
            }
        }
        row_start = row_end;
    }
    if !pending.is_empty() {
        run(&mut pending, &mut found)?;
    }
    if several && !found.is_empty() {
        found = merge(found, d.iou_threshold)?;
    }
    let gt = scene
        .geo_transform
        .unwrap_or([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let has_masks = found.iter().any(|f| f.mask.is_some());
    let mut features = Vec::with_capacity(found.len());
    for f in &found {
        let geometry = match &f.mask {
            Some((m, x0, y0)) => match vector::mask_polygon(&gt, m, *x0, *y0)? {
                Some(g) => g,
                // No pixel above 0.5: the box stands for the mask.
                None => as_multi(vector::box_polygon(&gt, f.bbox)?)?,
            },
            None => vector::box_polygon(&gt, f.bbox)?,
        };
        features.push(vector::Detection {
            geometry,
            label: f.label,
            score: f.score,
        });
    }
    let written = vector::write(
        &job.output,
        job.format,
        &scene.projection,
        &input.display().to_string(),
        d.class_names.as_deref(),
        has_masks || job.model_has_masks(),
        &features,
    )?;
    Ok(SceneReport {
        width: scene.width,
        height: scene.height,
        bands: scene.bands,
        chips: tiles.len(),
        written: vec![written],
        warnings,
        detections: Some(features.len()),
    })
}

impl DetectJob<'_> {
    /// Whether the model gives masks (so that an empty layer has the right geometry type).
    fn model_has_masks(&self) -> bool {
        crate::output_names::per_image(&self.model.meta())
            .iter()
            .any(|n| n == "masks")
    }
}

fn as_multi(g: gdal::vector::Geometry) -> Result<gdal::vector::Geometry> {
    let mut m = gdal::vector::Geometry::empty(gdal::vector::OGRwkbGeometryType::wkbMultiPolygon)
        .map_err(|e| HostError::Usage(format!("GDAL: {e}")))?;
    m.add_geometry(g)
        .map_err(|e| HostError::Usage(format!("GDAL: {e}")))?;
    Ok(m)
}

/// Class-wise NMS over the whole scene: the detections that `batched_nms` keeps, in its
/// order (decreasing score).
fn merge(found: Vec<Found>, iou_threshold: f64) -> Result<Vec<Found>> {
    let flat: Vec<f64> = found.iter().flat_map(|f| f.bbox).collect();
    let boxes = Tensor::from_slice(&flat).view([-1, 4]);
    let scores = Tensor::from_slice(&found.iter().map(|f| f.score).collect::<Vec<_>>());
    let labels = Tensor::from_slice(&found.iter().map(|f| f.label).collect::<Vec<_>>());
    let keep = Vec::<i64>::try_from(&batched_nms(&boxes, &scores, &labels, iou_threshold)?)
        .map_err(|e| HostError::Usage(format!("nms: {e}")))?;
    let mut slots: Vec<Option<Found>> = found.into_iter().map(Some).collect();
    Ok(keep
        .into_iter()
        .filter_map(|i| slots[i as usize].take())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdal::vector::LayerAccess;
    use serde_json::{json, Map, Value};
    use terrahost_plugin_api::sdk::{Built, Model};

    /// A stand-in detector whose detections depend only on the pixels of each object, as
    /// the tiling is meant to preserve: every distinct value `v > 0.5` of band 1 is one
    /// object, its box the pixels equal to `v` (x2, y2 exclusive), its score `v / 10`,
    /// its label `1 + v mod 2`. A real backbone's detections also depend on the context
    /// a tile cuts off, so equality with the one-piece prediction is only exact here.
    struct Blobs;

    impl Model for Blobs {
        fn forward(
            &self,
            xs: &[Tensor],
            _train: bool,
        ) -> terrahost_plugin_api::Result<Vec<Tensor>> {
            let mut out = Vec::new();
            for img in xs[0].unbind(0) {
                let band = img.get(0);
                let values =
                    Vec::<f32>::try_from(band.flatten(0, -1).unique_dim(0, true, false, false).0)?;
                let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
                for v in values.into_iter().filter(|v| *v > 0.5) {
                    let at = band.eq(v as f64).nonzero(); // [n, 2] (row, col)
                    let (r, c) = (at.select(1, 0), at.select(1, 1));
                    boxes.extend([
                        c.min().double_value(&[]) as f32,
                        r.min().double_value(&[]) as f32,
                        c.max().double_value(&[]) as f32 + 1.0,
                        r.max().double_value(&[]) as f32 + 1.0,
                    ]);
                    scores.push(v / 10.0);
                    labels.push(1 + v as i64 % 2);
                }
                out.push(Tensor::from_slice(&boxes).view([-1, 4]));
                out.push(Tensor::from_slice(&scores));
                out.push(Tensor::from_slice(&labels));
            }
            Ok(out)
        }

        fn out_channels(&self) -> Vec<i64> {
            vec![3]
        }

        fn meta(&self) -> Map<String, Value> {
            let mut m = Map::new();
            m.insert(
                "output_names_per_image".into(),
                json!(["boxes", "scores", "labels"]),
            );
            m
        }
    }

    /// A 160 x 160 one-band scene with five rectangles `(value, x0, x1, y0, y1)`.
    const OBJECTS: [(f32, usize, usize, usize, usize); 5] = [
        (1.0, 5, 15, 5, 15),
        // Across x = 64, the first tile's right edge (tiles at x = 0, 40, 80, 96).
        (2.0, 60, 75, 10, 25),
        // Across y = 40, the second tile row's top edge.
        (3.0, 100, 115, 30, 48),
        (4.0, 140, 155, 60, 75),
        (5.0, 30, 48, 130, 150),
    ];

    fn scene(dir: &Path) -> PathBuf {
        let path = dir.join("blobs.tif");
        let n = 160;
        let mut px = vec![0f32; n * n];
        for (v, x0, x1, y0, y1) in OBJECTS {
            for y in y0..y1 {
                for x in x0..x1 {
                    px[y * n + x] = v;
                }
            }
        }
        let driver = gdal::DriverManager::get_driver_by_name("GTiff").unwrap();
        let mut ds = driver
            .create_with_band_type::<f32, _>(&path, n, n, 1)
            .unwrap();
        ds.set_geo_transform(&[500000.0, 10.0, 0.0, 4000000.0, 0.0, -10.0])
            .unwrap();
        let mut buf = gdal::raster::Buffer::new((n, n), px);
        ds.rasterband(1)
            .unwrap()
            .write((0, 0), (n, n), &mut buf)
            .unwrap();
        path
    }

    /// (label, score, pixel box) of every feature written, in file order.
    fn predict(dir: &Path, input: &Path, tile: usize, overlap: usize) -> Vec<(i64, f64, [f64; 4])> {
        let model = DynModule::new(
            "blobs",
            Built::new("blobs", tch::nn::VarStore::new(Device::Cpu), Blobs).boxed(),
        );
        let config = PredictConfig::from_yaml(
            "model:\n  class_path: terratorch.tasks.ObjectDetectionTask\n  init_args:\n    score_threshold: 0.0\n",
            Path::new("."),
        )
        .unwrap();
        let mut settings = config.detection.clone().unwrap();
        settings.tile = (tile, tile);
        settings.overlap = (overlap, overlap);
        settings.batch_size = 3;
        check_settings(&settings).unwrap();
        let output = dir.join(format!("out_{tile}.gpkg"));
        let job = DetectJob {
            model: &model,
            config: &config,
            settings: &settings,
            device: Device::Cpu,
            precision: Precision::Fp32,
            output: output.clone(),
            format: VectorFormat::Gpkg,
            progress: &|_, _| {},
        };
        let report = predict_scene(&job, input).unwrap();
        let ds = gdal::Dataset::open(&output).unwrap();
        let mut layer = ds.layer(0).unwrap();
        let got: Vec<_> = layer
            .features()
            .map(|f| {
                let env = f.geometry().unwrap().envelope();
                // CRS back to pixels: x = 500000 + 10 col, y = 4000000 - 10 row.
                let b = [
                    (env.MinX - 500000.0) / 10.0,
                    (4000000.0 - env.MaxY) / 10.0,
                    (env.MaxX - 500000.0) / 10.0,
                    (4000000.0 - env.MinY) / 10.0,
                ];
                (
                    f.field_as_integer64(0).unwrap().unwrap(),
                    f.field_as_double(2).unwrap().unwrap(),
                    b,
                )
            })
            .collect();
        assert_eq!(report.detections, Some(got.len()));
        got
    }

    #[test]
    fn tiled_prediction_equals_the_one_piece_prediction_for_local_objects() {
        let dir = tempfile::tempdir().unwrap();
        let input = scene(dir.path());
        let whole = predict(dir.path(), &input, 256, 64);
        let tiled = predict(dir.path(), &input, 64, 24);
        let mut want: Vec<(i64, f64, [f64; 4])> = OBJECTS
            .iter()
            .map(|&(v, x0, x1, y0, y1)| {
                (
                    1 + v as i64 % 2,
                    (v / 10.0) as f64,
                    [x0 as f64, y0 as f64, x1 as f64, y1 as f64],
                )
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(whole, want, "one piece");
        // Every object once, the ones across tile edges whole.
        assert_eq!(tiled, want, "tiled");
    }

    #[test]
    fn without_the_edge_rule_a_cut_object_would_be_two_detections() {
        // The piece of object 2 left of x = 64 overlaps its whole box by IoU 4/15, below
        // the NMS threshold: only the edge rule removes it.
        let t = grid::tiles(160, 160, (64, 64), (24, 24));
        assert!(t[0].leaves_to_neighbour([60.0, 10.0, 64.0, 25.0]));
    }

    #[test]
    fn tiles_come_from_the_model_input_and_bad_overlaps_are_refused() {
        let yaml = |init: &str| {
            PredictConfig::from_yaml(
                &format!("model:\n  class_path: ObjectDetectionTask\n  init_args:\n{init}"),
                Path::new("."),
            )
        };
        let d = yaml("    model_args: {backbone_img_size: 224}\n")
            .unwrap()
            .detection
            .unwrap();
        assert_eq!((d.tile, d.overlap), ((224, 224), (56, 56)));
        let d = yaml("    iou_threshold: 0.3\n").unwrap().detection.unwrap();
        assert_eq!(
            (
                d.tile,
                d.overlap,
                d.iou_threshold,
                d.score_threshold,
                d.batch_size
            ),
            ((512, 512), (128, 128), 0.3, 0.5, 8)
        );
        let e = yaml("    tiled_inference_parameters: {crop: 64}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tile-size"), "{e}");
        let mut d = d;
        d.overlap = (300, 300);
        let e = check_settings(&d).unwrap_err().to_string();
        assert!(e.contains("more than half the tile"), "{e}");
    }
}
