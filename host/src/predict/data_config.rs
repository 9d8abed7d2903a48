//! What `terrahost predict` reads from a LightningCLI config besides the model: the
//! `data:` section as TerraTorch 1.2.11's `GenericNonGeoSegmentationDataModule` /
//! `GenericNonGeoPixelwiseRegressionDataModule` read it
//! (`terratorch/datamodules/generic_pixel_wise_data_module.py`, the dataset in
//! `terratorch/datasets/generic_pixel_wise_dataset.py`), the task's inference keys
//! (`tiled_inference_parameters`, `output_on_inference`, `output_most_probable`, in
//! `terratorch/tasks/segmentation_tasks.py` and `regression_tasks.py`) and the
//! top-level `out_dtype` / `predict_output_dir` of `terratorch predict`.
use crate::error::{HostError, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use terrahost_plugin_api::params::did_you_mean;

/// A band name as TerraTorch takes it: an HLSBands string (or any string) or an int.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Band {
    /// A name (`RED`, `NIR_NARROW`, or any string).
    Name(String),
    /// An integer label.
    Index(i64),
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Band::Name(s) => write!(f, "{s}"),
            Band::Index(i) => write!(f, "{i}"),
        }
    }
}

/// The task's kind of prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// SemanticSegmentationTask: class scores per pixel.
    Segmentation,
    /// PixelwiseRegressionTask: one value per pixel.
    Regression,
    /// ObjectDetectionTask: boxes, scores and labels (and Mask R-CNN's masks), written
    /// as vector features (see [`super::detection`]).
    Detection,
}

/// One of `output_on_inference`'s selectors (segmentation), or the regression value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// argmax over the classes, file suffix `pred`.
    Prediction,
    /// the raw scores, suffix `logits`.
    Logits,
    /// softmax over the classes, suffix `probabilities`.
    Probabilities,
    /// the regression value, suffix `pred`.
    Value,
}

impl OutputKind {
    /// The file-name suffix TerraTorch's writer uses.
    pub fn suffix(self) -> &'static str {
        match self {
            OutputKind::Prediction | OutputKind::Value => "pred",
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        }
    }
}

/// Padding of the scene before tiling (`padding` of `tiled_inference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// `padding: false`: chips flush to the border, no padding.
    None,
    /// torch's `reflect` (the default).
    Reflect,
    /// torch's `replicate`.
    Replicate,
}

/// `tiled_inference_parameters` with TerraTorch's defaults resolved (`h_crop = h_crop or
/// crop`, ...), before delta is reduced to the overlap.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiling {
    pub h_crop: usize,
    pub w_crop: usize,
    pub h_stride: usize,
    pub w_stride: usize,
    pub delta: usize,
    pub average_patches: bool,
    pub blend_overlaps: bool,
    pub batch_size: usize,
    pub padding: PadMode,
}

/// The datamodule arguments that shape what the model sees.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataArgs {
    /// `predict_data_root`.
    pub predict_data_root: Option<PathBuf>,
    /// `img_grep` (default `*`).
    pub img_grep: String,
    /// `predict_dataset_bands`, else `dataset_bands`.
    pub dataset_bands: Option<Vec<Band>>,
    /// `predict_output_bands`, else `output_bands`.
    pub output_bands: Option<Vec<Band>>,
    /// `constant_scale` (default 1).
    pub constant_scale: f64,
    /// `no_data_replace`.
    pub no_data_replace: Option<f64>,
    /// `means` and `stds` (lists, or read from txt files), when both are given; a
    /// (C, T) table (a txt file of C rows of T numbers) is held row-major.
    pub means: Option<Vec<f64>>,
    pub stds: Option<Vec<f64>>,
    /// T when `means`/`stds` are (C, T) tables (per band and frame), `None` for lists.
    pub stats_frames: Option<usize>,
    /// `expand_temporal_dimension`: the file's bands are frames of `dataset_bands`
    /// stacked time-major, and the model gets `[B, C, T, H, W]`.
    pub expand_temporal_dimension: bool,
    /// The scene's nodata value stays a value: TerraTorch's object-detection dataset
    /// (`GenericNonGeoObjectDetectionDataset`) opens scenes without `masked=True`, so
    /// only NaNs already in the file meet `no_data_replace`.
    pub keep_nodata_values: bool,
    /// `class_names` of the datamodule (the object-detection one has them).
    pub class_names: Option<Vec<String>>,
}

