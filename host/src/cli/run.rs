//! `terrahost run`: build a model from a TerraTorch config, load a checkpoint, run it on
//! an input and save the output.
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use terrahost::{config::ModelConfig, weights, Host, HostError};

/// Arguments of `terrahost run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The model config (YAML): `model_factory` + `model_args`, or a LightningCLI config.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A state_dict with TerraTorch's keys (`encoder.`, `decoder.`, `head.`): `.safetensors`,
    /// or a `torch.save` file (`.pt`, `.pth`, `.ckpt`; a Lightning checkpoint's `model.` keys work).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// A `.safetensors` file holding the tensor `input`, and optionally `temporal_coords`
    /// and `location_coords` for backbones that take them (Prithvi `_tl` models); or,
    /// without `input`, tensors named by modality (`S2L2A`, `S1GRD`, ...) for a
    /// multimodal model (TerraTorch's dict of tensors).
    #[arg(long, value_name = "FILE", conflicts_with = "input_shape")]
    pub input: Option<PathBuf>,
    /// The shape of a random input (seed 0), e.g. 1,6,224,224.
    #[arg(long, value_name = "B,C,H,W")]
    pub input_shape: Option<String>,
    /// Where to write the outputs (`.safetensors`: tensor `output`, and `aux_<name>` per
    /// auxiliary head).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Seed libtorch's random generator with N just before the forward, as
    /// `torch.manual_seed(N)` does in Python, so that a model that draws random numbers
    /// in its forward (the Prithvi MAE's masking) draws the same numbers PyTorch would.
    #[arg(long, value_name = "N")]
    pub seed: Option<i64>,
    /// cpu, cuda or auto (cuda when available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Record libtorch's operators during the forward and write them to FILE as a Chrome
    /// trace (open it in Perfetto or chrome://tracing; `scripts/bench/op_profile.py
    /// --summarise FILE` sums it per operator). The forward is the process's first, so
    /// one-time costs (oneDNN's kernel set-up) are in it.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// fp32 (the default: PyTorch's float32 numbers), or bf16: the matrix weights are
    /// stored in bfloat16 once after loading and the forward runs under libtorch's CPU
    /// autocast, as `torch.autocast("cpu", dtype=torch.bfloat16)`; fast on CPUs with
    /// AVX512_BF16 or AMX, emulated (slower) elsewhere. Or int8: the linear layers run in
    /// int8 (PyTorch's dynamic quantization: weights per channel, quantized once; inputs
    /// per call), the rest in float32. Outputs are written as float32.
    #[arg(long, default_value = "fp32", value_name = "fp32|bf16|int8")]
    pub precision: String,
    /// Print JSON only.
    #[arg(long)]
    pub json: bool,
}

fn parse_device(text: &str) -> Result<Device, HostError> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(HostError::Usage(
            "--device cuda: this libtorch sees no CUDA device; use --device cpu".into(),
        )),
        "auto" => Ok(Device::cuda_if_available()),
        other => Err(HostError::Usage(format!(
            "--device must be cpu, cuda or auto, got `{other}`"
        ))),
    }
}

fn parse_shape(text: &str) -> Result<Vec<i64>, HostError> {
    let dims: Result<Vec<i64>, _> = text.split(',').map(|d| d.trim().parse::<i64>()).collect();
    match dims {
        Ok(d) if !d.is_empty() && d.iter().all(|v| *v > 0) => Ok(d),
        _ => Err(HostError::Usage(format!(
            "--input-shape `{text}`: expected positive integers like 1,3,224,224"
        ))),
    }
}

/// A model's inputs as `--input` gives them.
enum Inputs {
    /// `input`, then `temporal_coords` and `location_coords` when present.
    Positional(Vec<Tensor>),
    /// Tensors named by modality, in file order (reordered by the model's
    /// `input_names` once it is built).
    Named(Vec<(String, Tensor)>),
}

impl Inputs {
    /// The tensor whose shape is reported as `input`.
    fn first(&self) -> &Tensor {
        match self {
            Self::Positional(v) => &v[0],
            Self::Named(v) => &v[0].1,
        }
    }
}

