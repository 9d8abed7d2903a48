//! The catalog benchmark (run with `scripts/bench/catalog.sh`, which also measures
//! TerraTorch and peak memory): the model of `scripts/bench/prithvi_unet.yaml`
//! (prithvi_eo_v1_100 -> SelectIndices[2,5,8,11] -> ReshapeTokensToImage ->
//! LearnedInterpolateToPyramidal -> UNetDecoder[512,256,128,64] -> 2-class head) on a
//! 1x6x224x224 input, built from the plugin libraries and, for comparison, from the
//! same plugins' code linked into this process (no library boundary).
//!
//! Medians of `TERRAHOST_BENCH_RUNS` (default 7) runs with `TERRAHOST_BENCH_THREADS`
//! (default 2) libtorch threads and a batch of `TERRAHOST_BENCH_BATCH` (default 1); forwards run in eval mode, in libtorch's inference mode, after one
//! warm-up, alternating between the two hosts so that both see the same machine state.
//! Prints one JSON object.
use serde_json::json;
use std::time::{Duration, Instant};
use terrahost::Host;
use terrahost_testkit::{real_plugins, workspace_root, PLUGINS};

fn median(mut xs: Vec<Duration>) -> f64 {
    xs.sort();
    xs[xs.len() / 2].as_secs_f64()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = env_or("TERRAHOST_BENCH_RUNS", 7);
    let threads = env_or("TERRAHOST_BENCH_THREADS", 2);
    tch::set_num_threads(threads as i32);

    let dir = real_plugins(&PLUGINS);
    let plugins = Host::load(&[dir.path().to_path_buf()]);
    let in_process = terrahost_integration_tests::in_process_host();
    let cfg = terrahost::config::ModelConfig::from_file(
        &workspace_root().join("scripts/bench/prithvi_unet.yaml"),
    )
    .unwrap();
    let build = |host: &Host| {
        host.build("model_factory", &cfg.model_factory, &cfg.model_args, None)
            .unwrap()
    };

    let mut builds = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, host) in [&plugins, &in_process].into_iter().enumerate() {
            let t = Instant::now();
            let model = build(host);
            builds[i].push(t.elapsed());
            drop(model);
        }
    }

    tch::manual_seed(0);
    let batch = env_or("TERRAHOST_BENCH_BATCH", 1) as i64;
    let x = tch::Tensor::randn([batch, 6, 224, 224], (tch::Kind::Float, tch::Device::Cpu));
    let models = [build(&plugins), build(&in_process)];
    let mut forwards = [Vec::new(), Vec::new()];
    terrahost_layers::inference::inference_mode(|| {
        for m in &models {
            m.forward(std::slice::from_ref(&x)).unwrap(); // warm-up
        }
        for _ in 0..runs {
            for (i, m) in models.iter().enumerate() {
                let t = Instant::now();
                let y = m.forward(std::slice::from_ref(&x)).unwrap();
                forwards[i].push(t.elapsed());
                assert_eq!(y[0].size(), [batch, 2, 224, 224]);
            }
        }
    });

    let params: i64 = models[0]
        .state_dict()
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let (fwd_plugins, fwd_in_process) = (median(forwards[0].clone()), median(forwards[1].clone()));
    println!(
        "{}",
        json!({
            "threads": threads,
            "runs": runs,
            "params": params,
            "build_s": {"plugins": median(builds[0].clone()), "in_process": median(builds[1].clone())},
            "forward_s": {"plugins": fwd_plugins, "in_process": fwd_in_process},
            "forward_boundary_ratio": fwd_plugins / fwd_in_process,
            "forwards_s": {
                "plugins": forwards[0].iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "in_process": forwards[1].iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            },
        })
    );
}