/// What `ObjectDetectionTask` adds to prediction: its `predict_step` filter and the
/// tiling terrahost does on scenes larger than a tile.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionArgs {
    /// `iou_threshold` (TerraTorch's default 0.5).
    pub iou_threshold: f64,
    /// `score_threshold` (TerraTorch's default 0.5).
    pub score_threshold: f64,
    /// The task's `class_names`, else the datamodule's: `class_names[label]` names a label.
    pub class_names: Option<Vec<String>>,
    /// The tile (rows, columns): the model's `backbone_img_size`, else
    /// [`DEFAULT_DETECTION_TILE`] (`--tile-size` overrides).
    pub tile: (usize, usize),
    /// The overlap of neighbouring tiles (rows, columns): a quarter of the tile
    /// (`--tile-overlap` overrides).
    pub overlap: (usize, usize),
    /// Tiles per forward (the datamodule's `batch_size`, default 8).
    pub batch_size: usize,
}

/// The detection tile without `tiled_inference_parameters`: 512 x 512 pixels, the size
/// of many detection training chips and small enough for a CPU forward.
pub const DEFAULT_DETECTION_TILE: usize = 512;

/// A key of the config that predict does not use.
#[derive(Debug, Clone, PartialEq)]
pub struct Unused {
    pub key: String,
    pub why: &'static str,
    pub warn: bool,
}

/// Everything predict takes from the config besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictConfig {
    pub task: TaskKind,
    pub data: DataArgs,
    /// `None`: the whole scene goes through the model.
    pub tiling: Option<Tiling>,
    pub outputs: Vec<OutputKind>,
    /// The object-detection settings (`Some` exactly for [`TaskKind::Detection`]).
    pub detection: Option<DetectionArgs>,
    /// Top-level `out_dtype` of `terratorch predict`.
    pub out_dtype: Option<String>,
    /// Top-level `predict_output_dir`.
    pub predict_output_dir: Option<PathBuf>,
    /// Keys of the `data` section (and the top level) that predict does not read.
    pub unused: Vec<Unused>,
}

fn err(msg: impl Into<String>) -> HostError {
    HostError::Config(msg.into())
}

/// Datamodule arguments that only matter for training, validation or testing.
const DATA_QUIET: &[&str] = &[
    "batch_size",
    "num_workers",
    "num_classes",
    "train_data_root",
    "val_data_root",
    "test_data_root",
    "label_grep",
    "train_label_data_root",
    "val_label_data_root",
    "test_label_data_root",
    "train_split",
    "val_split",
    "test_split",
    "ignore_split_file_extensions",
    "allow_substring_split_file",
    "rgb_indices",
    "train_transform",
    "val_transform",
    "test_transform",
    "reduce_zero_label",
    "no_label_replace",
    "drop_last",
    "pin_memory",
    "check_stackability",
    "return_georeference",
    "embedding_input",
    "pca_step",
    "class_names",
];

/// Datamodule arguments predict reads.
const DATA_READ: &[&str] = &[
    "predict_data_root",
    "img_grep",
    "dataset_bands",
    "output_bands",
    "predict_dataset_bands",
    "predict_output_bands",
    "constant_scale",
    "no_data_replace",
    "means",
    "stds",
    "expand_temporal_dimension",
    "tortilla_file",
];

const DATAMODULES: [&str; 3] = [
    "GenericNonGeoSegmentationDataModule",
    "GenericNonGeoPixelwiseRegressionDataModule",
    "GenericNonGeoObjectDetectionDataModule",
];

const TILING_KEYS: [&str; 14] = [
    "crop",
    "stride",
    "delta",
    "h_crop",
    "w_crop",
    "h_stride",
    "w_stride",
    "average_patches",
    "blend_overlaps",
    "batch_size",
    "verbose",
    "padding",
    "device",
    "out_channels",
];

fn as_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) if n.as_u64().is_some() => Ok(Some(n.as_u64().unwrap() as usize)),
        other => Err(err(format!(
            "`tiled_inference_parameters.{key}` must be a non-negative integer, got {other}"
        ))),
    }
}

fn as_bool(v: &Value, key: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(err(format!("`{key}` must be true or false, got {other}"))),
    }
}

