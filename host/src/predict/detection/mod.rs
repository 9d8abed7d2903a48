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
use terrahost_plugin_api::sdk::DynModule;
use vector::VectorFormat;

/// What one detection scene needs besides its path.
pub struct DetectJob<'a> {
    pub model: &'a DynModule,
    pub config: &'a PredictConfig,
    pub settings: &'a DetectionArgs,
    pub device: Device,
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
        return Err(HostError::Usage("the detection tile must be at least 1 x 1 pixels".into()));
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
fn forward(model: &DynModule, batch: Tensor, device: Device) -> Result<Vec<Detections>> {
    let n = batch.size()[0] as usize;
    let names: Vec<String> = model
        .meta()
        .get("output_names_per_image")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
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
    let out = terrahost_layers::inference::inference_mode(|| model.forward(&[x]))?;
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
    let nodata = if data.keep_nodata_values { None } else { scene.nodata };
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
            &batch.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>(),
            0,
        ));
        let dets = forward(job.model, x, job.device)?;
        for ((ti, _), det) in batch.iter().zip(dets) {
            let tile = &tiles[*ti];
            let kept = apply_nms_sample(&det, d.iou_threshold, d.score_threshold)?;
            let boxes = Vec::<f64>::try_from(kept.boxes.to_kind(Kind::Double).contiguous().view([-1]))
                .map_err(|e| HostError::Usage(format!("boxes: {e}")))?;
            let scores = Vec::<f64>::try_from(kept.scores.to_kind(Kind::Double))
                .map_err(|e| HostError::Usage(format!("scores: {e}")))?;
            let labels = Vec::<i64>::try_from(&kept.labels)
                .map_err(|e| HostError::Usage(format!("labels: {e}")))?;
            for (i, (&score, &label)) in scores.iter().zip(&labels).enumerate() {
                let b = [boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]];
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
    let gt = scene.geo_transform.unwrap_or([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
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
        features.push(vector::Detection { geometry, label: f.label, score: f.score });
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
        self.model
            .meta()
            .get("output_names_per_image")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().any(|v| v == "masks"))
    }
}

fn as_multi(g: gdal::vector::Geometry) -> Result<gdal::vector::Geometry> {
    let mut m = gdal::vector::Geometry::empty(gdal::vector::OGRwkbGeometryType::wkbMultiPolygon)
        .map_err(|e| HostError::Usage(format!("GDAL: {e}")))?;
    m.add_geometry(g).map_err(|e| HostError::Usage(format!("GDAL: {e}")))?;
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
