//! A persistent forward worker for interleaved comparisons (`scripts/bench/forward_pairs.py`
//! drives it against TerraTorch's worker in `terratorch_reference.py --serve`): builds
//! the model of a model config (default `scripts/bench/prithvi_unet.yaml`) from the
//! plugin libraries, runs one warm-up forward on a `[B, 6, 224, 224]` input, prints
//! `{"ready": true}`, and then runs one forward per line read on stdin, printing
//! `{"forward_s": ...}` after each. Settings come from the environment, so that two
//! workers can differ only there (`TERRAHOST_PACKED_LINEAR=0`, for example):
//! `TERRAHOST_BENCH_CONFIG`, `TERRAHOST_BENCH_BATCH` (default 8),
//! `TERRAHOST_BENCH_THREADS` (default 2). `TERRAHOST_BENCH_WEIGHTS` (a `.safetensors` or
//! `.pt` state_dict) loads those weights, strictly, instead of the initialisation;
//! `TERRAHOST_BENCH_INPUT` (a `.safetensors` file with one tensor `x`) replaces the seeded
//! random input (the batch is then the file's); `TERRAHOST_BENCH_OUTPUT` writes the
//! warm-up forward's output there (`.safetensors`, tensor `y`; the detections of an
//! object-detection model as `boxes.{i}`, `scores.{i}`, ...), so that the same
//! weights and input can be compared across runtimes (`forward_pairs.py --accuracy`).
//! `TERRAHOST_BENCH_PRECISION` (`fp32`, the default, `bf16` or `int8`) runs the forwards as
//! `--precision` does (the output is written as float32).
//! `TERRAHOST_BENCH_PROFILE` records libtorch's operators over the timed forwards (not the
//! warm-up) and writes them there as a Chrome trace when stdin closes
//! (`scripts/bench/op_profile.py`).
use serde_json::json;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;
use terrahost::Host;
use terrahost_testkit::{real_plugins, workspace_root, PLUGINS};

/// The names of the outputs written to `TERRAHOST_BENCH_OUTPUT`: `y` for a one-output model (what
/// `forward_pairs.py` reads), `y.{j}`, or for a model whose outputs repeat per image (object
/// detection) `boxes.{i}`, `scores.{i}`, ... as `terrahost run` names them.
fn output_names(meta: &serde_json::Map<String, serde_json::Value>, n: usize) -> Vec<String> {
    if let Some(names) = terrahost::output_names::repeated_per_image(meta, n) {
        return names;
    }
    match n {
        1 => vec!["y".into()],
        _ => (0..n).map(|j| format!("y.{j}")).collect(),
    }
}

fn main() {
    let threads: i32 = std::env::var("TERRAHOST_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let batch: i64 = std::env::var("TERRAHOST_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let config = std::env::var("TERRAHOST_BENCH_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("scripts/bench/prithvi_unet.yaml"));
    tch::set_num_threads(threads);
    let dir = real_plugins(&PLUGINS);
    let host = Host::load(&[dir.path().to_path_buf()]);
    for r in host.rejected() {
        eprintln!(
            "forward_server: plugin {} refused: {}",
            r.path.display(),
            r.reason
        );
    }
    let weights = std::env::var("TERRAHOST_BENCH_WEIGHTS").ok();
    let mut cfg = terrahost::config::ModelConfig::from_file(&config).expect("a model config");
    if weights.is_some() {
        // As `terrahost run --weights`: the file replaces every weight, so nothing pretrained is
        // looked for (TerraTorch's configs say `backbone_pretrained: true`).
        cfg.switch_off_pretrained();
    }
    let mut model = host
        .build("model_factory", &cfg.model_factory, &cfg.model_args, None)
        .expect("the model builds");
    if let Some(w) = weights {
        let state = terrahost::weights::read_state_dict(std::path::Path::new(&w))
            .expect("TERRAHOST_BENCH_WEIGHTS reads");
        terrahost::weights::load_state_dict(&model, state).expect("the weights fit the model");
    }
    model.set_train(false);
    let precision = terrahost::precision::parse(
        &std::env::var("TERRAHOST_BENCH_PRECISION").unwrap_or_else(|_| "fp32".into()),
    )
    .expect("TERRAHOST_BENCH_PRECISION is fp32, bf16 or int8");
    terrahost::precision::prepare(&model, precision, tch::Device::Cpu)
        .expect("the precision applies");
    let x = match std::env::var("TERRAHOST_BENCH_INPUT") {
        Ok(p) => tch::Tensor::read_safetensors(&p)
            .expect("TERRAHOST_BENCH_INPUT reads")
            .into_iter()
            .find(|(k, _)| k == "x")
            .expect("TERRAHOST_BENCH_INPUT holds a tensor `x`")
            .1
            .to_kind(tch::Kind::Float)
            .contiguous(),
        Err(_) => {
            tch::manual_seed(0);
            tch::Tensor::randn([batch, 6, 224, 224], (tch::Kind::Float, tch::Device::Cpu))
        }
    };
    let batch = x.size()[0];
    terrahost_layers::inference::inference_mode(|| {
        let forward = || precision.run(|| model.forward(std::slice::from_ref(&x)));
        let y = forward().expect("forward"); // warm-up
        if let Ok(p) = std::env::var("TERRAHOST_BENCH_OUTPUT") {
            let y: Vec<tch::Tensor> = y
                .iter()
                .map(|t| terrahost_layers::precision::widen(t.shallow_clone()))
                .collect();
            let names = output_names(&model.meta(), y.len());
            let named: Vec<(&str, &tch::Tensor)> =
                names.iter().map(String::as_str).zip(&y).collect();
            terrahost::weights::write_tensors(std::path::Path::new(&p), &named)
                .expect("TERRAHOST_BENCH_OUTPUT writes");
        }
        drop(y);
        println!(
            "{}",
            json!({"ready": true, "threads": threads, "batch": batch, "precision": precision.name()})
        );
        let profile = std::env::var("TERRAHOST_BENCH_PROFILE").ok().map(|p| {
            terrahost_layers::op_profile::OpProfile::start(std::path::Path::new(&p))
                .expect("TERRAHOST_BENCH_PROFILE can be written")
        });
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            let t = Instant::now();
            let y = forward().expect("forward");
            let s = t.elapsed().as_secs_f64();
            drop(y);
            println!("{}", json!({"forward_s": s}));
        }
        if let Some(p) = profile {
            p.finish().expect("the profile is written");
        }
    });
}