/// Refuses a key `tiled_inference` does not take, with did-you-mean.
fn check_tiling_keys(map: &Map<String, Value>) -> Result<()> {
    for key in map.keys() {
        if !TILING_KEYS.contains(&key.as_str()) {
            let hint = did_you_mean(key, TILING_KEYS.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(err(format!(
                "`tiled_inference_parameters.{key}` is not an argument of TerraTorch's tiled_inference{hint}; \
                 TerraTorch would pass it on to the model's forward, which refuses it"
            )));
        }
    }
    Ok(())
}

/// `tiled_inference_parameters` as `tiled_inference` reads it. An empty mapping (or
/// none) means no tiling (`if self.tiled_inference_parameters:`).
pub fn parse_tiling(v: Option<&Value>) -> Result<Option<Tiling>> {
    let map = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) if m.is_empty() => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(err(format!(
                "`model.init_args.tiled_inference_parameters` must be a mapping, got {other}"
            )))
        }
    };
    check_tiling_keys(map)?;
    let get = |k: &str| -> Result<Option<usize>> {
        map.get(k)
            .map(|v| as_usize(v, k))
            .transpose()
            .map(Option::flatten)
    };
    // `h_crop or crop`: 0 and None both fall back.
    let nonzero = |v: Option<usize>| v.filter(|x| *x > 0);
    let crop = get("crop")?.unwrap_or(224);
    let stride = get("stride")?.unwrap_or(192);
    let h_crop = nonzero(get("h_crop")?).unwrap_or(crop);
    let w_crop = nonzero(get("w_crop")?).unwrap_or(crop);
    let h_stride = nonzero(get("h_stride")?).unwrap_or(stride);
    let w_stride = nonzero(get("w_stride")?).unwrap_or(stride);
    let delta = get("delta")?.unwrap_or(8);
    let batch_size = get("batch_size")?.unwrap_or(16);
    let flag = |k: &str, d: bool| -> Result<bool> {
        map.get(k)
            .map(|v| as_bool(v, &format!("tiled_inference_parameters.{k}")))
            .transpose()
            .map(|b| b.unwrap_or(d))
    };
    let average_patches = flag("average_patches", true)?;
    let blend_overlaps = flag("blend_overlaps", true)?;
    let padding = match map.get("padding") {
        None => PadMode::Reflect,
        Some(Value::Bool(false)) | Some(Value::Null) => PadMode::None,
        Some(Value::String(s)) if s.is_empty() => PadMode::None,
        Some(Value::String(s)) if s == "reflect" => PadMode::Reflect,
        Some(Value::String(s)) if s == "replicate" => PadMode::Replicate,
        Some(other) => {
            return Err(err(format!(
                "`tiled_inference_parameters.padding` is {other}; terrahost supports \"reflect\" (the default), \
                 \"replicate\" and false"
            )))
        }
    };
    if h_crop == 0 || w_crop == 0 || h_stride == 0 || w_stride == 0 || batch_size == 0 {
        return Err(err(
            "`tiled_inference_parameters`: crop, stride and batch_size must be positive",
        ));
    }
    if h_stride > h_crop || w_stride > w_crop {
        return Err(err(format!(
            "`tiled_inference_parameters`: the stride ({h_stride} x {w_stride}) is larger than the crop \
             ({h_crop} x {w_crop}), so some pixels would get no prediction; use a stride <= crop"
        )));
    }
    Ok(Some(Tiling {
        h_crop,
        w_crop,
        h_stride,
        w_stride,
        delta,
        average_patches,
        blend_overlaps,
        batch_size,
        padding,
    }))
}

/// `output_on_inference` (a string or a list) and the deprecated `output_most_probable`.
pub fn parse_outputs(
    task: TaskKind,
    on_inference: Option<&Value>,
    most_probable: Option<&Value>,
) -> Result<Vec<OutputKind>> {
    if task == TaskKind::Regression {
        return Ok(vec![OutputKind::Value]);
    }
    let one = |s: &str| -> Result<OutputKind> {
        match s {
            "prediction" => Ok(OutputKind::Prediction),
            "logits" => Ok(OutputKind::Logits),
            "probabilities" => Ok(OutputKind::Probabilities),
            other => Err(err(format!(
                "`output_on_inference`: option `{other}` is not supported. It must be in ['prediction', \
                 'logits', 'probabilities']"
            ))),
        }
    };
    if let Some(v) = most_probable {
        if !as_bool(v, "model.init_args.output_most_probable")? {
            // TerraTorch: deprecated, and it overrides output_on_inference.
            tracing::warn!(
                "`output_most_probable: false` is deprecated in TerraTorch; it means \
                 output_on_inference: probabilities"
            );
            return Ok(vec![OutputKind::Probabilities]);
        }
    }
    match on_inference {
        None | Some(Value::Null) => Ok(vec![OutputKind::Prediction]),
        Some(Value::String(s)) => Ok(vec![one(s)?]),
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for v in list {
                match v {
                    Value::String(s) => out.push(one(s)?),
                    other => {
                        return Err(err(format!(
                            "`output_on_inference`: {other} is not a string"
                        )))
                    }
                }
            }
            if out.is_empty() {
                return Err(err(
                    "The list of selectors for the output is empty, please, provide a valid value for \
                     `output_on_inference`",
                ));
            }
            Ok(out)
        }
        Some(other) => Err(err(format!(
            "The value {other} isn't supported for `output_on_inference`."
        ))),
    }
}

