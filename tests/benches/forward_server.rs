//! A persistent forward worker for interleaved comparisons (`scripts/bench/forward_pairs.py`
//! drives it against TerraTorch's worker in `terratorch_reference.py --serve`): builds
//! the model of a model config (default `scripts/bench/prithvi_unet.yaml`) from the
//! plugin libraries, runs one warm-up forward on a `[B, 6, 224, 224]` input, prints
//! `{"ready": true}`, and then runs one forward per line read on stdin, printing
//! `{"forward_s": ...}` after each. Settings come from the environment, so that two
//! workers can differ only there (`TERRAHOST_PACKED_LINEAR=0`, for example):
//! `TERRAHOST_BENCH_CONFIG`, `TERRAHOST_BENCH_BATCH` (default 8),
//! `TERRAHOST_BENCH_THREADS` (default 2).
use serde_json::json;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;
use terrahost::Host;
use terrahost_testkit::{real_plugins, workspace_root, PLUGINS};

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
    let cfg = terrahost::config::ModelConfig::from_file(&config).expect("a model config");
    let model = host
        .build("model_factory", &cfg.model_factory, &cfg.model_args, None)
        .expect("the model builds");
    tch::manual_seed(0);
    let x = tch::Tensor::randn([batch, 6, 224, 224], (tch::Kind::Float, tch::Device::Cpu));
    terrahost_layers::inference::inference_mode(|| {
        model.forward(std::slice::from_ref(&x)).expect("forward"); // warm-up
        println!(
            "{}",
            json!({"ready": true, "threads": threads, "batch": batch})
        );
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            let t = Instant::now();
            let y = model.forward(std::slice::from_ref(&x)).expect("forward");
            let s = t.elapsed().as_secs_f64();
            drop(y);
            println!("{}", json!({"forward_s": s}));
        }
    });
}
