//! `terrahost predict`: a TerraTorch model on GeoTIFF scenes, as `terratorch predict`
//! runs it, as a pipeline of streaming stages, one module each:
//!
//! [`reader`] (window rows through GDAL) -> [`bands`] (select bands, nodata, scale,
//! normalise; the frames of multi-temporal scenes) -> [`tiles`] (TerraTorch's chips) -> the model, in batches (here) ->
//! [`accumulate`] (the strip of sums and weights) -> [`writer`] (finished rows into
//! GeoTIFFs). [`data_config`] reads the config's `data:` section and the task's
//! inference keys; [`scenes`] lists, filters and shards the inputs.
//!
//! [`detection`] runs `ObjectDetectionTask` models on the same reader and preprocessing,
//! over overlapping tiles, and writes vector features instead of rasters.
//!
//! With tiling, only the scene rows the next tile row needs are held (plus the strip of
//! rows that chips still touch), so memory is O(width x crop), whatever the height.
pub mod accumulate;
pub mod bands;
pub mod data_config;
pub mod detection;
pub mod raster_policy;
pub mod reader;
pub mod scenes;
pub mod tiles;
pub mod writer;

use crate::error::{HostError, Result};
use accumulate::Strip;
use bands::Preprocess;
use data_config::{OutputKind, PredictConfig};
use gdal::raster::GdalDataType;
use reader::SceneReader;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use terrahost_layers::precision::Precision;
use terrahost_plugin_api::sdk::DynModule;
use tiles::Plan;
use writer::OutputFile;

/// What one scene needs besides its path.
pub struct Job<'a> {
    pub model: &'a DynModule,
    pub config: &'a PredictConfig,
    pub device: Device,
    /// float32, or bfloat16 under CPU autocast (the weights already converted, see
    /// [`crate::precision::prepare`]).
    pub precision: Precision,
    /// One per output kind of `config.outputs`: the file and its dtype.
    pub outputs: Vec<(OutputKind, PathBuf, GdalDataType)>,
    /// Called with (chips done, chips in the scene).
    pub progress: &'a dyn Fn(usize, usize),
}

/// What predicting one scene did.
#[derive(Debug, Clone)]
pub struct SceneReport {
    pub width: usize,
    pub height: usize,
    pub bands: usize,
    /// Chips through the model (1 without tiling).
    pub chips: usize,
    pub written: Vec<PathBuf>,
    pub warnings: Vec<String>,
    /// The detections written (object detection only).
    pub detections: Option<usize>,
}

/// The model on one batch `[B, C, h, w]` (or `[B, C, T, h, w]`, multi-temporal):
/// `[B, K, h, w]` float32 on the CPU (a `[B, h, w]` regression output gets K = 1, as
/// TerraTorch's tiling gives it), whatever `precision` it ran in.
fn forward(job: &Job<'_>, batch: Tensor) -> Result<Tensor> {
    let size = batch.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    let x = batch.to_device(job.device);
    let out = terrahost_layers::inference::inference_mode(|| {
        job.precision.run(|| job.model.forward(&[x]))
    })?;
    let y = out
        .into_iter()
        .next()
        .ok_or_else(|| HostError::Usage("the model returned no output".into()))?
        .to_device(Device::Cpu)
        .to_kind(Kind::Float);
    let y = match y.dim() {
        3 => y.unsqueeze(1),
        4 => y,
        _ => {
            return Err(HostError::Usage(format!(
                "the model's output has shape {:?}; predict needs a per-pixel output [B, C, H, W] or [B, H, W]",
                y.size()
            )))
        }
    };
    if y.size()[2] != h || y.size()[3] != w {
        return Err(HostError::Usage(format!(
            "the model turned a {h} x {w} input into a {} x {} output; predict needs outputs of the input's size \
             (set `rescale: true` in model_args)",
            y.size()[2],
            y.size()[3]
        )));
    }
    Ok(y)
}

