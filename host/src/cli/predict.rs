//! `terrahost predict`: a TerraTorch LightningCLI config and checkpoint on GeoTIFF
//! scenes, written as `terratorch predict` writes them (see `terrahost::predict`).
use clap::Args;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;
use terrahost::predict::data_config::{OutputKind, PredictConfig};
use terrahost::predict::detection::{self, vector::VectorFormat, DetectJob};
use terrahost::predict::{scenes, writer, Job};
use terrahost::{config::ModelConfig, weights, Host, HostError};

/// Arguments of `terrahost predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The LightningCLI config (YAML) TerraTorch trained or predicts with: `model:`
    /// (task class, model_factory, model_args, tiled_inference_parameters,
    /// output_on_inference) and `data:` (bands, nodata, scaling, means/stds).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The checkpoint: a Lightning `.ckpt` TerraTorch saved, a `torch.save` state_dict or
    /// `.safetensors`. Without it the model keeps its initial (or pretrained) weights.
    #[arg(long, value_name = "CKPT")]
    pub weights: Option<PathBuf>,
    /// A scene, a directory (filtered by the config's `img_grep`) or a glob such as
    /// 'scenes/*.tif'; `-` reads scene paths from stdin, one per line, and predicts
    /// each as it arrives (`find ... | terrahost predict --input - ...`). Default: the
    /// config's `data.init_args.predict_data_root`.
    #[arg(long, value_name = "FILE|DIR|GLOB|-")]
    pub input: Option<PathBuf>,
    /// Where the outputs go (created if missing). Default: the config's
    /// `predict_output_dir`.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// The output data type (uint8 ... float64). Default: the config's `out_dtype`, else
    /// int16 for `prediction` (TerraTorch's default) and float32 for logits,
    /// probabilities and regression values (TerraTorch's int16 truncates them).
    #[arg(long, value_name = "DTYPE")]
    pub out_dtype: Option<String>,
    /// Object detection: the vector format of the detections, `gpkg` (GeoPackage,
    /// `<stem>_pred.gpkg`) or `geojson` (`<stem>_pred.geojson`).
    #[arg(long, value_name = "gpkg|geojson", default_value = "gpkg")]
    pub vector_format: String,
    /// Object detection: the tile, in pixels (square). Default: the model's input size
    /// (`model_args.backbone_img_size`), else 512. A scene that fits one tile is one
    /// forward.
    #[arg(long, value_name = "PIXELS")]
    pub tile_size: Option<usize>,
    /// Object detection: the overlap of neighbouring tiles, in pixels (at most half the
    /// tile). Default: a quarter of the tile. Objects up to overlap - 2 pixels are whole in
    /// at least one tile.
    #[arg(long, value_name = "PIXELS")]
    pub tile_overlap: Option<usize>,
    /// Overrides a config key, as TerraTorch's `--data.init_args.KEY VALUE` do:
    /// `--set data.init_args.no_data_replace=0` (the value is YAML). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Predict again even where the outputs exist (default: skip such scenes, so an
    /// interrupted run resumes).
    #[arg(long)]
    pub overwrite: bool,
    /// Let GDAL open remote and virtual rasters (`/vsicurl/`, URLs, network drivers) and
    /// VRTs that reference files outside the scene's directory. By default predict reads
    /// local files only. Also $TERRAHOST_ALLOW_REMOTE_RASTERS=1.
    #[arg(long)]
    pub allow_remote_rasters: bool,
    /// Only this machine's share K/N of the sorted inputs (K from 0), e.g.
    /// `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// cpu, cuda or auto (cuda when available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// fp32 (the default), bf16 (weights stored in bfloat16 once after loading, the
    /// forward under libtorch's CPU autocast) or int8 (linear layers in int8, PyTorch's
    /// dynamic quantization); see `run --help`. Outputs keep their dtypes.
    #[arg(long, default_value = "fp32", value_name = "fp32|bf16|int8")]
    pub precision: String,
    /// No progress on stderr (it is shown only when stderr is a terminal anyway).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print a JSON summary on stdout (and nothing else there).
    #[arg(long, conflicts_with = "json_lines")]
    pub json: bool,
    /// Print one JSON object per scene on stdout as soon as the scene is done (the
    /// objects of `--json`'s `scenes`), and nothing else there: for pipelines and
    /// schedulers that follow a long run.
    #[arg(long)]
    pub json_lines: bool,
}

