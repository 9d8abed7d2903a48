//! The foundation benchmarks (run with `scripts/bench/foundation.sh`): each figure is
//! the median of 10 runs, with the plugins built in release mode.
//!
//! 1. a cold `terrahost list --json` with the four plugins (a new process each time:
//!    dlopen, version checks, registration, listing);
//! 2. `contains` for a bare name that falls through to the last source of the decoder
//!    registry (`UPerHead`, served by `mmseg`, after `terratorch` and `smp`);
//! 3. build and forward of the fixture model (`factory_segmentation`: timm_resnet18 ->
//!    smp_Unet -> terratorch segmentation head, input 1x3x64x64).
use std::process::Command;
use std::time::{Duration, Instant};
use terrahost::Host;
use terrahost_testkit::{build_dir, real_plugins, Fixture, PLUGINS};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let dir = real_plugins(&PLUGINS);
    let exe = build_dir().join("terrahost");
    println!("threads: {}", tch::get_num_threads());

    // 1. cold list
    let mut runs = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = Command::new(&exe)
            .arg("--plugin-dir")
            .arg(dir.path())
            // cold: no registry cache, every plugin scanned (benches/plugins.rs has warm)
            .arg("--no-cache")
            .args(["list", "--json"])
            .output()
            .unwrap();
        runs.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "cold `terrahost list --json` (4 plugins): median {:.1} ms",
        ms(median(runs))
    );

    // 2. contains, falling through to the last source
    let host = Host::load(&[dir.path().to_path_buf()]);
    assert!(host.contains("decoder", "UPerHead"));
    let n = 100_000;
    let mut runs = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let mut hits = 0usize;
        for _ in 0..n {
            hits += usize::from(host.contains(
                std::hint::black_box("decoder"),
                std::hint::black_box("UPerHead"),
            ));
        }
        runs.push(t.elapsed() / n);
        assert_eq!(hits, n as usize);
    }
    println!(
        "`contains` bare name -> last source: median {:.0} ns per call",
        median(runs).as_secs_f64() * 1e9
    );

    // 3. build + forward of the fixture model, across plugin libraries and, for
    //    comparison, with the same plugins' code linked into this process.
    let in_process = terrahost_integration_tests::in_process_host();
    let fx = Fixture::load("factory_segmentation");
    let cfg = terrahost::config::ModelConfig::from_file(&fx.dir.join("config.yaml")).unwrap();
    for (label, host) in [
        ("plugin libraries", &host),
        ("linked in-process", &in_process),
    ] {
        let (mut builds, mut forwards) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let t = Instant::now();
            let model = host
                .build("model_factory", &cfg.model_factory, &cfg.model_args, None)
                .unwrap();
            builds.push(t.elapsed());
            let t = Instant::now();
            let y = tch::no_grad(|| model.forward(&fx.inputs)).unwrap();
            forwards.push(t.elapsed());
            assert_eq!(y[0].size(), fx.outputs[0].size());
        }
        println!(
            "fixture model (resnet18 -> smp Unet -> head, 1x3x64x64), {label}: build median {:.1} ms, forward median {:.2} ms",
            ms(median(builds)),
            ms(median(forwards))
        );
    }
}