/// TerraTorch's output selectors on a block `[K, n, w]`.
fn select(kind: OutputKind, block: &Tensor) -> Tensor {
    match kind {
        OutputKind::Prediction => block.argmax(0, true),
        OutputKind::Probabilities => block.softmax(0, Kind::Float),
        OutputKind::Logits | OutputKind::Value => block.shallow_clone(),
    }
}

/// The output files, created once the number of model channels is known.
struct Sinks {
    files: Vec<(OutputKind, OutputFile)>,
}

impl Sinks {
    fn open(job: &Job<'_>, scene: &SceneReader, channels: i64) -> Result<Self> {
        let mut files = Vec::new();
        for (kind, path, dtype) in &job.outputs {
            let bands = match kind {
                OutputKind::Prediction => 1,
                _ => channels as usize,
            };
            files.push((*kind, OutputFile::create(path, scene, bands, *dtype)?));
        }
        Ok(Self { files })
    }

    /// Scene rows `y0..` of the model output `[K, n, w]` and their nodata mask.
    fn write(&mut self, y0: usize, block: &Tensor, nodata: &Tensor) -> Result<()> {
        for (kind, f) in &mut self.files {
            f.write_rows(y0, &select(*kind, block), nodata)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<PathBuf>> {
        self.files.into_iter().map(|(_, f)| f.finish()).collect()
    }
}

/// Scene rows read so far and not yet needed by a later chip: preprocessed values
/// `[planes, n, w]` from row `lo` (channels, or channels x frames flattened), and the
/// nodata masks of rows not yet written.
struct Rows<'a> {
    scene: &'a SceneReader,
    pre: &'a Preprocess,
    lo: usize,
    data: Tensor,
    next: usize,
    mask_lo: usize,
    mask: Tensor,
}

impl<'a> Rows<'a> {
    fn new(scene: &'a SceneReader, pre: &'a Preprocess) -> Self {
        let w = scene.width as i64;
        Self {
            scene,
            pre,
            lo: 0,
            data: Tensor::zeros([pre.planes as i64, 0, w], (Kind::Float, Device::Cpu)),
            next: 0,
            mask_lo: 0,
            mask: Tensor::zeros([0, w], (Kind::Bool, Device::Cpu)),
        }
    }

    /// Reads up to scene row `last` (inclusive).
    fn ensure(&mut self, last: usize) -> Result<()> {
        if last < self.next {
            return Ok(());
        }
        let n = last + 1 - self.next;
        let raw = self.scene.read_rows(self.next, n)?;
        let x = self.pre.apply(&raw);
        self.data = Tensor::cat(&[&self.data, &x], 1);
        self.mask = Tensor::cat(&[&self.mask, &self.scene.nodata_mask(&raw)], 0);
        self.next = last + 1;
        Ok(())
    }

    /// Forgets values before scene row `first`.
    fn drop_below(&mut self, first: usize) {
        if first > self.lo {
            let k = (first - self.lo) as i64;
            let n = self.data.size()[1] - k;
            self.data = self.data.narrow(1, k, n).copy();
            self.lo = first;
        }
    }