/// Where the scene paths come from.
enum Inputs {
    /// Listed, sorted and sharded up front.
    Listed(Vec<PathBuf>),
    /// Read from stdin line by line; the shard is taken by position as lines arrive.
    Stdin,
}

impl Inputs {
    /// The scenes of shard `k` of `n`, in order (a stdin read can fail).
    fn iter(self, k: usize, n: usize) -> Box<dyn Iterator<Item = Result<PathBuf, HostError>>> {
        match self {
            Inputs::Listed(v) => Box::new(v.into_iter().map(Ok)),
            Inputs::Stdin => {
                use std::io::BufRead;
                let lines = std::io::stdin().lock().lines();
                Box::new(
                    lines
                        .map(|l| l.map_err(|e| usage(format!("--input -: reading stdin: {e}"))))
                        .filter(|l| !matches!(l, Ok(t) if t.trim().is_empty()))
                        .enumerate()
                        .filter(move |(i, _)| i % n == k)
                        .map(|(_, l)| l.map(PathBuf::from)),
                )
            }
        }
    }
}

fn usage(m: impl Into<String>) -> HostError {
    HostError::Usage(m.into())
}

/// The config text with `--set KEY=VALUE` applied.
fn config_text(path: &Path, sets: &[String]) -> Result<String, HostError> {
    let text = terrahost::limits::read_text(path, "--config").map_err(HostError::Config)?;
    if sets.is_empty() {
        return Ok(text);
    }
    let mut top: Value = terrahost::yaml::parse(&text)
        .map_err(|e| HostError::Config(format!("{}: not YAML: {e}", path.display())))?;
    for s in sets {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            usage(format!(
                "--set `{s}`: expected KEY=VALUE, e.g. data.init_args.img_grep='*.tif'"
            ))
        })?;
        let value: Value = terrahost::yaml::parse(value)
            .map_err(|e| usage(format!("--set `{s}`: the value is not YAML: {e}")))?;
        let mut node = &mut top;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if !node.is_object() {
                return Err(usage(format!(
                    "--set `{s}`: `{}` is not a mapping",
                    parts[..i].join(".")
                )));
            }
            let map = node.as_object_mut().expect("checked");
            if i + 1 == parts.len() {
                map.insert((*part).to_owned(), value.clone());
                break;
            }
            node = map.entry((*part).to_owned()).or_insert_with(|| json!({}));
        }
    }
    serde_yaml::to_string(&top).map_err(|e| usage(e.to_string()))
}

/// The process's peak resident memory so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn parse_device(text: &str) -> Result<Device, HostError> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(usage(
            "--device cuda: this libtorch sees no CUDA device; use --device cpu",
        )),
        "auto" => Ok(Device::cuda_if_available()),
        other => Err(usage(format!(
            "--device must be cpu, cuda or auto, got `{other}`"
        ))),
    }
}