/// TerraTorch's `generate_bands_intervals`: names and ints as they are, a two-int list
/// (YAML's form of the tuple) expanded to the inclusive range.
pub fn parse_bands(v: &Value, key: &str) -> Result<Option<Vec<Band>>> {
    let list = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        other => {
            return Err(err(format!(
                "`data.init_args.{key}` must be a list, got {other}"
            )))
        }
    };
    let mut out = Vec::new();
    for e in list {
        match e {
            Value::String(s) => out.push(Band::Name(s.clone())),
            Value::Number(n) if n.as_i64().is_some() => out.push(Band::Index(n.as_i64().unwrap())),
            Value::Array(pair) => {
                let ints: Vec<i64> = pair.iter().filter_map(Value::as_i64).collect();
                if ints.len() != 2 || pair.len() != 2 {
                    return Err(err(format!(
                        "`data.init_args.{key}`: {e} — when defining an interval, a tuple of two integers should \
                         be passed, defining start and end indices inclusive"
                    )));
                }
                out.extend((ints[0]..=ints[1]).map(Band::Index));
            }
            other => {
                return Err(err(format!(
                    "`data.init_args.{key}`: {other} is not a band name, an int or an interval"
                )))
            }
        }
    }
    Ok(Some(out))
}

/// `load_from_file_or_attribute`: a list of numbers, or the path of a text file of
/// numbers (relative to the working directory, as in TerraTorch, else to the config's
/// directory). A file is read as `np.genfromtxt` reads it: several rows of several
/// numbers are a (rows, columns) table, returned row-major with its column count
/// (`Some(T)`); one row or one column is a list (`None`).
fn numbers(v: &Value, key: &str, config_dir: &Path) -> Result<(Vec<f64>, Option<usize>)> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_f64().ok_or_else(|| {
                    err(format!(
                        "`data.init_args.{key}`: {x} is not a number; TerraTorch's datamodule takes a list of \
                         numbers, or a txt file (C rows of T numbers for statistics per band and frame)"
                    ))
                })
            })
            .collect::<Result<Vec<f64>>>()
            .map(|v| (v, None)),
        Value::String(s) => {
            let p = PathBuf::from(s);
            let path = if p.is_file() { p } else { config_dir.join(s) };
            let text = crate::limits::read_text(&path, &format!("`data.init_args.{key}`"))
                .map_err(err)?;
            let mut rows: Vec<Vec<f64>> = Vec::new();
            for (number, line) in text.lines().enumerate() {
                // genfromtxt: `#` starts a comment, blank lines are skipped.
                let line = line.split('#').next().unwrap_or("");
                let row = line
                    .split_whitespace()
                    .map(|t| {
                        // The token is not quoted: the file may be anything (`/etc/shadow`).
                        t.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                            err(format!(
                                "`data.init_args.{key}`: {} must be a txt file of numbers; line {} holds something else",
                                path.display(),
                                number + 1
                            ))
                        })
                    })
                    .collect::<Result<Vec<f64>>>()?;
                if !row.is_empty() {
                    rows.push(row);
                }
            }
            let cols = rows.first().map_or(0, Vec::len);
            if rows.iter().any(|r| r.len() != cols) {
                return Err(err(format!(
                    "`data.init_args.{key}`: {} has rows of different lengths; give one number per line, or C \
                     rows of T numbers",
                    path.display()
                )));
            }
            let table = (rows.len() > 1 && cols > 1).then_some(cols);
            Ok((rows.concat(), table))
        }
        other => Err(err(format!(
            "`data.init_args.{key}` must be a list of numbers or a txt path, got {other}"
        ))),
    }
}

/// A list of strings (`class_names`); null is none.
fn string_list(v: &Value, key: &str) -> Result<Option<Vec<String>>> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_owned).ok_or_else(|| {
                    err(format!(
                        "`{key}`: {x} is not a string; give a list of names"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        other => Err(err(format!("`{key}` must be a list of names, got {other}"))),
    }
}

/// A threshold of `ObjectDetectionTask`: any finite number, as TerraTorch takes it (a
/// score threshold of 1 or more keeps nothing).
fn threshold(init: &Map<String, Value>, key: &str, default: f64) -> Result<f64> {
    match init.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
            err(format!(
                "`model.init_args.{key}` must be a number (TerraTorch's default is 0.5), got {v}"
            ))
        }),
    }
}