    /// The nodata mask of scene rows `y0..y0+n`, forgetting the rows before `y0 + n`.
    fn take_mask(&mut self, y0: usize, n: usize) -> Tensor {
        let off = (y0 - self.mask_lo) as i64;
        let m = self.mask.narrow(0, off, n as i64).copy();
        let rest = self.mask.size()[0] - off - n as i64;
        self.mask = self.mask.narrow(0, off + n as i64, rest).copy();
        self.mask_lo = y0 + n;
        m
    }
}

/// Predicts one scene into `job.outputs`.
pub fn predict_scene(job: &Job<'_>, input: &Path) -> Result<SceneReport> {
    let scene = SceneReader::open(input)?;
    check_scene_memory(job, &scene, input)?;
    let pre = Preprocess::new(&job.config.data, scene.bands, scene.nodata)
        .map_err(|e| HostError::Usage(format!("{}: {e}", input.display())))?;
    let mut warnings = Vec::new();
    if scene.projection.is_empty() {
        warnings.push(format!(
            "{}: the scene has no CRS; its outputs carry no georeferencing",
            input.display()
        ));
    }
    let plan = job
        .config
        .tiling
        .as_ref()
        .and_then(|t| Plan::new(t, scene.height, scene.width));
    let (chips, written) = match plan {
        None => whole(job, &scene, &pre)?,
        Some(plan) => tiled(job, &scene, &pre, &plan)?,
    };
    Ok(SceneReport {
        width: scene.width,
        height: scene.height,
        bands: scene.bands,
        chips,
        written,
        warnings,
        detections: None,
    })
}

/// Refuses a scene whose reads would not fit in memory, before anything is allocated:
/// the whole scene (float64) without tiling, a strip of twice the crop height with it.
/// A header can declare any size: a 47 KB GeoTIFF declares 10^6 x 64 pixels.
fn check_scene_memory(job: &Job<'_>, scene: &SceneReader, input: &Path) -> Result<()> {
    let rows = match job.config.tiling.as_ref() {
        Some(t) => (2 * t.h_crop).min(scene.height),
        None => scene.height,
    };
    let shape = [scene.bands as i64, rows as i64, scene.width as i64];
    let what = if rows == scene.height {
        format!(
            "the scene ({} x {} pixels, {} bands)",
            scene.width, scene.height, scene.bands
        )
    } else {
        format!(
            "a strip of {rows} rows of the scene ({} x {} pixels, {} bands)",
            scene.width, scene.height, scene.bands
        )
    };
    crate::limits::check_tensor(&what, &shape, 8)
        .map_err(|e| HostError::Usage(format!("{}: {e}", input.display())))
}

/// The whole scene through the model at once (no tiling, or a scene that fits one chip).
fn whole(job: &Job<'_>, scene: &SceneReader, pre: &Preprocess) -> Result<(usize, Vec<PathBuf>)> {
    (job.progress)(0, 1);
    let raw = scene.read_rows(0, scene.height)?;
    let x = pre.model_input(pre.apply(&raw).unsqueeze(0));
    let y = forward(job, x)?;
    let mut sinks = Sinks::open(job, scene, y.size()[1])?;
    sinks.write(0, &y.get(0), &scene.nodata_mask(&raw))?;
    (job.progress)(1, 1);
    Ok((1, sinks.finish()?))
}

/// Tiled and streamed: tile row by tile row, in batches of `batch_size` chips that may
/// span tile rows, writing rows as soon as no chip still to come touches them.
fn tiled(
    job: &Job<'_>,
    scene: &SceneReader,
    pre: &Preprocess,
    plan: &Plan,
) -> Result<(usize, Vec<PathBuf>)> {
    let t = &plan.tiling;
    let (hc, wc) = (t.h_crop, t.w_crop);
    let (h, w) = (scene.height, scene.width);
    let total = plan.chips.len();
    let col_index: Vec<i64> = (0..plan.frame_w)
        .map(|q| plan.source_index(q, w) as i64)
        .collect();
    let col_index = Tensor::from_slice(&col_index);
    let chip_rows = plan.chip_rows();
    let mut rows = Rows::new(scene, pre);
    let mut pending: Vec<(usize, Tensor)> = Vec::new();
    let mut strip: Option<Strip> = None;
    let mut sinks: Option<Sinks> = None;
    let mut done = 0usize;
    let mut written_to = 0usize; // scene rows written
    (job.progress)(0, total);

    // Runs the first `n` pending chips and adds them to the strip.
    let mut run = |pending: &mut Vec<(usize, Tensor)>,
                   n: usize,
                   strip: &mut Option<Strip>,
                   sinks: &mut Option<Sinks>|
     -> Result<()> {
        let batch: Vec<(usize, Tensor)> = pending.drain(..n).collect();
        let x = pre.model_input(Tensor::stack(
            &batch
                .iter()
                .map(|(_, t)| t.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        ));
        let y = forward(job, x)?;
        let k = y.size()[1];
        if strip.is_none() {
            *strip = Some(Strip::new(k, plan.frame_w, t.average_patches));
            *sinks = Some(Sinks::open(job, scene, k)?);
        }
        let s = strip.as_mut().expect("just made");
        for (i, (ci, _)) in batch.iter().enumerate() {
            let chip = &plan.chips[*ci];
            let c = chip.crop as i64;
            let pred =
                y.get(i as i64)
                    .narrow(1, c, hc as i64 - 2 * c)
                    .narrow(2, c, wc as i64 - 2 * c);
            s.add(
                &pred,
                plan.mask(chip),
                chip.row + chip.crop,
                chip.col + chip.crop,
                chip.rank,
            )?;
        }
        done += batch.len();
        (job.progress)(done, total);
        Ok(())
    };

    // Writes the frame rows before `end`.
    let flush = |end: usize,
                 strip: &mut Option<Strip>,
                 sinks: &mut Option<Sinks>,
                 rows: &mut Rows,
                 written_to: &mut usize|
     -> Result<()> {
        let (Some(s), Some(out)) = (strip.as_mut(), sinks.as_mut()) else {
            return Ok(());
        };
        let first = s.base;
        let Some((values, count)) = s.take_until(end) else {
            return Ok(());
        };
        // Frame rows first..end -> scene rows, without the padding.
        let lo = first.max(plan.offset);
        let hi = end.min(plan.offset + h);
        if hi <= lo {
            return Ok(());
        }
        let (r, n) = ((lo - first) as i64, (hi - lo) as i64);
        let values = values
            .narrow(1, r, n)
            .narrow(2, plan.offset as i64, w as i64);
        let count = count
            .narrow(0, r, n)
            .narrow(1, plan.offset as i64, w as i64);
        if count.eq(0.0).any().int64_value(&[]) != 0 {
            return Err(HostError::Usage(
                "some pixels did not receive a prediction (TerraTorch: \"Some pixels did not receive a \
                 classification!\"); check the crop and stride"
                    .into(),
            ));
        }
        let y0 = lo - plan.offset;
        let mask = rows.take_mask(y0, n as usize);
        out.write(y0, &values, &mask)?;
        *written_to = y0 + n as usize;
        Ok(())
    };

    for (ri, (r0, chips)) in chip_rows.iter().enumerate() {
        // The scene rows this tile row reads.
        let src: Vec<i64> = (*r0..r0 + hc)
            .map(|p| plan.source_index(p, h) as i64)
            .collect();
        let (lo, hi) = (
            *src.iter().min().unwrap() as usize,
            *src.iter().max().unwrap() as usize,
        );
        rows.ensure(hi)?;
        rows.drop_below(lo);
        let idx = Tensor::from_slice(&src.iter().map(|s| s - rows.lo as i64).collect::<Vec<_>>());
        let band = rows.data.index_select(1, &idx).index_select(2, &col_index);
        for &ci in chips {
            let c = plan.chips[ci].col as i64;
            pending.push((ci, band.narrow(2, c, wc as i64)));
        }
        while pending.len() >= t.batch_size {
            run(&mut pending, t.batch_size, &mut strip, &mut sinks)?;
        }
        let next_row = chip_rows.get(ri + 1).map(|(r, _)| *r);
        let boundary = pending
            .iter()
            .map(|(ci, _)| plan.chips[*ci].row)
            .chain(next_row)
            .min()
            .unwrap_or(plan.frame_h);
        flush(boundary, &mut strip, &mut sinks, &mut rows, &mut written_to)?;
    }
    if !pending.is_empty() {
        let n = pending.len();
        run(&mut pending, n, &mut strip, &mut sinks)?;
    }
    flush(
        plan.frame_h,
        &mut strip,
        &mut sinks,
        &mut rows,
        &mut written_to,
    )?;
    if written_to != h {
        return Err(HostError::Usage(format!(
            "internal: {written_to} of {h} rows were written"
        )));
    }
    let files = sinks.expect("at least one chip").finish()?;
    Ok((total, files))
}