/// Refuses an output directory that cannot be written before any model is built.
fn check_output_dir(dir: &Path) -> Result<(), HostError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        usage(format!(
            "--output-dir {}: cannot create it ({e})",
            dir.display()
        ))
    })?;
    let probe = dir.join(format!(".terrahost-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        usage(format!(
            "--output-dir {}: cannot write there ({e})",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn run(host: &Host, a: &PredictArgs) -> Result<(), HostError> {
    let t_start = Instant::now();
    if a.allow_remote_rasters {
        std::env::set_var(terrahost::predict::raster_policy::ALLOW_REMOTE_VAR, "1");
    }
    let device = parse_device(&a.device)?;
    let precision = terrahost::precision::parse(&a.precision)?;
    let text = config_text(&a.config, &a.sets)?;
    let config_dir = a.config.parent().unwrap_or(Path::new("."));
    let pcfg = PredictConfig::from_yaml(&text, config_dir)
        .map_err(|e| HostError::Config(format!("{}: {e}", a.config.display())))?;
    let out_dir = a
        .output_dir
        .clone()
        .or_else(|| pcfg.predict_output_dir.clone())
        .ok_or_else(|| usage("give --output-dir DIR (or `predict_output_dir` in the config)"))?;
    check_output_dir(&out_dir)?;
    let input = a
        .input
        .clone()
        .or_else(|| pcfg.data.predict_data_root.clone())
        .ok_or_else(|| {
            usage(
                "give --input FILE|DIR|GLOB (or `data.init_args.predict_data_root` in the config)",
            )
        })?;
    let (k, n) = match &a.shard {
        Some(s) => scenes::parse_shard(s)?,
        None => (0, 1),
    };
    let (inputs, total_inputs, shard_len) = if input.as_os_str() == "-" {
        (Inputs::Stdin, None, None)
    } else {
        let all = scenes::list_inputs(&input, &pcfg.data.img_grep)?;
        if all.is_empty() {
            return Err(usage(format!(
                "--input {}: no scenes found (img_grep `{}`)",
                input.display(),
                pcfg.data.img_grep
            )));
        }
        let total = all.len();
        let mine = scenes::shard(all, k, n);
        let len = mine.len();
        (Inputs::Listed(mine), Some(total), Some(len))
    };

    let vector_format = VectorFormat::parse(&a.vector_format)?;
    let detection = match pcfg.detection.clone() {
        Some(mut d) => {
            if let Some(t) = a.tile_size {
                d.tile = (t, t);
                d.overlap = (t / 4, t / 4);
            }
            if let Some(o) = a.tile_overlap {
                d.overlap = (o, o);
            }
            detection::check_settings(&d)?;
            if a.out_dtype.is_some() || pcfg.out_dtype.is_some() {
                tracing::warn!(
                    "`out_dtype` / --out-dtype is not used: ObjectDetectionTask writes vector features, not rasters"
                );
            }
            Some(d)
        }
        None if a.tile_overlap.is_some() || a.tile_size.is_some() => {
            return Err(usage(
                "--tile-size and --tile-overlap are for ObjectDetectionTask configs; segmentation and regression \
                 tile with `tiled_inference_parameters`",
            ))
        }
        None => None,
    };

    let dtype_name = a.out_dtype.clone().or_else(|| pcfg.out_dtype.clone());
    let dtype_for = |kind: OutputKind| -> Result<_, HostError> {
        match &dtype_name {
            Some(d) => writer::parse_dtype(d),
            None if kind == OutputKind::Prediction => writer::parse_dtype("int16"),
            None => writer::parse_dtype("float32"),
        }
    };
    let kinds: Vec<(OutputKind, gdal::raster::GdalDataType)> = pcfg
        .outputs
        .iter()
        .map(|k| dtype_for(*k).map(|d| (*k, d)))
        .collect::<Result<_, _>>()?;

    // The model, once for every scene.
    let mut mcfg = ModelConfig::from_yaml(&text)
        .map_err(|e| HostError::Config(format!("{}: {e}", a.config.display())))?;
    mcfg.unused
        .retain(|u| !PredictConfig::MODEL_KEYS_READ.contains(&u.key.as_str()) && u.key != "data");
    mcfg.report_unused();
    for u in &pcfg.unused {
        if u.warn {
            tracing::warn!("config key `{}` is not used: {}", u.key, u.why);
        }
    }
    if a.weights.is_some() {
        mcfg.switch_off_pretrained();
    }
    let t_build = Instant::now();
    let mut model = host.build("model_factory", &mcfg.model_factory, &mcfg.model_args, None)?;
    if let Some(p) = &a.weights {
        weights::load_state_dict(&model, weights::read_state_dict(p)?)?;
    }
    model.set_train(false);
    if device != Device::Cpu {
        model.to_device(device)?;
    }
    terrahost::precision::prepare(&model, precision, device)?;
    let build_ms = t_build.elapsed().as_secs_f64() * 1e3;

    let show = !a.quiet && std::io::stderr().is_terminal();
    let mut results = Vec::new();
    let (mut n_written, mut n_skipped, mut n_failed) = (0, 0, 0);
    let mut seen = 0usize;
    // A closed stdout stops the run after the scene in hand (its files are complete);
    // `main` ends quietly ([`crate::cli::is_closed_stdout`]).
    let emit = |result: &Value| -> Result<(), HostError> {
        if a.json_lines {
            terrahost_index::out::line(result).map_err(crate::cli::stdout_error)?;
        }
        Ok(())
    };
    for (i, scene) in inputs.iter(k, n).enumerate() {
        let scene = match scene {
            Ok(s) => s,
            Err(e) => {
                n_failed += 1;
                eprintln!("error: {e}");
                break;
            }
        };
        let scene = &scene;
        seen += 1;
        let outputs: Vec<_> = kinds
            .iter()
            .map(|(kind, d)| {
                (
                    *kind,
                    scenes::output_path(&out_dir, scene, kind.suffix()),
                    *d,
                )
            })
            .collect();
        let vector_out = detection
            .as_ref()
            .map(|_| scenes::output_path_with(&out_dir, scene, "pred", vector_format.extension()));
        let exists = match &vector_out {
            Some(p) => p.is_file(),
            None => outputs.iter().all(|(_, p, _)| p.is_file()),
        };
        if !a.overwrite && exists {
            n_skipped += 1;
            let r = json!({"input": scene.display().to_string(), "status": "skipped",
                "reason": "outputs exist (use --overwrite)"});
            emit(&r)?;
            results.push(r);
            continue;
        }
        let label = scene.display().to_string();
        let progress = |done: usize, total: usize| {
            if show {
                let mut e = std::io::stderr();
                let of = shard_len.map(|l| format!("/{l}")).unwrap_or_default();
                let _ = write!(e, "\r\x1b[2K[{}{of}] {label}: {done}/{total} chips", i + 1);
                let _ = e.flush();
            }
        };
        let job = Job {
            model: &model,
            config: &pcfg,
            device,
            precision,
            outputs,
            progress: &progress,
        };
        let t0 = Instant::now();
        // A panic inside one scene (libtorch refusing an allocation, a plugin's forward)
        // is that scene's error: the others go on.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match (&detection, &vector_out) {
                (Some(settings), Some(output)) => detection::predict_scene(
                    &DetectJob {
                        model: &model,
                        config: &pcfg,
                        settings,
                        device,
                        precision,
                        output: output.clone(),
                        format: vector_format,
                        progress: &progress,
                    },
                    scene,
                ),
                _ => terrahost::predict::predict_scene(&job, scene),
            }
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(HostError::Usage(format!(
                "{}: failed: {}",
                scene.display(),
                terrahost_index::meta::first_line(&msg)
            )))
        });
        if show {
            eprint!("\r\x1b[2K");
        }
        match outcome {
            Ok(r) => {
                for w in &r.warnings {
                    tracing::warn!("{w}");
                }
                terrahost::precision::note_forward(precision);
                n_written += 1;
                let mut result = json!({"input": label, "status": "written",
                    "outputs": r.written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "width": r.width, "height": r.height, "bands": r.bands, "chips": r.chips,
                    "warnings": r.warnings, "seconds": t0.elapsed().as_secs_f64()});
                if let Some(n) = r.detections {
                    result["detections"] = json!(n);
                }
                emit(&result)?;
                results.push(result);
                if !a.json && !a.json_lines {
                    terrahost_index::out::line(format_args!(
                        "{label}: {} x {}, {} chips, {:.2} s -> {}",
                        r.width,
                        r.height,
                        r.chips,
                        t0.elapsed().as_secs_f64(),
                        r.written
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .map_err(crate::cli::stdout_error)?;
                }
            }
            Err(e) => {
                n_failed += 1;
                let msg = e.to_string();
                let msg = if msg.contains(&label) {
                    msg
                } else {
                    format!("{label}: {msg}")
                };
                eprintln!("error: {msg}");
                let r = json!({"input": label, "status": "failed", "error": msg});
                emit(&r)?;
                results.push(r);
            }
        }
    }
    if a.json {
        crate::cli::print_json(&json!({
            "config": a.config.display().to_string(),
            "output_dir": out_dir.display().to_string(),
            "shard": format!("{k}/{n}"),
            // Unknown when the paths came from stdin with a shard (other lines were
            // not ours).
            "inputs_total": total_inputs.or((n == 1).then_some(seen)),
            "inputs_in_shard": seen,
            "written": n_written,
            "skipped": n_skipped,
            "failed": n_failed,
            "model_build_ms": build_ms,
            "precision": precision.name(),
            "linears_in_int8": terrahost::precision::linears_in_int8(precision),
            "seconds": t_start.elapsed().as_secs_f64(),
            "peak_rss_mib": peak_rss_mib(),
            "scenes": results,
        }))?;
    } else if !a.json_lines && (n_skipped > 0 || n_failed > 0) {
        terrahost_index::out::line(format_args!(
            "{n_written} written, {n_skipped} skipped (outputs exist), {n_failed} failed"
        ))
        .map_err(crate::cli::stdout_error)?;
    }
    if n_failed > 0 {
        return Err(usage(format!(
            "{n_failed} of {seen} scenes failed (see above)"
        )));
    }
    Ok(())
}