/// `ObjectDetectionTask`'s `iou_threshold`, `score_threshold` and `class_names`; the tile
/// is the model's input size, `model_args.backbone_img_size` (an int or `[h, w]`), else
/// [`DEFAULT_DETECTION_TILE`], overlapping by a quarter; `batch_size` tiles (the
/// datamodule's `batch_size`, else 8) go through the model at a time. The task has no
/// `tiled_inference_parameters` (LightningCLI refuses the key): `--tile-size` and
/// `--tile-overlap` set the tiles on the command line.
pub fn parse_detection(
    init: &Map<String, Value>,
    data_batch_size: Option<usize>,
) -> Result<DetectionArgs> {
    if init.contains_key("tiled_inference_parameters") {
        return Err(err(
            "`model.init_args.tiled_inference_parameters`: ObjectDetectionTask has no such argument (LightningCLI \
             refuses it); remove it and give the tiles with --tile-size and --tile-overlap",
        ));
    }
    let iou_threshold = threshold(init, "iou_threshold", 0.5)?;
    let score_threshold = threshold(init, "score_threshold", 0.5)?;
    let class_names = init
        .get("class_names")
        .map(|v| string_list(v, "model.init_args.class_names"))
        .transpose()?
        .flatten();
    let size = |v: &Value| v.as_u64().filter(|x| *x > 0).map(|x| x as usize);
    let tile = match init
        .get("model_args")
        .and_then(|m| m.get("backbone_img_size"))
    {
        Some(Value::Array(a)) if a.len() == 2 && a.iter().all(|v| size(v).is_some()) => {
            (size(&a[0]).unwrap(), size(&a[1]).unwrap())
        }
        Some(v) if size(v).is_some() => (size(v).unwrap(), size(v).unwrap()),
        _ => (DEFAULT_DETECTION_TILE, DEFAULT_DETECTION_TILE),
    };
    Ok(DetectionArgs {
        iou_threshold,
        score_threshold,
        class_names,
        tile,
        overlap: (tile.0 / 4, tile.1 / 4),
        batch_size: data_batch_size.filter(|b| *b > 0).unwrap_or(8),
    })
}