/// Names that are never modalities: a reference fixture's positional copies
/// (`input.0`, ...) and outputs (`output`, `output.0`, ...), as `--output` writes them.
fn is_bookkeeping(name: &str) -> bool {
    let indexed = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_digit()))
    };
    name == "output" || indexed("input.") || indexed("output.") || name.starts_with("aux_")
}

/// The model inputs in a `.safetensors` file: `input`, then `temporal_coords` and
/// `location_coords` when present (an empty tensor stands for a missing one before a
/// present one, which the plugins read as Python's `None`). A file without `input`
/// holds named inputs: every tensor except `input.N`, `output`, `output.N` and `aux_*`.
fn read_input(path: &Path) -> Result<Inputs, HostError> {
    // A regular file that fits in memory: `/dev/zero` or a FIFO is refused, not read.
    let (_, len) = terrahost::limits::open_regular(path, "--input").map_err(HostError::Usage)?;
    terrahost::limits::check_tensor("--input", &[len as i64], 1).map_err(HostError::Usage)?;
    let tensors = terrahost_layers::checkpoint::safetensors::read(path)
        .map_err(|e| HostError::Usage(format!("--input {e}")))?;
    let names: Vec<String> = tensors.iter().map(|(k, _)| k.clone()).collect();
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t.shallow_clone())
    };
    let Some(input) = get("input") else {
        let named: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(k, _)| !is_bookkeeping(k))
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        if named.is_empty() {
            return Err(HostError::Usage(format!(
                "--input {}: no tensor named `input` and no tensors named by modality (it has: {})",
                path.display(),
                names.join(", ")
            )));
        }
        return Ok(Inputs::Named(named));
    };
    let mut inputs = vec![input];
    match (get("temporal_coords"), get("location_coords")) {
        (None, None) => {}
        (Some(t), None) => inputs.push(t),
        (t, Some(l)) => {
            inputs.push(t.unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu))));
            inputs.push(l);
        }
    }
    Ok(Inputs::Positional(inputs))
}

/// Orders named inputs as the model lists them (`meta.input_names`, the backbone's
/// modalities), which is the dict order TerraTorch's datamodules give; a tensor the
/// model does not take is dropped with a warning (TerraTorch warns and ignores it).
fn order_named(
    named: Vec<(String, Tensor)>,
    meta: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, Tensor)>, HostError> {
    let Some(order) = meta.get("input_names").and_then(|v| v.as_array()) else {
        return Ok(named);
    };
    let order: Vec<&str> = order.iter().filter_map(|v| v.as_str()).collect();
    let (mut known, unknown): (Vec<_>, Vec<_>) = named
        .into_iter()
        .partition(|(n, _)| order.contains(&n.as_str()));
    for (n, _) in &unknown {
        tracing::warn!(
            "--input: tensor `{n}` is not an input of this model (it takes {}); ignoring it",
            order.join(", ")
        );
    }
    if known.is_empty() {
        return Err(HostError::Usage(format!(
            "--input: none of its tensors ({}) is an input of this model; it takes {}",
            unknown
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            order.join(", ")
        )));
    }
    known.sort_by_key(|(n, _)| order.iter().position(|o| *o == n.as_str()));
    Ok(known)
}

/// The names the model gives its outputs (`output`, `aux_<name>`...), else `output`,
/// `output.1`, ... A model whose outputs repeat per image (the object-detection models:
/// `boxes`, `scores`, `labels`, `masks`) gives `output_names_per_image` instead, and
/// image `i`'s outputs are named `boxes.{i}`, `scores.{i}`, ...
fn output_names(meta: &serde_json::Map<String, serde_json::Value>, n: usize) -> Vec<String> {
    if let Some(names) = terrahost::output_names::repeated_per_image(meta, n) {
        return names;
    }
    let given: Vec<String> = meta
        .get("output_names")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (0..n)
        .map(|i| {
            given.get(i).cloned().unwrap_or_else(|| {
                if i == 0 {
                    "output".into()
                } else {
                    format!("output.{i}")
                }
            })
        })
        .collect()
}

/// Refuses a file path whose directory does not exist, before time is spent on the model.
fn check_parent_dir(flag: &str, path: Option<&PathBuf>) -> Result<(), HostError> {
    match path
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
    {
        Some(dir) if !dir.is_dir() => Err(HostError::Usage(format!(
            "{flag}: directory {} does not exist",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

pub fn run(host: &Host, a: &RunArgs) -> Result<(), HostError> {
    let device = parse_device(&a.device)?;
    let precision = terrahost::precision::parse(&a.precision)?;
    check_parent_dir("--output", a.output.as_ref())?;
    check_parent_dir("--profile", a.profile.as_ref())?;
    let mut cfg = ModelConfig::from_file(&a.config)?;
    cfg.report_unused();
    if a.weights.is_some() {
        let off = cfg.switch_off_pretrained();
        if !off.is_empty() {
            tracing::info!(
                "--weights replaces every weight, so pretrained loading is off ({} = false)",
                off.join(", ")
            );
        }
    }
    let inputs = match (&a.input, &a.input_shape) {
        (Some(p), _) => read_input(p)?,
        (None, Some(s)) => {
            tch::manual_seed(0);
            let shape = parse_shape(s)?;
            terrahost::limits::check_tensor("--input-shape", &shape, 4)
                .map_err(HostError::Usage)?;
            Inputs::Positional(vec![Tensor::randn(shape, (Kind::Float, Device::Cpu))])
        }
        (None, None) => {
            return Err(HostError::Usage(
                "give --input FILE or --input-shape B,C,H,W".into(),
            ))
        }
    };

    let t0 = Instant::now();
    let mut model = host.build("model_factory", &cfg.model_factory, &cfg.model_args, None)?;
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let loaded = match &a.weights {
        Some(p) => Some(weights::load_state_dict(
            &model,
            weights::read_state_dict(p)?,
        )?),
        None => None,
    };
    let load_ms = t1.elapsed().as_secs_f64() * 1e3;
    model.set_train(false);
    if device != Device::Cpu {
        model.to_device(device)?;
    }
    let lowered = terrahost::precision::prepare(&model, precision, device)?;

    let inputs = match inputs {
        Inputs::Named(named) => Inputs::Named(order_named(named, &model.meta())?),
        positional => positional,
    };
    let input_names: Vec<String> = match &inputs {
        Inputs::Positional(_) => vec!["input".into()],
        Inputs::Named(v) => v.iter().map(|(n, _)| n.clone()).collect(),
    };
    if let Some(seed) = a.seed {
        // One generator serves host and plugins: libtorch is one shared library.
        tch::manual_seed(seed);
    }
    let profile = match &a.profile {
        Some(p) => Some(
            terrahost_layers::op_profile::OpProfile::start(p)
                .map_err(|e| HostError::Usage(format!("--profile: {e}")))?,
        ),
        None => None,
    };
    let t2 = Instant::now();
    let outputs = match &inputs {
        Inputs::Positional(xs) => {
            let on_device: Vec<Tensor> = xs.iter().map(|t| t.to_device(device)).collect();
            terrahost_layers::inference::inference_mode(|| {
                precision.run(|| model.forward(&on_device))
            })?
        }
        Inputs::Named(xs) => {
            let on_device: Vec<(String, Tensor)> = xs
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(device)))
                .collect();
            terrahost_layers::inference::inference_mode(|| {
                precision.run(|| model.forward_named(&on_device, &serde_json::Map::new()))
            })?
        }
    };
    let forward_ms = t2.elapsed().as_secs_f64() * 1e3;
    terrahost::precision::note_forward(precision);
    if let Some(p) = profile {
        p.finish()
            .map_err(|e| HostError::Usage(format!("--profile: {e}")))?;
    }
    if outputs.is_empty() {
        return Err(HostError::Usage("the model returned no output".into()));
    }
    // bfloat16 results are written as float32, the kind TerraTorch's outputs have.
    let outputs: Vec<Tensor> = outputs
        .iter()
        .map(|t| terrahost_layers::precision::widen(t.to_device(Device::Cpu)))
        .collect();
    let names = output_names(&model.meta(), outputs.len());
    let input = inputs.first();
    let output = &outputs[0];

    if let Some(path) = &a.output {
        let named: Vec<(&str, &Tensor)> = names
            .iter()
            .map(String::as_str)
            .zip(outputs.iter())
            .collect();
        weights::write_tensors(path, &named)?;
    }
    let stats = |t: &Tensor| {
        let d = t.to_kind(Kind::Double);
        let std = if t.numel() > 1 {
            d.std(true).double_value(&[])
        } else {
            0.0
        };
        (d.mean(Kind::Double).double_value(&[]), std)
    };
    let (mean, std) = stats(output);
    if a.json {
        return crate::cli::print_json(&json!({
            "model_factory": cfg.model_factory,
            "model": model.label(),
            "device": format!("{device:?}"),
            "precision": precision.name(),
            "weights_in_bf16": lowered.map(|l| l.tensors),
            "linears_in_int8": terrahost::precision::linears_in_int8(precision),
            "input_shape": input.size(),
            "inputs": match &inputs {
                Inputs::Positional(_) => json!(null),
                Inputs::Named(v) => json!(v.iter().map(|(n, t)| json!({"name": n, "shape": t.size()})).collect::<Vec<_>>()),
            },
            "input_names": input_names,
            "output_shape": output.size(),
            "output_mean": mean,
            "output_std": std,
            "weights_loaded": loaded.as_ref().map(|r| r.loaded),
            "outputs": names.iter().zip(&outputs).map(|(n, t)| {
                let (mean, std) = stats(t);
                json!({"name": n, "shape": t.size(), "mean": mean, "std": std})
            }).collect::<Vec<_>>(),
            "output_file": a.output.as_ref().map(|p| p.display().to_string()),
            "profile_file": a.profile.as_ref().map(|p| p.display().to_string()),
            "unused_config_keys": cfg.unused.iter().map(|u| json!({"key": u.key, "why": u.why})).collect::<Vec<_>>(),
            "build_ms": build_ms,
            "load_ms": load_ms,
            "forward_ms": forward_ms,
        }));
    }
    let print = || -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "model:   {} from {}",
            cfg.model_factory,
            a.config.display()
        )?;
        writeln!(out, "build:   {build_ms:.1} ms")?;
        match &loaded {
            Some(r) => writeln!(
                out,
                "weights: {} tensors in {load_ms:.1} ms{}",
                r.loaded,
                r.stripped_prefix
                    .as_ref()
                    .map(|p| format!(" (stripped `{p}`)"))
                    .unwrap_or_default()
            ),
            None => writeln!(out, "weights: none (random initialisation)"),
        }?;
        writeln!(out, "forward: {forward_ms:.1} ms on {device:?}")?;
        if let Some(l) = lowered {
            writeln!(
                out,
                "precision: bf16 ({} weights stored in bfloat16, CPU autocast)",
                l.tensors
            )?;
        }
        if let Some(n) = terrahost::precision::linears_in_int8(precision) {
            writeln!(
                out,
                "precision: int8 ({n} linear weights quantized to int8)"
            )?;
        }
        match &inputs {
            Inputs::Positional(_) => writeln!(out, "input:   {:?}", input.size())?,
            Inputs::Named(v) => {
                for (n, t) in v {
                    writeln!(out, "input:   {n} {:?}", t.size())?;
                }
            }
        }
        for (n, t) in names.iter().zip(&outputs) {
            let (mean, std) = stats(t);
            writeln!(
                out,
                "{:<8} {:?}  mean {mean:.5}  std {std:.5}",
                format!("{n}:"),
                t.size()
            )?;
        }
        if let Some(p) = &a.output {
            writeln!(out, "written: {}", p.display())?;
        }
        if let Some(p) = &a.profile {
            writeln!(
                out,
                "profile: {} (a Chrome trace of libtorch's operators)",
                p.display()
            )?;
        }
        out.flush()
    };
    print().map_err(crate::cli::stdout_error)
}

#[cfg(test)]
mod tests {
    use super::output_names;
    use serde_json::json;

    #[test]
    fn per_image_outputs_are_named_by_image() {
        let meta = json!({"output_names_per_image": ["boxes", "scores", "labels"]});
        assert_eq!(
            output_names(meta.as_object().unwrap(), 6),
            ["boxes.0", "scores.0", "labels.0", "boxes.1", "scores.1", "labels.1"]
        );
        let meta = json!({"output_names": ["output", "aux_x"]});
        assert_eq!(
            output_names(meta.as_object().unwrap(), 3),
            ["output", "aux_x", "output.2"]
        );
    }
}