impl PredictConfig {
    /// Reads the config file (YAML).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::limits::read_text(path, "--config").map_err(err)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, dir).map_err(|e| err(format!("{}: {e}", path.display())))
    }

    /// Reads the config's text; `config_dir` resolves relative means/stds files.
    pub fn from_yaml(text: &str, config_dir: &Path) -> Result<Self> {
        let top: Value = crate::yaml::parse(text).map_err(|e| err(format!("not YAML: {e}")))?;
        let Value::Object(top) = top else {
            return Err(err("the config is not a mapping"));
        };
        let mut unused = Vec::new();
        let model = top.get("model").and_then(Value::as_object);
        let class = model
            .and_then(|m| m.get("class_path"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let class_name = class.rsplit('.').next().unwrap_or(class);
        let task = match class_name {
            "SemanticSegmentationTask" => TaskKind::Segmentation,
            "PixelwiseRegressionTask" => TaskKind::Regression,
            "ObjectDetectionTask" => TaskKind::Detection,
            "" => {
                return Err(err(
                    "predict needs a LightningCLI config whose `model.class_path` is \
                     terratorch.tasks.SemanticSegmentationTask, PixelwiseRegressionTask or ObjectDetectionTask",
                ))
            }
            other => {
                return Err(err(format!(
                    "`model.class_path` is `{class}`: terrahost predict writes per-pixel rasters for \
                     SemanticSegmentationTask and PixelwiseRegressionTask and vector features for \
                     ObjectDetectionTask; {other} is none of them"
                )))
            }
        };
        let init = model
            .and_then(|m| m.get("init_args"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let tiled = init.get("tiled_inference_parameters");
        let (tiling, outputs) = if task == TaskKind::Detection {
            // Detection tiles on its own terms (`super::detection`): no raster outputs.
            (None, Vec::new())
        } else {
            let outputs = parse_outputs(
                task,
                init.get("output_on_inference"),
                init.get("output_most_probable"),
            )?;
            (parse_tiling(tiled)?, outputs)
        };

        let mut data = DataArgs {
            img_grep: "*".into(),
            constant_scale: 1.0,
            ..Default::default()
        };
        match top.get("data") {
            None | Some(Value::Null) => tracing::warn!(
                "the config has no `data` section: no band selection, no scaling, no normalisation"
            ),
            Some(Value::Object(section)) => {
                data = Self::data_section(section, config_dir, &mut unused)?;
            }
            Some(other) => return Err(err(format!("`data` must be a mapping, got {other}"))),
        }
        let detection = if task == TaskKind::Detection {
            let batch = top
                .get("data")
                .and_then(|d| d.get("init_args"))
                .and_then(|i| i.get("batch_size"))
                .and_then(Value::as_u64)
                .map(|b| b as usize);
            let mut d = parse_detection(&init, batch)?;
            if d.class_names.is_none() {
                d.class_names = data.class_names.clone();
            }
            Some(d)
        } else {
            None
        };
        let str_key = |k: &str| top.get(k).and_then(Value::as_str).map(str::to_owned);
        for key in top.keys() {
            if !["model", "data", "out_dtype", "predict_output_dir"].contains(&key.as_str()) {
                unused.push(Unused {
                    key: key.clone(),
                    why: "LightningCLI section predict does not need",
                    warn: false,
                });
            }
        }
        Ok(Self {
            task,
            data,
            tiling,
            outputs,
            detection,
            out_dtype: str_key("out_dtype"),
            predict_output_dir: str_key("predict_output_dir").map(PathBuf::from),
            unused,
        })
    }

    fn data_section(
        section: &Map<String, Value>,
        config_dir: &Path,
        unused: &mut Vec<Unused>,
    ) -> Result<DataArgs> {
        let class = section
            .get("class_path")
            .and_then(Value::as_str)
            .unwrap_or("");
        let class_name = class.rsplit('.').next().unwrap_or(class);
        if !DATAMODULES.contains(&class_name) {
            return Err(err(format!(
                "`data.class_path` is `{class}`: terrahost predict reads scenes as TerraTorch's {} do; \
                 other datamodules have their own readers",
                DATAMODULES.join(" and ")
            )));
        }
        let empty = Map::new();
        let init = section
            .get("init_args")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for key in init.keys() {
            if DATA_READ.contains(&key.as_str()) {
                continue;
            }
            let quiet = DATA_QUIET.contains(&key.as_str());
            unused.push(Unused {
                key: format!("data.init_args.{key}"),
                why: if quiet {
                    "only used for training, validation or testing"
                } else {
                    "not an argument terrahost predict reads"
                },
                warn: !quiet,
            });
        }
        let expand_temporal_dimension = match init.get("expand_temporal_dimension") {
            None | Some(Value::Null) => false,
            Some(v) => as_bool(v, "data.init_args.expand_temporal_dimension")?,
        };
        if init
            .get("temporal_channel_major")
            .is_some_and(|v| v == &Value::Bool(true))
        {
            // The dataset has the flag, but TerraTorch 1.2.11's datamodules do not take it
            // (its CLI says "Option 'temporal_channel_major' is not accepted") and their
            // datasets read every stack time-major.
            return Err(err(
                "`data.init_args.temporal_channel_major: true` is not supported: TerraTorch 1.2.11's \
                 GenericNonGeo*DataModule has no such argument (its CLI refuses the key) and reads multi-temporal \
                 bands time-major (all bands of frame 1, then frame 2, ...); write the scene's bands in that order \
                 and remove the key",
            ));
        }
        if init.get("tortilla_file").is_some_and(|v| !v.is_null()) {
            return Err(err(
                "`data.init_args.tortilla_file` is not supported by terrahost predict; give GeoTIFF scenes",
            ));
        }
        let bands = |k: &str| -> Result<Option<Vec<Band>>> {
            init.get(k)
                .map(|v| parse_bands(v, k))
                .transpose()
                .map(Option::flatten)
        };
        // `predict_dataset_bands if predict_dataset_bands else dataset_bands`.
        let dataset_bands = bands("predict_dataset_bands")?
            .filter(|b| !b.is_empty())
            .or(bands("dataset_bands")?);
        let output_bands = bands("predict_output_bands")?
            .filter(|b| !b.is_empty())
            .or(bands("output_bands")?);
        let num = |k: &str| -> Result<Option<f64>> {
            match init.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(format!("`data.init_args.{k}` must be a number, got {v}"))),
            }
        };
        let (mut means, mut stds) = (None, None);
        let given = |k: &str| {
            init.get(k).is_some_and(|v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => true,
            })
        };
        let mut stats_frames = None;
        if given("means") && given("stds") {
            let (m, mt) = numbers(&init["means"], "means", config_dir)?;
            let (s, st) = numbers(&init["stds"], "stds", config_dir)?;
            if m.len() != s.len() || mt != st {
                let shape = |n: usize, t: Option<usize>| match t {
                    Some(t) => format!("a {} x {t} table", n / t),
                    None => format!("{n} numbers"),
                };
                return Err(err(format!(
                    "`data.init_args`: the means are {} but the stds {}; give both the same shape",
                    shape(m.len(), mt),
                    shape(s.len(), st)
                )));
            }
            means = Some(m);
            stds = Some(s);
            stats_frames = mt;
        } else if given("means") || given("stds") {
            tracing::warn!(
                "only one of `data.init_args.means` / `stds` is given; like TerraTorch, no normalisation"
            );
        }
        if expand_temporal_dimension {
            // GenericPixelWiseDataset's checks, in its order.
            if dataset_bands.is_none() {
                return Err(err(
                    "`data.init_args.expand_temporal_dimension: true` needs `dataset_bands` (the bands of one \
                     frame): TerraTorch: \"Please provide dataset_bands when expand_temporal_dimension=True.\"",
                ));
            }
            if output_bands.is_none() {
                return Err(err(
                    "`data.init_args.expand_temporal_dimension: true` needs `output_bands` (the bands of each \
                     frame the model gets): TerraTorch: \"Please provide output_bands when expand_temporal_dimension \
                     is True\"",
                ));
            }
        }
        Ok(DataArgs {
            predict_data_root: init
                .get("predict_data_root")
                .and_then(Value::as_str)
                .map(PathBuf::from),
            img_grep: init
                .get("img_grep")
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_owned(),
            dataset_bands,
            output_bands,
            constant_scale: num("constant_scale")?.unwrap_or(1.0),
            no_data_replace: num("no_data_replace")?,
            means,
            stds,
            stats_frames,
            expand_temporal_dimension,
            keep_nodata_values: class_name == "GenericNonGeoObjectDetectionDataModule",
            class_names: init
                .get("class_names")
                .map(|v| string_list(v, "data.init_args.class_names"))
                .transpose()?
                .flatten(),
        })
    }

    /// The model-section keys predict reads (so they are not reported as unused).
    pub const MODEL_KEYS_READ: [&'static str; 5] = [
        "model.init_args.tiled_inference_parameters",
        "model.init_args.output_on_inference",
        "model.init_args.output_most_probable",
        "model.init_args.iou_threshold",
        "model.init_args.score_threshold",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tiling_defaults_are_terratorchs() {
        let t = parse_tiling(Some(&json!({"h_crop": 256})))
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.h_crop, t.w_crop, t.h_stride, t.w_stride),
            (256, 224, 192, 192)
        );
        assert_eq!(t.delta, 8);
        assert!(t.average_patches && t.blend_overlaps);
        assert_eq!(t.batch_size, 16);
        assert_eq!(t.padding, PadMode::Reflect);
        assert_eq!(parse_tiling(Some(&json!({}))).unwrap(), None);
        assert!(parse_tiling(Some(&json!({"crops": 3})))
            .unwrap_err()
            .to_string()
            .contains("crop"));
        let p = parse_tiling(Some(&json!({"padding": false})))
            .unwrap()
            .unwrap();
        assert_eq!(p.padding, PadMode::None);
    }

    #[test]
    fn bands_expand_intervals() {
        let b = parse_bands(&json!(["RED", [1, 3], 7]), "dataset_bands")
            .unwrap()
            .unwrap();
        assert_eq!(
            b,
            vec![
                Band::Name("RED".into()),
                Band::Index(1),
                Band::Index(2),
                Band::Index(3),
                Band::Index(7)
            ]
        );
        assert!(parse_bands(&json!([[1, 2, 3]]), "x").is_err());
    }

    #[test]
    fn outputs_follow_output_on_inference() {
        let s = TaskKind::Segmentation;
        assert_eq!(
            parse_outputs(s, None, None).unwrap(),
            vec![OutputKind::Prediction]
        );
        assert_eq!(
            parse_outputs(s, Some(&json!(["logits", "prediction"])), None).unwrap(),
            vec![OutputKind::Logits, OutputKind::Prediction]
        );
        assert_eq!(
            parse_outputs(s, Some(&json!("logits")), Some(&json!(false))).unwrap(),
            vec![OutputKind::Probabilities]
        );
        assert!(parse_outputs(s, Some(&json!("argmax")), None).is_err());
        assert_eq!(
            parse_outputs(TaskKind::Regression, None, None).unwrap(),
            vec![OutputKind::Value]
        );
    }

    #[test]
    fn data_section_prefers_predict_bands_and_reports_unused_keys() {
        let yaml = "model:\n  class_path: terratorch.tasks.SemanticSegmentationTask\n  init_args: {}\n\
                    data:\n  class_path: terratorch.datamodules.GenericNonGeoSegmentationDataModule\n  init_args:\n    \
                    batch_size: 4\n    dataset_bands: [RED, GREEN]\n    predict_dataset_bands: [GREEN, RED]\n    \
                    means: [1, 2]\n    stds: [3, 4]\n    mystery: 1\n";
        let c = PredictConfig::from_yaml(yaml, Path::new(".")).unwrap();
        assert_eq!(
            c.data.dataset_bands,
            Some(vec![Band::Name("GREEN".into()), Band::Name("RED".into())])
        );
        assert_eq!(c.data.means, Some(vec![1.0, 2.0]));
        assert!(c
            .unused
            .iter()
            .any(|u| u.key == "data.init_args.mystery" && u.warn));
        assert!(c
            .unused
            .iter()
            .any(|u| u.key == "data.init_args.batch_size" && !u.warn));
        assert_eq!(c.tiling, None);
    }

    #[test]
    fn the_object_detection_datamodule_keeps_nodata_values_and_names_classes() {
        let yaml = "model:\n  class_path: terratorch.tasks.ObjectDetectionTask\n\
                    data:\n  class_path: terratorch.datamodules.GenericNonGeoObjectDetectionDataModule\n  \
                    init_args:\n    batch_size: 3\n    label_grep: '*.json'\n    class_names: [bg, ship]\n";
        let c = PredictConfig::from_yaml(yaml, Path::new(".")).unwrap();
        assert!(c.data.keep_nodata_values);
        let d = c.detection.unwrap();
        assert_eq!(
            d.class_names,
            Some(vec!["bg".to_owned(), "ship".to_owned()])
        );
        assert_eq!(d.batch_size, 3);
        assert!(c.unused.iter().all(|u| !u.warn), "{:?}", c.unused);
        let seg = "model:\n  class_path: SemanticSegmentationTask\n\
                   data:\n  class_path: GenericNonGeoSegmentationDataModule\n";
        assert!(
            !PredictConfig::from_yaml(seg, Path::new("."))
                .unwrap()
                .data
                .keep_nodata_values
        );
    }

    fn temporal_yaml(extra: &str) -> String {
        format!(
            "model:\n  class_path: terratorch.tasks.SemanticSegmentationTask\n\
             data:\n  class_path: GenericNonGeoSegmentationDataModule\n  init_args:\n    \
             expand_temporal_dimension: true\n{extra}"
        )
    }

    #[test]
    fn temporal_needs_dataset_and_output_bands_as_terratorch_checks() {
        let e = PredictConfig::from_yaml(&temporal_yaml(""), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs `dataset_bands`") && e.contains("expand_temporal_dimension"),
            "{e}"
        );
        let e = PredictConfig::from_yaml(
            &temporal_yaml("    dataset_bands: [RED, NIR_NARROW]\n"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs `output_bands`"), "{e}");
        let c = PredictConfig::from_yaml(
            &temporal_yaml(
                "    dataset_bands: [RED, NIR_NARROW]\n    output_bands: [NIR_NARROW]\n",
            ),
            Path::new("."),
        )
        .unwrap();
        assert!(c.data.expand_temporal_dimension);
        let plain = "model:\n  class_path: SemanticSegmentationTask\n\
                     data:\n  class_path: GenericNonGeoSegmentationDataModule\n";
        assert!(
            !PredictConfig::from_yaml(plain, Path::new("."))
                .unwrap()
                .data
                .expand_temporal_dimension
        );
    }

    #[test]
    fn temporal_channel_major_true_is_refused_and_false_reported_unused() {
        let bands = "    dataset_bands: [RED]\n    output_bands: [RED]\n";
        let e = PredictConfig::from_yaml(
            &temporal_yaml(&format!("{bands}    temporal_channel_major: true\n")),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("temporal_channel_major") && e.contains("time-major"),
            "{e}"
        );
        let c = PredictConfig::from_yaml(
            &temporal_yaml(&format!("{bands}    temporal_channel_major: false\n")),
            Path::new("."),
        )
        .unwrap();
        assert!(c
            .unused
            .iter()
            .any(|u| u.key == "data.init_args.temporal_channel_major" && u.warn));
    }

    #[test]
    fn stats_files_are_read_as_genfromtxt_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("table.txt"), "1 2 3\n4 5 6 # frame stats\n\n").unwrap();
        std::fs::write(d.join("column.txt"), "1\n2\n").unwrap();
        std::fs::write(d.join("row.txt"), "1 2 3\n").unwrap();
        std::fs::write(d.join("ragged.txt"), "1 2\n3\n").unwrap();
        let read = |f: &str| numbers(&json!(f), "means", d);
        assert_eq!(
            read("table.txt").unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], Some(3))
        );
        assert_eq!(read("column.txt").unwrap(), (vec![1.0, 2.0], None));
        assert_eq!(read("row.txt").unwrap(), (vec![1.0, 2.0, 3.0], None));
        assert!(read("ragged.txt")
            .unwrap_err()
            .to_string()
            .contains("rows of different lengths"));
        let e = numbers(&json!([[1, 2], [3, 4]]), "means", d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("txt file"), "{e}");
    }
}
